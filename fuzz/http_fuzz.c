/* http_fuzz.c - libFuzzer target for src/http.c. The input is parsed as a
 * request head; when the head is complete and announces a chunked body,
 * the rest is decoded twice, whole and split into small pieces, and the
 * two runs must agree. Any crash, sanitizer report or trap is a finding.
 *   clang -fsanitize=fuzzer,address -Isrc fuzz/http_fuzz.c src/http.c \
 *         src/common.c -o http_fuzz && ./http_fuzz fuzz/corpus/http */
#include "http.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HEAD 4096
#define MAX_BODY 4096

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond))                                                           \
            __builtin_trap();                                                  \
    } while (0)

typedef struct run {
    int rc;
    size_t used; /* input bytes consumed in all */
    size_t outn;
} run;

/* Feeds body[0..n) as a server would: pieces of `step` bytes appended to
 * what is left unconsumed. With inplace, output overwrites the input. */
static run decode(const char *body, size_t n, size_t step, int inplace,
                  char *out)
{
    fb_http_chunked d;
    memset(&d, 0, sizeof d);
    char *buf = malloc(n ? n : 1);
    char *tmp = malloc(n ? n : 1);
    CHECK(buf != NULL && tmp != NULL);
    run r = {0, 0, 0};
    size_t pending = 0, fed = 0;
    for (;;) {
        size_t piece = n - fed < step ? n - fed : step;
        memcpy(buf + pending, body + fed, piece);
        fed += piece;
        pending += piece;
        size_t consumed = 0, outlen = 0;
        char *dst = inplace ? buf : tmp;
        r.rc = fb_http_chunked_decode(&d, buf, pending, &consumed, dst, &outlen,
                                      MAX_BODY);
        CHECK(r.rc == 0 || r.rc == 1 || r.rc == -400 || r.rc == -413);
        CHECK(consumed <= pending && outlen <= consumed);
        CHECK(d.total <= MAX_BODY);
        memcpy(out + r.outn, dst, outlen);
        r.outn += outlen;
        r.used += consumed;
        memmove(buf, buf + consumed, pending - consumed);
        pending -= consumed;
        if (r.rc != 0 || fed == n)
            break;
    }
    free(buf);
    free(tmp);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *in = (const char *)data;
    fb_http_req req;
    int rc = fb_http_parse_request(in, size, MAX_HEAD, &req);
    if (rc <= 0) {
        CHECK(rc == 0 || rc == -400 || rc == -431 || rc == -501 || rc == -505);
        CHECK(rc != 0 || size < MAX_HEAD);
        return 0;
    }
    CHECK((size_t)rc <= size && rc <= MAX_HEAD);
    CHECK(req.nheaders <= FB_HTTP_MAX_HEADERS);
    CHECK(req.minor_version == 0 || req.minor_version == 1);
    CHECK(!(req.chunked && req.content_length >= 0));
    for (size_t i = 0; i < req.nheaders; i++) {
        const fb_http_header *h = &req.headers[i];
        CHECK(h->name_len > 0 && h->name + h->name_len <= in + rc);
        CHECK(h->value >= in && h->value + h->value_len <= in + rc);
    }
    CHECK(req.content_length == -1 ||
          fb_http_header_get(&req, "content-length", NULL) != NULL);

    /* The head alone parses the same, and one byte less is incomplete. */
    fb_http_req again;
    CHECK(fb_http_parse_request(in, (size_t)rc, MAX_HEAD, &again) == rc);
    CHECK(fb_http_parse_request(in, (size_t)rc - 1, MAX_HEAD, &again) == 0);

    if (!req.chunked)
        return 0;
    const char *body = in + rc;
    size_t n = size - (size_t)rc;
    char *out1 = malloc(n ? n : 1);
    char *out2 = malloc(n ? n : 1);
    CHECK(out1 != NULL && out2 != NULL);
    run whole = decode(body, n, n ? n : 1, 0, out1);
    /* The piece size comes from the input, so the fuzzer explores it. */
    size_t step = 1 + (size_t)(data[0] % 7);
    run split = decode(body, n, step, 1, out2);
    CHECK(whole.rc == split.rc);
    if (whole.rc >= 0) {
        CHECK(whole.used == split.used && whole.outn == split.outn);
        CHECK(memcmp(out1, out2, whole.outn) == 0);
    }
    free(out1);
    free(out2);
    return 0;
}
