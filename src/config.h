/* config.h - fusebox.yaml, read once into an immutable fb_config.
 * Unknown keys are errors (a typo must not silently drop a budget).
 * Relative paths are resolved against the config file's directory. */
#ifndef FB_CONFIG_H
#define FB_CONFIG_H

#include <stddef.h>
#include "common.h"
#include "money.h"
#include "price.h"

typedef enum fb_period {
    FB_PERIOD_NONE = 0, /* a lifetime ceiling */
    FB_PERIOD_HOUR,
    FB_PERIOD_DAY,
    FB_PERIOD_MONTH, /* calendar periods, UTC */
} fb_period;

typedef struct fb_budget_spec {
    int set;          /* 0: no ceiling at this scope */
    fb_money limit;
    fb_period period;
} fb_budget_spec;

/* Parse "5", "5/day", "0.25/hour", "100/month", "$5/day" (a leading '$'
 * is allowed, blanks around '/' too). FB_EINVAL with no side effect on
 * anything else. */
fb_err fb_budget_spec_parse(const char *s, fb_budget_spec *out);
/* "5.0/day" style text for the spec ("none" when unset); needs cap >= 48. */
size_t fb_budget_spec_format(const fb_budget_spec *b, char *buf, size_t cap);

typedef enum fb_provider_kind {
    FB_PROVIDER_OPENAI,
    FB_PROVIDER_ANTHROPIC,
    FB_PROVIDER_GENERIC,
} fb_provider_kind;

typedef struct fb_provider_conf {
    char *name;        /* first path segment: /<name>/... */
    fb_provider_kind kind;
    char *base_url;    /* no trailing slash */
    char *api_key_env; /* env var holding the real key; NULL: none sent */
    /* generic only */
    fb_money price_per_call;
    char *count_field; /* request JSON field multiplying the price, or NULL */
    char *auth_header; /* header carrying the key; default "Authorization"
                          (value "Bearer KEY"); other names get KEY as is */
} fb_provider_conf;

typedef struct fb_job_conf {
    char *name;
    fb_budget_spec budget;
    int max_runs_per_day; /* fusebox run's rerun guard; 0: no limit */
} fb_job_conf;

typedef struct fb_tenant_conf {
    char *name;
    fb_budget_spec budget;
    fb_job_conf *jobs;
    size_t njobs;
} fb_tenant_conf;

typedef struct fb_model_price_conf {
    char *model;
    fb_price price;
} fb_model_price_conf;

typedef enum fb_durability {
    FB_DURABILITY_PROCESS = 0, /* survives kill -9 (default) */
    FB_DURABILITY_FULL,        /* survives power loss: fsync per commit */
} fb_durability;

/* Alert rules for a scope (alerts.h); a zero turns a rule off. Factors
 * are fixed point like money: 3x is 3 * FB_PICO_PER_USD. */
typedef struct fb_alert_rule {
    fb_money rate_factor; /* the last hour against the same hours before */
    fb_money rate_min;    /* and at least this much spent in it */
    int runs_per_day;     /* fusebox run starts of one job a UTC day */
    int forwards_per_fp;  /* one request bought more times a UTC day */
    int breaker_minutes;  /* the breaker's window; 0: no breaker */
    fb_money breaker_factor;
    fb_money breaker_min;
} fb_alert_rule;

typedef struct fb_alert_override {
    char *tenant;
    char *job; /* NULL: every job of the tenant */
    fb_alert_rule rule;
} fb_alert_override;

typedef struct fb_alert_webhook {
    char *url;
    int slack; /* 1: Slack's {"text": ...}; 0: fusebox's JSON */
} fb_alert_webhook;

typedef struct fb_config {
    char *path;        /* the file it was read from */
    char *listen_host; /* "127.0.0.1" */
    int listen_port;   /* 8787 */
    char *data_dir;    /* absolute or config-relative, resolved */
    char *store_url;   /* "store:": NULL for SQLite under data_dir, else a
                          postgres:// URL (FUSEBOX_STORE overrides both) */
    int cluster_lease_ms; /* "cluster.lease_ms": 10000; how long a dead
                             node's budget slices and in-flight markers
                             stay held (store_pg.c) */
    char **prices;     /* price files, resolved */
    size_t nprices;
    fb_model_price_conf *model_prices; /* "model_prices:" overrides */
    size_t nmodel_prices;
    fb_provider_conf *providers;
    size_t nproviders;
    fb_budget_spec global;
    fb_tenant_conf *tenants;
    size_t ntenants;
    fb_durability durability;
    /* limits ("limits:" section), with defaults */
    size_t max_body_bytes;      /* 8 MiB */
    size_t max_header_bytes;    /* 64 KiB */
    int max_connections;        /* 4096 */
    int client_timeout_ms;      /* 30000: idle/slow client */
    int upstream_connect_timeout_ms; /* 10000 */
    int upstream_timeout_ms;    /* 600000: whole upstream exchange */
    char *log_level;            /* "info" */
    /* "replay:" section: kept results and retry budgets */
    int replay_enabled;         /* 1 */
    int64_t replay_ttl_ms;      /* 7 days */
    int64_t replay_max_bytes;   /* 1 GiB of kept bodies; oldest go first */
    int64_t replay_cache_bytes; /* 64 MiB of them also in memory */
    char **replay_ignore;       /* top-level body fields left out of the
                                   fingerprint (volatile ones) */
    size_t nreplay_ignore;
    int idempotency_wait;       /* 0: 409 while the first is in flight */
    int retry_max_per_fp;       /* upstream attempts per fingerprint after
                                   transient failures: 3 */
    int retry_max_percent;      /* retries per forwarded calls, a day: 20 */
    int retry_floor;            /* retries always allowed a day: 10 */
    /* "admin:" section: /metrics and /dashboard on a listener of their own */
    char *admin_host;           /* "127.0.0.1"; NULL: "off" */
    int admin_port;             /* 8788 */
    char *admin_token_env;      /* "FUSEBOX_ADMIN_TOKEN": the token's env var;
                                   unset or empty: no admin listener */
    /* "alerts:" section (alerts.h), with defaults */
    int alerts_enabled;         /* 1 */
    int alert_every_ms;         /* 60000 */
    int alert_percents[8];      /* budget thresholds: 50, 80, 100 */
    size_t nalert_percents;
    fb_alert_rule alert_rule;   /* for every scope without an override */
    fb_alert_override *alert_overrides;
    size_t nalert_overrides;
    fb_alert_webhook *alert_webhooks;
    size_t nalert_webhooks;
    char **alert_command;       /* argv; the alert as JSON on stdin */
    size_t nalert_command;
    int alert_max_attempts;     /* 5: per alert and destination */
} fb_config;

/* The alert rule for a tenant's job (job "" for the tenant itself): the
 * job's override, else the tenant's, else the defaults. */
const fb_alert_rule *fb_config_alert_rule(const fb_config *c,
                                          const char *tenant,
                                          const char *job);

/* Read and validate a config file. On error returns FB_EIO/FB_EINVAL and
 * writes "file:line: reason" to errbuf; *out stays NULL. The caller frees
 * the result with fb_config_free. */
fb_err fb_config_load(const char *path, fb_config **out, char *errbuf,
                      size_t errcap);
/* The same from YAML text; base_dir resolves relative paths (NULL: the
 * current directory). Messages and c->path name the file "<config>". */
fb_err fb_config_parse(const char *yaml, size_t len, const char *base_dir,
                       fb_config **out, char *errbuf, size_t errcap);
void fb_config_free(fb_config *c);

/* Is s (len bytes) a PostgreSQL URL fusebox accepts as a store? */
int fb_store_url_ok(const char *s, size_t len);

const fb_provider_conf *fb_config_provider(const fb_config *c,
                                           const char *name, size_t len);
const fb_tenant_conf *fb_config_tenant(const fb_config *c, const char *name);
const fb_job_conf *fb_config_job(const fb_tenant_conf *t, const char *name);

#endif
