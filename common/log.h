/* Structured logging: one `key=value` line per event on stderr, with a level and a
 * stable event id (REPL-PEER-UNREACHABLE). The level is checked before arguments
 * are evaluated. Never pass a secret to a log call. */
#ifndef GEOREG_LOG_H
#define GEOREG_LOG_H

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

/* The process-wide log threshold; set once at start with log_set_level. */
extern int log_level_;

/* log_set_level sets the threshold; log_level_parse maps "error|warn|info|debug",
 * returning -1 for anything else. */
void log_set_level(int level);
int log_level_parse(const char *s);

/* log_write emits one line: ts, level, event, then the formatted key=value pairs.
 * Use the LOG_* macros instead so disabled levels cost nothing. */
void log_write(int level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define LOG_AT(lvl, event, ...)                                                                    \
    do {                                                                                           \
        if ((lvl) <= log_level_)                                                                   \
            log_write((lvl), (event), __VA_ARGS__);                                                \
    } while (0)
#define log_error(event, ...) LOG_AT(LOG_ERROR, event, __VA_ARGS__)
#define log_warn(event, ...) LOG_AT(LOG_WARN, event, __VA_ARGS__)
#define log_info(event, ...) LOG_AT(LOG_INFO, event, __VA_ARGS__)
#define log_debug(event, ...) LOG_AT(LOG_DEBUG, event, __VA_ARGS__)

#endif
