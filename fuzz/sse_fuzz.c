/* sse_fuzz.c - libFuzzer target for src/sse.c, the SSE framing the gateway
 * cuts upstream streams with. The input is
 *   byte 0: the event limit: 0 none (the input size), else byte * 8;
 *   bytes 1-2: seed of the split (piece sizes 0..64 from a small PRNG);
 *   then the stream bytes.
 * The stream is fed once whole and once in pieces, taking the complete
 * events after each piece as gateway.c does. Checked: the events handed
 * out, then the rest, then any piece refused with FB_ELIMIT are the bytes
 * fed, in order (nothing lost, nothing added); every event ends with a
 * blank line and has a non-blank one; the split run hands out the same
 * event data (fb_sse_data) as the whole run, up to where it hit the
 * limit; fb_sse_data's length, truncation and NUL agree across buffer
 * sizes. Any crash, sanitizer report or trap is a finding.
 *   make build-fuzz/sse_fuzz && build-fuzz/sse_fuzz \
 *       -dict=fuzz/sse.dict fuzz/corpus/sse */
#include "sse.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "sse_fuzz: %s:%d: %s\n", __FILE__, __LINE__,       \
                    #cond);                                                    \
            abort();                                                           \
        }                                                                      \
    } while (0)

/* What one run handed out: the events' bytes and data, concatenated. */
typedef struct out {
    char *bytes; /* events, then rest, then refused pieces */
    size_t nbytes;
    char *data; /* each event's data followed by a 0xff separator */
    size_t ndata;
    size_t nevents;
    int limited; /* a feed returned FB_ELIMIT */
} out;

static int is_eol(char c)
{
    return c == '\n' || c == '\r';
}

/* An event ends in a blank line: strip its last line end (CRLF counts as
 * one), and what remains still ends in a line end. */
static void check_event(const char *ev, size_t len)
{
    CHECK(len >= 2);
    size_t n = len;
    if (n >= 2 && ev[n - 2] == '\r' && ev[n - 1] == '\n')
        n -= 2;
    else {
        CHECK(is_eol(ev[n - 1]));
        n -= 1;
    }
    CHECK(n > 0 && is_eol(ev[n - 1]));
    size_t i = 0;
    while (i < len && is_eol(ev[i]))
        i++;
    CHECK(i < len); /* a field line, not only blank lines */
}

static void check_data(const char *ev, size_t len, out *o)
{
    char *full = malloc(len + 1);
    CHECK(full != NULL);
    size_t total = fb_sse_data(ev, len, full, len + 1);
    CHECK(total <= len && full[total] == '\0');
    CHECK(memchr(full, '\r', total) == NULL);
    /* Smaller buffers: the same length, a NUL-terminated prefix. */
    for (size_t cap = 0; cap <= total && cap < 4; cap++) {
        char small[4];
        memset(small, 0x5a, sizeof small);
        CHECK(fb_sse_data(ev, len, small, cap) == total);
        if (cap > 0) {
            CHECK(memcmp(small, full, cap - 1) == 0 && small[cap - 1] == 0);
        }
        for (size_t k = cap; k < sizeof small; k++)
            CHECK(small[k] == 0x5a);
    }
    char *d = realloc(o->data, o->ndata + total + 1);
    CHECK(d != NULL);
    memcpy(d + o->ndata, full, total);
    d[o->ndata + total] = (char)0xff;
    o->data = d;
    o->ndata += total + 1;
    free(full);
}

static void append(out *o, const char *p, size_t n)
{
    char *b = realloc(o->bytes, o->nbytes + n + 1);
    CHECK(b != NULL);
    if (n > 0)
        memcpy(b + o->nbytes, p, n);
    o->bytes = b;
    o->nbytes += n;
}

static void take_events(fb_sse *s, out *o)
{
    const char *ev;
    size_t len;
    while (fb_sse_next(s, &ev, &len) == 1) {
        check_event(ev, len);
        append(o, ev, len);
        check_data(ev, len, o);
        o->nevents++;
    }
    CHECK(fb_sse_next(s, &ev, &len) == 0); /* stays drained */
}

static void run(const char *in, size_t n, size_t max, uint32_t seed, int whole,
                out *o)
{
    fb_sse s;
    fb_sse_init(&s, max);
    memset(o, 0, sizeof *o);
    size_t fed = 0;
    while (fed < n) {
        size_t piece = n - fed;
        if (!whole) {
            seed = seed * 1103515245u + 12345u;
            size_t k = (seed >> 16) % 65; /* empty pieces too */
            if (k < piece)
                piece = k;
        }
        fb_err rc = fb_sse_feed(&s, in + fed, piece);
        CHECK(rc == FB_OK || rc == FB_ELIMIT);
        if (rc == FB_ELIMIT) {
            /* gateway.c: the rest, then this piece and all after it pass
             * through unframed. */
            size_t rl;
            const char *rest = fb_sse_rest(&s, &rl);
            CHECK(rl <= max);
            append(o, rest, rl);
            append(o, in + fed, n - fed);
            o->limited = 1;
            fb_sse_free(&s);
            return;
        }
        fed += piece;
        take_events(&s, o);
        size_t rl;
        (void)fb_sse_rest(&s, &rl);
        CHECK(rl <= max);
    }
    size_t rl;
    const char *rest = fb_sse_rest(&s, &rl);
    CHECK(rest != NULL);
    append(o, rest, rl);
    fb_sse_free(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    const char *in = (const char *)data + 3;
    size_t n = size - 3;
    size_t max = data[0] == 0 ? n : (size_t)data[0] * 8;
    uint32_t seed = (uint32_t)data[1] << 8 | data[2];
    out whole, split;

    run(in, n, n, 0, 1, &whole);
    CHECK(!whole.limited);
    CHECK(whole.nbytes == n && (n == 0 || memcmp(whole.bytes, in, n) == 0));

    run(in, n, max, seed, 0, &split);
    CHECK(split.nbytes == n && (n == 0 || memcmp(split.bytes, in, n) == 0));
    /* Where a piece ends may move an event's last CR/LF into the next
     * event's bytes, never its data nor the number of events. */
    if (!split.limited) {
        CHECK(split.nevents == whole.nevents);
        CHECK(split.ndata == whole.ndata &&
              (whole.ndata == 0 ||
               memcmp(split.data, whole.data, whole.ndata) == 0));
    } else {
        CHECK(split.nevents <= whole.nevents);
        CHECK(split.ndata <= whole.ndata &&
              (split.ndata == 0 ||
               memcmp(split.data, whole.data, split.ndata) == 0));
    }
    free(whole.bytes);
    free(whole.data);
    free(split.bytes);
    free(split.data);
    return 0;
}
