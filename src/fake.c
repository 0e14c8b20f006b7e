/* fake.c - the fake paid provider: an evhttp server that answers like the
 * OpenAI (chat completions, responses, embeddings), Anthropic (messages)
 * and a generic per-call API, streaming or not, bills each generated answer
 * from the price table the way the real provider would, and injects faults
 * (error statuses, delays, mid-stream resets, stalls) on request. */
#include "fake.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "common.h"
#include "money.h"
#include "price.h"

/*
 * NOTES ON DEFERRED ANSWERS
 *
 * Most answers are built and sent inside the request callback. An answer
 * that must wait (delay_ms, stall) or that streams becomes a fake_op on
 * srv->ops, driven by its own timer:
 *
 *   request --> build reply, bill --+--> send now ----------------> done
 *                                   +--> OP_DELAY --timer--> send --+
 *                                   +--> OP_STALL (until the client |
 *                                        leaves or we stop)         |
 *                  OP_STREAM <--------------------------------------+
 *                    | one SSE event per write; the flush callback
 *                    | re-arms the timer for the next one
 *                    +--> all sent: reply_end --> done
 *                    +--> reset_after reached: OP_DROP --> close TCP
 *
 * 1. The answer (and its bill) is generated before any waiting, so the
 *    billing counter does not depend on whether the client reads it.
 * 2. While an op is deferred, our close callback sits on its connection;
 *    it is removed before the op ends any other way. When a write fails
 *    because the client left, libevent detaches the request from the
 *    connection and calls the close callback; the request is then ours to
 *    free. libevent stops reading once a request is in, so it would not
 *    see a client leave a stalled or delayed request: a one-shot read
 *    watch on the socket does (EOF there frees the connection).
 * 3. Steps run from the op's timer, never inside libevent's write
 *    callback, so freeing the connection (a reset) is never re-entrant.
 * 4. At shutdown, ops are freed before evhttp_free(), which frees the
 *    requests still attached to connections.
 */

#define FAKE_MAX_BODY (16u * 1024 * 1024)
#define FAKE_MAX_HEADERS (1u * 1024 * 1024)
/* Long enough that a stalled request stays open for any test. */
#define FAKE_CONN_TIMEOUT_S 3600
#define FAKE_DEFAULT_WORDS 16
#define FAKE_MAX_WORDS 100000
#define FAKE_MAX_CHOICES 128
#define FAKE_MAX_DELAY_MS (3600 * 1000)
#define FAKE_MAX_QUEUE 1024
#define FAKE_FAULT_LEN 256
#define FAKE_EMBED_DIM 8

#define JI(x) ((json_int_t)(x))

typedef enum fake_kind {
    KIND_OPENAI,
    KIND_ANTHROPIC,
    KIND_GENERIC,
} fake_kind;

typedef struct fake_fault {
    int status;             /* 0: none */
    int context;            /* with 400: a context-length error */
    int stall;              /* never answer */
    int64_t delay_ms;       /* before the whole answer */
    int64_t reset_after;    /* SSE events sent before dropping; -1: none */
    int64_t chunk_delay_ms; /* between SSE events */
} fake_fault;

typedef struct fault_entry {
    char spec[FAKE_FAULT_LEN];
    int64_t remaining;
} fault_entry;

typedef enum op_state {
    OP_NEW,
    OP_DELAY,
    OP_STALL,
    OP_STREAM,
    OP_DROP,
} op_state;

typedef struct fake_op fake_op;

typedef struct fake_srv {
    struct event_base *base;
    struct evhttp *http;
    struct event *sig_term;
    struct event *sig_int;
    fb_prices *prices;
    int any_model; /* --any-model: unknown models answer, billed at 0 */
    const char *openai_key;
    const char *anthropic_key;
    const char *generic_key;
    const char *count_field; /* NULL: every generic call counts 1 */
    fb_money generic_price;
    /* CALLNO of the last generated answer. Not rewound by /_fake/reset so
     * that no two answers of one process ever carry the same text. */
    int64_t seq;
    int64_t req_seq; /* for request id headers; never reset either */
    int64_t calls;
    fb_money billed;
    int64_t requests;
    int64_t unauthorized;
    int64_t virtual_key_seen;
    int64_t include_usage_seen;
    char *last_auth;
    char *last_x_api_key;
    fault_entry *queue;
    size_t nqueue;
    fake_op *ops;
} fake_srv;

struct fake_op {
    fake_op *prev, *next;
    int linked;
    fake_srv *srv;
    struct evhttp_request *req;
    struct evhttp_connection *evcon; /* carries our close callback */
    struct event *gone;              /* read watch on evcon's socket */
    struct event *timer;
    op_state state;
    fake_kind kind;
    fake_fault fault;
    int status;
    int streaming;
    struct evbuffer *body;
    struct evbuffer **events;
    size_t nevents, capevents, sent;
    int64_t req_seq; /* for the request id header */
};

/* One API request being answered. */
typedef struct fake_call {
    fake_srv *srv;
    struct evhttp_request *req;
    fake_op *op;
    const char *body;
    size_t body_len;
    json_t *root;
} fake_call;

/* ---- small helpers ---------------------------------------------------- */

static int64_t body_tokens(size_t len)
{
    int64_t t = (int64_t)(len / 4);
    return t < 1 ? 1 : t;
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* Parse an integer in [min, max] from s[0..len), all of it. */
static int parse_i64(const char *s, size_t len, int64_t min, int64_t max,
                     int64_t *out)
{
    char buf[32];
    char *end = NULL;
    long long v;

    while (len > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        len--;
    }
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    if (len == 0 || len >= sizeof(buf))
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    errno = 0;
    v = strtoll(buf, &end, 10);
    if (errno != 0 || end != buf + len || v < min || v > max)
        return -1;
    *out = (int64_t)v;
    return 0;
}

static const char *header(struct evhttp_request *req, const char *name)
{
    return evhttp_find_header(evhttp_request_get_input_headers(req), name);
}

/* A header holding a token count: absent leaves *out alone; malformed is
 * -1 so the caller can refuse the request rather than guess. */
static int header_count(struct evhttp_request *req, const char *name,
                        int64_t *out)
{
    const char *v = header(req, name);
    if (v == NULL)
        return 0;
    return parse_i64(v, strlen(v), 0, INT64_C(1000000000), out);
}

static int bearer_is(const char *auth, const char *key)
{
    if (auth == NULL || strlen(auth) < 7 ||
        !fb_strcaseeq(auth, 7, "Bearer ", 7))
        return 0;
    auth += 7;
    while (*auth == ' ')
        auth++;
    return strcmp(auth, key) == 0;
}

/* Anthropic takes the key in x-api-key, and its current SDKs (1.x) send
 * it as "Authorization: Bearer" instead. Every credential header present
 * must carry the key, so a virtual key left beside the real one fails. */
static int anthropic_authed(struct evhttp_request *req, const char *key)
{
    const char *x = header(req, "x-api-key");
    const char *auth = header(req, "Authorization");

    if (x == NULL && auth == NULL)
        return 0;
    return (x == NULL || strcmp(x, key) == 0) &&
           (auth == NULL || bearer_is(auth, key));
}

static void replace_str(char **slot, const char *v)
{
    free(*slot);
    *slot = v != NULL ? fb_strndup(v, strlen(v)) : NULL;
}

/* Word i of answer callno. The answer reads "fake answer #CALLNO w3 w4
 * ..." so each one is distinct and has exactly one word per token. */
static int word_put(struct evbuffer *out, int64_t i, int64_t callno)
{
    if (i == 0)
        return evbuffer_add(out, "fake", 4);
    if (i == 1)
        return evbuffer_add(out, " answer", 7);
    if (i == 2)
        return evbuffer_add_printf(out, " #%" PRId64, callno) < 0 ? -1 : 0;
    return evbuffer_add_printf(out, " w%" PRId64, i) < 0 ? -1 : 0;
}

/* Words [from, to) of answer callno as a JSON string; NULL on ENOMEM. */
static json_t *words_json(int64_t from, int64_t to, int64_t callno)
{
    struct evbuffer *b = evbuffer_new();
    json_t *s = NULL;
    size_t len;

    if (b == NULL)
        goto out;
    for (int64_t i = from; i < to; i++)
        if (word_put(b, i, callno) != 0)
            goto out;
    len = evbuffer_get_length(b);
    s = json_stringn(len > 0 ? (const char *)evbuffer_pullup(b, -1) : "", len);
out:
    if (b != NULL)
        evbuffer_free(b);
    return s;
}

static char *id_str(const char *prefix, int64_t n, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s%" PRId64, prefix, n);
    return buf;
}

/* ---- replies ---------------------------------------------------------- */

/* Set a complete JSON reply; steals body. Status 500 with an empty body if
 * the JSON could not be built. */
static void reply_json(fake_op *op, int status, json_t *body)
{
    char *text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;

    json_decref(body);
    evbuffer_drain(op->body, evbuffer_get_length(op->body));
    op->streaming = 0;
    op->status = status;
    if (text == NULL) {
        op->status = 500;
        return;
    }
    if (evbuffer_add(op->body, text, strlen(text)) != 0)
        op->status = 500;
    free(text);
}

/* Queue ev as the next SSE event of a streaming reply; takes ev, even on
 * failure. Returns -1 on ENOMEM. */
static int events_push(fake_op *op, struct evbuffer *ev)
{
    if (op->nevents == op->capevents) {
        size_t cap = op->capevents ? op->capevents * 2 : 16;
        struct evbuffer **n = realloc(op->events, cap * sizeof(*n));
        if (n == NULL) {
            evbuffer_free(ev);
            return -1;
        }
        op->events = n;
        op->capevents = cap;
    }
    op->events[op->nevents++] = ev;
    op->streaming = 1;
    op->status = 200;
    return 0;
}

/* Append one SSE event ("event: NAME\n" only when name is not NULL);
 * steals data. Returns -1 on ENOMEM. */
static int reply_event(fake_op *op, const char *name, json_t *data)
{
    char *text = data != NULL ? json_dumps(data, JSON_COMPACT) : NULL;
    struct evbuffer *ev = NULL;
    int rc = -1;

    json_decref(data);
    if (text == NULL)
        goto out;
    ev = evbuffer_new();
    if (ev == NULL)
        goto out;
    if (name != NULL && evbuffer_add_printf(ev, "event: %s\n", name) < 0)
        goto out;
    if (evbuffer_add_printf(ev, "data: %s\n\n", text) < 0)
        goto out;
    rc = events_push(op, ev);
    ev = NULL;
out:
    if (ev != NULL)
        evbuffer_free(ev);
    free(text);
    return rc;
}

static int reply_raw_event(fake_op *op, const char *text)
{
    struct evbuffer *ev = evbuffer_new();

    if (ev == NULL)
        return -1;
    if (evbuffer_add(ev, text, strlen(text)) != 0) {
        evbuffer_free(ev);
        return -1;
    }
    return events_push(op, ev);
}

static void openai_error(fake_op *op, int status, const char *msg,
                         const char *type, const char *param, const char *code)
{
    reply_json(op, status,
               json_pack("{s:{s:s,s:s,s:s?,s:s?}}", "error", "message", msg,
                         "type", type, "param", param, "code", code));
}

static void anthropic_error(fake_op *op, int status, const char *type,
                            const char *msg)
{
    reply_json(op, status,
               json_pack("{s:s,s:{s:s,s:s}}", "type", "error", "error", "type",
                         type, "message", msg));
}

static void generic_error(fake_op *op, int status, const char *msg)
{
    reply_json(op, status,
               json_pack("{s:b,s:{s:i,s:s}}", "ok", 0, "error", "status",
                         status, "message", msg));
}

/* A client error in the shape of the provider the request was for. */
static void bad_request(fake_op *op, int status, const char *msg,
                        const char *param, const char *code)
{
    switch (op->kind) {
    case KIND_OPENAI:
        openai_error(op, status, msg, "invalid_request_error", param, code);
        break;
    case KIND_ANTHROPIC:
        anthropic_error(
            op, status,
            status == 404 ? "not_found_error" : "invalid_request_error", msg);
        break;
    case KIND_GENERIC:
        generic_error(op, status, msg);
        break;
    }
}

/* The error an injected status=CODE fault answers with. */
static void fault_error(fake_op *op, int status, int context)
{
    if (op->kind == KIND_GENERIC) {
        generic_error(op, status, "fake: injected failure");
        return;
    }
    if (op->kind == KIND_ANTHROPIC) {
        const char *type = "api_error";
        const char *msg = "Internal server error";
        if (status == 400 && context) {
            type = "invalid_request_error";
            msg = "prompt is too long: 250000 tokens > 200000 maximum";
        } else if (status == 401) {
            type = "authentication_error";
            msg = "invalid x-api-key";
        } else if (status == 403) {
            type = "permission_error";
            msg = "Your API key does not have permission to use the "
                  "specified resource.";
        } else if (status == 404) {
            type = "not_found_error";
            msg = "Not found";
        } else if (status == 413) {
            type = "request_too_large";
            msg = "Request exceeds the maximum allowed number of bytes.";
        } else if (status == 429) {
            type = "rate_limit_error";
            msg = "Number of requests has exceeded your rate limit.";
        } else if (status == 529) {
            type = "overloaded_error";
            msg = "Overloaded";
        } else if (status < 500) {
            type = "invalid_request_error";
            msg = "fake: injected bad request";
        }
        anthropic_error(op, status, type, msg);
        return;
    }
    if (status == 400 && context)
        openai_error(op, status,
                     "This model's maximum context length is 128000 tokens. "
                     "However, your messages resulted in 250000 tokens. "
                     "Please reduce the length of the messages.",
                     "invalid_request_error", "messages",
                     "context_length_exceeded");
    else if (status == 401)
        openai_error(op, status, "Incorrect API key provided.",
                     "invalid_request_error", NULL, "invalid_api_key");
    else if (status == 429)
        openai_error(op, status,
                     "Rate limit reached for requests. Please try again in "
                     "1s.",
                     "requests", NULL, "rate_limit_exceeded");
    else if (status == 503)
        openai_error(op, status, "The server is overloaded or not ready yet.",
                     "server_error", NULL, NULL);
    else if (status >= 500)
        openai_error(op, status,
                     "The server had an error while processing your "
                     "request. Sorry about that!",
                     "server_error", NULL, NULL);
    else
        openai_error(op, status, "fake: injected bad request",
                     "invalid_request_error", NULL, NULL);
}

/* ---- billing ---------------------------------------------------------- */

/* total += a * n, checked. */
static fb_err add_mul(fb_money *total, fb_money a, int64_t n)
{
    fb_money part;
    fb_err err = fb_money_mul(a, n, &part);
    if (err == FB_OK)
        err = fb_money_add(*total, part, total);
    return err;
}

/* Record one generated answer of cost and return its CALLNO, or -1 when
 * the total would overflow (the caller answers 500, unbilled). */
static int64_t bill(fake_srv *srv, fb_money cost)
{
    fb_money total;

    if (fb_money_add(srv->billed, cost, &total) != FB_OK)
        return -1;
    srv->billed = total;
    srv->calls++;
    return ++srv->seq;
}

/* ---- faults ----------------------------------------------------------- */

/* Merge a fault list such as "delay_ms=200,status=503" into f. On error
 * why gets the offending item. */
static int fault_parse(const char *s, fake_fault *f, char *why, size_t whycap)
{
    while (*s != '\0') {
        const char *end = strchr(s, ',');
        size_t len = end != NULL ? (size_t)(end - s) : strlen(s);
        const char *eq;
        size_t klen;
        int64_t v = 0;
        int ok = 0;

        while (len > 0 && *s == ' ') {
            s++;
            len--;
        }
        while (len > 0 && s[len - 1] == ' ')
            len--;
        eq = memchr(s, '=', len);
        klen = eq != NULL ? (size_t)(eq - s) : len;
        if (len == 0) {
            ok = 1;
        } else if (eq == NULL) {
            if (klen == 5 && memcmp(s, "stall", 5) == 0)
                ok = f->stall = 1;
            else if (klen == 7 && memcmp(s, "context", 7) == 0)
                ok = f->context = 1;
        } else {
            const char *val = eq + 1;
            size_t vlen = len - klen - 1;
            if (klen == 6 && memcmp(s, "status", 6) == 0) {
                ok = parse_i64(val, vlen, 400, 599, &v) == 0;
                f->status = (int)v;
            } else if (klen == 8 && memcmp(s, "delay_ms", 8) == 0) {
                ok = parse_i64(val, vlen, 0, FAKE_MAX_DELAY_MS, &v) == 0;
                f->delay_ms = v;
            } else if (klen == 11 && memcmp(s, "reset_after", 11) == 0) {
                ok = parse_i64(val, vlen, 0, INT64_C(1000000000), &v) == 0;
                f->reset_after = v;
            } else if (klen == 14 && memcmp(s, "chunk_delay_ms", 14) == 0) {
                ok = parse_i64(val, vlen, 0, FAKE_MAX_DELAY_MS, &v) == 0;
                f->chunk_delay_ms = v;
            }
        }
        if (!ok) {
            snprintf(why, whycap, "bad fault \"%.*s\"",
                     (int)(len > 64 ? 64 : len), s);
            return -1;
        }
        if (end == NULL)
            break;
        s = end + 1;
    }
    return 0;
}

/* The faults for one authenticated API request: the head of the queue,
 * then the x-fake-fault header on top. */
static int fault_take(fake_srv *srv, struct evhttp_request *req, fake_fault *f,
                      char *why, size_t whycap)
{
    const char *h = header(req, "x-fake-fault");

    memset(f, 0, sizeof(*f));
    f->reset_after = -1;
    if (srv->nqueue > 0) {
        /* Entries were validated when queued. */
        (void)fault_parse(srv->queue[0].spec, f, why, whycap);
        if (--srv->queue[0].remaining == 0) {
            memmove(&srv->queue[0], &srv->queue[1],
                    (srv->nqueue - 1) * sizeof(srv->queue[0]));
            srv->nqueue--;
        }
    }
    if (h != NULL && fault_parse(h, f, why, whycap) != 0)
        return -1;
    return 0;
}

/* ---- deferred answers (see NOTES ON DEFERRED ANSWERS) ----------------- */

static void op_on_timer(evutil_socket_t fd, short what, void *arg);

static fake_op *op_new(fake_srv *srv, struct evhttp_request *req,
                       fake_kind kind)
{
    fake_op *op = calloc(1, sizeof(*op));

    if (op == NULL)
        return NULL;
    op->srv = srv;
    op->req = req;
    op->kind = kind;
    op->status = 500;
    op->fault.reset_after = -1;
    op->req_seq = ++srv->req_seq;
    op->body = evbuffer_new();
    op->timer = evtimer_new(srv->base, op_on_timer, op);
    if (op->body == NULL || op->timer == NULL) {
        if (op->body != NULL)
            evbuffer_free(op->body);
        if (op->timer != NULL)
            event_free(op->timer);
        free(op);
        return NULL;
    }
    return op;
}

/* Frees the op's own memory; never touches the request. */
static void op_free(fake_op *op)
{
    FB_ASSERT(!op->linked && op->evcon == NULL && op->gone == NULL);
    event_free(op->timer);
    evbuffer_free(op->body);
    for (size_t i = 0; i < op->nevents; i++)
        evbuffer_free(op->events[i]);
    free(op->events);
    free(op);
}

static void op_on_close(struct evhttp_connection *evcon, void *arg);
static void op_on_readable(evutil_socket_t fd, short what, void *arg);

static void op_watch(fake_op *op)
{
    fake_srv *srv = op->srv;
    struct bufferevent *bev;

    if (op->linked)
        return;
    op->evcon = evhttp_request_get_connection(op->req);
    if (op->evcon != NULL) {
        evhttp_connection_set_closecb(op->evcon, op_on_close, op);
        bev = evhttp_connection_get_bufferevent(op->evcon);
        if (bev != NULL && bufferevent_getfd(bev) >= 0)
            op->gone = event_new(srv->base, bufferevent_getfd(bev), EV_READ,
                                 op_on_readable, op);
        /* Without the watch we only notice a departure at the next write
         * (or at shutdown): degraded, not wrong. */
        if (op->gone != NULL)
            event_add(op->gone, NULL);
    }
    op->next = srv->ops;
    op->prev = NULL;
    if (srv->ops != NULL)
        srv->ops->prev = op;
    srv->ops = op;
    op->linked = 1;
}

static void op_unwatch(fake_op *op)
{
    if (op->gone != NULL)
        event_free(op->gone);
    op->gone = NULL;
    if (op->evcon != NULL)
        evhttp_connection_set_closecb(op->evcon, NULL, NULL);
    op->evcon = NULL;
    if (!op->linked)
        return;
    if (op->prev != NULL)
        op->prev->next = op->next;
    else
        op->srv->ops = op->next;
    if (op->next != NULL)
        op->next->prev = op->prev;
    op->linked = 0;
}

static void op_on_close(struct evhttp_connection *evcon, void *arg)
{
    fake_op *op = arg;

    (void)evcon;
    /* Invariant 2: detached means the client left and the request is ours;
     * still attached means the connection is being freed with it. */
    if (evhttp_request_get_connection(op->req) == NULL)
        evhttp_request_free(op->req);
    op->evcon = NULL; /* libevent is tearing it down */
    op_unwatch(op);
    op_free(op);
}

static void op_arm(fake_op *op, int64_t ms)
{
    struct timeval tv;

    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)((ms % 1000) * 1000);
    evtimer_add(op->timer, &tv);
}

static void set_headers(fake_op *op)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(op->req);
    char id[48];

    evhttp_add_header(h, "Content-Type",
                      op->streaming ? "text/event-stream" : "application/json");
    if (op->streaming)
        evhttp_add_header(h, "Cache-Control", "no-cache");
    id_str("req_fake", op->req_seq, id, sizeof(id));
    evhttp_add_header(
        h, op->kind == KIND_ANTHROPIC ? "request-id" : "x-request-id", id);
}

static const char *reason_for(int status)
{
    /* libevent knows the standard phrases; Anthropic's 529 is not one. */
    return status == 529 ? "Overloaded" : NULL;
}

static void op_send(fake_op *op);

/* End op by closing its TCP connection, whatever was sent so far. */
static void op_close(fake_op *op)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(op->req);

    op_unwatch(op);
    if (evcon != NULL)
        evhttp_connection_free(evcon); /* frees the request too */
    else
        evhttp_request_free(op->req);
    op_free(op);
}

static void op_on_readable(evutil_socket_t fd, short what, void *arg)
{
    fake_op *op = arg;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);

    (void)what;
    if (n > 0)
        return; /* the next pipelined request, not a departure: stop */
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        event_add(op->gone, NULL);
        return;
    }
    op_close(op); /* EOF or reset: the client left */
}

static void op_drop(fake_op *op)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(op->req);

    if (evcon != NULL) {
        struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
        /* Let what was already sent (at least the head) reach the client
         * first, so it sees a stream cut short, not a refused request. */
        if (bev != NULL &&
            evbuffer_get_length(bufferevent_get_output(bev)) > 0) {
            op->state = OP_DROP;
            op_arm(op, 1);
            return;
        }
    }
    op_close(op);
}

static void op_on_flushed(struct evhttp_connection *evcon, void *arg)
{
    fake_op *op = arg;

    (void)evcon;
    op_arm(op, op->fault.chunk_delay_ms); /* invariant 3 */
}

static void op_next(fake_op *op)
{
    if (op->fault.reset_after >= 0 &&
        op->sent >= (size_t)op->fault.reset_after) {
        op_drop(op);
        return;
    }
    if (op->sent == op->nevents) {
        op_unwatch(op);
        evhttp_send_reply_end(op->req);
        op_free(op);
        return;
    }
    evhttp_send_reply_chunk_with_cb(op->req, op->events[op->sent++],
                                    op_on_flushed, op);
}

static void op_send(fake_op *op)
{
    if (!op->streaming) {
        op_unwatch(op);
        set_headers(op);
        evhttp_send_reply(op->req, op->status, reason_for(op->status),
                          op->body);
        op_free(op);
        return;
    }
    set_headers(op);
    op_watch(op);
    op->state = OP_STREAM;
    evhttp_send_reply_start(op->req, 200, "OK");
    op_next(op);
}

static void op_on_timer(evutil_socket_t fd, short what, void *arg)
{
    fake_op *op = arg;

    (void)fd;
    (void)what;
    switch (op->state) {
    case OP_DELAY:
        op_send(op);
        break;
    case OP_STREAM:
        op_next(op);
        break;
    case OP_DROP:
        op_drop(op);
        break;
    case OP_NEW:
    case OP_STALL:
        break;
    }
}

/* Start delivering op's answer, honouring stall and delay_ms. */
static void op_begin(fake_op *op)
{
    if (op->fault.stall) {
        op->state = OP_STALL;
        op_watch(op);
        return;
    }
    if (op->fault.delay_ms > 0) {
        op->state = OP_DELAY;
        op_watch(op);
        op_arm(op, op->fault.delay_ms);
        return;
    }
    op_send(op);
}

/* ---- OpenAI chat completions ------------------------------------------ */

/* An optional positive token limit: 0 when absent or null, -1 when bad. */
static int64_t json_limit(json_t *root, const char *key)
{
    json_t *v = json_object_get(root, key);

    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 1)
        return -1;
    return (int64_t)json_integer_value(v);
}

/* Completion tokens wanted: 16, or x-fake-completion-tokens, capped by
 * limit (0: none). *capped tells whether the limit cut it short. */
static int want_tokens(struct evhttp_request *req, int64_t limit, int64_t *out,
                       int *capped)
{
    int64_t want = FAKE_DEFAULT_WORDS;

    if (header_count(req, "x-fake-completion-tokens", &want) != 0 ||
        want > FAKE_MAX_WORDS)
        return -1;
    *capped = limit > 0 && limit < want;
    *out = *capped ? limit : want;
    return 0;
}

static fb_err openai_cost(const fb_price *p, int64_t prompt, int64_t cached,
                          int64_t completion, fb_money *out)
{
    fb_money total = 0;
    fb_err err = add_mul(&total, p->input, prompt - cached);

    if (err == FB_OK)
        err = add_mul(&total, p->cache_read, cached);
    if (err == FB_OK)
        err = add_mul(&total, p->output, completion);
    if (err == FB_OK)
        *out = total;
    return err;
}

static json_t *chat_usage(int64_t prompt, int64_t cached, int64_t completion)
{
    return json_pack("{s:I,s:I,s:I,s:{s:I,s:I},s:{s:I,s:I,s:I,s:I}}",
                     "prompt_tokens", JI(prompt), "completion_tokens",
                     JI(completion), "total_tokens", JI(prompt + completion),
                     "prompt_tokens_details", "cached_tokens", JI(cached),
                     "audio_tokens", JI(0), "completion_tokens_details",
                     "reasoning_tokens", JI(0), "audio_tokens", JI(0),
                     "accepted_prediction_tokens", JI(0),
                     "rejected_prediction_tokens", JI(0));
}

typedef struct chat_gen {
    const char *id;
    const char *model;
    int64_t created;
    int include_usage;
} chat_gen;

/* One chat.completion.chunk; steals choices and usage. usage NULL means
 * "usage":null when include_usage was asked for, else no usage key. */
static json_t *chat_chunk(const chat_gen *g, json_t *choices, json_t *usage)
{
    json_t *c =
        json_pack("{s:s,s:s,s:I,s:s,s:s,s:s,s:o}", "id", g->id, "object",
                  "chat.completion.chunk", "created", JI(g->created), "model",
                  g->model, "service_tier", "default", "system_fingerprint",
                  "fp_fake", "choices", choices);

    if (c != NULL && (g->include_usage || usage != NULL) &&
        json_object_set_new(c, "usage", usage != NULL ? usage : json_null()) !=
            0) {
        json_decref(c);
        return NULL;
    }
    if (c == NULL)
        json_decref(usage);
    return c;
}

static json_t *chat_delta(int64_t index, json_t *delta, const char *finish)
{
    return json_pack("{s:I,s:o,s:n,s:s?}", "index", JI(index), "delta", delta,
                     "logprobs", "finish_reason", finish);
}

static int chat_stream(fake_op *op, const chat_gen *g, int64_t n, int64_t words,
                       int64_t callno, const char *finish, json_t *usage)
{
    int rc = -1;

    for (int64_t c = 0; c < n; c++) {
        json_t *d = json_pack("{s:s,s:s,s:n}", "role", "assistant", "content",
                              "", "refusal");
        if (reply_event(op, NULL,
                        chat_chunk(g, json_pack("[o]", chat_delta(c, d, NULL)),
                                   NULL)) != 0)
            goto out;
    }
    for (int64_t i = 0; i < words; i++) {
        for (int64_t c = 0; c < n; c++) {
            json_t *d =
                json_pack("{s:o}", "content", words_json(i, i + 1, callno));
            if (reply_event(op, NULL,
                            chat_chunk(g,
                                       json_pack("[o]", chat_delta(c, d, NULL)),
                                       NULL)) != 0)
                goto out;
        }
    }
    for (int64_t c = 0; c < n; c++) {
        if (reply_event(
                op, NULL,
                chat_chunk(
                    g, json_pack("[o]", chat_delta(c, json_object(), finish)),
                    NULL)) != 0)
            goto out;
    }
    if (g->include_usage) {
        if (reply_event(op, NULL, chat_chunk(g, json_array(), usage)) != 0) {
            usage = NULL;
            goto out;
        }
        usage = NULL;
    }
    if (reply_raw_event(op, "data: [DONE]\n\n") != 0)
        goto out;
    rc = 0;
out:
    json_decref(usage);
    return rc;
}


/* The price of a model; with --any-model (fusebox run --staging), an
 * unknown model answers too, at no price. */
static const fb_price *fake_price(const fake_srv *srv, const char *model)
{
    static const fb_price zero;
    const fb_price *p = fb_prices_find(srv->prices, model);
    return p != NULL || !srv->any_model ? p : &zero;
}

static void handle_chat(fake_call *fc)
{
    fake_srv *srv = fc->srv;
    fake_op *op = fc->op;
    json_t *root = fc->root;
    json_t *model_j = json_object_get(root, "model");
    json_t *n_j = json_object_get(root, "n");
    json_t *so = json_object_get(root, "stream_options");
    const fb_price *price;
    int stream = json_is_true(json_object_get(root, "stream"));
    int include_usage =
        stream && json_is_true(json_object_get(so, "include_usage"));
    int64_t limit, per_choice, n = 1, prompt, cached = 0, completion, callno;
    int capped;
    fb_money cost;
    char msg[256], id[48];
    const char *finish;
    chat_gen g;

    if (!json_is_string(model_j)) {
        bad_request(op, 400, "you must provide a model parameter", "model",
                    NULL);
        return;
    }
    if (!json_is_array(json_object_get(root, "messages"))) {
        bad_request(op, 400, "Missing required parameter: 'messages'.",
                    "messages", "missing_required_parameter");
        return;
    }
    price = fake_price(srv, json_string_value(model_j));
    if (price == NULL) {
        snprintf(msg, sizeof(msg),
                 "The model `%.100s` does not exist or you do not have "
                 "access to it.",
                 json_string_value(model_j));
        bad_request(op, 404, msg, NULL, "model_not_found");
        return;
    }
    limit = json_limit(root, "max_completion_tokens");
    if (limit == 0)
        limit = json_limit(root, "max_tokens");
    if (limit < 0) {
        bad_request(op, 400, "max_tokens must be an integer of at least 1.",
                    "max_tokens", "integer_below_min_value");
        return;
    }
    if (n_j != NULL && !json_is_null(n_j)) {
        if (!json_is_integer(n_j) || json_integer_value(n_j) < 1 ||
            json_integer_value(n_j) > FAKE_MAX_CHOICES) {
            bad_request(op, 400, "n must be an integer from 1 to 128.", "n",
                        NULL);
            return;
        }
        n = (int64_t)json_integer_value(n_j);
    }
    if (want_tokens(fc->req, limit, &per_choice, &capped) != 0 ||
        header_count(fc->req, "x-fake-cached-tokens", &cached) != 0) {
        bad_request(op, 400, "fake: bad x-fake-* token header", NULL, NULL);
        return;
    }
    prompt = body_tokens(fc->body_len);
    cached = min64(cached, prompt);
    completion = per_choice * n;
    if (openai_cost(price, prompt, cached, completion, &cost) != FB_OK ||
        (callno = bill(srv, cost)) < 0) {
        openai_error(op, 500, "fake: cost overflow", "server_error", NULL,
                     NULL);
        return;
    }
    finish = capped ? "length" : "stop";
    g.id = id_str("chatcmpl-fake", callno, id, sizeof(id));
    g.model = json_string_value(model_j);
    g.created = (int64_t)time(NULL);
    g.include_usage = include_usage;
    if (stream) {
        if (chat_stream(op, &g, n, per_choice, callno, finish,
                        chat_usage(prompt, cached, completion)) != 0)
            reply_json(op, 500, NULL);
        return;
    }
    {
        json_t *choices = json_array();
        for (int64_t c = 0; choices != NULL && c < n; c++) {
            json_t *ch =
                json_pack("{s:I,s:{s:s,s:o,s:n,s:[]},s:n,s:s}", "index", JI(c),
                          "message", "role", "assistant", "content",
                          words_json(0, per_choice, callno), "refusal",
                          "annotations", "logprobs", "finish_reason", finish);
            if (json_array_append_new(choices, ch) != 0) {
                json_decref(choices);
                choices = NULL;
            }
        }
        reply_json(
            op, 200,
            json_pack("{s:s,s:s,s:I,s:s,s:o,s:o,s:s,s:s}", "id", g.id, "object",
                      "chat.completion", "created", JI(g.created), "model",
                      g.model, "choices", choices, "usage",
                      chat_usage(prompt, cached, completion), "service_tier",
                      "default", "system_fingerprint", "fp_fake"));
    }
}

/* ---- OpenAI responses ------------------------------------------------- */

typedef struct resp_gen {
    char id[48];
    char msg_id[48];
    const char *model;
    int64_t created, limit, input, cached, output, callno;
    int capped;
} resp_gen;

static json_t *resp_usage(const resp_gen *g)
{
    return json_pack("{s:I,s:{s:I},s:I,s:{s:I},s:I}", "input_tokens",
                     JI(g->input), "input_tokens_details", "cached_tokens",
                     JI(g->cached), "output_tokens", JI(g->output),
                     "output_tokens_details", "reasoning_tokens", JI(0),
                     "total_tokens", JI(g->input + g->output));
}

static json_t *resp_part(const resp_gen *g, int full)
{
    return json_pack("{s:s,s:o,s:[],s:[]}", "type", "output_text", "text",
                     words_json(0, full ? g->output : 0, g->callno),
                     "annotations", "logprobs");
}

static json_t *resp_item(const resp_gen *g, int done)
{
    json_t *content = done ? json_pack("[o]", resp_part(g, 1)) : json_array();
    return json_pack(
        "{s:s,s:s,s:s,s:s,s:o}", "id", g->msg_id, "type", "message", "status",
        done ? (g->capped ? "incomplete" : "completed") : "in_progress", "role",
        "assistant", "content", content);
}

/* The response object; done adds the output and usage. */
static json_t *resp_object(const resp_gen *g, int done)
{
    const char *status = "in_progress";
    json_t *incomplete = json_null();

    if (done && g->capped) {
        status = "incomplete";
        json_decref(incomplete);
        incomplete = json_pack("{s:s}", "reason", "max_output_tokens");
    } else if (done) {
        status = "completed";
    }
    return json_pack(
        "{s:s,s:s,s:I,s:s,s:b,s:n,s:o,s:n,s:o,s:s,s:o,s:b,s:n,s:{s:n,s:n},"
        "s:s,s:b,s:f,s:{s:{s:s}},s:s,s:[],s:f,s:s,s:o,s:n,s:{}}",
        "id", g->id, "object", "response", "created_at", JI(g->created),
        "status", status, "background", 0, "error", "incomplete_details",
        incomplete, "instructions", "max_output_tokens",
        g->limit > 0 ? json_integer(JI(g->limit)) : json_null(), "model",
        g->model, "output",
        done ? json_pack("[o]", resp_item(g, 1)) : json_array(),
        "parallel_tool_calls", 1, "previous_response_id", "reasoning", "effort",
        "summary", "service_tier", "default", "store", 1, "temperature", 1.0,
        "text", "format", "type", "text", "tool_choice", "auto", "tools",
        "top_p", 1.0, "truncation", "disabled", "usage",
        done ? resp_usage(g) : json_null(), "user", "metadata");
}

/* One Responses API event; steals extra's members into the event. */
static int resp_event(fake_op *op, const char *type, int64_t *seq,
                      json_t *extra)
{
    json_t *ev =
        json_pack("{s:s,s:I}", "type", type, "sequence_number", JI(*seq));

    (*seq)++;
    if (ev == NULL || extra == NULL || json_object_update(ev, extra) != 0) {
        json_decref(ev);
        json_decref(extra);
        return -1;
    }
    json_decref(extra);
    return reply_event(op, type, ev);
}

static int resp_stream(fake_op *op, const resp_gen *g)
{
    int64_t seq = 0;
    const char *item_id = g->msg_id;

    if (resp_event(op, "response.created", &seq,
                   json_pack("{s:o}", "response", resp_object(g, 0))) != 0 ||
        resp_event(op, "response.in_progress", &seq,
                   json_pack("{s:o}", "response", resp_object(g, 0))) != 0 ||
        resp_event(op, "response.output_item.added", &seq,
                   json_pack("{s:I,s:o}", "output_index", JI(0), "item",
                             resp_item(g, 0))) != 0 ||
        resp_event(op, "response.content_part.added", &seq,
                   json_pack("{s:s,s:I,s:I,s:o}", "item_id", item_id,
                             "output_index", JI(0), "content_index", JI(0),
                             "part", resp_part(g, 0))) != 0)
        return -1;
    for (int64_t i = 0; i < g->output; i++) {
        if (resp_event(op, "response.output_text.delta", &seq,
                       json_pack("{s:s,s:I,s:I,s:o,s:[]}", "item_id", item_id,
                                 "output_index", JI(0), "content_index", JI(0),
                                 "delta", words_json(i, i + 1, g->callno),
                                 "logprobs")) != 0)
            return -1;
    }
    if (resp_event(op, "response.output_text.done", &seq,
                   json_pack("{s:s,s:I,s:I,s:o,s:[]}", "item_id", item_id,
                             "output_index", JI(0), "content_index", JI(0),
                             "text", words_json(0, g->output, g->callno),
                             "logprobs")) != 0 ||
        resp_event(op, "response.content_part.done", &seq,
                   json_pack("{s:s,s:I,s:I,s:o}", "item_id", item_id,
                             "output_index", JI(0), "content_index", JI(0),
                             "part", resp_part(g, 1))) != 0 ||
        resp_event(op, "response.output_item.done", &seq,
                   json_pack("{s:I,s:o}", "output_index", JI(0), "item",
                             resp_item(g, 1))) != 0 ||
        resp_event(op, g->capped ? "response.incomplete" : "response.completed",
                   &seq,
                   json_pack("{s:o}", "response", resp_object(g, 1))) != 0)
        return -1;
    return 0;
}

static void handle_responses(fake_call *fc)
{
    fake_srv *srv = fc->srv;
    fake_op *op = fc->op;
    json_t *root = fc->root;
    json_t *model_j = json_object_get(root, "model");
    json_t *input_j = json_object_get(root, "input");
    const fb_price *price;
    fb_money cost;
    char msg[256];
    resp_gen g;

    memset(&g, 0, sizeof(g));
    if (!json_is_string(model_j)) {
        bad_request(op, 400, "Missing required parameter: 'model'.", "model",
                    "missing_required_parameter");
        return;
    }
    if (!json_is_string(input_j) && !json_is_array(input_j)) {
        bad_request(op, 400, "Missing required parameter: 'input'.", "input",
                    "missing_required_parameter");
        return;
    }
    price = fake_price(srv, json_string_value(model_j));
    if (price == NULL) {
        snprintf(msg, sizeof(msg),
                 "The model `%.100s` does not exist or you do not have "
                 "access to it.",
                 json_string_value(model_j));
        bad_request(op, 404, msg, NULL, "model_not_found");
        return;
    }
    g.limit = json_limit(root, "max_output_tokens");
    if (g.limit < 0) {
        bad_request(op, 400,
                    "max_output_tokens must be an integer of at least 1.",
                    "max_output_tokens", "integer_below_min_value");
        return;
    }
    if (want_tokens(fc->req, g.limit, &g.output, &g.capped) != 0 ||
        header_count(fc->req, "x-fake-cached-tokens", &g.cached) != 0) {
        bad_request(op, 400, "fake: bad x-fake-* token header", NULL, NULL);
        return;
    }
    g.input = body_tokens(fc->body_len);
    g.cached = min64(g.cached, g.input);
    if (openai_cost(price, g.input, g.cached, g.output, &cost) != FB_OK ||
        (g.callno = bill(srv, cost)) < 0) {
        openai_error(op, 500, "fake: cost overflow", "server_error", NULL,
                     NULL);
        return;
    }
    id_str("resp_fake", g.callno, g.id, sizeof(g.id));
    id_str("msg_fake", g.callno, g.msg_id, sizeof(g.msg_id));
    g.model = json_string_value(model_j);
    g.created = (int64_t)time(NULL);
    if (json_is_true(json_object_get(root, "stream"))) {
        if (resp_stream(op, &g) != 0)
            reply_json(op, 500, NULL);
        return;
    }
    reply_json(op, 200, resp_object(&g, 1));
}

/* ---- OpenAI embeddings ------------------------------------------------ */

static void base64_put(struct evbuffer *out, const unsigned char *p, size_t len)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char q[4];

    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)p[i] << 16;
        if (i + 1 < len)
            v |= (unsigned)p[i + 1] << 8;
        if (i + 2 < len)
            v |= p[i + 2];
        q[0] = tab[(v >> 18) & 63];
        q[1] = tab[(v >> 12) & 63];
        q[2] = i + 1 < len ? tab[(v >> 6) & 63] : '=';
        q[3] = i + 2 < len ? tab[v & 63] : '=';
        evbuffer_add(out, q, 4);
    }
}

/* A small deterministic vector; multiples of 1/1024 print exactly. */
static json_t *embedding(int64_t callno, int64_t idx, int base64)
{
    unsigned char raw[FAKE_EMBED_DIM * 4];
    json_t *arr = base64 ? NULL : json_array();
    struct evbuffer *b = NULL;
    json_t *res = NULL;

    for (int k = 0; k < FAKE_EMBED_DIM; k++) {
        float f = (float)(((callno + idx * 3 + k * 5) % 41) - 20) / 1024.0f;
        uint32_t u;
        memcpy(&u, &f, sizeof(u));
        /* The SDK decodes base64 as little-endian float32. */
        for (int j = 0; j < 4; j++)
            raw[k * 4 + j] = (unsigned char)(u >> (8 * j));
        if (arr != NULL && json_array_append_new(arr, json_real(f)) != 0)
            goto out;
    }
    if (!base64) {
        res = arr;
        arr = NULL;
        goto out;
    }
    b = evbuffer_new();
    if (b == NULL)
        goto out;
    base64_put(b, raw, sizeof(raw));
    res = json_stringn((const char *)evbuffer_pullup(b, -1),
                       evbuffer_get_length(b));
out:
    json_decref(arr);
    if (b != NULL)
        evbuffer_free(b);
    return res;
}

static void handle_embeddings(fake_call *fc)
{
    fake_srv *srv = fc->srv;
    fake_op *op = fc->op;
    json_t *root = fc->root;
    json_t *model_j = json_object_get(root, "model");
    json_t *input_j = json_object_get(root, "input");
    json_t *fmt = json_object_get(root, "encoding_format");
    json_t *data = NULL;
    const fb_price *price;
    int64_t prompt, callno, count = 1;
    int base64 = 0;
    fb_money cost = 0;
    char msg[256];

    if (!json_is_string(model_j)) {
        bad_request(op, 400, "you must provide a model parameter", "model",
                    NULL);
        return;
    }
    if (!json_is_string(input_j) && !json_is_array(input_j)) {
        bad_request(op, 400, "'input' is a required property", "input", NULL);
        return;
    }
    if (fmt != NULL && !json_is_null(fmt)) {
        if (json_is_string(fmt) &&
            strcmp(json_string_value(fmt), "base64") == 0)
            base64 = 1;
        else if (!json_is_string(fmt) ||
                 strcmp(json_string_value(fmt), "float") != 0) {
            bad_request(op, 400, "encoding_format must be float or base64",
                        "encoding_format", NULL);
            return;
        }
    }
    price = fake_price(srv, json_string_value(model_j));
    if (price == NULL) {
        snprintf(msg, sizeof(msg),
                 "The model `%.100s` does not exist or you do not have "
                 "access to it.",
                 json_string_value(model_j));
        bad_request(op, 404, msg, NULL, "model_not_found");
        return;
    }
    /* A list of strings (or of token arrays) gets one vector each; a flat
     * token array is a single input. */
    if (json_is_array(input_j) && json_array_size(input_j) > 0 &&
        !json_is_integer(json_array_get(input_j, 0)))
        count = (int64_t)json_array_size(input_j);
    prompt = body_tokens(fc->body_len);
    if (add_mul(&cost, price->input, prompt) != FB_OK ||
        (callno = bill(srv, cost)) < 0) {
        openai_error(op, 500, "fake: cost overflow", "server_error", NULL,
                     NULL);
        return;
    }
    data = json_array();
    for (int64_t i = 0; data != NULL && i < count; i++) {
        json_t *e = json_pack("{s:s,s:I,s:o}", "object", "embedding", "index",
                              JI(i), "embedding", embedding(callno, i, base64));
        if (json_array_append_new(data, e) != 0) {
            json_decref(data);
            data = NULL;
        }
    }
    reply_json(op, 200,
               json_pack("{s:s,s:o,s:s,s:{s:I,s:I}}", "object", "list", "data",
                         data, "model", json_string_value(model_j), "usage",
                         "prompt_tokens", JI(prompt), "total_tokens",
                         JI(prompt)));
}

/* ---- Anthropic messages ----------------------------------------------- */

typedef struct msg_gen {
    char id[48];
    const char *model;
    int64_t input, cache_write, cache_read, output, callno;
    const char *stop;
} msg_gen;

static json_t *msg_usage(const msg_gen *g, int64_t output)
{
    return json_pack("{s:I,s:I,s:I,s:I}", "input_tokens", JI(g->input),
                     "cache_creation_input_tokens", JI(g->cache_write),
                     "cache_read_input_tokens", JI(g->cache_read),
                     "output_tokens", JI(output));
}

static json_t *msg_object(const msg_gen *g, int done)
{
    json_t *content = done ? json_pack("[{s:s,s:o}]", "type", "text", "text",
                                       words_json(0, g->output, g->callno))
                           : json_array();
    return json_pack("{s:s,s:s,s:s,s:s,s:o,s:s?,s:n,s:o}", "id", g->id, "type",
                     "message", "role", "assistant", "model", g->model,
                     "content", content, "stop_reason", done ? g->stop : NULL,
                     "stop_sequence", "usage",
                     msg_usage(g, done ? g->output : 1));
}

/* One Anthropic event, "type" first as the API sends it; steals data. */
static int msg_event(fake_op *op, const char *type, json_t *data)
{
    json_t *ev = json_pack("{s:s}", "type", type);

    if (ev == NULL || data == NULL || json_object_update(ev, data) != 0) {
        json_decref(ev);
        json_decref(data);
        return -1;
    }
    json_decref(data);
    return reply_event(op, type, ev);
}

static int msg_stream(fake_op *op, const msg_gen *g)
{
    if (msg_event(op, "message_start",
                  json_pack("{s:o}", "message", msg_object(g, 0))) != 0 ||
        msg_event(op, "content_block_start",
                  json_pack("{s:I,s:{s:s,s:s}}", "index", JI(0),
                            "content_block", "type", "text", "text", "")) !=
            0 ||
        msg_event(op, "ping", json_object()) != 0)
        return -1;
    for (int64_t i = 0; i < g->output; i++) {
        if (msg_event(op, "content_block_delta",
                      json_pack("{s:I,s:{s:s,s:o}}", "index", JI(0), "delta",
                                "type", "text_delta", "text",
                                words_json(i, i + 1, g->callno))) != 0)
            return -1;
    }
    if (msg_event(op, "content_block_stop",
                  json_pack("{s:I}", "index", JI(0))) != 0 ||
        msg_event(op, "message_delta",
                  json_pack("{s:{s:s,s:n},s:{s:I}}", "delta", "stop_reason",
                            g->stop, "stop_sequence", "usage", "output_tokens",
                            JI(g->output))) != 0 ||
        msg_event(op, "message_stop", json_object()) != 0)
        return -1;
    return 0;
}

static void handle_messages(fake_call *fc)
{
    fake_srv *srv = fc->srv;
    fake_op *op = fc->op;
    json_t *root = fc->root;
    json_t *model_j = json_object_get(root, "model");
    json_t *max_j = json_object_get(root, "max_tokens");
    const fb_price *price;
    fb_money cost = 0;
    fb_err err;
    int64_t total;
    int capped;
    char msg[256];
    msg_gen g;

    memset(&g, 0, sizeof(g));
    if (!json_is_string(model_j)) {
        bad_request(op, 400, "model: Field required", NULL, NULL);
        return;
    }
    if (max_j == NULL) {
        bad_request(op, 400, "max_tokens: Field required", NULL, NULL);
        return;
    }
    if (!json_is_integer(max_j) || json_integer_value(max_j) < 1) {
        bad_request(op, 400, "max_tokens: must be an integer of at least 1",
                    NULL, NULL);
        return;
    }
    if (!json_is_array(json_object_get(root, "messages"))) {
        bad_request(op, 400, "messages: Field required", NULL, NULL);
        return;
    }
    price = fake_price(srv, json_string_value(model_j));
    if (price == NULL) {
        snprintf(msg, sizeof(msg), "model: %.100s", json_string_value(model_j));
        bad_request(op, 404, msg, NULL, NULL);
        return;
    }
    if (want_tokens(fc->req, (int64_t)json_integer_value(max_j), &g.output,
                    &capped) != 0 ||
        header_count(fc->req, "x-fake-cached-tokens", &g.cache_read) != 0 ||
        header_count(fc->req, "x-fake-cache-write-tokens", &g.cache_write) !=
            0) {
        bad_request(op, 400, "fake: bad x-fake-* token header", NULL, NULL);
        return;
    }
    /* Anthropic reports cached input beside, not inside, input_tokens. */
    total = body_tokens(fc->body_len);
    g.input = total - g.cache_read - g.cache_write;
    if (g.input < 0)
        g.input = 0;
    err = add_mul(&cost, price->input, g.input);
    if (err == FB_OK)
        err = add_mul(&cost, price->cache_write, g.cache_write);
    if (err == FB_OK)
        err = add_mul(&cost, price->cache_read, g.cache_read);
    if (err == FB_OK)
        err = add_mul(&cost, price->output, g.output);
    if (err != FB_OK || (g.callno = bill(srv, cost)) < 0) {
        anthropic_error(op, 500, "api_error", "fake: cost overflow");
        return;
    }
    id_str("msg_fake", g.callno, g.id, sizeof(g.id));
    g.model = json_string_value(model_j);
    g.stop = capped ? "max_tokens" : "end_turn";
    if (json_is_true(json_object_get(root, "stream"))) {
        if (msg_stream(op, &g) != 0)
            reply_json(op, 500, NULL);
        return;
    }
    reply_json(op, 200, msg_object(&g, 1));
}

/* ---- generic per-call API --------------------------------------------- */

/* The count a generic call is billed for: the configured field of the
 * JSON body (an integer >= 0 or an array's length) or of the query string
 * for a bodiless request; 1 when absent. -1 when malformed. */
static int64_t generic_count(fake_call *fc)
{
    const char *field = fc->srv->count_field;
    json_t *v;
    int64_t n = 1;

    if (field == NULL)
        return 1;
    if (fc->root == NULL) {
        const char *q =
            evhttp_uri_get_query(evhttp_request_get_evhttp_uri(fc->req));
        struct evkeyvalq kv;
        const char *s;
        if (q == NULL)
            return 1;
        kv.tqh_first = NULL;
        kv.tqh_last = &kv.tqh_first;
        if (evhttp_parse_query_str(q, &kv) != 0) {
            evhttp_clear_headers(&kv);
            return -1;
        }
        s = evhttp_find_header(&kv, field);
        if (s != NULL &&
            parse_i64(s, strlen(s), 0, INT64_C(1000000000), &n) != 0)
            n = -1;
        evhttp_clear_headers(&kv);
        return n;
    }
    v = json_object_get(fc->root, field);
    if (v == NULL || json_is_null(v))
        return 1;
    if (json_is_array(v))
        return (int64_t)json_array_size(v);
    if (json_is_integer(v) && json_integer_value(v) >= 0)
        return (int64_t)json_integer_value(v);
    return -1;
}

static void handle_generic(fake_call *fc)
{
    fake_srv *srv = fc->srv;
    fake_op *op = fc->op;
    int64_t count = generic_count(fc), callno;
    fb_money cost = 0;
    char msg[160];

    if (count < 0) {
        snprintf(msg, sizeof(msg),
                 "%.64s must be a non-negative integer or an array",
                 srv->count_field);
        generic_error(op, 400, msg);
        return;
    }
    if (add_mul(&cost, srv->generic_price, count) != FB_OK ||
        (callno = bill(srv, cost)) < 0) {
        generic_error(op, 400, "fake: count too large");
        return;
    }
    reply_json(op, 200,
               json_pack("{s:b,s:I,s:I}", "ok", 1, "call", JI(callno), "count",
                         JI(count)));
}

/* ---- API dispatch ----------------------------------------------------- */

static void note_request(fake_srv *srv, struct evhttp_request *req)
{
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);

    srv->requests++;
    replace_str(&srv->last_auth, header(req, "Authorization"));
    replace_str(&srv->last_x_api_key, header(req, "x-api-key"));
    for (struct evkeyval *kv = h->tqh_first; kv != NULL;
         kv = kv->next.tqe_next) {
        if (strstr(kv->value, "fbk_") != NULL) {
            srv->virtual_key_seen++;
            break;
        }
    }
}

static const char *method_name(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    default:
        return "OTHER";
    }
}

static void handle_api(fake_srv *srv, struct evhttp_request *req,
                       const char *path)
{
    fake_call fc;
    fake_kind kind = KIND_OPENAI;
    void (*handler)(fake_call *) = NULL;
    int authed = 0, post = evhttp_request_get_command(req) == EVHTTP_REQ_POST;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    char why[160];
    json_error_t jerr;

    memset(&fc, 0, sizeof(fc));
    fc.srv = srv;
    fc.req = req;
    note_request(srv, req);
    if (strcmp(path, "/v1/messages") == 0) {
        kind = KIND_ANTHROPIC;
        handler = handle_messages;
        authed = anthropic_authed(req, srv->anthropic_key);
    } else if (strncmp(path, "/generic/", 9) == 0) {
        kind = KIND_GENERIC;
        handler = handle_generic;
        authed = bearer_is(header(req, "Authorization"), srv->generic_key);
    } else {
        if (strcmp(path, "/v1/chat/completions") == 0)
            handler = handle_chat;
        else if (strcmp(path, "/v1/responses") == 0)
            handler = handle_responses;
        else if (strcmp(path, "/v1/embeddings") == 0)
            handler = handle_embeddings;
        authed = bearer_is(header(req, "Authorization"), srv->openai_key);
    }
    fc.op = op_new(srv, req, kind);
    if (fc.op == NULL) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    if (handler == NULL) {
        snprintf(why, sizeof(why), "Invalid URL (%s %.100s)",
                 method_name(evhttp_request_get_command(req)), path);
        openai_error(fc.op, 404, why, "invalid_request_error", NULL, NULL);
        goto send;
    }
    /* Real providers check the key before anything else, and an
     * unauthenticated request never reaches the (faulty) backend. */
    if (!authed) {
        srv->unauthorized++;
        if (kind == KIND_ANTHROPIC)
            anthropic_error(fc.op, 401, "authentication_error",
                            "invalid x-api-key");
        else if (kind == KIND_GENERIC)
            generic_error(fc.op, 401, "invalid api key");
        else
            openai_error(fc.op, 401,
                         "Incorrect API key provided. You can find your API "
                         "key at https://platform.openai.com/account/"
                         "api-keys.",
                         "invalid_request_error", NULL, "invalid_api_key");
        goto send;
    }
    if (fault_take(srv, req, &fc.op->fault, why, sizeof(why)) != 0) {
        bad_request(fc.op, 400, why, NULL, NULL);
        fc.op->fault.delay_ms = 0;
        fc.op->fault.stall = 0;
        goto send;
    }
    fc.body_len = evbuffer_get_length(in);
    fc.body = fc.body_len > 0 ? (const char *)evbuffer_pullup(in, -1) : "";
    if (fc.body_len > 0 || kind != KIND_GENERIC)
        fc.root = json_loadb(fc.body, fc.body_len, 0, &jerr);
    /* Counted for every chat stream that reached the provider, faulted or
     * not: the tests ask whether fusebox asked for usage, not what came of
     * it. */
    if (handler == handle_chat &&
        json_is_true(json_object_get(fc.root, "stream")) &&
        json_is_true(json_object_get(json_object_get(fc.root, "stream_options"),
                                     "include_usage")))
        srv->include_usage_seen++;
    if (fc.op->fault.stall)
        goto send; /* never generated, never billed */
    if (fc.op->fault.status != 0) {
        fault_error(fc.op, fc.op->fault.status, fc.op->fault.context);
        goto send;
    }
    if (kind != KIND_GENERIC && !post) {
        bad_request(fc.op, 405, "Method not allowed; use POST", NULL, NULL);
        goto send;
    }
    if (fc.body_len > 0 || kind != KIND_GENERIC) {
        if (!json_is_object(fc.root)) {
            snprintf(why, sizeof(why),
                     "We could not parse the JSON body of your request. "
                     "(%.60s)",
                     fc.root == NULL ? jerr.text : "not an object");
            bad_request(fc.op, 400, why, NULL, NULL);
            goto send;
        }
    }
    handler(&fc);
send:
    json_decref(fc.root);
    op_begin(fc.op);
}

/* ---- control endpoints ------------------------------------------------ */

static void control_reply(struct evhttp_request *req, int status, json_t *body)
{
    struct evbuffer *buf = evbuffer_new();
    char *text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;

    json_decref(body);
    if (buf == NULL || text == NULL ||
        evbuffer_add(buf, text, strlen(text)) != 0) {
        evhttp_send_error(req, 500, NULL);
        goto out;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "application/json");
    evhttp_send_reply(req, status, NULL, buf);
out:
    free(text);
    if (buf != NULL)
        evbuffer_free(buf);
}

static json_t *billing_json(const fake_srv *srv)
{
    char usd[64];
    int64_t pending = 0;

    for (const fake_op *op = srv->ops; op != NULL; op = op->next)
        pending++;
    fb_money_format(srv->billed, usd, sizeof(usd));
    return json_pack(
        "{s:I,s:I,s:s,s:I,s:I,s:I,s:I,s:s?,s:s?,s:I}", "calls", JI(srv->calls),
        "billed_pico", JI(srv->billed), "billed_usd", usd, "requests",
        JI(srv->requests), "unauthorized", JI(srv->unauthorized),
        "virtual_key_seen", JI(srv->virtual_key_seen), "include_usage_seen",
        JI(srv->include_usage_seen), "last_auth", srv->last_auth,
        "last_x_api_key", srv->last_x_api_key, "pending", JI(pending));
}

static json_t *queue_json(const fake_srv *srv)
{
    json_t *q = json_array();

    for (size_t i = 0; q != NULL && i < srv->nqueue; i++) {
        if (json_array_append_new(
                q, json_pack("{s:s,s:I}", "fault", srv->queue[i].spec,
                             "remaining", JI(srv->queue[i].remaining))) != 0) {
            json_decref(q);
            q = NULL;
        }
    }
    return json_pack("{s:o}", "queue", q);
}

static void faults_post(fake_srv *srv, struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    json_t *root = NULL, *count_j;
    const char *spec;
    fake_fault f;
    char why[160];
    int64_t count = 1;

    root = json_loadb(len > 0 ? (const char *)evbuffer_pullup(in, -1) : "", len,
                      0, NULL);
    spec = json_string_value(json_object_get(root, "fault"));
    count_j = json_object_get(root, "count");
    if (spec == NULL || strlen(spec) >= FAKE_FAULT_LEN) {
        control_reply(req, 400,
                      json_pack("{s:s}", "error",
                                "want {\"fault\":\"...\",\"count\":N}"));
        goto out;
    }
    if (count_j != NULL) {
        if (!json_is_integer(count_j) || json_integer_value(count_j) < 1) {
            control_reply(req, 400,
                          json_pack("{s:s}", "error", "count must be >= 1"));
            goto out;
        }
        count = (int64_t)json_integer_value(count_j);
    }
    memset(&f, 0, sizeof(f));
    if (fault_parse(spec, &f, why, sizeof(why)) != 0) {
        control_reply(req, 400, json_pack("{s:s}", "error", why));
        goto out;
    }
    if (srv->nqueue >= FAKE_MAX_QUEUE) {
        control_reply(req, 400, json_pack("{s:s}", "error", "queue full"));
        goto out;
    }
    if (srv->queue == NULL) {
        srv->queue = calloc(FAKE_MAX_QUEUE, sizeof(*srv->queue));
        if (srv->queue == NULL) {
            evhttp_send_error(req, 500, NULL);
            goto out;
        }
    }
    fb_strlcpy(srv->queue[srv->nqueue].spec, spec, FAKE_FAULT_LEN);
    srv->queue[srv->nqueue].remaining = count;
    srv->nqueue++;
    control_reply(req, 200, queue_json(srv));
out:
    json_decref(root);
}

static void handle_control(fake_srv *srv, struct evhttp_request *req,
                           const char *path)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);

    if (strcmp(path, "/_fake/billing") == 0 && cmd == EVHTTP_REQ_GET) {
        control_reply(req, 200, billing_json(srv));
    } else if (strcmp(path, "/_fake/reset") == 0 && cmd == EVHTTP_REQ_POST) {
        srv->calls = srv->billed = srv->requests = srv->unauthorized = 0;
        srv->virtual_key_seen = srv->include_usage_seen = 0;
        replace_str(&srv->last_auth, NULL);
        replace_str(&srv->last_x_api_key, NULL);
        srv->nqueue = 0;
        control_reply(req, 200, billing_json(srv));
    } else if (strcmp(path, "/_fake/faults") == 0 && cmd == EVHTTP_REQ_GET) {
        control_reply(req, 200, queue_json(srv));
    } else if (strcmp(path, "/_fake/faults") == 0 && cmd == EVHTTP_REQ_POST) {
        faults_post(srv, req);
    } else if (strcmp(path, "/_fake/faults") == 0 && cmd == EVHTTP_REQ_DELETE) {
        srv->nqueue = 0;
        control_reply(req, 200, queue_json(srv));
    } else {
        control_reply(req, 404, json_pack("{s:s}", "error", "no such control"));
    }
}

static void on_request(struct evhttp_request *req, void *arg)
{
    fake_srv *srv = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri != NULL ? evhttp_uri_get_path(uri) : NULL;

    if (evhttp_request_get_uri(req) == NULL) {
        /* libevent calls back with the URI cleared when a request failed
         * at the HTTP layer (e.g. body over the limit): just answer. */
        for (fake_op *op = srv->ops; op != NULL; op = op->next) {
            if (op->req == req) {
                op_unwatch(op);
                op_free(op);
                break;
            }
        }
        int code = evhttp_request_get_response_code(req);
        evhttp_send_error(req, code >= 400 ? code : 400, NULL);
        return;
    }
    if (path == NULL || path[0] == '\0')
        path = "/";
    if (strncmp(path, "/_fake/", 7) == 0)
        handle_control(srv, req, path);
    else
        handle_api(srv, req, path);
}

/* ---- process ---------------------------------------------------------- */

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    fake_srv *srv = arg;

    (void)sig;
    (void)what;
    event_base_loopexit(srv->base, NULL);
}

static void print_usage(FILE *f)
{
    fputs("usage: fusebox fake-provider [--listen HOST:PORT] "
          "[--openai-key K]\n"
          "         [--anthropic-key K] [--generic-key K] "
          "[--generic-price USD]\n"
          "         [--generic-count-field NAME] [--prices FILE] [--any-model]\n"
          "A fake OpenAI/Anthropic/per-call provider for tests. Port 0 picks "
          "a free\nport; the ready line is \"fake-provider listening on "
          "HOST:PORT\".\n",
          f);
}

/* Split "HOST:PORT" or "[V6]:PORT" into host (copied) and port. */
static int parse_listen(const char *s, char *host, size_t hostcap,
                        int64_t *port)
{
    const char *colon = strrchr(s, ':');
    const char *h = s;
    size_t hlen;

    if (colon == NULL)
        return -1;
    hlen = (size_t)(colon - s);
    if (hlen >= 2 && s[0] == '[' && s[hlen - 1] == ']') {
        h = s + 1;
        hlen -= 2;
    }
    if (hlen == 0 || hlen >= hostcap)
        return -1;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    return parse_i64(colon + 1, strlen(colon + 1), 0, 65535, port);
}

int fb_fake_main(int argc, char **argv)
{
    fake_srv srv;
    const char *listen_addr = "127.0.0.1:0";
    const char *prices_file = NULL;
    const char *price_str = "0.008";
    struct evhttp_bound_socket *sock;
    struct sockaddr_storage ss = {0};
    socklen_t sslen = sizeof(ss);
    char host[256], errbuf[256];
    int64_t port = 0;
    int rc = 2, bound_port;
    fb_err err;

    memset(&srv, 0, sizeof(srv));
    srv.openai_key = "sk-fake-openai";
    srv.anthropic_key = "sk-fake-anthropic";
    srv.generic_key = "fake-generic-key";

    for (int i = 1; i < argc; i++) {
        static const char *const opts[] = {
            "--listen",      "--openai-key",    "--anthropic-key",
            "--generic-key", "--generic-price", "--generic-count-field",
            "--prices",
        };
        const char *arg = argv[i], *val = NULL;
        size_t k, nlen;

        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            print_usage(stdout);
            rc = 0;
            goto out;
        }
        if (strcmp(arg, "--any-model") == 0) {
            srv.any_model = 1;
            continue;
        }
        for (k = 0; k < FB_ARRAY_LEN(opts); k++) {
            nlen = strlen(opts[k]);
            if (strncmp(arg, opts[k], nlen) == 0 &&
                (arg[nlen] == '\0' || arg[nlen] == '='))
                break;
        }
        if (k == FB_ARRAY_LEN(opts)) {
            fprintf(stderr, "fake-provider: unknown option %s\n", arg);
            print_usage(stderr);
            goto out;
        }
        if (arg[nlen] == '=') {
            val = arg + nlen + 1;
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            fprintf(stderr, "fake-provider: %s needs a value\n", arg);
            goto out;
        }
        switch (k) {
        case 0:
            listen_addr = val;
            break;
        case 1:
            srv.openai_key = val;
            break;
        case 2:
            srv.anthropic_key = val;
            break;
        case 3:
            srv.generic_key = val;
            break;
        case 4:
            price_str = val;
            break;
        case 5:
            srv.count_field = val[0] != '\0' ? val : NULL;
            break;
        case 6:
            prices_file = val;
            break;
        }
    }
    if (parse_listen(listen_addr, host, sizeof(host), &port) != 0) {
        fprintf(stderr, "fake-provider: bad --listen %s (want HOST:PORT)\n",
                listen_addr);
        goto out;
    }
    err = fb_money_parse(price_str, strlen(price_str), &srv.generic_price);
    if (err != FB_OK) {
        fprintf(stderr, "fake-provider: bad --generic-price %s: %s\n",
                price_str, fb_strerror(err));
        goto out;
    }

    rc = 1;
    /* A client that leaves mid-stream must not kill us with SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    srv.prices = fb_prices_new();
    if (srv.prices == NULL) {
        fprintf(stderr, "fake-provider: out of memory\n");
        goto out;
    }
    if (prices_file != NULL &&
        fb_prices_load_file(srv.prices, prices_file, errbuf, sizeof(errbuf)) !=
            FB_OK) {
        fprintf(stderr, "fake-provider: %s\n", errbuf);
        goto out;
    }
    srv.base = event_base_new();
    if (srv.base == NULL)
        goto out;
    srv.http = evhttp_new(srv.base);
    if (srv.http == NULL)
        goto out;
    evhttp_set_max_body_size(srv.http, FAKE_MAX_BODY);
    evhttp_set_max_headers_size(srv.http, FAKE_MAX_HEADERS);
    evhttp_set_timeout(srv.http, FAKE_CONN_TIMEOUT_S);
    evhttp_set_allowed_methods(
        srv.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                      EVHTTP_REQ_DELETE | EVHTTP_REQ_HEAD);
    evhttp_set_gencb(srv.http, on_request, &srv);
    sock = evhttp_bind_socket_with_handle(srv.http, host, (ev_uint16_t)port);
    if (sock == NULL) {
        fprintf(stderr, "fake-provider: cannot listen on %s\n", listen_addr);
        goto out;
    }
    if (getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&ss,
                    &sslen) != 0) {
        fprintf(stderr, "fake-provider: getsockname: %s\n", strerror(errno));
        goto out;
    }
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 a6;
        memcpy(&a6, &ss, sizeof(a6));
        bound_port = ntohs(a6.sin6_port);
    } else {
        struct sockaddr_in a4;
        memcpy(&a4, &ss, sizeof(a4));
        bound_port = ntohs(a4.sin_port);
    }
    srv.sig_term = evsignal_new(srv.base, SIGTERM, on_signal, &srv);
    srv.sig_int = evsignal_new(srv.base, SIGINT, on_signal, &srv);
    if (srv.sig_term == NULL || srv.sig_int == NULL ||
        evsignal_add(srv.sig_term, NULL) != 0 ||
        evsignal_add(srv.sig_int, NULL) != 0)
        goto out;
    printf("fake-provider listening on %s%s%s:%d\n",
           strchr(host, ':') != NULL ? "[" : "", host,
           strchr(host, ':') != NULL ? "]" : "", bound_port);
    fflush(stdout);
    if (event_base_dispatch(srv.base) != 0)
        goto out;
    rc = 0;
out:
    /* Invariant 4: our ops go first; evhttp_free() then frees the
     * connections and the requests still attached to them. */
    for (fake_op *op = srv.ops, *next; op != NULL; op = next) {
        next = op->next;
        if (evhttp_request_get_connection(op->req) == NULL)
            evhttp_request_free(op->req);
        op_unwatch(op);
        op_free(op);
    }
    if (srv.http != NULL)
        evhttp_free(srv.http);
    if (srv.sig_term != NULL)
        event_free(srv.sig_term);
    if (srv.sig_int != NULL)
        event_free(srv.sig_int);
    if (srv.base != NULL)
        event_base_free(srv.base);
    if (srv.prices != NULL)
        fb_prices_free(srv.prices);
    free(srv.last_auth);
    free(srv.last_x_api_key);
    free(srv.queue);
    return rc;
}
