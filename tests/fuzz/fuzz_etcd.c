/* libFuzzer driver for replication/etcd: how every call reads an answer. The file
 * #includes replication/etcd.c with curl_easy_perform and curl_easy_getinfo renamed,
 * so no socket is opened: the "transfer" hands the input's body to the client's own
 * write callback and reports the input's status and curl result.
 *
 * Input: byte 0 picks the call (get, grant, keepalive, time_to_live, revoke,
 * campaign, put_if, delete_if_value), byte 1 the HTTP status (200 most often, 404,
 * 400, 500, 503), byte 2 the curl result (mostly CURLE_OK; else a connect failure,
 * a timeout before or after sending, a protocol error, a broken connection), byte 3
 * the size of the pieces the body is delivered in; the rest is the body.
 *
 * Checked: the call returns one of the errors the header names; an error never
 * comes with a reported outcome (won, swapped, deleted) or a lease id; what a call
 * returns is bounded by the body it read; a keepalive that succeeds has a TTL. */
#include <curl/curl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

struct etcd_client;
static struct etcd_client *fz_client;
static const uint8_t *fz_body;
static size_t fz_len, fz_piece;
static long fz_status;
static CURLcode fz_result;
static long fz_request_size;

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *arg);

static CURLcode
fuzz_easy_perform(CURL *h)
{
    (void)h;
    if (fz_result != CURLE_OK && fz_request_size == 0)
        return fz_result; /* nothing sent, nothing read */
    for (size_t off = 0; off < fz_len; off += fz_piece) {
        size_t n = fz_len - off < fz_piece ? fz_len - off : fz_piece;
        if (on_body((char *)(uintptr_t)(fz_body + off), 1, n, fz_client) != n)
            return CURLE_WRITE_ERROR;
    }
    return fz_result;
}

static CURLcode
fuzz_easy_getinfo(CURL *h, CURLINFO info, ...)
{
    (void)h;
    va_list ap;
    va_start(ap, info);
    long *out = va_arg(ap, long *);
    va_end(ap);
    if (info == CURLINFO_RESPONSE_CODE)
        *out = fz_status;
    else if (info == CURLINFO_REQUEST_SIZE)
        *out = fz_request_size;
    else
        return CURLE_UNKNOWN_OPTION;
    return CURLE_OK;
}

/* curl.h may define these as type-checking macros; the included client gets ours */
#undef curl_easy_perform
#undef curl_easy_getinfo
#define curl_easy_perform fuzz_easy_perform
#define curl_easy_getinfo fuzz_easy_getinfo
#include "replication/etcd.c"
#undef curl_easy_perform
#undef curl_easy_getinfo

#define FUZZ_NAME "fuzz_etcd"
#include "fuzz.h"

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_ERROR);
    const char *eps[] = {"http://127.0.0.1:1", "http://127.0.0.1:2"};
    if (etcd_client_new(eps, 2, 5000, &fz_client) != ERR_OK)
        abort();
    return 0;
}

static bool
known_error(err r)
{
    return r == ERR_OK || r == ERR_NOT_FOUND || r == ERR_UNAVAILABLE || r == ERR_TIMEOUT ||
           r == ERR_PROTOCOL || r == ERR_INVALID || r == ERR_NOMEM;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const long statuses[] = {200, 200, 200, 200, 404, 400, 500, 503};
    static const CURLcode results[] = {
        CURLE_COULDNT_CONNECT, CURLE_OPERATION_TIMEDOUT, CURLE_OPERATION_TIMEDOUT,
        CURLE_WEIRD_SERVER_REPLY, CURLE_GOT_NOTHING, CURLE_PARTIAL_FILE, CURLE_RECV_ERROR};
    if (size < 4)
        return 0;
    int op = data[0] % 8;
    fz_status = statuses[data[1] % 8];
    if (data[2] < 224) {
        fz_result = CURLE_OK;
        fz_request_size = 100;
    } else {
        size_t i = (size_t)(data[2] - 224) % (sizeof results / sizeof results[0]);
        fz_result = results[i];
        /* a timeout comes both before (0) and after the request went out */
        fz_request_size = (i == 0 || i == 1) ? 0 : 100;
    }
    fz_piece = (size_t)data[3] + 1;
    fz_body = data + 4;
    fz_len = size - 4;

    buf v = BUF_INIT;
    int64_t id = -1, ttl = -1, rev = -1, lease = -1;
    uint64_t until = 1;
    bool flag = true;
    err r = ERR_INTERNAL;
    slice key = SLICE_LIT("georeg/primary"), value = SLICE_LIT("node-a epoch=3");
    switch (op) {
    case 0:
        r = etcd_get(fz_client, key, &v, &rev, &lease);
        FUZZ_CHECK(r == ERR_OK || (rev == 0 && lease == 0), "get %s rev %lld", err_name(r),
                   (long long)rev);
        FUZZ_CHECK(r != ERR_OK || rev > 0, "get ok without a revision");
        flag = false;
        break;
    case 1:
        r = etcd_lease_grant(fz_client, 5, &id, &ttl, &until);
        FUZZ_CHECK(r == ERR_OK ? id > 0 && ttl > 0 && until > 0 : id == 0 && until == 0,
                   "grant %s id %lld", err_name(r), (long long)id);
        flag = false;
        break;
    case 2:
        r = etcd_lease_keepalive(fz_client, 7, &ttl, &until);
        /* the deadline moves only with an answer: renewed, or gone (0) */
        FUZZ_CHECK(r == ERR_OK         ? ttl > 0 && until > 1
                   : r == ERR_NOT_FOUND ? ttl == 0 && until == 0
                                        : ttl == 0 && until == 1,
                   "keepalive %s ttl %lld until %llu", err_name(r), (long long)ttl,
                   (unsigned long long)until);
        flag = false;
        break;
    case 3:
        r = etcd_lease_time_to_live(fz_client, 7, &ttl);
        FUZZ_CHECK(r == ERR_OK ? ttl > 0 : ttl == 0, "ttl %s", err_name(r));
        flag = false;
        break;
    case 4:
        r = etcd_lease_revoke(fz_client, 7);
        flag = false;
        break;
    case 5:
        r = etcd_campaign(fz_client, key, value, 7, &flag, &v, &rev);
        break;
    case 6:
        r = etcd_put_if(fz_client, key, value, 7, 3, &flag, &rev);
        FUZZ_CHECK(!flag || rev > 0, "swapped without a revision");
        break;
    case 7:
        r = etcd_delete_if_value(fz_client, key, value, &flag);
        break;
    }
    if (getenv("FUZZ_ETCD_VERBOSE")) /* for looking at what the seeds reach */
        fprintf(stderr, "fuzz_etcd: op %d status %ld -> %s flag %d\n", op, fz_status,
                err_name(r), flag);
    FUZZ_CHECK(known_error(r), "op %d returned %s", op, err_name(r));
    FUZZ_CHECK(r == ERR_OK || !flag, "op %d: an outcome with %s", op, err_name(r));
    FUZZ_CHECK(v.len <= fz_len, "op %d: %zu value bytes from a %zu byte body", op, v.len, fz_len);
    buf_release(&v);
    return 0;
}
