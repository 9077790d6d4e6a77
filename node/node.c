/* Node lifecycle: open the store, bind HTTP, serve until a signal, drain, close. */
#include "../common/clock.h"
#include "node.h"

#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "../common/log.h"
#include "../replication/repl.h"
#include "../common/banned.h"


static void
globs_of(const struct cfg_globs *g, const char **out, size_t *n)
{
    *n = g->n < REPL_MAX_GLOBS ? g->n : REPL_MAX_GLOBS;
    for (size_t i = 0; i < *n; i++)
        out[i] = g->items[i];
}

/* on_repl_refused: replication refused something from a peer; it goes to the audit
 * log under the peer's claimed name. */
static void
on_repl_refused(void *arg, const char *peer, const char *reason, const char *detail)
{
    struct node *n = arg;
    struct http_req fake;
    memset(&fake, 0, sizeof fake);
    str_copy(fake.peer, sizeof fake.peer, peer);
    char d[400];
    snprintf(d, sizeof d, "%s: %s", reason, detail);
    audit_log(n, &fake, "replication.refused", NULL, NULL, NULL, 403, d);
}

/* filter_of lends a replica's or region's globs to a repl filter. */
static void
filter_of(const struct cfg_replica *cr, struct repl_filter *f)
{
    globs_of(&cr->include, f->include, &f->ninclude);
    globs_of(&cr->exclude, f->exclude, &f->nexclude);
    globs_of(&cr->include_tags, f->include_tags, &f->ninclude_tags);
    globs_of(&cr->exclude_tags, f->exclude_tags, &f->nexclude_tags);
}

/* regions_of lends c's cluster regions to rg (CFG_MAX_REPLICAS entries); returns
 * this node's own URL from them, or NULL. */
static const char *
regions_of(const struct cfg *c, struct repl_region *rg)
{
    const char *self_url = NULL;
    memset(rg, 0, CFG_MAX_REPLICAS * sizeof *rg);
    for (size_t i = 0; i < c->nregions; i++) {
        const struct cfg_replica *cr = &c->regions[i];
        rg[i].name = cr->name;
        rg[i].address = cr->address;
        rg[i].url = cr->url;
        rg[i].eligible = cr->eligible;
        filter_of(cr, &rg[i].filter);
        if (strcmp(cr->name, c->name) == 0 && cr->url[0])
            self_url = cr->url;
    }
    return self_url;
}

err
node_reload_cluster(struct node *n, buf *out)
{
    struct cfg *c = calloc(1, sizeof *c);
    char why[512];
    err e = ERR_NOMEM;
    if (!c)
        goto out;
    cfg_defaults(c);
    if (!n->cfg->config_path[0]) {
        snprintf(why, sizeof why, "the node was started without --config: nothing to reload");
        e = ERR_INVALID;
    } else if ((e = cfg_load(c, n->cfg->config_path, why, sizeof why)) == ERR_OK) {
        struct repl_region rg[CFG_MAX_REPLICAS];
        regions_of(c, rg);
        /* the cluster description only; every other key needs a restart */
        e = repl_reload(n->repl, rg, c->nregions, out);
        goto out;
    } else {
        e = ERR_INVALID;
    }
    buf_adds(out, "{\"reloaded\":false,\"error\":");
    buf_add_json_str(out, why, strlen(why));
    buf_addc(out, '}');
    log_warn("REPL-RELOAD", "ok=0 error=\"%s\"", why);
out:
    if (c)
        cfg_release(c);
    free(c);
    return e;
}

/* open_repl builds the replication options from the frozen config. */
static err
open_repl(struct node *n)
{
    const struct cfg *c = n->cfg;
    struct repl_replica_options ro[CFG_MAX_REPLICAS];
    memset(ro, 0, sizeof ro);
    for (size_t i = 0; i < c->nreplicas; i++) {
        const struct cfg_replica *cr = &c->replicas[i];
        ro[i].name = cr->name;
        ro[i].address = cr->address;
        filter_of(cr, &ro[i].filter);
    }
    struct repl_region rg[CFG_MAX_REPLICAS];
    const char *self_url = regions_of(c, rg);
    char url[300];
    if (c->public_url[0])
        str_copy(url, sizeof url, c->public_url);
    else if (self_url)
        str_copy(url, sizeof url, self_url);
    else if (c->http_enabled)
        snprintf(url, sizeof url, "%s://%s", c->http_tls.cert[0] ? "https" : "http", c->listen);
    else
        snprintf(url, sizeof url, "%s://%s", c->private_tls.cert[0] ? "https" : "http",
                 c->private_listen);
    struct repl_options o = {
        .node_name = c->name,
        .primary = c->primary,
        .listen = c->repl_listen,
        .public_url = url,
        .primary_url = c->primary_url,
        .tls_cert = c->repl_tls.cert,
        .tls_key = c->repl_tls.key,
        .tls_ca = c->repl_tls.ca,
        .insecure = c->repl_insecure,
        .min_epoch = c->repl_min_epoch,
        .window = c->repl_window,
        .chunk_bytes = c->repl_chunk_bytes,
        .log_retention = c->repl_log_retention,
        .heartbeat_ms = c->repl_heartbeat_ms,
        .max_staleness_ms = c->repl_max_staleness_ms,
        .regions = rg,
        .nregions = c->nregions,
        .initial_primary = c->initial_primary,
        .etcd_endpoints = (const char *const *)c->etcd_endpoints.items,
        .netcd_endpoints = c->etcd_endpoints.n,
        .etcd_ttl_ms = c->etcd_ttl_ms,
        .etcd_prefix = c->etcd_prefix,
        .replicas = ro,
        .nreplicas = c->nreplicas,
        .tls_client_cert = c->repl_tls.client_cert,
        .primaries = (const char *const *)c->repl_primaries.items,
        .nprimaries = c->repl_primaries.n,
        .meta_validate = meta_validate,
        .on_refused = on_repl_refused,
        .cb_arg = n,
        .sync = {.replicas = c->sync_replicas,
                 .names = (const char *const *)c->sync_names.items,
                 .nnames = c->sync_names.n,
                 .timeout_ms = c->sync_timeout_ms,
                 .max_waiters = c->sync_max_waiters},
    };
    return repl_new(n->store, &o, &n->repl);
}

static err
open_auth(struct node *n)
{
    const struct cfg *c = n->cfg;
    char realm[700];
    if (c->auth_realm[0])
        str_copy(realm, sizeof realm, c->auth_realm);
    else if (c->public_url[0])
        snprintf(realm, sizeof realm, "%s/_georeg/v1/token", c->public_url);
    else if (c->http_enabled) /* the public listener: https when it has TLS */
        snprintf(realm, sizeof realm, "%s://%s/_georeg/v1/token",
                 c->http_tls.cert[0] ? "https" : "http", c->listen);
    else /* only the private listener serves */
        snprintf(realm, sizeof realm, "%s://%s/_georeg/v1/token",
                 c->private_tls.cert[0] ? "https" : "http", c->private_listen);
    struct auth_options o = {
        .mode = (enum auth_mode)c->auth_mode,
        .service = c->auth_service,
        .realm = realm,
        .issuer = c->name,
        .data_dir = c->data_dir,
        .admin_password_file = c->admin_password_file,
        .admin_enabled = c->admin_enabled,
        .token_ttl_s = c->token_ttl_ms / 1000,
        .anonymous_pull = (const char *const *)c->anonymous_pull.items,
        .nanonymous_pull = c->anonymous_pull.n,
    };
    if (o.mode == AUTH_NONE)
        log_warn("AUTH-NONE", "msg=\"auth.mode is none: anyone who reaches this node may push "
                              "and delete (development only)\"");
    err e = auth_new(n->store, &o, &n->auth);
    if (!e && o.mode != AUTH_NONE && auth_registry_admins(n->auth) == 0)
        log_warn("AUTH-NO-ADMIN",
                 "msg=\"auth.mode is %s but no identity can administer the registry: set "
                 "auth.admin_password_file (the built-in admin) or create one with a '**' "
                 "admin grant%s\"",
                 o.mode == AUTH_TOKEN ? "token" : "basic",
                 c->primary ? "" : " on the primary (it arrives by replication)");
    return e;
}

static void
on_refused(void *app, const char *listener, const char *peer)
{
    struct node *n = app;
    struct http_req fake;
    memset(&fake, 0, sizeof fake);
    str_copy(fake.peer, sizeof fake.peer, peer);
    audit_log(n, &fake, "network.refused", NULL, NULL, NULL, 403, listener);
}

err
node_open(const struct cfg *cfg, struct node **out)
{
    struct node *n = calloc(1, sizeof *n);
    err e;
    if (!n)
        return ERR_NOMEM;
    n->cfg = cfg;
    n->started_ms = clock_wall_ms();
    pthread_mutex_init(&n->audit_mu, NULL);
    pthread_mutex_init(&n->audit_flush_mu, NULL);
    buf_init(&n->audit_queue);
    struct store_options so = {.inline_max = cfg->inline_max,
                               .cache_bytes = cfg->cache_bytes,
                               .max_uploads = cfg->max_uploads,
                               .max_uploads_per_owner = cfg->max_uploads_per_identity,
                               .min_free = cfg->min_free};
    if ((e = store_open(cfg->data_dir, &so, &n->store)))
        goto fail;
    struct http_config hc = {
        .listen = cfg->listen,
        .on_refused = on_refused,
        .workers = cfg->workers,
        .max_connections = cfg->max_connections,
        .max_connections_per_address = cfg->max_connections_per_address,
        .access_log = cfg->access_log,
        .actor_of = access_actor,
        .header_timeout_ms = cfg->header_timeout_ms,
        .idle_timeout_ms = cfg->idle_timeout_ms,
        .body_timeout_ms = cfg->body_timeout_ms,
        .max_header_bytes = cfg->max_header_bytes,
    };
    if (cfg->http_enabled)
        hc.listeners[hc.nlisteners++] = (struct http_listener_config){
            .name = "public",
            .listen = cfg->listen,
            .tls_cert = cfg->http_tls.cert,
            .tls_key = cfg->http_tls.key,
            .allow = (const char *const *)cfg->http_allow.items,
            .nallow = cfg->http_allow.n,
        };
    if (cfg->private_listen[0])
        hc.listeners[hc.nlisteners++] = (struct http_listener_config){
            .name = "private",
            .listen = cfg->private_listen,
            .tls_cert = cfg->private_tls.cert,
            .tls_key = cfg->private_tls.key,
            .allow = (const char *const *)cfg->private_allow.items,
            .nallow = cfg->private_allow.n,
        };
    if (!cfg->http_tls.cert[0] && cfg->http_enabled)
        log_warn("HTTP-PLAIN", "listen=%s msg=\"plain HTTP: set http.tls for TLS\"", cfg->listen);
    if ((e = http_server_new(&hc, oci_on_headers, n, &n->http)))
        goto fail;
    if ((e = open_repl(n)))
        goto fail;
    if ((e = open_auth(n)))
        goto fail;
    *out = n;
    return ERR_OK;
fail:
    node_close(n);
    return e;
}

bool
node_writable(struct node *n, char *primary_url, size_t len)
{
    return repl_writable(n->repl, primary_url, len);
}

struct run_ctx {
    struct node *n;
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t housekeeping;
    uv_timer_t audit;
    int signo;
};

static void
on_upload_purge_done(uv_work_t *w, int status)
{
    (void)status;
    free(w);
}

static void
reload_work(uv_work_t *w)
{
    struct node *n = w->data;
    http_server_reload_tls(n->http);
    if (n->cfg->nregions) {
        buf out = BUF_INIT;
        node_reload_cluster(n, &out); /* logged (REPL-RELOAD) either way */
        buf_release(&out);
    }
}

static void
on_sighup(uv_signal_t *h, int signo)
{
    struct run_ctx *rc = h->data;
    (void)signo;
    log_info("NODE-SIGNAL", "signal=HUP action=reload (TLS certificates, cluster.regions)");
    uv_work_t *w = calloc(1, sizeof *w);
    if (!w)
        return;
    w->data = rc->n;
    if (uv_queue_work(h->loop, w, reload_work, on_upload_purge_done) != 0)
        free(w);
}

static void
on_signal(uv_signal_t *h, int signo)
{
    struct run_ctx *rc = h->data;
    rc->signo = signo;
    log_info("NODE-SIGNAL", "signal=%d action=drain", signo);
    uv_stop(h->loop);
}


static void
housekeeping_work(uv_work_t *w)
{
    struct node *n = w->data;
    static _Thread_local uint64_t last_purge;
    (void)store_resume(n->store); /* after a full disk: reopen once space is back */
    uint64_t now = clock_wall_s();
    /* idle sessions go after storage.upload_idle_timeout (looked at every quarter of
     * it, at most hourly), any session after storage.upload_max_age */
    uint64_t max_age = n->cfg->upload_max_age_s;
    if (n->cfg->upload_idle_timeout_s && n->cfg->upload_idle_timeout_s < max_age)
        max_age = n->cfg->upload_idle_timeout_s;
    uint64_t every = max_age / 4 < 3600 ? max_age / 4 : 3600;
    if (now - last_purge >= every) {
        store_upload_purge(n->store, max_age);
        last_purge = now;
    }
    repl_housekeeping(n->repl);
    malloc_trim(0); /* give back what a burst (a big upload, a resync) left behind */
    static _Thread_local uint64_t last_trim;
    if (now - last_trim >= 600) {
        uint64_t keep_ms = n->cfg->audit_retention_ms;
        uint64_t now_us = (uint64_t)now * 1000000;
        if (keep_ms && now_us > keep_ms * 1000)
            store_audit_trim(n->store, now_us - keep_ms * 1000);
        last_trim = now;
    }
}

/* Audit entries wait at most this long before the pool writes them. Short, so the
 * queue (and the write batch built from it) stays small under a pull storm: at
 * 60,000 manifest GETs/s a 200 ms period queued about 4 MB per flush. */
#define AUDIT_FLUSH_MS 50

static void
audit_work(uv_work_t *w)
{
    audit_flush(w->data);
}

static void
on_audit_timer(uv_timer_t *t)
{
    struct run_ctx *rc = t->data;
    pthread_mutex_lock(&rc->n->audit_mu);
    bool empty = rc->n->audit_queue.len == 0;
    pthread_mutex_unlock(&rc->n->audit_mu);
    if (empty)
        return;
    uv_work_t *w = calloc(1, sizeof *w);
    if (!w)
        return;
    w->data = rc->n;
    if (uv_queue_work(t->loop, w, audit_work, on_upload_purge_done) != 0)
        free(w);
}

static void
on_housekeeping(uv_timer_t *t)
{
    struct run_ctx *rc = t->data;
    uv_work_t *w = calloc(1, sizeof *w);
    if (!w)
        return;
    w->data = rc->n;
    if (uv_queue_work(t->loop, w, housekeeping_work, on_upload_purge_done) != 0)
        free(w);
}

err
node_run(struct node *n)
{
    uv_loop_t loop;
    struct run_ctx rc = {.n = n};
    err e;
    if (uv_loop_init(&loop) != 0)
        return ERR_NOMEM;
    if ((e = http_server_start(n->http)))
        goto out;
    if ((e = repl_start(n->repl))) {
        http_server_stop(n->http, 0);
        goto out;
    }
    uv_signal_init(&loop, &rc.sigterm);
    uv_signal_init(&loop, &rc.sigint);
    rc.sigterm.data = rc.sigint.data = &rc;
    uv_signal_start(&rc.sigterm, on_signal, SIGTERM);
    uv_signal_start(&rc.sigint, on_signal, SIGINT);
    uv_signal_init(&loop, &rc.sighup);
    rc.sighup.data = &rc;
    uv_signal_start(&rc.sighup, on_sighup, SIGHUP);
    uv_timer_init(&loop, &rc.housekeeping);
    rc.housekeeping.data = &rc;
    uv_timer_start(&rc.housekeeping, on_housekeeping, 5000, 5000);
    uv_timer_init(&loop, &rc.audit);
    rc.audit.data = &rc;
    uv_timer_start(&rc.audit, on_audit_timer, AUDIT_FLUSH_MS, AUDIT_FLUSH_MS);
    atomic_store(&n->ready, true);
    log_info("NODE-READY", "name=%s role=%s data=%s port=%d", n->cfg->name,
             repl_is_primary(n->repl) ? "primary" : "secondary", n->cfg->data_dir,
             http_server_port(n->http));
    uv_run(&loop, UV_RUN_DEFAULT);

    atomic_store(&n->ready, false);
    http_server_stop(n->http, n->cfg->drain_timeout_ms);
    repl_stop(n->repl);
    log_info("NODE-STOPPED", "name=%s", n->cfg->name);
    uv_close((uv_handle_t *)&rc.sigterm, NULL);
    uv_close((uv_handle_t *)&rc.sigint, NULL);
    uv_close((uv_handle_t *)&rc.sighup, NULL);
    uv_close((uv_handle_t *)&rc.housekeeping, NULL);
    uv_close((uv_handle_t *)&rc.audit, NULL);
    uv_run(&loop, UV_RUN_DEFAULT); /* pending purge work and close callbacks */
out:
    uv_loop_close(&loop);
    return e;
}

bool
node_nng_stuck(const struct node *n)
{
    return n && n->repl && repl_close_stuck(n->repl);
}

void
node_close(struct node *n)
{
    if (!n)
        return;
    if (n->store)
        audit_flush(n);
    repl_free(n->repl);
    auth_free(n->auth);
    http_server_free(n->http);
    store_close(n->store);
    buf_release(&n->audit_queue);
    pthread_mutex_destroy(&n->audit_mu);
    pthread_mutex_destroy(&n->audit_flush_mu);
    free(n);
}
