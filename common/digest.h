/* Content digests ("sha256:<hex>", "sha512:<hex>") through OpenSSL's EVP API. */
#ifndef GEOREG_DIGEST_H
#define GEOREG_DIGEST_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* Longest digest string we accept, with its NUL: "sha512:" + 128 hex + 1. */
#define DIGEST_MAX 136

enum digest_alg { DIGEST_SHA256 = 0, DIGEST_SHA512 = 1 };

/* hasher is a streaming digest computation. */
typedef struct hasher hasher;

/* hasher_new returns a new hasher for alg, or NULL on ERR_NOMEM. Free with hasher_free. */
hasher *hasher_new(enum digest_alg alg);
void hasher_free(hasher *h);
/* hasher_update feeds len bytes. */
void hasher_update(hasher *h, const void *ptr, size_t len);
/* hasher_final writes "alg:hex" into out (DIGEST_MAX bytes); h can't be updated after. */
void hasher_final(hasher *h, char out[DIGEST_MAX]);
/* hasher_reset starts over (same algorithm). */
void hasher_reset(hasher *h);

/* digest_of computes the digest of a buffer in one call. */
err digest_of(enum digest_alg alg, const void *ptr, size_t len, char out[DIGEST_MAX]);
/* digest_alg_of returns the algorithm of a valid digest string. */
enum digest_alg digest_alg_of(const char *digest);

#endif
