/* upstream.h - non-blocking calls to providers: libcurl's multi interface
 * driven by the event loop (HTTP/1.1 and HTTP/2, TLS, connection reuse,
 * HTTPS_PROXY from the environment). Headers and body bytes are handed
 * over as they arrive, so streams are never buffered whole. */
#ifndef FB_UPSTREAM_H
#define FB_UPSTREAM_H

#include <stddef.h>
#include "common.h"

struct event_base;
struct curl_slist;
typedef struct fb_upstream fb_upstream;
typedef struct fb_up_req fb_up_req;

typedef struct fb_up_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} fb_up_header;

typedef enum fb_up_fail {
    FB_UP_OK = 0,
    FB_UP_CONNECT, /* nothing was sent: not billed */
    FB_UP_TIMEOUT, /* sent, no complete answer in time */
    FB_UP_BROKEN,  /* sent, the exchange broke (reset, bad TLS, ...) */
} fb_up_fail;

typedef struct fb_up_cbs {
    /* The final status and headers (1xx skipped). */
    void (*on_head)(void *arg, int status, const fb_up_header *h, size_t n);
    void (*on_data)(void *arg, const char *data, size_t len);
    /* Last call; the fb_up_req is freed after it returns. */
    void (*on_done)(void *arg, fb_up_fail fail, const char *detail);
} fb_up_cbs;

typedef struct fb_upstream_opts {
    int connect_timeout_ms;
    int timeout_ms;
} fb_upstream_opts;

fb_upstream *fb_upstream_new(struct event_base *base,
                             const fb_upstream_opts *o);
/* Transfers still running are cancelled without callbacks. */
void fb_upstream_free(fb_upstream *u);

/* Start a call. headers is taken over (freed by the upstream). body must
 * stay valid until on_done. NULL on failure (headers freed); no callback
 * then fires. */
fb_up_req *fb_upstream_start(fb_upstream *u, const char *method,
                             const char *url, struct curl_slist *headers,
                             const char *body, size_t len,
                             const fb_up_cbs *cbs, void *arg);
/* Stop a call; no callback fires after this returns. Not from inside
 * one of its own callbacks. */
void fb_upstream_cancel(fb_up_req *r);
/* Pause or resume reading the answer (back-pressure from a slow client). */
void fb_upstream_pause(fb_up_req *r, int paused);

#endif
