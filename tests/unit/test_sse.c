/* test_sse.c - SSE framing: every line-ending style, events split at any
 * byte, stray blank lines, multi-line data, the size limit, and the
 * unfinished tail handed back at end of stream. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "sse.h"

/* Feed text in pieces of size step; collect events joined by '|'. */
static size_t frame(const char *text, size_t step, char *out, size_t cap)
{
    fb_sse s;
    const char *ev;
    size_t el, n = 0, len = strlen(text);
    fb_sse_init(&s, 1 << 16);
    out[0] = '\0';
    for (size_t i = 0; i < len; i += step) {
        size_t k = len - i < step ? len - i : step;
        assert_int_equal(fb_sse_feed(&s, text + i, k), FB_OK);
        while (fb_sse_next(&s, &ev, &el)) {
            char data[256];
            fb_sse_data(ev, el, data, sizeof data);
            size_t dl = strlen(data);
            assert_true(n + dl + 2 < cap);
            memcpy(out + n, data, dl);
            n += dl;
            out[n++] = '|';
            out[n] = '\0';
        }
    }
    fb_sse_free(&s);
    return n;
}

static void test_line_endings_and_splits(void **state)
{
    (void)state;
    static const char *const texts[] = {
        "data: a\n\ndata: b\n\n",
        "data: a\r\n\r\ndata: b\r\n\r\n",
        "data: a\r\rdata: b\r\r",
        "\n\ndata: a\n\nevent: x\ndata: b\n\n",
        ": comment\ndata:a\n\ndata:b\n\n",
    };
    for (size_t t = 0; t < sizeof texts / sizeof *texts; t++) {
        for (size_t step = 1; step <= strlen(texts[t]); step++) {
            char out[256];
            frame(texts[t], step, out, sizeof out);
            if (strcmp(out, "a|b|") != 0)
                fail_msg("text %zu step %zu: got '%s'", t, step, out);
        }
    }
}

static void test_multiline_data(void **state)
{
    (void)state;
    char out[256];
    frame("data: {\"a\":\ndata: 1}\n\n", 3, out, sizeof out);
    assert_string_equal(out, "{\"a\":\n1}|");
}

static void test_limit_and_rest(void **state)
{
    (void)state;
    fb_sse s;
    const char *ev, *rest;
    size_t el, rl;
    fb_sse_init(&s, 16);
    assert_int_equal(fb_sse_feed(&s, "data: 12345678\n\n", 16), FB_OK);
    assert_int_equal(fb_sse_next(&s, &ev, &el), 1);
    assert_int_equal(el, 16);
    assert_int_equal(fb_sse_feed(&s, "data: tail", 10), FB_OK);
    assert_int_equal(fb_sse_next(&s, &ev, &el), 0);
    rest = fb_sse_rest(&s, &rl);
    assert_int_equal(rl, 10);
    assert_memory_equal(rest, "data: tail", 10);
    assert_int_equal(fb_sse_feed(&s, "0123456789", 10), FB_ELIMIT);
    fb_sse_free(&s);
}

static void test_data_truncation(void **state)
{
    (void)state;
    char small[4];
    size_t n = fb_sse_data("data: abcdef\n\n", 14, small, sizeof small);
    assert_int_equal(n, 6);
    assert_string_equal(small, "abc");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_line_endings_and_splits),
        cmocka_unit_test(test_multiline_data),
        cmocka_unit_test(test_limit_and_rest),
        cmocka_unit_test(test_data_truncation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
