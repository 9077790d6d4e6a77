/* The node's state: one RocksDB database (blob records, repository links,
 * manifests, tags, referrers, upload sessions, the replication log and node
 * metadata) plus a directory of immutable content files for large blobs. Only
 * this module knows keys and file layout. All functions are synchronous and
 * thread-safe; any of them may block on disk unless called with STORE_NOWAIT.
 *
 * Every change a client is told succeeded is one synced WriteBatch that also
 * appends its replication-log event, so state and log never disagree. */
#ifndef GEOREG_STORE_H
#define GEOREG_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/buf.h"
#include "../common/digest.h"
#include "../common/err.h"

typedef struct store store;

struct store_options {
    /* Blobs up to this size live inline in RocksDB instead of in a content file. */
    uint64_t inline_max;
    /* RocksDB block cache in bytes (0: a default of 64 MiB). */
    uint64_t cache_bytes;
    /* false only in tests that measure: commits are not fsynced. */
    bool no_sync;
    /* Open upload sessions with an owner (store_upload_create_for), in all and per
     * owner; beyond them creating one fails with ERR_TOOMANYREQUESTS. 0: no cap. */
    unsigned max_uploads, max_uploads_per_owner;
    /* Writes are refused (ERR_INSUFFICIENT_STORAGE) up front while the data dir's
     * file system has fewer free bytes than this; 0: only a real ENOSPC refuses. */
    uint64_t min_free;
};

/* Read flags. STORE_NOWAIT: answer only from memory (memtable, block cache, open
 * files); return ERR_WOULDBLOCK where the disk would have to be read. */
#define STORE_NOWAIT 1u

/* store_open opens (creating if needed) the store under dir: dir/db for RocksDB,
 * dir/blobs for content files, dir/uploads for uploads in progress. On success
 * *out is a new store to close with store_close. ERR_IO with a logged reason on
 * failure. */
err store_open(const char *dir, const struct store_options *opt, store **out);
/* store_close flushes and closes; accepts NULL. Uploads in progress stay on disk. */
void store_close(store *s);

/* ---- blobs ---- */

struct store_blob {
    uint64_t size;
    /* file-backed: an open read-only descriptor the caller owns (close it with
     * store_blob_release); -1 when inline or not requested */
    int fd;
    /* inline: the bytes (owned); empty when file-backed */
    buf data;
    bool is_inline;
};

/* store_blob_get looks up digest linked in repo (repo NULL: any blob the node holds).
 * With open_body the bytes are made readable (fd or data). ERR_BLOB_UNKNOWN when
 * absent or not linked. out must be released with store_blob_release on success. */
err store_blob_get(store *s, const char *repo, const char *digest, unsigned flags, bool open_body,
                   struct store_blob *out);
void store_blob_release(struct store_blob *b);
/* store_blob_exists: the node holds the blob bytes (regardless of links). */
bool store_blob_exists(store *s, const char *digest, uint64_t *size);
/* store_blob_mount links digest, already linked in from_repo, into repo (one synced
 * commit with its log event). ERR_BLOB_UNKNOWN when from_repo has no such blob. */
err store_blob_mount(store *s, const char *repo, const char *from_repo, const char *digest);
/* store_blob_delete unlinks digest from repo. ERR_BLOB_UNKNOWN when not linked. The
 * bytes stay until garbage collection. */
err store_blob_delete(store *s, const char *repo, const char *digest);
/* store_blob_put stores a whole blob from memory (verifying digest) and links it into
 * repo (repo NULL: store the bytes only). ERR_DIGEST_INVALID on mismatch. */
err store_blob_put(store *s, const char *repo, const char *digest, const void *ptr, size_t len);

/* ---- uploads ---- */

typedef struct store_upload store_upload;

#define STORE_UPLOAD_ID_LEN 32

/* store_upload_create starts an upload session for repo; id receives its 32 hex chars.
 * The session survives restarts until finished or cancelled. */
err store_upload_create(store *s, const char *repo, char id[STORE_UPLOAD_ID_LEN + 1]);
/* store_upload_create_for is store_upload_create on behalf of owner (a client's
 * identity, at most 63 bytes, borrowed), counted against the max_uploads caps:
 * ERR_TOOMANYREQUESTS when the node or the owner has as many sessions open as
 * allowed. No descriptor is held by a session between requests: its file is opened
 * by store_upload_acquire and closed by store_upload_release. */
err store_upload_create_for(store *s, const char *repo, const char *owner,
                            char id[STORE_UPLOAD_ID_LEN + 1]);
/* store_upload_acquire gives exclusive use of upload id of repo until
 * store_upload_release. After a restart this reopens the file and re-hashes it (may
 * take time). ERR_BLOB_UPLOAD_UNKNOWN when no such session for this repo, ERR_BUSY
 * when another request holds it. */
err store_upload_acquire(store *s, const char *repo, const char *id, store_upload **out);
/* store_upload_peek reads the offset of upload id of repo without taking it (a status
 * query while another request streams into it sees the last completed offset).
 * ERR_BLOB_UPLOAD_UNKNOWN as acquire. */
err store_upload_peek(store *s, const char *repo, const char *id, uint64_t *offset);
/* store_upload_offset: bytes received so far. */
uint64_t store_upload_offset(const store_upload *u);
/* store_upload_id: the session id (borrowed, valid while u is). */
const char *store_upload_id(const store_upload *u);
/* store_upload_write appends and hashes len bytes (blocking). On error the upload is
 * marked broken and further writes and finish fail with the same error. */
err store_upload_write(store_upload *u, const void *ptr, size_t len);
/* store_upload_write_deferred appends len bytes like store_upload_write, but hashes
 * them on a helper thread of this upload, so the caller can take its next bytes
 * while these are hashed (replication's receive path: SHA-256 and the next chunk
 * overlap). ERR_OK: ptr is the helper's until done(arg) runs (on the helper
 * thread, or before this returns); an error: nothing was taken, the caller keeps
 * ptr. At most STORE_HASH_QUEUE buffers wait (the call blocks when that many do).
 * Every other call on u waits for the queued hashing first, so finish verifies
 * every byte as before. */
#define STORE_HASH_QUEUE 16
err store_upload_write_deferred(store_upload *u, const void *ptr, size_t len,
                                void (*done)(void *arg), void *arg);
/* store_upload_release persists the offset and gives up exclusive use. u stays valid
 * in the store's table. */
void store_upload_release(store *s, store_upload *u);
/* store_upload_finish verifies that the bytes hash to digest, makes them durable in
 * their content-addressed place, links them into the upload's repo and removes the
 * session, all before it returns OK. ERR_DIGEST_INVALID on mismatch: nothing is
 * stored and the session is deleted with its bytes (the client starts a new upload,
 * as with CNCF Distribution); later acquires get ERR_BLOB_UPLOAD_UNKNOWN. On every
 * return u has been given up and may already be freed: do not use it again (on other
 * errors the session may still exist; acquire it again by id). */
err store_upload_finish(store *s, store_upload *u, const char *digest, uint64_t *size_out);
/* store_upload_cancel deletes a session and its bytes. ERR_BLOB_UPLOAD_UNKNOWN,
 * ERR_BUSY as acquire. */
err store_upload_cancel(store *s, const char *repo, const char *id);
/* store_upload_purge removes sessions untouched for longer than max_age_s, without
 * re-reading their bytes. */
void store_upload_purge(store *s, uint64_t max_age_s);

/* ---- manifests, tags, referrers ---- */

struct store_ref {
    char digest[DIGEST_MAX];
    uint64_t size;
    bool is_manifest; /* a child manifest of an index, else a blob */
};

struct store_manifest_put {
    const char *repo;
    const char *digest;      /* of body, verified by the caller */
    const char *media_type;  /* stored and served with the body */
    const char *tag;         /* NULL when pushed by digest */
    slice body;              /* byte-exact */
    const struct store_ref *refs; /* every blob and child manifest it references */
    size_t nrefs;
    /* When the manifest has a subject: its digest and this manifest's descriptor as
     * JSON (what the referrers API lists). */
    const char *subject;
    slice descriptor;
};

/* store_manifest_put checks that every ref is present in repo (ERR_MANIFEST_BLOB_UNKNOWN
 * naming the first missing one in *missing, if given) and commits manifest, link,
 * tag and referrer entry in one synced batch with its log event. */
err store_manifest_put(store *s, const struct store_manifest_put *m, char missing[DIGEST_MAX]);

/* The most tags one manifest push may set (PUT .../manifests/DIGEST?tag=a&tag=b). */
#define STORE_MAX_TAGS_PER_PUT 16

/* store_manifest_put_tags is store_manifest_put with m->tag replaced by each of
 * tags[0..ntags) (borrowed; valid, distinct, at most STORE_MAX_TAGS_PER_PUT, else
 * ERR_INVALID): one synced batch that holds the manifest, every tag and one log
 * event per tag, so either all tags are set or none. ntags 0 pushes by digest only. */
err store_manifest_put_tags(store *s, const struct store_manifest_put *m, const char *const *tags,
                            size_t ntags, char missing[DIGEST_MAX]);

struct store_manifest {
    char digest[DIGEST_MAX];
    char media_type[256];
    buf body;
};

/* store_manifest_get resolves ref (tag or digest) in repo. ERR_MANIFEST_UNKNOWN when
 * absent. out->body must be released by the caller. */
err store_manifest_get(store *s, const char *repo, const char *ref, unsigned flags,
                       struct store_manifest *out);
/* store_manifest_delete removes digest from repo: the link, every tag of repo that
 * points at it and its referrer entry. ERR_MANIFEST_UNKNOWN when not linked. */
err store_manifest_delete(store *s, const char *repo, const char *digest);
/* store_tag_delete removes one tag. ERR_MANIFEST_UNKNOWN when absent. */
err store_tag_delete(store *s, const char *repo, const char *tag);

/* A listing callback gets one entry; return false to stop. */
typedef bool (*store_list_cb)(void *arg, slice key, slice value);

/* store_tags_list calls cb for up to n tags of repo after `last` (NULL: from the
 * start) in lexical order with the tag's digest as value; *more tells whether tags
 * remain. ERR_NAME_UNKNOWN when the repository does not exist. */
err store_tags_list(store *s, const char *repo, const char *last, size_t n, store_list_cb cb,
                    void *arg, bool *more);
/* store_catalog_list: the same over repository names (value empty). */
err store_catalog_list(store *s, const char *last, size_t n, store_list_cb cb, void *arg,
                       bool *more);
/* store_referrers_list calls cb with (referrer digest, descriptor JSON) for every
 * manifest of repo whose subject is subject. */
err store_referrers_list(store *s, const char *repo, const char *subject, store_list_cb cb,
                         void *arg);
/* store_repo_exists: repo has been pushed to. */
bool store_repo_exists(store *s, const char *repo);

/* ---- replication log ---- */

enum store_event_type {
    EV_NONE = 0,
    EV_BLOB_LINK = 1,      /* repo, digest, size */
    EV_BLOB_UNLINK = 2,    /* repo, digest */
    EV_MANIFEST_PUT = 3,   /* repo, digest, media_type, body, tag (optional) */
    EV_MANIFEST_DELETE = 4, /* repo, digest */
    EV_TAG_DELETE = 5,     /* repo, tag */
    EV_META_PUT = 6,       /* key (in tag), value (in body): replicated node metadata */
    EV_META_DELETE = 7,    /* key (in tag) */
};

/* One decoded log event. Its slices borrow from the iteration that produced it. */
struct store_event {
    uint64_t seq;
    uint64_t time_ms; /* when the primary committed it */
    enum store_event_type type;
    slice repo, digest, tag, media_type, body;
    uint64_t size;
};

/* store_log_head: the highest sequence number committed (0 on an empty log). */
uint64_t store_log_head(store *s);
/* store_log_first: the lowest sequence number still in the log (head+1 when empty). */
uint64_t store_log_first(store *s);
/* store_log_read calls cb for events with seq >= from, in order, at most max of them;
 * stop early when cb returns false. */
typedef bool (*store_event_cb)(void *arg, const struct store_event *ev);
err store_log_read(store *s, uint64_t from, size_t max, store_event_cb cb, void *arg);
/* store_log_trim deletes events with seq < before. */
err store_log_trim(store *s, uint64_t before);

/* ---- node metadata ---- */

/* store_meta_get copies the value of key into out (ERR_NOT_FOUND when absent). */
err store_meta_get(store *s, const char *key, buf *out);
/* store_meta_put stores key=value durably (not replicated). */
err store_meta_put(store *s, const char *key, const void *val, size_t len);

/* ---- statistics ---- */

struct store_stats {
    uint64_t blobs_inline, blobs_files, uploads_open;
};
void store_get_stats(store *s, struct store_stats *out);

/* ---- a full disk (issue 8 §6) ---- */

/* store_space_check: ERR_INSUFFICIENT_STORAGE while the store refuses writes (RocksDB
 * stopped on a full disk and has not been resumed) or the file system has less than
 * min_free bytes free; counted. Handlers call it before they write anything. */
err store_space_check(store *s);
/* store_resume: when RocksDB stopped writing for lack of space and space is back
 * (at least min_free, and 4 MiB), closes and reopens it; call it every few seconds.
 * Returns true when the store takes writes. */
bool store_resume(store *s);
struct store_space {
    bool wedged;          /* RocksDB refuses writes until store_resume */
    uint64_t free_bytes;  /* of the data dir's file system, for unprivileged users */
    uint64_t min_free;
    uint64_t refusals;    /* writes refused for lack of space */
    uint64_t resumes;     /* successful reopen after a full disk */
};
void store_space_stats(store *s, struct store_space *out);


/* ---- replication support ---- */

/* store_set_commit_hook: fn(arg, seq) runs after every committed log event, on the
 * committing thread, with the commit lock held: it must only signal, never block or
 * call back into the store. Set it once, before concurrent use. */
void store_set_commit_hook(store *s, void (*fn)(void *arg, uint64_t seq), void *arg);

/* What a secondary needs beside the event to apply a MANIFEST_PUT: the references
 * and subject it parsed itself from the (digest-verified) body. */
struct store_apply_extra {
    const struct store_ref *refs;
    size_t nrefs;
    const char *subject;
    slice descriptor;
};

/* store_apply applies one event received from the primary, in order and
 * idempotently, recording ev->seq as the applied sequence in the same synced batch
 * and appending the event to this node's log under the same seq.
 * - ev->seq <= applied: a duplicate, nothing changes, ERR_OK.
 * - ev->seq > applied + 1: a gap, ERR_PROTOCOL.
 * - ev->type EV_NONE: a filtered event; only the applied sequence moves.
 * - ev->seq == 0: a resync record: applied as is, no sequence check, not logged.
 * MANIFEST_PUT fails with ERR_MANIFEST_BLOB_UNKNOWN (nothing applied) while a
 * reference is missing; BLOB_LINK with ERR_BLOB_UNKNOWN while the bytes are. Deletes
 * of something already gone succeed. */
err store_apply(store *s, const struct store_event *ev, const struct store_apply_extra *x);
/* store_role_align makes the log head and the applied sequence both the higher of
 * the two, when a node changes role: a primary that becomes a secondary has
 * "applied" everything it wrote itself; a secondary that becomes primary writes
 * after everything it applied (filtered events advance the applied seq only). */
err store_role_align(store *s);
/* store_applied_seq: the highest primary sequence this node has applied. */
uint64_t store_applied_seq(store *s);
/* store_resync_begin drops every link, tag, referrer and catalog entry and all
 * replicated metadata (identities: the snapshot resends what the primary still has;
 * blob and manifest bytes stay, content-addressed, so they need not travel again) and
 * sets the applied sequence to 0, in one batch. */
err store_resync_begin(store *s);
/* store_resync_end records snapshot_seq as applied and restarts this node's own log
 * just after it (the log before it no longer describes the state). */
err store_resync_end(store *s, uint64_t snapshot_seq);
/* store_snapshot_stream takes a consistent snapshot and calls cb with synthetic
 * events (seq 0) that rebuild the state in a safe order: every blob link, then
 * manifests (image manifests before indexes), then tags (MANIFEST_PUT with tag),
 * then replicated metadata. *snapshot_seq is the log head the snapshot matches.
 * Stops early when cb returns false (ERR_OK). */
err store_snapshot_stream(store *s, store_event_cb cb, void *arg, uint64_t *snapshot_seq);
/* store_manifest_seq resolves ref (tag or digest) in repo to its digest and the log
 * sequence of the event that made it so. ERR_MANIFEST_UNKNOWN when absent. */
err store_manifest_seq(store *s, const char *repo, const char *ref, char digest[DIGEST_MAX],
                       uint64_t *seq);
/* store_log_event_time: commit time (ms) of event seq, 0 when not in the log. */
uint64_t store_log_event_time(store *s, uint64_t seq);

/* ---- replicated metadata (identities, policies) ---- */

/* store_rmeta_put stores key=value and logs a META_PUT event in the same synced
 * batch, so every secondary gets it through replication. Primary only. */
err store_rmeta_put(store *s, const char *key, const void *val, size_t len);
/* store_rmeta_delete removes key (and logs META_DELETE). ERR_NOT_FOUND when absent. */
err store_rmeta_delete(store *s, const char *key);
/* store_rmeta_get copies the value of key into out; ERR_NOT_FOUND when absent;
 * ERR_WOULDBLOCK under STORE_NOWAIT when it is not in memory. */
err store_rmeta_get(store *s, const char *key, unsigned flags, buf *out);
/* store_rmeta_list calls cb(key, value) for every key starting with prefix. */
err store_rmeta_list(store *s, const char *prefix, store_list_cb cb, void *arg);
/* store_rmeta_version: a counter that changes whenever replicated metadata changes
 * on this node (locally or applied from the primary); caches compare it. */
uint64_t store_rmeta_version(store *s);

/* ---- audit log (per node, not replicated) ---- */

/* store_audit_append stores n JSON entries (one batch, not synced: the audit log is
 * flushed often but never on a client's critical path). Each gets a key of the
 * current time in microseconds, strictly increasing. */
err store_audit_append(store *s, const slice *entries, size_t n);
/* store_audit_query calls cb(key, entry) in time order for entries with
 * since_us <= time < until_us (until 0: no bound), starting after the opaque cursor
 * `after` (hex key of the last entry seen, NULL: from since). Here cb returns true
 * when it took the entry (it counts toward max) and false to skip it (a filter).
 * *more tells whether the range holds more after the max-th taken entry. The key
 * given to cb is the entry's hex cursor. */
err store_audit_query(store *s, uint64_t since_us, uint64_t until_us, const char *after,
                      size_t max, store_list_cb cb, void *arg, bool *more);
/* store_audit_trim deletes entries older than before_us. */
err store_audit_trim(store *s, uint64_t before_us);

#endif
