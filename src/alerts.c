/* alerts.c - the rules, the outbox and the deliveries; see alerts.h. */
#include "alerts.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "budget.h"
#include "keys.h"
#include "log.h"
#include "store.h"

#define HOUR INT64_C(3600000)
#define DAY (24 * HOUR)
#define BASE_DAYS 7           /* the baseline: the same time, 7 days */
#define DELIVER_PER_ROUND 50  /* bounded work per round */
#define SEND_TIMEOUT_MS 5000  /* a webhook or a command */
#define MAX_BACKOFF_MS 300000 /* retries at 2, 4, 8 ... s, then 5 min */

extern char **environ;

struct fb_alerts {
    const fb_config *c;
    fb_store *store;
    pthread_t thread;
    pthread_mutex_t mu;       /* stopping, cv */
    pthread_cond_t cv;
    int stopping;
    pthread_mutex_t round_mu; /* one round at a time */
};

typedef struct round {
    fb_alerts *a;
    int64_t now;
    json_t *raised;
    int sent, retrying, failed;
    fb_err err;
} round;

/* ---- destinations ----
 * A webhook's URL is often its credential (Slack's incoming webhooks):
 * the outbox names it by a hash, and the log by its scheme and host. */

#define HOOK_ID_LEN (8 + 16) /* "webhook:" and 16 hex digits */

static void hook_id(const char *url, char out[HOOK_ID_LEN + 1])
{
    uint8_t h[32];
    fb_key_hash(url, strlen(url), h);
    memcpy(out, "webhook:", 8);
    for (int i = 0; i < 8; i++)
        snprintf(out + 8 + 2 * i, 3, "%02x", h[i]);
}

/* "https://hooks.slack.com" of "https://hooks.slack.com/services/..." */
static const char *hook_host(const char *url, char *buf, size_t cap)
{
    const char *p = strstr(url, "://");
    size_t n = p ? (size_t)(p + 3 - url) + strcspn(p + 3, "/") : 0;
    snprintf(buf, cap, "%.*s", (int)n, url);
    return buf;
}

/* What a destination is, for the log (never a webhook's path). */
static const char *dest_name(const fb_config *c, const char *dest, char *buf,
                             size_t cap)
{
    char id[HOOK_ID_LEN + 1], host[160];
    for (size_t i = 0; i < c->nalert_webhooks; i++) {
        hook_id(c->alert_webhooks[i].url, id);
        if (strcmp(id, dest) == 0) {
            snprintf(buf, cap, "webhook %s",
                     hook_host(c->alert_webhooks[i].url, host, sizeof host));
            return buf;
        }
    }
    snprintf(buf, cap, "%s", dest);
    return buf;
}

/* ---- raising ---- */

static int raise_v(round *r, int quiet, const char *dedup, const char *kind,
                   const char *scope, json_t *details, const char *fmt,
                   va_list ap) __attribute__((format(printf, 7, 0)));
static int raise_alert(round *r, const char *dedup, const char *kind,
                       const char *scope, json_t *details, const char *fmt,
                       ...) __attribute__((format(printf, 6, 7)));
static int raise_quiet(round *r, const char *dedup, const char *kind,
                       const char *scope, json_t *details, const char *fmt,
                       ...) __attribute__((format(printf, 6, 7)));

/* 1 when the alert is new (recorded and queued), 0 when it was raised
 * before (or could not be recorded: r->err says so). */
static int raise_alert(round *r, const char *dedup, const char *kind,
                       const char *scope, json_t *details, const char *fmt,
                       ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = raise_v(r, 0, dedup, kind, scope, details, fmt, ap);
    va_end(ap);
    return n;
}

/* Recorded as raised, not sent: a lower threshold passed in the same
 * round as a higher one (one page, not three). */
static int raise_quiet(round *r, const char *dedup, const char *kind,
                       const char *scope, json_t *details, const char *fmt,
                       ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = raise_v(r, 1, dedup, kind, scope, details, fmt, ap);
    va_end(ap);
    return n;
}

static int raise_v(round *r, int quiet, const char *dedup, const char *kind,
                   const char *scope, json_t *details, const char *fmt,
                   va_list ap)
{
    const fb_config *c = r->a->c;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    json_t *j = json_pack("{s:s,s:s,s:s,s:I,s:s,s:o}", "alert", kind, "scope",
                          scope, "message", msg, "ts_ms", (json_int_t)r->now,
                          "dedup", dedup, "details",
                          details ? details : json_object());
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (body == NULL) {
        r->err = FB_ENOMEM;
        return 0;
    }
    /* A destination is named by what it is, so that a restart with the
     * same config finds its pending rows. */
    size_t n = quiet ? 0 : c->nalert_webhooks + (c->nalert_command > 0);
    char **dests = calloc(n ? n : 1, sizeof *dests);
    size_t nd = 0;
    for (size_t i = 0; dests && !quiet && i < c->nalert_webhooks; i++) {
        char id[HOOK_ID_LEN + 1];
        hook_id(c->alert_webhooks[i].url, id);
        if ((dests[nd] = strdup(id)) != NULL)
            nd++;
    }
    if (dests && !quiet && c->nalert_command > 0 &&
        (dests[nd] = strdup("command")) != NULL)
        nd++;
    fb_alert_rec rec = {.dedup = dedup,
                        .ts_ms = r->now,
                        .kind = kind,
                        .scope = scope,
                        .message = msg,
                        .body = body};
    fb_err err = dests ? fb_store_alert_add(r->a->store, &rec,
                                            (const char *const *)dests, nd)
                       : FB_ENOMEM;
    if (err == FB_OK && !quiet) {
        fb_log(FB_LOG_WARN, "alert: %s", msg);
        json_array_append_new(r->raised, json_string(dedup));
    } else if (err != FB_OK && err != FB_EEXIST) {
        r->err = err;
    }
    for (size_t i = 0; i < nd; i++)
        free(dests[i]);
    free(dests);
    free(body);
    return err == FB_OK;
}

/* a >= p% of b, in integers */
static int percent_reached(fb_money a, int p, fb_money b)
{
    return (__int128)a * 100 >= (__int128)p * b;
}

/* a > factor * b, factor fixed point (FB_PICO_PER_USD is 1x) */
static int over_factor(fb_money a, fb_money factor, fb_money b)
{
    return (__int128)a * FB_PICO_PER_USD > (__int128)factor * b;
}

static fb_money spend(round *r, const char *tenant, const char *job,
                      int64_t since, int64_t until)
{
    fb_spend sp;
    fb_spend_filter f = {.tenant = tenant,
                         .job = job,
                         .since_ms = since,
                         .until_ms = until};
    if (fb_store_spend(r->a->store, &f, &sp) != FB_OK) {
        r->err = FB_EIO;
        return 0;
    }
    return sp.spent;
}

/* ---- the rules ---- */

static int tripped_now(round *r, const char *scope);

static void budget_rule(round *r, const char *scope, const char *tenant,
                        const char *job, const fb_budget_spec *spec)
{
    static const char *const per[] = {"in total", "this hour", "today",
                                      "this month"};
    const fb_config *c = r->a->c;
    char dedup[256], s1[32], s2[32];
    if (!spec->set || spec->limit <= 0)
        return;
    int64_t start = fb_period_start(spec->period, r->now);
    fb_money spent = spend(r, tenant, job, start, 0);
    int top = 0; /* the highest threshold reached */
    for (size_t i = 0; i < c->nalert_percents; i++)
        if (c->alert_percents[i] > top &&
            percent_reached(spent, c->alert_percents[i], spec->limit))
            top = c->alert_percents[i];
    fb_money_format(spent, s1, sizeof s1);
    fb_money_format(spec->limit, s2, sizeof s2);
    for (size_t i = 0; i < c->nalert_percents; i++) {
        int p = c->alert_percents[i];
        if (p > top)
            continue;
        snprintf(dedup, sizeof dedup, "budget:%s:%lld:%d", scope,
                 (long long)start, p);
        (p == top ? raise_alert : raise_quiet)(
            r, dedup, "budget", scope,
            json_pack("{s:i,s:s,s:s}", "percent", p, "spent_usd", s1,
                      "limit_usd", s2),
            "%s has spent %d%% of its budget %s: %s of %s USD", scope, p,
            per[spec->period], s1, s2);
    }
}

/* The same window [now - w, now) on each of the BASE_DAYS days before. */
static fb_money baseline(round *r, const char *tenant, const char *job,
                         int64_t w)
{
    fb_money sum = 0;
    for (int d = 1; d <= BASE_DAYS; d++)
        sum += spend(r, tenant, job, r->now - d * DAY - w, r->now - d * DAY);
    return sum / BASE_DAYS;
}

static void rate_rules(round *r, const char *tenant, const char *job)
{
    const fb_alert_rule *rule =
        fb_config_alert_rule(r->a->c, tenant, job ? job : "");
    char scope[2 * FB_NAME_MAX + 16], dedup[256], s1[32], s2[32];
    if (job)
        snprintf(scope, sizeof scope, "job:%s/%s", tenant, job);
    else
        snprintf(scope, sizeof scope, "tenant:%s", tenant);

    if (rule->rate_factor > 0) {
        fb_money last = spend(r, tenant, job, r->now - HOUR, r->now);
        if (last >= rule->rate_min && last > 0) {
            fb_money base = baseline(r, tenant, job, HOUR);
            if (over_factor(last, rule->rate_factor, base)) {
                snprintf(dedup, sizeof dedup, "rate:%s:%lld", scope,
                         (long long)(r->now - r->now % HOUR));
                fb_money_format(last, s1, sizeof s1);
                fb_money_format(base, s2, sizeof s2);
                raise_alert(r, dedup, "spend_rate", scope,
                            json_pack("{s:s,s:s}", "last_hour_usd", s1,
                                      "baseline_usd", s2),
                            "%s spent %s USD in the last hour; the same hour "
                            "of the last %d days averaged %s USD",
                            scope, s1, BASE_DAYS, s2);
            }
        }
    }
    if (job == NULL || rule->breaker_minutes <= 0)
        return;
    int64_t w = (int64_t)rule->breaker_minutes * 60000;
    fb_money last = spend(r, tenant, job, r->now - w, r->now);
    if (last < rule->breaker_min || last <= 0)
        return;
    fb_money base = baseline(r, tenant, job, w);
    if (!over_factor(last, rule->breaker_factor, base))
        return;
    char why[256];
    fb_money_format(last, s1, sizeof s1);
    fb_money_format(base, s2, sizeof s2);
    snprintf(why, sizeof why,
             "breaker: %s USD in %d minutes against %s USD usually", s1,
             rule->breaker_minutes, s2);
    /* Once a UTC day per job: a person's reset holds until tomorrow (the
     * spike stays in the window for a while), and a trip already there
     * (by hand, say) keeps its reason. */
    snprintf(dedup, sizeof dedup, "breaker:%s:%lld", scope,
             (long long)(r->now - r->now % DAY));
    if (!raise_alert(r, dedup, "breaker", scope,
                     json_pack("{s:s,s:s,s:i}", "window_usd", s1,
                               "baseline_usd", s2, "minutes",
                               rule->breaker_minutes),
                     "%s tripped by the breaker: %s USD in the last %d "
                     "minutes, %s USD usually",
                     scope, s1, rule->breaker_minutes, s2))
        return;
    if (!tripped_now(r, scope) &&
        fb_store_trip_apply(r->a->store, scope, 1, why, r->now) != FB_OK)
        r->err = FB_EIO;
}

typedef struct names {
    char (*v)[2][FB_NAME_MAX];
    size_t n, cap;
} names;

static int add_name(void *arg, const char *tenant, const char *job)
{
    names *ns = arg;
    for (size_t i = 0; i < ns->n; i++)
        if (strcmp(ns->v[i][0], tenant) == 0 && strcmp(ns->v[i][1], job) == 0)
            return 0;
    if (ns->n == ns->cap) {
        size_t cap = ns->cap ? ns->cap * 2 : 32;
        void *v = realloc(ns->v, cap * sizeof *ns->v);
        if (v == NULL)
            return 1;
        ns->v = v;
        ns->cap = cap;
    }
    snprintf(ns->v[ns->n][0], FB_NAME_MAX, "%s", tenant);
    snprintf(ns->v[ns->n][1], FB_NAME_MAX, "%s", job);
    ns->n++;
    return 0;
}

/* Rows of a query, kept until the statement is finished: raising an
 * alert writes, and a write on a connection that still reads may find
 * the ledger moved on (SQLITE_BUSY at once, in WAL mode). */
typedef struct hit {
    char scope[2 * FB_NAME_MAX + 16];
    char text[200]; /* the last run's outcome, or a trip's reason */
    uint8_t fp[32];
    int64_t n; /* runs, purchases, or the trip's time */
} hit;

typedef struct hits {
    hit *v;
    size_t n, cap;
} hits;

static hit *hit_add(hits *h)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 16;
        hit *v = realloc(h->v, cap * sizeof *v);
        if (v == NULL)
            return NULL;
        h->v = v;
        h->cap = cap;
    }
    hit *x = &h->v[h->n++];
    memset(x, 0, sizeof *x);
    return x;
}

static int got_rerun(void *arg, const char *scope, int64_t runs,
                     const char *last)
{
    hit *x = hit_add(arg);
    if (x == NULL)
        return 1;
    snprintf(x->scope, sizeof x->scope, "%s", scope);
    snprintf(x->text, sizeof x->text, "%s", last ? last : "?");
    x->n = runs;
    return 0;
}

static int got_fp(void *arg, const char *tenant, const char *job,
                  const uint8_t fp[32], int64_t count)
{
    hit *x = hit_add(arg);
    if (x == NULL)
        return 1;
    if (job[0])
        snprintf(x->scope, sizeof x->scope, "job:%s/%s", tenant, job);
    else
        snprintf(x->scope, sizeof x->scope, "tenant:%s", tenant);
    memcpy(x->fp, fp, 32);
    x->n = count;
    return 0;
}

static int got_trip(void *arg, const char *scope, const char *reason,
                    int64_t ts_ms)
{
    hit *x = hit_add(arg);
    if (x == NULL)
        return 1;
    snprintf(x->scope, sizeof x->scope, "%s", scope);
    snprintf(x->text, sizeof x->text, "%s", reason);
    x->n = ts_ms;
    return 0;
}

static int tripped_now(round *r, const char *scope)
{
    hits t = {0};
    int found = 0;
    if (fb_store_trips(r->a->store, got_trip, &t) != FB_OK)
        r->err = FB_EIO;
    for (size_t i = 0; i < t.n && !found; i++)
        found = strcmp(t.v[i].scope, scope) == 0;
    free(t.v);
    return found;
}

/* The tenant and job of "job:T/J" or "tenant:T" (job ""). */
static int scope_names(const char *scope, char *t, char *j)
{
    const char *n, *slash;
    if (strncmp(scope, "tenant:", 7) == 0) {
        n = scope + 7;
        slash = NULL;
    } else if (strncmp(scope, "job:", 4) == 0) {
        n = scope + 4;
        if ((slash = strchr(n, '/')) == NULL)
            return 0;
    } else {
        return 0;
    }
    size_t tl = slash ? (size_t)(slash - n) : strlen(n);
    if (tl >= FB_NAME_MAX || (slash && strlen(slash + 1) >= FB_NAME_MAX))
        return 0;
    memcpy(t, n, tl);
    t[tl] = '\0';
    strcpy(j, slash ? slash + 1 : "");
    return 1;
}

static void rerun_rules(round *r, int64_t day0)
{
    hits h = {0};
    char t[FB_NAME_MAX], j[FB_NAME_MAX], dedup[256], hex[17];
    if (fb_store_reruns(r->a->store, day0, got_rerun, &h) != FB_OK)
        r->err = FB_EIO;
    for (size_t i = 0; i < h.n; i++) {
        const hit *x = &h.v[i];
        if (!scope_names(x->scope, t, j) || j[0] == '\0')
            continue;
        const fb_alert_rule *rule = fb_config_alert_rule(r->a->c, t, j);
        if (rule->runs_per_day <= 0 || x->n <= rule->runs_per_day)
            continue;
        snprintf(dedup, sizeof dedup, "rerun:%s:%lld", x->scope,
                 (long long)day0);
        raise_alert(r, dedup, "rerun", x->scope,
                    json_pack("{s:I,s:s}", "runs_today", (json_int_t)x->n,
                              "last_outcome", x->text),
                    "%s was started %lld times today (more than %d): a "
                    "rerun storm? the last run: %s",
                    x->scope, (long long)x->n, rule->runs_per_day, x->text);
    }
    h.n = 0;
    const fb_config *c = r->a->c;
    int fp_min = c->alert_rule.forwards_per_fp;
    for (size_t i = 0; i < c->nalert_overrides; i++) {
        int v = c->alert_overrides[i].rule.forwards_per_fp;
        if (v > 0 && (fp_min <= 0 || v < fp_min))
            fp_min = v;
    }
    if (fp_min > 0 &&
        fb_store_fp_storms(r->a->store, day0, fp_min + 1, got_fp, &h) != FB_OK)
        r->err = FB_EIO;
    for (size_t i = 0; i < h.n; i++) {
        const hit *x = &h.v[i];
        if (!scope_names(x->scope, t, j))
            continue;
        const fb_alert_rule *rule = fb_config_alert_rule(c, t, j);
        if (rule->forwards_per_fp <= 0 || x->n <= rule->forwards_per_fp)
            continue;
        for (int k = 0; k < 8; k++)
            snprintf(hex + 2 * k, 3, "%02x", x->fp[k]);
        snprintf(dedup, sizeof dedup, "fingerprint:%s:%s:%lld", x->scope,
                 hex, (long long)day0);
        raise_alert(r, dedup, "rerun", x->scope,
                    json_pack("{s:s,s:I}", "fingerprint", hex, "bought_today",
                              (json_int_t)x->n),
                    "%s bought the same request (%s...) %lld times today "
                    "(more than %d): is a queue rerunning it?",
                    x->scope, hex, (long long)x->n, rule->forwards_per_fp);
    }
    free(h.v);
}

static void trip_rules(round *r)
{
    hits h = {0};
    char dedup[256];
    if (fb_store_trips(r->a->store, got_trip, &h) != FB_OK)
        r->err = FB_EIO;
    for (size_t i = 0; i < h.n; i++) {
        const hit *x = &h.v[i];
        if (x->n < r->now - DAY)
            continue; /* an old trip, seen before this store had alerts */
        snprintf(dedup, sizeof dedup, "trip:%s:%lld", x->scope,
                 (long long)x->n);
        raise_alert(r, dedup, "fuse_tripped", x->scope,
                    json_pack("{s:s}", "reason", x->text),
                    "fuse tripped: %s (%s); its calls are refused until "
                    "fusebox reset",
                    x->scope, x->text);
    }
    free(h.v);
}

static void rules(round *r)
{
    const fb_config *c = r->a->c;
    char scope[2 * FB_NAME_MAX + 16];
    budget_rule(r, "global", NULL, NULL, &c->global);
    names ns = {0};
    for (size_t i = 0; i < c->ntenants; i++) {
        const fb_tenant_conf *t = &c->tenants[i];
        snprintf(scope, sizeof scope, "tenant:%s", t->name);
        budget_rule(r, scope, t->name, NULL, &t->budget);
        for (size_t k = 0; k < t->njobs; k++) {
            snprintf(scope, sizeof scope, "job:%s/%s", t->name,
                     t->jobs[k].name);
            budget_rule(r, scope, t->name, t->jobs[k].name,
                        &t->jobs[k].budget);
            add_name(&ns, t->name, t->jobs[k].name);
        }
        add_name(&ns, t->name, "");
    }
    if (fb_store_scopes(r->a->store, add_name, &ns) != FB_OK)
        r->err = FB_EIO;
    for (size_t i = 0; i < ns.n; i++) {
        /* a job's rules; a tenant's ("" job) once per tenant */
        if (ns.v[i][1][0])
            rate_rules(r, ns.v[i][0], ns.v[i][1]);
        int first = 1;
        for (size_t k = 0; k < i && first; k++)
            if (strcmp(ns.v[k][0], ns.v[i][0]) == 0)
                first = 0;
        if (first)
            rate_rules(r, ns.v[i][0], NULL);
    }
    free(ns.v);

    rerun_rules(r, r->now - r->now % DAY);
    trip_rules(r);
}

/* ---- deliveries ---- */

static size_t discard(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return size * n;
}

static int post_webhook(const fb_alert_webhook *h, const char *body,
                        const char *message, char *err, size_t errcap)
{
    char *slack = NULL;
    if (h->slack) {
        json_t *j = json_pack("{s:s+}", "text", "fusebox: ", message);
        slack = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        if (slack == NULL) {
            snprintf(err, errcap, "out of memory");
            return -1;
        }
    }
    CURL *e = curl_easy_init();
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: "
                                                     "application/json");
    long status = 0;
    CURLcode rc = CURLE_FAILED_INIT;
    if (e != NULL && hdr != NULL) {
        curl_easy_setopt(e, CURLOPT_URL, h->url);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, slack ? slack : body);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)SEND_TIMEOUT_MS);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
        rc = curl_easy_perform(e);
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    }
    curl_slist_free_all(hdr);
    curl_easy_cleanup(e);
    free(slack);
    if (rc != CURLE_OK) {
        snprintf(err, errcap, "%s", curl_easy_strerror(rc));
        return -1;
    }
    if (status < 200 || status > 299) {
        snprintf(err, errcap, "HTTP %ld", status);
        return -1;
    }
    return 0;
}

/* The command, with the alert's JSON on stdin; killed past the timeout. */
static int run_command(const fb_config *c, const char *body, char *err,
                       size_t errcap)
{
    int in[2];
    pid_t pid;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    if (pipe2(in, O_CLOEXEC) != 0) {
        snprintf(err, errcap, "pipe: %s", strerror(errno));
        return -1;
    }
    char **argv = calloc(c->nalert_command + 1, sizeof *argv); /* NULL-ended */
    if (argv == NULL) {
        close(in[0]);
        close(in[1]);
        snprintf(err, errcap, "out of memory");
        return -1;
    }
    memcpy(argv, c->alert_command, c->nalert_command * sizeof *argv);
    /* The child gets the JSON on stdin and none of the daemon's other
     * descriptors (client and provider sockets, the store), SIGPIPE as
     * usual, and a process group of its own, so that a timeout kills
     * what it started too. */
    sigset_t def;
    sigemptyset(&def);
    sigaddset(&def, SIGPIPE);
    posix_spawnattr_init(&at);
    posix_spawnattr_setsigdefault(&at, &def);
    posix_spawnattr_setpgroup(&at, 0);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    int rc = posix_spawnp(&pid, argv[0], &fa, &at, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    free(argv);
    close(in[0]);
    if (rc != 0) {
        close(in[1]);
        snprintf(err, errcap, "%s: %s", c->alert_command[0], strerror(rc));
        return -1;
    }
    /* The JSON is small (under a pipe's buffer); a child that does not
     * read it gets EPIPE, not a stuck thread (SIGPIPE is ignored). */
    size_t len = strlen(body), off = 0;
    while (off < len) {
        ssize_t w = write(in[1], body + off, len - off);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    close(in[1]);
    int status = 0;
    for (int waited = 0;; waited += 20) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        if (w < 0 && errno != EINTR) {
            snprintf(err, errcap, "waitpid: %s", strerror(errno));
            return -1;
        }
        if (waited >= SEND_TIMEOUT_MS) {
            kill(-pid, SIGKILL); /* its group */
            waitpid(pid, &status, 0);
            snprintf(err, errcap, "timed out after %d ms", SEND_TIMEOUT_MS);
            return -1;
        }
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        snprintf(err, errcap, "exit status %d",
                 WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
        return -1;
    }
    return 0;
}

typedef struct due {
    int64_t id;
    char *dedup, *dest, *message, *body;
    int attempts;
} due;

typedef struct dues {
    due v[DELIVER_PER_ROUND];
    size_t n;
} dues;

static int on_due(void *arg, const fb_outbox_row *row)
{
    dues *d = arg;
    if (d->n == DELIVER_PER_ROUND)
        return 1;
    due *x = &d->v[d->n];
    x->id = row->id;
    x->attempts = row->attempts;
    x->dedup = strdup(row->dedup);
    x->dest = strdup(row->dest);
    x->message = strdup(row->message);
    x->body = strdup(row->body);
    d->n++;
    return 0;
}

static void deliver(round *r)
{
    const fb_config *c = r->a->c;
    dues *d = calloc(1, sizeof *d);
    if (d == NULL) {
        r->err = FB_ENOMEM;
        return;
    }
    if (fb_store_outbox_due(r->a->store, r->now, DELIVER_PER_ROUND, on_due,
                            d) != FB_OK)
        r->err = FB_EIO;
    for (size_t i = 0; i < d->n; i++) {
        due *x = &d->v[i];
        char err[256] = "";
        int ok = -1;
        /* Stopping: what is left stays pending for the next start (a
         * stop waits for one delivery at most, not fifty). */
        pthread_mutex_lock(&r->a->mu);
        int stop = r->a->stopping;
        pthread_mutex_unlock(&r->a->mu);
        if (stop) {
            free(x->dedup);
            free(x->dest);
            free(x->message);
            free(x->body);
            continue;
        }
        if (x->dedup && x->dest && x->message && x->body) {
            if (strcmp(x->dest, "command") == 0) {
                ok = c->nalert_command > 0
                         ? run_command(c, x->body, err, sizeof err)
                         : (snprintf(err, sizeof err,
                                     "no command is configured now"),
                            -2);
            } else if (strncmp(x->dest, "webhook:", 8) == 0) {
                const fb_alert_webhook *h = NULL;
                char id[HOOK_ID_LEN + 1];
                for (size_t k = 0; k < c->nalert_webhooks && !h; k++) {
                    hook_id(c->alert_webhooks[k].url, id);
                    if (strcmp(id, x->dest) == 0)
                        h = &c->alert_webhooks[k];
                }
                ok = h ? post_webhook(h, x->body, x->message, err, sizeof err)
                       : (snprintf(err, sizeof err,
                                   "this webhook is no longer configured"),
                          -2);
            }
        }
        int attempts = x->attempts + 1;
        char dn[192];
        dest_name(c, x->dest ? x->dest : "?", dn, sizeof dn);
        if (ok == 0) {
            (void)fb_store_outbox_update(r->a->store, x->id, 1, attempts,
                                         r->now, NULL);
            r->sent++;
        } else if (ok == -2 || attempts >= c->alert_max_attempts) {
            fb_log(FB_LOG_ERROR,
                   "alert %s to %s: gave up after %d attempts: %s",
                   x->dedup ? x->dedup : "?", dn, attempts, err);
            (void)fb_store_outbox_update(r->a->store, x->id, 2, attempts,
                                         r->now, err);
            r->failed++;
        } else {
            int64_t backoff = INT64_C(1000) << (attempts < 9 ? attempts : 9);
            if (backoff > MAX_BACKOFF_MS)
                backoff = MAX_BACKOFF_MS;
            fb_log(FB_LOG_WARN,
                   "alert %s to %s: attempt %d failed (%s); next in %lld s",
                   x->dedup, dn, attempts, err,
                   (long long)(backoff / 1000));
            (void)fb_store_outbox_update(r->a->store, x->id, 0, attempts,
                                         r->now + backoff, err);
            r->retrying++;
        }
        free(x->dedup);
        free(x->dest);
        free(x->message);
        free(x->body);
    }
    free(d);
}

/* ---- rounds and the thread ---- */

fb_err fb_alerts_round(fb_alerts *a, char **summary)
{
    pthread_mutex_lock(&a->round_mu);
    round r = {.a = a, .now = fb_wall_ms(), .raised = json_array()};
    if (r.raised == NULL) {
        pthread_mutex_unlock(&a->round_mu);
        return FB_ENOMEM;
    }
    rules(&r);
    deliver(&r);
    if (summary != NULL) {
        json_t *j = json_pack("{s:O,s:i,s:i,s:i}", "raised", r.raised, "sent",
                              r.sent, "retrying", r.retrying, "failed",
                              r.failed);
        *summary = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
    }
    json_decref(r.raised);
    pthread_mutex_unlock(&a->round_mu);
    return r.err;
}

static void *thread_main(void *arg)
{
    fb_alerts *a = arg;
    pthread_mutex_lock(&a->mu);
    while (!a->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += a->c->alert_every_ms / 1000;
        ts.tv_nsec += (long)(a->c->alert_every_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        while (!a->stopping &&
               pthread_cond_timedwait(&a->cv, &a->mu, &ts) != ETIMEDOUT)
            ;
        if (a->stopping)
            break;
        pthread_mutex_unlock(&a->mu);
        if (fb_alerts_round(a, NULL) != FB_OK)
            fb_log(FB_LOG_WARN, "alerts: a round could not read or write "
                                "the store; the next one tries again");
        pthread_mutex_lock(&a->mu);
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

fb_alerts *fb_alerts_start(const fb_config *c)
{
    char errbuf[512];
    pthread_condattr_t ca;
    fb_alerts *a = calloc(1, sizeof *a);
    if (a == NULL)
        return NULL;
    a->c = c;
    pthread_mutex_init(&a->mu, NULL);
    pthread_mutex_init(&a->round_mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (fb_store_open(c, &a->store, errbuf, sizeof errbuf) != FB_OK) {
        fb_log(FB_LOG_ERROR, "alerts: %s", errbuf);
        goto fail;
    }
    if (pthread_create(&a->thread, NULL, thread_main, a) != 0)
        goto fail;
    return a;
fail:
    fb_store_close(a->store);
    pthread_mutex_destroy(&a->mu);
    pthread_mutex_destroy(&a->round_mu);
    pthread_cond_destroy(&a->cv);
    free(a);
    return NULL;
}

void fb_alerts_request_stop(fb_alerts *a)
{
    if (a == NULL)
        return;
    pthread_mutex_lock(&a->mu);
    a->stopping = 1;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

void fb_alerts_stop(fb_alerts *a)
{
    if (a == NULL)
        return;
    fb_alerts_request_stop(a);
    pthread_join(a->thread, NULL);
    fb_store_close(a->store);
    pthread_mutex_destroy(&a->mu);
    pthread_mutex_destroy(&a->round_mu);
    pthread_cond_destroy(&a->cv);
    free(a);
}
