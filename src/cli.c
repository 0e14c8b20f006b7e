/* cli.c - key management and spend reports, straight from the store.
 * They run beside a live daemon: SQLite in WAL mode lets them read while
 * it writes, and the daemon picks up new and revoked keys from the
 * store's change feed. */
#include "cli.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "budget.h"
#include "config.h"
#include "keys.h"
#include "report.h"
#include "store.h"

static const char *period_name(fb_period p)
{
    static const char *const n[] = {"total", "hour", "day", "month"};
    return n[p];
}

fb_config *fb_cli_config(const char *path)
{
    char errbuf[1024];
    fb_config *c = NULL;
    if (path == NULL)
        path = getenv("FUSEBOX_CONFIG");
    if (path == NULL)
        path = "fusebox.yaml";
    if (fb_config_load(path, &c, errbuf, sizeof errbuf) != FB_OK) {
        fprintf(stderr, "fusebox: %s\n", errbuf);
        return NULL;
    }
    return c;
}

static fb_store *open_store(const fb_config *c)
{
    char errbuf[1024];
    fb_store *s = NULL;
    if (fb_store_open(c, &s, errbuf, sizeof errbuf) != FB_OK)
        fprintf(stderr, "fusebox: %s\n", errbuf);
    return s;
}

static int valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= FB_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.'))
            return 0;
    }
    return 1;
}

/* ---- fusebox key ---- */

static int key_create(fb_config *c, const char *tenant, const char *job,
                      const char *budget, long long attempt)
{
    fb_key_rec k = {0};
    char text[FB_KEY_TEXT_LEN + 1], spec[48];
    fb_store *s = NULL;
    int rc = 1;

    if (tenant == NULL) {
        fprintf(stderr, "fusebox key create: --tenant is required\n");
        return 2;
    }
    const fb_tenant_conf *t = fb_config_tenant(c, tenant);
    if (t == NULL) {
        fprintf(stderr,
                "fusebox key create: tenant '%s' is not in %s; add it under "
                "budgets.tenants first\n",
                tenant, c->path);
        return 2;
    }
    if (job != NULL && !valid_name(job)) {
        fprintf(stderr, "fusebox key create: '%s' is not a valid job name "
                        "(letters, digits, '_', '-', '.')\n", job);
        return 2;
    }
    if (budget != NULL && fb_budget_spec_parse(budget, &k.budget) != FB_OK) {
        fprintf(stderr,
                "fusebox key create: --budget '%s' is not USD[/hour|day|month]\n",
                budget);
        return 2;
    }
    if (attempt < 0) {
        fprintf(stderr, "fusebox key create: --attempt must be >= 0\n");
        return 2;
    }
    fb_strlcpy(k.tenant, tenant, sizeof k.tenant);
    if (job)
        fb_strlcpy(k.job, job, sizeof k.job);
    k.attempt = attempt;
    k.created_ms = fb_wall_ms();
    if ((s = open_store(c)) == NULL)
        goto out;
    if (fb_key_generate(text, &k) != FB_OK) {
        fprintf(stderr, "fusebox key create: no randomness available\n");
        goto out;
    }
    if (fb_store_begin(s) != FB_OK || fb_store_key_insert(s, &k) != FB_OK ||
        fb_store_change_add(s, "key_created", k.id) != FB_OK ||
        fb_store_commit(s) != FB_OK) {
        fb_store_rollback(s);
        fprintf(stderr, "fusebox key create: cannot write the store\n");
        goto out;
    }
    fb_budget_spec_format(&k.budget, spec, sizeof spec);
    fprintf(stderr, "created key %s for tenant %s%s%s, own budget %s\n", k.id,
            k.tenant, job ? ", job " : "", job ? job : "", spec);
    if (job && fb_config_job(t, job) == NULL)
        fprintf(stderr,
                "note: job '%s' has no budget in the config; the tenant's, "
                "the global and the key's own ceilings apply\n",
                job);
    fprintf(stderr, "the key is shown once, below; store it now\n");
    printf("%s\n", text);
    fflush(stdout);
    rc = 0;
out:
    explicit_bzero(text, sizeof text);
    fb_store_close(s);
    return rc;
}

static int list_one(void *arg, const fb_key_rec *k)
{
    json_t *arr = arg;
    char spec[48];
    fb_budget_spec_format(&k->budget, spec, sizeof spec);
    if (arr != NULL) {
        json_array_append_new(
            arr, json_pack("{s:s,s:s,s:s,s:s,s:I,s:s,s:I,s:b}", "id", k->id,
                           "prefix", k->prefix, "tenant", k->tenant, "job",
                           k->job, "attempt", (json_int_t)k->attempt, "budget",
                           spec, "created_ms", (json_int_t)k->created_ms,
                           "revoked", k->revoked_ms != 0));
        return 0;
    }
    printf("%-16s %-12s %-16s %-20s %-16s %s\n", k->id, k->prefix, k->tenant,
           k->job[0] ? k->job : "-", spec, k->revoked_ms ? "revoked" : "active");
    return 0;
}

static int key_list(fb_config *c, int as_json)
{
    fb_store *s = open_store(c);
    json_t *arr = as_json ? json_array() : NULL;
    int rc = 1;
    if (s == NULL)
        goto out;
    if (!as_json)
        printf("%-16s %-12s %-16s %-20s %-16s %s\n", "ID", "PREFIX", "TENANT",
               "JOB", "BUDGET", "STATE");
    if (fb_store_key_list(s, list_one, arr) != FB_OK) {
        fprintf(stderr, "fusebox key list: cannot read the store: %s\n",
                fb_store_why(s));
        goto out;
    }
    if (as_json) {
        json_t *o = json_pack("{s:O}", "keys", arr);
        char *text = json_dumps(o, JSON_INDENT(2));
        printf("%s\n", text ? text : "{}");
        free(text);
        json_decref(o);
    }
    rc = 0;
out:
    json_decref(arr);
    fb_store_close(s);
    return rc;
}

static int key_revoke(fb_config *c, const char *id)
{
    fb_store *s = open_store(c);
    fb_key_rec k;
    int rc = 1;
    fb_err err;
    if (s == NULL)
        return 1;
    if ((err = fb_store_begin(s)) == FB_OK &&
        (err = fb_store_key_find(s, id, &k)) == FB_OK &&
        (err = fb_store_key_revoke(s, k.id, fb_wall_ms())) == FB_OK &&
        (err = fb_store_change_add(s, "key_revoked", k.id)) == FB_OK)
        err = fb_store_commit(s);
    if (err != FB_OK) {
        fb_store_rollback(s);
        fprintf(stderr, "fusebox key revoke: %s\n",
                err == FB_ENOTFOUND ? "no active key with that id or prefix"
                : err == FB_EEXIST  ? "that prefix names several keys; give the id"
                                    : "cannot write the store");
        goto out;
    }
    fprintf(stderr, "revoked %s; running daemons drop it within a second\n",
            k.id);
    rc = 0;
out:
    fb_store_close(s);
    return rc;
}

int fb_cli_key(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"tenant", required_argument, NULL, 't'},
        {"job", required_argument, NULL, 'j'},
        {"budget", required_argument, NULL, 'b'},
        {"attempt", required_argument, NULL, 'a'},
        {"json", no_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *cfg = NULL, *tenant = NULL, *job = NULL, *budget = NULL;
    long long attempt = 0;
    int as_json = 0, o, rc = 2;
    fb_config *c = NULL;

    if (argc < 2) {
        fprintf(stderr, "usage: fusebox key create|list|revoke [options]\n");
        return 2;
    }
    const char *verb = argv[1];
    optind = 2;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': cfg = optarg; break;
        case 't': tenant = optarg; break;
        case 'j': job = optarg; break;
        case 'b': budget = optarg; break;
        case 'a': {
            char *end;
            attempt = strtoll(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0')
                attempt = -1;
            break;
        }
        case 'J': as_json = 1; break;
        case 'h':
            printf("fusebox key create --config FILE --tenant T [--job J] "
                   "[--budget USD[/hour|day|month]] [--attempt N]\n"
                   "fusebox key list --config FILE [--json]\n"
                   "fusebox key revoke --config FILE ID\n");
            return 0;
        default: return 2;
        }
    }
    if ((c = fb_cli_config(cfg)) == NULL)
        return 1;
    if (strcmp(verb, "create") == 0)
        rc = key_create(c, tenant, job, budget, attempt);
    else if (strcmp(verb, "list") == 0)
        rc = key_list(c, as_json);
    else if (strcmp(verb, "revoke") == 0 && optind < argc)
        rc = key_revoke(c, argv[optind]);
    else
        fprintf(stderr, "usage: fusebox key create|list|revoke [options]\n");
    fb_config_free(c);
    return rc;
}

/* ---- fusebox spend ---- */

/* "2026-11-28", "2026-11-28T10:00:00Z", "24h", "7d", "now"; ms or -1. */
static int64_t parse_time(const char *s)
{
    struct tm tm = {0};
    char *end;
    long long n = strtoll(s, &end, 10);
    if (end != s && (*end == 'h' || *end == 'd') && end[1] == '\0' && n >= 0)
        return fb_wall_ms() - n * (*end == 'h' ? 3600000LL : 86400000LL);
    if (strcmp(s, "now") == 0)
        return fb_wall_ms();
    const char *rest = strptime(s, "%Y-%m-%d", &tm);
    if (rest == NULL)
        return -1;
    if (*rest == 'T' || *rest == ' ') {
        const char *r2 = strptime(rest + 1, "%H:%M:%S", &tm);
        if (r2 == NULL)
            r2 = strptime(rest + 1, "%H:%M", &tm);
        if (r2 == NULL)
            return -1;
        rest = r2;
    }
    if (*rest == 'Z')
        rest++;
    if (*rest != '\0')
        return -1;
    return (int64_t)timegm(&tm) * 1000;
}

typedef struct spend_ctx {
    fb_config *c;
    fb_store *s;
    const char *tenant, *job;
    int64_t since, until, now;
    json_t *rows;
    int failed;
} spend_ctx;

static void money_json(json_t *o, const char *key, fb_money m)
{
    char buf[32];
    fb_money_format(m, buf, sizeof buf);
    json_object_set_new(o, key, json_string(buf));
}

static void add_row(spend_ctx *x, const char *scope, const char *tenant,
                    const char *job, const fb_budget_spec *spec)
{
    fb_spend sp, win;
    fb_spend_filter f = {.tenant = tenant,
                         .job = job,
                         .since_ms = x->since,
                         .until_ms = x->until};
    if (fb_store_spend(x->s, &f, &sp) != FB_OK) {
        x->failed = 1;
        return;
    }
    json_t *o = json_object();
    json_object_set_new(o, "scope", json_string(scope));
    if (tenant)
        json_object_set_new(o, "tenant", json_string(tenant));
    if (job)
        json_object_set_new(o, "job", json_string(job));
    money_json(o, "spent_usd", sp.spent);
    json_object_set_new(o, "spent_pico", json_integer(sp.spent));
    money_json(o, "in_flight_usd", sp.reserved);
    json_object_set_new(o, "paid_calls", json_integer(sp.paid_calls));
    json_object_set_new(o, "blocked_calls", json_integer(sp.blocked_calls));
    json_object_set_new(o, "replayed_calls", json_integer(sp.replayed_calls));
    money_json(o, "saved_usd", sp.saved);
    json_object_set_new(o, "saved_pico", json_integer(sp.saved));
    json_object_set_new(o, "calls", json_integer(sp.calls));
    if (spec != NULL && spec->set) {
        fb_spend_filter wf = {.tenant = tenant, .job = job};
        wf.since_ms = fb_period_start(spec->period, x->now);
        if (fb_store_spend(x->s, &wf, &win) != FB_OK) {
            x->failed = 1;
            json_decref(o);
            return;
        }
        money_json(o, "limit_usd", spec->limit);
        json_object_set_new(o, "period", json_string(period_name(spec->period)));
        money_json(o, "period_spent_usd", win.spent);
        money_json(o, "remaining_usd",
                   spec->limit > win.spent ? spec->limit - win.spent : 0);
    }
    json_array_append_new(x->rows, o);
}

static int ledger_scope(void *arg, const char *tenant, const char *job)
{
    spend_ctx *x = arg;
    char name[2 * FB_NAME_MAX + 8];
    if (x->tenant && strcmp(tenant, x->tenant) != 0)
        return 0;
    if (x->job && strcmp(job, x->job) != 0)
        return 0;
    const fb_tenant_conf *t = fb_config_tenant(x->c, tenant);
    if (job[0] == '\0' || (t && fb_config_job(t, job)))
        return 0; /* configured jobs are listed already */
    snprintf(name, sizeof name, "job:%s", job);
    add_row(x, name, tenant, job, NULL);
    return 0;
}

static int tenant_seen(json_t *rows, const char *tenant)
{
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r)
    {
        const char *sc = json_string_value(json_object_get(r, "scope"));
        if (sc && strncmp(sc, "tenant:", 7) == 0 && strcmp(sc + 7, tenant) == 0)
            return 1;
    }
    return 0;
}

static int ledger_tenant(void *arg, const char *tenant, const char *job)
{
    spend_ctx *x = arg;
    char name[FB_NAME_MAX + 8];
    (void)job;
    if ((x->tenant && strcmp(tenant, x->tenant) != 0) ||
        tenant_seen(x->rows, tenant))
        return 0;
    snprintf(name, sizeof name, "tenant:%s", tenant);
    add_row(x, name, tenant, NULL, NULL);
    return 0;
}

static void print_text(json_t *rows)
{
    size_t i;
    json_t *r;
    printf("%-28s %14s %7s %7s %8s %14s %14s %14s\n", "SCOPE", "SPENT_USD",
           "PAID", "BLOCKED", "REPLAYED", "SAVED_USD", "LIMIT_USD",
           "PERIOD_SPENT");
    json_array_foreach(rows, i, r)
    {
        const char *lim = json_string_value(json_object_get(r, "limit_usd"));
        const char *per = json_string_value(json_object_get(r, "period"));
        const char *ps =
            json_string_value(json_object_get(r, "period_spent_usd"));
        char limbuf[48];
        snprintf(limbuf, sizeof limbuf, "%s%s%s", lim ? lim : "-",
                 per && strcmp(per, "total") ? "/" : "",
                 per && strcmp(per, "total") ? per : "");
        printf("%-28s %14s %7lld %7lld %8lld %14s %14s %14s\n",
               json_string_value(json_object_get(r, "scope")),
               json_string_value(json_object_get(r, "spent_usd")),
               (long long)json_integer_value(json_object_get(r, "paid_calls")),
               (long long)json_integer_value(
                   json_object_get(r, "blocked_calls")),
               (long long)json_integer_value(
                   json_object_get(r, "replayed_calls")),
               json_string_value(json_object_get(r, "saved_usd")), limbuf,
               ps ? ps : "-");
    }
}

/* fusebox spend --by: one report (report.h). */
static int spend_by(fb_report_by by, const char *cfg, const char *tenant,
                    const char *job, const char *key, int64_t since,
                    int64_t until, fb_report_format fmt)
{
    fb_config *c = fb_cli_config(cfg);
    fb_store *s = NULL;
    int rc = 1;
    if (c == NULL || (s = open_store(c)) == NULL)
        goto out;
    fb_spend_filter f = {.tenant = tenant,
                         .job = job,
                         .key_id = key,
                         .since_ms = since,
                         .until_ms = until};
    if (fb_report_write(s, by, &f, fmt, stdout) != FB_OK) {
        fprintf(stderr, "fusebox spend: cannot read the store: %s\n", fb_store_why(s));
        goto out;
    }
    rc = 0;
out:
    fb_store_close(s);
    fb_config_free(c);
    return rc;
}

int fb_cli_spend(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"tenant", required_argument, NULL, 't'},
        {"job", required_argument, NULL, 'j'},
        {"since", required_argument, NULL, 's'},
        {"until", required_argument, NULL, 'u'},
        {"json", no_argument, NULL, 'J'},
        {"csv", no_argument, NULL, 'C'},
        {"by", required_argument, NULL, 'b'},
        {"key", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    spend_ctx x = {0};
    const char *cfg = NULL, *key = NULL;
    int as_json = 0, as_csv = 0, by = -1, o, rc = 1;
    char name[2 * FB_NAME_MAX + 16];

    optind = 1;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': cfg = optarg; break;
        case 't': x.tenant = optarg; break;
        case 'j': x.job = optarg; break;
        case 's':
        case 'u': {
            int64_t t = parse_time(optarg);
            if (t < 0) {
                fprintf(stderr,
                        "fusebox spend: '%s' is not a time (2026-11-28, "
                        "2026-11-28T10:00Z, 24h, 7d)\n",
                        optarg);
                return 2;
            }
            if (o == 's')
                x.since = t;
            else
                x.until = t;
            break;
        }
        case 'J': as_json = 1; break;
        case 'C': as_csv = 1; break;
        case 'k': key = optarg; break;
        case 'b':
            if ((by = fb_report_by_parse(optarg)) < 0) {
                fprintf(stderr, "fusebox spend: --by takes tenant, job, "
                                "model, key, hour or day, not '%s'\n",
                        optarg);
                return 2;
            }
            break;
        case 'h':
            printf("fusebox spend --config FILE [--tenant T] [--job J] "
                   "[--since TIME] [--until TIME] [--json]\n"
                   "fusebox spend --by tenant|job|model|key|hour|day "
                   "[--tenant T] [--job J] [--key ID] [--since TIME] "
                   "[--until TIME] [--json|--csv]\n");
            return 0;
        default: return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "fusebox spend: unexpected argument '%s'\n",
                argv[optind]);
        return 2;
    }
    if (as_json && as_csv) {
        fprintf(stderr, "fusebox spend: --json or --csv, not both\n");
        return 2;
    }
    if ((as_csv || key) && by < 0) {
        fprintf(stderr, "fusebox spend: --csv and --key go with --by\n");
        return 2;
    }
    if (x.since && x.until && x.until <= x.since) {
        fprintf(stderr, "fusebox spend: --until must be after --since\n");
        return 2;
    }
    if (by >= 0)
        return spend_by((fb_report_by)by, cfg, x.tenant, x.job, key, x.since,
                        x.until,
                        as_json  ? FB_REPORT_JSON
                        : as_csv ? FB_REPORT_CSV
                                 : FB_REPORT_TEXT);
    if ((x.c = fb_cli_config(cfg)) == NULL)
        return 1;
    if ((x.s = open_store(x.c)) == NULL)
        goto out;
    x.now = fb_wall_ms();
    x.rows = json_array();
    if (x.tenant == NULL && x.job == NULL)
        add_row(&x, "global", NULL, NULL, &x.c->global);
    for (size_t i = 0; i < x.c->ntenants; i++) {
        const fb_tenant_conf *t = &x.c->tenants[i];
        if (x.tenant && strcmp(t->name, x.tenant) != 0)
            continue;
        if (x.job == NULL) {
            snprintf(name, sizeof name, "tenant:%s", t->name);
            add_row(&x, name, t->name, NULL, &t->budget);
        }
        for (size_t j = 0; j < t->njobs; j++) {
            if (x.job && strcmp(t->jobs[j].name, x.job) != 0)
                continue;
            snprintf(name, sizeof name, "job:%s", t->jobs[j].name);
            add_row(&x, name, t->name, t->jobs[j].name, &t->jobs[j].budget);
        }
    }
    if (x.job == NULL && fb_store_scopes(x.s, ledger_tenant, &x) != FB_OK)
        x.failed = 1;
    if (fb_store_scopes(x.s, ledger_scope, &x) != FB_OK)
        x.failed = 1;
    if (x.failed) {
        fprintf(stderr, "fusebox spend: cannot read the store: %s\n", fb_store_why(x.s));
        goto out;
    }
    if (as_json) {
        json_t *root = json_object();
        json_object_set_new(root, "since_ms", json_integer(x.since));
        json_object_set_new(root, "until_ms",
                            x.until ? json_integer(x.until) : json_null());
        json_object_set(root, "scopes", x.rows);
        char *text = json_dumps(root, JSON_INDENT(2));
        printf("%s\n", text ? text : "{}");
        free(text);
        json_decref(root);
    } else {
        print_text(x.rows);
    }
    rc = 0;
out:
    json_decref(x.rows);
    fb_store_close(x.s);
    fb_config_free(x.c);
    return rc;
}

/* ---- fusebox trip | reset | replay purge ---- */

/* The scope named by --global/--tenant/--job/--key, as the daemon names
 * it. A job needs its tenant: --tenant, or the one tenant of the config
 * that has a job of that name. */
static int scope_of(const fb_config *c, int global, const char *tenant,
                    const char *job, const char *key, char *out, size_t cap)
{
    if (global + (job != NULL || tenant != NULL) + (key != NULL) != 1) {
        fprintf(stderr, "name one of --global, --tenant T [--job J], --job J, "
                        "--key ID\n");
        return -1;
    }
    if (global) {
        snprintf(out, cap, "global");
        return 0;
    }
    if (key) {
        snprintf(out, cap, "key:%s", key);
        return 0;
    }
    if (job == NULL) {
        snprintf(out, cap, "tenant:%s", tenant);
        return 0;
    }
    if (tenant == NULL) {
        for (size_t i = 0; i < c->ntenants; i++) {
            if (fb_config_job(&c->tenants[i], job) == NULL)
                continue;
            if (tenant != NULL) {
                fprintf(stderr, "job %s is in several tenants: add --tenant\n",
                        job);
                return -1;
            }
            tenant = c->tenants[i].name;
        }
        if (tenant == NULL) {
            fprintf(stderr,
                    "job %s is not in the config: add --tenant to name it\n",
                    job);
            return -1;
        }
    }
    snprintf(out, cap, "job:%s/%s", tenant, job);
    return 0;
}

/* A reset clears a trip and the rerun guard's memory of deterministic
 * failures; either is enough to call it done. */
/* fusebox trip|reset [--global | --tenant T | --job J [--tenant T] |
 * --key ID] [--reason TEXT]: an emergency stop that running daemons apply
 * within a second (and keep across restarts), and its undoing. */
int fb_cli_trip(int argc, char **argv, int set)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"tenant", required_argument, NULL, 't'},
        {"job", required_argument, NULL, 'j'},
        {"key", required_argument, NULL, 'k'},
        {"global", no_argument, NULL, 'g'},
        {"reason", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *cfg = NULL, *tenant = NULL, *job = NULL, *key = NULL;
    const char *reason = "emergency stop";
    int global = 0, o, rc = 2;
    char scope[2 * FB_NAME_MAX + 16];
    fb_config *c = NULL;
    fb_store *s = NULL;
    fb_err err;

    optind = 1;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': cfg = optarg; break;
        case 't': tenant = optarg; break;
        case 'j': job = optarg; break;
        case 'k': key = optarg; break;
        case 'g': global = 1; break;
        case 'r': reason = optarg; break;
        case 'h':
            printf("fusebox %s [--global | --tenant T | --job J [--tenant T] "
                   "| --key ID]%s\n",
                   set ? "trip" : "reset", set ? " [--reason TEXT]" : "");
            return 0;
        default: return 2;
        }
    }
    if ((c = fb_cli_config(cfg)) == NULL)
        return 1;
    if (scope_of(c, global, tenant, job, key, scope, sizeof scope) != 0)
        goto out;
    rc = 1;
    if ((s = open_store(c)) == NULL)
        goto out;
    /* A trip by hand is an emergency stop; its reason says so (the gateway
     * lets replays through only trips it made for a retry budget). */
    char why[200];
    snprintf(why, sizeof why, "by hand: %s", reason);
    if ((err = fb_store_trip_apply(s, scope, set, why, fb_wall_ms())) !=
        FB_OK) {
        fprintf(stderr, "fusebox %s: %s\n", set ? "trip" : "reset",
                err == FB_ENOTFOUND ? "that scope is not tripped"
                                    : "cannot write the store");
        goto out;
    }
    fprintf(stderr, "%s %s; running daemons apply it within a second\n",
            set ? "tripped" : "reset", scope);
    rc = 0;
out:
    fb_store_close(s);
    fb_config_free(c);
    return rc;
}

/* fusebox replay purge [--job J [--tenant T] | --tenant T | --key ID |
 * --all]: drop kept results (without a scope: the expired ones). */
int fb_cli_replay(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"tenant", required_argument, NULL, 't'},
        {"job", required_argument, NULL, 'j'},
        {"key", required_argument, NULL, 'k'},
        {"all", no_argument, NULL, 'a'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *cfg = NULL, *tenant = NULL, *job = NULL, *key = NULL;
    int all = 0, o, rc = 2;
    char scope[2 * FB_NAME_MAX + 16];
    const char *prefix = NULL;
    fb_config *c = NULL;
    fb_store *s = NULL;
    int64_t n = 0;

    if (argc < 2 || strcmp(argv[1], "purge") != 0) {
        fprintf(stderr, "usage: fusebox replay purge [--job J [--tenant T] | "
                        "--tenant T | --key ID | --all]\n");
        return 2;
    }
    optind = 2;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': cfg = optarg; break;
        case 't': tenant = optarg; break;
        case 'j': job = optarg; break;
        case 'k': key = optarg; break;
        case 'a': all = 1; break;
        case 'h':
            printf("fusebox replay purge [--job J [--tenant T] | --tenant T | "
                   "--key ID | --all]\n");
            return 0;
        default: return 2;
        }
    }
    if ((c = fb_cli_config(cfg)) == NULL)
        return 1;
    if (all) {
        prefix = "";
    } else if (job || key) {
        if (scope_of(c, 0, tenant, job, key, scope, sizeof scope) != 0)
            goto out;
        prefix = scope;
    } else if (tenant) {
        /* every job of the tenant ("job:T/...") */
        snprintf(scope, sizeof scope, "job:%s/", tenant);
        prefix = scope;
    }
    rc = 1;
    if ((s = open_store(c)) == NULL)
        goto out;
    /* The epoch tells a running daemon to forget the results it holds in
     * memory before it serves one again. */
    if (fb_store_results_purge(s, fb_wall_ms(), prefix, 0, 0, &n) != FB_OK ||
        fb_store_epoch_bump(c->data_dir) != FB_OK) {
        fprintf(stderr, "fusebox replay purge: cannot write the store\n");
        goto out;
    }
    printf("purged %lld kept results\n", (long long)n);
    rc = 0;
out:
    fb_store_close(s);
    fb_config_free(c);
    return rc;
}

/* ---- fusebox ledger verify ---- */

typedef struct verify_ctx {
    json_t *checks;
    int as_json;
    int64_t passed, warnings, failures;
} verify_ctx;

static const char *const level_name[] = {
    [FB_VERIFY_INFO] = "info", [FB_VERIFY_OK] = "ok",
    [FB_VERIFY_WARN] = "warn", [FB_VERIFY_FAIL] = "FAIL"};

static void verify_one(void *arg, const char *check, fb_verify_level level,
                       int64_t count, const char *detail)
{
    verify_ctx *x = arg;
    if (level == FB_VERIFY_OK)
        x->passed++;
    else if (level == FB_VERIFY_WARN)
        x->warnings++;
    else if (level == FB_VERIFY_FAIL)
        x->failures++;
    if (x->as_json) {
        json_array_append_new(
            x->checks, json_pack("{s:s,s:s,s:I,s:s}", "check", check, "status",
                                 level == FB_VERIFY_FAIL ? "fail"
                                                         : level_name[level],
                                 "count", (json_int_t)count, "detail",
                                 detail ? detail : ""));
    } else {
        printf("  %-4s %-20s %10lld  %s\n", level_name[level], check,
               (long long)count, detail ? detail : "");
    }
}

/* Bytes in data_dir/fusebox.journal.N (0 when missing). */
static int64_t journal_bytes(const char *data_dir, int n)
{
    char path[4096];
    struct stat sb;
    if ((size_t)snprintf(path, sizeof path, "%s/fusebox.journal.%d", data_dir,
                         n) >= sizeof path ||
        stat(path, &sb) != 0)
        return 0;
    return (int64_t)sb.st_size;
}

static int ledger_verify(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"json", no_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *cfg = NULL;
    verify_ctx x = {0};
    fb_config *c = NULL;
    fb_store *s = NULL;
    char db[4096];
    struct stat sb;
    int o, rc = 1;

    optind = 2;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': cfg = optarg; break;
        case 'J': x.as_json = 1; break;
        case 'h':
            printf("fusebox ledger verify --config FILE [--json]\n");
            return 0;
        default: return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "fusebox ledger verify: unexpected '%s'\n",
                argv[optind]);
        return 2;
    }
    if ((c = fb_cli_config(cfg)) == NULL)
        return 1;
    /* Verify must not create an empty store where none was. */
    if (fb_store_embedded(c) &&
        ((size_t)snprintf(db, sizeof db, "%s/fusebox.db", c->data_dir) >=
             sizeof db ||
         stat(db, &sb) != 0)) {
        fprintf(stderr, "fusebox ledger verify: no store at %s\n", db);
        goto out;
    }
    if ((s = open_store(c)) == NULL)
        goto out;
    int64_t j0 = journal_bytes(c->data_dir, 0),
            j1 = journal_bytes(c->data_dir, 1);
    x.checks = json_array();
    if (!x.as_json)
        printf("fusebox ledger verify: %s\n", db);
    fb_err err = fb_store_verify(s, fb_wall_ms(), verify_one, &x);
    /* Journal records are answers the store does not hold yet: the
     * running daemon applies them, or fusebox serve at its next start.
     * Not a failure. */
    verify_one(&x, "journal_pending", FB_VERIFY_INFO, j0 + j1,
               "bytes in fusebox.journal.{0,1} (applied by the daemon, or "
               "when fusebox serve starts)");
    int clean = err == FB_OK && x.failures == 0;
    if (x.as_json) {
        json_t *root = json_pack(
            "{s:s,s:b,s:I,s:I,s:I,s:I,s:o}", "store", db, "ok", clean,
            "passed", (json_int_t)x.passed, "warnings",
            (json_int_t)x.warnings, "failures", (json_int_t)x.failures,
            "journal_pending_bytes", (json_int_t)(j0 + j1), "checks",
            x.checks);
        x.checks = NULL;
        char *text = root ? json_dumps(root, JSON_INDENT(2)) : NULL;
        printf("%s\n", text ? text : "{}");
        free(text);
        json_decref(root);
    } else if (clean) {
        printf("ledger verify: clean (%lld checks passed, %lld warnings)\n",
               (long long)x.passed, (long long)x.warnings);
    } else {
        printf("ledger verify: FAILED (%lld checks failed%s, %lld passed)\n",
               (long long)x.failures,
               err != FB_OK ? ", some could not run" : "",
               (long long)x.passed);
    }
    rc = clean ? 0 : 1;
out:
    json_decref(x.checks);
    fb_store_close(s);
    fb_config_free(c);
    return rc;
}

/* ---- fusebox migrate ---- */

int fb_cli_migrate(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *cfg = NULL, *kind = "";
    char errbuf[1024];
    int o, from, to, rc = 1;
    fb_config *c = NULL;
    optind = 1;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': cfg = optarg; break;
        case 'h':
            printf("fusebox migrate --config FILE\n"
                   "  bring the store's schema to this fusebox's version "
                   "(PostgreSQL: before\n  nodes of a new version start; "
                   "SQLite migrates as it opens)\n");
            return 0;
        default: return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "fusebox migrate: unexpected '%s'\n", argv[optind]);
        return 2;
    }
    if ((c = fb_cli_config(cfg)) == NULL)
        return 1;
    if (fb_store_migrate(c, &kind, &from, &to, errbuf, sizeof errbuf) !=
        FB_OK) {
        fprintf(stderr, "fusebox migrate: %s\n", errbuf);
        goto out;
    }
    if (from < 0 || from == to)
        printf("fusebox migrate: %s store at schema version %d\n", kind, to);
    else
        printf("fusebox migrate: %s store migrated from schema version %d "
               "to %d\n",
               kind, from, to);
    rc = 0;
out:
    fb_config_free(c);
    return rc;
}

int fb_cli_ledger(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "verify") != 0) {
        fprintf(stderr, "usage: fusebox ledger verify --config FILE [--json]\n");
        return 2;
    }
    return ledger_verify(argc, argv);
}
