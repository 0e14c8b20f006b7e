/* store_int.h - what the store backends (store_sqlite.c, store_pg.c) share
 * with store.c and nothing else: the table of operations every backend
 * fills, and the spend rollup's per-transaction deltas.
 *
 * A backend defines struct fb_store for itself, its first member the
 * operations table; store.c sees only that member. */
#ifndef FB_STORE_INT_H
#define FB_STORE_INT_H

#include "store.h"

typedef int (*fb__key_fn)(void *arg, const fb_key_rec *k);
typedef int (*fb__scopes_fn)(void *arg, const char *tenant, const char *job);
typedef int (*fb__change_fn)(void *arg, const fb_change *c);
typedef int (*fb__rkeys_fn)(void *arg, const char *scope,
                            const uint8_t fp[32], int64_t seq);
typedef int (*fb__trips_fn)(void *arg, const char *scope, const char *reason,
                            int64_t ts_ms);
typedef int (*fb__breakdown_fn)(void *arg, const char *provider,
                                const char *model, const char *path,
                                int64_t calls, fb_money reserved,
                                fb_money cost);
typedef int (*fb__report_fn)(void *arg, const fb_report_row *r);
typedef int (*fb__blocked_fn)(void *arg, const fb_blocked_row *r);
typedef int (*fb__reruns_fn)(void *arg, const char *scope, int64_t runs,
                             const char *last_outcome);
typedef int (*fb__outbox_fn)(void *arg, const fb_outbox_row *r);
typedef int (*fb__storms_fn)(void *arg, const char *tenant, const char *job,
                             const uint8_t fp[32], int64_t count);
typedef void (*fb__verify_fn)(void *arg, const char *check,
                              fb_verify_level level, int64_t count,
                              const char *detail);

/* X(return type, name, parameters, arguments): fb_store_NAME in store.c
 * calls ops->NAME; a backend names its function PREFIX_NAME. */
#define FB_STORE_OPS(X)                                                        \
    X(fb_err, begin, (fb_store * s), (s))                                      \
    X(fb_err, commit, (fb_store * s), (s))                                     \
    X(int, in_transaction, (fb_store * s), (s))                                \
    X(const char *, why, (fb_store * s), (s))                                  \
    X(int, shared, (fb_store * s), (s))                                        \
    X(fb_err, key_insert, (fb_store * s, const fb_key_rec *k), (s, k))         \
    X(fb_err, key_by_hash, (fb_store * s, const uint8_t h[32], fb_key_rec *o),    \
      (s, h, o))                                                               \
    X(fb_err, key_find, (fb_store * s, const char *id, fb_key_rec *o),         \
      (s, id, o))                                                              \
    X(fb_err, key_revoke, (fb_store * s, const char *id, int64_t now),         \
      (s, id, now))                                                            \
    X(fb_err, key_list, (fb_store * s, fb__key_fn fn, void *arg), (s, fn, arg)) \
    X(fb_err, entry_insert, (fb_store * s, const fb_entry *e), (s, e))         \
    X(fb_err, entry_settle,                                                    \
      (fb_store * s, int64_t id, int status, fb_money cost,                    \
       const char *outcome),                                                   \
      (s, id, status, cost, outcome))                                          \
    X(fb_err, entry_complete,                                                  \
      (fb_store * s, int64_t id, int status, fb_money cost,                    \
       const char *outcome, const char *scope, const fb_result *r,             \
       const char *idem, int64_t now, int64_t exp),                            \
      (s, id, status, cost, outcome, scope, r, idem, now, exp))                \
    X(fb_err, recover, (fb_store * s, int64_t *n), (s, n))                     \
    X(fb_err, node_join, (fb_store * s, int64_t *node, int64_t *id_base),      \
      (s, node, id_base))                                                      \
    X(fb_err, node_beat, (fb_store * s, int64_t node), (s, node))              \
    X(fb_err, node_leave, (fb_store * s, int64_t node), (s, node))             \
    X(fb_err, reap, (fb_store * s, int64_t *n), (s, n))                        \
    X(fb_err, lease_take,                                                      \
      (fb_store * s, int64_t node, const char *scope, int64_t window,         \
       fb_money limit, fb_money want, fb_money need, fb_money *got,            \
       fb_money *taken),                                                       \
      (s, node, scope, window, limit, want, need, got, taken))                        \
    X(fb_err, lease_give,                                                      \
      (fb_store * s, int64_t node, const char *scope, int64_t window,         \
       fb_money amount),                                                       \
      (s, node, scope, window, amount))                                        \
    X(fb_err, flight_claim,                                                    \
      (fb_store * s, int64_t node, const char *scope, const uint8_t *fp,       \
       int64_t seq),                                                           \
      (s, node, scope, fp, seq))                                               \
    X(fb_err, result_claim,                                                    \
      (fb_store * s, int64_t node, const char *scope, const uint8_t *fp,       \
       int64_t seq, int64_t now, fb_result *o),                                \
      (s, node, scope, fp, seq, now, o))                                       \
    X(fb_err, flight_release,                                                  \
      (fb_store * s, int64_t node, const char *scope, const uint8_t *fp,       \
       int64_t seq),                                                           \
      (s, node, scope, fp, seq))                                                     \
    X(fb_err, spend, (fb_store * s, const fb_spend_filter *f, fb_spend *o),    \
      (s, f, o))                                                               \
    X(fb_err, scopes, (fb_store * s, fb__scopes_fn fn, void *arg),             \
      (s, fn, arg))                                                            \
    X(fb_err, checkpoint, (fb_store * s), (s))                                 \
    X(fb_err, probe, (fb_store * s), (s))                                      \
    X(fb_err, result_get,                                                      \
      (fb_store * s, const char *scope, const uint8_t fp[32], int64_t seq,     \
       int64_t now, fb_result *o),                                             \
      (s, scope, fp, seq, now, o))                                             \
    X(fb_err, result_by_idem,                                                  \
      (fb_store * s, const char *scope, const char *idem, int64_t now,         \
       fb_result *o),                                                          \
      (s, scope, idem, now, o))                                                \
    X(fb_err, result_put,                                                      \
      (fb_store * s, const char *scope, const fb_result *r, const char *idem,  \
       int64_t now, int64_t exp),                                              \
      (s, scope, r, idem, now, exp))                                           \
    X(fb_err, idem_bind,                                                       \
      (fb_store * s, const char *scope, const char *idem,                      \
       const uint8_t fp[32], int64_t seq, int64_t now, int64_t exp),                                 \
      (s, scope, idem, fp, seq, now, exp))                                     \
    X(fb_err, result_keys, (fb_store * s, int64_t now, fb__rkeys_fn fn,        \
                            void *arg),                                        \
      (s, now, fn, arg))                                                       \
    X(fb_err, results_purge,                                                   \
      (fb_store * s, int64_t now, const char *prefix, int64_t max_bytes,       \
       int64_t limit, int64_t *n),                                             \
      (s, now, prefix, max_bytes, limit, n))                                   \
    X(fb_err, occurrences,                                                     \
      (fb_store * s, const char *tenant, const char *job, const char *key_id,  \
       int64_t attempt, const uint8_t fp[32], int64_t *n),                        \
      (s, tenant, job, key_id, attempt, fp, n))                                \
    X(fb_err, trip_set,                                                        \
      (fb_store * s, const char *scope, const char *reason, int64_t now),      \
      (s, scope, reason, now))                                                 \
    X(fb_err, trip_clear, (fb_store * s, const char *scope), (s, scope))       \
    X(fb_err, trips, (fb_store * s, fb__trips_fn fn, void *arg), (s, fn, arg)) \
    X(fb_err, run_begin,                                                       \
      (fb_store * s, const char *scope, const uint8_t identity[32], int64_t now,  \
       int max_runs, fb_run_refusal *refused, int64_t *run_id,                 \
       int64_t *before),                                                       \
      (s, scope, identity, now, max_runs, refused, run_id, before))            \
    X(fb_err, run_end,                                                         \
      (fb_store * s, int64_t run_id, const char *outcome, int exit_code,       \
       int attempts, int64_t now),                                             \
      (s, run_id, outcome, exit_code, attempts, now))                          \
    X(fb_err, runs_clear, (fb_store * s, const char *scope), (s, scope))       \
    X(fb_err, breakdown,                                                       \
      (fb_store * s, const fb_spend_filter *f, fb__breakdown_fn fn,            \
       void *arg),                                                             \
      (s, f, fn, arg))                                                         \
    X(fb_err, report,                                                          \
      (fb_store * s, fb_report_by by, const fb_spend_filter *f,                \
       fb__report_fn fn, void *arg),                                           \
      (s, by, f, fn, arg))                                                     \
    X(fb_err, blocked_recent,                                                  \
      (fb_store * s, int limit, fb__blocked_fn fn, void *arg),                 \
      (s, limit, fn, arg))                                                     \
    X(fb_err, reruns, (fb_store * s, int64_t since, fb__reruns_fn fn,          \
                       void *arg),                                             \
      (s, since, fn, arg))                                                     \
    X(fb_err, alert_add,                                                       \
      (fb_store * s, const fb_alert_rec *a, const char *const *dests,          \
       size_t n),                                                              \
      (s, a, dests, n))                                                        \
    X(fb_err, outbox_due,                                                      \
      (fb_store * s, int64_t now, int limit, fb__outbox_fn fn, void *arg),     \
      (s, now, limit, fn, arg))                                                \
    X(fb_err, outbox_update,                                                   \
      (fb_store * s, int64_t id, int state, int attempts, int64_t next,        \
       const char *error),                                                     \
      (s, id, state, attempts, next, error))                                   \
    X(fb_err, fp_storms,                                                       \
      (fb_store * s, int64_t since, int min_count, fb__storms_fn fn,           \
       void *arg),                                                             \
      (s, since, min_count, fn, arg))                                          \
    X(fb_err, verify, (fb_store * s, int64_t now, fb__verify_fn fn, void *arg), \
      (s, now, fn, arg))                                                       \
    X(fb_err, change_add, (fb_store * s, const char *kind, const char *subj),  \
      (s, kind, subj))                                                         \
    X(fb_err, changes, (fb_store * s, int64_t after, fb__change_fn fn,         \
                        void *arg),                                            \
      (s, after, fn, arg))                                                     \
    X(fb_err, last_change, (fb_store * s, int64_t *seq), (s, seq))

typedef struct fb_store_ops {
#define FB__OP(ret, name, params, args) ret(*name) params;
    FB_STORE_OPS(FB__OP)
#undef FB__OP
    void (*rollback)(fb_store *s);
    void (*close)(fb_store *s);
} fb_store_ops;

/* Fill a backend's table from its PREFIX_NAME functions. */
#define FB__OP_INIT(ret, name, params, args) .name = FB__PREFIXED(name),

/* The backends' open calls (store.c picks one). */
fb_err fb__sqlite_open(const fb_config *c, fb_store **out, char *errbuf,
                       size_t errcap);
int fb__sqlite_schema_version(void);
/* do_migrate: apply the migrations this build knows first (*from: the
 * version found; may be NULL). */
fb_err fb__pg_open(const fb_config *c, const char *url, int do_migrate,
                   int *from, fb_store **out, char *errbuf, size_t errcap);
int fb__pg_schema_version(void);

/* ---- the spend rollup's deltas (schema v4) ----
 * A ledger row that becomes final (state 1, 2 or 3) is counted in its
 * hour: the deltas of one transaction are gathered here and written by
 * the backend's flush at commit, one upsert per group. */
typedef struct fb__roll {
    int64_t hour_ms;
    char *tenant, *job, *key_id, *model;
    int64_t calls, paid, blocked, replayed;
    fb_money cost, saved;
} fb__roll;

#define FB__ROLL_MAX 256 /* deltas held before they are written early */

typedef struct fb__rolls {
    fb__roll pend[FB__ROLL_MAX];
    size_t npend;
    int failed; /* a delta was lost: the transaction must not commit */
    /* writes n deltas (in key order); the backend's */
    fb_err (*write)(fb_store *s, const fb__roll *r, size_t n);
} fb__rolls;

/* Note a final row; may flush early (when full) through rl->write. */
fb_err fb__roll_note(fb__rolls *rl, fb_store *s, int64_t ts_ms,
                     const char *tenant, const char *job, const char *key_id,
                     const char *model, int state, fb_money cost,
                     fb_money saved);
/* Write every delta (failure marks rl->failed), then forget them. */
fb_err fb__roll_flush(fb__rolls *rl, fb_store *s);
void fb__roll_drop(fb__rolls *rl);

/* The bounds of a spend query over f: [*S, *U) asked; whole hours
 * [*A, *B) read from the rollup; the rest of [*S, *U) from the ledger
 * (both backends split their spend and report queries so). */
void fb__spend_bounds(const fb_spend_filter *f, int64_t *S, int64_t *U,
                      int64_t *A, int64_t *B);

/* Ledger ids: node n (0 for SQLite, a PostgreSQL sequence otherwise)
 * numbers its calls from n << FB__NODE_SHIFT, so nodes never collide and
 * a dead node's rows are one range of the primary key. */
#define FB__NODE_SHIFT 40

#endif
