/* The stderr log sink. One write(2) per line so lines from several threads never
 * interleave. */
#include "log.h"
#include "clock.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "banned.h"

int log_level_ = LOG_INFO;

static const char *const log_names[] = {"error", "warn", "info", "debug"};

void
log_set_level(int level)
{
    if (level >= LOG_ERROR && level <= LOG_DEBUG)
        log_level_ = level;
}

int
log_level_parse(const char *s)
{
    for (int i = 0; i <= LOG_DEBUG; i++)
        if (strcmp(s, log_names[i]) == 0)
            return i;
    if (strcmp(s, "warning") == 0)
        return LOG_WARN;
    return -1;
}

void
log_write(int level, const char *event, const char *fmt, ...)
{
    char line[2048];
    struct tm tm;
    uint64_t now = clock_wall_ms();
    time_t sec = (time_t)(now / 1000);
    gmtime_r(&sec, &tm);
    if (level < 0 || level > LOG_DEBUG)
        level = LOG_ERROR;
    int n = snprintf(line, sizeof line, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s event=%s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (long)(now % 1000), log_names[level], event);
    if (n < 0)
        return;
    if ((size_t)n < sizeof line) {
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
        va_end(ap);
        if (m > 0)
            n += m;
    }
    if ((size_t)n >= sizeof line - 1)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}
