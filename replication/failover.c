/* Automatic failover through etcd (cluster.etcd). The primary holds one key,
 * <prefix>/primary, under a lease it keeps alive; it takes writes only while its
 * local deadline for that lease (the clock read before the grant or keepalive was
 * sent, plus the TTL) has not passed, which is never later than etcd's own expiry:
 * a primary cut off from etcd stops writing before anyone else can win the key.
 * When the key is gone, an eligible secondary campaigns for it (one etcd Txn: put
 * if absent); the winner promotes itself through the ordinary promotion, which
 * probes every region and gives the key back when an eligible region holds more
 * than it does, so the most advanced candidate ends up primary. etcd decides who
 * holds the key; nothing here votes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/clock.h"
#include "etcd.h"
#include "repl_int.h"
#include "../common/log.h"
#include "../common/banned.h"

struct failover {
    repl *r;
    etcd_client *c;
    pthread_t thread;
    bool started;
    char key[300];
    uint64_t ttl_ms;
    int64_t lease;                   /* 0: none */
    uint64_t lease_until;            /* the deadline of `lease` (etcd_now_ms clock) */
    _Atomic uint64_t valid_until;    /* writes allowed before this (0: not the holder) */
    _Atomic uint64_t elections, refusals, errors, losses;
    _Atomic bool stop;
    pthread_mutex_t mu;
    char holder[128]; /* the key's value as last read */
    bool seen_held;   /* the key was held by someone since this process started */
};

static void
set_holder(struct failover *f, slice v)
{
    pthread_mutex_lock(&f->mu);
    str_copy_slice(f->holder, sizeof f->holder, v);
    pthread_mutex_unlock(&f->mu);
}

static void
drop_lease(struct failover *f)
{
    if (f->lease && etcd_lease_revoke(f->c, f->lease) && f->lease_until > clock_mono_ms())
        atomic_fetch_add(&f->errors, 1);
    f->lease = 0;
    f->lease_until = 0;
}

/* ensure_lease grants a lease or keeps ours alive; false when we have none. */
/* deadline: what etcd_lease_* give is the send time plus the TTL; a margin for
 * clock-rate drift between this machine and the etcd members comes off. */
static uint64_t
deadline(struct failover *f, uint64_t until)
{
    uint64_t margin = f->ttl_ms / 10 + 100;
    return until > margin ? until - margin : 0;
}

static bool
ensure_lease(struct failover *f)
{
    int64_t ttl_s = (int64_t)(f->ttl_ms / 1000), left = 0, granted = 0;
    uint64_t until = 0;
    err e;
    if (f->lease) {
        e = etcd_lease_keepalive(f->c, f->lease, &left, &until);
        if (e == ERR_NOT_FOUND) {
            log_warn("REPL-ETCD-LEASE-LOST", "lease=%lld", (long long)f->lease);
            f->lease = 0;
            f->lease_until = 0;
        } else if (e) {
            atomic_fetch_add(&f->errors, 1);
            return f->lease_until > clock_mono_ms(); /* the old deadline still holds */
        } else {
            f->lease_until = deadline(f, until);
            return true;
        }
    }
    e = etcd_lease_grant(f->c, ttl_s, &f->lease, &granted, &until);
    if (e) {
        atomic_fetch_add(&f->errors, 1);
        f->lease = 0;
        return false;
    }
    f->lease_until = deadline(f, until);
    return true;
}

/* hold: this node is primary; it keeps (or takes) the key. */
static void
hold(struct failover *f)
{
    repl *r = f->r;
    if (!ensure_lease(f)) {
        atomic_store(&f->valid_until, 0);
        return;
    }
    bool won = false;
    buf holder = BUF_INIT;
    int64_t holder_rev = 0;
    slice me = slice_of_cstr(r->node_name);
    err e = etcd_campaign(f->c, slice_of_cstr(f->key), me, f->lease, &won, &holder,
                          &holder_rev);
    if (e) {
        atomic_fetch_add(&f->errors, 1);
        /* unknown: keep the deadline we had, never extend it */
        uint64_t v = atomic_load(&f->valid_until);
        if (v > f->lease_until)
            atomic_store(&f->valid_until, f->lease_until);
    } else if (won) {
        set_holder(f, me);
        if (!atomic_exchange(&f->valid_until, f->lease_until))
            log_info("REPL-ETCD-HOLDER", "key=%s lease=%lld ttl_ms=%llu", f->key,
                     (long long)f->lease, (unsigned long long)f->ttl_ms);
    } else {
        set_holder(f, buf_slice(&holder));
        if (atomic_exchange(&f->valid_until, 0) || !atomic_load(&f->losses))
            log_warn("REPL-ETCD-NOT-HOLDER", "key=%s holder=%s msg=\"another node holds the "
                     "primary key: not taking writes\"", f->key, holder.ptr);
        atomic_fetch_add(&f->losses, 1);
    }
    buf_release(&holder);
}

/* watch: this node is a secondary; when the key is gone it campaigns, and the
 * winner promotes itself (giving the key back when a better candidate exists). */
static void
watch(struct failover *f)
{
    repl *r = f->r;
    atomic_store(&f->valid_until, 0);
    buf v = BUF_INIT;
    int64_t rev = 0, lease = 0;
    err e = etcd_get(f->c, slice_of_cstr(f->key), &v, &rev, &lease);
    if (e == ERR_OK) {
        set_holder(f, buf_slice(&v));
        f->seen_held = true;
        if (f->lease)
            drop_lease(f);
        buf_release(&v);
        return;
    }
    buf_release(&v);
    if (e != ERR_NOT_FOUND) {
        atomic_fetch_add(&f->errors, 1);
        return;
    }
    set_holder(f, (slice){"", 0});
    pthread_mutex_lock(&r->smu);
    bool resyncing = r->resyncing;
    pthread_mutex_unlock(&r->smu);
    /* a lapse, not a cluster that is starting: only a key that was held can lapse (a
     * secondary started while no primary holds it waits for one, or for an
     * operator's georeg promote) */
    if (!r->self_eligible || resyncing || !f->seen_held)
        return;
    if (!ensure_lease(f))
        return;
    bool won = false;
    buf holder = BUF_INIT;
    int64_t hl = 0;
    slice me = slice_of_cstr(r->node_name);
    e = etcd_campaign(f->c, slice_of_cstr(f->key), me, f->lease, &won, &holder, &hl);
    buf_release(&holder);
    if (e || !won) {
        if (e)
            atomic_fetch_add(&f->errors, 1);
        drop_lease(f);
        return;
    }
    log_warn("REPL-ETCD-ELECTED", "key=%s msg=\"the primary's lease lapsed: promoting\"", f->key);
    buf out = BUF_INIT;
    e = repl_promote_as(r, PROMOTE_ELECTED, &out);
    if (e) {
        /* a region that may be primary holds more: give the key back to it */
        bool deleted = false;
        atomic_fetch_add(&f->refusals, 1);
        log_warn("REPL-ETCD-PROMOTE-REFUSED", "report=%s", out.ptr);
        if (etcd_delete_if_value(f->c, slice_of_cstr(f->key), me, &deleted))
            atomic_fetch_add(&f->errors, 1);
        drop_lease(f);
        buf_release(&out);
        usleep((useconds_t)(f->ttl_ms * 1000 / 2)); /* let the better one take it */
        return;
    }
    buf_release(&out);
    atomic_fetch_add(&f->elections, 1);
    set_holder(f, me);
    atomic_store(&f->valid_until, f->lease_until);
}

static void *
failover_main(void *arg)
{
    struct failover *f = arg;
    repl *r = f->r;
    uint64_t period = f->ttl_ms / 3 < 200 ? 200 : f->ttl_ms / 3;
    while (!atomic_load(&f->stop) && !atomic_load(&r->stopping)) {
        if (r->primary)
            hold(f);
        else
            watch(f);
        for (uint64_t slept = 0; slept < period && !atomic_load(&f->stop); slept += 50)
            usleep(50000);
    }
    return NULL;
}

err
failover_start(repl *r)
{
    struct failover *f = r->fo;
    if (!f)
        return ERR_OK;
    if (pthread_create(&f->thread, NULL, failover_main, f) != 0)
        return ERR_NOMEM;
    f->started = true;
    log_info("REPL-ETCD", "key=%s ttl_ms=%llu", f->key, (unsigned long long)f->ttl_ms);
    return ERR_OK;
}

err
failover_new(repl *r, const char *const *endpoints, size_t n, uint64_t ttl_ms,
             const char *prefix)
{
    if (!n)
        return ERR_OK;
    if (!r->cluster) {
        log_error("REPL-CONFIG", "error=\"cluster.etcd needs cluster.regions\"");
        return ERR_CONFIG;
    }
    if (ttl_ms < 2000 || ttl_ms > 60000 || ttl_ms % 1000) {
        log_error("REPL-CONFIG", "cluster.etcd.ttl_ms=%llu error=\"the lease TTL is whole "
                  "seconds from 2s to 60s\"", (unsigned long long)ttl_ms);
        return ERR_CONFIG;
    }
    struct failover *f = calloc(1, sizeof *f);
    if (!f)
        return ERR_NOMEM;
    f->r = r;
    f->ttl_ms = ttl_ms;
    pthread_mutex_init(&f->mu, NULL);
    snprintf(f->key, sizeof f->key, "%s/primary", prefix && *prefix ? prefix : "/georeg");
    /* each call is bounded well inside the TTL: a holder learns in time that it
     * could not renew */
    uint64_t timeout = ttl_ms / 4 < 500 ? 500 : ttl_ms / 4;
    err e = etcd_client_new(endpoints, n, timeout, &f->c);
    if (e) {
        pthread_mutex_destroy(&f->mu);
        free(f);
        log_error("REPL-CONFIG", "error=\"cluster.etcd.endpoints: %s\"", err_name(e));
        return ERR_CONFIG;
    }
    r->fo = f;
    return ERR_OK;
}

void
failover_stop(repl *r)
{
    struct failover *f = r->fo;
    if (!f || !f->started)
        return;
    atomic_store(&f->stop, true);
    pthread_join(f->thread, NULL);
    f->started = false;
}

void
failover_free(repl *r)
{
    struct failover *f = r->fo;
    if (!f)
        return;
    failover_stop(r);
    etcd_client_free(f->c);
    pthread_mutex_destroy(&f->mu);
    free(f);
    r->fo = NULL;
}

bool
failover_lease_ok(repl *r)
{
    struct failover *f = r->fo;
    return !f || atomic_load(&f->valid_until) > clock_mono_ms();
}

void
failover_json(repl *r, buf *b)
{
    struct failover *f = r->fo;
    if (!f) {
        buf_adds(b, ",\"etcd\":null");
        return;
    }
    uint64_t now = clock_mono_ms(), v = atomic_load(&f->valid_until);
    char holder[128];
    pthread_mutex_lock(&f->mu);
    str_copy(holder, sizeof holder, f->holder);
    pthread_mutex_unlock(&f->mu);
    buf_adds(b, ",\"etcd\":{\"key\":");
    buf_add_json_str(b, f->key, strlen(f->key));
    buf_adds(b, ",\"holder\":");
    buf_add_json_str(b, holder, strlen(holder));
    buf_addf(b, ",\"ttl_ms\":%llu,\"lease_valid\":%s,\"lease_left_ms\":%llu,\"elections\":%llu,"
                "\"refused_promotions\":%llu,\"lost_campaigns\":%llu,\"errors\":%llu}",
             (unsigned long long)f->ttl_ms, v > now ? "true" : "false",
             (unsigned long long)(v > now ? v - now : 0),
             (unsigned long long)atomic_load(&f->elections),
             (unsigned long long)atomic_load(&f->refusals),
             (unsigned long long)atomic_load(&f->losses),
             (unsigned long long)atomic_load(&f->errors));
}

void
failover_metrics(repl *r, buf *b)
{
    struct failover *f = r->fo;
    if (!f)
        return;
    buf_addf(b, "# HELP georeg_repl_etcd_lease_valid 1 while this primary holds the etcd key "
                "under a live lease\n# TYPE georeg_repl_etcd_lease_valid gauge\n"
                "georeg_repl_etcd_lease_valid %d\n"
                "# HELP georeg_repl_etcd_elections_total promotions after winning the etcd key\n"
                "# TYPE georeg_repl_etcd_elections_total counter\n"
                "georeg_repl_etcd_elections_total %llu\n"
                "# HELP georeg_repl_etcd_errors_total etcd calls that failed\n"
                "# TYPE georeg_repl_etcd_errors_total counter\n"
                "georeg_repl_etcd_errors_total %llu\n",
             failover_lease_ok(r) && r->primary ? 1 : 0,
             (unsigned long long)atomic_load(&f->elections),
             (unsigned long long)atomic_load(&f->errors));
}
