/* ledger.c - one thread owns the store; the loop hands it operations.
 *
 *   loop thread                      ledger thread
 *   -----------                      -------------
 *   fb_ledger_insert() --queue-->    take the whole queue
 *                                    BEGIN; run each op; COMMIT
 *   done_cb(arg, err) <--done list-- event_active(done_ev)
 *
 * Invariants:
 *  1. An op's callback runs exactly once, on the loop thread, and only
 *     after the transaction holding its write has committed (or failed).
 *  2. Ops run in the order they were queued, so a settlement never
 *     overtakes the insert of its row.
 *  3. When idle the thread polls the change feed every poll_ms.
 *  4. A second thread, with its own store handle, does maintenance
 *     (checkpoints) once a second, so the commit path never waits for the
 *     fsync a checkpoint does.
 *  5. With a journal (journal.h), an insert or a completion is written to
 *     it on the loop and its callback runs at once, before the call
 *     returns ("acked"; invariant 1 holds for the others); the op still
 *     goes through the queue in order, so a later read sees it, and a
 *     journal file is emptied only once every record in it was
 *     committed. */
#include "ledger.h"

#include <event2/event.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "budget.h"
#include "journal.h"
#include "log.h"
#include "map.h"

/* Journal mode: how long deferrable writes wait for company, and how
 * many make a batch worth committing at once. */
#define BATCH_WINDOW_NS 2000000
#define BATCH_MAX 512

enum op_kind {
    OP_INSERT,
    OP_SETTLE,
    OP_KEY_LOOKUP,
    OP_COMPLETE,
    OP_RESULT,
    OP_COUNT,
    OP_TRIP,
    OP_IDEM_BIND,
    /* the cluster's: each its own transaction, outside the batch (row
     * locks on budget pools are held for one statement, never across a
     * batch: no deadlocks between nodes) */
    OP_LEASE_TAKE,
    OP_LEASE_GIVE,
    OP_BEAT,
    OP_FLIGHT_CLAIM,
    OP_FLIGHT_RELEASE,
    OP_JOIN
};

typedef struct op {
    struct op *next;
    enum op_kind kind;
    fb_err err;
    int tries;
    void *arg;
    union {
        fb_ledger_done_fn done;
        fb_ledger_key_fn key;
        fb_ledger_result_fn result;
        fb_ledger_count_fn count;
        fb_ledger_lease_fn lease;
        fb_ledger_join_fn join;
    } cb;
    int64_t node;            /* the cluster's ops */
    fb_money want, need, limit, got;
    char *scope;       /* OP_COMPLETE, OP_RESULT, OP_TRIP */
    char *idem;        /* OP_COMPLETE, OP_RESULT */
    int has_result;
    int lost_race;     /* OP_COMPLETE: the seq was kept by another call */
    int in_insert;     /* OP_COMPLETE: settled by its insert (coalesce) */
    fb_result res;     /* kept or found; buffers owned by the op */
    int64_t expires_ms;
    int64_t count;
    fb_entry entry; /* strings point into text[] */
    int64_t now_ms;
    uint64_t lsn;   /* its journal record; 0: none */
    int acked;      /* its callback ran when the record was written */
    uint8_t hash[32];
    fb_key_rec key;
    fb_money spent;
    char text[]; /* copied strings */
} op;

struct fb_ledger {
    fb_store *store;
    fb_store *maint;
    pthread_t maint_thread;
    int has_maint;
    struct event *done_ev;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_cond_t maint_cv;
    op *head, *tail;  /* queued, guarded by mu */
    int64_t head_ns;  /* when the queue last became non-empty, under mu */
    size_t urgent;    /* queued ops that are not deferrable, under mu */
    int gathering;    /* the thread waits for a batch to fill, under mu */
    fb_err last_err;  /* the last batch's, under mu */
    op *done;         /* finished, guarded by mu, reversed */
    size_t backlog;   /* queued + running, guarded by mu */
    int stopping;     /* guarded by mu */
    int poll_ms;
    int64_t leave_node; /* a cluster node leaves when the ledger stops */
    int64_t polled_ns; /* the thread's: when it last read the feed */
    int64_t change_seq;
    fb_ledger_change_fn on_change;
    void *change_arg;
    fb_change *changes; /* for the loop, guarded by mu */
    size_t nchanges;
    int64_t result_cap; /* guarded by mu */
    fb_change *fetched; /* the thread's own, handed over under mu */
    size_t nfetched, capfetched;
    fb_journal *journal; /* loop only; NULL: every op waits for its commit */
    unsigned char *jbuf; /* loop only: a record being encoded */
    size_t jcap;
};


static void op_free(op *o)
{
    free(o->scope);
    free(o->idem);
    fb_result_clear(&o->res);
    free(o);
}

/* Can the op wait for a later commit? Writes whose callers were acked
 * through the journal, or who wait for nothing, can; reads and writes
 * whose callers wait cannot. */
static int deferrable(const op *o)
{
    switch (o->kind) {
    case OP_INSERT:
    case OP_COMPLETE:
        return o->acked || o->cb.done == NULL;
    case OP_SETTLE:
    case OP_TRIP:
    case OP_IDEM_BIND:
    case OP_LEASE_GIVE:
    case OP_FLIGHT_RELEASE:
        return 1;
    default:
        return 0;
    }
}

static void enqueue(fb_ledger *l, op *o)
{
    pthread_mutex_lock(&l->mu);
    o->next = NULL;
    if (l->tail) {
        l->tail->next = o;
    } else {
        l->head = o;
        l->head_ns = fb_mono_ns();
    }
    l->tail = o;
    l->backlog++;
    int urgent = !deferrable(o);
    if (urgent)
        l->urgent++;
    /* A thread gathering a batch is woken only by what ends the wait:
     * waking it for each write it lets by is a context switch apiece. */
    if (urgent || !l->gathering || l->backlog >= BATCH_MAX)
        pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

/* Copy the entry's strings into o->text; returns the op or NULL. */
static op *op_with_entry(const fb_entry *e)
{
    const char *src[6] = {e->tenant, e->job,   e->key_id,
                          e->provider, e->model, e->path};
    size_t need = 0, outcome_len = e->outcome ? strlen(e->outcome) + 1 : 0;
    for (int i = 0; i < 6; i++)
        need += src[i] ? strlen(src[i]) + 1 : 0;
    op *o = calloc(1, sizeof *o + need + outcome_len);
    if (o == NULL)
        return NULL;
    o->entry = *e;
    char *p = o->text;
    const char **dst[6] = {&o->entry.tenant,   &o->entry.job,
                           &o->entry.key_id,   &o->entry.provider,
                           &o->entry.model,    &o->entry.path};
    for (int i = 0; i < 6; i++) {
        if (src[i] == NULL) {
            *dst[i] = NULL;
            continue;
        }
        size_t n = strlen(src[i]) + 1;
        memcpy(p, src[i], n);
        *dst[i] = p;
        p += n;
    }
    if (e->outcome) {
        memcpy(p, e->outcome, outcome_len);
        o->entry.outcome = p;
    }
    if (e->fp != NULL) { /* the caller's copy may be gone by then */
        memcpy(o->hash, e->fp, 32);
        o->entry.fp = o->hash;
    }
    return o;
}

/* ---- journal records ----
 * INSERT:   u8 1; i64 id, ts_ms, reserved, cost, saved, attempt;
 *           i32 status, state, retry; u8 has_fp [fp]; strings tenant, job,
 *           key_id, provider, model, path, outcome.
 * COMPLETE: u8 2; i64 id, cost, expires_ms; i32 status; string outcome;
 *           u8 has_result [strings scope, idem; i32 status, stream;
 *           i64 cost, seq, attempt; fp; u64 headers_len, body_len; the
 *           headers; the body].
 * A string is u32 length (UINT32_MAX: none) and its bytes and a NUL. */
enum { REC_INSERT = 1, REC_COMPLETE = 2 };

typedef struct {
    unsigned char *b;
    size_t len, cap;
} wbuf;

static void w_put(wbuf *w, const void *p, size_t n)
{
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 512;
        while (cap < w->len + n)
            cap *= 2;
        unsigned char *b = realloc(w->b, cap);
        FB_ASSERT(b != NULL);
        w->b = b;
        w->cap = cap;
    }
    memcpy(w->b + w->len, p, n);
    w->len += n;
}

static void w_i64(wbuf *w, int64_t v)
{
    w_put(w, &v, 8);
}

static void w_i32(wbuf *w, int32_t v)
{
    w_put(w, &v, 4);
}

static void w_u8(wbuf *w, uint8_t v)
{
    w_put(w, &v, 1);
}

static void w_str(wbuf *w, const char *s)
{
    uint32_t n = s ? (uint32_t)strlen(s) : UINT32_MAX;
    w_put(w, &n, 4);
    if (s)
        w_put(w, s, (size_t)n + 1);
}

/* Write op o's record (its buffers given as extra parts). 1 when it is in
 * the journal and o's callback may run now. */
static int journal_op(fb_ledger *l, op *o, wbuf *w, const fb_result *r)
{
    struct iovec iov[3] = {{.iov_base = w->b, .iov_len = w->len}};
    int n = 1;
    if (r != NULL) {
        iov[n++] = (struct iovec){.iov_base = r->headers,
                                  .iov_len = r->headers_len};
        iov[n++] = (struct iovec){.iov_base = r->body,
                                  .iov_len = r->body_len};
    }
    o->lsn = fb_journal_append(l->journal, iov, n);
    l->jbuf = w->b; /* kept for the next record */
    l->jcap = w->cap;
    return o->lsn != 0;
}


static int journal_insert(fb_ledger *l, op *o)
{
    const fb_entry *e = &o->entry;
    wbuf w = {.b = l->jbuf, .cap = l->jcap};
    w_u8(&w, REC_INSERT);
    w_i64(&w, e->id);
    w_i64(&w, e->ts_ms);
    w_i64(&w, e->reserved);
    w_i64(&w, e->cost);
    w_i64(&w, e->saved);
    w_i64(&w, e->attempt);
    w_i32(&w, e->status);
    w_i32(&w, (int32_t)e->state);
    w_i32(&w, e->retry);
    w_u8(&w, e->fp != NULL);
    if (e->fp != NULL)
        w_put(&w, e->fp, 32);
    w_str(&w, e->tenant);
    w_str(&w, e->job);
    w_str(&w, e->key_id);
    w_str(&w, e->provider);
    w_str(&w, e->model);
    w_str(&w, e->path);
    w_str(&w, e->outcome);
    return journal_op(l, o, &w, NULL);
}

static int journal_complete(fb_ledger *l, op *o)
{
    wbuf w = {.b = l->jbuf, .cap = l->jcap};
    w_u8(&w, REC_COMPLETE);
    w_i64(&w, o->entry.id);
    w_i64(&w, o->entry.cost);
    w_i64(&w, o->expires_ms);
    w_i32(&w, o->entry.status);
    w_str(&w, o->entry.outcome);
    w_u8(&w, (uint8_t)o->has_result);
    if (!o->has_result)
        return journal_op(l, o, &w, NULL);
    const fb_result *r = &o->res;
    w_str(&w, o->scope);
    w_str(&w, o->idem);
    w_i32(&w, r->status);
    w_i32(&w, r->stream);
    w_i64(&w, r->cost);
    w_i64(&w, r->seq);
    w_i64(&w, r->attempt);
    w_put(&w, r->fp, 32);
    w_i64(&w, (int64_t)r->headers_len);
    w_i64(&w, (int64_t)r->body_len);
    return journal_op(l, o, &w, r);
}

typedef struct {
    const char *p;
    size_t left;
    int bad;
} rbuf;

static void r_get(rbuf *r, void *out, size_t n)
{
    if (r->bad || n > r->left) {
        r->bad = 1;
        memset(out, 0, n);
        return;
    }
    memcpy(out, r->p, n);
    r->p += n;
    r->left -= n;
}

static int64_t r_i64(rbuf *r)
{
    int64_t v;
    r_get(r, &v, 8);
    return v;
}

static int32_t r_i32(rbuf *r)
{
    int32_t v;
    r_get(r, &v, 4);
    return v;
}

static uint8_t r_u8(rbuf *r)
{
    uint8_t v;
    r_get(r, &v, 1);
    return v;
}

/* A string, pointing into the record (which ends it with a NUL). */
static const char *r_str(rbuf *r)
{
    uint32_t n;
    r_get(r, &n, 4);
    if (r->bad || n == UINT32_MAX)
        return NULL;
    if ((size_t)n >= r->left || r->p[n] != '\0' || memchr(r->p, 0, n)) {
        r->bad = 1;
        return NULL;
    }
    const char *s = r->p;
    r->p += (size_t)n + 1;
    r->left -= (size_t)n + 1;
    return s;
}

static const char *r_bytes(rbuf *r, size_t n)
{
    if (r->bad || n > r->left) {
        r->bad = 1;
        return NULL;
    }
    const char *p = r->p;
    r->p += n;
    r->left -= n;
    return p;
}

typedef struct {
    fb_store *st;
    int64_t n;
} replay_ctx;

/* Apply one record again. Each is idempotent: a row already inserted
 * stays (FB_EEXIST), a row already settled stays settled (the UPDATE
 * matches only a reserved row), a live kept result stays (FB_EEXIST). */
static int replay_record(void *arg, const char *rec, size_t len)
{
    replay_ctx *x = arg;
    rbuf r = {.p = rec, .left = len};
    fb_err err = FB_OK;
    uint8_t kind = r_u8(&r), fp[32];
    if (kind == REC_INSERT) {
        fb_entry e = {0};
        e.id = r_i64(&r);
        e.ts_ms = r_i64(&r);
        e.reserved = r_i64(&r);
        e.cost = r_i64(&r);
        e.saved = r_i64(&r);
        e.attempt = r_i64(&r);
        e.status = r_i32(&r);
        e.state = (fb_entry_state)r_i32(&r);
        e.retry = r_i32(&r);
        if (r_u8(&r)) {
            r_get(&r, fp, 32);
            e.fp = fp;
        }
        e.tenant = r_str(&r);
        e.job = r_str(&r);
        e.key_id = r_str(&r);
        e.provider = r_str(&r);
        e.model = r_str(&r);
        e.path = r_str(&r);
        e.outcome = r_str(&r);
        if (r.bad || e.tenant == NULL || e.key_id == NULL ||
            e.provider == NULL)
            goto bad;
        err = fb_store_entry_insert(x->st, &e);
    } else if (kind == REC_COMPLETE) {
        int64_t id = r_i64(&r), cost = r_i64(&r), expires = r_i64(&r);
        int status = r_i32(&r);
        const char *outcome = r_str(&r);
        int has_result = r_u8(&r);
        if (r.bad)
            goto bad;
        err = fb_store_entry_settle(x->st, id, status, cost, outcome);
        if (err == FB_OK && has_result) {
            fb_result res = {0};
            const char *scope = r_str(&r), *idem = r_str(&r);
            res.status = r_i32(&r);
            res.stream = r_i32(&r);
            res.cost = r_i64(&r);
            res.seq = r_i64(&r);
            res.attempt = r_i64(&r);
            r_get(&r, res.fp, 32);
            res.headers_len = (size_t)r_i64(&r);
            res.body_len = (size_t)r_i64(&r);
            res.headers = (char *)r_bytes(&r, res.headers_len);
            res.body = (char *)r_bytes(&r, res.body_len);
            if (r.bad || scope == NULL)
                goto bad;
            err = fb_store_result_put(x->st, scope, &res, idem, fb_wall_ms(),
                                      expires);
        }
    } else {
        goto bad;
    }
    if (err != FB_OK && err != FB_EEXIST) {
        fb_log(FB_LOG_ERROR, "journal: cannot apply a record: %s",
               fb_strerror(err));
        return 1;
    }
    x->n++;
    return 0;
bad:
    fb_log(FB_LOG_WARN, "journal: an unreadable record was skipped");
    return 0;
}

fb_err fb_ledger_replay_journal(fb_store *st, fb_journal *j, int64_t *n)
{
    replay_ctx x = {.st = st};
    fb_err err = fb_store_begin(st);
    if (err == FB_OK)
        err = fb_journal_read(j, replay_record, &x);
    if (err == FB_OK)
        err = fb_store_commit(st);
    if (err != FB_OK) {
        fb_store_rollback(st);
        return err;
    }
    *n = x.n;
    return fb_journal_reset(j);
}

void fb_ledger_insert(fb_ledger *l, const fb_entry *e, fb_ledger_done_fn cb,
                      void *arg)
{
    op *o = op_with_entry(e);
    FB_ASSERT(o != NULL); /* out of memory here would lose money silently */
    o->kind = OP_INSERT;
    o->cb.done = cb;
    o->arg = arg;
    /* In the journal: durable now. The op still goes to the store, in
     * order; the caller goes on at once (cb runs before this returns). */
    int acked = l->journal != NULL && cb != NULL && journal_insert(l, o);
    o->acked = acked;
    enqueue(l, o);
    if (acked)
        cb(arg, FB_OK);
}

void fb_ledger_settle(fb_ledger *l, int64_t id, int status, fb_money cost,
                      const char *outcome)
{
    fb_entry e = {.id = id, .status = status, .cost = cost, .outcome = outcome};
    op *o = op_with_entry(&e);
    FB_ASSERT(o != NULL);
    o->kind = OP_SETTLE;
    enqueue(l, o);
}

static char *dup_or_null(const char *s)
{
    if (s == NULL)
        return NULL;
    char *d = fb_strndup(s, strlen(s));
    FB_ASSERT(d != NULL);
    return d;
}

void fb_ledger_complete(fb_ledger *l, int64_t id, int status, fb_money cost,
                        const char *outcome, const char *scope,
                        const fb_result *keep, const char *idem,
                        int64_t expires_ms, fb_ledger_done_fn cb, void *arg)
{
    fb_entry e = {.id = id, .status = status, .cost = cost, .outcome = outcome};
    op *o = op_with_entry(&e);
    FB_ASSERT(o != NULL);
    o->kind = OP_COMPLETE;
    o->cb.done = cb;
    o->arg = arg;
    if (keep != NULL) {
        o->has_result = 1;
        o->res = *keep;
        o->res.headers = fb_strndup(keep->headers ? keep->headers : "",
                                    keep->headers_len);
        o->res.body = malloc(keep->body_len + 1);
        FB_ASSERT(o->res.headers != NULL && o->res.body != NULL);
        if (keep->body_len)
            memcpy(o->res.body, keep->body, keep->body_len);
        o->scope = dup_or_null(scope);
        o->idem = dup_or_null(idem);
        o->expires_ms = expires_ms;
    }
    int acked = l->journal != NULL && cb != NULL && journal_complete(l, o);
    o->acked = acked;
    enqueue(l, o);
    if (acked)
        cb(arg, FB_OK);
}

/* An op on a kept result or key binding: (scope, idem, fp, seq). */
static op *op_scoped(enum op_kind kind, const char *scope, const char *idem,
                     const uint8_t fp[32], int64_t seq)
{
    op *o = calloc(1, sizeof *o);
    FB_ASSERT(o != NULL);
    o->kind = kind;
    o->scope = dup_or_null(scope);
    o->idem = dup_or_null(idem);
    memcpy(o->hash, fp, 32);
    o->count = seq;
    return o;
}

void fb_ledger_result_lookup(fb_ledger *l, const char *scope,
                             const uint8_t fp[32], int64_t seq,
                             const char *idem, int64_t now_ms,
                             fb_ledger_result_fn cb, void *arg)
{
    op *o = op_scoped(OP_RESULT, scope, idem, fp, seq);
    o->now_ms = now_ms;
    o->cb.result = cb;
    o->arg = arg;
    enqueue(l, o);
}

void fb_ledger_result_claim(fb_ledger *l, int64_t node, const char *scope,
                            const uint8_t fp[32], int64_t seq, int64_t now_ms,
                            fb_ledger_result_fn cb, void *arg)
{
    op *o = op_scoped(OP_RESULT, scope, NULL, fp, seq);
    o->node = node;
    o->now_ms = now_ms;
    o->cb.result = cb;
    o->arg = arg;
    enqueue(l, o);
}

void fb_ledger_occurrences(fb_ledger *l, const fb_entry *who,
                           fb_ledger_count_fn cb, void *arg)
{
    FB_ASSERT(who->fp != NULL);
    op *o = op_with_entry(who);
    FB_ASSERT(o != NULL);
    o->kind = OP_COUNT;
    o->cb.count = cb;
    o->arg = arg;
    enqueue(l, o);
}

void fb_ledger_idem_bind(fb_ledger *l, const char *scope, const char *idem,
                         const uint8_t fp[32], int64_t seq,
                         int64_t expires_ms)
{
    op *o = op_scoped(OP_IDEM_BIND, scope, idem, fp, seq);
    o->expires_ms = expires_ms;
    enqueue(l, o);
}

void fb_ledger_trip(fb_ledger *l, const char *scope, const char *reason)
{
    fb_entry e = {.outcome = reason};
    op *o = op_with_entry(&e);
    FB_ASSERT(o != NULL);
    o->kind = OP_TRIP;
    o->scope = dup_or_null(scope);
    o->now_ms = fb_wall_ms();
    enqueue(l, o);
}

static op *op_cluster(enum op_kind kind, int64_t node, const char *scope)
{
    op *o = calloc(1, sizeof *o);
    FB_ASSERT(o != NULL);
    o->kind = kind;
    o->node = node;
    o->scope = dup_or_null(scope);
    return o;
}

void fb_ledger_lease_take(fb_ledger *l, int64_t node, const char *scope,
                          int64_t window, fb_money limit, fb_money want,
                          fb_money need, fb_ledger_lease_fn cb, void *arg)
{
    op *o = op_cluster(OP_LEASE_TAKE, node, scope);
    o->count = window;
    o->limit = limit;
    o->want = want;
    o->need = need;
    o->cb.lease = cb;
    o->arg = arg;
    enqueue(l, o);
}

void fb_ledger_lease_give(fb_ledger *l, int64_t node, const char *scope,
                          int64_t window, fb_money amount,
                          fb_ledger_lease_fn cb, void *arg)
{
    op *o = op_cluster(OP_LEASE_GIVE, node, scope);
    o->count = window;
    o->want = amount;
    o->cb.lease = cb;
    o->arg = arg;
    enqueue(l, o);
}

void fb_ledger_beat(fb_ledger *l, int64_t node, fb_ledger_done_fn cb,
                    void *arg)
{
    op *o = op_cluster(OP_BEAT, node, NULL);
    o->cb.done = cb;
    o->arg = arg;
    enqueue(l, o);
}

void fb_ledger_join(fb_ledger *l, fb_ledger_join_fn cb, void *arg)
{
    op *o = op_cluster(OP_JOIN, 0, NULL);
    o->cb.join = cb;
    o->arg = arg;
    enqueue(l, o);
}

void fb_ledger_leave_at_stop(fb_ledger *l, int64_t node)
{
    l->leave_node = node;
}

void fb_ledger_flight_claim(fb_ledger *l, int64_t node, const char *scope,
                            const uint8_t fp[32], int64_t seq,
                            fb_ledger_done_fn cb, void *arg)
{
    op *o = op_cluster(OP_FLIGHT_CLAIM, node, scope);
    memcpy(o->hash, fp, 32);
    o->count = seq;
    o->cb.done = cb;
    o->arg = arg;
    enqueue(l, o);
}

void fb_ledger_flight_release(fb_ledger *l, int64_t node, const char *scope,
                              const uint8_t fp[32], int64_t seq)
{
    op *o = op_cluster(OP_FLIGHT_RELEASE, node, scope);
    memcpy(o->hash, fp, 32);
    o->count = seq;
    enqueue(l, o);
}

void fb_ledger_key_lookup(fb_ledger *l, const uint8_t hash[32], int64_t now_ms,
                          fb_ledger_key_fn cb, void *arg)
{
    op *o = calloc(1, sizeof *o);
    FB_ASSERT(o != NULL);
    o->kind = OP_KEY_LOOKUP;
    memcpy(o->hash, hash, 32);
    o->now_ms = now_ms;
    o->cb.key = cb;
    o->arg = arg;
    enqueue(l, o);
}

void fb_ledger_set_result_cap(fb_ledger *l, int64_t max_bytes)
{
    pthread_mutex_lock(&l->mu);
    l->result_cap = max_bytes;
    pthread_mutex_unlock(&l->mu);
}

int fb_ledger_ok(fb_ledger *l)
{
    pthread_mutex_lock(&l->mu);
    int ok = l->last_err == FB_OK;
    pthread_mutex_unlock(&l->mu);
    /* A broken journal alone does not refuse calls: they wait for the
     * store's commit instead (slower, as durable). */
    return ok;
}

size_t fb_ledger_backlog(fb_ledger *l)
{
    pthread_mutex_lock(&l->mu);
    size_t n = l->backlog;
    pthread_mutex_unlock(&l->mu);
    return n;
}

static void run_op(fb_ledger *l, op *o)
{
    switch (o->kind) {
    case OP_INSERT:
        o->err = fb_store_entry_insert(l->store, &o->entry);
        break;
    case OP_SETTLE:
        o->err = fb_store_entry_settle(l->store, o->entry.id, o->entry.status,
                                       o->entry.cost, o->entry.outcome);
        break;
    case OP_COMPLETE:
        if (o->has_result && !o->in_insert) { /* settle and keep: one call */
            fb_err e = fb_store_entry_complete(
                l->store, o->entry.id, o->entry.status, o->entry.cost,
                o->entry.outcome, o->scope, &o->res, o->idem, fb_wall_ms(),
                o->expires_ms);
            o->lost_race = e == FB_EEXIST;
            o->err = e == FB_EEXIST ? FB_OK : e;
            break;
        }
        o->err = o->in_insert ? FB_OK
                              : fb_store_entry_settle(
                                    l->store, o->entry.id, o->entry.status,
                                    o->entry.cost, o->entry.outcome);
        if (o->err == FB_OK && o->has_result) {
            /* A kept result that loses a race for its seq (or key) is
             * dropped; the settlement stands. */
            fb_err e = fb_store_result_put(l->store, o->scope, &o->res,
                                           o->idem, fb_wall_ms(),
                                           o->expires_ms);
            if (e == FB_EEXIST)
                o->lost_race = 1; /* settled; another result holds the seq */
            else if (e != FB_OK)
                o->err = e;
        }
        break;
    case OP_RESULT:
        fb_result_clear(&o->res);
        o->err = o->idem != NULL
                     ? fb_store_result_by_idem(l->store, o->scope, o->idem,
                                               o->now_ms, &o->res)
                 : o->node > 0
                     ? fb_store_result_claim(l->store, o->node, o->scope,
                                             o->hash, o->count, o->now_ms,
                                             &o->res)
                     : fb_store_result_get(l->store, o->scope, o->hash,
                                           o->count, o->now_ms, &o->res);
        break;
    case OP_COUNT:
        o->err = fb_store_occurrences(l->store, o->entry.tenant, o->entry.job,
                                      o->entry.key_id, o->entry.attempt,
                                      o->hash, &o->count);
        break;
    case OP_TRIP:
        o->err = fb_store_trip_set(l->store, o->scope, o->entry.outcome,
                                   o->now_ms);
        if (o->err == FB_OK) {
            char subject[256];
            snprintf(subject, sizeof subject, "%s\t%s", o->scope,
                     o->entry.outcome);
            o->err = fb_store_change_add(l->store, "trip", subject);
        }
        break;
    case OP_IDEM_BIND:
        o->err = fb_store_idem_bind(l->store, o->scope, o->idem, o->hash,
                                    o->count, fb_wall_ms(), o->expires_ms);
        break;
    case OP_LEASE_TAKE:
        o->err = fb_store_lease_take(l->store, o->node, o->scope, o->count,
                                     o->limit, o->want, o->need, &o->got,
                                     &o->limit);
        break;
    case OP_LEASE_GIVE:
        o->err = fb_store_lease_give(l->store, o->node, o->scope, o->count,
                                     o->want);
        break;
    case OP_BEAT: {
        int64_t n = 0;
        o->err = fb_store_node_beat(l->store, o->node);
        /* and the others: whoever looks first reaps a dead node */
        if (o->err != FB_ENOTFOUND && fb_store_reap(l->store, &n) == FB_OK &&
            n > 0)
            fb_log(FB_LOG_WARN, "cluster: reaped %lld dead node%s: their "
                   "calls in flight charged in full, their unused budget "
                   "back", (long long)n, n == 1 ? "" : "s");
        break;
    }
    case OP_FLIGHT_CLAIM:
        o->err = fb_store_flight_claim(l->store, o->node, o->scope, o->hash,
                                       o->count);
        break;
    case OP_FLIGHT_RELEASE:
        o->err = fb_store_flight_release(l->store, o->node, o->scope, o->hash,
                                         o->count);
        break;
    case OP_JOIN:
        o->err = fb_store_node_join(l->store, &o->node, &o->count);
        break;

    case OP_KEY_LOOKUP:
        o->err = fb_store_key_by_hash(l->store, o->hash, &o->key);
        if (o->err == FB_OK && o->key.budget.set) {
            fb_spend sp;
            fb_spend_filter f = {
                .key_id = o->key.id,
                .since_ms = fb_period_start(o->key.budget.period, o->now_ms)};
            o->err = fb_store_spend(l->store, &f, &sp);
            o->spent = sp.spent;
        }
        break;
    }
}

static int collect_change(void *arg, const fb_change *c)
{
    fb_ledger *l = arg;
    if (l->nfetched == l->capfetched) {
        size_t cap = l->capfetched ? l->capfetched * 2 : 16;
        fb_change *n = realloc(l->fetched, cap * sizeof *n);
        if (n == NULL)
            return 1; /* the rest is fetched at the next poll */
        l->fetched = n;
        l->capfetched = cap;
    }
    l->fetched[l->nfetched++] = *c;
    l->change_seq = c->seq;
    return 0;
}

/* Run a batch in one transaction. On failure nothing of it was written
 * (a failed transaction is rolled back whole) and FB_EIO or the like is
 * returned. An op's own error that leaves the transaction alive (a
 * duplicate key, say) fails that op only. */
/* A call's insert and its completion in one batch (the journal lets a
 * batch gather for milliseconds, longer than most calls to a nearby
 * provider) are written as one settled row: the row is written once, and
 * the index of calls in flight gets no entry to remove again. Not when
 * the batch also reads the ledger: an occurrence count or a key's spend
 * could run between the two and must see the call in flight. */
static void coalesce(op *batch)
{
    fb_map *ins = NULL;
    for (op *o = batch; o != NULL; o = o->next)
        if (o->kind == OP_COUNT || o->kind == OP_KEY_LOOKUP)
            return;
    for (op *o = batch; o != NULL; o = o->next) {
        if (o->kind == OP_INSERT && o->entry.state == FB_ENTRY_RESERVED) {
            if (ins == NULL && (ins = fb_map_new()) == NULL)
                return;
            if (fb_map_put(ins, (const char *)&o->entry.id, sizeof o->entry.id,
                           o, NULL) != FB_OK)
                break;
        } else if (o->kind == OP_COMPLETE && ins != NULL) {
            op *i = fb_map_del(ins, (const char *)&o->entry.id,
                               sizeof o->entry.id);
            if (i == NULL)
                continue;
            i->entry.state = FB_ENTRY_SETTLED;
            i->entry.status = o->entry.status;
            i->entry.cost = o->entry.cost;
            i->entry.outcome = o->entry.outcome; /* o outlives the batch */
            o->in_insert = 1;
        }
    }
    fb_map_free(ins, NULL);
}

static fb_err run_batch(fb_ledger *l, op *batch)
{
    fb_err err;
    int rest = 0;
    /* The cluster's ops, each on its own: their errors are their own. */
    for (op *o = batch; o != NULL; o = o->next) {
        if (o->kind >= OP_LEASE_TAKE)
            run_op(l, o);
        else
            rest++;
    }
    if (rest == 0)
        return FB_OK;
    if (batch != NULL && batch->next != NULL)
        coalesce(batch);
    /* A deadlock with another node's batch (a shared store) rolls this
     * one back whole: run it again, a few times. */
    for (int round = 0; round < 3; round++) {
        err = fb_store_begin(l->store);
        for (op *o = batch; o != NULL && err == FB_OK; o = o->next) {
            if (o->kind >= OP_LEASE_TAKE)
                continue;
            o->lost_race = 0;
            run_op(l, o);
            if (!fb_store_in_transaction(l->store))
                err = o->err != FB_OK ? o->err : FB_EIO;
        }
        if (err == FB_OK)
            err = fb_store_commit(l->store);
        if (err != FB_OK)
            fb_store_rollback(l->store);
        if (err != FB_EBUSY)
            break;
    }
    return err;
}

/* Run what was taken from the queue, then hand the results to the loop.
 * Settlements of a failed batch go back to the head of the queue: money
 * already spent must be recorded (a few tries; a row left RESERVED is
 * charged in full at the next start, never less). Returns the batch's
 * error. */
static fb_err process(fb_ledger *l, op *batch, int want_changes)
{
    fb_err terr = batch ? run_batch(l, batch) : FB_OK;
    if (want_changes)
        (void)fb_store_changes(l->store, l->change_seq, collect_change, l);

    op *retry = NULL, *rlast = NULL;
    pthread_mutex_lock(&l->mu);
    for (op *o = batch, *next; o; o = next) {
        next = o->next;
        if (terr != FB_OK && (o->kind == OP_SETTLE || o->kind == OP_TRIP) &&
            ++o->tries < 5) {
            o->next = NULL;
            if (rlast)
                rlast->next = o;
            else
                retry = o;
            rlast = o;
            continue;
        }
        /* The cluster's ops ran on their own. A claim that said "yours"
         * was rolled back with its batch: it is not. */
        if (terr != FB_OK && o->kind < OP_LEASE_TAKE &&
            (o->err == FB_OK ||
             (o->kind == OP_RESULT && o->node > 0 && o->err == FB_ENOTFOUND)))
            o->err = terr;
        o->next = l->done;
        l->done = o;
        l->backlog--;
    }
    if (retry != NULL) { /* back at the head, in their order */
        rlast->next = l->head;
        if (l->head == NULL)
            l->tail = rlast;
        l->head = retry;
    }
    if (l->nfetched > 0) {
        l->changes = l->fetched;
        l->nchanges = l->nfetched;
        l->fetched = NULL;
        l->nfetched = l->capfetched = 0;
    }
    int wake = l->done != NULL || l->nchanges > 0;
    pthread_mutex_unlock(&l->mu);
    if (wake && l->done_ev != NULL)
        event_active(l->done_ev, EV_READ, 0);
    return terr;
}

static void deadline_ns(struct timespec *ts, int64_t ns)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_nsec += (long)(ns % 1000000000);
    ts->tv_sec += (time_t)(ns / 1000000000) + ts->tv_nsec / 1000000000L;
    ts->tv_nsec %= 1000000000L;
}

static void *thread_main(void *arg)
{
    fb_ledger *l = arg;
    fb_err last = FB_OK;
    for (;;) {
        struct timespec ts;
        pthread_mutex_lock(&l->mu);
        /* Idle: wait for work or the next poll. After a failed batch:
         * back off before trying again, unless stopping. */
        if ((l->head == NULL || last != FB_OK) && !l->stopping) {
            int ms = last != FB_OK ? 100 : l->poll_ms;
            deadline_ns(&ts, ms * INT64_C(1000000));
            pthread_cond_timedwait(&l->cv, &l->mu, &ts);
        }
        /* With a journal, a queue of deferrable writes waits up to
         * BATCH_WINDOW_NS for more: one commit for many calls (the WAL
         * frames of shared pages are written once, the locks taken
         * once). Anything urgent, a long queue or stopping ends the
         * wait. */
        while (l->journal != NULL && l->head != NULL && l->urgent == 0 &&
               l->backlog < BATCH_MAX && !l->stopping && last == FB_OK) {
            int64_t left = l->head_ns + BATCH_WINDOW_NS - fb_mono_ns();
            if (left <= 0)
                break;
            deadline_ns(&ts, left);
            l->gathering = 1;
            pthread_cond_timedwait(&l->cv, &l->mu, &ts);
            l->gathering = 0;
        }
        op *batch = l->head;
        l->urgent = 0;
        int stop = l->stopping && batch == NULL;
        l->head = l->tail = NULL;
        /* Fetch again only once the loop took the last ones, and at most
         * every poll_ms: under load a batch every few hundred
         * microseconds would otherwise read the feed each time (on a
         * shared store, a round trip per batch). */
        int64_t now_ns = fb_mono_ns();
        int want_changes = l->on_change != NULL && l->changes == NULL &&
                           now_ns - l->polled_ns >= l->poll_ms * INT64_C(1000000);
        if (want_changes)
            l->polled_ns = now_ns;
        pthread_mutex_unlock(&l->mu);
        if (stop)
            break;
        last = process(l, batch, want_changes);
        pthread_mutex_lock(&l->mu);
        int failing = l->last_err != FB_OK;
        pthread_mutex_unlock(&l->mu);
        /* With nothing queued after a failure, see whether the store
         * takes writes again (space freed): /readyz turns back without
         * waiting for a paid call that it keeps away. */
        /* A batch that only read commits on a full disk too: only a
         * write says the store takes writes again. */
        if (failing && last == FB_OK) {
            last = fb_store_probe(l->store);
            if (last == FB_OK)
                fb_log(FB_LOG_INFO, "store: writable again");
        }
        if (last != FB_OK && !failing)
            fb_log(FB_LOG_ERROR, "store: write failed: %s; refusing paid "
                   "calls until it takes writes again",
                   fb_store_why(l->store));
        if (batch != NULL || failing) {
            pthread_mutex_lock(&l->mu);
            l->last_err = last;
            pthread_mutex_unlock(&l->mu);
            /* The loop heals the journal (on_done) once the store can. */
            if (last == FB_OK && failing && l->done_ev != NULL)
                event_active(l->done_ev, EV_READ, 0);
        }
    }
    return NULL;
}

static void *maint_main(void *arg)
{
    fb_ledger *l = arg;
    unsigned rounds = 0;
    pthread_mutex_lock(&l->mu);
    while (!l->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&l->maint_cv, &l->mu, &ts);
        if (l->stopping)
            break;
        int64_t cap = l->result_cap;
        pthread_mutex_unlock(&l->mu);
        /* Expired results go in small slices (writers wait for each), and
         * the size cap is checked once a minute (it sums every body). */
        int64_t n = 0, now = fb_wall_ms();
        int minute = ++rounds % 60 == 0;
        (void)fb_store_results_purge(l->maint, now, NULL, minute ? cap : 0,
                                     200, &n);
        (void)fb_store_checkpoint(l->maint);
        /* After a burst (10,000 streams, say) glibc keeps the freed heap:
         * 465 of 504 MB free, measured. Give it back once a minute. */
        if (minute)
            malloc_trim(0);
        pthread_mutex_lock(&l->mu);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* On the loop: run the callbacks of finished ops, deliver changes. */
static void on_done(evutil_socket_t fd, short what, void *arg)
{
    fb_ledger *l = arg;
    pthread_mutex_lock(&l->mu);
    op *list = l->done;
    l->done = NULL;
    fb_change *changes = l->changes;
    size_t nchanges = l->nchanges;
    l->changes = NULL;
    l->nchanges = 0;
    pthread_mutex_unlock(&l->mu);

    /* The done list is newest first; reverse it to run in queue order. */
    op *fwd = NULL;
    while (list) {
        op *next = list->next;
        list->next = fwd;
        fwd = list;
        list = next;
    }
    uint64_t applied = 0;
    for (op *o = fwd, *next; o; o = next) {
        next = o->next;
        if (o->lsn != 0 && l->journal != NULL) {
            if (o->err == FB_OK)
                applied = o->lsn; /* in queue order, so in record order */
            else
                fb_journal_hold(l->journal); /* replayed at the next start */
        }
        switch (o->kind) {
        case OP_INSERT:
            if (o->cb.done && !o->acked)
                o->cb.done(o->arg, o->err);
            break;
        case OP_COMPLETE:
            if (o->err != FB_OK) {
                /* The settlement must still land: queue it again (the
                 * result is not kept; the caller was told). */
                fb_ledger_settle(l, o->entry.id, o->entry.status,
                                 o->entry.cost, o->entry.outcome);
            }
            if (o->cb.done && !o->acked)
                o->cb.done(o->arg, o->err == FB_OK && o->lost_race ? FB_EEXIST
                                                                   : o->err);
            break;
        case OP_KEY_LOOKUP:
            o->cb.key(o->arg, o->err, o->err == FB_OK ? &o->key : NULL,
                      o->spent);
            break;
        case OP_RESULT:
            o->cb.result(o->arg, o->err,
                         o->err == FB_OK || o->err == FB_EAGAIN ? &o->res
                                                                : NULL);
            break;
        case OP_COUNT:
            o->cb.count(o->arg, o->err, o->count);
            break;
        case OP_LEASE_TAKE: /* limit now holds what the pool handed out */
            o->cb.lease(o->arg, o->err, o->got, o->limit);
            break;
        case OP_LEASE_GIVE:
            if (o->cb.lease)
                o->cb.lease(o->arg, o->err, 0, o->want);
            break;
        case OP_BEAT:
        case OP_FLIGHT_CLAIM:
            if (o->cb.done)
                o->cb.done(o->arg, o->err);
            break;
        case OP_JOIN:
            o->cb.join(o->arg, o->err, o->node, o->count);
            break;
        case OP_SETTLE:
        case OP_TRIP:
        case OP_IDEM_BIND:
        case OP_FLIGHT_RELEASE:
            break;
        }
        op_free(o);
    }
    if (l->journal != NULL) /* even with none: a broken journal heals */
        fb_journal_applied(l->journal, applied);
    for (size_t i = 0; i < nchanges; i++)
        l->on_change(l->change_arg, &changes[i]);
    free(changes);
}

fb_ledger *fb_ledger_start(struct event_base *base, fb_store *store,
                           fb_store *maint, fb_journal *journal, int poll_ms,
                           fb_ledger_change_fn on_change, void *arg)
{
    fb_ledger *l = calloc(1, sizeof *l);
    if (l == NULL)
        return NULL;
    l->journal = journal;
    l->store = store;
    l->maint = maint;
    l->poll_ms = poll_ms > 0 ? poll_ms : 250;
    l->on_change = on_change;
    l->change_arg = arg;
    if (fb_store_last_change(store, &l->change_seq) != FB_OK)
        goto fail;
    l->done_ev = event_new(base, -1, 0, on_done, l);
    if (l->done_ev == NULL)
        goto fail;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* immune to clock steps */
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, &ca);
    pthread_cond_init(&l->maint_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&l->thread, NULL, thread_main, l) != 0) {
        pthread_mutex_destroy(&l->mu);
        pthread_cond_destroy(&l->cv);
        pthread_cond_destroy(&l->maint_cv);
        goto fail;
    }
    /* Without maintenance the WAL only grows until the stores close. */
    if (maint != NULL &&
        pthread_create(&l->maint_thread, NULL, maint_main, l) == 0)
        l->has_maint = 1;
    return l;
fail:
    if (l->done_ev)
        event_free(l->done_ev);
    free(l);
    return NULL;
}

void fb_ledger_stop(fb_ledger *l)
{
    if (l == NULL)
        return;
    pthread_mutex_lock(&l->mu);
    l->stopping = 1;
    pthread_cond_signal(&l->cv);
    pthread_cond_signal(&l->maint_cv);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->thread, NULL);
    if (l->has_maint)
        pthread_join(l->maint_thread, NULL);
    /* The threads are gone: run the last callbacks here, and whatever they
     * queue in turn (a settlement, say), until nothing is left. */
    for (;;) {
        on_done(-1, 0, l);
        pthread_mutex_lock(&l->mu);
        op *batch = l->head;
        l->head = l->tail = NULL;
        l->urgent = 0;
        pthread_mutex_unlock(&l->mu);
        if (batch == NULL)
            break;
        process(l, batch, 0);
    }
    /* Every settlement is in: a node leaving the cluster now gives back
     * only what it did not spend (its calls cut upstream are charged). */
    if (l->leave_node > 0 &&
        fb_store_node_leave(l->store, l->leave_node) != FB_OK)
        fb_log(FB_LOG_WARN, "cluster: could not leave cleanly (the others "
               "reap this node after the lease): %s", fb_store_why(l->store));
    /* Everything is in the store now (unless a record was held back). */
    if (l->journal != NULL)
        fb_journal_applied(l->journal, UINT64_MAX);
    fb_journal_close(l->journal);
    free(l->jbuf);
    event_free(l->done_ev);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    pthread_cond_destroy(&l->maint_cv);
    fb_store_close(l->maint);
    fb_store_close(l->store);
    free(l->changes);
    free(l->fetched);
    free(l);
}
