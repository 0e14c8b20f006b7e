/* form_fuzz.c - libFuzzer target for the admin surface's parsers of
 * outside bytes (src/http.c): fb_http_form_get (the sign-in and trip
 * forms, read before the token is checked) and fb_http_cookie. The input
 * is a body, and a Cookie header value too. Checked: a found value is
 * NUL-terminated and shorter than the buffer, holds no NUL, and decodes
 * back (re-encoded with %XX for every byte) to the same bytes; with a
 * buffer one byte larger the result agrees; a cookie points inside the
 * input and ends before a ';'. Any crash or sanitizer report is a
 * finding.
 *   make build-fuzz/form_fuzz && build-fuzz/form_fuzz \
 *       -dict=fuzz/form.dict fuzz/corpus/form */
#include "http.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "form_fuzz: %s:%d: %s\n", __FILE__, __LINE__,      \
                    #cond);                                                    \
            abort();                                                           \
        }                                                                      \
    } while (0)

static void field(const char *b, size_t n, const char *name)
{
    char out[256], big[257], enc[3 * 256 + 16], again[256];
    int got = fb_http_form_get(b, n, name, out, sizeof out);
    int got2 = fb_http_form_get(b, n, name, big, sizeof big);
    if (!got)
        return;
    size_t len = strlen(out);
    CHECK(len < sizeof out);
    CHECK(got2 && strcmp(out, big) == 0);
    /* name=%XX%XX...: decodes to the same bytes */
    size_t e = (size_t)snprintf(enc, sizeof enc, "%s=", name);
    for (size_t i = 0; i < len; i++)
        e += (size_t)snprintf(enc + e, sizeof enc - e, "%%%02X",
                              (unsigned char)out[i]);
    CHECK(fb_http_form_get(enc, e, name, again, sizeof again));
    CHECK(strcmp(again, out) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *b = (const char *)data;
    field(b, size, "token");
    field(b, size, "scope");
    size_t len = 0;
    const char *v = fb_http_cookie(b, size, "fusebox_admin", &len);
    if (v != NULL) {
        CHECK(v >= b && v + len <= b + size);
        CHECK(memchr(v, ';', len) == NULL);
    }
    return 0;
}
