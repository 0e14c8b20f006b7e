/* test_json.c - unit tests for json.c: accessors on real request bodies,
 * and the promise json.h makes, checked against jansson itself: the same
 * documents are accepted and refused, and fb_json_canonical prints the
 * same bytes as json_dumps(JSON_SORT_KEYS | JSON_COMPACT), over hand-made
 * edge cases and over generated documents (valid ones, and the same with
 * bytes mutated), from a fixed seed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "json.h"

/* jansson's answer: the canonical text, or NULL when it refuses. */
static char *jansson_canon(const char *s, size_t n, int unique)
{
    json_t *r = json_loadb(s, n,
                           JSON_DECODE_ANY |
                               (unique ? JSON_REJECT_DUPLICATES : 0),
                           NULL);
    if (r == NULL)
        return NULL;
    char *out = json_dumps(r, JSON_SORT_KEYS | JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(r);
    return out;
}

/* Both agree on s[0..n): accepted or not, and the canonical bytes. */
static void agree(const char *s, size_t n, int unique)
{
    char err[128];
    char *want = jansson_canon(s, n, unique);
    fb_json *j = fb_json_parse(s, n, unique ? FB_JSON_UNIQUE : 0, err,
                               sizeof err);
    if (want == NULL) {
        if (j != NULL)
            fail_msg("fb_json accepted what jansson refuses: %.*s", (int)n, s);
        assert_true(err[0] != '\0');
        return;
    }
    if (j == NULL)
        fail_msg("fb_json refused (%s) what jansson accepts: %.*s", err,
                 (int)n, s);
    size_t len = 0;
    char *got = fb_json_canonical(j, NULL, 0, &len);
    assert_non_null(got);
    if (strcmp(got, want) != 0 || len != strlen(want))
        fail_msg("canonical differs for %.*s:\n got  %s\n want %s", (int)n, s,
                 got, want);
    free(got);
    free(want);
    fb_json_free(j);
}

static void agree_str(const char *s)
{
    agree(s, strlen(s), 0);
    agree(s, strlen(s), 1);
}

static void test_edge_cases(void **state)
{
    static const char *const cases[] = {
        "{}", "[]", "0", "-0", "1", "-1", "\"\"", "true", "false", "null",
        " [ 1 , 2 ] ", "{\"a\":1}", "{\"b\":1,\"a\":{\"d\":[],\"c\":{}}}",
        "[9223372036854775807]", "[-9223372036854775808]",
        "[9223372036854775808]", "[-9223372036854775809]",
        "[123456789012345678]", "[1234567890123456789]",
        "[0.7]", "[0.1e1]", "[1e2]", "[1E-7]", "[1e400]", "[-1e400]",
        "[5e-324]", "[1e-400]", "[2.5e+10]", "[1.0]", "[-0.0]", "[100e-2]",
        "[123456789012345678901234567890.5]", "[1.7976931348623157e308]",
        "[01]", "[-]", "[1.]", "[.5]", "[1e]", "[1e+]", "[+1]", "[0x10]",
        "[-01]", "[1.5e05]", "[1e-05]",
        "\"a\\u0001\\/\\u2028\\u00e9\\ud83d\\ude00\"", "\"\\u0000\"",
        "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"", "\"\\uZZZZ\"",
        "\"\\x\"", "\"tab\there\"", "\"\\b\\f\\n\\r\\t\\\"\\\\\"",
        "\"\\u001f\\u007f\\u0080\"", "\"\xc3\xa9\"", "\"\xc3\"", "\"\xc0\xaf\"",
        "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"", "\"\xf0\x9f\x98\x80\"",
        "\"\xe2\x82\"", "\"\x7f\"", "\"\xff\"",
        "{\"a\":1,\"a\":2}", "{\"a\":1,\"\\u0061\":2}", "{\"a\":1,\"b\":2,\"a\":3}",
        "{\"k\":{\"x\":1,\"x\":[1]}}", "{\"\":1}", "{\"a\":}", "{\"a\" 1}",
        "{a:1}", "{\"a\":1,}", "[1,]", "[,1]", "[1 2]", "{\"a\":1}x",
        "[1]]", "[[1]", "", " ", "tru", "truex", "nul", "[true,false,null]",
        "{\"b\":\"\\u00e9\",\"\\u00e9\":1,\"e\":2,\"\xc3\xa9\x61\":3}",
        "{\"ab\":1,\"a\":2,\"abc\":3,\"b\":4,\"A\":5}",
        "\t\n\r {\"a\" :\t[ ]\n}\r\n",
    };
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        agree_str(cases[i]);
    /* Nesting: up to jansson's limit and one past it. */
    for (int depth = 2047; depth <= 2049; depth++) {
        char *s = malloc(2 * (size_t)depth + 1);
        assert_non_null(s);
        memset(s, '[', (size_t)depth);
        memset(s + depth, ']', (size_t)depth);
        agree(s, 2 * (size_t)depth, 0);
        free(s);
    }
    /* An embedded NUL byte, in a string and outside. */
    agree("\"a\0b\"", 5, 0);
    agree("[1]\0", 4, 0);
}

/* ---- generated documents ---- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static unsigned rnd(unsigned n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng % n);
}

typedef struct {
    char *b;
    size_t len, cap;
} sbuf;

static void add(sbuf *s, const char *p, size_t n)
{
    if (s->len + n + 1 > s->cap) {
        s->cap = (s->len + n + 1) * 2;
        s->b = realloc(s->b, s->cap);
        assert_non_null(s->b);
    }
    memcpy(s->b + s->len, p, n);
    s->len += n;
    s->b[s->len] = '\0';
}

static void adds(sbuf *s, const char *p)
{
    add(s, p, strlen(p));
}

static void gen_string(sbuf *s)
{
    static const char *const parts[] = {
        "a", "model", "x y", "\\n", "\\\"", "\\\\", "\\/", "\\u00e9",
        "\xc3\xa9", "\\ud83d\\ude00", "\xf0\x9f\x98\x80", "\\u0007", "\\t",
        "\\u2028", "Z", "0", "\xe2\x82\xac", "\\u20AC", "b",
    };
    adds(s, "\"");
    for (unsigned n = rnd(5); n > 0; n--)
        adds(s, parts[rnd(sizeof parts / sizeof parts[0])]);
    adds(s, "\"");
}

static void gen_number(sbuf *s)
{
    static const char *const nums[] = {
        "0", "-0", "7", "-12", "0.5", "0.7", "1e3", "-2.5E-3", "1.0",
        "3.14159", "100", "9007199254740993", "1e21", "1e-7", "123.456e2",
        "0.1", "0.30000000000000004", "-9223372036854775808", "4e-320",
    };
    adds(s, nums[rnd(sizeof nums / sizeof nums[0])]);
}

static void gen_value(sbuf *s, int depth)
{
    unsigned k = rnd(depth > 4 ? 5 : 8);
    switch (k) {
    case 0: adds(s, "null"); break;
    case 1: adds(s, rnd(2) ? "true" : "false"); break;
    case 2:
    case 3: gen_number(s); break;
    case 4: gen_string(s); break;
    case 5:
    case 6: {
        adds(s, "{");
        for (unsigned n = rnd(6), i = 0; i < n; i++) {
            if (i)
                adds(s, rnd(4) ? "," : " , ");
            gen_string(s);
            adds(s, rnd(3) ? ":" : " : ");
            gen_value(s, depth + 1);
        }
        adds(s, "}");
        break;
    }
    default: {
        adds(s, "[");
        for (unsigned n = rnd(5), i = 0; i < n; i++) {
            if (i)
                adds(s, ",");
            gen_value(s, depth + 1);
        }
        adds(s, "]");
    }
    }
}

static void test_generated(void **state)
{
    static const char noise[] = "{}[],:\"\\ 0-.eEtfnu\x80\xc3\xff";
    (void)state;
    for (int round = 0; round < 20000; round++) {
        sbuf s = {0};
        gen_value(&s, 0);
        agree(s.b, s.len, round & 1);
        /* The same document with a few bytes changed, cut or doubled. */
        for (int m = 0; m < 3 && s.len > 0; m++) {
            size_t at = rnd((unsigned)s.len);
            switch (rnd(3)) {
            case 0: s.b[at] = noise[rnd(sizeof noise - 1)]; break;
            case 1: s.len = at; break;
            default: {
                char dup[3];
                size_t dl = s.len - at > 3 ? 3 : s.len - at;
                memcpy(dup, s.b + at, dl); /* add() may move s.b */
                add(&s, dup, dl);
            }
            }
            agree(s.b, s.len, round & 1);
        }
        free(s.b);
    }
}

/* ---- accessors, on a request like the SDKs send ---- */

static void test_accessors(void **state)
{
    static const char body[] =
        "{\"model\":\"gpt-4o-mini\",\"max_tokens\":200,\"n\":-1,"
        "\"temperature\":0.7,\"stream\":true,\"stream_options\":null,"
        "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{}],"
        "\"m\\u006fdel2\":\"caf\\u00e9\",\"big\":12345678901234567890.0}";
    char err[128], buf[64];
    int64_t v = 0;
    (void)state;
    fb_json *j = fb_json_parse(body, sizeof body - 1, FB_JSON_UNIQUE, err,
                               sizeof err);
    assert_non_null(j);
    assert_int_equal(fb_json_typeof(j, 0), FB_JSON_OBJECT);
    assert_int_equal(fb_json_size(j, 0), 9);
    assert_true(fb_json_str_is(j, fb_json_get(j, 0, "model"), "gpt-4o-mini"));
    assert_false(fb_json_str_is(j, fb_json_get(j, 0, "model"), "gpt-4o"));
    assert_int_equal(fb_json_int(j, fb_json_get(j, 0, "max_tokens"), &v), 1);
    assert_int_equal(v, 200);
    assert_int_equal(fb_json_int(j, fb_json_get(j, 0, "n"), &v), 1);
    assert_int_equal(v, -1);
    assert_int_equal(fb_json_int(j, fb_json_get(j, 0, "temperature"), &v), 0);
    assert_int_equal(fb_json_int(j, fb_json_get(j, 0, "big"), &v), 0);
    assert_int_equal(fb_json_typeof(j, fb_json_get(j, 0, "stream")),
                     FB_JSON_TRUE);
    assert_int_equal(fb_json_typeof(j, fb_json_get(j, 0, "stream_options")),
                     FB_JSON_NULL);
    assert_int_equal(fb_json_get(j, 0, "absent"), -1);
    assert_int_equal(fb_json_typeof(j, -1), FB_JSON_NONE);
    assert_int_equal(fb_json_get(j, fb_json_get(j, 0, "absent"), "x"), -1);
    /* An escaped key and value are found and decoded. */
    int m2 = fb_json_get(j, 0, "model2");
    assert_true(m2 > 0);
    assert_int_equal(fb_json_str(j, m2, buf, sizeof buf), 5);
    assert_string_equal(buf, "caf\xc3\xa9");
    assert_true(fb_json_str_is(j, m2, "caf\xc3\xa9"));
    /* Too small a buffer: the length, nothing copied. */
    assert_int_equal(fb_json_str(j, m2, buf, 3), 5);
    int msgs = fb_json_get(j, 0, "messages");
    assert_int_equal(fb_json_size(j, msgs), 2);
    int first = fb_json_first(j, msgs);
    assert_true(fb_json_str_is(j, fb_json_get(j, first, "role"), "user"));
    assert_int_equal(fb_json_first(j, fb_json_get(j, 0, "model")), -1);
    size_t off, len;
    fb_json_span(j, fb_json_get(j, 0, "stream_options"), &off, &len);
    assert_int_equal(len, 4);
    assert_memory_equal(body + off, "null", 4);
    fb_json_span(j, msgs, &off, &len);
    assert_int_equal(body[off], '[');
    assert_int_equal(body[off + len - 1], ']');
    /* The canonical form leaves out dropped top-level keys only. */
    char *drop[] = {"temperature", "role"};
    char *c = fb_json_canonical(j, drop, 2, &len);
    assert_non_null(c);
    assert_null(strstr(c, "temperature"));
    assert_non_null(strstr(c, "\"role\":\"user\""));
    free(c);
    fb_json_free(j);
}

static void test_errors(void **state)
{
    char err[128];
    (void)state;
    assert_null(fb_json_parse("{\"a\":1,\"a\":2}", 13, FB_JSON_UNIQUE, err,
                              sizeof err));
    assert_non_null(strstr(err, "duplicate"));
    /* Without FB_JSON_UNIQUE the last one wins, as in jansson. */
    fb_json *j = fb_json_parse("{\"a\":1,\"a\":2}", 13, 0, err, sizeof err);
    int64_t v = 0;
    assert_non_null(j);
    assert_int_equal(fb_json_int(j, fb_json_get(j, 0, "a"), &v), 1);
    assert_int_equal(v, 2);
    fb_json_free(j);
    assert_null(fb_json_parse("[1,2", 4, 0, err, sizeof err));
    assert_non_null(strstr(err, "at byte 4"));
    /* Many keys in one object: the sorted duplicate check. */
    sbuf s = {0};
    char k[32];
    adds(&s, "{");
    for (int i = 0; i < 5000; i++) {
        snprintf(k, sizeof k, "%s\"k%d\":%d", i ? "," : "", i, i);
        adds(&s, k);
    }
    adds(&s, ",\"k4321\":0}");
    assert_null(fb_json_parse(s.b, s.len, FB_JSON_UNIQUE, err, sizeof err));
    s.b[s.len - 6] = '9'; /* "k4329"... still present: make it new */
    s.b[s.len - 8] = 'x';
    j = fb_json_parse(s.b, s.len, FB_JSON_UNIQUE, err, sizeof err);
    assert_non_null(j);
    assert_int_equal(fb_json_size(j, 0), 5001);
    fb_json_free(j);
    free(s.b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_edge_cases),
        cmocka_unit_test(test_generated),
        cmocka_unit_test(test_accessors),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
