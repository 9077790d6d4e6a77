/* Replication lifecycle, filters, status, lag and locate. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/clock.h"
#include "repl_int.h"
#include "../common/log.h"
#include "../common/ref.h"
#include "../common/banned.h"

static const char *const state_names[] = {
    [RS_UNREACHABLE] = "unreachable", [RS_CONNECTING] = "connecting",
    [RS_IN_SYNC] = "in-sync",         [RS_STREAMING] = "streaming",
    [RS_CATCHING_UP] = "catching-up", [RS_RESYNCING] = "resyncing",
};

/* ---- filters ---- */

static bool
globs_match(const struct globs *g, slice s)
{
    char name[300];
    if (!str_copy_slice(name, sizeof name, s))
        return false;
    for (size_t i = 0; i < g->n; i++)
        if (ref_glob_match(g->items[i], name))
            return true;
    return false;
}

bool
filter_repo(const struct filter *f, slice repo)
{
    if (f->include.n && !globs_match(&f->include, repo))
        return false;
    return !globs_match(&f->exclude, repo);
}

bool
filter_tag(const struct filter *f, slice tag)
{
    if (f->include_tags.n && !globs_match(&f->include_tags, tag))
        return false;
    return !globs_match(&f->exclude_tags, tag);
}

static err
globs_copy(struct globs *g, const char *const *items, size_t n, buf *h, const char *label)
{
    buf_adds(h, label);
    for (size_t i = 0; i < n && i < REPL_MAX_GLOBS; i++) {
        if (!(g->items[g->n] = strdup(items[i])))
            return ERR_NOMEM;
        g->n++;
        buf_adds(h, items[i]);
        buf_addc(h, '\n');
    }
    return ERR_OK;
}

static void
globs_free(struct globs *g)
{
    for (size_t i = 0; i < g->n; i++)
        free(g->items[i]);
    g->n = 0;
}

static bool address_ok(repl *r, const char *a, const char *what);

void
repl_filter_free(struct filter *f)
{
    if (!f)
        return;
    globs_free(&f->include);
    globs_free(&f->exclude);
    globs_free(&f->include_tags);
    globs_free(&f->exclude_tags);
    free(f);
}

err
repl_filter_new(const struct repl_filter *o, struct filter **out)
{
    struct filter *f = calloc(1, sizeof *f);
    if (!f)
        return ERR_NOMEM;
    buf h = BUF_INIT;
    err e = globs_copy(&f->include, o->include, o->ninclude, &h, "I:");
    if (!e)
        e = globs_copy(&f->exclude, o->exclude, o->nexclude, &h, "E:");
    if (!e)
        e = globs_copy(&f->include_tags, o->include_tags, o->ninclude_tags, &h, "i:");
    if (!e)
        e = globs_copy(&f->exclude_tags, o->exclude_tags, o->nexclude_tags, &h, "e:");
    /* FNV-1a 64 of the canonical text */
    uint64_t x = 1469598103934665603ull;
    for (size_t i = 0; i < h.len; i++)
        x = (x ^ (unsigned char)h.ptr[i]) * 1099511628211ull;
    snprintf(f->hash, sizeof f->hash, "%016llx", (unsigned long long)x);
    buf_release(&h);
    if (e) {
        repl_filter_free(f);
        return e;
    }
    *out = f;
    return ERR_OK;
}

const struct filter *
rp_filter(struct replica *rp)
{
    return atomic_load(&rp->filter);
}

static bool
region_filtered(const struct repl_region *g)
{
    return g->filter.ninclude || g->filter.nexclude || g->filter.ninclude_tags ||
           g->filter.nexclude_tags;
}

err
repl_set_primaries(repl *r, const struct repl_region *regions, size_t n)
{
    pthread_mutex_lock(&r->cfg_mu);
    if (!r->primaries || r->primaries_cap < n) {
        char(*p)[64] = calloc(n ? n : 1, sizeof *p);
        if (!p) {
            pthread_mutex_unlock(&r->cfg_mu);
            return ERR_NOMEM;
        }
        free(r->primaries);
        r->primaries = p;
        r->primaries_cap = n ? n : 1;
    }
    r->nprimaries = 0;
    for (size_t i = 0; i < n; i++)
        if (regions[i].eligible && !region_filtered(&regions[i]))
            str_copy(r->primaries[r->nprimaries++], sizeof r->primaries[0], regions[i].name);
    pthread_mutex_unlock(&r->cfg_mu);
    return ERR_OK;
}

err
repl_replica_init(repl *r, struct replica *rp, const struct repl_region *g)
{
    rp->r = r;
    pthread_mutex_init(&rp->mu, NULL);
    hist_init(&rp->their_hist);
    str_copy(rp->name, sizeof rp->name, g->name);
    str_copy(rp->address, sizeof rp->address, g->address ? g->address : "");
    str_copy(rp->url, sizeof rp->url, g->url ? g->url : "");
    rp->filtered = region_filtered(g);
    if (!address_ok(r, rp->address, r->cluster ? "cluster.regions.address"
                                               : "replication.replicas.address"))
        return ERR_CONFIG;
    struct filter *f = NULL;
    err e = repl_filter_new(&g->filter, &f);
    if (e)
        return e;
    rp->filters[rp->nfilters++] = f;
    atomic_store(&rp->filter, f);
    rp->known = calloc(REPL_KNOWN_BLOBS, sizeof *rp->known);
    if (!rp->known)
        return ERR_NOMEM;
    atomic_store(&rp->active, true);
    return ERR_OK;
}

static void
filter_json(buf *b, const struct filter *f)
{
    const struct globs *gs[] = {&f->include, &f->exclude, &f->include_tags, &f->exclude_tags};
    const char *names[] = {"include", "exclude", "include_tags", "exclude_tags"};
    buf_addc(b, '{');
    for (int i = 0; i < 4; i++) {
        buf_addf(b, "%s\"%s\":[", i ? "," : "", names[i]);
        for (size_t j = 0; j < gs[i]->n; j++) {
            if (j)
                buf_addc(b, ',');
            buf_add_json_str(b, gs[i]->items[j], strlen(gs[i]->items[j]));
        }
        buf_addc(b, ']');
    }
    buf_addc(b, '}');
}

/* ---- lifecycle ---- */

static void
on_commit(void *arg, uint64_t seq)
{
    repl *r = arg;
    pthread_mutex_lock(&r->wake_mu);
    r->wake_seq = seq;
    pthread_cond_broadcast(&r->wake_cv);
    pthread_mutex_unlock(&r->wake_mu);
}

/* loopback_address: tcp://127.x.y.z:port, tcp://localhost:port or tcp://[::1]:port. */
static bool
loopback_address(const char *a)
{
    const char *h = a + 6;
    return strncmp(h, "127.", 4) == 0 || strncmp(h, "localhost:", 10) == 0 ||
           strncmp(h, "[::1]:", 6) == 0;
}

static bool
address_ok(repl *r, const char *a, const char *what)
{
    if (strncmp(a, "tls+tcp://", 10) == 0)
        return true;
    if (strncmp(a, "tcp://", 6) == 0) {
        if (!r->insecure) {
            log_error("REPL-CONFIG",
                      "%s=%s error=\"plain tcp:// needs replication.insecure: true\"", what, a);
            return false;
        }
        /* plain replication carries identities and commands: like plain HTTP, only on
         * loopback (a development cluster on one machine) */
        if (!loopback_address(a)) {
            log_error("REPL-CONFIG",
                      "%s=%s error=\"replication.insecure allows plain tcp:// only on loopback "
                      "addresses\"",
                      what, a);
            return false;
        }
        return true;
    }
    log_error("REPL-CONFIG", "%s=%s error=\"expected tls+tcp:// or tcp://\"", what, a);
    return false;
}

err
repl_new(store *s, const struct repl_options *o, repl **out)
{
    repl *r = calloc(1, sizeof *r);
    err e = ERR_CONFIG;
    if (!r)
        return ERR_NOMEM;
    r->store = s;
    r->primary = o->primary;
    str_copy(r->node_name, sizeof r->node_name, o->node_name ? o->node_name : "georeg");
    str_copy(r->listen, sizeof r->listen, o->listen ? o->listen : "");
    str_copy(r->public_url, sizeof r->public_url, o->public_url ? o->public_url : "");
    str_copy(r->learned_primary_url, sizeof r->learned_primary_url,
             o->primary_url ? o->primary_url : "");
    str_copy(r->tls_cert, sizeof r->tls_cert, o->tls_cert ? o->tls_cert : "");
    str_copy(r->tls_key, sizeof r->tls_key, o->tls_key ? o->tls_key : "");
    str_copy(r->tls_ca, sizeof r->tls_ca, o->tls_ca ? o->tls_ca : "");
    str_copy(r->tls_client_cert, sizeof r->tls_client_cert,
             o->tls_client_cert ? o->tls_client_cert : "");
    r->insecure = o->insecure;
    r->meta_validate = o->meta_validate;
    r->on_refused = o->on_refused;
    r->cb_arg = o->cb_arg;
    if (o->nprimaries) {
        r->primaries = calloc(o->nprimaries, sizeof *r->primaries);
        if (!r->primaries) {
            free(r);
            return ERR_NOMEM;
        }
        for (size_t i = 0; i < o->nprimaries; i++)
            str_copy(r->primaries[i], sizeof r->primaries[i], o->primaries[i]);
        r->nprimaries = o->nprimaries;
    }
    r->window = o->window ? o->window : 64;
    r->chunk_bytes = o->chunk_bytes ? o->chunk_bytes : (1u << 20);
    if (r->chunk_bytes > REPL_MAX_MSG / 2)
        r->chunk_bytes = REPL_MAX_MSG / 2;
    r->log_retention = o->log_retention ? o->log_retention : 1000000;
    r->heartbeat_ms = o->heartbeat_ms ? o->heartbeat_ms : 1000;
    r->max_staleness_ms = o->max_staleness_ms;
    r->started_ms = clock_wall_ms();
    pthread_mutex_init(&r->wake_mu, NULL);
    pthread_cond_init(&r->wake_cv, NULL);
    pthread_mutex_init(&r->smu, NULL);
    pthread_mutex_init(&r->hmu, NULL);
    pthread_mutex_init(&r->promote_mu, NULL);
    pthread_mutex_init(&r->cfg_mu, NULL);
    hist_init(&r->hist);
    hist_init(&r->known);

    const struct repl_region *self = NULL;
    if (o->nregions) {
        for (size_t i = 0; i < o->nregions; i++)
            if (strcmp(o->regions[i].name, r->node_name) == 0)
                self = &o->regions[i];
        if (!self) {
            log_error("REPL-CONFIG", "node=%s error=\"node.name is not a region of "
                      "cluster.regions\"", r->node_name);
            goto fail;
        }
        r->cluster = true;
        r->nvoters = o->nregions;
        str_copy(r->self_address, sizeof r->self_address, self->address ? self->address : "");
        r->self_filtered = self->filter.ninclude || self->filter.nexclude ||
                           self->filter.ninclude_tags || self->filter.nexclude_tags;
        r->self_eligible = self->eligible && !r->self_filtered;
        if (!r->listen[0])
            str_copy(r->listen, sizeof r->listen, self->address);
        if (!r->public_url[0] && self->url)
            str_copy(r->public_url, sizeof r->public_url, self->url);
        /* who may command this node: the regions that may become primary */
        if ((e = repl_set_primaries(r, o->regions, o->nregions)))
            goto fail;
        e = ERR_CONFIG;
        /* the role is state: the first start takes it from the description */
        buf rv = BUF_INIT;
        if (store_meta_get(s, "repl/role", &rv) == ERR_OK)
            r->primary = slice_eq_cstr(buf_slice(&rv), "primary");
        else
            r->primary = o->initial_primary && strcmp(o->initial_primary, r->node_name) == 0;
        buf_release(&rv);
        if (r->primary && !r->self_eligible) {
            log_error("REPL-CONFIG", "node=%s error=\"this region is the primary but may not "
                      "be (filtered or primary_eligible: false)\"", r->node_name);
            goto fail;
        }
        if (store_meta_put(s, "repl/role", r->primary ? "primary" : "secondary",
                           r->primary ? 7 : 9))
            goto fail;
    }

    buf v = BUF_INIT;
    uint64_t epoch = 1, fenced = 0;
    if (store_meta_get(s, "repl/epoch", &v) == ERR_OK)
        slice_parse_u64(buf_slice(&v), &epoch);
    buf_reset(&v);
    if (store_meta_get(s, "repl/fenced", &v) == ERR_OK)
        slice_parse_u64(buf_slice(&v), &fenced);
    buf_release(&v);
    pthread_mutex_lock(&r->hmu);
    e = hist_load(r);
    uint64_t hlast = hist_last_epoch(&r->hist);
    if (r->known.n && hist_last_epoch(&r->known) > hlast)
        hlast = hist_last_epoch(&r->known);
    pthread_mutex_unlock(&r->hmu);
    if (e)
        goto fail;
    e = ERR_CONFIG;
    if (hlast > epoch)
        epoch = hlast;
    atomic_store(&r->epoch, epoch);
    if (o->min_epoch > epoch) {
        /* an operator's epoch bump (replication.epoch): on a primary it is a
         * promotion, recorded and signed like one, so that its secondaries can
         * verify it; a secondary only takes it as its floor */
        if (r->primary) {
            uint64_t start = store_log_head(s) + 1;
            if (repl_history_add_own(r, o->min_epoch, start)) {
                log_error("REPL-CONFIG", "error=\"cannot record the promotion to epoch %llu\"",
                          (unsigned long long)o->min_epoch);
                goto fail;
            }
        } else {
            wire_epoch_adopt(r, o->min_epoch, "config");
        }
        epoch = o->min_epoch;
    }
    /* A fenced primary (repl_fence: an operator's decision) stays fenced across
     * restarts, until it is unfenced or promoted with replication.epoch above the
     * epoch it was fenced at. */
    if (r->primary && fenced) {
        if (o->min_epoch > fenced) {
            store_meta_put(s, "repl/fenced", "0", 1);
        } else {
            atomic_store(&r->demoted, true);
            log_warn("REPL-FENCED", "epoch=%llu msg=\"fenced: not accepting writes (clear with "
                     "georeg fence --clear, or set replication.epoch above %llu)\"",
                     (unsigned long long)fenced, (unsigned long long)fenced);
        }
    }
    /* A node that is primary in a cluster does not take writes until a majority of
     * the regions follow it at its epoch: one that was away may have been replaced. */
    if (r->cluster && r->primary && r->nvoters > 1) {
        atomic_store(&r->confirming, true);
        log_warn("REPL-CONFIRMING", "epoch=%llu voters=%zu msg=\"not accepting writes until "
                 "a majority of the regions follow this primary (or georeg fence clear)\"",
                 (unsigned long long)epoch, r->nvoters);
    }

    if (!r->primary || r->cluster) {
        /* the latest resync begun, and whether it finished */
        buf rv = BUF_INIT;
        unsigned long long ep = 0, id = 0;
        int done = 1;
        if (store_meta_get(s, "repl/resync", &rv) == ERR_OK &&
            sscanf(rv.ptr, "%llu:%llu:%d", &ep, &id, &done) == 3) {
            r->resync_epoch = ep;
            r->resync_id = id;
            r->resyncing = !done; /* stopped half-way: partial state, not ready */
            if (r->resyncing)
                log_warn("REPL-RESYNC-UNFINISHED", "msg=\"not ready until the primary resyncs "
                                                   "this node\"");
        }
        buf_release(&rv);
    }

    size_t nrep = r->cluster ? o->nregions - 1 : (r->primary ? o->nreplicas : 0);
    /* in a cluster, room for every region a reload may add */
    r->replicas_cap = r->cluster ? REPL_MAX_REGIONS : (nrep ? nrep : 1);
    r->replicas = calloc(r->replicas_cap, sizeof *r->replicas);
    if (!r->replicas || nrep > r->replicas_cap) {
        e = r->replicas ? ERR_CONFIG : ERR_NOMEM;
        goto fail;
    }
    for (size_t i = 0, k = 0; r->cluster ? i < o->nregions : i < nrep; i++) {
        struct repl_region legacy = {0};
        const struct repl_region *g;
        if (r->cluster) {
            g = &o->regions[i];
            if (g == self)
                continue;
        } else {
            legacy.name = o->replicas[i].name;
            legacy.address = o->replicas[i].address;
            legacy.filter = o->replicas[i].filter;
            g = &legacy;
        }
        struct replica *rp = &r->replicas[k++];
        r->nreplicas++; /* counted first: repl_free releases what was set up */
        if ((e = repl_replica_init(r, rp, g)))
            goto fail;
        e = ERR_CONFIG;
    }
    if (r->primary && r->insecure)
        log_warn("REPL-INSECURE", "msg=\"replication may use plain tcp:// without TLS\"");
    if (!r->primary || r->cluster) {
        if (!r->listen[0]) {
            log_error("REPL-CONFIG", "error=\"a secondary needs replication.listen\"");
            goto fail;
        }
        if (!address_ok(r, r->listen, "replication.listen"))
            goto fail;
        if (r->tls_key[0] && r->tls_ca[0] && !r->nprimaries) {
            log_error("REPL-CONFIG", "error=\"a secondary needs replication.primaries: the node "
                                     "names allowed to command it\"");
            goto fail;
        }
        if (strncmp(r->listen, "tcp://", 6) == 0)
            log_warn("REPL-INSECURE", "listen=%s msg=\"replication accepted over plain tcp\"",
                     r->listen);
    }
    if ((e = sync_init(r, &o->sync)))
        goto fail;
    if ((e = failover_new(r, o->etcd_endpoints, o->netcd_endpoints, o->etcd_ttl_ms,
                          o->etcd_prefix)))
        goto fail;
    *out = r;
    return ERR_OK;
fail:
    repl_free(r);
    return e;
}

/* on_pipe tracks the current pipe id: a pipe that goes away only clears the id when
 * it is the current one (a refused extra connection must not hide the live one). */
static bool
on_pipe(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    _Atomic uint32_t *id = arg;
    uint32_t pid = (uint32_t)nng_pipe_id(p);
    if (ev == NNG_PIPE_EV_ADD_POST) {
        atomic_store(id, pid);
        return true;
    }
    if (ev == NNG_PIPE_EV_REM_POST) {
        uint32_t expect = pid;
        return atomic_compare_exchange_strong(id, &expect, 0);
    }
    return false;
}

static void
on_replica_pipe(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    struct replica *rp = arg;
    if (!on_pipe(p, ev, &rp->pipe_id))
        return;
    atomic_fetch_add(&rp->pipe_gen, 1);
    log_info(ev == NNG_PIPE_EV_ADD_POST ? "REPL-PEER-CONNECTED" : "REPL-PEER-DISCONNECTED",
             "replica=%s address=%s", rp->name, rp->address);
    repl *r = rp->r;
    pthread_mutex_lock(&r->wake_mu);
    pthread_cond_broadcast(&r->wake_cv);
    pthread_mutex_unlock(&r->wake_mu);
}

/* on_receiver_pipe: a secondary follows one primary over one connection (nng's
 * pair1 holds one pipe; its polyamorous mode drops replies when a peer reads
 * slowly, which acks cannot afford). A new connection replaces the current one
 * unless that one is the proven primary this node follows and it was heard from
 * recently: then the newcomer is refused. So two primaries (a replaced one that
 * has not learned it yet, and the new one) cannot take the connection from each
 * other; the replaced one learns from the new primary, which dials every region,
 * and stops dialing. A followed connection silent for two heartbeats (a partition)
 * is replaced. */
static void
on_receiver_pipe(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    repl *r = arg;
    uint32_t pid = (uint32_t)nng_pipe_id(p);
    if (ev == NNG_PIPE_EV_ADD_PRE) {
        uint32_t cur = atomic_load(&r->rcur_pipe);
        if (!cur || cur == pid)
            return;
        uint32_t followed = atomic_load(&r->rpipe_id);
        pthread_mutex_lock(&r->smu);
        uint64_t contact = r->last_contact_ms;
        pthread_mutex_unlock(&r->smu);
        /* live: heard from within two heartbeats (a primary with nothing to send
         * heartbeats; one that cannot, across a partition, is not worth keeping a
         * candidate's probe out for) */
        uint64_t live = r->heartbeat_ms * 2 + 500;
        if (followed == cur && contact && clock_wall_ms() - contact < live) {
            atomic_fetch_add(&r->rpipes_refused, 1);
            nng_pipe_close(p); /* the followed primary is alive: keep it */
            return;
        }
        log_info("REPL-PRIMARY-REPLACED", "old_pipe=%u followed=%d", cur, followed == cur);
        nng_pipe op = NNG_PIPE_INITIALIZER;
        op.id = cur;
        nng_pipe_close(op);
        return;
    }
    if (ev == NNG_PIPE_EV_ADD_POST) {
        atomic_store(&r->rcur_pipe, pid);
        return;
    }
    uint32_t expect = pid;
    atomic_compare_exchange_strong(&r->rcur_pipe, &expect, 0);
    expect = pid;
    atomic_compare_exchange_strong(&r->rpipe_id, &expect, 0);
}

/* start_dialer (re)creates the replica's dialer; it redials on its own after drops. */
err
repl_start_dialer(repl *r, struct replica *rp)
{
    int rv;
    nng_tls_config *tls = NULL;
    char addr[256];
    pthread_mutex_lock(&rp->mu);
    str_copy(addr, sizeof addr, rp->address); /* a reload may change it */
    pthread_mutex_unlock(&rp->mu);
    if ((rv = nng_dialer_create(&rp->dialer, rp->sock, addr)))
        goto nngfail;
    nng_dialer_set_ms(rp->dialer, NNG_OPT_RECONNMINT, 100);
    nng_dialer_set_ms(rp->dialer, NNG_OPT_RECONNMAXT, 2000);
    if (strncmp(addr, "tls+tcp://", 10) == 0) {
        err e = wire_tls_config(r, false, rp->name, &tls); /* its certificate must name it */
        if (e)
            return e;
        rv = nng_dialer_set_ptr(rp->dialer, NNG_OPT_TLS_CONFIG, tls);
        nng_tls_config_free(tls);
        if (rv)
            goto nngfail;
    }
    if ((rv = nng_dialer_start(rp->dialer, NNG_FLAG_NONBLOCK)))
        goto nngfail;
    return ERR_OK;
nngfail:
    log_error("REPL-SOCKET", "replica=%s address=%s error=\"%s\"", rp->name, rp->address,
              nng_strerror(rv));
    return ERR_CONFIG;
}

static err
open_replica_socket(repl *r, struct replica *rp)
{
    int rv;
    if ((rv = nng_pair1_open(&rp->sock))) {
        log_error("REPL-SOCKET", "replica=%s error=\"%s\"", rp->name, nng_strerror(rv));
        return ERR_CONFIG;
    }
    rp->sock_open = true;
    nng_socket_set_size(rp->sock, NNG_OPT_RECVMAXSZ, REPL_MAX_MSG + 4096);
    nng_socket_set_ms(rp->sock, NNG_OPT_SENDTIMEO, 2000);
    nng_socket_set_int(rp->sock, NNG_OPT_SENDBUF, (int)(r->window < 8192 ? r->window : 8192));
    /* room for every ack of a full window and then some: acks are never what stalls */
    nng_socket_set_int(rp->sock, NNG_OPT_RECVBUF, (int)(r->window < 2048 ? r->window * 4 : 8192));
    nng_pipe_notify(rp->sock, NNG_PIPE_EV_ADD_POST, on_replica_pipe, rp);
    nng_pipe_notify(rp->sock, NNG_PIPE_EV_REM_POST, on_replica_pipe, rp);
    return ERR_OK; /* the shipper dials while this node is primary */
}

static err
open_receiver_socket(repl *r)
{
    int rv;
    nng_tls_config *tls = NULL;
    if ((rv = nng_pair1_open(&r->rsock)))
        goto nngfail;
    r->rsock_open = true;
    nng_socket_set_size(r->rsock, NNG_OPT_RECVMAXSZ, REPL_MAX_MSG + 4096);
    nng_socket_set_ms(r->rsock, NNG_OPT_SENDTIMEO, 2000);
    nng_socket_set_int(r->rsock, NNG_OPT_RECVBUF, 256);
    nng_pipe_notify(r->rsock, NNG_PIPE_EV_ADD_PRE, on_receiver_pipe, r);
    nng_pipe_notify(r->rsock, NNG_PIPE_EV_ADD_POST, on_receiver_pipe, r);
    nng_pipe_notify(r->rsock, NNG_PIPE_EV_REM_POST, on_receiver_pipe, r);
    if ((rv = nng_listener_create(&r->listener, r->rsock, r->listen)))
        goto nngfail;
    if (strncmp(r->listen, "tls+tcp://", 10) == 0) {
        err e = wire_tls_config(r, true, NULL, &tls);
        if (e)
            return e;
        rv = nng_listener_set_ptr(r->listener, NNG_OPT_TLS_CONFIG, tls);
        nng_tls_config_free(tls);
        if (rv)
            goto nngfail;
    }
    if ((rv = nng_listener_start(r->listener, 0)))
        goto nngfail;
    log_info("REPL-LISTEN", "address=%s", r->listen);
    return ERR_OK;
nngfail:
    log_error("REPL-LISTEN", "address=%s error=\"%s\"", r->listen, nng_strerror(rv));
    return ERR_CONFIG;
}

err
repl_replica_run(repl *r, struct replica *rp)
{
    err e = open_replica_socket(r, rp);
    if (e)
        return e;
    if (pthread_create(&rp->thread, NULL, shipper_main, rp) != 0)
        return ERR_NOMEM;
    rp->thread_started = true;
    return ERR_OK;
}

err
repl_start(repl *r)
{
    err e;
    if (r->nreplicas || r->cluster) { /* a cluster may add regions later */
        store_set_commit_hook(r->store, on_commit, r);
        for (size_t i = 0; i < r->nreplicas; i++)
            if ((e = repl_replica_run(r, &r->replicas[i])))
                return e;
    }
    if (r->primary)
        log_info("REPL-PRIMARY", "replicas=%zu epoch=%llu", r->nreplicas,
                 (unsigned long long)atomic_load(&r->epoch));
    if ((e = failover_start(r)))
        return e;
    if (r->primary && !r->cluster)
        return ERR_OK;
    /* a secondary follows its primary; in a cluster a primary listens too: a newer
     * primary tells it that it was replaced, and candidates ask where it is */
    if ((e = open_receiver_socket(r)))
        return e;
    if (pthread_create(&r->rthread, NULL, receiver_main, r) != 0)
        return ERR_NOMEM;
    r->rthread_started = true;
    return ERR_OK;
}

/* Closing the sockets happens on a thread of its own, waited for a bounded time:
 * nng 1.5's nng_close waits for every pipe to be torn down, and a TLS pipe over a
 * link that swallows packets was seen to keep it waiting for minutes. Shutdown
 * must finish within the drain timeout, so after REPL_CLOSE_TIMEOUT_MS the node
 * goes on exiting and leaves that thread (and the repl, which nng's callbacks may
 * still reach) to the process's end. */
#define REPL_CLOSE_TIMEOUT_MS 3000

struct closer {
    nng_socket socks[CLOSE_MAX_SOCKS];
    size_t n;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
};

static void *
close_main(void *arg)
{
    struct closer *c = arg;
    for (size_t i = 0; i < c->n; i++)
        nng_close(c->socks[i]);
    pthread_mutex_lock(&c->mu);
    c->done = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

bool
repl_close_bounded(repl *r, const nng_socket *socks, size_t n, uint64_t timeout_ms)
{
    struct closer *c = calloc(1, sizeof *c);
    if (!c) {
        for (size_t i = 0; i < n; i++)
            nng_close(socks[i]);
        return true;
    }
    for (size_t i = 0; i < n && c->n < CLOSE_MAX_SOCKS; i++)
        c->socks[c->n++] = socks[i];
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    pthread_t t;
    if (pthread_create(&t, NULL, close_main, c) != 0) {
        close_main(c);
    } else {
        struct timespec ts = clock_wall_deadline(timeout_ms);
        pthread_mutex_lock(&c->mu);
        while (!c->done)
            if (pthread_cond_timedwait(&c->cv, &c->mu, &ts) != 0)
                break;
        bool done = c->done;
        pthread_mutex_unlock(&c->mu);
        if (!done) {
            log_warn("REPL-CLOSE-STUCK", "sockets=%zu timeout_ms=%llu msg=\"nng did not close "
                     "its connections in time; going on without waiting\"",
                     c->n, (unsigned long long)timeout_ms);
            pthread_detach(t);
            atomic_store(&r->close_stuck, true);
            return false; /* c stays with the thread */
        }
        pthread_join(t, NULL);
    }
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
    return true;
}

static void
close_sockets(repl *r)
{
    nng_socket socks[CLOSE_MAX_SOCKS];
    size_t n = 0;
    for (size_t i = 0; i < r->nreplicas && n < CLOSE_MAX_SOCKS - 1; i++)
        if (r->replicas[i].sock_open)
            socks[n++] = r->replicas[i].sock;
    if (r->rsock_open)
        socks[n++] = r->rsock;
    repl_close_bounded(r, socks, n, REPL_CLOSE_TIMEOUT_MS);
    for (size_t i = 0; i < r->nreplicas; i++)
        r->replicas[i].sock_open = false;
    r->rsock_open = false;
}

void
repl_stop(repl *r)
{
    if (!r)
        return;
    atomic_store(&r->stopping, true);
    pthread_mutex_lock(&r->wake_mu);
    pthread_cond_broadcast(&r->wake_cv);
    pthread_mutex_unlock(&r->wake_mu);
    failover_stop(r);
    /* Every thread sees `stopping` within one bounded wait (a receive timeout of at
     * most 200 ms, a send timeout of 2 s); sockets are closed only once their
     * threads are gone, so no call is left blocked inside nng_close. */
    for (size_t i = 0; i < r->nreplicas; i++) {
        struct replica *rp = &r->replicas[i];
        if (rp->thread_started) {
            pthread_join(rp->thread, NULL);
            rp->thread_started = false;
        }
    }
    if (r->rthread_started) {
        pthread_join(r->rthread, NULL);
        r->rthread_started = false;
    }
    close_sockets(r);
    if (r->nreplicas || r->cluster)
        store_set_commit_hook(r->store, NULL, NULL);
}

void
repl_free(repl *r)
{
    if (!r)
        return;
    repl_stop(r);
    if (atomic_load(&r->close_stuck))
        return; /* nng may still call into it: it lives until the process ends */
    failover_free(r);
    for (size_t i = 0; i < r->nreplicas; i++) {
        struct replica *rp = &r->replicas[i];
        for (size_t k = 0; k < rp->nfilters; k++)
            repl_filter_free(rp->filters[k]);
        free(rp->known);
        hist_release(&rp->their_hist);
        pthread_mutex_destroy(&rp->mu);
    }
    sync_release(r);
    free(r->replicas);
    free(r->primaries);
    hist_release(&r->hist);
    hist_release(&r->known);
    pthread_mutex_destroy(&r->hmu);
    pthread_mutex_destroy(&r->promote_mu);
    pthread_mutex_destroy(&r->cfg_mu);
    pthread_mutex_destroy(&r->wake_mu);
    pthread_cond_destroy(&r->wake_cv);
    pthread_mutex_destroy(&r->smu);
    free(r);
}

bool
repl_close_stuck(repl *r)
{
    return atomic_load(&r->close_stuck);
}

bool
repl_is_primary(repl *r)
{
    return r->primary;
}

bool
repl_writable(repl *r, char *url, size_t n)
{
    bool lease = failover_lease_ok(r);
    if (r->primary && !atomic_load(&r->demoted) && !atomic_load(&r->confirming) && lease)
        return true;
    if (url) {
        pthread_mutex_lock(&r->smu);
        if (r->primary && !lease)
            snprintf(url, n, "(this primary does not hold the etcd lease: not taking writes)");
        else if (r->primary && atomic_load(&r->demoted))
            snprintf(url, n, "(fenced at epoch %llu: this primary does not take writes)",
                     (unsigned long long)atomic_load(&r->epoch));
        else if (r->primary)
            snprintf(url, n, "(confirming epoch %llu: this primary takes writes once a "
                     "majority of the regions follow it)",
                     (unsigned long long)atomic_load(&r->epoch));
        else
            str_copy(url, n, r->learned_primary_url);
        pthread_mutex_unlock(&r->smu);
    }
    return false;
}

/* staleness_ms: how long since this secondary was last known to hold everything the
 * primary had committed (0 while it is; UINT64_MAX when never). */
static uint64_t
staleness_ms(repl *r, uint64_t now)
{
    uint64_t applied = store_applied_seq(r->store);
    pthread_mutex_lock(&r->smu);
    uint64_t phead = r->primary_head, contact = r->last_contact_ms, caught = r->caught_up_ms;
    pthread_mutex_unlock(&r->smu);
    bool connected = atomic_load(&r->rpipe_id) != 0;
    bool cut = !connected || !contact || now - contact > 3 * r->heartbeat_ms + 2000;
    if (applied >= phead && !cut)
        return 0;
    if (!caught)
        caught = r->started_ms;
    return now > caught ? now - caught : 0;
}

bool
repl_ready(repl *r, const char **why)
{
    *why = "";
    if (r->primary) {
        if (atomic_load(&r->demoted))
            *why = "fenced: this primary does not take writes";
        else if (atomic_load(&r->confirming))
            *why = "confirming its epoch with the cluster";
        else if (!failover_lease_ok(r))
            *why = "no etcd lease: another node may be primary";
        return !**why;
    }
    pthread_mutex_lock(&r->smu);
    bool resyncing = r->resyncing;
    pthread_mutex_unlock(&r->smu);
    if (resyncing) {
        *why = "resyncing from the primary";
        return false;
    }
    if (r->max_staleness_ms && staleness_ms(r, clock_wall_ms()) > r->max_staleness_ms) {
        *why = "stale: not known to be current for longer than replication.max_staleness";
        return false;
    }
    return true;
}

static void
persist_role(repl *r)
{
    if (!r->cluster)
        return;
    bool p = r->primary;
    if (store_meta_put(r->store, "repl/role", p ? "primary" : "secondary", p ? 7 : 9))
        log_warn("REPL-ROLE-PERSIST", "error=\"cannot persist the role\"");
}

void
repl_demote(repl *r, const char *why)
{
    if (!r->primary)
        return;
    if (!r->cluster) {
        /* a fixed-role primary has no receiver to follow anyone: it fences itself */
        if (!atomic_exchange(&r->demoted, true)) {
            char v[24];
            int n = snprintf(v, sizeof v, "%llu", (unsigned long long)atomic_load(&r->epoch));
            store_meta_put(r->store, "repl/fenced", v, (size_t)n);
            log_warn("REPL-FENCED", "epoch=%llu by=promotion why=\"%s\"",
                     (unsigned long long)atomic_load(&r->epoch), why);
        }
        return;
    }
    /* once: the receiver and a shipper may learn of the promotion at the same time */
    if (!atomic_exchange(&r->primary, false))
        return;
    if (store_role_align(r->store))
        log_warn("REPL-ROLE-ALIGN", "error=\"cannot align the applied seq with the log\"");
    atomic_store(&r->confirming, false);
    atomic_fetch_add(&r->demotions, 1);
    persist_role(r);
    pthread_mutex_lock(&r->smu);
    r->learned_primary_url[0] = '\0';
    r->caught_up_ms = 0;
    pthread_mutex_unlock(&r->smu);
    log_warn("REPL-DEMOTED", "epoch=%llu why=\"%s\" msg=\"this node is a secondary now\"",
             (unsigned long long)atomic_load(&r->epoch), why);
    pthread_mutex_lock(&r->wake_mu);
    pthread_cond_broadcast(&r->wake_cv);
    pthread_mutex_unlock(&r->wake_mu);
}

/* repl_become_primary switches the role (promote). */
void
repl_become_primary(repl *r)
{
    atomic_store(&r->primary, true);
    atomic_store(&r->confirming, r->nvoters > 1);
    atomic_store(&r->demoted, false);
    atomic_fetch_add(&r->promotions, 1);
    store_meta_put(r->store, "repl/fenced", "0", 1);
    persist_role(r);
    for (size_t i = 0; i < r->nreplicas; i++)
        atomic_store(&r->replicas[i].confirmed_epoch, 0);
    pthread_mutex_lock(&r->wake_mu);
    pthread_cond_broadcast(&r->wake_cv);
    pthread_mutex_unlock(&r->wake_mu);
}

/* repl_check_confirmed clears `confirming` once a majority follows at our epoch. */
void
repl_check_confirmed(repl *r)
{
    if (!atomic_load(&r->confirming) || !r->primary)
        return;
    uint64_t epoch = atomic_load(&r->epoch);
    size_t votes = 1;
    for (size_t i = 0; i < r->nreplicas; i++)
        if (atomic_load(&r->replicas[i].active) &&
            atomic_load(&r->replicas[i].confirmed_epoch) == epoch)
            votes++;
    if (votes * 2 > r->nvoters && atomic_exchange(&r->confirming, false))
        log_info("REPL-CONFIRMED", "epoch=%llu votes=%zu voters=%zu msg=\"taking writes\"",
                 (unsigned long long)epoch, votes, r->nvoters);
}

/* ---- refusals and fences ---- */

static const char *const refusal_names[REFUSE_COUNT] = {
    [REFUSE_UNAUTHENTICATED] = "unauthenticated", [REFUSE_NOT_PRIMARY] = "not_primary",
    [REFUSE_BAD_PROOF] = "bad_proof",             [REFUSE_SENDER] = "sender",
    [REFUSE_EPOCH] = "epoch",                     [REFUSE_META] = "meta",
    [REFUSE_TLS] = "tls",
};

void
repl_refuse(repl *r, enum repl_refusal why, const char *peer, const char *detail)
{
    atomic_fetch_add(&r->refused[why], 1);
    log_warn("REPL-REFUSED", "reason=%s peer=%s detail=\"%s\"", refusal_names[why],
             peer ? peer : "", detail ? detail : "");
    if (r->on_refused)
        r->on_refused(r->cb_arg, peer ? peer : "", refusal_names[why], detail ? detail : "");
}

err
repl_fence(repl *r, bool fenced)
{
    if (!r->primary)
        return ERR_INVALID;
    char v[24];
    int n = snprintf(v, sizeof v, "%llu", fenced ? (unsigned long long)atomic_load(&r->epoch) : 0ull);
    err e = store_meta_put(r->store, "repl/fenced", v, (size_t)n);
    if (e)
        return e;
    atomic_store(&r->demoted, fenced);
    if (!fenced && atomic_exchange(&r->confirming, false))
        log_warn("REPL-CONFIRMED", "epoch=%llu by=operator msg=\"taking writes without a "
                 "majority (the operator says this node is alone)\"",
                 (unsigned long long)atomic_load(&r->epoch));
    log_warn(fenced ? "REPL-FENCED" : "REPL-UNFENCED", "epoch=%llu by=operator",
             (unsigned long long)atomic_load(&r->epoch));
    pthread_mutex_lock(&r->wake_mu);
    pthread_cond_broadcast(&r->wake_cv);
    pthread_mutex_unlock(&r->wake_mu);
    return ERR_OK;
}

void
repl_fence_json(repl *r, buf *out)
{
    buf_addf(out, "{\"role\":\"%s\",\"fenced\":%s,\"confirming\":%s,\"epoch\":%llu}",
             r->primary ? "primary" : "secondary", atomic_load(&r->demoted) ? "true" : "false",
             atomic_load(&r->confirming) ? "true" : "false",
             (unsigned long long)atomic_load(&r->epoch));
}

/* ---- lag ---- */

struct lag_scan {
    const struct filter *f;
    uint64_t bytes;
    uint64_t events;
};

static bool
on_lag_event(void *arg, const struct store_event *ev)
{
    struct lag_scan *ls = arg;
    ls->events++;
    if (ev->repo.len && !filter_repo(ls->f, ev->repo))
        return true;
    if (ev->type == EV_BLOB_LINK || ev->type == EV_MANIFEST_PUT || ev->type == EV_META_PUT)
        ls->bytes += ev->type == EV_BLOB_LINK ? ev->size : ev->body.len;
    return ls->events < 200000;
}

struct replica_view {
    enum replica_state state;
    uint64_t acked, sent, last_contact, bytes_sent, events_sent, resync_total, resync_sent,
        resyncs, stale, retries;
    double tp;
    char last_error[256];
};

static void
replica_view(struct replica *rp, struct replica_view *v)
{
    pthread_mutex_lock(&rp->mu);
    v->state = rp->state;
    v->acked = rp->acked_seq;
    v->sent = rp->sent_seq;
    v->last_contact = rp->last_contact_ms;
    v->bytes_sent = rp->bytes_sent;
    v->events_sent = rp->events_sent;
    v->resync_total = rp->resync_total_bytes;
    v->resync_sent = rp->resync_sent_bytes;
    v->resyncs = rp->resyncs;
    v->stale = rp->stale_epoch_rejects;
    v->retries = rp->retries;
    v->tp = rp->throughput_bps;
    str_copy(v->last_error, sizeof v->last_error, rp->last_error);
    pthread_mutex_unlock(&rp->mu);
}

void
json_time(buf *b, const char *key, uint64_t ms)
{
    if (!ms) {
        buf_addf(b, ",\"%s\":null", key);
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char s[40];
    strftime(s, sizeof s, "%Y-%m-%dT%H:%M:%S", &tm);
    buf_addf(b, ",\"%s\":\"%s.%03lluZ\"", key, s, (unsigned long long)(ms % 1000));
}

err
repl_status_json(repl *r, buf *b)
{
    uint64_t now = clock_wall_ms();
    uint64_t head = store_log_head(r->store);
    buf_adds(b, "{\"node\":");
    buf_add_json_str(b, r->node_name, strlen(r->node_name));
    buf_addf(b, ",\"role\":\"%s\",\"epoch\":%llu,\"writable\":%s",
             r->primary ? "primary" : "secondary", (unsigned long long)atomic_load(&r->epoch),
             repl_writable(r, NULL, 0) ? "true" : "false");
    buf_addf(b, ",\"stale_epoch_rejects\":%llu,\"bad_messages\":%llu",
             (unsigned long long)atomic_load(&r->stale_epoch_rejects),
             (unsigned long long)atomic_load(&r->forged_rejects));
    buf_adds(b, ",\"refused\":{");
    for (int i = 0; i < REFUSE_COUNT; i++)
        buf_addf(b, "%s\"%s\":%llu", i ? "," : "", refusal_names[i],
                 (unsigned long long)atomic_load(&r->refused[i]));
    buf_addf(b, "},\"fenced\":%s", r->primary && atomic_load(&r->demoted) ? "true" : "false");
    buf_addf(b, ",\"confirming\":%s,\"cluster\":%s,\"voters\":%zu,\"filtered\":%s,"
                "\"eligible\":%s,\"promotions\":%llu,\"demotions\":%llu,"
                "\"history_conflicts\":%llu,\"divergences\":%llu,\"open_conflicts\":%zu",
             atomic_load(&r->confirming) ? "true" : "false", r->cluster ? "true" : "false",
             r->nvoters, r->self_filtered ? "true" : "false",
             r->cluster ? (r->self_eligible ? "true" : "false") : (r->primary ? "true" : "false"),
             (unsigned long long)atomic_load(&r->promotions),
             (unsigned long long)atomic_load(&r->demotions),
             (unsigned long long)atomic_load(&r->history_conflicts),
             (unsigned long long)atomic_load(&r->divergences), repl_conflicts_open(r));
    buf_adds(b, ",\"history\":");
    hist_json(r, b);
    const char *nr = "";
    bool ready = repl_ready(r, &nr);
    buf_addf(b, ",\"ready\":%s,\"not_ready_reason\":", ready ? "true" : "false");
    buf_add_json_str(b, nr, strlen(nr));
    failover_json(r, b);
    json_time(b, "now", now);
    sync_json(r, b);
    if (r->primary) {
        buf_addf(b, ",\"head_seq\":%llu,\"log_first_seq\":%llu,\"replicas\":[",
                 (unsigned long long)head, (unsigned long long)store_log_first(r->store));
        for (size_t i = 0, shown = 0; i < r->nreplicas; i++) {
            struct replica *rp = &r->replicas[i];
            if (!atomic_load(&rp->active))
                continue; /* removed by a reload */
            struct replica_view v;
            replica_view(rp, &v);
            struct lag_scan ls = {.f = rp_filter(rp)};
            if (v.acked < head)
                store_log_read(r->store, v.acked + 1, 200000, on_lag_event, &ls);
            uint64_t oldest = v.acked < head ? store_log_event_time(r->store, v.acked + 1) : 0;
            double lag_s = oldest && now > oldest ? (double)(now - oldest) / 1000.0 : 0.0;
            buf_addf(b, "%s{\"name\":", shown++ ? "," : "");
            buf_add_json_str(b, rp->name, strlen(rp->name));
            buf_adds(b, ",\"address\":");
            buf_add_json_str(b, rp->address, strlen(rp->address));
            buf_addf(b,
                     ",\"state\":\"%s\",\"acked_seq\":%llu,\"sent_seq\":%llu,"
                     "\"lag_events\":%llu,\"lag_bytes\":%llu,\"lag_seconds\":%.3f",
                     state_names[v.state], (unsigned long long)v.acked,
                     (unsigned long long)v.sent, (unsigned long long)(head - (v.acked < head ? v.acked : head)),
                     (unsigned long long)ls.bytes, lag_s);
            json_time(b, "last_contact", v.last_contact);
            buf_addf(b, ",\"last_contact_seconds_ago\":");
            if (v.last_contact)
                buf_addf(b, "%.3f", now > v.last_contact ? (double)(now - v.last_contact) / 1000.0 : 0.0);
            else
                buf_adds(b, "null");
            buf_addf(b,
                     ",\"throughput_bytes_per_second\":%.0f,\"bytes_sent\":%llu,"
                     "\"events_sent\":%llu,\"retries\":%llu,\"stale_epoch_rejects\":%llu",
                     v.tp, (unsigned long long)v.bytes_sent, (unsigned long long)v.events_sent,
                     (unsigned long long)v.retries, (unsigned long long)v.stale);
            buf_addf(b, ",\"resync\":{\"count\":%llu,\"total_bytes\":%llu,\"sent_bytes\":%llu}",
                     (unsigned long long)v.resyncs, (unsigned long long)v.resync_total,
                     (unsigned long long)v.resync_sent);
            pthread_mutex_lock(&rp->mu);
            uint64_t div = rp->diverged, fork = rp->fork_seq, their = rp->their_epoch;
            pthread_mutex_unlock(&rp->mu);
            buf_addf(b, ",\"confirmed_epoch\":%llu,\"their_epoch\":%llu,\"fork_seq\":%llu,"
                        "\"diverged\":%llu,\"url\":",
                     (unsigned long long)atomic_load(&rp->confirmed_epoch),
                     (unsigned long long)their, (unsigned long long)fork,
                     (unsigned long long)div);
            buf_add_json_str(b, rp->url, strlen(rp->url));
            buf_adds(b, ",\"filter\":");
            filter_json(b, rp_filter(rp));
            buf_adds(b, ",\"last_error\":");
            buf_add_json_str(b, v.last_error, strlen(v.last_error));
            buf_addc(b, '}');
        }
        buf_adds(b, "]}");
        return ERR_OK;
    }
    uint64_t applied = store_applied_seq(r->store);
    pthread_mutex_lock(&r->smu);
    uint64_t phead = r->primary_head, contact = r->last_contact_ms, caught = r->caught_up_ms;
    bool resyncing = r->resyncing;
    uint64_t rbytes = r->resync_bytes, aerr = r->apply_errors;
    char url[256], pname[64], aerrs[256];
    str_copy(url, sizeof url, r->learned_primary_url);
    str_copy(pname, sizeof pname, r->primary_name);
    str_copy(aerrs, sizeof aerrs, r->apply_error);
    pthread_mutex_unlock(&r->smu);
    bool connected = atomic_load(&r->rpipe_id) != 0;
    bool cut = !connected || !contact || now - contact > 3 * r->heartbeat_ms + 2000;
    /* cut off, we cannot know the primary's head: stale since last known current (or
     * since this node started, when it never was) */
    (void)caught;
    double stale = (double)staleness_ms(r, now) / 1000.0;
    const char *state = resyncing ? "resyncing"
                        : cut     ? "disconnected"
                        : applied >= phead ? "in-sync"
                                           : "catching-up";
    buf_addf(b, ",\"state\":\"%s\",\"applied_seq\":%llu,\"primary_head_seq\":%llu", state,
             (unsigned long long)applied, (unsigned long long)phead);
    buf_addf(b, ",\"lag_events\":%llu", (unsigned long long)(phead > applied ? phead - applied : 0));
    if (stale < 0)
        buf_adds(b, ",\"staleness_seconds\":null");
    else
        buf_addf(b, ",\"staleness_seconds\":%.3f", stale);
    json_time(b, "last_contact", contact);
    buf_adds(b, ",\"primary\":");
    buf_add_json_str(b, pname, strlen(pname));
    buf_adds(b, ",\"primary_url\":");
    buf_add_json_str(b, url, strlen(url));
    buf_addf(b, ",\"listen\":");
    buf_add_json_str(b, r->listen, strlen(r->listen));
    buf_addf(b, ",\"resync_bytes\":%llu,\"apply_errors\":%llu,\"last_error\":",
             (unsigned long long)rbytes, (unsigned long long)aerr);
    buf_add_json_str(b, aerrs, strlen(aerrs));
    buf_addc(b, '}');
    return ERR_OK;
}

void
repl_metrics(repl *r, buf *b)
{
    uint64_t head = store_log_head(r->store);
    uint64_t now = clock_wall_ms();
    buf_addf(b, "# HELP georeg_repl_epoch current epoch\n# TYPE georeg_repl_epoch gauge\n"
                "georeg_repl_epoch %llu\n",
             (unsigned long long)atomic_load(&r->epoch));
    buf_addf(b, "# HELP georeg_repl_stale_epoch_rejects_total messages refused for a stale epoch\n"
                "# TYPE georeg_repl_stale_epoch_rejects_total counter\n"
                "georeg_repl_stale_epoch_rejects_total %llu\n",
             (unsigned long long)atomic_load(&r->stale_epoch_rejects));
    buf_adds(b, "# HELP georeg_repl_refused_total messages and connections refused from peers\n"
                "# TYPE georeg_repl_refused_total counter\n");
    for (int i = 0; i < REFUSE_COUNT; i++)
        buf_addf(b, "georeg_repl_refused_total{reason=\"%s\"} %llu\n", refusal_names[i],
                 (unsigned long long)atomic_load(&r->refused[i]));
    buf_addf(b, "# HELP georeg_repl_fenced 1 while this primary is fenced\n"
                "# TYPE georeg_repl_fenced gauge\ngeoreg_repl_fenced %d\n",
             r->primary && atomic_load(&r->demoted) ? 1 : 0);
    buf_addf(b, "# HELP georeg_repl_primary 1 while this node is the primary\n"
                "# TYPE georeg_repl_primary gauge\ngeoreg_repl_primary %d\n",
             r->primary ? 1 : 0);
    buf_addf(b, "# HELP georeg_repl_writable 1 while this node takes writes\n"
                "# TYPE georeg_repl_writable gauge\ngeoreg_repl_writable %d\n",
             repl_writable(r, NULL, 0) ? 1 : 0);
    buf_addf(b, "# HELP georeg_repl_confirming 1 while a primary waits for a majority\n"
                "# TYPE georeg_repl_confirming gauge\ngeoreg_repl_confirming %d\n",
             atomic_load(&r->confirming) ? 1 : 0);
    buf_addf(b, "# HELP georeg_repl_promotions_total promotions of this node\n"
                "# TYPE georeg_repl_promotions_total counter\n"
                "georeg_repl_promotions_total %llu\n"
                "# HELP georeg_repl_demotions_total times this primary learned it was replaced\n"
                "# TYPE georeg_repl_demotions_total counter\n"
                "georeg_repl_demotions_total %llu\n",
             (unsigned long long)atomic_load(&r->promotions),
             (unsigned long long)atomic_load(&r->demotions));
    buf_addf(b, "# HELP georeg_repl_divergences_total times this node's log went past a fork\n"
                "# TYPE georeg_repl_divergences_total counter\n"
                "georeg_repl_divergences_total %llu\n"
                "# HELP georeg_repl_conflicts open tag conflicts reported by this node\n"
                "# TYPE georeg_repl_conflicts gauge\ngeoreg_repl_conflicts %zu\n",
             (unsigned long long)atomic_load(&r->divergences), repl_conflicts_open(r));
    buf_addf(b, "# HELP georeg_repl_history_conflicts_total two promotions to one epoch seen\n"
                "# TYPE georeg_repl_history_conflicts_total counter\n"
                "georeg_repl_history_conflicts_total %llu\n",
             (unsigned long long)atomic_load(&r->history_conflicts));
    failover_metrics(r, b);
    sync_metrics(r, b);
    if (!r->primary) {
        uint64_t applied = store_applied_seq(r->store);
        pthread_mutex_lock(&r->smu);
        uint64_t phead = r->primary_head, caught = r->caught_up_ms;
        uint64_t contact = r->last_contact_ms;
        pthread_mutex_unlock(&r->smu);
        (void)caught;
        (void)contact;
        double stale = (double)staleness_ms(r, now) / 1000.0;
        buf_addf(b, "# HELP georeg_repl_applied_seq highest primary sequence applied\n"
                    "# TYPE georeg_repl_applied_seq gauge\ngeoreg_repl_applied_seq %llu\n",
                 (unsigned long long)applied);
        buf_addf(b, "# HELP georeg_repl_primary_head_seq the primary's head as last heard\n"
                    "# TYPE georeg_repl_primary_head_seq gauge\n"
                    "georeg_repl_primary_head_seq %llu\n",
                 (unsigned long long)phead);
        buf_addf(b, "# HELP georeg_repl_staleness_seconds time since this replica was caught up\n"
                    "# TYPE georeg_repl_staleness_seconds gauge\n"
                    "georeg_repl_staleness_seconds %.3f\n",
                 stale);
        return;
    }
    buf_adds(b, "# HELP georeg_repl_lag_events events committed but not acknowledged\n"
                "# TYPE georeg_repl_lag_events gauge\n");
    struct replica_view vs[64];
    size_t idx[64], n = 0;
    for (size_t i = 0; i < r->nreplicas && n < 64; i++)
        if (atomic_load(&r->replicas[idx[i]].active))
            idx[n++] = i;
    for (size_t i = 0; i < n; i++) {
        replica_view(&r->replicas[idx[i]], &vs[i]);
        buf_addf(b, "georeg_repl_lag_events{replica=\"%s\"} %llu\n", r->replicas[idx[i]].name,
                 (unsigned long long)(head > vs[i].acked ? head - vs[i].acked : 0));
    }
    buf_adds(b, "# HELP georeg_repl_lag_seconds age of the oldest unacknowledged change\n"
                "# TYPE georeg_repl_lag_seconds gauge\n");
    for (size_t i = 0; i < n; i++) {
        uint64_t oldest = vs[i].acked < head ? store_log_event_time(r->store, vs[i].acked + 1) : 0;
        buf_addf(b, "georeg_repl_lag_seconds{replica=\"%s\"} %.3f\n", r->replicas[idx[i]].name,
                 oldest && now > oldest ? (double)(now - oldest) / 1000.0 : 0.0);
    }
    buf_adds(b, "# HELP georeg_repl_lag_bytes bytes still to send\n"
                "# TYPE georeg_repl_lag_bytes gauge\n");
    for (size_t i = 0; i < n; i++) {
        struct lag_scan ls = {.f = rp_filter(&r->replicas[idx[i]])};
        if (vs[i].acked < head)
            store_log_read(r->store, vs[i].acked + 1, 200000, on_lag_event, &ls);
        buf_addf(b, "georeg_repl_lag_bytes{replica=\"%s\"} %llu\n", r->replicas[idx[i]].name,
                 (unsigned long long)ls.bytes);
    }
    buf_adds(b, "# HELP georeg_repl_acked_seq highest sequence acknowledged\n"
                "# TYPE georeg_repl_acked_seq gauge\n");
    for (size_t i = 0; i < n; i++)
        buf_addf(b, "georeg_repl_acked_seq{replica=\"%s\"} %llu\n", r->replicas[idx[i]].name,
                 (unsigned long long)vs[i].acked);
    buf_adds(b, "# HELP georeg_repl_up 1 when the replica is reachable\n"
                "# TYPE georeg_repl_up gauge\n");
    for (size_t i = 0; i < n; i++)
        buf_addf(b, "georeg_repl_up{replica=\"%s\"} %d\n", r->replicas[idx[i]].name,
                 vs[i].state != RS_UNREACHABLE);
    buf_adds(b, "# HELP georeg_repl_sent_bytes_total bytes sent to the replica\n"
                "# TYPE georeg_repl_sent_bytes_total counter\n");
    for (size_t i = 0; i < n; i++)
        buf_addf(b, "georeg_repl_sent_bytes_total{replica=\"%s\"} %llu\n", r->replicas[idx[i]].name,
                 (unsigned long long)vs[i].bytes_sent);
}

void
repl_housekeeping(repl *r)
{
    if (!r->primary || atomic_load(&r->demoted))
        return;
    /* a resync in progress continues from the log at its snapshot: keep it all */
    if (atomic_load(&r->resyncs_active) > 0)
        return;
    uint64_t head = store_log_head(r->store);
    uint64_t min_acked = head;
    for (size_t i = 0; i < r->nreplicas; i++) {
        if (!atomic_load(&r->replicas[i].active))
            continue; /* removed: it holds nothing back */
        pthread_mutex_lock(&r->replicas[i].mu);
        if (r->replicas[i].acked_seq < min_acked)
            min_acked = r->replicas[i].acked_seq;
        pthread_mutex_unlock(&r->replicas[i].mu);
    }
    /* keep everything a replica still needs, but never more than the retention bound */
    uint64_t keep_from = min_acked + 1;
    if (head > r->log_retention && head - r->log_retention + 1 > keep_from)
        keep_from = head - r->log_retention + 1;
    if (keep_from > store_log_first(r->store)) {
        store_log_trim(r->store, keep_from);
        log_info("REPL-LOG-TRIM", "before=%llu head=%llu min_acked=%llu",
                 (unsigned long long)keep_from, (unsigned long long)head,
                 (unsigned long long)min_acked);
    }
}

bool
repl_locate(repl *r, const char *repo, const char *ref, uint64_t seq, const char *regions,
            struct repl_locate *out, size_t max, size_t *n)
{
    bool all = true;
    *n = 0;
    /* self first */
    const char *p = regions && *regions ? regions : NULL;
    size_t total = 1 + r->nreplicas;
    for (size_t i = 0; i < total && *n < max; i++) {
        if (i && !atomic_load(&r->replicas[i - 1].active))
            continue;
        const char *name = i == 0 ? r->node_name : r->replicas[i - 1].name;
        if (p) {
            /* only regions named in the comma-separated list */
            bool named = false;
            const char *q = p;
            size_t nl = strlen(name);
            while (*q) {
                const char *c = strchr(q, ',');
                size_t l = c ? (size_t)(c - q) : strlen(q);
                if (l == nl && memcmp(q, name, l) == 0)
                    named = true;
                q += l + (c ? 1 : 0);
            }
            if (!named)
                continue;
        }
        struct repl_locate *o = &out[(*n)++];
        memset(o, 0, sizeof *o);
        str_copy(o->name, sizeof o->name, name);
        o->known = true;
        if (i == 0) {
            o->included = true;
            o->holds = true;
            o->acked_seq = r->primary ? store_log_head(r->store) : store_applied_seq(r->store);
            continue;
        }
        struct replica *rp = &r->replicas[i - 1];
        slice tagp = strchr(ref, ':') ? (slice){"", 0} : slice_of_cstr(ref);
        const struct filter *f = rp_filter(rp);
        o->included = filter_repo(f, slice_of_cstr(repo)) && (!tagp.len || filter_tag(f, tagp));
        pthread_mutex_lock(&rp->mu);
        o->acked_seq = rp->acked_seq;
        pthread_mutex_unlock(&rp->mu);
        o->holds = o->included && o->acked_seq >= seq;
        if (!o->holds)
            all = false;
    }
    /* named regions that are not configured */
    if (p) {
        const char *q = p;
        while (*q && *n < max) {
            const char *c = strchr(q, ',');
            size_t l = c ? (size_t)(c - q) : strlen(q);
            bool found = false;
            for (size_t k = 0; k < *n; k++)
                if (strlen(out[k].name) == l && memcmp(out[k].name, q, l) == 0)
                    found = true;
            if (!found && l) {
                struct repl_locate *o = &out[(*n)++];
                memset(o, 0, sizeof *o);
                str_copy_slice(o->name, sizeof o->name, (slice){q, l});
                all = false;
            }
            q += l + (c ? 1 : 0);
        }
    }
    return all;
}
