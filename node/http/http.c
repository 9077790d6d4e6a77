/* HTTP/1.1 transport over libuv poll handles on raw non-blocking sockets, so that
 * reads, writev and sendfile are ours to schedule. Each connection is a state
 * machine (enum conn_state) driven by one transition function, conn_run. */
#include "../../common/clock.h"
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "../../common/log.h"
#include "../../common/banned.h"

#define READ_BUF_SIZE (256u << 10)
#define SINK_CHUNK (1u << 20)     /* body bytes handed to the pool per write */
#define DISCARD_LIMIT (64u << 10) /* body we read and drop after an early error */
#define SENDFILE_STEP (4u << 20)
#define INLINE_BODY_MAX (16u << 10) /* memory bodies copied next to the headers */
#define SWEEP_MS 250
#define TLS_FILE_BUF (64u << 10) /* file bodies are read and encrypted in pieces */
#define LINGER_MS 3000
#define LINGER_MAX_BYTES (64u << 20)
#define PARK_TICK_MS 25              /* how often parked requests are looked at */
#define PARK_PENDING_MAX (64u << 10) /* pipelined bytes kept while a request is parked */
#define ADDR_BUCKETS 1024            /* per-address connection counts */

enum conn_state {
    CS_TLS,      /* TLS handshake (header timeout) */
    CS_IDLE,     /* keep-alive: waiting for a request (idle timeout) */
    CS_HEADERS,  /* reading request line and headers (header timeout) */
    CS_PRE_BODY, /* the request's pre_body step runs on the pool; reading paused */
    CS_BODY,     /* reading the body (body timeout between reads) */
    CS_HANDLING, /* body complete: draining the sink, then the handler runs */
    CS_SENDING,  /* writing the response (body timeout between writes) */
    CS_LINGER,   /* answered before reading the whole request: our side is shut down,
                    the rest of the request is read and dropped so the client sees the
                    answer instead of a reset (bounded in time and bytes) */
    CS_PARKED,   /* the handler asked to be re-run later (park_ms): no pool thread is
                    held, the socket is watched so a client that leaves drops it */
};

enum job_kind { JOB_NONE, JOB_PRE, JOB_HANDLER, JOB_SINK };

struct worker;

struct conn {
    struct conn *prev, *next;
    struct worker *w;
    uv_poll_t poll;
    int fd;
    int events;
    llhttp_t parser;
    enum conn_state state;
    struct http_req *req;
    buf pending;      /* bytes read but not parsed while the parser is paused */
    bool paused;      /* parser paused at a request boundary or before a body */
    bool backpressure;
    bool read_eof;
    bool close_after;
    bool closing;
    bool hdr_too_large;
    bool pre_done;
    bool linger_needed; /* the answer goes out before the request was fully read */
    bool handler_ran;   /* the handler ran for this request and may have parked it */
    const char *bad_detail; /* why a callback refused the request (static) */
    bool addr_counted;  /* counted in the server's per-address table */
    unsigned char addr_key[16]; /* peer address (IPv4 as v4-mapped IPv6; IPv6 its /64) */
    uint64_t req_start;  /* loop time the request began (request log) */
    uint64_t park_until; /* CS_PARKED: loop time to re-run the handler */
    uint64_t lingered;
    uint64_t deadline; /* loop time in ms; 0: none */

    /* header assembly: offsets into req->raw */
    size_t name_start, name_len, value_start;

    /* body sink double buffer */
    buf sink_buf[2];
    int sink_fill;
    int sink_job_buf;

    uv_work_t work;
    enum job_kind job;
    err job_err;

    /* response output */
    buf out;
    size_t out_off;
    bool file_sending;
    char peer[64];

    /* TLS */
    unsigned lidx; /* listener */
    SSL *ssl;
    bool tls_want_write; /* the TLS layer needs the socket writable to go on */
    char *tbuf;          /* file body piece being encrypted */
    size_t tbuf_len, tbuf_off;
};

struct cidr {
    int family;
    unsigned char addr[16];
    unsigned prefix;
};

struct listener {
    char name[32];
    char host[128];
    int port;
    char cert[1024], key[1024];
    bool tls;
    uv_mutex_t ctx_mu;
    SSL_CTX *ctx; /* under ctx_mu; SSL objects hold their own reference */
    struct cidr allow[HTTP_MAX_CIDRS];
    size_t nallow;
};

struct lref {
    struct worker *w;
    unsigned idx;
};

struct worker {
    http_server *srv;
    unsigned idx;
    uv_loop_t loop;
    uv_thread_t thread;
    int listen_fd[HTTP_MAX_LISTENERS];
    uv_poll_t listen_poll[HTTP_MAX_LISTENERS];
    struct lref lref[HTTP_MAX_LISTENERS];
    uv_async_t wake;
    uv_timer_t sweep;
    uv_timer_t park; /* runs while nparked > 0 */
    size_t nparked;
    uint64_t rid_next; /* generated request ids: prefix + counter */
    struct conn *conns;
    size_t nconns;
    bool stopping, forcing, listen_closed;
    uv_mutex_t finish_mu; /* guards finished against uv_async_send from the stopper */
    bool finished;
    char *rbuf;
    char date[64];
};

struct http_server {
    struct http_config cfg;
    struct listener lis[HTTP_MAX_LISTENERS];
    size_t nlis;
    void (*on_headers)(struct http_req *r);
    void *app;
    struct worker *workers;
    unsigned nworkers;
    struct http_stats stats;
    _Atomic unsigned nconns;
    _Atomic int stop_phase; /* 0 running, 1 draining, 2 forcing */
    llhttp_settings_t settings;
    uv_mutex_t addr_mu; /* guards addr_tab */
    struct addr_count *addr_tab[ADDR_BUCKETS];
    char rid_prefix[17]; /* random per process, so generated ids differ across nodes */
};

/* open connections of one client address */
struct addr_count {
    struct addr_count *next;
    unsigned char key[16];
    unsigned n;
};

static void conn_run(struct conn *c);
static void conn_close(struct conn *c);
static bool conn_send_all(struct conn *c, const char *p, size_t n);
static void conn_update_poll(struct conn *c);
static void conn_parked_read(struct conn *c);
static bool conn_park(struct conn *c);
static void worker_wake(struct worker *w);
static void addr_release(http_server *srv, const unsigned char key[16]);

/* ---- small helpers ---- */

static const char *
reason_of(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 416: return "Range Not Satisfiable";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    case 507: return "Insufficient Storage";
    default: return "Unknown";
    }
}

static void
update_date(struct worker *w)
{
    time_t t = (time_t)clock_wall_s();
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(w->date, sizeof w->date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

static uint64_t
now_ms(struct worker *w)
{
    return uv_now(&w->loop);
}

static unsigned
fnv_key(const unsigned char key[16])
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < 16; i++)
        h = (h ^ key[i]) * 16777619u;
    return h;
}

/* ---- request lifecycle ---- */

static struct http_req *
req_new(struct conn *c)
{
    struct http_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->server = c->w->srv;
    r->app = c->w->srv->app;
    r->resp.fd = -1;
    buf_init(&r->body);
    buf_init(&r->raw);
    buf_init(&r->resp.headers);
    buf_init(&r->resp.body);
    str_copy(r->peer, sizeof r->peer, c->peer);
    r->listener = c->w->srv->lis[c->lidx].name;
    r->tls = c->ssl != NULL;
    r->conn = c;
    return r;
}

static void
req_free(struct http_req *r)
{
    if (!r)
        return;
    if (r->app_free)
        r->app_free(r);
    free(r->access);
    if (r->resp.fd >= 0)
        close(r->resp.fd);
    buf_release(&r->body);
    buf_release(&r->raw);
    buf_release(&r->resp.headers);
    buf_release(&r->resp.body);
    free(r);
}

/* ---- llhttp callbacks: they only record; conn_run acts ---- */

static struct conn *
conn_of(llhttp_t *p)
{
    return p->data;
}

static int
raw_add(struct conn *c, const char *at, size_t len)
{
    struct http_req *r = c->req;
    if (r->raw.len + len > c->w->srv->cfg.max_header_bytes) {
        c->hdr_too_large = true;
        return HPE_USER;
    }
    return buf_add(&r->raw, at, len) ? HPE_USER : 0;
}

static int
on_message_begin(llhttp_t *p)
{
    struct conn *c = conn_of(p);
    if (!c->req && !(c->req = req_new(c)))
        return HPE_USER;
    c->state = CS_HEADERS;
    c->deadline = now_ms(c->w) + c->w->srv->cfg.header_timeout_ms;
    c->req_start = now_ms(c->w);
    atomic_fetch_add(&c->w->srv->stats.requests, 1);
    return 0;
}

static int
on_url(llhttp_t *p, const char *at, size_t len)
{
    return raw_add(conn_of(p), at, len);
}

static int
on_url_complete(llhttp_t *p)
{
    struct conn *c = conn_of(p);
    c->req->url_len = c->req->raw.len;
    return 0;
}

/* Trailer fields (after a chunked body) are ignored: by then the headers are slices
 * into req->raw, which must not grow or move. */
#define TRAILING(p) (((p)->flags & F_TRAILING) != 0)

static int
on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = conn_of(p);
    if (TRAILING(p))
        return 0;
    if (c->name_start == SIZE_MAX)
        c->name_start = c->req->raw.len;
    return raw_add(c, at, len);
}

static int
on_header_field_complete(llhttp_t *p)
{
    struct conn *c = conn_of(p);
    struct http_req *r = c->req;
    if (TRAILING(p))
        return 0;
    if (c->name_start == SIZE_MAX)
        c->name_start = r->raw.len;
    c->name_len = r->raw.len - c->name_start;
    for (size_t i = 0; i < c->name_len; i++) {
        char *ch = &r->raw.ptr[c->name_start + i];
        if (*ch >= 'A' && *ch <= 'Z')
            *ch = (char)(*ch + 32);
        if (*ch == ' ' || *ch == '\t') {
            /* "Name : value": RFC 9112 5.1 says reject (request smuggling) */
            c->bad_detail = "whitespace between header name and colon";
            return HPE_USER;
        }
    }
    c->value_start = r->raw.len;
    return 0;
}

static int
on_header_value(llhttp_t *p, const char *at, size_t len)
{
    if (TRAILING(p))
        return 0;
    return raw_add(conn_of(p), at, len);
}

static int
on_header_value_complete(llhttp_t *p)
{
    struct conn *c = conn_of(p);
    struct http_req *r = c->req;
    if (TRAILING(p))
        return 0;
    if (r->nheaders >= HTTP_MAX_HEADERS) {
        c->hdr_too_large = true;
        return HPE_USER;
    }
    /* offsets for now; turned into slices once raw stops moving */
    struct http_header *h = &r->headers[r->nheaders++];
    h->name = (slice){(const char *)(uintptr_t)c->name_start, c->name_len};
    size_t vs = c->value_start, ve = r->raw.len;
    while (vs < ve && (r->raw.ptr[vs] == ' ' || r->raw.ptr[vs] == '\t'))
        vs++;
    while (ve > vs && (r->raw.ptr[ve - 1] == ' ' || r->raw.ptr[ve - 1] == '\t'))
        ve--;
    h->value = (slice){(const char *)(uintptr_t)vs, ve - vs};
    c->name_start = SIZE_MAX;
    return 0;
}

static enum http_method
method_of(uint8_t m)
{
    switch (m) {
    case HTTP_GET: return M_GET;
    case HTTP_HEAD: return M_HEAD;
    case HTTP_PUT: return M_PUT;
    case HTTP_POST: return M_POST;
    case HTTP_PATCH: return M_PATCH;
    case HTTP_DELETE: return M_DELETE;
    default: return M_OTHER;
    }
}

/* rid_sane: a client's request id we echo and log: 1-64 of [A-Za-z0-9._:-]. */
static bool
rid_sane(slice v)
{
    if (!v.ptr || v.len == 0 || v.len > 64)
        return false;
    for (size_t i = 0; i < v.len; i++) {
        char ch = v.ptr[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == ':' || ch == '-'))
            return false;
    }
    return true;
}

static void
req_new_id(struct conn *c, struct http_req *r)
{
    snprintf(r->request_id, sizeof r->request_id, "%s-%x-%llx", c->w->srv->rid_prefix, c->w->idx,
             (unsigned long long)++c->w->rid_next);
}

/* req_set_id takes the client's X-Request-Id when sane, else makes one up (headers
 * must be slices already). */
static void
req_set_id(struct conn *c, struct http_req *r)
{
    slice v = http_req_header(r, "x-request-id");
    if (rid_sane(v))
        str_copy_slice(r->request_id, sizeof r->request_id, v);
    else
        req_new_id(c, r);
}

/* headers_refuse answers a request whose head is not acceptable HTTP/1.x and closes. */
static int
headers_refuse(struct conn *c, err e, const char *detail)
{
    struct http_req *r = c->req;
    http_resp_error(r, e, NULL, detail);
    if (r->method == M_HEAD)
        buf_reset(&r->resp.body); /* Content-Length: 0, so the framing is right either way */
    r->resp.close = true;
    r->body_mode = BODY_DISCARD;
    c->linger_needed = true;
    c->state = CS_HANDLING;
    return HPE_PAUSED;
}

static int
on_headers_complete(llhttp_t *p)
{
    struct conn *c = conn_of(p);
    struct http_req *r = c->req;
    http_server *srv = c->w->srv;
    const char *base = r->raw.ptr;

    for (size_t i = 0; i < r->nheaders; i++) {
        r->headers[i].name.ptr = base + (uintptr_t)r->headers[i].name.ptr;
        r->headers[i].value.ptr = base + (uintptr_t)r->headers[i].value.ptr;
    }
    req_set_id(c, r);
    {
        slice url = {base, r->url_len};
        const char *q = memchr(url.ptr, '?', url.len);
        r->path = q ? (slice){url.ptr, (size_t)(q - url.ptr)} : url;
        r->method = method_of(llhttp_get_method(p));
    }
    /* only HTTP/1.0 and 1.1 are spoken here (no 0.9 request lines, no 2.0 over
     * plain text), and an HTTP/1.1 request must name its Host (RFC 9112 3.2) */
    if (p->http_major != 1 || p->http_minor > 1)
        return p->http_major == 0 ? headers_refuse(c, ERR_BAD_REQUEST, "HTTP/0.9 is not supported")
                                  : headers_refuse(c, ERR_HTTP_VERSION, NULL);
    if (p->http_minor == 1 && !http_req_header(r, "host").ptr)
        return headers_refuse(c, ERR_BAD_REQUEST, "missing Host header");
    slice url = {base, r->url_len};
    const char *q = memchr(url.ptr, '?', url.len);
    r->path = q ? (slice){url.ptr, (size_t)(q - url.ptr)} : url;
    r->query = q ? (slice){q + 1, url.len - (size_t)(q - url.ptr) - 1} : (slice){"", 0};
    r->method = method_of(llhttp_get_method(p));
    r->chunked = (p->flags & F_CHUNKED) != 0;
    r->park_ms = 0;
    r->has_length = (p->flags & F_CONTENT_LENGTH) != 0;
    r->content_length = r->has_length ? p->content_length : 0;
    slice expect = http_req_header(r, "expect");
    r->expect_continue = expect.ptr && slice_case_eq_cstr(expect, "100-continue");
    c->deadline = 0;

    srv->on_headers(r);

    if (!r->resp.status && r->body_mode == BODY_BUFFER && r->has_length &&
        r->content_length > r->body_limit)
        http_resp_error(r, ERR_BODY_TOO_LARGE, NULL, NULL); /* refuse before reading it */

    bool has_body = r->chunked || (r->has_length && r->content_length > 0);
    if (r->resp.status) {
        /* answered before the body: read and drop a small body, else close after */
        r->body_mode = BODY_DISCARD;
        if (!has_body)
            return 0;
        if (r->expect_continue || r->chunked || r->content_length > DISCARD_LIMIT) {
            r->resp.close = true;
            c->linger_needed = !r->expect_continue;
            c->state = CS_HANDLING;
            return HPE_PAUSED;
        }
        c->state = CS_BODY;
        c->deadline = now_ms(c->w) + srv->cfg.body_timeout_ms;
        return 0;
    }
    if (r->body_mode == BODY_BUFFER && r->has_length && r->content_length > r->body_limit) {
        r->body_too_large = true;
        r->body_mode = BODY_DISCARD;
    }
    if (r->pre_body && has_body) {
        /* without a body the step runs at message end, in CS_HANDLING */
        c->state = CS_PRE_BODY;
        c->pre_done = false;
        return HPE_PAUSED;
    }
    if (has_body && r->expect_continue) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (!conn_send_all(c, cont, sizeof cont - 1))
            return HPE_USER;
    }
    c->state = CS_BODY;
    c->deadline = now_ms(c->w) + srv->cfg.body_timeout_ms;
    return 0;
}

static int
on_body(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = conn_of(p);
    struct http_req *r = c->req;
    r->body_received += len;
    switch (r->body_mode) {
    case BODY_DISCARD:
        if (r->resp.status && r->body_received > DISCARD_LIMIT) {
            r->resp.close = true;
            c->linger_needed = true;
            return HPE_USER;
        }
        break;
    case BODY_BUFFER:
        if (r->body.len + len > r->body_limit) {
            r->body_too_large = true;
            buf_release(&r->body);
            r->body_mode = BODY_DISCARD;
            break;
        }
        if (buf_add(&r->body, at, len))
            return HPE_USER;
        break;
    case BODY_SINK:
        if (r->sink_err)
            break;
        if (buf_add(&c->sink_buf[c->sink_fill], at, len))
            return HPE_USER;
        break;
    }
    return 0;
}

static int
on_message_complete(llhttp_t *p)
{
    struct conn *c = conn_of(p);
    c->state = CS_HANDLING;
    c->deadline = 0;
    return HPE_PAUSED;
}

/* ---- socket I/O, plain or TLS ---- */

/* conn_recv: >0 bytes, 0 at EOF, -1 with errno (EAGAIN: try again later). */
static ssize_t
conn_recv(struct conn *c, char *p, size_t n)
{
    if (!c->ssl)
        return read(c->fd, p, n);
    ERR_clear_error();
    int k = SSL_read(c->ssl, p, (int)(n > INT_MAX ? INT_MAX : n));
    if (k > 0)
        return k;
    switch (SSL_get_error(c->ssl, k)) {
    case SSL_ERROR_WANT_READ:
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        c->tls_want_write = true;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    default:
        errno = EIO;
        return -1;
    }
}

/* conn_send: bytes written (maybe fewer than n), or -1 with errno. */
static ssize_t
conn_send(struct conn *c, const void *p, size_t n)
{
    if (!c->ssl)
        return write(c->fd, p, n);
    ERR_clear_error();
    int k = SSL_write(c->ssl, p, (int)(n > INT_MAX ? INT_MAX : n));
    if (k > 0)
        return k;
    int e = SSL_get_error(c->ssl, k);
    errno = e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ ? EAGAIN : EPIPE;
    return -1;
}

static ssize_t
conn_sendv(struct conn *c, struct iovec *iov, int n)
{
    if (!c->ssl)
        return writev(c->fd, iov, n);
    for (int i = 0; i < n; i++)
        if (iov[i].iov_len)
            return conn_send(c, iov[i].iov_base, iov[i].iov_len);
    return 0;
}

/* conn_send_all writes a small interim answer (100 Continue) completely or fails. */
static bool
conn_send_all(struct conn *c, const char *p, size_t n)
{
    for (int tries = 0; n && tries < 100; tries++) {
        ssize_t k = conn_send(c, p, n);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
        } else if (k < 0 && errno != EAGAIN && errno != EINTR) {
            return false;
        }
    }
    return n == 0;
}

/* ---- reading ---- */

/* conn_feed parses bytes; anything after a pause point is kept in c->pending. */
static void
conn_feed(struct conn *c, const char *data, size_t len)
{
    llhttp_errno_t e = llhttp_execute(&c->parser, data, len);
    if (e == HPE_OK && c->state == CS_HEADERS && c->req && c->req->url_len &&
        c->parser.http_major == 0 && c->parser.http_minor == 9) {
        /* "GET /path" with no version is HTTP/0.9: refused now, not after the header
         * timeout (llhttp goes on reading headers for it) */
        c->req->url_len = 0;
        http_resp_error(c->req, ERR_BAD_REQUEST, NULL, "HTTP/0.9 is not supported");
        e = HPE_USER;
    }
    if (e == HPE_OK)
        return;
    if (e == HPE_PAUSED) {
        const char *pos = llhttp_get_error_pos(&c->parser);
        size_t rest = (size_t)(data + len - pos);
        c->paused = true;
        if (data >= c->pending.ptr && data < c->pending.ptr + c->pending.len + 1 &&
            c->pending.len) {
            memmove(c->pending.ptr, pos, rest);
            buf_truncate(&c->pending, rest);
        } else if (rest && buf_add(&c->pending, pos, rest)) {
            c->close_after = true;
        }
        return;
    }
    /* a parse error or a callback refusal: answer and close */
    if (!c->req)
        c->req = req_new(c);
    if (!c->req) {
        conn_close(c);
        return;
    }
    struct http_req *r = c->req;
    if (!r->resp.status) {
        if (c->hdr_too_large)
            http_resp_error(r, ERR_HEADERS_TOO_LARGE, NULL, NULL);
        else if (e == HPE_INVALID_VERSION && c->parser.http_major >= 2)
            http_resp_error(r, ERR_HTTP_VERSION, NULL, NULL);
        else
            http_resp_error(r, ERR_BAD_REQUEST, NULL,
                            c->bad_detail ? c->bad_detail : llhttp_errno_name(e));
    }
    r->resp.close = true;
    c->linger_needed = true;
    c->paused = true;
    buf_reset(&c->pending);
    c->state = CS_HANDLING;
}

static void
conn_linger_read(struct conn *c)
{
    struct worker *w = c->w;
    for (;;) {
        ssize_t n = conn_recv(c, w->rbuf, READ_BUF_SIZE);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            conn_update_poll(c);
            return;
        }
        if (n <= 0 || (c->lingered += (uint64_t)n) > LINGER_MAX_BYTES) {
            conn_close(c);
            return;
        }
    }
}

static void conn_read(struct conn *c);

static void
tls_handshake(struct conn *c)
{
    ERR_clear_error();
    int k = SSL_do_handshake(c->ssl);
    if (k == 1) {
        c->tls_want_write = false;
        c->state = CS_IDLE;
        c->deadline = now_ms(c->w) + c->w->srv->cfg.idle_timeout_ms;
        conn_read(c); /* the first request may already be here */
        return;
    }
    int e = SSL_get_error(c->ssl, k);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        c->tls_want_write = e == SSL_ERROR_WANT_WRITE;
        conn_update_poll(c);
        return;
    }
    log_debug("HTTP-TLS-HANDSHAKE", "peer=%s error=\"%s\"", c->peer,
              ERR_peek_last_error() ? ERR_reason_error_string(ERR_peek_last_error()) : "closed");
    conn_close(c);
}

static void
conn_read(struct conn *c)
{
    struct worker *w = c->w;
    if (c->state == CS_TLS) {
        tls_handshake(c);
        return;
    }
    if (c->state == CS_LINGER) {
        conn_linger_read(c);
        return;
    }
    if (c->state == CS_PARKED) {
        conn_parked_read(c);
        return;
    }
    for (int i = 0; i < 16 && !c->paused && !c->closing && !c->backpressure; i++) {
        ssize_t n = conn_recv(c, w->rbuf, READ_BUF_SIZE);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                c->read_eof = true;
            break;
        }
        if (n == 0) {
            c->read_eof = true;
            break;
        }
        atomic_fetch_add(&w->srv->stats.bytes_in, (uint64_t)n);
        if (c->state == CS_BODY)
            c->deadline = now_ms(w) + w->srv->cfg.body_timeout_ms;
        conn_feed(c, w->rbuf, (size_t)n);
        if (c->state == CS_BODY && c->req && c->req->body_mode == BODY_SINK &&
            c->sink_buf[c->sink_fill].len >= SINK_CHUNK) {
            /* a chunk is ready: conn_run hands it to the pool before we read more */
            if (c->job != JOB_NONE)
                c->backpressure = true;
            break;
        }
        if ((size_t)n < READ_BUF_SIZE && !(c->ssl && SSL_pending(c->ssl)))
            break;
    }
    /* TLS may hold the rest of a record (<= 16 KiB) that no poll event will announce:
     * keep it with the unparsed bytes so nothing is left behind */
    while (c->ssl && !c->read_eof && !c->closing && SSL_pending(c->ssl) > 0) {
        ssize_t n = conn_recv(c, w->rbuf, READ_BUF_SIZE);
        if (n <= 0)
            break;
        atomic_fetch_add(&w->srv->stats.bytes_in, (uint64_t)n);
        buf_add(&c->pending, w->rbuf, (size_t)n);
    }
    if (c->read_eof) {
        if (c->state == CS_IDLE || c->state == CS_HEADERS || c->state == CS_BODY) {
            conn_close(c);
            return;
        }
        c->close_after = true;
    }
    conn_run(c);
}

/* ---- the thread pool ---- */

static void
job_work(uv_work_t *wk)
{
    struct conn *c = wk->data;
    struct http_req *r = c->req;
    switch (c->job) {
    case JOB_PRE:
        r->pre_body(r, false);
        break;
    case JOB_HANDLER:
        r->handler(r, false);
        break;
    case JOB_SINK: {
        buf *b = &c->sink_buf[c->sink_job_buf];
        c->job_err = r->sink(r->sink_ctx, b->ptr, b->len);
        break;
    }
    case JOB_NONE:
        break;
    }
}

static void
job_done(uv_work_t *wk, int status)
{
    struct conn *c = wk->data;
    enum job_kind kind = c->job;
    c->job = JOB_NONE;
    (void)status;
    if (kind == JOB_SINK) {
        buf_reset(&c->sink_buf[c->sink_job_buf]);
        if (c->job_err && c->req && !c->req->sink_err)
            c->req->sink_err = c->job_err;
        c->backpressure = false;
    } else if (kind == JOB_PRE) {
        c->pre_done = true;
    } else if (kind == JOB_HANDLER) {
        c->handler_ran = true;
    }
    if (c->closing) {
        c->closing = false;
        conn_close(c);
        return;
    }
    conn_run(c);
}

static void
job_submit(struct conn *c, enum job_kind kind)
{
    c->job = kind;
    c->work.data = c;
    atomic_fetch_add(&c->w->srv->stats.pool_jobs, 1);
    int rc = uv_queue_work(&c->w->loop, &c->work, job_work, job_done);
    if (rc != 0) {
        /* cannot happen with a valid loop; run inline rather than lose the request */
        job_work(&c->work);
        job_done(&c->work, rc);
    }
}

/* ---- writing ---- */

/* req_log writes the request log line: at info with http.access_log, else at debug.
 * ms is the time from the first request byte to the response head. */
static void
req_log(struct conn *c, uint64_t bytes)
{
    http_server *srv = c->w->srv;
    int lvl = srv->cfg.access_log ? LOG_INFO : LOG_DEBUG;
    if (lvl > log_level_)
        return;
    struct http_req *r = c->req;
    uv_update_time(&c->w->loop);
    uint64_t ms = c->req_start ? now_ms(c->w) - c->req_start : 0;
    bool parsed = r->path.ptr != NULL;
    const char *method = parsed ? llhttp_method_name((llhttp_method_t)c->parser.method) : "-";
    slice path = parsed ? r->path : (slice){"-", 1};
    const char *actor = parsed && srv->cfg.actor_of ? srv->cfg.actor_of(r) : "-";
    /* the target as the client sent it, but one log line: quote, backslash, controls
     * and non-ASCII bytes are written %XX, at most 512 bytes of it */
    char esc[512 * 3 + 1];
    size_t j = 0;
    for (size_t i = 0; i < path.len && i < 512; i++) {
        unsigned char ch = (unsigned char)path.ptr[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '"' || ch == '\\') {
            snprintf(esc + j, 4, "%%%02X", ch);
            j += 3;
        } else {
            esc[j++] = (char)ch;
        }
    }
    esc[j] = '\0';
    log_write(lvl, "HTTP-REQ",
              "method=%s path=\"%s\" status=%d bytes=%llu ms=%llu actor=%s request_id=%s "
              "peer=%s listener=%s",
              method, esc, r->resp.status,
              (unsigned long long)bytes, (unsigned long long)ms, actor ? actor : "-",
              r->request_id, r->peer, r->listener);
}

static void
resp_build_head(struct conn *c)
{
    struct http_req *r = c->req;
    struct http_resp *rs = &r->resp;
    buf *o = &c->out;
    uint64_t clen = rs->fd >= 0 ? rs->file_len : rs->body.len;
    if (r->method == M_HEAD && rs->head_len)
        clen = rs->head_len;
    if (c->close_after || c->w->stopping)
        rs->close = true;
    buf_reset(o);
    c->out_off = 0;
    buf_addf(o, "HTTP/1.1 %d %s\r\nDate: %s\r\nDocker-Distribution-API-Version: registry/2.0\r\n",
             rs->status, reason_of(rs->status), c->w->date);
    if (rs->status != 204 && rs->status != 304)
        buf_addf(o, "Content-Length: %llu\r\n", (unsigned long long)clen);
    if (!r->request_id[0])
        req_new_id(c, r); /* refused before its headers were complete */
    buf_addf(o, "X-Request-Id: %s\r\n", r->request_id);
    buf_add(o, rs->headers.ptr, rs->headers.len);
    if (rs->close)
        buf_adds(o, "Connection: close\r\n");
    buf_adds(o, "\r\n");
    if (r->method == M_HEAD || rs->no_body || rs->status == 204 || rs->status == 304) {
        rs->no_body = true;
        if (rs->fd >= 0) {
            close(rs->fd);
            rs->fd = -1;
        }
        buf_release(&rs->body);
    } else if (rs->body.len && rs->body.len <= INLINE_BODY_MAX) {
        buf_add(o, rs->body.ptr, rs->body.len);
        buf_release(&rs->body);
    }
    req_log(c, clen);
    int s = rs->status;
    struct http_stats *st = &c->w->srv->stats;
    atomic_fetch_add(s < 300 ? &st->responses_2xx
                             : s < 400 ? &st->responses_3xx
                                       : s < 500 ? &st->responses_4xx : &st->responses_5xx,
                     1);
}

/* conn_write pushes the response out; true when all of it is written. */
static bool
conn_write(struct conn *c)
{
    struct http_resp *rs = &c->req->resp;
    struct http_stats *st = &c->w->srv->stats;
    for (;;) {
        size_t head_left = c->out.len - c->out_off;
        if (head_left || rs->body.len) {
            struct iovec iov[2];
            int n = 0;
            if (head_left)
                iov[n++] = (struct iovec){c->out.ptr + c->out_off, head_left};
            if (rs->body.len)
                iov[n++] = (struct iovec){rs->body.ptr, rs->body.len};
            ssize_t w = conn_sendv(c, iov, n);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return false;
                c->close_after = true;
                c->read_eof = true;
                return true;
            }
            atomic_fetch_add(&st->bytes_out, (uint64_t)w);
            size_t wn = (size_t)w;
            size_t from_head = wn < head_left ? wn : head_left;
            c->out_off += from_head;
            wn -= from_head;
            if (wn) {
                memmove(rs->body.ptr, rs->body.ptr + wn, rs->body.len - wn);
                buf_truncate(&rs->body, rs->body.len - wn);
            }
            c->deadline = now_ms(c->w) + c->w->srv->cfg.body_timeout_ms;
            continue;
        }
        if (c->ssl && rs->fd >= 0 && (rs->file_len || c->tbuf_off < c->tbuf_len)) {
            /* no sendfile through TLS: bounded pieces read here and encrypted */
            if (c->tbuf_off == c->tbuf_len) {
                if (!c->tbuf && !(c->tbuf = malloc(TLS_FILE_BUF))) {
                    c->close_after = c->read_eof = true;
                    return true;
                }
                size_t want = rs->file_len < TLS_FILE_BUF ? (size_t)rs->file_len : TLS_FILE_BUF;
                ssize_t k = pread(rs->fd, c->tbuf, want, (off_t)rs->file_off);
                if (k <= 0) {
                    log_error("HTTP-FILE-READ", "peer=%s", c->peer);
                    c->close_after = c->read_eof = true;
                    return true;
                }
                c->tbuf_len = (size_t)k;
                c->tbuf_off = 0;
                rs->file_off += (uint64_t)k;
                rs->file_len -= (uint64_t)k;
            }
            ssize_t w = conn_send(c, c->tbuf + c->tbuf_off, c->tbuf_len - c->tbuf_off);
            if (w < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    return false;
                c->close_after = c->read_eof = true;
                return true;
            }
            atomic_fetch_add(&st->bytes_out, (uint64_t)w);
            c->tbuf_off += (size_t)w;
            c->deadline = now_ms(c->w) + c->w->srv->cfg.body_timeout_ms;
            continue;
        }
        if (rs->fd >= 0 && rs->file_len) {
            off_t off = (off_t)rs->file_off;
            size_t want = rs->file_len < SENDFILE_STEP ? (size_t)rs->file_len : SENDFILE_STEP;
            ssize_t w = sendfile(c->fd, rs->fd, &off, want);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return false;
                log_warn("HTTP-SENDFILE", "peer=%s error=\"%s\"", c->peer, strerror(errno));
                c->close_after = true;
                c->read_eof = true;
                return true;
            }
            if (w == 0) {
                /* the file is shorter than its record: never pad with garbage */
                log_error("HTTP-SENDFILE-SHORT", "peer=%s", c->peer);
                c->close_after = true;
                c->read_eof = true;
                return true;
            }
            atomic_fetch_add(&st->bytes_out, (uint64_t)w);
            rs->file_off += (uint64_t)w;
            rs->file_len -= (uint64_t)w;
            c->deadline = now_ms(c->w) + c->w->srv->cfg.body_timeout_ms;
            continue;
        }
        return true;
    }
}

/* ---- the transition function ---- */

/* resp_reset forgets a partial answer (a nowait handler that had to give up). */
static void
resp_reset(struct http_resp *rs)
{
    rs->status = 0;
    buf_reset(&rs->headers);
    buf_reset(&rs->body);
    if (rs->fd >= 0)
        close(rs->fd);
    rs->fd = -1;
    rs->file_off = rs->file_len = rs->head_len = 0;
    rs->no_body = rs->close = false;
}

static void on_park_tick(uv_timer_t *t);

/* conn_park leaves a request whose handler asked to wait: no pool thread holds it;
 * the worker's park timer re-runs the handler when it is due, or on_wake when it is
 * woken (http_req_wake). false when it was woken already: run it again now. */
static bool
conn_park(struct conn *c)
{
    struct worker *w = c->w;
    if (atomic_exchange(&c->req->woken, false)) {
        c->req->park_ms = 0;
        return false;
    }
    c->state = CS_PARKED;
    c->park_until = now_ms(w) + c->req->park_ms;
    c->req->park_ms = 0;
    c->deadline = 0;
    if (w->nparked++ == 0)
        uv_timer_start(&w->park, on_park_tick, PARK_TICK_MS, PARK_TICK_MS);
    return true;
}

/* conn_unpark: the handler runs again now (due, or the server stops). */
static void
conn_unpark(struct conn *c)
{
    struct worker *w = c->w;
    c->state = CS_HANDLING;
    if (--w->nparked == 0)
        uv_timer_stop(&w->park);
}

static void
on_park_tick(uv_timer_t *t)
{
    struct worker *w = t->data;
    uint64_t now = now_ms(w);
    struct conn *c = w->conns, *next;
    for (; c; c = next) {
        next = c->next;
        if (c->state == CS_PARKED && !c->closing && (now >= c->park_until || w->stopping)) {
            conn_unpark(c);
            conn_run(c); /* may close c; next was taken before */
        }
    }
}

/* conn_parked_read watches a parked request's socket: end of stream or an error
 * means the client left, so the request is dropped; pipelined bytes are kept
 * (bounded) for after the answer. */
static void
conn_parked_read(struct conn *c)
{
    struct worker *w = c->w;
    for (;;) {
        ssize_t n = conn_recv(c, w->rbuf, READ_BUF_SIZE);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            conn_close(c);
            return;
        }
        atomic_fetch_add(&w->srv->stats.bytes_in, (uint64_t)n);
        if (c->pending.len + (size_t)n > PARK_PENDING_MAX ||
            buf_add(&c->pending, w->rbuf, (size_t)n)) {
            conn_close(c);
            return;
        }
    }
}

static void
request_done(struct conn *c)
{
    req_free(c->req);
    c->req = NULL;
    buf_reset(&c->out);
    c->out_off = 0;
    c->pre_done = false;
    c->handler_ran = false;
    free(c->tbuf);
    c->tbuf = NULL;
    c->tbuf_len = c->tbuf_off = 0;
    c->deadline = now_ms(c->w) + c->w->srv->cfg.idle_timeout_ms;
    c->state = CS_IDLE;
    c->name_start = SIZE_MAX;
    for (int i = 0; i < 2; i++)
        if (c->sink_buf[i].cap > SINK_CHUNK * 2)
            buf_release(&c->sink_buf[i]);
        else
            buf_reset(&c->sink_buf[i]);
}

static void
conn_run(struct conn *c)
{
    for (;;) {
        if (c->job != JOB_NONE) {
            /* a pool job owns the request; only a sink write lets reading go on */
            if (c->job != JOB_SINK)
                break;
        }
        struct http_req *r = c->req;
        switch (c->state) {
        case CS_IDLE:
        case CS_HEADERS:
            if (c->paused) {
                c->paused = false;
                llhttp_resume(&c->parser);
            }
            if (c->pending.len) {
                conn_feed(c, c->pending.ptr, c->pending.len);
                if (!c->paused)
                    buf_reset(&c->pending);
                if (c->paused || c->state != CS_IDLE)
                    continue;
            }
            goto wait;
        case CS_PRE_BODY:
            if (!c->pre_done) {
                job_submit(c, JOB_PRE);
                goto wait;
            }
            if (r->resp.status) {
                bool has_body = r->chunked || (r->has_length && r->content_length > 0);
                if (has_body) {
                    /* answered before the body, as in on_headers_complete */
                    r->resp.close = true;
                    c->linger_needed = !r->expect_continue;
                }
                c->state = CS_HANDLING;
                continue;
            }
            if (r->expect_continue && (r->chunked || r->content_length)) {
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                if (!conn_send_all(c, cont, sizeof cont - 1)) {
                    conn_close(c);
                    return;
                }
            }
            c->state = CS_BODY;
            c->deadline = now_ms(c->w) + c->w->srv->cfg.body_timeout_ms;
            c->paused = false;
            llhttp_resume(&c->parser);
            if (c->pending.len) {
                /* the parser may pause again at message end; conn_feed keeps the rest */
                conn_feed(c, c->pending.ptr, c->pending.len);
                if (!c->paused)
                    buf_reset(&c->pending);
            }
            continue;
        case CS_BODY:
            if (!c->paused && !c->backpressure && c->pending.len &&
                (r->body_mode != BODY_SINK || c->sink_buf[c->sink_fill].len < SINK_CHUNK)) {
                /* bytes kept while reading was held back (TLS record leftovers) */
                buf tmp = c->pending;
                buf_init(&c->pending);
                conn_feed(c, tmp.ptr, tmp.len);
                buf_release(&tmp);
                continue;
            }
            if (r->body_mode == BODY_SINK && c->job == JOB_NONE && !r->sink_err &&
                c->sink_buf[c->sink_fill].len >= SINK_CHUNK) {
                c->sink_job_buf = c->sink_fill;
                c->sink_fill ^= 1;
                job_submit(c, JOB_SINK);
            }
            if (r->sink_err)
                buf_reset(&c->sink_buf[c->sink_fill]);
            goto wait;
        case CS_HANDLING:
            if (c->job == JOB_SINK)
                goto wait;
            if (r->pre_body && !c->pre_done && !r->resp.status) {
                job_submit(c, JOB_PRE);
                goto wait;
            }
            if (!r->resp.status && r->body_mode == BODY_SINK && !r->sink_err &&
                c->sink_buf[c->sink_fill].len) {
                c->sink_job_buf = c->sink_fill;
                c->sink_fill ^= 1;
                job_submit(c, JOB_SINK);
                goto wait;
            }
            if (!r->resp.status && c->handler_ran) {
                c->handler_ran = false;
                if (r->park_ms) {
                    if (conn_park(c))
                        goto wait;
                    continue;
                }
                http_resp_error(r, ERR_INTERNAL, NULL, "the handler gave no answer");
            }
            if (!r->resp.status) {
                if (r->body_too_large) {
                    http_resp_error(r, ERR_BODY_TOO_LARGE, NULL, NULL);
                } else if (!r->handler) {
                    http_resp_error(r, ERR_ROUTE_UNKNOWN, NULL, NULL);
                } else if (r->handler_on_pool ||
                           r->handler(r, true) == ERR_WOULDBLOCK) {
                    resp_reset(&r->resp);
                    r->park_ms = 0;
                    job_submit(c, JOB_HANDLER);
                    goto wait;
                } else {
                    atomic_fetch_add(&c->w->srv->stats.loop_handled, 1);
                    if (!r->resp.status && r->park_ms) {
                        if (conn_park(c))
                            goto wait;
                        continue;
                    }
                }
            }
            if (!llhttp_should_keep_alive(&c->parser))
                r->resp.close = true;
            resp_build_head(c);
            c->state = CS_SENDING;
            c->deadline = now_ms(c->w) + c->w->srv->cfg.body_timeout_ms;
            continue;
        case CS_LINGER:
        case CS_TLS:
        case CS_PARKED:
            goto wait;
        case CS_SENDING:
            if (!conn_write(c))
                goto wait;
            if (r->resp.close || c->close_after || c->w->stopping) {
                if (c->linger_needed && !c->read_eof) {
                    shutdown(c->fd, SHUT_WR);
                    req_free(c->req);
                    c->req = NULL;
                    c->state = CS_LINGER;
                    c->deadline = now_ms(c->w) + LINGER_MS;
                    goto wait;
                }
                conn_close(c);
                return;
            }
            request_done(c);
            continue;
        }
    }
wait:
    conn_update_poll(c);
}

/* ---- poll and connection management ---- */

static void on_conn_poll(uv_poll_t *h, int status, int events);

static void
conn_update_poll(struct conn *c)
{
    if (c->closing)
        return;
    int want = 0;
    bool reading_state = c->state == CS_IDLE || c->state == CS_HEADERS || c->state == CS_BODY ||
                         c->state == CS_TLS;
    if (c->tls_want_write)
        want |= UV_WRITABLE;
    if (c->state == CS_LINGER || c->state == CS_PARKED)
        want |= UV_READABLE;
    if (reading_state && !c->paused && !c->backpressure && !c->read_eof)
        want |= UV_READABLE;
    if (c->state == CS_SENDING)
        want |= UV_WRITABLE;
    if (want == c->events)
        return;
    c->events = want;
    if (want)
        uv_poll_start(&c->poll, want, on_conn_poll);
    else
        uv_poll_stop(&c->poll);
}

static void
on_conn_poll(uv_poll_t *h, int status, int events)
{
    struct conn *c = h->data;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (events & UV_WRITABLE) {
        if (c->state == CS_SENDING) {
            conn_run(c);
            return;
        }
        if (c->tls_want_write) {
            c->tls_want_write = false;
            conn_read(c);
            return;
        }
    }
    if (events & UV_READABLE)
        conn_read(c);
}

/* worker_maybe_finish closes the loop's last handles once draining is over, which
 * lets uv_run return. */
static void
worker_maybe_finish(struct worker *w)
{
    if (!w->stopping || w->nconns != 0 || !w->listen_closed)
        return;
    uv_mutex_lock(&w->finish_mu);
    if (!w->finished) {
        w->finished = true;
        uv_close((uv_handle_t *)&w->park, NULL);
        uv_close((uv_handle_t *)&w->sweep, NULL);
        uv_close((uv_handle_t *)&w->wake, NULL);
    }
    uv_mutex_unlock(&w->finish_mu);
}

static void
on_conn_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    struct worker *w = c->w;
    if (c->ssl)
        SSL_free(c->ssl);
    free(c->tbuf);
    close(c->fd);
    buf_release(&c->pending);
    buf_release(&c->out);
    buf_release(&c->sink_buf[0]);
    buf_release(&c->sink_buf[1]);
    if (c->addr_counted)
        addr_release(w->srv, c->addr_key);
    free(c);
    atomic_fetch_sub(&w->srv->nconns, 1);
    atomic_fetch_sub(&w->srv->stats.conns_open, 1);
    w->nconns--;
    worker_maybe_finish(w);
}

static void
conn_close(struct conn *c)
{
    if (c->job != JOB_NONE) {
        /* the pool still works on this request: finish closing when it returns */
        c->closing = true;
        if (c->events) {
            uv_poll_stop(&c->poll);
            c->events = 0;
        }
        return;
    }
    if (uv_is_closing((uv_handle_t *)&c->poll))
        return;
    struct worker *w = c->w;
    if (c->state == CS_PARKED)
        conn_unpark(c); /* counts only; the request is dropped below */
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    req_free(c->req);
    c->req = NULL;
    c->closing = true;
    if (c->ssl && c->state != CS_TLS) {
        ERR_clear_error();
        SSL_shutdown(c->ssl); /* best effort close_notify; never waits */
    }
    uv_poll_stop(&c->poll);
    uv_close((uv_handle_t *)&c->poll, on_conn_closed);
}

static bool
cidr_match(const struct cidr *c, const struct sockaddr_storage *ss)
{
    const unsigned char *a;
    size_t alen;
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
    if (ss->ss_family == AF_INET6 && c->family == AF_INET &&
        IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
        /* an IPv4 client of a dual-stack [::] listener: ::ffff:a.b.c.d */
        a = s6->sin6_addr.s6_addr + 12;
        alen = 4;
    } else if (ss->ss_family == AF_INET && c->family == AF_INET) {
        a = (const unsigned char *)&((const struct sockaddr_in *)ss)->sin_addr;
        alen = 4;
    } else if (ss->ss_family == AF_INET6 && c->family == AF_INET6) {
        a = ((const struct sockaddr_in6 *)ss)->sin6_addr.s6_addr;
        alen = 16;
    } else {
        return false;
    }
    unsigned bits = c->prefix;
    for (size_t i = 0; i < alen && bits; i++) {
        unsigned take = bits >= 8 ? 8 : bits;
        unsigned char mask = (unsigned char)(0xff << (8 - take));
        if ((a[i] & mask) != (c->addr[i] & mask))
            return false;
        bits -= take;
    }
    return true;
}

static bool
listener_allows(const struct listener *l, const struct sockaddr_storage *ss)
{
    if (!l->nallow)
        return true;
    for (size_t i = 0; i < l->nallow; i++)
        if (cidr_match(&l->allow[i], ss))
            return true;
    return false;
}

/* addr_acquire counts one more connection from key; false (nothing counted) when the
 * address already has the configured maximum. */
static bool
addr_acquire(http_server *srv, const unsigned char key[16])
{
    unsigned max = srv->cfg.max_connections_per_address;
    unsigned b = fnv_key(key) % ADDR_BUCKETS;
    bool ok = false;
    uv_mutex_lock(&srv->addr_mu);
    struct addr_count *a = srv->addr_tab[b];
    while (a && memcmp(a->key, key, 16) != 0)
        a = a->next;
    if (!a && (a = calloc(1, sizeof *a))) {
        memcpy(a->key, key, 16);
        a->next = srv->addr_tab[b];
        srv->addr_tab[b] = a;
    }
    if (a && a->n < max) {
        a->n++;
        ok = true;
    }
    uv_mutex_unlock(&srv->addr_mu);
    return ok;
}

static void
addr_release(http_server *srv, const unsigned char key[16])
{
    unsigned b = fnv_key(key) % ADDR_BUCKETS;
    uv_mutex_lock(&srv->addr_mu);
    struct addr_count **pp = &srv->addr_tab[b];
    while (*pp && memcmp((*pp)->key, key, 16) != 0)
        pp = &(*pp)->next;
    struct addr_count *a = *pp;
    if (a && --a->n == 0) {
        *pp = a->next;
        free(a);
    }
    uv_mutex_unlock(&srv->addr_mu);
}

static void
accept_one(struct worker *w, unsigned lidx, int fd, struct sockaddr_storage *ss)
{
    http_server *srv = w->srv;
    struct listener *l = &srv->lis[lidx];
    char peer[64] = "";
    unsigned char key[16] = {0};
    if (ss->ss_family == AF_INET) {
        const struct in_addr *a4 = &((struct sockaddr_in *)ss)->sin_addr;
        inet_ntop(AF_INET, a4, peer, sizeof peer);
        key[10] = key[11] = 0xff;
        memcpy(key + 12, a4, 4);
    } else if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a6 = &((struct sockaddr_in6 *)ss)->sin6_addr;
        memcpy(key, a6->s6_addr, 16);
        if (IN6_IS_ADDR_V4MAPPED(a6)) { /* one name per client, whatever the listener */
            inet_ntop(AF_INET, a6->s6_addr + 12, peer, sizeof peer);
        } else {
            inet_ntop(AF_INET6, a6, peer, sizeof peer);
            /* one IPv6 client usually holds a whole /64: the cap counts prefixes */
            if (!IN6_IS_ADDR_LOOPBACK(a6))
                memset(key + 8, 0, 8);
        }
    }
    if (!listener_allows(l, ss)) {
        static const char refused[] =
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
            "Content-Length: 107\r\nConnection: close\r\n\r\n"
            "{\"errors\":[{\"code\":\"DENIED\",\"message\":\"this address may not use this "
            "listener\",\"detail\":null}]}";
        if (!l->tls) {
            ssize_t wr = write(fd, refused, sizeof refused - 1);
            (void)wr;
            shutdown(fd, SHUT_WR);
        }
        close(fd);
        atomic_fetch_add(&srv->stats.conns_refused, 1);
        log_info("HTTP-REFUSED", "listener=%s peer=%s", l->name, peer);
        if (srv->cfg.on_refused)
            srv->cfg.on_refused(srv->app, l->name, peer);
        return;
    }
    unsigned n = atomic_fetch_add(&srv->nconns, 1);
    if (n >= srv->cfg.max_connections) {
        static const char busy[] =
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            "Content-Length: 86\r\nConnection: close\r\n\r\n"
            "{\"errors\":[{\"code\":\"TOOMANYREQUESTS\",\"message\":\"too many connections\","
            "\"detail\":null}]}";
        if (!l->tls) {
            ssize_t wr = write(fd, busy, sizeof busy - 1);
            (void)wr;
        }
        close(fd);
        atomic_fetch_sub(&srv->nconns, 1);
        atomic_fetch_add(&srv->stats.conns_refused, 1);
        return;
    }
    if (srv->cfg.max_connections_per_address && !addr_acquire(srv, key)) {
        static const char busy[] =
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            "Retry-After: 5\r\nContent-Length: 104\r\nConnection: close\r\n\r\n"
            "{\"errors\":[{\"code\":\"TOOMANYREQUESTS\",\"message\":\"too many connections "
            "from this address\",\"detail\":null}]}";
        if (!l->tls) {
            ssize_t wr = write(fd, busy, sizeof busy - 1);
            (void)wr;
        }
        close(fd);
        atomic_fetch_sub(&srv->nconns, 1);
        atomic_fetch_add(&srv->stats.conns_refused, 1);
        log_debug("HTTP-ADDRESS-CAP", "listener=%s peer=%s max=%u", l->name, peer,
                  srv->cfg.max_connections_per_address);
        return;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        atomic_fetch_sub(&srv->nconns, 1);
        if (srv->cfg.max_connections_per_address)
            addr_release(srv, key);
        return;
    }
    c->addr_counted = srv->cfg.max_connections_per_address != 0;
    memcpy(c->addr_key, key, 16);
    c->w = w;
    c->fd = fd;
    c->lidx = lidx;
    c->name_start = SIZE_MAX;
    buf_init(&c->pending);
    buf_init(&c->out);
    buf_init(&c->sink_buf[0]);
    buf_init(&c->sink_buf[1]);
    str_copy(c->peer, sizeof c->peer, peer);
    if (l->tls) {
        uv_mutex_lock(&l->ctx_mu);
        c->ssl = SSL_new(l->ctx);
        uv_mutex_unlock(&l->ctx_mu);
        if (!c->ssl || SSL_set_fd(c->ssl, fd) != 1) {
            if (c->ssl)
                SSL_free(c->ssl);
            if (c->addr_counted)
                addr_release(srv, key);
            free(c);
            close(fd);
            atomic_fetch_sub(&srv->nconns, 1);
            return;
        }
        SSL_set_accept_state(c->ssl);
        SSL_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                 SSL_MODE_RELEASE_BUFFERS);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    llhttp_init(&c->parser, HTTP_REQUEST, &srv->settings);
    c->parser.data = c;
    uv_poll_init(&w->loop, &c->poll, fd);
    c->poll.data = c;
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    atomic_fetch_add(&srv->stats.conns_open, 1);
    atomic_fetch_add(&srv->stats.conns_total, 1);
    if (c->ssl) {
        c->state = CS_TLS;
        c->deadline = now_ms(w) + srv->cfg.header_timeout_ms;
    } else {
        c->state = CS_IDLE;
        c->deadline = now_ms(w) + srv->cfg.idle_timeout_ms;
    }
    conn_update_poll(c);
}

static void
on_listen_poll(uv_poll_t *h, int status, int events)
{
    struct lref *lr = h->data;
    struct worker *w = lr->w;
    (void)events;
    if (status < 0)
        return;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(w->listen_fd[lr->idx], (struct sockaddr *)&ss, &sl,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE)
                log_warn("HTTP-ACCEPT", "error=\"%s\"", strerror(errno));
            return;
        }
        accept_one(w, lr->idx, fd, &ss);
    }
}

static void
on_sweep(uv_timer_t *t)
{
    struct worker *w = t->data;
    update_date(w);
    uint64_t now = now_ms(w);
    struct conn *c = w->conns, *next;
    for (; c; c = next) {
        next = c->next;
        if (c->deadline && now > c->deadline && c->job == JOB_NONE &&
            (c->state == CS_IDLE || c->state == CS_HEADERS || c->state == CS_BODY ||
             c->state == CS_SENDING || c->state == CS_LINGER || c->state == CS_TLS)) {
            if (c->state != CS_IDLE && c->state != CS_LINGER) {
                atomic_fetch_add(&w->srv->stats.timeouts, 1);
                log_info("HTTP-TIMEOUT", "peer=%s state=%d", c->peer, (int)c->state);
            }
            conn_close(c);
        }
    }
}

static void
worker_close_listener(struct worker *w)
{
    if (w->listen_closed)
        return;
    w->listen_closed = true;
    for (size_t i = 0; i < w->srv->nlis; i++) {
        uv_poll_stop(&w->listen_poll[i]);
        uv_close((uv_handle_t *)&w->listen_poll[i], NULL);
        close(w->listen_fd[i]);
        w->listen_fd[i] = -1;
    }
}

/* unpark_woken re-runs the parked requests that http_req_wake woke. */
static void
unpark_woken(struct worker *w)
{
    struct conn *c = w->conns, *next;
    for (; c && w->nparked; c = next) {
        next = c->next;
        if (c->state == CS_PARKED && !c->closing && c->req &&
            atomic_exchange(&c->req->woken, false)) {
            conn_unpark(c);
            conn_run(c); /* may close c; next was taken before */
        }
    }
}

void
http_req_wake(struct http_req *r)
{
    struct conn *c = r->conn;
    atomic_store(&r->woken, true);
    if (c)
        worker_wake(c->w);
}

static void
on_wake(uv_async_t *a)
{
    struct worker *w = a->data;
    if (w->nparked)
        unpark_woken(w);
    int phase = atomic_load(&w->srv->stop_phase);
    if (phase == 0)
        return;
    w->stopping = true;
    worker_close_listener(w);
    if (w->nparked)
        on_park_tick(&w->park); /* parked handlers answer now (they see the node stop) */
    struct conn *c = w->conns, *next;
    for (; c; c = next) {
        next = c->next;
        if (phase == 2 || (c->state == CS_IDLE && c->job == JOB_NONE))
            conn_close(c);
        else
            c->close_after = true;
    }
    worker_maybe_finish(w);
}

static void
worker_main(void *arg)
{
    struct worker *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
}

/* ---- server ---- */

static err
split_hostport(const char *s, char *host, size_t hn, int *port)
{
    const char *colon = strrchr(s, ':');
    uint64_t p;
    if (!colon || !slice_parse_u64(slice_of_cstr(colon + 1), &p) || p > 65535)
        return ERR_CONFIG;
    slice h = {s, (size_t)(colon - s)};
    if (h.len >= 2 && h.ptr[0] == '[') {
        h.ptr++;
        h.len -= 2;
    }
    if (!str_copy_slice(host, hn, h))
        return ERR_CONFIG;
    if (!host[0])
        str_copy(host, hn, "0.0.0.0");
    *port = (int)p;
    return ERR_OK;
}

static int
bind_listener(const char *host, int port, int *fd_out)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        sl = sizeof *a4;
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        sl = sizeof *a6;
    } else if (strcmp(host, "localhost") == 0) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sl = sizeof *a4;
    } else {
        return -EINVAL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    /* SO_REUSEADDR only: a restart may bind over TIME_WAIT, but a second process on a
     * port in use fails here (SO_REUSEPORT let two nodes split one port's clients) */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, 1024) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    *fd_out = fd;
    return 0;
}

static bool
parse_cidr(const char *text, struct cidr *c)
{
    char addr[64];
    const char *slash = strchr(text, '/');
    if (!str_copy_slice(addr, sizeof addr,
                        (slice){text, slash ? (size_t)(slash - text) : strlen(text)}))
        return false;
    memset(c, 0, sizeof *c);
    if (inet_pton(AF_INET, addr, c->addr) == 1) {
        c->family = AF_INET;
        c->prefix = 32;
    } else if (inet_pton(AF_INET6, addr, c->addr) == 1) {
        c->family = AF_INET6;
        c->prefix = 128;
    } else {
        return false;
    }
    if (slash) {
        uint64_t p;
        if (!slice_parse_u64(slice_of_cstr(slash + 1), &p) || p > c->prefix)
            return false;
        c->prefix = (unsigned)p;
    }
    return true;
}

/* tls_ctx_load builds a server context from PEM files; NULL (logged) on failure. */
static SSL_CTX *
tls_ctx_load(const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        log_error("HTTP-TLS-LOAD", "cert=%s key=%s error=\"%s\"", cert, key,
                  "cannot load certificate or key");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static void
free_listeners(http_server *s)
{
    for (size_t i = 0; i < s->nlis; i++) {
        if (s->lis[i].ctx)
            SSL_CTX_free(s->lis[i].ctx);
        uv_mutex_destroy(&s->lis[i].ctx_mu);
    }
    s->nlis = 0;
}

err
http_server_new(const struct http_config *cfg, void (*on_headers)(struct http_req *r), void *app,
                http_server **out)
{
    http_server *s = calloc(1, sizeof *s);
    err e = ERR_CONFIG;
    if (!s)
        return ERR_NOMEM;
    s->cfg = *cfg;
    uv_mutex_init(&s->addr_mu);
    {
        unsigned char rnd[4];
        if (RAND_bytes(rnd, sizeof rnd) != 1)
            memset(rnd, 0, sizeof rnd);
        snprintf(s->rid_prefix, sizeof s->rid_prefix, "%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2],
                 rnd[3]);
    }
    s->on_headers = on_headers;
    s->app = app;
    s->nworkers = cfg->workers ? cfg->workers : uv_available_parallelism();
    if (s->nworkers > 64)
        s->nworkers = 64;
    struct http_listener_config single = {.name = "public", .listen = cfg->listen};
    const struct http_listener_config *lcs = cfg->nlisteners ? cfg->listeners : &single;
    size_t nl = cfg->nlisteners ? cfg->nlisteners : 1;
    for (size_t i = 0; i < nl && i < HTTP_MAX_LISTENERS; i++) {
        const struct http_listener_config *lc = &lcs[i];
        struct listener *l = &s->lis[s->nlis];
        uv_mutex_init(&l->ctx_mu);
        s->nlis++;
        str_copy(l->name, sizeof l->name, lc->name ? lc->name : "http");
        if (!lc->listen || split_hostport(lc->listen, l->host, sizeof l->host, &l->port)) {
            log_error("HTTP-LISTEN", "listener=%s listen=\"%s\" error=\"expected host:port\"",
                      l->name, lc->listen ? lc->listen : "");
            goto fail;
        }
        for (size_t k = 0; k < lc->nallow && k < HTTP_MAX_CIDRS; k++) {
            if (!parse_cidr(lc->allow[k], &l->allow[l->nallow])) {
                log_error("HTTP-LISTEN", "listener=%s allow=\"%s\" error=\"not a CIDR\"",
                          l->name, lc->allow[k]);
                goto fail;
            }
            l->nallow++;
        }
        if (lc->tls_cert && *lc->tls_cert) {
            str_copy(l->cert, sizeof l->cert, lc->tls_cert);
            str_copy(l->key, sizeof l->key, lc->tls_key ? lc->tls_key : "");
            if (!(l->ctx = tls_ctx_load(l->cert, l->key)))
                goto fail;
            l->tls = true;
        }
    }
    llhttp_settings_init(&s->settings);
    s->settings.on_message_begin = on_message_begin;
    s->settings.on_url = on_url;
    s->settings.on_url_complete = on_url_complete;
    s->settings.on_header_field = on_header_field;
    s->settings.on_header_field_complete = on_header_field_complete;
    s->settings.on_header_value = on_header_value;
    s->settings.on_header_value_complete = on_header_value_complete;
    s->settings.on_headers_complete = on_headers_complete;
    s->settings.on_body = on_body;
    s->settings.on_message_complete = on_message_complete;

    s->workers = calloc(s->nworkers, sizeof *s->workers);
    if (!s->workers) {
        e = ERR_NOMEM;
        goto fail;
    }
    for (unsigned i = 0; i < s->nworkers; i++)
        for (size_t k = 0; k < HTTP_MAX_LISTENERS; k++)
            s->workers[i].listen_fd[k] = -1;
    for (size_t k = 0; k < s->nlis; k++) {
        struct listener *l = &s->lis[k];
        for (unsigned i = 0; i < s->nworkers; i++) {
            struct worker *w = &s->workers[i];
            /* one socket per listener; every worker polls its own descriptor of it */
            int rc = i == 0 ? bind_listener(l->host, l->port, &w->listen_fd[k])
                            : (w->listen_fd[k] = fcntl(s->workers[0].listen_fd[k],
                                                       F_DUPFD_CLOEXEC, 0)) < 0 ? -errno : 0;
            if (rc < 0) {
                log_error("HTTP-LISTEN", "listener=%s listen=%s:%d error=\"%s\"%s", l->name,
                          l->host, l->port, strerror(-rc),
                          rc == -EADDRINUSE ? " hint=\"address in use: another process "
                                              "listens on this port\"" : "");
                e = ERR_IO;
                goto fail;
            }
            if (i == 0 && l->port == 0) {
                struct sockaddr_storage ss;
                socklen_t sl = sizeof ss;
                getsockname(w->listen_fd[k], (struct sockaddr *)&ss, &sl);
                l->port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                                        : ((struct sockaddr_in6 *)&ss)->sin6_port);
            }
        }
    }
    *out = s;
    return ERR_OK;
fail:
    if (s->workers) {
        for (unsigned i = 0; i < s->nworkers; i++)
            for (size_t k = 0; k < HTTP_MAX_LISTENERS; k++)
                if (s->workers[i].listen_fd[k] >= 0)
                    close(s->workers[i].listen_fd[k]);
        free(s->workers);
    }
    free_listeners(s);
    uv_mutex_destroy(&s->addr_mu);
    free(s);
    return e;
}

int
http_server_port(const http_server *s)
{
    return s->nlis ? s->lis[0].port : 0;
}

err
http_server_reload_tls(http_server *s)
{
    err e = ERR_OK;
    for (size_t i = 0; i < s->nlis; i++) {
        struct listener *l = &s->lis[i];
        if (!l->tls)
            continue;
        SSL_CTX *ctx = tls_ctx_load(l->cert, l->key);
        if (!ctx) {
            e = ERR_CONFIG;
            continue; /* keep serving with the old certificate */
        }
        uv_mutex_lock(&l->ctx_mu);
        SSL_CTX *old = l->ctx;
        l->ctx = ctx;
        uv_mutex_unlock(&l->ctx_mu);
        SSL_CTX_free(old);
        log_info("HTTP-TLS-RELOADED", "listener=%s cert=%s", l->name, l->cert);
    }
    return e;
}

err
http_server_start(http_server *s)
{
    for (unsigned i = 0; i < s->nworkers; i++) {
        struct worker *w = &s->workers[i];
        w->srv = s;
        w->idx = i;
        w->rbuf = malloc(READ_BUF_SIZE);
        if (!w->rbuf || uv_loop_init(&w->loop) != 0)
            return ERR_NOMEM;
        uv_mutex_init(&w->finish_mu);
        update_date(w);
        for (size_t k = 0; k < s->nlis; k++) {
            w->lref[k] = (struct lref){w, (unsigned)k};
            uv_poll_init(&w->loop, &w->listen_poll[k], w->listen_fd[k]);
            w->listen_poll[k].data = &w->lref[k];
            uv_poll_start(&w->listen_poll[k], UV_READABLE, on_listen_poll);
        }
        uv_async_init(&w->loop, &w->wake, on_wake);
        w->wake.data = w;
        uv_timer_init(&w->loop, &w->sweep);
        w->sweep.data = w;
        uv_timer_start(&w->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
        uv_timer_init(&w->loop, &w->park);
        w->park.data = w;
        if (uv_thread_create(&w->thread, worker_main, w) != 0)
            return ERR_NOMEM;
    }
    for (size_t k = 0; k < s->nlis; k++)
        log_info("HTTP-LISTEN", "listener=%s addr=%s:%d tls=%d allow=%zu workers=%u "
                 "max_connections=%u",
                 s->lis[k].name, s->lis[k].host, s->lis[k].port, s->lis[k].tls, s->lis[k].nallow,
                 s->nworkers, s->cfg.max_connections);
    return ERR_OK;
}

static void
worker_wake(struct worker *w)
{
    uv_mutex_lock(&w->finish_mu);
    if (!w->finished)
        uv_async_send(&w->wake);
    uv_mutex_unlock(&w->finish_mu);
}

void
http_server_stop(http_server *s, uint64_t drain_ms)
{
    atomic_store(&s->stop_phase, 1);
    for (unsigned i = 0; i < s->nworkers; i++)
        worker_wake(&s->workers[i]);
    /* wait for the drain; then force */
    uint64_t waited = 0;
    while (atomic_load(&s->nconns) > 0 && waited < drain_ms) {
        usleep(20000);
        waited += 20;
    }
    if (atomic_load(&s->nconns) > 0) {
        log_warn("HTTP-DRAIN-TIMEOUT", "open_connections=%u", atomic_load(&s->nconns));
        atomic_store(&s->stop_phase, 2);
        for (unsigned i = 0; i < s->nworkers; i++)
            worker_wake(&s->workers[i]);
    }
    for (unsigned i = 0; i < s->nworkers; i++)
        uv_thread_join(&s->workers[i].thread);
}

void
http_server_free(http_server *s)
{
    if (!s)
        return;
    for (unsigned i = 0; i < s->nworkers; i++) {
        struct worker *w = &s->workers[i];
        if (w->rbuf) {
            uv_loop_close(&w->loop);
            uv_mutex_destroy(&w->finish_mu);
            free(w->rbuf);
        }
        for (size_t k = 0; k < HTTP_MAX_LISTENERS; k++)
            if (w->listen_fd[k] >= 0)
                close(w->listen_fd[k]);
    }
    free(s->workers);
    free_listeners(s);
    for (size_t b = 0; b < ADDR_BUCKETS; b++) {
        struct addr_count *a = s->addr_tab[b], *n;
        for (; a; a = n) {
            n = a->next;
            free(a);
        }
    }
    uv_mutex_destroy(&s->addr_mu);
    free(s);
}

struct http_stats *
http_server_stats(http_server *s)
{
    return &s->stats;
}

/* ---- helpers ---- */

slice
http_req_header(const struct http_req *r, const char *name)
{
    for (size_t i = 0; i < r->nheaders; i++)
        if (slice_eq_cstr(r->headers[i].name, name))
            return r->headers[i].value;
    return (slice){NULL, 0};
}

static int
hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

bool
http_req_query(const struct http_req *r, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    const char *p = r->query.ptr, *end = r->query.ptr + r->query.len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *pe = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(pe - p));
        const char *ke = eq ? eq : pe;
        if ((size_t)(ke - p) == nl && memcmp(p, name, nl) == 0) {
            size_t j = 0;
            for (const char *v = eq ? eq + 1 : pe; v < pe; v++) {
                char ch = *v;
                if (ch == '%' && pe - v >= 3 && hexval(v[1]) >= 0 && hexval(v[2]) >= 0) {
                    ch = (char)(hexval(v[1]) * 16 + hexval(v[2]));
                    v += 2;
                } else if (ch == '+') {
                    ch = ' ';
                }
                if (j + 1 >= n)
                    return false;
                out[j++] = ch;
            }
            out[j] = '\0';
            return true;
        }
        p = pe + 1;
    }
    return false;
}

void
http_resp_header(struct http_req *r, const char *name, const char *fmt, ...)
{
    va_list ap;
    buf_adds(&r->resp.headers, name);
    buf_adds(&r->resp.headers, ": ");
    va_start(ap, fmt);
    buf_vaddf(&r->resp.headers, fmt, ap);
    va_end(ap);
    buf_adds(&r->resp.headers, "\r\n");
}

void
http_resp_error(struct http_req *r, err e, const char *message, const char *detail)
{
    buf *b = &r->resp.body;
    const char *msg = message ? message : err_str(e);
    r->resp.status = err_http_status(e);
    buf_reset(b);
    if (r->resp.fd >= 0) {
        close(r->resp.fd);
        r->resp.fd = -1;
    }
    buf_adds(b, "{\"errors\":[{\"code\":");
    const char *code = err_oci_code(e);
    buf_add_json_str(b, code, strlen(code));
    buf_adds(b, ",\"message\":");
    buf_add_json_str(b, msg, strlen(msg));
    buf_adds(b, ",\"detail\":");
    if (detail)
        buf_add_json_str(b, detail, strlen(detail));
    else
        buf_adds(b, "null");
    buf_adds(b, "}]}");
    http_resp_header(r, "Content-Type", "application/json");
}

void
http_resp_json(struct http_req *r, int status, const char *json, size_t len)
{
    r->resp.status = status;
    buf_reset(&r->resp.body);
    buf_add(&r->resp.body, json, len);
    http_resp_header(r, "Content-Type", "application/json");
}
