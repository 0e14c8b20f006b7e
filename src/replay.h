/* replay.h - the loop-side state of replay: request fingerprints, the
 * single-flight registry, per-attempt occurrence counters, and retry
 * budgets with the trips they blow. The kept results themselves live in
 * the store (store.h); gateway.c drives the whole. */
#ifndef FB_REPLAY_H
#define FB_REPLAY_H

#include <stddef.h>
#include <stdint.h>
#include "common.h"

/* SHA-256 over method, provider, path (with its query) and the body as
 * canonical JSON (keys sorted, no blanks), minus the top-level fields in
 * ignore[]; a body that is not JSON is hashed as is. doc: the body already
 * parsed (with FB_JSON_UNIQUE), or NULL to parse it here. */
struct fb_json;
void fb_fingerprint(const char *method, const char *provider,
                    const char *path, const char *body, size_t len,
                    const struct fb_json *doc, char *const *ignore,
                    size_t nignore, uint8_t fp[32]);

/* SHA-256 of the parts joined by NULs: a fixed-size key for the maps. */
void fb_replay_key(uint8_t out[32], const char *a, const char *b,
                   const uint8_t *fp, int64_t n);

typedef struct fb_replay fb_replay;

fb_replay *fb_replay_new(void); /* NULL on ENOMEM */
void fb_replay_free(fb_replay *r);

/* ---- single flight ----
 * fb_flight_join: 1 and the caller leads a new flight for key, or 0 and
 * waiter is queued behind the one in flight. fb_flight_end: the flight is
 * over; returns its waiters in arrival order (malloc'd, caller frees;
 * *n may be 0) for the leader to serve. */
int fb_flight_join(fb_replay *r, const uint8_t key[32], void *waiter);
void **fb_flight_end(fb_replay *r, const uint8_t key[32], size_t *n);
int fb_flight_active(fb_replay *r, const uint8_t key[32]);
/* A waiter whose client left: take it out of the queue. 1 if it was in. */
int fb_flight_leave(fb_replay *r, const uint8_t key[32], void *waiter);
int fb_occ_leave(fb_replay *r, const uint8_t key[32], void *waiter);
/* Drop a counter (its base could not be loaded: the next call loads it). */
void fb_occ_forget(fb_replay *r, const uint8_t key[32]);

/* ---- occurrences: the k-th identical call of an attempt ----
 * fb_occ_next: 1 and *k set (the next occurrence), or 0: the count is not
 * known yet; the caller is queued (when loading is 0 the caller must load
 * it and call fb_occ_loaded). fb_occ_loaded: set the base count; returns
 * the queued waiters (malloc'd), each of which then calls fb_occ_next. */
int fb_occ_next(fb_replay *r, const uint8_t key[32], void *waiter,
                int *loading, int64_t *k);
void **fb_occ_loaded(fb_replay *r, const uint8_t key[32], int64_t base,
                     size_t *n);
/* Occurrence k bought nothing (its call failed): hand it out again next,
 * before any new one. */
void fb_occ_release(fb_replay *r, const uint8_t key[32], int64_t k);

/* ---- which results may exist ----
 * A Bloom filter over the keys of kept results (fb_replay_key of scope,
 * "r", fp, seq): "no" is certain, so a call that was never bought skips
 * the store read. Only this daemon keeps results (one per data_dir);
 * results purged or expired stay "maybe" and cost one read. */
void fb_kept_add(fb_replay *r, const uint8_t key[32]);
int fb_kept_maybe(fb_replay *r, const uint8_t key[32]);

/* ---- recently kept results, in memory ----
 * The store stays the record; this spares the common replay a trip to the
 * ledger thread and a read. Least recently used results go first once
 * their bytes pass the cap (0: no cache). A result is only served before
 * it expires. Put copies; get fills *out with copies the caller frees
 * (fb_result_clear) and returns 1, or returns 0. */
struct fb_result;
void fb_cache_set_cap(fb_replay *r, size_t bytes);
void fb_cache_put(fb_replay *r, const uint8_t key[32],
                  const struct fb_result *res, int64_t expires_ms);
int fb_cache_get(fb_replay *r, const uint8_t key[32], int64_t now_ms,
                 struct fb_result *out);
/* Forget every cached result (after a purge by hand). */
void fb_cache_clear(fb_replay *r);
size_t fb_cache_bytes(const fb_replay *r);

/* ---- retry budgets ---- */
typedef struct fb_retry_limits {
    int max_per_fp;  /* upstream attempts per fingerprint after failures */
    int max_percent; /* retries per forwarded calls of a job, a day */
    int floor;       /* retries always allowed a day */
} fb_retry_limits;

/* Transient upstream failures of fp in scope so far. */
int fb_retry_failures(fb_replay *r, const uint8_t key[32]);
/* Count one forwarded call of a job scope (retry: it was one) at now_ms;
 * returns 1 when the job's retry ratio is now spent. */
int fb_retry_count_call(fb_replay *r, const char *scope, int retry,
                        int64_t now_ms, const fb_retry_limits *lim);
/* After an upstream answer: a transient failure adds one, anything else
 * clears the fingerprint's count. */
void fb_retry_outcome(fb_replay *r, const uint8_t key[32], int transient);

/* ---- trips ---- */
/* Trip scope ("global", "tenant:T", "job:T/J", "key:ID"); reason copied. */
void fb_trip_set(fb_replay *r, const char *scope, const char *reason);
void fb_trip_clear(fb_replay *r, const char *scope);
/* The reason scope is tripped, or NULL. */
const char *fb_trip_reason(fb_replay *r, const char *scope);
/* Iterate the trips: start with *it = 0; 0 at the end. */
int fb_trip_next(fb_replay *r, size_t *it, const char **scope,
                 const char **reason);

#endif
