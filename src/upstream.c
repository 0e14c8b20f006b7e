/* upstream.c - libcurl multi on libevent: curl tells us which sockets and
 * timeouts to watch (socket and timer callbacks), libevent tells curl when
 * they fire (curl_multi_socket_action), and finished transfers are reaped
 * from curl_multi_info_read. */
#include "upstream.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HEADERS 96
#define MAX_HEADER_BYTES 65536

/* Easy handles kept for reuse: a fresh one allocates (and the kernel
 * zeroes) its transfer buffers on every call, which profiling showed as a
 * quarter of the loop's time under load. */
#define UPSTREAM_IDLE_MAX 256 /* idle upstream connections kept */
#define EASY_POOL 256

struct fb_upstream {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    fb_upstream_opts o;
    fb_up_req *live; /* transfers in flight */
    CURL *pool[EASY_POOL];
    size_t npool;
};

struct fb_up_req {
    fb_upstream *u;
    fb_up_req *prev, *next;
    CURL *easy;
    struct curl_slist *headers;
    fb_up_cbs cbs;
    void *arg;
    int status;
    int head_done;
    char *hbuf; /* raw header lines of the final answer */
    size_t hlen;
    fb_up_header h[MAX_HEADERS];
    size_t nh;
    char errbuf[CURL_ERROR_SIZE];
};

typedef struct sock_ctx {
    struct event *ev;
} sock_ctx;

static void check_done(fb_upstream *u);

static void on_socket_event(evutil_socket_t fd, short what, void *arg)
{
    fb_upstream *u = arg;
    int running = 0;
    int flags = ((what & EV_READ) ? CURL_CSELECT_IN : 0) |
                ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(u->multi, fd, flags, &running);
    check_done(u);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    fb_upstream *u = arg;
    int running = 0;
    (void)fd;
    (void)what;
    curl_multi_socket_action(u->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(u);
}

static int socket_cb(CURL *easy, curl_socket_t s, int what, void *userp,
                     void *socketp)
{
    fb_upstream *u = userp;
    sock_ctx *ctx = socketp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (ctx != NULL) {
            event_free(ctx->ev);
            free(ctx);
            curl_multi_assign(u->multi, s, NULL);
        }
        return 0;
    }
    short kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) |
                 ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    if (ctx == NULL) {
        ctx = calloc(1, sizeof *ctx);
        if (ctx == NULL)
            return -1;
        curl_multi_assign(u->multi, s, ctx);
    } else {
        event_free(ctx->ev);
    }
    ctx->ev = event_new(u->base, s, kind, on_socket_event, u);
    if (ctx->ev == NULL)
        return -1;
    event_add(ctx->ev, NULL);
    return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    fb_upstream *u = userp;
    (void)multi;
    if (timeout_ms < 0) {
        evtimer_del(u->timer);
        return 0;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evtimer_add(u->timer, &tv);
    return 0;
}

fb_upstream *fb_upstream_new(struct event_base *base,
                             const fb_upstream_opts *o)
{
    static int global_done;
    if (!global_done) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
            return NULL;
        global_done = 1;
    }
    fb_upstream *u = calloc(1, sizeof *u);
    if (u == NULL)
        return NULL;
    u->base = base;
    u->o = *o;
    u->multi = curl_multi_init();
    u->timer = evtimer_new(base, on_timer, u);
    if (u->multi == NULL || u->timer == NULL) {
        fb_upstream_free(u);
        return NULL;
    }
    curl_multi_setopt(u->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(u->multi, CURLMOPT_SOCKETDATA, u);
    curl_multi_setopt(u->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(u->multi, CURLMOPT_TIMERDATA, u);
    curl_multi_setopt(u->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    /* libcurl's default keeps 4 idle connections per transfer in flight
     * at the moment one ends: when fewer are in flight for an instant,
     * good connections are closed and reopened (seen under load), and
     * after a burst of 10,000 streams 7,000 idle ones stay. A fixed cap
     * keeps a steady pool and lets a burst's surplus go. */
    curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS, (long)UPSTREAM_IDLE_MAX);
    return u;
}

static void req_unlink_free(fb_up_req *r)
{
    fb_upstream *u = r->u;
    if (r->prev)
        r->prev->next = r->next;
    else
        u->live = r->next;
    if (r->next)
        r->next->prev = r->prev;
    curl_multi_remove_handle(u->multi, r->easy);
    if (u->npool < EASY_POOL) {
        curl_easy_reset(r->easy); /* options gone, buffers kept */
        u->pool[u->npool++] = r->easy;
    } else {
        curl_easy_cleanup(r->easy);
    }
    curl_slist_free_all(r->headers);
    free(r->hbuf);
    free(r);
}

void fb_upstream_free(fb_upstream *u)
{
    if (u == NULL)
        return;
    while (u->live)
        req_unlink_free(u->live);
    while (u->npool > 0)
        curl_easy_cleanup(u->pool[--u->npool]);
    if (u->multi)
        curl_multi_cleanup(u->multi);
    if (u->timer)
        event_free(u->timer);
    free(u);
}

/* Split the buffered header lines into name/value pairs. */
static void index_headers(fb_up_req *r)
{
    size_t i = 0;
    r->nh = 0;
    /* skip the status line */
    while (i < r->hlen && r->hbuf[i] != '\n')
        i++;
    i++;
    while (i < r->hlen && r->nh < MAX_HEADERS) {
        size_t start = i;
        while (i < r->hlen && r->hbuf[i] != '\n')
            i++;
        size_t end = i;
        i++;
        if (end > start && r->hbuf[end - 1] == '\r')
            end--;
        const char *line = r->hbuf + start;
        /* Never pass on what could split into more headers downstream: a
         * folded line, or a control byte (CR, NUL, ...) inside a line. */
        if (end == start || line[0] == ' ' || line[0] == '\t')
            continue;
        int bad = 0;
        for (size_t k = start; k < end && !bad; k++) {
            unsigned char ch = (unsigned char)r->hbuf[k];
            bad = (ch < 0x20 && ch != '\t') || ch == 0x7f;
        }
        const char *colon = memchr(line, ':', end - start);
        if (bad || colon == NULL)
            continue;
        const char *v = colon + 1, *ve = r->hbuf + end;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        fb_up_header *h = &r->h[r->nh++];
        h->name = line;
        h->name_len = (size_t)(colon - line);
        h->value = v;
        h->value_len = (size_t)(ve - v);
    }
}

static size_t header_cb(char *data, size_t size, size_t n, void *arg)
{
    fb_up_req *r = arg;
    size_t len = size * n;
    if (r->head_done)
        return len; /* trailers: ignored */
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        r->hlen = 0; /* a new status line: after 1xx, start over */
    }
    if (len <= 2 && (data[0] == '\r' || data[0] == '\n')) {
        long code = 0;
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
        if (code >= 200) {
            r->status = (int)code;
            r->head_done = 1;
            index_headers(r);
            if (r->cbs.on_head)
                r->cbs.on_head(r->arg, r->status, r->h, r->nh);
        }
        return len;
    }
    if (r->hlen + len > MAX_HEADER_BYTES)
        return 0; /* abort: absurd upstream headers */
    char *nb = realloc(r->hbuf, r->hlen + len);
    if (nb == NULL)
        return 0;
    r->hbuf = nb;
    memcpy(r->hbuf + r->hlen, data, len);
    r->hlen += len;
    return len;
}

static size_t write_cb(char *data, size_t size, size_t n, void *arg)
{
    fb_up_req *r = arg;
    size_t len = size * n;
    if (r->cbs.on_data)
        r->cbs.on_data(r->arg, data, len);
    return len;
}

static void check_done(fb_upstream *u)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(u->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        fb_up_req *r = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        CURLcode rc = m->data.result;
        fb_up_fail fail = FB_UP_OK;
        switch (rc) {
        case CURLE_OK: break;
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_RESOLVE_PROXY:
        case CURLE_COULDNT_CONNECT:
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CACERT_BADFILE:
            fail = FB_UP_CONNECT;
            break;
        case CURLE_OPERATION_TIMEDOUT: {
            /* Timed out before a connection: nothing was sent. */
            curl_off_t pre = 0;
            curl_easy_getinfo(r->easy, CURLINFO_PRETRANSFER_TIME_T, &pre);
            fail = pre > 0 ? FB_UP_TIMEOUT : FB_UP_CONNECT;
            break;
        }
        default: fail = FB_UP_BROKEN;
        }
        const char *detail = r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc);
        if (r->cbs.on_done)
            r->cbs.on_done(r->arg, fail, detail);
        req_unlink_free(r);
    }
}

fb_up_req *fb_upstream_start(fb_upstream *u, const char *method,
                             const char *url, struct curl_slist *headers,
                             const char *body, size_t len,
                             const fb_up_cbs *cbs, void *arg)
{
    fb_up_req *r = calloc(1, sizeof *r);
    if (r == NULL)
        goto fail;
    r->easy = u->npool > 0 ? u->pool[--u->npool] : curl_easy_init();
    if (r->easy == NULL)
        goto fail;
    r->u = u;
    r->cbs = *cbs;
    r->arg = arg;
    r->headers = headers;
    headers = NULL;
    CURL *e = r->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)u->o.connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)u->o.timeout_ms);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, ""); /* decoded for us */
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    /* The provider's certificate and host name are checked (libcurl's
     * defaults, stated so that no later edit loses them: SECURITY.md);
     * redirects are not followed (the provider key must not go elsewhere). */
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    if (strcmp(method, "GET") == 0 && len == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else if (len == 0 && strcmp(method, "POST") != 0) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method); /* no body */
    } else {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        if (strcmp(method, "POST") != 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    if (curl_multi_add_handle(u->multi, e) != CURLM_OK)
        goto fail;
    r->next = u->live;
    if (u->live)
        u->live->prev = r;
    u->live = r;
    return r;
fail:
    curl_slist_free_all(headers);
    if (r) {
        if (r->easy)
            curl_easy_cleanup(r->easy);
        curl_slist_free_all(r->headers);
        free(r);
    }
    return NULL;
}

void fb_upstream_cancel(fb_up_req *r)
{
    if (r != NULL)
        req_unlink_free(r);
}

void fb_upstream_pause(fb_up_req *r, int paused)
{
    curl_easy_pause(r->easy, paused ? CURLPAUSE_RECV : CURLPAUSE_CONT);
}
