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
 * on the same store for maintenance (checkpoints) every second; both are
 * closed by fb_ledger_stop; maint may be NULL. on_change is called on the
 * loop for every change recorded after start, polled every poll_ms. NULL
 * on failure (the stores left to the caller). */
fb_ledger *fb_ledger_start(struct event_base *base, fb_store *store,
                           fb_store *maint, int poll_ms,
                           fb_ledger_change_fn on_change, void *arg);
/* Run what is queued, stop the thread, close the store. Callbacks of ops
 * still queued run before it returns, from within this call. */
void fb_ledger_stop(fb_ledger *l);

/* Make e durable (strings copied now). cb runs on the loop once the row
 * is committed (err FB_OK) or could not be (FB_EIO...); NULL: no callback. */
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

/* Operations waiting or running; for tests and /metrics. */
size_t fb_ledger_backlog(fb_ledger *l);

#endif
