/* The georeg command: `serve` runs a node; the other commands talk to a running
 * node over its HTTP API. */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include <nng/nng.h>

#include "../common/log.h"
#include "cli/cli.h"
#include "config.h"
#include "node.h"
#include "../common/banned.h"

#ifndef GEOREG_VERSION
#define GEOREG_VERSION "0.1.0"
#endif

static void
usage(FILE *f)
{
    fprintf(f,
            "usage: georeg <command> [options]\n"
            "\n"
            "  serve  [--config FILE] [--listen HOST:PORT] [--data DIR] [--name NAME]\n"
            "         [--auth token|basic|none]\n"
            "         run a node (every config key can also come from GEOREG_* variables)\n"
            "  status [--url URL] [--json]             node and replication state\n"
            "  lag    [--url URL] [--json]             replication lag per replica\n"
            "  wait   NAME:TAG --regions a,b [--timeout 60s] [--url URL]\n"
            "         exit 0 once the regions hold the image, 1 on timeout\n"
            "  user   add NAME [--new-password-file F] [--role R]... [--scope GLOB:ACTIONS]...\n"
            "         | list | delete NAME | disable NAME | enable NAME\n"
            "  token  create NAME --scope 'prod/**:pull,push' [--expires 30d] | list | revoke NAME\n"
            "  sp     create NAME [--role R] [--scope S] | list | delete NAME\n"
            "  audit  [--since T] [--until T] [--repo R] [--actor A] [--action X] [--limit N]\n"
            "  fence  [set|clear] [--url URL]           show, set or clear a primary's fence\n"
            "  promote [--force] [--url URL]            make that secondary the primary (a new "
            "epoch)\n"
            "  conflicts [--json] [--all] [--url URL]   tags lost to a failover, per report\n"
            "  conflicts resolve REPORT N --keep-new|--take-old|--retagged\n"
            "         admin commands take --url, --user, --password-file, --ca\n"
            "         (or GEOREG_URL, GEOREG_USER, GEOREG_PASSWORD, GEOREG_CA)\n"
            "  version\n");
}

static int
cmd_serve(int argc, char **argv)
{
    const char *config = NULL, *listen = NULL, *data = NULL, *name = NULL, *mode = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--config") && v)
            config = v, i++;
        else if (!strcmp(a, "--listen") && v)
            listen = v, i++;
        else if (!strcmp(a, "--data") && v)
            data = v, i++;
        else if (!strcmp(a, "--name") && v)
            name = v, i++;
        else if (!strcmp(a, "--auth") && v)
            mode = v, i++;
        else {
            fprintf(stderr, "georeg serve: unknown or incomplete option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    static struct cfg cfg;
    char why[512];
    cfg_defaults(&cfg);
    if (cfg_load(&cfg, config, why, sizeof why)) {
        fprintf(stderr, "georeg: config: %s\n", why);
        return 2;
    }
    if (listen)
        str_copy(cfg.listen, sizeof cfg.listen, listen);
    if (data)
        str_copy(cfg.data_dir, sizeof cfg.data_dir, data);
    if (name)
        str_copy(cfg.name, sizeof cfg.name, name);
    if (mode && (cfg.auth_mode = cfg_parse_auth_mode(mode)) < 0) {
        fprintf(stderr, "georeg: --auth %s: expected token, basic or none\n", mode);
        cfg_release(&cfg);
        return 2;
    }
    if (cfg_validate(&cfg, why, sizeof why)) {
        fprintf(stderr, "georeg: config: %s\n", why);
        cfg_release(&cfg);
        return 2;
    }
    log_set_level(cfg.log_level);

    /* storage steps of every loop share libuv's pool: size it before first use */
    char pool[16];
    unsigned ncpu = uv_available_parallelism();
    snprintf(pool, sizeof pool, "%u", ncpu * 4 < 8 ? 8 : ncpu * 4);
    setenv("UV_THREADPOOL_SIZE", pool, 0);

    struct node *n = NULL;
    err e = node_open(&cfg, &n);
    if (e) {
        fprintf(stderr, "georeg: cannot start (%s): see the error logged above\n", err_str(e));
        cfg_release(&cfg);
        return 1;
    }
    e = node_run(n);
    bool stuck = node_nng_stuck(n);
    node_close(n);
    cfg_release(&cfg);
    if (stuck) {
        /* nng_fini (and the exit handlers) would wait for the connection nng could
         * not close: shutdown must finish within the drain timeout */
        fflush(stderr);
        _exit(e ? 1 : 0);
    }
    nng_fini(); /* nng's threads and queued messages go before the process does */
    return e ? 1 : 0;
}

int
main(int argc, char **argv)
{
    /* a peer that goes away must cost us an EPIPE, not the process */
    signal(SIGPIPE, SIG_IGN);
    /* few malloc arenas: the pool's threads otherwise each keep their own, and the
     * process holds on to memory it used once (measured: 130 MiB peak, see
     * docs/BENCHMARKS.md) */
    mallopt(M_ARENA_MAX, 2);
    /* Replication moves blob bytes in 1 MiB nng messages, allocated for every chunk
     * on both sides. Above glibc's default 128 KiB mmap threshold each one is a
     * fresh mmap whose pages fault in and go back on free: on this VM that held
     * nng pair1 on loopback to 495-577 MiB/s, with page faults the top of the
     * profile; keeping such buffers on the heap (threshold 4 MiB, trimmed only
     * past 32 MiB, and by malloc_trim in housekeeping every 5 s) lets the same
     * socket move 840-943 MiB/s over the bench's 256 messages and 1,500-1,850
     * over 2,048 (scripts/bench/nngstream.c, docs/BENCHMARKS.md). Setting either value turns off glibc's own sliding
     * threshold, so both are set. */
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    mallopt(M_TRIM_THRESHOLD, 32 << 20);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "serve"))
        return cmd_serve(argc - 2, argv + 2);
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("georeg %s\n", GEOREG_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage(stdout);
        return 0;
    }
    int rc = cli_main(cmd, argc - 2, argv + 2);
    if (rc == -1) {
        fprintf(stderr, "georeg: unknown command %s\n", cmd);
        usage(stderr);
        return 2;
    }
    return rc;
}
