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
#define RECV_MAX_PEERS 8      /* pipes a receiver remembers proofs of */
#define CLOSE_MAX_SOCKS 64    /* sockets closed at shutdown (replicas and listener) */

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

/* ---- the history of promotions (history.c) ---- */

#define REPL_MAX_HISTORY 64

/* One promotion: node became primary at epoch; its writes start at start_seq. */
struct hist_rec {
    uint64_t epoch, start_seq, time_ms;
    char node[64];
    buf cert, sig; /* empty in a development cluster without keys */
};

/* Records oldest first; sequences before rec[0].start_seq belong to base_epoch. */
struct history {
    uint64_t base_epoch;
    size_t n;
    struct hist_rec rec[REPL_MAX_HISTORY];
};

/* A history as protobuf messages borrowing from a struct history. */
struct hist_pb {
    Georeg__Repl__Promotion *items;
    Georeg__Repl__Promotion **ptrs;
    size_t n;
};

void hist_init(struct history *h);
void hist_release(struct history *h);
err hist_copy(struct history *dst, const struct history *src);
uint64_t hist_last_epoch(const struct history *h);
/* hist_epoch_at: the epoch that wrote seq in h. */
uint64_t hist_epoch_at(const struct history *h, uint64_t seq);
const struct hist_rec *hist_find(const struct history *h, uint64_t epoch);
/* hist_fork: the highest seq <= limit up to which a and b agree (the same epoch wrote
 * every seq): a log that goes beyond it on one side is on another branch. */
uint64_t hist_fork(const struct history *a, const struct history *b, uint64_t limit);
err hist_rec_from_pb(const Georeg__Repl__Promotion *p, struct hist_rec *rec);
/* hist_pb_new builds messages borrowing from h (valid while h is unchanged). */
err hist_pb_new(const struct history *h, struct hist_pb *out);
void hist_pb_free(struct hist_pb *p);

struct globs {
    char *items[REPL_MAX_GLOBS];
    size_t n;
};

struct filter {
    struct globs include, exclude, include_tags, exclude_tags;
    char hash[17]; /* identifies the filter; a change triggers a resync */
};

#define REPL_MAX_REGIONS 16          /* regions of a cluster description */
#define REPL_MAX_FILTER_VERSIONS 32  /* filters one replica keeps until restart */

struct replica {
    repl *r;
    char name[64];
    char address[256];               /* under mu once the shipper runs (reload) */
    /* The filter in force: immutable once published, swapped by a reload; earlier
     * versions stay allocated (readers may hold them) until repl_free. */
    struct filter *_Atomic filter;
    struct filter *filters[REPL_MAX_FILTER_VERSIONS];
    size_t nfilters;
    _Atomic bool active;             /* false: removed from the cluster by a reload */
    _Atomic bool redial;             /* the address changed: the shipper redials */
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

    char url[256];         /* cluster: the region's HTTP URL */
    bool filtered;         /* a filter that leaves something out */
    bool dialing;          /* shipper: the dialer runs (only while this node is primary) */
    _Atomic uint64_t confirmed_epoch; /* the replica follows us at this epoch */
    uint64_t diverged;     /* times it was found on another branch */
    uint64_t fork_seq;     /* the fork point found at the last handshake */
    uint64_t their_epoch;  /* the epoch it answered with */

    /* shipper-private */
    struct history their_hist; /* its history, from its answer to our proof */
    bool have_their_hist;
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
    _Atomic bool primary;   /* the role: state, persisted (repl/role) in a cluster */
    bool cluster;           /* configured from a cluster description */
    _Atomic size_t nvoters; /* cluster: regions, this one included */
    char self_address[256]; /* cluster: this region's address at start (reloads keep it) */
    _Atomic bool self_filtered; /* cluster: this region holds a filtered replica */
    _Atomic bool self_eligible; /* cluster: this region may become primary */
    _Atomic bool confirming;/* a primary that has not yet confirmed its epoch */
    _Atomic uint64_t history_conflicts;
    _Atomic uint64_t promotions, demotions;
    _Atomic uint64_t divergences;  /* times this node's own log went past a fork */
    _Atomic int resyncs_active; /* shippers inside a resync: the log is not trimmed */
    uint64_t started_ms;
    uint64_t max_staleness_ms; /* a secondary staler than this is not ready (0: never) */
    pthread_mutex_t hmu;    /* guards hist and known */
    struct history known;   /* verified promotions newer than hist (history.c) */
    pthread_mutex_t promote_mu; /* one promotion at a time */
    struct history hist;
    char node_name[64];
    char listen[256];
    char public_url[256];
    char tls_cert[1024], tls_key[1024], tls_ca[1024], tls_client_cert[1024];
    bool insecure;
    char (*primaries)[64]; /* names allowed to command it (under cfg_mu) */
    size_t nprimaries;
    size_t primaries_cap;
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
    _Atomic bool close_stuck; /* gave up waiting for an nng_close (repl_close_bounded) */
    struct failover *fo;  /* automatic failover through etcd (NULL: off) */
    _Atomic uint64_t stale_epoch_rejects;
    _Atomic uint64_t forged_rejects;

    /* new commits wake the shippers */
    pthread_mutex_t wake_mu;
    pthread_cond_t wake_cv;
    uint64_t wake_seq;

    struct replica *replicas;
    _Atomic size_t nreplicas; /* slots in use (a reload only adds; removed ones are inactive) */
    size_t replicas_cap;
    pthread_mutex_t cfg_mu;   /* guards primaries, and serializes reloads */

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
    _Atomic uint32_t rpipe_id; /* the pipe of the primary this node follows (0: none) */
    _Atomic uint32_t rcur_pipe;      /* the listener's one connection (0: none) */
    _Atomic uint64_t rpipes_refused; /* connections refused while following a live one */

    struct sync_state sync; /* synchronous commits (sync.c) */
};


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
/* A PeerProof envelope (signed over the nonce when we have keys and one was sent,
 * carrying our log's history), ready to send; release it after. */
struct wire_proof {
    buf cert, sig;
    struct history hist;
    struct hist_pb pb;
    Georeg__Repl__PeerProof pp;
    envelope env;
};
err wire_proof_build(repl *r, slice nonce, const char *receiver, bool probe, struct wire_proof *p);
void wire_proof_release(struct wire_proof *p);
/* repl_refuse counts a refusal, logs it and tells the node (audit). */
void repl_refuse(repl *r, enum repl_refusal why, const char *peer, const char *detail);
err wire_send(repl *r, nng_socket s, envelope *env, uint64_t msg_id);
/* wire_send_to sends env to one pipe of a polyamorous socket (a receiver's reply). */
err wire_send_to(repl *r, nng_socket s, uint32_t pipe, envelope *env);
/* wire_keys: a node key and cluster CA are configured (proofs and records signed). */
bool wire_keys(repl *r);
/* wire_record_sign signs rec (its node is this node) with the node key. */
err wire_record_sign(repl *r, struct hist_rec *rec);
/* wire_record_verify: rec's certificate chains to the cluster CA, names rec->node,
 * and signs the record. Without keys (development) every record passes. */
bool wire_record_verify(repl *r, const struct hist_rec *rec, const char **why);
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

/* history.c: the node's own history (r->hist, under r->hmu) */
err hist_load(repl *r);
err hist_save(repl *r);
/* hist_json writes our log's history (a JSON array), then ,"known_promotions":[...] */
void hist_json(repl *r, buf *b);
bool repl_may_be_primary(repl *r, const char *name);
/* repl_learn verifies promotion records from a peer and appends those newer than
 * ours (adopting their epoch). 1: learned something, 0: nothing new, -1: refused
 * (why; counted and audited). */
int repl_learn(repl *r, Georeg__Repl__Promotion *const *recs, size_t n, const char *from,
               const char **why);
/* repl_take_history makes recs (the followed primary's history, each record ours or
 * verified) this node's history. */
err repl_take_history(repl *r, const struct history *t, const char *from);
/* repl_history_add_own signs and appends this node's promotion to epoch. */
err repl_history_add_own(repl *r, uint64_t epoch, uint64_t start_seq);
/* repl_writer_is: name wrote epoch (by our history); *known: we have its record. */
bool repl_writer_is(repl *r, uint64_t epoch, const char *name, bool *known);
/* repl_demote: a verified higher epoch exists: this primary becomes a secondary. */
void repl_demote(repl *r, const char *why);
/* repl_become_primary switches this node to primary (after its promotion record). */
void repl_become_primary(repl *r);
/* repl_check_confirmed ends `confirming` once a majority follows at our epoch. */
void repl_check_confirmed(repl *r);

/* repl_close_bounded closes n sockets on a thread of its own and waits for at most
 * timeout_ms (nng 1.5's nng_close can wait for minutes on a TLS pipe); false when it
 * gave up: close_stuck is set and the process must end without nng_fini. */
bool repl_close_bounded(repl *r, const nng_socket *socks, size_t n, uint64_t timeout_ms);

/* promote.c: ASK refuses on any reason, ELECTED (won the etcd key) promotes over a
 * primary whose lease lapsed and over regions ahead that may not be primary, FORCE
 * over everything but a filtered or ineligible self. */
enum promote_mode { PROMOTE_ASK, PROMOTE_ELECTED, PROMOTE_FORCE };
err repl_promote_as(repl *r, enum promote_mode mode, buf *out);

/* failover.c: automatic failover through etcd */
struct failover;
/* failover_new sets up etcd failover (n endpoints; none: off). ERR_CONFIG. */
err failover_new(repl *r, const char *const *endpoints, size_t n, uint64_t ttl_ms,
                 const char *prefix);
void failover_free(repl *r);
/* failover_start starts the etcd thread (cluster.etcd configured); ERR_CONFIG. */
err failover_start(repl *r);
void failover_stop(repl *r);
/* failover_lease_ok: no etcd, or this primary holds the key under a live lease. */
bool failover_lease_ok(repl *r);
void failover_json(repl *r, buf *b);
void failover_metrics(repl *r, buf *b);

/* divergence.c */
/* divergence_begin keeps a report of this node's log beyond fork_seq (before a
 * resync wipes it). */
err divergence_begin(repl *r, uint64_t fork_seq, uint64_t new_epoch, const char *primary);
/* divergence_end finds the tag conflicts of unchecked reports (after the resync). */
void divergence_end(repl *r);

/* filter.c (in repl.c) */
bool filter_repo(const struct filter *f, slice repo);
bool filter_tag(const struct filter *f, slice tag);
/* rp_filter: the replica's filter in force (valid until repl_free). */
const struct filter *rp_filter(struct replica *rp);
/* repl_filter_new builds a filter from o; a new one to publish or free. */
err repl_filter_new(const struct repl_filter *o, struct filter **out);
void repl_filter_free(struct filter *f);
/* repl_replica_init sets up slot rp for region g (not yet running). */
err repl_replica_init(repl *r, struct replica *rp, const struct repl_region *g);
/* repl_replica_run opens the replica's socket and starts its shipper. */
err repl_replica_run(repl *r, struct replica *rp);
/* repl_set_primaries rebuilds the names that may command this node (cluster). */
err repl_set_primaries(repl *r, const struct repl_region *regions, size_t n);

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
