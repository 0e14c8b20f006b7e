/* sse.h - server-sent events framing: cut a byte stream into complete
 * events (as raw bytes, to forward unchanged) and pull an event's data. */
#ifndef FB_SSE_H
#define FB_SSE_H

#include <stddef.h>
#include "common.h"

typedef struct fb_sse {
    char *buf;
    size_t len, cap, start;
    size_t line;    /* start of the line being read */
    size_t scan;    /* where the search for a line end resumes */
    int has_field;  /* a non-blank line was seen since start */
    size_t max;     /* an event longer than this is an error */
} fb_sse;

void fb_sse_init(fb_sse *s, size_t max_event);
void fb_sse_free(fb_sse *s);
/* Append bytes. FB_ENOMEM, or FB_ELIMIT when an event grows past max. */
fb_err fb_sse_feed(fb_sse *s, const char *data, size_t len);
/* Next complete event (with its terminating blank line): 1, and ev, len
 * point into s until the next feed; 0 when none is complete. */
int fb_sse_next(fb_sse *s, const char **ev, size_t *len);
/* Bytes of an unfinished event still held (forwarded at end of stream). */
const char *fb_sse_rest(const fb_sse *s, size_t *len);
/* The event's data lines joined by '\n' into out (at most cap-1 bytes,
 * NUL-terminated); returns the full length (truncated if >= cap). */
size_t fb_sse_data(const char *ev, size_t len, char *out, size_t cap);

#endif
