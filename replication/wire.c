/* The replication wire: protobuf-c envelopes over nng pair sockets, TLS
 * configuration, and the epoch rule. nng errors are translated here, once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include "repl_int.h"
#include "../common/log.h"
#include "../common/banned.h"


static char *
read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    buf b = BUF_INIT;
    char tmp[4096];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0)
        buf_add(&b, tmp, n);
    fclose(f);
    return buf_detach(&b, NULL);
}

err
wire_tls_config(repl *r, bool server, const char *server_name, nng_tls_config **out)
{
    nng_tls_config *cfg = NULL;
    char *cert = NULL, *key = NULL;
    err e = ERR_CONFIG;
    int rv = nng_tls_config_alloc(&cfg, server ? NNG_TLS_MODE_SERVER : NNG_TLS_MODE_CLIENT);
    if (rv) {
        log_error("REPL-TLS", "error=\"%s\"", nng_strerror(rv));
        return ERR_CONFIG;
    }
    if (!r->tls_cert[0] || !r->tls_key[0] || !r->tls_ca[0]) {
        log_error("REPL-TLS", "error=\"tls+tcp needs replication.tls.cert, key and ca\"");
        goto out;
    }
    const char *cert_path = !server && r->tls_client_cert[0] ? r->tls_client_cert : r->tls_cert;
    cert = read_file(cert_path);
    key = read_file(r->tls_key);
    if (!cert || !key) {
        log_error("REPL-TLS", "error=\"cannot read certificate or key\" cert=%s key=%s",
                  cert_path, r->tls_key);
        goto out;
    }
    if ((rv = nng_tls_config_own_cert(cfg, cert, key, NULL)) ||
        (rv = nng_tls_config_ca_file(cfg, r->tls_ca)) ||
        (rv = nng_tls_config_auth_mode(cfg, NNG_TLS_AUTH_MODE_REQUIRED)) ||
        (!server && server_name && (rv = nng_tls_config_server_name(cfg, server_name)))) {
        log_error("REPL-TLS", "error=\"%s\" cert=%s ca=%s", nng_strerror(rv), r->tls_cert,
                  r->tls_ca);
        goto out;
    }
    *out = cfg;
    cfg = NULL;
    e = ERR_OK;
out:
    if (cfg)
        nng_tls_config_free(cfg);
    free(cert);
    if (key) {
        memset(key, 0, strlen(key));
        free(key);
    }
    return e;
}

/* A message is [u32 big-endian length of the envelope][envelope][payload]: bulk
 * bytes (blob chunks) travel as the payload, outside protobuf, so they are read from
 * disk straight into the message and written from it without intermediate copies. */
#define FRAME_HDR 4

static err
send_msg(repl *r, nng_socket s, uint32_t pipe, envelope *env, uint64_t msg_id, size_t plen,
         err (*fill)(void *arg, char *dst, size_t n), void *arg)
{
    env->version = REPL_PROTOCOL_VERSION;
    env->sender = r->node_name;
    env->epoch = atomic_load(&r->epoch);
    env->msg_id = msg_id;
    size_t n = georeg__repl__envelope__get_packed_size(env);
    if (n + plen + FRAME_HDR > REPL_MAX_MSG)
        return ERR_INTERNAL;
    nng_msg *m = NULL;
    int rv = nng_msg_alloc(&m, FRAME_HDR + n + plen);
    if (rv)
        return ERR_NOMEM;
    unsigned char *b = nng_msg_body(m);
    b[0] = (unsigned char)(n >> 24);
    b[1] = (unsigned char)(n >> 16);
    b[2] = (unsigned char)(n >> 8);
    b[3] = (unsigned char)n;
    georeg__repl__envelope__pack(env, b + FRAME_HDR);
    if (plen) {
        err e = fill(arg, (char *)b + FRAME_HDR + n, plen);
        if (e) {
            nng_msg_free(m);
            return e;
        }
    }
    if (pipe) {
        nng_pipe p = NNG_PIPE_INITIALIZER;
        p.id = pipe;
        nng_msg_set_pipe(m, p);
    }
    rv = nng_sendmsg(s, m, 0);
    if (rv) {
        nng_msg_free(m);
        return rv == NNG_ETIMEDOUT ? ERR_TIMEOUT : ERR_UNAVAILABLE;
    }
    return ERR_OK;
}

err
wire_send_payload(repl *r, nng_socket s, envelope *env, uint64_t msg_id, size_t plen,
                  err (*fill)(void *arg, char *dst, size_t n), void *arg)
{
    return send_msg(r, s, 0, env, msg_id, plen, fill, arg);
}

err
wire_send(repl *r, nng_socket s, envelope *env, uint64_t msg_id)
{
    return send_msg(r, s, 0, env, msg_id, 0, NULL, NULL);
}

err
wire_send_to(repl *r, nng_socket s, uint32_t pipe, envelope *env)
{
    return send_msg(r, s, pipe, env, 0, 0, NULL, NULL);
}

err
wire_recv(repl *r, nng_socket s, int timeout_ms, envelope **out, uint32_t *pipe, slice *payload,
          nng_msg **keep)
{
    nng_msg *m = NULL;
    int rv;
    if (payload)
        *payload = (slice){NULL, 0};
    if (timeout_ms <= 0) {
        rv = nng_recvmsg(s, &m, NNG_FLAG_NONBLOCK);
    } else {
        nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, timeout_ms);
        rv = nng_recvmsg(s, &m, 0);
    }
    if (rv == NNG_ETIMEDOUT || rv == NNG_EAGAIN)
        return ERR_TIMEOUT;
    if (rv)
        return ERR_UNAVAILABLE;
    if (pipe)
        *pipe = (uint32_t)nng_pipe_id(nng_msg_get_pipe(m));
    const unsigned char *b = nng_msg_body(m);
    size_t len = nng_msg_len(m);
    size_t n = len >= FRAME_HDR ? ((size_t)b[0] << 24 | (size_t)b[1] << 16 | (size_t)b[2] << 8 | b[3])
                                : SIZE_MAX;
    envelope *env = n <= len - FRAME_HDR ? georeg__repl__envelope__unpack(NULL, n, b + FRAME_HDR)
                                         : NULL;
    if (!env) {
        nng_msg_free(m);
        atomic_fetch_add(&r->forged_rejects, 1);
        log_warn("REPL-BAD-MESSAGE", "reason=undecodable");
        return ERR_PROTOCOL;
    }
    if (env->version != REPL_PROTOCOL_VERSION) {
        log_warn("REPL-BAD-MESSAGE", "reason=version version=%u sender=%s", env->version,
                 env->sender);
        georeg__repl__envelope__free_unpacked(env, NULL);
        nng_msg_free(m);
        return ERR_PROTOCOL;
    }
    if (payload && keep) {
        *payload = (slice){(const char *)b + FRAME_HDR + n, len - FRAME_HDR - n};
        *keep = m; /* the payload lives in the message */
    } else {
        nng_msg_free(m);
    }
    *out = env;
    return ERR_OK;
}

err
wire_epoch_stale(repl *r, const envelope *env)
{
    uint64_t mine = atomic_load(&r->epoch);
    if (env->epoch < mine) {
        atomic_fetch_add(&r->stale_epoch_rejects, 1);
        log_warn("REPL-STALE-EPOCH", "sender=%s their_epoch=%llu our_epoch=%llu", env->sender,
                 (unsigned long long)env->epoch, (unsigned long long)mine);
        return ERR_EPOCH_STALE;
    }
    return ERR_OK;
}

void
wire_epoch_adopt(repl *r, uint64_t epoch, const char *sender)
{
    if (epoch <= atomic_load(&r->epoch))
        return;
    atomic_store(&r->epoch, epoch);
    char v[24];
    int n = snprintf(v, sizeof v, "%llu", (unsigned long long)epoch);
    if (store_meta_put(r->store, "repl/epoch", v, (size_t)n))
        log_warn("REPL-EPOCH-PERSIST", "epoch=%llu error=\"cannot persist\"",
                 (unsigned long long)epoch);
    log_info("REPL-EPOCH", "sender=%s epoch=%llu", sender, (unsigned long long)epoch);
}

/* ---- peer proof ---- */

#define PROOF_MAX_CERT (16u << 10)

static void
proof_message(buf *m, slice nonce, const char *receiver, const char *sender, uint64_t epoch)
{
    buf_add(m, "georeg-repl-proof-v1", 21); /* with its NUL */
    buf_add(m, nonce.ptr, nonce.len);
    buf_add(m, receiver, strlen(receiver) + 1);
    buf_add(m, sender, strlen(sender) + 1);
    char e[8];
    for (int i = 0; i < 8; i++)
        e[i] = (char)(epoch >> (56 - 8 * i));
    buf_add(m, e, 8);
}

/* sign_message signs m with this node's key; *cert gets its (client) certificate. */
static err
sign_message(repl *r, const buf *m, buf *cert, buf *sig)
{
    err e = ERR_CONFIG;
    EVP_PKEY *pk = NULL;
    EVP_MD_CTX *md = NULL;
    const char *cert_path = r->tls_client_cert[0] ? r->tls_client_cert : r->tls_cert;
    char *pem = read_file(cert_path);
    FILE *kf = fopen(r->tls_key, "rb");
    if (!pem || !kf) {
        log_error("REPL-PROOF", "error=\"cannot read certificate or key\" cert=%s", cert_path);
        goto out;
    }
    pk = PEM_read_PrivateKey(kf, NULL, NULL, NULL);
    if (!pk || !(md = EVP_MD_CTX_new()))
        goto out;
    size_t n = 0;
    if (EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pk) != 1 ||
        EVP_DigestSign(md, NULL, &n, (const unsigned char *)m->ptr, m->len) != 1)
        goto out;
    buf_reset(sig);
    if (buf_grow(sig, n + 1))
        goto out;
    if (EVP_DigestSign(md, (unsigned char *)sig->ptr, &n, (const unsigned char *)m->ptr,
                       m->len) != 1)
        goto out;
    sig->len = n;
    buf_reset(cert);
    if (buf_adds(cert, pem))
        goto out;
    e = ERR_OK;
out:
    if (e)
        ERR_clear_error();
    if (kf)
        fclose(kf);
    free(pem);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pk);
    return e;
}

/* verify_message: cert chains to the cluster CA for client use, names signer (SAN),
 * and sig is its signature over m. REFUSE_COUNT when it holds. */
static enum repl_refusal
verify_message(repl *r, slice cert, slice sig, const buf *m, const char *signer,
               const char **why)
{
    enum repl_refusal res = REFUSE_BAD_PROOF;
    BIO *bio = NULL;
    X509 *x = NULL;
    X509_STORE *st = NULL;
    X509_STORE_CTX *ctx = NULL;
    EVP_PKEY *pk = NULL;
    EVP_MD_CTX *md = NULL;
    *why = "malformed certificate";
    if (!cert.len || cert.len > PROOF_MAX_CERT || !sig.len || sig.len > 1024)
        goto out;
    if (!(bio = BIO_new_mem_buf(cert.ptr, (int)cert.len)) ||
        !(x = PEM_read_bio_X509(bio, NULL, NULL, NULL)))
        goto out;
    *why = "certificate not from the cluster CA";
    if (!(st = X509_STORE_new()) || X509_STORE_load_locations(st, r->tls_ca, NULL) != 1 ||
        !(ctx = X509_STORE_CTX_new()) || X509_STORE_CTX_init(ctx, st, x, NULL) != 1 ||
        X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT) != 1 ||
        X509_verify_cert(ctx) != 1)
        goto out;
    *why = "certificate does not name the sender";
    if (X509_check_host(x, signer, strlen(signer), X509_CHECK_FLAG_NO_WILDCARDS, NULL) != 1)
        goto out;
    *why = "signature does not verify";
    if (!(pk = X509_get_pubkey(x)) || !(md = EVP_MD_CTX_new()))
        goto out;
    if (EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pk) != 1 ||
        EVP_DigestVerify(md, (const unsigned char *)sig.ptr, sig.len,
                         (const unsigned char *)m->ptr, m->len) != 1)
        goto out;
    *why = "";
    res = REFUSE_COUNT;
out:
    ERR_clear_error();
    BIO_free(bio);
    X509_free(x);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(st);
    EVP_PKEY_free(pk);
    EVP_MD_CTX_free(md);
    return res;
}

err
wire_proof_sign(repl *r, slice nonce, const char *receiver, uint64_t epoch, buf *cert, buf *sig)
{
    buf m = BUF_INIT;
    proof_message(&m, nonce, receiver, r->node_name, epoch);
    err e = sign_message(r, &m, cert, sig);
    buf_release(&m);
    return e;
}

enum repl_refusal
wire_proof_verify(repl *r, slice cert, slice sig, slice nonce, const char *sender,
                  const char *receiver, uint64_t epoch, const char **why)
{
    if (strcmp(receiver, r->node_name) != 0) {
        *why = "proof for another node";
        return REFUSE_BAD_PROOF;
    }
    buf m = BUF_INIT;
    proof_message(&m, nonce, receiver, sender, epoch);
    enum repl_refusal res = verify_message(r, cert, sig, &m, sender, why);
    buf_release(&m);
    return res;
}

err
wire_proof_build(repl *r, slice nonce, const char *receiver, bool probe, struct wire_proof *p)
{
    memset(p, 0, sizeof *p);
    buf_init(&p->cert);
    buf_init(&p->sig);
    hist_init(&p->hist);
    err e = ERR_OK;
    /* signed when we have keys and were challenged; a development listener
     * without keys takes the proof unsigned (it carries our history) */
    if (wire_keys(r) && nonce.len)
        e = wire_proof_sign(r, nonce, receiver, atomic_load(&r->epoch), &p->cert, &p->sig);
    if (e)
        return e;
    pthread_mutex_lock(&r->hmu);
    e = hist_copy(&p->hist, &r->hist);
    pthread_mutex_unlock(&r->hmu);
    if (e || (e = hist_pb_new(&p->hist, &p->pb)))
        return e;
    georeg__repl__peer_proof__init(&p->pp);
    p->pp.cert.data = (uint8_t *)p->cert.ptr;
    p->pp.cert.len = p->cert.len;
    p->pp.signature.data = (uint8_t *)p->sig.ptr;
    p->pp.signature.len = p->sig.len;
    p->pp.receiver = (char *)receiver;
    p->pp.probe = probe;
    p->pp.n_history = p->pb.n;
    p->pp.history = p->pb.ptrs;
    georeg__repl__envelope__init(&p->env);
    p->env.body_case = GEOREG__REPL__ENVELOPE__BODY_PEER_PROOF;
    p->env.peer_proof = &p->pp;
    return ERR_OK;
}

void
wire_proof_release(struct wire_proof *p)
{
    hist_pb_free(&p->pb);
    hist_release(&p->hist);
    buf_release(&p->cert);
    buf_release(&p->sig);
}

/* ---- promotion records ---- */

static void
add_u64be(buf *m, uint64_t v)
{
    char e[8];
    for (int i = 0; i < 8; i++)
        e[i] = (char)(v >> (56 - 8 * i));
    buf_add(m, e, 8);
}

static void
record_message(buf *m, const struct hist_rec *rec)
{
    buf_add(m, "georeg-promotion-v1", 20); /* with its NUL */
    buf_add(m, rec->node, strlen(rec->node) + 1);
    add_u64be(m, rec->epoch);
    add_u64be(m, rec->start_seq);
    add_u64be(m, rec->time_ms);
}

bool
wire_keys(repl *r)
{
    return r->tls_key[0] && r->tls_ca[0];
}

err
wire_record_sign(repl *r, struct hist_rec *rec)
{
    if (!wire_keys(r)) { /* a development cluster without keys: unsigned records */
        buf_reset(&rec->cert);
        buf_reset(&rec->sig);
        return ERR_OK;
    }
    buf m = BUF_INIT;
    record_message(&m, rec);
    err e = sign_message(r, &m, &rec->cert, &rec->sig);
    buf_release(&m);
    return e;
}

bool
wire_record_verify(repl *r, const struct hist_rec *rec, const char **why)
{
    if (!wire_keys(r)) {
        *why = "";
        return true;
    }
    buf m = BUF_INIT;
    record_message(&m, rec);
    enum repl_refusal res = verify_message(r, buf_slice(&rec->cert), buf_slice(&rec->sig), &m,
                                           rec->node, why);
    buf_release(&m);
    return res == REFUSE_COUNT;
}
