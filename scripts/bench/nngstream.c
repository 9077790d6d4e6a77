/* nngstream: the replication transport's own ceiling. Sends 256 messages of 1 MiB
 * over one nng pair1 tcp:// connection on loopback (the socket type and options
 * georeg's replication uses: send buffer 64, receive buffer 256) and prints
 * {"mib_per_s": X}. No georeg code: just nng, as Debian ships it.
 *
 * nngstream URL [default|georeg]: "georeg" first applies the malloc settings
 * georeg's main() applies (M_MMAP_THRESHOLD 4 MiB, M_TRIM_THRESHOLD 32 MiB);
 * "default" (the default) leaves glibc's, under which every 1 MiB message is a
 * fresh mmap whose pages fault in on both sides. */
#include <malloc.h>
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N 256
#define SZ (1 << 20)

static nng_socket srv;

static void *
rx(void *a)
{
    (void)a;
    for (int i = 0; i < N; i++) {
        nng_msg *m;
        if (nng_recvmsg(srv, &m, 0) != 0)
            exit(1);
        nng_msg_free(m);
    }
    return NULL;
}

int
main(int argc, char **argv)
{
    const char *url = argc > 1 ? argv[1] : "tcp://127.0.0.1:7999";
    if (argc > 2 && !strcmp(argv[2], "georeg")) {
        mallopt(M_MMAP_THRESHOLD, 4 << 20);
        mallopt(M_TRIM_THRESHOLD, 32 << 20);
    }
    nng_socket cli;
    if (nng_pair1_open(&srv) || nng_pair1_open(&cli))
        return 1;
    nng_socket_set_size(srv, NNG_OPT_RECVMAXSZ, 16 << 20);
    nng_socket_set_int(cli, NNG_OPT_SENDBUF, 64);
    nng_socket_set_int(srv, NNG_OPT_RECVBUF, 256);
    if (nng_listen(srv, url, NULL, 0) || nng_dial(cli, url, NULL, 0))
        return 1;
    pthread_t t;
    pthread_create(&t, NULL, rx, NULL);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < N; i++) {
        nng_msg *m;
        if (nng_msg_alloc(&m, SZ))
            return 1;
        memset(nng_msg_body(m), i, SZ);
        if (nng_sendmsg(cli, m, 0))
            return 1;
    }
    pthread_join(t, NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    printf("{\"mib_per_s\": %.1f, \"seconds\": %.3f}\n", N / s, s);
    nng_close(cli);
    nng_close(srv);
    return 0;
}
