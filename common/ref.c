/* Hand-written matchers for the distribution-spec grammar (no regex engine, so the
 * cost is linear and no input can make it backtrack). */
#include "ref.h"

#include <string.h>

#include "banned.h"

static bool
is_lower_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

bool
ref_name_valid(slice s)
{
    if (s.len == 0 || s.len > REF_NAME_MAX)
        return false;
    size_t i = 0;
    for (;;) {
        /* one path component: alnum+ (sep alnum+)* */
        if (i >= s.len || !is_lower_alnum(s.ptr[i]))
            return false;
        while (i < s.len && is_lower_alnum(s.ptr[i]))
            i++;
        while (i < s.len && s.ptr[i] != '/') {
            char c = s.ptr[i];
            if (c == '.') {
                i++;
            } else if (c == '_') {
                i++;
                if (i < s.len && s.ptr[i] == '_')
                    i++;
            } else if (c == '-') {
                while (i < s.len && s.ptr[i] == '-')
                    i++;
            } else {
                return false;
            }
            if (i >= s.len || !is_lower_alnum(s.ptr[i]))
                return false;
            while (i < s.len && is_lower_alnum(s.ptr[i]))
                i++;
        }
        if (i == s.len)
            return true;
        i++; /* the '/' */
    }
}

bool
ref_tag_valid(slice s)
{
    if (s.len == 0 || s.len > REF_TAG_MAX)
        return false;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.ptr[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || (i > 0 && (c == '.' || c == '-'));
        if (!ok)
            return false;
    }
    return true;
}

static bool
all_lower_hex(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
            return false;
    return true;
}

bool
ref_digest_valid(slice s)
{
    if (s.len == 7 + 64 && memcmp(s.ptr, "sha256:", 7) == 0)
        return all_lower_hex(s.ptr + 7, 64);
    if (s.len == 7 + 128 && memcmp(s.ptr, "sha512:", 7) == 0)
        return all_lower_hex(s.ptr + 7, 128);
    return false;
}

bool
ref_is_digest(slice s)
{
    return memchr(s.ptr, ':', s.len) != NULL;
}

static bool
glob_rec(const char *g, const char *n, int depth)
{
    if (depth > 64)
        return false;
    while (*g) {
        if (g[0] == '*' && g[1] == '*') {
            g += 2;
            /* a double star followed by a slash may also match zero segments */
            if (*g == '/' && glob_rec(g + 1, n, depth + 1))
                return true;
            for (const char *p = n;; p++) {
                if (glob_rec(g, p, depth + 1))
                    return true;
                if (!*p)
                    return false;
            }
        }
        if (*g == '*') {
            g++;
            for (const char *p = n;; p++) {
                if (glob_rec(g, p, depth + 1))
                    return true;
                if (!*p || *p == '/')
                    return false;
            }
        }
        if (*g == '?') {
            if (!*n || *n == '/')
                return false;
        } else if (*g != *n) {
            return false;
        }
        g++;
        n++;
    }
    return *n == '\0';
}

bool
ref_glob_match(const char *glob, const char *name)
{
    return glob_rec(glob, name, 0);
}
