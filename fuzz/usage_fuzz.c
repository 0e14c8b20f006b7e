/* usage_fuzz.c - libFuzzer target for the usage readers of src/provider.c
 * (ops->usage for openai and anthropic, fb_provider_usage_only_chunk), fed
 * as gateway.c feeds them. The input is
 *   byte 0: bit 0 the kind (openai, anthropic); bit 1 an SSE stream (the
 *           rest is framed by src/sse.c and each event's data is read, as
 *           stream_event does) rather than one JSON answer;
 *   then the answer bytes.
 * Checked: usage is merged as a maximum per field: no field goes down or
 * negative, a document that finds nothing changes nothing, reading the
 * same documents again or in another order gives the same usage;
 * fb_provider_usage_only_chunk is stable; ops->cost at the built-in prices of a
 * model of that kind and fb_provider_settle never return a negative amount, and
 * settle never exceeds the reservation on a non-2xx answer (it is 0).
 * Any crash, sanitizer report or trap is a finding.
 *   make build-fuzz/usage_fuzz && build-fuzz/usage_fuzz \
 *       -dict=fuzz/usage.dict fuzz/corpus/usage */
#include "provider.h"
#include "sse.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "usage_fuzz: %s:%d: %s\n", __FILE__, __LINE__,     \
                    #cond);                                                    \
            abort();                                                           \
        }                                                                      \
    } while (0)

#define MAX_DOCS 256

typedef struct doc {
    char *p;
    size_t n;
} doc;

static void check_mono(const fb_usage *before, const fb_usage *after)
{
    CHECK(after->input >= before->input && after->output >= before->output);
    CHECK(after->cache_read >= before->cache_read);
    CHECK(after->cache_write >= before->cache_write);
    CHECK(after->cache_write_1h >= before->cache_write_1h);
    CHECK(after->found >= before->found && (after->found | 1) == 1);
    CHECK(after->input >= 0 && after->output >= 0 && after->cache_read >= 0 &&
          after->cache_write >= 0 && after->cache_write_1h >= 0);
    if (!after->found)
        CHECK(memcmp(before, after, sizeof *after) == 0);
}

/* One document into u, in a buffer of its exact size (a read past the end
 * is an ASan report), checked against what it was before. */
static void read_doc(const fb_provider_ops *ops, const doc *d, fb_usage *u)
{
    char *exact = malloc(d->n ? d->n : 1);
    CHECK(exact != NULL);
    memcpy(exact, d->p, d->n);
    fb_usage before = *u, alone = {0}, again;
    ops->usage(exact, d->n, u);
    check_mono(&before, u);
    if (before.found == 0 && !u->found)
        CHECK(memcmp(&before, u, sizeof *u) == 0);
    again = *u;
    ops->usage(exact, d->n, &again); /* idempotent */
    CHECK(memcmp(&again, u, sizeof *u) == 0);
    ops->usage(exact, d->n, &alone);
    check_mono(&(fb_usage){0}, &alone);
    int only = fb_provider_usage_only_chunk(exact, d->n);
    CHECK(only == 0 || only == 1);
    CHECK(fb_provider_usage_only_chunk(exact, d->n) == only);
    free(exact);
}

static void check_cost(fb_provider_kind kind, const fb_prices *prices,
                       const fb_usage *u)
{
    const fb_provider_ops *ops = fb_provider_ops_for(kind);
    const char *model =
        kind == FB_PROVIDER_OPENAI ? "gpt-4o" : "claude-sonnet-4-5";
    const fb_price *p = fb_prices_find(prices, model);
    CHECK(p != NULL);
    fb_money cost = -1;
    fb_err rc = ops->cost(p, u, &cost);
    CHECK(rc == FB_OK || rc == FB_EOVERFLOW);
    if (rc == FB_OK)
        CHECK(cost >= 0);

    fb_provider_conf pc = {.kind = kind};
    fb_call call;
    memset(&call, 0, sizeof call);
    call.price = p;
    call.worst = 1000000;
    fb_money s200 = fb_provider_settle(&pc, &call, 200, u);
    fb_money s500 = fb_provider_settle(&pc, &call, 500, u);
    CHECK(s200 >= 0 && s500 >= 0);
    if (rc == FB_OK && u->found)
        CHECK(s200 == cost && s500 == cost);
    else
        CHECK(s200 == call.worst && s500 == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static fb_prices *prices;
    if (prices == NULL)
        CHECK((prices = fb_prices_new()) != NULL);
    if (size < 1)
        return 0;
    fb_provider_kind kind =
        (data[0] & 1) ? FB_PROVIDER_ANTHROPIC : FB_PROVIDER_OPENAI;
    int stream = (data[0] >> 1) & 1;
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    const fb_provider_ops *ops = fb_provider_ops_for(kind);
    doc docs[MAX_DOCS];
    size_t ndocs = 0;
    fb_sse s;
    fb_sse_init(&s, n + 1);

    if (!stream) {
        docs[ndocs++] = (doc){(char *)in, n};
    } else {
        const char *ev;
        size_t el;
        CHECK(fb_sse_feed(&s, in, n) == FB_OK);
        while (ndocs < MAX_DOCS && fb_sse_next(&s, &ev, &el) == 1) {
            char *d = malloc(el + 1);
            CHECK(d != NULL);
            size_t dl = fb_sse_data(ev, el, d, el + 1);
            CHECK(dl <= el);
            docs[ndocs++] = (doc){d, dl};
        }
    }

    fb_usage fwd = {0}, back = {0};
    for (size_t i = 0; i < ndocs; i++)
        read_doc(ops, &docs[i], &fwd);
    for (size_t i = ndocs; i-- > 0;)
        ops->usage(docs[i].p, docs[i].n, &back);
    CHECK(memcmp(&fwd, &back, sizeof fwd) == 0); /* a max is commutative */
    check_cost(kind, prices, &fwd);

    /* The other kind's reader on the same bytes: no crash, same rules. */
    fb_usage other = {0};
    const fb_provider_ops *oops =
        fb_provider_ops_for(kind == FB_PROVIDER_OPENAI ? FB_PROVIDER_ANTHROPIC
                                                       : FB_PROVIDER_OPENAI);
    for (size_t i = 0; i < ndocs; i++) {
        fb_usage before = other;
        oops->usage(docs[i].p, docs[i].n, &other);
        check_mono(&before, &other);
    }
    /* generic reads nothing */
    fb_usage none = {0};
    fb_provider_ops_for(FB_PROVIDER_GENERIC)->usage(in, n, &none);
    CHECK(!none.found && none.input == 0 && none.output == 0);

    if (stream)
        for (size_t i = 0; i < ndocs; i++)
            free(docs[i].p);
    fb_sse_free(&s);
    return 0;
}
