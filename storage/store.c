/* RocksDB and content-file implementation of the store. Keys, value encodings and
 * the file layout are private to this file (and upload.c through store_int.h). */
#include "../common/clock.h"
#include "store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/ref.h"
#include "../common/banned.h"

static const char *const cf_names[CF__COUNT] = {
    [CF_DEFAULT] = "default",
    [CF_BLOBS] = "blobs",
    [CF_BLOB_LINKS] = "blob_links",
    [CF_MANIFESTS] = "manifests",
    [CF_MANIFEST_LINKS] = "manifest_links",
    [CF_TAGS] = "tags",
    [CF_TAG_INDEX] = "tag_index",
    [CF_REFERRERS] = "referrers",
    [CF_UPLOADS] = "uploads",
    [CF_REPLOG] = "replog",
    [CF_REPOS] = "repos",
    [CF_AUDIT] = "audit",
};

/* ---- small encoders ---- */

void
put_u64le(char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (char)(v >> (8 * i));
}

uint64_t
get_u64le(const char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)(unsigned char)p[i] << (8 * i);
    return v;
}

void
put_u64be(char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (char)(v >> (56 - 8 * i));
}

uint64_t
get_u64be(const char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | (unsigned char)p[i];
    return v;
}


/* key2 builds "a\0b" and key3 "a\0b\0c" into k. */
err
key2(buf *k, const char *a, const char *b)
{
    buf_reset(k);
    err e = buf_add(k, a, strlen(a) + 1);
    if (!e)
        e = buf_adds(k, b);
    return e;
}

static err
key3(buf *k, const char *a, const char *b, const char *c)
{
    err e = key2(k, a, b);
    if (!e)
        e = buf_add(k, "", 1);
    if (!e)
        e = buf_adds(k, c);
    return e;
}

/* ---- RocksDB wrappers: translate char *err once, here ---- */

err
rdb_err(const char *what, char *msg)
{
    if (!msg)
        return ERR_OK;
    /* Status::Incomplete: a STORE_NOWAIT read that needs the disk */
    err e = strstr(msg, "ncomplete") ? ERR_WOULDBLOCK : ERR_IO;
    if (e == ERR_IO)
        log_error("STORE-ROCKSDB", "op=%s error=\"%s\"", what, msg);
    rocksdb_free(msg);
    return e;
}

/* A full disk as RocksDB words it (IOStatus NoSpace, from ENOSPC or EDQUOT). */
static bool
rdb_no_space(const char *msg)
{
    return strstr(msg, "No space left") || strstr(msg, "NoSpace") || strstr(msg, "no space") ||
           strstr(msg, "Disk quota exceeded");
}

err
rdb_werr(store *s, const char *what, char *msg)
{
    if (!msg)
        return ERR_OK;
    if (rdb_no_space(msg) || (atomic_load(&s->wedged) && strstr(msg, "read only"))) {
        if (!atomic_exchange(&s->wedged, true))
            log_error("STORE-FULL", "op=%s error=\"%s\" msg=\"writes refused until space "
                      "returns\"", what, msg);
        atomic_fetch_add(&s->space_refusals, 1);
        rocksdb_free(msg);
        return ERR_INSUFFICIENT_STORAGE;
    }
    return rdb_err(what, msg);
}

static uint64_t free_bytes(const store *s);

static err
room_at(store *s, uint64_t need)
{
    if (need && free_bytes(s) < need) {
        atomic_fetch_add(&s->space_refusals, 1);
        return ERR_INSUFFICIENT_STORAGE;
    }
    return ERR_OK;
}

err
db_room(store *s)
{
    return room_at(s, s->min_free / 4);
}

err
content_room(store *s)
{
    return room_at(s, s->min_free / 2);
}

void
db_rlock(store *s)
{
    pthread_rwlock_rdlock(&s->db_lock);
}

void
db_unlock(store *s)
{
    pthread_rwlock_unlock(&s->db_lock);
}

rocksdb_iterator_t *
db_iter(store *s, const rocksdb_readoptions_t *ro, enum store_cf cf)
{
    db_rlock(s);
    return rocksdb_create_iterator_cf(s->db, ro, s->cf[cf]);
}

void
db_iter_end(store *s, rocksdb_iterator_t *it)
{
    rocksdb_iter_destroy(it);
    db_unlock(s);
}

/* rget copies the value of key in cf into out (when out is not NULL). ERR_NOT_FOUND
 * when absent, ERR_WOULDBLOCK under STORE_NOWAIT when the disk would be read. */
err
rget(store *s, enum store_cf cf, unsigned flags, const char *k, size_t klen, buf *out)
{
    char *msg = NULL;
    size_t vlen = 0;
    rocksdb_readoptions_t *ro = (flags & STORE_NOWAIT) ? s->ro_nowait : s->ro;
    db_rlock(s);
    char *v = rocksdb_get_cf(s->db, ro, s->cf[cf], k, klen, &vlen, &msg);
    db_unlock(s);
    err e = rdb_err("get", msg);
    if (e)
        return e;
    if (!v)
        return ERR_NOT_FOUND;
    if (vlen == 0 && (flags & STORE_NOWAIT)) {
        /* Under kBlockCacheTier, a key in a table file that is not open yet
         * (after a restart, or evicted from the table cache) answers OK with an
         * empty value: RocksDB's "may exist". It is not an answer: a deleted
         * manifest link read that way came back to life (issue 8 §7). Every
         * empty value under NOWAIT goes to the disk read instead. */
        rocksdb_free(v);
        return ERR_WOULDBLOCK;
    }
    if (out) {
        buf_reset(out);
        e = buf_add(out, v, vlen);
    }
    rocksdb_free(v);
    return e;
}

/* ---- the commit path ---- */

struct batch {
    rocksdb_writebatch_t *wb;
};

bool
resync_marked_cf(enum store_cf cf)
{
    return cf == CF_BLOB_LINKS || cf == CF_MANIFEST_LINKS || cf == CF_TAGS ||
           cf == CF_TAG_INDEX || cf == CF_REFERRERS || cf == CF_REPOS;
}

void
batch_put(store *s, rocksdb_writebatch_t *wb, enum store_cf cf, const char *k, size_t klen,
          const char *v, size_t vlen)
{
    rocksdb_writebatch_put_cf(wb, s->cf[cf], k, klen, v, vlen);
    if (atomic_load(&s->resync_marking) && resync_marked_cf(cf)) {
        /* "x/" <cf> <key>: this key belongs to the state being rebuilt */
        char small[512];
        char *m = klen + 3 <= sizeof small ? small : malloc(klen + 3);
        if (!m)
            return; /* unmarked: swept at the end, resent by the next resync */
        m[0] = 'x';
        m[1] = '/';
        m[2] = (char)cf;
        memcpy(m + 3, k, klen);
        rocksdb_writebatch_put_cf(wb, s->cf[CF_DEFAULT], m, klen + 3, "", 0);
        if (m != small)
            free(m);
    }
}

void
batch_del(store *s, rocksdb_writebatch_t *wb, enum store_cf cf, const char *k, size_t klen)
{
    rocksdb_writebatch_delete_cf(wb, s->cf[cf], k, klen);
}

static err
encode_event(buf *out, const struct store_event *ev)
{
    char hdr[2 + 16];
    hdr[0] = 1; /* version */
    hdr[1] = (char)ev->type;
    put_u64le(hdr + 2, ev->time_ms);
    put_u64le(hdr + 10, ev->size);
    buf_reset(out);
    err e = buf_add(out, hdr, sizeof hdr);
    const slice *fields[] = {&ev->repo, &ev->digest, &ev->tag, &ev->media_type, &ev->body};
    for (size_t i = 0; !e && i < 5; i++) {
        char l[4];
        uint32_t n = (uint32_t)fields[i]->len;
        for (int j = 0; j < 4; j++)
            l[j] = (char)(n >> (8 * j));
        e = buf_add(out, l, 4);
        if (!e)
            e = buf_add(out, fields[i]->ptr, fields[i]->len);
    }
    return e;
}

static bool
decode_event(const char *p, size_t n, struct store_event *ev)
{
    memset(ev, 0, sizeof *ev);
    if (n < 18 || p[0] != 1)
        return false;
    ev->type = (enum store_event_type)(unsigned char)p[1];
    ev->time_ms = get_u64le(p + 2);
    ev->size = get_u64le(p + 10);
    size_t off = 18;
    slice *fields[] = {&ev->repo, &ev->digest, &ev->tag, &ev->media_type, &ev->body};
    for (size_t i = 0; i < 5; i++) {
        if (n - off < 4)
            return false;
        uint32_t l = 0;
        for (int j = 0; j < 4; j++)
            l |= (uint32_t)(unsigned char)p[off + (size_t)j] << (8 * j);
        off += 4;
        if (n - off < l)
            return false;
        fields[i]->ptr = p + off;
        fields[i]->len = l;
        off += l;
    }
    return true;
}

/* commit appends ev (when not NULL) to the log with the next sequence number (or
 * ev->seq when it is set: a secondary keeps the primary's numbering) and writes the
 * batch, synced. Caller holds s->commit_mu. */
/* log_event_locked adds ev to the batch's log entries with sequence number seq. */
static err
log_event_locked(store *s, rocksdb_writebatch_t *wb, struct store_event *ev, uint64_t seq)
{
    buf enc = BUF_INIT;
    if (!ev->time_ms)
        ev->time_ms = clock_wall_ms();
    err e = encode_event(&enc, ev);
    if (!e) {
        char k[8];
        put_u64be(k, seq);
        batch_put(s, wb, CF_REPLOG, k, 8, enc.ptr, enc.len);
    }
    buf_release(&enc);
    return e;
}

err
commit_locked(store *s, rocksdb_writebatch_t *wb, struct store_event *ev)
{
    buf enc = BUF_INIT;
    uint64_t seq = 0;
    err e = ERR_OK;
    if (ev && ev->seq == SEQ_NOLOG)
        ev = NULL;
    if (ev) {
        seq = ev->seq ? ev->seq : s->head + 1;
        if ((e = log_event_locked(s, wb, ev, seq)))
            goto out;
    }
    char *msg = NULL;
    if ((e = db_room(s)))
        goto out;
    db_rlock(s);
    rocksdb_write(s->db, s->wo, wb, &msg);
    db_unlock(s);
    e = rdb_werr(s, "write", msg);
    if (!e && seq > s->head)
        s->head = seq;
    if (!e)
        atomic_fetch_add(&s->gen, 1); /* after the write is visible: see mcache_get */
    if (!e && seq && s->hook)
        s->hook(s->hook_arg, seq);
out:
    buf_release(&enc);
    return e;
}

/* ---- open / close ---- */

static err
mkdir_p(const char *path)
{
    char tmp[4096];
    if (!str_copy(tmp, sizeof tmp, path))
        return ERR_INVALID;
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
                return err_from_errno(errno);
            *p = '/';
        }
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
        return err_from_errno(errno);
    return ERR_OK;
}

err
fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return err_from_errno(errno);
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    return rc == 0 ? ERR_OK : err_from_errno(saved);
}

static void
load_head(store *s)
{
    rocksdb_iterator_t *it = db_iter(s, s->ro, CF_REPLOG);
    rocksdb_iter_seek_to_last(it);
    s->head = 0;
    if (rocksdb_iter_valid(it)) {
        size_t kl;
        const char *k = rocksdb_iter_key(it, &kl);
        if (kl == 8)
            s->head = get_u64be(k);
    }
    db_iter_end(s, it);
    /* A trimmed-empty log keeps its head in metadata. */
    buf v = BUF_INIT;
    if (rget(s, CF_DEFAULT, 0, RESYNC_MARK_KEY, strlen(RESYNC_MARK_KEY), &v) == ERR_OK)
        atomic_store(&s->resync_marking, true);
    buf_reset(&v);
    if (rget(s, CF_DEFAULT, 0, "m/log_head", 10, &v) == ERR_OK && v.len == 8) {
        uint64_t h = get_u64le(v.ptr);
        if (h > s->head)
            s->head = h;
    }
    buf_release(&v);
}

err
store_open(const char *dir, const struct store_options *opt, store **out)
{
    err e = ERR_NOMEM;
    store *s = calloc(1, sizeof *s);
    char *msg = NULL;
    if (!s)
        return ERR_NOMEM;
    pthread_mutex_init(&s->commit_mu, NULL);
    pthread_mutex_init(&s->uploads_mu, NULL);
    pthread_mutex_init(&s->audit_mu, NULL);
    pthread_rwlockattr_t rwa;
    pthread_rwlockattr_init(&rwa);
    /* readers first: a thread iterating may read again (recursively) while a resume
     * waits for the write lock */
    pthread_rwlockattr_setkind_np(&rwa, PTHREAD_RWLOCK_PREFER_READER_NP);
    pthread_rwlock_init(&s->db_lock, &rwa);
    pthread_rwlockattr_destroy(&rwa);
    for (int i = 0; i < MCACHE_SHARDS; i++)
        pthread_mutex_init(&s->mcache_mu[i], NULL);
    s->gen = 1;
    s->mcache = calloc(MCACHE_SLOTS, sizeof *s->mcache);
    if (!s->mcache)
        goto out;
    s->inline_max = opt && opt->inline_max ? opt->inline_max : 64 * 1024;
    if (!str_copy(s->dir, sizeof s->dir, dir)) {
        e = ERR_INVALID;
        goto out;
    }
    snprintf(s->blob_dir, sizeof s->blob_dir, "%s/blobs", dir);
    snprintf(s->upload_dir, sizeof s->upload_dir, "%s/uploads", dir);
    char *dbdir = s->dbdir;
    snprintf(s->dbdir, sizeof s->dbdir, "%s/db", dir);
    s->min_free = opt ? opt->min_free : 0;
    if ((e = mkdir_p(dir)) || (e = mkdir_p(s->blob_dir)) || (e = mkdir_p(s->upload_dir))) {
        log_error("STORE-MKDIR", "dir=%s error=\"%s\"", dir, strerror(errno));
        goto out;
    }

    s->opts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(s->opts, 1);
    rocksdb_options_set_create_missing_column_families(s->opts, 1);
    rocksdb_options_increase_parallelism(s->opts, 2);
    rocksdb_options_set_max_open_files(s->opts, 512);
    s->cache = rocksdb_cache_create_lru(opt && opt->cache_bytes ? opt->cache_bytes : 64u << 20);
    s->bbto = rocksdb_block_based_options_create();
    rocksdb_block_based_options_set_block_cache(s->bbto, s->cache);
    rocksdb_block_based_options_set_filter_policy(s->bbto, rocksdb_filterpolicy_create_bloom(10));
    /* point lookups (tags, links, manifests) find their key inside a block by hash */
    rocksdb_block_based_options_set_data_block_index_type(
        s->bbto, rocksdb_block_based_table_data_block_index_type_binary_search_and_hash);
    rocksdb_block_based_options_set_data_block_hash_ratio(s->bbto, 0.75);
    rocksdb_options_set_block_based_table_factory(s->opts, s->bbto);
    /* Small memtables, with one budget for all column families: memory stays
     * bounded (the defaults allow 64 MiB per family), and a registry with many
     * tags is looked up through flushed, bloom-filtered tables rather than through
     * one huge skiplist, so lookup cost does not grow with the registry. The
     * budget is 16 MiB: at 32 the audit entries of a pull storm held the peak RSS
     * about 13 MiB higher (docs/BENCHMARKS.md). */
    rocksdb_options_set_write_buffer_size(s->opts, 4u << 20);
    rocksdb_options_set_max_write_buffer_number(s->opts, 2);
    rocksdb_options_set_db_write_buffer_size(s->opts, 16u << 20);
    rocksdb_options_set_level_compaction_dynamic_level_bytes(s->opts, 1);
    /* RocksDB's own info LOG: errors only, two small files, so that on a full disk
     * the LOG is not what fills it (levels: 0 debug .. 3 error .. 4 fatal) */
    rocksdb_options_set_info_log_level(s->opts, 3);
    rocksdb_options_set_max_log_file_size(s->opts, 1u << 20);
    rocksdb_options_set_keep_log_file_num(s->opts, 2);

    const rocksdb_options_t *cfopts[CF__COUNT];
    for (int i = 0; i < CF__COUNT; i++)
        cfopts[i] = s->opts;
    s->db = rocksdb_open_column_families(s->opts, dbdir, CF__COUNT, cf_names, cfopts, s->cf, &msg);
    if ((e = rdb_err("open", msg)) != ERR_OK || !s->db) {
        e = ERR_IO;
        goto out;
    }
    s->ro = rocksdb_readoptions_create();
    s->ro_nowait = rocksdb_readoptions_create();
    rocksdb_readoptions_set_read_tier(s->ro_nowait, 1 /* kBlockCacheTier */);
    s->wo = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(s->wo, opt && opt->no_sync ? 0 : 1);
    s->wo_nosync = rocksdb_writeoptions_create();
    load_head(s);
    s->max_uploads = opt ? opt->max_uploads : 0;
    s->max_uploads_per_owner = opt ? opt->max_uploads_per_owner : 0;
    uploads_count(s);
    log_info("STORE-OPEN", "dir=%s log_head=%llu inline_max=%llu", dir,
             (unsigned long long)s->head, (unsigned long long)s->inline_max);
    *out = s;
    s = NULL;
    e = ERR_OK;
out:
    store_close(s);
    return e;
}

void
store_close(store *s)
{
    if (!s)
        return;
    uploads_free_all(s);
    if (s->db) {
        for (int i = 0; i < CF__COUNT; i++)
            if (s->cf[i])
                rocksdb_column_family_handle_destroy(s->cf[i]);
        rocksdb_close(s->db);
    }
    if (s->ro)
        rocksdb_readoptions_destroy(s->ro);
    if (s->ro_nowait)
        rocksdb_readoptions_destroy(s->ro_nowait);
    if (s->wo)
        rocksdb_writeoptions_destroy(s->wo);
    if (s->wo_nosync)
        rocksdb_writeoptions_destroy(s->wo_nosync);
    if (s->opts)
        rocksdb_options_destroy(s->opts);
    if (s->bbto)
        rocksdb_block_based_options_destroy(s->bbto);
    if (s->cache)
        rocksdb_cache_destroy(s->cache);
    pthread_mutex_destroy(&s->commit_mu);
    pthread_mutex_destroy(&s->uploads_mu);
    pthread_mutex_destroy(&s->audit_mu);
    for (int i = 0; i < MCACHE_SHARDS; i++)
        pthread_mutex_destroy(&s->mcache_mu[i]);
    free(s->mcache);
    pthread_rwlock_destroy(&s->db_lock);
    free(s);
}

/* ---- a full disk ---- */

static uint64_t
free_bytes(const store *s)
{
    struct statvfs v;
    if (statvfs(s->dir, &v) != 0)
        return UINT64_MAX; /* cannot tell: do not refuse on a guess */
    return (uint64_t)v.f_bavail * (uint64_t)v.f_frsize;
}

err
store_space_check(store *s)
{
    if (atomic_load(&s->wedged) || (s->min_free && free_bytes(s) < s->min_free)) {
        atomic_fetch_add(&s->space_refusals, 1);
        return ERR_INSUFFICIENT_STORAGE;
    }
    return ERR_OK;
}

void
store_space_stats(store *s, struct store_space *out)
{
    out->wedged = atomic_load(&s->wedged);
    out->free_bytes = free_bytes(s);
    out->min_free = s->min_free;
    out->refusals = atomic_load(&s->space_refusals);
    out->resumes = atomic_load(&s->resumes);
}

/* reopen_locked closes the db and opens it again, under db_lock held for writing.
 * RocksDB 7.8's C API has no DB::Resume(), and a db that stopped on ENOSPC refuses
 * every write until reopened. When it cannot be opened for writing, it is opened
 * read-only, so that reads go on and s->db is never NULL; the store stays wedged. */
static bool
reopen_locked(store *s)
{
    for (int i = 0; i < CF__COUNT; i++) {
        rocksdb_column_family_handle_destroy(s->cf[i]);
        s->cf[i] = NULL;
    }
    rocksdb_close(s->db);
    s->db = NULL;
    const rocksdb_options_t *cfopts[CF__COUNT];
    for (int i = 0; i < CF__COUNT; i++)
        cfopts[i] = s->opts;
    char *msg = NULL;
    s->db = rocksdb_open_column_families(s->opts, s->dbdir, CF__COUNT, cf_names, cfopts, s->cf,
                                         &msg);
    if (s->db && !msg) {
        s->read_only_db = false;
        return true;
    }
    log_error("STORE-RESUME", "error=\"%s\" msg=\"reopening read-only\"", msg ? msg : "?");
    rocksdb_free(msg);
    msg = NULL;
    s->db = rocksdb_open_for_read_only_column_families(s->opts, s->dbdir, CF__COUNT, cf_names,
                                                       cfopts, s->cf, 0, &msg);
    if (!s->db || msg) {
        /* nothing to serve from: the process cannot go on (a restart opens it) */
        log_error("STORE-RESUME", "error=\"%s\" msg=\"cannot reopen the store\"",
                  msg ? msg : "?");
        abort();
    }
    s->read_only_db = true;
    return false;
}

bool
store_resume(store *s)
{
    if (!atomic_load(&s->wedged))
        return true;
    uint64_t need = s->min_free > (4u << 20) ? s->min_free : (4u << 20);
    if (free_bytes(s) < need)
        return false;
    /* RocksDB recovers by itself from a flush that met ENOSPC once space is back:
     * a synced probe write tells whether it takes writes again */
    char *msg = NULL;
    db_rlock(s);
    rocksdb_put_cf(s->db, s->wo, s->cf[CF_DEFAULT], "m/space_probe", 13, "1", 1, &msg);
    db_unlock(s);
    if (!msg) {
        atomic_store(&s->wedged, false);
        log_warn("STORE-RESUMED", "free_bytes=%llu msg=\"space is back: writes resume\"",
                 (unsigned long long)free_bytes(s));
        return true;
    }
    rocksdb_free(msg);
    /* still stopped (a failed WAL write is not recovered): reopen */
    struct timespec until = clock_wall_deadline(2000);
    if (pthread_rwlock_timedwrlock(&s->db_lock, &until) != 0)
        return false; /* readers all along; the next call tries again */
    bool ok = reopen_locked(s);
    if (ok) {
        atomic_store(&s->wedged, false);
        atomic_fetch_add(&s->resumes, 1);
    }
    pthread_rwlock_unlock(&s->db_lock);
    if (ok)
        log_warn("STORE-RESUMED", "free_bytes=%llu msg=\"space is back: writes resume\"",
                 (unsigned long long)free_bytes(s));
    return ok;
}

/* ---- blobs ---- */

void
blob_path(const store *s, const char *digest, char *out, size_t n)
{
    /* digest is validated: "alg:hex" */
    const char *colon = strchr(digest, ':');
    int alen = (int)(colon - digest);
    snprintf(out, n, "%s/%.*s/%.2s/%s", s->blob_dir, alen, digest, colon + 1, colon + 1);
}

void
blob_dir_of(const store *s, const char *digest, char *out, size_t n)
{
    const char *colon = strchr(digest, ':');
    int alen = (int)(colon - digest);
    snprintf(out, n, "%s/%.*s/%.2s", s->blob_dir, alen, digest, colon + 1);
}

/* A blob record: [ver=1][kind: 0 file, 1 inline][size u64][ctime_ms u64][inline bytes] */
#define BLOB_REC_HDR 18

void
blob_record(buf *out, uint64_t size, const void *inline_bytes)
{
    char hdr[BLOB_REC_HDR];
    hdr[0] = 1;
    hdr[1] = inline_bytes ? 1 : 0;
    put_u64le(hdr + 2, size);
    put_u64le(hdr + 10, clock_wall_ms());
    buf_reset(out);
    buf_add(out, hdr, sizeof hdr);
    if (inline_bytes)
        buf_add(out, inline_bytes, size);
}

static bool
blob_record_parse(slice v, uint64_t *size, bool *is_inline, slice *data)
{
    if (v.len < BLOB_REC_HDR || v.ptr[0] != 1)
        return false;
    *is_inline = v.ptr[1] == 1;
    *size = get_u64le(v.ptr + 2);
    if (*is_inline && v.len - BLOB_REC_HDR != *size)
        return false;
    *data = (slice){v.ptr + BLOB_REC_HDR, v.len - BLOB_REC_HDR};
    return true;
}

err
store_blob_get(store *s, const char *repo, const char *digest, unsigned flags, bool open_body,
               struct store_blob *out)
{
    buf k = BUF_INIT, v = BUF_INIT;
    err e;
    memset(out, 0, sizeof *out);
    out->fd = -1;
    buf_init(&out->data);
    if (repo) {
        if ((e = key2(&k, repo, digest)))
            goto out;
        e = rget(s, CF_BLOB_LINKS, flags, k.ptr, k.len, NULL);
        if (e == ERR_NOT_FOUND)
            e = ERR_BLOB_UNKNOWN;
        if (e)
            goto out;
    }
    e = rget(s, CF_BLOBS, flags, digest, strlen(digest), &v);
    if (e == ERR_NOT_FOUND)
        e = ERR_BLOB_UNKNOWN;
    if (e)
        goto out;
    slice data;
    if (!blob_record_parse(buf_slice(&v), &out->size, &out->is_inline, &data)) {
        log_error("STORE-CORRUPT", "what=blob_record digest=%s", digest);
        e = ERR_IO;
        goto out;
    }
    if (!open_body)
        goto out;
    if (out->is_inline) {
        /* the record buffer becomes the body: move it and drop the header */
        memmove(v.ptr, v.ptr + BLOB_REC_HDR, data.len);
        buf_truncate(&v, data.len);
        out->data = v;
        buf_init(&v);
    } else {
        if (flags & STORE_NOWAIT) {
            e = ERR_WOULDBLOCK;
            goto out;
        }
        char path[4400];
        blob_path(s, digest, path, sizeof path);
        out->fd = open(path, O_RDONLY | O_CLOEXEC);
        if (out->fd < 0) {
            log_error("STORE-BLOB-MISSING", "digest=%s path=%s error=\"%s\"", digest, path,
                      strerror(errno));
            e = ERR_IO;
            goto out;
        }
    }
out:
    buf_release(&k);
    buf_release(&v);
    return e;
}

void
store_blob_release(struct store_blob *b)
{
    if (b->fd >= 0)
        close(b->fd);
    b->fd = -1;
    buf_release(&b->data);
}

bool
store_blob_exists(store *s, const char *digest, uint64_t *size)
{
    buf v = BUF_INIT;
    bool ok = rget(s, CF_BLOBS, 0, digest, strlen(digest), &v) == ERR_OK;
    if (ok && size) {
        bool inl;
        slice d;
        ok = blob_record_parse(buf_slice(&v), size, &inl, &d);
    }
    buf_release(&v);
    return ok;
}

static void
put_repo(store *s, rocksdb_writebatch_t *wb, const char *repo)
{
    char t[8];
    put_u64le(t, clock_wall_ms());
    batch_put(s, wb, CF_REPOS, repo, strlen(repo), t, 8);
}

/* link_blob_locked adds the link and its event to wb and commits. */
err
link_blob_locked(store *s, rocksdb_writebatch_t *wb, const char *repo, const char *digest,
                 uint64_t size, uint64_t seq)
{
    buf k = BUF_INIT;
    err e = key2(&k, repo, digest);
    if (e)
        goto out;
    char t[8];
    put_u64le(t, clock_wall_ms());
    batch_put(s, wb, CF_BLOB_LINKS, k.ptr, k.len, t, 8);
    put_repo(s, wb, repo);
    struct store_event ev = {.seq = seq,
                             .type = EV_BLOB_LINK,
                             .repo = slice_of_cstr(repo),
                             .digest = slice_of_cstr(digest),
                             .size = size};
    e = commit_locked(s, wb, &ev);
out:
    buf_release(&k);
    return e;
}

err
store_blob_mount(store *s, const char *repo, const char *from_repo, const char *digest)
{
    struct store_blob b;
    err e = store_blob_get(s, from_repo, digest, 0, false, &b);
    if (e)
        return e;
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    pthread_mutex_lock(&s->commit_mu);
    e = link_blob_locked(s, wb, repo, digest, b.size, 0);
    pthread_mutex_unlock(&s->commit_mu);
    rocksdb_writebatch_destroy(wb);
    store_blob_release(&b);
    return e;
}

err
store_blob_delete(store *s, const char *repo, const char *digest)
{
    buf k = BUF_INIT;
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    err e = key2(&k, repo, digest);
    if (e)
        goto out;
    pthread_mutex_lock(&s->commit_mu);
    e = rget(s, CF_BLOB_LINKS, 0, k.ptr, k.len, NULL);
    if (e == ERR_NOT_FOUND)
        e = ERR_BLOB_UNKNOWN;
    if (!e) {
        batch_del(s, wb, CF_BLOB_LINKS, k.ptr, k.len);
        struct store_event ev = {.type = EV_BLOB_UNLINK,
                                 .repo = slice_of_cstr(repo),
                                 .digest = slice_of_cstr(digest)};
        e = commit_locked(s, wb, &ev);
    }
    pthread_mutex_unlock(&s->commit_mu);
out:
    rocksdb_writebatch_destroy(wb);
    buf_release(&k);
    return e;
}

/* ---- manifests ---- */

/* manifest value: [ver=1][mtlen u8][media type][body] */
static err
manifest_value(buf *out, const char *media_type, slice body)
{
    size_t mtl = strlen(media_type);
    if (mtl > 255)
        return ERR_MANIFEST_INVALID;
    char hdr[2] = {1, (char)mtl};
    buf_reset(out);
    err e = buf_add(out, hdr, 2);
    if (!e)
        e = buf_add(out, media_type, mtl);
    if (!e)
        e = buf_add(out, body.ptr, body.len);
    return e;
}

/* manifest link value: [time u64][subject digest or nothing]. stage_manifest_locked
 * adds everything of m to the batch and fills *ev with its log event (borrowing from
 * m), without committing. */
static err
stage_manifest_locked(store *s, rocksdb_writebatch_t *wb, const struct store_manifest_put *m,
                      char missing[DIGEST_MAX], uint64_t seq, struct store_event *ev)
{
    buf k = BUF_INIT, v = BUF_INIT;
    err e = ERR_OK;
    for (size_t i = 0; i < m->nrefs; i++) {
        const struct store_ref *r = &m->refs[i];
        if ((e = key2(&k, m->repo, r->digest)))
            goto out;
        e = rget(s, r->is_manifest ? CF_MANIFEST_LINKS : CF_BLOB_LINKS, 0, k.ptr, k.len, NULL);
        if (e == ERR_NOT_FOUND) {
            if (missing)
                str_copy(missing, DIGEST_MAX, r->digest);
            e = ERR_MANIFEST_BLOB_UNKNOWN;
        }
        if (e)
            goto out;
    }
    if ((e = manifest_value(&v, m->media_type, m->body)))
        goto out;
    batch_put(s, wb, CF_MANIFESTS, m->digest, strlen(m->digest), v.ptr, v.len);
    if ((e = key2(&k, m->repo, m->digest)))
        goto out;
    uint64_t evseq = seq == SEQ_NOLOG ? 0 : seq ? seq : s->head + 1;
    buf_reset(&v);
    char t[16];
    put_u64le(t, clock_wall_ms());
    put_u64le(t + 8, evseq);
    buf_add(&v, t, 16);
    if (m->subject)
        buf_adds(&v, m->subject);
    batch_put(s, wb, CF_MANIFEST_LINKS, k.ptr, k.len, v.ptr, v.len);
    put_repo(s, wb, m->repo);
    if (m->tag) {
        /* a moved tag leaves its old digest's reverse index */
        buf old = BUF_INIT;
        if ((e = key2(&k, m->repo, m->tag)))
            goto out;
        if (rget(s, CF_TAGS, 0, k.ptr, k.len, &old) == ERR_OK) {
            buf rk = BUF_INIT;
            key3(&rk, m->repo, old.ptr, m->tag);
            batch_del(s, wb, CF_TAG_INDEX, rk.ptr, rk.len);
            buf_release(&rk);
        }
        buf_release(&old);
        char tv[DIGEST_MAX + 8];
        size_t dl = strlen(m->digest);
        memcpy(tv, m->digest, dl + 1);
        put_u64le(tv + dl + 1, evseq);
        batch_put(s, wb, CF_TAGS, k.ptr, k.len, tv, dl + 9);
        if ((e = key3(&k, m->repo, m->digest, m->tag)))
            goto out;
        batch_put(s, wb, CF_TAG_INDEX, k.ptr, k.len, "", 0);
    }
    if (m->subject) {
        if ((e = key3(&k, m->repo, m->subject, m->digest)))
            goto out;
        batch_put(s, wb, CF_REFERRERS, k.ptr, k.len, m->descriptor.ptr, m->descriptor.len);
    }
    *ev = (struct store_event){.seq = seq,
                               .type = EV_MANIFEST_PUT,
                               .repo = slice_of_cstr(m->repo),
                               .digest = slice_of_cstr(m->digest),
                               .tag = slice_of_cstr(m->tag),
                               .media_type = slice_of_cstr(m->media_type),
                               .body = m->body,
                               .size = m->body.len};
out:
    buf_release(&k);
    buf_release(&v);
    return e;
}

err
put_manifest_locked(store *s, rocksdb_writebatch_t *wb, const struct store_manifest_put *m,
                    char missing[DIGEST_MAX], uint64_t seq)
{
    struct store_event ev;
    err e = stage_manifest_locked(s, wb, m, missing, seq, &ev);
    return e ? e : commit_locked(s, wb, &ev);
}

err
store_manifest_put(store *s, const struct store_manifest_put *m, char missing[DIGEST_MAX])
{
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    pthread_mutex_lock(&s->commit_mu);
    err e = put_manifest_locked(s, wb, m, missing, 0);
    pthread_mutex_unlock(&s->commit_mu);
    rocksdb_writebatch_destroy(wb);
    return e;
}

err
store_manifest_put_tags(store *s, const struct store_manifest_put *m, const char *const *tags,
                        size_t ntags, char missing[DIGEST_MAX])
{
    if (ntags > STORE_MAX_TAGS_PER_PUT)
        return ERR_INVALID;
    for (size_t i = 0; i < ntags; i++) {
        if (!tags[i] || !ref_tag_valid(slice_of_cstr(tags[i])))
            return ERR_INVALID;
        for (size_t j = 0; j < i; j++)
            if (strcmp(tags[i], tags[j]) == 0)
                return ERR_INVALID;
    }
    if (ntags <= 1) {
        struct store_manifest_put one = *m;
        one.tag = ntags ? tags[0] : NULL;
        return store_manifest_put(s, &one, missing);
    }
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    err e = ERR_OK;
    pthread_mutex_lock(&s->commit_mu);
    /* one log event per tag, numbered head+1 ... head+ntags, all in one batch: the
     * tags become visible here together, and a secondary applies them in order */
    uint64_t base = s->head;
    struct store_manifest_put one = *m;
    struct store_event ev;
    for (size_t i = 0; i < ntags && !e; i++) {
        one.tag = tags[i];
        e = stage_manifest_locked(s, wb, &one, missing, base + 1 + i, &ev);
        if (!e && i + 1 < ntags)
            e = log_event_locked(s, wb, &ev, base + 1 + i);
    }
    if (!e)
        e = commit_locked(s, wb, &ev);
    pthread_mutex_unlock(&s->commit_mu);
    rocksdb_writebatch_destroy(wb);
    return e;
}

/* ---- the hot-manifest cache ---- */

/* mcache_get copies a cached manifest into out. An entry is only used when no
 * commit happened since it was filled: its gen was read before the lookup that
 * filled it, and gen moves after each write becomes visible. */
static bool
mcache_get(store *s, const buf *k, uint32_t h, struct store_manifest *out)
{
    struct mcache_slot *e = &s->mcache[h % MCACHE_SLOTS];
    pthread_mutex_t *mu = &s->mcache_mu[h % MCACHE_SHARDS];
    bool hit = false;
    pthread_mutex_lock(mu);
    if (e->gen && e->gen == atomic_load(&s->gen) && e->hash == h && k->len < sizeof e->key &&
        memcmp(e->key, k->ptr, k->len + 1) == 0) {
        str_copy(out->digest, sizeof out->digest, e->digest);
        str_copy(out->media_type, sizeof out->media_type, e->media_type);
        hit = buf_add(&out->body, e->body, e->len) == ERR_OK;
    }
    pthread_mutex_unlock(mu);
    return hit;
}

static void
mcache_put(store *s, const buf *k, uint32_t h, uint64_t gen, const struct store_manifest *m)
{
    if (m->body.len > MCACHE_BODY_MAX || k->len >= REF_KEY_MAX ||
        strlen(m->media_type) >= sizeof s->mcache[0].media_type)
        return;
    struct mcache_slot *e = &s->mcache[h % MCACHE_SLOTS];
    pthread_mutex_t *mu = &s->mcache_mu[h % MCACHE_SHARDS];
    pthread_mutex_lock(mu);
    e->gen = gen;
    e->hash = h;
    memcpy(e->key, k->ptr, k->len + 1);
    str_copy(e->digest, sizeof e->digest, m->digest);
    str_copy(e->media_type, sizeof e->media_type, m->media_type);
    memcpy(e->body, m->body.ptr, m->body.len);
    e->len = m->body.len;
    pthread_mutex_unlock(mu);
}

err
store_manifest_get(store *s, const char *repo, const char *ref, unsigned flags,
                   struct store_manifest *out)
{
    buf k = BUF_INIT, v = BUF_INIT;
    err e;
    buf_init(&out->body);
    if ((e = key2(&k, repo, ref)))
        goto out;
    /* key2 wrote repo\0ref; the hash covers both parts */
    uint32_t h = fnv1a(k.ptr, k.len);
    uint64_t gen = atomic_load(&s->gen);
    if (mcache_get(s, &k, h, out))
        goto out;
    if (ref_is_digest(slice_of_cstr(ref))) {
        e = rget(s, CF_MANIFEST_LINKS, flags, k.ptr, k.len, NULL);
        str_copy(out->digest, sizeof out->digest, ref);
    } else {
        e = rget(s, CF_TAGS, flags, k.ptr, k.len, &v);
        if (!e)
            str_copy(out->digest, sizeof out->digest, v.ptr);
    }
    if (e == ERR_NOT_FOUND)
        e = ERR_MANIFEST_UNKNOWN;
    if (e)
        goto out;
    e = rget(s, CF_MANIFESTS, flags, out->digest, strlen(out->digest), &v);
    if (e == ERR_NOT_FOUND)
        e = ERR_MANIFEST_UNKNOWN;
    if (e)
        goto out;
    if (v.len < 2 || v.ptr[0] != 1 || v.len < 2 + (size_t)(unsigned char)v.ptr[1]) {
        log_error("STORE-CORRUPT", "what=manifest digest=%s", out->digest);
        e = ERR_IO;
        goto out;
    }
    size_t mtl = (unsigned char)v.ptr[1];
    str_copy_slice(out->media_type, sizeof out->media_type, (slice){v.ptr + 2, mtl});
    memmove(v.ptr, v.ptr + 2 + mtl, v.len - 2 - mtl);
    buf_truncate(&v, v.len - 2 - mtl);
    out->body = v;
    buf_init(&v);
    mcache_put(s, &k, h, gen, out);
out:
    buf_release(&k);
    buf_release(&v);
    return e;
}

/* delete_tags_of_locked removes every tag of repo pointing at digest. */
static err
delete_tags_of_locked(store *s, rocksdb_writebatch_t *wb, const char *repo, const char *digest)
{
    buf prefix = BUF_INIT, k = BUF_INIT;
    err e = key3(&prefix, repo, digest, "");
    if (e)
        goto out;
    rocksdb_iterator_t *it = db_iter(s, s->ro, CF_TAG_INDEX);
    for (rocksdb_iter_seek(it, prefix.ptr, prefix.len); rocksdb_iter_valid(it);
         rocksdb_iter_next(it)) {
        size_t kl;
        const char *key = rocksdb_iter_key(it, &kl);
        if (kl < prefix.len || memcmp(key, prefix.ptr, prefix.len) != 0)
            break;
        batch_del(s, wb, CF_TAG_INDEX, key, kl);
        buf_reset(&k);
        buf_add(&k, repo, strlen(repo) + 1);
        buf_add(&k, key + prefix.len, kl - prefix.len);
        batch_del(s, wb, CF_TAGS, k.ptr, k.len);
    }
    char *msg = NULL;
    rocksdb_iter_get_error(it, &msg);
    e = rdb_err("iter", msg);
    db_iter_end(s, it);
out:
    buf_release(&prefix);
    buf_release(&k);
    return e;
}

err
delete_manifest_locked(store *s, rocksdb_writebatch_t *wb, const char *repo, const char *digest,
                       uint64_t seq)
{
    buf k = BUF_INIT, v = BUF_INIT;
    err e = key2(&k, repo, digest);
    if (e)
        goto out;
    e = rget(s, CF_MANIFEST_LINKS, 0, k.ptr, k.len, &v);
    if (e == ERR_NOT_FOUND)
        e = ERR_MANIFEST_UNKNOWN;
    if (e)
        goto out;
    batch_del(s, wb, CF_MANIFEST_LINKS, k.ptr, k.len);
    if (v.len > 16) {
        buf rk = BUF_INIT;
        key3(&rk, repo, v.ptr + 16, digest);
        batch_del(s, wb, CF_REFERRERS, rk.ptr, rk.len);
        buf_release(&rk);
    }
    if ((e = delete_tags_of_locked(s, wb, repo, digest)))
        goto out;
    struct store_event ev = {.seq = seq,
                             .type = EV_MANIFEST_DELETE,
                             .repo = slice_of_cstr(repo),
                             .digest = slice_of_cstr(digest)};
    e = commit_locked(s, wb, &ev);
out:
    buf_release(&k);
    buf_release(&v);
    return e;
}

err
store_manifest_delete(store *s, const char *repo, const char *digest)
{
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    pthread_mutex_lock(&s->commit_mu);
    err e = delete_manifest_locked(s, wb, repo, digest, 0);
    pthread_mutex_unlock(&s->commit_mu);
    rocksdb_writebatch_destroy(wb);
    return e;
}

err
delete_tag_locked(store *s, rocksdb_writebatch_t *wb, const char *repo, const char *tag,
                  uint64_t seq)
{
    buf k = BUF_INIT, v = BUF_INIT;
    err e = key2(&k, repo, tag);
    if (e)
        goto out;
    e = rget(s, CF_TAGS, 0, k.ptr, k.len, &v);
    if (e == ERR_NOT_FOUND)
        e = ERR_MANIFEST_UNKNOWN;
    if (e)
        goto out;
    batch_del(s, wb, CF_TAGS, k.ptr, k.len);
    buf rk = BUF_INIT;
    key3(&rk, repo, v.ptr, tag);
    batch_del(s, wb, CF_TAG_INDEX, rk.ptr, rk.len);
    buf_release(&rk);
    struct store_event ev = {
        .seq = seq, .type = EV_TAG_DELETE, .repo = slice_of_cstr(repo), .tag = slice_of_cstr(tag)};
    e = commit_locked(s, wb, &ev);
out:
    buf_release(&k);
    buf_release(&v);
    return e;
}

err
store_tag_delete(store *s, const char *repo, const char *tag)
{
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    pthread_mutex_lock(&s->commit_mu);
    err e = delete_tag_locked(s, wb, repo, tag, 0);
    pthread_mutex_unlock(&s->commit_mu);
    rocksdb_writebatch_destroy(wb);
    return e;
}

/* ---- listings ---- */

/* list_prefix iterates keys of cf that start with prefix, strictly after prefix+last
 * (when last is set), calling cb with the key minus the prefix. */
static err
list_prefix(store *s, enum store_cf cf, slice prefix, const char *last, size_t n, store_list_cb cb,
            void *arg, bool *more)
{
    buf start = BUF_INIT;
    err e = buf_add(&start, prefix.ptr, prefix.len);
    if (!e && last)
        e = buf_adds(&start, last);
    if (e)
        goto out;
    if (more)
        *more = false;
    rocksdb_iterator_t *it = db_iter(s, s->ro, cf);
    size_t count = 0;
    for (rocksdb_iter_seek(it, start.ptr, start.len); rocksdb_iter_valid(it);
         rocksdb_iter_next(it)) {
        size_t kl, vl;
        const char *key = rocksdb_iter_key(it, &kl);
        if (kl < prefix.len || memcmp(key, prefix.ptr, prefix.len) != 0)
            break;
        if (last && kl == start.len && memcmp(key, start.ptr, kl) == 0)
            continue;
        if (count == n) {
            if (more)
                *more = true;
            break;
        }
        const char *val = rocksdb_iter_value(it, &vl);
        count++;
        if (!cb(arg, (slice){key + prefix.len, kl - prefix.len}, (slice){val, vl}))
            break;
    }
    char *msg = NULL;
    rocksdb_iter_get_error(it, &msg);
    e = rdb_err("iter", msg);
    db_iter_end(s, it);
out:
    buf_release(&start);
    return e;
}

bool
store_repo_exists(store *s, const char *repo)
{
    return rget(s, CF_REPOS, 0, repo, strlen(repo), NULL) == ERR_OK;
}

err
store_tags_list(store *s, const char *repo, const char *last, size_t n, store_list_cb cb,
                void *arg, bool *more)
{
    if (!store_repo_exists(s, repo))
        return ERR_NAME_UNKNOWN;
    return list_prefix(s, CF_TAGS, (slice){repo, strlen(repo) + 1}, last, n, cb, arg, more);
}

/* The catalog's values are internal (creation times); callers get names with an empty
 * value, as store.h promises. */
struct keys_only {
    store_list_cb cb;
    void *arg;
};

static bool
on_key_only(void *p, slice key, slice value)
{
    struct keys_only *k = p;
    (void)value;
    return k->cb(k->arg, key, (slice){"", 0});
}

err
store_catalog_list(store *s, const char *last, size_t n, store_list_cb cb, void *arg, bool *more)
{
    struct keys_only k = {cb, arg};
    return list_prefix(s, CF_REPOS, (slice){"", 0}, last, n, on_key_only, &k, more);
}

err
store_referrers_list(store *s, const char *repo, const char *subject, store_list_cb cb, void *arg)
{
    buf prefix = BUF_INIT;
    err e = key3(&prefix, repo, subject, "");
    if (!e)
        e = list_prefix(s, CF_REFERRERS, buf_slice(&prefix), NULL, SIZE_MAX, cb, arg, NULL);
    buf_release(&prefix);
    return e;
}

/* ---- log ---- */

uint64_t
store_log_head(store *s)
{
    pthread_mutex_lock(&s->commit_mu);
    uint64_t h = s->head;
    pthread_mutex_unlock(&s->commit_mu);
    return h;
}

uint64_t
store_log_first(store *s)
{
    uint64_t first = store_log_head(s) + 1;
    rocksdb_iterator_t *it = db_iter(s, s->ro, CF_REPLOG);
    rocksdb_iter_seek_to_first(it);
    if (rocksdb_iter_valid(it)) {
        size_t kl;
        const char *k = rocksdb_iter_key(it, &kl);
        if (kl == 8)
            first = get_u64be(k);
    }
    db_iter_end(s, it);
    return first;
}

err
store_log_read(store *s, uint64_t from, size_t max, store_event_cb cb, void *arg)
{
    char k[8];
    put_u64be(k, from);
    rocksdb_iterator_t *it = db_iter(s, s->ro, CF_REPLOG);
    size_t count = 0;
    err e = ERR_OK;
    for (rocksdb_iter_seek(it, k, 8); rocksdb_iter_valid(it) && count < max;
         rocksdb_iter_next(it)) {
        size_t kl, vl;
        const char *key = rocksdb_iter_key(it, &kl);
        const char *val = rocksdb_iter_value(it, &vl);
        struct store_event ev;
        if (kl != 8 || !decode_event(val, vl, &ev)) {
            log_error("STORE-CORRUPT", "what=log_event");
            e = ERR_IO;
            break;
        }
        ev.seq = get_u64be(key);
        count++;
        if (!cb(arg, &ev))
            break;
    }
    if (!e) {
        char *msg = NULL;
        rocksdb_iter_get_error(it, &msg);
        e = rdb_err("iter", msg);
    }
    db_iter_end(s, it);
    return e;
}

err
store_log_trim(store *s, uint64_t before)
{
    char a[8], b[8];
    put_u64be(a, 0);
    put_u64be(b, before);
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    pthread_mutex_lock(&s->commit_mu);
    rocksdb_writebatch_delete_range_cf(wb, s->cf[CF_REPLOG], a, 8, b, 8);
    char h[8];
    put_u64le(h, s->head);
    batch_put(s, wb, CF_DEFAULT, "m/log_head", 10, h, 8);
    err e = commit_locked(s, wb, NULL);
    pthread_mutex_unlock(&s->commit_mu);
    rocksdb_writebatch_destroy(wb);
    return e;
}

/* ---- metadata ---- */

err
store_meta_get(store *s, const char *key, buf *out)
{
    buf k = BUF_INIT;
    err e = buf_addf(&k, "u/%s", key);
    if (!e)
        e = rget(s, CF_DEFAULT, 0, k.ptr, k.len, out);
    buf_release(&k);
    return e;
}

err
store_meta_put(store *s, const char *key, const void *val, size_t len)
{
    buf k = BUF_INIT;
    err e = buf_addf(&k, "u/%s", key);
    if (!e)
        e = db_room(s);
    if (!e) {
        char *msg = NULL;
        db_rlock(s);
        rocksdb_put_cf(s->db, s->wo, s->cf[CF_DEFAULT], k.ptr, k.len, val, len, &msg);
        db_unlock(s);
        e = rdb_werr(s, "put", msg);
    }
    buf_release(&k);
    return e;
}

void
store_get_stats(store *s, struct store_stats *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&s->uploads_mu);
    out->uploads_open = s->nsessions;
    pthread_mutex_unlock(&s->uploads_mu);
}
