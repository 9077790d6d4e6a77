/* Access control glue for requests (who is asking, may they), the token endpoint,
 * the identity admin API and the audit log (an in-memory queue flushed to the store
 * off the request path). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../common/clock.h"
#include "../../common/log.h"
#include "../../common/ref.h"
#include "../../replication/repl.h"
#include "auth.h"
#include "../config.h"
#include "../node.h"
#include "../../common/banned.h"

#define AUDIT_QUEUE_MAX (8u << 20) /* bytes of entries waiting for a flush */

struct access {
    char repo[REF_NAME_MAX + 1];
    char repo2[REF_NAME_MAX + 1];
    unsigned actions, actions2;
    bool login;
    bool identified;
    struct auth_principal who;
    char claimed[64]; /* the user name a token request's form claimed (never verified) */
};

/* ---- audit ---- */

void
audit_log(struct node *n, struct http_req *r, const char *action, const char *repo,
          const char *ref, const char *digest, int status, const char *detail)
{
    uint64_t now_us = clock_wall_us();
    time_t sec = (time_t)(now_us / 1000000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    char iso[48];
    size_t il = strftime(iso, sizeof iso, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(iso + il, sizeof iso - il, ".%06ldZ", (long)(now_us % 1000000));
    const char *actor = access_actor(r);
    buf b = BUF_INIT;
    buf_addf(&b, "{\"ts\":\"%s\",\"actor\":", iso);
    buf_add_json_str(&b, actor, strlen(actor));
    buf_adds(&b, ",\"addr\":");
    buf_add_json_str(&b, r ? r->peer : "", r ? strlen(r->peer) : 0);
    buf_adds(&b, ",\"action\":");
    buf_add_json_str(&b, action, strlen(action));
    /* a login that failed: the name it claimed (Basic credentials or a token form),
     * never the secret */
    char claimed[128] = "";
    if (r && !strcmp(actor, "-") && status >= 400 &&
        !auth_basic_user(http_req_header(r, "authorization"), claimed, sizeof claimed) &&
        r->access)
        str_copy(claimed, sizeof claimed, ((struct access *)r->access)->claimed);
    const char *fields[][2] = {{"repo", repo}, {"ref", ref},         {"digest", digest},
                               {"detail", detail}, {"claimed", claimed}};
    for (size_t i = 0; i < 5; i++) {
        if (!fields[i][1] || !fields[i][1][0])
            continue;
        buf_addf(&b, ",\"%s\":", fields[i][0]);
        buf_add_json_str(&b, fields[i][1], strlen(fields[i][1]));
    }
    buf_addf(&b, ",\"status\":%d,\"result\":\"%s\"}\n", status,
             status < 400 ? "ok" : status == 401 || status == 403 ? "denied" : "failed");
    pthread_mutex_lock(&n->audit_mu);
    if (n->audit_queue.len + b.len <= AUDIT_QUEUE_MAX)
        buf_add(&n->audit_queue, b.ptr, b.len);
    else
        n->audit_dropped++;
    pthread_mutex_unlock(&n->audit_mu);
    buf_release(&b);
}

/* audit_append writes k entries; what the store refuses (a full disk) is counted. */
static void
audit_append(struct node *n, const slice *items, size_t k)
{
    if (!k)
        return;
    err e = store_audit_append(n->store, items, k);
    if (e) {
        atomic_fetch_add(&n->audit_dropped_total, k);
        log_warn("AUDIT-DROPPED", "entries=%zu reason=%s", k, err_name(e));
    }
}

void
audit_flush(struct node *n)
{
    buf q = BUF_INIT;
    pthread_mutex_lock(&n->audit_flush_mu); /* one flusher at a time keeps the order */
    pthread_mutex_lock(&n->audit_mu);
    q = n->audit_queue;
    buf_init(&n->audit_queue);
    uint64_t dropped = n->audit_dropped;
    n->audit_dropped = 0;
    pthread_mutex_unlock(&n->audit_mu);
    if (dropped) {
        log_warn("AUDIT-DROPPED", "entries=%llu reason=queue_full", (unsigned long long)dropped);
        atomic_fetch_add(&n->audit_dropped_total, dropped);
    }
    slice items[512];
    size_t k = 0;
    const char *p = q.ptr, *end = q.ptr + q.len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            break;
        items[k++] = (slice){p, (size_t)(nl - p)};
        if (k == 512) {
            audit_append(n, items, k);
            k = 0;
        }
        p = nl + 1;
    }
    audit_append(n, items, k);
    pthread_mutex_unlock(&n->audit_flush_mu);
    buf_release(&q);
}

/* ---- who is asking ---- */

const char *
access_actor(struct http_req *r)
{
    struct access *ac = r ? r->access : NULL;
    if (!ac || !ac->identified)
        return "-";
    return ac->who.name;
}

const struct auth_principal *
access_who(struct http_req *r)
{
    struct access *ac = r->access;
    return ac && ac->identified ? &ac->who : NULL;
}

/* retry_after tells a slowed-down client how long its address stays blocked (the
 * block grows with repeated failures, so a fixed value would be wrong). */
static void
retry_after(struct http_req *r)
{
    struct node *n = r->app;
    uint64_t s = auth_retry_after(n->auth, r->peer);
    http_resp_header(r, "Retry-After", "%llu", (unsigned long long)(s ? s : 1));
}

/* public_why: what a client is told about a failed login. Wrong passwords, disabled,
 * revoked and expired accounts all read the same, so a guesser learns nothing; the
 * audit log keeps the real reason. */
static const char *
public_why(const char *why)
{
    if (why && (!strcmp(why, "token revoked") || !strcmp(why, "account disabled") ||
                !strcmp(why, "credentials expired")))
        return "unknown user or wrong password";
    return why;
}

/* decide answers the request when it may not proceed; true when it may. */
static bool
decide(struct http_req *r, err e, const char *why)
{
    struct node *n = r->app;
    struct access *ac = r->access;
    char chal[900];
    if (e == ERR_TOOMANYREQUESTS) {
        http_resp_error(r, e, why, NULL);
        retry_after(r);
        audit_log(n, r, "login", NULL, NULL, NULL, 429, why);
        return false;
    }
    if (e) {
        auth_challenge(n->auth, ac->repo[0] ? ac->repo : NULL, ac->actions, false, chal,
                       sizeof chal);
        http_resp_error(r, ERR_UNAUTHORIZED, public_why(why), NULL);
        http_resp_header(r, "WWW-Authenticate", "%s", chal);
        audit_log(n, r, "login", NULL, NULL, NULL, 401, why);
        return false;
    }
    ac->identified = true;
    bool ok = true;
    if (ac->login && ac->who.anonymous)
        ok = false;
    if (ok && ac->actions && !auth_allows(n->auth, &ac->who, ac->repo[0] ? ac->repo : NULL, ac->actions))
        ok = false;
    if (ok && ac->actions2 && !auth_allows(n->auth, &ac->who, ac->repo2, ac->actions2))
        ok = false;
    if (ok)
        return true;
    slice authz = http_req_header(r, "authorization");
    bool bearer = authz.ptr && authz.len > 7 && slice_case_eq_cstr((slice){authz.ptr, 7}, "bearer ");
    if (ac->who.anonymous || bearer) {
        /* ask for (new) credentials with the scope this request needs */
        auth_challenge(n->auth, ac->repo[0] ? ac->repo : NULL, ac->actions,
                       !ac->who.anonymous, chal, sizeof chal);
        http_resp_error(r, ERR_UNAUTHORIZED,
                        ac->who.anonymous ? "authentication required"
                                          : "the token does not grant this access",
                        ac->repo[0] ? ac->repo : NULL);
        http_resp_header(r, "WWW-Authenticate", "%s", chal);
        if (!ac->who.anonymous)
            audit_log(n, r, "denied", ac->repo, NULL, NULL, 401, "insufficient scope");
    } else {
        http_resp_error(r, ERR_DENIED, NULL, ac->repo[0] ? ac->repo : NULL);
        audit_log(n, r, "denied", ac->repo, NULL, NULL, 403, NULL);
    }
    return false;
}

/* access_step finishes an identification that needed the pool, then chains to the
 * request's own pre_body step. */
static err
access_step(struct http_req *r, bool nowait)
{
    struct node *n = r->app;
    struct access *ac = r->access;
    const char *why = NULL;
    (void)nowait;
    err e = auth_identify(n->auth, http_req_header(r, "authorization"), r->peer, false, &ac->who,
                          &why);
    if (!decide(r, e, why))
        return ERR_OK;
    if (r->pre_body_next)
        return r->pre_body_next(r, false);
    return ERR_OK;
}

bool
access_require(struct http_req *r, const char *repo, unsigned actions, const char *repo2,
               unsigned actions2, bool login)
{
    struct node *n = r->app;
    if (auth_get_mode(n->auth) == AUTH_NONE)
        return true;
    struct access *ac = calloc(1, sizeof *ac);
    if (!ac) {
        http_resp_error(r, ERR_NOMEM, NULL, NULL);
        return false;
    }
    free(r->access);
    r->access = ac;
    str_copy(ac->repo, sizeof ac->repo, repo ? repo : "");
    str_copy(ac->repo2, sizeof ac->repo2, repo2 ? repo2 : "");
    ac->actions = actions;
    ac->actions2 = actions2;
    ac->login = login;
    const char *why = NULL;
    err e = auth_identify(n->auth, http_req_header(r, "authorization"), r->peer, true, &ac->who,
                          &why);
    if (e == ERR_WOULDBLOCK) {
        /* a secret to hash or identities to reload: on the pool, before anything else */
        r->pre_body_next = r->pre_body;
        r->pre_body = access_step;
        return true;
    }
    return decide(r, e, why);
}

/* ---- token endpoint ---- */

#define TOKEN_FORM_MAX 8192 /* bytes of a POST /_georeg/v1/token form */
#define TOKEN_SCOPES_MAX 32

/* A token request's parameters: from the query (GET, Docker's flow: only service and
 * scope are read, credentials come in the Authorization header) or from the form
 * body (POST, the OAuth2 flow of containerd, BuildKit and docker with refresh tokens). */
struct token_params {
    char grant_type[32];
    char username[128];
    char password[512];
    char refresh_token[128];
    char service[128];
    char client_id[128];
    char access_type[16];
    char *scopes[TOKEN_SCOPES_MAX]; /* owned, each a single scope */
    size_t nscopes;
};

static void
token_params_release(struct token_params *tp)
{
    for (size_t i = 0; i < tp->nscopes; i++)
        free(tp->scopes[i]);
    tp->nscopes = 0;
    explicit_bzero(tp->password, sizeof tp->password);
    explicit_bzero(tp->refresh_token, sizeof tp->refresh_token);
}

static int
hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* form_decode decodes one application/x-www-form-urlencoded name or value ('+' is a
 * space, %XX a byte) into out (n bytes with NUL); false on a broken %-escape, a NUL
 * byte or a value longer than out. */
static bool
form_decode(slice v, char *out, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; i < v.len; i++) {
        char ch = v.ptr[i];
        if (ch == '%') {
            if (v.len - i < 3 || hex_digit(v.ptr[i + 1]) < 0 || hex_digit(v.ptr[i + 2]) < 0)
                return false;
            ch = (char)(hex_digit(v.ptr[i + 1]) * 16 + hex_digit(v.ptr[i + 2]));
            i += 2;
        } else if (ch == '+') {
            ch = ' ';
        }
        if (ch == '\0' || j + 1 >= n)
            return false;
        out[j++] = ch;
    }
    out[j] = '\0';
    return true;
}

/* add_scopes splits one scope parameter (several space-separated scopes) into tp. */
static err
add_scopes(struct token_params *tp, const char *v)
{
    while (*v && tp->nscopes < TOKEN_SCOPES_MAX) {
        size_t l = strcspn(v, " ");
        if (l) {
            char *one = strndup(v, l);
            if (!one)
                return ERR_NOMEM;
            tp->scopes[tp->nscopes++] = one;
        }
        v += l;
        v += strspn(v, " ");
    }
    return ERR_OK;
}

/* token_params_parse reads s ("a=b&c=d", form encoding) into tp. strict (a POST
 * form): a broken encoding, an over-long value or a repeated field is ERR_BAD_REQUEST
 * with *why; otherwise (a GET query) such parameters are skipped. Unknown names are
 * ignored (RFC 6749 §3.1). */
static err
token_params_parse(slice s, bool strict, struct token_params *tp, const char **why)
{
    struct {
        const char *name;
        char *dst;
        size_t n;
    } fields[] = {
        {"grant_type", tp->grant_type, sizeof tp->grant_type},
        {"username", tp->username, sizeof tp->username},
        {"password", tp->password, sizeof tp->password},
        {"refresh_token", tp->refresh_token, sizeof tp->refresh_token},
        {"service", tp->service, sizeof tp->service},
        {"client_id", tp->client_id, sizeof tp->client_id},
        {"access_type", tp->access_type, sizeof tp->access_type},
    };
    bool seen[sizeof fields / sizeof fields[0]] = {false};
    const char *p = s.ptr, *end = s.ptr + s.len;
    while (s.len && p <= end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *pe = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(pe - p));
        slice k = {p, (size_t)((eq ? eq : pe) - p)};
        slice v = eq ? (slice){eq + 1, (size_t)(pe - eq - 1)} : (slice){pe, 0};
        char name[64];
        p = pe + 1;
        if (!k.len)
            continue;
        if (!form_decode(k, name, sizeof name)) {
            if (!strict)
                continue;
            *why = "a token request parameter name is malformed (form encoding) or too long";
            return ERR_BAD_REQUEST;
        }
        if (!strcmp(name, "scope")) {
            char val[1024];
            if (!form_decode(v, val, sizeof val)) {
                if (!strict)
                    continue;
                *why = "the scope parameter is malformed or too long";
                return ERR_BAD_REQUEST;
            }
            err e = add_scopes(tp, val);
            explicit_bzero(val, sizeof val);
            if (e)
                return e;
            continue;
        }
        for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
            if (strcmp(name, fields[i].name) != 0)
                continue;
            if (seen[i] && strict) {
                *why = "a token request parameter is repeated";
                return ERR_BAD_REQUEST;
            }
            if (!form_decode(v, fields[i].dst, fields[i].n)) {
                fields[i].dst[0] = '\0';
                if (!strict)
                    break;
                *why = "a token request parameter is malformed (form encoding) or too long";
                return ERR_BAD_REQUEST;
            }
            seen[i] = true;
            break;
        }
    }
    return ERR_OK;
}

/* token_error answers a failed token request with the OCI error JSON every georeg
 * error has, plus OAuth2's "error" and "error_description" (RFC 6749 §5.2). */
static void
token_error(struct http_req *r, err e, const char *oauth, const char *msg)
{
    const char *m = msg ? msg : err_str(e);
    json_t *j = json_pack("{s:[{s:s,s:s,s:n}],s:s,s:s}", "errors", "code", err_oci_code(e),
                          "message", m, "detail", "error", oauth, "error_description", m);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text) {
        http_resp_error(r, e, msg, NULL);
        return;
    }
    buf_reset(&r->resp.body);
    if (buf_adds(&r->resp.body, text)) {
        free(text);
        http_resp_error(r, ERR_NOMEM, NULL, NULL);
        return;
    }
    free(text);
    r->resp.status = err_http_status(e);
    http_resp_header(r, "Content-Type", "application/json");
    http_resp_header(r, "Cache-Control", "no-store");
}

/* token_login_failed answers and audits credentials that did not authenticate. */
static void
token_login_failed(struct http_req *r, err e, const char *why, bool oauth)
{
    struct node *n = r->app;
    bool slow = e == ERR_TOOMANYREQUESTS;
    int status = slow ? 429 : e == ERR_UNAUTHORIZED ? 401 : 500;
    err answer = slow ? e : e == ERR_UNAUTHORIZED ? ERR_UNAUTHORIZED : ERR_INTERNAL;
    if (oauth)
        token_error(r, answer, slow ? "slow_down" : status == 401 ? "invalid_grant" : "server_error",
                    status == 500 ? NULL : public_why(why));
    else
        http_resp_error(r, answer, status == 500 ? NULL : public_why(why), NULL);
    if (slow)
        retry_after(r);
    audit_log(n, r, "login", NULL, NULL, NULL, status, why);
}

/* token_form authenticates a POST form: grant_type=password (username, password:
 * checked like Basic credentials) or grant_type=refresh_token. Answers (and audits)
 * and returns false when the request ends here. *refresh gets a refresh token to
 * hand out when access_type=offline asks for one. */
static bool
token_form(struct http_req *r, struct token_params *tp, struct auth_principal *who,
           char *refresh, size_t refresh_n, const char **detail)
{
    struct node *n = r->app;
    struct access *ac = r->access;
    const char *why = NULL;
    slice ct = http_req_header(r, "content-type");
    const char *semi = ct.ptr ? memchr(ct.ptr, ';', ct.len) : NULL;
    slice mt = ct.ptr ? (slice){ct.ptr, semi ? (size_t)(semi - ct.ptr) : ct.len} : ct;
    while (mt.len && (mt.ptr[mt.len - 1] == ' ' || mt.ptr[mt.len - 1] == '\t'))
        mt.len--;
    if (!mt.ptr || !slice_case_eq_cstr(mt, "application/x-www-form-urlencoded")) {
        token_error(r, ERR_BAD_REQUEST, "invalid_request",
                    "a POST to the token endpoint takes an application/x-www-form-urlencoded "
                    "form (grant_type=password or grant_type=refresh_token)");
        return false;
    }
    err e = token_params_parse(buf_slice(&r->body), true, tp, &why);
    if (e) {
        token_error(r, e, e == ERR_BAD_REQUEST ? "invalid_request" : "server_error",
                    e == ERR_BAD_REQUEST ? why : NULL);
        return false;
    }
    bool offline = !strcmp(tp->access_type, "offline");
    if (!strcmp(tp->grant_type, "password")) {
        if (!tp->username[0] || !tp->password[0]) {
            token_error(r, ERR_BAD_REQUEST, "invalid_request",
                        "grant_type=password needs username and password");
            return false;
        }
        if (auth_name_valid(tp->username))
            str_copy(ac->claimed, sizeof ac->claimed, tp->username);
        e = auth_identify_password(n->auth, tp->username, tp->password, r->peer, who, &why);
        if (e) {
            token_login_failed(r, e, why, true);
            return false;
        }
        *detail = "token issued (password grant)";
        if (offline) {
            e = auth_refresh_new(n->auth, who, refresh, refresh_n);
            if (e) {
                token_login_failed(r, e, "the identity changed while logging in", true);
                return false;
            }
            *detail = "token and refresh token issued (password grant)";
        }
        return true;
    }
    if (!strcmp(tp->grant_type, "refresh_token")) {
        if (!tp->refresh_token[0]) {
            token_error(r, ERR_BAD_REQUEST, "invalid_request",
                        "grant_type=refresh_token needs refresh_token");
            return false;
        }
        e = auth_refresh_identify(n->auth, tp->refresh_token, r->peer, who, &why);
        if (e) {
            token_login_failed(r, e, why, true);
            return false;
        }
        /* refresh tokens are reused, not rotated: clients ask once per scope */
        if (offline)
            str_copy(refresh, refresh_n, tp->refresh_token);
        *detail = "token issued (refresh token)";
        return true;
    }
    token_error(r, ERR_BAD_REQUEST, tp->grant_type[0] ? "unsupported_grant_type" : "invalid_request",
                tp->grant_type[0] ? "unsupported grant_type (password or refresh_token)"
                                  : "grant_type is missing (password or refresh_token)");
    return false;
}

static err
h_token(struct http_req *r, bool nowait)
{
    struct node *n = r->app;
    struct auth_principal who;
    struct token_params tp;
    char refresh[AUTH_REFRESH_LEN] = "";
    const char *why = NULL, *detail = "token issued";
    buf all = BUF_INIT;
    (void)nowait;
    memset(&tp, 0, sizeof tp);
    if (auth_get_mode(n->auth) != AUTH_TOKEN) {
        http_resp_error(r, ERR_UNSUPPORTED, "this registry does not issue tokens", NULL);
        return ERR_OK;
    }
    struct access *ac = calloc(1, sizeof *ac);
    if (!ac) {
        http_resp_error(r, ERR_NOMEM, NULL, NULL);
        return ERR_OK;
    }
    free(r->access);
    r->access = ac;
    bool oauth = r->method == M_POST;
    if (oauth) {
        if (!token_form(r, &tp, &who, refresh, sizeof refresh, &detail))
            goto out;
    } else {
        err e = auth_identify(n->auth, http_req_header(r, "authorization"), r->peer, false, &who,
                              &why);
        if (e) {
            token_login_failed(r, e, why, false);
            goto out;
        }
        /* only service and scope (repeated, each possibly several space-separated
         * scopes) are read from a query; credentials never come in a URL */
        if ((e = token_params_parse(r->query, false, &tp, &why))) {
            http_resp_error(r, e, NULL, NULL);
            goto out;
        }
    }
    ac->who = who;
    ac->identified = true;
    err e = auth_issue_token(n->auth, &who, tp.service, (const char *const *)tp.scopes, tp.nscopes,
                             refresh[0] ? refresh : NULL, &all);
    if (e) {
        if (oauth)
            token_error(r, e == ERR_DENIED ? ERR_DENIED : ERR_INTERNAL,
                        e == ERR_DENIED ? "invalid_scope" : "server_error",
                        e == ERR_DENIED ? "token requested for another service" : NULL);
        else
            http_resp_error(r, e == ERR_DENIED ? ERR_DENIED : ERR_INTERNAL,
                            e == ERR_DENIED ? "token requested for another service" : NULL,
                            tp.service);
        audit_log(n, r, "login", NULL, NULL, NULL, e == ERR_DENIED ? 403 : 500,
                  e == ERR_DENIED ? "wrong service" : "token not issued");
        goto out;
    }
    if (!who.anonymous)
        audit_log(n, r, "login", NULL, NULL, NULL, 200, detail);
    r->resp.status = 200;
    buf_release(&r->resp.body);
    r->resp.body = all;
    buf_init(&all);
    http_resp_header(r, "Content-Type", "application/json");
    http_resp_header(r, "Cache-Control", "no-store");
out:
    explicit_bzero(refresh, sizeof refresh);
    if (oauth && r->body.ptr) /* the form held a password or a refresh token */
        explicit_bzero(r->body.ptr, r->body.len);
    token_params_release(&tp);
    buf_release(&all);
    return ERR_OK;
}

/* ---- identity admin API ---- */

static bool
primary_only(struct http_req *r)
{
    char url[256] = "";
    if (node_writable(r->app, url, sizeof url))
        return true;
    char msg[400];
    snprintf(msg, sizeof msg, "identities are managed on the primary at %s", url);
    http_resp_error(r, ERR_READ_ONLY, msg, url[0] ? url : NULL);
    return false;
}

/* grants_from_json reads "roles": [...] (global) and "scopes": ["GLOB:ACTIONS"]. */
static bool
grants_from_json(json_t *j, struct auth_grant *g, size_t *n, const char **why)
{
    size_t i;
    json_t *v;
    *n = 0;
    json_array_foreach(json_object_get(j, "roles"), i, v)
    {
        unsigned bits;
        if (!json_is_string(v) || !auth_parse_actions(json_string_value(v), &bits) ||
            *n >= AUTH_MAX_GRANTS) {
            *why = "roles: expected pull, push, delete, metadata_read, import or admin";
            return false;
        }
        str_copy(g[*n].glob, sizeof g[*n].glob, "**");
        g[(*n)++].actions = bits;
    }
    json_array_foreach(json_object_get(j, "scopes"), i, v)
    {
        if (!json_is_string(v) || *n >= AUTH_MAX_GRANTS ||
            !auth_parse_scope(json_string_value(v), &g[*n])) {
            *why = "scopes: expected \"GLOB:ACTIONS\", e.g. \"prod/**:pull,push\"";
            return false;
        }
        (*n)++;
    }
    return true;
}

struct ident_route {
    char kind[8];
    char name[64];
    char verb[16]; /* "", disable, enable, revoke */
};

static err
h_identities(struct http_req *r, bool nowait)
{
    struct node *n = r->app;
    struct ident_route *ir = (struct ident_route *)r->scratch;
    buf out = BUF_INIT;
    (void)nowait;
    if (r->method == M_GET) {
        auth_list_identities(n->auth, ir->kind, &out);
        r->resp.status = 200;
        buf_release(&r->resp.body);
        r->resp.body = out;
        http_resp_header(r, "Content-Type", "application/json");
        return ERR_OK;
    }
    if (!primary_only(r))
        return ERR_OK;
    err e = ERR_OK;
    if (r->method == M_DELETE || ir->verb[0]) {
        bool disable = !strcmp(ir->verb, "disable") || !strcmp(ir->verb, "revoke") ||
                       (r->method == M_DELETE && !strcmp(ir->kind, "token"));
        if (r->method == M_DELETE && strcmp(ir->kind, "token") != 0)
            e = auth_delete_identity(n->auth, ir->name);
        else if (disable || !strcmp(ir->verb, "enable"))
            e = auth_set_disabled(n->auth, ir->name, disable);
        else
            e = ERR_ROUTE_UNKNOWN;
        if (e) {
            http_resp_error(r, e == ERR_NOT_FOUND ? ERR_NOT_FOUND : e, "no such identity", ir->name);
            return ERR_OK;
        }
        audit_log(n, r, "identity.change", NULL, ir->name, NULL, 204,
                  r->method == M_DELETE ? (strcmp(ir->kind, "token") ? "deleted" : "revoked")
                                        : ir->verb);
        r->resp.status = 204;
        return ERR_OK;
    }
    /* POST: create */
    json_error_t je;
    json_t *j = json_loadb(r->body.ptr, r->body.len, 0, &je);
    const char *why = "expected a JSON object";
    struct auth_grant grants[AUTH_MAX_GRANTS];
    size_t ng = 0;
    const char *name = j ? json_string_value(json_object_get(j, "name")) : NULL;
    const char *secret = j ? json_string_value(json_object_get(j, "password")) : NULL;
    const char *expires = j ? json_string_value(json_object_get(j, "expires")) : NULL;
    uint64_t exp_ms = 0;
    if (!j || !json_is_object(j))
        goto bad;
    if (!name || !auth_name_valid(name) || !strcmp(name, "admin") || !strcmp(name, "anonymous")) {
        why = "name: 1-63 of [A-Za-z0-9._@-], not admin or anonymous";
        goto bad;
    }
    if (!grants_from_json(j, grants, &ng, &why))
        goto bad;
    if (!strcmp(ir->kind, "token") && ng == 0) {
        why = "a token needs at least one scope";
        goto bad;
    }
    if (expires && !cfg_parse_duration(expires, &exp_ms)) {
        why = "expires: a duration such as 30d or 12h";
        goto bad;
    }
    if (secret && strlen(secret) < 8) {
        why = "password: at least 8 characters";
        goto bad;
    }
    char gen[128] = "";
    struct auth_identity_spec spec = {
        .kind = ir->kind,
        .name = name,
        .secret = secret,
        .grants = grants,
        .ngrants = ng,
        .expires_s = exp_ms ? clock_wall_s() + exp_ms / 1000 : 0,
        .created_by = access_actor(r),
    };
    e = auth_put_identity(n->auth, &spec, gen, sizeof gen);
    if (e) {
        http_resp_error(r, e, NULL, name);
        json_decref(j);
        return ERR_OK;
    }
    audit_log(n, r, "identity.change", NULL, name, NULL, 201, "created");
    buf_adds(&out, "{\"name\":");
    buf_add_json_str(&out, name, strlen(name));
    buf_addf(&out, ",\"kind\":\"%s\",\"expires\":%llu", ir->kind,
             (unsigned long long)spec.expires_s);
    if (!secret) {
        /* shown once, never stored in clear */
        buf_adds(&out, ",\"secret\":");
        buf_add_json_str(&out, gen, strlen(gen));
    }
    buf_adds(&out, "}");
    memset(gen, 0, sizeof gen);
    r->resp.status = 201;
    buf_release(&r->resp.body);
    r->resp.body = out;
    http_resp_header(r, "Content-Type", "application/json");
    http_resp_header(r, "Cache-Control", "no-store");
    json_decref(j);
    return ERR_OK;
bad:
    json_decref(j);
    http_resp_error(r, ERR_INVALID, why, NULL);
    return ERR_OK;
}

/* ---- audit query ---- */

struct audit_q {
    char repo[REF_NAME_MAX + 1], actor[64], action[64];
    buf *out;
    bool jsonl;
    size_t n;
    char last[17];
};

static bool
field_is(json_t *j, const char *k, const char *want)
{
    if (!want[0])
        return true;
    const char *v = json_string_value(json_object_get(j, k));
    return v && !strcmp(v, want);
}

static bool
on_audit(void *arg, slice key, slice value)
{
    struct audit_q *q = arg;
    if (q->repo[0] || q->actor[0] || q->action[0]) {
        json_error_t je;
        json_t *j = json_loadb(value.ptr, value.len, 0, &je);
        bool keep = j && field_is(j, "repo", q->repo) && field_is(j, "actor", q->actor) &&
                    field_is(j, "action", q->action);
        json_decref(j);
        if (!keep)
            return false;
    }
    if (q->jsonl) {
        buf_add(q->out, value.ptr, value.len);
        buf_addc(q->out, '\n');
    } else {
        if (q->n)
            buf_addc(q->out, ',');
        buf_add(q->out, value.ptr, value.len);
    }
    q->n++;
    str_copy_slice(q->last, sizeof q->last, key);
    return true;
}

/* parse_time reads unix seconds or an RFC 3339 UTC time into microseconds. */
static bool
parse_time(const char *s, uint64_t *us)
{
    uint64_t v;
    if (slice_parse_u64(slice_of_cstr(s), &v)) {
        *us = v * 1000000;
        return true;
    }
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!end)
        return false;
    *us = (uint64_t)timegm(&tm) * 1000000;
    return true;
}

static err
h_audit(struct http_req *r, bool nowait)
{
    struct node *n = r->app;
    struct audit_q q = {0};
    char v[64], cursor[32] = "";
    uint64_t since = 0, until = 0, limit = 100;
    (void)nowait;
    audit_flush(n);
    if ((http_req_query(r, "since", v, sizeof v) && !parse_time(v, &since)) ||
        (http_req_query(r, "until", v, sizeof v) && !parse_time(v, &until)) ||
        (http_req_query(r, "limit", v, sizeof v) && !slice_parse_u64(slice_of_cstr(v), &limit))) {
        http_resp_error(r, ERR_INVALID, "since/until: unix seconds or 2026-01-02T03:04:05; limit: a number", NULL);
        return ERR_OK;
    }
    if (limit == 0 || limit > 10000)
        limit = 10000;
    http_req_query(r, "repo", q.repo, sizeof q.repo);
    http_req_query(r, "actor", q.actor, sizeof q.actor);
    http_req_query(r, "action", q.action, sizeof q.action);
    bool has_cursor = http_req_query(r, "cursor", cursor, sizeof cursor);
    q.jsonl = http_req_query(r, "format", v, sizeof v) && !strcmp(v, "jsonl");
    buf out = BUF_INIT;
    q.out = &out;
    bool more = false;
    if (!q.jsonl)
        buf_adds(&out, "{\"entries\":[");
    err e = store_audit_query(n->store, since, until, has_cursor ? cursor : NULL, (size_t)limit,
                              on_audit, &q, &more);
    if (e) {
        buf_release(&out);
        http_resp_error(r, e, NULL, NULL);
        return ERR_OK;
    }
    if (!q.jsonl) {
        buf_adds(&out, "],\"next\":");
        if (more)
            buf_addf(&out, "\"%s\"", q.last);
        else
            buf_adds(&out, "null");
        buf_adds(&out, "}");
    }
    if (more) {
        /* the next page of the same query: its filters, limit and format, a new cursor */
        buf link = BUF_INIT;
        const char *p = r->query.ptr, *end = r->query.ptr + r->query.len;
        while (p && p < end) {
            const char *amp = memchr(p, '&', (size_t)(end - p));
            const char *pe = amp ? amp : end;
            size_t l = (size_t)(pe - p);
            bool is_cursor =
                (l >= 7 && !memcmp(p, "cursor=", 7)) || (l == 6 && !memcmp(p, "cursor", 6));
            if (l && !is_cursor) {
                buf_add(&link, p, l);
                buf_addc(&link, '&');
            }
            p = pe + 1;
        }
        http_resp_header(r, "Link", "</_georeg/v1/audit?%scursor=%s>; rel=\"next\"",
                         link.len ? link.ptr : "", q.last);
        buf_release(&link);
    }
    r->resp.status = 200;
    buf_release(&r->resp.body);
    r->resp.body = out;
    http_resp_header(r, "Content-Type", q.jsonl ? "application/x-ndjson" : "application/json");
    return ERR_OK;
}

/* ---- routing of /_georeg/v1/{token,users,tokens,service-principals,audit} ---- */

bool
access_route(struct http_req *r, slice rest)
{
    if (slice_eq_cstr(rest, "token")) {
        if (r->method != M_GET && r->method != M_POST) {
            http_resp_error(r, ERR_METHOD, NULL, NULL);
            return true;
        }
        if (r->method == M_POST) {
            /* the OAuth2 form: a few short fields; more is refused (413) unread */
            r->body_mode = BODY_BUFFER;
            r->body_limit = TOKEN_FORM_MAX;
        }
        r->handler = h_token;
        r->handler_on_pool = true;
        return true;
    }
    if (slice_eq_cstr(rest, "audit")) {
        if (r->method != M_GET)
            http_resp_error(r, ERR_METHOD, NULL, NULL);
        else if (access_require(r, NULL, ACT_ADMIN, NULL, 0, true)) {
            r->handler = h_audit;
            r->handler_on_pool = true;
        }
        return true;
    }
    static const struct {
        const char *path, *kind;
    } kinds[] = {{"users", "user"}, {"tokens", "token"}, {"service-principals", "sp"}};
    for (size_t i = 0; i < 3; i++) {
        size_t pl = strlen(kinds[i].path);
        if (rest.len < pl || memcmp(rest.ptr, kinds[i].path, pl) != 0 ||
            (rest.len > pl && rest.ptr[pl] != '/'))
            continue;
        struct ident_route *ir = (struct ident_route *)r->scratch;
        str_copy(ir->kind, sizeof ir->kind, kinds[i].kind);
        slice tail = rest.len > pl + 1 ? (slice){rest.ptr + pl + 1, rest.len - pl - 1} : (slice){"", 0};
        const char *slash = memchr(tail.ptr, '/', tail.len);
        slice name = slash ? (slice){tail.ptr, (size_t)(slash - tail.ptr)} : tail;
        slice verb = slash ? (slice){slash + 1, tail.len - name.len - 1} : (slice){"", 0};
        if (!str_copy_slice(ir->name, sizeof ir->name, name) ||
            !str_copy_slice(ir->verb, sizeof ir->verb, verb) ||
            (name.len && !auth_name_valid(ir->name))) {
            http_resp_error(r, ERR_INVALID, "invalid identity name", NULL);
            return true;
        }
        bool ok = (r->method == M_GET && !name.len) || (r->method == M_POST && !name.len) ||
                  (r->method == M_DELETE && name.len && !verb.len) ||
                  (r->method == M_POST && name.len &&
                   (!strcmp(ir->verb, "disable") || !strcmp(ir->verb, "enable") ||
                    !strcmp(ir->verb, "revoke")));
        if (!ok) {
            http_resp_error(r, ERR_METHOD, NULL, NULL);
            return true;
        }
        if (!access_require(r, NULL, ACT_ADMIN, NULL, 0, true))
            return true;
        if (r->method == M_POST && !name.len) {
            r->body_mode = BODY_BUFFER;
            r->body_limit = 64 * 1024;
        }
        r->handler = h_identities;
        r->handler_on_pool = true;
        return true;
    }
    return false;
}
