/* A georeg node: the frozen config, the store, the HTTP server and (later) the
 * replication state, owned by one struct so that one process can run several
 * nodes (tests do). */
#ifndef GEOREG_NODE_H
#define GEOREG_NODE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "../storage/store.h"
#include "config.h"
#include "http.h"

struct node_metrics {
    _Atomic uint64_t blob_pulls, blob_pull_bytes, manifest_pulls, manifest_pushes, blob_pushes,
        blob_push_bytes, mounts, deletes;
};

struct node {
    const struct cfg *cfg;
    store *store;
    http_server *http;
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
/* node_close stops everything still running and frees the node; accepts NULL. */
void node_close(struct node *n);

/* node_writable: this node accepts pushes. When it does not, primary_url (len
 * bytes) receives where to push (may be empty). */
bool node_writable(struct node *n, char *primary_url, size_t len);

/* oci_on_headers routes a request (the HTTP server's on_headers). */
void oci_on_headers(struct http_req *r);
/* admin_route handles /healthz, /readyz, /metrics and /_georeg/v1/...; false when
 * the path is none of those. */
bool admin_route(struct http_req *r);

#endif
