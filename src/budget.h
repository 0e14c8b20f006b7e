/* budget.h - the fuse: in-memory ceilings and counters for every scope
 * (global, tenant, job, key), reserved all at once before an upstream
 * call and settled to the real cost after it. Owned by the event-loop
 * thread; the store is the durable truth these counters are rebuilt from. */
#ifndef FB_BUDGET_H
#define FB_BUDGET_H

#include <stdint.h>
#include "common.h"
#include "config.h"
#include "money.h"

typedef struct fb_budget fb_budget;
typedef struct fb_scope fb_scope;

#define FB_SCOPES_MAX 4 /* global, tenant, job, key */

/* What one request holds in each of its scopes until it settles. */
typedef struct fb_reservation {
    fb_scope *scope[FB_SCOPES_MAX];
    int64_t window[FB_SCOPES_MAX]; /* the period each share was taken in */
    uint32_t gen[FB_SCOPES_MAX];   /* and the scope's generation then */
    size_t n;
    fb_money amount;
} fb_reservation;

/* Details of a refusal, for the 402 body. */
typedef struct fb_refusal {
    const fb_scope *scope;
    fb_money limit;
    fb_money spent;
    fb_money reserved;
    fb_money request;
} fb_refusal;

fb_budget *fb_budget_new(void); /* NULL on ENOMEM */
void fb_budget_free(fb_budget *b);

/* The scope with this name ("global", "tenant:T", "job:T/J", "key:ID"),
 * created without a ceiling on first use. NULL on ENOMEM. Scopes live as
 * long as the budget. */
fb_scope *fb_budget_scope(fb_budget *b, const char *name);
/* Find without creating; NULL if absent. */
fb_scope *fb_budget_find(fb_budget *b, const char *name);
/* Iterate the scopes: start with *it = 0; 0 at the end. */
int fb_budget_next(fb_budget *b, size_t *it, fb_scope **s);

/* Set the ceiling (spec->set == 0 removes it). */
void fb_scope_set_limit(fb_scope *s, const fb_budget_spec *spec);
/* Seed the counters from the store: what was spent in the window that
 * starts at window_start. */
void fb_scope_seed(fb_scope *s, int64_t window_start, fb_money spent);
const char *fb_scope_name(const fb_scope *s);
/* "job:nightly" style name for messages (a job's tenant is dropped). */
const char *fb_scope_display(const fb_scope *s);
const fb_budget_spec *fb_scope_limit(const fb_scope *s);
/* Counters of the current window at now_ms. */
void fb_scope_counters(fb_scope *s, int64_t now_ms, fb_money *spent,
                       fb_money *reserved);

/* Start of the period containing now_ms (UTC); 0 for FB_PERIOD_NONE. */
int64_t fb_period_start(fb_period p, int64_t now_ms);

/* Reserve amount in every scope, or in none: FB_ELIMIT and *why filled
 * when any ceiling would be passed, FB_EOVERFLOW when a counter would
 * overflow; FB_EAGAIN when a leased scope's slice is short (why->scope
 * the scope, why->request what it lacks). r is filled on success. */
fb_err fb_budget_reserve(fb_scope *const *scopes, size_t n, fb_money amount,
                         int64_t now_ms, fb_reservation *r, fb_refusal *why);
/* Replace the reservation by the real cost (which may exceed it: the
 * ledger never under-counts). A share taken in a period that has since
 * ended is dropped from the counters (the store keeps it). */
void fb_budget_settle(fb_reservation *r, fb_money cost);

/* ---- leases: a cluster's ceilings (budget.c's note 5) ---- */

/* Reserve this scope within the slices the store grants this node. */
void fb_scope_lease(fb_scope *s);
int fb_scope_leased(const fb_scope *s); /* leased and with a ceiling */
/* The scope's current window (rolled to now_ms). */
int64_t fb_scope_window(fb_scope *s, int64_t now_ms);
/* A slice granted for window (dropped if the window moved on). */
void fb_scope_grant(fb_scope *s, int64_t window, fb_money amount);
/* What the slice holds beyond spent and reserved (negative when a call
 * cost more than it reserved); *idle_ms since the last reserve. */
fb_money fb_scope_slack(fb_scope *s, int64_t now_ms, int64_t *idle_ms);
/* Give amount of the slice back (the caller tells the store). */
void fb_scope_shrink(fb_scope *s, fb_money amount);
/* This node was reaped and joined again as a new node: every leased
 * scope starts over (no slice, no counters); shares reserved before are
 * dropped when they settle (the reaper charged them). */
void fb_budget_forget_leases(fb_budget *b);
/* The caller's flag: a take for this scope is on its way. */
int *fb_scope_taking(fb_scope *s);
/* What the pool had handed out at the last take; and from it, what the
 * cluster spent for a 402's body: handed out, less this node's unused
 * slice and its calls in flight (other nodes' unused slices count). */
void fb_scope_pool(fb_scope *s, fb_money taken);
fb_money fb_scope_pool_spent(fb_scope *s);

#endif
