/* Client commands that talk to a running node's HTTP API: status, lag, wait. The
 * node is chosen with --url (or GEOREG_URL; default http://127.0.0.1:5000). */
#include "../../common/clock.h"
#include "cli.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../common/buf.h"
#include "../../common/digest.h"
#include "../../common/ref.h"
#include "../config.h"
#include "../../common/banned.h"

struct cli_opts {
    const char *url;
    bool json;
    const char *regions;
    uint64_t timeout_ms;
    const char *target; /* NAME:TAG or NAME@DIGEST */
    const char *user;
    char password[256];
    const char *ca;     /* CA bundle for https URLs */
    /* admin commands */
    const char *args[8];
    size_t nargs;
    const char *scopes[32];
    size_t nscopes;
    const char *roles[8];
    size_t nroles;
    const char *expires;
    const char *password_file;
    const char *query[8]; /* audit filters as key=value */
    size_t nquery;
    bool force;           /* promote --force */
    bool all;             /* conflicts --all */
    const char *resolve;  /* conflicts resolve: keep-new | take-old | retagged */
};

static const struct cli_opts *g_opts; /* the frozen options of this command run */

static size_t
on_data(char *ptr, size_t size, size_t n, void *arg)
{
    buf *b = arg;
    if (b->len + size * n > (64u << 20))
        return 0;
    buf_add(b, ptr, size * n);
    return size * n;
}

/* http_call performs method on url (with a JSON body when given) into body; returns
 * the HTTP status or -1 (message on stderr). Credentials and CA come from the
 * command's options. */
static long
http_call(const char *method, const char *url, const char *json, buf *body, long timeout_s)
{
    CURL *c = curl_easy_init();
    long status = -1;
    struct curl_slist *hdrs = NULL;
    if (!c)
        return -1;
    buf_reset(body);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, timeout_s);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 5L);
    if (json) {
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, json);
    }
    if (g_opts && g_opts->user && g_opts->password[0]) {
        curl_easy_setopt(c, CURLOPT_USERNAME, g_opts->user);
        curl_easy_setopt(c, CURLOPT_PASSWORD, g_opts->password);
    }
    if (g_opts && g_opts->ca)
        curl_easy_setopt(c, CURLOPT_CAINFO, g_opts->ca);
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    else
        fprintf(stderr, "georeg: %s: %s\n", url, curl_easy_strerror(rc));
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    return status;
}

static long
http_get(const char *url, buf *body, long timeout_s)
{
    return http_call("GET", url, NULL, body, timeout_s);
}

static const char *
jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static double
jnum(json_t *o, const char *k)
{
    return json_number_value(json_object_get(o, k));
}

static json_t *
fetch_replication(const struct cli_opts *o)
{
    buf url = BUF_INIT, body = BUF_INIT;
    buf_addf(&url, "%s/_georeg/v1/replication", o->url);
    long st = http_get(url.ptr, &body, 30);
    json_t *j = NULL;
    if (st == 200) {
        json_error_t je;
        j = json_loadb(body.ptr, body.len, 0, &je);
        if (!j)
            fprintf(stderr, "georeg: invalid JSON from %s\n", url.ptr);
    } else if (st > 0) {
        fprintf(stderr, "georeg: %s answered %ld: %s\n", url.ptr, st, body.ptr);
    }
    buf_release(&url);
    buf_release(&body);
    return j;
}

static void
human_bytes(double b, char *out, size_t n)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (b >= 1024 && i < 4) {
        b /= 1024;
        i++;
    }
    snprintf(out, n, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

static void
print_replicas(json_t *j)
{
    json_t *reps = json_object_get(j, "replicas");
    printf("%-16s %-12s %10s %10s %10s %9s %12s %s\n", "REPLICA", "STATE", "ACKED", "LAG_EVENTS",
           "LAG_BYTES", "LAG_SEC", "THROUGHPUT", "LAST_CONTACT");
    size_t i;
    json_t *r;
    json_array_foreach(reps, i, r)
    {
        char lb[32], tp[32], contact[48];
        human_bytes(jnum(r, "lag_bytes"), lb, sizeof lb);
        human_bytes(jnum(r, "throughput_bytes_per_second"), tp, sizeof tp);
        json_t *ago = json_object_get(r, "last_contact_seconds_ago");
        if (json_is_number(ago))
            snprintf(contact, sizeof contact, "%.1fs ago", json_number_value(ago));
        else
            snprintf(contact, sizeof contact, "never");
        printf("%-16s %-12s %10.0f %10.0f %10s %9.1f %10s/s %s\n", jstr(r, "name"),
               jstr(r, "state"), jnum(r, "acked_seq"), jnum(r, "lag_events"), lb,
               jnum(r, "lag_seconds"), tp, contact);
        json_t *rs = json_object_get(r, "resync");
        if (!strcmp(jstr(r, "state"), "resyncing") && rs) {
            char a[32], b[32];
            human_bytes(jnum(rs, "sent_bytes"), a, sizeof a);
            human_bytes(jnum(rs, "total_bytes"), b, sizeof b);
            printf("%-16s   resync progress %s of %s\n", "", a, b);
        }
        if (jstr(r, "last_error")[0])
            printf("%-16s   last error: %s\n", "", jstr(r, "last_error"));
    }
}

static int
cmd_status(const struct cli_opts *o, bool lag_only)
{
    json_t *j = fetch_replication(o);
    if (!j)
        return 2;
    if (o->json) {
        char *s = json_dumps(j, JSON_INDENT(2));
        printf("%s\n", s ? s : "{}");
        free(s);
        json_decref(j);
        return 0;
    }
    bool primary = !strcmp(jstr(j, "role"), "primary");
    if (!lag_only) {
        printf("node      %s\nrole      %s%s\nepoch     %.0f\n", jstr(j, "node"), jstr(j, "role"),
               json_is_true(json_object_get(j, "writable")) ? " (accepting pushes)"
                                                           : " (read-only)",
               jnum(j, "epoch"));
        if (primary)
            printf("head seq  %.0f (log from %.0f)\n", jnum(j, "head_seq"),
                   jnum(j, "log_first_seq"));
    }
    if (primary) {
        if (!lag_only)
            printf("\n");
        print_replicas(j);
    } else {
        json_t *st = json_object_get(j, "staleness_seconds");
        printf("%-16s %-12s %10s %12s %10s %s\n", "NODE", "STATE", "APPLIED", "PRIMARY_HEAD",
               "STALE_SEC", "PRIMARY");
        char stale[32];
        if (json_is_number(st))
            snprintf(stale, sizeof stale, "%.1f", json_number_value(st));
        else
            snprintf(stale, sizeof stale, "unknown");
        printf("%-16s %-12s %10.0f %12.0f %10s %s %s\n", jstr(j, "node"), jstr(j, "state"),
               jnum(j, "applied_seq"), jnum(j, "primary_head_seq"), stale, jstr(j, "primary"),
               jstr(j, "primary_url"));
    }
    json_decref(j);
    return 0;
}


static int
cmd_wait(const struct cli_opts *o)
{
    /* NAME:TAG or NAME@DIGEST; the tag is after the last ':' that follows the last '/' */
    char name[REF_NAME_MAX + 1], ref[DIGEST_MAX];
    const char *t = o->target;
    const char *at = strchr(t, '@');
    const char *slash = strrchr(t, '/');
    const char *colon = strrchr(slash ? slash : t, ':');
    const char *sep = at ? at : colon;
    if (!sep || !str_copy_slice(name, sizeof name, (slice){t, (size_t)(sep - t)}) ||
        !str_copy(ref, sizeof ref, sep + 1) || !ref_name_valid(slice_of_cstr(name))) {
        fprintf(stderr, "georeg wait: expected NAME:TAG or NAME@DIGEST, got %s\n", t);
        return 2;
    }
    uint64_t deadline = clock_mono_ms() + o->timeout_ms;
    buf url = BUF_INIT, body = BUF_INIT;
    int rc = 1;
    for (;;) {
        uint64_t now = clock_mono_ms();
        uint64_t left = deadline > now ? deadline - now : 0;
        uint64_t w = left > 30000 ? 30000 : left;
        buf_reset(&url);
        buf_addf(&url, "%s/_georeg/v1/locate/%s/manifests/%s?wait=%llums", o->url, name, ref,
                 (unsigned long long)w);
        if (o->regions)
            buf_addf(&url, "&regions=%s", o->regions);
        long st = http_get(url.ptr, &body, (long)(w / 1000) + 10);
        if (st == 200) {
            json_error_t je;
            json_t *j = json_loadb(body.ptr, body.len, 0, &je);
            bool done = j && json_is_true(json_object_get(j, "complete"));
            if (done || clock_mono_ms() >= deadline) {
                json_t *regs = json_object_get(j, "regions");
                size_t i;
                json_t *r;
                json_array_foreach(regs, i, r)
                {
                    printf("%-16s %s\n", jstr(r, "name"),
                           json_is_true(json_object_get(r, "holds"))       ? "has it"
                           : !json_is_true(json_object_get(r, "known"))    ? "unknown region"
                           : !json_is_true(json_object_get(r, "included")) ? "excluded by filter"
                                                                            : "not yet");
                }
                if (done)
                    printf("%s:%s (%s) is in every requested region\n", name, ref,
                           jstr(j, "digest"));
                else
                    fprintf(stderr, "georeg wait: timed out\n");
                rc = done ? 0 : 1;
                json_decref(j);
                break;
            }
            json_decref(j);
        } else if (st == 404 && clock_mono_ms() < deadline) {
            usleep(200000); /* not pushed yet */
        } else if (st < 0 && clock_mono_ms() < deadline) {
            usleep(500000);
        } else {
            if (st > 0)
                fprintf(stderr, "georeg wait: %ld %s\n", st, body.ptr);
            else
                fprintf(stderr, "georeg wait: timed out\n");
            rc = st == 404 || st < 0 ? 1 : 2;
            break;
        }
    }
    buf_release(&url);
    buf_release(&body);
    return rc;
}

/* api_error prints the OCI error message of a failed call. */
static int
api_error(const char *what, long st, const buf *body)
{
    json_error_t je;
    json_t *j = st > 0 ? json_loadb(body->ptr, body->len, 0, &je) : NULL;
    json_t *e0 = json_array_get(json_object_get(j, "errors"), 0);
    if (e0)
        fprintf(stderr, "georeg %s: %s (%s)\n", what, jstr(e0, "message"), jstr(e0, "code"));
    else if (st > 0)
        fprintf(stderr, "georeg %s: HTTP %ld\n", what, st);
    json_decref(j);
    return st == 401 || st == 403 ? 3 : 1;
}

/* identity_body builds the JSON of a create call. */
static void
identity_body(const struct cli_opts *o, const char *name, const char *password, buf *b)
{
    buf_adds(b, "{\"name\":");
    buf_add_json_str(b, name, strlen(name));
    if (password) {
        buf_adds(b, ",\"password\":");
        buf_add_json_str(b, password, strlen(password));
    }
    if (o->expires) {
        buf_adds(b, ",\"expires\":");
        buf_add_json_str(b, o->expires, strlen(o->expires));
    }
    buf_adds(b, ",\"roles\":[");
    for (size_t i = 0; i < o->nroles; i++) {
        if (i)
            buf_addc(b, ',');
        buf_add_json_str(b, o->roles[i], strlen(o->roles[i]));
    }
    buf_adds(b, "],\"scopes\":[");
    for (size_t i = 0; i < o->nscopes; i++) {
        if (i)
            buf_addc(b, ',');
        buf_add_json_str(b, o->scopes[i], strlen(o->scopes[i]));
    }
    buf_adds(b, "]}");
}

static bool
read_secret_file(const char *path, char *out, size_t n)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    bool ok = fgets(out, (int)n, f) != NULL;
    fclose(f);
    if (ok)
        out[strcspn(out, "\r\n")] = '\0';
    return ok;
}

static void
print_identities(const buf *body, bool json)
{
    if (json) {
        printf("%s\n", body->ptr);
        return;
    }
    json_error_t je;
    json_t *j = json_loadb(body->ptr, body->len, 0, &je);
    printf("%-24s %-6s %-9s %-12s %s\n", "NAME", "KIND", "STATE", "EXPIRES", "GRANTS");
    size_t i;
    json_t *id;
    json_array_foreach(j, i, id)
    {
        char exp[32] = "never";
        json_int_t e = json_integer_value(json_object_get(id, "expires"));
        if (e) {
            time_t t = (time_t)e;
            struct tm tm;
            gmtime_r(&t, &tm);
            strftime(exp, sizeof exp, "%Y-%m-%d", &tm);
        }
        buf g = BUF_INIT;
        size_t k;
        json_t *gr;
        json_array_foreach(json_object_get(id, "grants"), k, gr)
            buf_addf(&g, "%s%s:%s", k ? " " : "", jstr(gr, "repo"), jstr(gr, "actions"));
        bool off = json_is_true(json_object_get(id, "disabled"));
        printf("%-24s %-6s %-9s %-12s %s\n", jstr(id, "name"), jstr(id, "kind"),
               off ? (strcmp(jstr(id, "kind"), "token") ? "disabled" : "revoked") : "active", exp,
               g.ptr);
        buf_release(&g);
    }
    json_decref(j);
}

/* cmd_identity: user|token|sp create/add, list, delete, revoke, disable, enable. */
static int
cmd_identity(const char *cmd, const struct cli_opts *o)
{
    const char *kind_path = !strcmp(cmd, "user") ? "users"
                            : !strcmp(cmd, "token") ? "tokens"
                                                    : "service-principals";
    const char *verb = o->nargs ? o->args[0] : "list";
    const char *name = o->nargs > 1 ? o->args[1] : NULL;
    buf url = BUF_INIT, body = BUF_INIT, req = BUF_INIT;
    int rc = 0;
    long st;
    if (!strcmp(verb, "list")) {
        buf_addf(&url, "%s/_georeg/v1/%s", o->url, kind_path);
        st = http_get(url.ptr, &body, 30);
        if (st == 200)
            print_identities(&body, o->json);
        else
            rc = api_error(cmd, st, &body);
    } else if (!strcmp(verb, "add") || !strcmp(verb, "create")) {
        char pw[256] = "";
        if (!name) {
            fprintf(stderr, "usage: georeg %s %s NAME [--scope GLOB:ACTIONS]... [--role R]... "
                            "[--expires 30d]%s\n",
                    cmd, verb, !strcmp(cmd, "user") ? " [--new-password-file F]" : "");
            rc = 2;
            goto out;
        }
        if (o->password_file && !read_secret_file(o->password_file, pw, sizeof pw)) {
            fprintf(stderr, "georeg %s: cannot read %s\n", cmd, o->password_file);
            rc = 2;
            goto out;
        }
        identity_body(o, name, pw[0] ? pw : NULL, &req);
        memset(pw, 0, sizeof pw);
        buf_addf(&url, "%s/_georeg/v1/%s", o->url, kind_path);
        st = http_call("POST", url.ptr, req.ptr, &body, 30);
        if (st != 201) {
            rc = api_error(cmd, st, &body);
            goto out;
        }
        json_error_t je;
        json_t *j = json_loadb(body.ptr, body.len, 0, &je);
        const char *secret = jstr(j, "secret");
        printf("created %s %s\n", cmd, jstr(j, "name"));
        if (json_integer_value(json_object_get(j, "expires"))) {
            time_t t = (time_t)json_integer_value(json_object_get(j, "expires"));
            struct tm tm;
            gmtime_r(&t, &tm);
            char e[40];
            strftime(e, sizeof e, "%Y-%m-%dT%H:%M:%SZ", &tm);
            printf("expires %s\n", e);
        }
        if (secret[0]) {
            /* shown once: the secret alone on the last line, for scripts */
            printf("the secret is shown only now; use it as the password of %s\n%s\n",
                   jstr(j, "name"), secret);
        }
        json_decref(j);
    } else if (!strcmp(verb, "delete") || !strcmp(verb, "revoke") || !strcmp(verb, "disable") ||
               !strcmp(verb, "enable")) {
        if (!name) {
            fprintf(stderr, "usage: georeg %s %s NAME\n", cmd, verb);
            rc = 2;
            goto out;
        }
        bool del = !strcmp(verb, "delete");
        buf_addf(&url, "%s/_georeg/v1/%s/%s%s%s", o->url, kind_path, name, del ? "" : "/",
                 del ? "" : verb);
        st = http_call(del ? "DELETE" : "POST", url.ptr, NULL, &body, 30);
        if (st != 204)
            rc = api_error(cmd, st, &body);
        else
            printf("%s %s: %s\n", cmd, name, del ? "deleted" : verb);
    } else {
        fprintf(stderr, "georeg %s: unknown action %s\n", cmd, verb);
        rc = 2;
    }
out:
    buf_release(&url);
    buf_release(&body);
    buf_release(&req);
    return rc;
}

static int
cmd_audit(const struct cli_opts *o)
{
    buf url = BUF_INIT, body = BUF_INIT;
    buf_addf(&url, "%s/_georeg/v1/audit?format=jsonl", o->url);
    for (size_t i = 0; i < o->nquery; i++)
        buf_addf(&url, "&%s", o->query[i]);
    long st = http_get(url.ptr, &body, 60);
    int rc = 0;
    if (st == 200)
        fwrite(body.ptr, 1, body.len, stdout);
    else
        rc = api_error("audit", st, &body);
    buf_release(&url);
    buf_release(&body);
    return rc;
}

/* cmd_fence: `georeg fence [--clear|--set]` shows, clears or sets the primary's fence. */
static int
cmd_fence(const struct cli_opts *o)
{
    buf url = BUF_INIT, body = BUF_INIT;
    buf_addf(&url, "%s/_georeg/v1/replication/fence", o->url);
    const char *t = o->target ? o->target : "";
    long st = !strcmp(t, "clear") ? http_call("DELETE", url.ptr, NULL, &body, 30)
              : !strcmp(t, "set") ? http_call("POST", url.ptr, NULL, &body, 30)
                                  : http_get(url.ptr, &body, 30);
    int rc = 0;
    if (st == 200) {
        fwrite(body.ptr, 1, body.len, stdout);
        fputc('\n', stdout);
    } else {
        rc = api_error("fence", st, &body);
    }
    buf_release(&url);
    buf_release(&body);
    return rc;
}

/* cmd_promote: `georeg promote [--force]` makes the node at --url the primary. The
 * node's report (what each region holds, what would be lost, why it refused) is
 * printed either way; exit 1 when it refused. */
static int
cmd_promote(const struct cli_opts *o)
{
    buf url = BUF_INIT, body = BUF_INIT;
    buf_addf(&url, "%s/_georeg/v1/promote%s", o->url, o->force ? "?force=true" : "");
    long st = http_call("POST", url.ptr, NULL, &body, 60);
    int rc = 0;
    json_t *j = st > 0 ? json_loadb(body.ptr, body.len, 0, NULL) : NULL;
    if (o->json || !j || !json_object_get(j, "regions")) {
        fwrite(body.ptr, 1, body.len, stdout);
        fputc('\n', stdout);
    } else {
        bool ok = json_is_true(json_object_get(j, "promoted"));
        printf("%s %s at epoch %.0f\n", jstr(j, "node"), ok ? "PROMOTED" : "NOT PROMOTED",
               jnum(j, "epoch"));
        json_t *reasons = json_object_get(j, ok ? "overridden" : "refused"), *x;
        size_t i;
        json_array_foreach(reasons, i, x) printf("  %s: %s\n", ok ? "overridden" : "refused",
                                                 json_string_value(x));
        printf("%-12s %-10s %-10s %6s %12s %10s %9s  %s\n", "REGION", "REACHABLE", "ROLE",
               "EPOCH", "APPLIED", "FORK", "AHEAD_BY", "ERROR");
        json_array_foreach(json_object_get(j, "regions"), i, x)
        {
            bool reach = json_is_true(json_object_get(x, "reachable"));
            printf("%-12s %-10s %-10s %6.0f %12.0f %10.0f %9.0f  %s\n", jstr(x, "name"),
                   reach ? "yes" : "no", reach ? jstr(x, "role") : "-", jnum(x, "epoch"),
                   jnum(x, "applied_seq"), jnum(x, "fork_seq"), jnum(x, "ahead_by"),
                   jstr(x, "error"));
        }
        printf("applied here %.0f; the old primary last said its head was %.0f (%.0f behind)\n",
               jnum(j, "applied_seq"), jnum(j, "last_primary_head"),
               jnum(j, "behind_last_primary"));
    }
    if (st != 200)
        rc = st == 409 || st == 403 ? 1 : api_error("promote", st, &body);
    json_decref(j);
    buf_release(&url);
    buf_release(&body);
    return rc;
}

/* cmd_conflicts: `georeg conflicts [--json] [--all]` lists the tag conflicts this
 * node found after its log went past a fork point; `georeg conflicts resolve REPORT N
 * --keep-new|--take-old|--retagged` records an operator's decision. */
static int
cmd_conflicts(const struct cli_opts *o)
{
    buf url = BUF_INIT, body = BUF_INIT;
    long st;
    int rc = 0;
    if (o->target && !strcmp(o->target, "resolve")) {
        if (o->nargs != 2 || !o->resolve) {
            fprintf(stderr, "usage: georeg conflicts resolve REPORT N "
                            "--keep-new|--take-old|--retagged\n");
            return 2;
        }
        buf_addf(&url, "%s/_georeg/v1/conflicts/%s/%s?resolve=%s", o->url, o->args[0],
                 o->args[1], o->resolve);
        st = http_call("POST", url.ptr, NULL, &body, 30);
    } else {
        buf_addf(&url, "%s/_georeg/v1/conflicts%s", o->url, o->all ? "?all=true" : "");
        st = http_get(url.ptr, &body, 30);
    }
    json_t *j = st == 200 ? json_loadb(body.ptr, body.len, 0, NULL) : NULL;
    if (st != 200) {
        rc = api_error("conflicts", st, &body);
    } else if (o->json || !j || !json_object_get(j, "conflicts")) {
        fwrite(body.ptr, 1, body.len, stdout);
        fputc('\n', stdout);
    } else {
        json_t *x;
        size_t i;
        printf("%-15s %-3s %-30s %-20s %-19s %-19s %s\n", "REPORT", "N", "REPOSITORY", "TAG",
               "OLD", "NEW", "STATUS");
        json_array_foreach(json_object_get(j, "conflicts"), i, x)
        {
            const char *nw = jstr(x, "new_digest");
            printf("%-15.0f %-3.0f %-30s %-20s %-19.19s %-19.19s %s\n", jnum(x, "report"),
                   jnum(x, "n"), jstr(x, "repo"), jstr(x, "tag"), jstr(x, "old_digest"),
                   *nw ? nw : "(none)", jstr(x, "status"));
        }
        json_array_foreach(json_object_get(j, "divergences"), i, x)
            printf("divergence %.0f: %.0f events beyond seq %.0f (epoch %.0f -> %.0f, primary "
                   "%s)\n",
                   jnum(x, "id"), jnum(x, "lost_events"), jnum(x, "fork_seq"), jnum(x, "epoch"),
                   jnum(x, "new_epoch"), jstr(x, "primary"));
    }
    json_decref(j);
    buf_release(&url);
    buf_release(&body);
    return rc;
}

int
cli_main(const char *cmd, int argc, char **argv)
{
    bool is_status = !strcmp(cmd, "status"), is_lag = !strcmp(cmd, "lag"),
         is_wait = !strcmp(cmd, "wait"), is_audit = !strcmp(cmd, "audit");
    bool is_ident = !strcmp(cmd, "user") || !strcmp(cmd, "token") || !strcmp(cmd, "sp");
    bool is_fence = !strcmp(cmd, "fence");
    bool is_promote = !strcmp(cmd, "promote"), is_conflicts = !strcmp(cmd, "conflicts");
    if (!is_status && !is_lag && !is_wait && !is_ident && !is_audit && !is_fence &&
        !is_promote && !is_conflicts)
        return -1;
    static struct cli_opts o;
    memset(&o, 0, sizeof o);
    o.url = getenv("GEOREG_URL");
    o.timeout_ms = 60000;
    o.user = getenv("GEOREG_USER");
    o.ca = getenv("GEOREG_CA");
    if (getenv("GEOREG_PASSWORD"))
        str_copy(o.password, sizeof o.password, getenv("GEOREG_PASSWORD"));
    if (!o.url)
        o.url = "http://127.0.0.1:5000";
    g_opts = &o;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--url") && v) {
            o.url = v;
            i++;
        } else if (!strcmp(a, "--json")) {
            o.json = true;
        } else if (is_promote && !strcmp(a, "--force")) {
            o.force = true;
        } else if (is_conflicts && !strcmp(a, "--all")) {
            o.all = true;
        } else if (is_conflicts &&
                   (!strcmp(a, "--keep-new") || !strcmp(a, "--take-old") ||
                    !strcmp(a, "--retagged"))) {
            o.resolve = a + 2;
        } else if (!strcmp(a, "--regions") && v) {
            o.regions = v;
            i++;
        } else if (!strcmp(a, "--timeout") && v) {
            if (!cfg_parse_duration(v, &o.timeout_ms)) {
                fprintf(stderr, "georeg: invalid --timeout %s\n", v);
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--user") && v) {
            o.user = v;
            i++;
        } else if (!strcmp(a, "--password-file") && v) {
            if (!read_secret_file(v, o.password, sizeof o.password)) {
                fprintf(stderr, "georeg: cannot read %s\n", v);
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--ca") && v) {
            o.ca = v;
            i++;
        } else if (!strcmp(a, "--scope") && v && o.nscopes < 32) {
            o.scopes[o.nscopes++] = v;
            i++;
        } else if (!strcmp(a, "--role") && v && o.nroles < 8) {
            o.roles[o.nroles++] = v;
            i++;
        } else if (!strcmp(a, "--expires") && v) {
            o.expires = v;
            i++;
        } else if (!strcmp(a, "--new-password-file") && v) {
            o.password_file = v;
            i++;
        } else if (is_audit && v && o.nquery < 8 &&
                   (!strcmp(a, "--since") || !strcmp(a, "--until") || !strcmp(a, "--repo") ||
                    !strcmp(a, "--actor") || !strcmp(a, "--action") || !strcmp(a, "--limit"))) {
            static char qs[8][300];
            snprintf(qs[o.nquery], sizeof qs[0], "%s=%s", a + 2, v);
            o.query[o.nquery] = qs[o.nquery];
            o.nquery++;
            i++;
        } else if (a[0] != '-' && (is_ident || (is_conflicts && o.target)) && o.nargs < 8) {
            o.args[o.nargs++] = a;
        } else if (a[0] != '-' && !o.target) {
            o.target = a;
        } else {
            fprintf(stderr, "georeg %s: unknown or incomplete option %s\n", cmd, a);
            return 2;
        }
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc;
    if (is_fence) {
        rc = cmd_fence(&o);
    } else if (is_promote) {
        rc = cmd_promote(&o);
    } else if (is_conflicts) {
        rc = cmd_conflicts(&o);
    } else if (is_ident) {
        rc = cmd_identity(cmd, &o);
    } else if (is_audit) {
        rc = cmd_audit(&o);
    } else if (is_wait) {
        if (!o.target) {
            fprintf(stderr, "usage: georeg wait NAME:TAG --regions a,b [--timeout 60s]\n");
            rc = 2;
        } else {
            rc = cmd_wait(&o);
        }
    } else {
        rc = cmd_status(&o, is_lag);
    }
    curl_global_cleanup();
    memset(o.password, 0, sizeof o.password);
    return rc;
}
