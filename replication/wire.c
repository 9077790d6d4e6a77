/* The replication wire: protobuf-c envelopes over nng pair sockets, TLS
 * configuration, and the epoch rule. nng errors are translated here, once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "repl_int.h"
#include "../common/log.h"
#include "../common/banned.h"

uint64_t
repl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

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
wire_tls_config(repl *r, bool server, nng_tls_config **out)
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
    cert = read_file(r->tls_cert);
    key = read_file(r->tls_key);
    if (!cert || !key) {
        log_error("REPL-TLS", "error=\"cannot read certificate or key\" cert=%s key=%s",
                  r->tls_cert, r->tls_key);
        goto out;
    }
    if ((rv = nng_tls_config_own_cert(cfg, cert, key, NULL)) ||
        (rv = nng_tls_config_ca_file(cfg, r->tls_ca)) ||
        (rv = nng_tls_config_auth_mode(cfg, NNG_TLS_AUTH_MODE_REQUIRED))) {
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

err
wire_send_payload(repl *r, nng_socket s, envelope *env, uint64_t msg_id, size_t plen,
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
    rv = nng_sendmsg(s, m, 0);
    if (rv) {
        nng_msg_free(m);
        return rv == NNG_ETIMEDOUT ? ERR_TIMEOUT : ERR_UNAVAILABLE;
    }
    return ERR_OK;
}

err
wire_send(repl *r, nng_socket s, envelope *env, uint64_t msg_id)
{
    return wire_send_payload(r, s, env, msg_id, 0, NULL, NULL);
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
wire_epoch_check(repl *r, const envelope *env)
{
    uint64_t mine = atomic_load(&r->epoch);
    if (env->epoch < mine) {
        atomic_fetch_add(&r->stale_epoch_rejects, 1);
        log_warn("REPL-STALE-EPOCH", "sender=%s their_epoch=%llu our_epoch=%llu", env->sender,
                 (unsigned long long)env->epoch, (unsigned long long)mine);
        return ERR_EPOCH_STALE;
    }
    if (env->epoch > mine) {
        atomic_store(&r->epoch, env->epoch);
        char v[24];
        int n = snprintf(v, sizeof v, "%llu", (unsigned long long)env->epoch);
        store_meta_put(r->store, "repl/epoch", v, (size_t)n);
        if (r->primary)
            store_meta_put(r->store, "repl/fenced", v, (size_t)n); /* survives restarts */
        if (r->primary && !atomic_exchange(&r->demoted, true))
            log_warn("REPL-DEMOTED", "sender=%s epoch=%llu action=stop_accepting_writes",
                     env->sender, (unsigned long long)env->epoch);
        else
            log_info("REPL-EPOCH", "sender=%s epoch=%llu", env->sender,
                     (unsigned long long)env->epoch);
    }
    return ERR_OK;
}
