/* Private to storage/: the store struct, column families and helpers shared by
 * store.c and upload.c. */
#ifndef GEOREG_STORE_INT_H
#define GEOREG_STORE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <rocksdb/c.h>

#include "store.h"

/* repo (255) + \0 + tag or digest (136) */
#define REF_KEY_MAX 400

enum store_cf {
    CF_DEFAULT = 0,    /* node metadata: "m/..." internal, "u/..." store_meta_* */
    CF_BLOBS,          /* digest -> blob record (size, inline bytes or file) */
    CF_BLOB_LINKS,     /* repo\0digest -> time */
    CF_MANIFESTS,      /* digest -> media type + byte-exact body */
    CF_MANIFEST_LINKS, /* repo\0digest -> time + subject digest */
    CF_TAGS,           /* repo\0tag -> digest */
    CF_TAG_INDEX,      /* repo\0digest\0tag -> "" (tags of a manifest, for deletes) */
    CF_REFERRERS,      /* repo\0subject\0referrer -> descriptor JSON */
    CF_UPLOADS,        /* upload id -> session record */
    CF_REPLOG,         /* big-endian seq -> event */
    CF_REPOS,          /* repo -> creation time (the catalog) */
    CF_AUDIT,          /* big-endian time_us + counter -> JSON entry (per node) */
    CF__COUNT
};

#define UPLOAD_BUCKETS 256

/* fnv1a: a 32-bit FNV-1a hash, for the upload table's buckets and the hot-manifest
 * cache's slots (not for anything an attacker must not steer: both are bounded). */
static inline uint32_t
fnv1a(const void *p, size_t n)
{
    const unsigned char *c = p;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ c[i]) * 16777619u;
    return h;
}

/* The hot-manifest cache: direct-mapped slots keyed by repo\0ref, valid while no
 * commit happened since they were filled (store->gen). Bounded: MCACHE_SLOTS slots
 * of at most MCACHE_BODY_MAX bytes each (8 MiB in all). */
#define MCACHE_SLOTS 2048
#define MCACHE_SHARDS 64
#define MCACHE_BODY_MAX 4096

struct mcache_slot {
    uint64_t gen; /* 0: empty */
    uint32_t hash;
    char key[REF_KEY_MAX];
    char digest[DIGEST_MAX];
    char media_type[128];
    size_t len;
    char body[MCACHE_BODY_MAX];
};
/* A seq argument meaning "apply but do not log" (resync records). */
#define SEQ_NOLOG UINT64_MAX

struct store {
    char dir[4096];
    char blob_dir[4200];
    char upload_dir[4200];
    uint64_t inline_max;
    rocksdb_t *db;
    rocksdb_column_family_handle_t *cf[CF__COUNT];
    /* inside a resync: every link, tag and catalog entry written gets a marker, and
     * the end sweeps what has none (the old state stays readable meanwhile) */
    _Atomic bool resync_marking;
    rocksdb_options_t *opts;
    rocksdb_block_based_table_options_t *bbto;
    rocksdb_cache_t *cache;
    rocksdb_readoptions_t *ro, *ro_nowait;
    rocksdb_writeoptions_t *wo, *wo_nosync;

    /* Serialises every committing writer: sequence numbers and read-modify-write
     * checks (manifest refs, tag moves) happen under it. */
    pthread_mutex_t commit_mu;
    uint64_t head;    /* highest committed log seq; under commit_mu */
    uint64_t applied; /* secondary: highest primary seq applied; under commit_mu */
    void (*hook)(void *arg, uint64_t seq);
    void *hook_arg;

    pthread_mutex_t uploads_mu;
    struct store_upload *uploads[UPLOAD_BUCKETS];
    size_t nuploads;
    /* persisted sessions, counted at open and kept up to date; under uploads_mu */
    size_t nsessions;
    struct owner_count *owners[UPLOAD_BUCKETS];
    unsigned max_uploads, max_uploads_per_owner;

    _Atomic uint64_t rmeta_version;

    /* bumped after every commit: what was read before is possibly stale */
    _Atomic uint64_t gen;
    pthread_mutex_t mcache_mu[MCACHE_SHARDS];
    struct mcache_slot *mcache;

    pthread_mutex_t audit_mu;
    uint64_t audit_last_us; /* audit keys are strictly increasing */

    /* Full disk (issue 8 §6). Every use of db holds db_lock for reading; a resume
     * (close and reopen after RocksDB stopped writing) holds it for writing. */
    pthread_rwlock_t db_lock;
    char dbdir[4200];
    _Atomic bool wedged;        /* RocksDB refused a write for lack of space */
    bool read_only_db;          /* a resume could only reopen the db read-only */
    uint64_t min_free;          /* refuse new writes below this many free bytes */
    _Atomic uint64_t space_refusals, resumes;
};

void put_u64le(char *p, uint64_t v);
uint64_t get_u64le(const char *p);
err key2(buf *k, const char *a, const char *b);
err rget(store *s, enum store_cf cf, unsigned flags, const char *k, size_t klen, buf *out);
/* RESYNC_MARK_KEY: persisted while a resync marks (a restart resumes marking). */
#define RESYNC_MARK_KEY "m/resync_marking"
/* resync_marked_cf: the column families a resync rebuilds (marked, then swept). */
bool resync_marked_cf(enum store_cf cf);
void batch_put(store *s, rocksdb_writebatch_t *wb, enum store_cf cf, const char *k, size_t klen,
               const char *v, size_t vlen);
void batch_del(store *s, rocksdb_writebatch_t *wb, enum store_cf cf, const char *k, size_t klen);
err commit_locked(store *s, rocksdb_writebatch_t *wb, struct store_event *ev);
err link_blob_locked(store *s, rocksdb_writebatch_t *wb, const char *repo, const char *digest,
                     uint64_t size, uint64_t seq);
void blob_path(const store *s, const char *digest, char *out, size_t n);
void blob_dir_of(const store *s, const char *digest, char *out, size_t n);
void blob_record(buf *out, uint64_t size, const void *inline_bytes);
err fsync_dir(const char *dir);
void uploads_free_all(store *s);
/* uploads_count counts the persisted sessions (and per owner) at open. */
void uploads_count(store *s);
err put_manifest_locked(store *s, rocksdb_writebatch_t *wb, const struct store_manifest_put *m,
                        char missing[DIGEST_MAX], uint64_t seq);
err delete_manifest_locked(store *s, rocksdb_writebatch_t *wb, const char *repo,
                           const char *digest, uint64_t seq);
err delete_tag_locked(store *s, rocksdb_writebatch_t *wb, const char *repo, const char *tag,
                      uint64_t seq);
void put_u64be(char *p, uint64_t v);
uint64_t get_u64be(const char *p);
err rdb_err(const char *what, char *msg);
/* rdb_werr is rdb_err for a write: a full disk is ERR_INSUFFICIENT_STORAGE and
 * marks the store wedged until store_resume reopens it. */
err rdb_werr(store *s, const char *what, char *msg);
/* db_iter / db_iter_end: an iterator over cf, holding db_lock (for reading) while
 * it lives. */
rocksdb_iterator_t *db_iter(store *s, const rocksdb_readoptions_t *ro, enum store_cf cf);
void db_iter_end(store *s, rocksdb_iterator_t *it);
/* db_room: ERR_INSUFFICIENT_STORAGE (counted) when fewer than min_free/4 bytes are
 * free, checked before every RocksDB write: RocksDB itself never meets ENOSPC while
 * the reserve holds (Debian's build asserts on a write after a failed WAL append). */
err db_room(store *s);
/* content_room: the same for content-file bytes (uploads), at min_free/2. */
err content_room(store *s);
void db_rlock(store *s);
void db_unlock(store *s);

#endif
