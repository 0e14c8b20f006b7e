/* loadgen.c - the HTTP/1.1 load generator of make bench (build/loadgen).
 *
 * Keeps N keep-alive connections to one server on loopback and sends POSTs,
 * either closed-loop (each connection sends its next request as soon as the
 * last answer is in: latency at a fixed concurrency) or open-loop at a fixed
 * rate, corrected for coordinated omission the way wrk2 is (not in Debian):
 * request i is due at t0 + i/rate whether or not the server kept up, and its
 * latency counts from that due time, not from when a connection was free.
 * Prints one JSON object: counts, the achieved rate, and latency percentiles
 * in microseconds from a log-linear histogram (p99.9 included, which wrk
 * --latency does not give).
 *
 *   loadgen -u http://127.0.0.1:PORT/PATH -c CONNS -d SECONDS [-w SECONDS]
 *           [-r RATE] [-b BODYFILE [-i TAG]] [-H 'Name: value']...
 *           [-e STRING] [-t SECONDS]
 *
 * -r RATE   open loop at RATE requests/s (default: closed loop)
 * -w S      warm-up: the same load for S seconds before the measured window
 * -b FILE   the body; with -i TAG, the first "@ID@" in it becomes TAG-n,
 *           n counting from 1, so that every request is different
 * -e STRING every answer body must contain STRING (else it counts bad_body)
 * -t S      after the window, wait at most S seconds for answers in flight
 *
 * Open loop: "count" is the answers to requests due in the measured window;
 * "rps" the answers completed inside it (the achieved rate); "unsent" the
 * requests due in it that no connection was free to send (the server fell
 * behind): they enter the percentiles at the time they had waited when the
 * window closed, a lower bound. "rate_reached" is false when the achieved
 * rate is under 98% of the target or over 1% of the requests went unsent.
 *
 * Answers are framed by Content-Length or chunked encoding (read-until-close
 * is not supported: it is an error). Exit status 0 when the run completed
 * (errors and non-2xx answers are in the JSON for the caller to judge), 1 on
 * bad usage or when the connections could not be opened.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#define MAX_HEADERS 16
/* A longer status, header or chunk-size line is an error. */
#define MAX_LINE 65536
#define CONNECT_TIMEOUT_S 5

/* --- log-linear histogram of nanoseconds --------------------------------
 * Values below 128 have a bucket each; above, each power of two is split in
 * 64 buckets, so a bucket is at most 1/64 (1.6%) wide relative to its value.
 * Percentiles report the bucket's upper bound (never optimistic). */
#define HIST_SUB 64
#define HIST_MAX_SHIFT 40 /* up to 2^47 ns, 39 hours: larger values clamp */
#define HIST_BUCKETS ((HIST_MAX_SHIFT + 2) * HIST_SUB)

struct hist {
    uint64_t counts[HIST_BUCKETS];
    uint64_t n;
    uint64_t max;
    double sum;
};

static int hist_index(uint64_t v)
{
    if (v < 2 * HIST_SUB)
        return (int)v;
    int shift = (63 - __builtin_clzll(v)) - 6; /* v >> shift is in [64, 128) */
    if (shift > HIST_MAX_SHIFT)
        return HIST_BUCKETS - 1;
    return (shift + 1) * HIST_SUB + (int)((v >> shift) - HIST_SUB);
}

static uint64_t hist_upper(int idx)
{
    if (idx < 2 * HIST_SUB)
        return (uint64_t)idx;
    int shift = idx / HIST_SUB - 1;
    uint64_t sub = (uint64_t)(idx % HIST_SUB) + HIST_SUB;
    return ((sub + 1) << shift) - 1;
}

static void hist_record(struct hist *h, uint64_t v)
{
    h->counts[hist_index(v)]++;
    h->n++;
    h->sum += (double)v;
    if (v > h->max)
        h->max = v;
}

static uint64_t hist_percentile(const struct hist *h, double p)
{
    if (h->n == 0)
        return 0;
    uint64_t rank = (uint64_t)ceil(p / 100.0 * (double)h->n);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t u = hist_upper(i);
            return u < h->max ? u : h->max;
        }
    }
    return h->max;
}

/* --- connections and the run ---------------------------------------------- */
enum parse_state {
    P_STATUS,
    P_HEADERS,
    P_BODY,
    P_CHUNK_SIZE,
    P_CHUNK_DATA,
    P_CHUNK_END,
    P_TRAILERS
};

struct loadgen;

struct conn {
    struct loadgen *lg;
    struct bufferevent *bev;
    int connected;
    int queued;       /* in the idle queue (open loop) */
    int busy;         /* a request is in flight */
    int measured;     /* that request was due inside the measured window */
    int64_t start_ns; /* its due time (open loop) or send time (closed) */
    enum parse_state state;
    int status;
    int chunked;
    int has_length;
    int close_after; /* the server said Connection: close */
    uint64_t remaining;
    struct evbuffer *body; /* the answer body, kept only with -e */
};

struct loadgen {
    struct event_base *base;
    struct sockaddr_in addr;
    struct conn *conns;
    int nconns;
    int nconnected;
    int dead; /* connections that could not reconnect */
    /* idle connections, FIFO so that every connection stays in use and none
     * sits idle long enough for the server's keep-alive timeout */
    struct conn **idle;
    int idle_head, idle_len;

    /* the request: head (request line, Host, -H headers), then the body as
     * pre, the unique id (with -i), post */
    char *head;
    size_t head_len;
    char *body;
    size_t pre_len, post_off, post_len;
    const char *tag;
    uint64_t seq;
    const char *expect;

    double rate; /* 0: closed loop */
    double warmup_s, duration_s, drain_s;
    int64_t t0, t_measure, t_end;
    uint64_t next_due; /* open loop: index of the next request to send */
    uint64_t last_due; /* open loop: requests due before t_end */
    int running, stopping;
    struct event *tick, *stop_ev, *deadline_ev;

    struct hist hist;
    uint64_t sent_total, done_total; /* warm-up included */
    uint64_t in_window; /* answers completed inside the measured window */
    uint64_t measured_done, errors, non2xx, bad_body, timeouts, unsent;
    int in_flight;
    const char *fatal; /* set when the run cannot go on */
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static struct timeval tv_from_ns(int64_t ns)
{
    struct timeval tv;
    if (ns < 0)
        ns = 0;
    tv.tv_sec = (time_t)(ns / 1000000000);
    tv.tv_usec = (suseconds_t)((ns % 1000000000) / 1000);
    return tv;
}

static int conn_open(struct conn *c);
static void conn_send(struct conn *c, int64_t start_ns);
static void dispatch(struct loadgen *lg);

static void finish(struct loadgen *lg)
{
    event_base_loopbreak(lg->base);
}

static void idle_push(struct loadgen *lg, struct conn *c)
{
    if (c->queued)
        return;
    lg->idle[(lg->idle_head + lg->idle_len) % lg->nconns] = c;
    lg->idle_len++;
    c->queued = 1;
}

static struct conn *idle_pop(struct loadgen *lg)
{
    while (lg->idle_len > 0) {
        struct conn *c = lg->idle[lg->idle_head];
        lg->idle_head = (lg->idle_head + 1) % lg->nconns;
        lg->idle_len--;
        c->queued = 0;
        /* a connection closed while idle is reconnecting: it comes back
         * when connected */
        if (c->connected && !c->busy)
            return c;
    }
    return NULL;
}

/* A connection is free: give it the next request, or end the run when the
 * window is over and nothing is in flight. */
static void conn_free_for_work(struct conn *c)
{
    struct loadgen *lg = c->lg;
    if (!lg->running)
        return;
    if (lg->stopping) {
        if (lg->in_flight == 0)
            finish(lg);
        return;
    }
    if (lg->rate > 0) {
        idle_push(lg, c);
        dispatch(lg);
    } else {
        conn_send(c, now_ns());
    }
}

static void request_done(struct conn *c, int ok)
{
    struct loadgen *lg = c->lg;
    int64_t t = now_ns();
    c->busy = 0;
    lg->in_flight--;
    lg->done_total++;
    if (ok && t >= lg->t_measure && t < lg->t_end)
        lg->in_window++;
    if (c->measured) {
        if (ok) {
            lg->measured_done++;
            hist_record(&lg->hist, (uint64_t)(t - c->start_ns));
            if (c->status < 200 || c->status > 299)
                lg->non2xx++;
            if (lg->expect != NULL) {
                struct evbuffer_ptr p = evbuffer_search(
                    c->body, lg->expect, strlen(lg->expect), NULL);
                if (p.pos < 0)
                    lg->bad_body++;
            }
        } else {
            lg->errors++;
        }
    }
    if (c->body != NULL)
        evbuffer_drain(c->body, evbuffer_get_length(c->body));
}

/* Drop the connection and open a new one; a request in flight failed. */
static void conn_reset(struct conn *c)
{
    struct loadgen *lg = c->lg;
    if (c->busy)
        request_done(c, 0);
    if (c->connected)
        lg->nconnected--;
    c->connected = 0;
    if (c->bev != NULL) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    if (!lg->running || lg->stopping) {
        if (lg->running && lg->in_flight == 0)
            finish(lg);
        return;
    }
    if (conn_open(c) != 0) {
        lg->dead++;
        if (lg->dead == lg->nconns) {
            lg->fatal = "every connection failed";
            finish(lg);
        }
    }
}

static void conn_send(struct conn *c, int64_t start_ns)
{
    struct loadgen *lg = c->lg;
    struct evbuffer *out = bufferevent_get_output(c->bev);
    char id[96];
    int id_len = 0;

    if (lg->tag != NULL) {
        id_len = snprintf(id, sizeof id, "%s-%" PRIu64, lg->tag, ++lg->seq);
        if (id_len < 0 || (size_t)id_len >= sizeof id)
            id_len = 0;
    }
    size_t body_len = lg->pre_len + (size_t)id_len + lg->post_len;
    evbuffer_add(out, lg->head, lg->head_len);
    evbuffer_add_printf(out, "Content-Length: %zu\r\n\r\n", body_len);
    evbuffer_add(out, lg->body, lg->pre_len);
    evbuffer_add(out, id, (size_t)id_len);
    evbuffer_add(out, lg->body + lg->post_off, lg->post_len);

    c->busy = 1;
    c->start_ns = start_ns;
    c->measured = start_ns >= lg->t_measure && start_ns < lg->t_end;
    c->state = P_STATUS;
    c->status = 0;
    c->chunked = c->has_length = c->close_after = 0;
    c->remaining = 0;
    lg->in_flight++;
    lg->sent_total++;
}

static int64_t due_time(const struct loadgen *lg, uint64_t i)
{
    return lg->t0 + (int64_t)((double)i * 1e9 / lg->rate);
}

/* Open loop: send every request that is due on a free connection; the ones
 * left wait for a connection with their due time unchanged, so the time
 * they wait counts in their latency. */
static void dispatch(struct loadgen *lg)
{
    int64_t t = now_ns();
    while (lg->next_due < lg->last_due && due_time(lg, lg->next_due) <= t) {
        struct conn *c = idle_pop(lg);
        if (c == NULL)
            return; /* a connection freed later sends the backlog */
        conn_send(c, due_time(lg, lg->next_due));
        lg->next_due++;
    }
    if (lg->next_due < lg->last_due && !evtimer_pending(lg->tick, NULL)) {
        struct timeval tv = tv_from_ns(due_time(lg, lg->next_due) - t);
        evtimer_add(lg->tick, &tv);
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    dispatch(arg);
}

/* The measured window is over: no new requests; wait for those in flight. */
static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    struct loadgen *lg = arg;
    if (lg->rate > 0) {
        dispatch(lg); /* what fell due since the last tick */
        /* A request that was due and never sent has waited at least until
         * now: it goes in the histogram at that lower bound, so that a
         * server that cannot keep up shows in the percentiles instead of
         * leaving them to the few requests it did answer. */
        int64_t t = now_ns();
        for (uint64_t i = lg->next_due; i < lg->last_due; i++) {
            int64_t due = due_time(lg, i);
            if (due >= lg->t_measure) {
                hist_record(&lg->hist, (uint64_t)(t - due));
                lg->unsent++;
            }
        }
    }
    lg->stopping = 1;
    evtimer_del(lg->tick);
    if (lg->in_flight == 0)
        finish(lg);
}

/* The drain time is over: what is still in flight timed out. */
static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct loadgen *lg = arg;
    if (!lg->running) {
        lg->fatal = "could not connect in time";
        finish(lg);
        return;
    }
    for (int i = 0; i < lg->nconns; i++)
        if (lg->conns[i].busy && lg->conns[i].measured)
            lg->timeouts++;
    finish(lg);
}

static void start_run(struct loadgen *lg)
{
    lg->running = 1;
    lg->t0 = now_ns();
    lg->t_measure = lg->t0 + (int64_t)(lg->warmup_s * 1e9);
    lg->t_end = lg->t_measure + (int64_t)(lg->duration_s * 1e9);
    struct timeval tv = tv_from_ns(lg->t_end - lg->t0);
    evtimer_add(lg->stop_ev, &tv);
    evtimer_del(lg->deadline_ev);
    tv = tv_from_ns(lg->t_end - lg->t0 + (int64_t)(lg->drain_s * 1e9));
    evtimer_add(lg->deadline_ev, &tv);
    if (lg->rate > 0) {
        /* requests due strictly before t_end */
        double n = (double)(lg->t_end - lg->t0) * lg->rate / 1e9;
        lg->last_due = (uint64_t)ceil(n);
        for (int i = 0; i < lg->nconns; i++)
            idle_push(lg, &lg->conns[i]);
        dispatch(lg);
    } else {
        for (int i = 0; i < lg->nconns; i++)
            conn_send(&lg->conns[i], lg->t0);
    }
}

/* The next line (CRLF or LF) of the input, contiguous, with its length and
 * the bytes to drain past it; NULL while it is incomplete or when it is too
 * long (*too_long set). */
static const char *take_line(struct evbuffer *in, size_t *len, size_t *eat,
                             int *too_long)
{
    size_t eol_len = 0;
    struct evbuffer_ptr p =
        evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
    *too_long = 0;
    if (p.pos < 0) {
        *too_long = evbuffer_get_length(in) > MAX_LINE;
        return NULL;
    }
    if ((size_t)p.pos > MAX_LINE) {
        *too_long = 1;
        return NULL;
    }
    *len = (size_t)p.pos;
    *eat = (size_t)p.pos + eol_len;
    return (const char *)evbuffer_pullup(in, (ev_ssize_t)*eat);
}

static int header_is(const char *line, size_t len, const char *name)
{
    size_t n = strlen(name);
    return len > n && strncasecmp(line, name, n) == 0 && line[n] == ':';
}

static int has_token(const char *s, size_t len, const char *tok)
{
    size_t n = strlen(tok);
    for (size_t i = 0; i + n <= len; i++)
        if (strncasecmp(s + i, tok, n) == 0)
            return 1;
    return 0;
}

static int parse_uint(const char *s, size_t len, int base, uint64_t *out)
{
    uint64_t v = 0;
    size_t i = 0, digits = 0;
    while (i < len && (s[i] == ' ' || s[i] == '\t'))
        i++;
    for (; i < len; i++) {
        int d;
        char ch = s[i];
        if (ch >= '0' && ch <= '9')
            d = ch - '0';
        else if (base == 16 && ch >= 'a' && ch <= 'f')
            d = ch - 'a' + 10;
        else if (base == 16 && ch >= 'A' && ch <= 'F')
            d = ch - 'A' + 10;
        else
            break;
        if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base)
            return -1;
        v = v * (uint64_t)base + (uint64_t)d;
        digits++;
    }
    *out = v;
    return digits > 0 ? 0 : -1;
}

/* Body bytes of the current answer: kept for -e, else dropped. */
static void take_body(struct conn *c, struct evbuffer *in)
{
    size_t avail = evbuffer_get_length(in);
    size_t n = c->remaining < avail ? (size_t)c->remaining : avail;
    if (c->body != NULL)
        evbuffer_remove_buffer(in, c->body, n);
    else
        evbuffer_drain(in, n);
    c->remaining -= n;
}

/* Parse what has arrived. Returns 1 when an answer is complete, 0 when more
 * bytes are needed, -1 on a protocol error. */
static int parse(struct conn *c, struct evbuffer *in)
{
    const char *line = NULL;
    size_t len = 0, eat = 0;
    int too_long;

    for (;;) {
        switch (c->state) {
        case P_STATUS:
        case P_HEADERS:
        case P_CHUNK_SIZE:
        case P_CHUNK_END:
        case P_TRAILERS:
            line = take_line(in, &len, &eat, &too_long);
            if (line == NULL)
                return too_long ? -1 : 0;
            break;
        case P_BODY:
        case P_CHUNK_DATA:
            line = NULL;
            break;
        }

        switch (c->state) {
        case P_STATUS: {
            uint64_t st;
            if (len < 12 || strncmp(line, "HTTP/1.", 7) != 0 ||
                parse_uint(line + 9, 3, 10, &st) != 0)
                return -1;
            c->status = (int)st;
            c->state = P_HEADERS;
            break;
        }
        case P_HEADERS:
            if (len == 0) {
                evbuffer_drain(in, eat);
                if (c->status >= 100 && c->status < 200) {
                    c->state = P_STATUS; /* an interim answer */
                    continue;
                }
                if (c->chunked) {
                    c->state = P_CHUNK_SIZE;
                    continue;
                }
                if (!c->has_length)
                    return -1; /* read-until-close: not supported */
                if (c->remaining == 0)
                    return 1;
                c->state = P_BODY;
                continue;
            }
            if (header_is(line, len, "content-length")) {
                if (parse_uint(line + 15, len - 15, 10, &c->remaining) != 0)
                    return -1;
                c->has_length = 1;
            } else if (header_is(line, len, "transfer-encoding")) {
                c->chunked = has_token(line + 18, len - 18, "chunked");
            } else if (header_is(line, len, "connection")) {
                c->close_after = has_token(line + 11, len - 11, "close");
            }
            break;
        case P_BODY:
            take_body(c, in);
            return c->remaining == 0 ? 1 : 0;
        case P_CHUNK_SIZE:
            if (parse_uint(line, len, 16, &c->remaining) != 0)
                return -1;
            c->state = c->remaining == 0 ? P_TRAILERS : P_CHUNK_DATA;
            break;
        case P_CHUNK_DATA:
            take_body(c, in);
            if (c->remaining > 0)
                return 0;
            c->state = P_CHUNK_END;
            continue;
        case P_CHUNK_END:
            if (len != 0)
                return -1;
            c->state = P_CHUNK_SIZE;
            break;
        case P_TRAILERS:
            if (len == 0) {
                evbuffer_drain(in, eat);
                return 1;
            }
            break;
        }
        evbuffer_drain(in, eat);
    }
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);

    while (evbuffer_get_length(in) > 0) {
        if (!c->busy) { /* bytes nobody asked for */
            conn_reset(c);
            return;
        }
        int r = parse(c, in);
        if (r == 0)
            return;
        if (r < 0) {
            conn_reset(c);
            return;
        }
        request_done(c, 1);
        if (c->close_after) {
            conn_reset(c);
            return;
        }
        conn_free_for_work(c);
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    struct loadgen *lg = c->lg;

    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        /* requests go out in one write; Nagle would hold back the next */
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one,
                   sizeof one);
        c->connected = 1;
        lg->nconnected++;
        if (!lg->running) {
            if (lg->nconnected == lg->nconns)
                start_run(lg);
        } else {
            conn_free_for_work(c);
        }
        return;
    }
    if (!lg->running && !c->connected) {
        lg->fatal = "could not connect";
        finish(lg);
        return;
    }
    conn_reset(c); /* EOF or error */
}

static int conn_open(struct conn *c)
{
    struct loadgen *lg = c->lg;
    c->bev = bufferevent_socket_new(lg->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL)
        return -1;
    bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&lg->addr,
                                   sizeof lg->addr) != 0) {
        bufferevent_free(c->bev);
        c->bev = NULL;
        return -1;
    }
    return 0;
}

/* --- set-up ------------------------------------------------------------- */
static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen -u http://127.0.0.1:PORT/PATH -c CONNS -d SECONDS "
            "[-w SECONDS] [-r RATE]\n"
            "               [-b BODYFILE [-i TAG]] [-H 'Name: value']... "
            "[-e STRING] [-t SECONDS]\n");
}

static int parse_seconds(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= 0) || v > 86400)
        return -1;
    *out = v;
    return 0;
}

/* http://HOST:PORT/PATH, HOST an IPv4 address or localhost. */
static int parse_url(const char *url, struct sockaddr_in *addr, char *hostport,
                     size_t hp_size, const char **path)
{
    const char *p = url;
    if (strncmp(p, "http://", 7) != 0)
        return -1;
    p += 7;
    const char *slash = strchr(p, '/');
    size_t hp_len = slash ? (size_t)(slash - p) : strlen(p);
    if (hp_len == 0 || hp_len >= hp_size)
        return -1;
    memcpy(hostport, p, hp_len);
    hostport[hp_len] = '\0';
    *path = slash ? slash : "/";

    char host[64];
    const char *colon = strrchr(hostport, ':');
    uint64_t port = 80;
    size_t host_len = colon ? (size_t)(colon - hostport) : hp_len;
    if (host_len == 0 || host_len >= sizeof host)
        return -1;
    memcpy(host, hostport, host_len);
    host[host_len] = '\0';
    if (colon != NULL &&
        (parse_uint(colon + 1, strlen(colon + 1), 10, &port) != 0 ||
         port == 0 || port > 65535))
        return -1;
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_port = htons((uint16_t)port);
    if (strcmp(host, "localhost") == 0)
        return inet_pton(AF_INET, "127.0.0.1", &addr->sin_addr) == 1 ? 0 : -1;
    return inet_pton(AF_INET, host, &addr->sin_addr) == 1 ? 0 : -1;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0;
    if (f == NULL)
        return NULL;
    for (;;) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 4096;
            char *nb = ncap > (64u << 20) ? NULL : realloc(buf, ncap);
            if (nb == NULL) {
                free(buf);
                buf = NULL;
                goto out;
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        free(buf);
        buf = NULL;
        goto out;
    }
    *len = n;
out:
    fclose(f);
    return buf;
}

static void print_json(const struct loadgen *lg, const char *url,
                       int64_t measured_ns)
{
    const struct hist *h = &lg->hist;
    double secs = (double)measured_ns / 1e9;
    double rps = secs > 0 ? (double)lg->in_window / secs : 0;
    printf("{\"url\": \"%s\", \"mode\": \"%s\", \"connections\": %d, "
           "\"target_rps\": %.0f, \"warmup_s\": %.3f, \"duration_s\": %.3f,\n",
           url, lg->rate > 0 ? "open" : "closed", lg->nconns, lg->rate,
           lg->warmup_s, secs);
    printf(" \"count\": %" PRIu64 ", \"rps\": %.1f, \"errors\": %" PRIu64
           ", \"timeouts\": %" PRIu64 ", \"non_2xx\": %" PRIu64
           ", \"bad_body\": %" PRIu64 ", \"unsent\": %" PRIu64 ",\n",
           lg->measured_done, rps, lg->errors + lg->timeouts, lg->timeouts,
           lg->non2xx, lg->bad_body, lg->unsent);
    printf(" \"sent_total\": %" PRIu64 ", \"done_total\": %" PRIu64 ",\n",
           lg->sent_total, lg->done_total);
    /* A stall at the very end may leave a few requests unsent: 1% slack. */
    if (lg->rate > 0)
        printf(" \"rate_reached\": %s,\n",
               rps >= 0.98 * lg->rate &&
                       (double)lg->unsent <= 0.01 * lg->rate * secs
                   ? "true"
                   : "false");
    printf(" \"latency_us\": {\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, "
           "\"p99_9\": %.1f, \"max\": %.1f, \"mean\": %.1f}}\n",
           (double)hist_percentile(h, 50) / 1e3,
           (double)hist_percentile(h, 90) / 1e3,
           (double)hist_percentile(h, 99) / 1e3,
           (double)hist_percentile(h, 99.9) / 1e3, (double)h->max / 1e3,
           h->n ? h->sum / (double)h->n / 1e3 : 0.0);
}

int main(int argc, char **argv)
{
    struct loadgen *lg = NULL;
    struct event_config *cfg = NULL;
    const char *url = NULL, *body_file = NULL, *path = "/";
    const char *headers[MAX_HEADERS];
    int nheaders = 0, conns = 0, rc = 1, opt;
    double duration = -1;
    char hostport[256];

    signal(SIGPIPE, SIG_IGN); /* a server that leaves is an error, not a kill */

    lg = calloc(1, sizeof *lg);
    if (lg == NULL)
        goto out;
    lg->drain_s = 5;
    while ((opt = getopt(argc, argv, "u:c:d:w:r:b:i:H:e:t:")) != -1) {
        uint64_t v;
        switch (opt) {
        case 'u':
            url = optarg;
            break;
        case 'c':
            if (parse_uint(optarg, strlen(optarg), 10, &v) != 0 || v < 1 ||
                v > 10000)
                goto bad_usage;
            conns = (int)v;
            break;
        case 'd':
            if (parse_seconds(optarg, &duration) != 0 || duration <= 0)
                goto bad_usage;
            break;
        case 'w':
            if (parse_seconds(optarg, &lg->warmup_s) != 0)
                goto bad_usage;
            break;
        case 't':
            if (parse_seconds(optarg, &lg->drain_s) != 0)
                goto bad_usage;
            break;
        case 'r':
            if (parse_seconds(optarg, &lg->rate) != 0) /* same bounds */
                goto bad_usage;
            break;
        case 'b':
            body_file = optarg;
            break;
        case 'i':
            lg->tag = optarg;
            break;
        case 'H':
            if (nheaders == MAX_HEADERS)
                goto bad_usage;
            headers[nheaders++] = optarg;
            break;
        case 'e':
            lg->expect = optarg;
            break;
        default:
            goto bad_usage;
        }
    }
    if (url == NULL || conns == 0 || duration <= 0 || optind != argc)
        goto bad_usage;
    if (parse_url(url, &lg->addr, hostport, sizeof hostport, &path) != 0) {
        fprintf(stderr, "loadgen: bad URL %s (http://IPV4:PORT/PATH)\n", url);
        goto out;
    }
    lg->duration_s = duration;

    /* The body, split around the unique id's place. */
    size_t body_len = 0;
    if (body_file != NULL) {
        lg->body = read_file(body_file, &body_len);
        if (lg->body == NULL) {
            fprintf(stderr, "loadgen: cannot read %s\n", body_file);
            goto out;
        }
    } else {
        lg->body = calloc(1, 1);
        if (lg->body == NULL)
            goto out;
    }
    const char *mark = lg->tag ? memmem(lg->body, body_len, "@ID@", 4) : NULL;
    if (lg->tag != NULL && mark == NULL) {
        fprintf(stderr, "loadgen: -i needs a body with @ID@ in it\n");
        goto out;
    }
    lg->pre_len = mark ? (size_t)(mark - lg->body) : body_len;
    lg->post_off = mark ? lg->pre_len + 4 : body_len;
    lg->post_len = body_len - lg->post_off;

    /* The request head up to Content-Length, built once. */
    size_t cap = strlen(path) + strlen(hostport) + 64;
    for (int i = 0; i < nheaders; i++)
        cap += strlen(headers[i]) + 2;
    lg->head = malloc(cap);
    if (lg->head == NULL)
        goto out;
    int n = snprintf(lg->head, cap, "POST %s HTTP/1.1\r\nHost: %s\r\n", path,
                     hostport);
    if (n < 0 || (size_t)n >= cap)
        goto out;
    lg->head_len = (size_t)n;
    for (int i = 0; i < nheaders; i++) {
        n = snprintf(lg->head + lg->head_len, cap - lg->head_len, "%s\r\n",
                     headers[i]);
        if (n < 0 || (size_t)n >= cap - lg->head_len)
            goto out;
        lg->head_len += (size_t)n;
    }

    /* Timer-driven sends at 5k/s are 200 µs apart: epoll's millisecond
     * timeouts would add up to 1 ms of our own lateness to each. */
    cfg = event_config_new();
    if (cfg == NULL)
        goto out;
    event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    lg->base = event_base_new_with_config(cfg);
    if (lg->base == NULL)
        goto out;
    lg->tick = evtimer_new(lg->base, on_tick, lg);
    lg->stop_ev = evtimer_new(lg->base, on_stop, lg);
    lg->deadline_ev = evtimer_new(lg->base, on_deadline, lg);
    lg->conns = calloc((size_t)conns, sizeof *lg->conns);
    lg->idle = calloc((size_t)conns, sizeof *lg->idle);
    if (lg->tick == NULL || lg->stop_ev == NULL || lg->deadline_ev == NULL ||
        lg->conns == NULL || lg->idle == NULL)
        goto out;
    lg->nconns = conns;
    for (int i = 0; i < conns; i++) {
        struct conn *c = &lg->conns[i];
        c->lg = lg;
        if (lg->expect != NULL && (c->body = evbuffer_new()) == NULL)
            goto out;
        if (conn_open(c) != 0) {
            fprintf(stderr, "loadgen: cannot open connection %d\n", i);
            goto out;
        }
    }
    struct timeval tv = {CONNECT_TIMEOUT_S, 0};
    evtimer_add(lg->deadline_ev, &tv); /* re-armed by start_run */

    event_base_dispatch(lg->base);
    if (lg->fatal != NULL && !lg->running) {
        fprintf(stderr, "loadgen: %s: %s\n", url, lg->fatal);
        goto out;
    }
    if (lg->fatal != NULL)
        fprintf(stderr, "loadgen: %s: %s\n", url, lg->fatal);
    print_json(lg, url, lg->t_end - lg->t_measure);
    rc = 0;
    goto out;

bad_usage:
    usage();
out:
    if (lg != NULL) {
        for (int i = 0; lg->conns != NULL && i < lg->nconns; i++) {
            if (lg->conns[i].bev != NULL)
                bufferevent_free(lg->conns[i].bev);
            if (lg->conns[i].body != NULL)
                evbuffer_free(lg->conns[i].body);
        }
        if (lg->tick != NULL)
            event_free(lg->tick);
        if (lg->stop_ev != NULL)
            event_free(lg->stop_ev);
        if (lg->deadline_ev != NULL)
            event_free(lg->deadline_ev);
        if (lg->base != NULL)
            event_base_free(lg->base);
        free(lg->conns);
        free(lg->idle);
        free(lg->head);
        free(lg->body);
        free(lg);
    }
    if (cfg != NULL)
        event_config_free(cfg);
    return rc;
}
