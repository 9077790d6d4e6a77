/* The history of promotions: which epoch wrote which sequence numbers. Each
 * promotion is a signed record (epoch, start seq, node); a node keeps the records it
 * has verified, oldest first, in its metadata. Two nodes agree on seq s when the same
 * epoch wrote s in both histories (one writer per epoch), so the point where their
 * logs fork is the first boundary where the epochs differ, like Raft's log matching
 * or PostgreSQL's timelines. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/clock.h"
#include "repl_int.h"
#include "../common/log.h"
#include "../common/banned.h"

#define HISTORY_KEY "repl/history"
#define KNOWN_KEY "repl/known"

void
hist_init(struct history *h)
{
    memset(h, 0, sizeof *h);
    h->base_epoch = 1;
    for (size_t i = 0; i < REPL_MAX_HISTORY; i++) {
        buf_init(&h->rec[i].cert);
        buf_init(&h->rec[i].sig);
    }
}

void
hist_release(struct history *h)
{
    for (size_t i = 0; i < REPL_MAX_HISTORY; i++) {
        buf_release(&h->rec[i].cert);
        buf_release(&h->rec[i].sig);
    }
    h->n = 0;
}

static err
rec_copy(struct hist_rec *d, const struct hist_rec *s)
{
    d->epoch = s->epoch;
    d->start_seq = s->start_seq;
    d->time_ms = s->time_ms;
    str_copy(d->node, sizeof d->node, s->node);
    buf_reset(&d->cert);
    buf_reset(&d->sig);
    if (buf_add(&d->cert, s->cert.ptr, s->cert.len) || buf_add(&d->sig, s->sig.ptr, s->sig.len))
        return ERR_NOMEM;
    return ERR_OK;
}

err
hist_copy(struct history *d, const struct history *s)
{
    d->base_epoch = s->base_epoch;
    d->n = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (rec_copy(&d->rec[i], &s->rec[i]))
            return ERR_NOMEM;
        d->n++;
    }
    return ERR_OK;
}

uint64_t
hist_last_epoch(const struct history *h)
{
    return h->n ? h->rec[h->n - 1].epoch : h->base_epoch;
}

/* rec_at: the record whose epoch wrote seq in h (NULL: the base epoch). */
static const struct hist_rec *
rec_at(const struct history *h, uint64_t seq)
{
    const struct hist_rec *r = NULL;
    for (size_t i = 0; i < h->n && h->rec[i].start_seq <= seq; i++)
        r = &h->rec[i];
    return r;
}

static bool
same_writer(const struct history *a, const struct history *b, uint64_t seq)
{
    const struct hist_rec *x = rec_at(a, seq), *y = rec_at(b, seq);
    if (!x || !y)
        return !x && !y && a->base_epoch == b->base_epoch;
    /* one writer per epoch, but two promotions to one epoch are possible (two
     * operators at once): the same epoch only counts with the same record */
    return x->epoch == y->epoch && x->start_seq == y->start_seq && strcmp(x->node, y->node) == 0;
}

uint64_t
hist_epoch_at(const struct history *h, uint64_t seq)
{
    uint64_t e = h->base_epoch;
    for (size_t i = 0; i < h->n && h->rec[i].start_seq <= seq; i++)
        e = h->rec[i].epoch;
    return e;
}

const struct hist_rec *
hist_find(const struct history *h, uint64_t epoch)
{
    for (size_t i = 0; i < h->n; i++)
        if (h->rec[i].epoch == epoch)
            return &h->rec[i];
    return NULL;
}

uint64_t
hist_fork(const struct history *a, const struct history *b, uint64_t limit)
{
    /* the epochs can only differ from a boundary of either history on */
    uint64_t at = 1;
    if (!same_writer(a, b, at))
        return 0;
    for (;;) {
        uint64_t next = UINT64_MAX;
        for (size_t i = 0; i < a->n; i++)
            if (a->rec[i].start_seq > at && a->rec[i].start_seq < next)
                next = a->rec[i].start_seq;
        for (size_t i = 0; i < b->n; i++)
            if (b->rec[i].start_seq > at && b->rec[i].start_seq < next)
                next = b->rec[i].start_seq;
        if (next == UINT64_MAX || next > limit)
            return limit;
        if (!same_writer(a, b, next))
            return next - 1;
        at = next;
    }
}

/* ---- protobuf ---- */

err
hist_rec_from_pb(const Georeg__Repl__Promotion *p, struct hist_rec *rec)
{
    if (!p->node || !p->node[0] || strlen(p->node) >= sizeof rec->node || !p->epoch ||
        !p->start_seq || p->cert.len > (16u << 10) || p->signature.len > 1024)
        return ERR_PROTOCOL;
    rec->epoch = p->epoch;
    rec->start_seq = p->start_seq;
    rec->time_ms = p->time_ms;
    str_copy(rec->node, sizeof rec->node, p->node);
    buf_reset(&rec->cert);
    buf_reset(&rec->sig);
    if (buf_add(&rec->cert, p->cert.data, p->cert.len) ||
        buf_add(&rec->sig, p->signature.data, p->signature.len))
        return ERR_NOMEM;
    return ERR_OK;
}

err
hist_pb_new(const struct history *h, struct hist_pb *out)
{
    out->n = h->n;
    out->items = calloc(h->n ? h->n : 1, sizeof *out->items);
    out->ptrs = calloc(h->n ? h->n : 1, sizeof *out->ptrs);
    if (!out->items || !out->ptrs) {
        hist_pb_free(out);
        return ERR_NOMEM;
    }
    for (size_t i = 0; i < h->n; i++) {
        Georeg__Repl__Promotion *p = &out->items[i];
        const struct hist_rec *r = &h->rec[i];
        georeg__repl__promotion__init(p);
        p->epoch = r->epoch;
        p->start_seq = r->start_seq;
        p->time_ms = r->time_ms;
        p->node = (char *)r->node;
        p->cert.data = (uint8_t *)r->cert.ptr;
        p->cert.len = r->cert.len;
        p->signature.data = (uint8_t *)r->sig.ptr;
        p->signature.len = r->sig.len;
        out->ptrs[i] = p;
    }
    return ERR_OK;
}

void
hist_pb_free(struct hist_pb *p)
{
    free(p->items);
    free(p->ptrs);
    p->items = NULL;
    p->ptrs = NULL;
    p->n = 0;
}

/* ---- persistence (the caller holds r->hmu) ----
 * Two lists: hist, the history of this node's own log (what epochs wrote it: its
 * own promotions, or the history of the primary it follows, taken once that
 * primary has shown the log agrees), and known, verified promotions newer than
 * that (learned from peers; they raise the epoch and are passed on, so that a
 * replaced primary can verify that it was). */

static err
load_key(repl *r, const char *key, struct history *out)
{
    buf v = BUF_INIT;
    err e = store_meta_get(r->store, key, &v);
    if (e == ERR_NOT_FOUND) {
        buf_release(&v);
        return ERR_OK;
    }
    if (e) {
        buf_release(&v);
        return e;
    }
    Georeg__Repl__History *h =
        georeg__repl__history__unpack(NULL, v.len, (const uint8_t *)v.ptr);
    buf_release(&v);
    if (!h) {
        log_error("REPL-HISTORY", "key=%s error=\"stored history does not decode\"", key);
        return ERR_IO;
    }
    e = ERR_OK;
    out->n = 0;
    for (size_t i = 0; i < h->n_records && i < REPL_MAX_HISTORY; i++) {
        if ((e = hist_rec_from_pb(h->records[i], &out->rec[out->n])))
            break;
        out->n++;
    }
    georeg__repl__history__free_unpacked(h, NULL);
    return e;
}

static err
save_key(repl *r, const char *key, const struct history *src)
{
    struct hist_pb pb;
    err e = hist_pb_new(src, &pb);
    if (e)
        return e;
    Georeg__Repl__History h = GEOREG__REPL__HISTORY__INIT;
    h.n_records = pb.n;
    h.records = pb.ptrs;
    size_t n = georeg__repl__history__get_packed_size(&h);
    uint8_t *b = malloc(n ? n : 1);
    if (!b) {
        hist_pb_free(&pb);
        return ERR_NOMEM;
    }
    georeg__repl__history__pack(&h, b);
    e = store_meta_put(r->store, key, b, n);
    free(b);
    hist_pb_free(&pb);
    return e;
}

err
hist_load(repl *r)
{
    err e = load_key(r, HISTORY_KEY, &r->hist);
    if (!e)
        e = load_key(r, KNOWN_KEY, &r->known);
    return e;
}

err
hist_save(repl *r)
{
    err e = save_key(r, HISTORY_KEY, &r->hist);
    if (!e)
        e = save_key(r, KNOWN_KEY, &r->known);
    return e;
}

/* hist_append adds rec (already checked) at the end of h, dropping the oldest
 * record when full (its epoch becomes the base of what is older). */
static err
hist_append(struct history *h, const struct hist_rec *rec)
{
    if (h->n == REPL_MAX_HISTORY) {
        h->base_epoch = h->rec[0].epoch;
        struct hist_rec first = h->rec[0];
        memmove(&h->rec[0], &h->rec[1], (REPL_MAX_HISTORY - 1) * sizeof h->rec[0]);
        h->rec[REPL_MAX_HISTORY - 1] = first; /* reuse its buffers */
        h->n--;
    }
    err e = rec_copy(&h->rec[h->n], rec);
    if (e)
        return e;
    h->n++;
    return ERR_OK;
}

/* newest_epoch_locked: the newest epoch we hold a record of. */
static uint64_t
newest_epoch_locked(repl *r)
{
    uint64_t a = hist_last_epoch(&r->hist), b = r->known.n ? hist_last_epoch(&r->known) : 0;
    return a > b ? a : b;
}

static const struct hist_rec *
find_any_locked(repl *r, uint64_t epoch)
{
    const struct hist_rec *h = hist_find(&r->hist, epoch);
    return h ? h : hist_find(&r->known, epoch);
}

/* prune_known_locked drops known records no newer than the log history. */
static void
prune_known_locked(repl *r)
{
    uint64_t last = hist_last_epoch(&r->hist);
    size_t k = 0;
    for (size_t i = 0; i < r->known.n; i++) {
        if (r->known.rec[i].epoch <= last)
            continue;
        if (k != i) {
            struct hist_rec t = r->known.rec[k];
            r->known.rec[k] = r->known.rec[i];
            r->known.rec[i] = t;
        }
        k++;
    }
    r->known.n = k;
}

/* ---- learning records from peers ---- */

bool
repl_may_be_primary(repl *r, const char *name)
{
    pthread_mutex_lock(&r->cfg_mu);
    bool ok = !r->nprimaries;
    for (size_t i = 0; i < r->nprimaries && !ok; i++)
        ok = strcmp(r->primaries[i], name) == 0;
    pthread_mutex_unlock(&r->cfg_mu);
    return ok;
}

int
repl_learn(repl *r, Georeg__Repl__Promotion *const *recs, size_t n, const char *from,
           const char **why)
{
    int learned = 0;
    *why = "";
    if (n > 2 * REPL_MAX_HISTORY) {
        *why = "history longer than any node keeps";
        return -1;
    }
    struct hist_rec rec;
    memset(&rec, 0, sizeof rec);
    buf_init(&rec.cert);
    buf_init(&rec.sig);
    pthread_mutex_lock(&r->hmu);
    for (size_t i = 0; i < n; i++) {
        if (hist_rec_from_pb(recs[i], &rec)) {
            *why = "malformed promotion record";
            learned = -1;
            break;
        }
        const struct hist_rec *have = find_any_locked(r, rec.epoch);
        if (have) {
            if (strcmp(have->node, rec.node) != 0 || have->start_seq != rec.start_seq) {
                /* two promotions to one epoch: the first one verified here stands */
                *why = "a different promotion to an epoch this node already knows";
                log_warn("REPL-HISTORY-CONFLICT",
                         "from=%s epoch=%llu ours=%s@%llu theirs=%s@%llu", from,
                         (unsigned long long)rec.epoch, have->node,
                         (unsigned long long)have->start_seq, rec.node,
                         (unsigned long long)rec.start_seq);
                atomic_fetch_add(&r->history_conflicts, 1);
                learned = -1;
                break;
            }
            continue;
        }
        uint64_t last = newest_epoch_locked(r);
        uint64_t mine = atomic_load(&r->epoch);
        if (rec.epoch <= last)
            continue; /* another branch's past: only the fork point cares, and the
                       * primary computes that from our log's history */
        if (mine < last)
            mine = last;
        if (rec.epoch > mine + REPL_MAX_EPOCH_JUMP) {
            *why = "promotion epoch jumps too far";
            learned = -1;
            break;
        }
        if (!repl_may_be_primary(r, rec.node)) {
            *why = "promotion of a node that may not be primary";
            learned = -1;
            break;
        }
        if (!wire_record_verify(r, &rec, why)) {
            learned = -1;
            break;
        }
        if (hist_append(&r->known, &rec) || hist_save(r)) {
            *why = "cannot store the history";
            learned = -1;
            break;
        }
        wire_epoch_adopt(r, rec.epoch, rec.node);
        log_info("REPL-PROMOTION-LEARNED", "from=%s epoch=%llu node=%s start_seq=%llu", from,
                 (unsigned long long)rec.epoch, rec.node, (unsigned long long)rec.start_seq);
        learned = 1;
    }
    pthread_mutex_unlock(&r->hmu);
    buf_release(&rec.cert);
    buf_release(&rec.sig);
    if (learned < 0) {
        char d[200];
        snprintf(d, sizeof d, "history from %.60s: %s", from, *why);
        repl_refuse(r, REFUSE_EPOCH, from, d);
    }
    return learned;
}

err
repl_take_history(repl *r, const struct history *t, const char *from)
{
    err e = ERR_OK;
    const char *why = "";
    pthread_mutex_lock(&r->hmu);
    for (size_t i = 0; i < t->n && !e; i++) {
        const struct hist_rec *rec = &t->rec[i];
        if (i && (rec->epoch <= t->rec[i - 1].epoch || rec->start_seq < t->rec[i - 1].start_seq)) {
            why = "records out of order";
            e = ERR_PROTOCOL;
            break;
        }
        const struct hist_rec *have = find_any_locked(r, rec->epoch);
        bool same = have && have->start_seq == rec->start_seq &&
                    strcmp(have->node, rec->node) == 0;
        if (!same && (!repl_may_be_primary(r, rec->node) || !wire_record_verify(r, rec, &why))) {
            if (!*why)
                why = "promotion of a node that may not be primary";
            e = ERR_PROTOCOL;
        }
    }
    bool changed = !e && (t->n != r->hist.n || hist_fork(t, &r->hist, UINT64_MAX - 1) !=
                                                  UINT64_MAX - 1);
    if (changed) {
        /* this node's log is the primary's now (it streams into it only once the fork
         * point is behind what we hold, or rebuilds it): its history describes ours */
        struct history *old = malloc(sizeof *old);
        if (!old) {
            e = ERR_NOMEM;
        } else {
            hist_init(old);
            e = hist_copy(old, &r->hist);
            if (!e)
                e = hist_copy(&r->hist, t);
            if (!e) {
                prune_known_locked(r);
                e = hist_save(r);
            }
            if (e && hist_copy(&r->hist, old))
                log_error("REPL-HISTORY", "error=\"cannot restore the history\"");
            hist_release(old);
            free(old);
        }
        if (!e)
            log_info("REPL-HISTORY-TAKEN", "from=%s records=%zu last_epoch=%llu", from, t->n,
                     (unsigned long long)hist_last_epoch(t));
    }
    uint64_t last = newest_epoch_locked(r);
    pthread_mutex_unlock(&r->hmu);
    if (!e)
        wire_epoch_adopt(r, last, from);
    else if (*why)
        log_warn("REPL-HISTORY-REFUSED", "from=%s why=\"%s\"", from, why);
    return e;
}

err
repl_history_add_own(repl *r, uint64_t epoch, uint64_t start_seq)
{
    struct hist_rec rec;
    memset(&rec, 0, sizeof rec);
    buf_init(&rec.cert);
    buf_init(&rec.sig);
    rec.epoch = epoch;
    rec.start_seq = start_seq;
    rec.time_ms = clock_wall_ms();
    str_copy(rec.node, sizeof rec.node, r->node_name);
    err e = wire_record_sign(r, &rec);
    if (!e) {
        pthread_mutex_lock(&r->hmu);
        if (epoch <= newest_epoch_locked(r)) {
            e = ERR_EPOCH_STALE;
        } else if (!(e = hist_append(&r->hist, &rec))) {
            prune_known_locked(r);
            e = hist_save(r);
        }
        pthread_mutex_unlock(&r->hmu);
    }
    if (!e)
        wire_epoch_adopt(r, epoch, r->node_name);
    buf_release(&rec.cert);
    buf_release(&rec.sig);
    return e;
}

bool
repl_writer_is(repl *r, uint64_t epoch, const char *name, bool *known)
{
    pthread_mutex_lock(&r->hmu);
    const struct hist_rec *h = find_any_locked(r, epoch);
    *known = h != NULL;
    bool same = h && strcmp(h->node, name) == 0;
    pthread_mutex_unlock(&r->hmu);
    return same;
}

void
hist_json(repl *r, buf *b)
{
    pthread_mutex_lock(&r->hmu);
    buf_addf(b, "[{\"epoch\":%llu,\"start_seq\":1,\"node\":null}",
             (unsigned long long)r->hist.base_epoch);
    for (size_t i = 0; i < r->hist.n; i++) {
        const struct hist_rec *h = &r->hist.rec[i];
        buf_addf(b, ",{\"epoch\":%llu,\"start_seq\":%llu,\"node\":", (unsigned long long)h->epoch,
                 (unsigned long long)h->start_seq);
        buf_add_json_str(b, h->node, strlen(h->node));
        buf_addf(b, ",\"time_ms\":%llu,\"signed\":%s}", (unsigned long long)h->time_ms,
                 h->sig.len ? "true" : "false");
    }
    buf_addc(b, ']');
    buf_adds(b, ",\"known_promotions\":[");
    for (size_t i = 0; i < r->known.n; i++) {
        const struct hist_rec *h = &r->known.rec[i];
        buf_addf(b, "%s{\"epoch\":%llu,\"start_seq\":%llu,\"node\":", i ? "," : "",
                 (unsigned long long)h->epoch, (unsigned long long)h->start_seq);
        buf_add_json_str(b, h->node, strlen(h->node));
        buf_addc(b, '}');
    }
    buf_addc(b, ']');
    pthread_mutex_unlock(&r->hmu);
}
