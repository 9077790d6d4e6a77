/* What a node loses when it is rebuilt after its log went past the fork point (an
 * old primary's writes nobody else saw, a secondary that followed a primary that
 * was then replaced): before the resync wipes its state, the events beyond the fork
 * are kept as a report; after it, every tag of the report that now points elsewhere
 * (or nowhere) is a conflict, listed until an operator resolves it. Nothing
 * acknowledged is dropped without a report. Reports live in node metadata
 * (repl/divergence/<id>, index in repl/divergence/index), as JSON. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../common/clock.h"
#include "repl_int.h"
#include "../common/log.h"
#include "../common/banned.h"

#define INDEX_KEY "repl/divergence/index"
#define MAX_REPORTS 64
#define MAX_ENTRIES 10000

static const char *const type_names[] = {
    [EV_NONE] = "none",           [EV_BLOB_LINK] = "blob",         [EV_BLOB_UNLINK] = "blob_delete",
    [EV_MANIFEST_PUT] = "manifest", [EV_MANIFEST_DELETE] = "manifest_delete",
    [EV_TAG_DELETE] = "tag_delete", [EV_META_PUT] = "meta",         [EV_META_DELETE] = "meta_delete",
};

struct scan {
    json_t *entries;
    uint64_t events, kept;
    uint64_t last_seq;
};

static json_t *
jstr(slice s)
{
    return json_stringn(s.ptr ? s.ptr : "", s.len);
}

static bool
on_event(void *arg, const struct store_event *ev)
{
    struct scan *sc = arg;
    sc->events++;
    sc->last_seq = ev->seq;
    if (ev->type == EV_NONE || ev->type > EV_META_DELETE)
        return true;
    if (sc->kept >= MAX_ENTRIES)
        return true;
    json_t *e = json_object();
    json_object_set_new(e, "seq", json_integer((json_int_t)ev->seq));
    json_object_set_new(e, "time_ms", json_integer((json_int_t)ev->time_ms));
    json_object_set_new(e, "type", json_string(type_names[ev->type]));
    if (ev->type == EV_META_PUT || ev->type == EV_META_DELETE) {
        json_object_set_new(e, "key", jstr(ev->tag));
    } else {
        json_object_set_new(e, "repo", jstr(ev->repo));
        if (ev->digest.len)
            json_object_set_new(e, "digest", jstr(ev->digest));
        if (ev->tag.len)
            json_object_set_new(e, "tag", jstr(ev->tag));
    }
    json_array_append_new(sc->entries, e);
    sc->kept++;
    return true;
}

static err
index_ids(repl *r, uint64_t *ids, size_t *n)
{
    buf v = BUF_INIT;
    *n = 0;
    err e = store_meta_get(r->store, INDEX_KEY, &v);
    if (e == ERR_NOT_FOUND) {
        buf_release(&v);
        return ERR_OK;
    }
    const char *p = v.ptr;
    while (!e && *p && *n < MAX_REPORTS) {
        char *end;
        unsigned long long id = strtoull(p, &end, 10);
        if (end == p)
            break;
        ids[(*n)++] = id;
        p = *end == ',' ? end + 1 : end;
    }
    buf_release(&v);
    return e;
}

static err
index_put(repl *r, const uint64_t *ids, size_t n)
{
    buf v = BUF_INIT;
    for (size_t i = 0; i < n; i++)
        buf_addf(&v, "%s%llu", i ? "," : "", (unsigned long long)ids[i]);
    err e = store_meta_put(r->store, INDEX_KEY, v.ptr, v.len);
    buf_release(&v);
    return e;
}

static void
report_key(char *k, size_t n, uint64_t id)
{
    snprintf(k, n, "repl/divergence/%llu", (unsigned long long)id);
}

static err
report_put(repl *r, uint64_t id, json_t *doc)
{
    char k[64];
    report_key(k, sizeof k, id);
    char *text = json_dumps(doc, JSON_COMPACT);
    if (!text)
        return ERR_NOMEM;
    err e = store_meta_put(r->store, k, text, strlen(text));
    free(text);
    return e;
}

static json_t *
report_get(repl *r, uint64_t id)
{
    char k[64];
    report_key(k, sizeof k, id);
    buf v = BUF_INIT;
    json_t *doc = NULL;
    if (store_meta_get(r->store, k, &v) == ERR_OK)
        doc = json_loadb(v.ptr, v.len, 0, NULL);
    buf_release(&v);
    return doc;
}

err
divergence_begin(repl *r, uint64_t fork_seq, uint64_t new_epoch, const char *primary)
{
    uint64_t head = store_log_head(r->store);
    uint64_t applied = r->primary ? head : store_applied_seq(r->store);
    uint64_t upto = applied > head ? applied : head;
    if (upto <= fork_seq)
        return ERR_OK;
    struct scan sc = {.entries = json_array()};
    if (!sc.entries)
        return ERR_NOMEM;
    uint64_t from = fork_seq + 1;
    uint64_t first = store_log_first(r->store);
    bool partial = first > from; /* trimmed before we could keep it */
    if (first > from)
        from = first;
    for (;;) {
        uint64_t before = sc.events;
        if (store_log_read(r->store, from, 1024, on_event, &sc) || sc.events == before)
            break;
        from = sc.last_seq + 1;
        if (from > upto)
            break;
    }
    uint64_t id = clock_wall_ms();
    uint64_t ids[MAX_REPORTS + 1];
    size_t n = 0;
    err e = index_ids(r, ids, &n);
    if (!e && n && ids[n - 1] >= id)
        id = ids[n - 1] + 1;
    json_t *doc = json_object();
    json_object_set_new(doc, "id", json_integer((json_int_t)id));
    json_object_set_new(doc, "detected_ms", json_integer((json_int_t)clock_wall_ms()));
    json_object_set_new(doc, "fork_seq", json_integer((json_int_t)fork_seq));
    json_object_set_new(doc, "head_seq", json_integer((json_int_t)upto));
    json_object_set_new(doc, "lost_events", json_integer((json_int_t)(upto - fork_seq)));
    json_object_set_new(doc, "epoch", json_integer((json_int_t)atomic_load(&r->epoch)));
    json_object_set_new(doc, "new_epoch", json_integer((json_int_t)new_epoch));
    json_object_set_new(doc, "primary", json_string(primary));
    json_object_set_new(doc, "was_primary", json_boolean(r->primary));
    json_object_set_new(doc, "truncated", json_boolean(partial || sc.kept < sc.events));
    json_object_set_new(doc, "entries", sc.entries);
    json_object_set_new(doc, "conflicts", json_array());
    json_object_set_new(doc, "checked", json_false());
    if (!e)
        e = report_put(r, id, doc);
    json_decref(doc);
    if (!e) {
        if (n == MAX_REPORTS) { /* the oldest report goes */
            char k[64];
            report_key(k, sizeof k, ids[0]);
            store_meta_put(r->store, k, "", 0);
            memmove(ids, ids + 1, (n - 1) * sizeof ids[0]);
            n--;
        }
        ids[n++] = id;
        e = index_put(r, ids, n);
    }
    atomic_fetch_add(&r->divergences, 1);
    log_warn("REPL-DIVERGED-HERE", "report=%llu fork_seq=%llu head=%llu lost_events=%llu "
             "kept=%llu primary=%s msg=\"events beyond the fork are reported, then this node is "
             "rebuilt from the primary (georeg conflicts)\"",
             (unsigned long long)id, (unsigned long long)fork_seq, (unsigned long long)upto,
             (unsigned long long)(upto - fork_seq), (unsigned long long)sc.kept, primary);
    if (r->on_refused) {
        char d[200];
        snprintf(d, sizeof d, "report %llu: %llu events beyond seq %llu are not in %.60s's "
                 "history", (unsigned long long)id, (unsigned long long)(upto - fork_seq),
                 (unsigned long long)fork_seq, primary);
        r->on_refused(r->cb_arg, primary, "diverged", d);
    }
    return e;
}

/* conflicts_of fills doc's conflicts: each tag the report set (the newest entry per
 * repo:tag wins) that the node now resolves to another digest or not at all. */
static size_t
conflicts_of(repl *r, json_t *doc)
{
    json_t *entries = json_object_get(doc, "entries");
    json_t *conf = json_array();
    json_t *seen = json_object();
    size_t i, found = 0;
    json_t *e;
    /* newest first: the last write to a tag is what was acknowledged last */
    for (i = json_array_size(entries); i-- > 0;) {
        e = json_array_get(entries, i);
        const char *type = json_string_value(json_object_get(e, "type"));
        const char *repo = json_string_value(json_object_get(e, "repo"));
        const char *tag = json_string_value(json_object_get(e, "tag"));
        const char *dg = json_string_value(json_object_get(e, "digest"));
        if (!type || !repo || !tag || (strcmp(type, "manifest") && strcmp(type, "tag_delete")))
            continue;
        char key[600];
        snprintf(key, sizeof key, "%s:%s", repo, tag);
        if (json_object_get(seen, key))
            continue;
        json_object_set_new(seen, key, json_true());
        if (!dg)
            continue; /* a tag delete nobody saw: the tag may live on, nothing is lost */
        char now[DIGEST_MAX] = "";
        uint64_t seq = 0;
        bool have = store_manifest_seq(r->store, repo, tag, now, &seq) == ERR_OK;
        if (have && strcmp(now, dg) == 0)
            continue;
        json_t *c = json_object();
        json_object_set_new(c, "n", json_integer((json_int_t)found));
        json_object_set_new(c, "repo", json_string(repo));
        json_object_set_new(c, "tag", json_string(tag));
        json_object_set_new(c, "old_digest", json_string(dg));
        json_object_set_new(c, "new_digest", have ? json_string(now) : json_null());
        json_object_set_new(c, "seq", json_object_get(e, "seq") ? json_incref(json_object_get(e, "seq")) : json_null());
        json_object_set_new(c, "status", json_string("open"));
        json_array_append_new(conf, c);
        found++;
    }
    json_decref(seen);
    json_object_set_new(doc, "conflicts", conf);
    json_object_set_new(doc, "checked", json_true());
    return found;
}

void
divergence_end(repl *r)
{
    uint64_t ids[MAX_REPORTS];
    size_t n = 0;
    if (index_ids(r, ids, &n))
        return;
    for (size_t i = 0; i < n; i++) {
        json_t *doc = report_get(r, ids[i]);
        if (!doc)
            continue;
        if (!json_is_true(json_object_get(doc, "checked"))) {
            size_t c = conflicts_of(r, doc);
            if (report_put(r, ids[i], doc) == ERR_OK) {
                log_warn("REPL-CONFLICTS", "report=%llu conflicts=%zu msg=\"tags written here "
                         "that now point elsewhere: georeg conflicts\"",
                         (unsigned long long)ids[i], c);
                if (c && r->on_refused) {
                    char d[120];
                    snprintf(d, sizeof d, "report %llu: %zu tag conflict(s)",
                             (unsigned long long)ids[i], c);
                    r->on_refused(r->cb_arg, "", "conflict", d);
                }
            }
        }
        json_decref(doc);
    }
}

static bool
status_open(json_t *c)
{
    const char *st = json_string_value(json_object_get(c, "status"));
    return st && strcmp(st, "open") == 0;
}

size_t
repl_conflicts_open(repl *r)
{
    uint64_t ids[MAX_REPORTS];
    size_t n = 0, open = 0;
    if (index_ids(r, ids, &n))
        return 0;
    for (size_t i = 0; i < n; i++) {
        json_t *doc = report_get(r, ids[i]);
        json_t *c;
        size_t k;
        json_array_foreach(json_object_get(doc, "conflicts"), k, c) if (status_open(c)) open++;
        json_decref(doc);
    }
    return open;
}

err
repl_conflicts_json(repl *r, bool all, buf *out)
{
    uint64_t ids[MAX_REPORTS];
    size_t n = 0;
    err e = index_ids(r, ids, &n);
    if (e)
        return e;
    json_t *res = json_object(), *conf = json_array(), *reps = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *doc = report_get(r, ids[i]);
        if (!doc)
            continue;
        json_t *c;
        size_t k;
        json_array_foreach(json_object_get(doc, "conflicts"), k, c)
        {
            if (!all && !status_open(c))
                continue;
            json_t *x = json_deep_copy(c);
            json_object_set(x, "report", json_object_get(doc, "id"));
            json_object_set(x, "epoch", json_object_get(doc, "epoch"));
            json_object_set(x, "new_epoch", json_object_get(doc, "new_epoch"));
            json_object_set(x, "primary", json_object_get(doc, "primary"));
            json_array_append_new(conf, x);
        }
        json_t *sum = json_object();
        const char *fields[] = {"id",        "detected_ms", "fork_seq", "head_seq", "lost_events",
                                "epoch",     "new_epoch",   "primary",  "was_primary",
                                "truncated", "checked"};
        for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++)
            json_object_set(sum, fields[f], json_object_get(doc, fields[f]));
        json_object_set_new(sum, "entries", json_integer((json_int_t)json_array_size(
                                                json_object_get(doc, "entries"))));
        if (all)
            json_object_set(sum, "events", json_object_get(doc, "entries"));
        json_array_append_new(reps, sum);
        json_decref(doc);
    }
    json_object_set_new(res, "node", json_string(r->node_name));
    json_object_set_new(res, "conflicts", conf);
    json_object_set_new(res, "divergences", reps);
    char *text = json_dumps(res, JSON_COMPACT);
    json_decref(res);
    if (!text)
        return ERR_NOMEM;
    e = buf_adds(out, text);
    free(text);
    return e;
}

err
repl_conflict_resolve(repl *r, uint64_t report, uint64_t n, const char *how)
{
    json_t *doc = report_get(r, report);
    if (!doc)
        return ERR_NOT_FOUND;
    json_t *c, *hit = NULL;
    size_t k;
    json_array_foreach(json_object_get(doc, "conflicts"), k, c)
    {
        json_t *jn = json_object_get(c, "n");
        if (json_is_integer(jn) && (uint64_t)json_integer_value(jn) == n)
            hit = c;
    }
    err e = ERR_NOT_FOUND;
    if (hit) {
        json_object_set_new(hit, "status", json_string(how));
        json_object_set_new(hit, "resolved_ms", json_integer((json_int_t)clock_wall_ms()));
        e = report_put(r, report, doc);
    }
    json_decref(doc);
    return e;
}
