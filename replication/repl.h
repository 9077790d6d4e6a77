/* Geo-replication. On the primary, one shipper thread per secondary streams the
 * replication log over an nng pair socket (events in order, blob bytes in chunks
 * before the event that links them, a window of messages in flight), tracks each
 * replica's acknowledged sequence and lag, and resyncs a replica from a snapshot
 * when the log no longer reaches back to it. On a secondary, one receiver thread
 * verifies and applies what arrives. Epochs fence old primaries.
 *
 * Threads: shipper and receiver threads block in nng and in the store; they never
 * touch HTTP state. The HTTP side reads status through repl_* functions, which
 * take the repl's own locks. */
#ifndef GEOREG_REPL_H
#define GEOREG_REPL_H

#include <stdbool.h>
#include <stdint.h>

#include "../common/buf.h"
#include "../common/err.h"
#include "../storage/store.h"

typedef struct repl repl;

#define REPL_MAX_GLOBS 32

struct repl_filter {
    const char *include[REPL_MAX_GLOBS];
    size_t ninclude;
    const char *exclude[REPL_MAX_GLOBS];
    size_t nexclude;
    const char *include_tags[REPL_MAX_GLOBS];
    size_t ninclude_tags;
    const char *exclude_tags[REPL_MAX_GLOBS];
    size_t nexclude_tags;
};

struct repl_replica_options {
    const char *name;
    const char *address; /* tls+tcp://host:port or tcp://host:port */
    struct repl_filter filter;
};

/* repl_meta_validate_cb: the node checks a replicated metadata event (key, and for a
 * put its value) the way its admin API checks a request; false with *why (static
 * text) refuses it. Called on the receiver thread. */
typedef bool (*repl_meta_validate_cb)(void *arg, const char *key, const void *val, size_t len,
                                      bool del, const char **why);
/* repl_refused_cb: a message or connection was refused (peer: the claimed or
 * authenticated name, may be ""; reason: a metric label). For the audit log; called
 * on replication threads. */
typedef void (*repl_refused_cb)(void *arg, const char *peer, const char *reason,
                                const char *detail);

/* Why something from a peer was refused (georeg_repl_refused_total{reason}). */
enum repl_refusal {
    REFUSE_UNAUTHENTICATED = 0, /* no valid peer proof on this connection yet */
    REFUSE_NOT_PRIMARY,         /* proven name is not allowed to be primary */
    REFUSE_BAD_PROOF,           /* certificate, name or signature does not verify */
    REFUSE_SENDER,              /* sender differs from the authenticated name */
    REFUSE_EPOCH,               /* epoch differs from the proven one, or jumps too far */
    REFUSE_META,                /* metadata event outside the known keys or invalid */
    REFUSE_TLS,                 /* TLS handshake failed (nng listener "auth" errors) */
    REFUSE_COUNT
};

/* The largest epoch step a secondary takes from a proven primary. */
#define REPL_MAX_EPOCH_JUMP 16

/* A region of the cluster description: every node loads the same list. */
struct repl_region {
    const char *name;
    const char *url;     /* its HTTP URL */
    const char *address; /* its replication listener (tls+tcp:// or tcp://) */
    struct repl_filter filter;
    bool eligible;       /* may become primary (never for a filtered region) */
};

/* Synchronous commits (sync.c): on a primary, a write is answered once the required
 * replicas acknowledged an applied sequence at or past it, or the timeout passed (then
 * the primary degrades to asynchronous until they catch up). */
struct repl_sync_options {
    unsigned replicas;        /* acks needed from that many replicas (any of them) */
    const char *const *names; /* or: every one of these replicas must ack (copied) */
    size_t nnames;            /* replicas 0 and no names: sync commits are off */
    uint64_t timeout_ms;      /* longest wait before degrading: more than 0, at most 60 s */
    unsigned max_waiters;     /* writes waiting at once; 0: REPL_SYNC_MAX_WAITERS */
};

#define REPL_SYNC_MAX_WAITERS 4096
#define REPL_SYNC_MAX_TIMEOUT_MS 60000

struct repl_options {
    const char *node_name;
    /* A cluster description (nregions > 0): this node is the region named node_name,
     * listens on its address (or listen, when set), ships to every other region while
     * it is primary and follows the primary otherwise. The role is state: the first
     * start takes initial_primary, later ones what was persisted. Without regions,
     * primary/replicas/primaries below describe a fixed role (no failover). */
    const struct repl_region *regions;
    size_t nregions;
    const char *initial_primary;
    /* cluster.etcd: automatic failover (no endpoints: off) */
    const char *const *etcd_endpoints;
    size_t netcd_endpoints;
    uint64_t etcd_ttl_ms;
    const char *etcd_prefix;
    bool primary;
    const char *listen;      /* secondary: where the primary connects */
    const char *public_url;  /* primary: HTTP URL clients push to (sent to secondaries) */
    const char *primary_url; /* secondary: configured primary URL (else learned) */
    const char *tls_cert, *tls_key, *tls_ca;
    bool insecure;           /* plain tcp:// allowed */
    uint64_t min_epoch;      /* the epoch is at least this */
    unsigned window;         /* messages in flight per replica */
    uint64_t chunk_bytes;
    uint64_t log_retention;  /* events kept beyond the slowest replica, at most */
    uint64_t heartbeat_ms;
    uint64_t max_staleness_ms; /* secondary: not ready beyond this (0: no bound) */
    const struct repl_replica_options *replicas;
    size_t nreplicas;
    const char *tls_client_cert;      /* the primary's clientAuth certificate (else tls_cert) */
    const char *const *primaries;     /* secondary: names allowed to command it */
    size_t nprimaries;
    repl_meta_validate_cb meta_validate; /* NULL: every metadata event is refused */
    repl_refused_cb on_refused;          /* may be NULL */
    void *cb_arg;
    struct repl_sync_options sync;       /* primary: synchronous commits (ignored elsewhere) */
};

/* repl_new validates options (addresses, TLS files, filters) against store s
 * (borrowed, must outlive the repl). Strings in o are copied. Nothing runs until
 * repl_start. ERR_CONFIG with a logged reason. */
err repl_new(store *s, const struct repl_options *o, repl **out);
/* repl_start starts the shipper threads (primary) or the receiver (secondary). */
err repl_start(repl *r);
/* repl_stop stops every thread; safe to call twice. */
void repl_stop(repl *r);
void repl_free(repl *r);
/* repl_close_stuck: repl_stop gave up waiting for nng to close a connection (the
 * process must not call nng_fini, which would wait for it). */
bool repl_close_stuck(repl *r);

/* repl_writable: this node accepts pushes (a primary not fenced by a higher epoch).
 * When not, *primary_url names where clients should push (may be ""). The string
 * is copied into url (n bytes). */
bool repl_writable(repl *r, char *url, size_t n);
/* repl_is_primary: configured (or promoted) as primary. */
bool repl_is_primary(repl *r);
/* repl_ready: false (why: static text) while a secondary is resyncing (its content is
 * partial) or staler than max_staleness, and while a primary is fenced or confirming
 * its epoch. */
bool repl_ready(repl *r, const char **why);

/* repl_fence fences (fenced) or unfences this primary: an operator's decision,
 * persisted. ERR_INVALID on a secondary. */
err repl_fence(repl *r, bool fenced);
/* repl_fence_json writes {"role","fenced","epoch"} into out. */
void repl_fence_json(repl *r, buf *out);

/* repl_promote makes this secondary the primary at a new epoch (a signed promotion
 * record starting after what it applied) and ships to every other region from where
 * each stands. Before, it asks every reachable region where it is, and refuses
 * (ERR_DENIED, reasons in out) a filtered replica, a node that may not be primary,
 * a live primary elsewhere and a candidate behind another one, unless force. out
 * gets a JSON report either way (what each region holds, what would be lost).
 * Blocks for up to a few seconds (run it off the event loop). */
err repl_promote(repl *r, bool force, buf *out);

/* repl_conflicts_json writes {"node","conflicts":[...],"divergences":[...]}: tags this
 * node had written (or followed) beyond a fork point that now resolve elsewhere or
 * nowhere. all: also resolved ones and every reported event. */
err repl_conflicts_json(repl *r, bool all, buf *out);
/* repl_conflicts_open counts unresolved conflicts. */
size_t repl_conflicts_open(repl *r);
/* repl_conflict_resolve marks conflict n of report as resolved (how: "keep-new",
 * "take-old", "retagged"). ERR_NOT_FOUND when there is no such conflict. */
err repl_conflict_resolve(repl *r, uint64_t report, uint64_t n, const char *how);

/* repl_reload applies a new cluster description (regions as in repl_options): adds,
 * removes and moves regions and changes filters without a restart. This node's own
 * region must stay (its address too). ERR_INVALID (nothing changed) with the reason
 * in out's "error"; out gets {"reloaded","added","removed","changed","regions"}. */
err repl_reload(repl *r, const struct repl_region *regions, size_t n, buf *out);

/* repl_status_json writes the replication state as a JSON object into out. */
err repl_status_json(repl *r, buf *out);
/* repl_metrics appends Prometheus lines for lag and throughput to out. */
void repl_metrics(repl *r, buf *out);
/* repl_housekeeping trims the log (primary); call every few seconds. */
void repl_housekeeping(repl *r);

struct repl_locate {
    char name[64];
    bool known;   /* a configured region (or this node) */
    bool holds;   /* holds the manifest and everything it references */
    bool included;/* the region's filter includes the repository/tag */
    uint64_t acked_seq;
};

/* repl_locate says, for each region in regions (NULL or empty: all), whether it holds
 * the manifest at repo:ref as of now. seq is the log sequence of the event that made
 * repo:ref what it is (store_manifest_seq). out has room for max entries; *n gets
 * the count. Returns true when every named region holds it. */
bool repl_locate(repl *r, const char *repo, const char *ref, uint64_t seq, const char *regions,
                 struct repl_locate *out, size_t max, size_t *n);

/* ---- synchronous commits (sync.c) ---- */

typedef struct repl_sync_waiter repl_sync_waiter;
/* repl_sync_wake_cb: the waiter's state may have changed; called on a replication
 * thread (or the caller's), under the sync lock: it must not block nor call repl_sync_*. */
typedef void (*repl_sync_wake_cb)(void *arg);

enum repl_sync_state {
    REPL_SYNC_PENDING = 0, /* keep waiting: poll again when woken, or after *wait_ms */
    REPL_SYNC_DONE,        /* the required replicas acknowledged the write */
    REPL_SYNC_ASYNC,       /* answer without them: sync is off or degraded, or it timed out */
};

/* repl_sync_waiter_new reserves a waiter before a write commits, so that a write is
 * refused before, never after, it is stored. *out is new (free with
 * repl_sync_waiter_free), or NULL when writes do not wait (sync off, or not a
 * primary). ERR_TOOMANYREQUESTS when max_waiters writes wait already (counted). */
err repl_sync_waiter_new(repl *r, repl_sync_waiter **out);
/* repl_sync_arm starts the wait of w (borrowed) for the write that committed log
 * sequence seq; wake(arg) is called whenever repl_sync_poll may answer differently.
 * The wait's clock starts now. */
void repl_sync_arm(repl *r, repl_sync_waiter *w, uint64_t seq, repl_sync_wake_cb wake,
                   void *arg);
/* repl_sync_poll says where the armed w stands; *wait_ms (may be NULL) gets the time
 * left when PENDING, *replicated (may be NULL) how many replicas acknowledged its seq.
 * The first poll past the deadline degrades the primary (REPL-SYNC-DEGRADED). */
enum repl_sync_state repl_sync_poll(repl *r, repl_sync_waiter *w, uint64_t *wait_ms,
                                    unsigned *replicated);
/* repl_sync_waiter_free unregisters and frees w (NULL is fine); once it returns no
 * wake callback for it runs any more. */
void repl_sync_waiter_free(repl *r, repl_sync_waiter *w);
/* repl_sync_replicated: how many replicas acknowledged sequence seq (0 off a primary). */
unsigned repl_sync_replicated(repl *r, uint64_t seq);

#endif
