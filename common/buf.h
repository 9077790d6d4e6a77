/* Byte slices and growable buffers: `slice` borrows bytes, `buf` owns them and is
 * always NUL-terminated so its bytes can be used as a C string. */
#ifndef GEOREG_BUF_H
#define GEOREG_BUF_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* slice is a borrowed view of len bytes at ptr; it owns nothing. */
typedef struct {
    const char *ptr;
    size_t len;
} slice;

#define SLICE_LIT(s) ((slice){(s), sizeof(s) - 1})

/* slice_of_cstr borrows a NUL-terminated string (NULL gives an empty slice). */
slice slice_of_cstr(const char *s);
/* slice_eq compares bytes; slice_eq_cstr against a C string; slice_case_eq ignores ASCII case. */
bool slice_eq(slice a, slice b);
bool slice_eq_cstr(slice a, const char *s);
bool slice_case_eq_cstr(slice a, const char *s);
bool slice_starts_with(slice a, const char *prefix);
/* slice_parse_u64 parses a whole slice as a decimal uint64; false on any other byte,
 * an empty slice or overflow. */
bool slice_parse_u64(slice s, uint64_t *out);

/* buf owns a heap array; ptr is never NULL after buf_init (it points at a static ""
 * until the first growth), and ptr[len] is always '\0'. */
typedef struct {
    char *ptr;
    size_t len;
    size_t cap;
} buf;

#define BUF_INIT {buf_empty_, 0, 0}
extern char buf_empty_[1];

/* buf_init makes an empty buffer that owns nothing. */
void buf_init(buf *b);
/* buf_release frees what b owns and leaves it empty; safe on an empty buffer. */
void buf_release(buf *b);
/* buf_reset keeps the allocation but empties the contents. */
void buf_reset(buf *b);
/* buf_grow ensures room for extra more bytes (plus the NUL). ERR_NOMEM on failure,
 * b unchanged. */
err buf_grow(buf *b, size_t extra);
err buf_add(buf *b, const void *ptr, size_t len);
err buf_adds(buf *b, const char *s);
err buf_addc(buf *b, char c);
err buf_addf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
err buf_vaddf(buf *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/* buf_add_json_str appends s as a JSON string literal with quotes and escapes. */
err buf_add_json_str(buf *b, const char *s, size_t len);
/* buf_detach returns the heap array (caller frees with free()) and empties b; a buffer
 * that never grew returns a new allocation of "". NULL on ERR_NOMEM. */
char *buf_detach(buf *b, size_t *len);
/* buf_slice borrows the contents. */
slice buf_slice(const buf *b);
/* buf_truncate shortens to len (no-op when len >= b->len). */
void buf_truncate(buf *b, size_t len);

/* str_copy copies src into dst of size n, truncating; always NUL-terminates (n > 0).
 * Returns false when src did not fit. */
bool str_copy(char *dst, size_t n, const char *src);
/* str_copy_slice is str_copy for a slice. */
bool str_copy_slice(char *dst, size_t n, slice src);

#endif
