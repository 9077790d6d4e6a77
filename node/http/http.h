/* The HTTP/1.1 server: one libuv event loop per worker thread, all polling one
 * listening socket per address (no SO_REUSEPORT: a second node on a busy port
 * fails to start); llhttp parses; bodies stream to a sink on the thread
 * pool with back-pressure; responses come from memory or from a file with
 * sendfile. Request handlers are pure functions of the request that fill a
 * response: they run on the loop when everything they read is in memory
 * (nowait), otherwise on the libuv thread pool, so no disk wait ever happens on
 * a loop thread. */
#ifndef GEOREG_HTTP_H
#define GEOREG_HTTP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "../../common/buf.h"
#include "../../common/err.h"

typedef struct http_server http_server;
struct http_req;

enum http_method { M_GET, M_HEAD, M_PUT, M_POST, M_PATCH, M_DELETE, M_OTHER };

/* A step runs with the request: nowait steps run on the loop and may return
 * ERR_WOULDBLOCK to be re-run on the thread pool. A step answers by filling
 * r->resp (any status); its return value only says whether it must be retried. */
typedef err (*http_step_fn)(struct http_req *r, bool nowait);
/* A body sink receives body bytes on the thread pool, in order. */
typedef err (*http_sink_fn)(void *ctx, const void *ptr, size_t len);

enum http_body_mode {
    BODY_DISCARD = 0, /* read and drop (bounded); the default */
    BODY_BUFFER,      /* keep in r->body up to body_limit, else 413 */
    BODY_SINK,        /* stream to sink on the pool */
};

struct http_resp {
    int status;      /* 0: not answered yet */
    buf headers;     /* extra header lines, each "Name: value\r\n" */
    buf body;        /* a body in memory */
    int fd;          /* or a body from a file (owned, closed after sending); -1 if none */
    uint64_t file_off, file_len;
    uint64_t head_len; /* HEAD: the Content-Length to advertise */
    bool no_body;    /* HEAD, 204, 304: no body bytes */
    bool close;      /* close the connection after this response */
};

#define HTTP_MAX_HEADERS 64

struct http_header {
    slice name; /* lowercased */
    slice value;
};

struct http_req {
    /* set by the server before on_headers */
    http_server *server;
    void *app;          /* the application context given to http_server_new */
    enum http_method method;
    slice path, query;  /* borrowed from url */
    struct http_header headers[HTTP_MAX_HEADERS];
    size_t nheaders;
    uint64_t content_length; /* valid when has_length */
    bool has_length, chunked, expect_continue;
    char peer[64];      /* client address "ip" (IPv4-mapped IPv6 shown as IPv4) */
    char request_id[65]; /* the client's sane X-Request-Id, else generated; echoed */
    const char *listener; /* name of the listener it came in on */
    bool tls;

    /* set by the application in on_headers */
    enum http_body_mode body_mode;
    uint64_t body_limit;
    http_step_fn pre_body; /* run on the pool before the body is read (may answer) */
    http_step_fn handler;  /* run once the whole body is in */
    bool handler_on_pool;  /* skip the nowait attempt on the loop */
    /* A handler that leaves resp.status 0 and sets park_ms is run again after that
     * many ms, or sooner when http_req_wake is called; meanwhile the connection waits
     * on the loop (no pool thread), and a client that goes away drops the request
     * (app_free runs). A handler may switch r->handler and handler_on_pool before it
     * parks: the re-run uses them (a loop step that only looks at memory). */
    uint64_t park_ms;
    http_sink_fn sink;
    void *sink_ctx;

    /* filled while the body streams */
    buf body;
    uint64_t body_received;
    err sink_err;   /* first error of the sink; the handler must answer it */
    bool body_too_large;

    struct http_resp resp;

    /* application scratch space, zeroed per request */
    char scratch[2048];
    void *access;                       /* app: who the client is (freed with free()) */
    http_step_fn pre_body_next;         /* app: a pre_body step chained after another */
    void *app_state;                    /* owned by the app; freed by app_free */
    void (*app_free)(struct http_req *r);

    /* private to the server */
    buf raw; /* url + header bytes */
    size_t url_len;
    void *conn;          /* the connection (struct conn) that owns the request */
    _Atomic bool woken;  /* http_req_wake was called: re-run a parked handler now */
};

struct http_stats {
    _Atomic uint64_t requests, responses_2xx, responses_3xx, responses_4xx, responses_5xx;
    _Atomic uint64_t bytes_in, bytes_out, conns_open, conns_total, conns_refused, timeouts;
    _Atomic uint64_t pool_jobs, loop_handled;
};

#define HTTP_MAX_LISTENERS 4
#define HTTP_MAX_CIDRS 32

/* One listening address: plain or TLS, open to all or to a CIDR allow list. */
struct http_listener_config {
    const char *name;               /* "public", "private" (logs, audit) */
    const char *listen;             /* "host:port" */
    const char *tls_cert, *tls_key; /* both set: TLS (PEM files, re-read on reload) */
    const char *const *allow;       /* CIDRs ("10.0.0.0/8", "127.0.0.2/32"); none: any */
    size_t nallow;
};

struct http_config {
    const char *listen; /* "host:port" of a single plain listener when nlisteners is 0 */
    struct http_listener_config listeners[HTTP_MAX_LISTENERS];
    size_t nlisteners;
    /* called on the loop when a listener's allow list refuses a client */
    void (*on_refused)(void *app, const char *listener, const char *peer);
    unsigned workers;   /* 0: one per core */
    unsigned max_connections;
    unsigned max_connections_per_address; /* 0: no per-address cap */
    bool access_log;                      /* one REQ line per request at info (else debug) */
    /* names the authenticated client for the request log ("-": anonymous) */
    const char *(*actor_of)(struct http_req *r);
    uint64_t header_timeout_ms, idle_timeout_ms, body_timeout_ms;
    uint64_t max_header_bytes;
};

/* http_server_new binds the listeners (so the port is known and errors are
 * reported now) but serves nothing until http_server_start. on_headers routes a
 * request: it must set handler (and may set body mode, pre_body, sink) or answer
 * through r->resp. app is passed in every request. *out is new; free with
 * http_server_free after http_server_stop. */
err http_server_new(const struct http_config *cfg, void (*on_headers)(struct http_req *r),
                    void *app, http_server **out);
/* http_server_port: the bound port of the first listener (useful with port 0). */
int http_server_port(const http_server *s);
/* http_server_reload_tls re-reads every TLS listener's certificate and key; new
 * connections use them, connections already open keep theirs. A listener whose
 * files do not load keeps its old ones (logged). Thread-safe. */
err http_server_reload_tls(http_server *s);
/* http_server_start starts the worker threads. */
err http_server_start(http_server *s);
/* http_server_stop stops accepting, lets in-flight requests finish for up to
 * drain_ms, then closes every connection; returns when every worker has exited. */
void http_server_stop(http_server *s, uint64_t drain_ms);
void http_server_free(http_server *s);
/* http_server_stats: live counters (borrowed). */
struct http_stats *http_server_stats(http_server *s);

/* ---- helpers for handlers ---- */

/* http_req_header returns the value of a header (name lowercase) or an empty slice
 * with ptr NULL when absent. */
slice http_req_header(const struct http_req *r, const char *name);
/* http_req_query copies the percent-decoded value of query parameter name into out
 * (at most n bytes with NUL). false when absent or too long. */
bool http_req_query(const struct http_req *r, const char *name, char *out, size_t n);

/* http_req_wake makes a parked request (park_ms) run its handler now instead of when
 * park_ms is over; called before the request parks, it is re-run right away. Safe
 * from any thread while the request is alive (until its app_free returned); it never
 * blocks for long and does not touch the request beyond one atomic flag. */
void http_req_wake(struct http_req *r);

/* http_resp_header appends a header line to the response. */
void http_resp_header(struct http_req *r, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* http_resp_error answers with the OCI error body for e (status from the error
 * table); detail (may be NULL) becomes the "detail" string; message overrides the
 * table's message when not NULL. */
void http_resp_error(struct http_req *r, err e, const char *message, const char *detail);
/* http_resp_json answers with status and a JSON body (copied). */
void http_resp_json(struct http_req *r, int status, const char *json, size_t len);

#endif
