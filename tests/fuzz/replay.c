/* A libFuzzer-compatible main for replaying stored inputs without clang: linked with
 * one driver (fuzz_<name>.c) and built with gcc and ASan/UBSan, it calls the
 * driver's LLVMFuzzerInitialize once and LLVMFuzzerTestOneInput once per file named
 * on the command line (directories: every regular file in them, in name order).
 * `make fuzz-regress` runs it over the committed corpus and crash reproducers of
 * every driver, so a bug the fuzzers found stays found on machines without clang.
 *
 * Exit status: 0 when every input ran (a driver's FUZZ_CHECK or a sanitizer aborts
 * the process, which fails the run), 2 on a file that cannot be read. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define FUZZ_NAME "replay"
#include "fuzz.h"

/* The largest input replayed; the drivers' -max_len is at most 16 KiB. */
#define REPLAY_MAX (1u << 20)

/* LLVMFuzzerMutate is libFuzzer's; a driver with a custom mutator refers to it but
 * replaying never mutates. */
size_t
LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size)
{
    (void)data;
    (void)max_size;
    return size;
}

/* A driver without LLVMFuzzerInitialize gets this one. */
__attribute__((weak)) int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

static unsigned long replayed;

static int
replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return 2;
    }
    uint8_t *data = malloc(REPLAY_MAX);
    if (!data) {
        fclose(f);
        fprintf(stderr, "replay: out of memory\n");
        return 2;
    }
    size_t n = fread(data, 1, REPLAY_MAX, f);
    int bad = ferror(f) || (n == REPLAY_MAX && fgetc(f) != EOF);
    fclose(f);
    if (bad) {
        free(data);
        fprintf(stderr, "replay: %s: unreadable or larger than %u bytes\n", path, REPLAY_MAX);
        return 2;
    }
    /* an exact-size copy, as libFuzzer hands inputs over: ASan sees overreads */
    uint8_t *exact = malloc(n ? n : 1);
    if (!exact) {
        free(data);
        fprintf(stderr, "replay: out of memory\n");
        return 2;
    }
    memcpy(exact, data, n);
    free(data);
    if (getenv("GEOREG_REPLAY_VERBOSE"))
        fprintf(stderr, "replay: %s (%zu bytes)\n", path, n);
    LLVMFuzzerTestOneInput(n ? exact : NULL, n);
    free(exact);
    replayed++;
    return 0;
}

static int
cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int
replay_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return 2;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            char **nn = realloc(names, nc * sizeof *nn);
            if (!nn) {
                rc = 2;
                break;
            }
            names = nn;
            cap = nc;
        }
        size_t len = strlen(dir) + strlen(de->d_name) + 2;
        if (!(names[n] = malloc(len))) {
            rc = 2;
            break;
        }
        snprintf(names[n++], len, "%s/%s", dir, de->d_name);
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, cmp_names);
    for (size_t i = 0; i < n; i++) {
        struct stat st;
        if (!rc && stat(names[i], &st) == 0 && S_ISREG(st.st_mode))
            rc = replay_file(names[i]);
        free(names[i]);
    }
    free(names);
    return rc;
}

int
main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
        return 2;
    }
    LLVMFuzzerInitialize(&argc, &argv);
    int rc = 0;
    for (int i = 1; i < argc && !rc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            rc = 2;
        } else {
            rc = S_ISDIR(st.st_mode) ? replay_dir(argv[i]) : replay_file(argv[i]);
        }
    }
    fprintf(stderr, "replay: %s: %lu inputs%s\n", argv[0], replayed, rc ? ", FAILED" : "");
    return rc;
}
