/* YAML configuration: the file is flattened into (dotted path, scalar) pairs, every
 * path is checked against the table of known keys (a typo is an error, not a
 * silently ignored setting), then each key is read from the environment first and
 * the file second. */
#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "../common/buf.h"
#include "../common/log.h"
#include "../common/banned.h"

struct kv {
    char *key;
    char *val;
};

struct flat {
    struct kv *items;
    size_t n, cap;
};

static void
flat_free(struct flat *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->items[i].key);
        free(f->items[i].val);
    }
    free(f->items);
    memset(f, 0, sizeof *f);
}

static err
flat_add(struct flat *f, const char *key, const char *val)
{
    if (f->n == f->cap) {
        size_t nc = f->cap ? f->cap * 2 : 32;
        struct kv *p = realloc(f->items, nc * sizeof *p);
        if (!p)
            return ERR_NOMEM;
        f->items = p;
        f->cap = nc;
    }
    f->items[f->n].key = strdup(key);
    f->items[f->n].val = strdup(val);
    if (!f->items[f->n].key || !f->items[f->n].val)
        return ERR_NOMEM;
    f->n++;
    return ERR_OK;
}

static const char *
flat_get(const struct flat *f, const char *key)
{
    for (size_t i = f->n; i-- > 0;)
        if (strcmp(f->items[i].key, key) == 0)
            return f->items[i].val;
    return NULL;
}

/* ---- YAML flattening ---- */

#define PATH_DEPTH 16

struct frame {
    bool is_seq;
    size_t index;     /* next index in a sequence */
    char key[128];    /* current key in a mapping ("" while expecting a key) */
    bool have_key;
    size_t path_len;  /* length of the path up to this container */
};

static err
flatten_yaml(FILE *fp, struct flat *f, char *why, size_t why_len)
{
    yaml_parser_t p;
    yaml_event_t ev;
    struct frame st[PATH_DEPTH];
    int depth = -1;
    char path[1024] = "";
    err e = ERR_OK;
    bool done = false;

    if (!yaml_parser_initialize(&p))
        return ERR_NOMEM;
    yaml_parser_set_input_file(&p, fp);
    while (!done) {
        if (!yaml_parser_parse(&p, &ev)) {
            snprintf(why, why_len, "YAML error at line %zu: %s", p.problem_mark.line + 1,
                     p.problem ? p.problem : "parse error");
            e = ERR_CONFIG;
            break;
        }
        /* the path of the value this event is (when inside a container) */
        char vpath[1024];
        vpath[0] = '\0';
        bool is_key = false;
        if (depth >= 0) {
            struct frame *t = &st[depth];
            if (t->is_seq) {
                snprintf(vpath, sizeof vpath, "%.*s%s%zu", (int)t->path_len, path,
                         t->path_len ? "." : "", t->index);
            } else if (!t->have_key) {
                is_key = true;
            } else {
                snprintf(vpath, sizeof vpath, "%.*s%s%s", (int)t->path_len, path,
                         t->path_len ? "." : "", t->key);
            }
        }
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_SCALAR_EVENT:
            if (depth < 0)
                break;
            if (is_key) {
                str_copy(st[depth].key, sizeof st[depth].key, (const char *)ev.data.scalar.value);
                st[depth].have_key = true;
            } else {
                if ((e = flat_add(f, vpath, (const char *)ev.data.scalar.value)))
                    done = true;
                if (st[depth].is_seq)
                    st[depth].index++;
                else
                    st[depth].have_key = false;
            }
            break;
        case YAML_MAPPING_START_EVENT:
        case YAML_SEQUENCE_START_EVENT:
            if (is_key) {
                snprintf(why, why_len, "YAML: complex mapping keys are not supported");
                e = ERR_CONFIG;
                done = true;
                break;
            }
            if (depth + 1 >= PATH_DEPTH) {
                snprintf(why, why_len, "YAML nested too deeply");
                e = ERR_CONFIG;
                done = true;
                break;
            }
            if (depth >= 0)
                str_copy(path, sizeof path, vpath);
            depth++;
            memset(&st[depth], 0, sizeof st[depth]);
            st[depth].is_seq = ev.type == YAML_SEQUENCE_START_EVENT;
            st[depth].path_len = strlen(path);
            break;
        case YAML_MAPPING_END_EVENT:
        case YAML_SEQUENCE_END_EVENT:
            depth--;
            if (depth >= 0) {
                struct frame *t = &st[depth];
                if (t->is_seq)
                    t->index++;
                else
                    t->have_key = false;
                path[t->path_len] = '\0';
            }
            break;
        case YAML_ALIAS_EVENT:
            snprintf(why, why_len, "YAML aliases are not supported in the config");
            e = ERR_CONFIG;
            done = true;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);
    return e;
}

/* ---- known keys ---- */

enum ktype { K_STR, K_INT, K_BOOL, K_DUR, K_SIZE, K_LIST, K_ROLE, K_LEVEL, K_AUTH };

struct key {
    const char *path; /* '#' stands for a replica index */
    enum ktype type;
    size_t off;
    size_t len; /* K_STR: buffer size */
};

#define F(field) offsetof(struct cfg, field), sizeof(((struct cfg *)0)->field)
#define R(field) offsetof(struct cfg_replica, field), sizeof(((struct cfg_replica *)0)->field)

static const struct key keys[] = {
    {"node.name", K_STR, F(name)},
    {"node.data_dir", K_STR, F(data_dir)},
    {"node.log_level", K_LEVEL, F(log_level)},
    {"http.listen", K_STR, F(listen)},
    {"http.workers", K_INT, F(workers)},
    {"http.max_connections", K_INT, F(max_connections)},
    {"http.max_connections_per_address", K_INT, F(max_connections_per_address)},
    {"http.access_log", K_BOOL, F(access_log)},
    {"http.header_timeout", K_DUR, F(header_timeout_ms)},
    {"http.idle_timeout", K_DUR, F(idle_timeout_ms)},
    {"http.body_timeout", K_DUR, F(body_timeout_ms)},
    {"http.drain_timeout", K_DUR, F(drain_timeout_ms)},
    {"http.max_header_bytes", K_SIZE, F(max_header_bytes)},
    {"http.max_manifest_bytes", K_SIZE, F(max_manifest_bytes)},
    {"http.public_url", K_STR, F(public_url)},
    {"http.tls.cert", K_STR, F(http_tls.cert)},
    {"http.tls.key", K_STR, F(http_tls.key)},
    {"http.allow", K_LIST, F(http_allow)},
    {"http.enabled", K_BOOL, F(http_enabled)},
    {"http.insecure", K_BOOL, F(http_insecure)},
    {"http.private.listen", K_STR, F(private_listen)},
    {"http.private.allow", K_LIST, F(private_allow)},
    {"http.private.tls.cert", K_STR, F(private_tls.cert)},
    {"http.private.tls.key", K_STR, F(private_tls.key)},
    {"storage.inline_max", K_SIZE, F(inline_max)},
    {"storage.cache_size", K_SIZE, F(cache_bytes)},
    {"storage.upload_max_age", K_DUR, F(upload_max_age_s)},
    {"storage.upload_idle_timeout", K_DUR, F(upload_idle_timeout_s)},
    {"storage.max_uploads", K_INT, F(max_uploads)},
    {"storage.max_uploads_per_identity", K_INT, F(max_uploads_per_identity)},
    {"storage.min_free", K_SIZE, F(min_free)},
    {"replication.role", K_ROLE, F(primary)},
    {"replication.listen", K_STR, F(repl_listen)},
    {"replication.primary_url", K_STR, F(primary_url)},
    {"replication.tls.cert", K_STR, F(repl_tls.cert)},
    {"replication.tls.key", K_STR, F(repl_tls.key)},
    {"replication.tls.ca", K_STR, F(repl_tls.ca)},
    {"replication.tls.client_cert", K_STR, F(repl_tls.client_cert)},
    {"replication.primaries", K_LIST, F(repl_primaries)},
    {"replication.insecure", K_BOOL, F(repl_insecure)},
    {"replication.window", K_INT, F(repl_window)},
    {"replication.chunk_size", K_SIZE, F(repl_chunk_bytes)},
    {"replication.log_retention", K_INT, F(repl_log_retention)},
    {"replication.heartbeat", K_DUR, F(repl_heartbeat_ms)},
    {"replication.epoch", K_INT, F(repl_min_epoch)},
    {"replication.max_staleness", K_DUR, F(repl_max_staleness_ms)},
    {"cluster.initial_primary", K_STR, F(initial_primary)},
    {"cluster.etcd.endpoints", K_LIST, F(etcd_endpoints)},
    {"cluster.etcd.ttl", K_DUR, F(etcd_ttl_ms)},
    {"cluster.etcd.prefix", K_STR, F(etcd_prefix)},
    {"replication.sync.replicas", K_LIST, F(sync_names)}, /* a count, or names: see cfg_load */
    {"replication.sync.timeout", K_DUR, F(sync_timeout_ms)},
    {"replication.sync.max_waiters", K_INT, F(sync_max_waiters)},
    {"auth.mode", K_AUTH, F(auth_mode)},
    {"auth.allow_none_off_loopback", K_BOOL, F(allow_none_off_loopback)},
    {"auth.service", K_STR, F(auth_service)},
    {"auth.realm", K_STR, F(auth_realm)},
    {"auth.admin_password_file", K_STR, F(admin_password_file)},
    {"auth.admin_enabled", K_BOOL, F(admin_enabled)},
    {"auth.token_ttl", K_DUR, F(token_ttl_ms)},
    {"auth.anonymous_pull", K_LIST, F(anonymous_pull)},
    {"audit.retention", K_DUR, F(audit_retention_ms)},
};

static const struct key replica_keys[] = {
    {"name", K_STR, R(name)},
    {"address", K_STR, R(address)},
    {"include", K_LIST, R(include)},
    {"exclude", K_LIST, R(exclude)},
    {"include_tags", K_LIST, R(include_tags)},
    {"exclude_tags", K_LIST, R(exclude_tags)},
    {"url", K_STR, R(url)},
    {"primary_eligible", K_BOOL, R(eligible)},
};

/* The lists of maps: replication.replicas (a fixed-role primary's secondaries) and
 * cluster.regions (the cluster description). */
static const char *const list_prefixes[] = {"replication.replicas.", "cluster.regions."};

#undef F
#undef R

bool
cfg_parse_duration(const char *s, uint64_t *ms)
{
    char *end;
    if (!s || !*s || !isdigit((unsigned char)*s))
        return false;
    double v = strtod(s, &end);
    double mult = 1000;
    if (*end == '\0' || strcmp(end, "s") == 0)
        mult = 1000;
    else if (strcmp(end, "ms") == 0)
        mult = 1;
    else if (strcmp(end, "m") == 0)
        mult = 60000;
    else if (strcmp(end, "h") == 0)
        mult = 3600000;
    else if (strcmp(end, "d") == 0)
        mult = 86400000;
    else
        return false;
    if (v < 0 || v * mult > 1e15)
        return false;
    *ms = (uint64_t)(v * mult);
    return true;
}

bool
cfg_parse_size(const char *s, uint64_t *bytes)
{
    char *end;
    if (!s || !*s || !isdigit((unsigned char)*s))
        return false;
    double v = strtod(s, &end);
    double mult;
    if (*end == '\0' || strcasecmp(end, "b") == 0)
        mult = 1;
    else if (strcasecmp(end, "k") == 0 || strcasecmp(end, "kb") == 0 || strcmp(end, "KiB") == 0)
        mult = 1024;
    else if (strcasecmp(end, "m") == 0 || strcasecmp(end, "mb") == 0 || strcmp(end, "MiB") == 0)
        mult = 1024.0 * 1024;
    else if (strcasecmp(end, "g") == 0 || strcasecmp(end, "gb") == 0 || strcmp(end, "GiB") == 0)
        mult = 1024.0 * 1024 * 1024;
    else
        return false;
    if (v < 0 || v * mult > 1e18)
        return false;
    *bytes = (uint64_t)(v * mult);
    return true;
}

static void
env_name(const char *path, char *out, size_t n)
{
    size_t j = 0;
    const char *pre = "GEOREG_";
    for (; *pre && j + 1 < n; pre++)
        out[j++] = *pre;
    for (const char *p = path; *p && j + 1 < n; p++)
        out[j++] = *p == '.' ? '_' : (char)toupper((unsigned char)*p);
    out[j] = '\0';
}

static err
list_add(struct cfg_globs *g, const char *s, size_t len)
{
    if (g->n >= CFG_MAX_GLOBS)
        return ERR_CONFIG;
    char *d = strndup(s, len);
    if (!d)
        return ERR_NOMEM;
    g->items[g->n++] = d;
    return ERR_OK;
}

static void
list_clear(struct cfg_globs *g)
{
    for (size_t i = 0; i < g->n; i++)
        free(g->items[i]);
    g->n = 0;
}

int
cfg_parse_auth_mode(const char *v)
{
    if (strcmp(v, "none") == 0)
        return 0;
    if (strcmp(v, "basic") == 0)
        return 1;
    if (strcmp(v, "token") == 0)
        return 2;
    return -1;
}

/* set_key reads one key (env first, then file) into base+k->off. */
static err
set_key(const struct key *k, const char *path, const struct flat *f, void *base, char *why,
        size_t why_len)
{
    char env[256];
    env_name(path, env, sizeof env);
    const char *v = getenv(env);
    char *field = (char *)base + k->off;

    if (k->type == K_LIST) {
        struct cfg_globs *g = (struct cfg_globs *)field;
        if (v) {
            list_clear(g);
            for (const char *p = v; *p;) {
                const char *c = strchr(p, ',');
                size_t l = c ? (size_t)(c - p) : strlen(p);
                if (l && list_add(g, p, l)) {
                    snprintf(why, why_len, "%s: more than %d entries", env, CFG_MAX_GLOBS);
                    return ERR_CONFIG;
                }
                p += l + (c ? 1 : 0);
            }
            return ERR_OK;
        }
        const char *scalar = flat_get(f, path);
        if (scalar) {
            list_clear(g);
            return list_add(g, scalar, strlen(scalar));
        }
        for (size_t i = 0;; i++) {
            char ip[300];
            snprintf(ip, sizeof ip, "%s.%zu", path, i);
            const char *item = flat_get(f, ip);
            if (!item)
                break;
            if (i == 0)
                list_clear(g);
            if (list_add(g, item, strlen(item))) {
                snprintf(why, why_len, "%s: more than %d entries", path, CFG_MAX_GLOBS);
                return ERR_CONFIG;
            }
        }
        return ERR_OK;
    }
    if (!v)
        v = flat_get(f, path);
    if (!v)
        return ERR_OK;
    bool ok = true;
    switch (k->type) {
    case K_STR:
        ok = str_copy(field, k->len, v);
        break;
    case K_INT: {
        uint64_t u;
        ok = slice_parse_u64(slice_of_cstr(v), &u);
        if (ok && k->len == sizeof(unsigned))
            ok = u <= 0xffffffffu, *(unsigned *)field = (unsigned)u;
        else if (ok)
            *(uint64_t *)field = u;
        break;
    }
    case K_BOOL:
        if (strcmp(v, "true") == 0 || strcmp(v, "yes") == 0 || strcmp(v, "1") == 0)
            *(bool *)field = true;
        else if (strcmp(v, "false") == 0 || strcmp(v, "no") == 0 || strcmp(v, "0") == 0)
            *(bool *)field = false;
        else
            ok = false;
        break;
    case K_DUR: {
        uint64_t ms;
        ok = cfg_parse_duration(v, &ms);
        if (ok)
            *(uint64_t *)field = strcmp(path, "storage.upload_max_age") == 0 ||
                                         strcmp(path, "storage.upload_idle_timeout") == 0
                                     ? ms / 1000
                                     : ms;
        break;
    }
    case K_SIZE:
        ok = cfg_parse_size(v, (uint64_t *)field);
        break;
    case K_ROLE:
        if (strcmp(v, "primary") == 0)
            *(bool *)field = true;
        else if (strcmp(v, "secondary") == 0)
            *(bool *)field = false;
        else
            ok = false;
        break;
    case K_AUTH:
        *(int *)field = cfg_parse_auth_mode(v);
        ok = *(int *)field >= 0;
        break;
    case K_LEVEL: {
        int l = log_level_parse(v);
        ok = l >= 0;
        if (ok)
            *(int *)field = l;
        break;
    }
    case K_LIST:
        break;
    }
    if (!ok) {
        snprintf(why, why_len, "invalid value for %s: \"%s\"", path, v);
        return ERR_CONFIG;
    }
    return ERR_OK;
}

/* known_path: path is a key of the table (or an item of a list key). */
static bool
known_path(const char *path)
{
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        size_t l = strlen(keys[i].path);
        if (strncmp(keys[i].path, path, l) == 0 &&
            (path[l] == '\0' || (keys[i].type == K_LIST && path[l] == '.')))
            return true;
    }
    for (size_t li = 0; li < sizeof list_prefixes / sizeof list_prefixes[0]; li++) {
        const char *pre = list_prefixes[li];
        if (strncmp(path, pre, strlen(pre)) != 0)
            continue;
        const char *p = path + strlen(pre);
        if (!isdigit((unsigned char)*p))
            return false;
        while (isdigit((unsigned char)*p))
            p++;
        if (*p++ != '.')
            return false;
        for (size_t i = 0; i < sizeof replica_keys / sizeof replica_keys[0]; i++) {
            size_t l = strlen(replica_keys[i].path);
            if (strncmp(p, replica_keys[i].path, l) == 0 &&
                (p[l] == '\0' || (replica_keys[i].type == K_LIST && p[l] == '.')))
                return true;
        }
    }
    return false;
}

void
cfg_defaults(struct cfg *c)
{
    memset(c, 0, sizeof *c);
    str_copy(c->name, sizeof c->name, "georeg");
    str_copy(c->data_dir, sizeof c->data_dir, "./var");
    c->log_level = LOG_INFO;
    str_copy(c->listen, sizeof c->listen, "127.0.0.1:5000");
    c->max_connections = 4096;
    c->max_connections_per_address = 512;
    c->header_timeout_ms = 10000;
    c->idle_timeout_ms = 60000;
    c->body_timeout_ms = 60000;
    c->drain_timeout_ms = 30000;
    c->max_header_bytes = 16384;
    c->max_manifest_bytes = 4u << 20;
    c->inline_max = 64 * 1024;
    c->cache_bytes = 32u << 20;
    c->upload_max_age_s = 24 * 3600;
    c->upload_idle_timeout_s = 3600;
    c->max_uploads = 10000;
    c->max_uploads_per_identity = 1000;
    c->min_free = 64u << 20;
    c->primary = true;
    c->repl_window = 64;
    c->repl_chunk_bytes = 1u << 20;
    c->repl_log_retention = 1000000;
    c->repl_heartbeat_ms = 1000;
    c->repl_max_staleness_ms = 30000;
    c->etcd_ttl_ms = 5000;
    str_copy(c->etcd_prefix, sizeof c->etcd_prefix, "/georeg");
    c->sync_timeout_ms = 2000;
    c->admin_enabled = true;
    c->http_enabled = true;
    c->token_ttl_ms = 300000;
    c->auth_mode = -1; /* no default: none must be chosen, never fallen into */
    c->audit_retention_ms = 30ull * 86400 * 1000;
}

void
cfg_release(struct cfg *c)
{
    for (size_t i = 0; i < CFG_MAX_REPLICAS; i++) {
        list_clear(&c->replicas[i].include);
        list_clear(&c->replicas[i].exclude);
        list_clear(&c->replicas[i].include_tags);
        list_clear(&c->replicas[i].exclude_tags);
        list_clear(&c->regions[i].include);
        list_clear(&c->regions[i].exclude);
        list_clear(&c->regions[i].include_tags);
        list_clear(&c->regions[i].exclude_tags);
    }
    list_clear(&c->anonymous_pull);
    list_clear(&c->repl_primaries);
    list_clear(&c->etcd_endpoints);
    list_clear(&c->sync_names);
    list_clear(&c->http_allow);
    list_clear(&c->private_allow);
}

/* sync_replicas reads replication.sync.replicas: one whole number is a count
 * (replicas: 2), anything else names replicas (replicas: [us-east, ap-south]). Whether
 * the count or the names fit the configured replicas is replication's to check. */
static err
sync_replicas(struct cfg *c, char *why, size_t why_len)
{
    struct cfg_globs *g = &c->sync_names;
    c->sync_replicas = 0;
    if (g->n != 1)
        return ERR_OK;
    const char *v = g->items[0];
    if (*v == '-' || *v == '+') {
        snprintf(why, why_len,
                 "invalid value for replication.sync.replicas: \"%.80s\" (a count of 0 or "
                 "more, or a list of replica names)",
                 v);
        return ERR_CONFIG;
    }
    uint64_t u;
    if (!isdigit((unsigned char)*v))
        return ERR_OK; /* a name */
    if (!slice_parse_u64(slice_of_cstr(v), &u) || u > 0xffff) {
        snprintf(why, why_len, "invalid value for replication.sync.replicas: \"%.80s\"", v);
        return ERR_CONFIG;
    }
    c->sync_replicas = (unsigned)u;
    list_clear(g);
    return ERR_OK;
}

err
cfg_load(struct cfg *c, const char *path, char *why, size_t why_len)
{
    struct flat f = {0};
    err e = ERR_OK;
    why[0] = '\0';
    str_copy(c->config_path, sizeof c->config_path, path ? path : "");
    if (path) {
        FILE *fp = fopen(path, "r");
        if (!fp) {
            snprintf(why, why_len, "cannot open config %s", path);
            return ERR_CONFIG;
        }
        e = flatten_yaml(fp, &f, why, why_len);
        fclose(fp);
        if (e)
            goto out;
        for (size_t i = 0; i < f.n; i++) {
            if (!known_path(f.items[i].key)) {
                snprintf(why, why_len, "unknown config key %s", f.items[i].key);
                e = ERR_CONFIG;
                goto out;
            }
        }
    }
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if ((e = set_key(&keys[i], keys[i].path, &f, c, why, why_len)))
            goto out;
    /* replicas and regions: as many as the file or the environment name */
    for (size_t li = 0; li < 2; li++) {
        const char *pre = list_prefixes[li];
        struct cfg_replica *arr = li ? c->regions : c->replicas;
        size_t *count = li ? &c->nregions : &c->nreplicas;
        *count = 0;
        for (size_t r = 0; r < CFG_MAX_REPLICAS; r++) {
            char p[128], envp[160];
            snprintf(p, sizeof p, "%s%zu.name", pre, r);
            env_name(p, envp, sizeof envp);
            if (!flat_get(&f, p) && !getenv(envp))
                continue;
            struct cfg_replica *rep = &arr[*count];
            rep->eligible = true;
            for (size_t i = 0; i < sizeof replica_keys / sizeof replica_keys[0]; i++) {
                snprintf(p, sizeof p, "%s%zu.%s", pre, r, replica_keys[i].path);
                if ((e = set_key(&replica_keys[i], p, &f, rep, why, why_len)))
                    goto out;
            }
            if (!rep->name[0] || !rep->address[0]) {
                snprintf(why, why_len, "%s%zu needs name and address", pre, r);
                e = ERR_CONFIG;
                goto out;
            }
            for (size_t k = 0; k < *count; k++) {
                if (strcmp(arr[k].name, rep->name) == 0) {
                    snprintf(why, why_len, "%s%zu: the name %s is used twice", pre, r,
                             rep->name);
                    e = ERR_CONFIG;
                    goto out;
                }
            }
            (*count)++;
        }
    }
    if (c->nregions) {
        bool self = false, initial = !c->initial_primary[0];
        for (size_t k = 0; k < c->nregions; k++) {
            self = self || strcmp(c->regions[k].name, c->name) == 0;
            initial = initial || strcmp(c->regions[k].name, c->initial_primary) == 0;
        }
        if (!self) {
            snprintf(why, why_len, "node.name %s is not one of cluster.regions", c->name);
            e = ERR_CONFIG;
            goto out;
        }
        if (!initial) {
            snprintf(why, why_len, "cluster.initial_primary %s is not one of cluster.regions",
                     c->initial_primary);
            e = ERR_CONFIG;
            goto out;
        }
        if (c->nreplicas) {
            snprintf(why, why_len, "cluster.regions replaces replication.replicas: use one");
            e = ERR_CONFIG;
            goto out;
        }
    }
    if ((e = sync_replicas(c, why, why_len)))
        goto out;
    if (!c->http_enabled && !c->private_listen[0]) {
        snprintf(why, why_len, "http.enabled is false but no http.private.listen is set");
        e = ERR_CONFIG;
        goto out;
    }
    if (c->max_manifest_bytes < 1024 || c->max_header_bytes < 1024) {
        snprintf(why, why_len, "http.max_manifest_bytes and max_header_bytes must be >= 1 KiB");
        e = ERR_CONFIG;
    }
out:
    flat_free(&f);
    return e;
}

/* loopback_listen: a listen address only this machine can reach (127.x, localhost,
 * [::1]); 0.0.0.0, [::] and every other address are not. */
static bool
loopback_listen(const char *a)
{
    return strncmp(a, "127.", 4) == 0 || strncmp(a, "localhost:", 10) == 0 ||
           strncmp(a, "[::1]:", 6) == 0;
}

err
cfg_validate(const struct cfg *c, char *why, size_t why_len)
{
    err e = ERR_OK;
    /* plain HTTP only where configured: loopback, or http.insecure */
    const char *plain = c->http_enabled && !c->http_tls.cert[0] ? c->listen : NULL;
    if (!plain && c->private_listen[0] && !c->private_tls.cert[0])
        plain = c->private_listen;
    if (plain && !c->http_insecure && !loopback_listen(plain)) {
        snprintf(why, why_len,
                 "plain HTTP on %s: set http.tls (or http.insecure: true to allow plain HTTP)",
                 plain);
        e = ERR_CONFIG;
        return e;
    }
    if (c->auth_mode < 0) {
        snprintf(why, why_len,
                 "auth.mode is not set: choose token, basic or none (none: development "
                 "only, on loopback; GEOREG_AUTH_MODE or --auth set it too)");
        return ERR_CONFIG;
    }
    /* nobody authenticated on an address others can reach: only when asked for twice */
    if (c->auth_mode == 0 && !c->allow_none_off_loopback) {
        const char *open_at = NULL;
        if (c->http_enabled && !loopback_listen(c->listen))
            open_at = c->listen;
        else if (c->private_listen[0] && !loopback_listen(c->private_listen))
            open_at = c->private_listen;
        if (open_at) {
            snprintf(why, why_len,
                     "auth.mode none on %s, which is not loopback: anyone who reaches it may "
                     "push and delete. Use token or basic, or also set "
                     "auth.allow_none_off_loopback: true",
                     open_at);
            return ERR_CONFIG;
        }
    }
    return e;
}
