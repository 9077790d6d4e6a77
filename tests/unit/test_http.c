/* Unit tests for node/http: a real http_server on 127.0.0.1:0 with a tiny
 * application, driven by plain blocking sockets from the test thread, asserting on
 * the raw bytes that come back. Keep-alive, pipelining, requests split at every
 * byte boundary, chunked and large bodies through the buffer and sink paths,
 * Expect: 100-continue, header limits, malformed requests, HEAD, early answers
 * with lingering close, the idle/header/body timeouts, the connection cap and
 * graceful stop. Every test runs under a watchdog that fails it instead of
 * hanging. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/buf.h"
#include "common/digest.h"
#include "common/log.h"
#include "node/http/http.h"

#define WATCHDOG_S 20        /* a whole test, including server start and stop */
#define IO_TIMEOUT_MS 5000   /* any single wait for bytes from the server */
#define MAX_CLIENTS 64
#define BIG_RESP (4u << 20)  /* GET /big: a memory body far beyond one writev */
#define MIB (1u << 20)

/* ---- the watchdog ---- */

static void
on_watchdog(int sig)
{
    static const char msg[] = "\nwatchdog: test_http: a test hung; failing\n";
    (void)sig;
    ssize_t n = write(2, msg, sizeof msg - 1);
    (void)n;
    _exit(3);
}

static uint64_t
ms_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void
sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---- the test application ---- */

struct app {
    _Atomic unsigned pre_calls;   /* pre_body steps run */
    _Atomic unsigned sink_calls;  /* sink writes, all requests */
    _Atomic unsigned loop_runs;   /* handlers that answered with nowait */
    _Atomic unsigned pool_runs;   /* handlers that answered on the pool */
    _Atomic unsigned slow_started;
    _Atomic unsigned slow_done;
    _Atomic size_t sink_max; /* the largest single sink write */
    unsigned slow_ms;
};

/* body_state is one PUT /sink request's sink context (r->app_state). */
struct body_state {
    hasher *h;
    uint64_t n;
    unsigned calls;
    unsigned delay_us; /* ?slow: each write sleeps, so the loop must apply back-pressure */
    bool fail;         /* ?fail: the second write fails */
    struct app *app;
};

static void
body_state_free(struct http_req *r)
{
    struct body_state *bs = r->app_state;
    if (!bs)
        return;
    hasher_free(bs->h);
    free(bs);
    r->app_state = NULL;
}

static void
count_run(struct http_req *r, bool nowait)
{
    struct app *a = r->app;
    atomic_fetch_add(nowait ? &a->loop_runs : &a->pool_runs, 1);
}

static void
echo_tag(struct http_req *r)
{
    slice t = http_req_header(r, "x-tag");
    if (t.ptr)
        http_resp_header(r, "X-Tag", "%.*s", (int)t.len, t.ptr);
}

static void
answer_digest(struct http_req *r, uint64_t len, const char *digest)
{
    r->resp.status = 200;
    buf_addf(&r->resp.body, "len=%llu digest=%s", (unsigned long long)len, digest);
    echo_tag(r);
}

/* GET|HEAD /echo...: the path and query come back as the body. */
static err
h_echo(struct http_req *r, bool nowait)
{
    count_run(r, nowait);
    r->resp.status = 200;
    buf_add(&r->resp.body, r->path.ptr, r->path.len);
    if (r->query.len) {
        buf_addc(&r->resp.body, '?');
        buf_add(&r->resp.body, r->query.ptr, r->query.len);
    }
    echo_tag(r);
    return ERR_OK;
}

/* GET /pool: starts an answer on the loop, then gives up; the pool answers. */
static err
h_pool(struct http_req *r, bool nowait)
{
    if (nowait) {
        r->resp.status = 500;
        buf_adds(&r->resp.body, "partial");
        http_resp_header(r, "X-Partial", "1");
        return ERR_WOULDBLOCK;
    }
    count_run(r, nowait);
    r->resp.status = 200;
    buf_adds(&r->resp.body, "pool");
    return ERR_OK;
}

/* GET /slow: a handler that takes slow_ms on the pool. */
static err
h_slow(struct http_req *r, bool nowait)
{
    struct app *a = r->app;
    count_run(r, nowait);
    atomic_fetch_add(&a->slow_started, 1);
    sleep_ms(a->slow_ms);
    r->resp.status = 200;
    buf_adds(&r->resp.body, "slow");
    atomic_fetch_add(&a->slow_done, 1);
    return ERR_OK;
}

static uint8_t
big_byte(size_t i)
{
    return (uint8_t)(i % 251);
}

/* GET /big: BIG_RESP bytes from memory. */
static err
h_big(struct http_req *r, bool nowait)
{
    count_run(r, nowait);
    if (buf_grow(&r->resp.body, BIG_RESP))
        return ERR_NOMEM;
    for (size_t i = 0; i < BIG_RESP; i++)
        r->resp.body.ptr[i] = (char)big_byte(i);
    r->resp.body.len = BIG_RESP;
    r->resp.body.ptr[BIG_RESP] = '\0';
    r->resp.status = 200;
    return ERR_OK;
}

/* PUT /buffer: the buffered body's length and digest (large bodies hash on the pool). */
static err
h_buffer(struct http_req *r, bool nowait)
{
    if (nowait && r->body.len > (64u << 10))
        return ERR_WOULDBLOCK;
    count_run(r, nowait);
    char d[DIGEST_MAX];
    if (digest_of(DIGEST_SHA256, r->body.ptr, r->body.len, d)) {
        http_resp_error(r, ERR_INTERNAL, NULL, NULL);
        return ERR_OK;
    }
    if (r->body_received != r->body.len) {
        http_resp_error(r, ERR_INTERNAL, NULL, "body_received differs from the body");
        return ERR_OK;
    }
    answer_digest(r, r->body.len, d);
    return ERR_OK;
}

static err
sink_write(void *ctx, const void *ptr, size_t len)
{
    struct body_state *bs = ctx;
    atomic_fetch_add(&bs->app->sink_calls, 1);
    size_t m = atomic_load(&bs->app->sink_max);
    while (len > m && !atomic_compare_exchange_weak(&bs->app->sink_max, &m, len))
        ;
    if (bs->fail && bs->calls >= 1)
        return ERR_IO;
    bs->calls++;
    bs->n += len;
    hasher_update(bs->h, ptr, len);
    if (bs->delay_us)
        sleep_ms(bs->delay_us / 1000);
    return ERR_OK;
}

/* pre_body for PUT /sink?pre: runs on the pool; "X-Reject" makes it answer 403. */
static err
pre_step(struct http_req *r, bool nowait)
{
    struct app *a = r->app;
    (void)nowait;
    atomic_fetch_add(&a->pre_calls, 1);
    if (http_req_header(r, "x-reject").ptr)
        http_resp_error(r, ERR_DENIED, NULL, "pre_body");
    return ERR_OK;
}

/* PUT /sink: the sunk body's length and digest. */
static err
h_sink(struct http_req *r, bool nowait)
{
    struct body_state *bs = r->app_state;
    count_run(r, nowait);
    if (r->sink_err) {
        http_resp_error(r, r->sink_err, NULL, "sink");
        return ERR_OK;
    }
    if (r->body_received != bs->n) {
        http_resp_error(r, ERR_INTERNAL, NULL, "body_received differs from the sink");
        return ERR_OK;
    }
    char d[DIGEST_MAX];
    hasher_final(bs->h, d);
    answer_digest(r, bs->n, d);
    return ERR_OK;
}

static bool
has_query(const struct http_req *r, const char *name)
{
    char v[32];
    return http_req_query(r, name, v, sizeof v);
}

/* GET /wake: the handler parks for a minute and another thread wakes it after 50 ms
 * (?early: the handler wakes itself before it parks); its second run answers. */
struct wake_state {
    pthread_t t;
    bool started, ran;
    struct http_req *r;
};

static void *
waker_main(void *arg)
{
    struct wake_state *ws = arg;
    sleep_ms(50);
    http_req_wake(ws->r);
    return NULL;
}

static void
wake_state_free(struct http_req *r)
{
    struct wake_state *ws = r->app_state;
    if (!ws)
        return;
    if (ws->started)
        pthread_join(ws->t, NULL); /* the waker is done before the request goes */
    free(ws);
    r->app_state = NULL;
}

static err
h_wake(struct http_req *r, bool nowait)
{
    struct wake_state *ws = r->app_state;
    count_run(r, nowait);
    if (ws->ran) {
        r->resp.status = 200;
        buf_adds(&r->resp.body, "woken");
        return ERR_OK;
    }
    ws->ran = true;
    ws->r = r;
    if (has_query(r, "early"))
        http_req_wake(r);
    else if (pthread_create(&ws->t, NULL, waker_main, ws) == 0)
        ws->started = true;
    r->park_ms = 60000; /* far beyond IO_TIMEOUT_MS: only the wake answers in time */
    return ERR_OK;
}

static void
app_on_headers(struct http_req *r)
{
    slice p = r->path;
    bool get = r->method == M_GET || r->method == M_HEAD;
    if (slice_eq_cstr(p, "/reject")) {
        /* an answer before the body is read */
        http_resp_error(r, ERR_DENIED, NULL, "early");
        return;
    }
    if (get && slice_starts_with(p, "/echo")) {
        r->handler = h_echo;
    } else if (get && slice_eq_cstr(p, "/pool")) {
        r->handler = h_pool;
    } else if (get && slice_eq_cstr(p, "/slow")) {
        r->handler = h_slow;
        r->handler_on_pool = true;
    } else if (get && slice_eq_cstr(p, "/wake")) {
        struct wake_state *ws = calloc(1, sizeof *ws);
        if (!ws) {
            http_resp_error(r, ERR_NOMEM, NULL, NULL);
            return;
        }
        r->app_state = ws;
        r->app_free = wake_state_free;
        r->handler = h_wake;
    } else if (get && slice_eq_cstr(p, "/big")) {
        r->handler = h_big;
    } else if (r->method == M_PUT && slice_eq_cstr(p, "/buffer")) {
        char v[32];
        uint64_t limit = 8 * MIB;
        if (http_req_query(r, "limit", v, sizeof v))
            slice_parse_u64(slice_of_cstr(v), &limit);
        r->body_mode = BODY_BUFFER;
        r->body_limit = limit;
        r->handler = h_buffer;
    } else if (r->method == M_PUT && slice_eq_cstr(p, "/sink")) {
        struct body_state *bs = calloc(1, sizeof *bs);
        if (!bs || !(bs->h = hasher_new(DIGEST_SHA256))) {
            free(bs);
            http_resp_error(r, ERR_NOMEM, NULL, NULL);
            return;
        }
        bs->app = r->app;
        bs->delay_us = has_query(r, "slow") ? 20000 : 0;
        bs->fail = has_query(r, "fail");
        r->app_state = bs;
        r->app_free = body_state_free;
        r->body_mode = BODY_SINK;
        r->sink = sink_write;
        r->sink_ctx = bs;
        r->handler = h_sink;
        if (has_query(r, "pre"))
            r->pre_body = pre_step;
    }
    /* anything else has no handler: the server answers 404 */
}

/* ---- fixture: one server and its clients ---- */

struct cl {
    int fd;
    buf in; /* received, not yet consumed */
};

struct fx {
    struct app app;
    http_server *srv;
    bool stopped;            /* http_server_stop was called (or is running in stopper) */
    pthread_t stopper;
    bool stopper_running;
    int port;
    struct cl cls[MAX_CLIENTS];
    unsigned ncls;
};

static struct http_config
cfg_default(void)
{
    return (struct http_config){
        .listen = "127.0.0.1:0",
        .workers = 1,
        .max_connections = 64,
        .header_timeout_ms = 5000,
        .idle_timeout_ms = 5000,
        .body_timeout_ms = 5000,
        .max_header_bytes = 8192,
    };
}

static int
fx_setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    f->app.slow_ms = 300;
    *state = f;
    alarm(WATCHDOG_S);
    return 0;
}

static int
fx_teardown(void **state)
{
    struct fx *f = *state;
    for (unsigned i = 0; i < f->ncls; i++) {
        if (f->cls[i].fd >= 0)
            close(f->cls[i].fd);
        buf_release(&f->cls[i].in);
    }
    if (f->stopper_running)
        pthread_join(f->stopper, NULL);
    if (f->srv && !f->stopped)
        http_server_stop(f->srv, 0);
    http_server_free(f->srv);
    free(f);
    alarm(0);
    return 0;
}

static void
fx_start(struct fx *f, const struct http_config *cfg)
{
    assert_int_equal(http_server_new(cfg, app_on_headers, &f->app, &f->srv), ERR_OK);
    f->port = http_server_port(f->srv);
    assert_true(f->port > 0);
    assert_int_equal(http_server_start(f->srv), ERR_OK);
}

static struct http_stats *
stats(struct fx *f)
{
    return http_server_stats(f->srv);
}

/* wait_at_least waits (bounded) until a counter reaches want. */
static void
wait_at_least(_Atomic uint64_t *ctr, uint64_t want, const char *what)
{
    uint64_t t0 = ms_now();
    while (atomic_load(ctr) < want) {
        if (ms_now() - t0 > IO_TIMEOUT_MS)
            fail_msg("%s: %llu, expected %llu", what, (unsigned long long)atomic_load(ctr),
                     (unsigned long long)want);
        usleep(100);
    }
}

static int
raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

static struct cl *
cl_open(struct fx *f)
{
    assert_true(f->ncls < MAX_CLIENTS);
    struct cl *c = &f->cls[f->ncls++];
    buf_init(&c->in);
    c->fd = raw_connect(f->port);
    if (c->fd < 0)
        fail_msg("connect: %s", strerror(-c->fd));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* a blocked send must fail the test, not hang it */
    struct timeval tv = {IO_TIMEOUT_MS / 1000, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return c;
}

static void
cl_close(struct cl *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    buf_reset(&c->in);
}

/* cl_try_send sends everything; 0, or -errno (a reset peer is a legitimate outcome
 * for some tests). */
static int
cl_try_send(struct cl *c, const void *ptr, size_t len)
{
    const char *p = ptr;
    while (len) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void
cl_send(struct cl *c, const void *ptr, size_t len)
{
    int rc = cl_try_send(c, ptr, len);
    if (rc)
        fail_msg("send: %s", strerror(-rc));
}

static void
cl_sends(struct cl *c, const char *s)
{
    cl_send(c, s, strlen(s));
}

/* cl_fill reads what is there (waiting up to timeout_ms): bytes read, 0 at EOF,
 * -ETIMEDOUT, or -errno. */
static ssize_t
cl_fill(struct cl *c, int timeout_ms)
{
    struct pollfd p = {c->fd, POLLIN, 0};
    int rc;
    do
        rc = poll(&p, 1, timeout_ms);
    while (rc < 0 && errno == EINTR);
    if (rc == 0)
        return -ETIMEDOUT;
    char tmp[64 << 10];
    ssize_t n;
    do
        n = recv(c->fd, tmp, sizeof tmp, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    buf_add(&c->in, tmp, (size_t)n);
    return n;
}

static void
cl_consume(struct cl *c, size_t n)
{
    memmove(c->in.ptr, c->in.ptr + n, c->in.len - n);
    buf_truncate(&c->in, c->in.len - n);
}

struct resp {
    int status;
    buf head; /* status line and headers */
    buf body;
};

static void
resp_init(struct resp *rs)
{
    rs->status = 0;
    buf_init(&rs->head);
    buf_init(&rs->body);
}

static void
resp_release(struct resp *rs)
{
    buf_release(&rs->head);
    buf_release(&rs->body);
}

/* resp_header finds a header (case-insensitive name); ptr NULL when absent. */
static slice
resp_header(const struct resp *rs, const char *name)
{
    size_t nl = strlen(name);
    const char *p = memchr(rs->head.ptr, '\n', rs->head.len);
    const char *end = rs->head.ptr + rs->head.len;
    while (p && ++p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            break;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon && (size_t)(colon - p) == nl && strncasecmp(p, name, nl) == 0) {
            const char *v = colon + 1, *ve = eol;
            while (v < ve && *v == ' ')
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' '))
                ve--;
            return (slice){v, (size_t)(ve - v)};
        }
        p = eol;
    }
    return (slice){NULL, 0};
}

static bool
resp_closes(const struct resp *rs)
{
    slice v = resp_header(rs, "connection");
    return v.ptr && slice_case_eq_cstr(v, "close");
}

/* cl_read_resp reads one response; head: the request was HEAD (no body bytes). */
static void
cl_read_resp(struct cl *c, struct resp *rs, bool head)
{
    buf_reset(&rs->head);
    buf_reset(&rs->body);
    rs->status = 0;
    const char *end;
    while (!(end = memmem(c->in.ptr, c->in.len, "\r\n\r\n", 4))) {
        ssize_t n = cl_fill(c, IO_TIMEOUT_MS);
        if (n <= 0)
            fail_msg("no complete response head (%s) after %zu bytes: \"%.*s\"",
                     n == 0 ? "EOF" : strerror((int)-n), c->in.len, (int)c->in.len, c->in.ptr);
    }
    size_t hl = (size_t)(end + 4 - c->in.ptr);
    buf_add(&rs->head, c->in.ptr, hl);
    cl_consume(c, hl);
    if (rs->head.len < 12 || memcmp(rs->head.ptr, "HTTP/1.1 ", 9) != 0)
        fail_msg("bad status line: \"%s\"", rs->head.ptr);
    rs->status = (rs->head.ptr[9] - '0') * 100 + (rs->head.ptr[10] - '0') * 10 +
                 (rs->head.ptr[11] - '0');
    if (rs->status / 100 == 1 || rs->status == 204 || rs->status == 304)
        return;
    slice cl = resp_header(rs, "content-length");
    uint64_t n;
    if (!cl.ptr || !slice_parse_u64(cl, &n))
        fail_msg("response without a valid Content-Length: \"%s\"", rs->head.ptr);
    if (head)
        return;
    while (c->in.len < n) {
        ssize_t m = cl_fill(c, IO_TIMEOUT_MS);
        if (m <= 0)
            fail_msg("body cut at %zu of %llu bytes (%s)", c->in.len, (unsigned long long)n,
                     m == 0 ? "EOF" : strerror((int)-m));
    }
    buf_add(&rs->body, c->in.ptr, n);
    cl_consume(c, n);
}

/* cl_expect_eof: nothing more arrives and the server closes within timeout_ms;
 * returns how long that took. */
static uint64_t
cl_expect_eof(struct cl *c, int timeout_ms)
{
    uint64_t t0 = ms_now();
    if (c->in.len)
        fail_msg("unexpected bytes: \"%.*s\"", (int)c->in.len, c->in.ptr);
    ssize_t n = cl_fill(c, timeout_ms);
    if (n == -ETIMEDOUT)
        fail_msg("connection still open after %d ms", timeout_ms);
    if (n > 0)
        fail_msg("unexpected bytes instead of EOF: \"%.*s\"", (int)c->in.len, c->in.ptr);
    if (n < 0 && n != -ECONNRESET)
        fail_msg("recv: %s", strerror((int)-n));
    return ms_now() - t0;
}

static void
assert_resp(const struct resp *rs, int status, const char *body)
{
    if (rs->status != status)
        fail_msg("status %d, expected %d; head: \"%s\" body: \"%.*s\"", rs->status, status,
                 rs->head.ptr, (int)(rs->body.len > 300 ? 300 : rs->body.len), rs->body.ptr);
    if (body && (rs->body.len != strlen(body) || memcmp(rs->body.ptr, body, rs->body.len) != 0))
        fail_msg("body \"%.*s\", expected \"%s\"", (int)(rs->body.len > 300 ? 300 : rs->body.len),
                 rs->body.ptr, body);
}

static void
assert_header(const struct resp *rs, const char *name, const char *value)
{
    slice v = resp_header(rs, name);
    if (!value) {
        if (v.ptr)
            fail_msg("unexpected header %s: %.*s", name, (int)v.len, v.ptr);
        return;
    }
    if (!v.ptr || !slice_eq_cstr(v, value))
        fail_msg("header %s is \"%.*s\", expected \"%s\"; head: \"%s\"", name,
                 v.ptr ? (int)v.len : 6, v.ptr ? v.ptr : "absent", value, rs->head.ptr);
}

/* cl_roundtrip sends a request and reads its response. */
static void
cl_roundtrip(struct cl *c, const char *req, struct resp *rs)
{
    cl_sends(c, req);
    cl_read_resp(c, rs, strncmp(req, "HEAD ", 5) == 0);
}

/* digest_body writes what /buffer and /sink answer for payload. */
static void
digest_body(const void *payload, size_t len, char *out, size_t n)
{
    char d[DIGEST_MAX];
    assert_int_equal(digest_of(DIGEST_SHA256, payload, len, d), ERR_OK);
    snprintf(out, n, "len=%zu digest=%s", len, d);
}

static void
fill_random(char *p, size_t n, uint32_t seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (char)(x >> 24);
    }
}

/* req_put builds "PUT path" with a Content-Length body; extra: more header lines. */
static void
req_put(buf *b, const char *path, const char *extra, const void *body, size_t len)
{
    buf_addf(b, "PUT %s HTTP/1.1\r\nHost: t\r\n%sContent-Length: %zu\r\n\r\n", path,
             extra ? extra : "", len);
    buf_add(b, body, len);
}

/* req_put_chunked builds a chunked PUT: chunk sizes cycle through sizes; every
 * chunk size line carries ext; trailer (may be NULL) are header lines after the last
 * chunk. */
static void
req_put_chunked(buf *b, const char *path, const char *extra, const void *body, size_t len,
                const size_t *sizes, size_t nsizes, const char *ext, const char *trailer)
{
    const char *p = body;
    buf_addf(b, "PUT %s HTTP/1.1\r\nHost: t\r\n%sTransfer-Encoding: chunked\r\n\r\n", path,
             extra ? extra : "");
    for (size_t off = 0, i = 0; off < len; i++) {
        size_t n = sizes[i % nsizes];
        if (n > len - off)
            n = len - off;
        buf_addf(b, "%zX%s\r\n", n, ext ? ext : "");
        buf_add(b, p + off, n);
        buf_adds(b, "\r\n");
        off += n;
    }
    buf_addf(b, "0%s\r\n%s\r\n", ext ? ext : "", trailer ? trailer : "");
}

/* ---- requests and keep-alive ---- */

static void
test_get_and_keepalive(void **state)
{
    struct fx *f = *state;
    struct http_config cfg = cfg_default();
    fx_start(f, &cfg);
    struct resp rs;
    resp_init(&rs);

    struct cl *c = cl_open(f);
    cl_roundtrip(c, "GET /echo/a HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/a");
    assert_header(&rs, "content-length", "7");
    assert_header(&rs, "connection", NULL);
    assert_non_null(resp_header(&rs, "date").ptr);

    /* the same connection, several more requests */
    cl_roundtrip(c, "GET /echo/b?x=1&y=%20 HTTP/1.1\r\nHost: t\r\nX-Tag: t2\r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/b?x=1&y=%20");
    assert_header(&rs, "x-tag", "t2");
    /* header names are case-insensitive; values are trimmed */
    cl_roundtrip(c, "GET /echo/c HTTP/1.1\r\nhOsT: t\r\nx-TAG:   spaced \t \r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/c");
    assert_header(&rs, "x-tag", "spaced");
    /* a handler that gives up on the loop: its partial answer is forgotten */
    cl_roundtrip(c, "GET /pool HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 200, "pool");
    assert_header(&rs, "x-partial", NULL);
    assert_int_equal(atomic_load(&f->app.pool_runs), 1);
    /* no route: 404 from the server, still keep-alive */
    cl_roundtrip(c, "GET /nothing-here HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 404, NULL);
    assert_header(&rs, "connection", NULL);
    /* a body for an unrouted request is read and dropped */
    cl_roundtrip(c, "POST /nothing HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", &rs);
    assert_resp(&rs, 404, NULL);
    /* a large memory response needs many writes */
    cl_roundtrip(c, "GET /big HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 200, NULL);
    assert_int_equal(rs.body.len, BIG_RESP);
    for (size_t i = 0; i < BIG_RESP; i++)
        if ((uint8_t)rs.body.ptr[i] != big_byte(i))
            fail_msg("GET /big: byte %zu differs", i);
    /* Connection: close is honoured */
    cl_roundtrip(c, "GET /echo/last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/last");
    assert_true(resp_closes(&rs));
    cl_expect_eof(c, IO_TIMEOUT_MS);

    /* HTTP/1.0 closes by default; with keep-alive it stays open */
    c = cl_open(f);
    cl_roundtrip(c, "GET /echo/10 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/10");
    assert_false(resp_closes(&rs));
    cl_roundtrip(c, "GET /echo/10b HTTP/1.0\r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/10b");
    assert_true(resp_closes(&rs));
    cl_expect_eof(c, IO_TIMEOUT_MS);

    /* the client closing an idle keep-alive connection is clean */
    c = cl_open(f);
    cl_roundtrip(c, "GET /echo/x HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    cl_close(c);

    struct http_stats *st = stats(f);
    assert_int_equal(atomic_load(&st->requests), 11);
    assert_int_equal(atomic_load(&st->responses_2xx), 9);
    assert_int_equal(atomic_load(&st->responses_4xx), 2);
    assert_int_equal(atomic_load(&st->conns_total), 3);
    assert_true(atomic_load(&f->app.loop_runs) >= 8);
    resp_release(&rs);
}

static void
test_head(void **state)
{
    struct fx *f = *state;
    struct http_config cfg = cfg_default();
    fx_start(f, &cfg);
    struct resp rs;
    resp_init(&rs);
    struct cl *c = cl_open(f);

    cl_roundtrip(c, "HEAD /echo/abc HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 200, "");
    assert_header(&rs, "content-length", "9");
    /* no body bytes may follow: the next response must parse from its first byte */
    cl_roundtrip(c, "GET /echo/next HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/next");

    /* a large HEAD and a GET pipelined behind it */
    cl_sends(c, "HEAD /big HTTP/1.1\r\nHost: t\r\n\r\nGET /echo/after HTTP/1.1\r\nHost: t\r\n\r\n");
    cl_read_resp(c, &rs, true);
    assert_resp(&rs, 200, "");
    assert_header(&rs, "content-length", "4194304");
    cl_read_resp(c, &rs, false);
    assert_resp(&rs, 200, "/echo/after");
    /* HEAD of an unknown route: the error's length, no bytes */
    cl_roundtrip(c, "HEAD /missing HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 404, "");
    assert_non_null(resp_header(&rs, "content-length").ptr);
    cl_roundtrip(c, "GET /echo/end HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/end");
    resp_release(&rs);
}

/* ---- pipelining ---- */

static void
test_pipelining(void **state)
{
    struct fx *f = *state;
    struct http_config cfg = cfg_default();
    fx_start(f, &cfg);
    struct resp rs;
    resp_init(&rs);
    buf req = BUF_INIT;
    char want[160];

    /* 10 GETs in one send, 10 responses in order */
    struct cl *c = cl_open(f);
    for (int i = 0; i < 10; i++)
        buf_addf(&req, "GET /echo/%d HTTP/1.1\r\nHost: t\r\nX-Tag: %d\r\n\r\n", i, i);
    cl_send(c, req.ptr, req.len);
    for (int i = 0; i < 10; i++) {
        cl_read_resp(c, &rs, false);
        snprintf(want, sizeof want, "/echo/%d", i);
        assert_resp(&rs, 200, want);
        snprintf(want, sizeof want, "%d", i);
        assert_header(&rs, "x-tag", want);
    }
    assert_int_equal(c->in.len, 0);

    /* 10 mixed requests in one send: bodies, the pool, pre_body, HEAD, errors, an
     * early answer with a small body (read and dropped, the connection stays), and a
     * last one asking to close */
    buf_reset(&req);
    struct {
        int status;
        char body[160];
        bool head;
    } exp[10];
    const char *p1 = "payload-one", *p4 = "payload-four, chunked in pieces", *p7 = "seven";
    buf_adds(&req, "GET /echo/0 HTTP/1.1\r\nHost: t\r\n\r\n");
    exp[0].status = 200, str_copy(exp[0].body, sizeof exp[0].body, "/echo/0");
    req_put(&req, "/buffer", NULL, p1, strlen(p1));
    exp[1].status = 200, digest_body(p1, strlen(p1), exp[1].body, sizeof exp[1].body);
    buf_adds(&req, "GET /pool HTTP/1.1\r\nHost: t\r\n\r\n");
    exp[2].status = 200, str_copy(exp[2].body, sizeof exp[2].body, "pool");
    buf_adds(&req, "HEAD /echo/3 HTTP/1.1\r\nHost: t\r\n\r\n");
    exp[3].status = 200, str_copy(exp[3].body, sizeof exp[3].body, "");
    size_t sizes4[] = {1, 5, 3};
    req_put_chunked(&req, "/sink", NULL, p4, strlen(p4), sizes4, 3, NULL, NULL);
    exp[4].status = 200, digest_body(p4, strlen(p4), exp[4].body, sizeof exp[4].body);
    buf_adds(&req, "GET /none HTTP/1.1\r\nHost: t\r\n\r\n");
    exp[5].status = 404, exp[5].body[0] = '\0';
    req_put(&req, "/reject", NULL, "0123456789", 10);
    exp[6].status = 403, exp[6].body[0] = '\0';
    req_put(&req, "/sink?pre", NULL, p7, strlen(p7));
    exp[7].status = 200, digest_body(p7, strlen(p7), exp[7].body, sizeof exp[7].body);
    buf_adds(&req, "GET /echo/8?q=1 HTTP/1.1\r\nHost: t\r\n\r\n");
    exp[8].status = 200, str_copy(exp[8].body, sizeof exp[8].body, "/echo/8?q=1");
    buf_adds(&req, "GET /echo/9 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    exp[9].status = 200, str_copy(exp[9].body, sizeof exp[9].body, "/echo/9");
    for (int i = 0; i < 10; i++)
        exp[i].head = i == 3;

    c = cl_open(f);
    cl_send(c, req.ptr, req.len);
    for (int i = 0; i < 10; i++) {
        cl_read_resp(c, &rs, exp[i].head);
        assert_resp(&rs, exp[i].status, exp[i].body[0] ? exp[i].body : NULL);
        assert_true(resp_closes(&rs) == (i == 9));
    }
    cl_expect_eof(c, IO_TIMEOUT_MS);
    assert_int_equal(atomic_load(&f->app.pre_calls), 1);

    /* a pipelined request right behind one that the pool handles, sent byte by byte */
    c = cl_open(f);
    buf_reset(&req);
    buf_adds(&req, "GET /pool HTTP/1.1\r\nHost: t\r\n\r\nGET /echo/z HTTP/1.1\r\nHost: t\r\n\r\n");
    for (size_t i = 0; i < req.len; i++)
        cl_send(c, req.ptr + i, 1);
    cl_read_resp(c, &rs, false);
    assert_resp(&rs, 200, "pool");
    cl_read_resp(c, &rs, false);
    assert_resp(&rs, 200, "/echo/z");
    buf_release(&req);
    resp_release(&rs);
}

/* ---- a request split at every byte boundary ---- */

/* split_everywhere sends req in two parts for every split point k, making sure the
 * server has read the first part before the second is sent, and checks the answer
 * each time; all on one keep-alive connection. */
static void
split_everywhere(struct fx *f, const buf *req, const char *want_body, const char *want_tag)
{
    struct cl *c = cl_open(f);
    struct http_stats *st = stats(f);
    struct resp rs;
    resp_init(&rs);
    for (size_t k = 1; k < req->len; k++) {
        uint64_t base = atomic_load(&st->bytes_in);
        cl_send(c, req->ptr, k);
        wait_at_least(&st->bytes_in, base + k, "bytes read by the server");
        cl_send(c, req->ptr + k, req->len - k);
        cl_read_resp(c, &rs, false);
        if (rs.status != 200 || rs.body.len != strlen(want_body) ||
            memcmp(rs.body.ptr, want_body, rs.body.len) != 0)
            fail_msg("split at %zu of %zu: status %d body \"%s\", expected \"%s\"", k, req->len,
                     rs.status, rs.body.ptr, want_body);
        if (want_tag)
            assert_header(&rs, "x-tag", want_tag);
        assert_false(resp_closes(&rs));
    }
    cl_close(c);
    resp_release(&rs);
}

static void
test_split_every_byte(void **state)
{
    struct fx *f = *state;
    struct http_config cfg = cfg_default();
    fx_start(f, &cfg);
    buf req = BUF_INIT;
    char want[160];
    const char *body = "split me at every byte, please";
    size_t blen = strlen(body);
    digest_body(body, blen, want, sizeof want);

    /* a Content-Length body, buffered */
    req_put(&req, "/buffer", "X-Tag: cl\r\n", body, blen);
    split_everywhere(f, &req, want, "cl");

    /* a chunked body with extensions and a trailer, buffered */
    buf_reset(&req);
    size_t sizes[] = {4, 11, 1};
    req_put_chunked(&req, "/buffer", "X-Tag: ch\r\n", body, blen, sizes, 3, ";e=1",
                    "X-Trailer: t\r\n");
    split_everywhere(f, &req, want, "ch");

    /* a Content-Length body through a pre_body step on the pool and the sink */
    buf_reset(&req);
    req_put(&req, "/sink?pre", "X-Tag: pre\r\n", body, blen);
    unsigned pre0 = atomic_load(&f->app.pre_calls);
    split_everywhere(f, &req, want, "pre");
    assert_int_equal(atomic_load(&f->app.pre_calls) - pre0, req.len - 1);

    /* a GET whose end arrives late */
    buf_reset(&req);
    buf_adds(&req, "GET /echo/split HTTP/1.1\r\nHost: t\r\n\r\n");
    split_everywhere(f, &req, "/echo/split", NULL);
    buf_release(&req);
}

/* ---- bodies ---- */

static void
check_put(struct cl *c, const buf *req, const char *payload, size_t len, const char *tag)
{
    struct resp rs;
    char want[160];
    resp_init(&rs);
    digest_body(payload, len, want, sizeof want);
    cl_send(c, req->ptr, req->len);
    cl_read_resp(c, &rs, false);
    assert_resp(&rs, 200, want);
    if (tag)
        assert_header(&rs, "x-tag", tag);
    resp_release(&rs);
}

static void
test_chunked_bodies(void **state)
{
    struct fx *f = *state;
    struct http_config cfg = cfg_default();
    fx_start(f, &cfg);
    struct resp rs;
    resp_init(&rs);
    buf req = BUF_INIT;
    size_t plen = MIB + 12345;
    char *payload = malloc(plen);
    assert_non_null(payload);
    fill_random(payload, plen, 7);
    struct cl *c = cl_open(f);

    static const size_t one[] = {1};
    static const size_t uneven[] = {1, 7, 100, 4096, 65539, 3};
    static const size_t big[] = {MIB + 5};
    static const size_t medium[] = {200000};
    struct {
        const size_t *sizes;
        size_t nsizes, len;
        const char *ext, *trailer;
    } cases[] = {
        {one, 1, 0, NULL, NULL},
        {one, 1, 300, NULL, NULL},
        {uneven, 6, 200000, NULL, NULL},
        {uneven, 6, 70000, ";name=value", NULL},
        {one, 1, 50, ";flag;k=v", "X-Trailer: yes\r\nX-Other: 1\r\n"},
        {medium, 1, plen, NULL, "X-Checksum: abc\r\n"},
        {big, 1, plen, ";big", NULL},
    };
    const char *paths[] = {"/buffer", "/sink", "/sink?pre"};
    for (size_t p = 0; p < 3; p++) {
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            char tag[32];
            snprintf(tag, sizeof tag, "%zu-%zu", p, i);
            char extra[64];
            snprintf(extra, sizeof extra, "X-Tag: %s\r\n", tag);
            buf_reset(&req);
            req_put_chunked(&req, paths[p], extra, payload, cases[i].len, cases[i].sizes,
                            cases[i].nsizes, cases[i].ext, cases[i].trailer);
            check_put(c, &req, payload, cases[i].len, tag);
        }
    }

    /* a trailer large enough to move the header buffer */
    buf_reset(&req);
    buf tr = BUF_INIT;
    for (int i = 0; i < 40; i++)
        buf_addf(&tr, "X-T%d: %0100d\r\n", i, i);
    req_put_chunked(&req, "/buffer", "X-Tag: big-trailer\r\n", payload, 1000, one + 0, 1, NULL,
                    tr.ptr);
    check_put(c, &req, payload, 1000, "big-trailer");
    buf_release(&tr);

    /* over the buffer limit: 413, and the connection goes on */
    buf_reset(&req);
    req_put_chunked(&req, "/buffer?limit=100", NULL, payload, 200, uneven, 6, NULL, NULL);
    cl_send(c, req.ptr, req.len);
    cl_read_resp(c, &rs, false);
    assert_resp(&rs, 413, NULL);
    buf_reset(&req);
    req_put(&req, "/buffer?limit=100", NULL, payload, 101);
    cl_send(c, req.ptr, req.len);
    cl_read_resp(c, &rs, false);
    assert_resp(&rs, 413, NULL);
    buf_reset(&req);
    req_put(&req, "/buffer?limit=100", NULL, payload, 100);
    check_put(c, &req, payload, 100, NULL);

    free(payload);
    buf_release(&req);
    resp_release(&rs);
}

static void
test_sink_lengths(void **state)
{
    struct fx *f = *state;
    struct http_config cfg = cfg_default();
    fx_start(f, &cfg);
    struct resp rs;
    resp_init(&rs);
    buf req = BUF_INIT;
    size_t max = 5 * MIB;
    char *payload = malloc(max);
    assert_non_null(payload);
    fill_random(payload, max, 42);
    struct cl *c = cl_open(f);
    struct http_stats *st = stats(f);

    size_t lens[] = {0, 1, MIB, 5 * MIB};
    const char *paths[] = {"/sink", "/sink?pre", "/sink?slow"};
    for (size_t p = 0; p < 3; p++) {
        for (size_t i = 0; i < 4; i++) {
            unsigned calls0 = atomic_load(&f->app.sink_calls);
            uint64_t jobs0 = atomic_load(&st->pool_jobs);
            buf_reset(&req);
            req_put(&req, paths[p], NULL, payload, lens[i]);
            check_put(c, &req, payload, lens[i], NULL);
            unsigned calls = atomic_load(&f->app.sink_calls) - calls0;
            size_t largest = atomic_exchange(&f->app.sink_max, 0);
            /* nothing sunk for an empty body; a large one streams in writes of about
             * 1 MiB (the server's SINK_CHUNK, plus at most one socket read), and reading
             * waits while a write is in flight */
            if (lens[i] == 0)
                assert_int_equal(calls, 0);
            if (lens[i] > 2 * MIB)
                assert_true(calls >= 4);
            if (largest > MIB + (256u << 10))
                fail_msg("%s: a sink write of %zu bytes for a %zu-byte body", paths[p], largest,
                         lens[i]);
            assert_true(atomic_load(&st->pool_jobs) - jobs0 >= calls);
        }
    }

    /* a sink that fails: the handler answers the error, the body is still read in
     * full so the connection stays usable */
    buf_reset(&req);
    req_put(&req, "/sink?fail", NULL, payload, 3 * MIB);
    cl_send(c, req.ptr, req.len);
    cl_read_resp(c, &rs, false);
    assert_resp(&rs, 500, NULL);
    assert_false(resp_closes(&rs));
    buf_reset(&req);
    req_put(&req, "/sink", NULL, payload, 1000);
    check_put(c, &req, payload, 1000, NULL);

    /* the same bodies buffered */
    for (size_t i = 0; i < 4; i++) {
        buf_reset(&req);
        req_put(&req, "/buffer", NULL, payload, lens[i]);
        check_put(c, &req, payload, lens[i], NULL);
    }
    free(payload);
    buf_release(&req);
    resp_release(&rs);
}

/* ---- Expect: 100-continue ---- */

static void
test_expect_continue(void **state)
{
    struct fx *f = *state;
    struct http_config cfg = cfg_default();
    fx_start(f, &cfg);
    struct resp rs;
    resp_init(&rs);
    char want[160];
    const char *body = "eleven char";
    digest_body(body, strlen(body), want, sizeof want);
    struct cl *c = cl_open(f);

    /* the client waits for 100 before sending the body */
    const char *paths[] = {"/buffer", "/sink", "/sink?pre"};
    for (int i = 0; i < 3; i++) {
        char head[256];
        snprintf(head, sizeof head,
                 "PUT %s HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n",
                 paths[i]);
        cl_sends(c, head);
        cl_read_resp(c, &rs, false);
        assert_resp(&rs, 100, "");
        assert_string_equal(rs.head.ptr, "HTTP/1.1 100 Continue\r\n\r\n");
        cl_sends(c, body);
        cl_read_resp(c, &rs, false);
        assert_resp(&rs, 200, want);
    }
    assert_int_equal(atomic_load(&f->app.pre_calls), 1);

    /* chunked, and a client that does not wait */
    cl_sends(c, "PUT /buffer HTTP/1.1\r\nHost: t\r\nExpect: 100-Continue\r\n"
                "Transfer-Encoding: chunked\r\n\r\n5\r\neleve\r\n6\r\nn char\r\n0\r\n\r\n");
    cl_read_resp(c, &rs, false);
    assert_resp(&rs, 100, "");
    cl_read_resp(c, &rs, false);
    assert_resp(&rs, 200, want);

    /* no body, no 100 */
    cl_roundtrip(c, "GET /echo/e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/e");

    /* an early answer instead of 100: the client never sends the body */
    cl_roundtrip(c,
                 "PUT /reject HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                 "Content-Length: 10485760\r\n\r\n",
                 &rs);
    assert_resp(&rs, 403, NULL);
    assert_true(resp_closes(&rs));
    cl_expect_eof(c, IO_TIMEOUT_MS);

    /* the same from a pre_body step */
    c = cl_open(f);
    cl_roundtrip(c,
                 "PUT /sink?pre HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nX-Reject: 1\r\n"
                 "Content-Length: 10485760\r\n\r\n",
                 &rs);
    assert_resp(&rs, 403, NULL);
    assert_true(resp_closes(&rs));
    cl_expect_eof(c, IO_TIMEOUT_MS);
    resp_release(&rs);
}

/* ---- limits and malformed requests ---- */

static void
expect_refused(struct fx *f, const char *req, size_t len, int status)
{
    struct resp rs;
    resp_init(&rs);
    struct cl *c = cl_open(f);
    cl_send(c, req, len);
    cl_read_resp(c, &rs, false);
    if (rs.status != status)
        fail_msg("status %d, expected %d, for \"%.60s\"", rs.status, status, req);
    assert_true(resp_closes(&rs));
    cl_expect_eof(c, IO_TIMEOUT_MS);
    cl_close(c);
    resp_release(&rs);
}

static void
test_header_limits(void **state)
{
    struct fx *f = *state;
    struct http_config cfg = cfg_default();
    fx_start(f, &cfg);
    struct resp rs;
    resp_init(&rs);
    buf req = BUF_INIT;
    char *big = malloc(16 << 10);
    assert_non_null(big);
    memset(big, 'a', 16 << 10);

    /* a big header within the limit */
    struct cl *c = cl_open(f);
    buf_addf(&req, "GET /echo/ok HTTP/1.1\r\nHost: t\r\nX-Big: %.*s\r\n\r\n", 6000, big);
    cl_send(c, req.ptr, req.len);
    cl_read_resp(c, &rs, false);
    assert_resp(&rs, 200, "/echo/ok");

    /* exactly HTTP_MAX_HEADERS headers */
    buf_reset(&req);
    buf_adds(&req, "GET /echo/64 HTTP/1.1\r\nHost: t\r\n");
    for (int i = 1; i < HTTP_MAX_HEADERS; i++)
        buf_addf(&req, "X-H%d: %d\r\n", i, i);
    buf_adds(&req, "\r\n");
    cl_send(c, req.ptr, req.len);
    cl_read_resp(c, &rs, false);
    assert_resp(&rs, 200, "/echo/64");

    /* one too many */
    buf_reset(&req);
    buf_adds(&req, "GET /echo/65 HTTP/1.1\r\nHost: t\r\n");
    for (int i = 1; i <= HTTP_MAX_HEADERS; i++)
        buf_addf(&req, "X-H%d: %d\r\n", i, i);
    buf_adds(&req, "\r\n");
    expect_refused(f, req.ptr, req.len, 431);

    /* a header over the byte limit */
    buf_reset(&req);
    buf_addf(&req, "GET /echo/big HTTP/1.1\r\nHost: t\r\nX-Big: %.*s\r\n\r\n", 16 << 10, big);
    expect_refused(f, req.ptr, req.len, 431);
    /* many small headers over the byte limit */
    buf_reset(&req);
    buf_adds(&req, "GET /echo/big HTTP/1.1\r\nHost: t\r\n");
    for (int i = 0; i < 40; i++)
        buf_addf(&req, "X-%d: %.*s\r\n", i, 300, big);
    buf_adds(&req, "\r\n");
    expect_refused(f, req.ptr, req.len, 431);
    /* a URL over the byte limit */
    buf_reset(&req);
    buf_addf(&req, "GET /echo/%.*s HTTP/1.1\r\nHost: t\r\n\r\n", 16 << 10, big);
    expect_refused(f, req.ptr, req.len, 431);
    /* over the limit in a request pipelined behind a good one */
    buf_reset(&req);
    buf_addf(&req, "GET /echo/first HTTP/1.1\r\nHost: t\r\n\r\n"
                   "GET /echo/second HTTP/1.1\r\nHost: t\r\nX-Big: %.*s\r\n\r\n",
             16 << 10, big);
    c = cl_open(f);
    cl_send(c, req.ptr, req.len);
    cl_read_resp(c, &rs, false);
    assert_resp(&rs, 200, "/echo/first");
    cl_read_resp(c, &rs, false);
    assert_resp(&rs, 431, NULL);
    assert_true(resp_closes(&rs));
    cl_expect_eof(c, IO_TIMEOUT_MS);

    /* the first connection is still fine */
    cl_roundtrip(&f->cls[0], "GET /echo/still HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/still");
    free(big);
    buf_release(&req);
    resp_release(&rs);
}

static void
test_malformed(void **state)
{
    struct fx *f = *state;
    struct http_config cfg = cfg_default();
    fx_start(f, &cfg);
    static const char *bad[] = {
        "BLAH / HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET / HTTP/1.1 junk\r\nHost: t\r\n\r\n",
        "GET /a b HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET / XTTP/1.1\r\nHost: t\r\n\r\n",
        "\x01\x02\x03\r\n\r\n",
        "GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
        "PUT /buffer HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
        "PUT /buffer HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
        "PUT /buffer HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        "PUT /buffer HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        /* request smuggling shapes */
        "PUT /buffer HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "PUT /buffer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        /* bad chunks, after the headers were accepted */
        "PUT /buffer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
        "PUT /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",                        /* HTTP/1.1 without Host */
        "GET / HTTP/1.1\r\nHost: t\r\nX-A : b\r\n\r\n",    /* space before the colon */
        "GET /\r\n",                                      /* HTTP/0.9: at once */
        "PUT /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        "ffffffffffffffffffffffff\r\n",                   /* chunk size overflow */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_refused(f, bad[i], strlen(bad[i]), 400);
    expect_refused(f, "GET / HTTP/2.0\r\nHost: t\r\n\r\n", 27, 505);
    expect_refused(f, "GET / HTTP/3.0\r\nHost: t\r\n\r\n", 27, 505);
    /* a bad request pipelined behind a good one */
    struct resp rs;
    resp_init(&rs);
    struct cl *c = cl_open(f);
    cl_sends(c, "GET /echo/good HTTP/1.1\r\nHost: t\r\n\r\nGARBAGE\r\n\r\n");
    cl_read_resp(c, &rs, false);
    assert_resp(&rs, 200, "/echo/good");
    cl_read_resp(c, &rs, false);
    assert_resp(&rs, 400, NULL);
    cl_expect_eof(c, IO_TIMEOUT_MS);
    /* the server is fine afterwards */
    c = cl_open(f);
    cl_roundtrip(c, "GET /echo/fine HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/fine");
    resp_release(&rs);
}

/* ---- early answers: lingering close ---- */

/* early_answer sends a whole large request that the server answers before reading
 * its body; the answer must be readable after the body was sent. */
static void
early_answer(struct fx *f, const char *what, const buf *req, int status)
{
    struct resp rs;
    resp_init(&rs);
    struct cl *c = cl_open(f);
    int rc = cl_try_send(c, req->ptr, req->len);
    if (rc)
        fail_msg("%s: the server reset the connection while the client sent its body (%s): "
                 "the early answer is lost",
                 what, strerror(-rc));
    cl_read_resp(c, &rs, false);
    if (rs.status != status)
        fail_msg("%s: status %d, expected %d", what, rs.status, status);
    assert_true(resp_closes(&rs));
    cl_expect_eof(c, IO_TIMEOUT_MS);
    cl_close(c);
    resp_release(&rs);
}

static void
test_early_answer_linger(void **state)
{
    struct fx *f = *state;
    struct http_config cfg = cfg_default();
    fx_start(f, &cfg);
    buf req = BUF_INIT;
    size_t len = 8 * MIB;
    char *payload = malloc(len);
    assert_non_null(payload);
    fill_random(payload, len, 3);

    /* answered in on_headers: Content-Length and chunked */
    req_put(&req, "/reject", NULL, payload, len);
    early_answer(f, "on_headers, Content-Length", &req, 403);
    buf_reset(&req);
    size_t sizes[] = {64 << 10};
    req_put_chunked(&req, "/reject", NULL, payload, len, sizes, 1, NULL, NULL);
    early_answer(f, "on_headers, chunked", &req, 403);
    /* answered by a pre_body step on the pool */
    buf_reset(&req);
    req_put(&req, "/sink?pre", "X-Reject: 1\r\n", payload, len);
    early_answer(f, "pre_body", &req, 403);
    /* a parse error in the middle of a large chunked body */
    buf_reset(&req);
    buf_addf(&req, "PUT /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n",
             256u << 10);
    buf_add(&req, payload, 256 << 10);
    buf_adds(&req, "\r\nzz\r\n");
    buf_add(&req, payload, len - (256 << 10));
    early_answer(f, "bad chunk", &req, 400);
    /* an oversized header followed by a large body */
    buf_reset(&req);
    buf_addf(&req, "PUT /buffer HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\nX-Big: ", len);
    for (int i = 0; i < 9000; i++)
        buf_addc(&req, 'b');
    buf_adds(&req, "\r\n\r\n");
    buf_add(&req, payload, len);
    early_answer(f, "header too large", &req, 431);

    free(payload);
    buf_release(&req);
}

/* ---- timeouts ---- */

static void
test_idle_timeout(void **state)
{
    struct fx *f = *state;
    struct http_config cfg = cfg_default();
    cfg.idle_timeout_ms = 400;
    fx_start(f, &cfg);
    struct resp rs;
    resp_init(&rs);

    /* a: idle after one request; b: idle from the start */
    struct cl *a = cl_open(f), *b = cl_open(f);
    cl_roundtrip(a, "GET /echo/a HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/a");
    uint64_t took = cl_expect_eof(a, 2000);
    /* the timeout, give or take the 250 ms sweep */
    if (took < 350 || took > 1200)
        fail_msg("an idle connection was closed after %llu ms (idle timeout 400 ms)",
                 (unsigned long long)took);
    cl_expect_eof(b, 1000);
    /* a connection that keeps asking stays open past the idle timeout */
    struct cl *busy = cl_open(f);
    for (int i = 0; i < 5; i++) {
        cl_roundtrip(busy, "GET /echo/busy HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
        assert_resp(&rs, 200, "/echo/busy");
        sleep_ms(200);
    }
    cl_roundtrip(busy, "GET /echo/busy HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/busy");
    /* an idle close is not a timeout of a request */
    assert_int_equal(atomic_load(&stats(f)->timeouts), 0);
    resp_release(&rs);
}

static void
test_header_timeout(void **state)
{
    struct fx *f = *state;
    struct http_config cfg = cfg_default();
    cfg.header_timeout_ms = 500;
    fx_start(f, &cfg);
    struct resp rs;
    resp_init(&rs);
    static const char slow[] = "GET /echo/slow HTTP/1.1\r\nHost: t\r\nX-Filler: aaaaaaaaaaaaaaaa"
                               "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    struct cl *a = cl_open(f);
    uint64_t t0 = ms_now();
    bool closed = false;
    uint64_t served_ms = 0;
    for (size_t i = 0; i < sizeof slow - 1 && !closed; i++) {
        if (cl_try_send(a, slow + i, 1) != 0) {
            closed = true; /* reset by the server */
            break;
        }
        if (i == 3) {
            /* meanwhile another connection is served normally */
            uint64_t s0 = ms_now();
            struct cl *b = cl_open(f);
            cl_roundtrip(b, "GET /echo/other HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
            assert_resp(&rs, 200, "/echo/other");
            served_ms = ms_now() - s0;
        }
        struct pollfd p = {a->fd, POLLIN, 0};
        closed = poll(&p, 1, 50) == 1;
    }
    uint64_t took = ms_now() - t0;
    assert_true(closed);
    cl_expect_eof(a, 1000);
    if (took < 450 || took > 1500)
        fail_msg("a trickling client was cut after %llu ms (header timeout 500 ms)",
                 (unsigned long long)took);
    assert_true(served_ms < 400);
    assert_int_equal(atomic_load(&stats(f)->timeouts), 1);
    resp_release(&rs);
}

static void
test_body_timeout(void **state)
{
    struct fx *f = *state;
    struct http_config cfg = cfg_default();
    cfg.body_timeout_ms = 500;
    fx_start(f, &cfg);
    struct cl *a = cl_open(f);
    cl_sends(a, "PUT /buffer HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789");
    uint64_t took = cl_expect_eof(a, 3000);
    if (took < 400 || took > 1500)
        fail_msg("a stalled body was cut after %llu ms (body timeout 500 ms)",
                 (unsigned long long)took);
    assert_int_equal(atomic_load(&stats(f)->timeouts), 1);
}

/* ---- the connection cap ---- */

static void
test_connection_cap(void **state)
{
    struct fx *f = *state;
    struct http_config cfg = cfg_default();
    cfg.workers = 2;
    cfg.max_connections = 2;
    fx_start(f, &cfg);
    struct resp rs;
    resp_init(&rs);
    struct http_stats *st = stats(f);

    struct cl *a = cl_open(f), *b = cl_open(f);
    cl_roundtrip(a, "GET /echo/a HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/a");
    cl_roundtrip(b, "GET /echo/b HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/b");
    /* the third: 503 and closed; it sends its request first, as clients do */
    struct cl *c = cl_open(f);
    cl_roundtrip(c, "GET /echo/c HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 503, NULL);
    assert_true(resp_closes(&rs));
    cl_expect_eof(c, IO_TIMEOUT_MS);
    wait_at_least(&st->conns_refused, 1, "refused connections"); /* counted after the close */
    assert_int_equal(atomic_load(&st->conns_refused), 1);
    /* the first two are unaffected */
    cl_roundtrip(a, "GET /echo/a2 HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/a2");
    /* a slot frees when a connection closes */
    cl_close(a);
    uint64_t t0 = ms_now();
    while (atomic_load(&st->conns_open) > 1) {
        if (ms_now() - t0 > IO_TIMEOUT_MS)
            fail_msg("conns_open stays at %llu", (unsigned long long)atomic_load(&st->conns_open));
        usleep(1000);
    }
    struct cl *d = cl_open(f);
    cl_roundtrip(d, "GET /echo/d HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/d");
    resp_release(&rs);
}

/* ---- stopping ---- */

struct stopper {
    http_server *srv;
    uint64_t drain_ms, took_ms;
};

static void *
stopper_main(void *p)
{
    struct stopper *s = p;
    uint64_t t0 = ms_now();
    http_server_stop(s->srv, s->drain_ms);
    s->took_ms = ms_now() - t0;
    return NULL;
}

static void
test_graceful_stop(void **state)
{
    struct fx *f = *state;
    struct http_config cfg = cfg_default();
    f->app.slow_ms = 500;
    fx_start(f, &cfg);
    struct resp rs;
    resp_init(&rs);
    struct http_stats *st = stats(f);
    char want[160];
    const char *body = "twenty bytes of body";
    digest_body(body, 20, want, sizeof want);

    /* a: idle keep-alive; b: a handler running on the pool; c: half of a body */
    struct cl *a = cl_open(f), *b = cl_open(f), *c = cl_open(f);
    cl_roundtrip(a, "GET /echo/a HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/a");
    uint64_t in0 = atomic_load(&st->bytes_in);
    static const char c_head[] = "PUT /buffer HTTP/1.1\r\nHost: t\r\nContent-Length: 20\r\n\r\n";
    cl_sends(c, c_head);
    cl_send(c, body, 10);
    wait_at_least(&st->bytes_in, in0 + sizeof c_head - 1 + 10, "bytes read by the server");
    cl_sends(b, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    uint64_t t0 = ms_now();
    while (atomic_load(&f->app.slow_started) == 0) {
        if (ms_now() - t0 > IO_TIMEOUT_MS)
            fail_msg("the slow handler never started");
        usleep(1000);
    }

    static struct stopper s;
    s = (struct stopper){.srv = f->srv, .drain_ms = 5000};
    assert_int_equal(pthread_create(&f->stopper, NULL, stopper_main, &s), 0);
    f->stopped = f->stopper_running = true;
    /* the idle connection is closed at once */
    cl_expect_eof(a, 2000);
    /* the half-sent request finishes, with Connection: close */
    cl_send(c, body + 10, 10);
    cl_read_resp(c, &rs, false);
    assert_resp(&rs, 200, want);
    assert_true(resp_closes(&rs));
    cl_expect_eof(c, IO_TIMEOUT_MS);
    /* the running handler's answer arrives */
    cl_read_resp(b, &rs, false);
    assert_resp(&rs, 200, "slow");
    assert_true(resp_closes(&rs));
    cl_expect_eof(b, IO_TIMEOUT_MS);
    f->stopper_running = false;
    assert_int_equal(pthread_join(f->stopper, NULL), 0);
    assert_true(s.took_ms < 3000);
    assert_int_equal(atomic_load(&f->app.slow_done), 1);
    /* nothing listens any more */
    int fd = raw_connect(f->port);
    if (fd >= 0)
        close(fd);
    assert_int_equal(fd, -ECONNREFUSED);
    resp_release(&rs);
}

static void
test_stop_forces_after_drain(void **state)
{
    struct fx *f = *state;
    struct http_config cfg = cfg_default();
    f->app.slow_ms = 800;
    fx_start(f, &cfg);
    struct http_stats *st = stats(f);

    /* a: a request that never completes; b: a handler still running at the deadline */
    struct cl *a = cl_open(f), *b = cl_open(f);
    uint64_t in0 = atomic_load(&st->bytes_in);
    cl_sends(a, "GET /echo/never HTTP/1.1\r\nHo");
    wait_at_least(&st->bytes_in, in0 + 28, "bytes read by the server");
    cl_sends(b, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    while (atomic_load(&f->app.slow_started) == 0)
        usleep(1000);
    uint64_t t0 = ms_now();
    http_server_stop(f->srv, 200);
    f->stopped = true;
    uint64_t took = ms_now() - t0;
    /* the drain gives up after 200 ms, and the pool job is waited for */
    assert_true(took >= 200);
    assert_true(took < 3000);
    assert_int_equal(atomic_load(&f->app.slow_done), 1);
    cl_expect_eof(a, 1000);
    cl_expect_eof(b, 1000);
}

/* ---- clients that go away ---- */

static void
test_client_resets(void **state)
{
    struct fx *f = *state;
    struct http_config cfg = cfg_default();
    fx_start(f, &cfg);
    struct resp rs;
    resp_init(&rs);
    struct linger lg = {1, 0};
    size_t len = 3 * MIB;
    char *payload = malloc(len);
    assert_non_null(payload);
    fill_random(payload, len, 9);
    buf req = BUF_INIT;

    /* gone in the middle of a large response, and right after asking for it */
    for (int i = 0; i < 2; i++) {
        struct cl *c = cl_open(f);
        cl_sends(c, "GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
        if (i == 0)
            assert_true(cl_fill(c, IO_TIMEOUT_MS) > 0);
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        cl_close(c);
    }
    /* gone in the middle of a body, to the sink and to the buffer */
    const char *paths[] = {"/sink?slow", "/buffer", "/sink?pre"};
    for (int i = 0; i < 3; i++) {
        struct cl *c = cl_open(f);
        buf_reset(&req);
        req_put(&req, paths[i], NULL, payload, len);
        cl_send(c, req.ptr, req.len / 2);
        sleep_ms(20);
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        cl_close(c);
    }
    /* gone while the pool handles its request */
    f->app.slow_ms = 100;
    struct cl *c = cl_open(f);
    cl_sends(c, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
    while (atomic_load(&f->app.slow_started) == 0)
        usleep(1000);
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    cl_close(c);
    sleep_ms(250);
    /* the server goes on */
    c = cl_open(f);
    cl_roundtrip(c, "GET /echo/alive HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/alive");
    buf_reset(&req);
    req_put(&req, "/sink", NULL, payload, len);
    check_put(c, &req, payload, len, NULL);
    free(payload);
    buf_release(&req);
    resp_release(&rs);
}

/* A parked request runs again when http_req_wake is called (from another thread, or
 * before it parked), not only when park_ms is over. */
static void
test_park_wake(void **state)
{
    struct fx *f = *state;
    struct http_config cfg = cfg_default();
    fx_start(f, &cfg);
    struct resp rs;
    resp_init(&rs);
    struct cl *c = cl_open(f);
    cl_roundtrip(c, "GET /wake HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 200, "woken");
    cl_roundtrip(c, "GET /wake?early HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 200, "woken");
    /* the connection goes on after a woken request */
    cl_roundtrip(c, "GET /echo/after HTTP/1.1\r\nHost: t\r\n\r\n", &rs);
    assert_resp(&rs, 200, "/echo/after");
    resp_release(&rs);
}

int
main(void)
{
    log_set_level(LOG_ERROR);
    struct sigaction sa = {0};
    sa.sa_handler = on_watchdog;
    sigaction(SIGALRM, &sa, NULL);
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)
        T(test_get_and_keepalive),
        T(test_head),
        T(test_pipelining),
        T(test_split_every_byte),
        T(test_chunked_bodies),
        T(test_sink_lengths),
        T(test_expect_continue),
        T(test_header_limits),
        T(test_malformed),
        T(test_early_answer_linger),
        T(test_idle_timeout),
        T(test_header_timeout),
        T(test_body_timeout),
        T(test_connection_cap),
        T(test_graceful_stop),
        T(test_stop_forces_after_drain),
        T(test_client_resets),
        T(test_park_wake),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
