/* gateway.c - fusebox serve: one event loop that authenticates each call,
 * prices its worst case, reserves it in every enclosing budget, makes the
 * reservation durable, forwards the call, and settles to the real cost.
 *
 * NOTES ON THE LIFE OF A PAID CALL
 *
 *   client --> auth --> inspect --> reserve --> ledger insert --+
 *                |          |           |                       |
 *               401        400         402 (row: blocked)       v
 *                                                     durable? --no--> 503
 *                                                        | yes
 *                                                        v
 *                           settle <-- answer <-- upstream call
 *
 *  1. Nothing is sent upstream before the reservation is committed to the
 *     store (ledger.c); a crash after that point leaves a RESERVED row
 *     that the next start charges in full. So the ledger never records
 *     less than the provider billed.
 *  2. The reservation covers the worst case (provider.c), so the sum of
 *     what is in flight can never pass a ceiling (budget.c).
 *  3. A client that leaves does not stop the upstream call: the provider
 *     bills it anyway, so it is read to the end and settled.
 *  4. The provider key comes from the environment and is added here; any
 *     credential the client sent, and any header holding a virtual key,
 *     is dropped before forwarding. */
#include "gateway.h"

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <jansson.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "alerts.h"
#include "budget.h"
#include "journal.h"
#include "json.h"
#include "keys.h"
#include "ledger.h"
#include "log.h"
#include "map.h"
#include "metrics.h"
#include "provider.h"
#include "replay.h"
#include "server.h"
#include "sse.h"
#include "store.h"
#include "upstream.h"

#define MAX_RESPONSE_BYTES (64u << 20) /* a non-stream answer we buffer */
#define MAX_SSE_EVENT (16u << 20)
#define DRAIN_SECONDS 30
/* Past this many bytes waiting for a slow client, stop reading the
 * provider until the client catches up: memory per stream stays bounded. */
#define STREAM_HIGH_WATER (256u << 10)
/* Results larger than this are answered but not kept. */
#define MAX_KEPT_BYTES (16u << 20)

typedef struct gateway {
    const fb_config *c;
    struct event_base *base;
    fb_server *srv;
    fb_upstream *up;
    fb_ledger *ledger;
    fb_budget *budget;
    fb_prices *prices;
    fb_map *keys;          /* SHA-256 (32 bytes) -> fb_key_rec* */
    fb_replay *replay;     /* flights, occurrences, retry budgets, trips */
    fb_metrics *metrics;
    fb_admin *admin;       /* NULL: no admin token, or admin.listen off */
    fb_alerts *alerts;     /* NULL: alerts.enabled false */
    const uint64_t *epoch; /* purge epoch (store.h), mapped; may be NULL */
    uint64_t epoch_seen;
    fb_retry_limits retry;
    char **provider_keys;  /* per provider, from the environment */
    int64_t next_id;
    int64_t node; /* this daemon's number in a cluster (store.h); 0 alone */
    /* a cluster (a shared store): budget slices and heartbeats */
    int shared;
    int fenced;              /* reaped by the others: no more paid calls */
    int beating;             /* a heartbeat is on its way */
    int joining;             /* a new number is on its way (rejoin) */
    int64_t beat_node;       /* the number the heartbeat on its way is for */
    int64_t beat_sent_ns, beat_ok_ns; /* monotonic */
    struct event *beat_timer;
    struct gw_req *lease_wait; /* calls waiting for a slice */
    size_t inflight;
    struct gw_req *live;
    int draining;
    int stopped; /* the front and upstream are gone: settle, don't call */
    int64_t drain_deadline_ns;
    struct event *sig_term, *sig_int, *drain_timer;
} gateway;

typedef struct gw_req {
    gateway *g;
    struct gw_req *prev, *next; /* every call alive, for a forced stop */
    fb_req *req;
    const fb_provider_conf *pc;
    size_t pidx;
    char method[16];
    char *path; /* after /<provider>, with the query */
    fb_key_rec key;
    fb_call call;
    char *new_body;
    const char *body;
    size_t body_len;
    fb_reservation resv;
    int64_t id;
    int64_t ts_ms;
    int64_t start_ns;
    fb_up_req *up;
    int status;
    int streaming;
    int passthrough; /* an SSE event too large to inspect: bytes as is */
    int paused;
    int client_gone;
    struct evbuffer *buf;
    int too_big;
    fb_sse sse;
    fb_usage usage;
    char *resp_headers;
    /* replay */
    int replay;             /* may be answered from, and kept as, a result */
    uint8_t fp[32];
    char rscope[2 * FB_NAME_MAX + 16]; /* "job:T/J", or "key:ID" */
    int64_t seq;            /* the k-th occurrence in this attempt */
    uint8_t flight[32];
    int leading;            /* leads the flight on (rscope, fp, seq) */
    char *idem;             /* Idempotency-Key */
    uint8_t iflight[32];
    int ileading;           /* leads the flight on the Idempotency-Key */
    void (*resume)(struct gw_req *); /* a waiter's next step */
    enum { WAIT_NONE, WAIT_FLIGHT, WAIT_IFLIGHT, WAIT_OCC } waiting;
    int via_idem;           /* answered through its Idempotency-Key */
    int via_cache;          /* answered from the in-memory cache */
    int retry;              /* the client marks it a retry */
    struct evbuffer *keep;  /* a stream's forwarded bytes, to keep */
    char *held;             /* a stream's last event, sent once kept */
    size_t held_len;
    int kept;               /* a result was kept for this call */
    uint8_t fkey[32];       /* (rscope, fp): its transient failures */
    uint8_t occ[32];        /* (rscope, key, fp, attempt): occurrences */
    int occ_taken;          /* seq was taken from the occurrence counter */
    int replayed;           /* answered from a kept result */
    fb_money usage_cost;    /* the settled cost */
    size_t upstream_headers_len; /* a stream's headers before ours */
    struct gw_req *lease_next;   /* in g->lease_wait */
    fb_scope *lease_scope;       /* the scope it waits a slice of */
    const fb_scope *lease_denied; /* its last take found nothing left */
    /* single flight across nodes (a shared store's in-flight markers) */
    int claimed;                 /* holds the marker of (rscope, fp, seq) */
    int iclaimed;                /* holds the marker of its Idempotency-Key */
    int64_t claim_node;          /* as this node (its number may change) */
    struct event *poll_ev;       /* looks again while another node buys */
    int poll_ms;
} gw_req;

static void on_key_lookup(void *arg, fb_err err, const fb_key_rec *k,
                          fb_money window_spent);
static void record(gw_req *gr, fb_entry_state state, int status,
                   fb_money saved, const char *outcome);

static void resume_waiters(gateway *g, const uint8_t key[32])
{
    size_t n = 0;
    void **w = fb_flight_end(g->replay, key, &n);
    /* Each waiter looks again: it finds what the leader kept, or one of
     * them leads the next attempt. */
    for (size_t i = 0; i < n; i++) {
        gw_req *x = w[i];
        x->waiting = WAIT_NONE;
        x->resume(x);
    }
    free(w);
}

static void finish(gw_req *gr)
{
    gateway *g = gr->g;
    if (gr->leading) {
        gr->leading = 0;
        resume_waiters(g, gr->flight);
    }
    if (gr->ileading) {
        gr->ileading = 0;
        resume_waiters(g, gr->iflight);
    }
    if (gr->occ_taken && !gr->kept && !gr->replayed)
        /* Nothing was bought or handed back under this occurrence: the
         * retry of a failed call is the same occurrence again. */
        fb_occ_release(g->replay, gr->occ, gr->seq);
    /* A kept result took its marker with it (result_put); otherwise it
     * goes now, queued after the call's settlement. */
    if (gr->claimed && !gr->kept && g->ledger != NULL)
        fb_ledger_flight_release(g->ledger, gr->claim_node, gr->rscope, gr->fp,
                                 gr->seq);
    if (gr->iclaimed && g->ledger != NULL)
        fb_ledger_flight_release(g->ledger, gr->claim_node, gr->rscope,
                                 gr->iflight, -1);
    if (gr->poll_ev)
        event_free(gr->poll_ev);
    free(gr->idem);
    free(gr->held);
    if (gr->keep)
        evbuffer_free(gr->keep);
    free(gr->new_body);
    free(gr->path);
    free(gr->resp_headers);
    if (gr->buf)
        evbuffer_free(gr->buf);
    fb_sse_free(&gr->sse);
    if (gr->prev)
        gr->prev->next = gr->next;
    else
        g->live = gr->next;
    if (gr->next)
        gr->next->prev = gr->prev;
    free(gr);
    g->inflight--;
}

static void resume_upstream(void *arg)
{
    gw_req *gr = arg;
    if (gr->paused && gr->up != NULL) {
        gr->paused = 0;
        fb_upstream_pause(gr->up, 0);
    }
}

static void on_client_close(void *arg)
{
    gw_req *gr = arg;
    gr->client_gone = 1;
    /* A waiter in a queue holds memory until its leader is done, which
     * may take minutes: one whose client left goes now. */
    int left = 0;
    if (gr->waiting == WAIT_FLIGHT)
        left = fb_flight_leave(gr->g->replay, gr->flight, gr);
    else if (gr->waiting == WAIT_IFLIGHT)
        left = fb_flight_leave(gr->g->replay, gr->iflight, gr);
    else if (gr->waiting == WAIT_OCC)
        left = fb_occ_leave(gr->g->replay, gr->occ, gr);
    if (left) {
        gr->waiting = WAIT_NONE;
        fb_req_reply(gr->req, 499, NULL, NULL, "", 0);
        gr->req = NULL;
        finish(gr);
        return;
    }
    /* Keep reading: the provider bills the whole answer. */
    resume_upstream(gr);
}

/* Errors that retrying cannot fix carry x-should-retry: false, which the
 * official OpenAI and Anthropic SDKs honour. */
static void reply_error(gw_req *gr, int status, const char *type,
                        const char *msg)
{
    /* 409 (an Idempotency-Key in flight) is worth a retry: it replays. */
    int final = status < 500 && status != 409;
    fb_req_error(gr->req, status, type, msg,
                 final ? "x-should-retry: false\r\n" : NULL);
    gr->req = NULL;
}

/* ---- routing and authentication ---- */

static int unsafe_path(const char *p, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++) {
        if (p[i] == '/' && p[i + 1] == '.') {
            size_t j = i + 2;
            if (j < len && p[j] == '.')
                j++;
            if (j == len || p[j] == '/' || p[j] == '?')
                return 1;
        }
        if (p[i] == '%' && i + 2 < len && p[i + 1] == '2' &&
            (p[i + 2] == 'e' || p[i + 2] == 'E'))
            return 1;
    }
    return 0;
}

/* The virtual key from Authorization: Bearer or x-api-key. */
static const char *client_key(const fb_http_req *h, size_t *len)
{
    size_t vl;
    const char *v = fb_http_header_get(h, "authorization", &vl);
    if (v != NULL && vl > 7 && fb_strcaseeq(v, 7, "bearer ", 7)) {
        v += 7;
        vl -= 7;
        while (vl > 0 && *v == ' ') {
            v++;
            vl--;
        }
        *len = vl;
        return v;
    }
    v = fb_http_header_get(h, "x-api-key", &vl);
    *len = vl;
    return v;
}

static void key_scopes(gw_req *gr, fb_scope **scopes, size_t *n)
{
    gateway *g = gr->g;
    char name[2 * FB_NAME_MAX + 16];
    size_t k = 0;
    scopes[k++] = fb_budget_scope(g->budget, "global");
    snprintf(name, sizeof name, "tenant:%s", gr->key.tenant);
    scopes[k++] = fb_budget_scope(g->budget, name);
    if (gr->key.job[0]) {
        snprintf(name, sizeof name, "job:%s/%s", gr->key.tenant, gr->key.job);
        scopes[k++] = fb_budget_scope(g->budget, name);
    }
    snprintf(name, sizeof name, "key:%s", gr->key.id);
    scopes[k++] = fb_budget_scope(g->budget, name);
    for (size_t i = 0; i < k; i++)
        FB_ASSERT(scopes[i] != NULL); /* scopes are tiny; ENOMEM is fatal */
    *n = k;
}

/* ---- the upstream call ---- */

static int hop_header(const char *n, size_t l)
{
    static const char *const drop[] = {
        "connection", "keep-alive", "proxy-connection", "proxy-authorization",
        "te", "trailer", "transfer-encoding", "upgrade", "content-length",
        "host", "expect", "authorization", "x-api-key", "api-key",
        "x-goog-api-key", "accept-encoding", "idempotency-key-fusebox"};
    for (size_t i = 0; i < FB_ARRAY_LEN(drop); i++)
        if (fb_strcaseeq(n, l, drop[i], strlen(drop[i])))
            return 1;
    return l >= 10 && fb_strcaseeq(n, 10, "x-fusebox-", 10);
}

static int holds_virtual_key(const char *v, size_t l)
{
    return memmem(v, l, FB_KEY_PREFIX, 4) != NULL;
}

static struct curl_slist *upstream_headers(gw_req *gr)
{
    const fb_http_req *h = fb_req_head(gr->req);
    struct curl_slist *list = NULL, *t;
    char line[8192];
    for (size_t i = 0; i < h->nheaders; i++) {
        const fb_http_header *x = &h->headers[i];
        const char *ah = gr->pc->auth_header;
        if (hop_header(x->name, x->name_len) ||
            holds_virtual_key(x->value, x->value_len) ||
            (ah != NULL && fb_strcaseeq(x->name, x->name_len, ah, strlen(ah))))
            continue;
        if (x->name_len + x->value_len + 3 > sizeof line)
            continue;
        snprintf(line, sizeof line, "%.*s: %.*s", (int)x->name_len, x->name,
                 (int)x->value_len, x->value);
        if ((t = curl_slist_append(list, line)) == NULL)
            goto fail;
        list = t;
    }
    const char *key = gr->g->provider_keys[gr->pidx];
    if (key != NULL) {
        const fb_provider_conf *pc = gr->pc;
        if (pc->kind == FB_PROVIDER_ANTHROPIC)
            snprintf(line, sizeof line, "x-api-key: %s", key);
        else if (pc->auth_header == NULL ||
                 strcasecmp(pc->auth_header, "authorization") == 0)
            snprintf(line, sizeof line, "Authorization: Bearer %s", key);
        else
            snprintf(line, sizeof line, "%s: %s", pc->auth_header, key);
        t = curl_slist_append(list, line);
        explicit_bzero(line, sizeof line);
        if (t == NULL)
            goto fail;
        list = t;
    }
    if ((t = curl_slist_append(list, "Expect:")) == NULL)
        goto fail;
    return t;
fail:
    curl_slist_free_all(list);
    return NULL;
}

static int drop_response_header(const char *n, size_t l)
{
    static const char *const drop[] = {
        "connection", "keep-alive", "transfer-encoding", "content-length",
        "content-encoding", "date", "server", "trailer", "upgrade"};
    for (size_t i = 0; i < FB_ARRAY_LEN(drop); i++)
        if (fb_strcaseeq(n, l, drop[i], strlen(drop[i])))
            return 1;
    return l >= 10 && fb_strcaseeq(n, 10, "x-fusebox-", 10);
}

static void up_head(void *arg, int status, const fb_up_header *h, size_t n)
{
    gw_req *gr = arg;
    struct evbuffer *hb = evbuffer_new();
    int sse = 0;
    FB_ASSERT(hb != NULL);
    gr->status = status;
    for (size_t i = 0; i < n; i++) {
        if (drop_response_header(h[i].name, h[i].name_len))
            continue;
        if (fb_strcaseeq(h[i].name, h[i].name_len, "content-type", 12) &&
            h[i].value_len >= 17 &&
            fb_strcaseeq(h[i].value, 17, "text/event-stream", 17))
            sse = 1;
        evbuffer_add_printf(hb, "%.*s: %.*s\r\n", (int)h[i].name_len,
                            h[i].name, (int)h[i].value_len, h[i].value);
    }
    size_t len = evbuffer_get_length(hb);
    gr->resp_headers = malloc(len + 1);
    FB_ASSERT(gr->resp_headers != NULL);
    evbuffer_remove(hb, gr->resp_headers, len);
    gr->resp_headers[len] = '\0';
    evbuffer_free(hb);

    if (sse && status >= 200 && status < 300) {
        char amount[32], extra[128];
        gr->streaming = 1;
        fb_sse_init(&gr->sse, MAX_SSE_EVENT);
        if (gr->replay) {
            gr->keep = evbuffer_new();
            FB_ASSERT(gr->keep != NULL);
        }
        fb_money_format(gr->resv.amount, amount, sizeof amount);
        size_t hl = strlen(gr->resp_headers);
        gr->upstream_headers_len = hl; /* what a kept result replays */
        int xl = snprintf(extra, sizeof extra, "x-fusebox-reserved-usd: %s\r\n",
                          amount);
        char *all = realloc(gr->resp_headers, hl + (size_t)xl + 1);
        FB_ASSERT(all != NULL);
        memcpy(all + hl, extra, (size_t)xl + 1);
        gr->resp_headers = all;
        fb_req_stream_begin(gr->req, status, gr->resp_headers, NULL);
    } else {
        gr->buf = evbuffer_new();
        FB_ASSERT(gr->buf != NULL);
    }
}

/* Does some line of the event equal text exactly? (Text inside a JSON
 * string cannot fake a line: its newlines are escaped.) */
static int has_line(const char *ev, size_t len, const char *text)
{
    size_t tl = strlen(text);
    for (size_t i = 0; i + tl <= len;) {
        if ((i == 0 || ev[i - 1] == '\n' || ev[i - 1] == '\r') &&
            memcmp(ev + i, text, tl) == 0 &&
            (i + tl == len || ev[i + tl] == '\n' || ev[i + tl] == '\r'))
            return 1;
        const char *nl = memchr(ev + i, '\n', len - i);
        if (nl == NULL)
            break;
        i = (size_t)(nl - ev) + 1;
    }
    return 0;
}

/* The event that ends a stream: OpenAI's [DONE], Anthropic's
 * message_stop, the Responses API's final response.* event. */
static int is_terminal_event(const char *ev, size_t len)
{
    static const char *const lines[] = {
        "data: [DONE]", "data:[DONE]", "event: message_stop",
        "event: response.completed", "event: response.incomplete",
        "event: response.failed"};
    for (size_t i = 0; i < FB_ARRAY_LEN(lines); i++)
        if (has_line(ev, len, lines[i]))
            return 1;
    return 0;
}

/* One whole SSE event: read its usage, then forward it unless it is the
 * usage-only chunk we asked for on the client's behalf. */
static void stream_event(gw_req *gr, const char *ev, size_t len)
{
    const fb_provider_ops *ops = fb_provider_ops_for(gr->pc->kind);
    int forward = 1;
    if (memmem(ev, len, "usage", 5) != NULL) {
        char small[4096];
        char *data = len < sizeof small ? small : malloc(len + 1);
        if (data != NULL) {
            size_t dl = fb_sse_data(ev, len, data, len + 1);
            ops->usage(data, dl, &gr->usage);
            if (gr->call.usage_injected &&
                fb_provider_usage_only_chunk(data, dl))
                forward = 0;
            if (data != small)
                free(data);
        }
    }
    if (!forward)
        return;
    if (gr->keep != NULL) {
        if (evbuffer_get_length(gr->keep) + len > MAX_KEPT_BYTES) {
            evbuffer_free(gr->keep); /* too large to keep: just pass on */
            gr->keep = NULL;
            fb_req_stream_write(gr->req, gr->held, gr->held_len);
            gr->held_len = 0;
        } else {
            evbuffer_add(gr->keep, ev, len);
        }
    }
    /* The closing event waits until the result is kept: a client that
     * saw the whole stream can always get it again. Anything after it
     * waits too, to keep the order. */
    if (gr->keep != NULL && (gr->held_len > 0 || is_terminal_event(ev, len))) {
        char *h = realloc(gr->held, gr->held_len + len);
        FB_ASSERT(h != NULL);
        memcpy(h + gr->held_len, ev, len);
        gr->held = h;
        gr->held_len += len;
        return;
    }
    fb_req_stream_write(gr->req, ev, len);
}

static void up_data(void *arg, const char *data, size_t len)
{
    gw_req *gr = arg;
    if (!gr->streaming) {
        if (gr->too_big || evbuffer_get_length(gr->buf) + len >
                               MAX_RESPONSE_BYTES) {
            gr->too_big = 1;
            return;
        }
        evbuffer_add(gr->buf, data, len);
        return;
    }
    const char *ev;
    size_t el;
    if (!gr->passthrough && fb_sse_feed(&gr->sse, data, len) != FB_OK) {
        /* An event too large to inspect: from here on, bytes pass as they
         * come, after what was held back (usage may then be missed, and
         * the call is charged its full reservation). */
        size_t rl;
        const char *rest = fb_sse_rest(&gr->sse, &rl);
        fb_req_stream_write(gr->req, gr->held, gr->held_len); /* in order */
        gr->held_len = 0;
        fb_req_stream_write(gr->req, rest, rl);
        fb_sse_free(&gr->sse);
        gr->passthrough = 1;
        if (gr->keep != NULL) { /* cannot be kept whole */
            evbuffer_free(gr->keep);
            gr->keep = NULL;
        }
    }
    if (gr->passthrough)
        fb_req_stream_write(gr->req, data, len);
    else
        while (fb_sse_next(&gr->sse, &ev, &el))
            stream_event(gr, ev, el);
    if (!gr->paused && !gr->client_gone && gr->up != NULL &&
        fb_req_pending_output(gr->req) > STREAM_HIGH_WATER) {
        gr->paused = 1;
        fb_upstream_pause(gr->up, 1);
        fb_req_on_drain(gr->req, resume_upstream, gr);
    }
}

/* A forwarded call is settled: its metrics and its debug log line. */
static void log_call(gw_req *gr, int status, fb_money cost,
                     const char *outcome)
{
    fb_metrics_paid(gr->g->metrics, gr->key.tenant, gr->key.job, cost,
                    gr->retry, fb_mono_ns() - gr->start_ns);
    if (fb_log_enabled(FB_LOG_DEBUG)) {
        char c[32];
        fb_money_format(cost, c, sizeof c);
        fb_log(FB_LOG_DEBUG,
               "call id=%lld tenant=%s job=%s key=%s provider=%s model=%s "
               "status=%d cost_usd=%s outcome=%s ms=%lld",
               (long long)gr->id, gr->key.tenant, gr->key.job, gr->key.id,
               gr->pc->name, gr->call.model, status, c, outcome,
               (long long)((fb_mono_ns() - gr->start_ns) / 1000000));
    }
}

static void settle(gw_req *gr, int status, fb_money cost, const char *outcome)
{
    fb_budget_settle(&gr->resv, cost);
    fb_ledger_settle(gr->g->ledger, gr->id, status, cost, outcome);
    log_call(gr, status, cost, outcome);
}

/* Upstream answers that a retry cannot change, kept like results. Not
 * 401 and 403: those judge the gateway's own provider key (rotated,
 * wrong, not yet allowed), not the request, and must not outlive a fix. */
static int deterministic_error(int status)
{
    return status == 400 || status == 404 || status == 422;
}

static int transient_status(int status)
{
    return status == 408 || status == 429 || status >= 500;
}

static void add_header(gw_req *gr, const char *line)
{
    size_t hl = strlen(gr->resp_headers), xl = strlen(line);
    char *all = realloc(gr->resp_headers, hl + xl + 1);
    FB_ASSERT(all != NULL);
    memcpy(all + hl, line, xl + 1);
    gr->resp_headers = all;
}

/* Send what the provider answered, once it is kept if it is kept. */
static void deliver(gw_req *gr)
{
    char cost_s[32], line[96];
    fb_money_format(gr->usage_cost, cost_s, sizeof cost_s);
    if (gr->streaming) {
        fb_req_stream_write(gr->req, gr->held, gr->held_len);
        /* Streams cannot carry the settled cost in a header; an SSE
         * comment line (ignored by SSE parsers) carries it instead. */
        int n = snprintf(line, sizeof line, ": x-fusebox-cost-usd %s\n\n",
                         cost_s);
        fb_req_stream_write(gr->req, line, (size_t)n);
        fb_req_stream_end(gr->req);
    } else {
        snprintf(line, sizeof line, "x-fusebox-cost-usd: %s\r\n", cost_s);
        add_header(gr, line);
        size_t len = evbuffer_get_length(gr->buf);
        const char *body = (const char *)evbuffer_pullup(gr->buf, -1);
        fb_req_reply(gr->req, gr->status, gr->resp_headers, NULL,
                     body ? body : "", len);
    }
    gr->req = NULL;
    finish(gr);
}

/* The answer as it is kept: pointers into the request's buffers. */
static void kept_view(gw_req *gr, fb_money cost, fb_result *keep)
{
    struct evbuffer *src = gr->streaming ? gr->keep : gr->buf;
    *keep = (fb_result){.status = gr->status,
                        .stream = gr->streaming,
                        .headers = gr->resp_headers,
                        .headers_len = gr->streaming
                                           ? gr->upstream_headers_len
                                           : strlen(gr->resp_headers),
                        .body = (char *)evbuffer_pullup(src, -1),
                        .body_len = evbuffer_get_length(src),
                        .cost = cost,
                        .seq = gr->seq,
                        .attempt = gr->key.attempt};
    memcpy(keep->fp, gr->fp, 32);
}

static void on_kept(void *arg, fb_err err)
{
    gw_req *gr = arg;
    if (err == FB_EEXIST) {
        gr->kept = 1; /* an answer for this occurrence is kept already */
    } else if (err != FB_OK) {
        fb_log(FB_LOG_WARN, "could not keep the result of call %lld: %s",
               (long long)gr->id, fb_strerror(err));
    } else {
        /* A kept call came through lookup(): gr->flight is its key. */
        fb_result keep;
        gr->kept = 1;
        fb_kept_add(gr->g->replay, gr->flight);
        kept_view(gr, gr->usage_cost, &keep);
        fb_cache_put(gr->g->replay, gr->flight, &keep,
                     gr->ts_ms + gr->g->c->replay_ttl_ms);
    }
    deliver(gr);
}

static void up_done(void *arg, fb_up_fail fail, const char *detail)
{
    gw_req *gr = arg;
    char cost_s[32], hdr[96];
    fb_money cost;
    gr->up = NULL;
    if (!gr->streaming && gr->buf != NULL && gr->status >= 200 &&
        gr->status < 300 && !gr->too_big) {
        size_t len = evbuffer_get_length(gr->buf);
        const char *body = (const char *)evbuffer_pullup(gr->buf, -1);
        fb_provider_ops_for(gr->pc->kind)->usage(body ? body : "", len,
                                                 &gr->usage);
    }
    if (fail == FB_UP_CONNECT) {
        cost = 0; /* nothing reached the provider */
    } else if (fail != FB_UP_OK || gr->too_big) {
        /* A broken exchange may have been billed in full, and the usage
         * read so far (Anthropic's message_start has some) is partial:
         * charge the reservation, or more if the usage says so. */
        cost = gr->resv.amount;
        if (gr->usage.found) {
            fb_money seen = fb_provider_settle(gr->pc, &gr->call, 200,
                                               &gr->usage);
            if (seen > cost)
                cost = seen;
        }
    } else
        cost = fb_provider_settle(gr->pc, &gr->call, gr->status, &gr->usage);
    if (gr->passthrough && fail == FB_UP_OK && cost < gr->resv.amount)
        cost = gr->resv.amount; /* events went by unread: usage is partial */
    gr->usage_cost = cost;
    fb_money_format(cost, cost_s, sizeof cost_s);
    if (gr->replay)
        fb_retry_outcome(gr->g->replay, gr->fkey,
                         fail != FB_UP_OK || transient_status(gr->status));

    if (gr->streaming && fail != FB_UP_OK) {
        /* The provider broke off: so do we, without the final chunk, so
         * that the client sees a cut stream, not a short answer. */
        size_t rl;
        const char *rest = fb_sse_rest(&gr->sse, &rl);
        fb_req_stream_write(gr->req, gr->held, gr->held_len);
        fb_req_stream_write(gr->req, rest, rl);
        fb_log(FB_LOG_WARN, "upstream %s stream broken: %s (key=%s)",
               gr->pc->name, detail, gr->key.id);
        settle(gr, gr->status, cost, "upstream_broken");
        fb_req_abort(gr->req);
        gr->req = NULL;
        finish(gr);
        return;
    }
    if (!gr->streaming && (fail != FB_UP_OK || gr->too_big || gr->buf == NULL)) {
        int status = fail == FB_UP_TIMEOUT ? 504 : 502;
        char msg[512];
        snprintf(hdr, sizeof hdr, "x-fusebox-cost-usd: %s\r\n%s", cost_s,
                 gr->too_big ? "x-should-retry: false\r\n" : "");
        snprintf(msg, sizeof msg, "upstream %s failed: %s", gr->pc->name,
                 gr->too_big ? "answer too large" : detail);
        fb_log(FB_LOG_WARN, "%s (key=%s)", msg, gr->key.id);
        settle(gr, status, cost,
               fail == FB_UP_CONNECT   ? "upstream_unreachable"
               : fail == FB_UP_TIMEOUT ? "upstream_timeout"
                                       : "upstream_broken");
        fb_req_error(gr->req, status, "upstream_error", msg, hdr);
        gr->req = NULL;
        finish(gr);
        return;
    }
    if (gr->streaming) {
        size_t rl;
        const char *rest = fb_sse_rest(&gr->sse, &rl);
        if (rl > 0) { /* an unfinished last event: pass it on, unkept */
            fb_req_stream_write(gr->req, gr->held, gr->held_len); /* order */
            gr->held_len = 0;
            fb_req_stream_write(gr->req, rest, rl);
            if (gr->keep) {
                evbuffer_free(gr->keep);
                gr->keep = NULL;
            }
        }
    }
    const char *outcome = gr->status < 300 ? "ok" : "upstream_error_status";
    int keepable = gr->replay && !gr->passthrough &&
                   ((gr->status >= 200 && gr->status < 300) ||
                    deterministic_error(gr->status)) &&
                   (gr->streaming ? gr->keep != NULL
                                  : evbuffer_get_length(gr->buf) <=
                                        MAX_KEPT_BYTES);
    if (!keepable) {
        settle(gr, gr->status, cost, outcome);
        deliver(gr);
        return;
    }
    fb_result keep;
    kept_view(gr, cost, &keep);
    fb_budget_settle(&gr->resv, cost);
    log_call(gr, gr->status, cost, outcome);
    fb_ledger_complete(gr->g->ledger, gr->id, gr->status, cost, outcome,
                       gr->rscope, &keep, gr->idem,
                       gr->ts_ms + gr->g->c->replay_ttl_ms, on_kept, gr);
}

static void start_upstream(gw_req *gr)
{
    static const fb_up_cbs cbs = {up_head, up_data, up_done};
    char *url = NULL;
    size_t ul = strlen(gr->pc->base_url) + strlen(gr->path) + 1;
    struct curl_slist *headers = upstream_headers(gr);
    url = malloc(ul);
    if (url != NULL && headers != NULL) {
        snprintf(url, ul, "%s%s", gr->pc->base_url, gr->path);
        gr->up = fb_upstream_start(gr->g->up, gr->method, url, headers,
                                   gr->body, gr->body_len, &cbs, gr);
        headers = NULL; /* taken over, even on failure */
    }
    curl_slist_free_all(headers);
    free(url);
    if (gr->up == NULL) {
        settle(gr, 502, 0, "upstream_start_failed");
        reply_error(gr, 502, "upstream_error", "could not start upstream call");
        finish(gr);
    }
}

static void on_reserved(void *arg, fb_err err)
{
    gw_req *gr = arg;
    if (err != FB_OK) {
        /* Fail closed: a call that cannot be recorded is not made. (The
         * ledger logs the store's failure once, not once per call.) */
        fb_log(FB_LOG_DEBUG, "store write failed: %s; call refused",
               fb_strerror(err));
        fb_budget_settle(&gr->resv, 0);
        reply_error(gr, 503, "store_unavailable",
                    "the ledger cannot record this call right now");
        finish(gr);
        return;
    }
    if (gr->client_gone || gr->g->stopped) {
        settle(gr, 499, 0, gr->g->stopped ? "shutdown" : "client_gone");
        fb_req_reply(gr->req, 499, NULL, NULL, "", 0);
        gr->req = NULL;
        finish(gr);
        return;
    }
    start_upstream(gr);
}

/* ---- the fuse ---- */

static void refuse_budget(gw_req *gr, const fb_refusal *why)
{
    char lim[32], spent[32], resv[32], req[32], msg[512], scope_buf[160];
    const fb_budget_spec *spec = fb_scope_limit(why->scope);
    static const char *const per[] = {"", "/hour", "/day", "/month"};
    FB_ASSERT((size_t)spec->period < FB_ARRAY_LEN(per));
    fb_money_format(why->limit, lim, sizeof lim);
    fb_money_format(why->spent, spent, sizeof spent);
    fb_money_format(why->reserved, resv, sizeof resv);
    fb_money_format(why->request, req, sizeof req);
    const char *scope = fb_scope_display(why->scope);
    snprintf(msg, sizeof msg,
             "budget of %s exceeded: %s USD%s limit, %s spent, %s reserved "
             "by calls in flight, this call may cost up to %s",
             scope, lim, per[spec->period], spent, resv, req);
    json_t *j = json_pack(
        "{s:{s:s,s:s,s:n,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s}}", "error",
        "message", msg, "type", "budget_exceeded", "param", "code",
        "budget_exceeded", "scope", scope, "tenant", gr->key.tenant,
        "period", per[spec->period][0] ? per[spec->period] + 1 : "total",
        "limit_usd", lim, "spent_usd", spent, "reserved_usd", resv,
        "request_max_usd", req);
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);

    snprintf(scope_buf, sizeof scope_buf, "budget_exceeded:%s", scope);
    record(gr, FB_ENTRY_BLOCKED, 402, 0, scope_buf);
    fb_metrics_blocked(gr->g->metrics, gr->key.tenant, gr->key.job,
                       "budget_exceeded");
    fb_log(FB_LOG_INFO, "blocked: key=%s %s", gr->key.id, msg);
    fb_req_reply(gr->req, 402,
                 "x-should-retry: false\r\nx-fusebox-cost-usd: 0.0\r\n",
                 "application/json", body ? body : "", body ? strlen(body) : 0);
    gr->req = NULL;
    free(body);
    finish(gr);
}

/* A ledger row for a call that did not go upstream (blocked, replayed). */
static void record(gw_req *gr, fb_entry_state state, int status,
                   fb_money saved, const char *outcome)
{
    fb_entry e = {.id = ++gr->g->next_id,
                  .ts_ms = gr->ts_ms ? gr->ts_ms : fb_wall_ms(),
                  .tenant = gr->key.tenant,
                  .job = gr->key.job,
                  .key_id = gr->key.id,
                  .provider = gr->pc->name,
                  .model = gr->call.model,
                  .path = gr->path,
                  .status = status,
                  .state = state,
                  .outcome = outcome,
                  /* the fingerprint marks an occurrence taken (k-th rule) */
                  .fp = gr->replay && !gr->via_idem ? gr->fp : NULL,
                  .attempt = gr->key.attempt,
                  .saved = saved,
                  .retry = gr->retry};
    fb_ledger_insert(gr->g->ledger, &e, NULL, NULL);
}

/* Refusals by a fuse (402 budget, 429 trips) are blocked calls. */
static void refuse(gw_req *gr, int status, const char *type, const char *msg,
                   const char *outcome)
{
    record(gr, FB_ENTRY_BLOCKED, status, 0, outcome);
    fb_metrics_blocked(gr->g->metrics, gr->key.tenant, gr->key.job, type);
    fb_log(FB_LOG_INFO, "blocked: key=%s %s", gr->key.id, msg);
    fb_req_error(gr->req, status, type, msg,
                 "x-should-retry: false\r\nx-fusebox-cost-usd: 0.0\r\n");
    gr->req = NULL;
    finish(gr);
}

/* The trip that blocks this call, if any. Trips by hand block everything,
 * replays too (an emergency stop); a spent retry budget blocks only what
 * would be paid. */
static const char *tripped(gw_req *gr, int paid, char *scope, size_t cap)
{
    char names[3][2 * FB_NAME_MAX + 16];
    const char *all[4] = {"global", names[0], names[1], names[2]};
    snprintf(names[0], sizeof names[0], "tenant:%s", gr->key.tenant);
    snprintf(names[1], sizeof names[1], "job:%s/%s", gr->key.tenant,
             gr->key.job);
    snprintf(names[2], sizeof names[2], "key:%s", gr->key.id);
    for (size_t i = 0; i < 4; i++) {
        if (i == 2 && gr->key.job[0] == '\0')
            continue;
        const char *why = fb_trip_reason(gr->g->replay, all[i]);
        if (why != NULL && (paid || strncmp(why, "retry_budget", 12) != 0)) {
            snprintf(scope, cap, "%s", all[i]); /* names[] dies here */
            return why;
        }
    }
    return NULL;
}

static void trip(gw_req *gr, const char *reason)
{
    char scope[2 * FB_NAME_MAX + 16];
    if (gr->key.job[0])
        snprintf(scope, sizeof scope, "job:%s/%s", gr->key.tenant, gr->key.job);
    else
        snprintf(scope, sizeof scope, "key:%s", gr->key.id);
    fb_trip_set(gr->g->replay, scope, reason);
    fb_ledger_trip(gr->g->ledger, scope, reason);
    fb_metrics_tripped(gr->g->metrics, gr->key.tenant, gr->key.job);
    fb_log(FB_LOG_WARN, "tripped %s: %s", scope, reason);
}

/* Answer from a kept result: no upstream call, cost 0. */
static void serve_replay(gw_req *gr, fb_result *res)
{
    static const char mark[] =
        "x-fusebox-replayed: true\r\nx-fusebox-cost-usd: 0.0\r\n";
    static const char tail[] = ": x-fusebox-cost-usd 0.0\n\n";
    char *h = malloc(res->headers_len + sizeof mark);
    FB_ASSERT(h != NULL);
    memcpy(h, res->headers, res->headers_len);
    memcpy(h + res->headers_len, mark, sizeof mark);
    if (res->stream) {
        char *b = realloc(res->body, res->body_len + sizeof tail);
        FB_ASSERT(b != NULL);
        memcpy(b + res->body_len, tail, sizeof tail);
        res->body = b;
        res->body_len += sizeof tail - 1;
    }
    gr->ts_ms = fb_wall_ms();
    gr->replayed = 1;
    record(gr, FB_ENTRY_REPLAYED, res->status, res->cost, "replayed");
    fb_metrics_replayed(gr->g->metrics, gr->key.tenant, gr->key.job,
                        res->cost, fb_mono_ns() - gr->start_ns);
    if (gr->idem != NULL) /* the key now names this request */
        fb_ledger_idem_bind(gr->g->ledger, gr->rscope, gr->idem, gr->fp,
                            res->seq, gr->ts_ms + gr->g->c->replay_ttl_ms);
    fb_req_reply(gr->req, res->status, h, NULL, res->body, res->body_len);
    gr->req = NULL;
    free(h);
    finish(gr);
}

/* Pay for the call: the fuses (trips, retry budgets, ceilings), then the
 * durable reservation, then the provider. */
static void reserve(gw_req *gr);

static void pay(gw_req *gr)
{
    gateway *g = gr->g;
    char msg[512], scope[2 * FB_NAME_MAX + 16];
    const char *why;

    gr->ts_ms = fb_wall_ms();
    if ((why = tripped(gr, 1, scope, sizeof scope)) != NULL) {
        snprintf(msg, sizeof msg, "%s is tripped: %s", scope, why);
        refuse(gr, 429,
               strncmp(why, "retry_budget", 12) == 0 ? "retry_budget_exhausted"
                                                     : "fuse_tripped",
               msg, "tripped");
        return;
    }
    if (gr->replay) {
        int failures = fb_retry_failures(g->replay, gr->fkey);
        if (failures > 0)
            gr->retry = 1; /* the same request again, after a failure */
        if (failures >= g->retry.max_per_fp) {
            snprintf(msg, sizeof msg,
                     "retry_budget: %d upstream attempts of the same request "
                     "failed",
                     failures);
            trip(gr, msg);
            refuse(gr, 429, "retry_budget_exhausted", msg, "retry_budget");
            return;
        }
    }
    if (gr->key.job[0]) {
        char job[2 * FB_NAME_MAX + 16];
        snprintf(job, sizeof job, "job:%s/%s", gr->key.tenant, gr->key.job);
        if (fb_retry_count_call(g->replay, job, gr->retry, gr->ts_ms,
                                &g->retry)) {
            snprintf(msg, sizeof msg,
                     "retry_budget: retries passed %d%% of the job's calls "
                     "today (at least %d allowed)",
                     g->retry.max_percent, g->retry.floor);
            trip(gr, msg);
            refuse(gr, 429, "retry_budget_exhausted", msg, "retry_budget");
            return;
        }
    }
    reserve(gr);
}

static void lease_more(gw_req *gr, fb_scope *s, fb_money need);

/* The ceilings, then the durable reservation, then the provider. */
static void reserve(gw_req *gr)
{
    gateway *g = gr->g;
    fb_scope *scopes[FB_SCOPES_MAX];
    size_t n;
    fb_refusal refusal;

    if (g->shared &&
        (g->fenced ||
         fb_mono_ns() - g->beat_ok_ns >
             (int64_t)g->c->cluster_lease_ms * 500000)) {
        /* Past half a lease without a heartbeat the others may soon reap
         * this node and hand its slices out again: spend none of them. */
        reply_error(gr, 503, "store_unavailable",
                    "this node cannot confirm its budget slices with the "
                    "shared store right now");
        finish(gr);
        return;
    }
    key_scopes(gr, scopes, &n);
    fb_err err = fb_budget_reserve(scopes, n, gr->call.worst, gr->ts_ms,
                                   &gr->resv, &refusal);
    if (err == FB_EAGAIN && refusal.scope != gr->lease_denied) {
        lease_more(gr, (fb_scope *)refusal.scope, refusal.request);
        return;
    }
    if (err == FB_EAGAIN) { /* nothing left to take: the cluster's 402 */
        refusal.request = gr->call.worst;
        refusal.spent = fb_scope_pool_spent((fb_scope *)refusal.scope);
        err = FB_ELIMIT;
    }
    if (err == FB_ELIMIT) {
        refuse_budget(gr, &refusal);
        return;
    }
    if (err != FB_OK) {
        reply_error(gr, 400, "invalid_request",
                    "the worst-case cost of this call cannot be counted");
        finish(gr);
        return;
    }
    gr->id = ++g->next_id;
    fb_entry e = {.id = gr->id,
                  .ts_ms = gr->ts_ms,
                  .tenant = gr->key.tenant,
                  .job = gr->key.job,
                  .key_id = gr->key.id,
                  .provider = gr->pc->name,
                  .model = gr->call.model,
                  .path = gr->path,
                  .status = 0,
                  .reserved = gr->call.worst,
                  .state = FB_ENTRY_RESERVED,
                  .outcome = "in_flight",
                  .fp = gr->replay ? gr->fp : NULL,
                  .attempt = gr->key.attempt,
                  .retry = gr->retry};
    fb_ledger_insert(g->ledger, &e, on_reserved, gr);
}

static int gone(gw_req *gr);

/* ---- budget slices (a cluster; budget.c's note 5) ---- */

typedef struct take_ctx {
    gateway *g;
    fb_scope *scope;
    int64_t window;
    int64_t node; /* who asked: a slice for a node since reaped is void */
} take_ctx;

/* A slice came (or did not): every call waiting for one of this scope
 * tries again; when nothing was left, a call still short is refused. */
static void rejoin(gateway *g);

static void on_take(void *arg, fb_err err, fb_money got, fb_money taken)
{
    take_ctx *t = arg;
    gateway *g = t->g;
    gw_req *mine = NULL, **pp = &g->lease_wait;
    *fb_scope_taking(t->scope) = 0;
    if (t->node != g->node) {
        /* Asked as this node's old number, reaped since: whatever came is
         * the reaper's. The waiters ask again, as the new number. */
        err = FB_OK;
    } else if (err == FB_OK || err == FB_ELIMIT) {
        fb_scope_pool(t->scope, taken);
        if (err == FB_OK)
            fb_scope_grant(t->scope, t->window, got);
    } else if (err == FB_ENOTFOUND) {
        rejoin(g);
    } else {
        fb_log(FB_LOG_WARN, "cluster: no budget slice for %s: %s",
               fb_scope_name(t->scope), fb_strerror(err));
    }
    while (*pp != NULL) { /* take this scope's waiters, in their order */
        gw_req *w = *pp;
        if (w->lease_scope == t->scope) {
            *pp = w->lease_next;
            w->lease_next = mine;
            mine = w;
        } else {
            pp = &w->lease_next;
        }
    }
    while (mine != NULL) {
        gw_req *w = mine;
        mine = w->lease_next;
        w->lease_next = NULL;
        w->lease_scope = NULL;
        if (gone(w))
            continue;
        if (err != FB_OK && err != FB_ELIMIT) {
            reply_error(w, 503, "store_unavailable",
                        "the shared store cannot grant budget right now");
            finish(w);
            continue;
        }
        w->lease_denied = err == FB_OK ? NULL : t->scope;
        reserve(w);
    }
    free(t);
}

/* Wait for more of s's ceiling: one take per scope at a time, for at
 * least what this call lacks and a chunk more (a 32nd of the ceiling;
 * the store grants at most a quarter of what is left). */
static void lease_more(gw_req *gr, fb_scope *s, fb_money need)
{
    gateway *g = gr->g;
    gr->lease_scope = s;
    gr->lease_next = g->lease_wait;
    g->lease_wait = gr;
    int *taking = fb_scope_taking(s);
    if (*taking)
        return;
    take_ctx *t = malloc(sizeof *t);
    FB_ASSERT(t != NULL);
    const fb_budget_spec *spec = fb_scope_limit(s);
    fb_money want = spec->limit / 32 > need ? spec->limit / 32 : need;
    *taking = 1;
    t->g = g;
    t->scope = s;
    t->window = fb_scope_window(s, gr->ts_ms);
    t->node = g->node;
    fb_ledger_lease_take(g->ledger, g->node, fb_scope_name(s), t->window,
                         spec->limit, want, need, on_take, t);
}

typedef struct give_ctx {
    gateway *g;
    fb_scope *scope;
    int64_t window;
    int64_t node;
} give_ctx;

static void on_give(void *arg, fb_err err, fb_money got, fb_money given)
{
    give_ctx *gc = arg;
    /* Still ours when the store certainly did not take it back (an I/O
     * error may hide a give that committed: then it is lost to this node,
     * never spent twice), unless this node was reaped since. */
    if (err == FB_ENOTFOUND && gc->node == gc->g->node)
        fb_scope_grant(gc->scope, gc->window, given);
    free(gc);
}

static void on_join(void *arg, fb_err err, int64_t node, int64_t id_base)
{
    gateway *g = arg;
    g->joining = 0;
    if (err == FB_OK && g->stopped) { /* joined while stopping: leave */
        fb_ledger_leave_at_stop(g->ledger, node);
        return;
    }
    if (err != FB_OK) {
        fb_log(FB_LOG_WARN, "cluster: cannot join again yet: %s",
               fb_strerror(err));
        return; /* the next beat tries again */
    }
    fb_log(FB_LOG_WARN, "cluster: node %lld joined again as node %lld",
           (long long)g->node, (long long)node);
    g->node = node;
    g->next_id = id_base;
    fb_budget_forget_leases(g->budget);
    g->beat_ok_ns = fb_mono_ns();
    g->fenced = 0;
}

/* Reaped by the others (a heartbeat that stopped for longer than the
 * lease: a pause, a cut to the store): the old number's slices and calls
 * in flight are gone (the reaper gave the one back and charged the
 * other), so refuse paid calls until this node is a new one. */
static void rejoin(gateway *g)
{
    if (!g->fenced)
        fb_log(FB_LOG_ERROR, "cluster: node %lld was reaped by the others "
               "(its heartbeat stopped for longer than cluster.lease_ms); "
               "joining again", (long long)g->node);
    g->fenced = 1;
    if (g->joining || g->stopped)
        return;
    g->joining = 1;
    fb_ledger_join(g->ledger, on_join, g);
}

static void on_beat(void *arg, fb_err err)
{
    gateway *g = arg;
    g->beating = 0;
    if (err == FB_OK && g->beat_node == g->node)
        g->beat_ok_ns = g->beat_sent_ns;
    else if (err == FB_ENOTFOUND && g->beat_node == g->node)
        rejoin(g);
}

/* Every quarter lease: the heartbeat (and the reaping of dead nodes), and
 * slices idle for a second go back for other nodes to take. */
static void beat_tick(evutil_socket_t fd, short what, void *arg)
{
    gateway *g = arg;
    int64_t now = fb_wall_ms(), idle;
    size_t it = 0;
    fb_scope *s;
    if (g->fenced && !g->joining)
        rejoin(g); /* an earlier try failed */
    if (!g->beating && !g->fenced) {
        g->beating = 1;
        g->beat_sent_ns = fb_mono_ns();
        g->beat_node = g->node;
        fb_ledger_beat(g->ledger, g->node, on_beat, g);
    }
    while (fb_budget_next(g->budget, &it, &s)) {
        if (!fb_scope_leased(s) || *fb_scope_taking(s))
            continue;
        fb_money slack = fb_scope_slack(s, now, &idle);
        if (slack <= 0 || idle < 1000)
            continue;
        give_ctx *gc = malloc(sizeof *gc);
        if (gc == NULL)
            continue;
        gc->g = g;
        gc->node = g->node;
        gc->scope = s;
        gc->window = fb_scope_window(s, now);
        fb_scope_shrink(s, slack);
        fb_ledger_lease_give(g->ledger, g->node, fb_scope_name(s), gc->window,
                             slack, on_give, gc);
    }
}

/* A waiter or a queued caller coming back to a client that left. */
static int gone(gw_req *gr)
{
    if (!gr->client_gone && !gr->g->stopped)
        return 0;
    fb_req_reply(gr->req, 499, NULL, NULL, "", 0);
    gr->req = NULL;
    finish(gr);
    return 1;
}

static void poll_later(gw_req *gr,
                       void (*fn)(evutil_socket_t, short, void *));
static void look_again(evutil_socket_t fd, short what, void *arg);

static void on_lookup(void *arg, fb_err err, fb_result *res)
{
    gw_req *gr = arg;
    if (err == FB_OK) {
        if (!gr->via_cache) /* read from the store: keep it at hand */
            fb_cache_put(gr->g->replay, gr->flight, res,
                         res->expires_ms);
        serve_replay(gr, res);
        return;
    }
    if (err == FB_EEXIST && gr->g->shared) { /* another node buys it */
        poll_later(gr, look_again);
        return;
    }
    if (err != FB_ENOTFOUND) {
        reply_error(gr, 503, "store_unavailable",
                    "the kept results cannot be read right now");
        finish(gr);
        return;
    }
    /* In a cluster not found means claimed: this node buys it (and the
     * marker goes at finish, or with the kept result). */
    gr->claimed = gr->g->shared;
    if (gone(gr))
        return;
    pay(gr);
}

/* Another node holds the marker: look again a little later (50 ms,
 * doubling to half a second), until its result is kept or the marker
 * is gone (its call failed, or the node died and was reaped). */
static void poll_later(gw_req *gr, void (*fn)(evutil_socket_t, short, void *))
{
    if (gr->poll_ev == NULL &&
        (gr->poll_ev = event_new(gr->g->base, -1, 0, fn, gr)) == NULL) {
        reply_error(gr, 503, "store_unavailable", "out of memory");
        finish(gr);
        return;
    }
    gr->poll_ms = gr->poll_ms == 0 ? 50 : gr->poll_ms >= 250 ? 500
                                                             : gr->poll_ms * 2;
    struct timeval tv = {0, gr->poll_ms * 1000};
    event_del(gr->poll_ev);
    event_assign(gr->poll_ev, gr->g->base, -1, 0, fn, gr);
    event_add(gr->poll_ev, &tv);
}

static void look_again(evutil_socket_t fd, short what, void *arg)
{
    gw_req *gr = arg;
    if (gone(gr))
        return;
    gr->claim_node = gr->g->node;
    fb_ledger_result_claim(gr->g->ledger, gr->g->node, gr->rscope, gr->fp,
                           gr->seq, fb_wall_ms(), on_lookup, gr);
}

/* Is result seq already kept, or being bought right now? */
static void lookup(gw_req *gr)
{
    if (gone(gr))
        return;
    fb_replay_key(gr->flight, gr->rscope, "r", gr->fp, gr->seq);
    gr->resume = lookup;
    if (!fb_flight_join(gr->g->replay, gr->flight, gr)) {
        gr->waiting = WAIT_FLIGHT; /* an identical call is in flight */
        return;
    }
    gr->leading = 1;
    fb_result res;
    gateway *g = gr->g;
    uint64_t epoch = g->epoch ? __atomic_load_n(g->epoch, __ATOMIC_ACQUIRE)
                              : 0;
    if (epoch != g->epoch_seen) { /* purged by hand: all of it, it is rare */
        fb_cache_clear(g->replay);
        g->epoch_seen = epoch;
    }
    if (fb_cache_get(g->replay, gr->flight, fb_wall_ms(), &res)) {
        gr->via_cache = 1;
        on_lookup(gr, FB_OK, &res);
        fb_result_clear(&res);
        return;
    }
    /* Alone, a result this node never kept cannot be there; in a cluster
     * another node may have bought it. */
    if (!g->shared && !fb_kept_maybe(gr->g->replay, gr->flight)) {
        on_lookup(gr, FB_ENOTFOUND, NULL); /* never bought: no read */
        return;
    }
    gr->claim_node = g->node;
    if (g->shared) /* the result, or its marker claimed: one round trip */
        fb_ledger_result_claim(g->ledger, g->node, gr->rscope, gr->fp,
                               gr->seq, fb_wall_ms(), on_lookup, gr);
    else
        fb_ledger_result_lookup(g->ledger, gr->rscope, gr->fp, gr->seq, NULL,
                                fb_wall_ms(), on_lookup, gr);
}

static void occurrence(gw_req *gr);

static void on_occurrences(void *arg, fb_err err, int64_t n)
{
    gw_req *gr = arg;
    size_t nw = 0;
    void **w = fb_occ_loaded(gr->g->replay, gr->occ, err == FB_OK ? n : 0, &nw);
    for (size_t i = 0; i < nw; i++) {
        gw_req *x = w[i];
        x->waiting = WAIT_NONE;
        if (err != FB_OK) {
            /* Without the count, a seq could be handed out twice. */
            reply_error(x, 503, "store_unavailable",
                        "the ledger cannot be read right now");
            finish(x);
            continue;
        }
        occurrence(x);
    }
    free(w);
    if (err != FB_OK)
        fb_occ_forget(gr->g->replay, gr->occ);
}

/* Which occurrence of this request is this, in its attempt? */
static void occurrence(gw_req *gr)
{
    int loading = 0;
    if (gone(gr))
        return;
    if (gr->key.attempt <= 0) {
        gr->seq = 1; /* without attempts, the first kept result */
        lookup(gr);
        return;
    }
    fb_replay_key(gr->occ, gr->rscope, gr->key.id, gr->fp, gr->key.attempt);
    if (fb_occ_next(gr->g->replay, gr->occ, gr, &loading, &gr->seq)) {
        gr->occ_taken = 1;
        lookup(gr);
        return;
    }
    if (!loading) {
        gr->waiting = WAIT_OCC; /* behind the caller loading the count */
        return;
    }
    {
        fb_entry who = {.tenant = gr->key.tenant,
                        .job = gr->key.job,
                        .key_id = gr->key.id,
                        .attempt = gr->key.attempt,
                        .fp = gr->fp};
        fb_ledger_occurrences(gr->g->ledger, &who, on_occurrences, gr);
    }
}

static void idempotent(gw_req *gr);

static void on_iclaim(void *arg, fb_err err);

static void on_idem(void *arg, fb_err err, fb_result *res)
{
    gw_req *gr = arg;
    if (err == FB_OK || err == FB_EAGAIN) {
        if (memcmp(res->fp, gr->fp, 32) != 0) {
            reply_error(gr, 422, "idempotency_key_reused",
                        "this Idempotency-Key was used for a different request");
            finish(gr);
            return;
        }
        if (err == FB_OK) {
            gr->via_idem = 1;
            serve_replay(gr, res);
            return;
        }
        /* Bound to this very request, whose result expired: as new. */
    } else if (err != FB_ENOTFOUND) {
        reply_error(gr, 503, "store_unavailable",
                    "the kept results cannot be read right now");
        finish(gr);
        return;
    }
    if (gr->g->shared && !gr->iclaimed) {
        /* In flight on another node? Its marker: (scope, the key's
         * flight key, -1). */
        gr->claim_node = gr->g->node;
        fb_ledger_flight_claim(gr->g->ledger, gr->g->node, gr->rscope,
                               gr->iflight, -1, on_iclaim, gr);
        return;
    }
    occurrence(gr);
}

static void idem_again(evutil_socket_t fd, short what, void *arg)
{
    gw_req *gr = arg;
    if (gone(gr))
        return;
    fb_ledger_result_lookup(gr->g->ledger, gr->rscope, gr->fp, 0, gr->idem,
                            fb_wall_ms(), on_idem, gr);
}

static void on_iclaim(void *arg, fb_err err)
{
    gw_req *gr = arg;
    if (err == FB_OK) {
        /* Claimed: look once more (a fresh read) for a result another
         * node kept and bound to this key while the claim waited. */
        gr->iclaimed = 1;
        if (!gone(gr))
            fb_ledger_result_lookup(gr->g->ledger, gr->rscope, gr->fp, 0,
                                    gr->idem, fb_wall_ms(), on_idem, gr);
        return;
    }
    if (err == FB_EEXIST && gr->g->c->idempotency_wait) {
        poll_later(gr, idem_again);
        return;
    }
    if (err == FB_EEXIST)
        reply_error(gr, 409, "idempotency_key_in_flight",
                    "a request with this Idempotency-Key is in flight");
    else
        reply_error(gr, 503, "store_unavailable",
                    "the shared store cannot be reached right now");
    finish(gr);
}

/* Idempotency-Key (IETF httpapi draft): the same key and request replay;
 * the same key with another request is 422; while the first is in flight,
 * 409 (or wait for it, if configured). */
static void idempotent(gw_req *gr)
{
    gateway *g = gr->g;
    if (gone(gr))
        return;
    fb_replay_key(gr->iflight, gr->rscope, gr->idem, NULL, -1);
    if (fb_flight_active(g->replay, gr->iflight) && !g->c->idempotency_wait) {
        reply_error(gr, 409, "idempotency_key_in_flight",
                    "a request with this Idempotency-Key is in flight");
        finish(gr);
        return;
    }
    gr->resume = idempotent;
    if (!fb_flight_join(g->replay, gr->iflight, gr)) {
        gr->waiting = WAIT_IFLIGHT;
        return;
    }
    gr->ileading = 1;
    fb_ledger_result_lookup(g->ledger, gr->rscope, gr->fp, 0, gr->idem,
                            fb_wall_ms(), on_idem, gr);
}

static int header_has(const fb_http_req *h, const char *name, const char *tok)
{
    size_t vl;
    const char *v = fb_http_header_get(h, name, &vl);
    return v != NULL && memmem(v, vl, tok, strlen(tok)) != NULL;
}

static void with_key(gw_req *gr)
{
    gateway *g = gr->g;
    const fb_http_req *h = fb_req_head(gr->req);
    char msg[512], scope[2 * FB_NAME_MAX + 16];
    const char *why;
    if (fb_config_tenant(g->c, gr->key.tenant) == NULL) {
        /* A retired or renamed tenant must not fall back to the global
         * ceiling alone. */
        snprintf(msg, sizeof msg,
                 "this key's tenant '%s' is not in the config", gr->key.tenant);
        reply_error(gr, 403, "unknown_tenant", msg);
        finish(gr);
        return;
    }
    if ((why = tripped(gr, 0, scope, sizeof scope)) != NULL) {
        snprintf(msg, sizeof msg, "%s is tripped: %s", scope, why);
        refuse(gr, 429, "fuse_tripped", msg, "tripped");
        return;
    }
    char *nb = NULL;
    size_t nl = 0;
    const fb_provider_ops *ops = fb_provider_ops_for(gr->pc->kind);
    fb_refuse r = ops->inspect(gr->pc, g->prices, gr->method, gr->path,
                               gr->body, gr->body_len, &gr->call, &nb, &nl,
                               msg, sizeof msg);
    if (r != FB_REFUSE_NONE) {
        reply_error(gr, 400,
                    r == FB_REFUSE_UNKNOWN_PRICE    ? "unknown_price"
                    : r == FB_REFUSE_UNPRICED_ROUTE ? "unpriced_route"
                                                    : "invalid_request",
                    msg);
        finish(gr);
        return;
    }
    size_t vl;
    const char *retries = fb_http_header_get(h, "x-stainless-retry-count", &vl);
    gr->retry = retries != NULL && vl > 0 && !(vl == 1 && retries[0] == '0');
    gr->replay = g->c->replay_enabled && !gr->call.free_route &&
                 !header_has(h, "cache-control", "no-store") &&
                 !header_has(h, "x-fusebox-replay", "off");
    if (gr->replay) {
        /* The client's request, before any rewrite of ours. */
        fb_fingerprint(gr->method, gr->pc->name, gr->path, gr->body,
                       gr->body_len, gr->call.doc, g->c->replay_ignore,
                       g->c->nreplay_ignore, gr->fp);
        if (gr->key.job[0])
            snprintf(gr->rscope, sizeof gr->rscope, "job:%s/%s",
                     gr->key.tenant, gr->key.job);
        else
            snprintf(gr->rscope, sizeof gr->rscope, "key:%s", gr->key.id);
        fb_replay_key(gr->fkey, gr->rscope, "f", gr->fp, 0);
    }
    /* The parsed body points into gr->body: done with it before that
     * changes. */
    fb_json_free(gr->call.doc);
    gr->call.doc = NULL;
    if (nb != NULL) {
        gr->new_body = nb;
        gr->body = nb;
        gr->body_len = nl;
    }
    if (!gr->replay) {
        pay(gr);
        return;
    }
    const char *idem = fb_http_header_get(h, "idempotency-key", &vl);
    if (idem != NULL && vl > 0) {
        if (vl > 255) {
            reply_error(gr, 400, "invalid_request",
                        "Idempotency-Key is longer than 255 bytes");
            finish(gr);
            return;
        }
        /* A string of printable ASCII (the IETF draft's sf-string): a
         * stray byte must not reach the store as text (PostgreSQL refuses
         * what is not UTF-8, and would fail the whole batch with it). */
        for (size_t i = 0; i < vl; i++)
            if ((unsigned char)idem[i] < 0x20 || (unsigned char)idem[i] > 0x7e) {
                reply_error(gr, 400, "invalid_request",
                            "Idempotency-Key must be printable ASCII");
                finish(gr);
                return;
            }
        gr->idem = fb_strndup(idem, vl);
        FB_ASSERT(gr->idem != NULL);
        idempotent(gr);
        return;
    }
    occurrence(gr);
}

/* Remember a key and give its own ceiling, if any, its counters. */
static void cache_key(gateway *g, const fb_key_rec *k, fb_money window_spent)
{
    char name[FB_KEY_ID_LEN + 8];
    if (fb_map_get(g->keys, (const char *)k->hash, 32) == NULL) {
        fb_key_rec *copy = malloc(sizeof *copy);
        FB_ASSERT(copy != NULL);
        *copy = *k;
        FB_ASSERT(fb_map_put(g->keys, (const char *)k->hash, 32, copy, NULL) ==
                  FB_OK);
    }
    snprintf(name, sizeof name, "key:%s", k->id);
    if (k->budget.set && fb_budget_find(g->budget, name) == NULL) {
        fb_scope *s = fb_budget_scope(g->budget, name);
        FB_ASSERT(s != NULL);
        fb_scope_set_limit(s, &k->budget);
        if (g->shared)
            fb_scope_lease(s);
        fb_scope_seed(s, fb_period_start(k->budget.period, fb_wall_ms()),
                      g->shared ? 0 : window_spent);
    }
}

static void on_key_lookup(void *arg, fb_err err, const fb_key_rec *k,
                          fb_money window_spent)
{
    gw_req *gr = arg;
    if (err == FB_ENOTFOUND || (err == FB_OK && k->revoked_ms != 0)) {
        reply_error(gr, 401, "invalid_api_key",
                    err == FB_OK ? "this fusebox key was revoked"
                                 : "unknown fusebox key");
        finish(gr);
        return;
    }
    if (err != FB_OK) {
        reply_error(gr, 503, "store_unavailable", "cannot check the key now");
        finish(gr);
        return;
    }
    cache_key(gr->g, k, window_spent);
    gr->key = *k;
    if (gr->client_gone || gr->g->stopped) {
        fb_req_reply(gr->req, 499, NULL, NULL, "", 0);
        gr->req = NULL;
        finish(gr);
        return;
    }
    with_key(gr);
}

static void reply_simple(fb_req *req, int status, const char *json)
{
    fb_req_reply(req, status, NULL, "application/json", json, strlen(json));
}

static void handle(void *ud, fb_req *req)
{
    gateway *g = ud;
    const fb_http_req *h = fb_req_head(req);
    const char *t = h->target;
    size_t tl = h->target_len;
    const char *q = memchr(t, '?', tl); /* the head is not NUL-terminated */
    size_t pathlen = q ? (size_t)(q - t) : tl;

    if (tl == 0 || t[0] != '/') {
        fb_req_error(req, 400, "invalid_request", "request target must be a path",
                     NULL);
        return;
    }
    /* /healthz: the process serves. /readyz: it can take paid calls too;
     * with the store failing (a disk full, say) paid calls are refused
     * (fail closed) and a balancer should send them elsewhere. */
    int live = pathlen == 8 && memcmp(t, "/healthz", 8) == 0;
    if (live || (pathlen == 7 && memcmp(t, "/readyz", 7) == 0)) {
        int store_ok = live || fb_ledger_ok(g->ledger);
        reply_simple(req, g->draining || !store_ok ? 503 : 200,
                     g->draining  ? "{\"status\":\"draining\"}"
                     : !store_ok ? "{\"status\":\"store_unavailable\"}"
                                 : "{\"status\":\"ok\"}");
        return;
    }
    /* /<provider>/<rest> */
    const char *name = t + 1;
    size_t nl = 0;
    while (1 + nl < pathlen && name[nl] != '/')
        nl++;
    const fb_provider_conf *pc = fb_config_provider(g->c, name, nl);
    if (pc == NULL) {
        fb_req_error(req, 404, "unknown_provider",
                     "no provider is configured at this path",
                     "x-should-retry: false\r\n");
        return;
    }
    if (unsafe_path(t, tl) || h->method_len >= 16) {
        fb_req_error(req, 400, "invalid_request",
                     "path segments '.' and '..' are not allowed",
                     "x-should-retry: false\r\n");
        return;
    }
    if (memmem(t, tl, FB_KEY_PREFIX, 4) != NULL) {
        /* It would be forwarded to the provider and land in its logs. */
        fb_req_error(req, 400, "invalid_request",
                     "a fusebox key must not be sent in the URL",
                     "x-should-retry: false\r\n");
        return;
    }
    size_t klen = 0;
    const char *ktext = client_key(h, &klen);
    if (ktext == NULL || klen == 0) {
        fb_req_error(req, 401, "missing_api_key",
                     "send a fusebox key in Authorization: Bearer or x-api-key",
                     "x-should-retry: false\r\n");
        return;
    }
    if (!fb_key_well_formed(ktext, klen)) {
        fb_req_error(req, 401, "invalid_api_key",
                     "not a fusebox key (they start with fbk_)",
                     "x-should-retry: false\r\n");
        return;
    }
    gw_req *gr = calloc(1, sizeof *gr);
    FB_ASSERT(gr != NULL);
    g->inflight++;
    gr->g = g;
    gr->next = g->live;
    if (g->live)
        g->live->prev = gr;
    g->live = gr;
    gr->req = req;
    gr->pc = pc;
    gr->pidx = (size_t)(pc - g->c->providers);
    gr->start_ns = fb_mono_ns();
    memcpy(gr->method, h->method_str, h->method_len);
    gr->path = fb_strndup(t + 1 + nl, tl - 1 - nl);
    FB_ASSERT(gr->path != NULL);
    gr->body = fb_req_body(req, &gr->body_len);
    fb_req_on_close(req, on_client_close, gr);

    uint8_t hash[32];
    fb_key_hash(ktext, klen, hash);
    const fb_key_rec *k = fb_map_get(g->keys, (const char *)hash, 32);
    if (k != NULL && fb_key_hash_equal(k->hash, hash)) {
        gr->key = *k;
        with_key(gr);
        return;
    }
    fb_ledger_key_lookup(g->ledger, hash, fb_wall_ms(), on_key_lookup, gr);
}

/* ---- start and stop ---- */

static void on_change(void *arg, const fb_change *c)
{
    gateway *g = arg;
    if (strcmp(c->kind, "trip") == 0) {
        /* subject: "scope\treason" */
        char scope[256];
        const char *tab = strchr(c->subject, '\t');
        size_t sl = tab ? (size_t)(tab - c->subject) : strlen(c->subject);
        snprintf(scope, sizeof scope, "%.*s", (int)sl, c->subject);
        if (fb_trip_reason(g->replay, scope) == NULL)
            fb_log(FB_LOG_WARN, "tripped %s: %s", scope,
                   tab ? tab + 1 : "by hand");
        fb_trip_set(g->replay, scope, tab ? tab + 1 : "tripped by hand");
        return;
    }
    if (strcmp(c->kind, "reset") == 0) {
        fb_trip_clear(g->replay, c->subject);
        fb_log(FB_LOG_INFO, "reset %s", c->subject);
        return;
    }
    if (strcmp(c->kind, "key_revoked") != 0)
        return;
    size_t it = 0;
    const char *k;
    size_t kl;
    void *v;
    while (fb_map_next(g->keys, &it, &k, &kl, &v)) {
        fb_key_rec *rec = v;
        if (strcmp(rec->id, c->subject) == 0) {
            free(fb_map_del(g->keys, k, kl));
            fb_log(FB_LOG_INFO, "key %s revoked", c->subject);
            break; /* ids are unique */
        }
    }
}

/* While draining: stop once no call is in flight and every answer has
 * been written (connections close after their last answer), or at the
 * deadline. */
static void drain_check(evutil_socket_t fd, short what, void *arg)
{
    gateway *g = arg;
    (void)fd;
    (void)what;
    if (g->inflight == 0 && fb_server_connections(g->srv) == 0) {
        event_base_loopexit(g->base, NULL);
        return;
    }
    if (fb_mono_ns() > g->drain_deadline_ns) {
        fb_log(FB_LOG_WARN, "%zu calls still in flight after %d s; stopping",
               g->inflight, DRAIN_SECONDS);
        event_base_loopexit(g->base, NULL);
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    gateway *g = arg;
    (void)what;
    if (g->draining) {
        fb_log(FB_LOG_WARN, "second signal: stopping with %zu calls in flight",
               g->inflight);
        event_base_loopexit(g->base, NULL);
        return;
    }
    fb_log(FB_LOG_INFO, "signal %d: draining %zu calls in flight", (int)sig,
           g->inflight);
    g->draining = 1;
    g->drain_deadline_ns = fb_mono_ns() + DRAIN_SECONDS * INT64_C(1000000000);
    fb_server_drain(g->srv);
    fb_admin_drain(g->admin);
    struct timeval tv = {0, 20000};
    event_add(g->drain_timer, &tv);
}

static char *metrics_text(void *ud, size_t *len)
{
    gateway *g = ud;
    uint64_t leases = 0, trips = fb_store_round_trips(&leases);
    fb_metrics_src src = {.budget = g->budget,
                          .replay = g->replay,
                          .now_ms = fb_wall_ms(),
                          .store_ok = fb_ledger_ok(g->ledger),
                          .ledger_backlog = fb_ledger_backlog(g->ledger),
                          .store_round_trips = trips,
                          .lease_round_trips = leases,
                          .connections = fb_server_connections(g->srv),
                          .in_flight = g->inflight};
    return fb_metrics_render(g->metrics, &src, len);
}

static int cmp_budget(const void *a, const void *b)
{
    return strcmp(((const fb_dash_budget *)a)->scope,
                  ((const fb_dash_budget *)b)->scope);
}

static fb_dash_budget *dash_budgets(void *ud, size_t *n)
{
    gateway *g = ud;
    size_t it = 0, cap = 16;
    fb_scope *sc;
    int64_t now = fb_wall_ms();
    fb_dash_budget *v = malloc(cap * sizeof *v);
    *n = 0;
    while (v != NULL && fb_budget_next(g->budget, &it, &sc)) {
        const fb_budget_spec *spec = fb_scope_limit(sc);
        if (!spec->set)
            continue;
        if (*n == cap) {
            fb_dash_budget *nv = realloc(v, 2 * cap * sizeof *v);
            if (nv == NULL)
                break;
            v = nv;
            cap *= 2;
        }
        fb_dash_budget *b = &v[(*n)++];
        snprintf(b->scope, sizeof b->scope, "%s", fb_scope_name(sc));
        b->spec = *spec;
        fb_scope_counters(sc, now, &b->spent, &b->reserved);
    }
    if (v != NULL)
        qsort(v, *n, sizeof *v, cmp_budget);
    return v;
}

static int dash_store_ok(void *ud)
{
    return fb_ledger_ok(((gateway *)ud)->ledger);
}

/* The admin surface, when a token is configured (admin.h). */
static int start_admin(gateway *g, const fb_server_opts *so)
{
    const fb_config *c = g->c;
    const char *token = getenv(c->admin_token_env);
    int port = 0;
    if (c->admin_host == NULL)
        return 0;
    if (token == NULL || *token == '\0') {
        fb_log(FB_LOG_INFO, "admin surface off: %s is not set",
               c->admin_token_env);
        return 0;
    }
    fb_admin_hooks hooks = {.metrics = metrics_text,
                            .budgets = dash_budgets,
                            .store_ok = dash_store_ok,
                            .alerts = g->alerts};
    g->admin = fb_admin_start(g->base, c, so, token, &hooks, g, &port);
    if (g->admin == NULL)
        return -1;
    printf("fusebox admin listening on %s:%d\n", c->admin_host, port);
    return 0;
}

static int load_kept(void *arg, const char *scope, const uint8_t fp[32],
                     int64_t seq)
{
    uint8_t key[32];
    fb_replay_key(key, scope, "r", fp, seq);
    fb_kept_add(arg, key);
    return 0;
}

static int load_trip(void *arg, const char *scope, const char *reason,
                     int64_t ts_ms)
{
    (void)ts_ms;
    fb_trip_set(arg, scope, reason);
    fb_log(FB_LOG_WARN, "%s is tripped: %s (fusebox reset to clear)", scope,
           reason);
    return 0;
}

/* Seed every configured ceiling from the store. */
static int seed_scopes(gateway *g, fb_store *st)
{
    const fb_config *c = g->c;
    int64_t now = fb_wall_ms();
    char name[2 * FB_NAME_MAX + 16];
    for (size_t ti = 0; ti <= c->ntenants; ti++) {
        size_t nj = ti < c->ntenants ? c->tenants[ti].njobs : 0;
        for (size_t ji = 0; ji <= nj; ji++) {
            const fb_budget_spec *spec;
            fb_spend_filter f = {0};
            if (ti == c->ntenants) { /* the global scope, last */
                if (ji > 0)
                    break;
                snprintf(name, sizeof name, "global");
                spec = &c->global;
            } else if (ji == nj) {
                snprintf(name, sizeof name, "tenant:%s", c->tenants[ti].name);
                spec = &c->tenants[ti].budget;
                f.tenant = c->tenants[ti].name;
            } else {
                snprintf(name, sizeof name, "job:%s/%s", c->tenants[ti].name,
                         c->tenants[ti].jobs[ji].name);
                spec = &c->tenants[ti].jobs[ji].budget;
                f.tenant = c->tenants[ti].name;
                f.job = c->tenants[ti].jobs[ji].name;
            }
            fb_scope *s = fb_budget_scope(g->budget, name);
            fb_spend sp;
            if (s == NULL)
                return -1;
            fb_scope_set_limit(s, spec);
            f.since_ms = fb_period_start(spec->period, now);
            if (g->shared) { /* this node's own counters, from nothing */
                fb_scope_lease(s);
                fb_scope_seed(s, f.since_ms, 0);
                continue;
            }
            if (fb_store_spend(st, &f, &sp) != FB_OK)
                return -1;
            fb_scope_seed(s, f.since_ms, sp.spent);
        }
    }
    return 0;
}

/* Each client connection can hold an upstream one: 2 descriptors per
 * connection, and the store's and the listener's besides. The soft limit
 * (often 1024) goes up to the hard one; if that is still too few, say so
 * now rather than fail calls at the peak. */
static void raise_fd_limit(const fb_config *c)
{
    struct rlimit rl;
    rlim_t need = 2 * (rlim_t)c->max_connections + 64;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < need && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max < need ? rl.rlim_max : need;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
        (void)getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < need)
        fb_log(FB_LOG_WARN,
               "open files are limited to %llu; max_connections %d needs %llu "
               "(a client and an upstream connection each); raise the limit "
               "or lower limits.max_connections",
               (unsigned long long)rl.rlim_cur, c->max_connections,
               (unsigned long long)need);
}

int fb_gateway_serve(const fb_config *c)
{
    gateway g = {0};
    fb_store *st = NULL, *maint = NULL;
    int rc = 1, port = 0, lock_fd = -1;
    char errbuf[512];
    int64_t recovered = 0, replayed = 0;
    fb_journal *journal = NULL;

    fb_log_set_level(c->log_level);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit(c);
    g.c = c;
    if (evthread_use_pthreads() != 0 || (g.base = event_base_new()) == NULL) {
        fb_log(FB_LOG_ERROR, "cannot start the event loop");
        goto out;
    }
    g.prices = fb_prices_new();
    g.budget = fb_budget_new();
    g.keys = fb_map_new();
    g.replay = fb_replay_new();
    g.metrics = fb_metrics_new();
    g.retry.max_per_fp = c->retry_max_per_fp;
    g.retry.max_percent = c->retry_max_percent;
    g.retry.floor = c->retry_floor;
    g.provider_keys = calloc(c->nproviders + 1, sizeof *g.provider_keys);
    if (!g.prices || !g.budget || !g.keys || !g.replay || !g.metrics ||
        !g.provider_keys)
        goto out;
    for (size_t i = 0; i < c->nprices; i++) {
        if (fb_prices_load_file(g.prices, c->prices[i], errbuf,
                                sizeof errbuf) != FB_OK) {
            fb_log(FB_LOG_ERROR, "%s", errbuf);
            goto out;
        }
    }
    for (size_t i = 0; i < c->nmodel_prices; i++)
        if (fb_prices_set(g.prices, c->model_prices[i].model,
                          &c->model_prices[i].price) != FB_OK)
            goto out;
    for (size_t i = 0; i < c->nproviders; i++) {
        const char *env = c->providers[i].api_key_env;
        const char *v = env ? getenv(env) : NULL;
        if (env && (v == NULL || *v == '\0'))
            fb_log(FB_LOG_WARN,
                   "%s is not set: calls to provider %s carry no provider key",
                   env, c->providers[i].name);
        if (v && *v && (g.provider_keys[i] = strdup(v)) == NULL)
            goto out;
    }

    /* One daemon per store: two would each enforce the whole ceiling,
     * and one's crash recovery would charge the other's calls in flight. */
    {
        char lock[4096];
        snprintf(lock, sizeof lock, "%s/fusebox.lock", c->data_dir);
        (void)mkdir(c->data_dir, 0700);
        lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
            fb_log(FB_LOG_ERROR,
                   "another fusebox serve is using %s (or it is not writable)",
                   c->data_dir);
            goto out;
        }
    }
    if (fb_store_open(c, &st, errbuf, sizeof errbuf) != FB_OK ||
        fb_store_open(c, &maint, errbuf, sizeof errbuf) != FB_OK) {
        fb_log(FB_LOG_ERROR, "%s", errbuf);
        goto out;
    }
    /* The journal first: what it holds was answered before the crash. It
     * is read even when durability is now "full": a run before may have
     * used it. A shared store has none: what a node acknowledges is
     * committed there (another machine must see it if this one dies). */
    g.shared = fb_store_shared(st);
    if (!g.shared &&
        (fb_journal_open(c->data_dir, &journal) != FB_OK ||
         fb_ledger_replay_journal(st, journal, &replayed) != FB_OK)) {
        fb_log(FB_LOG_ERROR, "cannot apply the journal in %s", c->data_dir);
        goto out;
    }
    if (replayed > 0)
        fb_log(FB_LOG_INFO, "applied %lld journal records from the last run",
               (long long)replayed);
    if (c->durability == FB_DURABILITY_FULL) {
        fb_journal_close(journal);
        journal = NULL;
    }
    if (fb_store_recover(st, &recovered) != FB_OK ||
        fb_store_node_join(st, &g.node, &g.next_id) != FB_OK ||
        seed_scopes(&g, st) != 0 ||
        fb_store_trips(st, load_trip, g.replay) != FB_OK ||
        fb_store_result_keys(st, fb_wall_ms(), load_kept, g.replay) != FB_OK) {
        fb_log(FB_LOG_ERROR, "cannot read the ledger in %s", c->data_dir);
        goto out;
    }
    if (recovered > 0)
        fb_log(FB_LOG_WARN,
               "%lld calls were in flight at the last stop; charged in full",
               (long long)recovered);
    g.ledger = fb_ledger_start(g.base, st, maint, journal, 250, on_change, &g);
    if (g.ledger == NULL)
        goto out;
    journal = NULL;
    fb_ledger_set_result_cap(g.ledger, c->replay_max_bytes);
    /* Without the epoch a purge could not reach the cache: no cache. */
    g.epoch = fb_store_epoch_map(c->data_dir);
    g.epoch_seen = g.epoch ? *g.epoch : 0;
    /* A purge by hand reaches this machine's epoch only: in a cluster
     * results are read from the shared store every time. */
    fb_cache_set_cap(g.replay, g.epoch && !g.shared
                                   ? (size_t)c->replay_cache_bytes
                                   : 0);
    if (g.shared) {
        int ms = c->cluster_lease_ms / 4;
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        g.beat_ok_ns = fb_mono_ns(); /* joined just now */
        if ((g.beat_timer = event_new(g.base, -1, EV_PERSIST, beat_tick,
                                      &g)) == NULL ||
            event_add(g.beat_timer, &tv) != 0)
            goto out;
        fb_log(FB_LOG_INFO, "cluster: node %lld on a shared store (lease "
               "%d ms)", (long long)g.node, c->cluster_lease_ms);
    }
    st = maint = NULL;

    fb_upstream_opts uo = {c->upstream_connect_timeout_ms,
                           c->upstream_timeout_ms};
    fb_server_opts so = {c->max_header_bytes, c->max_body_bytes,
                         c->client_timeout_ms, c->max_connections};
    g.up = fb_upstream_new(g.base, &uo);
    g.srv = fb_server_new(g.base, &so, handle, &g);
    if (g.up == NULL || g.srv == NULL)
        goto out;
    if (fb_server_listen(g.srv, c->listen_host, c->listen_port, &port) !=
        FB_OK) {
        fb_log(FB_LOG_ERROR, "cannot listen on %s:%d", c->listen_host,
               c->listen_port);
        goto out;
    }
    g.sig_term = evsignal_new(g.base, SIGTERM, on_signal, &g);
    g.sig_int = evsignal_new(g.base, SIGINT, on_signal, &g);
    g.drain_timer = event_new(g.base, -1, EV_PERSIST, drain_check, &g);
    if (!g.sig_term || !g.sig_int || !g.drain_timer)
        goto out;
    evsignal_add(g.sig_term, NULL);
    evsignal_add(g.sig_int, NULL);
    if (c->alerts_enabled && (g.alerts = fb_alerts_start(c)) == NULL)
        goto out;
    if (start_admin(&g, &so) != 0)
        goto out;

    printf("fusebox listening on %s:%d\n", c->listen_host, port);
    fflush(stdout);
    fb_log(FB_LOG_INFO, "serving on %s:%d, store %s", c->listen_host, port,
           c->data_dir);
    event_base_loop(g.base, EVLOOP_NO_EXIT_ON_EMPTY);
    fb_log(FB_LOG_INFO, "stopped");
    rc = 0;
out:
    /* Close the front first: calls still upstream are abandoned (their rows
     * stay RESERVED and are charged in full at the next start); ledger
     * callbacks still to come only settle. */
    g.stopped = 1;
    fb_alerts_request_stop(g.alerts); /* a round on the admin thread too */
    fb_admin_free(g.admin);
    fb_alerts_stop(g.alerts);
    fb_server_free(g.srv);
    fb_upstream_free(g.up);
    if (g.beat_timer)
        event_free(g.beat_timer);
    /* A clean stop leaves the cluster: the slices go back now, and the
     * calls cut upstream above are charged in full. */
    if (g.shared && g.ledger != NULL)
        fb_ledger_leave_at_stop(g.ledger, g.node);
    fb_ledger_stop(g.ledger);
    g.ledger = NULL;
    /* What is left was upstream when the transfers were cut: nothing more
     * will call back for it. Its rows stay RESERVED (charged in full at
     * the next start); its memory goes now. */
    while (g.live != NULL) {
        gw_req *gr = g.live;
        if (gr->req != NULL) {
            fb_req_reply(gr->req, 499, NULL, NULL, "", 0);
            gr->req = NULL;
        }
        gr->leading = gr->ileading = 0; /* nobody waits any more */
        finish(gr);
    }
    fb_store_close(st);
    fb_store_close(maint);
    fb_journal_close(journal);
    if (g.epoch != NULL)
        munmap((void *)g.epoch, 8);
    if (g.sig_term)
        event_free(g.sig_term);
    if (g.sig_int)
        event_free(g.sig_int);
    if (g.drain_timer)
        event_free(g.drain_timer);
    if (g.keys)
        fb_map_free(g.keys, free);
    fb_budget_free(g.budget);
    fb_replay_free(g.replay);
    fb_metrics_free(g.metrics);
    fb_prices_free(g.prices);
    if (g.provider_keys)
        for (size_t i = 0; i < c->nproviders; i++)
            free(g.provider_keys[i]);
    free(g.provider_keys);
    if (g.base)
        event_base_free(g.base);
    if (lock_fd >= 0)
        close(lock_fd);
    return rc;
}
