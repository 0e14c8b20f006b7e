/* provider.c - the three kinds of paid API behind one vtable.
 *
 * Worst case (reserved before the call):
 *   input tokens  <= request body bytes (each token of a byte-level BPE
 *                    tokenizer covers at least one byte), priced at the
 *                    dearer of the input and cache-write prices;
 *   output tokens <= n * (max_completion_tokens | max_tokens |
 *                    max_output_tokens | the model's maximum output),
 *                    capped at the model's maximum when it is known;
 *   generic       =  price_per_call * count.
 * Images, audio and tool fees are not bounded by this (README, limits). */
#include "provider.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

static int ends_with(const char *path, const char *suffix)
{
    size_t pl = strcspn(path, "?"), sl = strlen(suffix);
    return pl >= sl && memcmp(path + pl - sl, suffix, sl) == 0;
}

/* Non-negative integer field; 0 absent, 1 found, -1 present but invalid. */
static int int_field(json_t *obj, const char *name, int64_t *out)
{
    json_t *v = json_object_get(obj, name);
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = json_integer_value(v);
    return 1;
}

static json_t *parse_object(const char *body, size_t len, char *msg,
                            size_t cap)
{
    json_error_t e;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &e);
    if (root == NULL) {
        snprintf(msg, cap, "request body is not valid JSON: %s (at byte %d)",
                 e.text, e.position);
        return NULL;
    }
    if (!json_is_object(root)) {
        snprintf(msg, cap, "request body must be a JSON object");
        json_decref(root);
        return NULL;
    }
    return root;
}

/* worst = in * max(input, cache_write) + out * output, checked. */
static int worst_tokens(fb_call *call, int64_t in, int64_t out, char *msg,
                        size_t cap)
{
    const fb_price *p = call->price;
    fb_money inp = p->input > p->cache_write ? p->input : p->cache_write;
    fb_money a, b;
    call->worst_in = in;
    call->worst_out = out;
    if (fb_money_mul(inp, in, &a) != FB_OK ||
        fb_money_mul(p->output, out, &b) != FB_OK ||
        fb_money_add(a, b, &call->worst) != FB_OK) {
        snprintf(msg, cap, "worst-case cost of this request overflows");
        return -1;
    }
    return 0;
}

/* The model and its price; refusal when absent or unpriced. */
static fb_refuse model_price(json_t *root, const fb_prices *prices,
                             fb_call *call, char *msg, size_t cap)
{
    json_t *m = json_object_get(root, "model");
    if (!json_is_string(m) || json_string_length(m) == 0 ||
        json_string_length(m) >= sizeof call->model) {
        snprintf(msg, cap, "request has no valid \"model\"");
        return FB_REFUSE_BAD_REQUEST;
    }
    fb_strlcpy(call->model, json_string_value(m), sizeof call->model);
    call->price = fb_prices_find(prices, call->model);
    if (call->price == NULL) {
        snprintf(msg, cap,
                 "no price is known for model '%s'; add it under "
                 "model_prices or in a price file",
                 call->model);
        return FB_REFUSE_UNKNOWN_PRICE;
    }
    return FB_REFUSE_NONE;
}

/* Output bound: the first of fields[] present, else the model maximum. */
static fb_refuse output_bound(json_t *root, const char *const *fields,
                              const fb_call *call, int required,
                              int64_t *out, char *msg, size_t cap)
{
    int64_t v = 0;
    int got = 0;
    for (; *fields && !got; fields++) {
        got = int_field(root, *fields, &v);
        if (got < 0) {
            snprintf(msg, cap, "\"%s\" must be a non-negative integer",
                     *fields);
            return FB_REFUSE_BAD_REQUEST;
        }
    }
    int64_t model_max = call->price->max_output_tokens;
    if (!got && (required || model_max <= 0)) {
        snprintf(msg, cap,
                 "set max_tokens: the maximum output of model '%s' is "
                 "unknown, so the call cannot be bounded",
                 call->model);
        return FB_REFUSE_BAD_REQUEST;
    }
    if (!got || (model_max > 0 && v > model_max))
        v = model_max;
    *out = v;
    return FB_REFUSE_NONE;
}

static fb_refuse openai_inspect(const fb_provider_conf *pc,
                                const fb_prices *prices, const char *method,
                                const char *path, const char *body,
                                size_t len, fb_call *call, char **new_body,
                                size_t *new_len, char *msg, size_t cap)
{
    static const char *const chat_fields[] = {"max_completion_tokens",
                                              "max_tokens", NULL};
    static const char *const resp_fields[] = {"max_output_tokens", NULL};
    static const char *const compl_fields[] = {"max_tokens", NULL};
    fb_refuse r = FB_REFUSE_NONE;
    json_t *root = NULL;
    int chat = ends_with(path, "/chat/completions");
    int resp = ends_with(path, "/responses");
    int emb = ends_with(path, "/embeddings");
    int compl = !chat && ends_with(path, "/completions");
    int64_t out = 0, n = 1;

    (void)pc;
    if (strcmp(method, "GET") == 0 && ends_with(path, "/models")) {
        call->free_route = 1;
        return FB_REFUSE_NONE;
    }
    if (strcmp(method, "POST") != 0 || !(chat || resp || emb || compl)) {
        snprintf(msg, cap,
                 "%s %s has no known price; fusebox forwards only priced "
                 "routes",
                 method, path);
        return FB_REFUSE_UNPRICED_ROUTE;
    }
    if ((root = parse_object(body, len, msg, cap)) == NULL)
        return FB_REFUSE_BAD_REQUEST;
    if ((r = model_price(root, prices, call, msg, cap)) != FB_REFUSE_NONE)
        goto out;
    json_t *st = json_object_get(root, "stream");
    call->stream = json_is_true(st);
    if (!emb) {
        r = output_bound(root,
                         chat ? chat_fields : resp ? resp_fields : compl_fields,
                         call, 0, &out, msg, cap);
        if (r != FB_REFUSE_NONE)
            goto out;
        int got = int_field(root, "n", &n);
        if (got < 0 || (got && n < 1) || n > 128) {
            snprintf(msg, cap, "\"n\" must be an integer from 1 to 128");
            r = FB_REFUSE_BAD_REQUEST;
            goto out;
        }
        int64_t best = 0;
        if (compl && int_field(root, "best_of", &best) > 0 && best > n)
            n = best > 128 ? 128 : best;
        out *= n;
    }
    if (worst_tokens(call, (int64_t)len, out, msg, cap) != 0) {
        r = FB_REFUSE_BAD_REQUEST;
        goto out;
    }
    /* A chat stream reports usage only when asked; ask for it, and
     * remember to drop that extra chunk if the client did not. */
    if (chat && call->stream) {
        json_t *so = json_object_get(root, "stream_options");
        if (!json_is_true(json_object_get(so, "include_usage"))) {
            if (!json_is_object(so)) {
                so = json_object();
                json_object_set_new(root, "stream_options", so);
            }
            json_object_set_new(so, "include_usage", json_true());
            char *text = json_dumps(root, JSON_COMPACT);
            if (text == NULL) {
                snprintf(msg, cap, "out of memory");
                r = FB_REFUSE_BAD_REQUEST;
                goto out;
            }
            *new_body = text;
            *new_len = strlen(text);
            call->usage_injected = 1;
        }
    }
out:
    json_decref(root);
    return r;
}

static fb_refuse anthropic_inspect(const fb_provider_conf *pc,
                                   const fb_prices *prices,
                                   const char *method, const char *path,
                                   const char *body, size_t len,
                                   fb_call *call, char **new_body,
                                   size_t *new_len, char *msg, size_t cap)
{
    static const char *const fields[] = {"max_tokens", NULL};
    fb_refuse r;
    json_t *root = NULL;
    int64_t out = 0;

    (void)pc;
    (void)new_body;
    (void)new_len;
    if ((strcmp(method, "GET") == 0 && ends_with(path, "/models")) ||
        (strcmp(method, "POST") == 0 &&
         ends_with(path, "/messages/count_tokens"))) {
        call->free_route = 1;
        return FB_REFUSE_NONE;
    }
    if (strcmp(method, "POST") != 0 || !ends_with(path, "/messages")) {
        snprintf(msg, cap,
                 "%s %s has no known price; fusebox forwards only priced "
                 "routes",
                 method, path);
        return FB_REFUSE_UNPRICED_ROUTE;
    }
    if ((root = parse_object(body, len, msg, cap)) == NULL)
        return FB_REFUSE_BAD_REQUEST;
    if ((r = model_price(root, prices, call, msg, cap)) != FB_REFUSE_NONE)
        goto out;
    call->stream = json_is_true(json_object_get(root, "stream"));
    if ((r = output_bound(root, fields, call, 1, &out, msg, cap)) !=
        FB_REFUSE_NONE)
        goto out;
    if (worst_tokens(call, (int64_t)len, out, msg, cap) != 0)
        r = FB_REFUSE_BAD_REQUEST;
out:
    json_decref(root);
    return r;
}

/* count_field=N in the query string of a bodiless call: 0 absent, 1 found,
 * -1 not a non-negative integer. */
static int query_count(const char *path, const char *field, int64_t *out)
{
    const char *q = strchr(path, '?');
    size_t fl = strlen(field);
    while (q != NULL) {
        q++;
        if (strncmp(q, field, fl) == 0 && q[fl] == '=') {
            const char *v = q + fl + 1;
            int64_t n = 0;
            size_t i = 0;
            for (; v[i] >= '0' && v[i] <= '9'; i++) {
                if (n > (INT64_MAX - 9) / 10)
                    return -1;
                n = n * 10 + (v[i] - '0');
            }
            if (i == 0 || (v[i] != '\0' && v[i] != '&'))
                return -1;
            *out = n;
            return 1;
        }
        q = strchr(q, '&');
    }
    return 0;
}

static fb_refuse generic_inspect(const fb_provider_conf *pc,
                                 const fb_prices *prices, const char *method,
                                 const char *path, const char *body,
                                 size_t len, fb_call *call, char **new_body,
                                 size_t *new_len, char *msg, size_t cap)
{
    int64_t count = 1;
    (void)prices;
    (void)method;
    (void)new_body;
    (void)new_len;
    if (pc->count_field != NULL && len == 0 &&
        query_count(path, pc->count_field, &count) < 0) {
        snprintf(msg, cap, "\"%s\" must be a non-negative integer",
                 pc->count_field);
        return FB_REFUSE_BAD_REQUEST;
    }
    if (pc->count_field != NULL && len > 0) {
        json_t *root = parse_object(body, len, msg, cap);
        if (root == NULL)
            return FB_REFUSE_BAD_REQUEST;
        json_t *v = json_object_get(root, pc->count_field);
        if (json_is_array(v)) {
            count = (int64_t)json_array_size(v);
        } else if (v != NULL && int_field(root, pc->count_field, &count) < 0) {
            snprintf(msg, cap, "\"%s\" must be a non-negative integer or an array",
                     pc->count_field);
            json_decref(root);
            return FB_REFUSE_BAD_REQUEST;
        }
        json_decref(root);
    }
    if (fb_money_mul(pc->price_per_call, count, &call->worst) != FB_OK) {
        snprintf(msg, cap, "\"%s\" is too large", pc->count_field);
        return FB_REFUSE_BAD_REQUEST;
    }
    return FB_REFUSE_NONE;
}

/* The usage object of a document: top level, or inside "response"
 * (OpenAI Responses stream) or "message" (Anthropic message_start). */
static json_t *find_usage(json_t *root)
{
    json_t *u = json_object_get(root, "usage");
    if (json_is_object(u))
        return u;
    u = json_object_get(json_object_get(root, "response"), "usage");
    if (json_is_object(u))
        return u;
    u = json_object_get(json_object_get(root, "message"), "usage");
    return json_is_object(u) ? u : NULL;
}

static void take_max(json_t *obj, const char *name, int64_t *field, int *found)
{
    int64_t v;
    if (int_field(obj, name, &v) > 0) {
        if (v > *field)
            *field = v;
        *found = 1;
    }
}

static void openai_usage(const char *json, size_t len, fb_usage *u)
{
    json_t *root = json_loadb(json, len, 0, NULL);
    json_t *us = root ? find_usage(root) : NULL;
    if (us != NULL) {
        int found = 0;
        take_max(us, "prompt_tokens", &u->input, &found);
        take_max(us, "input_tokens", &u->input, &found);
        take_max(us, "completion_tokens", &u->output, &found);
        take_max(us, "output_tokens", &u->output, &found);
        take_max(json_object_get(us, "prompt_tokens_details"),
                 "cached_tokens", &u->cache_read, &found);
        take_max(json_object_get(us, "input_tokens_details"), "cached_tokens",
                 &u->cache_read, &found);
        u->found |= found;
    }
    json_decref(root);
}

static void anthropic_usage(const char *json, size_t len, fb_usage *u)
{
    json_t *root = json_loadb(json, len, 0, NULL);
    json_t *us = root ? find_usage(root) : NULL;
    if (us != NULL) {
        int found = 0;
        take_max(us, "input_tokens", &u->input, &found);
        take_max(us, "output_tokens", &u->output, &found);
        take_max(us, "cache_read_input_tokens", &u->cache_read, &found);
        take_max(us, "cache_creation_input_tokens", &u->cache_write, &found);
        u->found |= found;
    }
    json_decref(root);
}

static void generic_usage(const char *json, size_t len, fb_usage *u)
{
    (void)json;
    (void)len;
    (void)u;
}

/* sum of tokens[i] * prices[i], checked */
static fb_err dot(const int64_t *tokens, const fb_money *prices, size_t n,
                  fb_money *out)
{
    fb_money total = 0, part;
    for (size_t i = 0; i < n; i++) {
        if (fb_money_mul(prices[i], tokens[i], &part) != FB_OK ||
            fb_money_add(total, part, &total) != FB_OK)
            return FB_EOVERFLOW;
    }
    *out = total;
    return FB_OK;
}

static fb_err openai_cost(const fb_price *p, const fb_usage *u, fb_money *out)
{
    int64_t cached = u->cache_read < u->input ? u->cache_read : u->input;
    int64_t t[3] = {u->input - cached, cached, u->output};
    fb_money m[3] = {p->input, p->cache_read, p->output};
    return dot(t, m, 3, out);
}

static fb_err anthropic_cost(const fb_price *p, const fb_usage *u,
                             fb_money *out)
{
    int64_t t[4] = {u->input, u->cache_write, u->cache_read, u->output};
    fb_money m[4] = {p->input, p->cache_write, p->cache_read, p->output};
    return dot(t, m, 4, out);
}

static fb_err generic_cost(const fb_price *p, const fb_usage *u, fb_money *out)
{
    (void)p;
    (void)u;
    *out = 0;
    return FB_EINVAL;
}

static const fb_provider_ops ops[] = {
    [FB_PROVIDER_OPENAI] = {openai_inspect, openai_usage, openai_cost},
    [FB_PROVIDER_ANTHROPIC] = {anthropic_inspect, anthropic_usage,
                               anthropic_cost},
    [FB_PROVIDER_GENERIC] = {generic_inspect, generic_usage, generic_cost},
};

const fb_provider_ops *fb_provider_ops_for(fb_provider_kind kind)
{
    FB_ASSERT((size_t)kind < FB_ARRAY_LEN(ops));
    return &ops[kind];
}

fb_money fb_provider_settle(const fb_provider_conf *pc, const fb_call *call,
                            int status, const fb_usage *u)
{
    int ok = status >= 200 && status < 300;
    fb_money cost;
    if (call->free_route)
        return 0;
    if (pc->kind == FB_PROVIDER_GENERIC || call->price == NULL)
        return ok ? call->worst : 0;
    if (u->found &&
        fb_provider_ops_for(pc->kind)->cost(call->price, u, &cost) == FB_OK)
        return cost;
    return ok ? call->worst : 0;
}

int fb_provider_usage_only_chunk(const char *json, size_t len)
{
    json_t *root = json_loadb(json, len, 0, NULL);
    json_t *ch = json_object_get(root, "choices");
    int only = json_is_array(ch) && json_array_size(ch) == 0 &&
               json_is_object(json_object_get(root, "usage"));
    json_decref(root);
    return only;
}
