/* libFuzzer driver for common/ref: the repository name, tag and digest grammar and
 * the repository glob matcher.
 *
 * Input: arbitrary bytes S.
 *  - ref_name_valid, ref_tag_valid, ref_digest_valid and ref_is_digest run on S (an
 *    exact-size heap copy, so any read past the slice is caught by ASan) and are
 *    checked against the distribution-spec regular expressions (POSIX ERE, an
 *    independent implementation).
 *  - S is split at its first '\n' into GLOB and NAME (C strings, cut at a NUL) and
 *    ref_glob_match(GLOB, NAME) is checked against a plain dynamic-programming
 *    matcher of the same semantics ('*' within a segment, '**' across segments,
 *    '**' + '/' also matching no segment, '?' one non-'/' byte).
 *  - A glob without wildcards must match itself.
 *
 * ref_glob_match gives up (no match) below 64 nested wildcard groups; the oracle is
 * only consulted for globs with at most 64 '*', where that limit cannot apply. */
#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/ref.h"


static regex_t re_name, re_tag, re_digest;

#define FUZZ_NAME "fuzz_ref"
#include "fuzz.h"

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* the grammar of the OCI distribution spec, anchored */
    static const char name[] = "^[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*"
                               "(/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*$";
    static const char tag[] = "^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$";
    static const char digest[] = "^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$";
    if (regcomp(&re_name, name, REG_EXTENDED | REG_NOSUB) ||
        regcomp(&re_tag, tag, REG_EXTENDED | REG_NOSUB) ||
        regcomp(&re_digest, digest, REG_EXTENDED | REG_NOSUB)) {
        fprintf(stderr, "fuzz_ref: regcomp failed\n");
        abort();
    }
    return 0;
}

static bool
ere_match(const regex_t *re, const char *s)
{
    return regexec(re, s, 0, NULL, 0) == 0;
}

/* The reference matcher: m[i][j] tells whether glob[i..] matches name[j..]. */
static bool
glob_oracle(const char *g, size_t gl, const char *n, size_t nl)
{
    size_t w = nl + 1;
    unsigned char *m = calloc((gl + 1) * w, 1);
    if (!m)
        abort();
    /* m[gl][j]: only the empty rest of the name */
    m[gl * w + nl] = 1;
    for (size_t ii = gl; ii-- > 0;) {
        for (size_t j = 0; j <= nl; j++) {
            bool v = false;
            if (g[ii] == '*' && ii + 1 < gl && g[ii + 1] == '*') {
                size_t k = ii + 2;
                if (k < gl && g[k] == '/' && m[(k + 1) * w + j])
                    v = true;
                for (size_t p = j; !v && p <= nl; p++)
                    v = m[k * w + p];
            } else if (g[ii] == '*') {
                for (size_t p = j;; p++) {
                    if (m[(ii + 1) * w + p]) {
                        v = true;
                        break;
                    }
                    if (p == nl || n[p] == '/')
                        break;
                }
            } else if (g[ii] == '?') {
                v = j < nl && n[j] != '/' && m[(ii + 1) * w + j + 1];
            } else {
                v = j < nl && n[j] == g[ii] && m[(ii + 1) * w + j + 1];
            }
            m[ii * w + j] = v;
        }
    }
    bool r = m[0];
    free(m);
    return r;
}

static size_t
count_char(const char *s, char c)
{
    size_t k = 0;
    for (; *s; s++)
        k += *s == c;
    return k;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* exact-size copy: the validators get a slice with nothing after it */
    char *exact = malloc(size ? size : 1);
    if (!exact)
        return 0;
    if (size)
        memcpy(exact, data, size);
    slice s = {exact, size};
    bool name_ok = ref_name_valid(s);
    bool tag_ok = ref_tag_valid(s);
    bool digest_ok = ref_digest_valid(s);
    bool is_digest = ref_is_digest(s);
    FUZZ_CHECK(is_digest == (memchr(exact, ':', size) != NULL), "ref_is_digest");
    FUZZ_CHECK(!digest_ok || is_digest, "a valid digest has a ':'");
    FUZZ_CHECK(!(name_ok && is_digest), "a valid name has no ':'");
    free(exact);

    /* the regex oracle works on C strings: inputs with a NUL are never valid, and the
     * validators said so above unless the oracle disagrees on the prefix */
    char *cs = malloc(size + 1);
    if (!cs)
        return 0;
    memcpy(cs, data, size);
    cs[size] = '\0';
    if (strlen(cs) == size) {
        if (size <= 4 * REF_NAME_MAX)
            FUZZ_CHECK(name_ok == (size <= REF_NAME_MAX && ere_match(&re_name, cs)),
                       "ref_name_valid(\"%s\") = %d", cs, name_ok);
        else
            FUZZ_CHECK(!name_ok, "a name of %zu bytes was accepted", size);
        FUZZ_CHECK(tag_ok == ere_match(&re_tag, cs), "ref_tag_valid(\"%s\") = %d", cs, tag_ok);
        FUZZ_CHECK(digest_ok == ere_match(&re_digest, cs), "ref_digest_valid(\"%s\") = %d", cs,
                   digest_ok);
    } else {
        FUZZ_CHECK(!name_ok && !tag_ok && !digest_ok, "an input with a NUL was accepted");
    }

    /* a literal glob matches itself */
    size_t cl = strlen(cs);
    if (cl <= 4096 && !strchr(cs, '*') && !strchr(cs, '?'))
        FUZZ_CHECK(ref_glob_match(cs, cs), "literal glob \"%s\" does not match itself", cs);

    /* GLOB '\n' NAME */
    char *nl = memchr(cs, '\n', cl);
    const char *glob = cs, *name = "";
    if (nl) {
        *nl = '\0';
        name = nl + 1;
    }
    size_t gl = strlen(glob), nml = strlen(name);
    bool got = ref_glob_match(glob, name);
    if (gl <= 4096 && nml <= 4096 && count_char(glob, '*') <= 64 &&
        (gl + 1) * (nml + 1) <= 1u << 20) {
        bool want = glob_oracle(glob, gl, name, nml);
        FUZZ_CHECK(got == want, "ref_glob_match(\"%s\", \"%s\") = %d, expected %d", glob, name,
                   got, want);
    }
    if (gl > 4096 || nml > 4096)
        FUZZ_CHECK(!got, "an over-long glob or name matched");
    free(cs);
    return 0;
}
