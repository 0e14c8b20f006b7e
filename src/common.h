/* common.h - what every fusebox module shares: the one error enum, the
 * invariant check that stays on in release builds, and a few bounded
 * string helpers. Nothing here allocates. */
#ifndef FB_COMMON_H
#define FB_COMMON_H

#include <stddef.h>
#include <stdint.h>

typedef enum fb_err {
    FB_OK = 0,
    FB_ENOMEM,    /* allocation failed */
    FB_EINVAL,    /* bad argument or malformed input */
    FB_EIO,       /* the store or a file failed */
    FB_ENOTFOUND, /* no such key, model, scope, ... */
    FB_EEXIST,    /* already there */
    FB_EOVERFLOW, /* integer arithmetic would overflow */
    FB_ELIMIT,    /* a configured limit or ceiling was reached */
    FB_EAGAIN,    /* need more input */
    FB_EAUTH,     /* missing, unknown or revoked key */
    FB_EUPSTREAM, /* the provider failed */
    FB_EBUSY,     /* a conflict with another writer (a deadlock): again */
} fb_err;

/* Static text for an error code; never NULL. */
const char *fb_strerror(fb_err err);

/* Broken invariants abort, in release builds too. Never for outside data. */
#define FB_ASSERT(cond)                                                        \
    do {                                                                       \
        if (!(cond))                                                           \
            fb__assert_fail(#cond, __FILE__, __LINE__);                        \
    } while (0)
void fb__assert_fail(const char *expr, const char *file, int line)
    __attribute__((noreturn));

#define FB_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Copy at most cap-1 bytes of src and NUL-terminate; returns strlen(src).
 * Truncated when the return value >= cap. */
size_t fb_strlcpy(char *dst, const char *src, size_t cap);

/* malloc'd NUL-terminated copy of s[0..len); NULL on ENOMEM. */
char *fb_strndup(const char *s, size_t len);

/* Case-insensitive ASCII comparison of two byte ranges for equality. */
int fb_strcaseeq(const char *a, size_t alen, const char *b, size_t blen);

/* Clocks. Wall time (ms since the epoch, UTC) decides budget periods and
 * ledger timestamps; monotonic time (ns) measures durations.
 *
 * Tests set FUSEBOX_CLOCK_FILE to a file holding the wall time in ms:
 * while it holds a number, fb_wall_ms returns it (read at every call), so
 * a test moves the daemon's calendar (periods, alerts, expiry) at will.
 * Unset (always, in production), it costs one branch. */
int64_t fb_wall_ms(void);
int64_t fb_mono_ns(void);

#endif
