/* ledger.h - the store, seen from the event loop: a thread that owns the
 * store handle and runs queued operations in batches (one transaction and
 * one commit per batch: group commit), so no disk I/O ever happens on the
 * loop. Completions come back on the loop thread. */
#ifndef FB_LEDGER_H
#define FB_LEDGER_H

#include <stdint.h>
#include "common.h"
#include "store.h"

struct event_base;
typedef struct fb_ledger fb_ledger;

/* A change seen in the store's feed (revocations and the like). */
typedef void (*fb_ledger_change_fn)(void *arg, const fb_change *c);

/* Start the threads. Takes ownership of store and maint, a second handle
 * on the same store for maintenance (checkpoints) every second, and of
 * journal (journal.h; NULL: every insert and completion waits for its
 * commit); all are closed by fb_ledger_stop; maint may be NULL. on_change is called on the
 * loop for every change recorded after start, polled every poll_ms. NULL
 * on failure (the stores left to the caller). */
struct fb_journal;
fb_ledger *fb_ledger_start(struct event_base *base, fb_store *store,
                           fb_store *maint, struct fb_journal *journal,
                           int poll_ms, fb_ledger_change_fn on_change,
                           void *arg);
/* Apply what a journal holds to the store (before fb_store_recover and
 * before fb_ledger_start), then empty it. *n: records applied. */
fb_err fb_ledger_replay_journal(fb_store *st, struct fb_journal *j,
                                int64_t *n);
/* Maintenance also deletes expired kept results, and the oldest while
 * their bodies exceed max_bytes (0: no cap). */
void fb_ledger_set_result_cap(fb_ledger *l, int64_t max_bytes);
/* Run what is queued, stop the thread, close the store. Callbacks of ops
 * still queued run before it returns, from within this call. */
void fb_ledger_stop(fb_ledger *l);

/* Make e durable (strings copied now). cb runs on the loop once the row
 * is committed (err FB_OK) or could not be (FB_EIO...); NULL: no callback.
 * With a journal, once its record is written: cb(arg, FB_OK) runs before
 * this returns, so call it last. The same holds for fb_ledger_complete. */
typedef void (*fb_ledger_done_fn)(void *arg, fb_err err);
void fb_ledger_insert(fb_ledger *l, const fb_entry *e, fb_ledger_done_fn cb,
                      void *arg);
/* Fire and forget: record a settlement. */
void fb_ledger_settle(fb_ledger *l, int64_t id, int status, fb_money cost,
                      const char *outcome);

/* Look up a key by hash. cb gets FB_OK with the record and, when the key
 * has a ceiling, what it spent in the current period at now_ms;
 * FB_ENOTFOUND; or a store error. */
typedef void (*fb_ledger_key_fn)(void *arg, fb_err err, const fb_key_rec *k,
                                 fb_money window_spent);
void fb_ledger_key_lookup(fb_ledger *l, const uint8_t hash[32], int64_t now_ms,
                          fb_ledger_key_fn cb, void *arg);

/* Settle a call and, when keep is not NULL, keep its result under scope
 * (keep is copied; idem may be NULL) in the same transaction. cb (may be
 * NULL) runs once that is durable: err FB_OK; FB_EEXIST when settled but
 * another call's result already holds that seq; or a store error (then the
 * settlement is retried, the result is not kept). */
void fb_ledger_complete(fb_ledger *l, int64_t id, int status, fb_money cost,
                        const char *outcome, const char *scope,
                        const fb_result *keep, const char *idem,
                        int64_t expires_ms, fb_ledger_done_fn cb, void *arg);

/* Find a kept result: by idem when not NULL, else (scope, fp, seq),
 * unexpired at now_ms. cb gets FB_OK and the result, whose body and
 * headers it may take (set them to NULL); FB_EAGAIN (idem only: the key is
 * bound, r->fp says to what, but the result is gone); FB_ENOTFOUND; or an
 * error. */
typedef void (*fb_ledger_result_fn)(void *arg, fb_err err, fb_result *r);
void fb_ledger_result_lookup(fb_ledger *l, const char *scope,
                             const uint8_t fp[32], int64_t seq,
                             const char *idem, int64_t now_ms,
                             fb_ledger_result_fn cb, void *arg);

/* A cluster's lookup: the kept result, or (none kept) its in-flight
 * marker claimed for node in the same round trip: cb gets FB_OK and the
 * result, FB_ENOTFOUND (claimed: buy it), FB_EEXIST (another node buys
 * it now) or an error. */
void fb_ledger_result_claim(fb_ledger *l, int64_t node, const char *scope,
                            const uint8_t fp[32], int64_t seq, int64_t now_ms,
                            fb_ledger_result_fn cb, void *arg);

/* How many times this (tenant, job, key, attempt) sent fp before. */
typedef void (*fb_ledger_count_fn)(void *arg, fb_err err, int64_t n);
void fb_ledger_occurrences(fb_ledger *l, const fb_entry *who,
                           fb_ledger_count_fn cb, void *arg);

/* Bind an Idempotency-Key to (fp, seq) (fire and forget). */
void fb_ledger_idem_bind(fb_ledger *l, const char *scope, const char *idem,
                         const uint8_t fp[32], int64_t seq,
                         int64_t expires_ms);

/* Record that scope tripped (fire and forget; in the change feed too). */
void fb_ledger_trip(fb_ledger *l, const char *scope, const char *reason);

/* ---- the cluster (a shared store: store.h's node calls) ----
 * Each runs in a transaction of its own, outside the batch. */

/* A budget slice: cb gets FB_OK and got (between need and want), FB_ELIMIT
 * (not even need is left), FB_ENOTFOUND (this node was reaped) or a store
 * error; amount is what the pool handed out to all nodes. For a give, got
 * is 0 and amount what was given (cb may be NULL). */
typedef void (*fb_ledger_lease_fn)(void *arg, fb_err err, fb_money got,
                                   fb_money amount);
void fb_ledger_lease_take(fb_ledger *l, int64_t node, const char *scope,
                          int64_t window, fb_money limit, fb_money want,
                          fb_money need, fb_ledger_lease_fn cb, void *arg);
void fb_ledger_lease_give(fb_ledger *l, int64_t node, const char *scope,
                          int64_t window, fb_money amount,
                          fb_ledger_lease_fn cb, void *arg);
/* The heartbeat, and reaping of dead nodes: cb gets FB_ENOTFOUND when
 * this node was reaped itself. */
void fb_ledger_beat(fb_ledger *l, int64_t node, fb_ledger_done_fn cb,
                    void *arg);
/* Join the cluster again as a new node (after being reaped): cb gets its
 * number and the base of its ledger ids. */
typedef void (*fb_ledger_join_fn)(void *arg, fb_err err, int64_t node,
                                  int64_t id_base);
void fb_ledger_join(fb_ledger *l, fb_ledger_join_fn cb, void *arg);
/* At fb_ledger_stop, once every queued op and the settlements their
 * callbacks queue are in, the node leaves the cluster (its unused slices
 * back, its calls still in flight charged in full). Loop thread. */
void fb_ledger_leave_at_stop(fb_ledger *l, int64_t node);
/* The in-flight marker of a result: cb gets FB_OK (claimed) or FB_EEXIST
 * (another live node buys it now). */
void fb_ledger_flight_claim(fb_ledger *l, int64_t node, const char *scope,
                            const uint8_t fp[32], int64_t seq,
                            fb_ledger_done_fn cb, void *arg);
void fb_ledger_flight_release(fb_ledger *l, int64_t node, const char *scope,
                              const uint8_t fp[32], int64_t seq);

/* 1 while the store takes writes: the last batch (or, after a failure,
 * the last probe write) committed. Loop thread. For /readyz. */
int fb_ledger_ok(fb_ledger *l);

/* Operations waiting or running; for tests and /metrics. */
size_t fb_ledger_backlog(fb_ledger *l);

#endif
