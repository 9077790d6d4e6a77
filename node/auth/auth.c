/* Identities, secrets, grants and tokens. Identity records are JSON values of the
 * replicated metadata keys "id/<name>", so they reach every region through the
 * replication log; this node keeps a parsed copy in memory, reloaded whenever the
 * store's replicated-metadata version changes. */
#include "../../common/clock.h"
#include "auth.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../../common/digest.h"
#include "../../common/log.h"
#include "../../common/ref.h"
#include "../../common/banned.h"

#define PBKDF2_ITER 100000
#define VCACHE_SIZE 256
#define VCACHE_TTL_S 300
#define FAIL_SLOTS 256
#define FAIL_WINDOW_S 60
#define FAIL_FREE 5 /* failures allowed in a window before slowing down */

struct identity {
    char name[64];
    char kind[8];
    char secret[200]; /* pbkdf2-sha256$iter$salt$hash */
    struct auth_grant grants[AUTH_MAX_GRANTS];
    size_t ngrants;
    bool disabled;
    uint64_t expires;
    uint64_t created;
    char created_by[64];
};

struct vcache_entry {
    unsigned char key[32]; /* sha256(name \0 secret) */
    char name[64];
    uint64_t version;
    uint64_t until;
};

/* A refresh token as this node remembers it: never the token, only its SHA-256. */
struct refresh_entry {
    unsigned char hash[32]; /* sha256 of the token */
    unsigned char bind[32]; /* identity_bind of the identity it was issued to */
    char name[64];
    uint64_t expires; /* 0: a free slot */
};

struct fail_entry {
    char peer[64];
    unsigned n;
    uint64_t window_start, blocked_until, last;
};

struct auth {
    store *store;
    enum auth_mode mode;
    char service[128];
    char realm[512];
    char issuer[64];
    uint64_t ttl;
    EVP_PKEY *key;
    char kid[17];
    struct auth_grant anon[AUTH_MAX_GRANTS];
    size_t nanon;
    bool admin_enabled;
    bool have_admin;
    struct identity admin;

    pthread_rwlock_t lock; /* identity cache */
    struct identity *ids;
    size_t nids;
    uint64_t version;
    bool loaded;

    pthread_mutex_t vmu;
    struct vcache_entry vc[VCACHE_SIZE];

    pthread_mutex_t fmu;
    struct fail_entry fails[FAIL_SLOTS];

    pthread_mutex_t rmu;
    struct refresh_entry *refresh; /* AUTH_REFRESH_MAX slots (token mode), a ring */
    size_t refresh_next;           /* the slot the next token takes: the oldest one */
};


/* ---- base64 ---- */

static void
b64_encode(const unsigned char *in, size_t n, bool url, buf *out)
{
    size_t cap = 4 * ((n + 2) / 3) + 1;
    buf_grow(out, cap);
    int len = EVP_EncodeBlock((unsigned char *)out->ptr + out->len, in, (int)n);
    char *p = out->ptr + out->len;
    if (url) {
        for (int i = 0; i < len; i++)
            p[i] = p[i] == '+' ? '-' : p[i] == '/' ? '_' : p[i];
        while (len > 0 && p[len - 1] == '=')
            len--;
    }
    out->len += (size_t)len;
    out->ptr[out->len] = '\0';
}

/* b64_decode decodes standard or url-safe base64 (padding optional). */
static bool
b64_decode(slice in, buf *out)
{
    if (in.len > (1u << 20))
        return false;
    buf t = BUF_INIT;
    for (size_t i = 0; i < in.len; i++) {
        char c = in.ptr[i];
        buf_addc(&t, c == '-' ? '+' : c == '_' ? '/' : c);
    }
    while (t.len % 4)
        buf_addc(&t, '=');
    buf_reset(out);
    buf_grow(out, t.len);
    int n = EVP_DecodeBlock((unsigned char *)out->ptr, (const unsigned char *)t.ptr, (int)t.len);
    bool ok = n >= 0;
    if (ok) {
        /* EVP_DecodeBlock counts padding as zero bytes */
        size_t pad = 0;
        for (size_t i = t.len; i > 0 && t.ptr[i - 1] == '='; i--)
            pad++;
        out->len = (size_t)n - pad;
        out->ptr[out->len] = '\0';
    }
    buf_release(&t);
    return ok;
}

/* ---- actions, grants ---- */

static const struct {
    const char *name;
    unsigned bits;
} action_names[] = {
    {"pull", ACT_PULL},
    {"push", ACT_PUSH | ACT_PULL},
    {"delete", ACT_DELETE},
    {"metadata_read", ACT_METADATA},
    {"import", ACT_IMPORT | ACT_PUSH | ACT_PULL},
    {"admin", ACT_ALL},
    {"*", ACT_ALL},
};

bool
auth_parse_actions(const char *s, unsigned *out)
{
    *out = 0;
    while (*s) {
        const char *c = strchr(s, ',');
        size_t l = c ? (size_t)(c - s) : strlen(s);
        bool found = false;
        for (size_t i = 0; i < sizeof action_names / sizeof action_names[0]; i++) {
            if (strlen(action_names[i].name) == l && !strncmp(s, action_names[i].name, l)) {
                *out |= action_names[i].bits;
                found = true;
            }
        }
        if (!found && l)
            return false;
        s += l + (c ? 1 : 0);
    }
    return *out != 0;
}

void
auth_actions_str(unsigned bits, char *out, size_t n)
{
    static const char *const names[] = {"pull", "push", "delete", "metadata_read", "import",
                                        "admin"};
    buf b = BUF_INIT;
    for (int i = 0; i < 6; i++)
        if (bits & (1u << i))
            buf_addf(&b, "%s%s", b.len ? "," : "", names[i]);
    str_copy(out, n, b.ptr);
    buf_release(&b);
}

bool
auth_parse_scope(const char *s, struct auth_grant *g)
{
    const char *c = strrchr(s, ':');
    if (!c || c == s || (size_t)(c - s) >= sizeof g->glob)
        return false;
    memcpy(g->glob, s, (size_t)(c - s));
    g->glob[c - s] = '\0';
    return auth_parse_actions(c + 1, &g->actions);
}

static bool
grants_allow(const struct auth_grant *g, size_t n, const char *repo, unsigned actions)
{
    unsigned have = 0;
    /* registry-wide rights (repo NULL) come only from a registry-wide grant */
    for (size_t i = 0; i < n; i++)
        if (repo ? ref_glob_match(g[i].glob, repo) : strcmp(g[i].glob, "**") == 0)
            have |= g[i].actions;
    return (have & actions) == actions;
}

/* current_bits: the actions grants give on the exact repository name. */
static unsigned
current_bits(const struct auth_grant *g, size_t n, const char *repo)
{
    unsigned have = 0;
    for (size_t i = 0; i < n; i++)
        if (ref_glob_match(g[i].glob, repo))
            have |= g[i].actions;
    return have;
}

bool
auth_allows(const auth *a, const struct auth_principal *who, const char *repo, unsigned actions)
{
    if (a->mode == AUTH_NONE)
        return true;
    /* the catalog is filtered per identity, so asking for it needs no grant */
    actions &= ~ACT_CATALOG;
    if (actions & ACT_READ) {
        /* reading names (tag lists, catalog, locate): pull or metadata_read */
        unsigned rest = actions & ~ACT_READ;
        return auth_allows(a, who, repo, rest | ACT_PULL) ||
               auth_allows(a, who, repo, rest | ACT_METADATA);
    }
    if (grants_allow(who->grants, who->ngrants, repo, actions))
        return true;
    /* anonymous pull also applies to everyone who logged in */
    return repo && !(actions & ~ACT_PULL) && grants_allow(a->anon, a->nanon, repo, actions);
}

bool
auth_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 63)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-' || c == '@'))
            return false;
    }
    return true;
}

/* ---- secrets ---- */

static err
hash_secret(const char *secret, char *out, size_t n)
{
    unsigned char salt[16], dk[32];
    if (RAND_bytes(salt, sizeof salt) != 1)
        return ERR_INTERNAL;
    if (PKCS5_PBKDF2_HMAC(secret, (int)strlen(secret), salt, sizeof salt, PBKDF2_ITER,
                          EVP_sha256(), sizeof dk, dk) != 1)
        return ERR_INTERNAL;
    buf b = BUF_INIT;
    buf_addf(&b, "pbkdf2-sha256$%d$", PBKDF2_ITER);
    b64_encode(salt, sizeof salt, false, &b);
    buf_addc(&b, '$');
    b64_encode(dk, sizeof dk, false, &b);
    bool ok = str_copy(out, n, b.ptr);
    buf_release(&b);
    OPENSSL_cleanse(dk, sizeof dk);
    return ok ? ERR_OK : ERR_INTERNAL;
}

/* verify_secret checks secret against a stored hash in constant time. */
static bool
verify_secret(const char *secret, const char *stored)
{
    char copy[200];
    if (!str_copy(copy, sizeof copy, stored) || strncmp(copy, "pbkdf2-sha256$", 14) != 0)
        return false;
    char *p = copy + 14;
    char *d1 = strchr(p, '$');
    if (!d1)
        return false;
    *d1 = '\0';
    char *d2 = strchr(d1 + 1, '$');
    if (!d2)
        return false;
    *d2 = '\0';
    uint64_t iter;
    if (!slice_parse_u64(slice_of_cstr(p), &iter) || iter < 1000 || iter > 10000000)
        return false;
    buf salt = BUF_INIT, want = BUF_INIT;
    bool ok = b64_decode(slice_of_cstr(d1 + 1), &salt) && b64_decode(slice_of_cstr(d2 + 1), &want) &&
              want.len == 32;
    unsigned char dk[32];
    if (ok)
        ok = PKCS5_PBKDF2_HMAC(secret, (int)strlen(secret), (unsigned char *)salt.ptr,
                               (int)salt.len, (int)iter, EVP_sha256(), sizeof dk, dk) == 1 &&
             CRYPTO_memcmp(dk, want.ptr, 32) == 0;
    OPENSSL_cleanse(dk, sizeof dk);
    buf_release(&salt);
    buf_release(&want);
    return ok;
}

static void
random_secret(char *out, size_t n)
{
    unsigned char r[32];
    RAND_bytes(r, sizeof r);
    buf b = BUF_INIT;
    b64_encode(r, sizeof r, true, &b);
    str_copy(out, n, b.ptr);
    buf_release(&b);
}

/* ---- identity records ---- */

static bool
identity_parse(slice v, struct identity *id)
{
    json_error_t je;
    json_t *j = json_loadb(v.ptr, v.len, 0, &je);
    if (!j)
        return false;
    memset(id, 0, sizeof *id);
    str_copy(id->name, sizeof id->name, json_string_value(json_object_get(j, "name")));
    str_copy(id->kind, sizeof id->kind, json_string_value(json_object_get(j, "kind")));
    str_copy(id->secret, sizeof id->secret, json_string_value(json_object_get(j, "secret")));
    str_copy(id->created_by, sizeof id->created_by,
             json_string_value(json_object_get(j, "created_by")));
    id->disabled = json_is_true(json_object_get(j, "disabled"));
    id->expires = (uint64_t)json_integer_value(json_object_get(j, "expires"));
    id->created = (uint64_t)json_integer_value(json_object_get(j, "created"));
    json_t *gs = json_object_get(j, "grants");
    size_t i;
    json_t *g;
    json_array_foreach(gs, i, g)
    {
        if (id->ngrants >= AUTH_MAX_GRANTS)
            break;
        struct auth_grant *gr = &id->grants[id->ngrants];
        str_copy(gr->glob, sizeof gr->glob, json_string_value(json_object_get(g, "repo")));
        gr->actions = (unsigned)json_integer_value(json_object_get(g, "bits"));
        id->ngrants++;
    }
    json_decref(j);
    return id->name[0] != '\0';
}

static void
identity_json(const struct identity *id, bool with_secret, buf *b)
{
    buf_adds(b, "{\"name\":");
    buf_add_json_str(b, id->name, strlen(id->name));
    buf_adds(b, ",\"kind\":");
    buf_add_json_str(b, id->kind, strlen(id->kind));
    if (with_secret) {
        buf_adds(b, ",\"secret\":");
        buf_add_json_str(b, id->secret, strlen(id->secret));
    }
    buf_addf(b, ",\"disabled\":%s,\"expires\":%llu,\"created\":%llu,\"created_by\":",
             id->disabled ? "true" : "false", (unsigned long long)id->expires,
             (unsigned long long)id->created);
    buf_add_json_str(b, id->created_by, strlen(id->created_by));
    buf_adds(b, ",\"grants\":[");
    for (size_t i = 0; i < id->ngrants; i++) {
        char acts[128];
        auth_actions_str(id->grants[i].actions, acts, sizeof acts);
        buf_addf(b, "%s{\"repo\":", i ? "," : "");
        buf_add_json_str(b, id->grants[i].glob, strlen(id->grants[i].glob));
        buf_addf(b, ",\"actions\":\"%s\",\"bits\":%u}", acts, id->grants[i].actions);
    }
    buf_adds(b, "]}");
}

struct load_ctx {
    struct identity *ids;
    size_t n, cap;
};

static bool
on_identity(void *arg, slice key, slice value)
{
    struct load_ctx *lc = arg;
    (void)key;
    if (lc->n == lc->cap) {
        size_t nc = lc->cap ? lc->cap * 2 : 32;
        struct identity *p = realloc(lc->ids, nc * sizeof *p);
        if (!p)
            return false;
        lc->ids = p;
        lc->cap = nc;
    }
    if (identity_parse(value, &lc->ids[lc->n]))
        lc->n++;
    return true;
}

/* reload reads every identity when the replicated metadata changed. */
static void
reload(auth *a)
{
    uint64_t v = store_rmeta_version(a->store);
    struct load_ctx lc = {0};
    store_rmeta_list(a->store, "id/", on_identity, &lc);
    pthread_rwlock_wrlock(&a->lock);
    free(a->ids);
    a->ids = lc.ids;
    a->nids = lc.n;
    a->version = v;
    a->loaded = true;
    pthread_rwlock_unlock(&a->lock);
}

static bool
fresh(auth *a)
{
    pthread_rwlock_rdlock(&a->lock);
    bool ok = a->loaded && a->version == store_rmeta_version(a->store);
    pthread_rwlock_unlock(&a->lock);
    return ok;
}

/* find copies the identity called name; the built-in admin comes from the config. */
static bool
find(auth *a, const char *name, struct identity *out)
{
    if (a->have_admin && strcmp(name, "admin") == 0) {
        *out = a->admin;
        out->disabled = !a->admin_enabled;
        return true;
    }
    bool found = false;
    pthread_rwlock_rdlock(&a->lock);
    for (size_t i = 0; i < a->nids; i++) {
        if (strcmp(a->ids[i].name, name) == 0) {
            *out = a->ids[i];
            found = true;
            break;
        }
    }
    pthread_rwlock_unlock(&a->lock);
    return found;
}

/* ---- failed logins ---- */

static bool
throttled(auth *a, const char *peer, uint64_t *retry_after)
{
    uint64_t now = clock_wall_s();
    bool t = false;
    pthread_mutex_lock(&a->fmu);
    for (size_t i = 0; i < FAIL_SLOTS; i++) {
        if (strcmp(a->fails[i].peer, peer) == 0) {
            if (a->fails[i].blocked_until > now) {
                t = true;
                *retry_after = a->fails[i].blocked_until - now;
            }
            break;
        }
    }
    pthread_mutex_unlock(&a->fmu);
    return t;
}

uint64_t
auth_retry_after(auth *a, const char *peer)
{
    uint64_t retry = 0;
    if (!throttled(a, peer, &retry))
        return 0;
    return retry ? retry : 1;
}

static void
record_failure(auth *a, const char *peer, bool failed)
{
    uint64_t now = clock_wall_s();
    pthread_mutex_lock(&a->fmu);
    struct fail_entry *slot = NULL, *oldest = &a->fails[0];
    for (size_t i = 0; i < FAIL_SLOTS; i++) {
        if (strcmp(a->fails[i].peer, peer) == 0) {
            slot = &a->fails[i];
            break;
        }
        if (a->fails[i].last < oldest->last)
            oldest = &a->fails[i];
    }
    if (!failed) {
        if (slot)
            memset(slot, 0, sizeof *slot);
        pthread_mutex_unlock(&a->fmu);
        return;
    }
    if (!slot) {
        slot = oldest;
        memset(slot, 0, sizeof *slot);
        str_copy(slot->peer, sizeof slot->peer, peer);
    }
    if (now - slot->window_start > FAIL_WINDOW_S && slot->blocked_until <= now) {
        slot->window_start = now;
        slot->n = 0;
    }
    slot->n++;
    slot->last = now;
    if (slot->n > FAIL_FREE) {
        unsigned k = slot->n - FAIL_FREE;
        uint64_t d = k > 5 ? 30 : (1u << k);
        slot->blocked_until = now + (d > 30 ? 30 : d);
    }
    unsigned n = slot->n;
    pthread_mutex_unlock(&a->fmu);
    if (n > FAIL_FREE)
        log_warn("AUTH-SLOWDOWN", "peer=%s failures=%u", peer, n);
}

/* ---- verified-secret cache ---- */

static void
vkey(const char *name, const char *secret, unsigned char out[32])
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned int n = 32;
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    EVP_DigestUpdate(c, name, strlen(name) + 1);
    EVP_DigestUpdate(c, secret, strlen(secret));
    EVP_DigestFinal_ex(c, out, &n);
    EVP_MD_CTX_free(c);
}

static bool
vcache_hit(auth *a, const unsigned char key[32], uint64_t version)
{
    uint64_t now = clock_wall_s();
    bool hit = false;
    pthread_mutex_lock(&a->vmu);
    struct vcache_entry *e = &a->vc[key[0] % VCACHE_SIZE];
    if (e->until > now && e->version == version && CRYPTO_memcmp(e->key, key, 32) == 0)
        hit = true;
    pthread_mutex_unlock(&a->vmu);
    return hit;
}

static void
vcache_put(auth *a, const unsigned char key[32], const char *name, uint64_t version)
{
    pthread_mutex_lock(&a->vmu);
    struct vcache_entry *e = &a->vc[key[0] % VCACHE_SIZE];
    memcpy(e->key, key, 32);
    str_copy(e->name, sizeof e->name, name);
    e->version = version;
    e->until = clock_wall_s() + VCACHE_TTL_S;
    pthread_mutex_unlock(&a->vmu);
}

/* ---- JWT ES256 ---- */

static err
load_or_create_key(auth *a, const char *data_dir)
{
    char dir[1200], path[1300];
    snprintf(dir, sizeof dir, "%s/auth", data_dir);
    snprintf(path, sizeof path, "%s/token-signing.pem", dir);
    mkdir(dir, 0700);
    FILE *f = fopen(path, "r");
    if (f) {
        a->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
        fclose(f);
    }
    if (!a->key) {
        a->key = EVP_EC_gen("P-256");
        if (!a->key)
            return ERR_INTERNAL;
        char tmp[1400];
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        FILE *w = fopen(tmp, "w");
        if (!w) {
            log_error("AUTH-KEY", "path=%s error=\"%s\"", tmp, strerror(errno));
            return ERR_CONFIG;
        }
        chmod(tmp, 0600);
        PEM_write_PrivateKey(w, a->key, NULL, NULL, 0, NULL, NULL);
        fflush(w);
        fsync(fileno(w));
        fclose(w);
        rename(tmp, path);
        log_info("AUTH-KEY-CREATED", "path=%s", path);
    }
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(a->key, &der);
    if (n > 0) {
        char d[DIGEST_MAX];
        digest_of(DIGEST_SHA256, der, (size_t)n, d);
        str_copy_slice(a->kid, sizeof a->kid, (slice){d + 7, 16});
        OPENSSL_free(der);
    }
    return ERR_OK;
}

static err
jwt_sign(auth *a, const char *claims, buf *out)
{
    buf signing = BUF_INIT;
    char hdr[128];
    int hl = snprintf(hdr, sizeof hdr, "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"%s\"}", a->kid);
    b64_encode((const unsigned char *)hdr, (size_t)hl, true, &signing);
    buf_addc(&signing, '.');
    b64_encode((const unsigned char *)claims, strlen(claims), true, &signing);
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned char der[128];
    size_t dl = sizeof der;
    err e = ERR_INTERNAL;
    if (EVP_DigestSignInit(c, NULL, EVP_sha256(), NULL, a->key) == 1 &&
        EVP_DigestSign(c, der, &dl, (const unsigned char *)signing.ptr, signing.len) == 1) {
        const unsigned char *p = der;
        ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)dl);
        if (sig) {
            unsigned char raw[64];
            const BIGNUM *r, *s;
            ECDSA_SIG_get0(sig, &r, &s);
            if (BN_bn2binpad(r, raw, 32) == 32 && BN_bn2binpad(s, raw + 32, 32) == 32) {
                buf_reset(out);
                buf_add(out, signing.ptr, signing.len);
                buf_addc(out, '.');
                b64_encode(raw, 64, true, out);
                e = ERR_OK;
            }
            ECDSA_SIG_free(sig);
        }
    }
    EVP_MD_CTX_free(c);
    buf_release(&signing);
    return e;
}

/* jwt_verify checks the signature and returns the claims (caller json_decref). */
static json_t *
jwt_verify(auth *a, slice tok)
{
    const char *d1 = memchr(tok.ptr, '.', tok.len);
    if (!d1)
        return NULL;
    const char *d2 = memchr(d1 + 1, '.', tok.len - (size_t)(d1 + 1 - tok.ptr));
    if (!d2)
        return NULL;
    slice hdr = {tok.ptr, (size_t)(d1 - tok.ptr)};
    slice body = {d1 + 1, (size_t)(d2 - d1 - 1)};
    slice sig = {d2 + 1, tok.len - (size_t)(d2 + 1 - tok.ptr)};
    buf h = BUF_INIT, b = BUF_INIT, s = BUF_INIT;
    json_t *claims = NULL, *jh = NULL;
    json_error_t je;
    if (!b64_decode(hdr, &h) || !b64_decode(body, &b) || !b64_decode(sig, &s) || s.len != 64)
        goto out;
    jh = json_loadb(h.ptr, h.len, 0, &je);
    const char *alg = jh ? json_string_value(json_object_get(jh, "alg")) : NULL;
    if (!alg || strcmp(alg, "ES256") != 0)
        goto out;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn((unsigned char *)s.ptr, 32, NULL);
    BIGNUM *ss = BN_bin2bn((unsigned char *)s.ptr + 32, 32, NULL);
    if (!es || !r || !ss || ECDSA_SIG_set0(es, r, ss) != 1) {
        BN_free(r);
        BN_free(ss);
        ECDSA_SIG_free(es);
        goto out;
    }
    unsigned char *der = NULL;
    int dl = i2d_ECDSA_SIG(es, &der);
    ECDSA_SIG_free(es);
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    bool ok = dl > 0 && EVP_DigestVerifyInit(c, NULL, EVP_sha256(), NULL, a->key) == 1 &&
              EVP_DigestVerify(c, der, (size_t)dl, (const unsigned char *)tok.ptr,
                               hdr.len + 1 + body.len) == 1;
    EVP_MD_CTX_free(c);
    OPENSSL_free(der);
    if (ok)
        claims = json_loadb(b.ptr, b.len, 0, &je);
out:
    json_decref(jh);
    buf_release(&h);
    buf_release(&b);
    buf_release(&s);
    return claims;
}

/* ---- lifecycle ---- */

err
auth_new(store *s, const struct auth_options *o, auth **out)
{
    auth *a = calloc(1, sizeof *a);
    err e = ERR_CONFIG;
    if (!a)
        return ERR_NOMEM;
    a->store = s;
    a->mode = o->mode;
    str_copy(a->service, sizeof a->service, o->service && *o->service ? o->service : "georeg");
    str_copy(a->realm, sizeof a->realm, o->realm ? o->realm : "");
    str_copy(a->issuer, sizeof a->issuer, o->issuer ? o->issuer : "georeg");
    a->ttl = o->token_ttl_s ? o->token_ttl_s : 300;
    a->admin_enabled = o->admin_enabled;
    pthread_rwlock_init(&a->lock, NULL);
    pthread_mutex_init(&a->vmu, NULL);
    pthread_mutex_init(&a->fmu, NULL);
    pthread_mutex_init(&a->rmu, NULL);
    for (size_t i = 0; i < o->nanonymous_pull && a->nanon < AUTH_MAX_GRANTS; i++) {
        str_copy(a->anon[a->nanon].glob, sizeof a->anon[0].glob, o->anonymous_pull[i]);
        a->anon[a->nanon++].actions = ACT_PULL;
    }
    if (a->mode == AUTH_NONE) {
        *out = a;
        return ERR_OK;
    }
    if ((e = load_or_create_key(a, o->data_dir)))
        goto fail;
    if (a->mode == AUTH_TOKEN && !(a->refresh = calloc(AUTH_REFRESH_MAX, sizeof *a->refresh))) {
        e = ERR_NOMEM;
        goto fail;
    }
    if (o->admin_password_file && *o->admin_password_file) {
        FILE *f = fopen(o->admin_password_file, "r");
        char pw[512] = "";
        if (!f || !fgets(pw, sizeof pw, f)) {
            log_error("AUTH-ADMIN", "file=%s error=\"cannot read the admin password\"",
                      o->admin_password_file);
            if (f)
                fclose(f);
            e = ERR_CONFIG;
            goto fail;
        }
        fclose(f);
        pw[strcspn(pw, "\r\n")] = '\0';
        if (strlen(pw) < 8) {
            log_error("AUTH-ADMIN", "error=\"the admin password must have at least 8 characters\"");
            e = ERR_CONFIG;
            goto fail;
        }
        str_copy(a->admin.name, sizeof a->admin.name, "admin");
        str_copy(a->admin.kind, sizeof a->admin.kind, "user");
        str_copy(a->admin.created_by, sizeof a->admin.created_by, "config");
        a->admin.grants[0] = (struct auth_grant){.glob = "**", .actions = ACT_ALL};
        a->admin.ngrants = 1;
        hash_secret(pw, a->admin.secret, sizeof a->admin.secret);
        OPENSSL_cleanse(pw, sizeof pw);
        a->have_admin = true;
    }
    if (!a->admin_enabled)
        log_info("AUTH-ADMIN-DISABLED", "msg=\"the built-in admin account cannot log in\"");
    reload(a);
    *out = a;
    return ERR_OK;
fail:
    auth_free(a);
    return e;
}

void
auth_free(auth *a)
{
    if (!a)
        return;
    EVP_PKEY_free(a->key);
    free(a->ids);
    pthread_rwlock_destroy(&a->lock);
    pthread_mutex_destroy(&a->vmu);
    pthread_mutex_destroy(&a->fmu);
    pthread_mutex_destroy(&a->rmu);
    if (a->refresh)
        OPENSSL_cleanse(a->refresh, AUTH_REFRESH_MAX * sizeof *a->refresh);
    free(a->refresh);
    OPENSSL_cleanse(&a->admin, sizeof a->admin);
    free(a);
}

enum auth_mode
auth_get_mode(const auth *a)
{
    return a->mode;
}

/* ---- identify ---- */

static void
anonymous(const auth *a, struct auth_principal *who)
{
    memset(who, 0, sizeof *who);
    str_copy(who->name, sizeof who->name, "anonymous");
    str_copy(who->kind, sizeof who->kind, "anonymous");
    who->anonymous = true;
    (void)a;
}

/* identify_secret checks name and secret: the one password check behind Basic
 * credentials and the token endpoint's password grant. */
static err
identify_secret(auth *a, const char *name, const char *secret, const char *peer, bool nowait,
                struct auth_principal *who, const char **why)
{
    err e = ERR_UNAUTHORIZED;
    uint64_t retry;
    if (throttled(a, peer, &retry)) {
        *why = "too many failed logins from this address; retry later";
        return ERR_TOOMANYREQUESTS;
    }
    if (!fresh(a)) {
        if (nowait)
            return ERR_WOULDBLOCK;
        reload(a);
    }
    struct identity id;
    if (!auth_name_valid(name) || !find(a, name, &id)) {
        if (nowait) {
            /* the failure is slow on purpose: hash on the pool like a real check */
            e = ERR_WOULDBLOCK;
            goto out;
        }
        verify_secret(secret, "pbkdf2-sha256$100000$AAAAAAAAAAAAAAAAAAAAAA==$"
                              "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        *why = "unknown user or wrong password";
        record_failure(a, peer, true);
        goto out;
    }
    if (id.disabled) {
        *why = strcmp(id.kind, "token") == 0 ? "token revoked" : "account disabled";
        record_failure(a, peer, true);
        goto out;
    }
    if (id.expires && id.expires <= clock_wall_s()) {
        *why = "credentials expired";
        record_failure(a, peer, true);
        goto out;
    }
    unsigned char k[32];
    vkey(name, secret, k);
    uint64_t ver = store_rmeta_version(a->store);
    if (!vcache_hit(a, k, ver)) {
        if (nowait) {
            e = ERR_WOULDBLOCK;
            goto out;
        }
        if (!verify_secret(secret, id.secret)) {
            *why = "unknown user or wrong password";
            record_failure(a, peer, true);
            goto out;
        }
        vcache_put(a, k, name, ver);
        record_failure(a, peer, false);
    }
    memset(who, 0, sizeof *who);
    str_copy(who->name, sizeof who->name, id.name);
    str_copy(who->kind, sizeof who->kind, id.kind);
    memcpy(who->grants, id.grants, sizeof who->grants);
    who->ngrants = id.ngrants;
    e = ERR_OK;
out:
    return e;
}

static err
identify_basic(auth *a, slice cred, const char *peer, bool nowait, struct auth_principal *who,
               const char **why)
{
    buf dec = BUF_INIT;
    err e = ERR_UNAUTHORIZED;
    uint64_t retry;
    if (throttled(a, peer, &retry)) {
        *why = "too many failed logins from this address; retry later";
        return ERR_TOOMANYREQUESTS;
    }
    if (!b64_decode(cred, &dec) || dec.len > 600) {
        *why = "malformed basic credentials";
        goto out;
    }
    char *colon = strchr(dec.ptr, ':');
    if (!colon) {
        *why = "malformed basic credentials";
        goto out;
    }
    *colon = '\0';
    e = identify_secret(a, dec.ptr, colon + 1, peer, nowait, who, why);
out:
    if (dec.len)
        OPENSSL_cleanse(dec.ptr, dec.len);
    buf_release(&dec);
    return e;
}

err
auth_identify_password(auth *a, const char *name, const char *secret, const char *peer,
                       struct auth_principal *who, const char **why)
{
    *why = "unknown user or wrong password";
    if (a->mode == AUTH_NONE)
        return ERR_UNAUTHORIZED;
    return identify_secret(a, name, secret, peer, false, who, why);
}

static err
identify_bearer(auth *a, slice tok, bool nowait, struct auth_principal *who, const char **why)
{
    if (a->mode != AUTH_TOKEN) {
        *why = "bearer tokens are not accepted by this registry";
        return ERR_UNAUTHORIZED;
    }
    json_t *c = jwt_verify(a, tok);
    if (!c) {
        *why = "invalid token signature";
        return ERR_UNAUTHORIZED;
    }
    err e = ERR_UNAUTHORIZED;
    uint64_t now = clock_wall_s();
    json_int_t exp = json_integer_value(json_object_get(c, "exp"));
    json_int_t nbf = json_integer_value(json_object_get(c, "nbf"));
    const char *aud = json_string_value(json_object_get(c, "aud"));
    const char *sub = json_string_value(json_object_get(c, "sub"));
    if (!aud || strcmp(aud, a->service) != 0) {
        *why = "token issued for another service";
        goto out;
    }
    if (exp <= 0 || (uint64_t)exp <= now || (uint64_t)nbf > now + 60) {
        *why = "token expired";
        goto out;
    }
    memset(who, 0, sizeof *who);
    /* the identity as it is now: a token never carries more than its identity
     * currently holds, so narrowing or revoking an identity takes effect at once */
    struct identity id;
    memset(&id, 0, sizeof id);
    if (!sub || !*sub) {
        anonymous(a, who);
    } else {
        if (!fresh(a)) {
            if (nowait) {
                e = ERR_WOULDBLOCK;
                goto out;
            }
            reload(a);
        }
        if (!find(a, sub, &id) || id.disabled || (id.expires && id.expires <= now)) {
            *why = "the token's identity is disabled, revoked, expired or gone";
            goto out;
        }
        str_copy(who->name, sizeof who->name, sub);
        str_copy(who->kind, sizeof who->kind, id.kind);
    }
    size_t i;
    json_t *acc;
    json_array_foreach(json_object_get(c, "access"), i, acc)
    {
        const char *type = json_string_value(json_object_get(acc, "type"));
        const char *name = json_string_value(json_object_get(acc, "name"));
        if (!type || !name)
            continue;
        unsigned bits = 0;
        size_t k;
        json_t *act;
        json_array_foreach(json_object_get(acc, "actions"), k, act)
        {
            unsigned b;
            if (json_is_string(act) && auth_parse_actions(json_string_value(act), &b))
                bits |= b;
        }
        if (!strcmp(type, "registry") && !strcmp(name, "catalog")) {
            /* the catalog shows what the identity may read now, nothing more */
            for (size_t j = 0; j < id.ngrants && who->ngrants < AUTH_MAX_GRANTS; j++) {
                if (!(id.grants[j].actions & (ACT_PULL | ACT_METADATA)))
                    continue;
                struct auth_grant *g = &who->grants[who->ngrants++];
                str_copy(g->glob, sizeof g->glob, id.grants[j].glob);
                g->actions = ACT_METADATA;
            }
        } else if (!strcmp(type, "repository") && ref_name_valid(slice_of_cstr(name))) {
            if (who->ngrants >= AUTH_MAX_GRANTS)
                continue;
            unsigned now_bits = current_bits(id.grants, id.ngrants, name);
            if (current_bits(a->anon, a->nanon, name))
                now_bits |= ACT_PULL;
            if (!(bits & now_bits))
                continue;
            /* an exact name: repository names contain no glob characters */
            struct auth_grant *g = &who->grants[who->ngrants++];
            str_copy(g->glob, sizeof g->glob, name);
            g->actions = bits & now_bits;
        }
    }
    e = ERR_OK;
out:
    json_decref(c);
    return e;
}

bool
auth_basic_user(slice authorization, char *out, size_t n)
{
    if (!n || authorization.len <= 6 || !slice_case_eq_cstr((slice){authorization.ptr, 6}, "basic "))
        return false;
    buf dec = BUF_INIT;
    bool ok = false;
    if (b64_decode((slice){authorization.ptr + 6, authorization.len - 6}, &dec) && dec.len <= 600) {
        char *colon = memchr(dec.ptr, ':', dec.len);
        size_t ul = colon ? (size_t)(colon - dec.ptr) : 0;
        ok = colon && ul > 0 && ul < n;
        for (size_t i = 0; ok && i < ul; i++) /* printable ASCII only: it ends up in a log */
            ok = (unsigned char)dec.ptr[i] > 0x20 && (unsigned char)dec.ptr[i] < 0x7f;
        if (ok) {
            memcpy(out, dec.ptr, ul);
            out[ul] = '\0';
        }
    }
    if (dec.ptr)
        explicit_bzero(dec.ptr, dec.cap);
    buf_release(&dec);
    return ok;
}

err
auth_identify(auth *a, slice authorization, const char *peer, bool nowait,
              struct auth_principal *who, const char **why)
{
    *why = "authentication required";
    if (a->mode == AUTH_NONE || !authorization.ptr) {
        anonymous(a, who);
        return ERR_OK;
    }
    if (authorization.len > 6 && slice_case_eq_cstr((slice){authorization.ptr, 6}, "basic "))
        return identify_basic(a, (slice){authorization.ptr + 6, authorization.len - 6}, peer,
                              nowait, who, why);
    if (authorization.len > 7 && slice_case_eq_cstr((slice){authorization.ptr, 7}, "bearer "))
        return identify_bearer(a, (slice){authorization.ptr + 7, authorization.len - 7}, nowait,
                               who, why);
    *why = "unsupported authorization scheme";
    return ERR_UNAUTHORIZED;
}

/* ---- refresh tokens ---- */

/* sha256_parts hashes the n slices one after the other into out. */
static bool
sha256_parts(const slice *parts, size_t n, unsigned char out[32])
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned int ol = 32;
    bool ok = c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1;
    for (size_t i = 0; ok && i < n; i++)
        ok = EVP_DigestUpdate(c, parts[i].ptr, parts[i].len) == 1;
    ok = ok && EVP_DigestFinal_ex(c, out, &ol) == 1 && ol == 32;
    EVP_MD_CTX_free(c);
    return ok;
}

/* identity_bind: what a refresh token is bound to besides the name, the identity's
 * incarnation (kind, creation time, salted secret hash): a refresh token outlives
 * neither a deletion, nor a re-creation under the same name, nor a new secret. */
static bool
identity_bind(const struct identity *id, unsigned char out[32])
{
    char created[24];
    int cl = snprintf(created, sizeof created, "%llu", (unsigned long long)id->created);
    slice parts[] = {{id->kind, strlen(id->kind) + 1},
                     {created, (size_t)cl + 1},
                     {id->secret, strlen(id->secret)}};
    return sha256_parts(parts, 3, out);
}

/* current_identity: the identity called name as it is now, when it may log in and
 * is still the incarnation bind was made of; otherwise false with *why. */
static bool
current_identity(auth *a, const char *name, const unsigned char bind[32], struct identity *id,
                 const char **why)
{
    unsigned char now_bind[32];
    *why = "the refresh token's identity is disabled, expired, replaced or gone";
    if (!fresh(a))
        reload(a);
    if (!find(a, name, id) || id->disabled || (id->expires && id->expires <= clock_wall_s()))
        return false;
    return identity_bind(id, now_bind) && CRYPTO_memcmp(now_bind, bind, 32) == 0;
}

err
auth_refresh_new(auth *a, const struct auth_principal *who, char *out, size_t n)
{
    unsigned char raw[32], h[32], bind[32];
    struct identity id;
    buf tok = BUF_INIT;
    err e = ERR_UNAUTHORIZED;
    if (a->mode != AUTH_TOKEN || !a->refresh || who->anonymous)
        return ERR_INVALID;
    if (!fresh(a))
        reload(a);
    if (!find(a, who->name, &id) || !identity_bind(&id, bind))
        goto out;
    e = ERR_INTERNAL;
    if (RAND_bytes(raw, sizeof raw) != 1)
        goto out;
    buf_adds(&tok, AUTH_REFRESH_PREFIX);
    b64_encode(raw, sizeof raw, true, &tok);
    if (tok.len + 1 > n || !sha256_parts(&(slice){tok.ptr, tok.len}, 1, h))
        goto out;
    pthread_mutex_lock(&a->rmu);
    struct refresh_entry *r = &a->refresh[a->refresh_next];
    a->refresh_next = (a->refresh_next + 1) % AUTH_REFRESH_MAX;
    memcpy(r->hash, h, 32);
    memcpy(r->bind, bind, 32);
    str_copy(r->name, sizeof r->name, who->name);
    r->expires = clock_wall_s() + AUTH_REFRESH_TTL_S;
    pthread_mutex_unlock(&a->rmu);
    memcpy(out, tok.ptr, tok.len + 1);
    e = ERR_OK;
out:
    OPENSSL_cleanse(raw, sizeof raw);
    if (tok.ptr)
        OPENSSL_cleanse(tok.ptr, tok.len);
    buf_release(&tok);
    return e;
}

err
auth_refresh_identify(auth *a, const char *token, const char *peer, struct auth_principal *who,
                      const char **why)
{
    unsigned char h[32], bind[32];
    char name[64] = "";
    uint64_t retry, now = clock_wall_s();
    struct identity id;
    size_t tl = strlen(token);
    *why = "unknown, expired or evicted refresh token";
    if (a->mode != AUTH_TOKEN || !a->refresh)
        return ERR_UNAUTHORIZED;
    if (throttled(a, peer, &retry)) {
        *why = "too many failed logins from this address; retry later";
        return ERR_TOOMANYREQUESTS;
    }
    if (!sha256_parts(&(slice){token, tl}, 1, h)) {
        *why = "internal error";
        return ERR_INTERNAL;
    }
    struct refresh_entry *hit = NULL;
    pthread_mutex_lock(&a->rmu);
    for (size_t i = 0; i < AUTH_REFRESH_MAX; i++) {
        struct refresh_entry *r = &a->refresh[i];
        if (r->expires > now && CRYPTO_memcmp(r->hash, h, 32) == 0) {
            hit = r;
            break;
        }
    }
    if (hit) {
        str_copy(name, sizeof name, hit->name);
        memcpy(bind, hit->bind, 32);
    }
    pthread_mutex_unlock(&a->rmu);
    if (!hit) {
        /* 256 random bits cannot be guessed, but a client trying is treated like
         * one guessing passwords */
        record_failure(a, peer, true);
        return ERR_UNAUTHORIZED;
    }
    if (!current_identity(a, name, bind, &id, why)) {
        /* it can never work again: forget it */
        pthread_mutex_lock(&a->rmu);
        for (size_t i = 0; i < AUTH_REFRESH_MAX; i++)
            if (CRYPTO_memcmp(a->refresh[i].hash, h, 32) == 0)
                memset(&a->refresh[i], 0, sizeof a->refresh[i]);
        pthread_mutex_unlock(&a->rmu);
        return ERR_UNAUTHORIZED;
    }
    /* the identity's grants of now: a narrowed identity's refresh token asks for less */
    memset(who, 0, sizeof *who);
    str_copy(who->name, sizeof who->name, id.name);
    str_copy(who->kind, sizeof who->kind, id.kind);
    memcpy(who->grants, id.grants, sizeof who->grants);
    who->ngrants = id.ngrants;
    return ERR_OK;
}

/* ---- tokens ---- */

err
auth_issue_token(auth *a, const struct auth_principal *who, const char *service,
                 const char *const *scopes, size_t nscopes, const char *refresh_token, buf *out)
{
    if (service && *service && strcmp(service, a->service) != 0)
        return ERR_DENIED;
    uint64_t now = clock_wall_s();
    unsigned char jti[12];
    RAND_bytes(jti, sizeof jti);
    buf claims = BUF_INIT, jb = BUF_INIT, tok = BUF_INIT, granted = BUF_INIT;
    json_t *ans = NULL;
    char *text = NULL;
    b64_encode(jti, sizeof jti, true, &jb);
    buf_adds(&claims, "{\"iss\":");
    buf_add_json_str(&claims, a->issuer, strlen(a->issuer));
    buf_adds(&claims, ",\"sub\":");
    if (who->anonymous)
        buf_adds(&claims, "\"\"");
    else
        buf_add_json_str(&claims, who->name, strlen(who->name));
    buf_adds(&claims, ",\"aud\":");
    buf_add_json_str(&claims, a->service, strlen(a->service));
    buf_addf(&claims, ",\"iat\":%llu,\"nbf\":%llu,\"exp\":%llu,\"jti\":\"%s\",\"access\":[",
             (unsigned long long)now, (unsigned long long)(now - 10),
             (unsigned long long)(now + a->ttl), jb.ptr);
    size_t emitted = 0;
    for (size_t i = 0; i < nscopes; i++) {
        /* "repository:NAME:ACTIONS" or "registry:catalog:*" */
        const char *sc = scopes[i];
        const char *c1 = strchr(sc, ':');
        const char *c2 = strrchr(sc, ':');
        if (!c1 || c1 == c2)
            continue;
        char type[32], name[REF_NAME_MAX + 1];
        if (!str_copy_slice(type, sizeof type, (slice){sc, (size_t)(c1 - sc)}) ||
            !str_copy_slice(name, sizeof name, (slice){c1 + 1, (size_t)(c2 - c1 - 1)}))
            continue;
        buf acts = BUF_INIT, plain = BUF_INIT;
        if (!strcmp(type, "registry") && !strcmp(name, "catalog")) {
            /* filtered at use to the repositories the identity may read then */
            if (!who->anonymous) {
                buf_adds(&acts, "\"*\"");
                buf_adds(&plain, "*");
            }
        } else if (!strcmp(type, "repository") && ref_name_valid(slice_of_cstr(name))) {
            const char *p = c2 + 1;
            while (*p) {
                const char *cm = strchr(p, ',');
                size_t l = cm ? (size_t)(cm - p) : strlen(p);
                char word[32];
                unsigned bits;
                if (str_copy_slice(word, sizeof word, (slice){p, l}) &&
                    auth_parse_actions(word, &bits)) {
                    /* "*" asks for everything: grant what is allowed of it */
                    unsigned want =
                        strcmp(word, "*") == 0 ? (ACT_PULL | ACT_PUSH | ACT_DELETE) : bits;
                    for (unsigned bit = 1; bit <= ACT_ADMIN; bit <<= 1) {
                        if (!(want & bit) || !auth_allows(a, who, name, bit))
                            continue;
                        char an[32];
                        auth_actions_str(bit, an, sizeof an);
                        if (!strstr(acts.ptr, an)) {
                            buf_addf(&acts, "%s\"%s\"", acts.len ? "," : "", an);
                            buf_addf(&plain, "%s%s", plain.len ? "," : "", an);
                        }
                    }
                }
                p += l + (cm ? 1 : 0);
            }
        }
        if (acts.len) {
            buf_addf(&claims, "%s{\"type\":", emitted++ ? "," : "");
            buf_add_json_str(&claims, type, strlen(type));
            buf_adds(&claims, ",\"name\":");
            buf_add_json_str(&claims, name, strlen(name));
            buf_addf(&claims, ",\"actions\":[%s]}", acts.ptr);
            /* the scope granted, in the request's own grammar (the answer's "scope") */
            buf_addf(&granted, "%s%s:%s:%s", granted.len ? " " : "", type, name, plain.ptr);
        }
        buf_release(&acts);
        buf_release(&plain);
    }
    buf_adds(&claims, "]}");
    err e = jwt_sign(a, claims.ptr, &tok);
    if (e)
        goto out;
    time_t t = (time_t)now;
    struct tm tm;
    gmtime_r(&t, &tm);
    char iso[40];
    strftime(iso, sizeof iso, "%Y-%m-%dT%H:%M:%SZ", &tm);
    /* "token" for Docker's GET flow, "access_token" for OAuth2 clients; the same JWT */
    e = ERR_NOMEM;
    ans = json_pack("{s:s,s:s,s:I,s:s,s:s}", "token", tok.ptr, "access_token", tok.ptr,
                    "expires_in", (json_int_t)a->ttl, "issued_at", iso, "scope",
                    granted.len ? granted.ptr : "");
    if (!ans)
        goto out;
    if (refresh_token && json_object_set_new(ans, "refresh_token", json_string(refresh_token)))
        goto out;
    if (!(text = json_dumps(ans, JSON_COMPACT)))
        goto out;
    buf_reset(out);
    if (buf_adds(out, text))
        goto out;
    e = ERR_OK;
out:
    if (text) {
        OPENSSL_cleanse(text, strlen(text));
        free(text);
    }
    json_decref(ans);
    buf_release(&claims);
    buf_release(&jb);
    buf_release(&tok);
    buf_release(&granted);
    return e;
}

void
auth_challenge(const auth *a, const char *repo, unsigned actions, bool insufficient, char *out,
               size_t n)
{
    if (a->mode == AUTH_BASIC) {
        snprintf(out, n, "Basic realm=\"%s\"", a->service);
        return;
    }
    char acts[128] = "";
    if (actions & ACT_READ)
        actions |= ACT_PULL;
    auth_actions_str(actions & (ACT_PULL | ACT_PUSH | ACT_DELETE), acts, sizeof acts);
    if (!repo && (actions & ACT_CATALOG))
        snprintf(out, n, "Bearer realm=\"%s\",service=\"%s\",scope=\"registry:catalog:*\"%s",
                 a->realm, a->service, insufficient ? ",error=\"insufficient_scope\"" : "");
    else if (repo && acts[0])
        snprintf(out, n, "Bearer realm=\"%s\",service=\"%s\",scope=\"repository:%s:%s\"%s",
                 a->realm, a->service, repo, acts,
                 insufficient ? ",error=\"insufficient_scope\"" : "");
    else
        snprintf(out, n, "Bearer realm=\"%s\",service=\"%s\"%s", a->realm, a->service,
                 insufficient ? ",error=\"insufficient_scope\"" : "");
}

/* ---- management ---- */

err
auth_put_identity(auth *a, const struct auth_identity_spec *spec, char *secret_out, size_t n)
{
    struct identity id;
    memset(&id, 0, sizeof id);
    if (!auth_name_valid(spec->name) || strcmp(spec->name, "admin") == 0 ||
        strcmp(spec->name, "anonymous") == 0)
        return ERR_INVALID;
    str_copy(id.name, sizeof id.name, spec->name);
    str_copy(id.kind, sizeof id.kind, spec->kind);
    str_copy(id.created_by, sizeof id.created_by, spec->created_by ? spec->created_by : "");
    id.expires = spec->expires_s;
    id.created = clock_wall_s();
    for (size_t i = 0; i < spec->ngrants && i < AUTH_MAX_GRANTS; i++)
        id.grants[id.ngrants++] = spec->grants[i];
    char secret[128];
    if (spec->secret && *spec->secret)
        str_copy(secret, sizeof secret, spec->secret);
    else
        random_secret(secret, sizeof secret);
    err e = hash_secret(secret, id.secret, sizeof id.secret);
    if (e)
        return e;
    if (secret_out)
        str_copy(secret_out, n, secret);
    OPENSSL_cleanse(secret, sizeof secret);
    buf v = BUF_INIT, k = BUF_INIT;
    identity_json(&id, true, &v);
    buf_addf(&k, "id/%s", id.name);
    e = store_rmeta_put(a->store, k.ptr, v.ptr, v.len);
    buf_release(&v);
    buf_release(&k);
    return e;
}

err
auth_set_disabled(auth *a, const char *name, bool disabled)
{
    buf k = BUF_INIT, v = BUF_INIT;
    struct identity id;
    err e = ERR_NOT_FOUND;
    buf_addf(&k, "id/%s", name);
    if (store_rmeta_get(a->store, k.ptr, 0, &v) == ERR_OK && identity_parse(buf_slice(&v), &id)) {
        id.disabled = disabled;
        buf_reset(&v);
        identity_json(&id, true, &v);
        e = store_rmeta_put(a->store, k.ptr, v.ptr, v.len);
    }
    buf_release(&k);
    buf_release(&v);
    return e;
}

err
auth_delete_identity(auth *a, const char *name)
{
    buf k = BUF_INIT;
    buf_addf(&k, "id/%s", name);
    err e = store_rmeta_delete(a->store, k.ptr);
    buf_release(&k);
    return e;
}

err
auth_list_identities(auth *a, const char *kind, buf *out)
{
    reload(a);
    buf_adds(out, "[");
    size_t n = 0;
    pthread_rwlock_rdlock(&a->lock);
    for (size_t i = 0; i < a->nids; i++) {
        if (kind && strcmp(a->ids[i].kind, kind) != 0)
            continue;
        if (n++)
            buf_addc(out, ',');
        identity_json(&a->ids[i], false, out);
    }
    pthread_rwlock_unlock(&a->lock);
    buf_adds(out, "]");
    return ERR_OK;
}

bool
auth_record_valid(const char *name, slice v, const char **why)
{
    struct identity id;
    unsigned kinds = 0;
    *why = "identity name invalid or reserved";
    if (!auth_name_valid(name) || strcmp(name, "admin") == 0 || strcmp(name, "anonymous") == 0)
        return false;
    *why = "identity record is not what the admin API writes";
    if (v.len > 64 * 1024 || !identity_parse(v, &id) || strcmp(id.name, name) != 0)
        return false;
    kinds = !strcmp(id.kind, "user") || !strcmp(id.kind, "sp") || !strcmp(id.kind, "token");
    if (!kinds || strncmp(id.secret, "pbkdf2", 6) != 0)
        return false;
    for (size_t i = 0; i < id.ngrants; i++) {
        *why = "identity grant invalid";
        if (!id.grants[i].glob[0] || (id.grants[i].actions & ~ACT_ALL) || !id.grants[i].actions)
            return false;
    }
    return true;
}

size_t
auth_registry_admins(const auth *a)
{
    size_t n = a->have_admin && a->admin_enabled ? 1 : 0;
    uint64_t t = clock_wall_s();
    pthread_rwlock_rdlock((pthread_rwlock_t *)&a->lock);
    for (size_t i = 0; i < a->nids; i++) {
        const struct identity *id = &a->ids[i];
        if (id->disabled || (id->expires && id->expires <= t))
            continue;
        for (size_t g = 0; g < id->ngrants; g++)
            if (strcmp(id->grants[g].glob, "**") == 0 && (id->grants[g].actions & ACT_ADMIN)) {
                n++;
                break;
            }
    }
    pthread_rwlock_unlock((pthread_rwlock_t *)&a->lock);
    return n;
}
