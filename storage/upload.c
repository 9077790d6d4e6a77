/* Upload sessions: bytes stream once into dir/uploads/<id> while being hashed; on
 * finish the file is verified, fsynced and renamed into its content-addressed
 * place (or moved inline into RocksDB when small) before one synced commit makes
 * the blob visible. Sessions are persisted, so an upload survives a restart; the
 * hash state is rebuilt by re-reading the file. An idle session holds no file
 * descriptor (open on acquire, closed on release), and sessions are counted per
 * node and per owner so that a client cannot open them without bound. */
#include <errno.h>
#include <fcntl.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/clock.h"
#include "store_int.h"
#include "../common/log.h"
#include "../common/banned.h"

/* Start kernel writeback every this many bytes so the final fsync has little left. */
#define UPLOAD_WRITEBACK_STEP (8u << 20)

/* Hashing behind the writes (store_upload_write_deferred): a thread per upload that
 * feeds queued buffers to the upload's hasher in order. A job stays counted while
 * it is being hashed, so count == 0 means every written byte has been hashed. */
struct hash_job {
    const void *ptr;
    size_t len;
    void (*done)(void *arg);
    void *arg;
};

struct hashq {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t work; /* a job was queued, or stop */
    pthread_cond_t idle; /* a job was hashed */
    struct hash_job job[STORE_HASH_QUEUE];
    unsigned head, count;
    bool stop;
};

struct store_upload {
    struct store_upload *next; /* bucket chain, under uploads_mu */
    struct hashq *hq;          /* NULL until the first deferred write */
    char id[STORE_UPLOAD_ID_LEN + 1];
    char repo[256];
    char owner[64]; /* who opened it ("" for internal uploads) */
    int fd;         /* open only while busy */
    hasher *h; /* SHA-256 of bytes [0, offset) */
    uint64_t offset;
    uint64_t synced_to; /* writeback started up to here */
    uint64_t room_checked; /* free space last looked at, at this offset */
    store *s;
    uint64_t created_s;
    uint64_t touched_s;
    bool busy;  /* a request holds it; under uploads_mu */
    err broken; /* a failed write poisons the session */
};

static unsigned
bucket_of(const char *id)
{
    return fnv1a(id, strlen(id)) % UPLOAD_BUCKETS;
}

/* open sessions of one owner */
struct owner_count {
    struct owner_count *next;
    char owner[64];
    unsigned n;
};

/* owner_locked finds owner's counter, creating it (at 0) when create; NULL if absent
 * or out of memory. */
static struct owner_count *
owner_locked(store *s, const char *owner, bool create)
{
    unsigned b = bucket_of(owner);
    struct owner_count *o = s->owners[b];
    while (o && strcmp(o->owner, owner) != 0)
        o = o->next;
    if (!o && create && (o = calloc(1, sizeof *o))) {
        str_copy(o->owner, sizeof o->owner, owner);
        o->next = s->owners[b];
        s->owners[b] = o;
    }
    return o;
}

/* session_uncount_locked forgets one persisted session of owner. */
static void
session_uncount_locked(store *s, const char *owner)
{
    if (s->nsessions)
        s->nsessions--;
    if (!owner[0])
        return;
    unsigned b = bucket_of(owner);
    struct owner_count **pp = &s->owners[b];
    while (*pp && strcmp((*pp)->owner, owner) != 0)
        pp = &(*pp)->next;
    struct owner_count *o = *pp;
    if (o && --o->n == 0) {
        *pp = o->next;
        free(o);
    }
}

static void
session_count_locked(store *s, const char *owner)
{
    s->nsessions++;
    struct owner_count *o = owner[0] ? owner_locked(s, owner, true) : NULL;
    if (o)
        o->n++;
}


static void
upload_path(const store *s, const char *id, char *out, size_t n)
{
    snprintf(out, n, "%s/%s", s->upload_dir, id);
}

/* hashq_free releases u's queue (its thread, if any, has been joined). */
static void
hashq_free(struct store_upload *u)
{
    struct hashq *q = u->hq;
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->work);
    pthread_cond_destroy(&q->idle);
    free(q);
    u->hq = NULL;
}

/* hashq_drain waits until every queued buffer of u has been hashed. */
static void
hashq_drain(struct store_upload *u)
{
    struct hashq *q = u->hq;
    if (!q)
        return;
    pthread_mutex_lock(&q->mu);
    while (q->count)
        pthread_cond_wait(&q->idle, &q->mu);
    pthread_mutex_unlock(&q->mu);
}

static void
hashq_stop(struct store_upload *u)
{
    struct hashq *q = u->hq;
    if (!q)
        return;
    pthread_mutex_lock(&q->mu);
    q->stop = true;
    pthread_cond_signal(&q->work);
    pthread_mutex_unlock(&q->mu);
    pthread_join(q->th, NULL); /* the thread hashes what is queued before it stops */
    hashq_free(u);
}

static void *
hashq_main(void *arg)
{
    struct store_upload *u = arg;
    struct hashq *q = u->hq;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (!q->count && !q->stop)
            pthread_cond_wait(&q->work, &q->mu);
        if (!q->count)
            break;
        struct hash_job j = q->job[q->head];
        pthread_mutex_unlock(&q->mu);
        hasher_update(u->h, j.ptr, j.len);
        j.done(j.arg);
        pthread_mutex_lock(&q->mu);
        q->head = (q->head + 1) % STORE_HASH_QUEUE;
        q->count--;
        pthread_cond_broadcast(&q->idle);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

static err
hashq_start(struct store_upload *u)
{
    struct hashq *q = calloc(1, sizeof *q);
    if (!q)
        return ERR_NOMEM;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->work, NULL);
    pthread_cond_init(&q->idle, NULL);
    u->hq = q;
    if (pthread_create(&q->th, NULL, hashq_main, u) != 0) {
        hashq_free(u);
        return ERR_NOMEM;
    }
    return ERR_OK;
}

static void
upload_free(struct store_upload *u)
{
    if (!u)
        return;
    hashq_stop(u);
    if (u->fd >= 0)
        close(u->fd);
    hasher_free(u->h);
    free(u);
}

void
uploads_free_all(store *s)
{
    for (int i = 0; i < UPLOAD_BUCKETS; i++) {
        struct store_upload *u = s->uploads[i], *n;
        for (; u; u = n) {
            n = u->next;
            upload_free(u);
        }
        s->uploads[i] = NULL;
    }
    s->nuploads = 0;
    for (int i = 0; i < UPLOAD_BUCKETS; i++) {
        struct owner_count *o = s->owners[i], *n;
        for (; o; o = n) {
            n = o->next;
            free(o);
        }
        s->owners[i] = NULL;
    }
    s->nsessions = 0;
}

/* session record: [ver=2][offset u64][created u64][touched u64][owner len u8][owner]
 * [repo]; version 1 (before owners) had no owner length and owner. */
static err
put_session(store *s, const struct store_upload *u, bool sync)
{
    char v[26 + 64 + 256];
    size_t rl = strlen(u->repo), ol = strlen(u->owner);
    v[0] = 2;
    put_u64le(v + 1, u->offset);
    put_u64le(v + 9, u->created_s);
    put_u64le(v + 17, u->touched_s);
    v[25] = (char)ol;
    memcpy(v + 26, u->owner, ol);
    memcpy(v + 26 + ol, u->repo, rl);
    char *msg = NULL;
    err room = db_room(s);
    if (room)
        return room;
    db_rlock(s);
    rocksdb_put_cf(s->db, sync ? s->wo : s->wo_nosync, s->cf[CF_UPLOADS], u->id,
                   STORE_UPLOAD_ID_LEN, v, 26 + ol + rl, &msg);
    db_unlock(s);
    if (msg)
        return rdb_werr(s, "put_session", msg);
    return ERR_OK;
}

static bool
parse_session(slice v, struct store_upload *u)
{
    size_t at = 25, ol = 0;
    if (v.len < 25 || (v.ptr[0] != 1 && v.ptr[0] != 2))
        return false;
    if (v.ptr[0] == 2) {
        if (v.len < 26 || (ol = (unsigned char)v.ptr[25]) >= sizeof u->owner || v.len < 26 + ol)
            return false;
        at = 26 + ol;
    }
    if (v.len - at >= sizeof u->repo)
        return false;
    u->offset = get_u64le(v.ptr + 1);
    u->created_s = get_u64le(v.ptr + 9);
    u->touched_s = get_u64le(v.ptr + 17);
    memcpy(u->owner, v.ptr + 26, ol);
    u->owner[ol] = '\0';
    memcpy(u->repo, v.ptr + at, v.len - at);
    u->repo[v.len - at] = '\0';
    return true;
}

void
uploads_count(store *s)
{
    rocksdb_iterator_t *it = db_iter(s, s->ro, CF_UPLOADS);
    pthread_mutex_lock(&s->uploads_mu);
    for (rocksdb_iter_seek_to_first(it); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t vl;
        const char *v = rocksdb_iter_value(it, &vl);
        struct store_upload tmp;
        if (parse_session((slice){v, vl}, &tmp))
            session_count_locked(s, tmp.owner);
    }
    pthread_mutex_unlock(&s->uploads_mu);
    db_iter_end(s, it);
}

err
store_upload_create(store *s, const char *repo, char id[STORE_UPLOAD_ID_LEN + 1])
{
    return store_upload_create_for(s, repo, NULL, id);
}

err
store_upload_create_for(store *s, const char *repo, const char *owner,
                        char id[STORE_UPLOAD_ID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char rnd[STORE_UPLOAD_ID_LEN / 2];
    struct store_upload *u = NULL;
    char path[4300];
    err e = ERR_NOMEM;
    bool counted = false;
    if (strlen(repo) >= sizeof u->repo)
        return ERR_NAME_INVALID;
    if (RAND_bytes(rnd, sizeof rnd) != 1)
        return ERR_INTERNAL;
    u = calloc(1, sizeof *u);
    if (!u)
        goto out;
    u->fd = -1;
    u->s = s;
    str_copy(u->owner, sizeof u->owner, owner ? owner : "");
    /* the caps are checked and the session counted at once, so that concurrent
     * creators cannot all slip under them */
    pthread_mutex_lock(&s->uploads_mu);
    if (owner) {
        struct owner_count *o = u->owner[0] ? owner_locked(s, u->owner, false) : NULL;
        if ((s->max_uploads && s->nsessions >= s->max_uploads) ||
            (s->max_uploads_per_owner && o && o->n >= s->max_uploads_per_owner)) {
            pthread_mutex_unlock(&s->uploads_mu);
            log_debug("STORE-UPLOAD-CAP", "owner=%s sessions=%zu", u->owner, s->nsessions);
            e = ERR_TOOMANYREQUESTS;
            goto out;
        }
    }
    session_count_locked(s, u->owner);
    counted = true;
    pthread_mutex_unlock(&s->uploads_mu);
    for (size_t i = 0; i < sizeof rnd; i++) {
        u->id[2 * i] = hex[rnd[i] >> 4];
        u->id[2 * i + 1] = hex[rnd[i] & 15];
    }
    str_copy(u->repo, sizeof u->repo, repo);
    u->created_s = u->touched_s = clock_wall_s();
    if (!(u->h = hasher_new(DIGEST_SHA256)))
        goto out;
    upload_path(s, u->id, path, sizeof path);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        log_error("STORE-UPLOAD-CREATE", "path=%s error=\"%s\"", path, strerror(errno));
        e = ERR_IO;
        goto out;
    }
    close(fd); /* an idle session holds no descriptor */
    if ((e = put_session(s, u, false))) {
        unlink(path);
        goto out;
    }
    memcpy(id, u->id, STORE_UPLOAD_ID_LEN + 1);
    pthread_mutex_lock(&s->uploads_mu);
    unsigned b = bucket_of(u->id);
    u->next = s->uploads[b];
    s->uploads[b] = u;
    s->nuploads++;
    pthread_mutex_unlock(&s->uploads_mu);
    u = NULL;
    e = ERR_OK;
out:
    if (u && counted) {
        pthread_mutex_lock(&s->uploads_mu);
        session_uncount_locked(s, u->owner);
        pthread_mutex_unlock(&s->uploads_mu);
    }
    upload_free(u);
    return e;
}

/* find_locked returns the in-memory session or NULL. */
static struct store_upload *
find_locked(store *s, const char *id)
{
    for (struct store_upload *u = s->uploads[bucket_of(id)]; u; u = u->next)
        if (strcmp(u->id, id) == 0)
            return u;
    return NULL;
}

static void
unlink_locked(store *s, struct store_upload *u)
{
    struct store_upload **pp = &s->uploads[bucket_of(u->id)];
    for (; *pp; pp = &(*pp)->next) {
        if (*pp == u) {
            *pp = u->next;
            s->nuploads--;
            return;
        }
    }
}

/* rehash reads [0, len) of fd into h. */
static err
rehash(int fd, uint64_t len, hasher *h)
{
    size_t cap = 1u << 20;
    char *b = malloc(cap);
    if (!b)
        return ERR_NOMEM;
    err e = ERR_OK;
    uint64_t off = 0;
    while (off < len) {
        size_t want = len - off < cap ? (size_t)(len - off) : cap;
        ssize_t n = pread(fd, b, want, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            e = ERR_IO;
            break;
        }
        hasher_update(h, b, (size_t)n);
        off += (uint64_t)n;
    }
    free(b);
    return e;
}

/* load_session rebuilds an upload after a restart from its record and file. */
static err
load_session(store *s, const char *id, struct store_upload **out)
{
    buf v = BUF_INIT;
    char path[4300];
    struct store_upload *u = calloc(1, sizeof *u);
    err e = ERR_NOMEM;
    if (!u)
        goto out;
    u->fd = -1;
    u->s = s;
    e = rget(s, CF_UPLOADS, 0, id, strlen(id), &v);
    if (e == ERR_NOT_FOUND)
        e = ERR_BLOB_UPLOAD_UNKNOWN;
    if (e)
        goto out;
    if (!parse_session(buf_slice(&v), u)) {
        e = ERR_IO;
        goto out;
    }
    str_copy(u->id, sizeof u->id, id);
    upload_path(s, id, path, sizeof path);
    u->fd = open(path, O_RDWR | O_CLOEXEC);
    if (u->fd < 0) {
        e = errno == ENOENT ? ERR_BLOB_UPLOAD_UNKNOWN : ERR_IO;
        goto out;
    }
    struct stat st;
    if (fstat(u->fd, &st) != 0) {
        e = ERR_IO;
        goto out;
    }
    /* Bytes past the last acknowledged offset belong to a request that never got its
     * answer; the client will resend them. */
    if ((uint64_t)st.st_size < u->offset)
        u->offset = (uint64_t)st.st_size;
    if ((uint64_t)st.st_size > u->offset && ftruncate(u->fd, (off_t)u->offset) != 0) {
        e = ERR_IO;
        goto out;
    }
    if (!(u->h = hasher_new(DIGEST_SHA256))) {
        e = ERR_NOMEM;
        goto out;
    }
    if ((e = rehash(u->fd, u->offset, u->h)))
        goto out;
    u->synced_to = u->offset;
    log_info("STORE-UPLOAD-RESUMED", "id=%s repo=%s offset=%llu", id, u->repo,
             (unsigned long long)u->offset);
    *out = u;
    u = NULL;
out:
    buf_release(&v);
    upload_free(u);
    return e;
}

err
store_upload_acquire(store *s, const char *repo, const char *id, store_upload **out)
{
    err e = ERR_OK;
    pthread_mutex_lock(&s->uploads_mu);
    struct store_upload *u = find_locked(s, id);
    if (u) {
        if (strcmp(u->repo, repo) != 0)
            e = ERR_BLOB_UPLOAD_UNKNOWN;
        else if (u->busy)
            e = ERR_BUSY;
        else
            u->busy = true;
        pthread_mutex_unlock(&s->uploads_mu);
        if (!e && u->fd < 0) {
            /* busy now: only this request touches fd until release */
            char path[4300];
            upload_path(s, u->id, path, sizeof path);
            u->fd = open(path, O_RDWR | O_CLOEXEC);
            if (u->fd < 0) {
                int saved = errno;
                log_error("STORE-UPLOAD-OPEN", "id=%s error=\"%s\"", u->id, strerror(saved));
                e = saved == ENOENT ? ERR_BLOB_UPLOAD_UNKNOWN
                    : saved == EMFILE || saved == ENFILE ? ERR_UNAVAILABLE
                                                         : ERR_IO;
                pthread_mutex_lock(&s->uploads_mu);
                u->busy = false;
                pthread_mutex_unlock(&s->uploads_mu);
            }
        }
        if (!e)
            *out = u;
        return e;
    }
    pthread_mutex_unlock(&s->uploads_mu);

    struct store_upload *loaded = NULL;
    if ((e = load_session(s, id, &loaded)))
        return e;
    if (strcmp(loaded->repo, repo) != 0) {
        upload_free(loaded);
        return ERR_BLOB_UPLOAD_UNKNOWN;
    }
    pthread_mutex_lock(&s->uploads_mu);
    if (find_locked(s, id)) {
        /* another request loaded it meanwhile */
        pthread_mutex_unlock(&s->uploads_mu);
        upload_free(loaded);
        return ERR_BUSY;
    }
    loaded->busy = true;
    unsigned b = bucket_of(id);
    loaded->next = s->uploads[b];
    s->uploads[b] = loaded;
    s->nuploads++;
    pthread_mutex_unlock(&s->uploads_mu);
    *out = loaded;
    return ERR_OK;
}

err
store_upload_peek(store *s, const char *repo, const char *id, uint64_t *offset)
{
    pthread_mutex_lock(&s->uploads_mu);
    struct store_upload *u = find_locked(s, id);
    if (u) {
        err e = strcmp(u->repo, repo) == 0 ? ERR_OK : ERR_BLOB_UPLOAD_UNKNOWN;
        /* a busy upload's offset moves under the writer; its record holds the last
         * acknowledged one */
        bool busy = u->busy;
        *offset = u->offset;
        pthread_mutex_unlock(&s->uploads_mu);
        if (e || !busy)
            return e;
    } else {
        pthread_mutex_unlock(&s->uploads_mu);
    }
    buf v = BUF_INIT;
    struct store_upload tmp;
    err e = rget(s, CF_UPLOADS, 0, id, strlen(id), &v);
    if (e == ERR_NOT_FOUND)
        e = ERR_BLOB_UPLOAD_UNKNOWN;
    if (!e && (!parse_session(buf_slice(&v), &tmp) || strcmp(tmp.repo, repo) != 0))
        e = ERR_BLOB_UPLOAD_UNKNOWN;
    if (!e)
        *offset = tmp.offset;
    buf_release(&v);
    return e;
}

uint64_t
store_upload_offset(const store_upload *u)
{
    return u->offset;
}

const char *
store_upload_id(const store_upload *u)
{
    return u->id;
}

/* write_bytes appends len bytes at the upload's offset, hashing them when hash. */
static err
write_bytes(store_upload *u, const void *ptr, size_t len, bool hash)
{
    const char *p = ptr;
    size_t left = len;
    if (u->broken)
        return u->broken;
    if (u->offset + len - u->room_checked >= (1u << 20) || !u->room_checked) {
        /* content bytes stop at half the reserve, so RocksDB keeps the rest */
        u->room_checked = u->offset + 1;
        if (content_room(u->s)) {
            log_warn("STORE-UPLOAD-FULL", "id=%s offset=%llu msg=\"below half of "
                     "storage.min_free\"", u->id, (unsigned long long)u->offset);
            u->broken = ERR_INSUFFICIENT_STORAGE;
            if (ftruncate(u->fd, 0) != 0)
                log_error("STORE-UPLOAD-TRUNCATE", "id=%s error=\"%s\"", u->id, strerror(errno));
            return u->broken;
        }
    }
    while (left) {
        ssize_t n = pwrite(u->fd, p, left, (off_t)u->offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int saved = n < 0 ? errno : EIO;
            log_error("STORE-UPLOAD-WRITE", "id=%s error=\"%s\"", u->id, strerror(saved));
            /* a full disk: the session goes at release (space_lost), its bytes now */
            u->broken = saved == ENOSPC || saved == EDQUOT ? ERR_INSUFFICIENT_STORAGE : ERR_IO;
            if (u->broken == ERR_INSUFFICIENT_STORAGE && ftruncate(u->fd, 0) != 0)
                log_error("STORE-UPLOAD-TRUNCATE", "id=%s error=\"%s\"", u->id, strerror(errno));
            return u->broken;
        }
        if (hash)
            hasher_update(u->h, p, (size_t)n);
        p += n;
        left -= (size_t)n;
        u->offset += (uint64_t)n;
    }
    if (u->offset - u->synced_to >= UPLOAD_WRITEBACK_STEP) {
        sync_file_range(u->fd, (off_t)u->synced_to, (off_t)(u->offset - u->synced_to),
                        SYNC_FILE_RANGE_WRITE);
        u->synced_to = u->offset;
    }
    return ERR_OK;
}

err
store_upload_write(store_upload *u, const void *ptr, size_t len)
{
    hashq_drain(u); /* bytes are hashed in the order they were written */
    return write_bytes(u, ptr, len, true);
}

err
store_upload_write_deferred(store_upload *u, const void *ptr, size_t len,
                            void (*done)(void *arg), void *arg)
{
    if (!u->hq && hashq_start(u) != ERR_OK) {
        /* no helper thread: hash here, as store_upload_write does */
        err e = store_upload_write(u, ptr, len);
        if (!e)
            done(arg);
        return e;
    }
    err e = write_bytes(u, ptr, len, false);
    if (e)
        return e;
    struct hashq *q = u->hq;
    pthread_mutex_lock(&q->mu);
    while (q->count == STORE_HASH_QUEUE)
        pthread_cond_wait(&q->idle, &q->mu);
    q->job[(q->head + q->count) % STORE_HASH_QUEUE] =
        (struct hash_job){.ptr = ptr, .len = len, .done = done, .arg = arg};
    q->count++;
    pthread_cond_signal(&q->work);
    pthread_mutex_unlock(&q->mu);
    return ERR_OK;
}

static void drop_upload(store *s, struct store_upload *u, bool remove_file);

void
store_upload_release(store *s, store_upload *u)
{
    if (u->broken == ERR_INSUFFICIENT_STORAGE) {
        /* A write failed on a full disk: the session cannot continue (its hash
         * covers bytes that are gone), so it and its file go now; the client's
         * next request gets BLOB_UPLOAD_UNKNOWN and starts the upload again. */
        hashq_stop(u);
        log_warn("STORE-UPLOAD-DROPPED", "id=%s reason=insufficient_storage", u->id);
        drop_upload(s, u, true);
        return;
    }
    hashq_stop(u); /* the helper lives only while someone holds the upload */
    u->touched_s = clock_wall_s();
    put_session(s, u, false);
    if (u->fd >= 0) {
        close(u->fd); /* reopened by the next acquire */
        u->fd = -1;
    }
    pthread_mutex_lock(&s->uploads_mu);
    u->busy = false;
    pthread_mutex_unlock(&s->uploads_mu);
}

/* drop_upload removes a held session entirely: table, record and file. */
static void
drop_upload(store *s, struct store_upload *u, bool remove_file)
{
    hashq_drain(u);
    char path[4300];
    upload_path(s, u->id, path, sizeof path);
    pthread_mutex_lock(&s->uploads_mu);
    unlink_locked(s, u);
    session_uncount_locked(s, u->owner);
    pthread_mutex_unlock(&s->uploads_mu);
    char *msg = NULL;
    db_rlock(s);
    rocksdb_delete_cf(s->db, s->wo_nosync, s->cf[CF_UPLOADS], u->id, STORE_UPLOAD_ID_LEN, &msg);
    db_unlock(s);
    if (msg) /* the session record outlives the file; open skips records without one */
        (void)rdb_werr(s, "delete_session", msg);
    if (remove_file)
        unlink(path);
    upload_free(u);
}

/* read_all reads the first len bytes of fd into out. */
static err
read_all(int fd, uint64_t len, buf *out)
{
    err e = buf_grow(out, (size_t)len);
    if (e)
        return e;
    uint64_t off = 0;
    while (off < len) {
        ssize_t n = pread(fd, out->ptr + off, (size_t)(len - off), (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return ERR_IO;
        off += (uint64_t)n;
    }
    out->len = (size_t)len;
    out->ptr[len] = '\0';
    return ERR_OK;
}

/* place_file makes the upload's bytes durable at their content address. */
static err
place_file(store *s, struct store_upload *u, const char *digest)
{
    char tmp[4300], dst[4400], dir[4400];
    upload_path(s, u->id, tmp, sizeof tmp);
    blob_path(s, digest, dst, sizeof dst);
    blob_dir_of(s, digest, dir, sizeof dir);
    if (fdatasync(u->fd) != 0) {
        int saved = errno;
        log_error("STORE-FSYNC", "path=%s error=\"%s\"", tmp, strerror(saved));
        return saved == ENOSPC || saved == EDQUOT ? ERR_INSUFFICIENT_STORAGE : ERR_IO;
    }
    /* blobs/<alg>/<xx>: created on first use, and made durable */
    char algdir[4400];
    const char *colon = strchr(digest, ':');
    snprintf(algdir, sizeof algdir, "%s/%.*s", s->blob_dir, (int)(colon - digest), digest);
    bool created = false;
    if (mkdir(algdir, 0755) == 0)
        created = true;
    if (mkdir(dir, 0755) == 0) {
        created = true;
    } else if (errno != EEXIST) {
        log_error("STORE-MKDIR", "dir=%s error=\"%s\"", dir, strerror(errno));
        return ERR_IO;
    }
    if (rename(tmp, dst) != 0) {
        log_error("STORE-RENAME", "from=%s to=%s error=\"%s\"", tmp, dst, strerror(errno));
        return ERR_IO;
    }
    err e = fsync_dir(dir);
    if (!e && created) {
        fsync_dir(algdir);
        fsync_dir(s->blob_dir);
    }
    return e;
}

err
store_upload_finish(store *s, store_upload *u, const char *digest, uint64_t *size_out)
{
    char got[DIGEST_MAX];
    buf rec = BUF_INIT, inl = BUF_INIT;
    rocksdb_writebatch_t *wb = NULL;
    hashq_drain(u); /* every byte hashed before the digest is read */
    err e = u->broken;
    bool renamed = false;
    if (e) {
        store_upload_release(s, u);
        return e;
    }
    if (digest_alg_of(digest) == DIGEST_SHA256) {
        hasher_final(u->h, got);
    } else {
        hasher *h = hasher_new(DIGEST_SHA512);
        if (!h) {
            store_upload_release(s, u);
            return ERR_NOMEM;
        }
        e = rehash(u->fd, u->offset, h);
        hasher_final(h, got);
        hasher_free(h);
        if (e) {
            store_upload_release(s, u);
            return e;
        }
    }
    if (strcmp(got, digest) != 0) {
        log_info("STORE-DIGEST-MISMATCH", "id=%s want=%s got=%s", u->id, digest, got);
        drop_upload(s, u, true);
        return ERR_DIGEST_INVALID;
    }
    if (size_out)
        *size_out = u->offset;
    uint64_t existing;
    bool have = store_blob_exists(s, digest, &existing);
    if (!have) {
        if (u->offset <= s->inline_max) {
            if ((e = read_all(u->fd, u->offset, &inl)))
                goto fail;
            blob_record(&rec, u->offset, inl.ptr);
        } else {
            if ((e = place_file(s, u, digest)))
                goto fail;
            renamed = true;
            blob_record(&rec, u->offset, NULL);
        }
    }
    wb = rocksdb_writebatch_create();
    if (!have)
        batch_put(s, wb, CF_BLOBS, digest, strlen(digest), rec.ptr, rec.len);
    batch_del(s, wb, CF_UPLOADS, u->id, STORE_UPLOAD_ID_LEN);
    pthread_mutex_lock(&s->commit_mu);
    if (u->repo[0])
        e = link_blob_locked(s, wb, u->repo, digest, u->offset, 0);
    else
        e = commit_locked(s, wb, NULL);
    pthread_mutex_unlock(&s->commit_mu);
    if (e)
        goto fail;
    log_debug("STORE-BLOB-COMMIT", "repo=%s digest=%s size=%llu inline=%d", u->repo, digest,
              (unsigned long long)u->offset, !have && u->offset <= s->inline_max);
    drop_upload(s, u, !renamed);
    rocksdb_writebatch_destroy(wb);
    buf_release(&rec);
    buf_release(&inl);
    return ERR_OK;
fail:
    /* a renamed file without its record is an orphan for garbage collection */
    if (wb)
        rocksdb_writebatch_destroy(wb);
    buf_release(&rec);
    buf_release(&inl);
    u->broken = e;
    if (renamed)
        drop_upload(s, u, false);
    else
        store_upload_release(s, u);
    return e;
}

err
store_upload_cancel(store *s, const char *repo, const char *id)
{
    store_upload *u = NULL;
    err e = store_upload_acquire(s, repo, id, &u);
    if (e)
        return e;
    drop_upload(s, u, true);
    return ERR_OK;
}

err
store_blob_put(store *s, const char *repo, const char *digest, const void *ptr, size_t len)
{
    char id[STORE_UPLOAD_ID_LEN + 1];
    store_upload *u = NULL;
    err e = store_upload_create(s, repo ? repo : "", id);
    if (e)
        return e;
    if ((e = store_upload_acquire(s, repo ? repo : "", id, &u)))
        return e;
    if ((e = store_upload_write(u, ptr, len))) {
        drop_upload(s, u, true);
        return e;
    }
    return store_upload_finish(s, u, digest, NULL);
}

void
store_upload_purge(store *s, uint64_t max_age_s)
{
    uint64_t now = clock_wall_s();
    rocksdb_iterator_t *it = db_iter(s, s->ro, CF_UPLOADS);
    for (rocksdb_iter_seek_to_first(it); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kl, vl;
        const char *k = rocksdb_iter_key(it, &kl);
        const char *v = rocksdb_iter_value(it, &vl);
        struct store_upload tmp;
        if (kl != STORE_UPLOAD_ID_LEN || !parse_session((slice){v, vl}, &tmp))
            continue;
        if (now - tmp.touched_s < max_age_s)
            continue;
        char id[STORE_UPLOAD_ID_LEN + 1], path[4300];
        memcpy(id, k, kl);
        id[kl] = '\0';
        /* dropped without loading it (no re-hash of a file nobody will finish) */
        pthread_mutex_lock(&s->uploads_mu);
        struct store_upload *u = find_locked(s, id);
        if (u && (u->busy || now - u->touched_s < max_age_s)) {
            pthread_mutex_unlock(&s->uploads_mu);
            continue;
        }
        if (u)
            unlink_locked(s, u);
        session_uncount_locked(s, tmp.owner);
        char *msg = NULL;
        db_rlock(s);
        rocksdb_delete_cf(s->db, s->wo_nosync, s->cf[CF_UPLOADS], id, STORE_UPLOAD_ID_LEN, &msg);
        db_unlock(s);
        if (msg)
            (void)rdb_werr(s, "delete_session", msg);
        upload_path(s, id, path, sizeof path);
        unlink(path);
        pthread_mutex_unlock(&s->uploads_mu);
        upload_free(u);
        log_info("STORE-UPLOAD-PURGED", "id=%s repo=%s owner=%s idle_s=%llu", id, tmp.repo,
                 tmp.owner, (unsigned long long)(now - tmp.touched_s));
    }
    db_iter_end(s, it);
}
