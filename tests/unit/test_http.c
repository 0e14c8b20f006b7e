/* test_http.c - unit tests for the request-head parser and the chunked
 * body decoder in src/http.c: the happy paths, every error code, input
 * split at every byte, and a fixed-seed random loop that checks no input
 * crashes or yields a value outside the documented set. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http.h"

#define MAX_HEAD 8192

/* The copy behind the last parse stays alive until the next one, so a
 * test can read the request it got back. */
static char *last_copy;

/* Parse from a heap copy of exactly len bytes, so that ASan reports any
 * read past the end. With copy, the caller gets the buffer to free. */
static int parse_n(const char *s, size_t len, size_t max_head, fb_http_req *req,
                   char **copy)
{
    char *b = malloc(len ? len : 1);
    assert_non_null(b);
    memcpy(b, s, len);
    int rc = fb_http_parse_request(b, len, max_head, req);
    if (copy != NULL) {
        *copy = b;
    } else {
        free(last_copy);
        last_copy = b;
    }
    return rc;
}

static int parse(const char *s, fb_http_req *req)
{
    return parse_n(s, strlen(s), MAX_HEAD, req, NULL);
}

static int free_last_copy(void **state)
{
    (void)state;
    free(last_copy);
    last_copy = NULL;
    return 0;
}

static void assert_span(const char *p, size_t n, const char *want)
{
    assert_non_null(p);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(p, want, n);
}

static void assert_header(const fb_http_req *req, const char *name,
                          const char *want)
{
    size_t vlen = 99;
    const char *v = fb_http_header_get(req, name, &vlen);
    assert_span(v, vlen, want);
}

static void test_simple_get(void **state)
{
    (void)state;
    const char *s = "GET /openai/v1/models?x=1 HTTP/1.1\r\n"
                    "Host: example.com\r\n"
                    "Accept: */*\r\n"
                    "\r\n";
    fb_http_req req;
    char *b;
    int rc = parse_n(s, strlen(s), MAX_HEAD, &req, &b);
    assert_int_equal(rc, (int)strlen(s));
    assert_int_equal(req.method, FB_HTTP_GET);
    assert_span(req.method_str, req.method_len, "GET");
    assert_span(req.target, req.target_len, "/openai/v1/models?x=1");
    assert_int_equal(req.minor_version, 1);
    assert_int_equal(req.nheaders, 2);
    assert_span(req.headers[0].name, req.headers[0].name_len, "Host");
    assert_span(req.headers[0].value, req.headers[0].value_len, "example.com");
    assert_int_equal(req.content_length, -1);
    assert_int_equal(req.chunked, 0);
    assert_int_equal(req.keep_alive, 1);
    assert_int_equal(req.expect_continue, 0);
    /* Pointers point into the caller's buffer. */
    assert_ptr_equal(req.method_str, b);
    free(b);
}

static void test_post_content_length(void **state)
{
    (void)state;
    const char *s = "POST /v1/chat/completions HTTP/1.1\r\n"
                    "Host: api\r\n"
                    "Content-Type: application/json\r\n"
                    "Content-Length: 27\r\n"
                    "\r\n"
                    "{\"model\":\"gpt\",\"stream\":1}x";
    fb_http_req req;
    int rc = parse(s, &req);
    assert_int_equal(rc, (int)(strstr(s, "\r\n\r\n") - s + 4));
    assert_int_equal(req.method, FB_HTTP_POST);
    assert_int_equal(req.content_length, 27);
    assert_int_equal(req.chunked, 0);
    assert_header(&req, "content-type", "application/json");
}

static void test_no_headers_and_http10(void **state)
{
    (void)state;
    fb_http_req req;
    assert_int_equal(parse("GET / HTTP/1.0\r\n\r\n", &req), 18);
    assert_int_equal(req.nheaders, 0);
    assert_int_equal(req.minor_version, 0);
    assert_int_equal(req.keep_alive, 0);
    assert_int_equal(parse("OPTIONS * HTTP/1.1\r\n\r\n", &req), 22);
    assert_int_equal(req.method, FB_HTTP_OPTIONS);
    assert_span(req.target, req.target_len, "*");
}

static void test_method_mapping(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        fb_http_method m;
    } cases[] = {
        {"GET", FB_HTTP_GET},         {"HEAD", FB_HTTP_HEAD},
        {"POST", FB_HTTP_POST},       {"PUT", FB_HTTP_PUT},
        {"DELETE", FB_HTTP_DELETE},   {"PATCH", FB_HTTP_PATCH},
        {"OPTIONS", FB_HTTP_OPTIONS}, {"get", FB_HTTP_OTHER},
        {"TRACE", FB_HTTP_OTHER},     {"GETS", FB_HTTP_OTHER},
        {"PROPFIND", FB_HTTP_OTHER},  {"M-SEARCH", FB_HTTP_OTHER},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char line[64];
        size_t n = strlen(cases[i].name);
        memcpy(line, cases[i].name, n);
        memcpy(line + n, " / HTTP/1.1\r\n\r\n", 16);
        fb_http_req req;
        assert_int_equal(parse(line, &req), (int)(n + 15));
        assert_int_equal(req.method, cases[i].m);
        assert_span(req.method_str, req.method_len, cases[i].name);
    }
}

static void test_leading_empty_lines(void **state)
{
    (void)state;
    fb_http_req req;
    const char *s = "\r\n\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(parse(s, &req), (int)strlen(s));
    assert_span(req.target, req.target_len, "/");
    assert_int_equal(parse("\r\n\r\n", &req), 0);
    assert_int_equal(parse("\r", &req), 0);
    assert_int_equal(parse("\rX", &req), -400);
}

static void test_lf_only(void **state)
{
    (void)state;
    fb_http_req req;
    const char *s = "GET /a HTTP/1.1\nHost: x\nX-Y:  z \n\n";
    assert_int_equal(parse(s, &req), (int)strlen(s));
    assert_int_equal(req.nheaders, 2);
    assert_header(&req, "x-y", "z");
    /* Mixed endings too. */
    s = "GET /a HTTP/1.1\r\nHost: x\nA: b\r\n\n";
    assert_int_equal(parse(s, &req), (int)strlen(s));
    assert_header(&req, "a", "b");
}

static void test_value_trimming(void **state)
{
    (void)state;
    fb_http_req req;
    const char *s = "GET / HTTP/1.1\r\n"
                    "A:value\r\n"
                    "B: \t  spaced out \t \r\n"
                    "C:\r\n"
                    "D:   \t \r\n"
                    "E: in\tside  kept\r\n"
                    "F: caf\xc3\xa9\r\n"
                    "\r\n";
    assert_int_equal(parse(s, &req), (int)strlen(s));
    assert_header(&req, "A", "value");
    assert_header(&req, "B", "spaced out");
    assert_header(&req, "C", "");
    assert_header(&req, "D", "");
    assert_header(&req, "E", "in\tside  kept");
    assert_header(&req, "F", "caf\xc3\xa9");
}

static void test_header_lookup(void **state)
{
    (void)state;
    fb_http_req req;
    const char *s = "GET / HTTP/1.1\r\n"
                    "Authorization: Bearer sk-1\r\n"
                    "X-Dup: first\r\n"
                    "x-dup: second\r\n"
                    "\r\n";
    assert_int_equal(parse(s, &req), (int)strlen(s));
    assert_header(&req, "authorization", "Bearer sk-1");
    assert_header(&req, "AUTHORIZATION", "Bearer sk-1");
    assert_header(&req, "aUtHoRiZaTiOn", "Bearer sk-1");
    assert_header(&req, "X-DUP", "first");
    size_t vlen = 7;
    assert_null(fb_http_header_get(&req, "Authorizatio", &vlen));
    assert_int_equal(vlen, 0);
    assert_null(fb_http_header_get(&req, "Authorization2", NULL));
    assert_non_null(fb_http_header_get(&req, "x-dup", NULL));
}

static void check_keep_alive(const char *version, const char *conn, int want)
{
    char s[256];
    size_t n = 0;
    const char *parts[] = {"GET / ", version, "\r\n"};
    for (size_t i = 0; i < 3; i++) {
        memcpy(s + n, parts[i], strlen(parts[i]));
        n += strlen(parts[i]);
    }
    if (conn != NULL) {
        memcpy(s + n, "Connection: ", 12);
        n += 12;
        memcpy(s + n, conn, strlen(conn));
        n += strlen(conn);
        memcpy(s + n, "\r\n", 2);
        n += 2;
    }
    memcpy(s + n, "\r\n", 3);
    fb_http_req req;
    assert_int_equal(parse(s, &req), (int)n + 2);
    if (req.keep_alive != want)
        fail_msg("%s Connection: %s: keep_alive %d, want %d", version,
                 conn ? conn : "(none)", req.keep_alive, want);
}

static void test_keep_alive(void **state)
{
    (void)state;
    check_keep_alive("HTTP/1.1", NULL, 1);
    check_keep_alive("HTTP/1.1", "keep-alive", 1);
    check_keep_alive("HTTP/1.1", "close", 0);
    check_keep_alive("HTTP/1.1", "Close", 0);
    check_keep_alive("HTTP/1.1", "Upgrade, CLOSE", 0);
    check_keep_alive("HTTP/1.1", "upgrade,close ,", 0);
    check_keep_alive("HTTP/1.1", "closed", 1);
    check_keep_alive("HTTP/1.1", "keep-alive, close", 0);
    check_keep_alive("HTTP/1.0", NULL, 0);
    check_keep_alive("HTTP/1.0", "keep-alive", 1);
    check_keep_alive("HTTP/1.0", "Keep-Alive", 1);
    check_keep_alive("HTTP/1.0", "foo, keep-alive", 1);
    check_keep_alive("HTTP/1.0", "keep-alive, close", 0);
    check_keep_alive("HTTP/1.0", "keep-alives", 0);
    check_keep_alive("HTTP/1.0", "close", 0);

    /* Across two Connection fields. */
    fb_http_req req;
    assert_true(parse("GET / HTTP/1.1\r\nConnection: a\r\n"
                      "Connection: close\r\n\r\n",
                      &req) > 0);
    assert_int_equal(req.keep_alive, 0);
}

static void test_expect_continue(void **state)
{
    (void)state;
    fb_http_req req;
    assert_true(parse("POST / HTTP/1.1\r\nExpect: 100-continue\r\n"
                      "Content-Length: 3\r\n\r\n",
                      &req) > 0);
    assert_int_equal(req.expect_continue, 1);
    assert_true(
        parse("POST / HTTP/1.1\r\nexpect:  100-Continue \r\n\r\n", &req) > 0);
    assert_int_equal(req.expect_continue, 1);
    /* HTTP/1.0 clients cannot ask for it (RFC 9110 10.1.1). */
    assert_true(parse("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n", &req) >
                0);
    assert_int_equal(req.expect_continue, 0);
    assert_true(parse("POST / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n", &req) > 0);
    assert_int_equal(req.expect_continue, 0);
    assert_true(parse("POST / HTTP/1.1\r\n\r\n", &req) > 0);
    assert_int_equal(req.expect_continue, 0);
    assert_true(parse("POST / HTTP/1.1\r\nExpect: 100-continue\r\n"
                      "Expect: x\r\n\r\n",
                      &req) > 0);
    assert_int_equal(req.expect_continue, 1);
}

static void test_content_length_variants(void **state)
{
    (void)state;
    fb_http_req req;
    assert_true(parse("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", &req) >
                0);
    assert_int_equal(req.content_length, 0);
    assert_true(parse("POST / HTTP/1.1\r\nContent-Length: 007\r\n\r\n", &req) >
                0);
    assert_int_equal(req.content_length, 7);
    assert_true(parse("POST / HTTP/1.1\r\n"
                      "Content-Length: 9223372036854775807\r\n\r\n",
                      &req) > 0);
    assert_int_equal(req.content_length, INT64_MAX);
    /* Equal values, in one field or several, are one value. */
    assert_true(
        parse("POST / HTTP/1.1\r\nContent-Length: 5, 5,5\r\n\r\n", &req) > 0);
    assert_int_equal(req.content_length, 5);
    assert_true(parse("POST / HTTP/1.1\r\ncontent-length: 5\r\n"
                      "Content-Length: 05\r\n\r\n",
                      &req) > 0);
    assert_int_equal(req.content_length, 5);
}

static void test_transfer_encoding_chunked(void **state)
{
    (void)state;
    fb_http_req req;
    const char *ok[] = {
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\ntransfer-encoding: CHUNKED\r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: Chunked \r\n\r\n",
        "POST / HTTP/1.1\r\nTransfer-Encoding: , chunked,\r\n\r\n",
        ("POST / HTTP/1.1\r\nTransfer-Encoding:\r\n"
         "Transfer-Encoding: chunked\r\n\r\n"),
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        assert_int_equal(parse(ok[i], &req), (int)strlen(ok[i]));
        assert_int_equal(req.chunked, 1);
        assert_int_equal(req.content_length, -1);
    }
}

static const struct bad_case {
    const char *req;
    int code;
} bad_cases[] = {
    /* request line */
    {" GET / HTTP/1.1\r\n\r\n", -400},
    {"GET  / HTTP/1.1\r\n\r\n", -400},
    {"GET / HTTP/1.1 \r\n\r\n", -400},
    {"GET /  HTTP/1.1\r\n\r\n", -400},
    {"GET\t/ HTTP/1.1\r\n\r\n", -400},
    {"G(T / HTTP/1.1\r\n\r\n", -400},
    {"G\x80T / HTTP/1.1\r\n\r\n", -400},
    {"GET /a\x01 HTTP/1.1\r\n\r\n", -400},
    {"GET /a\x7f HTTP/1.1\r\n\r\n", -400},
    {"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n", -400},
    {"GET /\r\n\r\n", -400},
    {"GET / \r\n\r\n", -400},
    {"GET HTTP/1.1\r\n\r\n", -400},
    {"GET / http/1.1\r\n\r\n", -400},
    {"GET / HTTP/1.1x\r\n\r\n", -400},
    {"GET / HTTP/1.10\r\n\r\n", -400},
    {"GET / HTTP/11\r\n\r\n", -400},
    {"GET / HTTP/1.\r\n\r\n", -400},
    {"GET / HTTX/1.1\r\n\r\n", -400},
    {"GET / HTTP/1.1\rX\n\r\n", -400},
    {"GET / HTTP/1.1\r\r\n\r\n", -400},
    {"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", -400}, /* TLS hello */
    /* versions */
    {"GET / HTTP/2.0\r\n\r\n", -505},
    {"GET / HTTP/0.9\r\n\r\n", -505},
    {"GET / HTTP/1.2\r\n\r\n", -505},
    {"GET / HTTP/9.9\r\n\r\n", -505},
    /* field lines */
    {"GET / HTTP/1.1\r\nHost : a\r\n\r\n", -400},
    {"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", -400},
    {"GET / HTTP/1.1\r\n: a\r\n\r\n", -400},
    {"GET / HTTP/1.1\r\nHost a\r\n\r\n", -400},
    {"GET / HTTP/1.1\r\nHo(st: a\r\n\r\n", -400},
    {"GET / HTTP/1.1\r\nHo\x80st: a\r\n\r\n", -400},
    {"GET / HTTP/1.1\r\n Host: a\r\n\r\n", -400},
    {"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", -400},
    {"GET / HTTP/1.1\r\nA: b\r\n\tc\r\n\r\n", -400},
    {"GET / HTTP/1.1\nA: b\n c\n\n", -400},
    {"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n", -400},
    {"GET / HTTP/1.1\r\nA: b\r\r\n\r\n", -400},
    {"GET / HTTP/1.1\r\nA: b\r\n\rX", -400},
    {"GET / HTTP/1.1\r\nA: b\x01\r\n\r\n", -400},
    {"GET / HTTP/1.1\r\nA: b\x1f\r\n\r\n", -400},
    {"GET / HTTP/1.1\r\nA: b\x7f\r\n\r\n", -400},
    {"GET / HTTP/1.1\r\nA: 0123456789abcdef\x0b 0123456789\r\n\r\n", -400},
    /* Content-Length */
    {"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", -400},
    {"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", -400},
    {"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n", -400},
    {"POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n", -400},
    {"POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n", -400},
    {"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", -400},
    {"POST / HTTP/1.1\r\nContent-Length: 5,\r\n\r\n", -400},
    {"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n", -400},
    {"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", -400},
    {"POST / HTTP/1.1\r\nContent-Length: 9223372036854775808\r\n\r\n", -400},
    {"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", -400},
    /* Transfer-Encoding */
    {"POST / HTTP/1.1\r\nContent-Length: 5\r\n"
     "Transfer-Encoding: chunked\r\n\r\n",
     -400},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
     "Content-Length: 5\r\n\r\n",
     -400},
    {"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", -400},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", -400},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
     "Transfer-Encoding: chunked\r\n\r\n",
     -400},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", -501},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", -501},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", -501},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
     "Transfer-Encoding: identity\r\n\r\n",
     -501},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: chunkedx\r\n\r\n", -501},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked;a=b\r\n\r\n", -501},
    {"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n", -501},
    {"POST / HTTP/1.1\r\nTransfer-Encoding: ,\r\n\r\n", -501},
};

static void test_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        fb_http_req req;
        int rc = parse(bad_cases[i].req, &req);
        if (rc != bad_cases[i].code)
            fail_msg("case %zu: got %d, want %d", i, rc, bad_cases[i].code);
    }
}

static void test_nul_in_value(void **state)
{
    (void)state;
    static const char s[] = "GET / HTTP/1.1\r\nA: b\0c\r\n\r\n";
    fb_http_req req;
    assert_int_equal(parse_n(s, sizeof s - 1, MAX_HEAD, &req, NULL), -400);
    static const char t[] = "GET /\0 HTTP/1.1\r\n\r\n";
    assert_int_equal(parse_n(t, sizeof t - 1, MAX_HEAD, &req, NULL), -400);
}

static void test_errors_early(void **state)
{
    (void)state;
    /* Garbage is refused before the head would be complete. */
    fb_http_req req;
    assert_int_equal(parse("GET / HTTX", &req), -400);
    assert_int_equal(parse("GET / HTTP/2", &req), 0);
    assert_int_equal(parse("GET / HTTP/2.0", &req), -505);
    assert_int_equal(parse("GET / HTTP/1.1\r\nA b", &req), -400);
    assert_int_equal(parse("GET / HTTP/1.1\r\n folded", &req), -400);
}

static void test_max_head(void **state)
{
    (void)state;
    const char *s = "GET / HTTP/1.1\r\nHost: a\r\n\r\n"; /* 27 bytes */
    size_t n = strlen(s);
    fb_http_req req;
    assert_int_equal(parse_n(s, n, n, &req, NULL), (int)n);
    assert_int_equal(parse_n(s, n, n - 1, &req, NULL), -431);
    /* Incomplete and already at max_head: it cannot fit any more. */
    assert_int_equal(parse_n(s, n - 1, n - 1, &req, NULL), -431);
    assert_int_equal(parse_n(s, n - 1, n, &req, NULL), 0);
    assert_int_equal(parse_n(s, 10, 5, &req, NULL), -431);
    assert_int_equal(parse_n(s, 0, 0, &req, NULL), -431);
    assert_int_equal(parse_n(s, 0, 1, &req, NULL), 0);
    /* Endless empty lines count too. */
    char crlf[600];
    for (size_t i = 0; i < sizeof crlf; i += 2)
        memcpy(crlf + i, "\r\n", 2);
    assert_int_equal(parse_n(crlf, sizeof crlf, 512, &req, NULL), -431);
    assert_int_equal(parse_n(crlf, sizeof crlf, 4096, &req, NULL), 0);
    /* A long value with no end. */
    char big[10000];
    memcpy(big, "GET / HTTP/1.1\r\nX: ", 19);
    memset(big + 19, 'v', sizeof big - 19);
    assert_int_equal(parse_n(big, sizeof big, MAX_HEAD, &req, NULL), -431);
    assert_int_equal(parse_n(big, 8000, MAX_HEAD, &req, NULL), 0);
}

static size_t build_headers(char *s, size_t cap, int count)
{
    size_t n = 0;
    memcpy(s, "GET / HTTP/1.1\r\n", 16);
    n = 16;
    for (int i = 0; i < count; i++) {
        char line[16] = "X-0000: v\r\n";
        line[2] = (char)('0' + i / 1000 % 10);
        line[3] = (char)('0' + i / 100 % 10);
        line[4] = (char)('0' + i / 10 % 10);
        line[5] = (char)('0' + i % 10);
        assert_true(n + 11 < cap);
        memcpy(s + n, line, 11);
        n += 11;
    }
    memcpy(s + n, "\r\n", 2);
    return n + 2;
}

static void test_too_many_headers(void **state)
{
    (void)state;
    char s[4096];
    fb_http_req req;
    size_t n = build_headers(s, sizeof s, FB_HTTP_MAX_HEADERS);
    assert_int_equal(parse_n(s, n, MAX_HEAD, &req, NULL), (int)n);
    assert_int_equal(req.nheaders, FB_HTTP_MAX_HEADERS);
    assert_header(&req, "x-0063", "v");
    n = build_headers(s, sizeof s, FB_HTTP_MAX_HEADERS + 1);
    assert_int_equal(parse_n(s, n, MAX_HEAD, &req, NULL), -431);
}

/* Every proper prefix returns 0 and the whole returns its length. */
static void check_every_split(const char *s)
{
    size_t n = strlen(s);
    fb_http_req req;
    for (size_t k = 0; k < n; k++) {
        int rc = parse_n(s, k, MAX_HEAD, &req, NULL);
        if (rc != 0)
            fail_msg("prefix %zu of %zu: got %d", k, n, rc);
    }
    assert_int_equal(parse_n(s, n, MAX_HEAD, &req, NULL), (int)n);
}

static void test_split_every_offset(void **state)
{
    (void)state;
    check_every_split("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    check_every_split("\r\n\nPOST /openai/v1/chat/completions?stream=true "
                      "HTTP/1.1\r\n"
                      "Host: api.openai.com\r\n"
                      "Authorization: Bearer sk-0123456789abcdef\r\n"
                      "Content-Type: application/json\r\n"
                      "Content-Length: 12, 12\r\n"
                      "Content-Length: 12\r\n"
                      "Expect:\t100-continue\t\r\n"
                      "Connection: keep-alive, Upgrade\r\n"
                      "Empty:\r\n"
                      "\r\n");
    check_every_split("PUT /x HTTP/1.0\nConnection: keep-alive\n\n");
    check_every_split("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                      "X: a\tb\r\n\r\n");
}

static void test_pipelined(void **state)
{
    (void)state;
    const char *first = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n";
    char s[256];
    size_t n1 = strlen(first);
    const char *rest = "GET /2 HTTP/1.1\r\nHost: b\r\n\r\nGET /3 HTTP/1.1\r\n";
    memcpy(s, first, n1);
    memcpy(s + n1, rest, strlen(rest) + 1);
    fb_http_req req;
    assert_int_equal(parse(s, &req), (int)n1);
    assert_span(req.target, req.target_len, "/1");
    assert_int_equal(req.nheaders, 1);
    assert_int_equal(parse(s + n1, &req), (int)n1);
    assert_span(req.target, req.target_len, "/2");
    assert_header(&req, "host", "b");
    assert_int_equal(parse(s + 2 * n1, &req), 0);

    /* A body follows the head; the parser stops at the empty line. */
    const char *p = "POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\n\r\n\r\n";
    assert_int_equal(parse(p, &req), (int)strlen(p) - 4);
}

/* ---- chunked decoder ---- */

/* Feeds in[0..n) as a server would: first a piece of `first` bytes, then
 * pieces of `step`, keeping unconsumed bytes and offering them again.
 * The payload is collected in out. Returns the last rc; *used gets how
 * many input bytes were consumed in all. */
static int drive(const char *in, size_t n, size_t first, size_t step,
                 uint64_t max_body, int inplace, char *out, size_t *outn,
                 size_t *used)
{
    fb_http_chunked d;
    memset(&d, 0, sizeof d);
    char *buf = malloc(n ? n : 1);
    char *tmp = malloc(n ? n : 1);
    assert_non_null(buf);
    assert_non_null(tmp);
    size_t pending = 0, fed = 0, total_out = 0, total_used = 0;
    int rc = 0;
    for (int round = 0;; round++) {
        size_t piece = round == 0 ? first : step;
        if (piece > n - fed)
            piece = n - fed;
        memcpy(buf + pending, in + fed, piece);
        fed += piece;
        pending += piece;
        size_t consumed = 0, outlen = 0;
        char *dst = inplace ? buf : tmp;
        rc = fb_http_chunked_decode(&d, buf, pending, &consumed, dst, &outlen,
                                    max_body);
        assert_true(consumed <= pending);
        assert_true(outlen <= consumed);
        memcpy(out + total_out, dst, outlen);
        total_out += outlen;
        total_used += consumed;
        memmove(buf, buf + consumed, pending - consumed);
        pending -= consumed;
        if (rc != 0 || fed == n)
            break;
    }
    *outn = total_out;
    *used = total_used;
    free(buf);
    free(tmp);
    return rc;
}

static void check_chunked(const char *in, size_t n, size_t body_end,
                          const char *want, size_t wantn, uint64_t max_body)
{
    char out[4096];
    size_t outn, used;
    assert_true(n <= sizeof out);
    for (int inplace = 0; inplace < 2; inplace++) {
        /* Whole, then split in two at every offset, then byte by byte. */
        for (size_t first = 0; first <= n; first++) {
            int rc =
                drive(in, n, first, n, max_body, inplace, out, &outn, &used);
            if (rc != 1)
                fail_msg("split at %zu inplace %d: rc %d", first, inplace, rc);
            assert_int_equal(used, body_end);
            assert_int_equal(outn, wantn);
            assert_memory_equal(out, want, wantn);
        }
        assert_int_equal(
            drive(in, n, 1, 1, max_body, inplace, out, &outn, &used), 1);
        assert_int_equal(used, body_end);
        assert_int_equal(outn, wantn);
        assert_memory_equal(out, want, wantn);
    }
}

static void check_chunked_str(const char *in, const char *want)
{
    check_chunked(in, strlen(in), strlen(in), want, strlen(want), 1 << 20);
}

static void test_chunked_simple(void **state)
{
    (void)state;
    check_chunked_str("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world");
    check_chunked_str("0\r\n\r\n", "");
    check_chunked_str("A\r\n0123456789\r\n0\r\n\r\n", "0123456789");
    check_chunked_str("a\r\n0123456789\r\n000\r\n\r\n", "0123456789");
    check_chunked_str("0001\r\nx\r\n1\r\n\r\r\n0\r\n\r\n", "x\r");
    /* Payload bytes may be anything, CR LF and NUL included. */
    check_chunked("3\r\n\0\r\n\r\n0\r\n\r\n", 13, 13, "\0\r\n", 3, 100);
}

static void test_chunked_stops_at_end(void **state)
{
    (void)state;
    /* The next pipelined request stays unconsumed. */
    const char *s = "3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
    size_t body = strlen("3\r\nabc\r\n0\r\n\r\n");
    check_chunked(s, strlen(s), body, "abc", 3, 100);

    fb_http_chunked d = {0};
    size_t consumed = 99, outlen = 99;
    char out[64];
    assert_int_equal(
        fb_http_chunked_decode(&d, s, strlen(s), &consumed, out, &outlen, 100),
        1);
    assert_int_equal(consumed, body);
    assert_int_equal(d.total, 3);
    /* Done stays done and takes nothing more. */
    assert_int_equal(
        fb_http_chunked_decode(&d, s + body, 5, &consumed, out, &outlen, 100),
        1);
    assert_int_equal(consumed, 0);
    assert_int_equal(outlen, 0);
}

static void test_chunked_empty_input(void **state)
{
    (void)state;
    fb_http_chunked d = {0};
    size_t consumed = 99, outlen = 99;
    assert_int_equal(
        fb_http_chunked_decode(&d, NULL, 0, &consumed, NULL, &outlen, 10), 0);
    assert_int_equal(consumed, 0);
    assert_int_equal(outlen, 0);
}

static void test_chunked_extensions(void **state)
{
    (void)state;
    check_chunked_str("5;name=value\r\nhello\r\n0;last\r\n\r\n", "hello");
    check_chunked_str("5 ; a=\"q;\\\"x\" ;b\r\nhello\r\n0\t;z\r\n\r\n",
                      "hello");
    check_chunked_str("5;\r\nhello\r\n0\r\n\r\n", "hello");
}

static void test_chunked_trailers(void **state)
{
    (void)state;
    check_chunked_str("5\r\nhello\r\n0\r\nX-Checksum: abc\r\n"
                      "Y:\r\nZ: a\tb \r\n\r\n",
                      "hello");
}

static int decode_once(const char *in, size_t n, uint64_t max_body)
{
    char out[8192];
    size_t outn, used;
    assert_true(n <= sizeof out);
    int whole = drive(in, n, n, n, max_body, 0, out, &outn, &used);
    /* Byte by byte must agree. */
    int bytes = drive(in, n, 1, 1, max_body, 1, out, &outn, &used);
    assert_int_equal(whole, bytes);
    return whole;
}

static void test_chunked_malformed(void **state)
{
    (void)state;
    static const char *bad[] = {
        "\r\n",
        "g\r\n",
        "-1\r\n",
        "+1\r\n",
        "0x5\r\nhello\r\n0\r\n\r\n",
        " 5\r\nhello\r\n0\r\n\r\n",
        "5 \r\nhello\r\n0\r\n\r\n",
        "5\t\r\nhello\r\n0\r\n\r\n",
        "5 x\r\nhello\r\n0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
        "5\rhello\r\n0\r\n\r\n",
        "5;a\nhello\r\n0\r\n\r\n",
        "5;a\x01\r\nhello\r\n0\r\n\r\n",
        "5;a\x7f\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloX\r\n0\r\n\r\n",
        "5\r\nhello\n0\r\n\r\n",
        "5\r\nhello\r0\r\n\r\n",
        "5\r\nhello\r\n\r\n",
        "0\r\n\n",
        "0\r\n\rX",
        "0\n\r\n",
        "0\r\n bad: x\r\n\r\n",
        "0\r\nNoColon\r\n\r\n",
        "0\r\n: x\r\n\r\n",
        "0\r\nA : x\r\n\r\n",
        "0\r\nX: a\x01\r\n\r\n",
        "0\r\nX: a\nY: b\r\n\r\n",
        "0\r\nX: a\r\r\n\r\n",
        "10000000000000000\r\n",
        "00000000000000010000000000000000\r\n",
        "fffffffffffffffff\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = decode_once(bad[i], strlen(bad[i]), 1 << 20);
        if (rc != -400)
            fail_msg("case %zu: got %d, want -400", i, rc);
    }
    /* A NUL in the size line. */
    assert_int_equal(decode_once("5\0\r\nhello\r\n0\r\n\r\n", 15, 100), -400);
}

static void test_chunked_sticky_error(void **state)
{
    (void)state;
    fb_http_chunked d = {0};
    size_t consumed, outlen;
    char out[32];
    assert_int_equal(
        fb_http_chunked_decode(&d, "z\r\n", 3, &consumed, out, &outlen, 99),
        -400);
    assert_int_equal(
        fb_http_chunked_decode(&d, "0\r\n\r\n", 5, &consumed, out, &outlen, 99),
        -400);
    memset(&d, 0, sizeof d);
    assert_int_equal(
        fb_http_chunked_decode(&d, "9\r\n", 3, &consumed, out, &outlen, 8),
        -413);
    assert_int_equal(
        fb_http_chunked_decode(&d, "0\r\n\r\n", 5, &consumed, out, &outlen, 8),
        -413);
}

static void test_chunked_max_body(void **state)
{
    (void)state;
    const char *s = "5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n";
    check_chunked(s, strlen(s), strlen(s), "helloworld", 10, 10);
    assert_int_equal(decode_once(s, strlen(s), 9), -413);
    assert_int_equal(decode_once(s, strlen(s), 4), -413);
    assert_int_equal(decode_once(s, strlen(s), 0), -413);
    check_chunked("0\r\n\r\n", 5, 5, "", 0, 0);
    /* Fits in uint64 but not in any budget: -413, before the data. */
    assert_int_equal(decode_once("ffffffffffffffff\r\n", 18, 1 << 20), -413);
    assert_int_equal(decode_once("8000000000000000\r\n", 18, UINT64_MAX - 1),
                     0);

    /* The check comes when the size line ends, before any payload. */
    fb_http_chunked d = {0};
    size_t consumed, outlen;
    char out[64];
    assert_int_equal(fb_http_chunked_decode(&d, "5\r\nhello\r\n6\r\nx", 15,
                                            &consumed, out, &outlen, 10),
                     -413);
    assert_int_equal(outlen, 5);
    assert_int_equal(d.total, 5);
}

static void test_chunked_meta_limits(void **state)
{
    (void)state;
    static char s[3 * FB_HTTP_MAX_TRAILERS];
    /* A size line just within the limit, then one byte over. */
    size_t n = 0;
    s[n++] = '1';
    s[n++] = ';';
    while (n < FB_HTTP_MAX_CHUNK_LINE - 2)
        s[n++] = 'e';
    memcpy(s + n, "\r\nx\r\n0\r\n\r\n", 10);
    assert_int_equal(decode_once(s, n + 10, 100), 1);
    s[n] = 'e';
    memcpy(s + n + 1, "\r\nx\r\n0\r\n\r\n", 10);
    assert_int_equal(decode_once(s, n + 11, 100), -400);

    /* Trailers without end. */
    n = 0;
    memcpy(s, "0\r\n", 3);
    n = 3;
    while (n + 8 < sizeof s) {
        memcpy(s + n, "T: 123\r\n", 8);
        n += 8;
    }
    fb_http_chunked d = {0};
    size_t consumed, outlen;
    char out[16];
    assert_int_equal(
        fb_http_chunked_decode(&d, s, n, &consumed, out, &outlen, 100), -400);
    assert_true(consumed <= 3 + FB_HTTP_MAX_TRAILERS + 1);
}

/* ---- random inputs ---- */

static uint64_t rng_state = UINT64_C(0x9e3779b97f4a7c15);

static uint64_t rng(void)
{
    /* xorshift64*: fixed seed, so a failure reproduces. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * UINT64_C(0x2545f4914f6cdd1d);
}

static const char *const seeds[] = {
    "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "POST /v1/chat HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n"
    "Connection: close\r\nExpect: 100-continue\r\n\r\nhello",
    "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    "5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n",
    "PUT /x HTTP/1.0\nConnection: keep-alive\nA:  b \n\n",
    "\r\nDELETE /k?q=1 HTTP/1.1\r\nContent-Length: 0, 0\r\n\r\n",
};

static const char alphabet[] = "GET POST/ HTTP/1.1\r\n:;,\t Content-Length"
                               "Transfer-Encoding chunked 0123456789abcdef"
                               "\x00\x01\x7f\x80\xff";

static size_t mutate(char *buf, size_t n, size_t cap)
{
    int edits = 1 + (int)(rng() % 4);
    for (int e = 0; e < edits; e++) {
        size_t at = n ? (size_t)(rng() % n) : 0;
        char c =
            (rng() & 1) ? alphabet[rng() % (sizeof alphabet - 1)] : (char)rng();
        switch (rng() % 4) {
        case 0: /* replace */
            if (n)
                buf[at] = c;
            break;
        case 1: /* insert */
            if (n < cap) {
                memmove(buf + at + 1, buf + at, n - at);
                buf[at] = c;
                n++;
            }
            break;
        case 2: /* delete */
            if (n) {
                memmove(buf + at, buf + at + 1, n - at - 1);
                n--;
            }
            break;
        case 3: /* truncate */
            n = at;
            break;
        }
    }
    return n;
}

static void check_random_chunked(const char *body, size_t n)
{
    char out[1024];
    size_t outn, used, outn2, used2;
    uint64_t max_body = rng() % 64;
    int a = drive(body, n, n, n, max_body, 0, out, &outn, &used);
    assert_true(a == 0 || a == 1 || a == -400 || a == -413);
    assert_true(used <= n);
    char out2[1024];
    size_t first = n ? (size_t)(rng() % (n + 1)) : 0;
    size_t step = 1 + (size_t)(rng() % 7);
    int b = drive(body, n, first, step, max_body, (int)(rng() & 1), out2,
                  &outn2, &used2);
    /* How the input is split must not change the outcome. */
    assert_int_equal(a, b);
    if (a >= 0) {
        assert_int_equal(used, used2);
        assert_int_equal(outn, outn2);
        assert_memory_equal(out, out2, outn);
    }
}

static void test_random(void **state)
{
    (void)state;
    char buf[512];
    /* ok, 0, -400, -431, -501, -505, chunked bodies: each must be seen,
     * or the loop is not testing what it claims. */
    int seen[7] = {0};
    for (int iter = 0; iter < 200000; iter++) {
        size_t n;
        if (iter % 4 == 0) {
            n = (size_t)(rng() % 96);
            for (size_t i = 0; i < n; i++)
                buf[i] = (rng() & 1) ? alphabet[rng() % (sizeof alphabet - 1)]
                                     : (char)rng();
        } else {
            const char *s = seeds[rng() % (sizeof seeds / sizeof seeds[0])];
            n = strlen(s);
            memcpy(buf, s, n);
            n = mutate(buf, n, sizeof buf);
        }
        size_t max_head = (rng() & 3) == 0 ? (size_t)(rng() % 64) : MAX_HEAD;
        fb_http_req req;
        char *copy;
        int rc = parse_n(buf, n, max_head, &req, &copy);
        if (rc > 0) {
            assert_true((size_t)rc <= n && (size_t)rc <= max_head);
            assert_true(req.nheaders <= FB_HTTP_MAX_HEADERS);
            assert_true(req.target >= copy &&
                        req.target + req.target_len <= copy + rc);
            for (size_t h = 0; h < req.nheaders; h++)
                assert_true(req.headers[h].value >= copy &&
                            req.headers[h].value + req.headers[h].value_len <=
                                copy + rc);
            assert_true(!(req.chunked && req.content_length >= 0));
            /* The same head alone parses the same; one byte less waits. */
            fb_http_req again;
            assert_int_equal(parse_n(copy, (size_t)rc, max_head, &again, NULL),
                             rc);
            assert_int_equal(
                parse_n(copy, (size_t)rc - 1, max_head, &again, NULL), 0);
            seen[0]++;
            if (req.chunked) {
                seen[6]++;
                check_random_chunked(copy + rc, n - (size_t)rc);
            }
        } else {
            switch (rc) {
            case 0:
                seen[1]++;
                break;
            case -400:
                seen[2]++;
                break;
            case -431:
                seen[3]++;
                break;
            case -501:
                seen[4]++;
                break;
            case -505:
                seen[5]++;
                break;
            default:
                fail_msg("iteration %d: unexpected %d", iter, rc);
            }
        }
        free(copy);
    }
    for (int i = 0; i < 7; i++)
        if (seen[i] < 100)
            fail_msg("outcome %d seen only %d times", i, seen[i]);
}

static void test_random_chunked(void **state)
{
    (void)state;
    static const char *const bodies[] = {
        "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        "a;ext=1\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n",
        "1 ;a=\"b\"\r\nz\r\n0;q\r\nA: b\r\nC: d\r\n\r\n",
    };
    char buf[256];
    for (int iter = 0; iter < 50000; iter++) {
        const char *s = bodies[rng() % (sizeof bodies / sizeof bodies[0])];
        size_t n = strlen(s);
        memcpy(buf, s, n);
        n = mutate(buf, n, sizeof buf);
        check_random_chunked(buf, n);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple_get),
        cmocka_unit_test(test_post_content_length),
        cmocka_unit_test(test_no_headers_and_http10),
        cmocka_unit_test(test_method_mapping),
        cmocka_unit_test(test_leading_empty_lines),
        cmocka_unit_test(test_lf_only),
        cmocka_unit_test(test_value_trimming),
        cmocka_unit_test(test_header_lookup),
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_expect_continue),
        cmocka_unit_test(test_content_length_variants),
        cmocka_unit_test(test_transfer_encoding_chunked),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_nul_in_value),
        cmocka_unit_test(test_errors_early),
        cmocka_unit_test(test_max_head),
        cmocka_unit_test(test_too_many_headers),
        cmocka_unit_test(test_split_every_offset),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_chunked_simple),
        cmocka_unit_test(test_chunked_stops_at_end),
        cmocka_unit_test(test_chunked_empty_input),
        cmocka_unit_test(test_chunked_extensions),
        cmocka_unit_test(test_chunked_trailers),
        cmocka_unit_test(test_chunked_malformed),
        cmocka_unit_test(test_chunked_sticky_error),
        cmocka_unit_test(test_chunked_max_body),
        cmocka_unit_test(test_chunked_meta_limits),
        cmocka_unit_test(test_random),
        cmocka_unit_test(test_random_chunked),
    };
    return cmocka_run_group_tests_name("http", tests, NULL, free_last_copy);
}
