/* dashboard.h - GET /dashboard: one HTML page, rendered here with inline
 * SVG charts; no script and no external asset, so it works without any
 * network and loads as fast as its queries. Everything read from the store
 * comes from the hourly rollup and small indexed tables, so a ledger of a
 * million rows costs what the hours on show cost. Runs on the admin
 * surface's report thread (admin.c), never on the request path. */
#ifndef FB_DASHBOARD_H
#define FB_DASHBOARD_H

#include <stddef.h>
#include "config.h"
#include "store.h"

/* A budget scope as the daemon holds it right now (copied on the loop). */
typedef struct fb_dash_budget {
    char scope[2 * FB_NAME_MAX + 16];
    fb_budget_spec spec;
    fb_money spent;    /* in the current period, in flight included */
    fb_money reserved; /* in flight now */
} fb_dash_budget;

typedef struct fb_dash_in {
    const fb_config *c;
    int64_t now_ms;
    int store_ok;
    const fb_dash_budget *budgets;
    size_t nbudgets;
    const char *notice; /* shown on top (after a trip or reset); or NULL */
} fb_dash_in;

/* The page, malloc'd (caller frees); NULL when the store cannot be read. */
char *fb_dash_render(fb_store *s, const fb_dash_in *in, size_t *len);

/* The sign-in page (a form that posts the admin token); msg may be NULL. */
char *fb_dash_login(const char *msg, size_t *len);

#endif
