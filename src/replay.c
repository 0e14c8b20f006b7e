/* replay.c - fingerprints, single flight, occurrence counters, retry
 * budgets and trips: the in-memory half of replay, all on the loop.
 *
 * NOTES ON THE K-TH IDENTICAL CALL
 *  1. Results are kept per (scope, fingerprint, seq). Attempt N's k-th
 *     occurrence of a fingerprint is answered with result seq k if an
 *     earlier attempt bought it; otherwise it is bought and kept as seq k.
 *  2. Occurrences are counted per (scope, attempt, fingerprint): the base
 *     comes from the ledger (calls this attempt already made, as after a
 *     restart), then the loop counts; callers that arrive while the base
 *     loads wait in order, so concurrent identical calls get distinct k.
 *  3. Single flight is per (scope, fingerprint, seq): calls that would be
 *     answered by the same result share one upstream call. */
#include "replay.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "map.h"
#include "store.h"

typedef struct waitq {
    void **w;
    size_t n, cap;
} waitq;

typedef struct occ {
    int loaded;
    int64_t next;
    waitq q;
    int64_t *freed; /* occurrences released by failed calls */
    size_t nfreed, capfreed;
} occ;

typedef struct day_count {
    int64_t day;
    int64_t calls, retries;
} day_count;

/* 2^24 bits (2 MiB), 7 probes: about 1% false "maybe" at 1.7 million
 * kept results. */
#define BLOOM_BITS (UINT64_C(1) << 24)
#define BLOOM_PROBES 7

struct fb_replay {
    uint8_t *bloom;
    fb_map *flights;  /* key -> waitq* */
    fb_map *occs;     /* key -> occ* */
    fb_map *failures; /* key -> (intptr_t) count */
    fb_map *jobs;     /* scope -> day_count* */
    fb_map *trips;    /* scope -> reason (char*) */
    fb_map *cache;    /* key -> cached* */
    struct cached *lru_head, *lru_tail; /* most recently used first */
    size_t cache_bytes, cache_cap;
};

typedef struct cached {
    struct cached *prev, *next;
    uint8_t key[32];
    int64_t expires_ms;
    fb_result res; /* headers and body owned */
} cached;

/* OpenSSL 3 looks the algorithm up on every init given EVP_sha256();
 * fetched once, it does not (a fifth of a replayed call's hashing). */
static EVP_MD *sha256_md;
static void fetch_sha256(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static void sha256_parts(uint8_t out[32], const void *const *parts,
                         const size_t *lens, size_t n)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned int ol = 32;
    pthread_once(&once, fetch_sha256);
    FB_ASSERT(sha256_md != NULL && c != NULL &&
              EVP_DigestInit_ex(c, sha256_md, NULL) == 1);
    for (size_t i = 0; i < n; i++) {
        FB_ASSERT(EVP_DigestUpdate(c, parts[i], lens[i]) == 1);
        FB_ASSERT(EVP_DigestUpdate(c, "", 1) == 1); /* separator */
    }
    FB_ASSERT(EVP_DigestFinal_ex(c, out, &ol) == 1);
    EVP_MD_CTX_free(c);
}

void fb_fingerprint(const char *method, const char *provider,
                    const char *path, const char *body, size_t len,
                    const fb_json *doc, char *const *ignore, size_t nignore,
                    uint8_t fp[32])
{
    char *canon = NULL;
    size_t clen = 0;
    /* Only an object or an array is canonicalised, as before (jansson
     * without JSON_DECODE_ANY); anything else is hashed as sent. */
    fb_json *own = doc == NULL && len > 0
                       ? fb_json_parse(body, len, FB_JSON_UNIQUE, NULL, 0)
                       : NULL;
    const fb_json *j = doc ? doc : own;
    fb_json_type t = fb_json_typeof(j, j ? 0 : -1);
    if (t == FB_JSON_OBJECT || t == FB_JSON_ARRAY)
        canon = fb_json_canonical(j, ignore, nignore, &clen);
    fb_json_free(own);
    const void *parts[5] = {"fusebox-fp-1", method, provider, path,
                            canon ? canon : body};
    size_t lens[5] = {12, strlen(method), strlen(provider), strlen(path),
                      canon ? clen : len};
    sha256_parts(fp, parts, lens, 5);
    free(canon);
}

void fb_replay_key(uint8_t out[32], const char *a, const char *b,
                   const uint8_t *fp, int64_t n)
{
    const void *parts[4] = {a ? a : "", b ? b : "", fp ? (const void *)fp : "",
                            &n};
    size_t lens[4] = {a ? strlen(a) : 0, b ? strlen(b) : 0, fp ? 32u : 0,
                      sizeof n};
    sha256_parts(out, parts, lens, 4);
}

fb_replay *fb_replay_new(void)
{
    fb_replay *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->flights = fb_map_new();
    r->occs = fb_map_new();
    r->failures = fb_map_new();
    r->jobs = fb_map_new();
    r->trips = fb_map_new();
    r->cache = fb_map_new();
    r->bloom = calloc(BLOOM_BITS / 8, 1);
    if (!r->flights || !r->occs || !r->failures || !r->jobs || !r->trips ||
        !r->cache || !r->bloom) {
        fb_replay_free(r);
        return NULL;
    }
    return r;
}

static void waitq_free(void *p)
{
    waitq *q = p;
    free(q->w);
    free(q);
}

static void occ_free(void *p)
{
    occ *o = p;
    free(o->q.w);
    free(o->freed);
    free(o);
}

void fb_replay_free(fb_replay *r)
{
    if (r == NULL)
        return;
    fb_map_free(r->flights, waitq_free);
    fb_map_free(r->occs, occ_free);
    fb_map_free(r->failures, NULL);
    fb_map_free(r->jobs, free);
    fb_map_free(r->trips, free);
    fb_cache_clear(r);
    fb_map_free(r->cache, NULL);
    free(r->bloom);
    free(r);
}

/* Probe i of a key: double hashing over two 64-bit words of the SHA-256. */
static uint64_t probe(const uint8_t key[32], int i)
{
    uint64_t a, b;
    memcpy(&a, key, 8);
    memcpy(&b, key + 8, 8);
    return (a + (uint64_t)i * (b | 1)) & (BLOOM_BITS - 1);
}

void fb_kept_add(fb_replay *r, const uint8_t key[32])
{
    for (int i = 0; i < BLOOM_PROBES; i++) {
        uint64_t bit = probe(key, i);
        r->bloom[bit >> 3] |= (uint8_t)(1u << (bit & 7));
    }
}

int fb_kept_maybe(fb_replay *r, const uint8_t key[32])
{
    for (int i = 0; i < BLOOM_PROBES; i++) {
        uint64_t bit = probe(key, i);
        if (!(r->bloom[bit >> 3] & (1u << (bit & 7))))
            return 0;
    }
    return 1;
}

static void push(waitq *q, void *w)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 4;
        void **nw = realloc(q->w, cap * sizeof *nw);
        FB_ASSERT(nw != NULL);
        q->w = nw;
        q->cap = cap;
    }
    q->w[q->n++] = w;
}

int fb_flight_join(fb_replay *r, const uint8_t key[32], void *waiter)
{
    waitq *q = fb_map_get(r->flights, (const char *)key, 32);
    if (q != NULL) {
        push(q, waiter);
        return 0;
    }
    q = calloc(1, sizeof *q);
    FB_ASSERT(q != NULL);
    FB_ASSERT(fb_map_put(r->flights, (const char *)key, 32, q, NULL) == FB_OK);
    return 1;
}

void **fb_flight_end(fb_replay *r, const uint8_t key[32], size_t *n)
{
    waitq *q = fb_map_del(r->flights, (const char *)key, 32);
    void **w = NULL;
    *n = 0;
    if (q != NULL) {
        w = q->w;
        *n = q->n;
        free(q);
    }
    return w;
}

static int waitq_remove(waitq *q, const void *w)
{
    for (size_t i = 0; i < q->n; i++) {
        if (q->w[i] == w) {
            memmove(q->w + i, q->w + i + 1, (q->n - i - 1) * sizeof *q->w);
            q->n--;
            return 1;
        }
    }
    return 0;
}

int fb_flight_leave(fb_replay *r, const uint8_t key[32], void *waiter)
{
    waitq *q = fb_map_get(r->flights, (const char *)key, 32);
    return q != NULL && waitq_remove(q, waiter);
}

void fb_occ_forget(fb_replay *r, const uint8_t key[32])
{
    occ *o = fb_map_get(r->occs, (const char *)key, 32);
    if (o != NULL && o->q.n == 0)
        occ_free(fb_map_del(r->occs, (const char *)key, 32));
}

int fb_occ_leave(fb_replay *r, const uint8_t key[32], void *waiter)
{
    occ *o = fb_map_get(r->occs, (const char *)key, 32);
    return o != NULL && waitq_remove(&o->q, waiter);
}

int fb_flight_active(fb_replay *r, const uint8_t key[32])
{
    return fb_map_get(r->flights, (const char *)key, 32) != NULL;
}

int fb_occ_next(fb_replay *r, const uint8_t key[32], void *waiter,
                int *loading, int64_t *k)
{
    occ *o = fb_map_get(r->occs, (const char *)key, 32);
    *loading = 0;
    if (o != NULL && o->loaded) {
        if (o->nfreed > 0) { /* the smallest released one first */
            size_t m = 0;
            for (size_t i = 1; i < o->nfreed; i++)
                if (o->freed[i] < o->freed[m])
                    m = i;
            *k = o->freed[m];
            o->freed[m] = o->freed[--o->nfreed];
            return 1;
        }
        *k = ++o->next;
        return 1;
    }
    if (o == NULL) {
        /* Bound the memory: counters without waiters can be forgotten (a
         * later call reloads its base from the ledger). */
        if (fb_map_count(r->occs) >= 1000000) {
            size_t it = 0;
            const char *kk;
            size_t kl;
            void *v;
            while (fb_map_next(r->occs, &it, &kk, &kl, &v)) {
                occ *x = v;
                if (x->loaded && x->q.n == 0 && x->nfreed == 0) {
                    occ_free(fb_map_del(r->occs, kk, kl));
                    /* Deletion shifts a later entry into this slot: look
                     * at the same slot again (one pass, not from 0). */
                    it--;
                    if (fb_map_count(r->occs) < 500000)
                        break;
                }
            }
        }
        o = calloc(1, sizeof *o);
        FB_ASSERT(o != NULL);
        FB_ASSERT(fb_map_put(r->occs, (const char *)key, 32, o, NULL) == FB_OK);
        *loading = 1; /* this caller starts the load */
    }
    push(&o->q, waiter);
    return 0;
}

void **fb_occ_loaded(fb_replay *r, const uint8_t key[32], int64_t base,
                     size_t *n)
{
    occ *o = fb_map_get(r->occs, (const char *)key, 32);
    void **w;
    FB_ASSERT(o != NULL && !o->loaded);
    o->loaded = 1;
    o->next = base;
    w = o->q.w;
    *n = o->q.n;
    memset(&o->q, 0, sizeof o->q);
    return w;
}

void fb_occ_release(fb_replay *r, const uint8_t key[32], int64_t k)
{
    occ *o = fb_map_get(r->occs, (const char *)key, 32);
    if (o == NULL || !o->loaded)
        return;
    if (o->nfreed == o->capfreed) {
        size_t cap = o->capfreed ? o->capfreed * 2 : 4;
        int64_t *nf = realloc(o->freed, cap * sizeof *nf);
        FB_ASSERT(nf != NULL);
        o->freed = nf;
        o->capfreed = cap;
    }
    o->freed[o->nfreed++] = k;
}

int fb_retry_failures(fb_replay *r, const uint8_t key[32])
{
    return (int)(intptr_t)fb_map_get(r->failures, (const char *)key, 32);
}

void fb_retry_outcome(fb_replay *r, const uint8_t key[32], int transient)
{
    intptr_t n = (intptr_t)fb_map_get(r->failures, (const char *)key, 32);
    if (!transient) {
        if (n)
            fb_map_del(r->failures, (const char *)key, 32);
        return;
    }
    FB_ASSERT(fb_map_put(r->failures, (const char *)key, 32, (void *)(n + 1),
                         NULL) == FB_OK);
}

int fb_retry_count_call(fb_replay *r, const char *scope, int retry,
                        int64_t now_ms, const fb_retry_limits *lim)
{
    int64_t day = now_ms / 86400000;
    day_count *d = fb_map_get(r->jobs, scope, strlen(scope));
    if (d == NULL) {
        d = calloc(1, sizeof *d);
        FB_ASSERT(d != NULL);
        FB_ASSERT(fb_map_put(r->jobs, scope, strlen(scope), d, NULL) == FB_OK);
    }
    if (d->day != day) {
        d->day = day;
        d->calls = d->retries = 0;
    }
    d->calls++;
    if (retry)
        d->retries++;
    int64_t allowed = d->calls * lim->max_percent / 100;
    if (allowed < lim->floor)
        allowed = lim->floor;
    return d->retries > allowed;
}

void fb_trip_set(fb_replay *r, const char *scope, const char *reason)
{
    char *copy = fb_strndup(reason, strlen(reason));
    void *old = NULL;
    FB_ASSERT(copy != NULL);
    FB_ASSERT(fb_map_put(r->trips, scope, strlen(scope), copy, &old) == FB_OK);
    free(old);
}

void fb_trip_clear(fb_replay *r, const char *scope)
{
    free(fb_map_del(r->trips, scope, strlen(scope)));
    /* A reset gives the job a fresh retry budget: its day's counts, and
     * (keyed by hash, so all of them) the per-fingerprint failures. */
    free(fb_map_del(r->jobs, scope, strlen(scope)));
    fb_map_free(r->failures, NULL);
    r->failures = fb_map_new();
    FB_ASSERT(r->failures != NULL);
}

int fb_trip_next(fb_replay *r, size_t *it, const char **scope,
                 const char **reason)
{
    size_t klen;
    void *v;
    if (!fb_map_next(r->trips, it, scope, &klen, &v))
        return 0;
    *reason = v;
    return 1;
}

const char *fb_trip_reason(fb_replay *r, const char *scope)
{
    return fb_map_get(r->trips, scope, strlen(scope));
}

/* ---- the cache of kept results ---- */

static size_t cached_size(const cached *c)
{
    return sizeof *c + c->res.headers_len + c->res.body_len + 64;
}

static void lru_unlink(fb_replay *r, cached *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        r->lru_head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        r->lru_tail = c->prev;
    c->prev = c->next = NULL;
}

static void lru_push(fb_replay *r, cached *c)
{
    c->prev = NULL;
    c->next = r->lru_head;
    if (r->lru_head)
        r->lru_head->prev = c;
    else
        r->lru_tail = c;
    r->lru_head = c;
}

static void cache_drop(fb_replay *r, cached *c)
{
    lru_unlink(r, c);
    (void)fb_map_del(r->cache, (const char *)c->key, 32);
    r->cache_bytes -= cached_size(c);
    fb_result_clear(&c->res);
    free(c);
}

void fb_cache_set_cap(fb_replay *r, size_t bytes)
{
    r->cache_cap = bytes;
    while (r->cache_bytes > r->cache_cap && r->lru_tail)
        cache_drop(r, r->lru_tail);
}

void fb_cache_put(fb_replay *r, const uint8_t key[32], const fb_result *res,
                  int64_t expires_ms)
{
    cached *c = fb_map_get(r->cache, (const char *)key, 32);
    if (c != NULL)
        cache_drop(r, c);
    if (res->headers_len + res->body_len > r->cache_cap / 4)
        return; /* one big answer must not flush the rest */
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return;
    c->res = *res;
    c->res.headers = malloc(res->headers_len + 1);
    c->res.body = malloc(res->body_len + 1);
    if (c->res.headers == NULL || c->res.body == NULL ||
        fb_map_put(r->cache, (const char *)key, 32, c, NULL) != FB_OK) {
        fb_result_clear(&c->res);
        free(c);
        return;
    }
    /* An empty body may come as NULL (an empty evbuffer's pullup). */
    if (res->headers_len > 0)
        memcpy(c->res.headers, res->headers, res->headers_len);
    c->res.headers[res->headers_len] = '\0';
    if (res->body_len > 0)
        memcpy(c->res.body, res->body, res->body_len);
    c->res.body[res->body_len] = '\0';
    memcpy(c->key, key, 32);
    c->expires_ms = expires_ms;
    lru_push(r, c);
    r->cache_bytes += cached_size(c);
    while (r->cache_bytes > r->cache_cap && r->lru_tail)
        cache_drop(r, r->lru_tail);
}

int fb_cache_get(fb_replay *r, const uint8_t key[32], int64_t now_ms,
                 fb_result *out)
{
    cached *c = fb_map_get(r->cache, (const char *)key, 32);
    if (c == NULL)
        return 0;
    if (now_ms >= c->expires_ms) {
        cache_drop(r, c);
        return 0;
    }
    *out = c->res;
    out->headers = malloc(c->res.headers_len + 1);
    out->body = malloc(c->res.body_len + 1);
    if (out->headers == NULL || out->body == NULL) {
        fb_result_clear(out);
        return 0;
    }
    memcpy(out->headers, c->res.headers, c->res.headers_len + 1);
    memcpy(out->body, c->res.body, c->res.body_len + 1);
    lru_unlink(r, c);
    lru_push(r, c);
    return 1;
}

void fb_cache_clear(fb_replay *r)
{
    while (r->lru_head)
        cache_drop(r, r->lru_head);
}

size_t fb_cache_bytes(const fb_replay *r)
{
    return r->cache_bytes;
}
