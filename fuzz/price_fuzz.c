/* price_fuzz.c - libFuzzer target for the LiteLLM price files,
 * fb_prices_load_json of src/price.c (the in-memory form of
 * fb_prices_load_file). The input is
 *   byte 0: the size of the error buffer (0: 256; else the byte, 1..255);
 *   then the JSON text, loaded over a fresh built-in table.
 * Checked: FB_OK, FB_EINVAL or FB_ENOMEM; a refusal says why (a
 * NUL-terminated message) and leaves the table as it was (count and a
 * built-in price); on success every entry jansson reads as priced (an
 * object with numeric input_cost_per_token and output_cost_per_token,
 * not "sample_spec") is found by name with its own input and output
 * price, defaults applied (cache prices fall back to the input price),
 * nothing negative; loading the same text again changes nothing. Leaks
 * are LeakSanitizer reports. Any crash, sanitizer report or trap is a
 * finding.
 *   make build-fuzz/price_fuzz && build-fuzz/price_fuzz \
 *       -dict=fuzz/price.dict fuzz/corpus/price */
#include "price.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "price_fuzz: %s:%d: %s\n", __FILE__, __LINE__,     \
                    #cond);                                                    \
            abort();                                                           \
        }                                                                      \
    } while (0)

/* The money a LiteLLM number stands for, as price.c documents it. */
static int money_of(const json_t *v, fb_money *out)
{
    if (json_is_integer(v))
        return fb_money_mul(FB_PICO_PER_USD, (int64_t)json_integer_value(v),
                            out) == FB_OK;
    return fb_money_from_double(json_real_value(v), out) == FB_OK;
}

static void check_price(const fb_price *p)
{
    CHECK(p->input >= 0 && p->output >= 0 && p->cache_read >= 0 &&
          p->cache_write >= 0 && p->cache_write_1h >= 0 &&
          p->input_priority >= 0 && p->output_priority >= 0 &&
          p->cache_read_priority >= 0);
    CHECK(p->max_output_tokens >= 0 && p->max_input_tokens >= 0);
}

static void check_loaded(const fb_prices *t, const json_t *root)
{
    const char *key;
    json_t *e;
    json_object_foreach((json_t *)root, key, e)
    {
        if (!json_is_object(e) || strcmp(key, "sample_spec") == 0)
            continue;
        const json_t *in = json_object_get(e, "input_cost_per_token");
        const json_t *out = json_object_get(e, "output_cost_per_token");
        if (!json_is_number(in) || !json_is_number(out))
            continue;
        const fb_price *p = fb_prices_find(t, key);
        if (p == NULL) {
            fprintf(stderr, "price_fuzz: priced entry '%s' not found\n", key);
            abort();
        }
        check_price(p);
        fb_money m;
        if (money_of(in, &m))
            CHECK(p->input == m);
        if (money_of(out, &m))
            CHECK(p->output == m);
        const json_t *cr = json_object_get(e, "cache_read_input_token_cost");
        if (cr == NULL || json_is_null(cr))
            CHECK(p->cache_read == p->input);
        const json_t *cw =
            json_object_get(e, "cache_creation_input_token_cost");
        if (cw == NULL || json_is_null(cw))
            CHECK(p->cache_write == p->input);
        const json_t *mo = json_object_get(e, "max_output_tokens");
        if (json_is_integer(mo))
            CHECK(p->max_output_tokens == json_integer_value(mo));
        const json_t *mi = json_object_get(e, "max_input_tokens");
        if (json_is_integer(mi))
            CHECK(p->max_input_tokens == json_integer_value(mi));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t cap = data[0] == 0 ? 256 : data[0];
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    char *text = malloc(n ? n : 1);
    char *err = malloc(cap);
    CHECK(text != NULL && err != NULL);
    memcpy(text, in, n);
    memset(err, 0x5a, cap);

    fb_prices *t = fb_prices_new();
    CHECK(t != NULL);
    size_t before = fb_prices_count(t);
    const fb_price *g = fb_prices_find(t, "gpt-4o");
    CHECK(g != NULL);
    fb_price gpt = *g;

    fb_err rc = fb_prices_load_json(t, text, n, err, cap);
    CHECK(rc == FB_OK || rc == FB_EINVAL || rc == FB_ENOMEM);
    if (rc != FB_OK) {
        CHECK(memchr(err, '\0', cap) != NULL);
        CHECK(cap == 1 || err[0] != '\0');
        CHECK(fb_prices_count(t) == before);
        g = fb_prices_find(t, "gpt-4o");
        CHECK(g != NULL && memcmp(g, &gpt, sizeof gpt) == 0);
    } else {
        json_error_t jerr;
        json_t *root = json_loadb(text, n, 0, &jerr);
        CHECK(root != NULL && json_is_object(root));
        check_loaded(t, root);
        size_t count = fb_prices_count(t);
        CHECK(fb_prices_load_json(t, text, n, err, cap) == FB_OK);
        CHECK(fb_prices_count(t) == count);
        check_loaded(t, root);
        json_decref(root);
    }
    fb_prices_free(t);
    free(text);
    free(err);
    return 0;
}
