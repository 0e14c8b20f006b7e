/* price.h - the price table: USD per token per model, from the built-in
 * table, LiteLLM-format JSON files and config overrides, later sources
 * overriding earlier ones model by model (a later entry replaces the
 * model's whole price). A model without a known price is refused (fail
 * closed). */
#ifndef FB_PRICE_H
#define FB_PRICE_H

#include "common.h"
#include "money.h"

typedef struct fb_price {
    fb_money input;       /* per input token (input_cost_per_token) */
    fb_money output;      /* per output token (output_cost_per_token) */
    fb_money cache_read;  /* cache_read_input_token_cost; input if absent */
    fb_money cache_write; /* cache_creation_input_token_cost; input if absent */
    fb_money cache_write_1h; /* ..._cost_above_1hr (Anthropic 1-hour cache
                                writes); cache_write if absent */
    /* The priority service tier (OpenAI service_tier "priority"):
     * *_cost_per_token_priority; 0 when unknown (such calls are refused). */
    fb_money input_priority;
    fb_money output_priority;
    fb_money cache_read_priority; /* input_priority if absent */
    int64_t max_output_tokens; /* max_output_tokens, else max_tokens; 0 unknown */
    int64_t max_input_tokens;  /* 0 unknown */
} fb_price;

typedef struct fb_prices fb_prices;

/* A table holding the built-in prices. NULL on ENOMEM. */
fb_prices *fb_prices_new(void);
void fb_prices_free(fb_prices *p);

/* Merge a LiteLLM-format file (object: model -> {input_cost_per_token,
 * ...}). Entries without input_cost_per_token and output_cost_per_token
 * are skipped (e.g. "sample_spec", image models). FB_EIO if unreadable,
 * FB_EINVAL if malformed; errbuf gets a one-line reason. On error the
 * table is unchanged. */
fb_err fb_prices_load_file(fb_prices *p, const char *path, char *errbuf,
                           size_t errcap);
/* Same, from a JSON text in memory (for tests and the built-in table). */
fb_err fb_prices_load_json(fb_prices *p, const char *json, size_t len,
                           char *errbuf, size_t errcap);

/* Set or replace one model's price (copied). */
fb_err fb_prices_set(fb_prices *p, const char *model, const fb_price *price);

/* Price for model, or NULL. Tries the exact name, then the name without a
 * "provider/" prefix. The pointer lives until the next change of p. */
const fb_price *fb_prices_find(const fb_prices *p, const char *model);

size_t fb_prices_count(const fb_prices *p);

#endif
