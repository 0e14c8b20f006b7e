/* alerts.h - alerts before the invoice. A thread of its own runs the rules
 * every alerts.every_seconds over the store (its own connection, never the
 * request path):
 *
 *   budget     a ceiling's period spend crossed 50/80/100% (configurable)
 *   rate       the last hour's spend of a tenant or job against the same
 *              hour of the seven days before (factor, and a minimum amount
 *              so that tiny jobs do not page anyone)
 *   rerun      a job started by fusebox run more than N times a UTC day, or
 *              one request (fingerprint) bought more than N times a day
 *   trip       a fuse tripped (by hand, a retry budget, or the breaker)
 *   breaker    optional: the last W minutes of a job against the same
 *              minutes of the seven days before; over the factor, the job
 *              is tripped, not only reported
 *
 * Each alert is raised once (its dedup key names the scope and the period,
 * hour or day), logged, and put in a durable outbox with a row per
 * destination (webhooks with fusebox's JSON or Slack's, a command that
 * reads the JSON on stdin). Deliveries are retried with growing backoff
 * up to alerts.max_attempts, then given up and logged: the alerting path
 * cannot become a retry storm of its own. What is pending survives a
 * restart. Time is fb_wall_ms (a test clock in tests). */
#ifndef FB_ALERTS_H
#define FB_ALERTS_H

#include "common.h"
#include "config.h"

typedef struct fb_alerts fb_alerts;

/* Open the store and start the thread; NULL (logged) on failure. */
fb_alerts *fb_alerts_start(const fb_config *c);
/* One round now, on the caller's thread (after any round in progress):
 * the rules, then the deliveries due. *summary (may be NULL) gets
 * malloc'd JSON: {"raised": [dedup...], "sent": n, "retrying": n,
 * "failed": n}. */
fb_err fb_alerts_round(fb_alerts *a, char **summary);
/* Ask the thread, and a round running on another thread, to stop soon
 * (deliveries left stay pending); fb_alerts_stop then joins and frees. */
void fb_alerts_request_stop(fb_alerts *a);
void fb_alerts_stop(fb_alerts *a);

#endif
