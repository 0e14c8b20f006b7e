/* log.h - one-line logs on stderr. Secrets never reach a log: callers
 * log key ids and prefixes, never key text or provider keys. */
#ifndef FB_LOG_H
#define FB_LOG_H

enum { FB_LOG_DEBUG, FB_LOG_INFO, FB_LOG_WARN, FB_LOG_ERROR };

/* "debug", "info", "warn", "error"; unknown names mean info. */
void fb_log_set_level(const char *name);
int fb_log_enabled(int level);
void fb_log(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
