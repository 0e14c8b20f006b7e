/* provider.h - what fusebox knows about each kind of paid API: which
 * routes cost money, a request's worst-case cost, how to read the real
 * usage from a JSON answer or an SSE event, and what that usage costs.
 * openai, anthropic and generic share one small vtable. */
#ifndef FB_PROVIDER_H
#define FB_PROVIDER_H

#include <stddef.h>
#include <stdint.h>
#include "common.h"
#include "config.h"
#include "money.h"
#include "price.h"

typedef struct fb_usage {
    int found;
    int64_t input;       /* OpenAI: includes cached; Anthropic: excludes */
    int64_t output;
    int64_t cache_read;  /* cached input tokens */
    int64_t cache_write; /* Anthropic cache creation tokens (all) */
    int64_t cache_write_1h; /* the part written to the 1-hour cache */
} fb_usage;

/* What the gateway learned from a request before forwarding it. */
typedef struct fb_call {
    char model[128];       /* "" for generic routes and free routes */
    const fb_price *price; /* NULL for generic and free routes; may point
                              to tier below */
    fb_price tier;         /* the model's price in the requested tier */
    int stream;            /* the request asked for SSE */
    int free_route;        /* e.g. GET /v1/models: costs nothing */
    int usage_injected;    /* we asked for stream usage the client did not */
    fb_money worst;        /* worst-case cost, reserved before the call */
    int64_t worst_in, worst_out; /* token bounds behind worst */
    struct fb_json *doc;   /* the body as parsed by inspect (a JSON object,
                              else NULL), for the fingerprint to reuse; the
                              caller frees it (fb_json_free) */
} fb_call;

/* Why inspect refused a request. */
typedef enum fb_refuse {
    FB_REFUSE_NONE = 0,
    FB_REFUSE_BAD_REQUEST, /* 400 invalid_request: malformed JSON, ... */
    FB_REFUSE_UNKNOWN_PRICE, /* 400 unknown_price: fail closed */
    FB_REFUSE_UNPRICED_ROUTE, /* 400 unpriced_route: a route with no price */
} fb_refuse;

typedef struct fb_provider_ops {
    /* Fill call for method + path (the part after /<provider>) and body.
     * May return a rewritten body in *new_body (malloc'd, caller frees),
     * e.g. to ask an OpenAI stream for its usage. On refusal returns the
     * reason and writes a one-line message to msg. */
    fb_refuse (*inspect)(const fb_provider_conf *pc, const fb_prices *prices,
                         const char *method, const char *path,
                         const char *body, size_t len, fb_call *call,
                         char **new_body, size_t *new_len, char *msg,
                         size_t cap);
    /* Merge the usage found in one JSON document (a whole answer or one
     * SSE event's data) into u (max per field). */
    void (*usage)(const char *json, size_t len, fb_usage *u);
    /* Cost of u at price p; FB_EOVERFLOW if absurd. */
    fb_err (*cost)(const fb_price *p, const fb_usage *u, fb_money *out);
} fb_provider_ops;

const fb_provider_ops *fb_provider_ops_for(fb_provider_kind kind);

/* The real cost of a finished call: from usage when found, else the full
 * reservation for a 2xx answer (the provider billed something we could
 * not read) and 0 for an error answer (providers do not bill those).
 * Generic routes cost their per-call price on 2xx. */
fb_money fb_provider_settle(const fb_provider_conf *pc, const fb_call *call,
                            int status, const fb_usage *u);

/* Does this SSE event carry only usage (an OpenAI chunk with "choices":[]
 * and a usage object)? Used to drop the chunk we asked for ourselves. */
int fb_provider_usage_only_chunk(const char *json, size_t len);

#endif
