/* admin.c - the admin listener and its authentication; see admin.h. */
#include "admin.h"

#include <stdlib.h>
#include <string.h>

#include "keys.h"
#include "log.h"

struct fb_admin {
    fb_server *srv;
    uint8_t token_hash[32];
    fb_admin_hooks hooks;
    void *ud;
};

/* The token a request carries: "Authorization: Bearer T" or the cookie
 * fusebox_admin=T (what the dashboard's browser sends). */
static const char *presented(const fb_http_req *h, size_t *len)
{
    size_t vl;
    const char *v = fb_http_header_get(h, "authorization", &vl);
    if (v != NULL && vl > 7 && fb_strcaseeq(v, 7, "bearer ", 7)) {
        *len = vl - 7;
        return v + 7;
    }
    v = fb_http_header_get(h, "cookie", &vl);
    static const char name[] = "fusebox_admin=";
    const size_t nl = sizeof name - 1;
    for (size_t i = 0; v != NULL && i + nl <= vl; i++) {
        if ((i == 0 || v[i - 1] == ' ' || v[i - 1] == ';') &&
            memcmp(v + i, name, nl) == 0) {
            const char *t = v + i + nl;
            size_t n = 0;
            while (t + n < v + vl && t[n] != ';')
                n++;
            *len = n;
            return t;
        }
    }
    return NULL;
}

/* Both sides hashed, then compared in constant time: neither the token's
 * bytes nor its length leak through timing. */
static int authorized(const fb_admin *a, const fb_http_req *h)
{
    size_t len = 0;
    const char *t = presented(h, &len);
    uint8_t got[32];
    if (t == NULL || len == 0)
        return 0;
    fb_key_hash(t, len, got);
    return fb_key_hash_equal(got, a->token_hash);
}

static void handle(void *ud, fb_req *req)
{
    fb_admin *a = ud;
    const fb_http_req *h = fb_req_head(req);
    const char *q = memchr(h->target, '?', h->target_len);
    size_t pathlen = q ? (size_t)(q - h->target) : h->target_len;

    if (!authorized(a, h)) {
        fb_log(FB_LOG_WARN, "admin: refused a request without the admin "
                            "token from %s",
               fb_req_peer(req));
        fb_req_error(req, 401, "unauthorized",
                     "the admin surface needs the admin token "
                     "(Authorization: Bearer ...)",
                     "www-authenticate: Bearer realm=\"fusebox admin\"\r\n");
        return;
    }
    if (pathlen == 8 && memcmp(h->target, "/metrics", 8) == 0) {
        if (h->method != FB_HTTP_GET) {
            fb_req_error(req, 405, "method_not_allowed", "GET /metrics",
                         "allow: GET\r\n");
            return;
        }
        size_t len = 0;
        char *text = a->hooks.metrics(a->ud, &len);
        if (text == NULL) {
            fb_req_error(req, 503, "unavailable", "out of memory", NULL);
            return;
        }
        fb_req_reply(req, 200, NULL, "text/plain; version=0.0.4; charset=utf-8",
                     text, len);
        free(text);
        return;
    }
    fb_req_error(req, 404, "not_found", "no such admin path", NULL);
}

fb_admin *fb_admin_start(struct event_base *base, const fb_server_opts *so,
                         const char *host, int port, const char *token,
                         const fb_admin_hooks *hooks, void *ud,
                         int *bound_port)
{
    fb_admin *a = calloc(1, sizeof *a);
    if (a == NULL)
        return NULL;
    fb_key_hash(token, strlen(token), a->token_hash);
    a->hooks = *hooks;
    a->ud = ud;
    a->srv = fb_server_new(base, so, handle, a);
    if (a->srv == NULL ||
        fb_server_listen(a->srv, host, port, bound_port) != FB_OK) {
        fb_log(FB_LOG_ERROR, "admin: cannot listen on %s:%d", host, port);
        fb_admin_free(a);
        return NULL;
    }
    return a;
}

void fb_admin_drain(fb_admin *a)
{
    if (a != NULL)
        fb_server_drain(a->srv);
}

void fb_admin_free(fb_admin *a)
{
    if (a == NULL)
        return;
    fb_server_free(a->srv);
    free(a);
}
