/* A georeg node: the frozen config, the store, the HTTP server and (later) the
 * replication state, owned by one struct so that one process can run several
 * nodes (tests do). */
#ifndef GEOREG_NODE_H
#define GEOREG_NODE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <pthread.h>

#include "../storage/store.h"
#include "auth/auth.h"
#include "config.h"
#include "http/http.h"

struct node_metrics {
    _Atomic uint64_t blob_pulls, blob_pull_bytes, manifest_pulls, manifest_pushes, blob_pushes,
        blob_push_bytes, mounts, deletes;
};

struct node {
    const struct cfg *cfg;
    store *store;
    http_server *http;
    auth *auth;
    pthread_mutex_t audit_mu, audit_flush_mu;
    buf audit_queue; /* JSON lines waiting for audit_flush */
    uint64_t audit_dropped;
    _Atomic uint64_t audit_dropped_total; /* queue full, or the store refused them */
    struct repl *repl; /* NULL on a single node without replication */
    _Atomic bool ready;
    _Atomic unsigned locate_waiters;
    struct node_metrics metrics;
    uint64_t started_ms;
};

/* node_open opens the store and binds the HTTP listeners. cfg is borrowed and must
 * outlive the node. *out is new: close with node_close. */
err node_open(const struct cfg *cfg, struct node **out);
/* node_run serves until SIGTERM or SIGINT, then drains and returns. */
err node_run(struct node *n);
/* node_reload_cluster re-reads the config file's cluster description and applies it
 * (repl_reload); out gets its JSON report. ERR_INVALID when refused (nothing
 * changed). Blocks briefly: call it off the event loop. */
err node_reload_cluster(struct node *n, buf *out);
/* node_nng_stuck: replication could not close its connections at shutdown (nng
 * kept waiting); the process must then exit without nng_fini. */
bool node_nng_stuck(const struct node *n);
/* node_close stops everything still running and frees the node; accepts NULL. */
void node_close(struct node *n);

/* node_writable: this node accepts pushes. When it does not, primary_url (len
 * bytes) receives where to push (may be empty). */
bool node_writable(struct node *n, char *primary_url, size_t len);

/* access_require checks that the request's client may do actions on repo (and
 * actions2 on repo2); login: an identified client is needed even without actions.
 * false when it answered (401, 403, 429); true to proceed (the check may finish on
 * the pool, as a pre_body step). */
bool access_require(struct http_req *r, const char *repo, unsigned actions, const char *repo2,
                    unsigned actions2, bool login);
/* access_who: the identified client (NULL when auth is off or not yet known). */
const struct auth_principal *access_who(struct http_req *r);
/* access_actor: the client's name for logs and audit ("-" when unknown). */
const char *access_actor(struct http_req *r);
/* access_route handles token, users, tokens, service-principals and audit under
 * /_georeg/v1/ (rest is the path after it); false when it is none of them. */
bool access_route(struct http_req *r, slice rest);

/* audit_log queues one audit entry (who, from where, what, result); r may be NULL. */
void audit_log(struct node *n, struct http_req *r, const char *action, const char *repo,
               const char *ref, const char *digest, int status, const char *detail);
/* audit_flush writes queued entries to the store (blocking: call on the pool). */
void audit_flush(struct node *n);

/* meta_validate (meta_validate.c) is replication's repl_meta_validate_cb: a
 * replicated metadata event is applied only under a known key prefix ("id/") and
 * with a body the admin API would write. arg is unused. */
bool meta_validate(void *arg, const char *key, const void *val, size_t len, bool del,
                   const char **why);

/* oci_on_headers routes a request (the HTTP server's on_headers). */
void oci_on_headers(struct http_req *r);
/* admin_route handles /healthz, /readyz, /metrics and /_georeg/v1/...; false when
 * the path is none of those. */
bool admin_route(struct http_req *r);

#endif
