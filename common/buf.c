/* Slices and growable NUL-terminated buffers. */
#include "buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "banned.h"

char buf_empty_[1];

slice
slice_of_cstr(const char *s)
{
    return (slice){s ? s : "", s ? strlen(s) : 0};
}

bool
slice_eq(slice a, slice b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

bool
slice_eq_cstr(slice a, const char *s)
{
    return slice_eq(a, slice_of_cstr(s));
}

bool
slice_case_eq_cstr(slice a, const char *s)
{
    size_t n = strlen(s);
    if (n != a.len)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a.ptr[i], y = (unsigned char)s[i];
        if (x >= 'A' && x <= 'Z')
            x = (unsigned char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (unsigned char)(y + 32);
        if (x != y)
            return false;
    }
    return true;
}

bool
slice_starts_with(slice a, const char *prefix)
{
    size_t n = strlen(prefix);
    return a.len >= n && memcmp(a.ptr, prefix, n) == 0;
}

bool
slice_parse_u64(slice s, uint64_t *out)
{
    uint64_t v = 0;
    if (s.len == 0 || s.len > 20)
        return false;
    for (size_t i = 0; i < s.len; i++) {
        unsigned d = (unsigned)(unsigned char)s.ptr[i] - '0';
        if (d > 9)
            return false;
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

void
buf_init(buf *b)
{
    b->ptr = buf_empty_;
    b->len = 0;
    b->cap = 0;
}

void
buf_release(buf *b)
{
    if (b->cap)
        free(b->ptr);
    buf_init(b);
}

void
buf_reset(buf *b)
{
    b->len = 0;
    b->ptr[0] = '\0';
}

err
buf_grow(buf *b, size_t extra)
{
    if (extra > SIZE_MAX / 2 - b->len - 1)
        return ERR_NOMEM;
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return ERR_OK;
    size_t ncap = b->cap ? b->cap : 64;
    while (ncap < need)
        ncap *= 2;
    char *p = b->cap ? realloc(b->ptr, ncap) : malloc(ncap);
    if (!p)
        return ERR_NOMEM;
    if (!b->cap)
        p[0] = '\0';
    b->ptr = p;
    b->cap = ncap;
    return ERR_OK;
}

err
buf_add(buf *b, const void *ptr, size_t len)
{
    err e = buf_grow(b, len);
    if (e)
        return e;
    if (len)
        memcpy(b->ptr + b->len, ptr, len);
    b->len += len;
    b->ptr[b->len] = '\0';
    return ERR_OK;
}

err
buf_adds(buf *b, const char *s)
{
    return buf_add(b, s, strlen(s));
}

err
buf_addc(buf *b, char c)
{
    return buf_add(b, &c, 1);
}

err
buf_vaddf(buf *b, const char *fmt, va_list ap)
{
    va_list cp;
    va_copy(cp, ap);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, cp);
    va_end(cp);
    if (n < 0)
        return ERR_INTERNAL;
    if ((size_t)n < sizeof small)
        return buf_add(b, small, (size_t)n);
    err e = buf_grow(b, (size_t)n);
    if (e)
        return e;
    vsnprintf(b->ptr + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return ERR_OK;
}

err
buf_addf(buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    err e = buf_vaddf(b, fmt, ap);
    va_end(ap);
    return e;
}

err
buf_add_json_str(buf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    err e = buf_grow(b, len + 2);
    if (e)
        return e;
    buf_addc(b, '"');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            e = buf_add(b, esc, 2);
        } else if (c < 0x20) {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            e = buf_add(b, esc, 6);
        } else {
            e = buf_addc(b, (char)c);
        }
        if (e)
            return e;
    }
    return buf_addc(b, '"');
}

char *
buf_detach(buf *b, size_t *len)
{
    char *p;
    if (len)
        *len = b->len;
    if (b->cap) {
        p = b->ptr;
    } else {
        p = malloc(1);
        if (p)
            p[0] = '\0';
    }
    buf_init(b);
    return p;
}

slice
buf_slice(const buf *b)
{
    return (slice){b->ptr, b->len};
}

void
buf_truncate(buf *b, size_t len)
{
    if (len < b->len) {
        b->len = len;
        b->ptr[len] = '\0';
    }
}

bool
str_copy(char *dst, size_t n, const char *src)
{
    return str_copy_slice(dst, n, slice_of_cstr(src));
}

bool
str_copy_slice(char *dst, size_t n, slice src)
{
    size_t k = src.len < n - 1 ? src.len : n - 1;
    if (k)
        memcpy(dst, src.ptr, k);
    dst[k] = '\0';
    return k == src.len;
}
