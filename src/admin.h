/* admin.h - the admin surface: GET /metrics and the dashboard on a
 * listener of its own, loopback by default. Every request must carry the
 * admin token ("Authorization: Bearer T", or the cookie the dashboard's
 * sign-in sets); without a token configured there is no admin listener.
 *
 * The dashboard reads the store on a thread of its own with its own
 * connection: a slow page never holds up the gateway's loop. Trips and
 * resets from the dashboard are written to the store like `fusebox trip`
 * does, and reach the gateway through its change feed. Owned by the loop
 * thread (the report thread is internal). */
#ifndef FB_ADMIN_H
#define FB_ADMIN_H

#include <stddef.h>
#include "common.h"
#include "config.h"
#include "dashboard.h"
#include "server.h"

struct event_base;
typedef struct fb_admin fb_admin;

/* What the admin surface asks of the daemon (called on the loop). */
typedef struct fb_admin_hooks {
    /* The /metrics text, malloc'd (the admin frees it); NULL on ENOMEM. */
    char *(*metrics)(void *ud, size_t *len);
    /* The budget scopes with a ceiling, now: a malloc'd array (the admin
     * frees it) and its length. */
    fb_dash_budget *(*budgets)(void *ud, size_t *n);
    int (*store_ok)(void *ud);
    /* POST /alerts/run: one round of the alert rules now (alerts.h), on
     * the report thread; NULL when alerts are off. */
    struct fb_alerts *alerts;
} fb_admin_hooks;

/* Listen on c's admin host:port (port 0: any; *bound_port gets it) with
 * the given token (only its SHA-256 is kept); open the report thread's
 * store connection. NULL and a logged reason on failure. */
fb_admin *fb_admin_start(struct event_base *base, const fb_config *c,
                         const fb_server_opts *so, const char *token,
                         const fb_admin_hooks *hooks, void *ud,
                         int *bound_port);
/* Stop accepting; connections close after their answer. */
void fb_admin_drain(fb_admin *a);
/* Answer what is pending (503), stop the thread, close. */
void fb_admin_free(fb_admin *a);

#endif
