/* budget.c - ceilings and counters per scope, all on the event-loop
 * thread.
 *
 * NOTES ON RESERVATION AND SETTLEMENT
 *  1. A request reserves its worst-case cost in all its scopes at once,
 *     or in none, before anything is sent upstream. Since the loop is one
 *     thread, check-then-add cannot interleave with another request.
 *  2. For every scope with a ceiling, spent + reserved <= limit holds
 *     after every reserve; settlement moves a share from reserved to
 *     spent at the real cost.
 *  3. Each share remembers the period window it was taken in. When the
 *     window rolls the counters restart at zero; a late settlement of an
 *     old window's share does not touch the new window.
 *  4. The store is the truth: counters are seeded from it at start (with
 *     crashed reservations charged in full), so a restart never forgets
 *     money.
 *  5. In a cluster (a shared store) a scope with a ceiling is leased: the
 *     counters are this node's, and spent + reserved <= slice, the part
 *     of the ceiling the store granted this node (store_pg.c's notes).
 *     Past its slice a reserve answers FB_EAGAIN with the amount needed:
 *     the caller takes more and tries again. */
#include "budget.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "map.h"
#include "store.h"

struct fb_scope {
    char *name;
    char *display;
    fb_budget_spec spec;
    int64_t window; /* start of the current period, ms */
    fb_money spent;
    fb_money reserved;
    int leased;       /* a cluster's: reserve within slice */
    fb_money slice;   /* granted to this node in this window */
    int taking;       /* a take is on its way (the caller's flag) */
    fb_money taken;   /* the pool's handed-out total at the last take */
    int64_t used_ms;  /* last reserve, wall ms: idle slices go back */
    uint32_t gen;     /* bumped when a reaped node forgets its slices */
};

struct fb_budget {
    fb_map *scopes;
};

fb_budget *fb_budget_new(void)
{
    fb_budget *b = calloc(1, sizeof *b);
    if (b == NULL)
        return NULL;
    b->scopes = fb_map_new();
    if (b->scopes == NULL) {
        free(b);
        return NULL;
    }
    return b;
}

static void scope_free(void *p)
{
    fb_scope *s = p;
    free(s->name);
    free(s->display);
    free(s);
}

void fb_budget_free(fb_budget *b)
{
    if (b == NULL)
        return;
    fb_map_free(b->scopes, scope_free);
    free(b);
}

int fb_budget_next(fb_budget *b, size_t *it, fb_scope **s)
{
    const char *k;
    size_t klen;
    void *v;
    if (!fb_map_next(b->scopes, it, &k, &klen, &v))
        return 0;
    *s = v;
    return 1;
}

fb_scope *fb_budget_find(fb_budget *b, const char *name)
{
    return fb_map_get(b->scopes, name, strlen(name));
}

/* "job:T/J" shows as "job:J" (the name people gave their job); other
 * scopes show as named. */
static char *display_name(const char *name)
{
    const char *slash = strchr(name, '/');
    char out[FB_NAME_MAX + 8];
    if (strncmp(name, "job:", 4) != 0 || slash == NULL)
        return fb_strndup(name, strlen(name));
    snprintf(out, sizeof out, "job:%s", slash + 1);
    return fb_strndup(out, strlen(out));
}

fb_scope *fb_budget_scope(fb_budget *b, const char *name)
{
    size_t len = strlen(name);
    fb_scope *s = fb_map_get(b->scopes, name, len);
    if (s != NULL)
        return s;
    s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->name = fb_strndup(name, len);
    s->display = display_name(name);
    if (s->name == NULL || s->display == NULL ||
        fb_map_put(b->scopes, name, len, s, NULL) != FB_OK) {
        scope_free(s);
        return NULL;
    }
    return s;
}

void fb_scope_set_limit(fb_scope *s, const fb_budget_spec *spec)
{
    s->spec = *spec;
}

void fb_scope_seed(fb_scope *s, int64_t window_start, fb_money spent)
{
    s->window = window_start;
    s->spent = spent;
    s->reserved = 0;
}

const char *fb_scope_name(const fb_scope *s)
{
    return s->name;
}

const char *fb_scope_display(const fb_scope *s)
{
    return s->display;
}

const fb_budget_spec *fb_scope_limit(const fb_scope *s)
{
    return &s->spec;
}

int64_t fb_period_start(fb_period p, int64_t now_ms)
{
    const int64_t hour = 3600 * INT64_C(1000), day = 24 * hour;
    switch (p) {
    case FB_PERIOD_NONE: return 0;
    case FB_PERIOD_HOUR: return now_ms - now_ms % hour;
    case FB_PERIOD_DAY: return now_ms - now_ms % day;
    case FB_PERIOD_MONTH: {
        time_t t = (time_t)(now_ms / 1000);
        struct tm tm;
        gmtime_r(&t, &tm);
        tm.tm_mday = 1;
        tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
        return (int64_t)timegm(&tm) * 1000;
    }
    }
    return 0;
}

/* Bring the scope's window up to now; counters restart in a new period.
 * Only forward: a wall clock stepped back into an earlier period must not
 * empty the counters (that would spend the ceiling twice); calls go on
 * counting in the later window until the clock catches up. */
static void roll(fb_scope *s, int64_t now_ms)
{
    int64_t w = fb_period_start(s->spec.period, now_ms);
    if (w > s->window) {
        s->window = w;
        s->spent = 0;
        s->reserved = 0;
        s->slice = 0; /* the old window's slice is of no use now */
    }
}

void fb_scope_counters(fb_scope *s, int64_t now_ms, fb_money *spent,
                       fb_money *reserved)
{
    roll(s, now_ms);
    *spent = s->spent;
    *reserved = s->reserved;
}

fb_err fb_budget_reserve(fb_scope *const *scopes, size_t n, fb_money amount,
                         int64_t now_ms, fb_reservation *r, fb_refusal *why)
{
    FB_ASSERT(n <= FB_SCOPES_MAX);
    FB_ASSERT(amount >= 0);
    memset(r, 0, sizeof *r);
    for (size_t i = 0; i < n; i++) {
        fb_scope *s = scopes[i];
        fb_money used, after;
        roll(s, now_ms);
        if (fb_money_add(s->spent, s->reserved, &used) != FB_OK ||
            fb_money_add(used, amount, &after) != FB_OK)
            return FB_EOVERFLOW;
        if (s->spec.set && after > s->spec.limit) {
            why->scope = s;
            why->limit = s->spec.limit;
            why->spent = s->spent;
            why->reserved = s->reserved;
            why->request = amount;
            return FB_ELIMIT;
        }
        if (s->spec.set && s->leased && after > s->slice) {
            why->scope = s;
            why->limit = s->spec.limit;
            why->spent = s->spent;
            why->reserved = s->reserved;
            why->request = after - s->slice; /* what the slice lacks */
            return FB_EAGAIN;
        }
    }
    for (size_t i = 0; i < n; i++) {
        scopes[i]->reserved += amount; /* checked above */
        scopes[i]->used_ms = now_ms;
        r->scope[i] = scopes[i];
        r->window[i] = scopes[i]->window;
        r->gen[i] = scopes[i]->gen;
    }
    r->n = n;
    r->amount = amount;
    return FB_OK;
}

void fb_budget_settle(fb_reservation *r, fb_money cost)
{
    for (size_t i = 0; i < r->n; i++) {
        fb_scope *s = r->scope[i];
        if (s->window != r->window[i] || s->gen != r->gen[i])
            continue;
        s->reserved -= r->amount;
        if (fb_money_add(s->spent, cost, &s->spent) != FB_OK)
            s->spent = FB_MONEY_MAX; /* saturate: never under-count */
    }
    r->n = 0;
}

/* ---- leases (a cluster) ---- */

void fb_scope_lease(fb_scope *s)
{
    s->leased = 1;
}

int fb_scope_leased(const fb_scope *s)
{
    return s->leased && s->spec.set;
}

int64_t fb_scope_window(fb_scope *s, int64_t now_ms)
{
    roll(s, now_ms);
    return s->window;
}

void fb_scope_grant(fb_scope *s, int64_t window, fb_money amount)
{
    if (window == s->window && fb_money_add(s->slice, amount, &s->slice) !=
                                   FB_OK)
        s->slice = FB_MONEY_MAX;
}

fb_money fb_scope_slack(fb_scope *s, int64_t now_ms, int64_t *idle_ms)
{
    roll(s, now_ms);
    *idle_ms = now_ms - s->used_ms;
    return s->slice - s->spent - s->reserved;
}

void fb_scope_shrink(fb_scope *s, fb_money amount)
{
    s->slice -= amount;
}

void fb_budget_forget_leases(fb_budget *b)
{
    size_t it = 0;
    fb_scope *s;
    while (fb_budget_next(b, &it, &s)) {
        if (!s->leased)
            continue;
        s->gen++;
        s->slice = s->spent = s->reserved = 0;
    }
}

int *fb_scope_taking(fb_scope *s)
{
    return &s->taking;
}

void fb_scope_pool(fb_scope *s, fb_money taken)
{
    s->taken = taken;
}

fb_money fb_scope_pool_spent(fb_scope *s)
{
    fb_money v = s->taken - (s->slice - s->spent - s->reserved) - s->reserved;
    return v < 0 ? 0 : v;
}
