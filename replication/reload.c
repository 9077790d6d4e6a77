/* Reloading the cluster description (SIGHUP, POST /_georeg/v1/cluster/reload): a
 * region added gets a slot and a shipper, one removed is deactivated (its shipper
 * stops dialing and exits; the slot stays, since threads and status readers may
 * still hold it), a changed address makes the shipper redial, a changed filter is
 * published as a new immutable version (the shipper then resyncs that region, as
 * after any filter change), and the names that may command this node and the count
 * of voters follow. This node's own region may not move or go: that needs a
 * restart. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "repl_int.h"
#include "../common/log.h"
#include "../common/banned.h"

static bool
filtered(const struct repl_region *g)
{
    return g->filter.ninclude || g->filter.nexclude || g->filter.ninclude_tags ||
           g->filter.nexclude_tags;
}

static void
list_add(buf *b, const char *name)
{
    if (b->len)
        buf_addc(b, ',');
    buf_add_json_str(b, name, strlen(name));
}

err
repl_reload(repl *r, const struct repl_region *regions, size_t n, buf *out)
{
    err e = ERR_OK;
    buf added = BUF_INIT, removed = BUF_INIT, changed = BUF_INIT, why = BUF_INIT;
    const struct repl_region *self = NULL;
    if (!r->cluster) {
        buf_adds(&why, "no cluster description (cluster.regions) to reload");
        e = ERR_INVALID;
        goto report;
    }
    if (n > REPL_MAX_REGIONS) {
        buf_addf(&why, "at most %d regions", REPL_MAX_REGIONS);
        e = ERR_INVALID;
        goto report;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(regions[i].name, r->node_name) == 0)
            self = &regions[i];
        for (size_t j = 0; j < i; j++)
            if (strcmp(regions[i].name, regions[j].name) == 0) {
                buf_addf(&why, "region %s is listed twice", regions[i].name);
                e = ERR_INVALID;
                goto report;
            }
    }
    if (!self) {
        buf_addf(&why, "this node (%s) is not in the new description: that needs a restart",
                 r->node_name);
        e = ERR_INVALID;
        goto report;
    }
    if (!self->address || strcmp(self->address, r->self_address) != 0) {
        buf_addf(&why, "this node's own address changed (%s): that needs a restart",
                 self->address ? self->address : "");
        e = ERR_INVALID;
        goto report;
    }
    pthread_mutex_lock(&r->cfg_mu);
    /* the checks first, so that a refused reload changes nothing */
    size_t slots = r->nreplicas;
    for (size_t i = 0; i < n && !e; i++) {
        const struct repl_region *g = &regions[i];
        if (g == self)
            continue;
        bool found = false;
        for (size_t k = 0; k < r->nreplicas && !e; k++) {
            struct replica *rp = &r->replicas[k];
            if (strcmp(rp->name, g->name) != 0)
                continue;
            found = true;
            /* a filter change needs room for one more version */
            struct filter *f = NULL;
            if ((e = repl_filter_new(&g->filter, &f)))
                break;
            if (strcmp(f->hash, rp_filter(rp)->hash) != 0 &&
                rp->nfilters == REPL_MAX_FILTER_VERSIONS) {
                buf_addf(&why, "region %s: filter changed too often since the start "
                               "(restart to reload it again)", g->name);
                e = ERR_INVALID;
            }
            repl_filter_free(f);
        }
        if (!found && slots++ >= r->replicas_cap) {
            buf_addf(&why, "no room for region %s (at most %d)", g->name, REPL_MAX_REGIONS);
            e = ERR_INVALID;
        }
        if (!g->address || (strncmp(g->address, "tls+tcp://", 10) != 0 &&
                            !(r->insecure && strncmp(g->address, "tcp://", 6) == 0))) {
            buf_addf(&why, "region %s: address must be tls+tcp:// (or tcp:// with "
                           "replication.insecure)", g->name);
            e = ERR_INVALID;
        }
    }
    pthread_mutex_unlock(&r->cfg_mu);
    if (e)
        goto report;
    if (atomic_load(&r->primary) && filtered(self)) {
        buf_adds(&why, "this node is the primary: its own region may not become filtered");
        e = ERR_INVALID;
        goto report;
    }

    pthread_mutex_lock(&r->cfg_mu);
    for (size_t k = 0; k < r->nreplicas; k++) {
        struct replica *rp = &r->replicas[k];
        bool keep = false;
        for (size_t i = 0; i < n; i++)
            keep = keep || (&regions[i] != self && strcmp(regions[i].name, rp->name) == 0);
        if (!keep && atomic_exchange(&rp->active, false)) {
            list_add(&removed, rp->name);
            log_warn("REPL-REGION-REMOVED", "region=%s", rp->name);
        }
    }
    for (size_t i = 0; i < n && !e; i++) {
        const struct repl_region *g = &regions[i];
        if (g == self)
            continue;
        struct replica *rp = NULL;
        for (size_t k = 0; k < r->nreplicas; k++)
            if (strcmp(r->replicas[k].name, g->name) == 0)
                rp = &r->replicas[k];
        if (!rp) {
            rp = &r->replicas[r->nreplicas];
            memset(rp, 0, sizeof *rp);
            if ((e = repl_replica_init(r, rp, g)))
                break;
            atomic_store(&r->nreplicas, r->nreplicas + 1);
            if ((e = repl_replica_run(r, rp)))
                break;
            list_add(&added, g->name);
            log_warn("REPL-REGION-ADDED", "region=%s address=%s", g->name, g->address);
            continue;
        }
        bool was_active = atomic_load(&rp->active), what = false;
        if (!was_active) {
            /* back after a removal: its shipper has exited; start one again */
            if (rp->thread_started) {
                pthread_join(rp->thread, NULL);
                rp->thread_started = false;
            }
            atomic_store(&rp->active, true);
            if (pthread_create(&rp->thread, NULL, shipper_main, rp) != 0) {
                atomic_store(&rp->active, false);
                e = ERR_NOMEM;
                break;
            }
            rp->thread_started = true;
            list_add(&added, g->name);
            what = true;
        }
        pthread_mutex_lock(&rp->mu);
        bool moved = strcmp(rp->address, g->address) != 0;
        if (moved)
            str_copy(rp->address, sizeof rp->address, g->address);
        str_copy(rp->url, sizeof rp->url, g->url ? g->url : "");
        pthread_mutex_unlock(&rp->mu);
        if (moved)
            atomic_store(&rp->redial, true);
        struct filter *f = NULL;
        if ((e = repl_filter_new(&g->filter, &f)))
            break;
        if (strcmp(f->hash, rp_filter(rp)->hash) != 0) {
            if (rp->nfilters == REPL_MAX_FILTER_VERSIONS) {
                repl_filter_free(f);
                buf_addf(&why, "region %s: filter changed too often since the start "
                               "(restart to reload it again)", g->name);
                e = ERR_INVALID;
                break;
            }
            rp->filters[rp->nfilters++] = f;
            rp->filtered = filtered(g);
            atomic_store(&rp->filter, f);
            what = true;
            log_warn("REPL-REGION-FILTER", "region=%s filter=%s msg=\"the region is resynced "
                     "with its new filter\"", g->name, f->hash);
        } else {
            repl_filter_free(f);
        }
        if ((moved || what) && was_active)
            list_add(&changed, g->name);
    }
    pthread_mutex_unlock(&r->cfg_mu);
    if (!e)
        e = repl_set_primaries(r, regions, n);
    if (!e) {
        atomic_store(&r->nvoters, n);
        atomic_store(&r->self_filtered, filtered(self));
        atomic_store(&r->self_eligible, self->eligible && !filtered(self));
        repl_check_confirmed(r); /* fewer voters may make a majority */
        pthread_mutex_lock(&r->wake_mu);
        pthread_cond_broadcast(&r->wake_cv);
        pthread_mutex_unlock(&r->wake_mu);
    }
report:
    buf_addf(out, "{\"reloaded\":%s,\"added\":[%s],\"removed\":[%s],\"changed\":[%s],"
                  "\"regions\":%zu,\"error\":",
             e ? "false" : "true", added.ptr, removed.ptr, changed.ptr, n);
    buf_add_json_str(out, why.ptr, why.len);
    buf_addc(out, '}');
    log_info("REPL-RELOAD", "ok=%d regions=%zu added=[%s] removed=[%s] changed=[%s] error=\"%s\"",
             !e, n, added.ptr, removed.ptr, changed.ptr, why.ptr);
    buf_release(&added);
    buf_release(&removed);
    buf_release(&changed);
    buf_release(&why);
    return e;
}
