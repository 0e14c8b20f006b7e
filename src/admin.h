/* admin.h - the admin surface: GET /metrics (and, as issue 7 grows, the
 * dashboard and its API) on a listener of its own, loopback by default.
 * Every request must carry the admin token ("Authorization: Bearer T", or
 * the dashboard's cookie); without a token configured there is no admin
 * listener at all. Owned by the loop thread. */
#ifndef FB_ADMIN_H
#define FB_ADMIN_H

#include <stddef.h>
#include "common.h"
#include "server.h"

struct event_base;
typedef struct fb_admin fb_admin;

/* What the admin surface asks of the daemon (called on the loop). */
typedef struct fb_admin_hooks {
    /* The /metrics text, malloc'd (the admin frees it); NULL on ENOMEM. */
    char *(*metrics)(void *ud, size_t *len);
} fb_admin_hooks;

/* Listen on host:port (port 0: any; *bound_port gets it) with the given
 * token (copied; only its SHA-256 is kept). NULL and a logged reason on
 * failure. */
fb_admin *fb_admin_start(struct event_base *base, const fb_server_opts *so,
                         const char *host, int port, const char *token,
                         const fb_admin_hooks *hooks, void *ud,
                         int *bound_port);
/* Stop accepting; connections close after their answer. */
void fb_admin_drain(fb_admin *a);
void fb_admin_free(fb_admin *a);

#endif
