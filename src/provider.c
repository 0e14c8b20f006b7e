/* provider.c - the three kinds of paid API behind one vtable.
 *
 * Worst case (reserved before the call):
 *   input tokens  <= request body bytes (each token of a byte-level BPE
 *                    tokenizer covers at least one byte), or the model's
 *                    maximum input when the request pulls in stored state
 *                    (previous_response_id, conversation, a stored prompt),
 *                    priced at the dearest of the input and cache-write
 *                    prices;
 *   output tokens <= n * prompts * (max_completion_tokens | max_tokens |
 *                    max_output_tokens, as sent, else the model's maximum);
 *   generic       =  price_per_call * count.
 * The priority service tier is priced from its own table entries or
 * refused. Images, audio and tool fees are not bounded (README, limits). */
#include "provider.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

static int ends_with(const char *path, const char *suffix)
{
    size_t pl = strcspn(path, "?"), sl = strlen(suffix);
    return pl >= sl && memcmp(path + pl - sl, suffix, sl) == 0;
}

/* Non-negative integer field; 0 absent, 1 found, -1 present but invalid. */
static int int_field(const fb_json *j, int obj, const char *name,
                     int64_t *out)
{
    int v = fb_json_get(j, obj, name);
    int64_t x;
    fb_json_type t = fb_json_typeof(j, v);
    if (t == FB_JSON_NONE || t == FB_JSON_NULL)
        return 0;
    if (!fb_json_int(j, v, &x) || x < 0)
        return -1;
    *out = x;
    return 1;
}

/* Duplicate keys are refused: fusebox and the provider must not read
 * different values of the same field. */
static fb_json *parse_object(const char *body, size_t len, char *msg,
                             size_t cap)
{
    char e[128];
    fb_json *j = fb_json_parse(body, len, FB_JSON_UNIQUE, e, sizeof e);
    if (j == NULL) {
        snprintf(msg, cap, "request body is not valid JSON: %s", e);
        return NULL;
    }
    if (fb_json_typeof(j, 0) != FB_JSON_OBJECT) {
        snprintf(msg, cap, "request body must be a JSON object");
        fb_json_free(j);
        return NULL;
    }
    return j;
}

/* worst = in * max(input, cache_write) + out * output, checked. */
static int worst_tokens(fb_call *call, int64_t in, int64_t out, char *msg,
                        size_t cap)
{
    const fb_price *p = call->price;
    fb_money inp = p->input > p->cache_write ? p->input : p->cache_write;
    if (p->cache_write_1h > inp)
        inp = p->cache_write_1h;
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
static fb_refuse model_price(const fb_json *j, const fb_prices *prices,
                             fb_call *call, char *msg, size_t cap)
{
    long ml = fb_json_str(j, fb_json_get(j, 0, "model"), call->model,
                          sizeof call->model);
    if (ml <= 0 || (size_t)ml >= sizeof call->model) {
        call->model[0] = '\0';
        snprintf(msg, cap, "request has no valid \"model\"");
        return FB_REFUSE_BAD_REQUEST;
    }
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
static fb_refuse output_bound(const fb_json *j, const char *const *fields,
                              const fb_call *call, int required,
                              int64_t *out, char *msg, size_t cap)
{
    int64_t v = 0;
    int got = 0;
    for (; *fields && !got; fields++) {
        got = int_field(j, 0, *fields, &v);
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
    /* A limit that was sent is used as sent: the provider rejects one it
     * cannot honour at no cost, and a capped one could under-reserve
     * (beta headers raise some models' output limits). */
    if (!got)
        v = model_max;
    *out = v;
    return FB_REFUSE_NONE;
}

/* The priority tier bills other prices: price the call from them, or
 * refuse it when they are unknown. Other tiers (flex, batch) cost less
 * and are settled at standard prices, which over-counts. */
static fb_refuse service_tier(const fb_json *j, fb_call *call, char *msg,
                              size_t cap)
{
    if (!fb_json_str_is(j, fb_json_get(j, 0, "service_tier"), "priority"))
        return FB_REFUSE_NONE;
    const fb_price *p = call->price;
    if (p->input_priority <= 0 || p->output_priority <= 0) {
        snprintf(msg, cap, "no priority-tier price is known for model '%s'",
                 call->model);
        return FB_REFUSE_UNKNOWN_PRICE;
    }
    call->tier = *p;
    call->tier.input = call->tier.cache_write = call->tier.cache_write_1h =
        p->input_priority;
    call->tier.output = p->output_priority;
    call->tier.cache_read = p->cache_read_priority;
    call->price = &call->tier;
    return FB_REFUSE_NONE;
}

/* The body with stream_options.include_usage set to true, edited in place
 * so every other byte reaches the provider as the client sent it; NULL if
 * it is already true. */
static char *ask_usage(const fb_json *j, const char *body, size_t len,
                       size_t *new_len)
{
    static const char field[] = "\"stream_options\":{\"include_usage\":true}";
    int so = fb_json_get(j, 0, "stream_options");
    int iu = fb_json_get(j, so, "include_usage");
    const char *ins;
    size_t at, cut = 0, off, sl;
    int comma_before = 0, comma_after = 0;
    if (fb_json_typeof(j, iu) == FB_JSON_TRUE)
        return NULL;
    if (iu >= 0) { /* "include_usage": false or another value */
        fb_json_span(j, iu, &at, &cut);
        ins = "true";
    } else if (fb_json_typeof(j, so) == FB_JSON_OBJECT) {
        fb_json_span(j, so, &off, &sl);
        at = off + 1;
        ins = "\"include_usage\":true";
        comma_after = fb_json_size(j, so) > 0;
    } else if (so >= 0) { /* "stream_options": null or another value */
        fb_json_span(j, so, &at, &cut);
        ins = field + sizeof "\"stream_options\":" - 1;
    } else {
        fb_json_span(j, 0, &off, &sl);
        at = off + sl - 1; /* before the closing brace */
        ins = field;
        comma_before = fb_json_size(j, 0) > 0;
    }
    size_t il = strlen(ins);
    char *b = malloc(len - cut + il + 2);
    if (b == NULL)
        return NULL;
    char *o = b;
    memcpy(o, body, at);
    o += at;
    if (comma_before)
        *o++ = ',';
    memcpy(o, ins, il);
    o += il;
    if (comma_after)
        *o++ = ',';
    memcpy(o, body + at + cut, len - at - cut);
    o += len - at - cut;
    *o = '\0';
    *new_len = (size_t)(o - b);
    return b;
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
    fb_json *j = NULL;
    int chat = ends_with(path, "/chat/completions");
    int resp = ends_with(path, "/responses");
    int emb = ends_with(path, "/embeddings");
    int legacy = !chat && ends_with(path, "/completions");
    int64_t out = 0, n = 1;

    (void)pc;
    if (strcmp(method, "GET") == 0 && ends_with(path, "/models")) {
        call->free_route = 1;
        return FB_REFUSE_NONE;
    }
    if (strcmp(method, "POST") != 0 || !(chat || resp || emb || legacy)) {
        snprintf(msg, cap,
                 "%s %s has no known price; fusebox forwards only priced "
                 "routes",
                 method, path);
        return FB_REFUSE_UNPRICED_ROUTE;
    }
    if ((j = parse_object(body, len, msg, cap)) == NULL)
        return FB_REFUSE_BAD_REQUEST;
    if ((r = model_price(j, prices, call, msg, cap)) != FB_REFUSE_NONE)
        goto out;
    if ((r = service_tier(j, call, msg, cap)) != FB_REFUSE_NONE)
        goto out;
    call->stream = fb_json_typeof(j, fb_json_get(j, 0, "stream")) ==
                   FB_JSON_TRUE;
    int64_t in = (int64_t)len;
    if (resp && (fb_json_get(j, 0, "previous_response_id") >= 0 ||
                 fb_json_get(j, 0, "conversation") >= 0 ||
                 fb_json_get(j, 0, "prompt") >= 0)) {
        /* Input the provider adds from stored state is not in the body. */
        if (call->price->max_input_tokens <= 0) {
            snprintf(msg, cap,
                     "the request uses stored state and the maximum input of "
                     "model '%s' is unknown, so the call cannot be bounded",
                     call->model);
            r = FB_REFUSE_BAD_REQUEST;
            goto out;
        }
        if (call->price->max_input_tokens > in)
            in = call->price->max_input_tokens;
    }
    if (!emb) {
        r = output_bound(j,
                         chat ? chat_fields : resp ? resp_fields : compl_fields,
                         call, 0, &out, msg, cap);
        if (r != FB_REFUSE_NONE)
            goto out;
        int got = int_field(j, 0, "n", &n);
        if (got < 0 || (got && n < 1) || n > 128) {
            snprintf(msg, cap, "\"n\" must be an integer from 1 to 128");
            r = FB_REFUSE_BAD_REQUEST;
            goto out;
        }
        int64_t best = 0, first;
        if (legacy && int_field(j, 0, "best_of", &best) > 0 && best > n)
            n = best > 128 ? 128 : best;
        /* Legacy completions: an array of prompts answers each one (an
         * array of integers is one prompt, as tokens). */
        int pr = legacy ? fb_json_get(j, 0, "prompt") : -1;
        if (fb_json_size(j, pr) > 0 && fb_json_typeof(j, pr) == FB_JSON_ARRAY &&
            !fb_json_int(j, fb_json_first(j, pr), &first))
            n *= (int64_t)fb_json_size(j, pr);
        if (__builtin_mul_overflow(out, n, &out)) {
            snprintf(msg, cap, "the output limit of this request overflows");
            r = FB_REFUSE_BAD_REQUEST;
            goto out;
        }
    }
    if (worst_tokens(call, in, out, msg, cap) != 0) {
        r = FB_REFUSE_BAD_REQUEST;
        goto out;
    }
    /* A chat stream reports usage only when asked; ask for it, and
     * remember to drop that extra chunk if the client did not. */
    if ((chat || legacy) && call->stream &&
        (*new_body = ask_usage(j, body, len, new_len)) != NULL)
        call->usage_injected = 1;
out:
    if (r == FB_REFUSE_NONE)
        call->doc = j; /* the caller's now */
    else
        fb_json_free(j);
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
    fb_json *j = NULL;
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
    if ((j = parse_object(body, len, msg, cap)) == NULL)
        return FB_REFUSE_BAD_REQUEST;
    if ((r = model_price(j, prices, call, msg, cap)) != FB_REFUSE_NONE)
        goto out;
    call->stream = fb_json_typeof(j, fb_json_get(j, 0, "stream")) ==
                   FB_JSON_TRUE;
    if ((r = output_bound(j, fields, call, 1, &out, msg, cap)) !=
        FB_REFUSE_NONE)
        goto out;
    if (worst_tokens(call, (int64_t)len, out, msg, cap) != 0)
        r = FB_REFUSE_BAD_REQUEST;
out:
    if (r == FB_REFUSE_NONE)
        call->doc = j; /* the caller's now */
    else
        fb_json_free(j);
    return r;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* Percent-decode s[0..n) ('+' is a space, as HTML forms and most web
 * frameworks read it) into out; -1 on a bad escape or if it does not fit. */
static int pct_decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            int hi, lo;
            if (i + 2 >= n || (hi = hexval(s[i + 1])) < 0 ||
                (lo = hexval(s[i + 2])) < 0)
                return -1;
            c = (char)(hi * 16 + lo);
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (k + 1 >= cap)
            return -1;
        out[k++] = c;
    }
    out[k] = '\0';
    return (int)k;
}

/* The count field in the query string, read as a web framework would
 * (percent-decoded names and values): 0 absent, 1 found, -1 not a
 * non-negative integer or given more than once (ambiguous: refused). */
static int query_count(const char *path, const char *field, int64_t *out)
{
    const char *q = strchr(path, '?');
    int found = 0;
    while (q != NULL) {
        const char *p = q + 1, *end = strchr(p, '&');
        size_t plen = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', plen);
        size_t klen = eq ? (size_t)(eq - p) : plen;
        char key[256], val[64];
        q = end;
        if (pct_decode(p, klen, key, sizeof key) < 0 || strcmp(key, field) != 0)
            continue;
        if (found++)
            return -1;
        const char *v = eq ? eq + 1 : p + plen;
        int vl = pct_decode(v, (size_t)(p + plen - v), val, sizeof val);
        int64_t n = 0;
        if (vl <= 0)
            return -1;
        for (int i = 0; i < vl; i++) {
            if (val[i] < '0' || val[i] > '9' || n > (INT64_MAX - 9) / 10)
                return -1;
            n = n * 10 + (val[i] - '0');
        }
        *out = n;
    }
    return found;
}

static fb_refuse generic_inspect(const fb_provider_conf *pc,
                                 const fb_prices *prices, const char *method,
                                 const char *path, const char *body,
                                 size_t len, fb_call *call, char **new_body,
                                 size_t *new_len, char *msg, size_t cap)
{
    int64_t count = 1, qcount = 0, bcount = 0;
    int inq = 0, inb = 0;
    (void)prices;
    (void)method;
    (void)new_body;
    (void)new_len;
    /* The count may come from the query string, the JSON body or both;
     * a provider could read either, so the larger one is reserved. */
    if (pc->count_field != NULL &&
        (inq = query_count(path, pc->count_field, &qcount)) < 0) {
        snprintf(msg, cap,
                 "\"%s\" in the query string must be one non-negative integer",
                 pc->count_field);
        return FB_REFUSE_BAD_REQUEST;
    }
    if (pc->count_field != NULL && len > 0) {
        fb_json *j = parse_object(body, len, msg, cap);
        if (j == NULL)
            return FB_REFUSE_BAD_REQUEST;
        int v = fb_json_get(j, 0, pc->count_field);
        if (fb_json_typeof(j, v) == FB_JSON_ARRAY) {
            bcount = (int64_t)fb_json_size(j, v);
            inb = 1;
        } else if (v >= 0 &&
                   (inb = int_field(j, 0, pc->count_field, &bcount)) < 0) {
            snprintf(msg, cap,
                     "\"%s\" must be a non-negative integer or an array",
                     pc->count_field);
            fb_json_free(j);
            return FB_REFUSE_BAD_REQUEST;
        }
        fb_json_free(j);
    }
    if (inq || inb)
        count = qcount > bcount ? qcount : bcount;
    if (fb_money_mul(pc->price_per_call, count, &call->worst) != FB_OK) {
        snprintf(msg, cap, "\"%s\" is too large", pc->count_field);
        return FB_REFUSE_BAD_REQUEST;
    }
    return FB_REFUSE_NONE;
}

/* The usage object of a document: top level, or inside "response"
 * (OpenAI Responses stream) or "message" (Anthropic message_start). */
static int find_usage(const fb_json *j)
{
    int u = fb_json_get(j, 0, "usage");
    if (fb_json_typeof(j, u) == FB_JSON_OBJECT)
        return u;
    u = fb_json_get(j, fb_json_get(j, 0, "response"), "usage");
    if (fb_json_typeof(j, u) == FB_JSON_OBJECT)
        return u;
    u = fb_json_get(j, fb_json_get(j, 0, "message"), "usage");
    return fb_json_typeof(j, u) == FB_JSON_OBJECT ? u : -1;
}

static void take_max(const fb_json *j, int obj, const char *name,
                     int64_t *field, int *found)
{
    int64_t v;
    if (int_field(j, obj, name, &v) > 0) {
        if (v > *field)
            *field = v;
        *found = 1;
    }
}

static void openai_usage(const char *json, size_t len, fb_usage *u)
{
    fb_json *j = fb_json_parse(json, len, 0, NULL, 0);
    int us = j ? find_usage(j) : -1;
    if (us >= 0) {
        int found = 0;
        take_max(j, us, "prompt_tokens", &u->input, &found);
        take_max(j, us, "input_tokens", &u->input, &found);
        take_max(j, us, "completion_tokens", &u->output, &found);
        take_max(j, us, "output_tokens", &u->output, &found);
        take_max(j, fb_json_get(j, us, "prompt_tokens_details"),
                 "cached_tokens", &u->cache_read, &found);
        take_max(j, fb_json_get(j, us, "input_tokens_details"),
                 "cached_tokens", &u->cache_read, &found);
        u->found |= found;
    }
    fb_json_free(j);
}

static void anthropic_usage(const char *json, size_t len, fb_usage *u)
{
    fb_json *j = fb_json_parse(json, len, 0, NULL, 0);
    int us = j ? find_usage(j) : -1;
    if (us >= 0) {
        int found = 0;
        take_max(j, us, "input_tokens", &u->input, &found);
        take_max(j, us, "output_tokens", &u->output, &found);
        take_max(j, us, "cache_read_input_tokens", &u->cache_read, &found);
        take_max(j, us, "cache_creation_input_tokens", &u->cache_write,
                 &found);
        take_max(j, fb_json_get(j, us, "cache_creation"),
                 "ephemeral_1h_input_tokens", &u->cache_write_1h, &found);
        u->found |= found;
    }
    fb_json_free(j);
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
    /* cache_creation_input_tokens counts both cache lifetimes; the 1-hour
     * part is billed at its own, higher price. */
    int64_t h = u->cache_write_1h < u->cache_write ? u->cache_write_1h
                                                   : u->cache_write;
    int64_t t[5] = {u->input, u->cache_write - h, h, u->cache_read,
                    u->output};
    fb_money m[5] = {p->input, p->cache_write, p->cache_write_1h,
                     p->cache_read, p->output};
    return dot(t, m, 5, out);
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
    fb_json *j = fb_json_parse(json, len, 0, NULL, 0);
    int ch = j ? fb_json_get(j, 0, "choices") : -1;
    int only = j != NULL && fb_json_typeof(j, ch) == FB_JSON_ARRAY &&
               fb_json_size(j, ch) == 0 &&
               fb_json_typeof(j, fb_json_get(j, 0, "usage")) == FB_JSON_OBJECT;
    fb_json_free(j);
    return only;
}
