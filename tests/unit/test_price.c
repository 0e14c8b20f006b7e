/* test_price.c - unit tests for price.c: the built-in table, loading
 * LiteLLM-format files and text (defaults, skipped entries, rejected
 * ones), the all-or-nothing rule on errors, override order, provider
 * prefix stripping, and LiteLLM's real file when it is at hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "price.h"

#define PRICES_FILE "model_prices_and_context_window.json"

/* Every model of the built-in table (test_builtin checks the count). */
static const char *builtin_models[] = {
    "gpt-4o",
    "gpt-4o-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "o3",
    "o3-mini",
    "o4-mini",
    "claude-3-7-sonnet-20250219",
    "claude-3-haiku-20240307",
    "claude-3-opus-20240229",
    "claude-4-opus-20250514",
    "claude-4-sonnet-20250514",
    "claude-fable-5",
    "claude-haiku-4-5",
    "claude-haiku-4-5-20251001",
    "claude-mythos-5",
    "claude-opus-4-1",
    "claude-opus-4-1-20250805",
    "claude-opus-4-20250514",
    "claude-opus-4-5",
    "claude-opus-4-5-20251101",
    "claude-opus-4-6",
    "claude-opus-4-6-20260205",
    "claude-opus-4-6-thinking",
    "claude-opus-4-7",
    "claude-opus-4-7-20260416",
    "claude-opus-4-8",
    "claude-opus-5",
    "claude-sonnet-4-20250514",
    "claude-sonnet-4-5",
    "claude-sonnet-4-5-20250929",
    "claude-sonnet-4-6",
    "claude-sonnet-5",
};

static fb_err load_str(fb_prices *p, const char *json, char *err, size_t cap)
{
    return fb_prices_load_json(p, json, strlen(json), err, cap);
}

/* Writes text to a new temp file; path receives its name. */
static void write_temp(const char *text, char *path, size_t cap)
{
    const char *dir = getenv("TMPDIR");
    size_t len = strlen(text);
    int fd, n;

    n = snprintf(path, cap, "%s/fb_test_price_XXXXXX",
                 dir != NULL && dir[0] != '\0' ? dir : "/tmp");
    assert_true(n > 0 && (size_t)n < cap);
    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    assert_int_equal(close(fd), 0);
}

static void assert_price(const fb_price *pr, fb_money in, fb_money out,
                         fb_money cread, fb_money cwrite, int64_t maxout,
                         int64_t maxin)
{
    assert_non_null(pr);
    assert_int_equal(pr->input, in);
    assert_int_equal(pr->output, out);
    assert_int_equal(pr->cache_read, cread);
    assert_int_equal(pr->cache_write, cwrite);
    assert_int_equal(pr->max_output_tokens, maxout);
    assert_int_equal(pr->max_input_tokens, maxin);
}

static void test_builtin(void **state)
{
    fb_prices *p = fb_prices_new();
    (void)state;
    assert_non_null(p);
    for (size_t i = 0; i < FB_ARRAY_LEN(builtin_models); i++) {
        const fb_price *pr = fb_prices_find(p, builtin_models[i]);
        if (pr == NULL)
            fail_msg("built-in table lacks %s", builtin_models[i]);
        /* Embedding models price input only and produce no tokens. */
        int embedding = strncmp(builtin_models[i], "text-embedding", 14) == 0;
        assert_true(pr->input > 0 && (embedding || pr->output > 0));
        assert_true(pr->max_input_tokens > 0 &&
                    (embedding || pr->max_output_tokens > 0));
    }
    assert_int_equal(fb_prices_count(p), FB_ARRAY_LEN(builtin_models));
    /* 1.5e-07 and 6e-07 USD are 150000 and 600000 picodollars. */
    assert_price(fb_prices_find(p, "gpt-4o-mini"), 150000, 600000, 75000,
                 150000, 16384, 128000);
    assert_price(fb_prices_find(p, "claude-3-haiku-20240307"), 250000, 1250000,
                 30000, 300000, 4096, 200000);
    assert_price(fb_prices_find(p, "claude-sonnet-4-5"), 3000000, 15000000,
                 300000, 3750000, 64000, 200000);
    assert_null(fb_prices_find(p, "no-such-model"));
    assert_null(fb_prices_find(p, ""));
    assert_null(fb_prices_find(p, NULL));
    fb_prices_free(p);
    fb_prices_free(NULL);
}

static void test_load_file(void **state)
{
    static const char json[] =
        "{\n"
        "  \"sample_spec\": {\"max_tokens\": \"LEGACY parameter\",\n"
        "                  \"input_cost_per_token\": 0.0,\n"
        "                  \"output_cost_per_token\": 0.0},\n"
        "  \"note\": \"not an entry\",\n"
        "  \"list\": [1, 2],\n"
        "  \"image-model\": {\"input_cost_per_token\": 5e-06,\n"
        "                  \"output_cost_per_token\": null},\n"
        "  \"m-full\": {\"input_cost_per_token\": 1.5e-07,\n"
        "             \"output_cost_per_token\": 6e-07,\n"
        "             \"cache_read_input_token_cost\": 7.5e-08,\n"
        "             \"cache_creation_input_token_cost\": 1.875e-07,\n"
        "             \"max_tokens\": 4096, \"max_output_tokens\": 16384,\n"
        "             \"max_input_tokens\": 128000, \"mode\": \"chat\"},\n"
        "  \"m-min\": {\"input_cost_per_token\": 2e-06,\n"
        "            \"output_cost_per_token\": 8e-06},\n"
        "  \"m-old\": {\"input_cost_per_token\": 3E-5,\n"
        "            \"output_cost_per_token\": 6e-05,\n"
        "            \"max_tokens\": 8192, \"max_input_tokens\": 1e6},\n"
        "  \"m-free\": {\"input_cost_per_token\": 0,\n"
        "             \"output_cost_per_token\": 1}\n"
        "}\n";
    char path[512], err[256] = "";
    fb_prices *p = fb_prices_new();
    size_t before = fb_prices_count(p);
    (void)state;
    write_temp(json, path, sizeof(path));
    assert_int_equal(fb_prices_load_file(p, path, err, sizeof(err)), FB_OK);
    unlink(path);
    assert_int_equal(fb_prices_count(p), before + 4);
    assert_null(fb_prices_find(p, "sample_spec"));
    assert_null(fb_prices_find(p, "note"));
    assert_null(fb_prices_find(p, "image-model"));
    assert_price(fb_prices_find(p, "m-full"), 150000, 600000, 75000, 187500,
                 16384, 128000);
    /* Cache prices default to the input price; limits to 0 (unknown). */
    assert_price(fb_prices_find(p, "m-min"), 2000000, 8000000, 2000000, 2000000,
                 0, 0);
    /* max_tokens stands in for max_output_tokens. */
    assert_price(fb_prices_find(p, "m-old"), 30000000, 60000000, 30000000,
                 30000000, 8192, 1000000);
    /* JSON integers are whole dollars. */
    assert_price(fb_prices_find(p, "m-free"), 0, INT64_C(1000000000000), 0, 0,
                 0, 0);
    fb_prices_free(p);
}

static void test_load_errors(void **state)
{
    static const struct {
        const char *json;
        const char *in_msg; /* expected in the error text */
    } bad[] = {
        {"{\"a\": {\"input_cost_per_token\": 1e-6,", "line"},
        {"", "line"},
        {"[1, 2]", "object"},
        {"{\"gpt-neg\": {\"input_cost_per_token\": -1e-06,"
         " \"output_cost_per_token\": 1e-06}}",
         "\"gpt-neg\": input_cost_per_token is negative"},
        {"{\"out-neg\": {\"input_cost_per_token\": 1e-06,"
         " \"output_cost_per_token\": -2}}",
         "\"out-neg\": output_cost_per_token is negative"},
        {"{\"cache-neg\": {\"input_cost_per_token\": 1e-06,"
         " \"output_cost_per_token\": 1e-06,"
         " \"cache_read_input_token_cost\": -1e-07}}",
         "\"cache-neg\": cache_read_input_token_cost is negative"},
        {"{\"str\": {\"input_cost_per_token\": \"1e-06\","
         " \"output_cost_per_token\": 1e-06}}",
         "\"str\": input_cost_per_token is not a number"},
        {"{\"huge\": {\"input_cost_per_token\": 1e300,"
         " \"output_cost_per_token\": 1e-06}}",
         "\"huge\": input_cost_per_token is out of range"},
        {"{\"huge-int\": {\"input_cost_per_token\": 10000000,"
         " \"output_cost_per_token\": 1e-06}}",
         "\"huge-int\": input_cost_per_token is out of range"},
        {"{\"bad-max\": {\"input_cost_per_token\": 1e-06,"
         " \"output_cost_per_token\": 1e-06, \"max_output_tokens\": -5}}",
         "\"bad-max\": max_output_tokens"},
        {"{\"frac-max\": {\"input_cost_per_token\": 1e-06,"
         " \"output_cost_per_token\": 1e-06, \"max_input_tokens\": 1.5}}",
         "\"frac-max\": max_input_tokens"},
    };
    fb_prices *p = fb_prices_new();
    size_t before = fb_prices_count(p);
    (void)state;
    for (size_t i = 0; i < FB_ARRAY_LEN(bad); i++) {
        char err[256] = "";
        fb_err rc = load_str(p, bad[i].json, err, sizeof(err));
        if (rc != FB_EINVAL || strstr(err, bad[i].in_msg) == NULL)
            fail_msg("case %zu: rc %d, message \"%s\", want \"%s\"", i, (int)rc,
                     err, bad[i].in_msg);
        assert_int_equal(fb_prices_count(p), before);
    }
    /* A NULL or empty errbuf is fine. */
    assert_int_equal(load_str(p, "[]", NULL, 0), FB_EINVAL);
    fb_prices_free(p);
}

/* A file that fails part way changes nothing, not even the entries
 * before the bad one. */
static void test_error_leaves_table_unchanged(void **state)
{
    static const char good[] =
        "{\"gpt-4o-mini\": {\"input_cost_per_token\": 1e-06,"
        " \"output_cost_per_token\": 2e-06},"
        " \"new-model\": {\"input_cost_per_token\": 1e-06,"
        " \"output_cost_per_token\": 2e-06},"
        " \"broken\": {\"input_cost_per_token\": -1e-06,"
        " \"output_cost_per_token\": 2e-06}}";
    char path[512], err[256] = "";
    fb_prices *p = fb_prices_new();
    size_t before = fb_prices_count(p);
    (void)state;
    assert_int_equal(load_str(p, good, err, sizeof(err)), FB_EINVAL);
    assert_non_null(strstr(err, "broken"));
    assert_int_equal(fb_prices_count(p), before);
    assert_null(fb_prices_find(p, "new-model"));
    assert_price(fb_prices_find(p, "gpt-4o-mini"), 150000, 600000, 75000,
                 150000, 16384, 128000);

    /* The same through a file: the message starts with the path. */
    write_temp("{\"x\": {\"input_cost_per_token\": 1e-06,,}}", path,
               sizeof(path));
    assert_int_equal(fb_prices_load_file(p, path, err, sizeof(err)), FB_EINVAL);
    assert_true(strncmp(err, path, strlen(path)) == 0);
    unlink(path);
    assert_int_equal(fb_prices_count(p), before);

    /* Unreadable: FB_EIO, and the message names the file. */
    assert_int_equal(
        fb_prices_load_file(p, "/nonexistent/prices.json", err, sizeof(err)),
        FB_EIO);
    assert_non_null(strstr(err, "/nonexistent/prices.json"));
    assert_int_equal(fb_prices_count(p), before);
    fb_prices_free(p);
}

static void test_override_order(void **state)
{
    static const char first[] = "{\"m\": {\"input_cost_per_token\": 1e-06,"
                                " \"output_cost_per_token\": 2e-06,"
                                " \"cache_read_input_token_cost\": 1e-07,"
                                " \"max_output_tokens\": 100}}";
    static const char second[] = "{\"m\": {\"input_cost_per_token\": 3e-06,"
                                 " \"output_cost_per_token\": 4e-06}}";
    char err[256];
    fb_prices *p = fb_prices_new();
    fb_price set = {.input = 7,
                    .output = 8,
                    .cache_read = 9,
                    .cache_write = 10,
                    .max_output_tokens = 11,
                    .max_input_tokens = 12};
    fb_price neg = set;
    (void)state;
    assert_int_equal(load_str(p, first, err, sizeof(err)), FB_OK);
    assert_price(fb_prices_find(p, "m"), 1000000, 2000000, 100000, 1000000, 100,
                 0);
    /* The later entry replaces the whole price: the cache read price and
     * max_output_tokens of the first are not carried over. */
    assert_int_equal(load_str(p, second, err, sizeof(err)), FB_OK);
    assert_price(fb_prices_find(p, "m"), 3000000, 4000000, 3000000, 3000000, 0,
                 0);
    /* A later file also overrides the built-in table. */
    assert_int_equal(load_str(p,
                              "{\"gpt-4o\": {\"input_cost_per_token\": 1e-06,"
                              " \"output_cost_per_token\": 1e-06}}",
                              err, sizeof(err)),
                     FB_OK);
    assert_int_equal(fb_prices_find(p, "gpt-4o")->input, 1000000);
    /* And fb_prices_set (config overrides) overrides everything. */
    assert_int_equal(fb_prices_set(p, "m", &set), FB_OK);
    assert_price(fb_prices_find(p, "m"), 7, 8, 9, 10, 11, 12);
    assert_int_equal(fb_prices_set(p, "brand-new", &set), FB_OK);
    assert_price(fb_prices_find(p, "brand-new"), 7, 8, 9, 10, 11, 12);
    neg.cache_write = -1;
    assert_int_equal(fb_prices_set(p, "m", &neg), FB_EINVAL);
    assert_int_equal(fb_prices_find(p, "m")->cache_write, 10);
    /* Within one text the last of duplicate keys wins. */
    assert_int_equal(load_str(p,
                              "{\"d\": {\"input_cost_per_token\": 1e-06,"
                              " \"output_cost_per_token\": 1e-06},"
                              " \"d\": {\"input_cost_per_token\": 2e-06,"
                              " \"output_cost_per_token\": 2e-06}}",
                              err, sizeof(err)),
                     FB_OK);
    assert_int_equal(fb_prices_find(p, "d")->input, 2000000);
    fb_prices_free(p);
}

static void test_prefix(void **state)
{
    static const char json[] =
        "{\"azure/gpt-4o-mini\": {\"input_cost_per_token\": 1.65e-07,"
        " \"output_cost_per_token\": 6.6e-07},"
        " \"openai/special\": {\"input_cost_per_token\": 1e-06,"
        " \"output_cost_per_token\": 1e-06}}";
    char err[256];
    fb_prices *p = fb_prices_new();
    (void)state;
    assert_int_equal(load_str(p, json, err, sizeof(err)), FB_OK);
    assert_int_equal(fb_prices_find(p, "openai/gpt-4o-mini")->input, 150000);
    /* An exact entry wins over the stripped name. */
    assert_int_equal(fb_prices_find(p, "azure/gpt-4o-mini")->input, 165000);
    assert_int_equal(fb_prices_find(p, "gpt-4o-mini")->input, 150000);
    assert_non_null(fb_prices_find(p, "openai/special"));
    /* Only the text before the first '/' is the provider. */
    assert_non_null(fb_prices_find(p, "x/openai/special"));
    assert_null(fb_prices_find(p, "special"));
    assert_null(fb_prices_find(p, "a/b/gpt-4o-mini"));
    assert_null(fb_prices_find(p, "openai/"));
    assert_null(fb_prices_find(p, "/"));
    assert_non_null(fb_prices_find(p, "/gpt-4o"));
    fb_prices_free(p);
}

/* LiteLLM's own file, when the shared data is there: FB_SHARED_DATA names
 * its folder, else ../shared/data from the repository root. */
static void test_litellm_file(void **state)
{
    const char *dir = getenv("FB_SHARED_DATA");
    char path[1024], err[256] = "";
    fb_prices *p, *builtin;
    int n;
    (void)state;

    n = snprintf(path, sizeof(path), "%s/" PRICES_FILE,
                 dir != NULL && dir[0] != '\0' ? dir : "../shared/data");
    assert_true(n > 0 && (size_t)n < sizeof(path));
    if (access(path, R_OK) != 0) {
        print_message("skipping: %s not found\n", path);
        skip();
    }
    p = fb_prices_new();
    builtin = fb_prices_new();
    if (fb_prices_load_file(p, path, err, sizeof(err)) != FB_OK)
        fail_msg("%s", err);
    assert_true(fb_prices_count(p) > fb_prices_count(builtin));
    /* Every per-token price of gpt-4o-mini, exactly. */
    assert_price(fb_prices_find(p, "gpt-4o-mini"), 150000, 600000, 75000,
                 150000, 16384, 128000);
    assert_price(fb_prices_find(p, "openai/gpt-4o-mini"), 150000, 600000, 75000,
                 150000, 16384, 128000);
    /* The built-in table agrees with the file it was taken from. */
    for (size_t it = 0; it < FB_ARRAY_LEN(builtin_models); it++) {
        const fb_price *a = fb_prices_find(p, builtin_models[it]);
        const fb_price *b = fb_prices_find(builtin, builtin_models[it]);
        assert_non_null(a);
        assert_non_null(b);
        if (memcmp(a, b, sizeof(*a)) != 0)
            fail_msg("built-in price of %s differs from %s", builtin_models[it],
                     path);
    }
    fb_prices_free(builtin);
    fb_prices_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_builtin),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_error_leaves_table_unchanged),
        cmocka_unit_test(test_override_order),
        cmocka_unit_test(test_prefix),
        cmocka_unit_test(test_litellm_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
