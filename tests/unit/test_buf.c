/* Unit tests for common/buf: borrowed slices, the owned NUL-terminated buf, JSON
 * string escaping, decimal parsing and the bounded string copies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/buf.h"

/* ---- slices ---- */

static void
test_slice_basics(void **state)
{
    (void)state;
    slice n = slice_of_cstr(NULL);
    assert_non_null(n.ptr);
    assert_int_equal(n.len, 0);
    slice a = slice_of_cstr("hello");
    assert_int_equal(a.len, 5);
    slice lit = SLICE_LIT("hello");
    assert_int_equal(lit.len, 5);
    assert_true(slice_eq(a, lit));
    assert_true(slice_eq_cstr(a, "hello"));
    assert_false(slice_eq_cstr(a, "hell"));
    assert_false(slice_eq_cstr(a, "hello!"));
    assert_false(slice_eq_cstr(a, "Hello"));
    assert_true(slice_eq(n, SLICE_LIT("")));
    assert_true(slice_eq((slice){NULL, 0}, (slice){"x", 0}));
    /* bytes after len do not count */
    assert_true(slice_eq_cstr((slice){"hello world", 5}, "hello"));
    /* embedded NUL bytes are compared like any other byte */
    assert_true(slice_eq((slice){"a\0b", 3}, (slice){"a\0b", 3}));
    assert_false(slice_eq((slice){"a\0b", 3}, (slice){"a\0c", 3}));

    assert_true(slice_case_eq_cstr(SLICE_LIT("Content-Type"), "content-type"));
    assert_true(slice_case_eq_cstr(SLICE_LIT("content-type"), "CONTENT-TYPE"));
    assert_false(slice_case_eq_cstr(SLICE_LIT("content-typ"), "content-type"));
    assert_false(slice_case_eq_cstr(SLICE_LIT("content_type"), "content-type"));
    /* only ASCII letters fold: '@' (0x40) and '`' (0x60) differ by 32 but are not letters */
    assert_false(slice_case_eq_cstr(SLICE_LIT("@"), "`"));
    assert_false(slice_case_eq_cstr(SLICE_LIT("["), "{"));

    assert_true(slice_starts_with(SLICE_LIT("/v2/foo"), "/v2/"));
    assert_true(slice_starts_with(SLICE_LIT("/v2/"), "/v2/"));
    assert_true(slice_starts_with(SLICE_LIT("abc"), ""));
    assert_false(slice_starts_with(SLICE_LIT("/v2"), "/v2/"));
    assert_false(slice_starts_with((slice){"/v2/", 3}, "/v2/"));
}

static bool
parse(const char *s, uint64_t *v)
{
    return slice_parse_u64(slice_of_cstr(s), v);
}

static void
test_parse_u64(void **state)
{
    (void)state;
    uint64_t v = 12345;
    assert_true(parse("0", &v));
    assert_int_equal(v, 0);
    assert_true(parse("42", &v));
    assert_int_equal(v, 42);
    assert_true(parse("18446744073709551615", &v));
    assert_true(v == UINT64_MAX);
    assert_true(parse("18446744073709551610", &v));
    assert_true(v == UINT64_MAX - 5);
    assert_true(parse("00000000000000000007", &v)); /* 20 digits */
    assert_int_equal(v, 7);

    v = 777;
    /* overflow, by one and by a lot */
    assert_false(parse("18446744073709551616", &v));
    assert_false(parse("18446744073709551620", &v));
    assert_false(parse("19000000000000000000", &v));
    assert_false(parse("99999999999999999999", &v));
    assert_false(parse("184467440737095516150", &v));
    assert_false(parse("000000000000000000001", &v)); /* 21 bytes */
    /* anything that is not a plain decimal */
    assert_false(parse("", &v));
    assert_false(parse("-1", &v));
    assert_false(parse("+1", &v));
    assert_false(parse(" 1", &v));
    assert_false(parse("1 ", &v));
    assert_false(parse("1a", &v));
    assert_false(parse("0x10", &v));
    assert_false(parse("1.5", &v));
    assert_false(parse("/", &v)); /* '0' - 1 */
    assert_false(parse(":", &v)); /* '9' + 1 */
    assert_false(slice_parse_u64((slice){"1\0002", 3}, &v));
    /* a failed parse leaves *out alone */
    assert_int_equal(v, 777);
    /* only len bytes are parsed */
    assert_true(slice_parse_u64((slice){"123abc", 3}, &v));
    assert_int_equal(v, 123);
}

/* ---- buf ---- */

static void
assert_buf_invariants(const buf *b)
{
    assert_non_null(b->ptr);
    assert_int_equal(b->ptr[b->len], '\0');
    if (b->cap)
        assert_true(b->len < b->cap);
    else
        assert_int_equal(b->len, 0);
}

static void
test_buf_init_release(void **state)
{
    (void)state;
    buf a = BUF_INIT, b;
    buf_init(&b);
    assert_buf_invariants(&a);
    assert_buf_invariants(&b);
    assert_string_equal(a.ptr, "");
    assert_string_equal(b.ptr, "");
    /* releasing or resetting an empty buffer is harmless, twice */
    buf_release(&a);
    buf_release(&a);
    buf_reset(&b);
    buf_release(&b);
    assert_buf_invariants(&a);
    assert_buf_invariants(&b);

    assert_int_equal(buf_adds(&a, "x"), ERR_OK);
    assert_true(a.cap > 0);
    buf_release(&a);
    assert_int_equal(a.len, 0);
    assert_int_equal(a.cap, 0);
    assert_string_equal(a.ptr, "");
    /* a zero-length add may or may not allocate but stays valid */
    assert_int_equal(buf_add(&a, NULL, 0), ERR_OK);
    assert_buf_invariants(&a);
    buf_release(&a);
}

static void
test_buf_growth(void **state)
{
    (void)state;
    buf b = BUF_INIT;
    size_t total = 0;
    /* many small appends across many reallocations */
    for (int i = 0; i < 10000; i++) {
        char c = (char)('a' + i % 26);
        assert_int_equal(buf_addc(&b, c), ERR_OK);
        total++;
        assert_int_equal(b.len, total);
        assert_buf_invariants(&b);
    }
    for (size_t i = 0; i < total; i++)
        assert_int_equal(b.ptr[i], 'a' + (int)(i % 26));
    assert_int_equal(strlen(b.ptr), total);

    /* one large append */
    size_t big = 3u << 20;
    char *src = malloc(big);
    assert_non_null(src);
    for (size_t i = 0; i < big; i++)
        src[i] = (char)(i * 7);
    assert_int_equal(buf_add(&b, src, big), ERR_OK);
    assert_int_equal(b.len, total + big);
    assert_memory_equal(b.ptr + total, src, big);
    assert_buf_invariants(&b);
    free(src);

    /* reset keeps the allocation */
    size_t cap = b.cap;
    char *ptr = b.ptr;
    buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, cap);
    assert_ptr_equal(b.ptr, ptr);
    assert_string_equal(b.ptr, "");
    assert_int_equal(buf_adds(&b, "again"), ERR_OK);
    assert_string_equal(b.ptr, "again");
    assert_ptr_equal(b.ptr, ptr);
    buf_release(&b);
}

static void
test_buf_grow(void **state)
{
    (void)state;
    buf b = BUF_INIT;
    assert_int_equal(buf_grow(&b, 100), ERR_OK);
    assert_true(b.cap >= 101);
    assert_int_equal(b.len, 0);
    assert_buf_invariants(&b);
    size_t cap = b.cap;
    assert_int_equal(buf_grow(&b, cap - 1), ERR_OK); /* already fits */
    assert_int_equal(b.cap, cap);

    assert_int_equal(buf_adds(&b, "keep"), ERR_OK);
    cap = b.cap;
    char *ptr = b.ptr;
    /* impossible sizes fail cleanly and leave b as it was */
    assert_int_equal(buf_grow(&b, SIZE_MAX), ERR_NOMEM);
    assert_int_equal(buf_grow(&b, SIZE_MAX - 10), ERR_NOMEM);
    assert_int_equal(buf_grow(&b, SIZE_MAX / 2), ERR_NOMEM);
    assert_int_equal(buf_add(&b, "x", SIZE_MAX), ERR_NOMEM);
    assert_int_equal(b.cap, cap);
    assert_ptr_equal(b.ptr, ptr);
    assert_string_equal(b.ptr, "keep");
    buf_release(&b);

    /* the same on a buffer that never grew */
    buf e = BUF_INIT;
    assert_int_equal(buf_grow(&e, SIZE_MAX), ERR_NOMEM);
    assert_int_equal(e.cap, 0);
    assert_string_equal(e.ptr, "");
    buf_release(&e);
}

static void
test_buf_addf(void **state)
{
    (void)state;
    buf b = BUF_INIT;
    assert_int_equal(buf_addf(&b, "%s=%d", "n", 42), ERR_OK);
    assert_string_equal(b.ptr, "n=42");
    assert_int_equal(buf_addf(&b, " %llu", (unsigned long long)UINT64_MAX), ERR_OK);
    assert_string_equal(b.ptr, "n=42 18446744073709551615");
    assert_int_equal(buf_addf(&b, "%s", ""), ERR_OK);
    assert_int_equal(b.len, strlen("n=42 18446744073709551615"));

    /* longer than the internal 256-byte scratch: the second vsnprintf path */
    char longs[1001];
    memset(longs, 'q', 1000);
    longs[1000] = '\0';
    buf_reset(&b);
    assert_int_equal(buf_adds(&b, "<"), ERR_OK);
    assert_int_equal(buf_addf(&b, "%s|%d", longs, 7), ERR_OK);
    assert_int_equal(b.len, 1 + 1000 + 2);
    assert_int_equal(b.ptr[0], '<');
    assert_memory_equal(b.ptr + 1, longs, 1000);
    assert_string_equal(b.ptr + 1001, "|7");
    assert_buf_invariants(&b);

    /* exactly at the scratch boundary: 255 and 256 bytes */
    for (size_t n = 254; n <= 257; n++) {
        buf_reset(&b);
        assert_int_equal(buf_addf(&b, "%.*s", (int)n, longs), ERR_OK);
        assert_int_equal(b.len, n);
        assert_int_equal(strlen(b.ptr), n);
    }
    buf_release(&b);
}

static void
json_is(const char *in, size_t len, const char *want)
{
    buf b = BUF_INIT;
    assert_int_equal(buf_add_json_str(&b, in, len), ERR_OK);
    assert_string_equal(b.ptr, want);
    assert_int_equal(b.len, strlen(want));
    buf_release(&b);
}

static void
test_buf_json_str(void **state)
{
    (void)state;
    json_is("", 0, "\"\"");
    json_is("plain", 5, "\"plain\"");
    json_is("a\"b", 3, "\"a\\\"b\"");
    json_is("a\\b", 3, "\"a\\\\b\"");
    json_is("line\nnext\ttab\r", 14, "\"line\\u000anext\\u0009tab\\u000d\"");
    json_is("\x01\x1f", 2, "\"\\u0001\\u001f\"");
    json_is("a\0b", 3, "\"a\\u0000b\"");
    /* DEL and '/' need no escape; UTF-8 bytes pass through */
    json_is("\x7f/", 2, "\"\x7f/\"");
    json_is("h\xc3\xa9", 3, "\"h\xc3\xa9\"");
    /* len bounds the input */
    json_is("abcdef", 3, "\"abc\"");

    /* appends to existing contents */
    buf b = BUF_INIT;
    assert_int_equal(buf_adds(&b, "{\"k\":"), ERR_OK);
    assert_int_equal(buf_add_json_str(&b, "v", 1), ERR_OK);
    assert_int_equal(buf_addc(&b, '}'), ERR_OK);
    assert_string_equal(b.ptr, "{\"k\":\"v\"}");

    /* a long string of escapes grows past the initial reservation */
    char ctl[3000];
    memset(ctl, '\n', sizeof ctl);
    buf_reset(&b);
    assert_int_equal(buf_add_json_str(&b, ctl, sizeof ctl), ERR_OK);
    assert_int_equal(b.len, 2 + 6 * sizeof ctl);
    assert_buf_invariants(&b);
    buf_release(&b);
}

static void
test_buf_detach(void **state)
{
    (void)state;
    buf b = BUF_INIT;
    size_t len = 99;
    char *p = buf_detach(&b, &len);
    assert_non_null(p);
    assert_int_equal(len, 0);
    assert_string_equal(p, "");
    assert_true(p != buf_empty_);
    free(p);

    assert_int_equal(buf_adds(&b, "owned"), ERR_OK);
    char *before = b.ptr;
    p = buf_detach(&b, &len);
    assert_ptr_equal(p, before);
    assert_int_equal(len, 5);
    assert_string_equal(p, "owned");
    /* b is empty again and owns nothing */
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
    assert_string_equal(b.ptr, "");
    buf_release(&b);
    free(p);

    assert_int_equal(buf_adds(&b, "x"), ERR_OK);
    p = buf_detach(&b, NULL);
    assert_string_equal(p, "x");
    free(p);
}

static void
test_buf_slice_truncate(void **state)
{
    (void)state;
    buf b = BUF_INIT;
    assert_int_equal(buf_slice(&b).len, 0);
    assert_int_equal(buf_adds(&b, "abcdef"), ERR_OK);
    slice s = buf_slice(&b);
    assert_ptr_equal(s.ptr, b.ptr);
    assert_int_equal(s.len, 6);
    buf_truncate(&b, 10); /* no-op */
    assert_string_equal(b.ptr, "abcdef");
    buf_truncate(&b, 6); /* no-op */
    assert_string_equal(b.ptr, "abcdef");
    buf_truncate(&b, 3);
    assert_int_equal(b.len, 3);
    assert_string_equal(b.ptr, "abc");
    buf_truncate(&b, 0);
    assert_string_equal(b.ptr, "");
    buf_release(&b);
    buf_truncate(&b, 0); /* on a buffer that owns nothing */
    assert_string_equal(b.ptr, "");
}

static void
test_str_copy(void **state)
{
    (void)state;
    char d[8];
    memset(d, 'X', sizeof d);
    assert_true(str_copy(d, sizeof d, "1234567"));
    assert_string_equal(d, "1234567");
    memset(d, 'X', sizeof d);
    assert_false(str_copy(d, sizeof d, "12345678"));
    assert_string_equal(d, "1234567");
    assert_true(str_copy(d, sizeof d, ""));
    assert_string_equal(d, "");
    assert_true(str_copy(d, sizeof d, NULL));
    assert_string_equal(d, "");
    assert_false(str_copy(d, 1, "a"));
    assert_string_equal(d, "");
    assert_true(str_copy(d, 1, ""));

    assert_true(str_copy_slice(d, sizeof d, (slice){"abcdefgh", 3}));
    assert_string_equal(d, "abc");
    assert_false(str_copy_slice(d, 4, SLICE_LIT("abcd")));
    assert_string_equal(d, "abc");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slice_basics),     cmocka_unit_test(test_parse_u64),
        cmocka_unit_test(test_buf_init_release), cmocka_unit_test(test_buf_growth),
        cmocka_unit_test(test_buf_grow),         cmocka_unit_test(test_buf_addf),
        cmocka_unit_test(test_buf_json_str),     cmocka_unit_test(test_buf_detach),
        cmocka_unit_test(test_buf_slice_truncate), cmocka_unit_test(test_str_copy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
