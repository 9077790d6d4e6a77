/* Client commands that talk to a running node's HTTP API: status, lag, wait. The
 * node is chosen with --url (or GEOREG_URL; default http://127.0.0.1:5000). */
#include "cli.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/buf.h"
#include "../common/digest.h"
#include "../common/ref.h"
#include "config.h"
#include "../common/banned.h"

struct cli_opts {
    const char *url;
    bool json;
    const char *regions;
    uint64_t timeout_ms;
    const char *target; /* NAME:TAG or NAME@DIGEST */
};

static size_t
on_data(char *ptr, size_t size, size_t n, void *arg)
{
    buf *b = arg;
    if (b->len + size * n > (64u << 20))
        return 0;
    buf_add(b, ptr, size * n);
    return size * n;
}

/* http_get fetches url into body; returns the HTTP status or -1 (message on stderr). */
static long
http_get(const char *url, buf *body, long timeout_s)
{
    CURL *c = curl_easy_init();
    long status = -1;
    if (!c)
        return -1;
    buf_reset(body);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, timeout_s);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 5L);
    const char *user = getenv("GEOREG_USER"), *pass = getenv("GEOREG_PASSWORD");
    if (user && pass) {
        curl_easy_setopt(c, CURLOPT_USERNAME, user);
        curl_easy_setopt(c, CURLOPT_PASSWORD, pass);
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    else
        fprintf(stderr, "georeg: %s: %s\n", url, curl_easy_strerror(rc));
    curl_easy_cleanup(c);
    return status;
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
        printf("%-16s %-12s %10.0f %12.0f %10s %s %s\n", jstr(j, "node"), jstr(j, "state"),
               jnum(j, "applied_seq"), jnum(j, "primary_head_seq"),
               json_is_number(st) ? "" : "unknown", jstr(j, "primary"), jstr(j, "primary_url"));
        if (json_is_number(st))
            printf("staleness %.1fs\n", json_number_value(st));
    }
    json_decref(j);
    return 0;
}

static uint64_t
mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
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
    uint64_t deadline = mono_ms() + o->timeout_ms;
    buf url = BUF_INIT, body = BUF_INIT;
    int rc = 1;
    for (;;) {
        uint64_t now = mono_ms();
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
            if (done || mono_ms() >= deadline) {
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
        } else if (st == 404 && mono_ms() < deadline) {
            usleep(200000); /* not pushed yet */
        } else if (st < 0 && mono_ms() < deadline) {
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

int
cli_main(const char *cmd, int argc, char **argv)
{
    bool is_status = !strcmp(cmd, "status"), is_lag = !strcmp(cmd, "lag"),
         is_wait = !strcmp(cmd, "wait");
    if (!is_status && !is_lag && !is_wait)
        return -1;
    struct cli_opts o = {.url = getenv("GEOREG_URL"), .timeout_ms = 60000};
    if (!o.url)
        o.url = "http://127.0.0.1:5000";
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--url") && v) {
            o.url = v;
            i++;
        } else if (!strcmp(a, "--json")) {
            o.json = true;
        } else if (!strcmp(a, "--regions") && v) {
            o.regions = v;
            i++;
        } else if (!strcmp(a, "--timeout") && v) {
            if (!cfg_parse_duration(v, &o.timeout_ms)) {
                fprintf(stderr, "georeg: invalid --timeout %s\n", v);
                return 2;
            }
            i++;
        } else if (a[0] != '-' && !o.target) {
            o.target = a;
        } else {
            fprintf(stderr, "georeg %s: unknown or incomplete option %s\n", cmd, a);
            return 2;
        }
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc;
    if (is_wait) {
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
    return rc;
}
