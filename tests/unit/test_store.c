/* Unit tests for storage/: a real RocksDB store in a fresh temporary directory per
 * test (removed afterwards). Blobs (inline and file-backed), repository links,
 * mounts, manifests, tags, referrers, listings with pagination, uploads including
 * resume across a restart, the replication log and node metadata. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/digest.h"
#include "common/log.h"
#include "storage/store.h"

#define MT_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define MT_INDEX "application/vnd.oci.image.index.v1+json"

/* Blobs above this many bytes become content files in these tests. */
#define TEST_INLINE_MAX 64

/* ---- fixture: one store in one temporary directory ---- */

struct fx {
    char dir[64];
    struct store_options opt;
    store *s;
};

static int
fx_open(struct fx *f)
{
    return store_open(f->dir, &f->opt, &f->s) == ERR_OK ? 0 : -1;
}

static void
fx_reopen(struct fx *f)
{
    store_close(f->s);
    f->s = NULL;
    assert_int_equal(store_open(f->dir, &f->opt, &f->s), ERR_OK);
}

static int
fx_setup_with(void **state, bool no_sync)
{
    struct fx *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/georeg-ut-store-XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    f->opt.inline_max = TEST_INLINE_MAX;
    f->opt.no_sync = no_sync;
    if (fx_open(f) != 0) {
        rmdir(f->dir);
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int
fx_setup(void **state)
{
    return fx_setup_with(state, false);
}

/* Bulk tests (thousands of commits) skip fsync; the code paths are the same. */
static int
fx_setup_nosync(void **state)
{
    return fx_setup_with(state, true);
}

static int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int
fx_teardown(void **state)
{
    struct fx *f = *state;
    if (!f)
        return 0;
    store_close(f->s);
    int rc = nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return rc;
}

/* ---- helpers ---- */

/* count_entries counts the names in dir other than "." and "..". */
static int
count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static int
uploads_on_disk(const struct fx *f)
{
    char p[128];
    snprintf(p, sizeof p, "%s/uploads", f->dir);
    return count_entries(p);
}

static bool
blob_file_exists(const struct fx *f, const char *digest)
{
    char p[512];
    const char *colon = strchr(digest, ':');
    snprintf(p, sizeof p, "%s/blobs/%.*s/%.2s/%s", f->dir, (int)(colon - digest), digest,
             colon + 1, colon + 1);
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* pattern fills p with n deterministic bytes that depend on seed. */
static void *
pattern(size_t n, unsigned seed)
{
    unsigned char *p = malloc(n ? n : 1);
    assert_non_null(p);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (unsigned char)x;
    }
    return p;
}

static void
put_blob(store *s, const char *repo, const void *p, size_t n, char digest[DIGEST_MAX])
{
    assert_int_equal(digest_of(DIGEST_SHA256, p, n, digest), ERR_OK);
    assert_int_equal(store_blob_put(s, repo, digest, p, n), ERR_OK);
}

static void
put_blob_str(store *s, const char *repo, const char *text, char digest[DIGEST_MAX])
{
    put_blob(s, repo, text, strlen(text), digest);
}

/* read_blob reads a whole blob of repo through store_blob_get into a new buffer. */
static void
read_blob(store *s, const char *repo, const char *digest, buf *out, bool *is_inline)
{
    struct store_blob b;
    assert_int_equal(store_blob_get(s, repo, digest, 0, true, &b), ERR_OK);
    buf_reset(out);
    *is_inline = b.is_inline;
    if (b.is_inline) {
        assert_int_equal(b.fd, -1);
        assert_int_equal(b.data.len, b.size);
        assert_int_equal(buf_add(out, b.data.ptr, b.data.len), ERR_OK);
    } else {
        assert_true(b.fd >= 0);
        assert_int_equal(b.data.len, 0);
        struct stat st;
        assert_int_equal(fstat(b.fd, &st), 0);
        assert_int_equal((uint64_t)st.st_size, b.size);
        assert_int_equal(buf_grow(out, (size_t)b.size), ERR_OK);
        size_t off = 0;
        while (off < b.size) {
            ssize_t n = pread(b.fd, out->ptr + off, (size_t)b.size - off, (off_t)off);
            assert_true(n > 0);
            off += (size_t)n;
        }
        out->len = off;
        out->ptr[off] = '\0';
    }
    store_blob_release(&b);
    assert_int_equal(b.fd, -1);
}

static void
assert_blob_is(store *s, const char *repo, const char *digest, const void *p, size_t n,
               bool want_inline)
{
    buf got = BUF_INIT;
    bool inl = false;
    read_blob(s, repo, digest, &got, &inl);
    assert_int_equal(got.len, n);
    if (n)
        assert_memory_equal(got.ptr, p, n);
    assert_int_equal(inl, want_inline);
    buf_release(&got);
}

static err
blob_get_err(store *s, const char *repo, const char *digest)
{
    struct store_blob b;
    err e = store_blob_get(s, repo, digest, 0, true, &b);
    if (e == ERR_OK)
        store_blob_release(&b);
    return e;
}

/* put_manifest stores body as a manifest of repo (tag may be NULL) and returns its
 * digest; expect is the expected result. */
static err
put_manifest_full(store *s, const char *repo, const char *tag, const char *media_type,
                  const char *body, const struct store_ref *refs, size_t nrefs,
                  const char *subject, const char *descriptor, char digest[DIGEST_MAX],
                  char missing[DIGEST_MAX])
{
    assert_int_equal(digest_of(DIGEST_SHA256, body, strlen(body), digest), ERR_OK);
    struct store_manifest_put m = {
        .repo = repo,
        .digest = digest,
        .media_type = media_type,
        .tag = tag,
        .body = slice_of_cstr(body),
        .refs = refs,
        .nrefs = nrefs,
        .subject = subject,
        .descriptor = slice_of_cstr(descriptor),
    };
    return store_manifest_put(s, &m, missing);
}

static void
put_manifest(store *s, const char *repo, const char *tag, const char *body,
             const struct store_ref *refs, size_t nrefs, char digest[DIGEST_MAX])
{
    assert_int_equal(
        put_manifest_full(s, repo, tag, MT_MANIFEST, body, refs, nrefs, NULL, NULL, digest, NULL),
        ERR_OK);
}

static struct store_ref
blob_ref(const char *digest, uint64_t size)
{
    struct store_ref r = {.size = size, .is_manifest = false};
    str_copy(r.digest, sizeof r.digest, digest);
    return r;
}

static struct store_ref
manifest_ref(const char *digest, uint64_t size)
{
    struct store_ref r = blob_ref(digest, size);
    r.is_manifest = true;
    return r;
}

static err
manifest_get_err(store *s, const char *repo, const char *ref)
{
    struct store_manifest m;
    err e = store_manifest_get(s, repo, ref, 0, &m);
    buf_release(&m.body);
    return e;
}

static void
assert_manifest_is(store *s, const char *repo, const char *ref, const char *digest,
                   const char *media_type, const char *body)
{
    struct store_manifest m;
    assert_int_equal(store_manifest_get(s, repo, ref, 0, &m), ERR_OK);
    assert_string_equal(m.digest, digest);
    assert_string_equal(m.media_type, media_type);
    assert_int_equal(m.body.len, strlen(body));
    assert_memory_equal(m.body.ptr, body, m.body.len);
    assert_int_equal(m.body.ptr[m.body.len], '\0');
    buf_release(&m.body);
}

/* A listing collected into owned "key=value" strings. */
struct listing {
    char **items;
    size_t n, cap;
    size_t stop_after; /* callback returns false after this many (0: never) */
};

static bool
on_list_item(void *arg, slice key, slice value)
{
    struct listing *l = arg;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->items = realloc(l->items, l->cap * sizeof *l->items);
        assert_non_null(l->items);
    }
    char *item = malloc(key.len + 1 + value.len + 1);
    assert_non_null(item);
    memcpy(item, key.ptr, key.len);
    item[key.len] = '=';
    memcpy(item + key.len + 1, value.ptr, value.len);
    item[key.len + 1 + value.len] = '\0';
    l->items[l->n++] = item;
    return !(l->stop_after && l->n >= l->stop_after);
}

static void
listing_free(struct listing *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->items[i]);
    free(l->items);
    memset(l, 0, sizeof *l);
}

/* A copy of one log event whose fields outlive the read. */
struct ev_copy {
    uint64_t seq, time_ms, size;
    enum store_event_type type;
    char repo[256], digest[DIGEST_MAX], tag[256], media_type[256];
    buf body;
};

struct ev_log {
    struct ev_copy ev[512];
    size_t n;
    size_t stop_after;
};

static bool
on_event(void *arg, const struct store_event *e)
{
    struct ev_log *l = arg;
    assert_true(l->n < sizeof l->ev / sizeof l->ev[0]);
    struct ev_copy *c = &l->ev[l->n++];
    c->seq = e->seq;
    c->time_ms = e->time_ms;
    c->size = e->size;
    c->type = e->type;
    assert_true(str_copy_slice(c->repo, sizeof c->repo, e->repo));
    assert_true(str_copy_slice(c->digest, sizeof c->digest, e->digest));
    assert_true(str_copy_slice(c->tag, sizeof c->tag, e->tag));
    assert_true(str_copy_slice(c->media_type, sizeof c->media_type, e->media_type));
    buf_init(&c->body);
    assert_int_equal(buf_add(&c->body, e->body.ptr, e->body.len), ERR_OK);
    return !(l->stop_after && l->n >= l->stop_after);
}

static struct ev_log *
ev_log_new(void)
{
    struct ev_log *l = calloc(1, sizeof *l);
    assert_non_null(l);
    return l;
}

static void
ev_log_clear(struct ev_log *l)
{
    for (size_t i = 0; i < l->n; i++)
        buf_release(&l->ev[i].body);
    l->n = 0;
    l->stop_after = 0;
}

static void
ev_log_free(struct ev_log *l)
{
    ev_log_clear(l);
    free(l);
}

static void
read_log(store *s, uint64_t from, size_t max, struct ev_log *l)
{
    ev_log_clear(l);
    assert_int_equal(store_log_read(s, from, max, on_event, l), ERR_OK);
}

static void
assert_event(const struct ev_copy *e, enum store_event_type type, const char *repo,
             const char *digest, const char *tag)
{
    assert_int_equal(e->type, type);
    assert_string_equal(e->repo, repo ? repo : "");
    assert_string_equal(e->digest, digest ? digest : "");
    assert_string_equal(e->tag, tag ? tag : "");
}

/* ---- blobs ---- */

static void
test_blob_inline_and_file(void **state)
{
    struct fx *f = *state;
    char small_d[DIGEST_MAX], big_d[DIGEST_MAX], edge_d[DIGEST_MAX], over_d[DIGEST_MAX],
        empty_d[DIGEST_MAX];
    const char *small = "{\"config\":true}";
    size_t big_n = 300 * 1024 + 7;
    void *big = pattern(big_n, 1);
    void *edge = pattern(TEST_INLINE_MAX, 2);
    void *over = pattern(TEST_INLINE_MAX + 1, 3);

    put_blob_str(f->s, "lib/app", small, small_d);
    put_blob(f->s, "lib/app", big, big_n, big_d);
    put_blob(f->s, "lib/app", edge, TEST_INLINE_MAX, edge_d);
    put_blob(f->s, "lib/app", over, TEST_INLINE_MAX + 1, over_d);
    put_blob(f->s, "lib/app", "", 0, empty_d);
    assert_string_equal(empty_d,
                        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

    assert_blob_is(f->s, "lib/app", small_d, small, strlen(small), true);
    assert_blob_is(f->s, "lib/app", big_d, big, big_n, false);
    assert_blob_is(f->s, "lib/app", edge_d, edge, TEST_INLINE_MAX, true);
    assert_blob_is(f->s, "lib/app", over_d, over, TEST_INLINE_MAX + 1, false);
    assert_blob_is(f->s, "lib/app", empty_d, "", 0, true);

    /* only the big ones are content files, at their content address */
    assert_true(blob_file_exists(f, big_d));
    assert_true(blob_file_exists(f, over_d));
    assert_false(blob_file_exists(f, small_d));
    assert_false(blob_file_exists(f, edge_d));
    /* no upload leftovers */
    assert_int_equal(uploads_on_disk(f), 0);

    uint64_t size = 0;
    assert_true(store_blob_exists(f->s, big_d, &size));
    assert_int_equal(size, big_n);
    assert_true(store_blob_exists(f->s, small_d, &size));
    assert_int_equal(size, strlen(small));
    assert_true(store_blob_exists(f->s, empty_d, NULL));

    /* metadata only: size without opening the body */
    struct store_blob b;
    assert_int_equal(store_blob_get(f->s, "lib/app", big_d, 0, false, &b), ERR_OK);
    assert_int_equal(b.size, big_n);
    assert_int_equal(b.fd, -1);
    assert_int_equal(b.data.len, 0);
    store_blob_release(&b);
    assert_int_equal(store_blob_get(f->s, "lib/app", small_d, 0, false, &b), ERR_OK);
    assert_int_equal(b.size, strlen(small));
    assert_true(b.is_inline);
    assert_int_equal(b.data.len, 0);
    store_blob_release(&b);

    /* repo NULL: any blob the node holds */
    assert_blob_is(f->s, NULL, big_d, big, big_n, false);
    /* inline bytes are in memory right after the commit, so NOWAIT answers */
    assert_int_equal(store_blob_get(f->s, "lib/app", small_d, STORE_NOWAIT, true, &b), ERR_OK);
    assert_int_equal(b.data.len, strlen(small));
    store_blob_release(&b);

    /* everything survives a restart */
    fx_reopen(f);
    assert_blob_is(f->s, "lib/app", small_d, small, strlen(small), true);
    assert_blob_is(f->s, "lib/app", big_d, big, big_n, false);
    free(big);
    free(edge);
    free(over);
}

static void
test_blob_sha512(void **state)
{
    struct fx *f = *state;
    char d_small[DIGEST_MAX], d_big[DIGEST_MAX];
    const char *small = "sha512 small";
    size_t big_n = 100000;
    void *big = pattern(big_n, 9);
    assert_int_equal(digest_of(DIGEST_SHA512, small, strlen(small), d_small), ERR_OK);
    assert_int_equal(digest_of(DIGEST_SHA512, big, big_n, d_big), ERR_OK);
    assert_int_equal(strncmp(d_small, "sha512:", 7), 0);
    assert_int_equal(strlen(d_small), 7 + 128);
    assert_int_equal(store_blob_put(f->s, "r", d_small, small, strlen(small)), ERR_OK);
    assert_int_equal(store_blob_put(f->s, "r", d_big, big, big_n), ERR_OK);
    assert_blob_is(f->s, "r", d_small, small, strlen(small), true);
    assert_blob_is(f->s, "r", d_big, big, big_n, false);
    assert_true(blob_file_exists(f, d_big));

    /* the sha256 of the same bytes is a different blob */
    char d256[DIGEST_MAX];
    assert_int_equal(digest_of(DIGEST_SHA256, big, big_n, d256), ERR_OK);
    assert_false(store_blob_exists(f->s, d256, NULL));
    free(big);
}

static void
test_blob_unknown_and_mismatch(void **state)
{
    struct fx *f = *state;
    char d[DIGEST_MAX], other[DIGEST_MAX];
    assert_int_equal(digest_of(DIGEST_SHA256, "absent", 6, d), ERR_OK);
    assert_int_equal(blob_get_err(f->s, "r", d), ERR_BLOB_UNKNOWN);
    assert_int_equal(blob_get_err(f->s, NULL, d), ERR_BLOB_UNKNOWN);
    assert_false(store_blob_exists(f->s, d, NULL));

    /* wrong digest: nothing stored, no link, no log event, no leftovers */
    uint64_t head = store_log_head(f->s);
    assert_int_equal(digest_of(DIGEST_SHA256, "other bytes", 11, other), ERR_OK);
    assert_int_equal(store_blob_put(f->s, "r", other, "the bytes", 9), ERR_DIGEST_INVALID);
    size_t big_n = 5000;
    void *big = pattern(big_n, 4);
    assert_int_equal(store_blob_put(f->s, "r", other, big, big_n), ERR_DIGEST_INVALID);
    /* a sha512 claim over sha256-sized content */
    char d512[DIGEST_MAX];
    assert_int_equal(digest_of(DIGEST_SHA512, "x", 1, d512), ERR_OK);
    assert_int_equal(store_blob_put(f->s, "r", d512, big, big_n), ERR_DIGEST_INVALID);
    char actual[DIGEST_MAX];
    assert_int_equal(digest_of(DIGEST_SHA256, big, big_n, actual), ERR_OK);
    assert_false(store_blob_exists(f->s, other, NULL));
    assert_false(store_blob_exists(f->s, actual, NULL));
    assert_false(blob_file_exists(f, actual));
    assert_int_equal(blob_get_err(f->s, "r", actual), ERR_BLOB_UNKNOWN);
    assert_false(store_repo_exists(f->s, "r"));
    assert_int_equal(store_log_head(f->s), head);
    assert_int_equal(uploads_on_disk(f), 0);
    struct store_stats st;
    store_get_stats(f->s, &st);
    assert_int_equal(st.uploads_open, 0);
    free(big);
}

static void
test_blob_links_mount_delete(void **state)
{
    struct fx *f = *state;
    char d[DIGEST_MAX], big_d[DIGEST_MAX];
    size_t big_n = 4096;
    void *big = pattern(big_n, 5);
    put_blob_str(f->s, "team/a", "layer bytes", d);
    put_blob(f->s, "team/a", big, big_n, big_d);
    assert_true(store_repo_exists(f->s, "team/a"));
    assert_false(store_repo_exists(f->s, "team/b"));
    assert_false(store_repo_exists(f->s, "team"));

    /* the bytes exist but team/b has no link */
    assert_int_equal(blob_get_err(f->s, "team/b", d), ERR_BLOB_UNKNOWN);
    assert_int_equal(blob_get_err(f->s, "team/b", big_d), ERR_BLOB_UNKNOWN);
    assert_int_equal(blob_get_err(f->s, "team", d), ERR_BLOB_UNKNOWN);
    assert_int_equal(blob_get_err(f->s, "team/a/x", d), ERR_BLOB_UNKNOWN);

    /* mount from a repository that has it */
    assert_int_equal(store_blob_mount(f->s, "team/b", "team/a", d), ERR_OK);
    assert_int_equal(store_blob_mount(f->s, "team/b", "team/a", big_d), ERR_OK);
    assert_true(store_repo_exists(f->s, "team/b"));
    assert_blob_is(f->s, "team/b", d, "layer bytes", 11, true);
    assert_blob_is(f->s, "team/b", big_d, big, big_n, false);
    /* mounting twice is harmless */
    assert_int_equal(store_blob_mount(f->s, "team/b", "team/a", d), ERR_OK);

    /* mount from a repository without the blob, or of an unknown blob */
    assert_int_equal(store_blob_mount(f->s, "team/c", "team/x", d), ERR_BLOB_UNKNOWN);
    char unknown[DIGEST_MAX];
    assert_int_equal(digest_of(DIGEST_SHA256, "nope", 4, unknown), ERR_OK);
    assert_int_equal(store_blob_mount(f->s, "team/c", "team/a", unknown), ERR_BLOB_UNKNOWN);
    assert_false(store_repo_exists(f->s, "team/c"));

    /* delete unlinks from one repository only; the bytes stay */
    assert_int_equal(store_blob_delete(f->s, "team/a", d), ERR_OK);
    assert_int_equal(blob_get_err(f->s, "team/a", d), ERR_BLOB_UNKNOWN);
    assert_blob_is(f->s, "team/b", d, "layer bytes", 11, true);
    assert_true(store_blob_exists(f->s, d, NULL));
    assert_int_equal(store_blob_delete(f->s, "team/a", d), ERR_BLOB_UNKNOWN);
    assert_int_equal(store_blob_delete(f->s, "team/c", d), ERR_BLOB_UNKNOWN);
    assert_int_equal(store_blob_delete(f->s, "team/a", unknown), ERR_BLOB_UNKNOWN);
    /* and cannot be mounted from where it was deleted */
    assert_int_equal(store_blob_mount(f->s, "team/c", "team/a", d), ERR_BLOB_UNKNOWN);
    assert_int_equal(store_blob_delete(f->s, "team/a", big_d), ERR_OK);
    assert_true(blob_file_exists(f, big_d));
    assert_blob_is(f->s, "team/b", big_d, big, big_n, false);

    /* re-pushing to a repository links it again (the bytes are deduplicated) */
    put_blob_str(f->s, "team/a", "layer bytes", d);
    assert_blob_is(f->s, "team/a", d, "layer bytes", 11, true);
    put_blob(f->s, "team/a", big, big_n, big_d);
    assert_blob_is(f->s, "team/a", big_d, big, big_n, false);
    assert_int_equal(uploads_on_disk(f), 0);
    free(big);
}

static void
test_blob_put_unlinked(void **state)
{
    struct fx *f = *state;
    char d[DIGEST_MAX];
    uint64_t head = store_log_head(f->s);
    put_blob_str(f->s, NULL, "bytes only", d);
    assert_true(store_blob_exists(f->s, d, NULL));
    assert_blob_is(f->s, NULL, d, "bytes only", 10, true);
    assert_int_equal(blob_get_err(f->s, "r", d), ERR_BLOB_UNKNOWN);
    assert_int_equal(blob_get_err(f->s, "", d), ERR_BLOB_UNKNOWN);
    assert_false(store_repo_exists(f->s, ""));
    /* no repository, no replicated link event */
    assert_int_equal(store_log_head(f->s), head);
}

/* ---- manifests, tags, referrers ---- */

struct image {
    char config[DIGEST_MAX], layer[DIGEST_MAX], manifest[DIGEST_MAX];
    char body[1024];
};

/* push_image pushes a config and a layer blob and a manifest referencing both. */
static void
push_image(store *s, const char *repo, const char *tag, unsigned seed, struct image *img)
{
    char cfg[64], layer[64];
    snprintf(cfg, sizeof cfg, "{\"seed\":%u}", seed);
    snprintf(layer, sizeof layer, "layer-%u", seed);
    put_blob_str(s, repo, cfg, img->config);
    put_blob_str(s, repo, layer, img->layer);
    snprintf(img->body, sizeof img->body,
             "{\"schemaVersion\":2,\"mediaType\":\"" MT_MANIFEST "\","
             "\"config\":{\"digest\":\"%s\",\"size\":%zu},"
             "\"layers\":[{\"digest\":\"%s\",\"size\":%zu}]}",
             img->config, strlen(cfg), img->layer, strlen(layer));
    struct store_ref refs[2] = {blob_ref(img->config, strlen(cfg)),
                                blob_ref(img->layer, strlen(layer))};
    put_manifest(s, repo, tag, img->body, refs, 2, img->manifest);
}

static void
test_manifest_put_get(void **state)
{
    struct fx *f = *state;
    struct image img;
    push_image(f->s, "lib/app", "v1", 1, &img);
    assert_manifest_is(f->s, "lib/app", "v1", img.manifest, MT_MANIFEST, img.body);
    assert_manifest_is(f->s, "lib/app", img.manifest, img.manifest, MT_MANIFEST, img.body);

    struct store_manifest m;
    assert_int_equal(store_manifest_get(f->s, "lib/app", "v1", STORE_NOWAIT, &m), ERR_OK);
    buf_release(&m.body);

    assert_int_equal(manifest_get_err(f->s, "lib/app", "v2"), ERR_MANIFEST_UNKNOWN);
    assert_int_equal(manifest_get_err(f->s, "lib/other", "v1"), ERR_MANIFEST_UNKNOWN);
    assert_int_equal(manifest_get_err(f->s, "lib/other", img.manifest), ERR_MANIFEST_UNKNOWN);
    assert_int_equal(manifest_get_err(f->s, "lib/app", img.config), ERR_MANIFEST_UNKNOWN);
    char absent[DIGEST_MAX];
    assert_int_equal(digest_of(DIGEST_SHA256, "x", 1, absent), ERR_OK);
    assert_int_equal(manifest_get_err(f->s, "lib/app", absent), ERR_MANIFEST_UNKNOWN);

    /* pushed by digest only: reachable by digest, no tag */
    struct image img2;
    push_image(f->s, "lib/app", NULL, 2, &img2);
    assert_manifest_is(f->s, "lib/app", img2.manifest, img2.manifest, MT_MANIFEST, img2.body);
    assert_manifest_is(f->s, "lib/app", "v1", img.manifest, MT_MANIFEST, img.body);

    /* a second repository with the same manifest (its own blob links) */
    struct image img3;
    push_image(f->s, "lib/copy", "latest", 1, &img3);
    assert_string_equal(img3.manifest, img.manifest);
    assert_manifest_is(f->s, "lib/copy", "latest", img.manifest, MT_MANIFEST, img.body);

    /* an index referencing child manifests */
    char index[1024], index_d[DIGEST_MAX];
    snprintf(index, sizeof index,
             "{\"schemaVersion\":2,\"mediaType\":\"" MT_INDEX "\",\"manifests\":["
             "{\"digest\":\"%s\"},{\"digest\":\"%s\"}]}",
             img.manifest, img2.manifest);
    struct store_ref children[2] = {manifest_ref(img.manifest, strlen(img.body)),
                                    manifest_ref(img2.manifest, strlen(img2.body))};
    assert_int_equal(put_manifest_full(f->s, "lib/app", "multi", MT_INDEX, index, children, 2,
                                       NULL, NULL, index_d, NULL),
                     ERR_OK);
    assert_manifest_is(f->s, "lib/app", "multi", index_d, MT_INDEX, index);

    /* byte-exact bodies, including odd whitespace and binary-looking bytes */
    const char *odd = "  {\n\t\"schemaVersion\" : 2 }\r\n\n";
    char odd_d[DIGEST_MAX];
    put_manifest(f->s, "lib/app", "odd", odd, NULL, 0, odd_d);
    assert_manifest_is(f->s, "lib/app", "odd", odd_d, MT_MANIFEST, odd);

    /* everything survives a restart */
    fx_reopen(f);
    assert_manifest_is(f->s, "lib/app", "v1", img.manifest, MT_MANIFEST, img.body);
    assert_manifest_is(f->s, "lib/app", "multi", index_d, MT_INDEX, index);
    assert_manifest_is(f->s, "lib/copy", img.manifest, img.manifest, MT_MANIFEST, img.body);
}

static void
test_manifest_missing_refs(void **state)
{
    struct fx *f = *state;
    struct image img;
    push_image(f->s, "a", "v1", 1, &img);
    uint64_t head = store_log_head(f->s);
    char missing[DIGEST_MAX];

    /* a blob that exists, but only in another repository */
    char elsewhere[DIGEST_MAX], body_d[DIGEST_MAX];
    put_blob_str(f->s, "b", "only in b", elsewhere);
    head = store_log_head(f->s);
    struct store_ref refs[3] = {blob_ref(img.config, 1), blob_ref(elsewhere, 9),
                                blob_ref(img.layer, 1)};
    const char *body = "{\"refs\":\"elsewhere\"}";
    memset(missing, 0, sizeof missing);
    assert_int_equal(
        put_manifest_full(f->s, "a", "bad", MT_MANIFEST, body, refs, 3, NULL, NULL, body_d, missing),
        ERR_MANIFEST_BLOB_UNKNOWN);
    assert_string_equal(missing, elsewhere);
    /* nothing of it was stored or logged */
    assert_int_equal(manifest_get_err(f->s, "a", "bad"), ERR_MANIFEST_UNKNOWN);
    assert_int_equal(manifest_get_err(f->s, "a", body_d), ERR_MANIFEST_UNKNOWN);
    assert_int_equal(store_log_head(f->s), head);
    /* missing may be NULL */
    assert_int_equal(
        put_manifest_full(f->s, "a", "bad", MT_MANIFEST, body, refs, 3, NULL, NULL, body_d, NULL),
        ERR_MANIFEST_BLOB_UNKNOWN);

    /* a blob nobody has; the first missing one is reported */
    char ghost1[DIGEST_MAX], ghost2[DIGEST_MAX];
    assert_int_equal(digest_of(DIGEST_SHA256, "ghost1", 6, ghost1), ERR_OK);
    assert_int_equal(digest_of(DIGEST_SHA256, "ghost2", 6, ghost2), ERR_OK);
    struct store_ref ghosts[3] = {blob_ref(img.layer, 1), blob_ref(ghost2, 1),
                                  blob_ref(ghost1, 1)};
    assert_int_equal(put_manifest_full(f->s, "a", NULL, MT_MANIFEST, "{\"g\":1}", ghosts, 3, NULL,
                                       NULL, body_d, missing),
                     ERR_MANIFEST_BLOB_UNKNOWN);
    assert_string_equal(missing, ghost2);

    /* an index whose child manifest is missing; a blob is not a manifest */
    struct store_ref kids[2] = {manifest_ref(img.manifest, 1), manifest_ref(ghost1, 1)};
    assert_int_equal(put_manifest_full(f->s, "a", "idx", MT_INDEX, "{\"i\":1}", kids, 2, NULL,
                                       NULL, body_d, missing),
                     ERR_MANIFEST_BLOB_UNKNOWN);
    assert_string_equal(missing, ghost1);
    struct store_ref blob_as_manifest[1] = {manifest_ref(img.layer, 1)};
    assert_int_equal(put_manifest_full(f->s, "a", "idx", MT_INDEX, "{\"i\":2}", blob_as_manifest,
                                       1, NULL, NULL, body_d, missing),
                     ERR_MANIFEST_BLOB_UNKNOWN);
    assert_string_equal(missing, img.layer);
    /* a child manifest of another repository */
    struct image other;
    push_image(f->s, "b", "v1", 7, &other);
    head = store_log_head(f->s);
    struct store_ref foreign[1] = {manifest_ref(other.manifest, 1)};
    assert_int_equal(put_manifest_full(f->s, "a", "idx", MT_INDEX, "{\"i\":3}", foreign, 1, NULL,
                                       NULL, body_d, missing),
                     ERR_MANIFEST_BLOB_UNKNOWN);
    assert_string_equal(missing, other.manifest);
    assert_int_equal(manifest_get_err(f->s, "a", "idx"), ERR_MANIFEST_UNKNOWN);

    /* a media type that does not fit is refused before anything is written */
    char long_mt[300];
    memset(long_mt, 'm', 299);
    long_mt[299] = '\0';
    assert_int_not_equal(put_manifest_full(f->s, "a", "long", long_mt, "{\"l\":1}", NULL, 0, NULL,
                                           NULL, body_d, NULL),
                         ERR_OK);
    assert_int_equal(manifest_get_err(f->s, "a", "long"), ERR_MANIFEST_UNKNOWN);
    assert_int_equal(store_log_head(f->s), head);

    /* the tag v1 still points where it did */
    assert_manifest_is(f->s, "a", "v1", img.manifest, MT_MANIFEST, img.body);
}

/* tags_of lists every tag of repo as "tag=digest" in one call. */
static void
tags_of(store *s, const char *repo, struct listing *l)
{
    bool more = true;
    listing_free(l);
    assert_int_equal(store_tags_list(s, repo, NULL, SIZE_MAX, on_list_item, l, &more), ERR_OK);
    assert_false(more);
}

static void
assert_tag_entry(const struct listing *l, size_t i, const char *tag, const char *digest)
{
    char want[512];
    snprintf(want, sizeof want, "%s=%s", tag, digest);
    assert_true(i < l->n);
    assert_string_equal(l->items[i], want);
}

static void
test_tag_move(void **state)
{
    struct fx *f = *state;
    struct image one, two;
    struct listing l = {0};
    push_image(f->s, "r", "latest", 1, &one);
    push_image(f->s, "r", "stable", 2, &two);
    tags_of(f->s, "r", &l);
    assert_int_equal(l.n, 2);
    assert_tag_entry(&l, 0, "latest", one.manifest);
    assert_tag_entry(&l, 1, "stable", two.manifest);

    /* move latest to two */
    put_manifest(f->s, "r", "latest", two.body, NULL, 0, two.manifest);
    assert_manifest_is(f->s, "r", "latest", two.manifest, MT_MANIFEST, two.body);
    tags_of(f->s, "r", &l);
    assert_int_equal(l.n, 2);
    assert_tag_entry(&l, 0, "latest", two.manifest);
    assert_tag_entry(&l, 1, "stable", two.manifest);

    /* re-putting the same manifest under the same tag changes nothing */
    put_manifest(f->s, "r", "latest", two.body, NULL, 0, two.manifest);
    tags_of(f->s, "r", &l);
    assert_int_equal(l.n, 2);

    /* deleting the old manifest must not take the moved tag with it */
    assert_int_equal(store_manifest_delete(f->s, "r", one.manifest), ERR_OK);
    assert_manifest_is(f->s, "r", "latest", two.manifest, MT_MANIFEST, two.body);
    tags_of(f->s, "r", &l);
    assert_int_equal(l.n, 2);

    /* move latest back to one (pushed again), then delete two: only stable goes */
    put_manifest(f->s, "r", "latest", one.body, NULL, 0, one.manifest);
    assert_int_equal(store_manifest_delete(f->s, "r", two.manifest), ERR_OK);
    assert_manifest_is(f->s, "r", "latest", one.manifest, MT_MANIFEST, one.body);
    assert_int_equal(manifest_get_err(f->s, "r", "stable"), ERR_MANIFEST_UNKNOWN);
    tags_of(f->s, "r", &l);
    assert_int_equal(l.n, 1);
    assert_tag_entry(&l, 0, "latest", one.manifest);

    /* a tag moved then deleted leaves no trace under its old manifest */
    put_manifest(f->s, "r", "latest", two.body, NULL, 0, two.manifest);
    assert_int_equal(store_tag_delete(f->s, "r", "latest"), ERR_OK);
    put_manifest(f->s, "r", "latest", one.body, NULL, 0, one.manifest);
    assert_int_equal(store_manifest_delete(f->s, "r", two.manifest), ERR_OK);
    assert_manifest_is(f->s, "r", "latest", one.manifest, MT_MANIFEST, one.body);
    listing_free(&l);
}

/* store_manifest_put_tags (PUT .../manifests/DIGEST?tag=a&tag=b): all tags and one
 * log event per tag in one batch, or nothing */
static void
test_manifest_put_tags(void **state)
{
    struct fx *f = *state;
    struct ev_log *l = ev_log_new();
    struct listing tl = {0};
    struct image one, two;
    push_image(f->s, "mt", "base", 1, &one);
    push_image(f->s, "mt", NULL, 2, &two);
    uint64_t head = store_log_head(f->s);

    struct store_manifest_put m = {
        .repo = "mt",
        .digest = two.manifest,
        .media_type = MT_MANIFEST,
        .body = slice_of_cstr(two.body),
    };
    /* three tags, one of them moved from another manifest */
    const char *tags[] = {"a", "b", "base"};
    assert_int_equal(store_manifest_put_tags(f->s, &m, tags, 3, NULL), ERR_OK);
    for (size_t i = 0; i < 3; i++)
        assert_manifest_is(f->s, "mt", tags[i], two.manifest, MT_MANIFEST, two.body);
    tags_of(f->s, "mt", &tl);
    assert_int_equal(tl.n, 3);
    assert_tag_entry(&tl, 0, "a", two.manifest);
    assert_tag_entry(&tl, 2, "base", two.manifest);
    read_log(f->s, head + 1, 100, l);
    assert_int_equal(l->n, 3);
    for (size_t i = 0; i < 3; i++)
        assert_event(&l->ev[i], EV_MANIFEST_PUT, "mt", two.manifest, tags[i]);
    assert_int_equal(store_log_head(f->s), head + 3);

    /* ntags 0: by digest only, one untagged event */
    assert_int_equal(store_manifest_put_tags(f->s, &m, NULL, 0, NULL), ERR_OK);
    read_log(f->s, head + 4, 100, l);
    assert_int_equal(l->n, 1);
    assert_event(&l->ev[0], EV_MANIFEST_PUT, "mt", two.manifest, NULL);

    /* refused whole: too many, a duplicate, an invalid tag; nothing changes */
    uint64_t h2 = store_log_head(f->s);
    const char *many[STORE_MAX_TAGS_PER_PUT + 1];
    char names[STORE_MAX_TAGS_PER_PUT + 1][8];
    for (size_t i = 0; i <= STORE_MAX_TAGS_PER_PUT; i++) {
        snprintf(names[i], sizeof names[i], "n%zu", i);
        many[i] = names[i];
    }
    assert_int_equal(store_manifest_put_tags(f->s, &m, many, STORE_MAX_TAGS_PER_PUT + 1, NULL),
                     ERR_INVALID);
    const char *dup[] = {"c", "d", "c"};
    assert_int_equal(store_manifest_put_tags(f->s, &m, dup, 3, NULL), ERR_INVALID);
    const char *bad[] = {"e", "-no"};
    assert_int_equal(store_manifest_put_tags(f->s, &m, bad, 2, NULL), ERR_INVALID);
    assert_int_equal(store_log_head(f->s), h2);
    assert_int_equal(manifest_get_err(f->s, "mt", "c"), ERR_MANIFEST_UNKNOWN);
    assert_int_equal(manifest_get_err(f->s, "mt", "e"), ERR_MANIFEST_UNKNOWN);
    assert_int_equal(manifest_get_err(f->s, "mt", "n0"), ERR_MANIFEST_UNKNOWN);

    /* a missing reference refuses every tag */
    char junk[DIGEST_MAX], missing[DIGEST_MAX] = "";
    assert_int_equal(digest_of(DIGEST_SHA256, "junk", 4, junk), ERR_OK);
    struct store_ref refs[1] = {blob_ref(junk, 4)};
    struct store_manifest_put m2 = m;
    m2.refs = refs;
    m2.nrefs = 1;
    const char *two_tags[] = {"f", "g"};
    assert_int_equal(store_manifest_put_tags(f->s, &m2, two_tags, 2, missing),
                     ERR_MANIFEST_BLOB_UNKNOWN);
    assert_string_equal(missing, junk);
    assert_int_equal(manifest_get_err(f->s, "mt", "f"), ERR_MANIFEST_UNKNOWN);
    assert_int_equal(store_log_head(f->s), h2);

    /* after a restart: every tag that was set, the moved one too */
    fx_reopen(f);
    for (size_t i = 0; i < 3; i++)
        assert_manifest_is(f->s, "mt", tags[i], two.manifest, MT_MANIFEST, two.body);
    assert_manifest_is(f->s, "mt", one.manifest, one.manifest, MT_MANIFEST, one.body);
    listing_free(&tl);
    ev_log_free(l);
}

static void
test_tag_delete(void **state)
{
    struct fx *f = *state;
    struct image img;
    struct listing l = {0};
    push_image(f->s, "r", "v1", 1, &img);
    put_manifest(f->s, "r", "v2", img.body, NULL, 0, img.manifest);
    uint64_t head = store_log_head(f->s);

    assert_int_equal(store_tag_delete(f->s, "r", "v1"), ERR_OK);
    assert_int_equal(store_log_head(f->s), head + 1);
    assert_int_equal(manifest_get_err(f->s, "r", "v1"), ERR_MANIFEST_UNKNOWN);
    /* the manifest and its other tag stay */
    assert_manifest_is(f->s, "r", "v2", img.manifest, MT_MANIFEST, img.body);
    assert_manifest_is(f->s, "r", img.manifest, img.manifest, MT_MANIFEST, img.body);
    tags_of(f->s, "r", &l);
    assert_int_equal(l.n, 1);
    assert_tag_entry(&l, 0, "v2", img.manifest);

    /* absent tags */
    head = store_log_head(f->s);
    assert_int_equal(store_tag_delete(f->s, "r", "v1"), ERR_MANIFEST_UNKNOWN);
    assert_int_equal(store_tag_delete(f->s, "r", "never"), ERR_MANIFEST_UNKNOWN);
    assert_int_equal(store_tag_delete(f->s, "other", "v2"), ERR_MANIFEST_UNKNOWN);
    assert_int_equal(store_log_head(f->s), head);

    /* deleting the manifest afterwards removes only what is left */
    assert_int_equal(store_manifest_delete(f->s, "r", img.manifest), ERR_OK);
    tags_of(f->s, "r", &l);
    assert_int_equal(l.n, 0);
    listing_free(&l);
}

static void
test_manifest_delete(void **state)
{
    struct fx *f = *state;
    struct image subj, keep;
    struct listing l = {0};
    push_image(f->s, "r", "base", 1, &subj);
    push_image(f->s, "r", "keep", 2, &keep);
    push_image(f->s, "mirror", "base", 1, &subj); /* same manifest in another repo */

    /* a signature with a subject and two tags */
    char sig_d[DIGEST_MAX], desc[512];
    const char *sig = "{\"artifactType\":\"application/vnd.example.sig\",\"subject\":{}}";
    assert_int_equal(digest_of(DIGEST_SHA256, sig, strlen(sig), sig_d), ERR_OK);
    snprintf(desc, sizeof desc, "{\"mediaType\":\"" MT_MANIFEST "\",\"digest\":\"%s\",\"size\":%zu}",
             sig_d, strlen(sig));
    assert_int_equal(put_manifest_full(f->s, "r", "sig-a", MT_MANIFEST, sig, NULL, 0,
                                       subj.manifest, desc, sig_d, NULL),
                     ERR_OK);
    assert_int_equal(put_manifest_full(f->s, "r", "sig-b", MT_MANIFEST, sig, NULL, 0,
                                       subj.manifest, desc, sig_d, NULL),
                     ERR_OK);
    assert_int_equal(store_referrers_list(f->s, "r", subj.manifest, on_list_item, &l), ERR_OK);
    assert_int_equal(l.n, 1);
    listing_free(&l);

    uint64_t head = store_log_head(f->s);
    assert_int_equal(store_manifest_delete(f->s, "r", sig_d), ERR_OK);
    assert_int_equal(store_log_head(f->s), head + 1);
    assert_int_equal(manifest_get_err(f->s, "r", sig_d), ERR_MANIFEST_UNKNOWN);
    assert_int_equal(manifest_get_err(f->s, "r", "sig-a"), ERR_MANIFEST_UNKNOWN);
    assert_int_equal(manifest_get_err(f->s, "r", "sig-b"), ERR_MANIFEST_UNKNOWN);
    assert_int_equal(store_referrers_list(f->s, "r", subj.manifest, on_list_item, &l), ERR_OK);
    assert_int_equal(l.n, 0);
    tags_of(f->s, "r", &l);
    assert_int_equal(l.n, 2);
    assert_tag_entry(&l, 0, "base", subj.manifest);
    assert_tag_entry(&l, 1, "keep", keep.manifest);

    /* deleting base in r leaves mirror alone */
    assert_int_equal(store_manifest_delete(f->s, "r", subj.manifest), ERR_OK);
    assert_int_equal(manifest_get_err(f->s, "r", "base"), ERR_MANIFEST_UNKNOWN);
    assert_manifest_is(f->s, "mirror", "base", subj.manifest, MT_MANIFEST, subj.body);
    assert_manifest_is(f->s, "r", "keep", keep.manifest, MT_MANIFEST, keep.body);

    /* twice, or somewhere it never was */
    head = store_log_head(f->s);
    assert_int_equal(store_manifest_delete(f->s, "r", subj.manifest), ERR_MANIFEST_UNKNOWN);
    assert_int_equal(store_manifest_delete(f->s, "nowhere", keep.manifest), ERR_MANIFEST_UNKNOWN);
    assert_int_equal(store_log_head(f->s), head);

    /* a deleted manifest can be pushed again */
    put_manifest(f->s, "r", "base", subj.body, NULL, 0, subj.manifest);
    assert_manifest_is(f->s, "r", "base", subj.manifest, MT_MANIFEST, subj.body);
    listing_free(&l);
}

static void
test_referrers(void **state)
{
    struct fx *f = *state;
    struct image subj;
    struct listing l = {0};
    push_image(f->s, "app", "v1", 1, &subj);

    char d1[DIGEST_MAX], d2[DIGEST_MAX], desc1[512], desc2[512];
    const char *b1 = "{\"artifactType\":\"application/vnd.dev.cosign\",\"n\":1}";
    const char *b2 = "{\"artifactType\":\"application/spdx+json\",\"n\":2}";
    assert_int_equal(digest_of(DIGEST_SHA256, b1, strlen(b1), d1), ERR_OK);
    assert_int_equal(digest_of(DIGEST_SHA256, b2, strlen(b2), d2), ERR_OK);
    snprintf(desc1, sizeof desc1, "{\"digest\":\"%s\",\"artifactType\":\"application/vnd.dev.cosign\"}",
             d1);
    snprintf(desc2, sizeof desc2, "{\"digest\":\"%s\",\"artifactType\":\"application/spdx+json\"}",
             d2);
    assert_int_equal(
        put_manifest_full(f->s, "app", NULL, MT_MANIFEST, b1, NULL, 0, subj.manifest, desc1, d1, NULL),
        ERR_OK);
    assert_int_equal(
        put_manifest_full(f->s, "app", NULL, MT_MANIFEST, b2, NULL, 0, subj.manifest, desc2, d2, NULL),
        ERR_OK);

    assert_int_equal(store_referrers_list(f->s, "app", subj.manifest, on_list_item, &l), ERR_OK);
    assert_int_equal(l.n, 2);
    /* ordered by referrer digest, value is the descriptor byte-exact */
    const char *lo = strcmp(d1, d2) < 0 ? d1 : d2, *hi = lo == d1 ? d2 : d1;
    const char *lo_desc = lo == d1 ? desc1 : desc2, *hi_desc = lo == d1 ? desc2 : desc1;
    assert_tag_entry(&l, 0, lo, lo_desc);
    assert_tag_entry(&l, 1, hi, hi_desc);
    listing_free(&l);

    /* the callback can stop early */
    l.stop_after = 1;
    assert_int_equal(store_referrers_list(f->s, "app", subj.manifest, on_list_item, &l), ERR_OK);
    assert_int_equal(l.n, 1);
    listing_free(&l);

    /* none in another repository, none for another subject */
    assert_int_equal(store_referrers_list(f->s, "other", subj.manifest, on_list_item, &l), ERR_OK);
    assert_int_equal(l.n, 0);
    assert_int_equal(store_referrers_list(f->s, "app", d1, on_list_item, &l), ERR_OK);
    assert_int_equal(l.n, 0);

    /* a referrer may arrive before its subject */
    char ghost[DIGEST_MAX], d3[DIGEST_MAX];
    assert_int_equal(digest_of(DIGEST_SHA256, "future subject", 14, ghost), ERR_OK);
    assert_int_equal(put_manifest_full(f->s, "app", NULL, MT_MANIFEST, "{\"early\":1}", NULL, 0,
                                       ghost, "{\"d\":3}", d3, NULL),
                     ERR_OK);
    assert_int_equal(store_referrers_list(f->s, "app", ghost, on_list_item, &l), ERR_OK);
    assert_int_equal(l.n, 1);
    assert_tag_entry(&l, 0, d3, "{\"d\":3}");
    listing_free(&l);

    /* deleting one referrer removes its entry only; deleting the subject keeps them */
    assert_int_equal(store_manifest_delete(f->s, "app", d1), ERR_OK);
    assert_int_equal(store_manifest_delete(f->s, "app", subj.manifest), ERR_OK);
    assert_int_equal(store_referrers_list(f->s, "app", subj.manifest, on_list_item, &l), ERR_OK);
    assert_int_equal(l.n, 1);
    assert_tag_entry(&l, 0, d2, desc2);
    listing_free(&l);

    fx_reopen(f);
    assert_int_equal(store_referrers_list(f->s, "app", subj.manifest, on_list_item, &l), ERR_OK);
    assert_int_equal(l.n, 1);
    listing_free(&l);
}

/* ---- listings ---- */

#define NTAGS 1000

static void
test_tags_pagination(void **state)
{
    struct fx *f = *state;
    struct image img;
    struct listing l = {0};
    bool more = false;

    assert_int_equal(store_tags_list(f->s, "r", NULL, 10, on_list_item, &l, &more),
                     ERR_NAME_UNKNOWN);
    push_image(f->s, "r", NULL, 1, &img);
    /* a repository with blobs and an untagged manifest has an empty tag list */
    more = true;
    assert_int_equal(store_tags_list(f->s, "r", NULL, 10, on_list_item, &l, &more), ERR_OK);
    assert_int_equal(l.n, 0);
    assert_false(more);

    /* 1000 tags pushed in a scrambled order */
    for (unsigned i = 0; i < NTAGS; i++) {
        char tag[16];
        snprintf(tag, sizeof tag, "t%04u", (i * 379u) % NTAGS);
        put_manifest(f->s, "r", tag, img.body, NULL, 0, img.manifest);
    }
    /* neighbours whose keys share the prefix must not leak in */
    struct image other;
    push_image(f->s, "r/sub", "zzz-sub", 2, &other);
    push_image(f->s, "r2", "aaa-r2", 3, &other);
    push_image(f->s, "q", "zzz-q", 4, &other);

    /* pages of 100 using last */
    char last[32] = "";
    size_t pages = 0, total = 0;
    for (;;) {
        listing_free(&l);
        assert_int_equal(store_tags_list(f->s, "r", pages ? last : NULL, 100, on_list_item, &l,
                                         &more),
                         ERR_OK);
        pages++;
        for (size_t i = 0; i < l.n; i++) {
            char want[32];
            snprintf(want, sizeof want, "t%04zu", total + i);
            assert_tag_entry(&l, i, want, img.manifest);
        }
        total += l.n;
        if (!more)
            break;
        assert_int_equal(l.n, 100);
        char *eq = strchr(l.items[l.n - 1], '=');
        assert_non_null(eq);
        snprintf(last, sizeof last, "%.*s", (int)(eq - l.items[l.n - 1]), l.items[l.n - 1]);
        assert_true(pages < 100);
    }
    assert_int_equal(total, NTAGS);
    /* the last full page knows nothing remains after it */
    assert_int_equal(pages, NTAGS / 100);

    /* n exactly the count: no more; one less: more */
    listing_free(&l);
    assert_int_equal(store_tags_list(f->s, "r", NULL, NTAGS, on_list_item, &l, &more), ERR_OK);
    assert_int_equal(l.n, NTAGS);
    assert_false(more);
    listing_free(&l);
    assert_int_equal(store_tags_list(f->s, "r", NULL, NTAGS - 1, on_list_item, &l, &more), ERR_OK);
    assert_int_equal(l.n, NTAGS - 1);
    assert_true(more);
    listing_free(&l);

    /* last that is not itself a tag: continue after it in lexical order */
    assert_int_equal(store_tags_list(f->s, "r", "t0499x", 3, on_list_item, &l, &more), ERR_OK);
    assert_int_equal(l.n, 3);
    assert_tag_entry(&l, 0, "t0500", img.manifest);
    assert_tag_entry(&l, 2, "t0502", img.manifest);
    assert_true(more);
    listing_free(&l);
    assert_int_equal(store_tags_list(f->s, "r", "a", 1, on_list_item, &l, &more), ERR_OK);
    assert_tag_entry(&l, 0, "t0000", img.manifest);
    listing_free(&l);
    /* last at or past the end */
    assert_int_equal(store_tags_list(f->s, "r", "t0998", 10, on_list_item, &l, &more), ERR_OK);
    assert_int_equal(l.n, 1);
    assert_tag_entry(&l, 0, "t0999", img.manifest);
    assert_false(more);
    listing_free(&l);
    assert_int_equal(store_tags_list(f->s, "r", "t0999", 10, on_list_item, &l, &more), ERR_OK);
    assert_int_equal(l.n, 0);
    assert_false(more);
    assert_int_equal(store_tags_list(f->s, "r", "zzzz", 10, on_list_item, &l, &more), ERR_OK);
    assert_int_equal(l.n, 0);
    assert_false(more);

    /* a callback that stops early */
    l.stop_after = 5;
    assert_int_equal(store_tags_list(f->s, "r", NULL, 100, on_list_item, &l, &more), ERR_OK);
    assert_int_equal(l.n, 5);
    listing_free(&l);

    /* the neighbours see only their own tags; more may be NULL */
    assert_int_equal(store_tags_list(f->s, "r/sub", NULL, 100, on_list_item, &l, NULL), ERR_OK);
    assert_int_equal(l.n, 1);
    assert_true(strncmp(l.items[0], "zzz-sub=", 8) == 0);
    listing_free(&l);
    assert_int_equal(store_tags_list(f->s, "r2", NULL, 100, on_list_item, &l, NULL), ERR_OK);
    assert_int_equal(l.n, 1);
    assert_true(strncmp(l.items[0], "aaa-r2=", 7) == 0);
    listing_free(&l);

    /* deleting tags shows in the listing */
    assert_int_equal(store_tag_delete(f->s, "r", "t0000"), ERR_OK);
    assert_int_equal(store_tags_list(f->s, "r", NULL, 1, on_list_item, &l, &more), ERR_OK);
    assert_tag_entry(&l, 0, "t0001", img.manifest);
    listing_free(&l);
    /* and deleting the manifest removes all 999 remaining tags */
    assert_int_equal(store_manifest_delete(f->s, "r", img.manifest), ERR_OK);
    assert_int_equal(store_tags_list(f->s, "r", NULL, 2000, on_list_item, &l, &more), ERR_OK);
    assert_int_equal(l.n, 0);
    assert_false(more);
    /* the neighbours are untouched */
    assert_int_equal(store_tags_list(f->s, "r/sub", NULL, 100, on_list_item, &l, NULL), ERR_OK);
    assert_int_equal(l.n, 1);
    listing_free(&l);
}

#define NREPOS 250

static void
test_catalog_pagination(void **state)
{
    struct fx *f = *state;
    struct listing l = {0};
    bool more = true;
    char d[DIGEST_MAX];

    assert_int_equal(store_catalog_list(f->s, NULL, 10, on_list_item, &l, &more), ERR_OK);
    assert_int_equal(l.n, 0);
    assert_false(more);

    /* repositories come into being by a blob link, a mount or a manifest */
    put_blob_str(f->s, "src", "shared", d);
    for (unsigned i = 0; i < NREPOS; i++) {
        char repo[32];
        snprintf(repo, sizeof repo, "repo%03u", (i * 101u) % NREPOS);
        assert_int_equal(store_blob_mount(f->s, repo, "src", d), ERR_OK);
    }
    struct image img;
    push_image(f->s, "repo007/nested", "v1", 1, &img);
    /* expected order: repo000 .. repo249 with repo007/nested after repo007, then src */
    const size_t expect_n = NREPOS + 2;
    char expect[NREPOS + 2][32];
    size_t k = 0;
    for (unsigned i = 0; i < NREPOS; i++) {
        snprintf(expect[k++], sizeof expect[0], "repo%03u=", i);
        if (i == 7)
            snprintf(expect[k++], sizeof expect[0], "repo007/nested=");
    }
    snprintf(expect[k++], sizeof expect[0], "src=");
    assert_int_equal(k, expect_n);

    char last[32];
    size_t got = 0, pages = 0;
    for (;;) {
        listing_free(&l);
        assert_int_equal(
            store_catalog_list(f->s, pages ? last : NULL, 7, on_list_item, &l, &more), ERR_OK);
        pages++;
        for (size_t i = 0; i < l.n; i++)
            assert_string_equal(l.items[i], expect[got + i]);
        got += l.n;
        if (!more)
            break;
        assert_int_equal(l.n, 7);
        snprintf(last, sizeof last, "%.*s", (int)strlen(l.items[l.n - 1]) - 1, l.items[l.n - 1]);
        assert_true(pages < 1000);
    }
    assert_int_equal(got, expect_n);
    assert_int_equal(pages, (expect_n + 6) / 7);
    listing_free(&l);

    assert_int_equal(store_catalog_list(f->s, "repo248", 10, on_list_item, &l, &more), ERR_OK);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.items[0], "repo249=");
    assert_string_equal(l.items[1], "src=");
    assert_false(more);
    listing_free(&l);
    assert_int_equal(store_catalog_list(f->s, "src", 10, on_list_item, &l, &more), ERR_OK);
    assert_int_equal(l.n, 0);
    assert_false(more);
    assert_int_equal(store_catalog_list(f->s, NULL, expect_n, on_list_item, &l, &more), ERR_OK);
    assert_int_equal(l.n, expect_n);
    assert_false(more);
    listing_free(&l);

    /* survives a restart */
    fx_reopen(f);
    assert_int_equal(store_catalog_list(f->s, "repo007", 1, on_list_item, &l, &more), ERR_OK);
    assert_string_equal(l.items[0], "repo007/nested=");
    assert_true(more);
    listing_free(&l);
}

/* ---- uploads ---- */

static void
test_upload_lifecycle(void **state)
{
    struct fx *f = *state;
    char id[STORE_UPLOAD_ID_LEN + 1], d[DIGEST_MAX];
    store_upload *u = NULL, *u2 = NULL;
    size_t n = 200000;
    unsigned char *data = pattern(n, 11);
    assert_int_equal(digest_of(DIGEST_SHA256, data, n, d), ERR_OK);

    assert_int_equal(store_upload_create(f->s, "lib/app", id), ERR_OK);
    assert_int_equal(strlen(id), STORE_UPLOAD_ID_LEN);
    assert_int_equal(strspn(id, "0123456789abcdef"), STORE_UPLOAD_ID_LEN);
    char id_b[STORE_UPLOAD_ID_LEN + 1];
    assert_int_equal(store_upload_create(f->s, "lib/app", id_b), ERR_OK);
    assert_string_not_equal(id, id_b);
    struct store_stats st;
    store_get_stats(f->s, &st);
    assert_int_equal(st.uploads_open, 2);
    assert_int_equal(uploads_on_disk(f), 2);

    assert_int_equal(store_upload_acquire(f->s, "lib/app", id, &u), ERR_OK);
    assert_string_equal(store_upload_id(u), id);
    assert_int_equal(store_upload_offset(u), 0);
    /* held: a second request gets BUSY, also for cancel */
    assert_int_equal(store_upload_acquire(f->s, "lib/app", id, &u2), ERR_BUSY);
    assert_int_equal(store_upload_cancel(f->s, "lib/app", id), ERR_BUSY);
    /* another repository or an unknown id does not see it */
    assert_int_equal(store_upload_acquire(f->s, "lib/other", id, &u2), ERR_BLOB_UPLOAD_UNKNOWN);
    assert_int_equal(store_upload_acquire(f->s, "lib/app", "0123456789abcdef0123456789abcdef", &u2),
                     ERR_BLOB_UPLOAD_UNKNOWN);

    /* chunks across several acquire/release rounds */
    assert_int_equal(store_upload_write(u, data, 1000), ERR_OK);
    assert_int_equal(store_upload_write(u, data + 1000, 0), ERR_OK);
    assert_int_equal(store_upload_offset(u), 1000);
    store_upload_release(f->s, u);
    assert_int_equal(store_upload_acquire(f->s, "lib/app", id, &u), ERR_OK);
    assert_int_equal(store_upload_offset(u), 1000);
    assert_int_equal(store_upload_write(u, data + 1000, 99000), ERR_OK);
    store_upload_release(f->s, u);
    assert_int_equal(store_upload_acquire(f->s, "lib/app", id, &u), ERR_OK);
    assert_int_equal(store_upload_write(u, data + 100000, n - 100000), ERR_OK);
    assert_int_equal(store_upload_offset(u), n);
    /* nothing is visible before finish */
    assert_false(store_blob_exists(f->s, d, NULL));
    uint64_t head = store_log_head(f->s);
    uint64_t size = 0;
    assert_int_equal(store_upload_finish(f->s, u, d, &size), ERR_OK);
    assert_int_equal(size, n);
    assert_int_equal(store_log_head(f->s), head + 1);
    assert_blob_is(f->s, "lib/app", d, data, n, false);
    assert_true(store_repo_exists(f->s, "lib/app"));

    /* the session is gone */
    assert_int_equal(store_upload_acquire(f->s, "lib/app", id, &u2), ERR_BLOB_UPLOAD_UNKNOWN);
    assert_int_equal(store_upload_cancel(f->s, "lib/app", id), ERR_BLOB_UPLOAD_UNKNOWN);
    store_get_stats(f->s, &st);
    assert_int_equal(st.uploads_open, 1);
    assert_int_equal(uploads_on_disk(f), 1);

    /* cancel the other one: record and file go */
    assert_int_equal(store_upload_cancel(f->s, "lib/other", id_b), ERR_BLOB_UPLOAD_UNKNOWN);
    assert_int_equal(store_upload_cancel(f->s, "lib/app", id_b), ERR_OK);
    assert_int_equal(store_upload_acquire(f->s, "lib/app", id_b, &u2), ERR_BLOB_UPLOAD_UNKNOWN);
    assert_int_equal(store_upload_cancel(f->s, "lib/app", id_b), ERR_BLOB_UPLOAD_UNKNOWN);
    store_get_stats(f->s, &st);
    assert_int_equal(st.uploads_open, 0);
    assert_int_equal(uploads_on_disk(f), 0);
    /* and stays gone after a restart */
    fx_reopen(f);
    assert_int_equal(store_upload_acquire(f->s, "lib/app", id_b, &u2), ERR_BLOB_UPLOAD_UNKNOWN);
    assert_int_equal(store_upload_acquire(f->s, "lib/app", id, &u2), ERR_BLOB_UPLOAD_UNKNOWN);
    free(data);

    /* a blob past the 8 MiB writeback step, streamed in 1 MiB chunks */
    size_t chunk = 1u << 20, big_n = 9 * chunk + 333;
    unsigned char *big = pattern(big_n, 18);
    assert_int_equal(digest_of(DIGEST_SHA256, big, big_n, d), ERR_OK);
    assert_int_equal(store_upload_create(f->s, "lib/app", id), ERR_OK);
    assert_int_equal(store_upload_acquire(f->s, "lib/app", id, &u), ERR_OK);
    for (size_t off = 0; off < big_n; off += chunk) {
        size_t len = big_n - off < chunk ? big_n - off : chunk;
        assert_int_equal(store_upload_write(u, big + off, len), ERR_OK);
    }
    assert_int_equal(store_upload_finish(f->s, u, d, &size), ERR_OK);
    assert_int_equal(size, big_n);
    assert_blob_is(f->s, "lib/app", d, big, big_n, false);
    free(big);
}

static void
test_upload_small_inline_and_dedup(void **state)
{
    struct fx *f = *state;
    char id[STORE_UPLOAD_ID_LEN + 1], d[DIGEST_MAX];
    store_upload *u = NULL;
    const char *text = "small upload";
    assert_int_equal(digest_of(DIGEST_SHA256, text, strlen(text), d), ERR_OK);
    assert_int_equal(store_upload_create(f->s, "a", id), ERR_OK);
    assert_int_equal(store_upload_acquire(f->s, "a", id, &u), ERR_OK);
    assert_int_equal(store_upload_write(u, text, strlen(text)), ERR_OK);
    assert_int_equal(store_upload_finish(f->s, u, d, NULL), ERR_OK);
    assert_blob_is(f->s, "a", d, text, strlen(text), true);

    /* the same big content twice: one content file, both repositories linked */
    size_t n = 10000;
    void *big = pattern(n, 12);
    char bd[DIGEST_MAX];
    assert_int_equal(digest_of(DIGEST_SHA256, big, n, bd), ERR_OK);
    const char *repos[] = {"a", "b"};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(store_upload_create(f->s, repos[i], id), ERR_OK);
        assert_int_equal(store_upload_acquire(f->s, repos[i], id, &u), ERR_OK);
        assert_int_equal(store_upload_write(u, big, n), ERR_OK);
        assert_int_equal(store_upload_finish(f->s, u, bd, NULL), ERR_OK);
    }
    assert_blob_is(f->s, "a", bd, big, n, false);
    assert_blob_is(f->s, "b", bd, big, n, false);
    assert_int_equal(uploads_on_disk(f), 0);
    /* an empty upload */
    char ed[DIGEST_MAX];
    assert_int_equal(digest_of(DIGEST_SHA256, "", 0, ed), ERR_OK);
    assert_int_equal(store_upload_create(f->s, "a", id), ERR_OK);
    assert_int_equal(store_upload_acquire(f->s, "a", id, &u), ERR_OK);
    uint64_t size = 99;
    assert_int_equal(store_upload_finish(f->s, u, ed, &size), ERR_OK);
    assert_int_equal(size, 0);
    assert_blob_is(f->s, "a", ed, "", 0, true);
    free(big);
}

static void
test_upload_digest_mismatch(void **state)
{
    struct fx *f = *state;
    char id[STORE_UPLOAD_ID_LEN + 1], wrong[DIGEST_MAX], right[DIGEST_MAX];
    store_upload *u = NULL;
    size_t n = 5000;
    void *data = pattern(n, 13);
    assert_int_equal(digest_of(DIGEST_SHA256, data, n, right), ERR_OK);
    assert_int_equal(digest_of(DIGEST_SHA256, data, n - 1, wrong), ERR_OK);

    for (int big = 0; big < 2; big++) {
        size_t len = big ? n : 10;
        assert_int_equal(digest_of(DIGEST_SHA256, data, len, right), ERR_OK);
        uint64_t head = store_log_head(f->s);
        assert_int_equal(store_upload_create(f->s, "r", id), ERR_OK);
        assert_int_equal(store_upload_acquire(f->s, "r", id, &u), ERR_OK);
        assert_int_equal(store_upload_write(u, data, len), ERR_OK);
        assert_int_equal(store_upload_finish(f->s, u, wrong, NULL), ERR_DIGEST_INVALID);
        /* nothing stored under either digest, nothing linked, nothing logged */
        assert_false(store_blob_exists(f->s, wrong, NULL));
        assert_false(store_blob_exists(f->s, right, NULL));
        assert_false(blob_file_exists(f, right));
        assert_false(blob_file_exists(f, wrong));
        assert_int_equal(blob_get_err(f->s, "r", right), ERR_BLOB_UNKNOWN);
        assert_false(store_repo_exists(f->s, "r"));
        assert_int_equal(store_log_head(f->s), head);
        /* the session has ended (as CNCF Distribution does): the client starts over */
        store_upload *again = NULL;
        assert_int_equal(store_upload_acquire(f->s, "r", id, &again), ERR_BLOB_UPLOAD_UNKNOWN);
        assert_int_equal(uploads_on_disk(f), 0);
    }
    free(data);
}

/* deferred hashing: each buffer is handed back exactly once, after it was hashed */
struct deferred_buf {
    unsigned char *p;
    atomic_int released;
};

static void
deferred_done(void *arg)
{
    struct deferred_buf *b = arg;
    atomic_fetch_add(&b->released, 1);
}

static void
test_upload_deferred_hash(void **state)
{
    struct fx *f = *state;
    char id[STORE_UPLOAD_ID_LEN + 1], d[DIGEST_MAX], wrong[DIGEST_MAX];
    enum { CH = 64 * 1024, NCH = 3 * STORE_HASH_QUEUE + 5 }; /* more than the queue holds */
    size_t n = (size_t)CH * NCH;
    unsigned char *data = pattern(n, 21);
    assert_int_equal(digest_of(DIGEST_SHA256, data, n, d), ERR_OK);
    assert_int_equal(digest_of(DIGEST_SHA256, data, n - 1, wrong), ERR_OK);
    struct deferred_buf *bufs = calloc(NCH, sizeof *bufs);
    assert_non_null(bufs);

    for (int round = 0; round < 3; round++) {
        store_upload *u = NULL;
        assert_int_equal(store_upload_create(f->s, "def/app", id), ERR_OK);
        assert_int_equal(store_upload_acquire(f->s, "def/app", id, &u), ERR_OK);
        for (int i = 0; i < NCH; i++) {
            /* each chunk in its own buffer, scribbled over once it is handed back */
            bufs[i].p = malloc(CH);
            memcpy(bufs[i].p, data + (size_t)i * CH, CH);
            atomic_store(&bufs[i].released, 0);
            if (round == 1 && i == NCH / 2) /* a plain write in between keeps the order */
                assert_int_equal(store_upload_write(u, bufs[i].p, CH), ERR_OK);
            else
                assert_int_equal(
                    store_upload_write_deferred(u, bufs[i].p, CH, deferred_done, &bufs[i]),
                    ERR_OK);
        }
        assert_int_equal(store_upload_offset(u), n);
        if (round == 2) {
            /* release with hashing still queued, then take it again and finish */
            store_upload_release(f->s, u);
            assert_int_equal(store_upload_acquire(f->s, "def/app", id, &u), ERR_OK);
        }
        err want = round == 0 ? ERR_DIGEST_INVALID : ERR_OK;
        assert_int_equal(store_upload_finish(f->s, u, round == 0 ? wrong : d, NULL), want);
        for (int i = 0; i < NCH; i++) {
            bool plain = round == 1 && i == NCH / 2;
            assert_int_equal(atomic_load(&bufs[i].released), plain ? 0 : 1);
            free(bufs[i].p);
        }
        if (round == 0) {
            assert_false(store_blob_exists(f->s, d, NULL));
            assert_int_equal(uploads_on_disk(f), 0);
        } else {
            assert_blob_is(f->s, "def/app", d, data, n, false);
        }
    }
    free(bufs);
    free(data);
}

static void
test_upload_resume_after_reopen(void **state)
{
    struct fx *f = *state;
    char id[STORE_UPLOAD_ID_LEN + 1], d[DIGEST_MAX];
    store_upload *u = NULL, *u2 = NULL;
    size_t n = 3u << 20; /* spans the 1 MiB re-hash buffer */
    size_t half = n / 2 + 12345;
    unsigned char *data = pattern(n, 14);
    assert_int_equal(digest_of(DIGEST_SHA256, data, n, d), ERR_OK);

    assert_int_equal(store_upload_create(f->s, "lib/app", id), ERR_OK);
    assert_int_equal(store_upload_acquire(f->s, "lib/app", id, &u), ERR_OK);
    assert_int_equal(store_upload_write(u, data, half), ERR_OK);
    store_upload_release(f->s, u);

    fx_reopen(f);
    /* a session not yet reloaded is not counted as open in memory, but is on disk */
    assert_int_equal(uploads_on_disk(f), 1);
    assert_int_equal(store_upload_acquire(f->s, "lib/other", id, &u), ERR_BLOB_UPLOAD_UNKNOWN);
    assert_int_equal(store_upload_acquire(f->s, "lib/app", id, &u), ERR_OK);
    assert_string_equal(store_upload_id(u), id);
    assert_int_equal(store_upload_offset(u), half);
    assert_int_equal(store_upload_acquire(f->s, "lib/app", id, &u2), ERR_BUSY);
    assert_int_equal(store_upload_write(u, data + half, n - half), ERR_OK);
    uint64_t size = 0;
    assert_int_equal(store_upload_finish(f->s, u, d, &size), ERR_OK);
    assert_int_equal(size, n);
    assert_blob_is(f->s, "lib/app", d, data, n, false);
    assert_int_equal(uploads_on_disk(f), 0);
    free(data);
}

static void
test_upload_resume_drops_unacknowledged(void **state)
{
    struct fx *f = *state;
    char id[STORE_UPLOAD_ID_LEN + 1], d[DIGEST_MAX];
    store_upload *u = NULL;
    size_t n = 100000, half = 40000;
    unsigned char *data = pattern(n, 15);
    assert_int_equal(digest_of(DIGEST_SHA256, data, n, d), ERR_OK);

    assert_int_equal(store_upload_create(f->s, "r", id), ERR_OK);
    assert_int_equal(store_upload_acquire(f->s, "r", id, &u), ERR_OK);
    assert_int_equal(store_upload_write(u, data, half), ERR_OK);
    store_upload_release(f->s, u);
    /* a request that wrote garbage and never got its answer (no release) */
    assert_int_equal(store_upload_acquire(f->s, "r", id, &u), ERR_OK);
    assert_int_equal(store_upload_write(u, "garbage!", 8), ERR_OK);
    fx_reopen(f);

    /* only the acknowledged bytes count; the file was cut back to them */
    assert_int_equal(store_upload_acquire(f->s, "r", id, &u), ERR_OK);
    assert_int_equal(store_upload_offset(u), half);
    assert_int_equal(store_upload_write(u, data + half, n - half), ERR_OK);
    assert_int_equal(store_upload_finish(f->s, u, d, NULL), ERR_OK);
    assert_blob_is(f->s, "r", d, data, n, false);

    /* an upload resumed after a restart can also be cancelled */
    assert_int_equal(store_upload_create(f->s, "r", id), ERR_OK);
    assert_int_equal(store_upload_acquire(f->s, "r", id, &u), ERR_OK);
    assert_int_equal(store_upload_write(u, data, 100), ERR_OK);
    store_upload_release(f->s, u);
    fx_reopen(f);
    assert_int_equal(store_upload_cancel(f->s, "other", id), ERR_BLOB_UPLOAD_UNKNOWN);
    assert_int_equal(store_upload_cancel(f->s, "r", id), ERR_OK);
    assert_int_equal(store_upload_acquire(f->s, "r", id, &u), ERR_BLOB_UPLOAD_UNKNOWN);
    assert_int_equal(uploads_on_disk(f), 0);
    free(data);
}

static void
test_upload_sha512(void **state)
{
    struct fx *f = *state;
    char id[STORE_UPLOAD_ID_LEN + 1], d[DIGEST_MAX];
    store_upload *u = NULL;
    size_t n = 70000;
    void *data = pattern(n, 16);
    assert_int_equal(digest_of(DIGEST_SHA512, data, n, d), ERR_OK);
    assert_int_equal(store_upload_create(f->s, "r", id), ERR_OK);
    assert_int_equal(store_upload_acquire(f->s, "r", id, &u), ERR_OK);
    assert_int_equal(store_upload_write(u, data, n / 3), ERR_OK);
    store_upload_release(f->s, u);
    fx_reopen(f);
    assert_int_equal(store_upload_acquire(f->s, "r", id, &u), ERR_OK);
    assert_int_equal(store_upload_write(u, (char *)data + n / 3, n - n / 3), ERR_OK);
    assert_int_equal(store_upload_finish(f->s, u, d, NULL), ERR_OK);
    assert_blob_is(f->s, "r", d, data, n, false);
    free(data);
}

static void
test_upload_purge(void **state)
{
    struct fx *f = *state;
    char idle[STORE_UPLOAD_ID_LEN + 1], held[STORE_UPLOAD_ID_LEN + 1];
    store_upload *u = NULL, *h = NULL;
    assert_int_equal(store_upload_create(f->s, "r", idle), ERR_OK);
    assert_int_equal(store_upload_create(f->s, "r", held), ERR_OK);
    assert_int_equal(store_upload_acquire(f->s, "r", held, &h), ERR_OK);

    /* nothing is an hour old */
    store_upload_purge(f->s, 3600);
    assert_int_equal(store_upload_acquire(f->s, "r", idle, &u), ERR_OK);
    store_upload_release(f->s, u);
    assert_int_equal(uploads_on_disk(f), 2);

    /* everything idle is older than 0 seconds; a held upload is never purged */
    store_upload_purge(f->s, 0);
    assert_int_equal(store_upload_acquire(f->s, "r", idle, &u), ERR_BLOB_UPLOAD_UNKNOWN);
    assert_int_equal(uploads_on_disk(f), 1);
    assert_int_equal(store_upload_write(h, "x", 1), ERR_OK);
    store_upload_release(f->s, h);
    assert_int_equal(store_upload_cancel(f->s, "r", held), ERR_OK);
    assert_int_equal(uploads_on_disk(f), 0);
}

static int
open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/* Idle sessions hold no descriptor; the caps count sessions per node and per owner,
 * across a reopen; finishing, cancelling and purging give room back. */
static void
test_upload_caps_and_descriptors(void **state)
{
    struct fx *f = *state;
    char id[STORE_UPLOAD_ID_LEN + 1], first[STORE_UPLOAD_ID_LEN + 1];
    store_upload *u = NULL;
    f->opt.max_uploads = 6;
    f->opt.max_uploads_per_owner = 3;
    fx_reopen(f);
    int before = open_fds();
    assert_int_equal(store_upload_create_for(f->s, "r", "alice", first), ERR_OK);
    for (int i = 0; i < 2; i++)
        assert_int_equal(store_upload_create_for(f->s, "r", "alice", id), ERR_OK);
    assert_int_equal(store_upload_create_for(f->s, "r", "alice", id), ERR_TOOMANYREQUESTS);
    for (int i = 0; i < 3; i++)
        assert_int_equal(store_upload_create_for(f->s, "r", "bob", id), ERR_OK);
    assert_int_equal(store_upload_create_for(f->s, "r", "carol", id), ERR_TOOMANYREQUESTS);
    assert_int_equal(open_fds(), before); /* six idle sessions, no descriptor */
    /* internal uploads (replication) are not refused */
    assert_int_equal(store_upload_create(f->s, "r", id), ERR_OK);
    assert_int_equal(store_upload_cancel(f->s, "r", id), ERR_OK);

    /* acquire opens, release closes, and the bytes are still there */
    assert_int_equal(store_upload_acquire(f->s, "r", first, &u), ERR_OK);
    assert_int_equal(open_fds(), before + 1);
    assert_int_equal(store_upload_write(u, "abc", 3), ERR_OK);
    store_upload_release(f->s, u);
    assert_int_equal(open_fds(), before);
    assert_int_equal(store_upload_acquire(f->s, "r", first, &u), ERR_OK);
    assert_int_equal(store_upload_write(u, "def", 3), ERR_OK);
    char d[DIGEST_MAX];
    digest_of(DIGEST_SHA256, "abcdef", 6, d);
    assert_int_equal(store_upload_finish(f->s, u, d, NULL), ERR_OK);
    assert_int_equal(store_upload_create_for(f->s, "r", "alice", id), ERR_OK);

    /* counted again after a reopen, owner included */
    fx_reopen(f);
    assert_int_equal(store_upload_create_for(f->s, "r", "alice", id), ERR_TOOMANYREQUESTS);
    store_upload_purge(f->s, 0);
    assert_int_equal(store_upload_create_for(f->s, "r", "alice", id), ERR_OK);
}

/* ---- the replication log ---- */

static void
test_log_events(void **state)
{
    struct fx *f = *state;
    struct ev_log *l = ev_log_new();
    uint64_t t0 = 0;
    {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        t0 = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    }
    assert_int_equal(store_log_head(f->s), 0);
    assert_int_equal(store_log_first(f->s), 1);
    read_log(f->s, 0, 100, l);
    assert_int_equal(l->n, 0);

    /* one change each; failures, upload bookkeeping and metadata log nothing */
    char b1[DIGEST_MAX], big_d[DIGEST_MAX], m1[DIGEST_MAX], junk[DIGEST_MAX];
    size_t big_n = 1000;
    void *big = pattern(big_n, 17);
    char id[STORE_UPLOAD_ID_LEN + 1];
    store_upload *u = NULL;

    put_blob_str(f->s, "a", "config", b1);                                 /* 1 */
    assert_int_equal(store_upload_create(f->s, "a", id), ERR_OK);
    assert_int_equal(store_upload_acquire(f->s, "a", id, &u), ERR_OK);
    assert_int_equal(store_upload_write(u, big, big_n), ERR_OK);
    store_upload_release(f->s, u);
    assert_int_equal(store_upload_acquire(f->s, "a", id, &u), ERR_OK);
    assert_int_equal(digest_of(DIGEST_SHA256, big, big_n, big_d), ERR_OK);
    assert_int_equal(store_upload_finish(f->s, u, big_d, NULL), ERR_OK);    /* 2 */
    assert_int_equal(store_blob_mount(f->s, "b", "a", big_d), ERR_OK);      /* 3 */
    assert_int_equal(store_blob_put(f->s, "a", b1, "wrong", 5), ERR_DIGEST_INVALID);
    assert_int_equal(store_meta_put(f->s, "k", "v", 1), ERR_OK);
    const char *body = "{\"schemaVersion\":2}";
    struct store_ref refs[2] = {blob_ref(b1, 6), blob_ref(big_d, big_n)};
    assert_int_equal(put_manifest_full(f->s, "a", "v1", MT_MANIFEST, body, refs, 2, NULL, NULL, m1,
                                       NULL),
                     ERR_OK);                                               /* 4 */
    assert_int_equal(digest_of(DIGEST_SHA256, "junk", 4, junk), ERR_OK);
    struct store_ref bad[1] = {blob_ref(junk, 4)};
    assert_int_equal(put_manifest_full(f->s, "a", "v2", MT_MANIFEST, "{}", bad, 1, NULL, NULL,
                                       junk, NULL),
                     ERR_MANIFEST_BLOB_UNKNOWN);
    assert_int_equal(store_tag_delete(f->s, "a", "v1"), ERR_OK);            /* 5 */
    assert_int_equal(store_tag_delete(f->s, "a", "v1"), ERR_MANIFEST_UNKNOWN);
    assert_int_equal(store_manifest_delete(f->s, "a", m1), ERR_OK);         /* 6 */
    assert_int_equal(store_blob_delete(f->s, "b", big_d), ERR_OK);          /* 7 */
    assert_int_equal(store_blob_delete(f->s, "b", big_d), ERR_BLOB_UNKNOWN);
    put_blob_str(f->s, NULL, "unlinked", junk);

    assert_int_equal(store_log_head(f->s), 7);
    assert_int_equal(store_log_first(f->s), 1);
    read_log(f->s, 0, 100, l);
    assert_int_equal(l->n, 7);
    for (size_t i = 0; i < l->n; i++) {
        assert_int_equal(l->ev[i].seq, i + 1);
        assert_true(l->ev[i].time_ms >= t0 - 1000);
        assert_true(l->ev[i].time_ms <= t0 + 600000);
        if (i)
            assert_true(l->ev[i].time_ms >= l->ev[i - 1].time_ms);
    }
    assert_event(&l->ev[0], EV_BLOB_LINK, "a", b1, NULL);
    assert_int_equal(l->ev[0].size, 6);
    assert_event(&l->ev[1], EV_BLOB_LINK, "a", big_d, NULL);
    assert_int_equal(l->ev[1].size, big_n);
    assert_event(&l->ev[2], EV_BLOB_LINK, "b", big_d, NULL);
    assert_int_equal(l->ev[2].size, big_n);
    assert_event(&l->ev[3], EV_MANIFEST_PUT, "a", m1, "v1");
    assert_string_equal(l->ev[3].media_type, MT_MANIFEST);
    assert_string_equal(l->ev[3].body.ptr, body);
    assert_int_equal(l->ev[3].body.len, strlen(body));
    assert_int_equal(l->ev[3].size, strlen(body));
    assert_event(&l->ev[4], EV_TAG_DELETE, "a", NULL, "v1");
    assert_event(&l->ev[5], EV_MANIFEST_DELETE, "a", m1, NULL);
    assert_event(&l->ev[6], EV_BLOB_UNLINK, "b", big_d, NULL);
    assert_int_equal(l->ev[6].body.len, 0);

    /* a manifest pushed by digest has no tag in its event */
    char m2[DIGEST_MAX];
    put_manifest(f->s, "a", NULL, "{\"untagged\":1}", NULL, 0, m2);        /* 8 */
    read_log(f->s, 8, 100, l);
    assert_int_equal(l->n, 1);
    assert_event(&l->ev[0], EV_MANIFEST_PUT, "a", m2, NULL);

    /* from and max */
    read_log(f->s, 3, 2, l);
    assert_int_equal(l->n, 2);
    assert_int_equal(l->ev[0].seq, 3);
    assert_int_equal(l->ev[1].seq, 4);
    read_log(f->s, 8, 100, l);
    assert_int_equal(l->n, 1);
    read_log(f->s, 9, 100, l);
    assert_int_equal(l->n, 0);
    read_log(f->s, UINT64_MAX, 100, l);
    assert_int_equal(l->n, 0);
    read_log(f->s, 1, 0, l);
    assert_int_equal(l->n, 0);
    /* the callback stops early */
    ev_log_clear(l);
    l->stop_after = 3;
    assert_int_equal(store_log_read(f->s, 2, 100, on_event, l), ERR_OK);
    assert_int_equal(l->n, 3);
    assert_int_equal(l->ev[2].seq, 4);

    ev_log_free(l);
    free(big);
}

static void
test_log_trim_and_reopen(void **state)
{
    struct fx *f = *state;
    struct ev_log *l = ev_log_new();
    char d[DIGEST_MAX];
    for (unsigned i = 0; i < 10; i++) {
        char text[32];
        snprintf(text, sizeof text, "blob %u", i);
        put_blob_str(f->s, "r", text, d);
    }
    assert_int_equal(store_log_head(f->s), 10);

    /* head survives a restart */
    fx_reopen(f);
    assert_int_equal(store_log_head(f->s), 10);
    assert_int_equal(store_log_first(f->s), 1);

    assert_int_equal(store_log_trim(f->s, 4), ERR_OK);
    assert_int_equal(store_log_first(f->s), 4);
    assert_int_equal(store_log_head(f->s), 10);
    read_log(f->s, 0, 100, l);
    assert_int_equal(l->n, 7);
    assert_int_equal(l->ev[0].seq, 4);
    assert_int_equal(l->ev[6].seq, 10);
    /* trimming less than what is gone changes nothing */
    assert_int_equal(store_log_trim(f->s, 2), ERR_OK);
    assert_int_equal(store_log_first(f->s), 4);

    /* numbering continues after a trim and after a restart */
    put_blob_str(f->s, "r", "after trim", d);
    assert_int_equal(store_log_head(f->s), 11);
    fx_reopen(f);
    assert_int_equal(store_log_head(f->s), 11);
    assert_int_equal(store_log_first(f->s), 4);

    /* trim everything: the log is empty but the head is kept, also across a restart */
    assert_int_equal(store_log_trim(f->s, store_log_head(f->s) + 1), ERR_OK);
    assert_int_equal(store_log_head(f->s), 11);
    assert_int_equal(store_log_first(f->s), 12);
    read_log(f->s, 0, 100, l);
    assert_int_equal(l->n, 0);
    fx_reopen(f);
    assert_int_equal(store_log_head(f->s), 11);
    assert_int_equal(store_log_first(f->s), 12);
    put_blob_str(f->s, "r", "after empty", d);
    assert_int_equal(store_log_head(f->s), 12);
    read_log(f->s, 0, 100, l);
    assert_int_equal(l->n, 1);
    assert_int_equal(l->ev[0].seq, 12);
    assert_event(&l->ev[0], EV_BLOB_LINK, "r", d, NULL);
    fx_reopen(f);
    assert_int_equal(store_log_head(f->s), 12);
    assert_int_equal(store_log_first(f->s), 12);
    ev_log_free(l);
}

/* ---- concurrency: the log stays dense and ordered under parallel writers ---- */

struct writer_arg {
    store *s;
    unsigned id;
    int failures;
};

#define WRITERS 4
#define WRITES_PER_WRITER 40

static void *
writer_main(void *p)
{
    struct writer_arg *a = p;
    char repo[32], text[64], d[DIGEST_MAX];
    snprintf(repo, sizeof repo, "w%u", a->id);
    for (unsigned i = 0; i < WRITES_PER_WRITER; i++) {
        snprintf(text, sizeof text, "writer %u blob %u", a->id, i);
        if (digest_of(DIGEST_SHA256, text, strlen(text), d) != ERR_OK ||
            store_blob_put(a->s, repo, d, text, strlen(text)) != ERR_OK)
            a->failures++;
        char tag[16];
        snprintf(tag, sizeof tag, "t%u", i % 5);
        struct store_ref r = blob_ref(d, strlen(text));
        struct store_manifest_put m = {.repo = repo,
                                       .digest = d,
                                       .media_type = MT_MANIFEST,
                                       .tag = tag,
                                       .body = slice_of_cstr(text),
                                       .refs = &r,
                                       .nrefs = 1};
        /* the body's digest is not d, but the store trusts the caller for that */
        if (store_manifest_put(a->s, &m, NULL) != ERR_OK)
            a->failures++;
    }
    return NULL;
}

static void
test_concurrent_writers(void **state)
{
    struct fx *f = *state;
    pthread_t th[WRITERS];
    struct writer_arg args[WRITERS];
    for (unsigned i = 0; i < WRITERS; i++) {
        args[i] = (struct writer_arg){.s = f->s, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, writer_main, &args[i]), 0);
    }
    for (unsigned i = 0; i < WRITERS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
    const uint64_t total = WRITERS * WRITES_PER_WRITER * 2;
    assert_int_equal(store_log_head(f->s), total);
    struct ev_log *l = ev_log_new();
    read_log(f->s, 1, 1000, l);
    assert_int_equal(l->n, total);
    unsigned links[WRITERS] = {0}, puts[WRITERS] = {0};
    for (size_t i = 0; i < l->n; i++) {
        assert_int_equal(l->ev[i].seq, i + 1);
        unsigned w = (unsigned)(l->ev[i].repo[1] - '0');
        assert_true(w < WRITERS);
        if (l->ev[i].type == EV_BLOB_LINK)
            links[w]++;
        else if (l->ev[i].type == EV_MANIFEST_PUT)
            puts[w]++;
        else
            fail_msg("unexpected event type %d", l->ev[i].type);
    }
    for (unsigned i = 0; i < WRITERS; i++) {
        assert_int_equal(links[i], WRITES_PER_WRITER);
        assert_int_equal(puts[i], WRITES_PER_WRITER);
        struct listing tl = {0};
        char repo[8];
        snprintf(repo, sizeof repo, "w%u", i);
        tags_of(f->s, repo, &tl);
        assert_int_equal(tl.n, 5);
        listing_free(&tl);
    }
    ev_log_free(l);
}

/* ---- metadata and open/close ---- */

/* A resync drops replicated metadata (identities) with everything else the snapshot
 * resends, keeps node metadata, and changes the rmeta version (auth reloads). */
static void
test_resync_drops_replicated_metadata(void **state)
{
    struct fx *f = *state;
    buf v = BUF_INIT;
    assert_int_equal(store_rmeta_put(f->s, "id/bob", "{}", 2), ERR_OK);
    assert_int_equal(store_rmeta_put(f->s, "id/carol", "{}", 2), ERR_OK);
    assert_int_equal(store_meta_put(f->s, "repl/epoch", "3", 1), ERR_OK);
    uint64_t ver = store_rmeta_version(f->s);
    assert_int_equal(store_resync_begin(f->s), ERR_OK);
    assert_true(store_rmeta_version(f->s) != ver);
    assert_int_equal(store_rmeta_get(f->s, "id/bob", 0, &v), ERR_NOT_FOUND);
    assert_int_equal(store_rmeta_get(f->s, "id/carol", 0, &v), ERR_NOT_FOUND);
    assert_int_equal(store_meta_get(f->s, "repl/epoch", &v), ERR_OK);
    assert_string_equal(v.ptr, "3");
    /* the snapshot's records come back through store_apply (seq 0) */
    struct store_event ev = {.type = EV_META_PUT, .tag = slice_of_cstr("id/carol"),
                             .body = slice_of_cstr("{\"c\":1}")};
    assert_int_equal(store_apply(f->s, &ev, NULL), ERR_OK);
    assert_int_equal(store_resync_end(f->s, 9), ERR_OK);
    fx_reopen(f);
    assert_int_equal(store_rmeta_get(f->s, "id/bob", 0, &v), ERR_NOT_FOUND);
    assert_int_equal(store_rmeta_get(f->s, "id/carol", 0, &v), ERR_OK);
    assert_string_equal(v.ptr, "{\"c\":1}");
    buf_release(&v);
}

/* A resync keeps serving what the node holds until it ends (issue 9 §7), then the
 * links, tags and catalog entries the snapshot did not resend are gone; across a
 * restart in the middle, the marking goes on. */
static void
test_resync_serves_until_it_ends(void **state)
{
    struct fx *f = *state;
    char da[DIGEST_MAX], db[DIGEST_MAX];
    assert_int_equal(digest_of(DIGEST_SHA256, "aaaa", 4, da), ERR_OK);
    assert_int_equal(digest_of(DIGEST_SHA256, "bbbb", 4, db), ERR_OK);
    assert_int_equal(store_blob_put(f->s, "keep/r", da, "aaaa", 4), ERR_OK);
    assert_int_equal(store_blob_put(f->s, "keep/r", db, "bbbb", 4), ERR_OK);
    assert_int_equal(store_blob_put(f->s, "gone/r", db, "bbbb", 4), ERR_OK);
    assert_int_equal(store_resync_begin(f->s), ERR_OK);
    struct store_blob b;
    /* still served while the snapshot streams */
    assert_int_equal(store_blob_get(f->s, "keep/r", db, 0, false, &b), ERR_OK);
    store_blob_release(&b);
    assert_true(store_repo_exists(f->s, "gone/r"));
    struct store_event ev = {.type = EV_BLOB_LINK, .repo = slice_of_cstr("keep/r"),
                             .digest = slice_of_cstr(da), .size = 4};
    assert_int_equal(store_apply(f->s, &ev, NULL), ERR_OK);
    fx_reopen(f); /* a restart in the middle: marking continues */
    assert_int_equal(store_resync_begin(f->s), ERR_OK); /* the primary starts it over */
    assert_int_equal(store_apply(f->s, &ev, NULL), ERR_OK);
    assert_int_equal(store_resync_end(f->s, 7), ERR_OK);
    assert_int_equal(store_blob_get(f->s, "keep/r", da, 0, false, &b), ERR_OK);
    store_blob_release(&b);
    assert_int_equal(store_blob_get(f->s, "keep/r", db, 0, false, &b), ERR_BLOB_UNKNOWN);
    assert_int_equal(store_blob_get(f->s, "gone/r", db, 0, false, &b), ERR_BLOB_UNKNOWN);
    assert_false(store_repo_exists(f->s, "gone/r"));
    assert_true(store_repo_exists(f->s, "keep/r"));
    assert_int_equal(store_applied_seq(f->s), 7);
    /* after the end nothing is marked any more: a later link is not swept */
    struct store_event ev2 = {.seq = 8, .type = EV_BLOB_LINK, .repo = slice_of_cstr("keep/r"),
                              .digest = slice_of_cstr(db), .size = 4};
    assert_int_equal(store_apply(f->s, &ev2, NULL), ERR_OK);
    fx_reopen(f);
    assert_int_equal(store_blob_get(f->s, "keep/r", db, 0, false, &b), ERR_OK);
    store_blob_release(&b);
}

static void
test_meta(void **state)
{
    struct fx *f = *state;
    buf v = BUF_INIT;
    assert_int_equal(store_meta_get(f->s, "epoch", &v), ERR_NOT_FOUND);
    assert_int_equal(store_meta_put(f->s, "epoch", "7", 1), ERR_OK);
    assert_int_equal(store_meta_get(f->s, "epoch", &v), ERR_OK);
    assert_string_equal(v.ptr, "7");
    assert_int_equal(store_meta_put(f->s, "epoch", "12", 2), ERR_OK);
    assert_int_equal(store_meta_get(f->s, "epoch", &v), ERR_OK);
    assert_string_equal(v.ptr, "12");
    assert_int_equal(v.len, 2);

    /* binary values and empty values round-trip; keys do not collide with internals */
    const char bin[] = {'a', 0, 'b', (char)0xff};
    assert_int_equal(store_meta_put(f->s, "cursor/us-east", bin, sizeof bin), ERR_OK);
    assert_int_equal(store_meta_put(f->s, "empty", "", 0), ERR_OK);
    assert_int_equal(store_meta_get(f->s, "log_head", &v), ERR_NOT_FOUND);
    assert_int_equal(store_meta_get(f->s, "m/log_head", &v), ERR_NOT_FOUND);
    uint64_t head = store_log_head(f->s);

    fx_reopen(f);
    assert_int_equal(store_meta_get(f->s, "epoch", &v), ERR_OK);
    assert_string_equal(v.ptr, "12");
    assert_int_equal(store_meta_get(f->s, "cursor/us-east", &v), ERR_OK);
    assert_int_equal(v.len, sizeof bin);
    assert_memory_equal(v.ptr, bin, sizeof bin);
    assert_int_equal(store_meta_get(f->s, "empty", &v), ERR_OK);
    assert_int_equal(v.len, 0);
    assert_int_equal(store_meta_get(f->s, "epoc", &v), ERR_NOT_FOUND);
    /* node metadata is not replicated */
    assert_int_equal(store_log_head(f->s), head);
    buf_release(&v);
}

static void
test_open_errors(void **state)
{
    struct fx *f = *state;
    store *s2 = NULL;
    /* the database is locked while another store has it open */
    assert_int_not_equal(store_open(f->dir, &f->opt, &s2), ERR_OK);
    assert_null(s2);
    /* a path under a regular file */
    char path[128];
    snprintf(path, sizeof path, "%s/file", f->dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
    assert_true(fd >= 0);
    close(fd);
    snprintf(path, sizeof path, "%s/file/sub", f->dir);
    assert_int_not_equal(store_open(path, NULL, &s2), ERR_OK);
    assert_null(s2);
    store_close(NULL);

    /* default options work too */
    char dir2[128];
    snprintf(dir2, sizeof dir2, "%s/second", f->dir);
    assert_int_equal(store_open(dir2, NULL, &s2), ERR_OK);
    char d[DIGEST_MAX];
    put_blob_str(s2, "r", "defaults", d);
    assert_blob_is(s2, "r", d, "defaults", 8, true);
    store_close(s2);
}

int
main(void)
{
    log_set_level(LOG_ERROR);
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)
#define T_NOSYNC(fn) cmocka_unit_test_setup_teardown(fn, fx_setup_nosync, fx_teardown)
        T(test_blob_inline_and_file),
        T(test_blob_sha512),
        T(test_blob_unknown_and_mismatch),
        T(test_blob_links_mount_delete),
        T(test_blob_put_unlinked),
        T(test_manifest_put_get),
        T(test_manifest_missing_refs),
        T(test_tag_move),
        T(test_manifest_put_tags),
        T(test_tag_delete),
        T(test_manifest_delete),
        T(test_referrers),
        T_NOSYNC(test_tags_pagination),
        T_NOSYNC(test_catalog_pagination),
        T(test_upload_lifecycle),
        T(test_upload_small_inline_and_dedup),
        T(test_upload_digest_mismatch),
        T(test_upload_deferred_hash),
        T(test_upload_resume_after_reopen),
        T(test_upload_resume_drops_unacknowledged),
        T(test_upload_sha512),
        T(test_upload_purge),
        T(test_upload_caps_and_descriptors),
        T(test_log_events),
        T(test_log_trim_and_reopen),
        T_NOSYNC(test_concurrent_writers),
        T(test_meta),
        T(test_resync_drops_replicated_metadata),
        T(test_resync_serves_until_it_ends),
        T(test_open_errors),
#undef T
#undef T_NOSYNC
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
