/* faultproxy: the fault-injecting TCP proxy that sits between georeg nodes in
 * multi-region tests. It forwards every connection from --listen to --target
 * and, on line commands from --control, adds one-way latency, caps bandwidth,
 * cuts links or black-holes them (see usage() for the protocol). */

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

/* one read buffer; reads of at least half of it are queued without a copy */
#define READ_SIZE ((size_t)256 * 1024)
/* chunks handed to one uv_write (writev) */
#define WRITE_BATCH 16
/* longest control command line, and concurrent control connections */
#define CTL_LINE_MAX 256
#define CTL_MAX 64
/* released bytes the destination has not taken yet before the source is paused */
#define WQ_MAX ((size_t)4 << 20)
/* idle read buffers kept for reuse (16 MiB): fresh ones page-fault on every read */
#define POOL_MAX 64
#define DEFAULT_BUFFER_CAP ((uint64_t)256 << 20)
#define DEFAULT_MAX_CONNS 4096u
#define MAX_LATENCY_MS 3600000ull
#define MAX_RATE 1000000000000ull
#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull

#define CONTAINER_OF(ptr, type, field) ((type *)((char *)(ptr)-offsetof(type, field)))

struct proxy;
struct conn;

/* chunk: bytes received on one side, waiting until release_ns to be written
 * to the other. It may be written in several pieces when the rate cap splits
 * it; it is freed when it left the queue and no write references it. */
struct chunk {
    struct chunk *next;
    uint64_t release_ns;
    size_t alloc;     /* bytes charged against the direction's buffer cap */
    size_t len, off;  /* payload length; bytes already handed to uv_write */
    unsigned pending; /* write requests still pointing into data */
    bool detached;    /* fully handed to uv_write and unlinked from the queue */
    char data[];
};

enum dir_id { DIR_UP = 0, DIR_DOWN = 1 };

/* dir: one direction of a proxied connection (src is read, dst written). */
struct dir {
    struct conn *c;
    uv_stream_t *src, *dst;
    uv_timer_t timer; /* wakes the pump for the next release or token refill */
    struct chunk *head, *tail;
    struct chunk *spare;      /* read buffer not yet filled */
    uint64_t buffered;        /* bytes allocated for queued or in-flight chunks */
    uint64_t last_release_ns; /* release times never go backwards */
    uint64_t eof_release_ns;
    uint64_t timer_due_ns;
    double tokens; /* token bucket for the rate cap */
    uint64_t tokens_ns;
    bool reading;
    bool full;    /* buffered reached the cap */
    bool stalled; /* dst is slower than src: WQ_MAX bytes wait in libuv's write queue */
    bool eof_read, shut_sent, shut_done;
    uv_shutdown_t shut_req;
};

enum conn_state {
    CONN_HELD,       /* accepted during a blackhole; upstream connect waits for restore */
    CONN_CONNECTING, /* connecting to the target; the client is not read yet */
    CONN_OPEN,       /* forwarding both ways */
    CONN_CLOSING,    /* handles closing; freed when the last close callback runs */
};

struct conn {
    struct proxy *px;
    struct conn *prev, *next;
    enum conn_state state;
    uv_tcp_t cli, up;
    uv_connect_t connect_req;
    struct dir d[2];
    int open_handles;
};

/* wreq: one uv_write of up to WRITE_BATCH pieces of queued chunks. */
struct wreq {
    uv_write_t req;
    struct dir *d;
    unsigned n;
    size_t bytes;
    struct chunk *k[WRITE_BATCH];
    uv_buf_t bufs[WRITE_BATCH];
};

struct ctl {
    struct proxy *px;
    struct ctl *prev, *next;
    uv_tcp_t h;
    uv_shutdown_t shut_req;
    bool closing;
    size_t len;
    char line[CTL_LINE_MAX];
};

struct ctl_reply {
    uv_write_t req;
    char text[160];
};

struct proxy {
    uv_loop_t loop;
    uv_tcp_t listener, control;
    uv_signal_t sigterm, sigint;
    struct sockaddr_storage target;
    struct conn *conns;
    unsigned nconns, max_conns;
    struct ctl *ctls;
    unsigned nctls;
    struct chunk *pool; /* idle READ_SIZE chunks, linked by next */
    unsigned npool;
    uint64_t latency_ms, rate, buffer_cap;
    bool cut, blackhole, stopping;
    uint64_t bytes_up, bytes_down, accepted, refused;
    uint64_t last_warn_ns, warns_suppressed;
};

static void dir_pump(struct dir *d);
static void conn_close(struct conn *c, bool reset);
static void on_dir_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_dir_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void *
xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "faultproxy level=fatal event=FP-OOM bytes=%zu\n", n);
        abort();
    }
    return p;
}

static void *
xcalloc(size_t n)
{
    void *p = xmalloc(n);
    memset(p, 0, n);
    return p;
}

__attribute__((format(printf, 1, 2))) static void
log_line(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "faultproxy %s\n", line);
}

/* Connection failures can repeat thousands of times a second while a target
 * is down; log at most one a second and count the rest. */
__attribute__((format(printf, 2, 3))) static void
warn_limited(struct proxy *px, const char *fmt, ...)
{
    uint64_t now = uv_hrtime();
    if (px->last_warn_ns && now - px->last_warn_ns < NS_PER_S) {
        px->warns_suppressed++;
        return;
    }
    char line[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    log_line("level=warn %s suppressed=%" PRIu64, line, px->warns_suppressed);
    px->last_warn_ns = now;
    px->warns_suppressed = 0;
}

/* ---- addresses ---- */

static int
parse_addr(const char *s, struct sockaddr_storage *out)
{
    char host[64];
    const char *port_s;
    size_t hlen;
    bool v6 = false;

    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':')
            return -1;
        hlen = (size_t)(rb - s - 1);
        s++;
        port_s = rb + 2;
        v6 = true;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon)
            return -1;
        hlen = (size_t)(colon - s);
        port_s = colon + 1;
    }
    if (hlen == 0 || hlen >= sizeof host || *port_s == '\0')
        return -1;
    memcpy(host, s, hlen);
    host[hlen] = '\0';

    char *end;
    errno = 0;
    unsigned long port = strtoul(port_s, &end, 10);
    if (errno || *end != '\0' || port > 65535 || port_s[0] == '-' || port_s[0] == '+')
        return -1;

    memset(out, 0, sizeof *out);
    if (v6)
        return uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)out) ? -1 : 0;
    return uv_ip4_addr(host, (int)port, (struct sockaddr_in *)out) ? -1 : 0;
}

static void
format_addr(const struct sockaddr_storage *ss, char *out, size_t n)
{
    char host[64] = "?";
    int port = 0;
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        uv_ip6_name(a, host, sizeof host);
        port = ntohs(a->sin6_port);
        snprintf(out, n, "[%s]:%d", host, port);
        return;
    }
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    uv_ip4_name(a, host, sizeof host);
    port = ntohs(a->sin_port);
    snprintf(out, n, "%s:%d", host, port);
}

static int
bound_addr(uv_tcp_t *t, char *out, size_t n)
{
    struct sockaddr_storage ss;
    int len = (int)sizeof ss;
    int r = uv_tcp_getsockname(t, (struct sockaddr *)&ss, &len);
    if (r == 0)
        format_addr(&ss, out, n);
    return r;
}

/* ---- one direction of a connection ---- */

static struct dir *
dir_of(uv_stream_t *s)
{
    struct conn *c = s->data;
    return s == (uv_stream_t *)&c->cli ? &c->d[DIR_UP] : &c->d[DIR_DOWN];
}

static bool
dir_wants_read(const struct dir *d)
{
    return d->c->state == CONN_OPEN && !d->c->px->blackhole && !d->eof_read && !d->full &&
           !d->stalled;
}

static void
dir_update_reading(struct dir *d)
{
    bool want = dir_wants_read(d);
    if (want && !d->reading) {
        int r = uv_read_start(d->src, on_dir_alloc, on_dir_read);
        if (r) {
            warn_limited(d->c->px, "event=FP-READ-START-FAILED err=%s", uv_strerror(r));
            conn_close(d->c, true);
            return;
        }
        d->reading = true;
    } else if (!want && d->reading) {
        uv_read_stop(d->src);
        d->reading = false;
    }
}

/* Release times are monotonic so a latency decrease never reorders bytes. */
static uint64_t
dir_release_time(struct dir *d)
{
    uint64_t t = uv_hrtime() + d->c->px->latency_ms * NS_PER_MS;
    if (t < d->last_release_ns)
        t = d->last_release_ns;
    d->last_release_ns = t;
    return t;
}

#define CHUNK_FULL (sizeof(struct chunk) + READ_SIZE)

/* A freshly allocated 256 KiB buffer comes from mmap and faults on every
 * page; reusing idle ones keeps an unthrottled link at memcpy speed. */
static struct chunk *
pool_get(struct proxy *px)
{
    struct chunk *k = px->pool;
    if (!k)
        return xmalloc(CHUNK_FULL);
    px->pool = k->next;
    px->npool--;
    return k;
}

static void
pool_put(struct proxy *px, struct chunk *k)
{
    if (!k)
        return;
    if (px->npool >= POOL_MAX) {
        free(k);
        return;
    }
    k->next = px->pool;
    px->pool = k;
    px->npool++;
}

static void
chunk_free(struct dir *d, struct chunk *k)
{
    d->buffered -= k->alloc;
    if (k->alloc == CHUNK_FULL)
        pool_put(d->c->px, k);
    else
        free(k);
}

static void
on_dir_timer(uv_timer_t *t)
{
    dir_pump(t->data);
}

static void
dir_arm(struct dir *d, uint64_t due_ns)
{
    if (uv_is_active((uv_handle_t *)&d->timer) && d->timer_due_ns <= due_ns)
        return; /* an earlier wake-up re-arms if it is still too soon */
    uint64_t now = uv_hrtime();
    uint64_t ms = due_ns > now ? (due_ns - now + NS_PER_MS - 1) / NS_PER_MS : 0;
    uv_update_time(d->timer.loop);
    uv_timer_start(&d->timer, on_dir_timer, ms, 0);
    d->timer_due_ns = due_ns;
}

static size_t
rate_min_piece(uint64_t rate)
{
    uint64_t p = rate / 50;
    if (p < 1)
        p = 1;
    return p > 16384 ? 16384 : (size_t)p;
}

static void
dir_refill(struct dir *d, uint64_t now)
{
    uint64_t rate = d->c->px->rate;
    double burst = (double)(rate / 20);
    double min_piece = (double)rate_min_piece(rate);
    if (burst < min_piece)
        burst = min_piece;
    if (now > d->tokens_ns)
        d->tokens += (double)(now - d->tokens_ns) * (double)rate / (double)NS_PER_S;
    if (d->tokens > burst)
        d->tokens = burst;
    d->tokens_ns = now;
}

static void
wreq_done(struct wreq *w, int status)
{
    struct dir *d = w->d;
    struct conn *c = d->c;
    for (unsigned i = 0; i < w->n; i++) {
        struct chunk *k = w->k[i];
        if (--k->pending == 0 && k->detached)
            chunk_free(d, k);
    }
    size_t bytes = w->bytes;
    free(w);
    if (c->state == CONN_CLOSING)
        return;
    if (status < 0) {
        conn_close(c, true);
        return;
    }
    if (d == &c->d[DIR_UP])
        c->px->bytes_up += bytes;
    else
        c->px->bytes_down += bytes;
    bool resume = false;
    if (d->full && d->buffered <= c->px->buffer_cap / 2) {
        d->full = false;
        resume = true;
    }
    if (d->stalled && uv_stream_get_write_queue_size(d->dst) <= WQ_MAX / 2) {
        d->stalled = false;
        resume = true;
    }
    if (resume)
        dir_update_reading(d);
}

static void
on_dir_write(uv_write_t *req, int status)
{
    wreq_done(CONTAINER_OF(req, struct wreq, req), status);
}

static bool
dir_submit(struct dir *d, struct wreq *w)
{
    int r = uv_write(&w->req, d->dst, w->bufs, w->n, on_dir_write);
    if (r < 0) {
        wreq_done(w, r);
        conn_close(d->c, true);
        return false;
    }
    return true;
}

static void
on_dir_shutdown(uv_shutdown_t *req, int status)
{
    struct dir *d = req->data;
    struct conn *c = d->c;
    if (c->state == CONN_CLOSING)
        return;
    if (status < 0) {
        conn_close(c, true);
        return;
    }
    d->shut_done = true;
    if (c->d[DIR_UP].shut_done && c->d[DIR_DOWN].shut_done)
        conn_close(c, false);
}

/* dir_pump hands every released chunk the rate cap allows to uv_write and,
 * once the queue is empty after EOF, forwards the half-close. */
static void
dir_pump(struct dir *d)
{
    struct conn *c = d->c;
    struct proxy *px = c->px;
    if (c->state != CONN_OPEN || px->blackhole)
        return;

    uint64_t now = uv_hrtime();
    struct wreq *w = NULL;
    while (d->head) {
        struct chunk *k = d->head;
        if (k->release_ns > now) {
            dir_arm(d, k->release_ns);
            break;
        }
        size_t want = k->len - k->off;
        if (px->rate) {
            dir_refill(d, now);
            size_t min = rate_min_piece(px->rate);
            if (min > want)
                min = want;
            if (d->tokens < (double)min) {
                double wait = ((double)min - d->tokens) * (double)NS_PER_S / (double)px->rate;
                dir_arm(d, now + (uint64_t)wait + 1);
                break;
            }
            if ((double)want > d->tokens)
                want = (size_t)d->tokens;
            d->tokens -= (double)want;
        }
        if (!w) {
            w = xmalloc(sizeof *w);
            w->d = d;
            w->n = 0;
            w->bytes = 0;
        }
        w->k[w->n] = k;
        w->bufs[w->n] = uv_buf_init(k->data + k->off, (unsigned)want);
        w->n++;
        w->bytes += want;
        k->off += want;
        k->pending++;
        if (k->off == k->len) {
            d->head = k->next;
            if (!d->head)
                d->tail = NULL;
            k->detached = true;
        }
        if (w->n == WRITE_BATCH) {
            struct wreq *full = w;
            w = NULL;
            if (!dir_submit(d, full))
                return;
        }
    }
    if (w && !dir_submit(d, w))
        return;
    /* A slow destination back-pressures the source like a real link would,
     * instead of the proxy soaking up buffer_cap bytes first. */
    if (!d->stalled && uv_stream_get_write_queue_size(d->dst) >= WQ_MAX) {
        d->stalled = true;
        dir_update_reading(d);
        if (c->state != CONN_OPEN)
            return;
    }

    if (!d->head && d->eof_read && !d->shut_sent) {
        if (d->eof_release_ns > now) {
            dir_arm(d, d->eof_release_ns);
            return;
        }
        d->shut_sent = true;
        d->shut_req.data = d;
        int r = uv_shutdown(&d->shut_req, d->dst, on_dir_shutdown);
        if (r)
            conn_close(c, true);
    }
}

static void
on_dir_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct dir *d = dir_of((uv_stream_t *)h);
    if (!d->spare)
        d->spare = pool_get(d->c->px);
    *buf = uv_buf_init(d->spare->data, (unsigned)READ_SIZE);
}

static void
on_dir_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct dir *d = dir_of(s);
    struct conn *c = d->c;
    if (c->state != CONN_OPEN)
        return;
    if (nread > 0) {
        struct chunk *k;
        size_t n = (size_t)nread;
        if (n >= READ_SIZE / 2) {
            k = d->spare; /* keep the read buffer: no copy */
            d->spare = NULL;
            k->alloc = CHUNK_FULL;
        } else {
            /* a small read must not pin a whole read buffer */
            k = xmalloc(sizeof *k + n);
            memcpy(k->data, buf->base, n);
            k->alloc = sizeof *k + n;
        }
        k->next = NULL;
        k->len = n;
        k->off = 0;
        k->pending = 0;
        k->detached = false;
        k->release_ns = dir_release_time(d);
        if (d->tail)
            d->tail->next = k;
        else
            d->head = k;
        d->tail = k;
        d->buffered += k->alloc;
        if (d->buffered >= c->px->buffer_cap) {
            d->full = true; /* back-pressure: the sender's socket fills up */
            dir_update_reading(d);
        }
        dir_pump(d);
        return;
    }
    if (nread == 0)
        return;
    if (nread == UV_EOF) {
        d->eof_read = true;
        d->eof_release_ns = dir_release_time(d);
        dir_update_reading(d);
        dir_pump(d);
        return;
    }
    conn_close(c, true);
}

/* ---- connections ---- */

static void
conn_free(struct conn *c)
{
    for (int i = 0; i < 2; i++) {
        struct dir *d = &c->d[i];
        struct chunk *k = d->head;
        while (k) {
            struct chunk *next = k->next;
            if (k->pending != 0)
                abort(); /* every write callback runs before the close callbacks */
            chunk_free(d, k);
            k = next;
        }
        pool_put(c->px, d->spare);
    }
    free(c);
}

static void
conn_handle_closed(struct conn *c)
{
    if (--c->open_handles == 0)
        conn_free(c);
}

static void
on_conn_tcp_close(uv_handle_t *h)
{
    conn_handle_closed(h->data);
}

static void
on_conn_timer_close(uv_handle_t *h)
{
    conn_handle_closed(((struct dir *)h->data)->c);
}

static void
tcp_close(uv_tcp_t *t, bool reset, uv_close_cb cb)
{
    /* close_reset refuses handles that are shutting down or have no socket */
    if (!reset || uv_tcp_close_reset(t, cb) != 0)
        uv_close((uv_handle_t *)t, cb);
}

static void
conn_close(struct conn *c, bool reset)
{
    struct proxy *px = c->px;
    if (c->state == CONN_CLOSING)
        return;
    c->state = CONN_CLOSING;
    if (c->prev)
        c->prev->next = c->next;
    else
        px->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    px->nconns--;
    for (int i = 0; i < 2; i++)
        uv_close((uv_handle_t *)&c->d[i].timer, on_conn_timer_close);
    tcp_close(&c->cli, reset, on_conn_tcp_close);
    tcp_close(&c->up, reset, on_conn_tcp_close);
}

static void
on_conn_connect(uv_connect_t *req, int status)
{
    struct conn *c = req->data;
    if (c->state == CONN_CLOSING)
        return;
    if (status < 0) {
        char target[80];
        format_addr(&c->px->target, target, sizeof target);
        warn_limited(c->px, "event=FP-CONNECT-FAILED target=%s err=%s", target,
                     uv_strerror(status));
        conn_close(c, true);
        return;
    }
    uv_tcp_nodelay(&c->up, 1);
    c->state = CONN_OPEN;
    dir_update_reading(&c->d[DIR_UP]);
    if (c->state == CONN_OPEN)
        dir_update_reading(&c->d[DIR_DOWN]);
}

static void
conn_connect(struct conn *c)
{
    c->state = CONN_CONNECTING;
    c->connect_req.data = c;
    int r = uv_tcp_connect(&c->connect_req, &c->up, (const struct sockaddr *)&c->px->target,
                           on_conn_connect);
    if (r) {
        warn_limited(c->px, "event=FP-CONNECT-FAILED err=%s", uv_strerror(r));
        conn_close(c, true);
    }
}

static void
on_refused_close(uv_handle_t *h)
{
    free(h);
}

/* Accepts and resets at once, so a client sees its connection refused. */
static void
refuse(struct proxy *px, uv_stream_t *server)
{
    uv_tcp_t *t = xmalloc(sizeof *t);
    uv_tcp_init(&px->loop, t);
    px->refused++;
    if (uv_accept(server, (uv_stream_t *)t) == 0)
        tcp_close(t, true, on_refused_close);
    else
        uv_close((uv_handle_t *)t, on_refused_close);
}

static void
on_accept(uv_stream_t *server, int status)
{
    struct proxy *px = server->data;
    if (status < 0) {
        warn_limited(px, "event=FP-ACCEPT-FAILED err=%s", uv_strerror(status));
        return;
    }
    if (px->cut || px->nconns >= px->max_conns) {
        if (!px->cut)
            warn_limited(px, "event=FP-TOO-MANY-CONNS max=%u", px->max_conns);
        refuse(px, server);
        return;
    }

    struct conn *c = xcalloc(sizeof *c);
    c->px = px;
    uv_tcp_init(&px->loop, &c->cli);
    uv_tcp_init(&px->loop, &c->up);
    c->cli.data = c;
    c->up.data = c;
    for (int i = 0; i < 2; i++) {
        struct dir *d = &c->d[i];
        d->c = c;
        uv_timer_init(&px->loop, &d->timer);
        d->timer.data = d;
    }
    c->d[DIR_UP].src = (uv_stream_t *)&c->cli;
    c->d[DIR_UP].dst = (uv_stream_t *)&c->up;
    c->d[DIR_DOWN].src = (uv_stream_t *)&c->up;
    c->d[DIR_DOWN].dst = (uv_stream_t *)&c->cli;
    c->open_handles = 4;
    c->state = CONN_HELD;

    c->next = px->conns;
    if (px->conns)
        px->conns->prev = c;
    px->conns = c;
    px->nconns++;
    px->accepted++;

    int r = uv_accept(server, (uv_stream_t *)&c->cli);
    if (r) {
        warn_limited(px, "event=FP-ACCEPT-FAILED err=%s", uv_strerror(r));
        conn_close(c, true);
        return;
    }
    uv_tcp_nodelay(&c->cli, 1);
    if (!px->blackhole)
        conn_connect(c);
}

/* ---- fault commands ---- */

static unsigned
proxy_cut(struct proxy *px)
{
    unsigned n = 0;
    px->cut = true;
    while (px->conns) {
        conn_close(px->conns, true);
        n++;
    }
    return n;
}

static void
proxy_blackhole(struct proxy *px)
{
    px->blackhole = true;
    for (struct conn *c = px->conns; c; c = c->next)
        for (int i = 0; i < 2; i++)
            dir_update_reading(&c->d[i]);
}

static void
proxy_restore(struct proxy *px)
{
    px->cut = false;
    px->blackhole = false;
    struct conn *next;
    for (struct conn *c = px->conns; c; c = next) {
        next = c->next; /* closing c unlinks only c */
        if (c->state == CONN_HELD) {
            conn_connect(c);
            continue;
        }
        for (int i = 0; i < 2; i++) {
            dir_update_reading(&c->d[i]);
            dir_pump(&c->d[i]);
        }
    }
}

static void
proxy_set_rate(struct proxy *px, uint64_t rate)
{
    px->rate = rate;
    uint64_t now = uv_hrtime();
    struct conn *next;
    for (struct conn *c = px->conns; c; c = next) {
        next = c->next;
        for (int i = 0; i < 2; i++) {
            c->d[i].tokens = 0;
            c->d[i].tokens_ns = now;
            dir_pump(&c->d[i]);
        }
    }
}

/* ---- control port ---- */

static void
on_ctl_close(uv_handle_t *h)
{
    free(h->data);
}

static void
ctl_close(struct ctl *ctl)
{
    struct proxy *px = ctl->px;
    if (ctl->closing)
        return;
    ctl->closing = true;
    if (ctl->prev)
        ctl->prev->next = ctl->next;
    else
        px->ctls = ctl->next;
    if (ctl->next)
        ctl->next->prev = ctl->prev;
    px->nctls--;
    uv_close((uv_handle_t *)&ctl->h, on_ctl_close);
}

static void
on_ctl_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    ctl_close(req->data);
}

/* Sends what is queued, then closes. */
static void
ctl_finish(struct ctl *ctl)
{
    if (ctl->closing)
        return;
    uv_read_stop((uv_stream_t *)&ctl->h);
    ctl->shut_req.data = ctl;
    if (uv_shutdown(&ctl->shut_req, (uv_stream_t *)&ctl->h, on_ctl_shutdown))
        ctl_close(ctl);
}

static void
on_ctl_written(uv_write_t *req, int status)
{
    (void)status;
    free(CONTAINER_OF(req, struct ctl_reply, req));
}

__attribute__((format(printf, 2, 3))) static void
ctl_reply(struct ctl *ctl, const char *fmt, ...)
{
    if (ctl->closing)
        return;
    struct ctl_reply *r = xmalloc(sizeof *r);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->text, sizeof r->text - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n > sizeof r->text - 2)
        n = (int)(sizeof r->text - 2);
    r->text[n++] = '\n';
    uv_buf_t b = uv_buf_init(r->text, (unsigned)n);
    if (uv_write(&r->req, (uv_stream_t *)&ctl->h, &b, 1, on_ctl_written)) {
        free(r);
        ctl_close(ctl);
    }
}

static bool
parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end != '\0' || v > max)
        return false;
    *out = v;
    return true;
}

static void
ctl_command(struct ctl *ctl, char *line)
{
    struct proxy *px = ctl->px;
    char *arg = strchr(line, ' ');
    if (arg) {
        *arg++ = '\0';
        while (*arg == ' ')
            arg++;
    }
    uint64_t v;

    if (strcmp(line, "latency") == 0) {
        if (!parse_u64(arg, MAX_LATENCY_MS, &v)) {
            ctl_reply(ctl, "err usage: latency MS (0..%llu)", MAX_LATENCY_MS);
            return;
        }
        px->latency_ms = v;
        ctl_reply(ctl, "ok latency=%" PRIu64, v);
    } else if (strcmp(line, "rate") == 0) {
        if (!parse_u64(arg, MAX_RATE, &v)) {
            ctl_reply(ctl, "err usage: rate BYTES_PER_S (0 = unlimited)");
            return;
        }
        proxy_set_rate(px, v);
        ctl_reply(ctl, "ok rate=%" PRIu64, v);
    } else if (arg && *arg) {
        ctl_reply(ctl, "err %s takes no argument", line);
    } else if (strcmp(line, "cut") == 0) {
        unsigned n = proxy_cut(px);
        ctl_reply(ctl, "ok cut closed=%u", n);
    } else if (strcmp(line, "restore") == 0) {
        proxy_restore(px);
        ctl_reply(ctl, "ok restored");
    } else if (strcmp(line, "blackhole") == 0) {
        proxy_blackhole(px);
        ctl_reply(ctl, "ok blackhole");
    } else if (strcmp(line, "stats") == 0) {
        ctl_reply(ctl, "ok conns=%u bytes_up=%" PRIu64 " bytes_down=%" PRIu64, px->nconns,
                  px->bytes_up, px->bytes_down);
    } else if (strcmp(line, "reset") == 0) {
        px->latency_ms = 0;
        proxy_set_rate(px, 0);
        proxy_restore(px);
        ctl_reply(ctl, "ok reset");
    } else if (line[0] == '\0') {
        ctl_reply(ctl, "err empty command");
    } else {
        ctl_reply(ctl, "err unknown command (latency rate cut restore blackhole stats reset)");
    }
}

static void
on_ctl_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct ctl *ctl = h->data;
    *buf = uv_buf_init(ctl->line + ctl->len, (unsigned)(sizeof ctl->line - ctl->len));
}

static void
on_ctl_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    struct ctl *ctl = s->data;
    if (nread < 0) {
        ctl_close(ctl);
        return;
    }
    ctl->len += (size_t)nread;
    for (;;) {
        char *nl = memchr(ctl->line, '\n', ctl->len);
        if (!nl)
            break;
        *nl = '\0';
        if (nl > ctl->line && nl[-1] == '\r')
            nl[-1] = '\0';
        ctl_command(ctl, ctl->line);
        size_t used = (size_t)(nl - ctl->line) + 1;
        memmove(ctl->line, ctl->line + used, ctl->len - used);
        ctl->len -= used;
        if (ctl->closing)
            return;
    }
    if (ctl->len == sizeof ctl->line) {
        ctl_reply(ctl, "err line too long");
        ctl_finish(ctl);
    }
}

static void
on_ctl_accept(uv_stream_t *server, int status)
{
    struct proxy *px = server->data;
    if (status < 0)
        return;
    if (px->nctls >= CTL_MAX) {
        refuse(px, server);
        return;
    }
    struct ctl *ctl = xcalloc(sizeof *ctl);
    ctl->px = px;
    ctl->h.data = ctl;
    uv_tcp_init(&px->loop, &ctl->h);
    ctl->next = px->ctls;
    if (px->ctls)
        px->ctls->prev = ctl;
    px->ctls = ctl;
    px->nctls++;
    if (uv_accept(server, (uv_stream_t *)&ctl->h) ||
        uv_read_start((uv_stream_t *)&ctl->h, on_ctl_alloc, on_ctl_read)) {
        ctl_close(ctl);
        return;
    }
    uv_tcp_nodelay(&ctl->h, 1);
}

/* ---- process ---- */

static void
proxy_stop(struct proxy *px)
{
    if (px->stopping)
        return;
    px->stopping = true;
    log_line("level=info event=FP-STOP conns=%u bytes_up=%" PRIu64 " bytes_down=%" PRIu64,
             px->nconns, px->bytes_up, px->bytes_down);
    uv_close((uv_handle_t *)&px->listener, NULL);
    uv_close((uv_handle_t *)&px->control, NULL);
    uv_close((uv_handle_t *)&px->sigterm, NULL);
    uv_close((uv_handle_t *)&px->sigint, NULL);
    while (px->ctls)
        ctl_close(px->ctls);
    while (px->conns)
        conn_close(px->conns, false);
}

static void
on_signal(uv_signal_t *s, int signum)
{
    (void)signum;
    proxy_stop(s->data);
}

static void
on_walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void
usage(FILE *f)
{
    fprintf(f,
            "usage: faultproxy --listen HOST:PORT --target HOST:PORT --control HOST:PORT\n"
            "                  [--buffer-cap BYTES] [--max-conns N]\n"
            "Forwards TCP connections from --listen to --target. Port 0 binds a free port;\n"
            "the ready line on stderr names the bound ports.\n"
            "Control protocol (one command per line, one reply line \"ok ...\" or \"err ...\"):\n"
            "  latency MS        one-way delay in both directions (0 = none)\n"
            "  rate BYTES_PER_S  bandwidth cap per direction per connection (0 = unlimited)\n"
            "  cut               reset all connections and refuse new ones until restore\n"
            "  restore           end cut and blackhole\n"
            "  blackhole         keep connections open but forward nothing until restore\n"
            "  stats             ok conns=N bytes_up=N bytes_down=N\n"
            "  reset             latency 0, rate 0, restore\n");
}

static int
listen_on(struct proxy *px, uv_tcp_t *t, const struct sockaddr_storage *addr, uv_connection_cb cb,
          const char *what)
{
    char a[80];
    format_addr(addr, a, sizeof a);
    uv_tcp_init(&px->loop, t);
    t->data = px;
    int r = uv_tcp_bind(t, (const struct sockaddr *)addr, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)t, 511, cb);
    if (r)
        log_line("level=error event=FP-LISTEN-FAILED what=%s addr=%s err=%s", what, a,
                 uv_strerror(r));
    return r;
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"target", required_argument, NULL, 't'},
        {"control", required_argument, NULL, 'c'},
        {"buffer-cap", required_argument, NULL, 'b'},
        {"max-conns", required_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    static struct proxy px; /* static only to keep 1 KiB of state off the stack */
    struct sockaddr_storage listen_addr, control_addr;
    bool have_listen = false, have_target = false, have_control = false;
    uint64_t v;
    int opt;

    px.buffer_cap = DEFAULT_BUFFER_CAP;
    px.max_conns = DEFAULT_MAX_CONNS;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'l':
            have_listen = parse_addr(optarg, &listen_addr) == 0;
            break;
        case 't':
            have_target = parse_addr(optarg, &px.target) == 0;
            break;
        case 'c':
            have_control = parse_addr(optarg, &control_addr) == 0;
            break;
        case 'b':
            if (!parse_u64(optarg, UINT64_MAX, &v) || v < READ_SIZE) {
                fprintf(stderr, "faultproxy: --buffer-cap must be >= %zu\n", READ_SIZE);
                return 2;
            }
            px.buffer_cap = v;
            break;
        case 'm':
            if (!parse_u64(optarg, 1000000, &v) || v == 0) {
                fprintf(stderr, "faultproxy: --max-conns must be 1..1000000\n");
                return 2;
            }
            px.max_conns = (unsigned)v;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!have_listen || !have_target || !have_control || optind != argc) {
        fprintf(stderr, "faultproxy: --listen, --target and --control need HOST:PORT\n");
        usage(stderr);
        return 2;
    }

    signal(SIGPIPE, SIG_IGN);
    if (uv_loop_init(&px.loop))
        return 1;
    uv_signal_init(&px.loop, &px.sigterm);
    uv_signal_init(&px.loop, &px.sigint);
    px.sigterm.data = &px;
    px.sigint.data = &px;
    uv_signal_start(&px.sigterm, on_signal, SIGTERM);
    uv_signal_start(&px.sigint, on_signal, SIGINT);

    int rc = 0;
    if (listen_on(&px, &px.listener, &listen_addr, on_accept, "listen") ||
        listen_on(&px, &px.control, &control_addr, on_ctl_accept, "control")) {
        rc = 1;
        uv_walk(&px.loop, on_walk_close, NULL);
        uv_run(&px.loop, UV_RUN_DEFAULT);
        uv_loop_close(&px.loop);
        return rc;
    }

    char la[80], ca[80], ta[80];
    bound_addr(&px.listener, la, sizeof la);
    bound_addr(&px.control, ca, sizeof ca);
    format_addr(&px.target, ta, sizeof ta);
    log_line("listening listen=%s target=%s control=%s", la, ta, ca);
    fflush(stderr);

    uv_run(&px.loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&px.loop) == UV_EBUSY) {
        uv_walk(&px.loop, on_walk_close, NULL);
        uv_run(&px.loop, UV_RUN_DEFAULT);
        uv_loop_close(&px.loop);
    }
    while (px.pool) {
        struct chunk *k = px.pool;
        px.pool = k->next;
        free(k);
    }
    return rc;
}
