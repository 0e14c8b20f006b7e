/* admin.c - the admin listener, its authentication, and the dashboard's
 * report thread; see admin.h.
 *
 *   loop: request -> job (a snapshot of what lives in memory) -> queue
 *   report thread: job -> the store (read, or a trip) -> HTML -> done list
 *   loop: done list -> answer
 */
#include "admin.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "alerts.h"
#include "budget.h"
#include "keys.h"
#include "log.h"
#include "store.h"

#define FORM_MAX 512 /* a form value: a scope, or the token */

typedef enum { JOB_PAGE, JOB_TRIP, JOB_RESET, JOB_ALERTS } job_kind;

typedef struct job {
    struct job *next;
    job_kind kind;
    fb_req *req;
    char scope[2 * FB_NAME_MAX + 16];
    fb_dash_budget *budgets;
    size_t nbudgets;
    int store_ok;
    int64_t now_ms;
    /* results */
    char *body;
    size_t len;
    int status;
} job;

struct fb_admin {
    fb_server *srv;
    const fb_config *c;
    uint8_t token_hash[32];
    fb_admin_hooks hooks;
    void *ud;
    /* the report thread */
    fb_store *store;
    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job *todo, *todo_tail, *done; /* under mu */
    int stopping;                 /* under mu */
    struct event *done_ev;
};

/* ---- authentication ---- */

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
    return v ? fb_http_cookie(v, vl, "fusebox_admin", len) : NULL;
}

/* Both sides hashed, then compared in constant time: neither the token's
 * bytes nor its length leak through timing. */
static int token_ok(const fb_admin *a, const char *t, size_t len)
{
    uint8_t got[32];
    if (t == NULL || len == 0)
        return 0;
    fb_key_hash(t, len, got);
    return fb_key_hash_equal(got, a->token_hash);
}

static int authorized(const fb_admin *a, const fb_http_req *h)
{
    size_t len = 0;
    const char *t = presented(h, &len);
    return token_ok(a, t, len);
}

/* A form may only be posted by the dashboard itself: a browser sends
 * Origin with a POST, and it must be this very host. (The cookie is
 * SameSite=Strict as well.) */
static int same_origin(const fb_http_req *h)
{
    size_t ol, hl;
    const char *o = fb_http_header_get(h, "origin", &ol);
    const char *host = fb_http_header_get(h, "host", &hl);
    if (o == NULL)
        return 1; /* not a browser: the token decides */
    if (host == NULL)
        return 0;
    size_t sl = ol >= 8 && memcmp(o, "https://", 8) == 0  ? 8
                : ol >= 7 && memcmp(o, "http://", 7) == 0 ? 7
                                                           : 0;
    return sl > 0 && ol == hl + sl && memcmp(o + sl, host, hl) == 0;
}

/* "global", "tenant:T", "job:T/J" or "key:ID", names of [A-Za-z0-9_.-]. */
static int scope_ok(const char *s)
{
    const char *n;
    int slash = 0;
    if (strcmp(s, "global") == 0)
        return 1;
    if (strncmp(s, "tenant:", 7) == 0)
        n = s + 7;
    else if (strncmp(s, "key:", 4) == 0)
        n = s + 4;
    else if (strncmp(s, "job:", 4) == 0)
        n = s + 4, slash = 1;
    else
        return 0;
    size_t part = 0;
    for (; *n; n++) {
        char c = *n;
        if (c == '/' && slash == 1 && part > 0) {
            slash = 2;
            part = 0;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.'))
            return 0;
        if (++part >= FB_NAME_MAX)
            return 0;
    }
    return part > 0 && slash != 1;
}

/* ---- the report thread ---- */

static void run_job(fb_admin *a, job *j)
{
    if (j->kind == JOB_ALERTS) {
        fb_err err = fb_alerts_round(a->hooks.alerts, &j->body);
        j->status = err == FB_OK && j->body ? 200 : 503;
        j->len = j->body ? strlen(j->body) : 0;
        return;
    }
    if (j->kind != JOB_PAGE) {
        int set = j->kind == JOB_TRIP;
        fb_err err = fb_store_trip_apply(a->store, j->scope, set,
                                         "by hand: from the dashboard",
                                         j->now_ms);
        if (err != FB_OK) {
            j->status = 503;
            return;
        }
        fb_log(FB_LOG_INFO, "admin: %s %s from the dashboard",
               set ? "tripped" : "reset", j->scope);
        j->status = 303; /* and the page again, which shows it */
        return;
    }
    /* In a cluster the node's counters are its own slices: the budgets
     * are the store's, over every node. */
    for (size_t i = 0; fb_store_shared(a->store) && i < j->nbudgets; i++) {
        fb_dash_budget *b = &j->budgets[i];
        fb_spend sp;
        if (fb_store_scope_spend(a->store, b->scope,
                                 fb_period_start(b->spec.period, j->now_ms),
                                 &sp) == FB_OK) {
            b->spent = sp.spent - sp.reserved;
            b->reserved = sp.reserved;
        }
    }
    fb_dash_in in = {.c = a->c,
                     .now_ms = j->now_ms,
                     .store_ok = j->store_ok,
                     .budgets = j->budgets,
                     .nbudgets = j->nbudgets};
    j->body = fb_dash_render(a->store, &in, &j->len);
    j->status = j->body ? 200 : 503;
}

static void *thread_main(void *arg)
{
    fb_admin *a = arg;
    pthread_mutex_lock(&a->mu);
    for (;;) {
        while (a->todo == NULL && !a->stopping)
            pthread_cond_wait(&a->cv, &a->mu);
        if (a->todo == NULL)
            break;
        job *j = a->todo;
        a->todo = j->next;
        if (a->todo == NULL)
            a->todo_tail = NULL;
        pthread_mutex_unlock(&a->mu);
        run_job(a, j);
        pthread_mutex_lock(&a->mu);
        j->next = a->done;
        a->done = j;
        event_active(a->done_ev, EV_READ, 0);
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

static void job_free(job *j)
{
    free(j->budgets);
    free(j->body);
    free(j);
}

static void answer(job *j)
{
    static const char html[] = "text/html; charset=utf-8";
    if (j->status == 200 && j->kind == JOB_ALERTS)
        fb_req_reply(j->req, 200, NULL, "application/json", j->body, j->len);
    else if (j->status == 200)
        fb_req_reply(j->req, 200,
                     "cache-control: no-store\r\nx-frame-options: DENY\r\n",
                     html, j->body, j->len);
    else if (j->status == 303)
        fb_req_reply(j->req, 303, "location: /dashboard\r\n", NULL, "", 0);
    else
        fb_req_error(j->req, 503, "store_unavailable",
                     "the store cannot be read or written right now", NULL);
    j->req = NULL;
}

static void on_done(evutil_socket_t fd, short what, void *arg)
{
    fb_admin *a = arg;
    (void)fd;
    (void)what;
    pthread_mutex_lock(&a->mu);
    job *list = a->done;
    a->done = NULL;
    pthread_mutex_unlock(&a->mu);
    while (list) {
        job *next = list->next;
        answer(list);
        job_free(list);
        list = next;
    }
}

static void submit(fb_admin *a, fb_req *req, job_kind kind, const char *scope)
{
    job *j = calloc(1, sizeof *j);
    if (j == NULL) {
        fb_req_error(req, 503, "unavailable", "out of memory", NULL);
        return;
    }
    j->kind = kind;
    j->req = req;
    j->now_ms = fb_wall_ms();
    if (scope)
        snprintf(j->scope, sizeof j->scope, "%s", scope);
    if (kind == JOB_PAGE) {
        j->budgets = a->hooks.budgets(a->ud, &j->nbudgets);
        j->store_ok = a->hooks.store_ok(a->ud);
    }
    pthread_mutex_lock(&a->mu);
    if (a->todo_tail)
        a->todo_tail->next = j;
    else
        a->todo = j;
    a->todo_tail = j;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

/* ---- routes ---- */

static void login_page(fb_req *req, int status, const char *msg)
{
    size_t len = 0;
    char *page = fb_dash_login(msg, &len);
    if (page == NULL) {
        fb_req_error(req, 503, "unavailable", "out of memory", NULL);
        return;
    }
    fb_req_reply(req, status, "cache-control: no-store\r\n",
                 "text/html; charset=utf-8", page, len);
    free(page);
}

static int path_is(const fb_http_req *h, size_t pathlen, const char *p)
{
    size_t n = strlen(p);
    return pathlen == n && memcmp(h->target, p, n) == 0;
}

static void handle(void *ud, fb_req *req)
{
    fb_admin *a = ud;
    const fb_http_req *h = fb_req_head(req);
    const char *q = memchr(h->target, '?', h->target_len);
    size_t pathlen = q ? (size_t)(q - h->target) : h->target_len;
    int get = h->method == FB_HTTP_GET, post = h->method == FB_HTTP_POST;
    size_t blen = 0;
    const char *body = fb_req_body(req, &blen);
    char field[FORM_MAX];

    /* Signing in: the only thing that needs no token. */
    if (path_is(h, pathlen, "/dashboard/login")) {
        if (get) {
            login_page(req, 200, NULL);
        } else if (post && same_origin(h) &&
                   fb_http_form_get(body, blen, "token", field, sizeof field) &&
                   token_ok(a, field, strlen(field))) {
            /* The cookie holds the token itself: the surface is on
             * loopback, and the token is what a scraper holds anyway. */
            char hdr[FORM_MAX + 160];
            snprintf(hdr, sizeof hdr,
                     "set-cookie: fusebox_admin=%s; Path=/; HttpOnly; "
                     "SameSite=Strict\r\nlocation: /dashboard\r\n",
                     field);
            fb_req_reply(req, 303, hdr, NULL, "", 0);
        } else {
            fb_log(FB_LOG_WARN, "admin: a sign-in with a wrong token from %s",
                   fb_req_peer(req));
            login_page(req, 401, "That is not the admin token.");
        }
        return;
    }
    if (!authorized(a, h)) {
        fb_log(FB_LOG_WARN,
               "admin: refused a request without the admin token from %s",
               fb_req_peer(req));
        if (get && path_is(h, pathlen, "/dashboard"))
            login_page(req, 401, NULL);
        else
            fb_req_error(req, 401, "unauthorized",
                         "the admin surface needs the admin token "
                         "(Authorization: Bearer ...)",
                         "www-authenticate: Bearer realm=\"fusebox admin\""
                         "\r\n");
        return;
    }
    if (path_is(h, pathlen, "/metrics") && get) {
        size_t len = 0;
        char *text = a->hooks.metrics(a->ud, &len);
        if (text == NULL) {
            fb_req_error(req, 503, "unavailable", "out of memory", NULL);
            return;
        }
        fb_req_reply(req, 200, NULL,
                     "text/plain; version=0.0.4; charset=utf-8", text, len);
        free(text);
        return;
    }
    if ((path_is(h, pathlen, "/dashboard") || path_is(h, pathlen, "/")) &&
        get) {
        submit(a, req, JOB_PAGE, NULL);
        return;
    }
    if (post && !same_origin(h)) {
        fb_req_error(req, 403, "forbidden", "a form from another origin",
                     NULL);
        return;
    }
    if (path_is(h, pathlen, "/alerts/run") && post) {
        if (a->hooks.alerts == NULL)
            fb_req_error(req, 409, "alerts_off", "alerts are off (alerts.enabled)",
                         NULL);
        else
            submit(a, req, JOB_ALERTS, NULL);
        return;
    }
    int trip = path_is(h, pathlen, "/dashboard/trip");
    if ((trip || path_is(h, pathlen, "/dashboard/reset")) && post) {
        if (!fb_http_form_get(body, blen, "scope", field, sizeof field) ||
            !scope_ok(field)) {
            fb_req_error(req, 400, "invalid_request",
                         "scope must be global, tenant:T, job:T/J or key:ID",
                         NULL);
            return;
        }
        submit(a, req, trip ? JOB_TRIP : JOB_RESET, field);
        return;
    }
    if (path_is(h, pathlen, "/metrics") || path_is(h, pathlen, "/dashboard") ||
        path_is(h, pathlen, "/dashboard/trip") ||
        path_is(h, pathlen, "/dashboard/reset")) {
        fb_req_error(req, 405, "method_not_allowed",
                     "GET /metrics, GET /dashboard, POST /dashboard/trip or "
                     "/dashboard/reset",
                     NULL);
        return;
    }
    fb_req_error(req, 404, "not_found", "no such admin path", NULL);
}

/* ---- life ---- */

fb_admin *fb_admin_start(struct event_base *base, const fb_config *c,
                         const fb_server_opts *so, const char *token,
                         const fb_admin_hooks *hooks, void *ud,
                         int *bound_port)
{
    char errbuf[512];
    fb_admin *a = calloc(1, sizeof *a);
    if (a == NULL)
        return NULL;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    fb_key_hash(token, strlen(token), a->token_hash);
    a->c = c;
    a->hooks = *hooks;
    a->ud = ud;
    if (fb_store_open(c, &a->store, errbuf, sizeof errbuf) != FB_OK) {
        fb_log(FB_LOG_ERROR, "admin: %s", errbuf);
        goto fail;
    }
    a->done_ev = event_new(base, -1, 0, on_done, a);
    a->srv = fb_server_new(base, so, handle, a);
    if (a->done_ev == NULL || a->srv == NULL)
        goto fail;
    if (fb_server_listen(a->srv, c->admin_host, c->admin_port, bound_port) !=
        FB_OK) {
        fb_log(FB_LOG_ERROR, "admin: cannot listen on %s:%d", c->admin_host,
               c->admin_port);
        goto fail;
    }
    if (pthread_create(&a->thread, NULL, thread_main, a) != 0)
        goto fail;
    a->started = 1;
    return a;
fail:
    fb_admin_free(a);
    return NULL;
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
    if (a->started) {
        pthread_mutex_lock(&a->mu);
        a->stopping = 1;
        /* What was not started is answered below, not run. */
        job *todo = a->todo;
        a->todo = a->todo_tail = NULL;
        pthread_cond_signal(&a->cv);
        pthread_mutex_unlock(&a->mu);
        pthread_join(a->thread, NULL);
        for (job *j = todo, *next; j; j = next) {
            next = j->next;
            j->status = 503;
            j->next = a->done;
            a->done = j;
        }
    }
    if (a->done_ev != NULL)
        on_done(-1, 0, a); /* every request answered before the server goes */
    fb_server_free(a->srv);
    if (a->done_ev)
        event_free(a->done_ev);
    fb_store_close(a->store);
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cv);
    free(a);
}
