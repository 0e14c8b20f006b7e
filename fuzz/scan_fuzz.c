/* scan_fuzz.c - libFuzzer target for src/scan.c, fusebox scan's secret
 * finder: the scanner's rules and its inputs. The input is
 *   RULES "\n%%\n" FILE   (or only FILE, scanned with the built-in rules)
 * RULES is loaded over the built-in set (a bad file must be refused with a
 * reason, not crash), then FILE is scanned. Checked: every finding lies in
 * the file (its line and column exist), a secret's redaction shows at
 * most four characters of it and the length (other findings a short
 * printable excerpt), the fingerprint is 16 hex
 * digits, and scanning twice gives the same findings. Any crash, sanitizer
 * report, trap or timeout (a pattern that backtracks without end must hit
 * the match limit) is a finding.
 *   make build-fuzz/scan_fuzz && build-fuzz/scan_fuzz \
 *       -dict=fuzz/scan.dict fuzz/corpus/scan */
#include "scan.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "scan_fuzz: %s:%d: %s\n", __FILE__, __LINE__,      \
                    #cond);                                                    \
            abort();                                                           \
        }                                                                      \
    } while (0)

typedef struct seen {
    const char *buf;
    size_t len, lines;
    unsigned long sum; /* of line, column and length: run one vs two */
    int n;
} seen;

static void on(void *arg, const fb_scan_finding *f)
{
    seen *s = arg;
    CHECK(f->line >= 1 && (size_t)f->line <= s->lines);
    CHECK(f->column >= 1 && (size_t)f->column <= s->len);
    CHECK(f->length >= 1 && f->length <= s->len);
    CHECK(strlen(f->fingerprint) == 16);
    for (int i = 0; i < 16; i++)
        CHECK(strchr("0123456789abcdef", f->fingerprint[i]) != NULL);
    if (strcmp(f->kind, "secret") == 0) {
        /* "ABCD...(N chars)": at most 4 characters of the secret */
        const char *dots = strstr(f->redacted, "...(");
        CHECK(dots != NULL && dots - f->redacted <= 4);
    } else { /* what was seen: short and printable */
        CHECK(strlen(f->redacted) < 48);
        for (const char *c = f->redacted; *c; c++)
            CHECK(*c >= 0x20 && *c < 0x7f);
    }
    s->sum += (unsigned long)f->line * 31u + (unsigned long)f->column * 7u +
              f->length;
    s->n++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char sep[] = "\n%%\n";
    const char *in = (const char *)data;
    const char *cut = NULL;
    for (size_t i = 0; i + 4 <= size && cut == NULL; i++)
        if (memcmp(in + i, sep, 4) == 0)
            cut = in + i;
    fb_scan_rules *r = fb_scan_rules_builtin();
    CHECK(r != NULL);
    const char *file = in;
    size_t flen = size;
    if (cut != NULL) {
        char err[512] = "";
        fb_err e = fb_scan_rules_load(r, in, (size_t)(cut - in), "fuzz", err,
                                      sizeof err);
        CHECK(e == FB_OK || (e == FB_EINVAL && strncmp(err, "fuzz:", 5) == 0) ||
              e == FB_ENOMEM);
        file = cut + 4;
        flen = size - (size_t)(file - in);
    }
    seen a = {.buf = file, .len = flen, .lines = 1}, b = a;
    for (size_t i = 0; i < flen; i++)
        a.lines += file[i] == '\n';
    b.lines = a.lines;
    fb_scan_buffer(r, "fuzz.txt", file, flen, on, &a);
    fb_scan_buffer(r, "fuzz.txt", file, flen, on, &b);
    CHECK(a.n == b.n && a.sum == b.sum);
    fb_scan_rules_free(r);
    return 0;
}
