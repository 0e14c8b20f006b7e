/* metrics.h - the daemon's counters and histograms, and GET /metrics in
 * the Prometheus text exposition format (version 0.0.4).
 *
 * Counters are kept per (tenant, job) since the process started; gauges
 * (budgets, trips, the store) are read from their owners when rendered.
 * Label cardinality is bounded: at most FB_METRICS_MAX_SERIES (tenant,
 * job) pairs and as many budget scopes; past that, calls count under
 * tenant="_other", job="_other", overflow="1" (and in
 * fusebox_metrics_overflow_total), and further scopes are left out
 * (fusebox_metrics_scopes_dropped). Owned by the loop thread. */
#ifndef FB_METRICS_H
#define FB_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include "money.h"

#define FB_METRICS_MAX_SERIES 1000

struct fb_budget;
struct fb_replay;
typedef struct fb_metrics fb_metrics;

fb_metrics *fb_metrics_new(void); /* NULL on ENOMEM */
void fb_metrics_free(fb_metrics *m);

/* A forwarded call settled at cost after ns (paid when cost > 0); retry:
 * the client marked it a retry. */
void fb_metrics_paid(fb_metrics *m, const char *tenant, const char *job,
                     fb_money cost, int retry, int64_t ns);
/* A call answered from a kept result that cost `saved` when bought. */
void fb_metrics_replayed(fb_metrics *m, const char *tenant, const char *job,
                         fb_money saved, int64_t ns);
/* A call refused by a fuse; reason is the error type
 * ("budget_exceeded", "fuse_tripped", "retry_budget_exhausted"). */
void fb_metrics_blocked(fb_metrics *m, const char *tenant, const char *job,
                        const char *reason);
/* A fuse blew (a trip was set by the gateway itself). */
void fb_metrics_tripped(fb_metrics *m, const char *tenant, const char *job);

/* What the gauges are read from when rendering. */
typedef struct fb_metrics_src {
    struct fb_budget *budget;
    struct fb_replay *replay;
    int64_t now_ms;
    int store_ok;
    size_t ledger_backlog;
    uint64_t store_round_trips; /* to a shared store; 0 on SQLite */
    uint64_t lease_round_trips; /* of them, budget slices taken or given */
    size_t connections;
    size_t in_flight;
} fb_metrics_src;

/* The exposition text; malloc'd (caller frees), *len its length. NULL on
 * ENOMEM. */
char *fb_metrics_render(fb_metrics *m, const fb_metrics_src *src,
                        size_t *len);

#endif
