/* The OCI Distribution API (v1.1): routing with full validation of names,
 * references and digests before anything touches storage, and one handler per
 * endpoint. Handlers are steps (see http.h): reads try the loop first with
 * STORE_NOWAIT, writes run on the thread pool. */
#include <assert.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../common/digest.h"
#include "../../common/log.h"
#include "../../common/manifest.h"
#include "../../common/ref.h"
#include "../../replication/repl.h"
#include "../node.h"
#include "../../common/banned.h"

enum route_kind {
    R_BASE,
    R_CATALOG,
    R_TAGS,
    R_MANIFEST,
    R_BLOB,
    R_UPLOAD_START,
    R_UPLOAD,
    R_REFERRERS,
};

/* Routing result, kept in the request's scratch space. */
struct route {
    enum route_kind kind;
    char name[REF_NAME_MAX + 1];
    char ref[DIGEST_MAX]; /* tag or digest */
    char upload_id[STORE_UPLOAD_ID_LEN + 1];
    char digest[DIGEST_MAX]; /* ?digest= of an upload */
    char mount_from[REF_NAME_MAX + 1];
    bool mount;
    bool monolithic;
    bool ref_invalid; /* a GET/HEAD by something that is neither a tag nor a digest */
};

/* Upload state of one request; freed with the request. */
struct upload_ctx {
    store *store;
    store_upload *u;
};

_Static_assert(sizeof(struct route) <= sizeof(((struct http_req *)0)->scratch),
               "route must fit in the request scratch");

static struct route *
route_of(struct http_req *r)
{
    return (struct route *)r->scratch;
}

static struct node *
node_of(struct http_req *r)
{
    return r->app;
}

/* ---- responses ---- */

static void
answer_empty(struct http_req *r, int status)
{
    r->resp.status = status;
}

static void
location(struct http_req *r, const char *kind, const char *what)
{
    http_resp_header(r, "Location", "/v2/%s/%s/%s", route_of(r)->name, kind, what);
}

/* ---- synchronous commits (replication.sync) ---- */

/* A write that waits for replicas: its answer is built as usual, then held here while
 * the request is parked on the loop (no pool thread waits); freed with the request,
 * also when the client leaves (the write stays committed). */
struct sync_wait {
    repl_sync_waiter *w;
    int status; /* the held answer */
    buf headers;
};

static void
sync_wait_free(struct http_req *r)
{
    struct sync_wait *sw = r->app_state;
    if (!sw)
        return;
    repl_sync_waiter_free(node_of(r)->repl, sw->w); /* no wake for r after this */
    buf_release(&sw->headers);
    free(sw);
    r->app_state = NULL;
}

/* sync_reserve runs before a write that commits a replication-log event: a waiter is
 * reserved first, so that a write beyond the waiter cap is refused (429, Retry-After)
 * before anything is stored. false when it answered. */
static bool
sync_reserve(struct http_req *r)
{
    struct node *nd = node_of(r);
    repl_sync_waiter *w = NULL;
    err e = repl_sync_waiter_new(nd->repl, &w);
    if (e) {
        http_resp_error(r, e,
                        e == ERR_TOOMANYREQUESTS
                            ? "too many writes waiting for replicas (replication.sync)"
                            : NULL,
                        NULL);
        if (e == ERR_TOOMANYREQUESTS)
            http_resp_header(r, "Retry-After", "1");
        return false;
    }
    if (!w)
        return true; /* sync commits are off: writes never wait */
    struct sync_wait *sw = calloc(1, sizeof *sw);
    if (!sw) {
        repl_sync_waiter_free(nd->repl, w);
        http_resp_error(r, ERR_NOMEM, NULL, NULL);
        return false;
    }
    assert(!r->app_state); /* the write handlers keep no other state */
    sw->w = w;
    buf_init(&sw->headers);
    r->app_state = sw;
    r->app_free = sync_wait_free;
    return true;
}

static void
on_sync_wake(void *arg)
{
    http_req_wake(arg);
}

/* h_sync_wait is the parked write's step on the loop: it answers once the required
 * replicas acknowledged the write, or the primary degraded (the write is committed
 * either way: only the wait ends). */
static err
h_sync_wait(struct http_req *r, bool nowait)
{
    struct sync_wait *sw = r->app_state;
    uint64_t wait_ms = 0;
    unsigned replicated = 0;
    (void)nowait;
    enum repl_sync_state st = repl_sync_poll(node_of(r)->repl, sw->w, &wait_ms, &replicated);
    if (st == REPL_SYNC_PENDING) {
        r->park_ms = wait_ms ? wait_ms : 1;
        return ERR_OK;
    }
    buf_release(&r->resp.headers);
    r->resp.headers = sw->headers; /* moved */
    buf_init(&sw->headers);
    r->resp.status = sw->status;
    http_resp_header(r, "Georeg-Replicated", "%u", replicated);
    return ERR_OK;
}

/* sync_hold runs after the write committed, with its answer in r->resp: it is sent
 * now (sync off or degraded, or acknowledged already), or held and the request parked
 * until h_sync_wait answers. */
static void
sync_hold(struct http_req *r)
{
    struct node *nd = node_of(r);
    struct sync_wait *sw = r->app_state;
    /* the head is at or past this write's own events: waiting for it is never less
     * than waiting for them */
    uint64_t seq = store_log_head(nd->store);
    if (!sw) {
        http_resp_header(r, "Georeg-Replicated", "%u", repl_sync_replicated(nd->repl, seq));
        return;
    }
    repl_sync_arm(nd->repl, sw->w, seq, on_sync_wake, r);
    uint64_t wait_ms = 0;
    unsigned replicated = 0;
    if (repl_sync_poll(nd->repl, sw->w, &wait_ms, &replicated) != REPL_SYNC_PENDING) {
        http_resp_header(r, "Georeg-Replicated", "%u", replicated);
        return;
    }
    sw->status = r->resp.status;
    r->resp.status = 0;
    buf_release(&sw->headers);
    sw->headers = r->resp.headers; /* moved: given back by h_sync_wait */
    buf_init(&r->resp.headers);
    r->handler = h_sync_wait; /* re-run on the loop: it only looks at memory */
    r->handler_on_pool = false;
    r->park_ms = wait_ms ? wait_ms : 1;
}

/* ---- base, catalog, tags ---- */

static err
h_base(struct http_req *r, bool nowait)
{
    (void)nowait;
    http_resp_json(r, 200, "{}", 2);
    return ERR_OK;
}

struct list_out {
    buf *b;
    size_t count;
    char last[REF_NAME_MAX + 1];
    struct http_req *filter; /* catalog: only repositories the client may read */
    size_t limit;            /* catalog: names per page */
    bool more;               /* catalog: a readable name follows the page */
};

static bool
on_list_item(void *arg, slice key, slice value)
{
    struct list_out *o = arg;
    (void)value;
    if (o->filter) {
        const struct auth_principal *who = access_who(o->filter);
        struct node *nd = o->filter->app;
        char repo[REF_NAME_MAX + 1];
        str_copy_slice(repo, sizeof repo, key);
        /* an unreadable name is skipped without a trace: not in the page, not in last= */
        if (who && !auth_allows(nd->auth, who, repo, ACT_READ))
            return true;
        if (o->count == o->limit) {
            o->more = true;
            return false;
        }
    }
    if (o->count++)
        buf_addc(o->b, ',');
    buf_add_json_str(o->b, key.ptr, key.len);
    str_copy_slice(o->last, sizeof o->last, key);
    return true;
}

/* page_size reads ?n= (default 1000, at most 10000). false on a malformed value. */
static bool
page_params(struct http_req *r, size_t *n, char *last, size_t last_len, bool *has_last)
{
    char v[32];
    *n = 1000;
    if (http_req_query(r, "n", v, sizeof v)) {
        uint64_t u;
        if (!slice_parse_u64(slice_of_cstr(v), &u))
            return false;
        *n = u > 10000 ? 10000 : (size_t)u;
    }
    *has_last = http_req_query(r, "last", last, last_len);
    return true;
}

static err
h_catalog(struct http_req *r, bool nowait)
{
    struct node *nd = node_of(r);
    char last[REF_NAME_MAX + 1];
    size_t n;
    bool has_last, more = false;
    (void)nowait;
    if (!page_params(r, &n, last, sizeof last, &has_last)) {
        http_resp_error(r, ERR_INVALID, "invalid n parameter", NULL);
        return ERR_OK;
    }
    buf b = BUF_INIT;
    struct list_out o = {.b = &b, .filter = r, .limit = n};
    buf_adds(&b, "{\"repositories\":[");
    /* the page is n readable names: the scan goes on past the ones the client may not see */
    err e = n ? store_catalog_list(nd->store, has_last ? last : NULL, SIZE_MAX, on_list_item, &o,
                                   NULL)
              : ERR_OK;
    more = o.more;
    if (e) {
        buf_release(&b);
        http_resp_error(r, e, NULL, NULL);
        return ERR_OK;
    }
    buf_adds(&b, "]}");
    if (more)
        http_resp_header(r, "Link", "</v2/_catalog?last=%s&n=%zu>; rel=\"next\"", o.last, n);
    http_resp_json(r, 200, b.ptr, b.len);
    buf_release(&b);
    return ERR_OK;
}

static err
h_tags(struct http_req *r, bool nowait)
{
    struct node *nd = node_of(r);
    struct route *rt = route_of(r);
    char last[REF_TAG_MAX + 1];
    size_t n;
    bool has_last, more = false;
    (void)nowait;
    if (!page_params(r, &n, last, sizeof last, &has_last)) {
        http_resp_error(r, ERR_INVALID, "invalid n parameter", NULL);
        return ERR_OK;
    }
    buf b = BUF_INIT;
    struct list_out o = {.b = &b};
    buf_adds(&b, "{\"name\":");
    buf_add_json_str(&b, rt->name, strlen(rt->name));
    buf_adds(&b, ",\"tags\":[");
    err e = store_tags_list(nd->store, rt->name, has_last ? last : NULL, n ? n : 0, on_list_item,
                            &o, &more);
    if (!n)
        more = false;
    if (e) {
        buf_release(&b);
        http_resp_error(r, e, NULL, rt->name);
        return ERR_OK;
    }
    buf_adds(&b, "]}");
    if (more)
        http_resp_header(r, "Link", "</v2/%s/tags/list?last=%s&n=%zu>; rel=\"next\"", rt->name,
                         o.last, n);
    http_resp_json(r, 200, b.ptr, b.len);
    buf_release(&b);
    return ERR_OK;
}

/* ---- manifests ---- */

static err
h_manifest_get(struct http_req *r, bool nowait)
{
    struct node *nd = node_of(r);
    struct route *rt = route_of(r);
    struct store_manifest m;
    if (rt->ref_invalid) {
        /* no manifest can have this reference: it is unknown, as for any other read */
        http_resp_error(r, ERR_MANIFEST_UNKNOWN, NULL, NULL);
        return ERR_OK;
    }
    err e = store_manifest_get(nd->store, rt->name, rt->ref, nowait ? STORE_NOWAIT : 0, &m);
    if (e == ERR_WOULDBLOCK)
        return e;
    if (e) {
        if (e == ERR_MANIFEST_UNKNOWN && nowait)
            return ERR_WOULDBLOCK; /* telling NAME_UNKNOWN apart reads the catalog */
        if (e == ERR_MANIFEST_UNKNOWN && !store_repo_exists(nd->store, rt->name))
            e = ERR_NAME_UNKNOWN;
        http_resp_error(r, e, NULL, rt->ref);
        return ERR_OK;
    }
    http_resp_header(r, "Content-Type", "%s", m.media_type);
    http_resp_header(r, "Docker-Content-Digest", "%s", m.digest);
    http_resp_header(r, "ETag", "\"%s\"", m.digest);
    slice inm = http_req_header(r, "if-none-match");
    if (inm.ptr && inm.len == strlen(m.digest) + 2 && memcmp(inm.ptr + 1, m.digest, inm.len - 2) == 0) {
        r->resp.status = 304;
        buf_release(&m.body);
        return ERR_OK;
    }
    r->resp.status = 200;
    r->resp.head_len = m.body.len;
    buf_release(&r->resp.body);
    r->resp.body = m.body; /* moved */
    atomic_fetch_add(&nd->metrics.manifest_pulls, 1);
    if (r->method == M_GET)
        audit_log(nd, r, "pull", rt->name, rt->ref, m.digest, 200, NULL);
    return ERR_OK;
}

/* The ?tag= parameters of a manifest PUT (distribution-spec main): at most
 * STORE_MAX_TAGS_PER_PUT, each a valid tag, duplicates dropped. */
struct put_tags {
    char v[STORE_MAX_TAGS_PER_PUT + 1][REF_TAG_MAX + 1];
    const char *p[STORE_MAX_TAGS_PER_PUT + 1];
    size_t n;
};

static int
hex_digit(char c)
{
    return c >= '0' && c <= '9' ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* put_tags_add adds one tag (deduplicated). false with *why when it is invalid or one
 * too many. */
static bool
put_tags_add(struct put_tags *t, slice tag, const char **why)
{
    if (!ref_tag_valid(tag)) {
        *why = "invalid tag";
        return false;
    }
    for (size_t i = 0; i < t->n; i++)
        if (slice_eq_cstr(tag, t->v[i]))
            return true;
    if (t->n == STORE_MAX_TAGS_PER_PUT) {
        *why = "too many tags in one push (at most 16)";
        return false;
    }
    str_copy_slice(t->v[t->n], sizeof t->v[t->n], tag);
    t->p[t->n] = t->v[t->n];
    t->n++;
    return true;
}

/* collect_put_tags reads the reference (when it is a tag) and every ?tag= parameter
 * into t. false with *why on the first invalid one: nothing is stored then. */
static bool
collect_put_tags(struct http_req *r, struct put_tags *t, bool *any_query, const char **why)
{
    struct route *rt = route_of(r);
    t->n = 0;
    *any_query = false;
    if (!ref_is_digest(slice_of_cstr(rt->ref)) && !put_tags_add(t, slice_of_cstr(rt->ref), why))
        return false;
    const char *p = r->query.ptr, *end = r->query.ptr + r->query.len;
    while (p && p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *pe = amp ? amp : end;
        if (pe - p >= 4 && memcmp(p, "tag=", 4) == 0) {
            char v[REF_TAG_MAX + 2];
            size_t j = 0;
            bool ok = true;
            *any_query = true;
            for (const char *c = p + 4; c < pe && ok; c++) {
                char ch = *c;
                if (ch == '%') {
                    int hi = pe - c >= 3 ? hex_digit(c[1]) : -1;
                    int lo = pe - c >= 3 ? hex_digit(c[2]) : -1;
                    ok = hi >= 0 && lo >= 0;
                    ch = (char)(hi * 16 + lo);
                    c += 2;
                }
                if (ok && j + 1 < sizeof v)
                    v[j++] = ch;
                else
                    ok = false;
            }
            if (!ok) {
                *why = "invalid tag";
                return false;
            }
            if (!put_tags_add(t, (slice){v, j}, why))
                return false;
        }
        p = pe + 1;
    }
    return true;
}

static err
h_manifest_put(struct http_req *r, bool nowait)
{
    struct node *nd = node_of(r);
    struct route *rt = route_of(r);
    struct manifest_info mi;
    const char *why = NULL;
    char digest[DIGEST_MAX], missing[DIGEST_MAX] = "";
    struct store_ref *refs = NULL;
    buf desc = BUF_INIT;
    struct put_tags *tags = NULL;
    bool tag_query = false;
    (void)nowait;
    slice body = buf_slice(&r->body);
    if (!(tags = malloc(sizeof *tags))) {
        http_resp_error(r, ERR_NOMEM, NULL, NULL);
        return ERR_OK;
    }
    if (!collect_put_tags(r, tags, &tag_query, &why)) {
        /* route_v2 checked them already; kept for a caller that did not */
        http_resp_error(r, ERR_TAG_INVALID, why, NULL);
        free(tags);
        return ERR_OK;
    }
    slice ct = http_req_header(r, "content-type");
    if (!ct.ptr)
        ct = (slice){"", 0};
    err e = manifest_parse(body, ct, &mi, &why);
    if (e) {
        http_resp_error(r, e, NULL, why);
        free(tags);
        return ERR_OK;
    }
    bool by_digest = ref_is_digest(slice_of_cstr(rt->ref));
    digest_of(by_digest ? digest_alg_of(rt->ref) : DIGEST_SHA256, body.ptr, body.len, digest);
    if (by_digest && strcmp(digest, rt->ref) != 0) {
        http_resp_error(r, ERR_DIGEST_INVALID, "manifest digest does not match the reference",
                        digest);
        goto out;
    }
    refs = calloc(mi.nrefs ? mi.nrefs : 1, sizeof *refs);
    if (!refs) {
        http_resp_error(r, ERR_NOMEM, NULL, NULL);
        goto out;
    }
    for (size_t i = 0; i < mi.nrefs; i++) {
        str_copy(refs[i].digest, sizeof refs[i].digest, mi.refs[i].digest);
        refs[i].size = mi.refs[i].size;
        refs[i].is_manifest = mi.refs[i].is_manifest;
    }
    if (mi.has_subject)
        manifest_descriptor(&mi, digest, body.len, &desc);
    struct store_manifest_put mp = {
        .repo = rt->name,
        .digest = digest,
        .media_type = mi.media_type,
        .tag = by_digest ? NULL : rt->ref,
        .body = body,
        .refs = refs,
        .nrefs = mi.nrefs,
        .subject = mi.has_subject ? mi.subject : NULL,
        .descriptor = buf_slice(&desc),
    };
    if (!sync_reserve(r))
        goto out;
    e = store_manifest_put_tags(nd->store, &mp, tags->p, tags->n, missing);
    if (e) {
        http_resp_error(r, e, NULL, missing[0] ? missing : NULL);
        audit_log(nd, r, "push", rt->name, rt->ref, digest, err_http_status(e), err_name(e));
        goto out;
    }
    audit_log(nd, r, "push", rt->name, rt->ref, digest, 201, NULL);
    atomic_fetch_add(&nd->metrics.manifest_pushes, 1);
    log_debug("OCI-MANIFEST-PUT", "repo=%s ref=%s digest=%s", rt->name, rt->ref, digest);
    answer_empty(r, 201);
    location(r, "manifests", digest);
    http_resp_header(r, "Docker-Content-Digest", "%s", digest);
    if (mi.has_subject)
        http_resp_header(r, "OCI-Subject", "%s", mi.subject);
    for (size_t i = 0; tag_query && i < tags->n; i++)
        http_resp_header(r, "OCI-Tag", "%s", tags->v[i]);
    sync_hold(r);
out:
    free(tags);
    free(refs);
    buf_release(&desc);
    manifest_info_release(&mi);
    return ERR_OK;
}

static err
h_manifest_delete(struct http_req *r, bool nowait)
{
    struct node *nd = node_of(r);
    struct route *rt = route_of(r);
    (void)nowait;
    if (!sync_reserve(r))
        return ERR_OK;
    err e = ref_is_digest(slice_of_cstr(rt->ref))
                ? store_manifest_delete(nd->store, rt->name, rt->ref)
                : store_tag_delete(nd->store, rt->name, rt->ref);
    if (e) {
        http_resp_error(r, e, NULL, rt->ref);
        audit_log(nd, r, "delete", rt->name, rt->ref, NULL, err_http_status(e), err_name(e));
        return ERR_OK;
    }
    atomic_fetch_add(&nd->metrics.deletes, 1);
    audit_log(nd, r, "delete", rt->name, rt->ref, NULL, 202, NULL);
    answer_empty(r, 202);
    sync_hold(r);
    return ERR_OK;
}

/* ---- blobs ---- */

/* parse_range reads "bytes=a-b", "bytes=a-" or "bytes=-n" against size. Returns 0 for
 * no (or an ignorable) Range, 1 for a satisfiable one, -1 for unsatisfiable. */
static int
parse_range(slice h, uint64_t size, uint64_t *off, uint64_t *len)
{
    if (!h.ptr || !slice_starts_with(h, "bytes="))
        return 0;
    slice v = {h.ptr + 6, h.len - 6};
    if (memchr(v.ptr, ',', v.len))
        return 0; /* multiple ranges: serve the whole blob */
    const char *dash = memchr(v.ptr, '-', v.len);
    if (!dash)
        return 0;
    slice a = {v.ptr, (size_t)(dash - v.ptr)};
    slice b = {dash + 1, v.len - a.len - 1};
    uint64_t x, y;
    if (a.len == 0) {
        if (!slice_parse_u64(b, &y))
            return 0;
        if (y == 0 || size == 0)
            return -1;
        if (y > size)
            y = size;
        *off = size - y;
        *len = y;
        return 1;
    }
    if (!slice_parse_u64(a, &x))
        return 0;
    if (b.len == 0) {
        y = size ? size - 1 : 0;
    } else if (!slice_parse_u64(b, &y) || y < x) {
        return 0;
    }
    if (x >= size)
        return -1;
    if (y >= size)
        y = size - 1;
    *off = x;
    *len = y - x + 1;
    return 1;
}

static err
h_blob_get(struct http_req *r, bool nowait)
{
    struct node *nd = node_of(r);
    struct route *rt = route_of(r);
    struct store_blob b;
    bool head = r->method == M_HEAD;
    err e = store_blob_get(nd->store, rt->name, rt->ref, nowait ? STORE_NOWAIT : 0, !head, &b);
    if (e == ERR_WOULDBLOCK)
        return e;
    if (e) {
        http_resp_error(r, e, NULL, rt->ref);
        return ERR_OK;
    }
    uint64_t off = 0, len = b.size;
    int rg = parse_range(http_req_header(r, "range"), b.size, &off, &len);
    http_resp_header(r, "Docker-Content-Digest", "%s", rt->ref);
    http_resp_header(r, "ETag", "\"%s\"", rt->ref);
    http_resp_header(r, "Accept-Ranges", "bytes");
    if (rg < 0) {
        http_resp_header(r, "Content-Range", "bytes */%llu", (unsigned long long)b.size);
        http_resp_error(r, ERR_RANGE_INVALID, "requested range not satisfiable", NULL);
        store_blob_release(&b);
        return ERR_OK;
    }
    http_resp_header(r, "Content-Type", "application/octet-stream");
    if (rg > 0) {
        r->resp.status = 206;
        http_resp_header(r, "Content-Range", "bytes %llu-%llu/%llu", (unsigned long long)off,
                         (unsigned long long)(off + len - 1), (unsigned long long)b.size);
    } else {
        r->resp.status = 200;
    }
    r->resp.head_len = len;
    if (!head) {
        if (b.is_inline) {
            buf_reset(&r->resp.body);
            buf_add(&r->resp.body, b.data.ptr + off, (size_t)len);
        } else {
            /* start reading ahead here, on the pool, so sendfile on the loop finds the
             * pages in memory */
            posix_fadvise(b.fd, (off_t)off, (off_t)len, POSIX_FADV_WILLNEED);
            posix_fadvise(b.fd, (off_t)off, (off_t)len, POSIX_FADV_SEQUENTIAL);
            r->resp.fd = b.fd;
            r->resp.file_off = off;
            r->resp.file_len = len;
            b.fd = -1;
        }
        atomic_fetch_add(&nd->metrics.blob_pulls, 1);
        atomic_fetch_add(&nd->metrics.blob_pull_bytes, len);
    }
    store_blob_release(&b);
    return ERR_OK;
}

static err
h_blob_delete(struct http_req *r, bool nowait)
{
    struct node *nd = node_of(r);
    struct route *rt = route_of(r);
    (void)nowait;
    if (!sync_reserve(r))
        return ERR_OK;
    err e = store_blob_delete(nd->store, rt->name, rt->ref);
    audit_log(nd, r, "delete.blob", rt->name, NULL, rt->ref, e ? err_http_status(e) : 202, NULL);
    if (e) {
        http_resp_error(r, e, NULL, rt->ref);
        return ERR_OK;
    }
    atomic_fetch_add(&nd->metrics.deletes, 1);
    answer_empty(r, 202);
    sync_hold(r);
    return ERR_OK;
}

/* ---- uploads ---- */

static void
upload_ctx_free(struct http_req *r)
{
    struct upload_ctx *u = r->app_state;
    if (!u)
        return;
    if (u->u)
        store_upload_release(u->store, u->u);
    free(u);
    r->app_state = NULL;
}

static err
upload_sink(void *ctx, const void *ptr, size_t len)
{
    struct upload_ctx *u = ctx;
    return store_upload_write(u->u, ptr, len);
}

static void
upload_headers(struct http_req *r, const char *id, uint64_t offset)
{
    location(r, "blobs/uploads", id);
    http_resp_header(r, "Range", "0-%llu", (unsigned long long)(offset ? offset - 1 : 0));
    http_resp_header(r, "Docker-Upload-UUID", "%s", id);
}

/* content_range parses a PATCH Content-Range "start-end" (optionally "bytes "). */
static bool
content_range(slice h, uint64_t *start, uint64_t *end)
{
    if (slice_starts_with(h, "bytes "))
        h = (slice){h.ptr + 6, h.len - 6};
    else if (slice_starts_with(h, "bytes="))
        h = (slice){h.ptr + 6, h.len - 6};
    const char *dash = memchr(h.ptr, '-', h.len);
    if (!dash)
        return false;
    slice a = {h.ptr, (size_t)(dash - h.ptr)};
    slice b = {dash + 1, h.len - a.len - 1};
    const char *slash = memchr(b.ptr, '/', b.len);
    if (slash)
        b.len = (size_t)(slash - b.ptr);
    return slice_parse_u64(a, start) && slice_parse_u64(b, end) && *end >= *start;
}

/* upload_owner names who a new upload session counts against: the identity, or the
 * client's address when anonymous. */
static void
upload_owner(struct http_req *r, char *out, size_t n)
{
    const struct auth_principal *who = access_who(r);
    if (who)
        snprintf(out, n, "id:%s", access_actor(r));
    else
        snprintf(out, n, "addr:%s", r->peer);
}

/* upload_create starts a session for the client under the upload caps; on 429 the
 * answer carries Retry-After. */
static err
upload_create(struct http_req *r, struct node *nd, struct route *rt)
{
    char owner[128]; /* the store keeps the first 63 bytes */
    upload_owner(r, owner, sizeof owner);
    err e = store_upload_create_for(nd->store, rt->name, owner, rt->upload_id);
    if (e == ERR_TOOMANYREQUESTS) {
        http_resp_error(r, e, "too many open upload sessions", NULL);
        http_resp_header(r, "Retry-After", "30");
    }
    return e;
}

/* pre_upload acquires the session (creating one for a monolithic POST) before the
 * body is read, and checks Content-Range. Runs on the pool. */
static err
pre_upload(struct http_req *r, bool nowait)
{
    struct node *nd = node_of(r);
    struct route *rt = route_of(r);
    struct upload_ctx *u = calloc(1, sizeof *u);
    (void)nowait;
    if (!u) {
        http_resp_error(r, ERR_NOMEM, NULL, NULL);
        return ERR_OK;
    }
    u->store = nd->store;
    r->app_state = u;
    r->sink_ctx = u;
    r->app_free = upload_ctx_free;
    err e;
    if (rt->kind == R_UPLOAD_START) {
        e = upload_create(r, nd, rt);
        if (e == ERR_TOOMANYREQUESTS)
            return ERR_OK;
        if (!e)
            e = store_upload_acquire(nd->store, rt->name, rt->upload_id, &u->u);
    } else {
        /* a client retrying after a broken connection may arrive while the old request
         * still finishes its last write: give it a moment (we are on the pool) */
        for (int i = 0; i < 200; i++) {
            e = store_upload_acquire(nd->store, rt->name, rt->upload_id, &u->u);
            if (e != ERR_BUSY)
                break;
            usleep(10000);
        }
    }
    if (e) {
        http_resp_error(r, e, e == ERR_BUSY ? "upload is in use by another request" : NULL,
                        rt->upload_id);
        return ERR_OK;
    }
    uint64_t offset = store_upload_offset(u->u);
    slice cr = http_req_header(r, "content-range");
    /* the final PUT may carry the last chunk: it has to continue the upload too */
    bool put_chunk = r->method == M_PUT && !(r->has_length && r->content_length == 0);
    if (cr.ptr && (r->method == M_PATCH || put_chunk)) {
        uint64_t start, end;
        if (!content_range(cr, &start, &end)) {
            http_resp_error(r, ERR_RANGE_INVALID, "malformed Content-Range", NULL);
        } else if (start != offset) {
            http_resp_error(r, ERR_RANGE_INVALID, "chunk does not start at the upload's offset",
                            NULL);
        } else if (r->has_length && end - start + 1 != r->content_length) {
            http_resp_error(r, ERR_RANGE_INVALID, "Content-Range does not match Content-Length",
                            NULL);
        }
        if (r->resp.status)
            upload_headers(r, rt->upload_id, offset);
    }
    return ERR_OK;
}

/* finish_upload verifies and commits; the session is consumed either way. */
static void
finish_upload(struct http_req *r)
{
    struct node *nd = node_of(r);
    struct route *rt = route_of(r);
    struct upload_ctx *u = r->app_state;
    uint64_t size = 0;
    store_upload *up = u->u;
    u->u = NULL; /* finish releases or consumes it */
    err e = store_upload_finish(nd->store, up, rt->digest, &size);
    audit_log(nd, r, "push.blob", rt->name, NULL, rt->digest, e ? err_http_status(e) : 201,
              e ? err_name(e) : NULL);
    if (e) {
        http_resp_error(r, e, NULL, rt->digest);
        return;
    }
    atomic_fetch_add(&nd->metrics.blob_pushes, 1);
    atomic_fetch_add(&nd->metrics.blob_push_bytes, size);
    answer_empty(r, 201);
    location(r, "blobs", rt->digest);
    http_resp_header(r, "Docker-Content-Digest", "%s", rt->digest);
}

static err
h_upload_body_done(struct http_req *r, bool nowait)
{
    struct route *rt = route_of(r);
    struct upload_ctx *u = r->app_state;
    (void)nowait;
    if (r->sink_err) {
        http_resp_error(r, r->sink_err, NULL, NULL);
        return ERR_OK;
    }
    if (rt->monolithic || (rt->kind == R_UPLOAD && r->method == M_PUT)) {
        finish_upload(r);
        return ERR_OK;
    }
    /* PATCH: the chunk is in; report the new offset */
    uint64_t off = store_upload_offset(u->u);
    store_upload_release(u->store, u->u);
    u->u = NULL;
    answer_empty(r, 202);
    upload_headers(r, rt->upload_id, off);
    return ERR_OK;
}

static err
h_upload_start(struct http_req *r, bool nowait)
{
    struct node *nd = node_of(r);
    struct route *rt = route_of(r);
    (void)nowait;
    const struct auth_principal *who = access_who(r);
    if (rt->mount && who && !auth_allows(nd->auth, who, rt->mount_from, ACT_PULL))
        rt->mount = false; /* may not read the source: a plain upload, as the spec says */
    if (rt->mount) {
        err e = store_blob_mount(nd->store, rt->name, rt->mount_from, rt->digest);
        if (!e) {
            atomic_fetch_add(&nd->metrics.mounts, 1);
            audit_log(nd, r, "push.blob", rt->name, NULL, rt->digest, 201, "mounted");
            answer_empty(r, 201);
            location(r, "blobs", rt->digest);
            http_resp_header(r, "Docker-Content-Digest", "%s", rt->digest);
            return ERR_OK;
        }
        if (e != ERR_BLOB_UNKNOWN) {
            http_resp_error(r, e, NULL, NULL);
            return ERR_OK;
        }
        /* not mountable: a normal upload session instead, as the spec says */
    }
    err e = upload_create(r, nd, rt);
    if (e) {
        if (e != ERR_TOOMANYREQUESTS)
            http_resp_error(r, e, NULL, NULL);
        return ERR_OK;
    }
    answer_empty(r, 202);
    upload_headers(r, rt->upload_id, 0);
    return ERR_OK;
}

static err
h_upload_status(struct http_req *r, bool nowait)
{
    struct node *nd = node_of(r);
    struct route *rt = route_of(r);
    uint64_t off = 0;
    (void)nowait;
    err e = store_upload_peek(nd->store, rt->name, rt->upload_id, &off);
    if (e) {
        http_resp_error(r, e, NULL, rt->upload_id);
        return ERR_OK;
    }
    answer_empty(r, 204);
    upload_headers(r, rt->upload_id, off);
    return ERR_OK;
}

static err
h_upload_cancel(struct http_req *r, bool nowait)
{
    struct node *nd = node_of(r);
    struct route *rt = route_of(r);
    (void)nowait;
    err e = store_upload_cancel(nd->store, rt->name, rt->upload_id);
    if (e) {
        http_resp_error(r, e, NULL, rt->upload_id);
        return ERR_OK;
    }
    answer_empty(r, 204);
    return ERR_OK;
}

/* ---- referrers ---- */

struct referrers_out {
    buf *b;
    size_t count;
    const char *filter;
};

static bool
on_referrer(void *arg, slice key, slice value)
{
    struct referrers_out *o = arg;
    (void)key;
    if (o->filter) {
        /* compare the descriptor's own artifactType member (the manifest's artifactType
         * or its config's media type), not text that could sit in an annotation */
        json_t *d = json_loadb(value.ptr, value.len, 0, NULL);
        const char *at = json_string_value(json_object_get(d, "artifactType"));
        bool hit = at && strcmp(at, o->filter) == 0;
        json_decref(d);
        if (!hit)
            return true;
    }
    if (o->count++)
        buf_addc(o->b, ',');
    buf_add(o->b, value.ptr, value.len);
    return true;
}

static err
h_referrers(struct http_req *r, bool nowait)
{
    struct node *nd = node_of(r);
    struct route *rt = route_of(r);
    char filter[256];
    (void)nowait;
    bool filtered = http_req_query(r, "artifactType", filter, sizeof filter);
    buf b = BUF_INIT;
    struct referrers_out o = {.b = &b, .filter = filtered ? filter : NULL};
    buf_adds(&b, "{\"schemaVersion\":2,\"mediaType\":\"" MT_OCI_INDEX "\",\"manifests\":[");
    err e = store_referrers_list(nd->store, rt->name, rt->ref, on_referrer, &o);
    if (e) {
        buf_release(&b);
        http_resp_error(r, e, NULL, NULL);
        return ERR_OK;
    }
    buf_adds(&b, "]}");
    r->resp.status = 200;
    buf_release(&r->resp.body);
    r->resp.body = b;
    http_resp_header(r, "Content-Type", MT_OCI_INDEX);
    if (filtered)
        http_resp_header(r, "OCI-Filters-Applied", "artifactType");
    return ERR_OK;
}

/* ---- routing ---- */

static bool
ends_with(slice s, const char *suffix, slice *rest)
{
    size_t n = strlen(suffix);
    if (s.len < n || memcmp(s.ptr + s.len - n, suffix, n) != 0)
        return false;
    *rest = (slice){s.ptr, s.len - n};
    return true;
}

/* split_last finds the last "/<word>/" in s; *name is before it, *tail after. */
static bool
split_last(slice s, const char *word, slice *name, slice *tail)
{
    size_t wl = strlen(word);
    if (s.len < wl + 2)
        return false;
    for (size_t i = s.len - wl - 1; i-- > 0;) {
        if (s.ptr[i] == '/' && memcmp(s.ptr + i + 1, word, wl) == 0 && s.ptr[i + 1 + wl] == '/') {
            *name = (slice){s.ptr, i};
            *tail = (slice){s.ptr + i + 2 + wl, s.len - i - 2 - wl};
            return memchr(tail->ptr, '/', tail->len) == NULL;
        }
    }
    return false;
}

static bool
set_name(struct http_req *r, slice name)
{
    struct route *rt = route_of(r);
    if (!ref_name_valid(name)) {
        char detail[300];
        snprintf(detail, sizeof detail, "%.*s", (int)(name.len > 256 ? 256 : name.len), name.ptr);
        http_resp_error(r, ERR_NAME_INVALID, NULL, detail);
        return false;
    }
    str_copy_slice(rt->name, sizeof rt->name, name);
    return true;
}

static bool
set_digest(struct http_req *r, slice d, char *out)
{
    if (!ref_digest_valid(d)) {
        http_resp_error(r, ERR_DIGEST_INVALID, "invalid digest", NULL);
        return false;
    }
    str_copy_slice(out, DIGEST_MAX, d);
    return true;
}

static bool
set_upload_id(struct http_req *r, slice id)
{
    struct route *rt = route_of(r);
    bool ok = id.len == STORE_UPLOAD_ID_LEN;
    for (size_t i = 0; ok && i < id.len; i++)
        ok = (id.ptr[i] >= '0' && id.ptr[i] <= '9') || (id.ptr[i] >= 'a' && id.ptr[i] <= 'f');
    if (!ok) {
        http_resp_error(r, ERR_BLOB_UPLOAD_UNKNOWN, NULL, NULL);
        return false;
    }
    str_copy_slice(rt->upload_id, sizeof rt->upload_id, id);
    return true;
}

static void
method_not_allowed(struct http_req *r)
{
    http_resp_error(r, ERR_METHOD, NULL, NULL);
}

static bool
refuse_write(struct http_req *r)
{
    char primary[256] = "";
    if (node_writable(node_of(r), primary, sizeof primary))
        return false;
    char msg[400];
    snprintf(msg, sizeof msg, "this node is a read-only replica; push to the primary at %s",
             primary[0] ? primary : "(primary URL not known yet)");
    http_resp_error(r, ERR_READ_ONLY, msg, primary[0] ? primary : NULL);
    return true;
}

/* refuse_full: 507 while the store refuses writes for lack of space (a DELETE only
 * while RocksDB itself is stopped: below storage.min_free it may free space). */
static bool
refuse_full(struct http_req *r)
{
    store *s = node_of(r)->store;
    struct store_space sp;
    store_space_stats(s, &sp);
    if (r->method == M_DELETE && !sp.wedged)
        return false;
    if (store_space_check(s) == ERR_OK)
        return false;
    char msg[200];
    snprintf(msg, sizeof msg, "insufficient storage: %llu bytes free, %s",
             (unsigned long long)sp.free_bytes,
             sp.wedged ? "the store stopped writing; it resumes when space returns"
                       : "below storage.min_free");
    http_resp_error(r, ERR_INSUFFICIENT_STORAGE, msg, NULL);
    return true;
}

static void
route_v2(struct http_req *r, slice p)
{
    struct route *rt = route_of(r);
    struct node *nd = node_of(r);
    slice name, tail;
    bool write = r->method == M_PUT || r->method == M_POST || r->method == M_PATCH ||
                 r->method == M_DELETE;

    if (p.len == 0) {
        rt->kind = R_BASE;
        if (r->method != M_GET && r->method != M_HEAD)
            return method_not_allowed(r);
        r->handler = h_base;
        return;
    }
    if (slice_eq_cstr(p, "_catalog")) {
        if (r->method != M_GET)
            return method_not_allowed(r);
        rt->kind = R_CATALOG;
        r->handler = h_catalog;
        r->handler_on_pool = true;
        return;
    }
    if (ends_with(p, "/tags/list", &name)) {
        if (!set_name(r, name))
            return;
        if (r->method != M_GET)
            return method_not_allowed(r);
        rt->kind = R_TAGS;
        r->handler = h_tags;
        r->handler_on_pool = true;
        return;
    }
    if (write && (refuse_write(r) || refuse_full(r)))
        return;
    if (split_last(p, "manifests", &name, &tail)) {
        if (!set_name(r, name))
            return;
        rt->kind = R_MANIFEST;
        bool is_digest = ref_is_digest(tail);
        if (is_digest ? ref_digest_valid(tail) : ref_tag_valid(tail)) {
            str_copy_slice(rt->ref, sizeof rt->ref, tail);
        } else if (r->method == M_GET || r->method == M_HEAD) {
            rt->ref_invalid = true; /* 404 MANIFEST_UNKNOWN, after authorization */
        } else if (is_digest) {
            http_resp_error(r, ERR_DIGEST_INVALID, "invalid digest", NULL);
            return;
        } else {
            http_resp_error(r, ERR_TAG_INVALID, NULL, NULL);
            return;
        }
        switch (r->method) {
        case M_GET:
        case M_HEAD:
            r->handler = h_manifest_get;
            return;
        case M_PUT: {
            /* every ?tag= is checked before the body is read and anything stored */
            struct put_tags tags;
            const char *why = NULL;
            bool any;
            if (!collect_put_tags(r, &tags, &any, &why)) {
                http_resp_error(r, ERR_TAG_INVALID, why, NULL);
                return;
            }
        }
            if (r->has_length && r->content_length > nd->cfg->max_manifest_bytes) {
                http_resp_error(r, ERR_MANIFEST_TOO_LARGE, NULL, NULL);
                return;
            }
            r->body_mode = BODY_BUFFER;
            r->body_limit = nd->cfg->max_manifest_bytes;
            r->handler = h_manifest_put;
            r->handler_on_pool = true;
            return;
        case M_DELETE:
            r->handler = h_manifest_delete;
            r->handler_on_pool = true;
            return;
        default:
            return method_not_allowed(r);
        }
    }
    if (ends_with(p, "/blobs/uploads/", &name) || ends_with(p, "/blobs/uploads", &name)) {
        if (!set_name(r, name))
            return;
        if (r->method != M_POST)
            return method_not_allowed(r);
        rt->kind = R_UPLOAD_START;
        char v[REF_NAME_MAX + 1];
        if (http_req_query(r, "mount", v, sizeof v)) {
            if (!set_digest(r, slice_of_cstr(v), rt->digest))
                return;
            char from[REF_NAME_MAX + 2];
            if (http_req_query(r, "from", from, sizeof from)) {
                if (!ref_name_valid(slice_of_cstr(from))) {
                    http_resp_error(r, ERR_NAME_INVALID, NULL, "from");
                    return;
                }
                str_copy(rt->mount_from, sizeof rt->mount_from, from);
                rt->mount = true;
            }
        } else if (http_req_query(r, "digest", v, sizeof v)) {
            if (!set_digest(r, slice_of_cstr(v), rt->digest))
                return;
            rt->monolithic = true;
            r->pre_body = pre_upload;
            r->body_mode = BODY_SINK;
            r->sink = upload_sink;
            r->handler = h_upload_body_done;
            r->handler_on_pool = true;
            return;
        }
        r->handler = h_upload_start;
        r->handler_on_pool = true;
        return;
    }
    if (split_last(p, "uploads", &name, &tail) && ends_with(name, "/blobs", &name)) {
        if (!set_name(r, name) || !set_upload_id(r, tail))
            return;
        rt->kind = R_UPLOAD;
        r->handler_on_pool = true;
        switch (r->method) {
        case M_GET:
            r->handler = h_upload_status;
            return;
        case M_DELETE:
            r->handler = h_upload_cancel;
            return;
        case M_PUT: {
            char d[DIGEST_MAX + 8];
            if (!http_req_query(r, "digest", d, sizeof d)) {
                http_resp_error(r, ERR_DIGEST_INVALID, "the digest parameter is required", NULL);
                return;
            }
            if (!set_digest(r, slice_of_cstr(d), rt->digest))
                return;
        }
            /* fall through */
        case M_PATCH:
            r->pre_body = pre_upload;
            r->body_mode = BODY_SINK;
            r->sink = upload_sink;
            r->handler = h_upload_body_done;
            return;
        default:
            return method_not_allowed(r);
        }
    }
    if (split_last(p, "blobs", &name, &tail)) {
        if (!set_name(r, name) || !set_digest(r, tail, rt->ref))
            return;
        rt->kind = R_BLOB;
        switch (r->method) {
        case M_GET:
        case M_HEAD:
            r->handler = h_blob_get;
            return;
        case M_DELETE:
            r->handler = h_blob_delete;
            r->handler_on_pool = true;
            return;
        default:
            return method_not_allowed(r);
        }
    }
    if (split_last(p, "referrers", &name, &tail)) {
        if (!set_name(r, name) || !set_digest(r, tail, rt->ref))
            return;
        if (r->method != M_GET)
            return method_not_allowed(r);
        rt->kind = R_REFERRERS;
        r->handler = h_referrers;
        r->handler_on_pool = true;
        return;
    }
    http_resp_error(r, ERR_ROUTE_UNKNOWN, NULL, NULL);
}

/* authorize_v2 states what a routed /v2/ request needs and checks it. */
static void
authorize_v2(struct http_req *r)
{
    struct route *rt = route_of(r);
    unsigned act = 0;
    bool login = false;
    switch (rt->kind) {
    case R_BASE:
        login = true;
        break;
    case R_CATALOG:
        /* asks for no grant (the list is filtered), but names its scope in the challenge */
        act = ACT_CATALOG;
        login = true;
        break;
    case R_TAGS:
        act = ACT_READ;
        break;
    case R_MANIFEST:
    case R_BLOB:
        act = r->method == M_DELETE ? ACT_DELETE
              : r->method == M_PUT  ? ACT_PUSH
                                    : ACT_PULL;
        break;
    case R_REFERRERS:
        act = ACT_PULL;
        break;
    case R_UPLOAD_START:
    case R_UPLOAD:
        act = ACT_PUSH;
        break;
    }
    access_require(r, rt->kind == R_BASE || rt->kind == R_CATALOG ? NULL : rt->name, act, NULL, 0,
                   login);
}

void
oci_on_headers(struct http_req *r)
{
    slice p = r->path;
    if (slice_starts_with(p, "/v2/") || slice_eq_cstr(p, "/v2")) {
        route_v2(r, p.len > 4 ? (slice){p.ptr + 4, p.len - 4} : (slice){"", 0});
        if (!r->resp.status && r->handler)
            authorize_v2(r);
        return;
    }
    if (admin_route(r))
        return;
    http_resp_error(r, ERR_ROUTE_UNKNOWN, NULL, NULL);
}
