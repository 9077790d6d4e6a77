/* The etcd v3 client: JSON requests to etcd's grpc-gateway over one libcurl easy
 * handle, with one deadline per call, endpoint fallback before a request is sent,
 * bounded response bodies and strict parsing of what comes back (int64 as decimal
 * strings, bytes as standard base64). */
#include "../common/clock.h"
#include "etcd.h"

#include <curl/curl.h>
#include <jansson.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/log.h"
#include "../common/banned.h"

struct etcd_client {
    CURL *curl;
    struct curl_slist *hdrs;
    char *endpoints[ETCD_MAX_ENDPOINTS];
    size_t n;
    size_t cur;  /* the endpoint that answered last: the next call starts there */
    bool rotate; /* cur failed after the request went out: the next call starts after it */
    uint64_t timeout_ms;
    uint64_t call_start_ms; /* clock_mono_ms() when the last call began, before it sent */
    buf url;
    buf req;
    buf resp;
    bool resp_over; /* the body passed ETCD_MAX_BODY */
};


/* ---- base64 (standard alphabet, padded: what Go's encoding/json writes) ---- */

static err
b64_add(buf *b, slice in)
{
    if (in.len > INT_MAX / 2)
        return ERR_INVALID;
    size_t need = 4 * ((in.len + 2) / 3);
    err e = buf_grow(b, need + 1);
    if (e != ERR_OK)
        return e;
    int n = EVP_EncodeBlock((unsigned char *)b->ptr + b->len, (const unsigned char *)in.ptr,
                            (int)in.len);
    if (n < 0 || (size_t)n != need)
        return ERR_INTERNAL;
    b->len += (size_t)n;
    b->ptr[b->len] = '\0';
    return ERR_OK;
}

static bool
b64_char(unsigned char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '+' || ch == '/';
}

/* b64_decode replaces out with the bytes of s; false on anything but canonical
 * padded base64 (EVP_DecodeBlock alone would accept whitespace and lose the padding
 * count). */
static bool
b64_decode(const char *s, size_t len, buf *out)
{
    buf_reset(out);
    if (len % 4 != 0 || len > INT_MAX)
        return false;
    size_t pad = 0;
    if (len > 0 && s[len - 1] == '=')
        pad = (len > 1 && s[len - 2] == '=') ? 2 : 1;
    for (size_t i = 0; i < len - pad; i++)
        if (!b64_char((unsigned char)s[i]))
            return false;
    if (len == 0)
        return true;
    if (buf_grow(out, len / 4 * 3 + 1) != ERR_OK)
        return false;
    int n = EVP_DecodeBlock((unsigned char *)out->ptr, (const unsigned char *)s, (int)len);
    if (n < 0 || (size_t)n < pad) {
        buf_reset(out);
        return false;
    }
    out->len = (size_t)n - pad;
    out->ptr[out->len] = '\0';
    return true;
}

/* ---- JSON fields (protobuf's JSON mapping: zero values are left out) ---- */

/* j_int64 reads an int64 written as a decimal string (or, leniently, a JSON
 * integer); an absent field is 0. False on any other type or text. */
static bool
j_int64(json_t *obj, const char *key, int64_t *out)
{
    json_t *v = json_object_get(obj, key);
    *out = 0;
    if (!v)
        return true;
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return true;
    }
    if (!json_is_string(v))
        return false;
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    bool neg = len > 0 && s[0] == '-';
    uint64_t u;
    if (!slice_parse_u64((slice){s + neg, len - neg}, &u))
        return false;
    if (!neg && u > (uint64_t)INT64_MAX)
        return false;
    if (neg && u > (uint64_t)INT64_MAX + 1)
        return false;
    *out = neg ? (int64_t)(0 - u) : (int64_t)u;
    return true;
}

static bool
j_bool(json_t *obj, const char *key, bool *out)
{
    json_t *v = json_object_get(obj, key);
    *out = false;
    if (!v)
        return true;
    if (!json_is_boolean(v))
        return false;
    *out = json_is_true(v);
    return true;
}

/* j_bytes decodes a base64 bytes field into out (absent: empty). */
static bool
j_bytes(json_t *obj, const char *key, buf *out)
{
    json_t *v = json_object_get(obj, key);
    buf_reset(out);
    if (!v)
        return true;
    if (!json_is_string(v))
        return false;
    return b64_decode(json_string_value(v), json_string_length(v), out);
}

/* j_object returns obj[key] when it is an object or absent (NULL, true). */
static bool
j_object(json_t *obj, const char *key, json_t **out)
{
    json_t *v = json_object_get(obj, key);
    *out = v;
    return !v || json_is_object(v);
}

/* a kv of a range response */
struct etcd_kv {
    int64_t create_revision;
    int64_t mod_revision;
    int64_t lease;
};

static bool
parse_kv(json_t *kv, struct etcd_kv *out, buf *value, buf *scratch)
{
    if (!json_is_object(kv))
        return false;
    if (!j_int64(kv, "create_revision", &out->create_revision) ||
        !j_int64(kv, "mod_revision", &out->mod_revision) || !j_int64(kv, "lease", &out->lease))
        return false;
    if (!j_bytes(kv, "key", scratch))
        return false;
    buf tmp = BUF_INIT;
    bool ok = j_bytes(kv, "value", value ? value : &tmp);
    buf_release(&tmp);
    return ok && out->mod_revision > 0 && out->create_revision > 0;
}

/* first_kv reads range's single kv: *found false when kvs is empty or absent. */
static bool
first_kv(json_t *range, bool *found, struct etcd_kv *kv, buf *value, buf *scratch)
{
    json_t *kvs = json_object_get(range, "kvs");
    *found = false;
    if (!kvs)
        return true;
    if (!json_is_array(kvs) || json_array_size(kvs) > 1)
        return false;
    if (json_array_size(kvs) == 0)
        return true;
    *found = true;
    return parse_kv(json_array_get(kvs, 0), kv, value, scratch);
}

/* header_revision reads header.revision, which must be there and positive. */
static bool
header_revision(json_t *root, int64_t *rev)
{
    json_t *h;
    if (!j_object(root, "header", &h) || !h)
        return false;
    return j_int64(h, "revision", rev) && *rev > 0;
}

/* ---- the transport ---- */

static size_t
on_body(char *ptr, size_t size, size_t nmemb, void *arg)
{
    etcd_client *c = arg;
    size_t n = size * nmemb;
    if (c->resp.len + n > ETCD_MAX_BODY) {
        c->resp_over = true;
        return 0; /* curl stops with CURLE_WRITE_ERROR */
    }
    if (buf_add(&c->resp, ptr, n) != ERR_OK)
        return 0;
    return n;
}

/* log_text copies up to n-1 bytes of s for a log line: printable ASCII only, no
 * quotes, so an etcd (or impostor) message cannot forge key=value pairs. */
static const char *
log_text(char *dst, size_t n, const char *s)
{
    size_t i = 0;
    for (; s && s[i] && i + 1 < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        dst[i] = (ch < 0x20 || ch > 0x7e || ch == '"' || ch == '\\') ? '?' : (char)ch;
    }
    dst[i] = '\0';
    return dst;
}

/* grpc_err maps a gRPC status code to ours. */
static err
grpc_err(int64_t code)
{
    switch (code) {
    case 0:
        return ERR_OK;
    case 5: /* NOT_FOUND */
        return ERR_NOT_FOUND;
    case 3:  /* INVALID_ARGUMENT */
    case 9:  /* FAILED_PRECONDITION */
    case 11: /* OUT_OF_RANGE */
        return ERR_INVALID;
    case 4: /* DEADLINE_EXCEEDED */
        return ERR_TIMEOUT;
    default: /* UNAVAILABLE, RESOURCE_EXHAUSTED, UNKNOWN ("no leader"), ... */
        return ERR_UNAVAILABLE;
    }
}

/* error_body turns a gateway error object ({"code":5,"message":...} or a stream's
 * {"grpc_code":5,...}) into an err, logging it unless it is a plain not-found. */
static err
error_body(etcd_client *c, const char *path, long status, json_t *eobj)
{
    int64_t code = 0;
    char msg[160];
    if (json_is_object(eobj)) {
        /* unary answers say "code", stream messages "grpc_code" */
        if (!j_int64(eobj, "code", &code) || code == 0) {
            if (!j_int64(eobj, "grpc_code", &code))
                code = 0;
        }
        json_t *m = json_object_get(eobj, "message");
        log_text(msg, sizeof msg, json_is_string(m) ? json_string_value(m) : "");
    } else {
        log_text(msg, sizeof msg, json_is_string(eobj) ? json_string_value(eobj) : "");
    }
    err e = code != 0 ? grpc_err(code) : ERR_UNAVAILABLE;
    if (e == ERR_OK)
        e = ERR_UNAVAILABLE;
    /* a member without a leader or quorum answers this way: try another next time */
    if (e == ERR_UNAVAILABLE || e == ERR_TIMEOUT)
        c->rotate = true;
    if (e != ERR_NOT_FOUND)
        log_warn("ETCD-ERROR", "endpoint=%s path=%s status=%ld grpc_code=%lld message=\"%s\"",
                 c->endpoints[c->cur], path, status, (long long)code, msg);
    return e;
}

static bool
connect_failure(CURLcode rc)
{
    return rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
           rc == CURLE_COULDNT_RESOLVE_PROXY;
}

/* call POSTs c->req to path on the current endpoint, moving to the next ones while
 * the request has not been sent, and parses the body: *root is a new JSON object for
 * json_decref on ERR_OK, NULL otherwise. Non-200 answers become errors. */
static err
call(etcd_client *c, const char *path, json_t **root)
{
    *root = NULL;
    c->call_start_ms = clock_mono_ms();
    if (c->rotate) {
        c->cur = (c->cur + 1) % c->n;
        c->rotate = false;
    }
    uint64_t deadline = c->call_start_ms + c->timeout_ms;
    CURLcode rc = CURLE_COULDNT_CONNECT;
    long status = 0;
    bool sent = false;
    for (size_t tried = 0; tried < c->n; tried++) {
        size_t ep = (c->cur + tried) % c->n;
        uint64_t now = clock_mono_ms();
        if (now >= deadline)
            break;
        uint64_t left = deadline - now;
        /* a black-holed endpoint must not eat the whole budget of the ones after it */
        uint64_t conn = left / (c->n - tried);
        if (conn < 200)
            conn = left < 200 ? left : 200;
        buf_reset(&c->url);
        buf_reset(&c->resp);
        c->resp_over = false;
        if (buf_adds(&c->url, c->endpoints[ep]) != ERR_OK || buf_adds(&c->url, path) != ERR_OK)
            return ERR_NOMEM;
        curl_easy_setopt(c->curl, CURLOPT_URL, c->url.ptr);
        curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, c->req.ptr);
        curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->req.len);
        curl_easy_setopt(c->curl, CURLOPT_TIMEOUT_MS, (long)left);
        curl_easy_setopt(c->curl, CURLOPT_CONNECTTIMEOUT_MS, (long)conn);
        rc = curl_easy_perform(c->curl);
        long req_size = 0;
        if (curl_easy_getinfo(c->curl, CURLINFO_REQUEST_SIZE, &req_size) != CURLE_OK)
            req_size = 1; /* unknown: assume it went out */
        sent = req_size > 0;
        if (rc == CURLE_OK || sent || !(connect_failure(rc) || rc == CURLE_OPERATION_TIMEDOUT)) {
            c->cur = ep;
            break;
        }
        log_warn("ETCD-UNREACHABLE", "endpoint=%s path=%s reason=\"%s\"", c->endpoints[ep], path,
                 curl_easy_strerror(rc));
    }
    if (rc != CURLE_OK) {
        const char *ep = c->endpoints[c->cur];
        /* it was sent and went wrong there (silence, garbage, a broken connection):
         * this request is not resent, but the next call starts at the next endpoint */
        c->rotate = sent;
        if (!sent && (connect_failure(rc) || rc == CURLE_OPERATION_TIMEDOUT)) {
            log_warn("ETCD-UNREACHABLE", "path=%s endpoints=%zu reason=no_endpoint_answered",
                     path, c->n);
            return ERR_UNAVAILABLE;
        }
        if (rc == CURLE_OPERATION_TIMEDOUT) {
            log_warn("ETCD-TIMEOUT", "endpoint=%s path=%s timeout_ms=%llu", ep, path,
                     (unsigned long long)c->timeout_ms);
            return ERR_TIMEOUT;
        }
        if (c->resp_over || rc == CURLE_FILESIZE_EXCEEDED) {
            log_warn("ETCD-BAD-RESPONSE", "endpoint=%s path=%s reason=body_over_limit limit=%zu",
                     ep, path, ETCD_MAX_BODY);
            return ERR_PROTOCOL;
        }
        if (rc == CURLE_WEIRD_SERVER_REPLY || rc == CURLE_UNSUPPORTED_PROTOCOL ||
            rc == CURLE_BAD_CONTENT_ENCODING || rc == CURLE_WRITE_ERROR) {
            log_warn("ETCD-BAD-RESPONSE", "endpoint=%s path=%s reason=\"%s\"", ep, path,
                     curl_easy_strerror(rc));
            return ERR_PROTOCOL;
        }
        /* the connection broke after the request went out */
        log_warn("ETCD-UNREACHABLE", "endpoint=%s path=%s reason=\"%s\"", ep, path,
                 curl_easy_strerror(rc));
        return ERR_UNAVAILABLE;
    }
    curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status);

    json_error_t jerr;
    json_t *j = json_loadb(c->resp.ptr, c->resp.len, JSON_REJECT_DUPLICATES, &jerr);
    if (status != 200) {
        err e = ERR_UNAVAILABLE;
        if (j && json_is_object(j))
            e = error_body(c, path, status, j);
        else {
            c->rotate = true;
            log_warn("ETCD-ERROR", "endpoint=%s path=%s status=%ld body=unparsed",
                     c->endpoints[c->cur], path, status);
        }
        json_decref(j);
        return e;
    }
    if (!j || !json_is_object(j)) {
        c->rotate = true;
        log_warn("ETCD-BAD-RESPONSE", "endpoint=%s path=%s reason=not_a_json_object bytes=%zu",
                 c->endpoints[c->cur], path, c->resp.len);
        json_decref(j);
        return ERR_PROTOCOL;
    }
    *root = j;
    return ERR_OK;
}

/* bad_response logs a body that parsed as JSON but not as the answer we asked for. */
static err
bad_response(etcd_client *c, const char *path, const char *what)
{
    c->rotate = true;
    log_warn("ETCD-BAD-RESPONSE", "endpoint=%s path=%s reason=%s", c->endpoints[c->cur], path,
             what);
    return ERR_PROTOCOL;
}

static err
bad_argument(const char *call_name, const char *what)
{
    log_warn("ETCD-BAD-ARGUMENT", "call=%s reason=%s", call_name, what);
    return ERR_INVALID;
}

static err
check_kv_args(const char *name, slice key, const slice *value)
{
    if (key.len == 0 || key.len > ETCD_MAX_KEY)
        return bad_argument(name, "key_length");
    if (value && value->len > ETCD_MAX_VALUE)
        return bad_argument(name, "value_length");
    return ERR_OK;
}

/* ---- lifecycle ---- */

err
etcd_client_new(const char *const *endpoints, size_t n, uint64_t timeout_ms, etcd_client **out)
{
    err ret = ERR_INVALID;
    etcd_client *c = NULL;
    *out = NULL;
    if (!endpoints || n == 0 || n > ETCD_MAX_ENDPOINTS)
        return bad_argument("client_new", "endpoint_count");
    if (timeout_ms == 0 || timeout_ms > 600000)
        return bad_argument("client_new", "timeout_ms");
    for (size_t i = 0; i < n; i++) {
        if (!endpoints[i] ||
            (strncmp(endpoints[i], "http://", 7) != 0 && strncmp(endpoints[i], "https://", 8) != 0))
            return bad_argument("client_new", "endpoint_scheme");
        if (strlen(endpoints[i]) > 1024)
            return bad_argument("client_new", "endpoint_length");
        /* endpoints are logged: no user:password@ in them */
        if (strchr(endpoints[i], '@'))
            return bad_argument("client_new", "endpoint_userinfo");
    }
    /* refcounted, and thread-safe in Debian's libcurl (7.88, CURL_VERSION_THREADSAFE) */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return ERR_INTERNAL;
    c = calloc(1, sizeof *c);
    if (!c) {
        curl_global_cleanup();
        return ERR_NOMEM;
    }
    buf_init(&c->url);
    buf_init(&c->req);
    buf_init(&c->resp);
    c->timeout_ms = timeout_ms;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(endpoints[i]);
        while (len > 0 && endpoints[i][len - 1] == '/')
            len--;
        c->endpoints[i] = strndup(endpoints[i], len);
        if (!c->endpoints[i]) {
            ret = ERR_NOMEM;
            goto out;
        }
        c->n = i + 1;
    }
    c->curl = curl_easy_init();
    if (!c->curl) {
        ret = ERR_NOMEM;
        goto out;
    }
    c->hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    if (!c->hdrs) {
        ret = ERR_NOMEM;
        goto out;
    }
    CURL *h = c->curl;
    /* no signals from threads (timeouts would otherwise use SIGALRM for DNS) */
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    /* etcd is reached directly: an http_proxy in the environment is not for it */
    curl_easy_setopt(h, CURLOPT_PROXY, "");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, c->hdrs);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)ETCD_MAX_BODY);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    *out = c;
    return ERR_OK;
out:
    etcd_client_free(c); /* also the curl_global_cleanup */
    return ret;
}

void
etcd_client_free(etcd_client *c)
{
    if (!c)
        return;
    if (c->curl)
        curl_easy_cleanup(c->curl);
    curl_slist_free_all(c->hdrs);
    for (size_t i = 0; i < c->n; i++)
        free(c->endpoints[i]);
    buf_release(&c->url);
    buf_release(&c->req);
    buf_release(&c->resp);
    free(c);
    curl_global_cleanup();
}

/* ---- leases ---- */

/* valid_until is when a lease renewed to ttl_s by the last call can lapse at the
 * earliest: etcd started the TTL when it handled the request, after the call began. */
static uint64_t
valid_until(const etcd_client *c, int64_t ttl_s)
{
    return c->call_start_ms + (uint64_t)ttl_s * 1000u;
}

err
etcd_lease_grant(etcd_client *c, int64_t ttl_s, int64_t *lease_id, int64_t *granted_ttl,
                 uint64_t *valid_until_ms)
{
    static const char path[] = "/v3/lease/grant";
    json_t *root = NULL;
    *lease_id = 0;
    if (granted_ttl)
        *granted_ttl = 0;
    if (valid_until_ms)
        *valid_until_ms = 0;
    if (ttl_s < 1 || ttl_s > 1000000)
        return bad_argument("lease_grant", "ttl");
    buf_reset(&c->req);
    err ret = buf_addf(&c->req, "{\"TTL\":\"%lld\"}", (long long)ttl_s);
    if (ret != ERR_OK)
        return ret;
    ret = call(c, path, &root);
    if (ret != ERR_OK)
        return ret;
    int64_t id, ttl;
    json_t *eo = json_object_get(root, "error");
    if (json_is_string(eo) && json_string_length(eo) > 0) {
        ret = error_body(c, path, 200, eo);
        goto out;
    }
    if (!j_int64(root, "ID", &id) || !j_int64(root, "TTL", &ttl) || id <= 0 || ttl <= 0) {
        ret = bad_response(c, path, "lease_fields");
        goto out;
    }
    *lease_id = id;
    if (granted_ttl)
        *granted_ttl = ttl;
    if (valid_until_ms)
        *valid_until_ms = valid_until(c, ttl);
    ret = ERR_OK;
out:
    json_decref(root);
    return ret;
}

/* lease_ttl_call is keepalive and timetolive: the same request, the answer's TTL.
 * *valid_until_ms (when given) changes only with an answer: the new deadline, or 0
 * when the lease is gone; after any other error the caller's deadline stands. */
static err
lease_ttl_call(etcd_client *c, const char *path, bool stream, int64_t lease_id,
               int64_t *ttl_left, uint64_t *valid_until_ms)
{
    json_t *root = NULL;
    *ttl_left = 0;
    if (lease_id <= 0)
        return bad_argument(path, "lease_id");
    buf_reset(&c->req);
    err ret = buf_addf(&c->req, "{\"ID\":\"%lld\"}", (long long)lease_id);
    if (ret != ERR_OK)
        return ret;
    ret = call(c, path, &root);
    if (ret != ERR_OK)
        goto out;
    json_t *res = root;
    if (stream) {
        /* a streaming RPC: each message is {"result":...} or {"error":{...}} */
        json_t *eo = json_object_get(root, "error");
        if (eo) {
            ret = error_body(c, path, 200, eo);
            goto out;
        }
        if (!j_object(root, "result", &res) || !res) {
            ret = bad_response(c, path, "no_result");
            goto out;
        }
    }
    int64_t id, ttl;
    if (!j_int64(res, "ID", &id) || !j_int64(res, "TTL", &ttl)) {
        ret = bad_response(c, path, "lease_fields");
        goto out;
    }
    if (id != lease_id) {
        ret = bad_response(c, path, "lease_id_mismatch");
        goto out;
    }
    /* keepalive answers TTL 0 (left out) for a lease it does not know, timetolive -1 */
    if (ttl <= 0) {
        ret = ERR_NOT_FOUND;
        goto out;
    }
    *ttl_left = ttl;
    if (valid_until_ms)
        *valid_until_ms = valid_until(c, ttl);
    ret = ERR_OK;
out:
    if (ret == ERR_NOT_FOUND && valid_until_ms)
        *valid_until_ms = 0;
    json_decref(root);
    return ret;
}

err
etcd_lease_keepalive(etcd_client *c, int64_t lease_id, int64_t *ttl_left,
                     uint64_t *valid_until_ms)
{
    /* a renewal restarts the full TTL, so the answer bounds the lease from below */
    return lease_ttl_call(c, "/v3/lease/keepalive", true, lease_id, ttl_left, valid_until_ms);
}

err
etcd_lease_time_to_live(etcd_client *c, int64_t lease_id, int64_t *ttl_left)
{
    /* no deadline from this one: its TTL is a rounded remainder, not a renewal */
    return lease_ttl_call(c, "/v3/lease/timetolive", false, lease_id, ttl_left, NULL);
}

err
etcd_lease_revoke(etcd_client *c, int64_t lease_id)
{
    static const char path[] = "/v3/lease/revoke";
    json_t *root = NULL;
    if (lease_id <= 0)
        return bad_argument("lease_revoke", "lease_id");
    buf_reset(&c->req);
    err ret = buf_addf(&c->req, "{\"ID\":\"%lld\"}", (long long)lease_id);
    if (ret != ERR_OK)
        return ret;
    ret = call(c, path, &root);
    if (ret != ERR_OK)
        return ret;
    int64_t rev;
    ret = header_revision(root, &rev) ? ERR_OK : bad_response(c, path, "no_header");
    json_decref(root);
    return ret;
}

/* ---- keys ---- */

/* add_kv_fields appends "key":"..","value":"..","lease":".." (value and lease when
 * given) to c->req. */
static err
add_put(buf *b, slice key, slice value, int64_t lease_id)
{
    err e = buf_adds(b, "{\"key\":\"");
    if (e == ERR_OK)
        e = b64_add(b, key);
    if (e == ERR_OK)
        e = buf_adds(b, "\",\"value\":\"");
    if (e == ERR_OK)
        e = b64_add(b, value);
    if (e == ERR_OK)
        e = buf_addf(b, "\",\"lease\":\"%lld\"}", (long long)lease_id);
    return e;
}

static err
add_key(buf *b, slice key)
{
    err e = buf_adds(b, "{\"key\":\"");
    if (e == ERR_OK)
        e = b64_add(b, key);
    if (e == ERR_OK)
        e = buf_adds(b, "\"}");
    return e;
}

/* txn_call sends c->req to /v3/kv/txn and gives the succeeded flag and the single
 * response object of the branch taken (its "response_<kind>" member, or NULL when
 * the branch had no request). *root owns them. */
static err
txn_call(etcd_client *c, const char *kind, bool *succeeded, int64_t *revision, json_t **op,
         json_t **root)
{
    static const char path[] = "/v3/kv/txn";
    *op = NULL;
    err ret = call(c, path, root);
    if (ret != ERR_OK)
        return ret;
    if (!j_bool(*root, "succeeded", succeeded) || !header_revision(*root, revision))
        return bad_response(c, path, "txn_fields");
    json_t *rs = json_object_get(*root, "responses");
    if (!rs)
        return ERR_OK;
    if (!json_is_array(rs) || json_array_size(rs) != 1)
        return bad_response(c, path, "txn_responses");
    json_t *r = json_array_get(rs, 0);
    if (!json_is_object(r))
        return bad_response(c, path, "txn_response_type");
    *op = json_object_get(r, kind);
    if (*op && !json_is_object(*op))
        return bad_response(c, path, "txn_response_type");
    return ERR_OK;
}

err
etcd_campaign(etcd_client *c, slice key, slice value, int64_t lease_id, bool *won, buf *holder,
              int64_t *mod_revision)
{
    static const char path[] = "/v3/kv/txn";
    json_t *root = NULL, *op = NULL;
    buf hv = BUF_INIT, scratch = BUF_INIT;
    bool succeeded = false;
    int64_t rev = 0;
    *won = false;
    if (mod_revision)
        *mod_revision = 0;
    err ret = check_kv_args("campaign", key, &value);
    if (ret != ERR_OK)
        return ret;
    if (lease_id < 0)
        return bad_argument("campaign", "lease_id");
    buf *b = &c->req;
    buf_reset(b);
    ret = buf_adds(b, "{\"compare\":[{\"target\":\"CREATE\",\"result\":\"EQUAL\","
                      "\"create_revision\":\"0\",\"key\":\"");
    if (ret == ERR_OK)
        ret = b64_add(b, key);
    if (ret == ERR_OK)
        ret = buf_adds(b, "\"}],\"success\":[{\"request_put\":");
    if (ret == ERR_OK)
        ret = add_put(b, key, value, lease_id);
    if (ret == ERR_OK)
        ret = buf_adds(b, "}],\"failure\":[{\"request_range\":");
    if (ret == ERR_OK)
        ret = add_key(b, key);
    if (ret == ERR_OK)
        ret = buf_adds(b, "}]}");
    if (ret != ERR_OK)
        goto out;
    ret = txn_call(c, "response_range", &succeeded, &rev, &op, &root);
    if (ret != ERR_OK)
        goto out;
    if (succeeded) {
        *won = true;
        if (mod_revision)
            *mod_revision = rev;
        if (holder) {
            buf_reset(holder);
            ret = buf_add(holder, value.ptr, value.len);
        }
        goto out;
    }
    /* the compare failed, so the key existed at the txn's revision and the range of
     * the same txn must show it */
    bool found = false;
    struct etcd_kv kv = {0};
    if (!op || !first_kv(op, &found, &kv, &hv, &scratch) || !found) {
        ret = bad_response(c, path, "campaign_range");
        goto out;
    }
    if (!slice_eq(buf_slice(&scratch), key)) {
        ret = bad_response(c, path, "campaign_key_mismatch");
        goto out;
    }
    /* leases are unique in a cluster: our lease and our value is our own earlier put */
    *won = lease_id != 0 && kv.lease == lease_id && slice_eq(buf_slice(&hv), value);
    if (mod_revision)
        *mod_revision = kv.mod_revision;
    if (holder) {
        buf_reset(holder);
        ret = buf_add(holder, hv.ptr, hv.len);
    }
out:
    json_decref(root);
    buf_release(&hv);
    buf_release(&scratch);
    return ret;
}

err
etcd_get(etcd_client *c, slice key, buf *value, int64_t *mod_revision, int64_t *lease)
{
    static const char path[] = "/v3/kv/range";
    json_t *root = NULL;
    buf v = BUF_INIT, scratch = BUF_INIT;
    if (mod_revision)
        *mod_revision = 0;
    if (lease)
        *lease = 0;
    err ret = check_kv_args("get", key, NULL);
    if (ret != ERR_OK)
        return ret;
    buf_reset(&c->req);
    ret = add_key(&c->req, key);
    if (ret != ERR_OK)
        goto out;
    ret = call(c, path, &root);
    if (ret != ERR_OK)
        goto out;
    bool found = false;
    struct etcd_kv kv = {0};
    int64_t rev;
    if (!header_revision(root, &rev) || !first_kv(root, &found, &kv, &v, &scratch)) {
        ret = bad_response(c, path, "range_fields");
        goto out;
    }
    if (!found) {
        ret = ERR_NOT_FOUND;
        goto out;
    }
    if (!slice_eq(buf_slice(&scratch), key)) {
        ret = bad_response(c, path, "range_key_mismatch");
        goto out;
    }
    if (value) {
        buf_reset(value);
        ret = buf_add(value, v.ptr, v.len);
        if (ret != ERR_OK)
            goto out;
    }
    if (mod_revision)
        *mod_revision = kv.mod_revision;
    if (lease)
        *lease = kv.lease;
    ret = ERR_OK;
out:
    json_decref(root);
    buf_release(&v);
    buf_release(&scratch);
    return ret;
}

err
etcd_put_if(etcd_client *c, slice key, slice value, int64_t lease_id,
            int64_t expected_mod_revision, bool *swapped, int64_t *new_mod_revision)
{
    json_t *root = NULL, *op = NULL;
    bool succeeded = false;
    int64_t rev = 0;
    *swapped = false;
    if (new_mod_revision)
        *new_mod_revision = 0;
    err ret = check_kv_args("put_if", key, &value);
    if (ret != ERR_OK)
        return ret;
    if (lease_id < 0 || expected_mod_revision < 0)
        return bad_argument("put_if", "negative_id");
    buf *b = &c->req;
    buf_reset(b);
    ret = buf_addf(b,
                   "{\"compare\":[{\"target\":\"MOD\",\"result\":\"EQUAL\","
                   "\"mod_revision\":\"%lld\",\"key\":\"",
                   (long long)expected_mod_revision);
    if (ret == ERR_OK)
        ret = b64_add(b, key);
    if (ret == ERR_OK)
        ret = buf_adds(b, "\"}],\"success\":[{\"request_put\":");
    if (ret == ERR_OK)
        ret = add_put(b, key, value, lease_id);
    if (ret == ERR_OK)
        ret = buf_adds(b, "}]}");
    if (ret != ERR_OK)
        goto out;
    ret = txn_call(c, "response_put", &succeeded, &rev, &op, &root);
    if (ret != ERR_OK)
        goto out;
    *swapped = succeeded;
    if (succeeded && new_mod_revision)
        *new_mod_revision = rev;
out:
    json_decref(root);
    return ret;
}

err
etcd_delete_if_value(etcd_client *c, slice key, slice value, bool *deleted)
{
    static const char path[] = "/v3/kv/txn";
    json_t *root = NULL, *op = NULL;
    bool succeeded = false;
    int64_t rev = 0;
    *deleted = false;
    err ret = check_kv_args("delete_if_value", key, &value);
    if (ret != ERR_OK)
        return ret;
    buf *b = &c->req;
    buf_reset(b);
    ret = buf_adds(b, "{\"compare\":[{\"target\":\"VALUE\",\"result\":\"EQUAL\",\"value\":\"");
    if (ret == ERR_OK)
        ret = b64_add(b, value);
    if (ret == ERR_OK)
        ret = buf_adds(b, "\",\"key\":\"");
    if (ret == ERR_OK)
        ret = b64_add(b, key);
    if (ret == ERR_OK)
        ret = buf_adds(b, "\"}],\"success\":[{\"request_delete_range\":");
    if (ret == ERR_OK)
        ret = add_key(b, key);
    if (ret == ERR_OK)
        ret = buf_adds(b, "}]}");
    if (ret != ERR_OK)
        goto out;
    ret = txn_call(c, "response_delete_range", &succeeded, &rev, &op, &root);
    if (ret != ERR_OK)
        goto out;
    if (succeeded) {
        int64_t n = 0;
        if (!op || !j_int64(op, "deleted", &n) || n < 0 || n > 1) {
            ret = bad_response(c, path, "delete_fields");
            goto out;
        }
        *deleted = n == 1;
    }
out:
    json_decref(root);
    return ret;
}
