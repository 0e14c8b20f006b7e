/* classify_fuzz.c - libFuzzer target for src/classify.c. The input is
 *   byte 0: exit status (0xff: none), byte 1: signal (mod 66), then
 *   RULES "\n%%\n" TAIL   (or only TAIL when there is no separator)
 * RULES is loaded into an empty set and TAIL classified with it and with
 * the built-ins. Checked: a verdict is well formed (printable UTF-8,
 * "unknown" exactly when nothing matched), classifying twice agrees, a
 * failed load names "fuzz:LINE", and loading the same rules again in front
 * changes no verdict. Any crash, sanitizer report or trap is a finding.
 *   make build-fuzz/classify_fuzz && build-fuzz/classify_fuzz \
 *       -dict=fuzz/classify.dict fuzz/corpus/classify */
#include "classify.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond))                                                           \
            __builtin_trap();                                                  \
    } while (0)

static const char sep[] = "\n%%\n";

static void check_utf8_printable(const char *s, size_t cap)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strnlen(s, cap);
    CHECK(n < cap);
    if (n > 0)
        CHECK(p[0] != ' ' && p[0] != '\t' && p[n - 1] != ' ' &&
              p[n - 1] != '\t');
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        size_t k = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
        CHECK((c >= 0x20 && c != 0x7f) || c == '\t');
        CHECK(c < 0x80 || (c >= 0xc2 && c <= 0xf4));
        CHECK(i + k <= n);
        for (size_t j = 1; j < k; j++)
            CHECK((p[i + j] & 0xc0) == 0x80);
        i += k;
    }
}

static void check_verdict(const fb_verdict *v)
{
    CHECK(v->cls >= FB_FAIL_UNKNOWN && v->cls <= FB_FAIL_BUDGET);
    size_t rl = strnlen(v->rule, sizeof v->rule);
    CHECK(rl > 0 && rl < sizeof v->rule);
    check_utf8_printable(v->matched, sizeof v->matched);
    if (v->cls == FB_FAIL_UNKNOWN)
        CHECK(strcmp(v->rule, "unknown") == 0 && v->matched[0] == '\0');
    else
        CHECK(v->matched[0] != '\0');
}

static void classify(const fb_rules *r, int st, int sig, const char *tail,
                     size_t n, fb_verdict *v)
{
    fb_verdict again;
    fb_classify(r, st, sig, tail, n, v);
    check_verdict(v);
    fb_classify(r, st, sig, tail, n, &again);
    CHECK(memcmp(v, &again, sizeof again) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static fb_rules *builtin;
    const char *in = (const char *)data + 2, *rules = "", *tail;
    size_t n = size >= 2 ? size - 2 : 0, rlen = 0, tlen;
    fb_verdict v, w;
    char err[256];

    if (builtin == NULL)
        CHECK((builtin = fb_rules_new()) != NULL);
    if (size < 2)
        return 0;
    int st = data[0] == 0xff ? -1 : data[0];
    int sig = data[1] % 66;
    const char *s =
        n >= sizeof sep - 1 ? memmem(in, n, sep, sizeof sep - 1) : NULL;
    if (s != NULL) {
        rules = in;
        rlen = (size_t)(s - in);
        tail = s + sizeof sep - 1;
        tlen = n - rlen - (sizeof sep - 1);
    } else {
        tail = in;
        tlen = n;
    }
    classify(builtin, st, sig, tail, tlen, &v);
    if (rlen == 0)
        return 0;

    fb_rules *u = fb__rules_new_empty();
    CHECK(u != NULL);
    fb_err rc = fb_rules_load_text(u, rules, rlen, "fuzz", err, sizeof err);
    CHECK(rc == FB_OK || rc == FB_EINVAL || rc == FB_ENOMEM);
    CHECK(strnlen(err, sizeof err) < sizeof err);
    if (rc != FB_OK) {
        CHECK(strncmp(err, "fuzz:", 5) == 0);
        classify(u, st, sig, tail, tlen, &v);
        CHECK(v.cls == FB_FAIL_UNKNOWN); /* still empty */
        fb_rules_free(u);
        return 0;
    }
    CHECK(err[0] == '\0');
    classify(u, st, sig, tail, tlen, &v);
    /* The same rules again, in front: the same rule decides the same way. */
    rc = fb_rules_load_text(u, rules, rlen, "fuzz", err, sizeof err);
    CHECK(rc == FB_OK || rc == FB_EINVAL || rc == FB_ENOMEM);
    classify(u, st, sig, tail, tlen, &w);
    CHECK(memcmp(&v, &w, sizeof v) == 0);
    fb_rules_free(u);
    return 0;
}
