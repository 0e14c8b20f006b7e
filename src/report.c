/* report.c - spend reports for the terminal, JSON and CSV; see report.h.
 * Money stays integer picodollars; only the bars scale it, in integers. */
#include "report.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BAR_WIDTH 30
#define MAX_FILL 10000 /* empty buckets a time line may gain */

static const char *const by_names[] = {
    [FB_BY_TENANT] = "tenant", [FB_BY_JOB] = "job",   [FB_BY_MODEL] = "model",
    [FB_BY_KEY] = "key",       [FB_BY_HOUR] = "hour", [FB_BY_DAY] = "day",
    [FB_BY_TENANT_HOUR] = "tenant_hour"};

int fb_report_by_parse(const char *name)
{
    for (int i = 0; i <= FB_BY_DAY; i++)
        if (strcmp(name, by_names[i]) == 0)
            return i;
    return -1;
}

const char *fb_report_by_name(fb_report_by by)
{
    return by_names[by];
}

typedef struct rows {
    fb_report_row *v;
    size_t n, cap;
    int failed;
} rows;

static int push(rows *r, const fb_report_row *x, const char *group)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        fb_report_row *v = realloc(r->v, cap * sizeof *v);
        if (v == NULL)
            return -1;
        r->v = v;
        r->cap = cap;
    }
    r->v[r->n] = *x;
    r->v[r->n].group = group ? strdup(group) : NULL;
    if (group != NULL && r->v[r->n].group == NULL)
        return -1;
    r->n++;
    return 0;
}

static int collect(void *arg, const fb_report_row *x)
{
    rows *r = arg;
    if (push(r, x, x->group) != 0) {
        r->failed = 1;
        return 1;
    }
    return 0;
}

/* Hours or days with nothing spent, between the first bucket (or since)
 * and the last (or until), become rows of zero. */
static int fill_gaps(rows *r, fb_report_by by, const fb_spend_filter *f)
{
    int64_t step = by == FB_BY_HOUR ? INT64_C(3600000) : INT64_C(86400000);
    if (r->n == 0 && (f->since_ms <= 0 || f->until_ms <= 0))
        return 0;
    int64_t lo = f->since_ms > 0 ? f->since_ms - f->since_ms % step
                                 : r->v[0].bucket_ms;
    int64_t hi = f->until_ms > 0 ? (f->until_ms - 1) - (f->until_ms - 1) % step
                                 : r->v[r->n - 1].bucket_ms;
    if (hi < lo || (hi - lo) / step + 1 > (int64_t)r->n + MAX_FILL)
        return 0;
    rows out = {0};
    size_t j = 0;
    for (int64_t t = lo; t <= hi; t += step) {
        while (j < r->n && r->v[j].bucket_ms < t) /* outside: keep */
            if (push(&out, &r->v[j], r->v[j].group) != 0)
                goto fail;
            else
                j++;
        if (j < r->n && r->v[j].bucket_ms == t) {
            if (push(&out, &r->v[j], r->v[j].group) != 0)
                goto fail;
            j++;
        } else {
            fb_report_row z = {.bucket_ms = t};
            if (push(&out, &z, NULL) != 0)
                goto fail;
        }
    }
    for (; j < r->n; j++)
        if (push(&out, &r->v[j], r->v[j].group) != 0)
            goto fail;
    for (size_t i = 0; i < r->n; i++)
        free((char *)r->v[i].group);
    free(r->v);
    *r = out;
    return 0;
fail:
    for (size_t i = 0; i < out.n; i++)
        free((char *)out.v[i].group);
    free(out.v);
    return -1;
}

/* The group as shown: an ISO time for hours and days. */
static const char *label(fb_report_by by, const fb_report_row *x, char *buf,
                         size_t cap)
{
    if (by != FB_BY_HOUR && by != FB_BY_DAY)
        return x->group ? x->group : "";
    time_t t = (time_t)(x->bucket_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, by == FB_BY_HOUR ? "%Y-%m-%dT%H:00Z" : "%Y-%m-%d", &tm);
    return buf;
}

static void usd(fb_money m, char *buf, size_t cap)
{
    fb_money_format(m, buf, cap);
}

/* A bar of eighths, BAR_WIDTH cells for the largest amount. */
static void bar(FILE *out, fb_money v, fb_money max)
{
    static const char *const part[] = {"", "▏", "▎", "▍", "▌", "▋", "▊", "▉"};
    if (max <= 0 || v <= 0)
        return;
    unsigned __int128 e = (unsigned __int128)v * (BAR_WIDTH * 8) / (unsigned __int128)max;
    if (e == 0)
        e = 1; /* something spent shows */
    for (unsigned i = 0; i < (unsigned)(e / 8); i++)
        fputs("█", out);
    fputs(part[e % 8], out);
}

static void text(FILE *out, fb_report_by by, const rows *r, fb_money max,
                 const fb_report_row *tot)
{
    char g[64], s[32], sv[32];
    fprintf(out, "%-28s %14s %7s %7s %8s %12s  %s\n",
            by == FB_BY_HOUR  ? "HOUR (UTC)"
            : by == FB_BY_DAY ? "DAY (UTC)"
                              : by == FB_BY_JOB ? "TENANT/JOB"
                                                : by == FB_BY_TENANT ? "TENANT"
                                                : by == FB_BY_MODEL ? "MODEL"
                                                                     : "KEY",
            "SPENT_USD", "PAID", "BLOCKED", "REPLAYED", "SAVED_USD", "SPENT");
    for (size_t i = 0; i < r->n; i++) {
        const fb_report_row *x = &r->v[i];
        usd(x->cost + x->in_flight, s, sizeof s);
        usd(x->saved, sv, sizeof sv);
        fprintf(out, "%-28s %14s %7lld %7lld %8lld %12s  ",
                label(by, x, g, sizeof g), s, (long long)x->paid_calls,
                (long long)x->blocked_calls, (long long)x->replayed_calls, sv);
        bar(out, x->cost + x->in_flight, max);
        fputc('\n', out);
    }
    usd(tot->cost + tot->in_flight, s, sizeof s);
    usd(tot->saved, sv, sizeof sv);
    fprintf(out, "%-28s %14s %7lld %7lld %8lld %12s\n", "TOTAL", s,
            (long long)tot->paid_calls, (long long)tot->blocked_calls,
            (long long)tot->replayed_calls, sv);
    if ((by == FB_BY_HOUR || by == FB_BY_DAY) && r->n > 1 && max > 0) {
        static const char *const lv[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
        fputs("spend over time: ", out);
        for (size_t i = 0; i < r->n; i++) {
            fb_money v = r->v[i].cost + r->v[i].in_flight;
            unsigned __int128 k = (unsigned __int128)(v > 0 ? v : 0) * 7 / (unsigned __int128)max;
            fputs(lv[(size_t)k], out);
        }
        fputc('\n', out);
    }
}

static void set_money(json_t *o, const char *name, const char *pico_name,
                      fb_money m)
{
    char buf[32];
    usd(m, buf, sizeof buf);
    json_object_set_new(o, name, json_string(buf));
    if (pico_name)
        json_object_set_new(o, pico_name, json_integer(m));
}

static json_t *row_json(fb_report_by by, const fb_report_row *x)
{
    char g[64];
    json_t *o = json_object();
    json_object_set_new(o, "group", json_string(label(by, x, g, sizeof g)));
    if (by == FB_BY_HOUR || by == FB_BY_DAY)
        json_object_set_new(o, "bucket_ms", json_integer(x->bucket_ms));
    set_money(o, "spent_usd", "spent_pico", x->cost + x->in_flight);
    set_money(o, "in_flight_usd", NULL, x->in_flight);
    json_object_set_new(o, "paid_calls", json_integer(x->paid_calls));
    json_object_set_new(o, "blocked_calls", json_integer(x->blocked_calls));
    json_object_set_new(o, "replayed_calls", json_integer(x->replayed_calls));
    json_object_set_new(o, "calls", json_integer(x->calls));
    set_money(o, "saved_usd", "saved_pico", x->saved);
    return o;
}

/* RFC 4180: a field with a comma, quote or line break is quoted. A name
 * that a spreadsheet would run as a formula (=, +, -, @: model names come
 * from clients) gets a leading apostrophe. */
static void csv_field(FILE *out, const char *s)
{
    int formula = *s == '=' || *s == '+' || *s == '-' || *s == '@';
    if (strpbrk(s, ",\"\r\n") == NULL) {
        if (formula)
            fputc('\'', out);
        fputs(s, out);
        return;
    }
    fputc('"', out);
    if (formula)
        fputc('\'', out);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', out);
        fputc(*s, out);
    }
    fputc('"', out);
}

static void csv(FILE *out, fb_report_by by, const rows *r)
{
    char g[64], s[32], fl[32], sv[32];
    fprintf(out, "%s,spent_usd,in_flight_usd,paid_calls,blocked_calls,"
                 "replayed_calls,calls,saved_usd\r\n",
            by_names[by]);
    for (size_t i = 0; i < r->n; i++) {
        const fb_report_row *x = &r->v[i];
        csv_field(out, label(by, x, g, sizeof g));
        usd(x->cost + x->in_flight, s, sizeof s);
        usd(x->in_flight, fl, sizeof fl);
        usd(x->saved, sv, sizeof sv);
        fprintf(out, ",%s,%s,%lld,%lld,%lld,%lld,%s\r\n", s, fl,
                (long long)x->paid_calls, (long long)x->blocked_calls,
                (long long)x->replayed_calls, (long long)x->calls, sv);
    }
}

fb_err fb_report_write(fb_store *s, fb_report_by by, const fb_spend_filter *f,
                       fb_report_format fmt, FILE *out)
{
    rows r = {0};
    fb_err err = fb_store_report(s, by, f, collect, &r);
    if (err == FB_OK && r.failed)
        err = FB_ENOMEM;
    if (err == FB_OK && (by == FB_BY_HOUR || by == FB_BY_DAY) &&
        fill_gaps(&r, by, f) != 0)
        err = FB_ENOMEM;
    if (err != FB_OK)
        goto out;

    fb_report_row tot = {0};
    fb_money max = 0;
    for (size_t i = 0; i < r.n; i++) {
        const fb_report_row *x = &r.v[i];
        tot.calls += x->calls;
        tot.paid_calls += x->paid_calls;
        tot.blocked_calls += x->blocked_calls;
        tot.replayed_calls += x->replayed_calls;
        tot.cost += x->cost;
        tot.in_flight += x->in_flight;
        tot.saved += x->saved;
        if (x->cost + x->in_flight > max)
            max = x->cost + x->in_flight;
    }
    if (fmt == FB_REPORT_TEXT) {
        text(out, by, &r, max, &tot);
    } else if (fmt == FB_REPORT_CSV) {
        csv(out, by, &r);
    } else {
        json_t *root = json_object(), *arr = json_array();
        json_object_set_new(root, "by", json_string(by_names[by]));
        json_object_set_new(root, "since_ms", json_integer(f->since_ms));
        json_object_set_new(root, "until_ms", f->until_ms > 0
                                                  ? json_integer(f->until_ms)
                                                  : json_null());
        for (size_t i = 0; i < r.n; i++)
            json_array_append_new(arr, row_json(by, &r.v[i]));
        json_object_set_new(root, "rows", arr);
        json_t *t = row_json(FB_BY_TENANT, &tot);
        json_object_del(t, "group");
        json_object_set_new(root, "total", t);
        char *txt = json_dumps(root, JSON_INDENT(2));
        json_decref(root);
        if (txt == NULL) {
            err = FB_ENOMEM;
            goto out;
        }
        fprintf(out, "%s\n", txt);
        free(txt);
    }
out:
    for (size_t i = 0; i < r.n; i++)
        free((char *)r.v[i].group);
    free(r.v);
    return err;
}
