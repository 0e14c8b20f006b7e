/* inspect_fuzz.c - libFuzzer target for request introspection,
 * fb_provider_ops_for(kind)->inspect of src/provider.c, with a config
 * (fb_config_parse) and a price table built here once. The input is
 *   byte 0: the provider (mod 4: openai, anthropic, search = generic with
 *           a count field, webhook = generic without);
 *   byte 1: the method (mod 4: POST, GET, PUT, DELETE);
 *   then PATH "\n" BODY  (no newline: the kind's usual path, all body).
 * Checked: a refusal is one of the enum, says why (a non-empty message)
 * and leaves no body or document behind; an accepted call has a worst
 * case >= 0 equal to in * max(input, cache write prices) + out * output
 * (generic: price_per_call * count), token bounds >= 0 with the input
 * bound at least the body's bytes, a model whose price is known, no cost
 * on a free route; a rewritten body (stream usage asked for) parses with
 * unique keys, has stream_options.include_usage true, differs from the
 * original in nothing but stream_options (canonical form), and inspects
 * again to the same call without another rewrite. Any crash, sanitizer
 * report or trap is a finding.
 *   make build-fuzz/inspect_fuzz && build-fuzz/inspect_fuzz \
 *       -dict=fuzz/inspect.dict fuzz/corpus/inspect */
#include "config.h"
#include "json.h"
#include "provider.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "inspect_fuzz: %s:%d: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                    \
            abort();                                                           \
        }                                                                      \
    } while (0)

#define MSG_CAP 200

static const char config_yaml[] =
    "listen: 127.0.0.1:8787\n"
    "data_dir: /nonexistent/fuzz\n"
    "model_prices:\n"
    "  my-finetune: {input_cost_per_token: 0.000003, output_cost_per_token: "
    "0.000012, max_output_tokens: 4096}\n"
    "providers:\n"
    "  openai:    {kind: openai,    base_url: https://api.openai.com,    "
    "api_key_env: OPENAI_API_KEY}\n"
    "  anthropic: {kind: anthropic, base_url: https://api.anthropic.com, "
    "api_key_env: ANTHROPIC_API_KEY}\n"
    "  search:    {kind: generic,   base_url: https://api.tavily.com,    "
    "api_key_env: TAVILY_API_KEY,\n"
    "              price_per_call_usd: 0.008, count_field: max_results}\n"
    "  webhook:   {kind: generic,   base_url: https://example.com, "
    "price_per_call_usd: 0.5}\n"
    "budgets:\n"
    "  global: 100/day\n";

/* Models with edges: no output maximum, absurd prices, a stored-state
 * model without an input maximum, a provider-prefixed name. */
static const char extra_prices[] =
    "{\"no-max\": {\"input_cost_per_token\": 1e-06, "
    "\"output_cost_per_token\": 2e-06},"
    " \"pricey\": {\"input_cost_per_token\": 1000000, "
    "\"output_cost_per_token\": 9000000, \"max_output_tokens\": 1000000000},"
    " \"cw\": {\"input_cost_per_token\": 1e-06, \"output_cost_per_token\": "
    "2e-06, \"cache_creation_input_token_cost\": 5e-06, "
    "\"cache_creation_input_token_cost_above_1hr\": 8e-06, "
    "\"max_tokens\": 100},"
    " \"openrouter/some-model\": {\"input_cost_per_token\": 1e-07, "
    "\"output_cost_per_token\": 1e-07, \"max_output_tokens\": 10}}";

static fb_config *cfg;
static fb_prices *prices;
static const fb_provider_conf *pcs[4];

static void setup(void)
{
    char err[256];
    static const char *const names[4] = {"openai", "anthropic", "search",
                                         "webhook"};
    CHECK(fb_config_parse(config_yaml, sizeof config_yaml - 1, "/", &cfg, err,
                          sizeof err) == FB_OK);
    CHECK((prices = fb_prices_new()) != NULL);
    CHECK(fb_prices_load_json(prices, extra_prices, sizeof extra_prices - 1,
                              err, sizeof err) == FB_OK);
    for (size_t i = 0; i < cfg->nmodel_prices; i++)
        CHECK(fb_prices_set(prices, cfg->model_prices[i].model,
                            &cfg->model_prices[i].price) == FB_OK);
    for (int i = 0; i < 4; i++)
        CHECK((pcs[i] = fb_config_provider(cfg, names[i], strlen(names[i]))) !=
              NULL);
}

/* The worst case as provider.c's header defines it, or -1 on overflow. */
static fb_money expected_worst(const fb_call *c)
{
    const fb_price *p = c->price;
    fb_money inp = p->input;
    if (p->cache_write > inp)
        inp = p->cache_write;
    if (p->cache_write_1h > inp)
        inp = p->cache_write_1h;
    fb_money a, b, w;
    if (__builtin_mul_overflow(inp, c->worst_in, &a) ||
        __builtin_mul_overflow(p->output, c->worst_out, &b) ||
        __builtin_add_overflow(a, b, &w))
        return -1;
    return w;
}

static char *canonical_without(const char *body, size_t len, const char *field,
                               size_t *clen)
{
    char err[128];
    fb_json *j = fb_json_parse(body, len, FB_JSON_UNIQUE, err, sizeof err);
    CHECK(j != NULL);
    char *drop[1] = {(char *)field};
    char *c = fb_json_canonical(j, drop, 1, clen);
    CHECK(c != NULL);
    fb_json_free(j);
    return c;
}

static void check_rewrite(const fb_provider_ops *ops,
                          const fb_provider_conf *pc, const char *method,
                          const char *path, const char *body, size_t len,
                          const fb_call *call, const char *nb, size_t nl)
{
    char err[128];
    CHECK(nb[nl] == '\0');
    fb_json *j = fb_json_parse(nb, nl, FB_JSON_UNIQUE, err, sizeof err);
    if (j == NULL) {
        fprintf(stderr,
                "inspect_fuzz: rewritten body does not parse: %s\n"
                "  before: %.*s\n  after:  %.*s\n",
                err, (int)len, body, (int)nl, nb);
        abort();
    }
    CHECK(fb_json_typeof(j, 0) == FB_JSON_OBJECT);
    int so = fb_json_get(j, 0, "stream_options");
    CHECK(fb_json_typeof(j, fb_json_get(j, so, "include_usage")) ==
          FB_JSON_TRUE);
    fb_json_free(j);
    size_t l1, l2;
    char *c1 = canonical_without(body, len, "stream_options", &l1);
    char *c2 = canonical_without(nb, nl, "stream_options", &l2);
    CHECK(l1 == l2 && memcmp(c1, c2, l1) == 0);
    free(c1);
    free(c2);

    /* Inspected again: the same call, no second rewrite. */
    fb_call again;
    char msg[MSG_CAP];
    char *nb2 = NULL;
    size_t nl2 = 0;
    memset(&again, 0, sizeof again);
    char *copy = malloc(nl);
    CHECK(copy != NULL);
    memcpy(copy, nb, nl);
    fb_refuse r = ops->inspect(pc, prices, method, path, copy, nl, &again, &nb2,
                               &nl2, msg, sizeof msg);
    if (r != FB_REFUSE_NONE) {
        /* Only a longer body can tip the worst case into overflow. */
        CHECK(r == FB_REFUSE_BAD_REQUEST && strstr(msg, "overflows") &&
              nl > len);
    } else {
        CHECK(nb2 == NULL && !again.usage_injected);
        CHECK(strcmp(again.model, call->model) == 0);
        CHECK(again.stream == call->stream);
        CHECK(again.worst_out == call->worst_out);
        CHECK(again.worst_in >= (int64_t)nl);
    }
    fb_json_free(again.doc);
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const methods[4] = {"POST", "GET", "PUT", "DELETE"};
    static const char *const paths[4] = {"/v1/chat/completions", "/v1/messages",
                                         "/search", "/hook"};
    if (cfg == NULL)
        setup();
    if (size < 2)
        return 0;
    int which = data[0] % 4;
    const fb_provider_conf *pc = pcs[which];
    const fb_provider_ops *ops = fb_provider_ops_for(pc->kind);
    const char *method = methods[data[1] % 4];
    const char *in = (const char *)data + 2;
    size_t n = size - 2;
    const char *nl = memchr(in, '\n', n < 512 ? n : 512);
    char path[513];
    const char *body;
    size_t len;
    if (nl != NULL) {
        size_t pl = (size_t)(nl - in);
        memcpy(path, in, pl);
        path[pl] = '\0'; /* a NUL inside cuts it: fine, a C string */
        body = nl + 1;
        len = n - pl - 1;
    } else {
        snprintf(path, sizeof path, "%s", paths[which]);
        body = in;
        len = n;
    }
    /* The body in a buffer of its exact size. */
    char *b = malloc(len ? len : 1);
    CHECK(b != NULL);
    memcpy(b, body, len);

    fb_call call;
    memset(&call, 0, sizeof call);
    char *msg = malloc(MSG_CAP);
    CHECK(msg != NULL);
    msg[0] = '\0';
    char *nb = NULL;
    size_t nbl = 0;
    fb_refuse r = ops->inspect(pc, prices, method, path, b, len, &call, &nb,
                               &nbl, msg, MSG_CAP);
    CHECK(r == FB_REFUSE_NONE || r == FB_REFUSE_BAD_REQUEST ||
          r == FB_REFUSE_UNKNOWN_PRICE || r == FB_REFUSE_UNPRICED_ROUTE);
    CHECK(call.usage_injected == (nb != NULL));
    if (r != FB_REFUSE_NONE) {
        CHECK(msg[0] != '\0' && strnlen(msg, MSG_CAP) < MSG_CAP);
        CHECK(nb == NULL && call.doc == NULL);
        goto out;
    }
    CHECK(call.worst >= 0 && call.worst_in >= 0 && call.worst_out >= 0);
    CHECK(strnlen(call.model, sizeof call.model) < sizeof call.model);
    if (call.free_route) {
        CHECK(call.worst == 0 && call.doc == NULL && nb == NULL);
        goto out;
    }
    if (pc->kind == FB_PROVIDER_GENERIC) {
        CHECK(call.price == NULL && call.doc == NULL && nb == NULL);
        CHECK(pc->price_per_call > 0 && call.worst % pc->price_per_call == 0);
        goto out;
    }
    CHECK(call.price != NULL && call.model[0] != '\0');
    CHECK(fb_prices_find(prices, call.model) != NULL);
    CHECK(call.worst_in >= (int64_t)len);
    CHECK(call.doc != NULL && fb_json_typeof(call.doc, 0) == FB_JSON_OBJECT);
    CHECK(expected_worst(&call) == call.worst);
    if (nb != NULL)
        check_rewrite(ops, pc, method, path, b, len, &call, nb, nbl);
out:
    fb_json_free(call.doc);
    free(nb);
    free(msg);
    free(b);
    return 0;
}
