/* Synchronous commits on the primary (issue 9 section 5): a write waits until the
 * required replicas (a count, or every named one) acknowledged an applied sequence at
 * or past its own, for at most the timeout; then the primary degrades to asynchronous,
 * visibly, until those replicas have acknowledged its head, and returns to sync mode
 * by itself. Waiters are reserved before the write, armed after it and woken from the
 * shippers' ack path; nothing here blocks, sleeps or starts a thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/clock.h"
#include "repl_int.h"
#include "../common/log.h"
#include "../common/banned.h"

/* A write waiting for acks. Lives from repl_sync_waiter_new to repl_sync_waiter_free;
 * while listed (pending and armed) it is in sync.armed, under sync.mu. */
struct repl_sync_waiter {
    struct repl_sync_waiter *prev, *next;
    bool listed;
    bool done; /* the required replicas acknowledged seq */
    uint64_t seq, start_ms, deadline_ms;
    repl_sync_wake_cb wake;
    void *arg;
};

static const char *const mode_names[] = {
    [SYNC_OFF] = "off",
    [SYNC_ON] = "sync",
    [SYNC_DEGRADED] = "degraded",
};

static void
list_add(struct sync_state *s, struct repl_sync_waiter *w)
{
    if (w->listed)
        return;
    w->prev = NULL;
    w->next = s->armed;
    if (s->armed)
        s->armed->prev = w;
    s->armed = w;
    w->listed = true;
}

static void
list_del(struct sync_state *s, struct repl_sync_waiter *w)
{
    if (!w->listed)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        s->armed = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->prev = w->next = NULL;
    w->listed = false;
}

/* required_text writes the requirement for log lines: "2" or "us-east,ap-south". */
/* counts_for_sync: a replica whose acknowledgement makes a write safe: it holds
 * everything (no filter) and, in a cluster, may become primary. A filtered replica
 * acknowledges writes it filters out without holding them. */
static bool
counts_for_sync(repl *r, const struct replica *rp)
{
    return atomic_load(&rp->active) && !rp->filtered &&
           (!r->cluster || repl_may_be_primary(r, rp->name));
}

static void
required_text(const struct sync_state *s, char *out, size_t n)
{
    if (!s->nnames) {
        snprintf(out, n, "%u", s->need);
        return;
    }
    size_t len = 0;
    out[0] = '\0';
    for (size_t i = 0; i < s->nnames && len + 1 < n; i++) {
        int k = snprintf(out + len, n - len, "%s%s", i ? "," : "", s->names[i]);
        if (k < 0 || (size_t)k >= n - len)
            break;
        len += (size_t)k;
    }
}

err
sync_init(repl *r, const struct repl_sync_options *o)
{
    struct sync_state *s = &r->sync;
    char req[512];
    pthread_mutex_init(&s->mu, NULL);
    s->inited = true;
    atomic_store(&s->mode, SYNC_OFF);
    s->max_waiters = o->max_waiters ? o->max_waiters : REPL_SYNC_MAX_WAITERS;
    s->timeout_ms = o->timeout_ms;
    if (!o->replicas && !o->nnames)
        return ERR_OK;
    if (o->replicas && o->nnames) {
        log_error("REPL-CONFIG", "error=\"replication.sync.replicas is either a count or a list "
                                 "of replica names, not both\"");
        return ERR_CONFIG;
    }
    if (!o->timeout_ms || o->timeout_ms > REPL_SYNC_MAX_TIMEOUT_MS) {
        log_error("REPL-CONFIG",
                  "replication.sync.timeout_ms=%llu error=\"replication.sync.timeout must be "
                  "more than 0 and at most 60s\"",
                  (unsigned long long)o->timeout_ms);
        return ERR_CONFIG;
    }
    s->need = o->replicas;
    if (o->nnames) {
        s->names = calloc(o->nnames, sizeof *s->names);
        s->idx = calloc(o->nnames, sizeof *s->idx);
        if (!s->names || !s->idx)
            return ERR_NOMEM;
        for (size_t i = 0; i < o->nnames; i++) {
            const char *nm = o->names[i] ? o->names[i] : "";
            if (!nm[0] || strlen(nm) >= sizeof s->names[0]) {
                log_error("REPL-CONFIG", "replication.sync.replicas=\"%.80s\" error=\"not a "
                                         "replica name\"",
                          nm);
                return ERR_CONFIG;
            }
            for (size_t j = 0; j < i; j++) {
                if (strcmp(s->names[j], nm) == 0) {
                    log_error("REPL-CONFIG", "replication.sync.replicas=%s error=\"replica "
                                             "named twice\"",
                              nm);
                    return ERR_CONFIG;
                }
            }
            str_copy(s->names[i], sizeof s->names[i], nm);
        }
        s->nnames = o->nnames;
    }
    required_text(s, req, sizeof req);
    if (!r->primary && !r->cluster) {
        /* a secondary keeps the setting for when it is made primary (a restart with
         * replication.role: primary validates it against its replicas; in a cluster
         * description every node knows its would-be replicas, so it is checked now
         * and applies from the promotion on) */
        log_info("REPL-SYNC", "required=%s timeout_ms=%llu mode=off reason=secondary", req,
                 (unsigned long long)s->timeout_ms);
        return ERR_OK;
    }
    if (r->nreplicas > SYNC_MAX_REPLICAS) {
        log_error("REPL-CONFIG", "error=\"replication.sync supports at most %d replicas\"",
                  SYNC_MAX_REPLICAS);
        return ERR_CONFIG;
    }
    size_t countable = 0;
    for (size_t j = 0; j < r->nreplicas; j++)
        countable += counts_for_sync(r, &r->replicas[j]);
    if (s->need > countable) {
        log_error("REPL-CONFIG",
                  "replication.sync.replicas=%u replicas=%zu error=\"more acknowledgements "
                  "required than replicas that could take over (unfiltered%s)\"",
                  s->need, countable, r->cluster ? ", primary_eligible" : "");
        return ERR_CONFIG;
    }
    for (size_t i = 0; i < s->nnames; i++) {
        size_t k = r->nreplicas;
        for (size_t j = 0; j < r->nreplicas; j++)
            if (strcmp(r->replicas[j].name, s->names[i]) == 0)
                k = j;
        if (k == r->nreplicas && r->cluster && strcmp(s->names[i], r->node_name) == 0) {
            /* one description for every node: while this node is primary its own
             * name is not a replica and asks for nothing */
            s->idx[i] = SIZE_MAX;
            continue;
        }
        if (k == r->nreplicas) {
            log_error("REPL-CONFIG", "replication.sync.replicas=%s error=\"no replica of that "
                                     "name in replication.replicas\"",
                      s->names[i]);
            return ERR_CONFIG;
        }
        s->idx[i] = k;
        const struct filter *f = rp_filter(&r->replicas[k]);
        if (f->include.n || f->exclude.n || f->include_tags.n || f->exclude_tags.n)
            log_warn("REPL-SYNC-FILTERED",
                     "replica=%s msg=\"a filtered replica acknowledges writes it filters out "
                     "without holding them\"",
                     s->names[i]);
    }
    atomic_store(&s->mode, SYNC_ON);
    log_info("REPL-SYNC", "required=%s timeout_ms=%llu max_waiters=%u mode=sync", req,
             (unsigned long long)s->timeout_ms, s->max_waiters);
    return ERR_OK;
}

void
sync_release(repl *r)
{
    struct sync_state *s = &r->sync;
    if (!s->inited)
        return;
    free(s->names);
    free(s->idx);
    s->names = NULL;
    s->idx = NULL;
    pthread_mutex_destroy(&s->mu);
    s->inited = false;
}

/* acked_of: what a replica counts for. One being rebuilt from a snapshot counts for
 * nothing: its content is partial, and the applied seq it reported at the handshake
 * (that made the shipper resync it, e.g. ahead of this primary) is not ours. */
static uint64_t
acked_of(struct replica *rp)
{
    pthread_mutex_lock(&rp->mu);
    uint64_t a = rp->state == RS_RESYNCING ? 0 : rp->acked_seq;
    pthread_mutex_unlock(&rp->mu);
    return a;
}

/* sync_point: the highest sequence the requirement holds for, as of now (under mu). */
static uint64_t
sync_point(repl *r)
{
    struct sync_state *s = &r->sync;
    if (s->nnames) {
        uint64_t p = UINT64_MAX;
        for (size_t i = 0; i < s->nnames; i++) {
            if (s->idx[i] == SIZE_MAX)
                continue; /* this node itself */
            uint64_t a = acked_of(&r->replicas[s->idx[i]]);
            if (a < p)
                p = a;
        }
        return p;
    }
    uint64_t a[SYNC_MAX_REPLICAS];
    size_t n = r->nreplicas;
    for (size_t i = 0; i < n; i++)
        a[i] = counts_for_sync(r, &r->replicas[i]) ? acked_of(&r->replicas[i]) : 0;
    /* the need-th highest acknowledged sequence */
    uint64_t best = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned at_least = 0;
        for (size_t j = 0; j < n; j++)
            at_least += a[j] >= a[i];
        if (at_least >= s->need && a[i] > best)
            best = a[i];
    }
    return best;
}

unsigned
repl_sync_replicated(repl *r, uint64_t seq)
{
    unsigned n = 0;
    if (!r->primary)
        return 0;
    for (size_t i = 0; i < r->nreplicas; i++)
        n += counts_for_sync(r, &r->replicas[i]) && acked_of(&r->replicas[i]) >= seq;
    return n;
}

err
repl_sync_waiter_new(repl *r, repl_sync_waiter **out)
{
    struct sync_state *s = &r->sync;
    *out = NULL;
    if (!s->inited || atomic_load(&s->mode) == SYNC_OFF)
        return ERR_OK;
    pthread_mutex_lock(&s->mu);
    if (s->nwaiters >= s->max_waiters) {
        s->refused++;
        pthread_mutex_unlock(&s->mu);
        return ERR_TOOMANYREQUESTS;
    }
    struct repl_sync_waiter *w = calloc(1, sizeof *w);
    if (w)
        s->nwaiters++;
    pthread_mutex_unlock(&s->mu);
    if (!w)
        return ERR_NOMEM;
    *out = w;
    return ERR_OK;
}

void
repl_sync_arm(repl *r, repl_sync_waiter *w, uint64_t seq, repl_sync_wake_cb wake, void *arg)
{
    struct sync_state *s = &r->sync;
    uint64_t now = clock_wall_ms();
    pthread_mutex_lock(&s->mu);
    w->seq = seq;
    w->start_ms = now;
    w->deadline_ms = now + s->timeout_ms;
    w->wake = wake;
    w->arg = arg;
    if (atomic_load(&s->mode) == SYNC_ON) {
        if (sync_point(r) >= seq)
            w->done = true;
        else
            list_add(s, w);
    }
    pthread_mutex_unlock(&s->mu);
}

/* degrade: w waited past its deadline. Every other waiter is answered now too: while
 * degraded nothing waits. Under mu; the caller logs (log_degraded) after unlocking. */
static void
degrade(repl *r, uint64_t now)
{
    struct sync_state *s = &r->sync;
    atomic_store(&s->mode, SYNC_DEGRADED);
    s->degraded_since_ms = now;
    s->timeouts++;
    while (s->armed) {
        struct repl_sync_waiter *o = s->armed;
        list_del(s, o);
        if (o->wake)
            o->wake(o->arg);
    }
}

static void
log_degraded(repl *r, const struct repl_sync_waiter *w, uint64_t now)
{
    char req[512];
    required_text(&r->sync, req, sizeof req); /* fixed after sync_init */
    log_warn("REPL-SYNC-DEGRADED",
             "seq=%llu waited_ms=%llu timeout_ms=%llu required=%s replicated=%u "
             "msg=\"writes are acknowledged without waiting for replicas until they catch up\"",
             (unsigned long long)w->seq, (unsigned long long)(now - w->start_ms),
             (unsigned long long)r->sync.timeout_ms, req, repl_sync_replicated(r, w->seq));
}

enum repl_sync_state
repl_sync_poll(repl *r, repl_sync_waiter *w, uint64_t *wait_ms, unsigned *replicated)
{
    struct sync_state *s = &r->sync;
    enum repl_sync_state st;
    bool degraded = false;
    uint64_t now = clock_wall_ms();
    pthread_mutex_lock(&s->mu);
    if (w->done) {
        st = REPL_SYNC_DONE;
    } else if (atomic_load(&s->mode) != SYNC_ON) {
        st = REPL_SYNC_ASYNC;
    } else if (sync_point(r) >= w->seq) {
        w->done = true;
        st = REPL_SYNC_DONE;
    } else if (now >= w->deadline_ms) {
        list_del(s, w);
        degrade(r, now);
        degraded = true;
        st = REPL_SYNC_ASYNC;
    } else {
        list_add(s, w); /* armed while degraded, and sync came back since */
        if (wait_ms)
            *wait_ms = w->deadline_ms - now;
        st = REPL_SYNC_PENDING;
    }
    if (st != REPL_SYNC_PENDING)
        list_del(s, w);
    pthread_mutex_unlock(&s->mu);
    if (degraded)
        log_degraded(r, w, now);
    if (replicated)
        *replicated = repl_sync_replicated(r, w->seq);
    return st;
}

void
repl_sync_waiter_free(repl *r, repl_sync_waiter *w)
{
    struct sync_state *s = &r->sync;
    if (!w)
        return;
    pthread_mutex_lock(&s->mu);
    list_del(s, w);
    s->nwaiters--;
    pthread_mutex_unlock(&s->mu);
    free(w);
}

void
sync_on_ack(repl *r)
{
    struct sync_state *s = &r->sync;
    if (!s->inited)
        return;
    enum sync_mode m = atomic_load(&s->mode);
    if (m == SYNC_OFF)
        return;
    /* the head is read before taking mu: store_log_head waits for a commit in progress,
     * and the HTTP loop takes mu to poll */
    uint64_t head = m == SYNC_DEGRADED ? store_log_head(r->store) : 0;
    uint64_t degraded_ms = 0;
    bool restored = false;
    pthread_mutex_lock(&s->mu);
    if (atomic_load(&s->mode) == SYNC_ON && !s->armed) {
        pthread_mutex_unlock(&s->mu); /* nothing waits */
        return;
    }
    uint64_t p = sync_point(r);
    if (atomic_load(&s->mode) == SYNC_DEGRADED) {
        if (m == SYNC_DEGRADED && p >= head) {
            atomic_store(&s->mode, SYNC_ON);
            s->restores++;
            restored = true;
            degraded_ms = clock_wall_ms() - s->degraded_since_ms;
            s->degraded_since_ms = 0;
        }
    } else {
        struct repl_sync_waiter *w = s->armed, *next;
        for (; w; w = next) {
            next = w->next;
            if (w->seq <= p) {
                w->done = true;
                list_del(s, w);
                if (w->wake)
                    w->wake(w->arg);
            }
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (restored) {
        char req[512];
        required_text(s, req, sizeof req);
        log_info("REPL-SYNC-RESTORED", "required=%s acked=%llu head=%llu degraded_ms=%llu", req,
                 (unsigned long long)p, (unsigned long long)head,
                 (unsigned long long)degraded_ms);
    }
}

void
sync_json(repl *r, buf *b)
{
    struct sync_state *s = &r->sync;
    if (!s->inited) {
        buf_adds(b, ",\"sync\":{\"required\":0,\"mode\":\"off\"}");
        return;
    }
    pthread_mutex_lock(&s->mu);
    enum sync_mode m = atomic_load(&s->mode);
    buf_adds(b, ",\"sync\":{\"required\":");
    if (s->nnames) {
        buf_addc(b, '[');
        for (size_t i = 0; i < s->nnames; i++) {
            if (i)
                buf_addc(b, ',');
            buf_add_json_str(b, s->names[i], strlen(s->names[i]));
        }
        buf_addc(b, ']');
    } else {
        buf_addf(b, "%u", s->need);
    }
    buf_addf(b, ",\"timeout_ms\":%llu,\"mode\":\"%s\"", (unsigned long long)s->timeout_ms,
             mode_names[m]);
    json_time(b, "degraded_since", m == SYNC_DEGRADED ? s->degraded_since_ms : 0);
    buf_addf(b,
             ",\"timeouts\":%llu,\"restores\":%llu,\"waiting\":%u,\"max_waiters\":%u,"
             "\"refused\":%llu}",
             (unsigned long long)s->timeouts, (unsigned long long)s->restores, s->nwaiters,
             s->max_waiters, (unsigned long long)s->refused);
    pthread_mutex_unlock(&s->mu);
}

void
sync_metrics(repl *r, buf *b)
{
    struct sync_state *s = &r->sync;
    uint64_t timeouts = 0, refused = 0, restores = 0;
    unsigned waiting = 0;
    enum sync_mode m = SYNC_OFF;
    if (s->inited) {
        pthread_mutex_lock(&s->mu);
        m = atomic_load(&s->mode);
        timeouts = s->timeouts;
        refused = s->refused;
        restores = s->restores;
        waiting = s->nwaiters;
        pthread_mutex_unlock(&s->mu);
    }
    buf_addf(b,
             "# HELP georeg_repl_sync_degraded 1 while synchronous commits are degraded to "
             "asynchronous\n# TYPE georeg_repl_sync_degraded gauge\n"
             "georeg_repl_sync_degraded %d\n",
             m == SYNC_DEGRADED);
    buf_addf(b,
             "# HELP georeg_repl_sync_enabled 1 while writes wait for replicas (sync mode)\n"
             "# TYPE georeg_repl_sync_enabled gauge\ngeoreg_repl_sync_enabled %d\n",
             m == SYNC_ON);
    buf_addf(b,
             "# HELP georeg_repl_sync_timeouts_total writes whose wait for replicas timed out\n"
             "# TYPE georeg_repl_sync_timeouts_total counter\n"
             "georeg_repl_sync_timeouts_total %llu\n",
             (unsigned long long)timeouts);
    buf_addf(b,
             "# HELP georeg_repl_sync_restores_total returns from degraded to sync mode\n"
             "# TYPE georeg_repl_sync_restores_total counter\n"
             "georeg_repl_sync_restores_total %llu\n",
             (unsigned long long)restores);
    buf_addf(b,
             "# HELP georeg_repl_sync_waiters writes waiting for replica acknowledgements\n"
             "# TYPE georeg_repl_sync_waiters gauge\ngeoreg_repl_sync_waiters %u\n",
             waiting);
    buf_addf(b,
             "# HELP georeg_repl_sync_refused_total writes refused (429) because too many "
             "waited\n# TYPE georeg_repl_sync_refused_total counter\n"
             "georeg_repl_sync_refused_total %llu\n",
             (unsigned long long)refused);
}
