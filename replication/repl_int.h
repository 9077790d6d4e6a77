/* Private to replication/: the repl and replica structs shared by repl.c,
 * wire.c, shipper.c and receiver.c. */
#ifndef GEOREG_REPL_INT_H
#define GEOREG_REPL_INT_H

#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <nng/supplemental/tls/tls.h>
#include <pthread.h>
#include <stdatomic.h>

#include "proto/replication.pb-c.h"
#include "repl.h"

#define REPL_PROTOCOL_VERSION 1
#define REPL_MAX_MSG (16u << 20)
#define REPL_KNOWN_BLOBS 4096 /* digests known present on a replica (a cache) */

typedef Georeg__Repl__Envelope envelope;

/* A replica's state as the primary sees it. */
enum replica_state {
    RS_UNREACHABLE = 0, /* no connection, or no answer for a while */
    RS_CONNECTING,      /* connected, handshake not finished */
    RS_IN_SYNC,         /* acknowledged everything committed */
    RS_STREAMING,       /* behind by less than a window: normal streaming */
    RS_CATCHING_UP,     /* behind by more than a window */
    RS_RESYNCING,       /* being rebuilt from a snapshot */
};

struct globs {
    char *items[REPL_MAX_GLOBS];
    size_t n;
};

struct filter {
    struct globs include, exclude, include_tags, exclude_tags;
    char hash[17]; /* identifies the filter; a change triggers a resync */
};

struct replica {
    repl *r;
    char name[64];
    char address[256];
    struct filter filter;
    nng_socket sock;
    nng_dialer dialer;
    bool sock_open;
    pthread_t thread;
    bool thread_started;

    _Atomic uint64_t pipe_gen; /* bumped on every connect and disconnect */
    _Atomic uint32_t pipe_id;  /* current pipe, 0 when none */
    uint64_t down_since_ms;    /* shipper: when the pipe went away (0: up) */

    /* status, under mu */
    pthread_mutex_t mu;
    enum replica_state state;
    uint64_t acked_seq;
    uint64_t last_applied_reported; /* applied seq in the replica's latest ack */
    uint64_t sent_seq;
    uint64_t last_contact_ms;
    uint64_t bytes_sent;
    uint64_t events_sent;
    double throughput_bps; /* bytes/s, smoothed */
    uint64_t tp_last_ms, tp_last_bytes;
    uint64_t resync_total_bytes, resync_sent_bytes, resyncs;
    uint64_t stale_epoch_rejects;
    uint64_t retries;
    char last_error[256];

    /* shipper-private */
    uint64_t next_msg_id, acked_msg_id;
    uint64_t query_id;
    uint64_t last_resync_id;
    char (*known)[72]; /* ring of digests known present (sha256 only) */
    size_t known_next;
};

/* Synchronous commits: the primary's mode (issue 9 section 5). */
enum sync_mode {
    SYNC_OFF = 0,  /* not configured, or this node is not a primary: writes never wait */
    SYNC_ON,       /* writes wait for the required acks, at most timeout_ms */
    SYNC_DEGRADED, /* a wait timed out: writes are answered at once until the required
                      replicas have acknowledged the head, then SYNC_ON again */
};

#define SYNC_MAX_REPLICAS 64

/* sync.c's state, under mu (taken before a replica's mu, never under it). */
struct sync_state {
    bool inited;
    pthread_mutex_t mu;
    unsigned need;             /* count mode: acks needed; 0 in names mode */
    char (*names)[64];         /* names mode: the replicas that must ack */
    size_t nnames;
    size_t *idx;               /* names mode, primary: their index in r->replicas */
    uint64_t timeout_ms;
    unsigned max_waiters, nwaiters; /* reserved waiters (armed or not) */
    _Atomic enum sync_mode mode; /* written under mu; read without it for a peek */
    uint64_t degraded_since_ms;
    uint64_t timeouts, refused, restores;
    struct repl_sync_waiter *armed; /* pending armed waiters, a list */
};

struct repl {
    store *store;
    bool primary;
    char node_name[64];
    char listen[256];
    char public_url[256];
    char tls_cert[1024], tls_key[1024], tls_ca[1024], tls_client_cert[1024];
    bool insecure;
    char (*primaries)[64]; /* secondary: names allowed to command it */
    size_t nprimaries;
    repl_meta_validate_cb meta_validate;
    repl_refused_cb on_refused;
    void *cb_arg;
    _Atomic uint64_t refused[REFUSE_COUNT];
    uint64_t tls_auth_seen; /* receiver: the listener's "auth" stat last read */
    unsigned window;
    uint64_t chunk_bytes;
    uint64_t log_retention;
    uint64_t heartbeat_ms;

    _Atomic uint64_t epoch;
    _Atomic bool demoted; /* a higher epoch was seen: stop accepting writes */
    _Atomic bool stopping;
    _Atomic uint64_t stale_epoch_rejects;
    _Atomic uint64_t forged_rejects;

    /* new commits wake the shippers */
    pthread_mutex_t wake_mu;
    pthread_cond_t wake_cv;
    uint64_t wake_seq;

    struct replica *replicas;
    size_t nreplicas;

    /* secondary */
    nng_socket rsock;
    nng_listener listener;
    bool rsock_open;
    pthread_t rthread;
    bool rthread_started;
    pthread_mutex_t smu; /* guards the fields below */
    char learned_primary_url[256];
    char primary_name[64];
    uint64_t primary_head;
    uint64_t primary_time_ms;
    uint64_t last_contact_ms;
    uint64_t caught_up_ms; /* last time applied >= the primary's head */
    bool resyncing;
    uint64_t resync_epoch, resync_id; /* the latest resync begun (persisted) */
    uint64_t resync_bytes;
    uint64_t apply_errors;
    char apply_error[256];
    _Atomic uint32_t rpipe_id;

    struct sync_state sync; /* synchronous commits (sync.c) */
};

uint64_t repl_now_ms(void);

/* wire.c */
/* wire_tls_config: server mode uses tls_cert; client mode uses tls_client_cert (else
 * tls_cert) and verifies the server's certificate names server_name. */
err wire_tls_config(repl *r, bool server, const char *server_name, nng_tls_config **out);
/* wire_proof_sign signs the peer proof for nonce and receiver at epoch with this
 * node's key; *cert and *sig are returned new (free with free()). */
err wire_proof_sign(repl *r, slice nonce, const char *receiver, uint64_t epoch, buf *cert,
                    buf *sig);
/* wire_proof_verify checks a peer proof: cert chains to the cluster CA for client
 * use, names sender (SAN), and sig is sender's signature over (nonce, receiver,
 * sender, epoch). REFUSE_COUNT when it holds, else the refusal with *why. */
enum repl_refusal wire_proof_verify(repl *r, slice cert, slice sig, slice nonce,
                                    const char *sender, const char *receiver, uint64_t epoch,
                                    const char **why);
/* repl_refuse counts a refusal, logs it and tells the node (audit). */
void repl_refuse(repl *r, enum repl_refusal why, const char *peer, const char *detail);
err wire_send(repl *r, nng_socket s, envelope *env, uint64_t msg_id);
/* wire_send_payload also sends plen bulk bytes after the envelope, written into the
 * message by fill (so they are copied once, from their source). */
err wire_send_payload(repl *r, nng_socket s, envelope *env, uint64_t msg_id, size_t plen,
                      err (*fill)(void *arg, char *dst, size_t n), void *arg);
/* wire_recv waits up to timeout_ms (0: poll) for one envelope; ERR_TIMEOUT when none.
 * Rejects (ERR_PROTOCOL) undecodable messages and other protocol versions. Free the
 * result with georeg__repl__envelope__free_unpacked(env, NULL). With payload and
 * keep, *payload borrows the bulk bytes from *keep, which the caller frees with
 * nng_msg_free; without them any payload is dropped. */
err wire_recv(repl *r, nng_socket s, int timeout_ms, envelope **out, uint32_t *pipe,
              slice *payload, nng_msg **keep);
/* wire_epoch_stale: ERR_EPOCH_STALE (counted, logged) when env is older than our
 * epoch. Nothing is ever adopted from an envelope: a secondary takes a new epoch
 * only from a verified peer proof (receiver.c), a primary only from its config. */
err wire_epoch_stale(repl *r, const envelope *env);
/* wire_epoch_adopt persists a new (higher) epoch on a secondary. */
void wire_epoch_adopt(repl *r, uint64_t epoch, const char *sender);

/* filter.c (in repl.c) */
bool filter_repo(const struct filter *f, slice repo);
bool filter_tag(const struct filter *f, slice tag);

/* repl.c: (re)create a replica's dialer */
err repl_start_dialer(repl *r, struct replica *rp);

/* repl.c: ,"key":"ISO time" (or null when ms is 0) */
void json_time(buf *b, const char *key, uint64_t ms);

/* sync.c */
/* sync_init validates and copies o (ERR_CONFIG with a REPL-CONFIG line); sync_release
 * undoes it (also when sync_init never ran). */
err sync_init(repl *r, const struct repl_sync_options *o);
void sync_release(repl *r);
/* sync_on_ack: a replica's acknowledged seq may have moved (shipper thread, no lock held). */
void sync_on_ack(repl *r);
/* sync_json appends ,"sync":{...}; sync_metrics the georeg_repl_sync_* lines. */
void sync_json(repl *r, buf *b);
void sync_metrics(repl *r, buf *b);

/* shipper.c */
void *shipper_main(void *arg);
/* receiver.c */
void *receiver_main(void *arg);

#endif
