/* Operator endpoints: /healthz, /readyz, /metrics (Prometheus text format) and the
 * georeg API under /_georeg/v1/. */
#include <stdio.h>
#include <string.h>

#include <time.h>
#include <unistd.h>

#include "../../common/clock.h"
#include "../../common/log.h"
#include "../../common/ref.h"
#include "../../replication/repl.h"
#include "../config.h"
#include "../node.h"
#include "../../common/banned.h"

static err
h_healthz(struct http_req *r, bool nowait)
{
    (void)nowait;
    http_resp_json(r, 200, "{\"status\":\"ok\"}", 15);
    return ERR_OK;
}

/* the store refuses writes: RocksDB stopped, or below storage.min_free (not counted
 * as a refusal, unlike store_space_check) */
static bool
store_full(store *s)
{
    struct store_space sp;
    store_space_stats(s, &sp);
    return sp.wedged || (sp.min_free && sp.free_bytes < sp.min_free);
}

static err
h_readyz(struct http_req *r, bool nowait)
{
    struct node *n = r->app;
    const char *why = "";
    (void)nowait;
    if (!atomic_load(&n->ready))
        http_resp_error(r, ERR_UNAVAILABLE, "not ready", NULL);
    else if (!repl_ready(n->repl, &why))
        http_resp_error(r, ERR_UNAVAILABLE, why, NULL);
    else if (store_full(n->store))
        http_resp_error(r, ERR_UNAVAILABLE,
                        "the store refuses writes: the disk is full (or below storage.min_free)",
                        NULL);
    else
        http_resp_json(r, 200, "{\"status\":\"ready\"}", 18);
    return ERR_OK;
}

static void
metric(buf *b, const char *name, const char *type, const char *help, uint64_t v)
{
    buf_addf(b, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", name, help, name, type, name,
             (unsigned long long)v);
}

static err
h_metrics(struct http_req *r, bool nowait)
{
    struct node *n = r->app;
    struct http_stats *hs = http_server_stats(n->http);
    struct node_metrics *m = &n->metrics;
    buf b = BUF_INIT;
    (void)nowait;
    metric(&b, "georeg_http_requests_total", "counter", "HTTP requests received",
           atomic_load(&hs->requests));
    struct store_space sp;
    store_space_stats(n->store, &sp);
    metric(&b, "georeg_store_wedged", "gauge",
           "1 while RocksDB refuses writes after a full disk (until space returns)",
           sp.wedged ? 1 : 0);
    metric(&b, "georeg_store_free_bytes", "gauge", "free bytes on the data dir's file system",
           sp.free_bytes == UINT64_MAX ? 0 : sp.free_bytes);
    metric(&b, "georeg_store_min_free_bytes", "gauge", "storage.min_free", sp.min_free);
    metric(&b, "georeg_store_space_refusals_total", "counter",
           "writes refused with 507 for lack of space", sp.refusals);
    metric(&b, "georeg_store_resumes_total", "counter",
           "times the store was reopened for writing after a full disk", sp.resumes);
    metric(&b, "georeg_audit_dropped_total", "counter",
           "audit entries lost (queue full, or the store refused them)",
           atomic_load(&n->audit_dropped_total));
    buf_adds(&b, "# HELP georeg_http_responses_total HTTP responses by status class\n"
                 "# TYPE georeg_http_responses_total counter\n");
    buf_addf(&b, "georeg_http_responses_total{class=\"2xx\"} %llu\n",
             (unsigned long long)atomic_load(&hs->responses_2xx));
    buf_addf(&b, "georeg_http_responses_total{class=\"3xx\"} %llu\n",
             (unsigned long long)atomic_load(&hs->responses_3xx));
    buf_addf(&b, "georeg_http_responses_total{class=\"4xx\"} %llu\n",
             (unsigned long long)atomic_load(&hs->responses_4xx));
    buf_addf(&b, "georeg_http_responses_total{class=\"5xx\"} %llu\n",
             (unsigned long long)atomic_load(&hs->responses_5xx));
    metric(&b, "georeg_http_bytes_received_total", "counter", "bytes read from clients",
           atomic_load(&hs->bytes_in));
    metric(&b, "georeg_http_bytes_sent_total", "counter", "bytes written to clients",
           atomic_load(&hs->bytes_out));
    metric(&b, "georeg_http_connections_open", "gauge", "open client connections",
           atomic_load(&hs->conns_open));
    metric(&b, "georeg_http_connections_total", "counter", "accepted connections",
           atomic_load(&hs->conns_total));
    metric(&b, "georeg_http_connections_refused_total", "counter",
           "connections refused at the connection cap", atomic_load(&hs->conns_refused));
    metric(&b, "georeg_http_timeouts_total", "counter", "connections cut by a timeout",
           atomic_load(&hs->timeouts));
    metric(&b, "georeg_locate_waiters", "gauge", "locate requests parked in a ?wait=",
           atomic_load(&n->locate_waiters));
    metric(&b, "georeg_http_pool_jobs_total", "counter", "request steps run on the thread pool",
           atomic_load(&hs->pool_jobs));
    metric(&b, "georeg_http_loop_handled_total", "counter",
           "requests answered on the event loop from memory", atomic_load(&hs->loop_handled));
    metric(&b, "georeg_blob_pulls_total", "counter", "blob GETs served",
           atomic_load(&m->blob_pulls));
    metric(&b, "georeg_blob_pull_bytes_total", "counter", "blob bytes served",
           atomic_load(&m->blob_pull_bytes));
    metric(&b, "georeg_blob_pushes_total", "counter", "blob uploads committed",
           atomic_load(&m->blob_pushes));
    metric(&b, "georeg_blob_push_bytes_total", "counter", "blob bytes committed",
           atomic_load(&m->blob_push_bytes));
    metric(&b, "georeg_blob_mounts_total", "counter", "cross-repository mounts",
           atomic_load(&m->mounts));
    metric(&b, "georeg_manifest_pulls_total", "counter", "manifest GETs served",
           atomic_load(&m->manifest_pulls));
    metric(&b, "georeg_manifest_pushes_total", "counter", "manifests committed",
           atomic_load(&m->manifest_pushes));
    metric(&b, "georeg_deletes_total", "counter", "blob, manifest and tag deletes",
           atomic_load(&m->deletes));
    metric(&b, "georeg_log_head_seq", "gauge", "highest committed replication log sequence",
           store_log_head(n->store));
    repl_metrics(n->repl, &b);
    r->resp.status = 200;
    buf_release(&r->resp.body);
    r->resp.body = b;
    http_resp_header(r, "Content-Type", "text/plain; version=0.0.4");
    return ERR_OK;
}

/* json_body answers status with the JSON in b (taken: b is left empty). */
static void
json_body(struct http_req *r, int status, buf *b)
{
    r->resp.status = status;
    buf_release(&r->resp.body);
    r->resp.body = *b;
    buf_init(b);
    http_resp_header(r, "Content-Type", "application/json");
}

static err
h_replication(struct http_req *r, bool nowait)
{
    struct node *n = r->app;
    buf b = BUF_INIT;
    (void)nowait;
    repl_status_json(n->repl, &b);
    json_body(r, 200, &b);
    return ERR_OK;
}

/* h_fence: GET shows whether this primary is fenced; POST fences it, DELETE clears
 * the fence (an operator's decision, persisted, audited). */
static err
h_fence(struct http_req *r, bool nowait)
{
    struct node *n = r->app;
    (void)nowait;
    if (r->method != M_GET) {
        bool fence = r->method == M_POST;
        err e = repl_fence(n->repl, fence);
        audit_log(n, r, fence ? "replication.fence" : "replication.unfence", NULL, NULL, NULL,
                  e ? 400 : 200, e ? "not a primary" : NULL);
        if (e) {
            http_resp_error(r, ERR_INVALID, "only a primary can be fenced", NULL);
            return ERR_OK;
        }
    }
    buf b = BUF_INIT;
    repl_fence_json(n->repl, &b);
    json_body(r, 200, &b);
    return ERR_OK;
}

/* h_promote: POST /_georeg/v1/promote[?force=true] makes this secondary the primary
 * (repl_promote); 200 with the report, 409 CONFLICT-like DENIED with it when refused. */
static err
h_promote(struct http_req *r, bool nowait)
{
    struct node *n = r->app;
    (void)nowait;
    char fv[8] = "";
    bool force = http_req_query(r, "force", fv, sizeof fv) &&
                 (!strcmp(fv, "true") || !strcmp(fv, "1"));
    buf b = BUF_INIT;
    err e = repl_promote(n->repl, force, &b);
    audit_log(n, r, "replication.promote", NULL, NULL, NULL, e ? 409 : 200,
              e ? "refused" : (force ? "forced" : NULL));
    json_body(r, e == ERR_OK ? 200 : e == ERR_INVALID ? 400 : 409, &b);
    return ERR_OK;
}

/* h_cluster_reload: POST /_georeg/v1/cluster/reload re-reads the config file's
 * cluster description (as SIGHUP does); 200 with what changed, 400 when refused. */
static err
h_cluster_reload(struct http_req *r, bool nowait)
{
    struct node *n = r->app;
    (void)nowait;
    buf b = BUF_INIT;
    err e = node_reload_cluster(n, &b);
    audit_log(n, r, "replication.reload", NULL, NULL, NULL, e ? 400 : 200,
              e ? "refused" : NULL);
    json_body(r, e ? 400 : 200, &b);
    return ERR_OK;
}

/* h_conflicts: GET lists tag conflicts (?all=true: also resolved ones, with every
 * reported event); POST /_georeg/v1/conflicts/REPORT/N?resolve=HOW records a
 * decision. */
static err
h_conflicts(struct http_req *r, bool nowait)
{
    struct node *n = r->app;
    (void)nowait;
    buf b = BUF_INIT;
    if (r->method == M_POST) {
        slice rest = {r->path.ptr + 22, r->path.len - 22}; /* after /_georeg/v1/conflicts/ */
        unsigned long long report = 0, k = 0;
        char tmp[64], how[16] = "";
        str_copy_slice(tmp, sizeof tmp, rest);
        const char *q = NULL;
        static const char *const hows[] = {"keep-new", "take-old", "retagged"};
        char hv[16] = "";
        if (http_req_query(r, "resolve", hv, sizeof hv))
            for (size_t i = 0; i < 3; i++)
                if (!strcmp(hv, hows[i]))
                    q = hows[i];
        if (sscanf(tmp, "%llu/%llu", &report, &k) != 2 || !q) {
            http_resp_error(r, ERR_INVALID,
                            "POST /_georeg/v1/conflicts/REPORT/N?resolve=keep-new|take-old|"
                            "retagged",
                            NULL);
            return ERR_OK;
        }
        str_copy(how, sizeof how, q);
        err e = repl_conflict_resolve(n->repl, report, k, how);
        audit_log(n, r, "replication.conflict.resolve", NULL, NULL, NULL, e ? 404 : 200, how);
        if (e) {
            http_resp_error(r, ERR_NOT_FOUND, "no such conflict", NULL);
            return ERR_OK;
        }
    }
    char av[8] = "";
    bool all = http_req_query(r, "all", av, sizeof av) && !strcmp(av, "true");
    if (repl_conflicts_json(n->repl, all, &b)) {
        buf_release(&b);
        http_resp_error(r, ERR_INTERNAL, "cannot read the conflict reports", NULL);
        return ERR_OK;
    }
    json_body(r, 200, &b);
    return ERR_OK;
}

/* Locate scratch: what the router validated, and the wait in progress. */
struct locate_req {
    char name[REF_NAME_MAX + 1];
    char ref[DIGEST_MAX];
    bool started, counted;
    uint64_t start_ms, wait_ms;
};

/* Waiting locate requests are parked on the event loop between looks (no pool
 * thread sleeps), so this only bounds their memory (a request each). */
#define LOCATE_MAX_WAITERS 1024
#define LOCATE_MAX_REGIONS 32
#define LOCATE_POLL_MS 50


/* locate_free gives back a waiter's slot, also when its client went away. */
static void
locate_free(struct http_req *r)
{
    struct locate_req *lr = (struct locate_req *)r->scratch;
    struct node *n = r->app;
    if (lr->counted)
        atomic_fetch_sub(&n->locate_waiters, 1);
    lr->counted = false;
}

/* h_locate looks once; with ?wait= and the manifest not everywhere yet it parks the
 * request (r->park_ms) and looks again later, until complete or the wait is over. */
static err
h_locate(struct http_req *r, bool nowait)
{
    struct node *n = r->app;
    struct locate_req *lr = (struct locate_req *)r->scratch;
    char regions[1024] = "", waits[32];
    (void)nowait;
    http_req_query(r, "regions", regions, sizeof regions);
    if (!lr->started) {
        lr->started = true;
        lr->start_ms = clock_mono_ms();
        lr->wait_ms = 0;
        if (http_req_query(r, "wait", waits, sizeof waits) &&
            !cfg_parse_duration(waits, &lr->wait_ms)) {
            http_resp_error(r, ERR_INVALID, "invalid wait duration", waits);
            return ERR_OK;
        }
        if (lr->wait_ms > 600000)
            lr->wait_ms = 600000;
    }
    uint64_t start = lr->start_ms;
    struct repl_locate out[LOCATE_MAX_REGIONS];
    size_t nout = 0;
    char digest[DIGEST_MAX] = "";
    uint64_t seq = 0;
    bool all = false;
    err e = store_manifest_seq(n->store, lr->name, lr->ref, digest, &seq);
    if (!e)
        all = repl_locate(n->repl, lr->name, lr->ref, seq, regions, out, LOCATE_MAX_REGIONS,
                          &nout);
    uint64_t waited = clock_mono_ms() - start;
    if (!(!e && all) && waited < lr->wait_ms && atomic_load(&n->ready)) {
        if (!lr->counted) {
            if (atomic_fetch_add(&n->locate_waiters, 1) >= LOCATE_MAX_WAITERS) {
                atomic_fetch_sub(&n->locate_waiters, 1);
                http_resp_error(r, ERR_TOOMANYREQUESTS, "too many waiting locate requests",
                                NULL);
                http_resp_header(r, "Retry-After", "1");
                return ERR_OK;
            }
            lr->counted = true;
            r->app_free = locate_free;
        }
        uint64_t left = lr->wait_ms - waited;
        r->park_ms = left < LOCATE_POLL_MS ? left : LOCATE_POLL_MS;
        return ERR_OK; /* no answer yet: looked at again after park_ms */
    }
    locate_free(r);
    if (e) {
        http_resp_error(r, e, NULL, lr->ref);
        return ERR_OK;
    }
    buf b = BUF_INIT;
    buf_adds(&b, "{\"repository\":");
    buf_add_json_str(&b, lr->name, strlen(lr->name));
    buf_adds(&b, ",\"reference\":");
    buf_add_json_str(&b, lr->ref, strlen(lr->ref));
    buf_addf(&b, ",\"digest\":\"%s\",\"seq\":%llu,\"complete\":%s,\"waited_seconds\":%.3f,"
                 "\"regions\":[",
             digest, (unsigned long long)seq, all ? "true" : "false",
             (double)(clock_mono_ms() - start) / 1000.0);
    for (size_t i = 0; i < nout; i++) {
        buf_addf(&b, "%s{\"name\":", i ? "," : "");
        buf_add_json_str(&b, out[i].name, strlen(out[i].name));
        buf_addf(&b, ",\"known\":%s,\"included\":%s,\"holds\":%s,\"acked_seq\":%llu}",
                 out[i].known ? "true" : "false", out[i].included ? "true" : "false",
                 out[i].holds ? "true" : "false", (unsigned long long)out[i].acked_seq);
    }
    buf_adds(&b, "]}");
    json_body(r, 200, &b);
    return ERR_OK;
}

/* route_locate validates /_georeg/v1/locate/NAME/manifests/REF. */
static void
route_locate(struct http_req *r, slice rest)
{
    struct locate_req *lr = (struct locate_req *)r->scratch;
    const char *m = NULL;
    for (size_t i = rest.len; i-- > 0;) {
        if (rest.len - i >= 11 && memcmp(rest.ptr + i, "/manifests/", 11) == 0) {
            m = rest.ptr + i;
            break;
        }
    }
    if (!m) {
        http_resp_error(r, ERR_ROUTE_UNKNOWN, NULL, NULL);
        return;
    }
    slice name = {rest.ptr, (size_t)(m - rest.ptr)};
    slice ref = {m + 11, rest.len - name.len - 11};
    if (!ref_name_valid(name)) {
        http_resp_error(r, ERR_NAME_INVALID, NULL, NULL);
        return;
    }
    if (ref_is_digest(ref) ? !ref_digest_valid(ref) : !ref_tag_valid(ref)) {
        http_resp_error(r, ref_is_digest(ref) ? ERR_DIGEST_INVALID : ERR_TAG_INVALID, NULL, NULL);
        return;
    }
    str_copy_slice(lr->name, sizeof lr->name, name);
    str_copy_slice(lr->ref, sizeof lr->ref, ref);
    if (!access_require(r, lr->name, ACT_READ, NULL, 0, false))
        return;
    r->handler = h_locate;
    r->handler_on_pool = true;
}

static bool
n_has_repl(struct http_req *r)
{
    return ((struct node *)r->app)->repl != NULL;
}

bool
admin_route(struct http_req *r)
{
    slice p = r->path;
    if (slice_starts_with(p, "/_georeg/v1/locate/")) {
        if (r->method != M_GET)
            http_resp_error(r, ERR_METHOD, NULL, NULL);
        else
            route_locate(r, (slice){p.ptr + 19, p.len - 19});
        return true;
    }
    if (slice_starts_with(p, "/_georeg/v1/") &&
        access_route(r, (slice){p.ptr + 12, p.len - 12}))
        return true;
    if (slice_eq_cstr(p, "/_georeg/v1/replication/fence")) {
        bool write = r->method == M_POST || r->method == M_DELETE;
        if (r->method != M_GET && !write) {
            http_resp_error(r, ERR_METHOD, NULL, NULL);
            return true;
        }
        if (!n_has_repl(r)) {
            http_resp_error(r, ERR_UNSUPPORTED, "replication is not configured", NULL);
            return true;
        }
        if (!access_require(r, NULL, write ? ACT_ADMIN : ACT_METADATA, NULL, 0, true))
            return true;
        r->handler = h_fence;
        r->handler_on_pool = true;
        return true;
    }
    if (slice_eq_cstr(p, "/_georeg/v1/cluster/reload")) {
        if (r->method != M_POST) {
            http_resp_error(r, ERR_METHOD, NULL, NULL);
            return true;
        }
        if (!n_has_repl(r)) {
            http_resp_error(r, ERR_UNSUPPORTED, "replication is not configured", NULL);
            return true;
        }
        if (!access_require(r, NULL, ACT_ADMIN, NULL, 0, true))
            return true;
        r->handler = h_cluster_reload;
        r->handler_on_pool = true;
        return true;
    }
    if (slice_eq_cstr(p, "/_georeg/v1/promote") ||
        slice_eq_cstr(p, "/_georeg/v1/conflicts") ||
        slice_starts_with(p, "/_georeg/v1/conflicts/")) {
        bool promote = slice_eq_cstr(p, "/_georeg/v1/promote");
        bool write = r->method == M_POST;
        if ((promote && !write) || (!promote && r->method != M_GET && !write) ||
            (!promote && write != slice_starts_with(p, "/_georeg/v1/conflicts/"))) {
            http_resp_error(r, ERR_METHOD, NULL, NULL);
            return true;
        }
        if (!n_has_repl(r)) {
            http_resp_error(r, ERR_UNSUPPORTED, "replication is not configured", NULL);
            return true;
        }
        if (!access_require(r, NULL, write ? ACT_ADMIN : ACT_METADATA, NULL, 0, true))
            return true;
        r->handler = promote ? h_promote : h_conflicts;
        r->handler_on_pool = true;
        return true;
    }
    if (slice_eq_cstr(p, "/_georeg/v1/replication")) {
        if (r->method != M_GET) {
            http_resp_error(r, ERR_METHOD, NULL, NULL);
            return true;
        }
        if (!access_require(r, NULL, ACT_METADATA, NULL, 0, true))
            return true;
        r->handler = h_replication;
        r->handler_on_pool = true;
        return true;
    } else if (slice_eq_cstr(p, "/healthz")) {
        r->handler = h_healthz;
    } else if (slice_eq_cstr(p, "/readyz")) {
        r->handler = h_readyz;
    } else if (slice_eq_cstr(p, "/metrics")) {
        r->handler = h_metrics;
        r->handler_on_pool = true;
    } else {
        return false;
    }
    if (r->method != M_GET && r->method != M_HEAD)
        http_resp_error(r, ERR_METHOD, NULL, NULL);
    return true;
}
