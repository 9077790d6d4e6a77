/* Unit tests for common/ref: the OCI distribution-spec grammar for repository
 * names, tags and digests, and the replication filter globs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/ref.h"

static bool
name_ok(const char *s)
{
    return ref_name_valid(slice_of_cstr(s));
}

static bool
tag_ok(const char *s)
{
    return ref_tag_valid(slice_of_cstr(s));
}

static bool
digest_ok(const char *s)
{
    return ref_digest_valid(slice_of_cstr(s));
}

/* fill writes n copies of c followed by a NUL into out. */
static char *
fill(char *out, char c, size_t n)
{
    memset(out, c, n);
    out[n] = '\0';
    return out;
}

static void
test_name_valid(void **state)
{
    (void)state;
    static const char *const good[] = {
        "a",
        "a/b",
        "a-b_c.d/e__f",
        "a--b",
        "a---b",
        "0",
        "library/ubuntu",
        "prod/team/app",
        "a.b.c",
        "a_b",
        "a__b",
        "9x/y8/z7",
        "a-b-c/d-e-f/g",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        if (!name_ok(good[i]))
            fail_msg("expected valid name: %s", good[i]);
    }
}

static void
test_name_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",      "../x", "A/b",  "a/B",  "a//b", "/a",  "a/",   "a_",  "-a",  "a-",
        "_a",    ".a",   "a.",   "a..b", "a___b", "a._b", "a-.b", "a b", "a:b", "a@b",
        "a\\b", "./a",  "a/./b", "a/../b", "..",  ".",   "/",    "a/-b", "a/b_", "ü",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (name_ok(bad[i]))
            fail_msg("expected invalid name: '%s'", bad[i]);
    }
    /* a NUL inside the slice is not part of the grammar */
    assert_false(ref_name_valid((slice){"a\0b", 3}));
}

static void
test_name_length(void **state)
{
    (void)state;
    char s[REF_NAME_MAX + 8];
    assert_true(name_ok(fill(s, 'a', REF_NAME_MAX)));
    assert_false(name_ok(fill(s, 'a', REF_NAME_MAX + 1)));
    assert_int_equal(REF_NAME_MAX, 255);

    /* 255 bytes made of segments still counts the slashes */
    fill(s, 'a', 255);
    for (size_t i = 1; i < 255; i += 2)
        s[i] = '/';
    assert_true(name_ok(s));
    s[255] = 'a';
    s[256] = '\0';
    assert_false(name_ok(s));
}

static void
test_tag_valid(void **state)
{
    (void)state;
    static const char *const good[] = {
        "latest", "v1.2.3", "1", "_", "_x", "A", "Z9", "v1-rc.2", "a__b..c--d", "sha256-abc",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        if (!tag_ok(good[i]))
            fail_msg("expected valid tag: %s", good[i]);
    }
    static const char *const bad[] = {
        "", ".x", "-x", ".", "-", "a/b", "a:b", "a b", "a@b", "a+b", "ü", "a\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (tag_ok(bad[i]))
            fail_msg("expected invalid tag: '%s'", bad[i]);
    }
    assert_false(ref_tag_valid((slice){"a\0b", 3}));
}

static void
test_tag_length(void **state)
{
    (void)state;
    char s[REF_TAG_MAX + 8];
    assert_int_equal(REF_TAG_MAX, 128);
    assert_true(tag_ok(fill(s, 'x', 128)));
    assert_false(tag_ok(fill(s, 'x', 129)));
    fill(s, '.', 128);
    s[0] = 'v';
    assert_true(tag_ok(s));
}

static void
test_digest_valid(void **state)
{
    (void)state;
    char s[256];
    char hex64[65], hex128[129];
    fill(hex64, 'a', 64);
    fill(hex128, '0', 128);

    snprintf(s, sizeof s, "sha256:%s", hex64);
    assert_true(digest_ok(s));
    assert_true(digest_ok("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    snprintf(s, sizeof s, "sha512:%s", hex128);
    assert_true(digest_ok(s));
    snprintf(s, sizeof s, "sha512:%s", "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
                                       "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e");
    assert_true(digest_ok(s));

    /* uppercase hex */
    assert_false(
        digest_ok("sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"));
    assert_false(
        digest_ok("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85A"));
    /* wrong lengths */
    snprintf(s, sizeof s, "sha256:%.*s", 63, hex64);
    assert_false(digest_ok(s));
    snprintf(s, sizeof s, "sha256:%sa", hex64);
    assert_false(digest_ok(s));
    snprintf(s, sizeof s, "sha256:%s", hex128);
    assert_false(digest_ok(s));
    snprintf(s, sizeof s, "sha512:%s", hex64);
    assert_false(digest_ok(s));
    snprintf(s, sizeof s, "sha512:%.*s", 127, hex128);
    assert_false(digest_ok(s));
    /* other algorithms and shapes */
    assert_false(digest_ok("md5:d41d8cd98f00b204e9800998ecf8427e"));
    snprintf(s, sizeof s, "md5:%s", hex64);
    assert_false(digest_ok(s));
    snprintf(s, sizeof s, "sha384:%s", hex64);
    assert_false(digest_ok(s));
    snprintf(s, sizeof s, "SHA256:%s", hex64);
    assert_false(digest_ok(s));
    snprintf(s, sizeof s, "sha256;%s", hex64);
    assert_false(digest_ok(s));
    snprintf(s, sizeof s, "sha256%s", hex64);
    assert_false(digest_ok(s));
    assert_false(digest_ok(hex64));
    assert_false(digest_ok(""));
    assert_false(digest_ok("sha256:"));
    /* a non-hex character in the middle */
    snprintf(s, sizeof s, "sha256:%s", hex64);
    s[7 + 30] = 'g';
    assert_false(digest_ok(s));
    s[7 + 30] = ':';
    assert_false(digest_ok(s));
}

static void
test_is_digest(void **state)
{
    (void)state;
    assert_true(ref_is_digest(slice_of_cstr("sha256:abc")));
    assert_true(ref_is_digest(slice_of_cstr("md5:x")));
    assert_false(ref_is_digest(slice_of_cstr("latest")));
    assert_false(ref_is_digest(slice_of_cstr("")));
}

struct glob_case {
    const char *glob, *name;
    bool match;
};

static void
test_glob(void **state)
{
    (void)state;
    static const struct glob_case cases[] = {
        /* literal */
        {"a/b", "a/b", true},
        {"a/b", "a/bc", false},
        {"a/b", "a", false},
        /* '*' stays within one segment */
        {"*", "a", true},
        {"*", "abc", true},
        {"*", "a/b", false},
        {"base/*", "base/alpine", true},
        {"base/*", "base/alpine/edge", false},
        {"base/*", "base", false},
        {"*/x", "a/x", true},
        {"*/x", "a/b/x", false},
        {"a*c", "abbbc", true},
        {"a*c", "ab/c", false},
        {"*-tmp", "build-tmp", true},
        /* '**' crosses segments */
        {"**", "a", true},
        {"**", "a/b/c", true},
        {"prod/**", "prod/a", true},
        {"prod/**", "prod/a/b", true},
        {"prod/**", "staging/a/b", false},
        {"prod/**", "production/a", false},
        {"**/x", "a/b/x", true},
        {"**/x", "x", true},
        {"**/x", "a/b/y", false},
        {"**/tmp-*", "tmp-1", true},
        {"**/tmp-*", "team/app/tmp-1", true},
        {"**/tmp-*", "team/tmp-1/app", false},
        {"a/**/z", "a/z", true},
        {"a/**/z", "a/b/c/z", true},
        {"a/**/z", "a/b/c/y", false},
        /* '?' is one character, not a slash */
        {"a?c", "abc", true},
        {"a?c", "a/c", false},
        {"a?c", "ac", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct glob_case *c = &cases[i];
        if (ref_glob_match(c->glob, c->name) != c->match)
            fail_msg("glob '%s' on '%s': expected %s", c->glob, c->name,
                     c->match ? "match" : "no match");
    }
}

static void
test_glob_pathological(void **state)
{
    (void)state;
    /* many stars against a long non-matching name must finish (bounded recursion) */
    char name[256];
    fill(name, 'a', 255);
    assert_false(ref_glob_match("*a*a*a*a*a*a*a*a*a*a*b", name));
    assert_false(ref_glob_match("**a**a**a**b", name));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_name_valid),  cmocka_unit_test(test_name_invalid),
        cmocka_unit_test(test_name_length), cmocka_unit_test(test_tag_valid),
        cmocka_unit_test(test_tag_length),  cmocka_unit_test(test_digest_valid),
        cmocka_unit_test(test_is_digest),   cmocka_unit_test(test_glob),
        cmocka_unit_test(test_glob_pathological),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
