/* test_provider.c - worst-case estimation (body bytes, output limits,
 * n, model maximum, refusals), usage parsing from whole answers and from
 * SSE events of each provider, and the exact cost of that usage. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "json.h"
#include "provider.h"
#include "sse.h"

static fb_prices *prices;
static fb_provider_conf openai = {.name = "openai", .kind = FB_PROVIDER_OPENAI};
static fb_provider_conf anthropic = {.name = "anthropic",
                                     .kind = FB_PROVIDER_ANTHROPIC};

static int setup(void **state)
{
    (void)state;
    prices = fb_prices_new();
    fb_price p = {.input = 150000, .output = 600000, .cache_read = 75000,
                  .cache_write = 150000, .cache_write_1h = 150000,
                  .input_priority = 250000, .output_priority = 1000000,
                  .cache_read_priority = 125000, .max_output_tokens = 16384,
                  .max_input_tokens = 128000};
    fb_price a = {.input = 3000000, .output = 15000000, .cache_read = 300000,
                  .cache_write = 3750000, .cache_write_1h = 6000000,
                  .max_output_tokens = 8192};
    fb_price nomax = {.input = 1, .output = 2};
    fb_prices_set(prices, "test-4o-mini", &p);
    fb_prices_set(prices, "test-claude", &a);
    fb_prices_set(prices, "test-nomax", &nomax);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    fb_prices_free(prices);
    return 0;
}

static fb_refuse inspect(const fb_provider_conf *pc, const char *method,
                         const char *path, const char *body, fb_call *call,
                         char **nb, size_t *nl)
{
    char msg[256];
    memset(call, 0, sizeof *call);
    *nb = NULL;
    fb_refuse r = fb_provider_ops_for(pc->kind)->inspect(
        pc, prices, method, path, body, strlen(body), call, nb, nl, msg,
        sizeof msg);
    fb_json_free(call->doc);
    call->doc = NULL;
    return r;
}

static void test_openai_worst_case(void **state)
{
    (void)state;
    fb_call c;
    char *nb;
    size_t nl;
    const char *body = "{\"model\":\"test-4o-mini\",\"max_tokens\":100,"
                       "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    size_t len = strlen(body);
    assert_int_equal(inspect(&openai, "POST", "/v1/chat/completions", body, &c,
                             &nb, &nl),
                     FB_REFUSE_NONE);
    assert_null(nb);
    assert_int_equal(c.worst_in, (int64_t)len);
    assert_int_equal(c.worst_out, 100);
    assert_int_equal(c.worst, (fb_money)len * 150000 + 100 * 600000);

    /* max_completion_tokens wins over max_tokens; n multiplies output. */
    body = "{\"model\":\"test-4o-mini\",\"max_tokens\":100,"
           "\"max_completion_tokens\":7,\"n\":3,\"messages\":[]}";
    assert_int_equal(inspect(&openai, "POST", "/v1/chat/completions", body, &c,
                             &nb, &nl),
                     FB_REFUSE_NONE);
    assert_int_equal(c.worst_out, 21);

    /* No limit in the request: the model's maximum output. */
    body = "{\"model\":\"test-4o-mini\",\"messages\":[]}";
    assert_int_equal(inspect(&openai, "POST", "/v1/chat/completions", body, &c,
                             &nb, &nl),
                     FB_REFUSE_NONE);
    assert_int_equal(c.worst_out, 16384);

    /* A limit above the model's maximum is reserved as sent. */
    body = "{\"model\":\"test-4o-mini\",\"max_tokens\":999999,\"messages\":[]}";
    assert_int_equal(inspect(&openai, "POST", "/v1/chat/completions", body, &c,
                             &nb, &nl),
                     FB_REFUSE_NONE);
    assert_int_equal(c.worst_out, 999999);
    /* n times an absurd limit overflows: refused, not wrapped. */
    body = "{\"model\":\"test-4o-mini\",\"max_tokens\":4611686018427387904,"
           "\"n\":4,\"messages\":[]}";
    assert_int_equal(inspect(&openai, "POST", "/v1/chat/completions", body, &c,
                             &nb, &nl),
                     FB_REFUSE_BAD_REQUEST);
    /* Legacy completions: one answer per prompt. */
    body = "{\"model\":\"test-4o-mini\",\"max_tokens\":10,\"n\":2,"
           "\"prompt\":[\"a\",\"b\",\"c\"]}";
    assert_int_equal(inspect(&openai, "POST", "/v1/completions", body, &c,
                             &nb, &nl),
                     FB_REFUSE_NONE);
    assert_int_equal(c.worst_out, 60);
    /* Stored state pulls in input the body does not show. */
    body = "{\"model\":\"test-4o-mini\",\"max_output_tokens\":1,"
           "\"previous_response_id\":\"resp_1\",\"input\":\"x\"}";
    assert_int_equal(inspect(&openai, "POST", "/v1/responses", body, &c, &nb,
                             &nl),
                     FB_REFUSE_NONE);
    assert_int_equal(c.worst_in, 128000);
    /* The priority tier: its own prices, or refused when unknown. */
    body = "{\"model\":\"test-4o-mini\",\"max_tokens\":1,"
           "\"service_tier\":\"priority\",\"messages\":[]}";
    assert_int_equal(inspect(&openai, "POST", "/v1/chat/completions", body, &c,
                             &nb, &nl),
                     FB_REFUSE_NONE);
    assert_int_equal(c.worst, (fb_money)strlen(body) * 250000 + 1000000);
    body = "{\"model\":\"test-nomax\",\"max_tokens\":1,"
           "\"service_tier\":\"priority\",\"messages\":[]}";
    assert_int_equal(inspect(&openai, "POST", "/v1/chat/completions", body, &c,
                             &nb, &nl),
                     FB_REFUSE_UNKNOWN_PRICE);

    /* Responses API and embeddings. */
    body = "{\"model\":\"test-4o-mini\",\"input\":\"x\",\"max_output_tokens\":5}";
    assert_int_equal(inspect(&openai, "POST", "/v1/responses", body, &c, &nb,
                             &nl),
                     FB_REFUSE_NONE);
    assert_int_equal(c.worst_out, 5);
    body = "{\"model\":\"test-4o-mini\",\"input\":\"hello\"}";
    assert_int_equal(inspect(&openai, "POST", "/v1/embeddings", body, &c, &nb,
                             &nl),
                     FB_REFUSE_NONE);
    assert_int_equal(c.worst_out, 0);
    assert_int_equal(c.worst, (fb_money)strlen(body) * 150000);

    /* A free route costs nothing and needs no body. */
    assert_int_equal(inspect(&openai, "GET", "/v1/models", "", &c, &nb, &nl),
                     FB_REFUSE_NONE);
    assert_true(c.free_route);
    assert_int_equal(c.worst, 0);
}

static void test_openai_refusals(void **state)
{
    (void)state;
    fb_call c;
    char *nb;
    size_t nl;
    const char *chat = "/v1/chat/completions";
    assert_int_equal(inspect(&openai, "POST", chat, "{not json", &c, &nb, &nl),
                     FB_REFUSE_BAD_REQUEST);
    assert_int_equal(inspect(&openai, "POST", chat, "[1,2]", &c, &nb, &nl),
                     FB_REFUSE_BAD_REQUEST);
    assert_int_equal(inspect(&openai, "POST", chat, "{\"messages\":[]}", &c,
                             &nb, &nl),
                     FB_REFUSE_BAD_REQUEST);
    assert_int_equal(inspect(&openai, "POST", chat,
                             "{\"model\":\"gpt-unknown-9\",\"messages\":[]}",
                             &c, &nb, &nl),
                     FB_REFUSE_UNKNOWN_PRICE);
    assert_int_equal(inspect(&openai, "POST", chat,
                             "{\"model\":\"test-4o-mini\",\"max_tokens\":-1}",
                             &c, &nb, &nl),
                     FB_REFUSE_BAD_REQUEST);
    assert_int_equal(inspect(&openai, "POST", chat,
                             "{\"model\":\"test-4o-mini\",\"max_tokens\":\"9\"}",
                             &c, &nb, &nl),
                     FB_REFUSE_BAD_REQUEST);
    assert_int_equal(inspect(&openai, "POST", chat,
                             "{\"model\":\"test-4o-mini\",\"n\":0}", &c, &nb,
                             &nl),
                     FB_REFUSE_BAD_REQUEST);
    /* Two values for one field could be read differently upstream. */
    assert_int_equal(
        inspect(&openai, "POST", chat,
                "{\"model\":\"test-4o-mini\",\"max_tokens\":1,\"max_tokens\":9999}",
                &c, &nb, &nl),
        FB_REFUSE_BAD_REQUEST);
    /* The model's maximum is unknown and the request sets none. */
    assert_int_equal(inspect(&openai, "POST", chat,
                             "{\"model\":\"test-nomax\",\"messages\":[]}", &c,
                             &nb, &nl),
                     FB_REFUSE_BAD_REQUEST);
    assert_int_equal(inspect(&openai, "POST", "/v1/files", "{}", &c, &nb, &nl),
                     FB_REFUSE_UNPRICED_ROUTE);
    assert_int_equal(inspect(&openai, "DELETE", chat, "{}", &c, &nb, &nl),
                     FB_REFUSE_UNPRICED_ROUTE);
}

static void test_openai_stream_asks_for_usage(void **state)
{
    (void)state;
    fb_call c;
    char *nb;
    size_t nl;
    assert_int_equal(
        inspect(&openai, "POST", "/v1/chat/completions",
                "{\"model\":\"test-4o-mini\",\"stream\":true,\"messages\":[]}",
                &c, &nb, &nl),
        FB_REFUSE_NONE);
    assert_true(c.stream);
    assert_true(c.usage_injected);
    assert_non_null(nb);
    assert_non_null(strstr(nb, "\"include_usage\":true"));
    free(nb);
    /* Already asked for: the body is left alone. */
    assert_int_equal(
        inspect(&openai, "POST", "/v1/chat/completions",
                "{\"model\":\"test-4o-mini\",\"stream\":true,"
                "\"stream_options\":{\"include_usage\":true},\"messages\":[]}",
                &c, &nb, &nl),
        FB_REFUSE_NONE);
    assert_false(c.usage_injected);
    assert_null(nb);
    /* Every other shape is edited in place: the client's other bytes (the
     * spaces, 0.70) reach the provider as sent. */
    static const char *const cases[][2] = {
        {"{\"model\":\"test-4o-mini\", \"temperature\":0.70,\"stream\":true}",
         "{\"model\":\"test-4o-mini\", \"temperature\":0.70,\"stream\":true,"
         "\"stream_options\":{\"include_usage\":true}}"},
        {"{\"model\":\"test-4o-mini\",\"stream\":true,\"stream_options\":{}}",
         "{\"model\":\"test-4o-mini\",\"stream\":true,\"stream_options\":"
         "{\"include_usage\":true}}"},
        {"{\"model\":\"test-4o-mini\",\"stream\":true,\"stream_options\":"
         "{\"x\":1}}",
         "{\"model\":\"test-4o-mini\",\"stream\":true,\"stream_options\":"
         "{\"include_usage\":true,\"x\":1}}"},
        {"{\"model\":\"test-4o-mini\",\"stream\":true,\"stream_options\":"
         "{\"include_usage\": false }}",
         "{\"model\":\"test-4o-mini\",\"stream\":true,\"stream_options\":"
         "{\"include_usage\": true }}"},
        {"{\"model\":\"test-4o-mini\",\"stream\":true,\"stream_options\":null}",
         "{\"model\":\"test-4o-mini\",\"stream\":true,\"stream_options\":"
         "{\"include_usage\":true}}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(inspect(&openai, "POST", "/v1/chat/completions",
                                 cases[i][0], &c, &nb, &nl),
                         FB_REFUSE_NONE);
        assert_true(c.usage_injected);
        assert_non_null(nb);
        assert_string_equal(nb, cases[i][1]);
        assert_int_equal(nl, strlen(cases[i][1]));
        free(nb);
    }
}

static void test_anthropic_worst_case(void **state)
{
    (void)state;
    fb_call c;
    char *nb;
    size_t nl;
    const char *body =
        "{\"model\":\"test-claude\",\"max_tokens\":1000,\"messages\":[]}";
    assert_int_equal(inspect(&anthropic, "POST", "/v1/messages", body, &c, &nb,
                             &nl),
                     FB_REFUSE_NONE);
    /* Input is priced at the dearest (1-hour cache write) price. */
    assert_int_equal(c.worst,
                     (fb_money)strlen(body) * 6000000 + INT64_C(1000) * 15000000);
    /* max_tokens is required by the API. */
    assert_int_equal(inspect(&anthropic, "POST", "/v1/messages",
                             "{\"model\":\"test-claude\",\"messages\":[]}", &c,
                             &nb, &nl),
                     FB_REFUSE_BAD_REQUEST);
    assert_int_equal(inspect(&anthropic, "POST", "/v1/messages/count_tokens",
                             "{}", &c, &nb, &nl),
                     FB_REFUSE_NONE);
    assert_true(c.free_route);
}

static void test_generic(void **state)
{
    (void)state;
    fb_provider_conf g = {.name = "sms", .kind = FB_PROVIDER_GENERIC,
                          .price_per_call = 8000000000, .count_field = "to"};
    fb_call c;
    char *nb;
    size_t nl;
    assert_int_equal(inspect(&g, "POST", "/send", "{\"to\":[\"a\",\"b\",\"c\"]}",
                             &c, &nb, &nl),
                     FB_REFUSE_NONE);
    assert_int_equal(c.worst, 24000000000);
    assert_int_equal(inspect(&g, "POST", "/send", "{\"to\":5}", &c, &nb, &nl),
                     FB_REFUSE_NONE);
    assert_int_equal(c.worst, 40000000000);
    assert_int_equal(inspect(&g, "POST", "/send", "{}", &c, &nb, &nl),
                     FB_REFUSE_NONE);
    assert_int_equal(c.worst, 8000000000);
    assert_int_equal(inspect(&g, "POST", "/send", "{\"to\":-1}", &c, &nb, &nl),
                     FB_REFUSE_BAD_REQUEST);
    assert_int_equal(inspect(&g, "POST", "/send", "nope", &c, &nb, &nl),
                     FB_REFUSE_BAD_REQUEST);
    /* A bodiless call counts from its query string. */
    assert_int_equal(inspect(&g, "POST", "/send?x=1&to=7", "", &c, &nb, &nl),
                     FB_REFUSE_NONE);
    assert_int_equal(c.worst, 56000000000);
    assert_int_equal(inspect(&g, "GET", "/send?to=7x", "", &c, &nb, &nl),
                     FB_REFUSE_BAD_REQUEST);
    /* Read as a web framework reads it: decoded names, no duplicates, and
     * the larger of the query and the body. */
    assert_int_equal(inspect(&g, "GET", "/send?t%6F=9", "", &c, &nb, &nl),
                     FB_REFUSE_NONE);
    assert_int_equal(c.worst, 72000000000);
    assert_int_equal(inspect(&g, "GET", "/send?to=1&to=50", "", &c, &nb, &nl),
                     FB_REFUSE_BAD_REQUEST);
    assert_int_equal(inspect(&g, "GET", "/send?to=%", "", &c, &nb, &nl),
                     FB_REFUSE_BAD_REQUEST);
    assert_int_equal(inspect(&g, "POST", "/send?to=4", "{\"to\":[1,2]}", &c,
                             &nb, &nl),
                     FB_REFUSE_NONE);
    assert_int_equal(c.worst, 32000000000);
    assert_int_equal(inspect(&g, "POST", "/send", "{}", &c, &nb, &nl),
                     FB_REFUSE_NONE);
    fb_usage u = {0};
    assert_int_equal(fb_provider_settle(&g, &c, 200, &u), 8000000000);
    assert_int_equal(fb_provider_settle(&g, &c, 500, &u), 0);
}

static void usage_of(const fb_provider_conf *pc, const char *json, fb_usage *u)
{
    fb_provider_ops_for(pc->kind)->usage(json, strlen(json), u);
}

static void test_openai_usage_and_cost(void **state)
{
    (void)state;
    fb_usage u = {0};
    fb_money cost;
    usage_of(&openai,
             "{\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":50,"
             "\"prompt_tokens_details\":{\"cached_tokens\":400}}}",
             &u);
    assert_true(u.found);
    assert_int_equal(u.input, 1000);
    assert_int_equal(u.cache_read, 400);
    const fb_price *p = fb_prices_find(prices, "test-4o-mini");
    assert_int_equal(fb_provider_ops_for(FB_PROVIDER_OPENAI)->cost(p, &u, &cost),
                     FB_OK);
    assert_int_equal(cost, 600 * 150000 + 400 * 75000 + 50 * 600000);

    /* Responses API naming, inside a response.completed event. */
    fb_usage r = {0};
    usage_of(&openai,
             "{\"type\":\"response.completed\",\"response\":{\"usage\":"
             "{\"input_tokens\":10,\"output_tokens\":3,"
             "\"input_tokens_details\":{\"cached_tokens\":0}}}}",
             &r);
    assert_true(r.found);
    assert_int_equal(r.input, 10);
    assert_int_equal(r.output, 3);

    /* usage: null, garbage, negative numbers: nothing found. */
    fb_usage n = {0};
    usage_of(&openai, "{\"usage\":null}", &n);
    usage_of(&openai, "not json at all", &n);
    usage_of(&openai, "{\"usage\":{\"prompt_tokens\":-5}}", &n);
    assert_false(n.found);
}

static void test_settle_rules(void **state)
{
    (void)state;
    fb_call c = {.price = fb_prices_find(prices, "test-4o-mini"),
                 .worst = 12345};
    fb_usage none = {0}, some = {.found = 1, .input = 2, .output = 1};
    /* 2xx without readable usage: charged in full. */
    assert_int_equal(fb_provider_settle(&openai, &c, 200, &none), 12345);
    /* Error answers are not billed by providers. */
    assert_int_equal(fb_provider_settle(&openai, &c, 400, &none), 0);
    assert_int_equal(fb_provider_settle(&openai, &c, 200, &some),
                     2 * 150000 + 600000);
}

static void test_anthropic_stream_usage(void **state)
{
    (void)state;
    static const char stream[] =
        "event: message_start\r\n"
        "data: {\"type\":\"message_start\",\"message\":{\"usage\":"
        "{\"input_tokens\":25,\"cache_creation_input_tokens\":100,"
        "\"cache_creation\":{\"ephemeral_5m_input_tokens\":70,"
        "\"ephemeral_1h_input_tokens\":30},"
        "\"cache_read_input_tokens\":50,\"output_tokens\":1}}}\r\n\r\n"
        "event: content_block_delta\n"
        "data: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\n"
        "event: message_delta\n"
        "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n"
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    /* Feed byte by byte: events must come out whole and in order. */
    fb_sse sse;
    fb_usage u = {0};
    const char *ev;
    size_t el, events = 0, bytes = 0;
    char data[1024];
    fb_sse_init(&sse, 1 << 20);
    for (size_t i = 0; i < sizeof stream - 1; i++) {
        assert_int_equal(fb_sse_feed(&sse, stream + i, 1), FB_OK);
        while (fb_sse_next(&sse, &ev, &el)) {
            size_t dl = fb_sse_data(ev, el, data, sizeof data);
            usage_of(&anthropic, data, &u);
            (void)dl;
            events++;
            bytes += el;
        }
    }
    assert_int_equal(events, 4);
    assert_int_equal(bytes, sizeof stream - 1);
    fb_sse_free(&sse);
    assert_int_equal(u.input, 25);
    assert_int_equal(u.cache_write, 100);
    assert_int_equal(u.cache_read, 50);
    assert_int_equal(u.output, 42);
    fb_money cost;
    const fb_price *p = fb_prices_find(prices, "test-claude");
    assert_int_equal(
        fb_provider_ops_for(FB_PROVIDER_ANTHROPIC)->cost(p, &u, &cost), FB_OK);
    assert_int_equal(u.cache_write_1h, 30);
    assert_int_equal(cost, 25 * 3000000 + 70 * 3750000 + 30 * 6000000 +
                               50 * 300000 + 42 * 15000000);
}

static void test_usage_only_chunk(void **state)
{
    (void)state;
    const char *only = "{\"choices\":[],\"usage\":{\"prompt_tokens\":1}}";
    assert_true(fb_provider_usage_only_chunk(only, strlen(only)));
    const char *normal = "{\"choices\":[{\"delta\":{}}],\"usage\":null}";
    assert_false(fb_provider_usage_only_chunk(normal, strlen(normal)));
}

static void test_cost_overflow(void **state)
{
    (void)state;
    fb_usage u = {.found = 1, .input = INT64_MAX / 2, .output = 0};
    fb_money cost;
    const fb_price *p = fb_prices_find(prices, "test-4o-mini");
    assert_int_equal(fb_provider_ops_for(FB_PROVIDER_OPENAI)->cost(p, &u, &cost),
                     FB_EOVERFLOW);
    /* And settlement then falls back to the full reservation. */
    fb_call c = {.price = p, .worst = 99};
    assert_int_equal(fb_provider_settle(&openai, &c, 200, &u), 99);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openai_worst_case),
        cmocka_unit_test(test_openai_refusals),
        cmocka_unit_test(test_openai_stream_asks_for_usage),
        cmocka_unit_test(test_anthropic_worst_case),
        cmocka_unit_test(test_generic),
        cmocka_unit_test(test_openai_usage_and_cost),
        cmocka_unit_test(test_settle_rules),
        cmocka_unit_test(test_anthropic_stream_usage),
        cmocka_unit_test(test_usage_only_chunk),
        cmocka_unit_test(test_cost_overflow),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
