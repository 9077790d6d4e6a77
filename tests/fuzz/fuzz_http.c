/* libFuzzer driver for the HTTP server glue (node/http/http.c): llhttp callbacks, header
 * assembly and limits, the connection state machine (pause/resume at request
 * boundaries, pipelining, Expect: 100-continue, early answers with lingering
 * close, pre_body steps, sinks and handlers on the thread pool) and response
 * framing.
 *
 * Why a socket and not llhttp alone: the code worth fuzzing is the glue, not llhttp
 * (Node's parser, fuzzed upstream). Its callbacks are static and only make sense
 * with the connection state machine around them, which is driven by poll events on
 * a real socket. So LLVMFuzzerInitialize starts one http_server on 127.0.0.1:0 (one
 * worker thread) with a small application, and every input is one connection: the
 * bytes are written, the client half-closes, and everything the server sends is
 * read until it closes. Coverage from the server's threads counts for the input
 * (libFuzzer's counters are process-wide) because the input is only over once the
 * server has closed. A few thousand inputs per second is enough for this target.
 *
 * Oracles, beyond the sanitizers (ASan, UBSan, LeakSanitizer) in the server:
 *  - the server always closes a half-closed connection: no answer within
 *    HANG_MS is reported as a hang (its timeouts are set far beyond that);
 *  - everything it sends is a well-formed sequence of HTTP/1.1 responses, checked
 *    with llhttp in response mode (the app marks answers to HEAD with
 *    X-Fuzz-Head so the checker knows they have no body).
 *
 * The application routes on the path:
 *   /early    answers 404 from on_headers, before any body (discard or linger)
 *   /pre      a pre_body step on the pool; ?deny answers 403 from it
 *   /sink     body streamed to a sink on the pool; a body starting with '!' fails it
 *   /pool     handler only on the pool
 *   /block    handler that says ERR_WOULDBLOCK on the loop, answers on the pool
 *   /file     answer from a file (sendfile)
 *   /big      a memory body beyond the inline limit (writev of head + body)
 *   /empty    204
 *   /none     no handler (the server answers 404)
 *   else      body buffered up to 1 KiB; the answer echoes ?a=, X-Tag and the
 *             body length
 * GEOREG_FUZZ_LOG=1 turns the server's log on and copies the responses to stderr.
 */
#include <errno.h>
#include <fcntl.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "node/http/http.h"


#define HANG_MS 5000
#define SERVER_TIMEOUT_MS 600000
#define BIG_BODY (40u << 10)

#define FUZZ_NAME "fuzz_http"
#include "fuzz.h"

static http_server *srv;
static bool verbose;
static int port;
static char file_path[4096];
static char *big_body;

/* ---- the application ---- */

struct sink_state {
    uint64_t n;
    unsigned calls;
    bool fail;
};

static void
sink_state_free(struct http_req *r)
{
    free(r->app_state);
    r->app_state = NULL;
}

static void
mark_head(struct http_req *r)
{
    static const char mark[] = "X-Fuzz-Head: 1\r\n";
    if (r->method == M_HEAD &&
        !memmem(r->resp.headers.ptr, r->resp.headers.len, mark, sizeof mark - 1))
        http_resp_header(r, "X-Fuzz-Head", "1");
}

static err
sink_write(void *ctx, const void *ptr, size_t len)
{
    struct sink_state *st = ctx;
    if (st->calls++ == 0 && len && *(const char *)ptr == '!')
        st->fail = true;
    st->n += len;
    return st->fail ? ERR_IO : ERR_OK;
}

static err
h_sink(struct http_req *r, bool nowait)
{
    struct sink_state *st = r->app_state;
    (void)nowait;
    mark_head(r);
    if (r->sink_err) {
        http_resp_error(r, r->sink_err, NULL, "sink failed");
        return ERR_OK;
    }
    char b[64];
    int n = snprintf(b, sizeof b, "{\"bytes\":%llu}", (unsigned long long)st->n);
    http_resp_json(r, 201, b, (size_t)n);
    return ERR_OK;
}

static err
pre_step(struct http_req *r, bool nowait)
{
    char v[8];
    (void)nowait;
    if (http_req_query(r, "deny", v, sizeof v)) {
        mark_head(r);
        http_resp_error(r, ERR_DENIED, NULL, NULL);
    }
    return ERR_OK;
}

static err
h_echo(struct http_req *r, bool nowait)
{
    (void)nowait;
    mark_head(r);
    if (r->body_too_large) {
        http_resp_error(r, ERR_BODY_TOO_LARGE, NULL, NULL);
        return ERR_OK;
    }
    char a[128] = "";
    bool has_a = http_req_query(r, "a", a, sizeof a);
    slice tag = http_req_header(r, "x-tag");
    buf b = BUF_INIT;
    buf_adds(&b, "{\"a\":");
    if (has_a)
        buf_add_json_str(&b, a, strlen(a));
    else
        buf_adds(&b, "null");
    buf_addf(&b, ",\"len\":%zu,\"tag\":", r->body.len);
    if (tag.ptr)
        buf_add_json_str(&b, tag.ptr, tag.len);
    else
        buf_adds(&b, "null");
    buf_addc(&b, '}');
    http_resp_json(r, 200, b.ptr, b.len);
    buf_release(&b);
    return ERR_OK;
}

static err
h_block(struct http_req *r, bool nowait)
{
    if (nowait)
        return ERR_WOULDBLOCK;
    return h_echo(r, nowait);
}

static err
h_file(struct http_req *r, bool nowait)
{
    (void)nowait;
    mark_head(r);
    int fd = open(file_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        http_resp_error(r, ERR_IO, NULL, NULL);
        return ERR_OK;
    }
    r->resp.status = 200;
    r->resp.fd = fd;
    r->resp.file_off = 3;
    r->resp.file_len = 1000;
    r->resp.head_len = 1000;
    return ERR_OK;
}

static err
h_big(struct http_req *r, bool nowait)
{
    (void)nowait;
    mark_head(r);
    r->resp.status = 200;
    buf_add(&r->resp.body, big_body, BIG_BODY);
    return ERR_OK;
}

static err
h_empty(struct http_req *r, bool nowait)
{
    (void)nowait;
    mark_head(r);
    r->resp.status = 204;
    return ERR_OK;
}

static void
on_headers(struct http_req *r)
{
    slice p = r->path;
    mark_head(r);
    r->body_mode = BODY_BUFFER;
    r->body_limit = 1024;
    r->handler = h_echo;
    if (slice_eq_cstr(p, "/early")) {
        http_resp_error(r, ERR_NAME_UNKNOWN, NULL, "early");
    } else if (slice_eq_cstr(p, "/pre")) {
        r->pre_body = pre_step;
    } else if (slice_eq_cstr(p, "/sink")) {
        struct sink_state *st = calloc(1, sizeof *st);
        if (!st) {
            http_resp_error(r, ERR_NOMEM, NULL, NULL);
            return;
        }
        r->app_state = st;
        r->app_free = sink_state_free;
        r->body_mode = BODY_SINK;
        r->sink = sink_write;
        r->sink_ctx = st;
        r->handler = h_sink;
    } else if (slice_eq_cstr(p, "/pool")) {
        r->handler_on_pool = true;
    } else if (slice_eq_cstr(p, "/block")) {
        r->handler = h_block;
    } else if (slice_eq_cstr(p, "/file")) {
        r->handler = h_file;
    } else if (slice_eq_cstr(p, "/big")) {
        r->handler = h_big;
    } else if (slice_eq_cstr(p, "/empty")) {
        r->handler = h_empty;
    } else if (slice_eq_cstr(p, "/none")) {
        r->handler = NULL;
    }
}

/* ---- setup ---- */

static void
remove_file(void)
{
    unlink(file_path);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *lg = getenv("GEOREG_FUZZ_LOG");
    verbose = lg && *lg == '1';
    log_level_ = verbose ? LOG_DEBUG : -1;
    signal(SIGPIPE, SIG_IGN);

    big_body = malloc(BIG_BODY);
    FUZZ_CHECK(big_body, "malloc");
    for (size_t i = 0; i < BIG_BODY; i++)
        big_body[i] = (char)('a' + i % 26);
    const char *tmp = getenv("GEOREG_FUZZ_TMP");
    if (!tmp || !*tmp)
        tmp = getenv("TMPDIR");
    if (!tmp || !*tmp)
        tmp = "/tmp";
    snprintf(file_path, sizeof file_path, "%s/georeg-fuzz-http-XXXXXX", tmp);
    int fd = mkstemp(file_path);
    FUZZ_CHECK(fd >= 0, "mkstemp %s", file_path);
    FUZZ_CHECK(write(fd, big_body, 2000) == 2000, "write");
    close(fd);
    atexit(remove_file);

    struct http_config cfg = {
        .listen = "127.0.0.1:0",
        .workers = 1,
        .max_connections = 1024,
        .header_timeout_ms = SERVER_TIMEOUT_MS,
        .idle_timeout_ms = SERVER_TIMEOUT_MS,
        .body_timeout_ms = SERVER_TIMEOUT_MS,
        .max_header_bytes = 4096,
    };
    FUZZ_CHECK(http_server_new(&cfg, on_headers, NULL, &srv) == ERR_OK, "http_server_new");
    FUZZ_CHECK(http_server_start(srv) == ERR_OK, "http_server_start");
    port = http_server_port(srv);
    return 0;
}

/* ---- the response checker ---- */

struct resp_check {
    llhttp_t p;
    llhttp_settings_t s;
    bool in_head_mark; /* the header being read is X-Fuzz-Head */
    bool head;         /* the current response answers a HEAD */
    bool in_body;      /* the current response's head is complete */
    unsigned status;   /* of the current response */
    size_t body_bytes; /* of the current response so far */
    unsigned responses;
};

static int
rc_begin(llhttp_t *p)
{
    struct resp_check *c = p->data;
    c->head = false;
    c->in_body = false;
    c->body_bytes = 0;
    return 0;
}

static int
rc_field(llhttp_t *p, const char *at, size_t len)
{
    struct resp_check *c = p->data;
    c->in_head_mark = len == 11 && strncasecmp(at, "X-Fuzz-Head", 11) == 0;
    return 0;
}

static int
rc_value(llhttp_t *p, const char *at, size_t len)
{
    struct resp_check *c = p->data;
    (void)at;
    (void)len;
    if (c->in_head_mark)
        c->head = true;
    return 0;
}

static int
rc_headers_complete(llhttp_t *p)
{
    struct resp_check *c = p->data;
    c->in_body = true;
    c->status = llhttp_get_status_code(p);
    return c->head ? 1 : 0; /* 1: no body follows */
}

static int
rc_body(llhttp_t *p, const char *at, size_t len)
{
    struct resp_check *c = p->data;
    (void)at;
    c->body_bytes += len;
    return 0;
}

static int
rc_complete(llhttp_t *p)
{
    struct resp_check *c = p->data;
    c->responses++;
    return 0;
}

static void
rc_init(struct resp_check *c)
{
    memset(c, 0, sizeof *c);
    llhttp_settings_init(&c->s);
    c->s.on_message_begin = rc_begin;
    c->s.on_header_field = rc_field;
    c->s.on_header_value = rc_value;
    c->s.on_headers_complete = rc_headers_complete;
    c->s.on_body = rc_body;
    c->s.on_message_complete = rc_complete;
    llhttp_init(&c->p, HTTP_RESPONSE, &c->s);
    c->p.data = c;
}

static uint64_t
mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- one input: one connection ---- */

/* connect_loopback returns a non-blocking socket connected to the server, or
 * -errno. A signal (libFuzzer's -timeout alarm, SIGALRM every second) can interrupt
 * a blocking connect() with EINTR while the connection goes on in the background, so
 * the socket is non-blocking from the start and the outcome is waited for with poll
 * and read from SO_ERROR, whatever interrupts the wait. */
static int
connect_loopback(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    FUZZ_CHECK(fd >= 0, "socket: %s", strerror(errno));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
        return fd;
    int e = errno;
    if (e == EINPROGRESS || e == EINTR) {
        struct pollfd pfd = {fd, POLLOUT, 0};
        int pr;
        uint64_t deadline = mono_ms() + HANG_MS;
        do {
            uint64_t now = mono_ms();
            FUZZ_CHECK(now < deadline, "connect did not complete within %d ms", HANG_MS);
            pr = poll(&pfd, 1, (int)(deadline - now));
        } while (pr < 0 && errno == EINTR);
        FUZZ_CHECK(pr >= 0, "poll: %s", strerror(errno));
        socklen_t el = sizeof e;
        FUZZ_CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) == 0, "SO_ERROR: %s",
                   strerror(errno));
        if (e == 0)
            return fd;
    }
    close(fd);
    return -e;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = -1;
    for (int tries = 0; fd < 0; tries++) {
        fd = connect_loopback();
        if (fd >= 0)
            break;
        int e = -fd;
        fd = -1;
        FUZZ_CHECK(tries < 100 && (e == EADDRNOTAVAIL || e == EAGAIN || e == ECONNREFUSED),
                   "connect: %s", strerror(e));
        usleep(10000);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    struct resp_check rc;
    rc_init(&rc);
    size_t sent = 0, got = 0;
    bool wr_done = false, eof = false, reset = false;
    uint64_t deadline = mono_ms() + HANG_MS;
    char rbuf[65536];
    while (!eof) {
        if (!wr_done && sent == size) {
            shutdown(fd, SHUT_WR);
            wr_done = true;
        }
        struct pollfd pfd = {fd, (short)(POLLIN | (wr_done ? 0 : POLLOUT)), 0};
        uint64_t now = mono_ms();
        FUZZ_CHECK(now < deadline,
                   "the server did not close a half-closed connection within %d ms (%zu of %zu "
                   "bytes sent, %zu received, %u responses)",
                   HANG_MS, sent, size, got, rc.responses);
        int pr = poll(&pfd, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR)
            continue;
        FUZZ_CHECK(pr >= 0, "poll: %s", strerror(errno));
        if (pfd.revents & (POLLOUT | POLLERR | POLLHUP) && !wr_done) {
            ssize_t w = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
            if (w > 0)
                sent += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != EINTR)
                wr_done = true; /* the server closed or reset: read what it said */
        }
        if (pfd.revents & (POLLIN | POLLERR | POLLHUP)) {
            ssize_t n = recv(fd, rbuf, sizeof rbuf, 0);
            if (n > 0) {
                got += (size_t)n;
                if (verbose)
                    fwrite(rbuf, 1, (size_t)n, stderr);
                llhttp_errno_t e = llhttp_execute(&rc.p, rbuf, (size_t)n);
                FUZZ_CHECK(e == HPE_OK, "malformed response from the server: %s (%s) after %zu "
                           "bytes",
                           llhttp_errno_name(e), llhttp_get_error_reason(&rc.p), got);
            } else if (n == 0) {
                eof = true;
            } else if (errno == ECONNRESET) {
                eof = reset = true;
            } else {
                FUZZ_CHECK(errno == EAGAIN || errno == EINTR, "recv: %s", strerror(errno));
            }
        }
    }
    if (!reset) {
        llhttp_errno_t e = llhttp_finish(&rc.p);
        /* A malformed request is answered 400 and the connection closed, possibly
         * before the application saw it (so without X-Fuzz-Head): when that request
         * was a HEAD, the answer rightly has no body. */
        if (e != HPE_OK && rc.in_body && rc.status == 400 && rc.body_bytes == 0)
            e = HPE_OK;
        FUZZ_CHECK(e == HPE_OK, "the server closed in the middle of a response: %s (%zu bytes)",
                   llhttp_errno_name(e), got);
    }
    struct linger lg = {1, 0}; /* no TIME_WAIT: inputs come by the thousand */
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
    return 0;
}
