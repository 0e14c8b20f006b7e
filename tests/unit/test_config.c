/* test_config.c - fusebox.yaml parsing: the documented example, the
 * defaults, path resolution, every class of error (with its line and key
 * path) and the budget spec syntax. Run under ASan/LSan: the error paths
 * must not leak. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "config.h"

/* Whole micro-USD amounts as picodollars (exact in a double). */
#define USD(x) ((fb_money)((x)*1000000.0) * 1000000)

static const char example[] =
    "listen: 127.0.0.1:8787              # host:port\n"
    "data_dir: ./fusebox-data\n"
    "prices: [./prices.json]\n"
    "model_prices:\n"
    "  my-model: {input_cost_per_token: 0.000001, output_cost_per_token: "
    "0.000002, max_output_tokens: 4096}\n"
    "providers:\n"
    "  openai:    {kind: openai,    base_url: https://api.openai.com,    "
    "api_key_env: OPENAI_API_KEY}\n"
    "  anthropic: {kind: anthropic, base_url: https://api.anthropic.com, "
    "api_key_env: ANTHROPIC_API_KEY}\n"
    "  search:    {kind: generic,   base_url: https://api.tavily.com,    "
    "api_key_env: TAVILY_API_KEY, price_per_call_usd: 0.008, count_field: "
    "max_results, auth_header: Authorization}\n"
    "budgets:\n"
    "  global: 100/day\n"
    "  tenants:\n"
    "    finance:\n"
    "      budget: 50/day\n"
    "      jobs:\n"
    "        nightly-report: {budget: 5/day}\n"
    "durability: process\n"
    "limits: {max_body_bytes: 8388608, max_header_bytes: 65536, "
    "max_connections: 4096, client_timeout_ms: 30000, "
    "upstream_connect_timeout_ms: 10000, upstream_timeout_ms: 600000}\n"
    "log_level: info\n";

static fb_config *parse_ok(const char *yaml, const char *base)
{
    char err[256] = "";
    fb_config *c = NULL;
    fb_err rc = fb_config_parse(yaml, strlen(yaml), base, &c, err, sizeof err);
    if (rc != FB_OK)
        fail_msg("unexpected error %d: %s\n--- yaml:\n%s", rc, err, yaml);
    assert_non_null(c);
    return c;
}

/* Parse must fail with FB_EINVAL, *out NULL and a message containing want. */
static void parse_err(const char *yaml, const char *want)
{
    char err[256] = "";
    fb_config *c = (fb_config *)1;
    fb_err rc =
        fb_config_parse(yaml, strlen(yaml), "/base", &c, err, sizeof err);
    if (rc != FB_EINVAL || c != NULL || strstr(err, want) == NULL)
        fail_msg("rc %d, error \"%s\", wanted \"%s\"\n--- yaml:\n%s", rc, err,
                 want, yaml);
}

static void test_example(void **state)
{
    (void)state;
    fb_config *c = parse_ok(example, "/etc/fusebox");
    char buf[64];

    assert_string_equal(c->path, "<config>");
    assert_string_equal(c->listen_host, "127.0.0.1");
    assert_int_equal(c->listen_port, 8787);
    assert_string_equal(c->data_dir, "/etc/fusebox/fusebox-data");
    assert_int_equal(c->nprices, 1);
    assert_string_equal(c->prices[0], "/etc/fusebox/prices.json");

    assert_int_equal(c->nmodel_prices, 1);
    assert_string_equal(c->model_prices[0].model, "my-model");
    const fb_price *p = &c->model_prices[0].price;
    assert_int_equal(p->input, 1000000); /* 1e-6 USD in picodollars */
    assert_int_equal(p->output, 2000000);
    assert_int_equal(p->cache_read, 1000000);
    assert_int_equal(p->cache_write, 1000000);
    assert_int_equal(p->max_output_tokens, 4096);
    assert_int_equal(p->max_input_tokens, 0);

    assert_int_equal(c->nproviders, 3);
    const fb_provider_conf *o = fb_config_provider(c, "openai", 6);
    assert_non_null(o);
    assert_int_equal(o->kind, FB_PROVIDER_OPENAI);
    assert_string_equal(o->base_url, "https://api.openai.com");
    assert_string_equal(o->api_key_env, "OPENAI_API_KEY");
    assert_null(o->count_field);
    assert_null(o->auth_header);
    const fb_provider_conf *a = fb_config_provider(c, "anthropic", 9);
    assert_non_null(a);
    assert_int_equal(a->kind, FB_PROVIDER_ANTHROPIC);
    assert_string_equal(a->api_key_env, "ANTHROPIC_API_KEY");
    const fb_provider_conf *s = fb_config_provider(c, "search", 6);
    assert_non_null(s);
    assert_int_equal(s->kind, FB_PROVIDER_GENERIC);
    assert_string_equal(s->base_url, "https://api.tavily.com");
    assert_int_equal(s->price_per_call, 8000000000); /* 0.008 USD */
    assert_string_equal(s->count_field, "max_results");
    assert_string_equal(s->auth_header, "Authorization");

    assert_true(c->global.set);
    assert_int_equal(c->global.limit, USD(100));
    assert_int_equal(c->global.period, FB_PERIOD_DAY);
    assert_int_equal(c->ntenants, 1);
    const fb_tenant_conf *t = fb_config_tenant(c, "finance");
    assert_non_null(t);
    assert_true(t->budget.set);
    assert_int_equal(t->budget.limit, USD(50));
    assert_int_equal(t->budget.period, FB_PERIOD_DAY);
    assert_int_equal(t->njobs, 1);
    const fb_job_conf *j = fb_config_job(t, "nightly-report");
    assert_non_null(j);
    fb_budget_spec_format(&j->budget, buf, sizeof buf);
    assert_string_equal(buf, "5.0/day");

    assert_int_equal(c->durability, FB_DURABILITY_PROCESS);
    assert_int_equal(c->max_body_bytes, 8388608);
    assert_int_equal(c->max_header_bytes, 65536);
    assert_int_equal(c->max_connections, 4096);
    assert_int_equal(c->client_timeout_ms, 30000);
    assert_int_equal(c->upstream_connect_timeout_ms, 10000);
    assert_int_equal(c->upstream_timeout_ms, 600000);
    assert_string_equal(c->log_level, "info");
    fb_config_free(c);
}

static void test_defaults(void **state)
{
    (void)state;
    fb_config *c = parse_ok("{}\n", "/srv/fb/");
    assert_string_equal(c->listen_host, "127.0.0.1");
    assert_int_equal(c->listen_port, 8787);
    assert_string_equal(c->data_dir, "/srv/fb/fusebox-data");
    assert_int_equal(c->nprices, 0);
    assert_int_equal(c->nmodel_prices, 0);
    assert_int_equal(c->nproviders, 0);
    assert_false(c->global.set);
    assert_int_equal(c->ntenants, 0);
    assert_int_equal(c->durability, FB_DURABILITY_PROCESS);
    assert_int_equal(c->max_body_bytes, 8 << 20);
    assert_int_equal(c->max_header_bytes, 64 << 10);
    assert_int_equal(c->max_connections, 4096);
    assert_int_equal(c->client_timeout_ms, 30000);
    assert_int_equal(c->upstream_connect_timeout_ms, 10000);
    assert_int_equal(c->upstream_timeout_ms, 600000);
    assert_string_equal(c->log_level, "info");
    fb_config_free(c);

    /* No base_dir: relative to the current directory. Empty sections
     * (a section whose entries are commented out) are allowed. */
    c = parse_ok("providers:\nbudgets:\n  tenants: ~\nprices: []\n"
                 "limits: {}\n",
                 NULL);
    assert_string_equal(c->data_dir, "./fusebox-data");
    assert_int_equal(c->nproviders, 0);
    assert_int_equal(c->ntenants, 0);
    fb_config_free(c);
}

static void test_other_values(void **state)
{
    (void)state;
    fb_config *c = parse_ok(
        "listen: \"[::1]:0\"\n"
        "durability: full\n"
        "log_level: debug\n"
        "model_prices:\n"
        "  \"openai/gpt-x\":\n"
        "    input_cost_per_token: 2.5e-6\n"
        "    output_cost_per_token: \"1E-5\"\n"
        "    cache_read_input_token_cost: 1.25e-06\n"
        "    cache_creation_input_token_cost: 0.000003125\n"
        "    max_tokens: 8192\n"
        "    max_input_tokens: 128000\n"
        "providers:\n"
        "  gen.1: {kind: generic, base_url: 'HTTP://localhost:9000/v1///',"
        " price_per_call_usd: 0}\n"
        "  x-api: {kind: generic, base_url: http://h, price_per_call_usd: "
        "0.5, auth_header: X-Api-Key}\n"
        "  bare: {kind: openai, base_url: http://10.0.0.1:8080/}\n"
        "budgets:\n"
        "  global: $1000/month\n"
        "  tenants:\n"
        "    nobudget:\n"
        "      jobs: {a: 0.25/hour, b: {}, c: {budget: \"$0\"}}\n"
        "    empty:\n"
        "    lifetime: {budget: 7}\n",
        "/b");
    assert_string_equal(c->listen_host, "::1");
    assert_int_equal(c->listen_port, 0);
    assert_int_equal(c->durability, FB_DURABILITY_FULL);
    assert_string_equal(c->log_level, "debug");

    const fb_price *p = &c->model_prices[0].price;
    assert_string_equal(c->model_prices[0].model, "openai/gpt-x");
    assert_int_equal(p->input, 2500000);
    assert_int_equal(p->output, 10000000);
    assert_int_equal(p->cache_read, 1250000);
    assert_int_equal(p->cache_write, 3125000);
    assert_int_equal(p->max_output_tokens, 8192); /* from max_tokens */
    assert_int_equal(p->max_input_tokens, 128000);

    const fb_provider_conf *g = fb_config_provider(c, "gen.1", 5);
    assert_non_null(g);
    assert_string_equal(g->base_url, "HTTP://localhost:9000/v1");
    assert_int_equal(g->price_per_call, 0);
    assert_null(g->api_key_env);
    assert_null(g->count_field);
    assert_string_equal(g->auth_header, "Authorization");
    /* Lookup by a prefix of a request path. */
    const char *path = "x-api/search";
    g = fb_config_provider(c, path, 5);
    assert_non_null(g);
    assert_string_equal(g->auth_header, "X-Api-Key");
    assert_int_equal(g->price_per_call, USD(0.5));
    assert_null(fb_config_provider(c, path, 4));
    assert_null(fb_config_provider(c, "nope", 4));
    assert_string_equal(fb_config_provider(c, "bare", 4)->base_url,
                        "http://10.0.0.1:8080");

    assert_int_equal(c->global.limit, USD(1000));
    assert_int_equal(c->global.period, FB_PERIOD_MONTH);
    const fb_tenant_conf *t = fb_config_tenant(c, "nobudget");
    assert_non_null(t);
    assert_false(t->budget.set);
    assert_int_equal(t->njobs, 3);
    assert_int_equal(fb_config_job(t, "a")->budget.limit, USD(0.25));
    assert_int_equal(fb_config_job(t, "a")->budget.period, FB_PERIOD_HOUR);
    assert_false(fb_config_job(t, "b")->budget.set);
    assert_true(fb_config_job(t, "c")->budget.set);
    assert_int_equal(fb_config_job(t, "c")->budget.limit, 0);
    assert_null(fb_config_job(t, "d"));
    t = fb_config_tenant(c, "empty");
    assert_non_null(t);
    assert_false(t->budget.set);
    assert_int_equal(t->njobs, 0);
    t = fb_config_tenant(c, "lifetime");
    assert_int_equal(t->budget.limit, USD(7));
    assert_int_equal(t->budget.period, FB_PERIOD_NONE);
    assert_null(fb_config_tenant(c, "finance"));
    assert_null(fb_config_job(NULL, "a"));
    fb_config_free(c);
}

static void test_relative_paths(void **state)
{
    (void)state;
    static const char y[] = "data_dir: ./state/../data\n"
                            "prices: [prices.json, ./././a.json, /abs/b.json,"
                            " ../up.json, .//c.json]\n";
    fb_config *c = parse_ok(y, "/etc/fb");
    assert_string_equal(c->data_dir, "/etc/fb/state/../data");
    assert_int_equal(c->nprices, 5);
    assert_string_equal(c->prices[0], "/etc/fb/prices.json");
    assert_string_equal(c->prices[1], "/etc/fb/a.json");
    assert_string_equal(c->prices[2], "/abs/b.json");
    assert_string_equal(c->prices[3], "/etc/fb/../up.json");
    assert_string_equal(c->prices[4], "/etc/fb/c.json");
    fb_config_free(c);

    c = parse_ok("data_dir: .\n", "/etc/fb");
    assert_string_equal(c->data_dir, "/etc/fb");
    fb_config_free(c);
    c = parse_ok("data_dir: /var/lib/fusebox/\n", "/etc/fb");
    assert_string_equal(c->data_dir, "/var/lib/fusebox/");
    fb_config_free(c);
    c = parse_ok("data_dir: d\n", "relative/dir");
    assert_string_equal(c->data_dir, "relative/dir/d");
    fb_config_free(c);
    parse_err("data_dir: ''\n", "<config>:1: data_dir: must not be empty");
    parse_err("prices: [a.json, '']\n", "<config>:1: prices[1]: must not");
    parse_err("prices: a.json\n", "prices: expected a sequence, got a scalar");
    parse_err("prices: [[a.json]]\n",
              "prices[0]: expected a scalar, got a sequence");
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

static void test_load(void **state)
{
    (void)state;
    char dir[] = "/tmp/fb-config-XXXXXX", path[128], want[192], err[256];
    char cwd[4096];
    fb_config *c = NULL;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/fusebox.yaml", dir);
    write_file(path, "prices: [p.json]\n");

    assert_int_equal(fb_config_load(path, &c, err, sizeof err), FB_OK);
    assert_string_equal(c->path, path);
    snprintf(want, sizeof want, "%s/fusebox-data", dir);
    assert_string_equal(c->data_dir, want);
    snprintf(want, sizeof want, "%s/p.json", dir);
    assert_string_equal(c->prices[0], want);
    fb_config_free(c);

    /* A relative config path still yields absolute paths. */
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir("/tmp"), 0);
    assert_int_equal(fb_config_load(path + 5, &c, err, sizeof err), FB_OK);
    assert_string_equal(c->prices[0], want);
    fb_config_free(c);
    assert_int_equal(chdir(dir), 0);
    assert_int_equal(fb_config_load("fusebox.yaml", &c, err, sizeof err),
                     FB_OK);
    assert_string_equal(c->prices[0], want);
    fb_config_free(c);
    assert_int_equal(chdir(cwd), 0);

    /* Errors carry the file name as given. */
    write_file(path, "budgets:\n  global: 5/week\n");
    c = (fb_config *)1;
    assert_int_equal(fb_config_load(path, &c, err, sizeof err), FB_EINVAL);
    assert_null(c);
    snprintf(want, sizeof want,
             "%s:2: budgets.global: '5/week' is not USD[/hour|day|month]",
             path);
    assert_string_equal(err, want);
    write_file(path, "");
    assert_int_equal(fb_config_load(path, &c, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "the config is empty"));
    assert_int_equal(unlink(path), 0);

    c = (fb_config *)1;
    assert_int_equal(fb_config_load(path, &c, err, sizeof err), FB_EIO);
    assert_null(c);
    snprintf(want, sizeof want, "%s: No such file or directory", path);
    assert_string_equal(err, want);
    assert_int_equal(fb_config_load(dir, &c, err, sizeof err), FB_EIO);
    assert_int_equal(rmdir(dir), 0);
}

static void test_unknown_keys(void **state)
{
    (void)state;
    parse_err("listen: 127.0.0.1:1\nbudget:\n  global: 5\n",
              "<config>:2: unknown key 'budget'");
    parse_err("budgets:\n  global: 5\n  globl: 6\n",
              "<config>:3: budgets: unknown key 'globl'");
    parse_err("budgets:\n  tenants:\n    finance:\n      buget: 50/day\n",
              "<config>:4: budgets.tenants.finance: unknown key 'buget'");
    parse_err("budgets:\n  tenants:\n    finance:\n      jobs:\n"
              "        nightly: {budget: 1, limit: 2}\n",
              "<config>:5: budgets.tenants.finance.jobs.nightly: unknown key "
              "'limit'");
    parse_err("providers:\n  o: {kind: openai, base_url: http://x, "
              "api_key: K}\n",
              "<config>:2: providers.o: unknown key 'api_key'");
    parse_err("limits:\n  max_body: 5\n", "<config>:2: limits: unknown key "
                                          "'max_body'");
    parse_err("model_prices:\n  m: {input_cost_per_token: 1, "
              "output_cost_per_token: 1, mode: chat}\n",
              "<config>:2: model_prices.m: unknown key 'mode'");
    parse_err("{[a]: 1}\n", "keys must be scalars, got a sequence");
    parse_err("budgets: {{a: 1}: 2}\n",
              "budgets: keys must be scalars, got a mapping");
    parse_err("providers: {[a]: 1}\n", "providers: keys must be scalars");
    /* A key that only looks like a known one. */
    parse_err("\"listen\\0x\": 1\n", "unknown key 'listen?x'");
}

static void test_duplicates(void **state)
{
    (void)state;
    parse_err("listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n",
              "<config>:2: duplicate key 'listen'");
    parse_err("providers:\n"
              "  a: {kind: openai, base_url: http://a}\n"
              "  b: {kind: openai, base_url: http://b}\n"
              "  a: {kind: anthropic, base_url: http://c}\n",
              "<config>:4: providers: duplicate key 'a'");
    parse_err("budgets:\n  tenants:\n    t: {budget: 5}\n    u: {}\n"
              "    t: {budget: 6}\n",
              "<config>:5: budgets.tenants: duplicate key 't'");
    parse_err("budgets:\n  tenants:\n    t:\n      jobs: {j: 1, k: 2, j: 3}\n",
              "<config>:4: budgets.tenants.t.jobs: duplicate key 'j'");
    parse_err("model_prices:\n  m: {input_cost_per_token: 1, "
              "output_cost_per_token: 1}\n  m: {input_cost_per_token: 2, "
              "output_cost_per_token: 2}\n",
              "<config>:3: model_prices: duplicate key 'm'");
    parse_err("providers:\n  a: {kind: openai, kind: generic}\n",
              "<config>:2: providers.a: duplicate key 'kind'");
}

static void test_bad_budgets(void **state)
{
    (void)state;
    parse_err("budgets:\n  tenants:\n    finance:\n      jobs:\n"
              "        nightly-report: {budget: 5/week}\n",
              "<config>:5: budgets.tenants.finance.jobs.nightly-report."
              "budget: '5/week' is not USD[/hour|day|month]");
    parse_err("budgets:\n  tenants:\n    finance:\n      jobs:\n"
              "        nightly-report: -5/day\n",
              "<config>:5: budgets.tenants.finance.jobs.nightly-report: "
              "'-5/day' is not USD[/hour|day|month]");
    parse_err("budgets: {global: five}\n",
              "<config>:1: budgets.global: 'five' is not USD");
    parse_err("budgets: {global: 5/d}\n", "'5/d' is not USD");
    parse_err("budgets: {global: 5/}\n", "'5/' is not USD");
    parse_err("budgets: {global: }\n", "budgets.global: '' is not USD");
    parse_err("budgets: {global: [5]}\n",
              "budgets.global: expected a scalar, got a sequence");
    parse_err("budgets: {global: 99999999999/day}\n",
              "budgets.global: '99999999999/day' is too large");
    parse_err("budgets: {tenants: {t: {budget: 5 per day}}}\n",
              "budgets.tenants.t.budget: '5 per day' is not USD");
    parse_err("budgets: {tenants: {t: {jobs: {j: [1]}}}}\n",
              "budgets.tenants.t.jobs.j: expected a budget or a mapping, "
              "got a sequence");
    parse_err("budgets: {tenants: {t: {jobs: {j: }}}}\n",
              "budgets.tenants.t.jobs.j: expected a budget or a mapping, "
              "got nothing");
}

static void test_bad_names(void **state)
{
    (void)state;
    parse_err("providers:\n  a/b: {kind: openai, base_url: http://x}\n",
              "<config>:2: providers: 'a/b' is not a valid name "
              "([A-Za-z0-9_.-], 1-64 characters)");
    parse_err("providers:\n  ..: {kind: openai, base_url: http://x}\n",
              "providers: '..' is not a valid name");
    parse_err("providers:\n  '': {kind: openai, base_url: http://x}\n",
              "providers: '' is not a valid name");
    parse_err("budgets:\n  tenants:\n    fin ance: {}\n",
              "<config>:3: budgets.tenants: 'fin ance' is not a valid name");
    parse_err("budgets:\n  tenants:\n    f:\n      jobs:\n        "
              "a12345678901234567890123456789012345678901234567890123456789"
              "01234: 5\n",
              "<config>:5: budgets.tenants.f.jobs: 'a123");
    parse_err("model_prices:\n  'a b': {input_cost_per_token: 1, "
              "output_cost_per_token: 1}\n",
              "<config>:2: model_prices: 'a b' is not a model name");
    /* 64 characters is the limit, inclusive. */
    fb_config *c = parse_ok(
        "budgets:\n  tenants:\n    "
        "a123456789012345678901234567890123456789012345678901234567890123:"
        " {}\n",
        "/");
    assert_int_equal(strlen(c->tenants[0].name), 64);
    fb_config_free(c);
}

static void test_providers(void **state)
{
    (void)state;
    parse_err("providers:\n  s: {kind: generic, base_url: http://x}\n",
              "<config>:2: providers.s: price_per_call_usd is required for "
              "kind: generic");
    parse_err("providers:\n  o:\n    kind: openai\n    base_url: http://x\n"
              "    price_per_call_usd: 1\n",
              "<config>:5: providers.o: price_per_call_usd is only valid for "
              "kind: generic");
    parse_err("providers:\n  o: {kind: anthropic, base_url: http://x, "
              "count_field: n}\n",
              "providers.o: count_field is only valid for kind: generic");
    parse_err("providers:\n  o: {kind: openai, base_url: http://x, "
              "auth_header: X}\n",
              "providers.o: auth_header is only valid for kind: generic");
    parse_err("providers:\n  o: {base_url: http://x}\n",
              "<config>:2: providers.o: kind is required");
    parse_err("providers:\n  o: {kind: openai}\n",
              "providers.o: base_url is required");
    parse_err("providers:\n  o: {kind: gemini, base_url: http://x}\n",
              "providers.o.kind: 'gemini' is not openai|anthropic|generic");
    parse_err("providers:\n  o: {kind: openai, base_url: ftp://x}\n",
              "<config>:2: providers.o.base_url: 'ftp://x' does not start "
              "with http:// or https://");
    parse_err("providers:\n  o: {kind: openai, base_url: api.openai.com}\n",
              "does not start with http:// or https://");
    parse_err("providers:\n  o: {kind: openai, base_url: 'https://'}\n",
              "providers.o.base_url: 'https://' has no host");
    parse_err("providers:\n  o: {kind: openai, base_url: 'http:///v1'}\n",
              "has no host");
    parse_err("providers:\n  o: {kind: openai, base_url: 'http://x/?a=1'}\n",
              "no blanks, query or fragment allowed");
    parse_err("providers:\n  o: {kind: openai, base_url: http://x, "
              "api_key_env: 1KEY}\n",
              "providers.o.api_key_env: '1KEY' is not an environment "
              "variable name");
    parse_err("providers:\n  g: {kind: generic, base_url: http://x, "
              "price_per_call_usd: -1}\n",
              "providers.g.price_per_call_usd: '-1' is not a USD amount");
    parse_err("providers:\n  g: {kind: generic, base_url: http://x, "
              "price_per_call_usd: 1, auth_header: 'X Key'}\n",
              "providers.g.auth_header: 'X Key' is not a header name");
    parse_err("providers:\n  g: {kind: generic, base_url: http://x, "
              "price_per_call_usd: 1, count_field: ''}\n",
              "providers.g.count_field: must not be empty");
    parse_err("providers:\n  o:\n", "providers.o: kind is required");
    parse_err("providers:\n  o: openai\n",
              "<config>:2: providers.o: expected a mapping, got a scalar");
}

static void test_listen(void **state)
{
    (void)state;
    fb_config *c = parse_ok("listen: localhost:65535\n", "/");
    assert_string_equal(c->listen_host, "localhost");
    assert_int_equal(c->listen_port, 65535);
    fb_config_free(c);
    c = parse_ok("listen: '[fe80::1:2]:8787'\n", "/");
    assert_string_equal(c->listen_host, "fe80::1:2");
    assert_int_equal(c->listen_port, 8787);
    fb_config_free(c);
    c = parse_ok("listen: 0.0.0.0:0\n", "/");
    assert_string_equal(c->listen_host, "0.0.0.0");
    assert_int_equal(c->listen_port, 0);
    fb_config_free(c);

    parse_err("listen: localhost\n",
              "<config>:1: listen: 'localhost' is not host:port");
    parse_err("listen: 127.0.0.1:65536\n",
              "listen: '127.0.0.1:65536' has no port in 0..65535");
    parse_err("listen: '127.0.0.1:'\n", "has no port in 0..65535");
    parse_err("listen: 127.0.0.1:80a\n", "has no port in 0..65535");
    parse_err("listen: 127.0.0.1:-1\n", "has no port in 0..65535");
    parse_err("listen: 127.0.0.1:000080\n", "has no port in 0..65535");
    parse_err("listen: ':8787'\n", "listen: ':8787' has no valid host");
    parse_err("listen: 'a b:1'\n", "has no valid host");
    parse_err("listen: '::1:8787'\n",
              "'::1:8787': write IPv6 addresses as [address]:port");
    parse_err("listen: '[::1]'\n", "'[::1]' is not [address]:port");
    parse_err("listen: '[::1]8787'\n", "is not [address]:port");
    parse_err("listen: '[::g]:8787'\n",
              "listen: '[::g]:8787' is not an IPv6 address");
    parse_err("listen: '[]:1'\n", "is not an IPv6 address");
    parse_err("listen: 8787\n", "'8787' is not host:port");
    parse_err("listen: {host: x}\n",
              "listen: expected a scalar, got a mapping");
}

static void test_not_mappings(void **state)
{
    (void)state;
    parse_err("- a\n- b\n",
              "<config>:1: expected a mapping at the top, got a sequence");
    parse_err("just text\n", "expected a mapping at the top, got a scalar");
    parse_err("budgets: [a, b]\n",
              "<config>:1: budgets: expected a mapping, got a sequence");
    parse_err("budgets:\n  tenants: 5\n",
              "<config>:2: budgets.tenants: expected a mapping, got a scalar");
    parse_err("budgets:\n  tenants:\n    t: [1]\n",
              "<config>:3: budgets.tenants.t: expected a mapping, got a "
              "sequence");
    parse_err("budgets:\n  tenants:\n    t:\n      jobs: [a]\n",
              "budgets.tenants.t.jobs: expected a mapping, got a sequence");
    parse_err("providers: 5\n", "providers: expected a mapping, got a scalar");
    parse_err("model_prices: [m]\n",
              "model_prices: expected a mapping, got a sequence");
    parse_err("model_prices: {m: 1}\n",
              "model_prices.m: expected a mapping, got a scalar");
    parse_err("limits: fast\n", "limits: expected a mapping, got a scalar");
    /* Quoted "" is a string, not an empty section. */
    parse_err("limits: ''\n", "limits: expected a mapping, got a scalar");
}

static void test_yaml_errors(void **state)
{
    (void)state;
    parse_err("listen: 127.0.0.1:1\nbudgets:\n  global: 5\n tenants: x\n",
              "<config>:4: YAML syntax error: ");
    parse_err("providers: {a: 1\n\n", "<config>:3: YAML syntax error: ");
    parse_err("a: 'unterminated\n", "YAML syntax error:");
    parse_err("listen: *nope\n", "<config>:1: YAML syntax error: ");
    /* Unquoted IPv6 is a YAML flow sequence: a syntax error. */
    parse_err("listen: [::1]:8787\n", "<config>:1: ");
    parse_err("", "<config>: the config is empty");
    parse_err("# only a comment\n", "the config is empty");
    parse_err("log_level: info\n---\nlog_level: debug\n",
              "<config>:3: only one YAML document is allowed");

    /* Aliases are refused (they could multiply tenants and jobs). */
    parse_err("budgets:\n  tenants:\n    a: &t {budget: 5}\n    b: *t\n",
              "<config>:4: budgets.tenants: YAML aliases are not supported");
    parse_err("prices: [&p a.json, *p]\n",
              "prices[1]: YAML aliases are not supported");

    /* Bytes that are not UTF-8, and control characters in a value. */
    parse_err("listen: \"\xff\xfe\"\n", "YAML: invalid");
    parse_err("data_dir: \"a\\x01b\"\n",
              "<config>:1: data_dir: control characters are not allowed");
    char err[256];
    fb_config *c = (fb_config *)1;
    static const char nul[] = "data_dir: x\0y\n";
    assert_int_equal(
        fb_config_parse(nul, sizeof nul - 1, "/", &c, err, sizeof err),
        FB_EINVAL);
    assert_null(c);
}

static void test_enums_and_limits(void **state)
{
    (void)state;
    parse_err("durability: fsync\n",
              "<config>:1: durability: 'fsync' is not process|full");
    parse_err("log_level: trace\n",
              "log_level: 'trace' is not debug|info|warn|error");
    parse_err("log_level: INFO\n", "'INFO' is not debug|info|warn|error");
    parse_err("limits:\n  max_body_bytes: 1073741825\n",
              "<config>:2: limits.max_body_bytes: '1073741825' is not an "
              "integer in 1..1073741824");
    parse_err("limits: {max_connections: 0}\n",
              "limits.max_connections: '0' is not an integer in 1..1000000");
    parse_err("limits: {client_timeout_ms: -5}\n",
              "limits.client_timeout_ms: '-5' is not an integer");
    parse_err("limits: {upstream_timeout_ms: 1.5}\n",
              "limits.upstream_timeout_ms: '1.5' is not an integer");
    parse_err("limits: {upstream_connect_timeout_ms: "
              "99999999999999999999999}\n",
              "limits.upstream_connect_timeout_ms: '9999");
    parse_err("limits: {max_header_bytes: 100}\n",
              "limits.max_header_bytes: '100' is not an integer in "
              "1024..16777216");
    parse_err("limits: {max_body_bytes: ''}\n",
              "limits.max_body_bytes: '' is not an integer");

    fb_config *c = parse_ok("limits: {max_body_bytes: 1073741824, "
                            "max_connections: 1, upstream_timeout_ms: "
                            "86400000}\n",
                            "/");
    assert_int_equal(c->max_body_bytes, 1073741824);
    assert_int_equal(c->max_connections, 1);
    assert_int_equal(c->upstream_timeout_ms, 86400000);
    assert_int_equal(c->client_timeout_ms, 30000);
    fb_config_free(c);
}

static void test_model_prices(void **state)
{
    (void)state;
    parse_err("model_prices:\n  m: {input_cost_per_token: 1}\n",
              "<config>:2: model_prices.m: output_cost_per_token is required");
    parse_err("model_prices:\n  m:\n", "model_prices.m: input_cost_per_token "
                                       "is required");
    parse_err("model_prices:\n  m: {input_cost_per_token: 0x10, "
              "output_cost_per_token: 1}\n",
              "model_prices.m.input_cost_per_token: '0x10' is not a USD "
              "amount");
    parse_err("model_prices:\n  m: {input_cost_per_token: 1, "
              "output_cost_per_token: 1e30}\n",
              "model_prices.m.output_cost_per_token: '1e30' is too large");
    parse_err("model_prices:\n  m: {input_cost_per_token: 1, "
              "output_cost_per_token: 1, max_output_tokens: many}\n",
              "model_prices.m.max_output_tokens: 'many' is not an integer");
    /* max_output_tokens wins over max_tokens; rounding is upwards. */
    fb_config *c = parse_ok("model_prices:\n  m: {input_cost_per_token: "
                            "1.0000000000001e-12, output_cost_per_token: 0, "
                            "max_tokens: 10, max_output_tokens: 20}\n",
                            "/");
    assert_int_equal(c->model_prices[0].price.input, 2);
    assert_int_equal(c->model_prices[0].price.output, 0);
    assert_int_equal(c->model_prices[0].price.max_output_tokens, 20);
    fb_config_free(c);
}

/* Errors after much has been allocated (LSan checks nothing leaks), and
 * a small error buffer. */
static void test_late_errors(void **state)
{
    (void)state;
    char yaml[sizeof example];
    fb_strlcpy(yaml, example, sizeof yaml);
    char *level = strstr(yaml, "log_level: info");
    assert_non_null(level);
    memcpy(level + 11, "loud", 4);
    parse_err(yaml, "<config>:19: log_level: 'loud' is not");

    char err[12];
    fb_config *c = (fb_config *)1;
    assert_int_equal(
        fb_config_parse(yaml, strlen(yaml), "/", &c, err, sizeof err),
        FB_EINVAL);
    assert_null(c);
    assert_string_equal(err, "<config>:19");
    assert_int_equal(fb_config_parse(yaml, strlen(yaml), "/", &c, NULL, 0),
                     FB_EINVAL);
    fb_config_free(NULL);
}

static void test_budget_spec(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        fb_money limit;
        fb_period period;
        const char *out;
    } ok[] = {
        {"5", USD(5), FB_PERIOD_NONE, "5.0"},
        {"0", 0, FB_PERIOD_NONE, "0.0"},
        {"0/day", 0, FB_PERIOD_DAY, "0.0/day"},
        {"5/day", USD(5), FB_PERIOD_DAY, "5.0/day"},
        {"0.25/hour", USD(0.25), FB_PERIOD_HOUR, "0.25/hour"},
        {"100/month", USD(100), FB_PERIOD_MONTH, "100.0/month"},
        {"$5/day", USD(5), FB_PERIOD_DAY, "5.0/day"},
        {"5 / day", USD(5), FB_PERIOD_DAY, "5.0/day"},
        {"  $12.5\t/\tmonth ", USD(12.5), FB_PERIOD_MONTH, "12.5/month"},
        {"5/DAY", USD(5), FB_PERIOD_DAY, "5.0/day"},
        {".5/hour", USD(0.5), FB_PERIOD_HOUR, "0.5/hour"},
        {"1e3/month", USD(1000), FB_PERIOD_MONTH, "1000.0/month"},
        {"0.000000000001", 1, FB_PERIOD_NONE, "0.000000000001"},
        {"9000000", USD(9000000), FB_PERIOD_NONE, "9000000.0"},
    };
    static const char *const bad[] = {
        "",    " ",      "$",         "/day",   "5/",      "5/week",    "5/d",
        "5/h", "5/days", "-5",        "-5/day", "+5",      "five",      "5 USD",
        "$$5", "$ 5",    "5/day/day", "5//day", "5/day x", "5 per day", "1e30",
        "nan", "inf",    "5,00",      "0x10",
    };
    char buf[48], again[48];
    fb_budget_spec b, b2;

    for (size_t i = 0; i < FB_ARRAY_LEN(ok); i++) {
        memset(&b, 0, sizeof b);
        if (fb_budget_spec_parse(ok[i].in, &b) != FB_OK)
            fail_msg("'%s' should parse", ok[i].in);
        assert_true(b.set);
        assert_int_equal(b.limit, ok[i].limit);
        assert_int_equal(b.period, ok[i].period);
        size_t n = fb_budget_spec_format(&b, buf, sizeof buf);
        assert_int_equal(n, strlen(buf));
        assert_string_equal(buf, ok[i].out);
        /* The formatted text parses back to the same spec. */
        assert_int_equal(fb_budget_spec_parse(buf, &b2), FB_OK);
        assert_int_equal(b2.set, b.set);
        assert_int_equal(b2.limit, b.limit);
        assert_int_equal(b2.period, b.period);
        fb_budget_spec_format(&b2, again, sizeof again);
        assert_string_equal(buf, again);
    }
    for (size_t i = 0; i < FB_ARRAY_LEN(bad); i++) {
        b.set = 7;
        b.limit = 42;
        b.period = FB_PERIOD_HOUR;
        if (fb_budget_spec_parse(bad[i], &b) != FB_EINVAL)
            fail_msg("'%s' should be refused", bad[i]);
        /* No side effect on failure. */
        assert_int_equal(b.set, 7);
        assert_int_equal(b.limit, 42);
        assert_int_equal(b.period, FB_PERIOD_HOUR);
    }
    assert_int_equal(fb_budget_spec_parse(NULL, &b), FB_EINVAL);

    /* Largest and unset specs format within the documented 48 bytes. */
    b.set = 1;
    b.limit = FB_MONEY_MAX;
    b.period = FB_PERIOD_MONTH;
    size_t n = fb_budget_spec_format(&b, buf, sizeof buf);
    assert_string_equal(buf, "9223372.036854775807/month");
    assert_true(n < sizeof buf);
    assert_int_equal(fb_budget_spec_parse(buf, &b2), FB_OK);
    assert_int_equal(b2.limit, FB_MONEY_MAX);
    b.set = 0;
    fb_budget_spec_format(&b, buf, sizeof buf);
    assert_string_equal(buf, "none");
}

/* admin: and alerts: (issue 7): defaults, values, and the rule a scope
 * gets (its job's override, else its tenant's, else the defaults). */
/* store: sqlite or a PostgreSQL URL (never echoed: it may hold a
 * password); cluster.lease_ms within bounds. */
static void test_store_and_cluster(void **state)
{
    (void)state;
    fb_config *c = parse_ok("listen: 127.0.0.1:8787\n", "/b");
    assert_null(c->store_url);
    assert_int_equal(c->cluster_lease_ms, 10000);
    fb_config_free(c);
    c = parse_ok("store: postgres://u:secret@db.internal:5432/fb\n"
                 "cluster: {lease_ms: 3000}\n",
                 "/b");
    assert_string_equal(c->store_url, "postgres://u:secret@db.internal:5432/fb");
    assert_int_equal(c->cluster_lease_ms, 3000);
    fb_config_free(c);
    c = parse_ok("store: postgresql://db/fb\n", "/b");
    assert_string_equal(c->store_url, "postgresql://db/fb");
    fb_config_free(c);
    c = parse_ok("store: sqlite\n", "/b");
    assert_null(c->store_url);
    fb_config_free(c);
    char err[256] = "";
    const char *bad = "store: mysql://u:hunter2@db/fb\n";
    c = NULL;
    assert_int_equal(fb_config_parse(bad, strlen(bad), "/b", &c, err,
                                     sizeof err),
                     FB_EINVAL);
    assert_null(c);
    assert_non_null(strstr(err, "postgres://"));
    assert_null(strstr(err, "hunter2")); /* the value is not echoed */
    parse_err("store: 'postgres://db/fb x'\n", "store");
    parse_err("store: postgres://\n", "store");
    parse_err("cluster: {lease_ms: 10}\n", "cluster.lease_ms");
    parse_err("cluster: {lease: 1000}\n", "lease");
}

static void test_admin_and_alerts(void **state)
{
    (void)state;
    fb_config *c = parse_ok("listen: 127.0.0.1:8787\n", "/b");
    assert_string_equal(c->admin_host, "127.0.0.1");
    assert_int_equal(c->admin_port, 8788);
    assert_string_equal(c->admin_token_env, "FUSEBOX_ADMIN_TOKEN");
    assert_int_equal(c->alerts_enabled, 1);
    assert_int_equal(c->alert_every_ms, 60000);
    assert_int_equal(c->nalert_percents, 3);
    assert_int_equal(c->alert_percents[2], 100);
    assert_true(c->alert_rule.rate_factor == 3 * FB_PICO_PER_USD);
    assert_int_equal(c->alert_rule.breaker_minutes, 0);
    assert_int_equal(c->alert_max_attempts, 5);
    fb_config_free(c);

    c = parse_ok("admin: {listen: off}\n"
                 "alerts:\n"
                 "  every_seconds: 5\n"
                 "  budget_percent: [90]\n"
                 "  spend_rate: {factor: 2.5}\n"
                 "  breaker: {window_minutes: 10, factor: 4, min_usd: 1}\n"
                 "  jobs:\n"
                 "    acme: {rerun: off}\n"
                 "    acme/nightly: {spend_rate: {min_usd: 0.5}, breaker: off}\n"
                 "  webhooks: [{url: \"http://h/x/\", format: slack}]\n"
                 "  command: [a, b]\n",
                 "/b");
    assert_null(c->admin_host);
    assert_int_equal(c->alert_every_ms, 5000);
    assert_int_equal(c->nalert_percents, 1);
    assert_true(c->alert_rule.rate_factor == 25 * FB_PICO_PER_USD / 10);
    assert_true(c->alert_rule.rate_min == 5 * FB_PICO_PER_USD);
    assert_int_equal(c->nalert_webhooks, 1);
    assert_string_equal(c->alert_webhooks[0].url, "http://h/x");
    assert_int_equal(c->alert_webhooks[0].slack, 1);
    assert_int_equal(c->nalert_command, 2);
    const fb_alert_rule *r = fb_config_alert_rule(c, "acme", "nightly");
    assert_true(r->rate_min == FB_PICO_PER_USD / 2);
    assert_int_equal(r->breaker_minutes, 0);
    assert_int_equal(r->runs_per_day, 5); /* from the defaults, not acme's */
    r = fb_config_alert_rule(c, "acme", "other");
    assert_int_equal(r->runs_per_day, 0);
    assert_int_equal(r->breaker_minutes, 10);
    r = fb_config_alert_rule(c, "beta", "x");
    assert_true(r == &c->alert_rule);
    fb_config_free(c);

    parse_err("alerts: {spend_rate: {factor: 0.5}}\n", "at least 1");
    parse_err("alerts: {every_seconds: 0}\n", "every_seconds");
    parse_err("alerts: {jobs: {\"a/b/c\": {}}}\n", "TENANT or TENANT/JOB");
    parse_err("alerts: {webhooks: [{format: slack}]}\n", "needs a url");
    parse_err("alerts: {nope: 1}\n", "nope");
    parse_err("admin: {listen: \"nohost\"}\n", "admin.listen");
    parse_err("admin: {token_env: \"1X\"}\n", "environment variable");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_example),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_other_values),
        cmocka_unit_test(test_relative_paths),
        cmocka_unit_test(test_load),
        cmocka_unit_test(test_unknown_keys),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_bad_budgets),
        cmocka_unit_test(test_bad_names),
        cmocka_unit_test(test_providers),
        cmocka_unit_test(test_listen),
        cmocka_unit_test(test_not_mappings),
        cmocka_unit_test(test_yaml_errors),
        cmocka_unit_test(test_enums_and_limits),
        cmocka_unit_test(test_model_prices),
        cmocka_unit_test(test_late_errors),
        cmocka_unit_test(test_budget_spec),
        cmocka_unit_test(test_admin_and_alerts),
        cmocka_unit_test(test_store_and_cluster),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
