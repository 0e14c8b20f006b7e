/* config_fuzz.c - libFuzzer target for the YAML config, fb_config_parse
 * of src/config.c (the in-memory form of fb_config_load). The input is
 *   byte 0: the size of the error buffer (0: 256; else the byte, 1..255);
 *   then the YAML text.
 * Checked: the result is FB_OK with a config or FB_EINVAL/FB_ENOMEM with
 * none; a refusal says why in a NUL-terminated message naming "<config>"
 * (when the buffer holds the name); parsing twice answers the same; an
 * accepted config is whole: names set and found again by
 * fb_config_provider/tenant/job, providers of a known kind with a base
 * URL, budgets and prices non-negative, each budget printed by
 * fb_budget_spec_format parses back to the same spec, limits positive.
 * Leaks are LeakSanitizer reports (the fuzz build has ASan). Any crash,
 * sanitizer report or trap is a finding.
 *   make build-fuzz/config_fuzz && build-fuzz/config_fuzz \
 *       -dict=fuzz/config.dict fuzz/corpus/config */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "config_fuzz: %s:%d: %s\n", __FILE__, __LINE__,    \
                    #cond);                                                    \
            abort();                                                           \
        }                                                                      \
    } while (0)

static void check_budget(const fb_budget_spec *b)
{
    CHECK(b->set == 0 || b->set == 1);
    if (!b->set)
        return;
    CHECK(b->limit >= 0);
    CHECK(b->period >= FB_PERIOD_NONE && b->period <= FB_PERIOD_MONTH);
    char text[64];
    size_t n = fb_budget_spec_format(b, text, sizeof text);
    CHECK(n < sizeof text && text[n] == '\0');
    fb_budget_spec back;
    memset(&back, 0, sizeof back);
    if (fb_budget_spec_parse(text, &back) != FB_OK) {
        fprintf(stderr, "config_fuzz: budget '%s' does not parse back\n", text);
        abort();
    }
    if (back.limit != b->limit || back.period != b->period || !back.set) {
        fprintf(stderr, "config_fuzz: budget '%s' parses back to %lld/%d\n",
                text, (long long)back.limit, (int)back.period);
        abort();
    }
}

static void check_price(const fb_price *p)
{
    CHECK(p->input >= 0 && p->output >= 0 && p->cache_read >= 0 &&
          p->cache_write >= 0 && p->cache_write_1h >= 0 &&
          p->input_priority >= 0 && p->output_priority >= 0 &&
          p->cache_read_priority >= 0);
    CHECK(p->max_output_tokens >= 0 && p->max_input_tokens >= 0);
}

static void check_config(const fb_config *c)
{
    CHECK(c->path != NULL && strcmp(c->path, "<config>") == 0);
    CHECK(c->listen_host != NULL && c->data_dir != NULL &&
          c->log_level != NULL);
    CHECK(c->listen_port >= 0 && c->listen_port <= 65535);
    CHECK(c->nprices == 0 || c->prices != NULL);
    for (size_t i = 0; i < c->nprices; i++)
        CHECK(c->prices[i] != NULL);
    for (size_t i = 0; i < c->nmodel_prices; i++) {
        CHECK(c->model_prices[i].model != NULL &&
              c->model_prices[i].model[0] != '\0');
        check_price(&c->model_prices[i].price);
    }
    for (size_t i = 0; i < c->nproviders; i++) {
        const fb_provider_conf *p = &c->providers[i];
        CHECK(p->name != NULL && p->name[0] != '\0' && p->base_url != NULL);
        CHECK(p->kind == FB_PROVIDER_OPENAI ||
              p->kind == FB_PROVIDER_ANTHROPIC ||
              p->kind == FB_PROVIDER_GENERIC);
        CHECK(p->price_per_call >= 0);
        CHECK(fb_config_provider(c, p->name, strlen(p->name)) == p);
    }
    check_budget(&c->global);
    for (size_t i = 0; i < c->ntenants; i++) {
        const fb_tenant_conf *t = &c->tenants[i];
        CHECK(t->name != NULL && t->name[0] != '\0');
        CHECK(fb_config_tenant(c, t->name) == t);
        check_budget(&t->budget);
        for (size_t k = 0; k < t->njobs; k++) {
            const fb_job_conf *j = &t->jobs[k];
            CHECK(j->name != NULL && j->name[0] != '\0');
            CHECK(fb_config_job(t, j->name) == j);
            CHECK(j->max_runs_per_day >= 0);
            check_budget(&j->budget);
        }
    }
    CHECK(c->durability == FB_DURABILITY_PROCESS ||
          c->durability == FB_DURABILITY_FULL);
    CHECK(c->max_body_bytes > 0 && c->max_header_bytes > 0);
    CHECK(c->max_connections > 0 && c->client_timeout_ms > 0 &&
          c->upstream_connect_timeout_ms > 0 && c->upstream_timeout_ms > 0);
    CHECK(c->replay_enabled == 0 || c->replay_enabled == 1);
    CHECK(c->replay_ttl_ms >= 0 && c->replay_max_bytes >= 0 &&
          c->replay_cache_bytes >= 0);
    for (size_t i = 0; i < c->nreplay_ignore; i++)
        CHECK(c->replay_ignore[i] != NULL);
    CHECK(c->retry_max_per_fp >= 0 && c->retry_max_percent >= 0 &&
          c->retry_floor >= 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t cap = data[0] == 0 ? 256 : data[0];
    const char *yaml = (const char *)data + 1;
    size_t n = size - 1;
    /* The text and the error buffer at their exact sizes (ASan sees any
     * read or write past either). */
    char *text = malloc(n ? n : 1);
    char *err = malloc(cap), *err2 = malloc(cap);
    CHECK(text != NULL && err != NULL && err2 != NULL);
    memcpy(text, yaml, n);
    memset(err, 0x5a, cap);

    fb_config *c = (fb_config *)1, *c2 = (fb_config *)1;
    fb_err rc = fb_config_parse(text, n, "/fuzz", &c, err, cap);
    CHECK(rc == FB_OK || rc == FB_EINVAL || rc == FB_ENOMEM);
    CHECK(memchr(err, '\0', cap) != NULL);
    fb_err rc2 = fb_config_parse(text, n, "/fuzz", &c2, err2, cap);
    CHECK(rc2 == rc && strcmp(err, err2) == 0);
    if (rc != FB_OK) {
        CHECK(c == NULL && c2 == NULL);
        CHECK(cap == 1 || err[0] != '\0');
        if (cap > sizeof "<config>")
            CHECK(strncmp(err, "<config>", 8) == 0);
    } else {
        CHECK(c != NULL && c2 != NULL);
        CHECK(err[0] == '\0');
        check_config(c);
        CHECK(c->nproviders == c2->nproviders && c->ntenants == c2->ntenants);
    }
    fb_config_free(c);
    fb_config_free(c2);
    free(text);
    free(err);
    free(err2);
    return 0;
}
