/* Streaming SHA-256/512 over OpenSSL EVP. */
#include "digest.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "banned.h"

struct hasher {
    EVP_MD_CTX *ctx;
    enum digest_alg alg;
};

static const EVP_MD *
digest_md(enum digest_alg alg)
{
    return alg == DIGEST_SHA512 ? EVP_sha512() : EVP_sha256();
}

hasher *
hasher_new(enum digest_alg alg)
{
    hasher *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->alg = alg;
    h->ctx = EVP_MD_CTX_new();
    if (!h->ctx || EVP_DigestInit_ex(h->ctx, digest_md(alg), NULL) != 1) {
        hasher_free(h);
        return NULL;
    }
    return h;
}

void
hasher_free(hasher *h)
{
    if (!h)
        return;
    EVP_MD_CTX_free(h->ctx);
    free(h);
}

void
hasher_update(hasher *h, const void *ptr, size_t len)
{
    if (len)
        EVP_DigestUpdate(h->ctx, ptr, len);
}

void
hasher_reset(hasher *h)
{
    EVP_DigestInit_ex(h->ctx, digest_md(h->alg), NULL);
}

void
hasher_final(hasher *h, char out[DIGEST_MAX])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_DigestFinal_ex(h->ctx, md, &n);
    const char *prefix = h->alg == DIGEST_SHA512 ? "sha512:" : "sha256:";
    size_t p = strlen(prefix);
    memcpy(out, prefix, p);
    for (unsigned i = 0; i < n; i++) {
        out[p++] = hex[md[i] >> 4];
        out[p++] = hex[md[i] & 15];
    }
    out[p] = '\0';
}

err
digest_of(enum digest_alg alg, const void *ptr, size_t len, char out[DIGEST_MAX])
{
    hasher *h = hasher_new(alg);
    if (!h)
        return ERR_NOMEM;
    hasher_update(h, ptr, len);
    hasher_final(h, out);
    hasher_free(h);
    return ERR_OK;
}

enum digest_alg
digest_alg_of(const char *digest)
{
    return strncmp(digest, "sha512:", 7) == 0 ? DIGEST_SHA512 : DIGEST_SHA256;
}
