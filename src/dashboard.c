/* dashboard.c - the dashboard page; see dashboard.h. The numbers carry
 * data-scope/data-field attributes with the exact USD text, so that a
 * test (or a script) reads what a person sees. */
#include "dashboard.h"

#include <stdint.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "map.h"

#define HOUR INT64_C(3600000)
#define DAY (24 * HOUR)
#define HOURS 48      /* the time line: the last two days, by hour */
#define MAX_JOBS 200  /* rows of the jobs table (the biggest spenders) */
#define MAX_SEEN 100000 /* jobs and trips read at most */
#define SPARK_JOBS 30 /* jobs with a time line of their own */
#define BLOCKED_ROWS 20

typedef struct job {
    char tenant[FB_NAME_MAX], job[FB_NAME_MAX];
    fb_report_row all, today; /* group pointers not kept */
    fb_money hours[HOURS];
    int has_hours;
} job;

typedef struct page {
    const fb_dash_in *in;
    FILE *f;
    int64_t day0, h0;
    job *jobs;
    size_t njobs, capjobs;
    fb_map *job_index; /* "tenant/job" -> index + 1 */
    fb_report_row tenants[MAX_JOBS];
    char tenant_names[MAX_JOBS][FB_NAME_MAX];
    size_t ntenants;
    fb_report_row *th; /* every tenant's hours, last 48 (groups dropped) */
    char (*th_names)[FB_NAME_MAX];
    size_t nth, capth;
    fb_money days[8]; /* [7] is today */
    fb_money hours[HOURS];
    fb_report_row today;
    int failed;
} page;

/* ---- text ---- */

static void esc(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&#39;", f); break;
        default: fputc(*s, f);
        }
    }
}

static const char *usd(fb_money m, char *buf, size_t cap)
{
    fb_money_format(m, buf, cap);
    return buf;
}

/* A UTC time: "2026-11-29 10:04:05Z", or short: "11-29 10:00Z". */
static const char *when(int64_t ms, int short_form, char *buf, size_t cap)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    if (short_form)
        strftime(buf, cap, "%m-%d %H:00Z", &tm);
    else
        strftime(buf, cap, "%Y-%m-%d %H:%M:%SZ", &tm);
    return buf;
}

/* A money cell: shown as $X, with the exact text for machines. */
static void money_td(FILE *f, const char *scope, const char *field,
                     fb_money m)
{
    char b[32];
    fputs("<td class=n data-scope=\"", f);
    esc(f, scope);
    fprintf(f, "\" data-field=\"%s\" data-usd=\"%s\">$%s</td>", field,
            usd(m, b, sizeof b), b);
}

static void count_td(FILE *f, const char *scope, const char *field,
                     int64_t n)
{
    fputs("<td class=n data-scope=\"", f);
    esc(f, scope);
    fprintf(f, "\" data-field=\"%s\">%lld</td>", field, (long long)n);
}

/* ---- charts (SVG, integer scaling) ---- */

static int64_t scale(fb_money v, fb_money max, int64_t px)
{
    if (v <= 0 || max <= 0)
        return 0;
    int64_t h = (int64_t)((unsigned __int128)v * (unsigned __int128)px /
                          (unsigned __int128)max);
    return h > 0 ? h : 1; /* something spent shows */
}

static void bars(FILE *f, const fb_money *v, size_t n, int64_t h0,
                 int width, int height)
{
    fb_money max = 0;
    char b[32], t[32];
    for (size_t i = 0; i < n; i++)
        if (v[i] > max)
            max = v[i];
    int bw = width / (int)n;
    fprintf(f,
            "<svg class=chart width=%d height=%d viewBox=\"0 0 %d %d\" "
            "role=img>",
            width, height, width, height);
    for (size_t i = 0; i < n; i++) {
        int64_t h = scale(v[i], max, height - 2);
        fprintf(f,
                "<rect x=%d y=%lld width=%d height=%lld><title>%s $%s"
                "</title></rect>",
                (int)i * bw, (long long)(height - h), bw > 1 ? bw - 1 : 1,
                (long long)h,
                when(h0 + (int64_t)i * HOUR, 1, t, sizeof t),
                usd(v[i], b, sizeof b));
    }
    fputs("</svg>", f);
}

static void gauge(FILE *f, fb_money spent, fb_money reserved, fb_money limit)
{
    const int w = 200, h = 14;
    fb_money settled = spent > reserved ? spent - reserved : 0;
    int64_t a = scale(settled < limit ? settled : limit, limit, w);
    int64_t r = scale(reserved, limit, w);
    if (a + r > w)
        r = w - a;
    fprintf(f,
            "<svg class=gauge width=%d height=%d role=img><rect class=bg "
            "width=%d height=%d></rect><rect class=spent width=%lld "
            "height=%d></rect><rect class=resv x=%lld width=%lld "
            "height=%d></rect></svg>",
            w, h, w, h, (long long)a, h, (long long)a, (long long)r, h);
}

/* ---- the data ---- */

static job *find_job(page *p, const char *tenant, const char *name,
                     int add)
{
    char key[2 * FB_NAME_MAX + 2];
    int n = snprintf(key, sizeof key, "%s/%s", tenant, name);
    size_t at = (size_t)(uintptr_t)fb_map_get(p->job_index, key, (size_t)n);
    if (at > 0)
        return &p->jobs[at - 1];
    if (!add || p->njobs == MAX_SEEN)
        return NULL;
    if (p->njobs == p->capjobs) {
        size_t cap = p->capjobs ? 2 * p->capjobs : 64;
        job *v = realloc(p->jobs, cap * sizeof *v);
        if (v == NULL) {
            p->failed = 1;
            return NULL;
        }
        p->jobs = v;
        p->capjobs = cap;
    }
    if (fb_map_put(p->job_index, key, (size_t)n,
                   (void *)(uintptr_t)(p->njobs + 1), NULL) != FB_OK) {
        p->failed = 1;
        return NULL;
    }
    job *j = &p->jobs[p->njobs++];
    memset(j, 0, sizeof *j);
    snprintf(j->tenant, sizeof j->tenant, "%s", tenant);
    snprintf(j->job, sizeof j->job, "%s", name);
    return j;
}

/* "tenant/job" from a report row */
static job *row_job(page *p, const char *group, int add)
{
    char t[FB_NAME_MAX];
    const char *slash = strchr(group, '/');
    if (slash == NULL || (size_t)(slash - group) >= sizeof t)
        return NULL;
    memcpy(t, group, (size_t)(slash - group));
    t[slash - group] = '\0';
    return find_job(p, t, slash + 1, add);
}

static int on_job_all(void *arg, const fb_report_row *r)
{
    job *j = row_job(arg, r->group, 1);
    if (j != NULL)
        j->all = *r;
    return 0;
}

static int on_job_today(void *arg, const fb_report_row *r)
{
    job *j = row_job(arg, r->group, 1);
    if (j != NULL)
        j->today = *r;
    return 0;
}

static int on_tenant(void *arg, const fb_report_row *r)
{
    page *p = arg;
    if (p->ntenants == MAX_JOBS)
        return 1;
    p->tenants[p->ntenants] = *r;
    snprintf(p->tenant_names[p->ntenants], FB_NAME_MAX, "%s", r->group);
    p->tenants[p->ntenants].group = NULL;
    p->ntenants++;
    return 0;
}

static int on_day(void *arg, const fb_report_row *r)
{
    page *p = arg;
    int64_t i = 7 - (p->day0 - r->bucket_ms) / DAY;
    if (i >= 0 && i < 8)
        p->days[i] = r->cost + r->in_flight;
    if (r->bucket_ms == p->day0)
        p->today = *r;
    return 0;
}

typedef struct hours_ctx {
    page *p;
    fb_money *v;
} hours_ctx;

static int on_hour(void *arg, const fb_report_row *r)
{
    hours_ctx *x = arg;
    int64_t i = (r->bucket_ms - x->p->h0) / HOUR;
    if (i >= 0 && i < HOURS)
        x->v[i] = r->cost + r->in_flight;
    return 0;
}

static int on_tenant_hour(void *arg, const fb_report_row *r)
{
    page *p = arg;
    if (p->nth == p->capth) {
        size_t cap = p->capth ? 2 * p->capth : 128;
        fb_report_row *v = realloc(p->th, cap * sizeof *v);
        char(*n)[FB_NAME_MAX] = v ? realloc(p->th_names, cap * sizeof *n)
                                   : NULL;
        if (v != NULL)
            p->th = v;
        if (n == NULL) {
            p->failed = 1;
            return 1;
        }
        p->th_names = n;
        p->capth = cap;
    }
    p->th[p->nth] = *r;
    p->th[p->nth].group = NULL;
    snprintf(p->th_names[p->nth], FB_NAME_MAX, "%s", r->group);
    p->nth++;
    return 0;
}

static int cmp_job(const void *a, const void *b)
{
    const job *x = a, *y = b;
    fb_money sx = x->all.cost + x->all.in_flight;
    fb_money sy = y->all.cost + y->all.in_flight;
    if (sx != sy)
        return sx < sy ? 1 : -1;
    int c = strcmp(x->tenant, y->tenant);
    return c ? c : strcmp(x->job, y->job);
}

static fb_err gather(fb_store *s, page *p)
{
    const fb_dash_in *in = p->in;
    fb_err err;
    fb_spend_filter all = {0}, today = {.since_ms = p->day0};
    if ((err = fb_store_report(s, FB_BY_JOB, &all, on_job_all, p)) != FB_OK ||
        (err = fb_store_report(s, FB_BY_JOB, &today, on_job_today, p)) !=
            FB_OK ||
        (err = fb_store_report(s, FB_BY_TENANT, &all, on_tenant, p)) != FB_OK)
        return err;
    /* Configured jobs show before they spend. */
    for (size_t i = 0; i < in->c->ntenants; i++)
        for (size_t k = 0; k < in->c->tenants[i].njobs; k++)
            (void)find_job(p, in->c->tenants[i].name,
                           in->c->tenants[i].jobs[k].name, 1);
    /* Biggest spenders first; job_index is stale from here on. */
    qsort(p->jobs, p->njobs, sizeof *p->jobs, cmp_job);

    fb_spend_filter week = {.since_ms = p->day0 - 7 * DAY};
    if ((err = fb_store_report(s, FB_BY_DAY, &week, on_day, p)) != FB_OK)
        return err;
    fb_spend_filter recent = {.since_ms = p->h0};
    hours_ctx hx = {p, p->hours};
    if ((err = fb_store_report(s, FB_BY_HOUR, &recent, on_hour, &hx)) !=
            FB_OK ||
        (err = fb_store_report(s, FB_BY_TENANT_HOUR, &recent, on_tenant_hour,
                               p)) != FB_OK)
        return err;
    for (size_t i = 0; i < p->njobs && i < SPARK_JOBS; i++) {
        job *j = &p->jobs[i];
        fb_spend_filter jf = {
            .tenant = j->tenant, .job = j->job, .since_ms = p->h0};
        hours_ctx jx = {p, j->hours};
        if ((err = fb_store_report(s, FB_BY_HOUR, &jf, on_hour, &jx)) !=
            FB_OK)
            return err;
        j->has_hours = 1;
    }
    return FB_OK;
}

/* ---- the page ---- */

static const char style[] =
    "<style>body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}"
    "h1{margin:0 0 .2em}h2{margin:1.6em 0 .4em;font-size:1.1em}"
    ".sub{color:#666}.cards{display:flex;gap:1em;flex-wrap:wrap}"
    ".card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;"
    "min-width:9em}.card b{display:block;font-size:1.4em}"
    "table{border-collapse:collapse}td,th{padding:.25em .6em;"
    "border-bottom:1px solid #eee;text-align:left}td.n{text-align:right;"
    "font-variant-numeric:tabular-nums}.chart rect{fill:#3b6ea8}"
    ".gauge .bg{fill:#eee}.gauge .spent{fill:#3b6ea8}.gauge .resv{fill:"
    "#e0a030}.tripped{color:#b00;font-weight:600}.notice{background:#ffd;"
    "padding:.5em 1em;border:1px solid #ec6}.bad{color:#b00}"
    "form{display:inline}button{font:inherit}</style>";

static void head(FILE *f, const char *title)
{
    fputs("<!doctype html><html lang=en><head><meta charset=utf-8>"
          "<meta name=viewport content=\"width=device-width\">"
          "<title>",
          f);
    esc(f, title);
    fprintf(f, "</title>%s</head><body>", style);
}

static void trip_form(FILE *f, const char *scope, int tripped)
{
    fprintf(f, "<form method=post action=\"/dashboard/%s\">",
            tripped ? "reset" : "trip");
    fputs("<input type=hidden name=scope value=\"", f);
    esc(f, scope);
    fprintf(f, "\"><button type=submit data-action=\"%s\" data-scope=\"",
            tripped ? "reset" : "trip");
    esc(f, scope);
    fprintf(f, "\">%s</button></form>", tripped ? "Reset" : "Trip");
}

typedef struct trip_row {
    char scope[2 * FB_NAME_MAX + 16];
    char reason[200];
    int64_t ts;
} trip_row;

typedef struct trips {
    trip_row *v;
    size_t n, cap;
    fb_map *by_scope; /* scope -> index + 1 */
} trips;

static int on_trip(void *arg, const char *scope, const char *reason,
                   int64_t ts_ms)
{
    trips *t = arg;
    if (t->n == MAX_SEEN)
        return 1;
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 16;
        trip_row *v = realloc(t->v, cap * sizeof *v);
        if (v == NULL)
            return 1;
        t->v = v;
        t->cap = cap;
    }
    trip_row *x = &t->v[t->n];
    snprintf(x->scope, sizeof x->scope, "%s", scope);
    snprintf(x->reason, sizeof x->reason, "%s", reason);
    x->ts = ts_ms;
    t->n++;
    (void)fb_map_put(t->by_scope, x->scope, strlen(x->scope),
                     (void *)(uintptr_t)t->n, NULL);
    return 0;
}

static const char *trip_reason(const trips *t, const char *scope)
{
    size_t at =
        (size_t)(uintptr_t)fb_map_get(t->by_scope, scope, strlen(scope));
    return at > 0 ? t->v[at - 1].reason : NULL;
}

static int on_blocked(void *arg, const fb_blocked_row *r)
{
    page *p = arg;
    FILE *f = p->f;
    char t[32];
    fprintf(f, "<tr><td>%s</td><td>",
            when(r->ts_ms, 0, t, sizeof t));
    esc(f, r->tenant);
    fputc('/', f);
    esc(f, r->job);
    fputs("</td><td>", f);
    esc(f, r->key_id);
    fputs("</td><td>", f);
    esc(f, r->model);
    fprintf(f, "</td><td class=n>%d</td><td>", r->status);
    esc(f, r->outcome);
    fputs("</td></tr>", f);
    return 0;
}

static int on_rerun(void *arg, const char *scope, int64_t runs,
                    const char *last)
{
    FILE *f = ((page *)arg)->f;
    fputs("<tr><td>", f);
    esc(f, scope);
    fprintf(f, "</td><td class=n data-field=runs>%lld</td><td>",
            (long long)runs);
    esc(f, last);
    fputs("</td></tr>", f);
    return 0;
}

static void jobs_table(page *p, const trips *tr)
{
    FILE *f = p->f;
    char scope[2 * FB_NAME_MAX + 16];
    fputs("<h2>Jobs</h2><table id=jobs><tr><th>job</th><th>spent</th>"
          "<th>today</th><th>paid calls</th><th>replayed</th><th>saved</th>"
          "<th>blocked</th><th>last 48 h</th><th>fuse</th></tr>",
          f);
    for (size_t i = 0; i < p->njobs && i < MAX_JOBS; i++) {
        const job *j = &p->jobs[i];
        snprintf(scope, sizeof scope, "job:%s/%s", j->tenant, j->job);
        const char *why = trip_reason(tr, scope);
        fputs("<tr><td>", f);
        esc(f, j->tenant);
        fputc('/', f);
        esc(f, j->job);
        fputs("</td>", f);
        money_td(f, scope, "spent_usd", j->all.cost + j->all.in_flight);
        money_td(f, scope, "today_usd", j->today.cost + j->today.in_flight);
        count_td(f, scope, "paid_calls", j->all.paid_calls);
        count_td(f, scope, "replayed_calls", j->all.replayed_calls);
        money_td(f, scope, "saved_usd", j->all.saved);
        count_td(f, scope, "blocked_calls", j->all.blocked_calls);
        fputs("<td>", f);
        if (j->has_hours)
            bars(f, j->hours, HOURS, p->h0, 144, 24);
        fputs("</td><td>", f);
        if (why != NULL) {
            fputs("<span class=tripped data-tripped=\"", f);
            esc(f, scope);
            fputs("\">tripped</span> ", f);
        }
        trip_form(f, scope, why != NULL);
        fputs("</td></tr>", f);
    }
    fputs("</table>", f);
    if (p->njobs > MAX_JOBS)
        fprintf(f,
                "<p class=sub>%zu more jobs spent less: <code>fusebox "
                "spend --by job</code> lists them all.</p>",
                p->njobs - MAX_JOBS);
}

static void budgets_table(page *p)
{
    FILE *f = p->f;
    static const char *const per[] = {"total", "hour", "day", "month"};
    fputs("<h2>Budgets</h2><table id=budgets><tr><th>scope</th><th>period"
          "</th><th>used</th><th>spent</th><th>reserved now</th><th>limit"
          "</th></tr>",
          f);
    for (size_t i = 0; i < p->in->nbudgets; i++) {
        const fb_dash_budget *b = &p->in->budgets[i];
        fputs("<tr><td>", f);
        esc(f, b->scope);
        fprintf(f, "</td><td>%s</td><td>", per[b->spec.period]);
        gauge(f, b->spent, b->reserved, b->spec.limit);
        /* per mille, in integers: 123 -> "12.3%" */
        int64_t pm = b->spec.limit > 0
                         ? (int64_t)((unsigned __int128)(b->spent > 0 ? b->spent : 0) *
                                     1000 / (unsigned __int128)b->spec.limit)
                         : 0;
        fprintf(f, " %lld.%lld%%</td>", (long long)(pm / 10),
                (long long)(pm % 10));
        money_td(f, b->scope, "period_spent_usd", b->spent);
        money_td(f, b->scope, "reserved_usd", b->reserved);
        money_td(f, b->scope, "limit_usd", b->spec.limit);
        fputs("</tr>", f);
    }
    fputs("</table>", f);
}

char *fb_dash_render(fb_store *s, const fb_dash_in *in, size_t *len)
{
    page p = {.in = in};
    char *buf = NULL, t[48], m[32];
    trips *tr = calloc(1, sizeof *tr);
    p.job_index = fb_map_new();
    p.day0 = in->now_ms - in->now_ms % DAY;
    p.h0 = in->now_ms - in->now_ms % HOUR - (HOURS - 1) * HOUR;
    if (tr == NULL || p.job_index == NULL ||
        (tr->by_scope = fb_map_new()) == NULL || gather(s, &p) != FB_OK ||
        p.failed || fb_store_trips(s, on_trip, tr) != FB_OK)
        goto fail;
    if ((p.f = open_memstream(&buf, len)) == NULL)
        goto fail;
    FILE *f = p.f;

    head(f, "fusebox dashboard");
    fprintf(f, "<h1>fusebox</h1><div class=sub>%s &middot; store %s</div>",
            when(in->now_ms, 0, t, sizeof t),
            in->store_ok ? "ok"
                         : "<span class=bad>unavailable: paid calls are "
                           "refused</span>");
    if (in->notice) {
        fputs("<p class=notice id=notice>", f);
        esc(f, in->notice);
        fputs("</p>", f);
    }

    /* Today against the usual day: the mean of the seven before. */
    fb_money usual = 0;
    for (int i = 0; i < 7; i++)
        usual += p.days[i];
    usual /= 7;
    fputs("<div class=cards>", f);
    fprintf(f,
            "<div class=card>spent today<b data-field=today_usd "
            "data-usd=\"%s\">$%s</b></div>",
            usd(p.days[7], m, sizeof m), m);
    fprintf(f,
            "<div class=card>usual day (7-day mean)<b data-field=usual_usd "
            "data-usd=\"%s\">$%s</b></div>",
            usd(usual, m, sizeof m), m);
    fprintf(f,
            "<div class=card>replays today<b data-field=replayed_today>%lld"
            "</b></div>",
            (long long)p.today.replayed_calls);
    fprintf(f,
            "<div class=card>saved today<b data-field=saved_today "
            "data-usd=\"%s\">$%s</b></div>",
            usd(p.today.saved, m, sizeof m), m);
    fprintf(f,
            "<div class=card>blocked today<b data-field=blocked_today>%lld"
            "</b></div></div>",
            (long long)p.today.blocked_calls);

    fputs("<h2>Spend per hour, last 48 hours (UTC)</h2>", f);
    bars(f, p.hours, HOURS, p.h0, 720, 120);
    {
        fb_money max = 0;
        char t2[48];
        for (int i = 0; i < HOURS; i++)
            if (p.hours[i] > max)
                max = p.hours[i];
        fprintf(f, "<div class=sub>%s to %s; the tallest bar is $%s</div>",
                when(p.h0, 1, t, sizeof t),
                when(p.h0 + (HOURS - 1) * HOUR, 1, t2, sizeof t2),
                usd(max, m, sizeof m));
    }

    /* Trips first: they are why calls fail right now. */
    fputs("<h2>Tripped fuses</h2>", f);
    if (tr->n == 0) {
        fputs("<p id=trips>none</p>", f);
    } else {
        fputs("<table id=trips><tr><th>scope</th><th>reason</th><th>since"
              "</th><th></th></tr>",
              f);
        for (size_t i = 0; i < tr->n; i++) {
            fputs("<tr><td class=tripped>", f);
            esc(f, tr->v[i].scope);
            fputs("</td><td>", f);
            esc(f, tr->v[i].reason);
            fprintf(f, "</td><td>%s</td><td>",
                    when(tr->v[i].ts, 0, t, sizeof t));
            trip_form(f, tr->v[i].scope, 1);
            fputs("</td></tr>", f);
        }
        fputs("</table>", f);
    }

    jobs_table(&p, tr);
    budgets_table(&p);

    fputs("<h2>Tenants</h2><table id=tenants><tr><th>tenant</th><th>spent"
          "</th><th>paid calls</th><th>replayed</th><th>saved</th>"
          "<th>last 48 h</th></tr>",
          f);
    for (size_t i = 0; i < p.ntenants; i++) {
        char scope[FB_NAME_MAX + 8];
        fb_money hours[HOURS] = {0};
        snprintf(scope, sizeof scope, "tenant:%s", p.tenant_names[i]);
        fputs("<tr><td>", f);
        esc(f, p.tenant_names[i]);
        fputs("</td>", f);
        money_td(f, scope, "spent_usd",
                 p.tenants[i].cost + p.tenants[i].in_flight);
        count_td(f, scope, "paid_calls", p.tenants[i].paid_calls);
        count_td(f, scope, "replayed_calls", p.tenants[i].replayed_calls);
        money_td(f, scope, "saved_usd", p.tenants[i].saved);
        fputs("<td>", f);
        for (size_t k = 0; k < p.nth; k++) {
            const fb_report_row *x = &p.th[k];
            int64_t at = (x->bucket_ms - p.h0) / HOUR;
            if (strcmp(p.th_names[k], p.tenant_names[i]) == 0 && at >= 0 &&
                at < HOURS)
                hours[at] = x->cost + x->in_flight;
        }
        bars(f, hours, HOURS, p.h0, 144, 24);
        fputs("</td></tr>", f);
    }
    fputs("</table>", f);

    fputs("<h2>Rerun today</h2><table id=reruns><tr><th>job</th><th>runs"
          "</th><th>last outcome</th></tr>",
          f);
    if (fb_store_reruns(s, p.day0, on_rerun, &p) != FB_OK)
        p.failed = 1;
    fputs("</table>", f);
    fputs("<p class=sub>Jobs started more than once today by "
          "<code>fusebox run</code>; replays above show reruns that went "
          "through the gateway alone.</p>",
          f);

    fputs("<h2>Last blocked calls</h2><table id=blocked><tr><th>when</th>"
          "<th>job</th><th>key</th><th>model</th><th>status</th><th>why"
          "</th></tr>",
          f);
    if (fb_store_blocked_recent(s, BLOCKED_ROWS, on_blocked, &p) != FB_OK)
        p.failed = 1;
    fputs("</table></body></html>\n", f);
    if (fclose(f) != 0 || p.failed)
        goto fail;
    goto out;
fail:
    free(buf);
    buf = NULL;
out:
    if (tr) {
        fb_map_free(tr->by_scope, NULL);
        free(tr->v);
    }
    free(tr);
    fb_map_free(p.job_index, NULL);
    free(p.jobs);
    free(p.th);
    free(p.th_names);
    return buf;
}

char *fb_dash_login(const char *msg, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (f == NULL)
        return NULL;
    head(f, "fusebox: sign in");
    fputs("<h1>fusebox</h1>", f);
    if (msg) {
        fputs("<p class=bad>", f);
        esc(f, msg);
        fputs("</p>", f);
    }
    fputs("<form method=post action=\"/dashboard/login\"><label>Admin token "
          "<input type=password name=token autocomplete=current-password "
          "autofocus></label> <button type=submit>Sign in</button></form>"
          "</body></html>\n",
          f);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}
