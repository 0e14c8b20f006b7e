/* metrics.c - counters per (tenant, job), latency histograms, and their
 * Prometheus text rendering; see metrics.h. Money is rendered as exact
 * decimal text (Prometheus reads it as a float; the text is exact). */
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "budget.h"
#include "map.h"
#include "replay.h"

enum { BLOCK_BUDGET, BLOCK_TRIPPED, BLOCK_RETRY, BLOCK_OTHER, BLOCK__N };
static const char *const block_names[BLOCK__N] = {
    "budget_exceeded", "fuse_tripped", "retry_budget_exhausted", "other"};

/* Upper bounds in microseconds: 0.5 ms to 60 s, then +Inf. */
static const int64_t bucket_us[] = {500,     1000,    2500,    5000,
                                    10000,   25000,   50000,   100000,
                                    250000,  500000,  1000000, 2500000,
                                    5000000, 10000000, 30000000, 60000000};
#define NBUCKETS (sizeof bucket_us / sizeof bucket_us[0])

typedef struct hist {
    uint64_t count[NBUCKETS + 1]; /* per bucket, not cumulative; last +Inf */
    uint64_t n;
    int64_t sum_ns;
} hist;

typedef struct series {
    char *tenant, *job;
    int64_t forwarded, paid, replayed, retries, trips;
    int64_t blocked[BLOCK__N];
    fb_money spent, saved;
} series;

struct fb_metrics {
    fb_map *series; /* "tenant\x1fjob" -> series* */
    series other;   /* past FB_METRICS_MAX_SERIES */
    int64_t overflow; /* calls counted in "other" */
    size_t dropped;   /* budget scopes left out of the last render */
    hist forward, replay;
};

static void series_free(void *p)
{
    series *s = p;
    free(s->tenant);
    free(s->job);
    free(s);
}

fb_metrics *fb_metrics_new(void)
{
    fb_metrics *m = calloc(1, sizeof *m);
    if (m == NULL)
        return NULL;
    m->series = fb_map_new();
    if (m->series == NULL) {
        free(m);
        return NULL;
    }
    m->other.tenant = "_other";
    m->other.job = "_other";
    return m;
}

void fb_metrics_free(fb_metrics *m)
{
    if (m == NULL)
        return;
    fb_map_free(m->series, series_free);
    free(m);
}

static series *get(fb_metrics *m, const char *tenant, const char *job)
{
    char key[512];
    int n = snprintf(key, sizeof key, "%s\x1f%s", tenant, job);
    if (n < 0 || (size_t)n >= sizeof key)
        return &m->other;
    series *s = fb_map_get(m->series, key, (size_t)n);
    if (s != NULL)
        return s;
    if (fb_map_count(m->series) >= FB_METRICS_MAX_SERIES) {
        m->overflow++;
        return &m->other;
    }
    s = calloc(1, sizeof *s);
    if (s == NULL)
        return &m->other;
    s->tenant = fb_strndup(tenant, strlen(tenant));
    s->job = fb_strndup(job, strlen(job));
    if (s->tenant == NULL || s->job == NULL ||
        fb_map_put(m->series, key, (size_t)n, s, NULL) != FB_OK) {
        series_free(s);
        return &m->other;
    }
    return s;
}

static void observe(hist *h, int64_t ns)
{
    size_t i = 0;
    while (i < NBUCKETS && ns > bucket_us[i] * 1000)
        i++;
    h->count[i]++;
    h->n++;
    h->sum_ns += ns;
}

void fb_metrics_paid(fb_metrics *m, const char *tenant, const char *job,
                     fb_money cost, int retry, int64_t ns)
{
    series *s = get(m, tenant, job);
    s->forwarded++;
    s->paid += cost > 0; /* as the ledger counts paid calls */
    s->spent += cost;
    s->retries += retry != 0;
    observe(&m->forward, ns);
}

void fb_metrics_replayed(fb_metrics *m, const char *tenant, const char *job,
                         fb_money saved, int64_t ns)
{
    series *s = get(m, tenant, job);
    s->replayed++;
    s->saved += saved;
    observe(&m->replay, ns);
}

void fb_metrics_blocked(fb_metrics *m, const char *tenant, const char *job,
                        const char *reason)
{
    int r = BLOCK_OTHER;
    for (int i = 0; i < BLOCK_OTHER; i++)
        if (strcmp(reason, block_names[i]) == 0)
            r = i;
    get(m, tenant, job)->blocked[r]++;
}

void fb_metrics_tripped(fb_metrics *m, const char *tenant, const char *job)
{
    get(m, tenant, job)->trips++;
}

/* ---- rendering ---- */

/* A label value: backslash, double quote and newline escaped. */
static void label(FILE *f, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            fprintf(f, "\\%c", *v);
        else if (*v == '\n')
            fputs("\\n", f);
        else
            fputc(*v, f);
    }
}

static void usd(FILE *f, fb_money v)
{
    char buf[32];
    fb_money_format(v, buf, sizeof buf);
    fputs(buf, f);
}

static void head(FILE *f, const char *name, const char *type,
                 const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* The labels of a series; the one past the bound also says overflow="1"
 * (a real tenant may be called _other). */
static void tj(FILE *f, const fb_metrics *m, const series *s)
{
    fputs("{tenant=\"", f);
    label(f, s->tenant);
    fputs("\",job=\"", f);
    label(f, s->job);
    fputc('"', f);
    if (s == &m->other)
        fputs(",overflow=\"1\"", f);
}

typedef enum {
    F_FORWARDED,
    F_PAID,
    F_REPLAYED,
    F_RETRIES,
    F_TRIPS,
    F_SPENT,
    F_SAVED
} field;

static void each_series(FILE *f, fb_metrics *m, field what,
                        const char *name)
{
    size_t it = 0;
    void *v;
    int done_other = 0;
    while (!done_other) {
        const series *s;
        if (fb_map_next(m->series, &it, NULL, NULL, &v)) {
            s = v;
        } else {
            done_other = 1;
            s = &m->other;
            if (s->forwarded + s->replayed + s->trips == 0 &&
                s->blocked[0] + s->blocked[1] + s->blocked[2] +
                        s->blocked[3] == 0)
                break;
        }
        fputs(name, f);
        tj(f, m, s);
        fputs("} ", f);
        switch (what) {
        case F_FORWARDED:
            fprintf(f, "%lld\n", (long long)s->forwarded);
            break;
        case F_PAID: fprintf(f, "%lld\n", (long long)s->paid); break;
        case F_REPLAYED: fprintf(f, "%lld\n", (long long)s->replayed); break;
        case F_RETRIES: fprintf(f, "%lld\n", (long long)s->retries); break;
        case F_TRIPS: fprintf(f, "%lld\n", (long long)s->trips); break;
        case F_SPENT: usd(f, s->spent); fputc('\n', f); break;
        case F_SAVED: usd(f, s->saved); fputc('\n', f); break;
        }
    }
}

static void blocked(FILE *f, fb_metrics *m)
{
    size_t it = 0;
    void *v;
    for (int last = 0; !last;) {
        const series *s;
        if (fb_map_next(m->series, &it, NULL, NULL, &v)) {
            s = v;
        } else {
            last = 1;
            s = &m->other;
        }
        for (int r = 0; r < BLOCK__N; r++) {
            if (s->blocked[r] == 0)
                continue;
            fputs("fusebox_blocked_calls_total", f);
            tj(f, m, s);
            fprintf(f, ",reason=\"%s\"} %lld\n", block_names[r],
                    (long long)s->blocked[r]);
        }
    }
}

/* One histogram family per path, without labels: every parser reads
 * it, and there are only two. */
static void histogram(FILE *f, const char *name, const char *help,
                      const hist *h)
{
    uint64_t cum = 0;
    head(f, name, "histogram", help);
    for (size_t i = 0; i <= NBUCKETS; i++) {
        cum += h->count[i];
        fprintf(f, "%s_bucket{le=\"", name);
        if (i == NBUCKETS)
            fputs("+Inf", f);
        else
            fprintf(f, "%lld.%06lld", (long long)(bucket_us[i] / 1000000),
                    (long long)(bucket_us[i] % 1000000));
        fprintf(f, "\"} %llu\n", (unsigned long long)cum);
    }
    fprintf(f, "%s_sum %lld.%09lld\n%s_count %llu\n", name,
            (long long)(h->sum_ns / 1000000000),
            (long long)(h->sum_ns % 1000000000), name,
            (unsigned long long)h->n);
}

/* Budget scopes: global, tenants, jobs, and keys that have a ceiling of
 * their own (a key without one would only repeat its job). */
static void budgets(FILE *f, fb_metrics *m, const fb_metrics_src *src)
{
    m->dropped = 0;
    static const char *const per[] = {"total", "hour", "day", "month"};
    static const char *const names[] = {
        "fusebox_budget_limit_usd", "fusebox_budget_spent_usd",
        "fusebox_budget_reserved_usd", "fusebox_budget_remaining_usd"};
    static const char *const helps[] = {
        "The ceiling of the scope in its period.",
        "Spent in the current period, calls in flight included.",
        "Reserved right now by calls in flight.",
        "What the ceiling leaves in the current period."};
    for (int g = 0; g < 4; g++) {
        head(f, names[g], "gauge", helps[g]);
        size_t it = 0, shown = 0;
        fb_scope *sc;
        while (fb_budget_next(src->budget, &it, &sc)) {
            const fb_budget_spec *spec = fb_scope_limit(sc);
            const char *name = fb_scope_name(sc);
            if ((g != 1 && g != 2 && !spec->set) ||
                (strncmp(name, "key:", 4) == 0 && !spec->set))
                continue;
            if (shown++ >= FB_METRICS_MAX_SERIES) {
                if (g == 0)
                    m->dropped++;
                continue;
            }
            fb_money spent, reserved;
            fb_scope_counters(sc, src->now_ms, &spent, &reserved);
            fprintf(f, "%s{scope=\"", names[g]);
            label(f, name);
            if (spec->set)
                fprintf(f, "\",period=\"%s", per[spec->period]);
            fputs("\"} ", f);
            fb_money v = g == 0   ? spec->limit
                         : g == 1 ? spent
                         : g == 2 ? reserved
                         : spec->limit > spent ? spec->limit - spent
                                                : 0;
            usd(f, v);
            fputc('\n', f);
        }
    }
}

char *fb_metrics_render(fb_metrics *m, const fb_metrics_src *src,
                        size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (f == NULL)
        return NULL;
    static const struct {
        field what;
        const char *name, *help;
    } counters[] = {
        {F_FORWARDED, "fusebox_forwarded_calls_total",
         "Calls forwarded to a provider and settled, since start."},
        {F_PAID, "fusebox_paid_calls_total",
         "Forwarded calls that cost something (as the ledger counts them)."},
        {F_SPENT, "fusebox_spent_usd_total",
         "What the forwarded calls cost (USD), since start."},
        {F_REPLAYED, "fusebox_replayed_calls_total",
         "Calls answered from a kept result at no cost, since start."},
        {F_SAVED, "fusebox_saved_usd_total",
         "What the replayed calls cost when they were bought (USD)."},
        {F_RETRIES, "fusebox_retries_total",
         "Forwarded calls the client marked as retries."},
        {F_TRIPS, "fusebox_fuse_trips_total",
         "Fuses blown by the gateway (retry budgets), since start."},
    };
    for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++) {
        head(f, counters[i].name, "counter", counters[i].help);
        each_series(f, m, counters[i].what, counters[i].name);
    }
    head(f, "fusebox_blocked_calls_total", "counter",
         "Calls refused by a fuse, by reason.");
    blocked(f, m);
    budgets(f, m, src);

    head(f, "fusebox_tripped", "gauge",
         "1 for each scope whose fuse is blown now, with the reason.");
    size_t it = 0;
    const char *scope, *reason;
    for (size_t n = 0; fb_trip_next(src->replay, &it, &scope, &reason); n++) {
        if (n >= FB_METRICS_MAX_SERIES)
            break;
        fputs("fusebox_tripped{scope=\"", f);
        label(f, scope);
        fputs("\",reason=\"", f);
        label(f, reason);
        fputs("\"} 1\n", f);
    }

    histogram(f, "fusebox_forward_duration_seconds",
              "From a forwarded call's request to its settlement.",
              &m->forward);
    histogram(f, "fusebox_replay_duration_seconds",
              "From a replayed call's request to its answer.", &m->replay);

    head(f, "fusebox_store_up", "gauge",
         "1 while the store takes writes (0: paid calls are refused).");
    fprintf(f, "fusebox_store_up %d\n", src->store_ok ? 1 : 0);
    head(f, "fusebox_ledger_backlog", "gauge",
         "Store operations queued or running.");
    fprintf(f, "fusebox_ledger_backlog %zu\n", src->ledger_backlog);
    head(f, "fusebox_store_round_trips_total", "counter",
         "Round trips to a shared (PostgreSQL) store, from every thread.");
    fprintf(f, "fusebox_store_round_trips_total %llu\n",
            (unsigned long long)src->store_round_trips);
    head(f, "fusebox_lease_round_trips_total", "counter",
         "Of those, budget slices taken or given back.");
    fprintf(f, "fusebox_lease_round_trips_total %llu\n",
            (unsigned long long)src->lease_round_trips);
    head(f, "fusebox_connections", "gauge", "Open client connections.");
    fprintf(f, "fusebox_connections %zu\n", src->connections);
    head(f, "fusebox_calls_in_flight", "gauge", "Calls being answered.");
    fprintf(f, "fusebox_calls_in_flight %zu\n", src->in_flight);
    head(f, "fusebox_metrics_overflow_total", "counter",
         "Calls past the label bound, counted under overflow=\"1\".");
    fprintf(f, "fusebox_metrics_overflow_total %lld\n",
            (long long)m->overflow);
    head(f, "fusebox_metrics_scopes_dropped", "gauge",
         "Budget scopes past the label bound, left out of this scrape.");
    fprintf(f, "fusebox_metrics_scopes_dropped %zu\n", m->dropped);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}
