/* Hand-written matchers for the distribution-spec grammar (no regex engine, so the
 * cost is linear and no input can make it backtrack). */
#include "ref.h"

#include <stdlib.h>
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

/* glob_rec backtracks over '*' and '**'; without memory that is exponential in the
 * number of stars (a 255-byte name against "*a*a*a*a*a*b" never finishes), and
 * names come from clients. glob_ctx remembers every (glob, name) position that
 * already failed, so each is explored once: O(len(glob) * len(name)) calls. */
struct glob_ctx {
    const char *g0, *n0;
    size_t nl;
    unsigned char *dead; /* bit (gi * (nl + 1) + ni): glob_rec(g0+gi, n0+ni) is false */
};

static bool glob_rec(struct glob_ctx *c, const char *g, const char *n, int depth);

static bool
glob_body(struct glob_ctx *c, const char *g, const char *n, int depth)
{
    while (*g) {
        if (g[0] == '*' && g[1] == '*') {
            g += 2;
            /* a double star followed by a slash may also match zero segments */
            if (*g == '/' && glob_rec(c, g + 1, n, depth + 1))
                return true;
            for (const char *p = n;; p++) {
                if (glob_rec(c, g, p, depth + 1))
                    return true;
                if (!*p)
                    return false;
            }
        }
        if (*g == '*') {
            g++;
            for (const char *p = n;; p++) {
                if (glob_rec(c, g, p, depth + 1))
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

static bool
glob_rec(struct glob_ctx *c, const char *g, const char *n, int depth)
{
    if (depth > 64)
        return false;
    size_t bit = (size_t)(g - c->g0) * (c->nl + 1) + (size_t)(n - c->n0);
    if (c->dead[bit / 8] & (1u << (bit % 8)))
        return false;
    if (glob_body(c, g, n, depth))
        return true;
    c->dead[bit / 8] |= (unsigned char)(1u << (bit % 8));
    return false;
}

bool
ref_glob_match(const char *glob, const char *name)
{
    unsigned char small[4096];
    size_t gl = strlen(glob), nl = strlen(name);
    if (gl > 4096 || nl > 4096)
        return false;
    size_t bytes = ((gl + 1) * (nl + 1) + 7) / 8;
    struct glob_ctx c = {glob, name, nl, small};
    if (bytes > sizeof small && !(c.dead = malloc(bytes)))
        return false;
    memset(c.dead, 0, bytes);
    bool ok = glob_rec(&c, glob, name, 0);
    if (c.dead != small)
        free(c.dead);
    return ok;
}
