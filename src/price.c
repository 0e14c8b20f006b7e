/* price.c - the price table of price.h: a map from model name to fb_price,
 * filled from a built-in LiteLLM-format table, then from price files and
 * config overrides. A load builds the whole next table aside and swaps it
 * in only on success, so a bad file or a failed allocation half way
 * through leaves the old table as it was. */
#include "price.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "map.h"

struct fb_prices {
    fb_map *map; /* model name -> malloc'd fb_price */
};

/* A price file larger than this is not a price file (or is /dev/zero). */
#define PRICE_FILE_MAX ((size_t)64 * 1024 * 1024)

/* The built-in table: facts copied from LiteLLM's
 * model_prices_and_context_window.json, so the common models have a price
 * with no file at all. Each row is one LiteLLM entry reduced to the fields
 * fusebox reads: input, output, cache read[, cache write] per token, max
 * input and max output tokens. OpenAI lists no cache write price; it
 * defaults to the input price. */
#define OPENAI(model, in, out, cread, maxin, maxout)                           \
    "\"" model "\": {\"input_cost_per_token\": " in                            \
    ", \"output_cost_per_token\": " out                                        \
    ", \"cache_read_input_token_cost\": " cread                                \
    ", \"max_input_tokens\": " maxin ", \"max_output_tokens\": " maxout "}"
/* An OpenAI model with a priority tier. */
#define OPENAI_P(model, in, out, cread, pin, pout, pcread, maxin, maxout)      \
    "\"" model "\": {\"input_cost_per_token\": " in                            \
    ", \"output_cost_per_token\": " out                                        \
    ", \"cache_read_input_token_cost\": " cread                                \
    ", \"input_cost_per_token_priority\": " pin                                \
    ", \"output_cost_per_token_priority\": " pout                              \
    ", \"cache_read_input_token_cost_priority\": " pcread                      \
    ", \"max_input_tokens\": " maxin ", \"max_output_tokens\": " maxout "}"
#define ANTHROPIC(model, in, out, cread, cwrite, cwrite1h, maxin, maxout)      \
    "\"" model "\": {\"input_cost_per_token\": " in                            \
    ", \"output_cost_per_token\": " out                                        \
    ", \"cache_read_input_token_cost\": " cread                                \
    ", \"cache_creation_input_token_cost\": " cwrite                           \
    ", \"cache_creation_input_token_cost_above_1hr\": " cwrite1h               \
    ", \"max_input_tokens\": " maxin ", \"max_output_tokens\": " maxout "}"

/* clang-format off */
static const char builtin_json[] = "{"
    OPENAI_P("gpt-4o",
        "2.5e-06", "1e-05", "1.25e-06", "4.25e-06", "1.7e-05", "2.125e-06", "128000", "16384") ","
    OPENAI_P("gpt-4o-mini",
        "1.5e-07", "6e-07", "7.5e-08", "2.5e-07", "1e-06", "1.25e-07", "128000", "16384") ","
    /* Embedding models: input only (OpenAI's published prices). */
    OPENAI("text-embedding-3-small",
        "2e-08", "0", "2e-08", "8191", "0") ","
    OPENAI("text-embedding-3-large",
        "1.3e-07", "0", "1.3e-07", "8191", "0") ","
    OPENAI("text-embedding-ada-002",
        "1e-07", "0", "1e-07", "8191", "0") ","
    OPENAI_P("gpt-4.1",
        "2e-06", "8e-06", "5e-07", "3.5e-06", "1.4e-05", "8.75e-07", "1047576", "32768") ","
    OPENAI_P("gpt-4.1-mini",
        "4e-07", "1.6e-06", "1e-07", "7e-07", "2.8e-06", "1.75e-07", "1047576", "32768") ","
    OPENAI_P("gpt-4.1-nano",
        "1e-07", "4e-07", "2.5e-08", "2e-07", "8e-07", "5e-08", "1047576", "32768") ","
    OPENAI_P("gpt-5",
        "1.25e-06", "1e-05", "1.25e-07", "2.5e-06", "2e-05", "2.5e-07", "272000", "128000") ","
    OPENAI_P("gpt-5-mini",
        "2.5e-07", "2e-06", "2.5e-08", "4.5e-07", "3.6e-06", "4.5e-08", "272000", "128000") ","
    OPENAI("gpt-5-nano",
        "5e-08", "4e-07", "5e-09", "272000", "128000") ","
    OPENAI_P("o3",
        "2e-06", "8e-06", "5e-07", "3.5e-06", "1.4e-05", "8.75e-07", "200000", "100000") ","
    OPENAI("o3-mini",
        "1.1e-06", "4.4e-06", "5.5e-07", "200000", "100000") ","
    OPENAI_P("o4-mini",
        "1.1e-06", "4.4e-06", "2.75e-07", "2e-06", "8e-06", "5e-07", "200000", "100000") ","
    ANTHROPIC("claude-3-7-sonnet-20250219",
        "3e-06", "1.5e-05", "3e-07", "3.75e-06", "6e-06", "200000", "64000") ","
    ANTHROPIC("claude-3-haiku-20240307",
        "2.5e-07", "1.25e-06", "3e-08", "3e-07", "6e-06", "200000", "4096") ","
    ANTHROPIC("claude-3-opus-20240229",
        "1.5e-05", "7.5e-05", "1.5e-06", "1.875e-05", "6e-06", "200000", "4096") ","
    ANTHROPIC("claude-4-opus-20250514",
        "1.5e-05", "7.5e-05", "1.5e-06", "1.875e-05", "3e-05", "200000", "32000") ","
    ANTHROPIC("claude-4-sonnet-20250514",
        "3e-06", "1.5e-05", "3e-07", "3.75e-06", "6e-06", "1000000", "64000") ","
    ANTHROPIC("claude-fable-5",
        "1e-05", "5e-05", "1e-06", "1.25e-05", "2e-05", "1000000", "128000") ","
    ANTHROPIC("claude-haiku-4-5",
        "1e-06", "5e-06", "1e-07", "1.25e-06", "2e-06", "200000", "64000") ","
    ANTHROPIC("claude-haiku-4-5-20251001",
        "1e-06", "5e-06", "1e-07", "1.25e-06", "2e-06", "200000", "64000") ","
    ANTHROPIC("claude-mythos-5",
        "1e-05", "5e-05", "1e-06", "1.25e-05", "2e-05", "1000000", "128000") ","
    ANTHROPIC("claude-opus-4-1",
        "1.5e-05", "7.5e-05", "1.5e-06", "1.875e-05", "3e-05", "200000", "32000") ","
    ANTHROPIC("claude-opus-4-1-20250805",
        "1.5e-05", "7.5e-05", "1.5e-06", "1.875e-05", "3e-05", "200000", "32000") ","
    ANTHROPIC("claude-opus-4-20250514",
        "1.5e-05", "7.5e-05", "1.5e-06", "1.875e-05", "3e-05", "200000", "32000") ","
    ANTHROPIC("claude-opus-4-5",
        "5e-06", "2.5e-05", "5e-07", "6.25e-06", "1e-05", "200000", "64000") ","
    ANTHROPIC("claude-opus-4-5-20251101",
        "5e-06", "2.5e-05", "5e-07", "6.25e-06", "1e-05", "200000", "64000") ","
    ANTHROPIC("claude-opus-4-6",
        "5e-06", "2.5e-05", "5e-07", "6.25e-06", "1e-05", "1000000", "128000") ","
    ANTHROPIC("claude-opus-4-6-20260205",
        "5e-06", "2.5e-05", "5e-07", "6.25e-06", "1e-05", "1000000", "128000") ","
    ANTHROPIC("claude-opus-4-6-thinking",
        "5e-06", "2.5e-05", "5e-07", "6.25e-06", "1e-05", "1000000", "128000") ","
    ANTHROPIC("claude-opus-4-7",
        "5e-06", "2.5e-05", "5e-07", "6.25e-06", "1e-05", "1000000", "128000") ","
    ANTHROPIC("claude-opus-4-7-20260416",
        "5e-06", "2.5e-05", "5e-07", "6.25e-06", "1e-05", "1000000", "128000") ","
    ANTHROPIC("claude-opus-4-8",
        "5e-06", "2.5e-05", "5e-07", "6.25e-06", "1e-05", "1000000", "128000") ","
    ANTHROPIC("claude-opus-5",
        "5e-06", "2.5e-05", "5e-07", "6.25e-06", "1e-05", "1000000", "128000") ","
    ANTHROPIC("claude-sonnet-4-20250514",
        "3e-06", "1.5e-05", "3e-07", "3.75e-06", "6e-06", "1000000", "64000") ","
    ANTHROPIC("claude-sonnet-4-5",
        "3e-06", "1.5e-05", "3e-07", "3.75e-06", "6e-06", "200000", "64000") ","
    ANTHROPIC("claude-sonnet-4-5-20250929",
        "3e-06", "1.5e-05", "3e-07", "3.75e-06", "6e-06", "200000", "64000") ","
    ANTHROPIC("claude-sonnet-4-6",
        "3e-06", "1.5e-05", "3e-07", "3.75e-06", "6e-06", "1000000", "64000") ","
    ANTHROPIC("claude-sonnet-5",
        "2e-06", "1e-05", "2e-07", "2.5e-06", "4e-06", "1000000", "128000") "}";
/* clang-format on */

#undef OPENAI
#undef ANTHROPIC

static void set_err(char *errbuf, size_t errcap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *errbuf, size_t errcap, const char *fmt, ...)
{
    va_list ap;
    if (errbuf == NULL || errcap == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(errbuf, errcap, fmt, ap);
    va_end(ap);
}

/* A per-token price field. Absent or null: *present = 0. JSON integers
 * ("0", "1") are whole dollars; reals go through fb_money_from_double. */
static fb_err read_money(const json_t *entry, const char *model,
                         const char *field, fb_money *out, int *present,
                         const char *where, char *errbuf, size_t errcap)
{
    const json_t *v = json_object_get(entry, field);
    int negative;
    fb_err err;

    *present = 0;
    if (v == NULL || json_is_null(v))
        return FB_OK;
    if (!json_is_number(v)) {
        set_err(errbuf, errcap, "%smodel \"%s\": %s is not a number", where,
                model, field);
        return FB_EINVAL;
    }
    negative =
        json_is_integer(v) ? json_integer_value(v) < 0 : json_real_value(v) < 0;
    if (negative) {
        /* A negative price would turn spending into credit. */
        set_err(errbuf, errcap, "%smodel \"%s\": %s is negative", where, model,
                field);
        return FB_EINVAL;
    }
    if (json_is_integer(v))
        err =
            fb_money_mul(FB_PICO_PER_USD, (int64_t)json_integer_value(v), out);
    else
        err = fb_money_from_double(json_real_value(v), out);
    if (err != FB_OK) {
        set_err(errbuf, errcap, "%smodel \"%s\": %s is out of range", where,
                model, field);
        return FB_EINVAL;
    }
    *present = 1;
    return FB_OK;
}

/* A token count field; absent or null leaves *out alone. */
static fb_err read_count(const json_t *entry, const char *model,
                         const char *field, int64_t *out, const char *where,
                         char *errbuf, size_t errcap)
{
    const json_t *v = json_object_get(entry, field);

    if (v == NULL || json_is_null(v))
        return FB_OK;
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *out = (int64_t)json_integer_value(v);
        return FB_OK;
    }
    /* Some generators write counts as 1e6 or 128000.0. 2^53 bounds the
     * reals that are still exact integers. */
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d >= 0 && d <= 9007199254740992.0 && d == (double)(int64_t)d) {
            *out = (int64_t)d;
            return FB_OK;
        }
    }
    set_err(errbuf, errcap,
            "%smodel \"%s\": %s is not a non-negative whole number", where,
            model, field);
    return FB_EINVAL;
}

/* One LiteLLM entry. *skip is set for entries that price no tokens
 * (image models, say): they are not an error. */
static fb_err parse_entry(const json_t *entry, const char *model, fb_price *out,
                          int *skip, const char *where, char *errbuf,
                          size_t errcap)
{
    fb_price pr = {0};
    int has_in, has_out, has_cr, has_cw;
    fb_err err;

    *skip = 0;
    err = read_money(entry, model, "input_cost_per_token", &pr.input, &has_in,
                     where, errbuf, errcap);
    if (err != FB_OK)
        return err;
    err = read_money(entry, model, "output_cost_per_token", &pr.output,
                     &has_out, where, errbuf, errcap);
    if (err != FB_OK)
        return err;
    if (!has_in || !has_out) {
        *skip = 1;
        return FB_OK;
    }
    err = read_money(entry, model, "cache_read_input_token_cost",
                     &pr.cache_read, &has_cr, where, errbuf, errcap);
    if (err != FB_OK)
        return err;
    err = read_money(entry, model, "cache_creation_input_token_cost",
                     &pr.cache_write, &has_cw, where, errbuf, errcap);
    if (err != FB_OK)
        return err;
    if (!has_cr)
        pr.cache_read = pr.input;
    if (!has_cw)
        pr.cache_write = pr.input;
    int has_1h, has_ip, has_op, has_crp;
    err = read_money(entry, model, "cache_creation_input_token_cost_above_1hr",
                     &pr.cache_write_1h, &has_1h, where, errbuf, errcap);
    if (err == FB_OK)
        err = read_money(entry, model, "input_cost_per_token_priority",
                         &pr.input_priority, &has_ip, where, errbuf, errcap);
    if (err == FB_OK)
        err = read_money(entry, model, "output_cost_per_token_priority",
                         &pr.output_priority, &has_op, where, errbuf, errcap);
    if (err == FB_OK)
        err = read_money(entry, model, "cache_read_input_token_cost_priority",
                         &pr.cache_read_priority, &has_crp, where, errbuf,
                         errcap);
    if (err != FB_OK)
        return err;
    if (!has_1h)
        pr.cache_write_1h = pr.cache_write;
    if (!has_ip || !has_op) /* a tier is priced whole or not at all */
        pr.input_priority = pr.output_priority = pr.cache_read_priority = 0;
    else if (!has_crp)
        pr.cache_read_priority = pr.input_priority;
    /* LiteLLM's older entries only have max_tokens, which then means the
     * output limit; read it first so max_output_tokens wins. */
    err = read_count(entry, model, "max_tokens", &pr.max_output_tokens, where,
                     errbuf, errcap);
    if (err != FB_OK)
        return err;
    err = read_count(entry, model, "max_output_tokens", &pr.max_output_tokens,
                     where, errbuf, errcap);
    if (err != FB_OK)
        return err;
    err = read_count(entry, model, "max_input_tokens", &pr.max_input_tokens,
                     where, errbuf, errcap);
    if (err != FB_OK)
        return err;
    *out = pr;
    return FB_OK;
}

static fb_err put_copy(fb_map *m, const char *model, size_t len,
                       const fb_price *price)
{
    fb_price *copy = malloc(sizeof(*copy));
    void *old = NULL;
    fb_err err;

    if (copy == NULL)
        return FB_ENOMEM;
    *copy = *price;
    err = fb_map_put(m, model, len, copy, &old);
    if (err != FB_OK) {
        free(copy);
        return err;
    }
    free(old);
    return FB_OK;
}

/* A deep copy of m, so a load can fail part way without touching m. */
static fb_map *clone_table(const fb_map *m)
{
    fb_map *c = fb_map_new();
    size_t it = 0, klen;
    const char *key;
    void *val;

    if (c == NULL)
        return NULL;
    while (fb_map_next(m, &it, &key, &klen, &val)) {
        if (put_copy(c, key, klen, val) != FB_OK) {
            fb_map_free(c, free);
            return NULL;
        }
    }
    return c;
}

/* where: "" or "path: ", the start of every error message. */
static fb_err load_json(fb_prices *p, const char *json, size_t len,
                        const char *where, char *errbuf, size_t errcap)
{
    json_t *root = NULL;
    json_error_t jerr;
    fb_map *next = NULL;
    fb_err err = FB_OK;

    root = json_loadb(json, len, 0, &jerr);
    if (root == NULL) {
        set_err(errbuf, errcap, "%sline %d column %d: %s", where, jerr.line,
                jerr.column, jerr.text);
        err = FB_EINVAL;
        goto out;
    }
    if (!json_is_object(root)) {
        set_err(errbuf, errcap, "%sthe top level is not a JSON object", where);
        err = FB_EINVAL;
        goto out;
    }
    next = clone_table(p->map);
    if (next == NULL) {
        set_err(errbuf, errcap, "%sout of memory", where);
        err = FB_ENOMEM;
        goto out;
    }
    for (void *it = json_object_iter(root); it != NULL;
         it = json_object_iter_next(root, it)) {
        const char *model = json_object_iter_key(it);
        size_t mlen = json_object_iter_key_len(it);
        const json_t *entry = json_object_iter_value(it);
        fb_price pr;
        int skip;

        /* Only objects are entries. "sample_spec" documents LiteLLM's
         * schema: zero prices and text where the numbers go. */
        if (!json_is_object(entry) ||
            (mlen == 11 && memcmp(model, "sample_spec", 11) == 0))
            continue;
        err = parse_entry(entry, model, &pr, &skip, where, errbuf, errcap);
        if (err != FB_OK)
            goto out;
        if (skip)
            continue;
        err = put_copy(next, model, mlen, &pr);
        if (err != FB_OK) {
            set_err(errbuf, errcap, "%sout of memory", where);
            goto out;
        }
    }
    fb_map_free(p->map, free);
    p->map = next;
    next = NULL;
out:
    fb_map_free(next, free);
    json_decref(root);
    return err;
}

fb_err fb_prices_load_json(fb_prices *p, const char *json, size_t len,
                           char *errbuf, size_t errcap)
{
    return load_json(p, json, len, "", errbuf, errcap);
}

fb_err fb_prices_load_file(fb_prices *p, const char *path, char *errbuf,
                           size_t errcap)
{
    FILE *f = NULL;
    char *buf = NULL, *where = NULL;
    size_t len = 0, cap = 0, wlen;
    fb_err err = FB_OK;

    f = fopen(path, "rb");
    if (f == NULL) {
        set_err(errbuf, errcap, "%s: %s", path, strerror(errno));
        err = FB_EIO;
        goto out;
    }
    for (;;) {
        size_t n;
        if (len == cap) {
            size_t ncap = cap == 0 ? 65536 : cap * 2;
            char *nbuf;
            if (cap >= PRICE_FILE_MAX) {
                set_err(errbuf, errcap, "%s: larger than %zu bytes", path,
                        PRICE_FILE_MAX);
                err = FB_EINVAL;
                goto out;
            }
            nbuf = realloc(buf, ncap);
            if (nbuf == NULL) {
                set_err(errbuf, errcap, "%s: out of memory", path);
                err = FB_ENOMEM;
                goto out;
            }
            buf = nbuf;
            cap = ncap;
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) {
                set_err(errbuf, errcap, "%s: read error", path);
                err = FB_EIO;
                goto out;
            }
            break;
        }
    }
    /* Every message about the contents starts with the path. */
    wlen = strlen(path) + 3;
    where = malloc(wlen);
    if (where == NULL) {
        set_err(errbuf, errcap, "%s: out of memory", path);
        err = FB_ENOMEM;
        goto out;
    }
    snprintf(where, wlen, "%s: ", path);
    err = load_json(p, buf, len, where, errbuf, errcap);
out:
    if (f != NULL)
        fclose(f);
    free(buf);
    free(where);
    return err;
}

fb_prices *fb_prices_new(void)
{
    fb_prices *p = malloc(sizeof(*p));
    char errbuf[256];
    fb_err err;

    if (p == NULL)
        return NULL;
    p->map = fb_map_new();
    if (p->map == NULL) {
        free(p);
        return NULL;
    }
    err = load_json(p, builtin_json, sizeof(builtin_json) - 1,
                    "built-in: ", errbuf, sizeof(errbuf));
    if (err != FB_OK) {
        /* Only memory can fail here: the table is a constant that the
         * unit tests load. */
        FB_ASSERT(err == FB_ENOMEM);
        fb_prices_free(p);
        return NULL;
    }
    return p;
}

void fb_prices_free(fb_prices *p)
{
    if (p == NULL)
        return;
    fb_map_free(p->map, free);
    free(p);
}

fb_err fb_prices_set(fb_prices *p, const char *model, const fb_price *price)
{
    if (model == NULL || price == NULL || price->input < 0 ||
        price->output < 0 || price->cache_read < 0 || price->cache_write < 0 ||
        price->max_output_tokens < 0 || price->max_input_tokens < 0)
        return FB_EINVAL;
    return put_copy(p->map, model, strlen(model), price);
}

const fb_price *fb_prices_find(const fb_prices *p, const char *model)
{
    const fb_price *pr;
    const char *slash;

    if (model == NULL)
        return NULL;
    pr = fb_map_get(p->map, model, strlen(model));
    if (pr != NULL)
        return pr;
    /* "openai/gpt-4o" as LiteLLM and routers spell it: the provider is
     * the text before the first '/'. */
    slash = strchr(model, '/');
    if (slash == NULL)
        return NULL;
    return fb_map_get(p->map, slash + 1, strlen(slash + 1));
}

size_t fb_prices_count(const fb_prices *p)
{
    return fb_map_count(p->map);
}
