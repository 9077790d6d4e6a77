/* Operator endpoints: /healthz, /readyz, /metrics (Prometheus text format) and the
 * georeg API under /_georeg/v1/. */
#include <stdio.h>
#include <string.h>

#include <time.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/ref.h"
#include "../replication/repl.h"
#include "config.h"
#include "node.h"
#include "../common/banned.h"

static err
h_healthz(struct http_req *r, bool nowait)
{
    (void)nowait;
    http_resp_json(r, 200, "{\"status\":\"ok\"}", 15);
    return ERR_OK;
}

static err
h_readyz(struct http_req *r, bool nowait)
{
    struct node *n = r->app;
    (void)nowait;
    if (!atomic_load(&n->ready))
        http_resp_error(r, ERR_UNAVAILABLE, "not ready", NULL);
    else if (!repl_ready(n->repl))
        http_resp_error(r, ERR_UNAVAILABLE, "resyncing from the primary", NULL);
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

static err
h_replication(struct http_req *r, bool nowait)
{
    struct node *n = r->app;
    buf b = BUF_INIT;
    (void)nowait;
    repl_status_json(n->repl, &b);
    r->resp.status = 200;
    buf_release(&r->resp.body);
    r->resp.body = b;
    http_resp_header(r, "Content-Type", "application/json");
    return ERR_OK;
}

/* Locate scratch: what the router validated. */
struct locate_req {
    char name[REF_NAME_MAX + 1];
    char ref[DIGEST_MAX];
};

#define LOCATE_MAX_WAITERS 4
#define LOCATE_MAX_REGIONS 32

static uint64_t
mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static err
h_locate(struct http_req *r, bool nowait)
{
    struct node *n = r->app;
    struct locate_req *lr = (struct locate_req *)r->scratch;
    char regions[1024] = "", waits[32];
    uint64_t wait_ms = 0;
    (void)nowait;
    http_req_query(r, "regions", regions, sizeof regions);
    if (http_req_query(r, "wait", waits, sizeof waits) && !cfg_parse_duration(waits, &wait_ms)) {
        http_resp_error(r, ERR_INVALID, "invalid wait duration", waits);
        return ERR_OK;
    }
    if (wait_ms > 600000)
        wait_ms = 600000;
    bool waiting = false;
    if (wait_ms) {
        if (atomic_fetch_add(&n->locate_waiters, 1) >= LOCATE_MAX_WAITERS) {
            atomic_fetch_sub(&n->locate_waiters, 1);
            http_resp_error(r, ERR_TOOMANYREQUESTS, "too many waiting locate requests", NULL);
            return ERR_OK;
        }
        waiting = true;
    }
    uint64_t start = mono_ms();
    struct repl_locate out[LOCATE_MAX_REGIONS];
    size_t nout = 0;
    char digest[DIGEST_MAX] = "";
    uint64_t seq = 0;
    bool all = false;
    err e;
    for (;;) {
        e = store_manifest_seq(n->store, lr->name, lr->ref, digest, &seq);
        if (!e)
            all = repl_locate(n->repl, lr->name, lr->ref, seq, regions, out, LOCATE_MAX_REGIONS,
                              &nout);
        if ((!e && all) || mono_ms() - start >= wait_ms || !atomic_load(&n->ready))
            break;
        usleep(50000);
    }
    if (waiting)
        atomic_fetch_sub(&n->locate_waiters, 1);
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
             (double)(mono_ms() - start) / 1000.0);
    for (size_t i = 0; i < nout; i++) {
        buf_addf(&b, "%s{\"name\":", i ? "," : "");
        buf_add_json_str(&b, out[i].name, strlen(out[i].name));
        buf_addf(&b, ",\"known\":%s,\"included\":%s,\"holds\":%s,\"acked_seq\":%llu}",
                 out[i].known ? "true" : "false", out[i].included ? "true" : "false",
                 out[i].holds ? "true" : "false", (unsigned long long)out[i].acked_seq);
    }
    buf_adds(&b, "]}");
    r->resp.status = 200;
    buf_release(&r->resp.body);
    r->resp.body = b;
    http_resp_header(r, "Content-Type", "application/json");
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
