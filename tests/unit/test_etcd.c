/* Unit tests for replication/etcd: the client against a real etcd (Debian's
 * etcd-server, started here on free loopback ports with its data in a temporary
 * directory and killed by pid), and against hostile endpoints served by a thread of
 * this test (garbage, errors, oversized bodies, bad base64, wrong types, silence).
 * Without /usr/bin/etcd (or $GEOREG_ETCD_BIN) the tests that need it are skipped,
 * saying so. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../common/clock.h"
#include "common/buf.h"
#include "common/log.h"
#include "replication/etcd.h"

/* the etcd binary; GEOREG_ETCD_BIN overrides (a missing one shows the skip path) */
static const char *
etcd_bin(void)
{
    const char *b = getenv("GEOREG_ETCD_BIN");
    return b && b[0] ? b : "/usr/bin/etcd";
}
/* the client timeout of most tests, and the slack allowed on top of it before a
 * call counts as hanging (the bound is on hanging, not on speed) */
#define TIMEOUT_MS 2000
#define HANG_SLACK_MS 3000

static uint64_t
now_ms(void)
{
    return clock_mono_ms();
}

static void
sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static slice
S(const char *s)
{
    return slice_of_cstr(s);
}

/* free_port binds 127.0.0.1:0 and gives back the port the kernel chose. */
static int
free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

/* ---- a real etcd ---- */

struct etcd_proc {
    bool available; /* /usr/bin/etcd exists */
    pid_t pid;      /* 0 when not running */
    char dir[64];   /* mkdtemp: data/ and etcd.log */
    int client_port, peer_port;
    char url[64];
};

static struct etcd_proc g_etcd;

static int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static pid_t
etcd_spawn(struct etcd_proc *e)
{
    char data[128], log_path[128], name[] = "t";
    char client[64], peer[64], cluster[96];
    snprintf(data, sizeof data, "%s/data", e->dir);
    snprintf(log_path, sizeof log_path, "%s/etcd.log", e->dir);
    snprintf(client, sizeof client, "http://127.0.0.1:%d", e->client_port);
    snprintf(peer, sizeof peer, "http://127.0.0.1:%d", e->peer_port);
    snprintf(cluster, sizeof cluster, "t=%s", peer);
    char bin[256];
    snprintf(bin, sizeof bin, "%s", etcd_bin());
    char *argv[] = {bin,
                    "--name", name,
                    "--data-dir", data,
                    "--listen-client-urls", client,
                    "--advertise-client-urls", client,
                    "--listen-peer-urls", peer,
                    "--initial-advertise-peer-urls", peer,
                    "--initial-cluster", cluster,
                    "--logger=zap",
                    "--log-level=error",
                    NULL};
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* the child: dies with the test process, logs to the temporary directory */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(126);
    int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        close(fd);
    }
    execv(bin, argv);
    _exit(127);
}

/* etcd_wait_ready polls until etcd answers a read (a missing key is an answer);
 * false when the process exits or 30 s pass. */
static bool
etcd_wait_ready(struct etcd_proc *e)
{
    const char *eps[] = {e->url};
    etcd_client *c = NULL;
    bool ok = false;
    int saved = log_level_;
    if (etcd_client_new(eps, 1, 1000, &c) != ERR_OK)
        return false;
    log_set_level(LOG_ERROR); /* the refusals while it starts are expected */
    for (uint64_t until = now_ms() + 30000; now_ms() < until;) {
        int status;
        if (waitpid(e->pid, &status, WNOHANG) == e->pid) {
            e->pid = 0;
            break;
        }
        err r = etcd_get(c, S("georeg-test/ready-probe"), NULL, NULL, NULL);
        if (r == ERR_NOT_FOUND || r == ERR_OK) {
            ok = true;
            break;
        }
        sleep_ms(100);
    }
    log_set_level(saved);
    etcd_client_free(c);
    return ok;
}

/* etcd_start starts etcd on the ports already chosen (fresh ones when fresh_ports). */
static bool
etcd_start(struct etcd_proc *e, bool fresh_ports)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        if (fresh_ports || attempt > 0) {
            e->client_port = free_port();
            e->peer_port = free_port();
            if (e->client_port <= 0 || e->peer_port <= 0 || e->client_port == e->peer_port)
                continue;
        }
        snprintf(e->url, sizeof e->url, "http://127.0.0.1:%d", e->client_port);
        e->pid = etcd_spawn(e);
        if (e->pid < 0) {
            e->pid = 0;
            return false;
        }
        if (etcd_wait_ready(e))
            return true;
        if (e->pid > 0) {
            kill(e->pid, SIGKILL);
            waitpid(e->pid, NULL, 0);
            e->pid = 0;
        }
        if (!fresh_ports)
            break; /* a restart must keep its ports: its data names them */
    }
    fprintf(stderr, "test_etcd: etcd did not come up; see %s/etcd.log\n", e->dir);
    return false;
}

static void
etcd_kill(struct etcd_proc *e)
{
    if (e->pid > 0) {
        kill(e->pid, SIGKILL);
        waitpid(e->pid, NULL, 0);
        e->pid = 0;
    }
}

static int
group_setup(void **state)
{
    (void)state;
    memset(&g_etcd, 0, sizeof g_etcd);
    if (access(etcd_bin(), X_OK) != 0) {
        fprintf(stderr, "test_etcd: %s not found: the tests against a real etcd are "
                        "SKIPPED (apt-get install etcd-server)\n",
                etcd_bin());
        return 0;
    }
    g_etcd.available = true;
    snprintf(g_etcd.dir, sizeof g_etcd.dir, "/tmp/georeg-etcd-XXXXXX");
    if (!mkdtemp(g_etcd.dir))
        return -1;
    return etcd_start(&g_etcd, true) ? 0 : -1;
}

static int
group_teardown(void **state)
{
    (void)state;
    etcd_kill(&g_etcd);
    if (g_etcd.dir[0])
        nftw(g_etcd.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* need_etcd skips the test without etcd and makes sure one runs (a failed test may
 * have left it stopped or killed). */
#define NEED_ETCD()                                                                                \
    do {                                                                                           \
        if (!g_etcd.available) {                                                                   \
            fprintf(stderr, "test_etcd: SKIPPED: no %s\n", etcd_bin());                           \
            skip();                                                                                \
        }                                                                                          \
        if (g_etcd.pid > 0)                                                                        \
            kill(g_etcd.pid, SIGCONT);                                                             \
        else                                                                                       \
            assert_true(etcd_start(&g_etcd, false));                                               \
    } while (0)

static etcd_client *
client_of(const char *url, uint64_t timeout_ms)
{
    const char *eps[] = {url};
    etcd_client *c = NULL;
    assert_int_equal(etcd_client_new(eps, 1, timeout_ms, &c), ERR_OK);
    assert_non_null(c);
    return c;
}

/* ---- leases ---- */

static void
test_lease_cycle(void **state)
{
    (void)state;
    NEED_ETCD();
    etcd_client *c = client_of(g_etcd.url, TIMEOUT_MS);
    int64_t id = 0, ttl = 0, left = -1;
    uint64_t until = 0, before = clock_mono_ms();
    assert_int_equal(etcd_lease_grant(c, 10, &id, &ttl, &until), ERR_OK);
    assert_true(id > 0);
    assert_true(ttl >= 10);
    /* the deadline counts from before the request, never from the answer */
    assert_true(until >= before + (uint64_t)ttl * 1000);
    assert_true(until <= clock_mono_ms() + (uint64_t)ttl * 1000);
    before = clock_mono_ms();
    assert_int_equal(etcd_lease_keepalive(c, id, &left, &until), ERR_OK);
    assert_true(left > 0 && left <= ttl);
    assert_true(until >= before + (uint64_t)left * 1000);
    assert_true(until <= clock_mono_ms() + (uint64_t)left * 1000);
    assert_int_equal(etcd_lease_time_to_live(c, id, &left), ERR_OK);
    assert_true(left > 0 && left <= ttl);
    assert_int_equal(etcd_lease_revoke(c, id), ERR_OK);
    left = -1;
    assert_int_equal(etcd_lease_keepalive(c, id, &left, &until), ERR_NOT_FOUND);
    assert_int_equal(left, 0);
    assert_int_equal(until, 0);
    assert_int_equal(etcd_lease_time_to_live(c, id, &left), ERR_NOT_FOUND);
    assert_int_equal(etcd_lease_revoke(c, id), ERR_NOT_FOUND);
    /* a gone lease cannot hold a key */
    bool won = true, swapped = true;
    assert_int_equal(etcd_campaign(c, S("georeg-test/lease/k"), S("v"), id, &won, NULL, NULL),
                     ERR_NOT_FOUND);
    assert_false(won);
    assert_int_equal(etcd_put_if(c, S("georeg-test/lease/k"), S("v"), id, 0, &swapped, NULL),
                     ERR_NOT_FOUND);
    assert_false(swapped);
    assert_int_equal(etcd_get(c, S("georeg-test/lease/k"), NULL, NULL, NULL), ERR_NOT_FOUND);
    /* a lease nobody granted */
    assert_int_equal(etcd_lease_keepalive(c, 0x7eadbeef12345, &left, NULL), ERR_NOT_FOUND);
    assert_int_equal(left, 0);
    /* arguments are checked before anything is sent */
    assert_int_equal(etcd_lease_grant(c, 0, &id, NULL, NULL), ERR_INVALID);
    assert_int_equal(etcd_lease_keepalive(c, 0, &left, NULL), ERR_INVALID);
    assert_int_equal(etcd_lease_revoke(c, -1), ERR_INVALID);
    etcd_client_free(c);
}

/* ---- campaigns ---- */

struct campaigner {
    etcd_client *c;
    const char *key;
    const char *value;
    int64_t lease;
    pthread_barrier_t *go;
    err r;
    bool won;
    buf holder;
    int64_t rev;
};

static void *
campaign_main(void *p)
{
    struct campaigner *cp = p;
    pthread_barrier_wait(cp->go);
    cp->r = etcd_campaign(cp->c, S(cp->key), S(cp->value), cp->lease, &cp->won, &cp->holder,
                          &cp->rev);
    return NULL;
}

static void
test_campaign_two_clients(void **state)
{
    (void)state;
    NEED_ETCD();
    const char *key = "georeg-test/campaign/leader";
    struct campaigner cp[2] = {{.key = key, .value = "node-a"}, {.key = key, .value = "node-b"}};
    pthread_barrier_t go;
    pthread_t th[2];
    pthread_barrier_init(&go, NULL, 2);
    for (int i = 0; i < 2; i++) {
        cp[i].c = client_of(g_etcd.url, TIMEOUT_MS);
        cp[i].go = &go;
        buf_init(&cp[i].holder);
        assert_int_equal(etcd_lease_grant(cp[i].c, 30, &cp[i].lease, NULL, NULL), ERR_OK);
    }
    /* both at once, each on its own client */
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, campaign_main, &cp[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&go);
    assert_int_equal(cp[0].r, ERR_OK);
    assert_int_equal(cp[1].r, ERR_OK);
    assert_true(cp[0].won != cp[1].won);
    struct campaigner *w = cp[0].won ? &cp[0] : &cp[1];
    struct campaigner *l = cp[0].won ? &cp[1] : &cp[0];
    assert_string_equal(w->holder.ptr, w->value);
    assert_string_equal(l->holder.ptr, w->value);
    assert_true(w->rev > 0);
    assert_int_equal(l->rev, w->rev);

    /* what etcd holds: the winner's value under the winner's lease */
    buf v = BUF_INIT;
    int64_t rev = 0, lease = 0;
    assert_int_equal(etcd_get(l->c, S(key), &v, &rev, &lease), ERR_OK);
    assert_string_equal(v.ptr, w->value);
    assert_int_equal(lease, w->lease);
    assert_int_equal(rev, w->rev);

    /* campaigning again (a retry after a lost answer) keeps the win; the loser still loses */
    bool won = false;
    assert_int_equal(etcd_campaign(w->c, S(key), S(w->value), w->lease, &won, &v, NULL), ERR_OK);
    assert_true(won);
    assert_int_equal(etcd_campaign(l->c, S(key), S(l->value), l->lease, &won, &v, NULL), ERR_OK);
    assert_false(won);
    assert_string_equal(v.ptr, w->value);
    /* the winner's value under another lease is not the winner */
    assert_int_equal(etcd_campaign(l->c, S(key), S(w->value), l->lease, &won, NULL, NULL),
                     ERR_OK);
    assert_false(won);

    for (int i = 0; i < 2; i++) {
        assert_int_equal(etcd_lease_revoke(cp[i].c, cp[i].lease), ERR_OK);
        buf_release(&cp[i].holder);
        etcd_client_free(cp[i].c);
    }
    buf_release(&v);
}

static void
test_lease_lapse_hands_over(void **state)
{
    (void)state;
    NEED_ETCD();
    const char *key = "georeg-test/lapse/leader";
    etcd_client *a = client_of(g_etcd.url, TIMEOUT_MS);
    etcd_client *b = client_of(g_etcd.url, TIMEOUT_MS);
    int64_t la = 0, lb = 0, left = 0;
    bool won = false;
    buf holder = BUF_INIT;
    uint64_t a_until = 0;
    assert_int_equal(etcd_lease_grant(a, 2, &la, NULL, &a_until), ERR_OK);
    assert_int_equal(etcd_lease_grant(b, 60, &lb, NULL, NULL), ERR_OK);
    assert_int_equal(etcd_campaign(a, S(key), S("node-a"), la, &won, &holder, NULL), ERR_OK);
    assert_true(won);
    assert_int_equal(etcd_campaign(b, S(key), S("node-b"), lb, &won, &holder, NULL), ERR_OK);
    assert_false(won);
    assert_string_equal(holder.ptr, "node-a");

    /* no keepalive from a: within a generous bound the key goes with its lease */
    err r = ERR_OK;
    for (uint64_t until = now_ms() + 30000; now_ms() < until;) {
        r = etcd_get(b, S(key), NULL, NULL, NULL);
        if (r != ERR_OK)
            break;
        sleep_ms(200);
    }
    assert_int_equal(r, ERR_NOT_FOUND);
    /* the safety rule failover rests on: a's local deadline came before anyone else
     * could see the key gone (a lower bound, not a speed) */
    assert_true(clock_mono_ms() >= a_until);
    assert_int_equal(etcd_lease_keepalive(a, la, &left, NULL), ERR_NOT_FOUND);
    assert_int_equal(etcd_campaign(b, S(key), S("node-b"), lb, &won, &holder, NULL), ERR_OK);
    assert_true(won);
    assert_string_equal(holder.ptr, "node-b");
    /* a, back too late, sees b */
    assert_int_equal(etcd_lease_grant(a, 2, &la, NULL, NULL), ERR_OK);
    assert_int_equal(etcd_campaign(a, S(key), S("node-a"), la, &won, &holder, NULL), ERR_OK);
    assert_false(won);
    assert_string_equal(holder.ptr, "node-b");

    assert_int_equal(etcd_lease_revoke(b, lb), ERR_OK);
    assert_int_equal(etcd_get(b, S(key), NULL, NULL, NULL), ERR_NOT_FOUND);
    buf_release(&holder);
    etcd_client_free(a);
    etcd_client_free(b);
}

/* ---- compare-and-swap and resign ---- */

static void
test_put_if_and_delete_if_value(void **state)
{
    (void)state;
    NEED_ETCD();
    /* binary key and value: NUL and high bytes go through base64 intact */
    static const char bkey[] = "georeg-test/cas/\0\xff\x01key";
    static const char bval[] = "node-a\0seq=\xfe";
    slice key = {bkey, sizeof bkey - 1};
    etcd_client *c = client_of(g_etcd.url, TIMEOUT_MS);
    int64_t lease = 0, rev1 = 0, rev2 = 0, rev = 0, got_lease = 0;
    bool won = false, swapped = true, deleted = true;
    buf v = BUF_INIT;
    assert_int_equal(etcd_lease_grant(c, 30, &lease, NULL, NULL), ERR_OK);
    assert_int_equal(etcd_campaign(c, key, S("node-a seq=1"), lease, &won, NULL, &rev1), ERR_OK);
    assert_true(won);

    /* the holder refreshes its value against the revision it last wrote */
    assert_int_equal(etcd_put_if(c, key, (slice){bval, sizeof bval - 1}, lease, rev1, &swapped,
                                 &rev2),
                     ERR_OK);
    assert_true(swapped);
    assert_true(rev2 > rev1);
    assert_int_equal(etcd_get(c, key, &v, &rev, &got_lease), ERR_OK);
    assert_int_equal(v.len, sizeof bval - 1);
    assert_memory_equal(v.ptr, bval, sizeof bval - 1);
    assert_int_equal(rev, rev2);
    assert_int_equal(got_lease, lease);

    /* a stale revision changes nothing */
    assert_int_equal(etcd_put_if(c, key, S("node-a seq=0"), lease, rev1, &swapped, &rev), ERR_OK);
    assert_false(swapped);
    assert_int_equal(rev, 0);
    assert_int_equal(etcd_get(c, key, &v, &rev, NULL), ERR_OK);
    assert_memory_equal(v.ptr, bval, sizeof bval - 1);
    assert_int_equal(rev, rev2);

    /* resigning with someone else's value deletes nothing */
    assert_int_equal(etcd_delete_if_value(c, key, S("node-b"), &deleted), ERR_OK);
    assert_false(deleted);
    assert_int_equal(etcd_get(c, key, NULL, NULL, NULL), ERR_OK);
    /* with ours it deletes */
    assert_int_equal(etcd_delete_if_value(c, key, (slice){bval, sizeof bval - 1}, &deleted),
                     ERR_OK);
    assert_true(deleted);
    assert_int_equal(etcd_get(c, key, &v, &rev, &got_lease), ERR_NOT_FOUND);
    assert_int_equal(rev, 0);
    assert_int_equal(etcd_delete_if_value(c, key, (slice){bval, sizeof bval - 1}, &deleted),
                     ERR_OK);
    assert_false(deleted);

    /* expected revision 0: only if absent */
    assert_int_equal(etcd_put_if(c, key, S("x"), 0, 0, &swapped, &rev), ERR_OK);
    assert_true(swapped);
    assert_int_equal(etcd_put_if(c, key, S("y"), 0, 0, &swapped, NULL), ERR_OK);
    assert_false(swapped);
    assert_int_equal(etcd_delete_if_value(c, key, S("x"), &deleted), ERR_OK);
    assert_true(deleted);

    /* arguments */
    assert_int_equal(etcd_get(c, S(""), NULL, NULL, NULL), ERR_INVALID);
    buf big = BUF_INIT;
    for (size_t i = 0; i <= ETCD_MAX_VALUE; i++)
        assert_int_equal(buf_addc(&big, 'v'), ERR_OK);
    assert_int_equal(etcd_campaign(c, key, buf_slice(&big), lease, &won, NULL, NULL), ERR_INVALID);
    assert_false(won);
    buf_release(&big);

    assert_int_equal(etcd_lease_revoke(c, lease), ERR_OK);
    buf_release(&v);
    etcd_client_free(c);
}

/* ---- etcd dies, stops, comes back ---- */

/* all_calls_fail runs every call against a dead or silent etcd: each returns an
 * error, none takes longer than the client timeout and a slack. */
static void
all_calls_fail(etcd_client *c, uint64_t timeout_ms, int64_t lease)
{
    int64_t id = 0, left = 0, rev = 0;
    uint64_t until = 0;
    bool b = true;
    buf v = BUF_INIT;
    for (int i = 0; i < 8; i++) {
        uint64_t t0 = now_ms();
        err r = ERR_OK;
        b = true;
        switch (i) {
        case 0: r = etcd_lease_grant(c, 5, &id, NULL, NULL); break;
        case 1:
            until = 12345;
            r = etcd_lease_keepalive(c, lease, &left, &until);
            assert_int_equal(until, 12345); /* no answer: the old deadline stands */
            break;
        case 2: r = etcd_lease_time_to_live(c, lease, &left); break;
        case 3: r = etcd_campaign(c, S("georeg-test/dead/k"), S("v"), lease, &b, &v, &rev); break;
        case 4: r = etcd_get(c, S("georeg-test/dead/k"), &v, &rev, NULL); break;
        case 5: r = etcd_put_if(c, S("georeg-test/dead/k"), S("v"), lease, 1, &b, &rev); break;
        case 6: r = etcd_delete_if_value(c, S("georeg-test/dead/k"), S("v"), &b); break;
        case 7: r = etcd_lease_revoke(c, lease); break;
        }
        uint64_t took = now_ms() - t0;
        fprintf(stderr, "test_etcd: call %d -> %s in %llu ms\n", i, err_name(r),
                (unsigned long long)took);
        assert_true(r == ERR_UNAVAILABLE || r == ERR_TIMEOUT);
        assert_true(took < timeout_ms + HANG_SLACK_MS);
        if (i == 3 || i == 5 || i == 6)
            assert_false(b); /* no outcome is reported with an error */
    }
    buf_release(&v);
}

static void
test_etcd_killed_and_restarted(void **state)
{
    (void)state;
    NEED_ETCD();
    etcd_client *c = client_of(g_etcd.url, TIMEOUT_MS);
    int64_t lease = 0;
    bool swapped = false;
    buf v = BUF_INIT;
    assert_int_equal(etcd_lease_grant(c, 60, &lease, NULL, NULL), ERR_OK);
    assert_int_equal(etcd_put_if(c, S("georeg-test/kill/durable"), S("kept"), 0, 0, &swapped,
                                 NULL),
                     ERR_OK);
    assert_true(swapped);

    /* stopped (SIGSTOP): the kernel still accepts, nobody answers. These requests
     * did go out: etcd applies them when it continues (a timeout is an unknown
     * outcome), so they name a lease nobody holds rather than ours. */
    assert_int_equal(kill(g_etcd.pid, SIGSTOP), 0);
    all_calls_fail(c, TIMEOUT_MS, 0x5eed5eed);
    assert_int_equal(kill(g_etcd.pid, SIGCONT), 0);

    /* killed: refused */
    etcd_kill(&g_etcd);
    all_calls_fail(c, TIMEOUT_MS, lease);

    /* back on the same data dir and ports: the client carries on */
    assert_true(etcd_start(&g_etcd, false));
    assert_int_equal(etcd_get(c, S("georeg-test/kill/durable"), &v, NULL, NULL), ERR_OK);
    assert_string_equal(v.ptr, "kept");
    int64_t left = 0;
    assert_int_equal(etcd_lease_keepalive(c, lease, &left, NULL), ERR_OK);
    assert_true(left > 0);
    bool won = false;
    assert_int_equal(etcd_campaign(c, S("georeg-test/kill/leader"), S("node-a"), lease, &won, &v,
                                   NULL),
                     ERR_OK);
    assert_true(won);
    bool deleted = false;
    assert_int_equal(etcd_delete_if_value(c, S("georeg-test/kill/durable"), S("kept"), &deleted),
                     ERR_OK);
    assert_true(deleted);
    assert_int_equal(etcd_lease_revoke(c, lease), ERR_OK);
    buf_release(&v);
    etcd_client_free(c);
}

/* ---- hostile endpoints: a tiny HTTP server thread with canned answers ---- */

enum mock_mode {
    MOCK_CANNED,   /* answer `canned` verbatim, then close */
    MOCK_HUGE_CL,  /* 200 with a Content-Length of several MiB, and the bytes */
    MOCK_HUGE_EOF, /* 200, no length, several MiB until close */
    MOCK_HUGE_CHUNKED,
    MOCK_SILENT, /* read the request, never answer */
};

struct mock {
    int fd;
    int port;
    char url[64];
    pthread_t th;
    atomic_bool stop;
    _Atomic int mode;
    const char *_Atomic canned;
    atomic_int served;
};

static bool
send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* read_request reads until the end of the headers and Content-Length body bytes. */
static bool
read_request(struct mock *m, int fd)
{
    char req[8192];
    size_t len = 0;
    size_t need = 0;
    bool headers = false;
    while (!atomic_load(&m->stop)) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0)
            continue;
        ssize_t r = recv(fd, req + len, sizeof req - 1 - len, 0);
        if (r <= 0)
            return false;
        len += (size_t)r;
        req[len] = '\0';
        if (!headers) {
            char *end = strstr(req, "\r\n\r\n");
            if (!end)
                continue;
            headers = true;
            char *cl = strcasestr(req, "content-length:");
            need = (size_t)(end + 4 - req) + (cl ? strtoul(cl + 15, NULL, 10) : 0);
        }
        if (len >= need || len == sizeof req - 1)
            return true;
    }
    return false;
}

static void
send_huge(int fd, enum mock_mode mode)
{
    static char chunk[64 << 10];
    size_t total = (size_t)6 << 20;
    char head[256];
    memset(chunk, 'a', sizeof chunk);
    if (mode == MOCK_HUGE_CL)
        snprintf(head, sizeof head,
                 "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                 "Connection: close\r\n\r\n",
                 total);
    else if (mode == MOCK_HUGE_EOF)
        snprintf(head, sizeof head,
                 "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n");
    else
        snprintf(head, sizeof head,
                 "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    if (!send_all(fd, head, strlen(head)))
        return;
    if (mode != MOCK_HUGE_CHUNKED && !send_all(fd, "{\"kvs\":\"", 8))
        return;
    for (size_t sent = 0; sent < total; sent += sizeof chunk) {
        if (mode == MOCK_HUGE_CHUNKED) {
            char ch[32];
            snprintf(ch, sizeof ch, "%zx\r\n", sizeof chunk);
            if (!send_all(fd, ch, strlen(ch)))
                return;
        }
        if (!send_all(fd, chunk, sizeof chunk))
            return; /* the client hung up: what we want */
        if (mode == MOCK_HUGE_CHUNKED && !send_all(fd, "\r\n", 2))
            return;
    }
}

static void *
mock_main(void *p)
{
    struct mock *m = p;
    while (!atomic_load(&m->stop)) {
        struct pollfd pl = {.fd = m->fd, .events = POLLIN};
        if (poll(&pl, 1, 50) <= 0)
            continue;
        int fd = accept(m->fd, NULL, NULL);
        if (fd < 0)
            continue;
        if (read_request(m, fd)) {
            int mode = atomic_load(&m->mode);
            if (mode == MOCK_CANNED) {
                const char *resp = atomic_load(&m->canned);
                send_all(fd, resp, strlen(resp));
            } else if (mode == MOCK_SILENT) {
                /* hold the connection until the client gives up */
                char sink[256];
                while (!atomic_load(&m->stop)) {
                    struct pollfd q = {.fd = fd, .events = POLLIN};
                    if (poll(&q, 1, 50) > 0 && recv(fd, sink, sizeof sink, 0) <= 0)
                        break;
                }
            } else {
                send_huge(fd, (enum mock_mode)mode);
            }
            atomic_fetch_add(&m->served, 1);
        }
        shutdown(fd, SHUT_WR);
        close(fd);
    }
    return NULL;
}

static void
mock_start(struct mock *m)
{
    memset(m, 0, sizeof *m);
    m->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(m->fd >= 0);
    int one = 1;
    setsockopt(m->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(m->fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(m->fd, (struct sockaddr *)&a, &len), 0);
    assert_int_equal(listen(m->fd, 16), 0);
    m->port = ntohs(a.sin_port);
    snprintf(m->url, sizeof m->url, "http://127.0.0.1:%d", m->port);
    atomic_store(&m->canned, "");
    assert_int_equal(pthread_create(&m->th, NULL, mock_main, m), 0);
}

static void
mock_stop(struct mock *m)
{
    atomic_store(&m->stop, true);
    pthread_join(m->th, NULL);
    close(m->fd);
}

/* http_answer frames body as a whole HTTP answer with this status */
static char *
http_answer(int status, const char *body)
{
    buf b = BUF_INIT;
    assert_int_equal(buf_addf(&b,
                              "HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                              "Connection: close\r\nContent-Length: %zu\r\n\r\n%s",
                              status, strlen(body), body),
                     ERR_OK);
    return buf_detach(&b, NULL);
}

#define HDR "\"header\":{\"revision\":\"7\"}"

struct hostile_case {
    const char *what;
    const char *body; /* the body of an answer with status, or NULL with raw */
    const char *raw;  /* a whole raw answer */
    int op;           /* 0 get, 1 grant, 2 keepalive, 3 campaign, 4 put_if, 5 delete, 6 revoke */
    err want;
    int status; /* 0: 200 */
};

static const struct hostile_case hostile[] = {
    {"garbage", NULL, "this is not http at all\r\n\r\n", 0, ERR_PROTOCOL},
    {"binary garbage", NULL, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 1, ERR_PROTOCOL},
    {"closed without answer", NULL, "", 0, ERR_UNAVAILABLE},
    {"http 500 text", "oops!", NULL, 0, ERR_UNAVAILABLE, 500},
    {"http 500 empty", "", NULL, 4, ERR_UNAVAILABLE, 500},
    {"http 503 grpc unavailable", "{\"error\":\"no leader\",\"code\":14,\"message\":\"x\"}",
     NULL, 3, ERR_UNAVAILABLE, 503},
    {"http 404 grpc not found", "{\"code\":5,\"message\":\"lease \\\"x\"}", NULL, 6,
     ERR_NOT_FOUND, 404},
    {"http 400 grpc code a string", "{\"code\":\"five\",\"message\":[]}", NULL, 6,
     ERR_UNAVAILABLE, 400},
    {"http 500 message forging a log line",
     "{\"code\":2,\"message\":\"x\\\" event=FORGED\\nlevel=error\"}", NULL, 0,
     ERR_UNAVAILABLE, 500},
    {"http 302", NULL,
     "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n"
     "Connection: close\r\n\r\n",
     0, ERR_UNAVAILABLE},
    {"truncated body", NULL,
     "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"header\":", 0,
     ERR_UNAVAILABLE},
    {"not json", "hello", NULL, 0, ERR_PROTOCOL},
    {"json array", "[1,2,3]", NULL, 0, ERR_PROTOCOL},
    {"trailing junk", "{" HDR "} {}", NULL, 0, ERR_PROTOCOL},
    {"no header", "{}", NULL, 0, ERR_PROTOCOL},
    {"header revision object", "{\"header\":{\"revision\":{}}}", NULL, 0, ERR_PROTOCOL},
    {"kvs a string", "{" HDR ",\"kvs\":\"x\"}", NULL, 0, ERR_PROTOCOL},
    {"two kvs", "{" HDR ",\"kvs\":[{},{}]}", NULL, 0, ERR_PROTOCOL},
    {"kv not an object", "{" HDR ",\"kvs\":[7]}", NULL, 0, ERR_PROTOCOL},
    {"mod_revision a bool",
     "{" HDR ",\"kvs\":[{\"key\":\"aw==\",\"create_revision\":\"1\",\"mod_revision\":true}]}",
     NULL, 0, ERR_PROTOCOL},
    {"revision a float",
     "{" HDR ",\"kvs\":[{\"key\":\"aw==\",\"create_revision\":1.5,\"mod_revision\":\"2\"}]}", NULL,
     0, ERR_PROTOCOL},
    {"revision not decimal",
     "{" HDR ",\"kvs\":[{\"key\":\"aw==\",\"create_revision\":\"0x10\",\"mod_revision\":\"2\"}]}",
     NULL, 0, ERR_PROTOCOL},
    {"revision overflows",
     "{" HDR ",\"kvs\":[{\"key\":\"aw==\",\"create_revision\":\"99999999999999999999\","
     "\"mod_revision\":\"2\"}]}",
     NULL, 0, ERR_PROTOCOL},
    {"value not base64",
     "{" HDR ",\"kvs\":[{\"key\":\"aw==\",\"create_revision\":\"1\",\"mod_revision\":\"2\","
     "\"value\":\"!!!!\"}]}",
     NULL, 0, ERR_PROTOCOL},
    {"value base64 unpadded",
     "{" HDR ",\"kvs\":[{\"key\":\"aw==\",\"create_revision\":\"1\",\"mod_revision\":\"2\","
     "\"value\":\"YWJ\"}]}",
     NULL, 0, ERR_PROTOCOL},
    {"value base64 with a newline",
     "{" HDR ",\"kvs\":[{\"key\":\"aw==\",\"create_revision\":\"1\",\"mod_revision\":\"2\","
     "\"value\":\"YW\\nJj\"}]}",
     NULL, 0, ERR_PROTOCOL},
    {"value a number",
     "{" HDR ",\"kvs\":[{\"key\":\"aw==\",\"create_revision\":\"1\",\"mod_revision\":\"2\","
     "\"value\":12}]}",
     NULL, 0, ERR_PROTOCOL},
    {"another key",
     "{" HDR ",\"kvs\":[{\"key\":\"eg==\",\"create_revision\":\"1\",\"mod_revision\":\"2\"}]}",
     NULL, 0, ERR_PROTOCOL},
    {"duplicate member", "{" HDR "," HDR "}", NULL, 0, ERR_PROTOCOL},
    {"grant without id", "{" HDR ",\"TTL\":\"5\"}", NULL, 1, ERR_PROTOCOL},
    {"grant negative id", "{" HDR ",\"ID\":\"-5\",\"TTL\":\"5\"}", NULL, 1, ERR_PROTOCOL},
    {"grant id an array", "{" HDR ",\"ID\":[1],\"TTL\":\"5\"}", NULL, 1, ERR_PROTOCOL},
    {"grant error field", "{" HDR ",\"error\":\"too many leases\"}", NULL, 1, ERR_UNAVAILABLE},
    {"keepalive without result", "{" HDR "}", NULL, 2, ERR_PROTOCOL},
    {"keepalive result a string", "{\"result\":\"x\"}", NULL, 2, ERR_PROTOCOL},
    {"keepalive of another lease", "{\"result\":{\"ID\":\"8\",\"TTL\":\"5\"}}", NULL, 2,
     ERR_PROTOCOL},
    {"keepalive stream error",
     "{\"error\":{\"grpc_code\":14,\"http_code\":503,\"message\":\"no leader\"}}", NULL, 2,
     ERR_UNAVAILABLE},
    {"txn succeeded a string", "{" HDR ",\"succeeded\":\"yes\"}", NULL, 3, ERR_PROTOCOL},
    {"txn lost without range", "{" HDR "}", NULL, 3, ERR_PROTOCOL},
    {"txn lost, empty range", "{" HDR ",\"responses\":[{\"response_range\":{}}]}", NULL, 3,
     ERR_PROTOCOL},
    {"txn responses an object", "{" HDR ",\"responses\":{}}", NULL, 3, ERR_PROTOCOL},
    {"txn two responses", "{" HDR ",\"succeeded\":true,\"responses\":[{},{}]}", NULL, 4,
     ERR_PROTOCOL},
    {"delete count 5",
     "{" HDR ",\"succeeded\":true,\"responses\":[{\"response_delete_range\":{\"deleted\":\"5\"}}]}",
     NULL, 5, ERR_PROTOCOL},
    {"delete without response", "{" HDR ",\"succeeded\":true}", NULL, 5, ERR_PROTOCOL},
    {"revoke without header", "{}", NULL, 6, ERR_PROTOCOL},
};

static err
run_op(etcd_client *c, int op, bool *flag)
{
    int64_t id = 0, rev = 0;
    buf v = BUF_INIT;
    err r = ERR_INTERNAL;
    *flag = false;
    switch (op) {
    case 0: r = etcd_get(c, S("k"), &v, &rev, &id); break;
    case 1: r = etcd_lease_grant(c, 5, &id, &rev, NULL); break;
    case 2: r = etcd_lease_keepalive(c, 7, &id, NULL); break;
    case 3: r = etcd_campaign(c, S("k"), S("v"), 7, flag, &v, &rev); break;
    case 4: r = etcd_put_if(c, S("k"), S("v"), 7, 3, flag, &rev); break;
    case 5: r = etcd_delete_if_value(c, S("k"), S("v"), flag); break;
    case 6: r = etcd_lease_revoke(c, 7); break;
    }
    buf_release(&v);
    return r;
}

static void
test_hostile_endpoints(void **state)
{
    (void)state;
    struct mock m;
    mock_start(&m);
    etcd_client *c = client_of(m.url, TIMEOUT_MS);
    bool flag;
    /* the mock may still be writing an answer the client has stopped reading: the
     * answers live until the mock has stopped */
    char *answers[sizeof hostile / sizeof hostile[0]] = {0};
    for (size_t i = 0; i < sizeof hostile / sizeof hostile[0]; i++) {
        const struct hostile_case *hc = &hostile[i];
        char *resp = hc->body ? http_answer(hc->status ? hc->status : 200, hc->body) : NULL;
        answers[i] = resp;
        atomic_store(&m.canned, resp ? resp : hc->raw);
        atomic_store(&m.mode, MOCK_CANNED);
        err r = run_op(c, hc->op, &flag);
        fprintf(stderr, "test_etcd: hostile \"%s\" -> %s\n", hc->what, err_name(r));
        if (r != hc->want)
            fail_msg("hostile case \"%s\": got %s, want %s", hc->what, err_name(r),
                     err_name(hc->want));
        assert_false(flag);
    }
    /* bodies of several MiB are cut off at ETCD_MAX_BODY, however they are framed */
    for (int mode = MOCK_HUGE_CL; mode <= MOCK_HUGE_CHUNKED; mode++) {
        atomic_store(&m.mode, mode);
        for (int op = 0; op <= 6; op++) {
            err r = run_op(c, op, &flag);
            if (r != ERR_PROTOCOL)
                fail_msg("huge body mode %d op %d: got %s", mode, op, err_name(r));
        }
    }
    /* silence: the call's deadline ends it */
    atomic_store(&m.mode, MOCK_SILENT);
    uint64_t t0 = now_ms();
    assert_int_equal(run_op(c, 0, &flag), ERR_TIMEOUT);
    uint64_t took = now_ms() - t0;
    assert_true(took + 100 >= TIMEOUT_MS);
    assert_true(took < TIMEOUT_MS + HANG_SLACK_MS);
    /* a silent first endpoint is not skipped: the request went out, so it may have
     * been applied, and is not sent twice */
    etcd_client_free(c);
    const char *eps[] = {m.url, "http://127.0.0.1:1"};
    assert_int_equal(etcd_client_new(eps, 2, 1000, &c), ERR_OK);
    assert_int_equal(run_op(c, 3, &flag), ERR_TIMEOUT);
    etcd_client_free(c);
    mock_stop(&m);
    for (size_t i = 0; i < sizeof hostile / sizeof hostile[0]; i++)
        free(answers[i]);
    assert_true(atomic_load(&m.served) > 0);
}

/* ---- several endpoints ---- */

/* a listener that never accepts, its queue filled so that further SYNs are dropped */
static int bh_fds[4] = {-1, -1, -1, -1};

static void
blackhole_stop(void)
{
    for (size_t i = 0; i < 4; i++) {
        if (bh_fds[i] >= 0)
            close(bh_fds[i]);
        bh_fds[i] = -1;
    }
}

static int
blackhole_start(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    bh_fds[0] = socket(AF_INET, SOCK_STREAM, 0);
    if (bh_fds[0] < 0 || bind(bh_fds[0], (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(bh_fds[0], (struct sockaddr *)&a, &len) != 0 || listen(bh_fds[0], 0) != 0)
        goto fail;
    /* backlog 0 holds one connection; fill it and leave a SYN hanging */
    for (size_t i = 1; i < 4; i++) {
        bh_fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (bh_fds[i] < 0)
            goto fail;
        if (connect(bh_fds[i], (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS)
            goto fail;
    }
    sleep_ms(100);
    /* is it really black? a probe must not connect within 300 ms */
    int probe = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (probe < 0)
        goto fail;
    bool black = false;
    if (connect(probe, (struct sockaddr *)&a, sizeof a) != 0 && errno == EINPROGRESS) {
        struct pollfd p = {.fd = probe, .events = POLLOUT};
        black = poll(&p, 1, 300) == 0;
    }
    close(probe);
    if (!black)
        goto fail;
    return ntohs(a.sin_port);
fail:
    blackhole_stop();
    return -1;
}

static void
test_first_endpoint_dead(void **state)
{
    (void)state;
    NEED_ETCD();
    char dead[64];
    snprintf(dead, sizeof dead, "http://127.0.0.1:%d", free_port());
    const char *eps[] = {dead, "http://127.0.0.1:1", g_etcd.url};
    etcd_client *c = NULL;
    assert_int_equal(etcd_client_new(eps, 3, TIMEOUT_MS, &c), ERR_OK);
    int64_t lease = 0, left = 0;
    bool won = false;
    buf v = BUF_INIT;
    assert_int_equal(etcd_lease_grant(c, 30, &lease, NULL, NULL), ERR_OK);
    assert_int_equal(etcd_campaign(c, S("georeg-test/multi/leader"), S("node-m"), lease, &won, &v,
                                   NULL),
                     ERR_OK);
    assert_true(won);
    /* the next calls start at the endpoint that answered */
    assert_int_equal(etcd_lease_keepalive(c, lease, &left, NULL), ERR_OK);
    assert_int_equal(etcd_get(c, S("georeg-test/multi/leader"), &v, NULL, NULL), ERR_OK);
    assert_string_equal(v.ptr, "node-m");
    assert_int_equal(etcd_lease_revoke(c, lease), ERR_OK);
    etcd_client_free(c);

    /* a first endpoint that drops SYNs (a listener whose accept queue is full) uses
     * only its share of the deadline; the second then answers */
    int bh = blackhole_start();
    if (bh < 0) {
        fprintf(stderr, "test_etcd: no black hole on this kernel; case not run\n");
    } else {
        char bh_url[64];
        snprintf(bh_url, sizeof bh_url, "http://127.0.0.1:%d", bh);
        const char *slow[] = {bh_url, g_etcd.url};
        assert_int_equal(etcd_client_new(slow, 2, 4000, &c), ERR_OK);
        assert_int_equal(etcd_get(c, S("georeg-test/multi/none"), &v, NULL, NULL), ERR_NOT_FOUND);
        etcd_client_free(c);
        blackhole_stop();
    }

    /* a first endpoint that takes the request and never answers fails that call
     * (the request is not resent); the next call starts at the second */
    struct mock m;
    mock_start(&m);
    atomic_store(&m.mode, MOCK_SILENT);
    const char *silent[] = {m.url, g_etcd.url};
    assert_int_equal(etcd_client_new(silent, 2, 1000, &c), ERR_OK);
    assert_int_equal(etcd_get(c, S("georeg-test/multi/none"), &v, NULL, NULL), ERR_TIMEOUT);
    assert_int_equal(etcd_get(c, S("georeg-test/multi/none"), &v, NULL, NULL), ERR_NOT_FOUND);
    assert_int_equal(etcd_get(c, S("georeg-test/multi/none"), &v, NULL, NULL), ERR_NOT_FOUND);
    etcd_client_free(c);
    /* the same for one answering "no leader" */
    atomic_store(&m.canned, "HTTP/1.1 503 X\r\nContent-Length: 46\r\nConnection: close\r\n\r\n"
                            "{\"error\":\"no leader\",\"code\":14,\"message\":\"nl\"}");
    atomic_store(&m.mode, MOCK_CANNED);
    assert_int_equal(etcd_client_new(silent, 2, 1000, &c), ERR_OK);
    assert_int_equal(etcd_get(c, S("georeg-test/multi/none"), &v, NULL, NULL), ERR_UNAVAILABLE);
    assert_int_equal(etcd_get(c, S("georeg-test/multi/none"), &v, NULL, NULL), ERR_NOT_FOUND);
    etcd_client_free(c);
    mock_stop(&m);

    /* all endpoints dead: unavailable, promptly */
    const char *none[] = {dead, "http://127.0.0.1:1"};
    assert_int_equal(etcd_client_new(none, 2, TIMEOUT_MS, &c), ERR_OK);
    uint64_t t0 = now_ms();
    assert_int_equal(etcd_get(c, S("k"), &v, NULL, NULL), ERR_UNAVAILABLE);
    assert_true(now_ms() - t0 < TIMEOUT_MS + HANG_SLACK_MS);
    etcd_client_free(c);
    buf_release(&v);
}

static void
test_client_new_arguments(void **state)
{
    (void)state;
    etcd_client *c = (etcd_client *)&c; /* must come back NULL */
    const char *good[] = {"http://127.0.0.1:2379"};
    const char *scheme[] = {"127.0.0.1:2379"};
    const char *userinfo[] = {"http://root:secret@127.0.0.1:2379"};
    const char *with_null[] = {"http://127.0.0.1:2379", NULL};
    assert_int_equal(etcd_client_new(good, 0, 1000, &c), ERR_INVALID);
    assert_null(c);
    assert_int_equal(etcd_client_new(good, ETCD_MAX_ENDPOINTS + 1, 1000, &c), ERR_INVALID);
    assert_int_equal(etcd_client_new(good, 1, 0, &c), ERR_INVALID);
    assert_int_equal(etcd_client_new(scheme, 1, 1000, &c), ERR_INVALID);
    assert_int_equal(etcd_client_new(userinfo, 1, 1000, &c), ERR_INVALID);
    assert_int_equal(etcd_client_new(with_null, 2, 1000, &c), ERR_INVALID);
    assert_null(c);
    /* a trailing slash is tolerated */
    const char *slash[] = {"http://127.0.0.1:2379/"};
    assert_int_equal(etcd_client_new(slash, 1, 1000, &c), ERR_OK);
    etcd_client_free(c);
    etcd_client_free(NULL);
}

int
main(void)
{
    /* a watchdog: a hang fails the run (and PR_SET_PDEATHSIG takes etcd with it) */
    alarm(600);
    log_set_level(LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_client_new_arguments),
        cmocka_unit_test(test_hostile_endpoints),
        cmocka_unit_test(test_lease_cycle),
        cmocka_unit_test(test_campaign_two_clients),
        cmocka_unit_test(test_put_if_and_delete_if_value),
        cmocka_unit_test(test_lease_lapse_hands_over),
        cmocka_unit_test(test_first_endpoint_dead),
        cmocka_unit_test(test_etcd_killed_and_restarted),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
