/* tcpstream: single-stream loopback TCP throughput, the transport limit that
 * bench.py prints beside georeg's push and replication figures.
 *
 *   tcpstream [SECONDS] [BUFSIZE]     prints {"mib_per_s": X, "bytes": N, "seconds": S}
 *
 * One thread writes BUFSIZE-byte buffers (default 256 KiB) for SECONDS
 * (default 2) into a connected 127.0.0.1 socket; the main thread reads them. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double secs = 2.0;
static size_t bufsize = 256 * 1024;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *sender(void *arg)
{
    int fd = *(int *)arg;
    char *buf = malloc(bufsize);
    if (!buf)
        return NULL;
    memset(buf, 0x5a, bufsize);
    double end = now() + secs;
    while (now() < end) {
        size_t off = 0;
        while (off < bufsize) {
            ssize_t n = write(fd, buf + off, bufsize - off);
            if (n <= 0)
                goto out;
            off += (size_t)n;
        }
    }
out:
    shutdown(fd, SHUT_WR);
    free(buf);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        secs = atof(argv[1]);
    if (argc > 2)
        bufsize = (size_t)atol(argv[2]);
    if (secs <= 0 || bufsize == 0) {
        fprintf(stderr, "usage: tcpstream [SECONDS] [BUFSIZE]\n");
        return 2;
    }
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1) ||
        getsockname(ls, (struct sockaddr *)&a, &alen)) {
        perror("tcpstream: listen");
        return 1;
    }
    int cs = socket(AF_INET, SOCK_STREAM, 0);
    if (cs < 0 || connect(cs, (struct sockaddr *)&a, sizeof a)) {
        perror("tcpstream: connect");
        return 1;
    }
    int rs = accept(ls, NULL, NULL);
    if (rs < 0) {
        perror("tcpstream: accept");
        return 1;
    }
    pthread_t th;
    pthread_create(&th, NULL, sender, &cs);
    char *buf = malloc(bufsize);
    uint64_t total = 0;
    double t0 = now();
    for (;;) {
        ssize_t n = read(rs, buf, bufsize);
        if (n <= 0)
            break;
        total += (uint64_t)n;
    }
    double el = now() - t0;
    pthread_join(th, NULL);
    printf("{\"mib_per_s\": %.1f, \"bytes\": %llu, \"seconds\": %.3f}\n",
           total / el / (1024.0 * 1024.0), (unsigned long long)total, el);
    free(buf);
    close(rs);
    close(cs);
    close(ls);
    return 0;
}
