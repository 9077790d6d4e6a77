/* The secondary's side of the store: applying the primary's events in order and
 * idempotently, resync from a snapshot, and the primary's snapshot stream. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/clock.h"
#include "store_int.h"
#include "../common/log.h"
#include "../common/banned.h"

#define APPLIED_KEY "m/applied"

void
store_set_commit_hook(store *s, void (*fn)(void *arg, uint64_t seq), void *arg)
{
    s->hook = fn;
    s->hook_arg = arg;
}

static void
load_applied_locked(store *s)
{
    buf v = BUF_INIT;
    if (rget(s, CF_DEFAULT, 0, APPLIED_KEY, strlen(APPLIED_KEY), &v) == ERR_OK && v.len == 8)
        s->applied = get_u64le(v.ptr);
    buf_release(&v);
}

uint64_t
store_applied_seq(store *s)
{
    pthread_mutex_lock(&s->commit_mu);
    if (!s->applied)
        load_applied_locked(s);
    uint64_t a = s->applied;
    pthread_mutex_unlock(&s->commit_mu);
    return a;
}

static void
put_applied(store *s, rocksdb_writebatch_t *wb, uint64_t seq)
{
    char v[8];
    put_u64le(v, seq);
    batch_put(s, wb, CF_DEFAULT, APPLIED_KEY, strlen(APPLIED_KEY), v, 8);
}

/* cstr copies a slice into a bounded NUL-terminated field. */
static bool
cstr(char *dst, size_t n, slice v)
{
    return str_copy_slice(dst, n, v);
}

static err
apply_locked(store *s, rocksdb_writebatch_t *wb, const struct store_event *ev,
             const struct store_apply_extra *x)
{
    char repo[256], digest[DIGEST_MAX], tag[256], mt[256];
    if (!cstr(repo, sizeof repo, ev->repo) || !cstr(digest, sizeof digest, ev->digest) ||
        !cstr(tag, sizeof tag, ev->tag) || !cstr(mt, sizeof mt, ev->media_type))
        return ERR_PROTOCOL;
    uint64_t seq = ev->seq ? ev->seq : SEQ_NOLOG;
    err e;
    switch (ev->type) {
    case EV_NONE:
        return commit_locked(s, wb, NULL);
    case EV_BLOB_LINK: {
        uint64_t size;
        if (!store_blob_exists(s, digest, &size))
            return ERR_BLOB_UNKNOWN;
        return link_blob_locked(s, wb, repo, digest, size, seq);
    }
    case EV_BLOB_UNLINK: {
        buf k = BUF_INIT;
        key2(&k, repo, digest);
        batch_del(s, wb, CF_BLOB_LINKS, k.ptr, k.len);
        buf_release(&k);
        struct store_event le = *ev;
        le.seq = seq;
        return commit_locked(s, wb, &le);
    }
    case EV_MANIFEST_PUT: {
        struct store_manifest_put m = {
            .repo = repo,
            .digest = digest,
            .media_type = mt,
            .tag = ev->tag.len ? tag : NULL,
            .body = ev->body,
            .refs = x ? x->refs : NULL,
            .nrefs = x ? x->nrefs : 0,
            .subject = x ? x->subject : NULL,
            .descriptor = x ? x->descriptor : (slice){"", 0},
        };
        char missing[DIGEST_MAX] = "";
        e = put_manifest_locked(s, wb, &m, missing, seq);
        if (e == ERR_MANIFEST_BLOB_UNKNOWN)
            log_info("STORE-APPLY-WAIT", "repo=%s digest=%s missing=%s", repo, digest, missing);
        return e;
    }
    case EV_MANIFEST_DELETE:
        e = delete_manifest_locked(s, wb, repo, digest, seq);
        return e == ERR_MANIFEST_UNKNOWN ? commit_locked(s, wb, NULL) : e;
    case EV_TAG_DELETE:
        e = delete_tag_locked(s, wb, repo, tag, seq);
        return e == ERR_MANIFEST_UNKNOWN ? commit_locked(s, wb, NULL) : e;
    case EV_META_PUT:
    case EV_META_DELETE: {
        buf k = BUF_INIT;
        buf_addf(&k, "r/%s", tag);
        if (ev->type == EV_META_PUT)
            batch_put(s, wb, CF_DEFAULT, k.ptr, k.len, ev->body.ptr, ev->body.len);
        else
            batch_del(s, wb, CF_DEFAULT, k.ptr, k.len);
        buf_release(&k);
        struct store_event le = *ev;
        le.seq = seq;
        atomic_fetch_add(&s->rmeta_version, 1);
        return commit_locked(s, wb, &le);
    }
    }
    return ERR_PROTOCOL;
}

err
store_apply(store *s, const struct store_event *ev, const struct store_apply_extra *x)
{
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    err e = ERR_OK;
    pthread_mutex_lock(&s->commit_mu);
    if (!s->applied)
        load_applied_locked(s);
    if (ev->seq) {
        if (ev->seq <= s->applied)
            goto out; /* duplicate or replay */
        if (ev->seq != s->applied + 1) {
            e = ERR_PROTOCOL;
            goto out;
        }
        put_applied(s, wb, ev->seq);
    }
    e = apply_locked(s, wb, ev, x);
    if (!e && ev->seq)
        s->applied = ev->seq;
out:
    pthread_mutex_unlock(&s->commit_mu);
    rocksdb_writebatch_destroy(wb);
    return e;
}

err
store_resync_begin(store *s)
{
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    /* Links, tags, referrers and the catalog stay readable during the resync (a
     * secondary keeps serving what it holds): every one the snapshot writes gets a
     * marker, and store_resync_end removes the unmarked rest. Markers of an earlier,
     * unfinished resync go first: they describe another snapshot. */
    rocksdb_writebatch_delete_range_cf(wb, s->cf[CF_DEFAULT], "x/", 2, "x0", 2);
    batch_put(s, wb, CF_DEFAULT, RESYNC_MARK_KEY, strlen(RESYNC_MARK_KEY), "1", 1);
    /* replicated metadata (identities, grants) goes now: the snapshot sends every key
     * the primary has, and an identity deleted there must not authenticate here
     * meanwhile ("r/" up to "r0", the next byte after '/') */
    rocksdb_writebatch_delete_range_cf(wb, s->cf[CF_DEFAULT], "r/", 2, "r0", 2);
    /* nothing is applied: a restart in the middle of the resync must not resume
     * streaming from the old position over a partial state */
    put_applied(s, wb, 0);
    pthread_mutex_lock(&s->commit_mu);
    err e = commit_locked(s, wb, NULL);
    if (!e) {
        s->applied = 0;
        atomic_store(&s->resync_marking, true);
    }
    atomic_fetch_add(&s->rmeta_version, 1); /* identities are reloaded */
    pthread_mutex_unlock(&s->commit_mu);
    rocksdb_writebatch_destroy(wb);
    log_info("STORE-RESYNC-BEGIN", "dir=%s", s->dir);
    return e;
}

/* sweep_unmarked adds to wb the deletion of every key of cf without a marker. */
static err
sweep_unmarked(store *s, rocksdb_writebatch_t *wb, enum store_cf cf, uint64_t *swept)
{
    rocksdb_iterator_t *it = db_iter(s, s->ro, cf);
    buf m = BUF_INIT, v = BUF_INIT;
    err e = ERR_OK;
    for (rocksdb_iter_seek_to_first(it); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kl;
        const char *k = rocksdb_iter_key(it, &kl);
        buf_reset(&m);
        char pre[3] = {'x', '/', (char)cf};
        if (buf_add(&m, pre, 3) || buf_add(&m, k, kl)) {
            e = ERR_NOMEM;
            break;
        }
        err g = rget(s, CF_DEFAULT, 0, m.ptr, m.len, &v);
        if (g == ERR_NOT_FOUND) {
            batch_del(s, wb, cf, k, kl);
            (*swept)++;
        } else if (g) {
            e = g;
            break;
        }
    }
    if (!e) {
        char *msg = NULL;
        rocksdb_iter_get_error(it, &msg);
        e = rdb_err("iter", msg);
    }
    db_iter_end(s, it);
    buf_release(&m);
    buf_release(&v);
    return e;
}

err
store_role_align(store *s)
{
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    err e = ERR_OK;
    pthread_mutex_lock(&s->commit_mu);
    if (!s->applied)
        load_applied_locked(s);
    uint64_t top = s->head > s->applied ? s->head : s->applied;
    if (top != s->head || top != s->applied) {
        char h[8];
        put_u64le(h, top);
        batch_put(s, wb, CF_DEFAULT, "m/log_head", 10, h, 8);
        put_applied(s, wb, top);
        e = commit_locked(s, wb, NULL);
        if (!e) {
            s->head = top;
            s->applied = top;
        }
    }
    pthread_mutex_unlock(&s->commit_mu);
    rocksdb_writebatch_destroy(wb);
    return e;
}

err
store_resync_end(store *s, uint64_t snapshot_seq)
{
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    char a[8], b[8], h[8];
    uint64_t swept = 0;
    static const enum store_cf marked[] = {CF_BLOB_LINKS, CF_MANIFEST_LINKS, CF_TAGS,
                                           CF_TAG_INDEX,  CF_REFERRERS,      CF_REPOS};
    for (size_t i = 0; i < sizeof marked / sizeof marked[0]; i++) {
        err se = sweep_unmarked(s, wb, marked[i], &swept);
        if (se) {
            rocksdb_writebatch_destroy(wb);
            return se;
        }
    }
    rocksdb_writebatch_delete_range_cf(wb, s->cf[CF_DEFAULT], "x/", 2, "x0", 2);
    batch_del(s, wb, CF_DEFAULT, RESYNC_MARK_KEY, strlen(RESYNC_MARK_KEY));
    put_u64be(a, 0);
    put_u64be(b, UINT64_MAX);
    rocksdb_writebatch_delete_range_cf(wb, s->cf[CF_REPLOG], a, 8, b, 8);
    put_u64le(h, snapshot_seq);
    batch_put(s, wb, CF_DEFAULT, "m/log_head", 10, h, 8);
    put_applied(s, wb, snapshot_seq);
    pthread_mutex_lock(&s->commit_mu);
    err e = commit_locked(s, wb, NULL);
    if (!e) {
        s->applied = snapshot_seq;
        s->head = snapshot_seq;
        atomic_store(&s->resync_marking, false);
    }
    pthread_mutex_unlock(&s->commit_mu);
    rocksdb_writebatch_destroy(wb);
    log_info("STORE-RESYNC-END", "applied=%llu swept=%llu", (unsigned long long)snapshot_seq,
             (unsigned long long)swept);
    return e;
}

/* ---- the primary's snapshot stream ---- */

struct snap {
    store *s;
    rocksdb_readoptions_t *ro;
    store_event_cb cb;
    void *arg;
    bool stopped;
};

/* snap_iter calls fn for every key of cf under the snapshot. */
static err
snap_iter(struct snap *sn, enum store_cf cf, const char *prefix,
          bool (*fn)(struct snap *sn, slice k, slice v, int pass), int pass)
{
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(sn->s->db, sn->ro, sn->s->cf[cf]);
    size_t pl = prefix ? strlen(prefix) : 0;
    if (pl)
        rocksdb_iter_seek(it, prefix, pl);
    else
        rocksdb_iter_seek_to_first(it);
    for (; rocksdb_iter_valid(it) && !sn->stopped; rocksdb_iter_next(it)) {
        size_t kl, vl;
        const char *k = rocksdb_iter_key(it, &kl);
        const char *v = rocksdb_iter_value(it, &vl);
        if (pl && (kl < pl || memcmp(k, prefix, pl) != 0))
            break;
        if (!fn(sn, (slice){k, kl}, (slice){v, vl}, pass))
            sn->stopped = true;
    }
    char *msg = NULL;
    rocksdb_iter_get_error(it, &msg);
    rocksdb_iter_destroy(it);
    return rdb_err("snapshot_iter", msg);
}

/* split "repo\0rest" */
static bool
split_key(slice k, slice *repo, slice *rest)
{
    const char *z = memchr(k.ptr, '\0', k.len);
    if (!z)
        return false;
    *repo = (slice){k.ptr, (size_t)(z - k.ptr)};
    *rest = (slice){z + 1, k.len - repo->len - 1};
    return true;
}

static bool
snap_blob_link(struct snap *sn, slice k, slice v, int pass)
{
    slice repo, digest;
    (void)v;
    (void)pass;
    if (!split_key(k, &repo, &digest))
        return true;
    char d[DIGEST_MAX];
    str_copy_slice(d, sizeof d, digest);
    char *msg = NULL;
    size_t vl = 0;
    char *rec = rocksdb_get_cf(sn->s->db, sn->ro, sn->s->cf[CF_BLOBS], d, strlen(d), &vl, &msg);
    rdb_err("snapshot_get", msg);
    if (!rec || vl < 18) {
        rocksdb_free(rec);
        return true;
    }
    struct store_event ev = {.type = EV_BLOB_LINK, .repo = repo, .digest = digest,
                             .size = get_u64le(rec + 2)};
    rocksdb_free(rec);
    return sn->cb(sn->arg, &ev);
}

static bool
is_index(slice mt)
{
    return slice_eq_cstr(mt, "application/vnd.oci.image.index.v1+json") ||
           slice_eq_cstr(mt, "application/vnd.docker.distribution.manifest.list.v2+json");
}

/* emit_manifest sends MANIFEST_PUT for digest in repo (with tag when not empty);
 * pass 1: non-index only, pass 2: indexes only, pass 0: any. */
static bool
emit_manifest(struct snap *sn, slice repo, slice digest, slice tag, int pass)
{
    char d[DIGEST_MAX];
    str_copy_slice(d, sizeof d, digest);
    char *msg = NULL;
    size_t vl = 0;
    char *v = rocksdb_get_cf(sn->s->db, sn->ro, sn->s->cf[CF_MANIFESTS], d, strlen(d), &vl, &msg);
    rdb_err("snapshot_get", msg);
    if (!v || vl < 2 || vl < 2 + (size_t)(unsigned char)v[1]) {
        rocksdb_free(v);
        return true;
    }
    size_t mtl = (unsigned char)v[1];
    slice mt = {v + 2, mtl};
    bool ok = true;
    if (pass == 0 || (pass == 1) != is_index(mt)) {
        struct store_event ev = {.type = EV_MANIFEST_PUT,
                                 .repo = repo,
                                 .digest = digest,
                                 .tag = tag,
                                 .media_type = mt,
                                 .body = {v + 2 + mtl, vl - 2 - mtl},
                                 .size = vl - 2 - mtl};
        ok = sn->cb(sn->arg, &ev);
    }
    rocksdb_free(v);
    return ok;
}

static bool
snap_manifest_link(struct snap *sn, slice k, slice v, int pass)
{
    slice repo, digest;
    (void)v;
    if (!split_key(k, &repo, &digest))
        return true;
    return emit_manifest(sn, repo, digest, (slice){"", 0}, pass);
}

static bool
snap_tag(struct snap *sn, slice k, slice v, int pass)
{
    slice repo, tag;
    (void)pass;
    if (!split_key(k, &repo, &tag))
        return true;
    slice digest = slice_of_cstr(v.ptr); /* digest\0seq */
    if (digest.len > v.len)
        return true;
    return emit_manifest(sn, repo, digest, tag, 0);
}

static bool
snap_meta(struct snap *sn, slice k, slice v, int pass)
{
    (void)pass;
    struct store_event ev = {.type = EV_META_PUT, .tag = {k.ptr + 2, k.len - 2}, .body = v};
    return sn->cb(sn->arg, &ev);
}

err
store_snapshot_stream(store *s, store_event_cb cb, void *arg, uint64_t *snapshot_seq)
{
    struct snap sn = {.s = s, .cb = cb, .arg = arg};
    db_rlock(s); /* the whole stream: a resume waits for it */
    pthread_mutex_lock(&s->commit_mu);
    const rocksdb_snapshot_t *snap = rocksdb_create_snapshot(s->db);
    *snapshot_seq = s->head;
    pthread_mutex_unlock(&s->commit_mu);
    sn.ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_snapshot(sn.ro, snap);
    err e = snap_iter(&sn, CF_BLOB_LINKS, NULL, snap_blob_link, 0);
    if (!e)
        e = snap_iter(&sn, CF_MANIFEST_LINKS, NULL, snap_manifest_link, 1);
    if (!e)
        e = snap_iter(&sn, CF_MANIFEST_LINKS, NULL, snap_manifest_link, 2);
    if (!e)
        e = snap_iter(&sn, CF_TAGS, NULL, snap_tag, 0);
    if (!e)
        e = snap_iter(&sn, CF_DEFAULT, "r/", snap_meta, 0);
    rocksdb_readoptions_destroy(sn.ro);
    rocksdb_release_snapshot(s->db, snap);
    db_unlock(s);
    return e;
}

err
store_manifest_seq(store *s, const char *repo, const char *ref, char digest[DIGEST_MAX],
                   uint64_t *seq)
{
    buf k = BUF_INIT, v = BUF_INIT;
    err e = key2(&k, repo, ref);
    if (e)
        goto out;
    bool by_digest = strchr(ref, ':') != NULL;
    e = rget(s, by_digest ? CF_MANIFEST_LINKS : CF_TAGS, 0, k.ptr, k.len, &v);
    if (e == ERR_NOT_FOUND)
        e = ERR_MANIFEST_UNKNOWN;
    if (e)
        goto out;
    if (by_digest) {
        if (v.len < 16) {
            e = ERR_IO;
            goto out;
        }
        str_copy(digest, DIGEST_MAX, ref);
        *seq = get_u64le(v.ptr + 8);
    } else {
        size_t dl = strlen(v.ptr);
        if (v.len != dl + 9) {
            e = ERR_IO;
            goto out;
        }
        str_copy(digest, DIGEST_MAX, v.ptr);
        *seq = get_u64le(v.ptr + dl + 1);
    }
out:
    buf_release(&k);
    buf_release(&v);
    return e;
}

static bool
on_time(void *arg, const struct store_event *ev)
{
    *(uint64_t *)arg = ev->time_ms;
    return false;
}

uint64_t
store_log_event_time(store *s, uint64_t seq)
{
    uint64_t t = 0;
    store_log_read(s, seq, 1, on_time, &t);
    return t;
}

/* ---- replicated metadata ---- */

static err
rmeta_key(buf *k, const char *key)
{
    buf_reset(k);
    return buf_addf(k, "r/%s", key);
}

err
store_rmeta_put(store *s, const char *key, const void *val, size_t len)
{
    buf k = BUF_INIT;
    err e = rmeta_key(&k, key);
    if (e)
        return e;
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    batch_put(s, wb, CF_DEFAULT, k.ptr, k.len, val, len);
    struct store_event ev = {.type = EV_META_PUT,
                             .tag = slice_of_cstr(key),
                             .body = {val, len},
                             .size = len};
    pthread_mutex_lock(&s->commit_mu);
    e = commit_locked(s, wb, &ev);
    atomic_fetch_add(&s->rmeta_version, 1);
    pthread_mutex_unlock(&s->commit_mu);
    rocksdb_writebatch_destroy(wb);
    buf_release(&k);
    return e;
}

uint64_t
store_rmeta_version(store *s)
{
    return atomic_load(&s->rmeta_version);
}

err
store_rmeta_delete(store *s, const char *key)
{
    buf k = BUF_INIT;
    err e = rmeta_key(&k, key);
    if (e)
        return e;
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    pthread_mutex_lock(&s->commit_mu);
    e = rget(s, CF_DEFAULT, 0, k.ptr, k.len, NULL);
    if (!e) {
        batch_del(s, wb, CF_DEFAULT, k.ptr, k.len);
        struct store_event ev = {.type = EV_META_DELETE, .tag = slice_of_cstr(key)};
        e = commit_locked(s, wb, &ev);
        atomic_fetch_add(&s->rmeta_version, 1);
    }
    pthread_mutex_unlock(&s->commit_mu);
    rocksdb_writebatch_destroy(wb);
    buf_release(&k);
    return e;
}

err
store_rmeta_get(store *s, const char *key, unsigned flags, buf *out)
{
    buf k = BUF_INIT;
    err e = rmeta_key(&k, key);
    if (!e)
        e = rget(s, CF_DEFAULT, flags, k.ptr, k.len, out);
    buf_release(&k);
    return e;
}

struct rmeta_list {
    store_list_cb cb;
    void *arg;
};

err
store_rmeta_list(store *s, const char *prefix, store_list_cb cb, void *arg)
{
    buf k = BUF_INIT;
    err e = rmeta_key(&k, prefix);
    if (e)
        return e;
    rocksdb_iterator_t *it = db_iter(s, s->ro, CF_DEFAULT);
    for (rocksdb_iter_seek(it, k.ptr, k.len); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kl, vl;
        const char *key = rocksdb_iter_key(it, &kl);
        const char *val = rocksdb_iter_value(it, &vl);
        if (kl < k.len || memcmp(key, k.ptr, k.len) != 0)
            break;
        if (!cb(arg, (slice){key + 2, kl - 2}, (slice){val, vl}))
            break;
    }
    char *msg = NULL;
    rocksdb_iter_get_error(it, &msg);
    db_iter_end(s, it);
    buf_release(&k);
    return rdb_err("rmeta_list", msg);
}

/* ---- audit ---- */

err
store_audit_append(store *s, const slice *entries, size_t n)
{
    if (!n)
        return ERR_OK;
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    pthread_mutex_lock(&s->audit_mu);
    uint64_t now = clock_wall_ms() * 1000;
    for (size_t i = 0; i < n; i++) {
        uint64_t t = now > s->audit_last_us ? now : s->audit_last_us + 1;
        s->audit_last_us = t;
        char k[8];
        put_u64be(k, t);
        batch_put(s, wb, CF_AUDIT, k, 8, entries[i].ptr, entries[i].len);
    }
    pthread_mutex_unlock(&s->audit_mu);
    char *msg = NULL;
    err e = db_room(s);
    if (e) {
        rocksdb_writebatch_destroy(wb);
        return e;
    }
    db_rlock(s);
    rocksdb_write(s->db, s->wo_nosync, wb, &msg);
    db_unlock(s);
    rocksdb_writebatch_destroy(wb);
    return rdb_werr(s, "audit_append", msg);
}

err
store_audit_query(store *s, uint64_t since_us, uint64_t until_us, const char *after, size_t max,
                  store_list_cb cb, void *arg, bool *more)
{
    char start[8];
    uint64_t from = since_us;
    if (after) {
        uint64_t a = strtoull(after, NULL, 16);
        if (a + 1 > from)
            from = a + 1;
    }
    put_u64be(start, from);
    *more = false;
    rocksdb_iterator_t *it = db_iter(s, s->ro, CF_AUDIT);
    size_t count = 0;
    for (rocksdb_iter_seek(it, start, 8); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kl, vl;
        const char *key = rocksdb_iter_key(it, &kl);
        const char *val = rocksdb_iter_value(it, &vl);
        if (kl != 8)
            continue;
        uint64_t t = get_u64be(key);
        if (until_us && t >= until_us)
            break;
        char hex[17];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)t);
        if (!cb(arg, (slice){hex, 16}, (slice){val, vl}))
            continue; /* filtered out by the caller: does not count */
        if (++count == max) {
            /* is there anything after this one? */
            rocksdb_iter_next(it);
            *more = rocksdb_iter_valid(it);
            if (*more && until_us) {
                size_t nl;
                const char *nk = rocksdb_iter_key(it, &nl);
                *more = nl == 8 && get_u64be(nk) < until_us;
            }
            break;
        }
    }
    char *msg = NULL;
    rocksdb_iter_get_error(it, &msg);
    db_iter_end(s, it);
    return rdb_err("audit_query", msg);
}

err
store_audit_trim(store *s, uint64_t before_us)
{
    char a[8], b[8];
    put_u64be(a, 0);
    put_u64be(b, before_us);
    char *msg = NULL;
    db_rlock(s);
    rocksdb_delete_range_cf(s->db, s->wo_nosync, s->cf[CF_AUDIT], a, 8, b, 8, &msg);
    db_unlock(s);
    return rdb_werr(s, "audit_trim", msg);
}
