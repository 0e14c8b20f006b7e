/* server.c - HTTP/1.1 connections on libevent bufferevents.
 *
 * A connection reads one request at a time:
 *
 *   HEAD --head parsed--> BODY --body complete--> HANDLING --finished--+
 *    ^                                                                 |
 *    +---------------- keep-alive: parse what is buffered <------------+
 *
 * Invariants:
 *  1. While HANDLING the handler owns the fb_req; if the client leaves,
 *     the connection is freed, r->conn becomes NULL, and r lives on until
 *     the handler finishes it (its output is dropped).
 *  2. A request must arrive whole within timeout_ms of the moment the
 *     connection started waiting for it (slow-header and slow-body
 *     clients get 408); a response write that makes no progress for
 *     timeout_ms closes the connection.
 *  3. Nothing read from the client is trusted: every length is bounded
 *     by max_head / max_body before memory is taken for it. */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef struct fb_conn fb_conn;

enum conn_state { ST_HEAD, ST_BODY, ST_HANDLING, ST_CLOSING };

struct fb_req {
    fb_conn *conn; /* NULL once the client is gone */
    fb_http_req head;
    char *head_bytes; /* head.* point here */
    char *body;
    size_t body_len, body_cap;
    fb_http_chunked chunk;
    int keep_alive;
    int streaming;
    int http10;
    void (*close_fn)(void *);
    void *close_arg;
    void (*drain_fn)(void *);
    void *drain_arg;
};

struct fb_conn {
    fb_server *srv;
    fb_conn *prev, *next;
    struct bufferevent *bev;
    struct event *timer;
    enum conn_state state;
    fb_req *req;
    char peer[64];
};

struct fb_server {
    struct event_base *base;
    fb_server_opts o;
    fb_handler_fn handler;
    void *ud;
    struct evconnlistener **listeners;
    size_t nlisteners;
    fb_conn *conns;
    size_t nconns;
    int draining;
};

static void conn_read(struct bufferevent *bev, void *arg);
static void conn_free(fb_conn *c);

const char *fb_http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 303: return "See Other";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    }
    return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
}

static void req_free(fb_req *r)
{
    if (r == NULL)
        return;
    free(r->head_bytes);
    free(r->body);
    free(r);
}

static void arm_timer(fb_conn *c)
{
    struct timeval tv = {c->srv->o.timeout_ms / 1000,
                         (c->srv->o.timeout_ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

/* The JSON error body shared by protocol errors and handler errors. */
static char *error_json(const char *type, const char *message, size_t *len)
{
    json_t *j = json_pack("{s:{s:s, s:s, s:n, s:s}}", "error", "message",
                          message, "type", type, "param", "code", type);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    *len = text ? strlen(text) : 0;
    return text;
}

static void write_head(struct evbuffer *out, int status, const char *extra,
                       const char *ctype, int keep_alive, int http10)
{
    evbuffer_add_printf(out, "HTTP/1.%d %d %s\r\n", http10 ? 0 : 1, status,
                        fb_http_reason(status));
    if (ctype != NULL)
        evbuffer_add_printf(out, "Content-Type: %s\r\n", ctype);
    if (extra != NULL && *extra)
        evbuffer_add(out, extra, strlen(extra));
    if (!keep_alive)
        evbuffer_add(out, "Connection: close\r\n", 19);
    else if (http10)
        evbuffer_add(out, "Connection: keep-alive\r\n", 24);
}

/* A protocol-level error before any handler saw the request: answer and
 * close once written. */
static void conn_fail(fb_conn *c, int status, const char *message)
{
    size_t len;
    char *body = error_json("invalid_request", message, &len);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    write_head(out, status,
               status < 500 && status != 408 ? "x-should-retry: false\r\n"
                                             : NULL,
               "application/json", 0, 0);
    evbuffer_add_printf(out, "Content-Length: %zu\r\n\r\n", len);
    if (body)
        evbuffer_add(out, body, len);
    free(body);
    req_free(c->req);
    c->req = NULL;
    c->state = ST_CLOSING;
    evtimer_del(c->timer);
    bufferevent_disable(c->bev, EV_READ);
    if (evbuffer_get_length(out) == 0)
        conn_free(c);
}

static void conn_free(fb_conn *c)
{
    fb_server *s = c->srv;
    if (c->req != NULL) {
        if (c->state == ST_HANDLING) {
            fb_req *r = c->req;
            r->conn = NULL;
            c->req = NULL;
            if (r->close_fn)
                r->close_fn(r->close_arg);
        } else {
            req_free(c->req);
        }
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    event_free(c->timer);
    bufferevent_free(c->bev);
    free(c);
}

/* Finish the current request: keep the connection for the next one or
 * close it once the answer is written. */
static void req_done(fb_req *r)
{
    fb_conn *c = r->conn;
    int keep = r->keep_alive;
    req_free(r);
    if (c == NULL)
        return;
    c->req = NULL;
    if (!keep) {
        c->state = ST_CLOSING;
        bufferevent_disable(c->bev, EV_READ);
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
            conn_free(c);
        return;
    }
    c->state = ST_HEAD;
    arm_timer(c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, 0);
    bufferevent_enable(c->bev, EV_READ);
    /* A pipelined request may already be buffered: parse it from the loop,
     * not from here, or a long pipeline would recurse without bound. */
    if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0)
        bufferevent_trigger(c->bev, EV_READ,
                            BEV_TRIG_IGNORE_WATERMARKS |
                                BEV_TRIG_DEFER_CALLBACKS);
}

/* Move the parsed head into the request, with pointers into its copy. */
static int take_head(fb_req *r, const char *data, size_t n)
{
    r->head_bytes = malloc(n);
    if (r->head_bytes == NULL)
        return -1;
    memcpy(r->head_bytes, data, n);
    ptrdiff_t d = r->head_bytes - data;
    r->head.method_str += d;
    r->head.target += d;
    for (size_t i = 0; i < r->head.nheaders; i++) {
        r->head.headers[i].name += d;
        r->head.headers[i].value += d;
    }
    return 0;
}

static int body_reserve(fb_req *r, size_t want)
{
    if (want <= r->body_cap)
        return 0;
    size_t cap = r->body_cap ? r->body_cap : 4096;
    while (cap < want)
        cap *= 2;
    char *nb = realloc(r->body, cap);
    if (nb == NULL)
        return -1;
    r->body = nb;
    r->body_cap = cap;
    return 0;
}

static void dispatch(fb_conn *c)
{
    c->state = ST_HANDLING;
    evtimer_del(c->timer);
    /* Keep reading so that a client leaving is noticed, but stop before
     * a flood of pipelined bytes piles up. */
    bufferevent_setwatermark(c->bev, EV_READ, 0, c->srv->o.max_head);
    c->srv->handler(c->srv->ud, c->req);
}

static void read_body(fb_conn *c)
{
    fb_req *r = c->req;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (!r->head.chunked) {
        size_t want = (size_t)r->head.content_length - r->body_len;
        size_t have = evbuffer_get_length(in);
        size_t n = have < want ? have : want;
        if (n > 0) {
            evbuffer_remove(in, r->body + r->body_len, n);
            r->body_len += n;
        }
        if (r->body_len == (size_t)r->head.content_length)
            dispatch(c);
        return;
    }
    for (;;) {
        size_t have = evbuffer_get_length(in);
        if (have == 0)
            return;
        const char *data = (const char *)evbuffer_pullup(in, -1);
        if (body_reserve(r, r->body_len + have + 1) != 0) {
            conn_fail(c, 500, "out of memory");
            return;
        }
        size_t used = 0, outlen = 0;
        int rc = fb_http_chunked_decode(&r->chunk, data, have, &used,
                                        r->body + r->body_len, &outlen,
                                        c->srv->o.max_body);
        r->body_len += outlen;
        evbuffer_drain(in, used);
        if (rc < 0) {
            conn_fail(c, -rc,
                      rc == -413 ? "request body is larger than the limit"
                                 : "malformed chunked request body");
            return;
        }
        if (rc == 1) {
            dispatch(c);
            return;
        }
        if (used == 0)
            return; /* need more bytes */
    }
}

static void read_head(fb_conn *c)
{
    fb_server *s = c->srv;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t have = evbuffer_get_length(in);
    size_t look = have < s->o.max_head + 1 ? have : s->o.max_head + 1;
    const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)look);
    fb_req *r = calloc(1, sizeof *r);
    if (r == NULL) {
        conn_fail(c, 500, "out of memory");
        return;
    }
    int n = fb_http_parse_request(data, look, s->o.max_head, &r->head);
    if (n == 0) {
        free(r);
        return;
    }
    if (n < 0) {
        free(r);
        conn_fail(c, -n,
                  n == -431   ? "request head is larger than the limit"
                  : n == -501 ? "transfer coding not implemented"
                  : n == -505 ? "HTTP version not supported"
                              : "malformed HTTP request");
        return;
    }
    if (take_head(r, data, (size_t)n) != 0) {
        free(r);
        conn_fail(c, 500, "out of memory");
        return;
    }
    evbuffer_drain(in, (size_t)n);
    r->conn = c;
    r->keep_alive = r->head.keep_alive && !s->draining;
    r->http10 = r->head.minor_version == 0;
    c->req = r;
    if (r->head.content_length > 0 &&
        (uint64_t)r->head.content_length > s->o.max_body) {
        conn_fail(c, 413, "request body is larger than the limit");
        return;
    }
    if (!r->head.chunked && r->head.content_length > 0 &&
        body_reserve(r, (size_t)r->head.content_length + 1) != 0) {
        conn_fail(c, 500, "out of memory");
        return;
    }
    if (r->head.expect_continue && r->head.minor_version == 1 &&
        (r->head.chunked || r->head.content_length > 0))
        evbuffer_add(bufferevent_get_output(c->bev),
                     "HTTP/1.1 100 Continue\r\n\r\n", 25);
    c->state = ST_BODY;
    if (!r->head.chunked && r->head.content_length <= 0) {
        dispatch(c);
        return;
    }
    read_body(c);
}

static void conn_read(struct bufferevent *bev, void *arg)
{
    fb_conn *c = arg;
    (void)bev;
    if (c->state == ST_HEAD)
        read_head(c);
    else if (c->state == ST_BODY)
        read_body(c);
    /* HANDLING: leave pipelined bytes buffered; CLOSING: ignore. */
}

static void conn_write(struct bufferevent *bev, void *arg)
{
    fb_conn *c = arg;
    if (c->state == ST_HANDLING && c->req != NULL && c->req->drain_fn) {
        void (*fn)(void *) = c->req->drain_fn;
        c->req->drain_fn = NULL;
        fn(c->req->drain_arg);
        return;
    }
    if (c->state == ST_CLOSING &&
        evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        conn_free(c);
}

static void conn_event(struct bufferevent *bev, short what, void *arg)
{
    fb_conn *c = arg;
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        /* EOF with an unfinished request head is just a client leaving. */
        conn_free(c);
    }
}

static void conn_timeout(evutil_socket_t fd, short what, void *arg)
{
    fb_conn *c = arg;
    (void)fd;
    (void)what;
    if (c->state == ST_HEAD &&
        evbuffer_get_length(bufferevent_get_input(c->bev)) == 0) {
        /* Still writing the last answer: not idle (a stalled write is cut
         * by the write timeout instead). */
        if (evbuffer_get_length(bufferevent_get_output(c->bev)) > 0) {
            arm_timer(c);
            return;
        }
        conn_free(c); /* an idle keep-alive connection */
        return;
    }
    if (c->state == ST_HEAD || c->state == ST_BODY)
        conn_fail(c, 408, "request not received in time");
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
{
    fb_server *s = arg;
    fb_conn *c = NULL;
    (void)l;
    (void)salen;
    if (s->nconns >= (size_t)s->o.max_conns) {
        evutil_closesocket(fd);
        return;
    }
    c = calloc(1, sizeof *c);
    if (c == NULL) {
        evutil_closesocket(fd);
        return;
    }
    c->srv = s;
    c->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
    c->timer = evtimer_new(s->base, conn_timeout, c);
    if (c->bev == NULL || c->timer == NULL) {
        if (c->bev)
            bufferevent_free(c->bev);
        else
            evutil_closesocket(fd);
        if (c->timer)
            event_free(c->timer);
        free(c);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in *in4 = (struct sockaddr_in *)sa;
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &in4->sin_addr, ip, sizeof ip);
        snprintf(c->peer, sizeof c->peer, "%s:%d", ip, ntohs(in4->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
        char ip[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
        snprintf(c->peer, sizeof c->peer, "[%s]:%d", ip,
                 ntohs(in6->sin6_port));
    }
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    struct timeval wtv = {s->o.timeout_ms / 1000,
                          (s->o.timeout_ms % 1000) * 1000};
    bufferevent_set_timeouts(c->bev, NULL, &wtv);
    bufferevent_setcb(c->bev, conn_read, conn_write, conn_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->state = ST_HEAD;
    arm_timer(c);
}

fb_server *fb_server_new(struct event_base *base, const fb_server_opts *o,
                         fb_handler_fn handler, void *ud)
{
    fb_server *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->base = base;
    s->o = *o;
    s->handler = handler;
    s->ud = ud;
    return s;
}

fb_err fb_server_listen(fb_server *s, const char *host, int port,
                        int *bound_port)
{
    struct addrinfo hints = {0}, *res = NULL;
    char portstr[16];
    fb_err err = FB_EIO;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(portstr, sizeof portstr, "%d", port);
    if (getaddrinfo(host, portstr, &hints, &res) != 0 || res == NULL)
        goto out;
    struct evconnlistener *l = evconnlistener_new_bind(
        s->base, on_accept, s,
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, 1024,
        res->ai_addr, (int)res->ai_addrlen);
    if (l == NULL)
        goto out;
    struct evconnlistener **nl =
        realloc(s->listeners, (s->nlisteners + 1) * sizeof *nl);
    if (nl == NULL) {
        evconnlistener_free(l);
        err = FB_ENOMEM;
        goto out;
    }
    s->listeners = nl;
    s->listeners[s->nlisteners++] = l;
    if (bound_port != NULL) {
        struct sockaddr_storage ss = {0};
        socklen_t sl = sizeof ss;
        /* err is still FB_EIO; the listener goes with the server. */
        if (getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&ss,
                        &sl) != 0)
            goto out;
        *bound_port = ss.ss_family == AF_INET6
                          ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                          : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    err = FB_OK;
out:
    if (res)
        freeaddrinfo(res);
    return err;
}

void fb_server_drain(fb_server *s)
{
    for (size_t i = 0; i < s->nlisteners; i++)
        evconnlistener_free(s->listeners[i]);
    s->nlisteners = 0;
    s->draining = 1;
    for (fb_conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        if (c->state == ST_HEAD &&
            evbuffer_get_length(bufferevent_get_input(c->bev)) == 0)
            conn_free(c);
        else if (c->req != NULL)
            c->req->keep_alive = 0;
    }
}

void fb_server_free(fb_server *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->nlisteners; i++)
        evconnlistener_free(s->listeners[i]);
    free(s->listeners);
    while (s->conns)
        conn_free(s->conns);
    free(s);
}

size_t fb_server_connections(const fb_server *s)
{
    return s->nconns;
}

const fb_http_req *fb_req_head(const fb_req *r)
{
    return &r->head;
}

const char *fb_req_body(const fb_req *r, size_t *len)
{
    *len = r->body_len;
    return r->body ? r->body : "";
}

const char *fb_req_peer(const fb_req *r)
{
    return r->conn ? r->conn->peer : "-";
}

void fb_req_on_close(fb_req *r, void (*fn)(void *arg), void *arg)
{
    r->close_fn = fn;
    r->close_arg = arg;
}

int fb_req_client_gone(const fb_req *r)
{
    return r->conn == NULL;
}

void fb_req_reply(fb_req *r, int status, const char *extra_headers,
                  const char *ctype, const char *body, size_t len)
{
    if (r->conn != NULL) {
        struct bufferevent *bev = r->conn->bev;
        struct evbuffer *out = bufferevent_get_output(bev);
        /* Nothing queued before it: the answer is written now, and only
         * what the socket does not take is left to the bufferevent. Going
         * through it would cost two epoll_ctl calls and a loop pass for
         * every answer (it waits to be told the socket is writable). */
        int direct = evbuffer_get_length(out) == 0;
        struct evbuffer *b = direct ? evbuffer_new() : NULL;
        struct evbuffer *dst = b ? b : out;
        write_head(dst, status, extra_headers, ctype, r->keep_alive,
                   r->http10);
        evbuffer_add_printf(dst, "Content-Length: %zu\r\n\r\n", len);
        if (len > 0 && r->head.method != FB_HTTP_HEAD)
            evbuffer_add(dst, body, len);
        if (b != NULL) {
            (void)evbuffer_write(b, bufferevent_getfd(bev));
            if (evbuffer_get_length(b) > 0) /* the rest, or a failure */
                evbuffer_add_buffer(out, b);
            evbuffer_free(b);
        }
    }
    req_done(r);
}

void fb_req_error(fb_req *r, int status, const char *type,
                  const char *message, const char *extra_headers)
{
    size_t len;
    char *body = error_json(type, message, &len);
    fb_req_reply(r, status, extra_headers, "application/json",
                 body ? body : "", len);
    free(body);
}

void fb_req_stream_begin(fb_req *r, int status, const char *extra_headers,
                         const char *ctype)
{
    r->streaming = 1;
    if (r->http10)
        r->keep_alive = 0; /* the end of the body is the end of the link */
    if (r->conn == NULL)
        return;
    struct evbuffer *out = bufferevent_get_output(r->conn->bev);
    write_head(out, status, extra_headers, ctype, r->keep_alive, r->http10);
    if (!r->http10)
        evbuffer_add(out, "Transfer-Encoding: chunked\r\n", 28);
    evbuffer_add(out, "\r\n", 2);
}

void fb_req_stream_write(fb_req *r, const void *data, size_t len)
{
    if (r->conn == NULL || len == 0)
        return;
    struct evbuffer *out = bufferevent_get_output(r->conn->bev);
    if (r->http10) {
        evbuffer_add(out, data, len);
        return;
    }
    evbuffer_add_printf(out, "%zx\r\n", len);
    evbuffer_add(out, data, len);
    evbuffer_add(out, "\r\n", 2);
}

size_t fb_req_pending_output(const fb_req *r)
{
    return r->conn ? evbuffer_get_length(bufferevent_get_output(r->conn->bev))
                   : 0;
}

void fb_req_on_drain(fb_req *r, void (*fn)(void *arg), void *arg)
{
    r->drain_fn = fn;
    r->drain_arg = arg;
}

void fb_req_abort(fb_req *r)
{
    r->keep_alive = 0;
    req_done(r); /* closes once what was written is flushed */
}

void fb_req_stream_end(fb_req *r)
{
    if (r->conn != NULL && !r->http10)
        evbuffer_add(bufferevent_get_output(r->conn->bev), "0\r\n\r\n", 5);
    req_done(r);
}
