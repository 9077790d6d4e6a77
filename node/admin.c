/* Operator endpoints: /healthz, /readyz, /metrics (Prometheus text format) and the
 * georeg API under /_georeg/v1/. */
#include <stdio.h>
#include <string.h>

#include "../common/log.h"
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
    if (atomic_load(&n->ready))
        http_resp_json(r, 200, "{\"status\":\"ready\"}", 18);
    else
        http_resp_error(r, ERR_UNAVAILABLE, "not ready", NULL);
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
    r->resp.status = 200;
    buf_release(&r->resp.body);
    r->resp.body = b;
    http_resp_header(r, "Content-Type", "text/plain; version=0.0.4");
    return ERR_OK;
}

bool
admin_route(struct http_req *r)
{
    slice p = r->path;
    if (slice_eq_cstr(p, "/healthz")) {
        r->handler = h_healthz;
    } else if (slice_eq_cstr(p, "/readyz")) {
        r->handler = h_readyz;
    } else if (slice_eq_cstr(p, "/metrics")) {
        r->handler = h_metrics;
    } else {
        return false;
    }
    if (r->method != M_GET && r->method != M_HEAD)
        http_resp_error(r, ERR_METHOD, NULL, NULL);
    return true;
}
