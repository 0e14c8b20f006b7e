/* store.h - the durable store behind fusebox: keys, the ledger of every
 * request, and a change feed (revocations, later trips) that running
 * daemons poll. One interface; SQLite (store_sqlite.c) is the embedded
 * default and PostgreSQL comes later behind the same calls.
 *
 * A store handle is used by one thread at a time and every call blocks:
 * the daemon calls it only from the ledger thread (ledger.c), the CLI
 * directly. */
#ifndef FB_STORE_H
#define FB_STORE_H

#include <stdint.h>
#include "common.h"
#include "config.h"
#include "money.h"

typedef struct fb_store fb_store;

#define FB_KEY_ID_LEN 16 /* "k_" + 12 hex + NUL, padded */
#define FB_NAME_MAX 65   /* tenant and job names: 1-64 chars + NUL */

typedef struct fb_key_rec {
    char id[FB_KEY_ID_LEN];
    uint8_t hash[32]; /* SHA-256 of the whole virtual key */
    char prefix[16];  /* "fbk_" + first chars, for humans */
    char tenant[FB_NAME_MAX];
    char job[FB_NAME_MAX]; /* "" when the key has no job */
    int64_t attempt;       /* 0 when none */
    fb_budget_spec budget; /* the key's own ceiling, if set */
    int64_t created_ms;
    int64_t revoked_ms; /* 0 while valid */
} fb_key_rec;

typedef enum fb_entry_state {
    FB_ENTRY_RESERVED = 0, /* durable before the upstream call */
    FB_ENTRY_SETTLED = 1,  /* final cost known (or charged in full) */
    FB_ENTRY_BLOCKED = 2,  /* refused before any upstream call */
    FB_ENTRY_REPLAYED = 3, /* answered from a kept result: cost 0 */
} fb_entry_state;

/* One ledger row. Strings are borrowed for the duration of the call. */
typedef struct fb_entry {
    int64_t id;
    int64_t ts_ms; /* wall clock at reservation; decides the period */
    const char *tenant;
    const char *job; /* NULL or "" when none */
    const char *key_id;
    const char *provider;
    const char *model;
    const char *path;
    int status; /* HTTP status given to the client; 0 while in flight */
    fb_money reserved;
    fb_money cost;
    fb_entry_state state;
    const char *outcome; /* "ok", "budget_exceeded:job:x", ... */
    const uint8_t *fp;   /* the request's fingerprint, or NULL */
    int64_t attempt;     /* the key's attempt (0: none) */
    fb_money saved;      /* replays: what the kept result cost */
    int retry;           /* the client said this call is a retry */
} fb_entry;

/* A kept result: what a client received for a paid call, to be handed
 * back for the same request. */
typedef struct fb_result {
    int64_t id;
    int status;
    int stream;    /* body is SSE event bytes */
    char *headers; /* "Name: value\r\n" lines; malloc'd when read */
    size_t headers_len;
    char *body;    /* malloc'd when read */
    size_t body_len;
    fb_money cost; /* what it cost when bought */
    int64_t seq;   /* the k-th result for this fingerprint in its scope */
    int64_t attempt;
    uint8_t fp[32];
    int64_t expires_ms; /* when read from the store */
} fb_result;

/* Frees what a read put in r. */
void fb_result_clear(fb_result *r);

/* Which rows a spend query sums; NULL fields match anything. */
typedef struct fb_spend_filter {
    const char *tenant;
    const char *job;
    const char *key_id;
    int64_t since_ms; /* inclusive */
    int64_t until_ms; /* exclusive; 0 for no end */
} fb_spend_filter;

typedef struct fb_spend {
    fb_money spent;    /* settled cost plus in-flight reservations */
    fb_money reserved; /* the in-flight part of spent */
    int64_t paid_calls;
    int64_t blocked_calls;
    int64_t replayed_calls;
    fb_money saved;    /* what the replays would have cost */
    int64_t calls;
} fb_spend;

typedef struct fb_change {
    int64_t seq;
    char kind[32];     /* "key_revoked", "key_created", ... */
    char subject[256];
} fb_change;

/* Open the store for this config: SQLite under c->data_dir (created and
 * migrated), or the PostgreSQL server of c->store_url (FUSEBOX_STORE
 * overrides it), whose schema `fusebox migrate` keeps (fb_store_migrate):
 * an open refuses a schema version it does not know. errbuf gets a
 * reason on failure (never the URL: it may hold a password). */
/* The purge epoch: a counter in data_dir/fusebox.epoch, shared through
 * mmap, bumped by a process that deleted kept results behind the daemon's
 * back (fusebox replay purge). The daemon reads it before serving a result
 * from memory, and forgets its copies when it moved: one load, no I/O.
 * fb_store_epoch_map: the daemon's read-only view, NULL on failure. */
const uint64_t *fb_store_epoch_map(const char *data_dir);
fb_err fb_store_epoch_bump(const char *data_dir);

fb_err fb_store_open(const fb_config *c, fb_store **out, char *errbuf,
                     size_t errcap);
void fb_store_close(fb_store *s);
/* Round trips to PostgreSQL this process made, over every handle, and
 * (*leases) those that took or gave budget slices (for /metrics). */
uint64_t fb_store_round_trips(uint64_t *leases);
/* SQLite under c->data_dir whatever the config or FUSEBOX_STORE name: a
 * scratch store (fusebox run --staging). */
fb_err fb_store_open_local(const fb_config *c, fb_store **out, char *errbuf,
                           size_t errcap);
/* Is the config's store the embedded SQLite one (not PostgreSQL)? */
int fb_store_embedded(const fb_config *c);
/* fusebox migrate: bring the store's schema to this build's version.
 * *kind: "sqlite" or "postgresql"; *from: the version found (-1: SQLite,
 * which migrates as it opens); *to: the version now. */
fb_err fb_store_migrate(const fb_config *c, const char **kind, int *from,
                        int *to, char *errbuf, size_t errcap);

/* Group several calls into one transaction (one commit, one fsync). */
fb_err fb_store_begin(fb_store *s);
fb_err fb_store_commit(fb_store *s);
void fb_store_rollback(fb_store *s);
/* Is a transaction open? (A failed statement may have ended it.) */
int fb_store_in_transaction(fb_store *s);

fb_err fb_store_key_insert(fb_store *s, const fb_key_rec *k);
/* FB_ENOTFOUND if no key has this hash (revoked ones are returned). */
fb_err fb_store_key_by_hash(fb_store *s, const uint8_t hash[32],
                            fb_key_rec *out);
/* The key whose id, or printed prefix, is id_or_prefix: FB_ENOTFOUND if
 * none, FB_EEXIST if a prefix names more than one key. */
fb_err fb_store_key_find(fb_store *s, const char *id_or_prefix,
                         fb_key_rec *out);
/* Revoke the key with this id. FB_ENOTFOUND if none is active. */
fb_err fb_store_key_revoke(fb_store *s, const char *id, int64_t now_ms);
/* Calls fn for every key, oldest first; stops early if fn returns != 0. */
fb_err fb_store_key_list(fb_store *s,
                         int (*fn)(void *arg, const fb_key_rec *k), void *arg);

fb_err fb_store_entry_insert(fb_store *s, const fb_entry *e);
fb_err fb_store_entry_settle(fb_store *s, int64_t id, int status,
                             fb_money cost, const char *outcome);
/* Settle call id and keep its result r under scope (binding idem, when
 * not NULL), in the open transaction: FB_OK; FB_EEXIST when settled but a
 * live result already holds that seq (the result is dropped); or an
 * error. One round trip on PostgreSQL. */
fb_err fb_store_entry_complete(fb_store *s, int64_t id, int status,
                               fb_money cost, const char *outcome,
                               const char *scope, const fb_result *r,
                               const char *idem, int64_t now_ms,
                               int64_t expires_ms);
/* Crash recovery: every row still RESERVED is settled at its full
 * reservation (the provider may have billed it). *n gets the count. */
fb_err fb_store_recover(fb_store *s, int64_t *n);

/* ---- nodes: several daemons on one shared store (PostgreSQL) ----
 * SQLite has one node (0) and these calls are trivial there. */

/* Does the store serve several nodes at once (PostgreSQL)? */
int fb_store_shared(fb_store *s);
/* Register this process as a node: *node its number, *id_base the ledger
 * ids it may use start after it (SQLite: node 0 and the highest id). */
fb_err fb_store_node_join(fb_store *s, int64_t *node, int64_t *id_base);
/* The node is alive (every second). FB_ENOTFOUND: it was declared dead
 * (its beat stopped for longer than cluster.lease_ms) and reaped: its
 * slices are gone and it must not reserve from them. */
fb_err fb_store_node_beat(fb_store *s, int64_t node);
/* A clean stop: reap the node now, its calls all settled. */
fb_err fb_store_node_leave(fb_store *s, int64_t node);
/* Reap nodes dead for longer than cluster.lease_ms: charge their calls in
 * flight in full, give the unused part of their slices back, drop their
 * in-flight markers. *n: nodes reaped. */
fb_err fb_store_reap(fb_store *s, int64_t *n);
/* Take a slice of scope's budget in window for node: between need and
 * want, as much as the ceiling limit leaves (one conditional update).
 * FB_ELIMIT (*got 0) when not even need is left. *taken: what the pool
 * has handed out to all nodes (after this slice). */
fb_err fb_store_lease_take(fb_store *s, int64_t node, const char *scope,
                           int64_t window, fb_money limit, fb_money want,
                           fb_money need, fb_money *got, fb_money *taken);
/* Give amount of node's slice back to the scope's budget. */
fb_err fb_store_lease_give(fb_store *s, int64_t node, const char *scope,
                           int64_t window, fb_money amount);
/* Claim the in-flight marker of result (scope, fp, seq) for node: FB_OK,
 * or FB_EEXIST while another live node holds it (it is buying that
 * result: wait for it). */
fb_err fb_store_flight_claim(fb_store *s, int64_t node, const char *scope,
                             const uint8_t *fp, int64_t seq);
/* The kept result (scope, fp, seq) unexpired at now_ms (FB_OK), or when
 * there is none its in-flight marker claimed for node in the same round
 * trip: FB_ENOTFOUND (claimed: buy it), FB_EEXIST (another live node is
 * buying it). */
fb_err fb_store_result_claim(fb_store *s, int64_t node, const char *scope,
                             const uint8_t *fp, int64_t seq, int64_t now_ms,
                             fb_result *out);
/* Drop node's marker (one another node holds stays). */
fb_err fb_store_flight_release(fb_store *s, int64_t node, const char *scope,
                               const uint8_t *fp, int64_t seq);
fb_err fb_store_spend(fb_store *s, const fb_spend_filter *f, fb_spend *out);
/* The spend of a budget scope as the daemon names it ("global",
 * "tenant:T", "job:T/J", "key:ID") since since_ms. FB_EINVAL for another
 * name. */
fb_err fb_store_scope_spend(fb_store *s, const char *scope, int64_t since_ms,
                            fb_spend *out);
/* Distinct (tenant, job) pairs in the ledger, for reports. */
fb_err fb_store_scopes(fb_store *s,
                       int (*fn)(void *arg, const char *tenant,
                                 const char *job),
                       void *arg);

/* Maintenance, from a thread of its own: copy committed changes into the
 * main database file without blocking writers (SQLite: a PASSIVE WAL
 * checkpoint; the only fsync of the "process" durability mode). */
fb_err fb_store_checkpoint(fb_store *s);

/* Does the store take a write now? One small write transaction (after a
 * failed commit: a disk full, say, that may have been cleared). */
fb_err fb_store_probe(fb_store *s);

/* Why the last failed transaction failed (as rolled back), for the log:
 * SQLite's message and the OS error ("No space left on device"). */
const char *fb_store_why(fb_store *s);

/* ---- kept results (replay) ----
 * scope is "job:T/J" for a key with a job, else "key:ID": results never
 * cross it. */

/* The result seq for fp in scope, unexpired at now_ms: FB_ENOTFOUND. */
fb_err fb_store_result_get(fb_store *s, const char *scope,
                           const uint8_t fp[32], int64_t seq, int64_t now_ms,
                           fb_result *out);
/* The result an Idempotency-Key in scope is bound to: FB_OK; FB_EAGAIN
 * when the key is bound but its result is gone (out->fp still says to
 * which request); FB_ENOTFOUND. */
fb_err fb_store_result_by_idem(fb_store *s, const char *scope,
                               const char *idem, int64_t now_ms,
                               fb_result *out);
/* Keep r (r->id is ignored; an expired result in its place gives way) and,
 * when idem is not NULL, bind that key to it. FB_EEXIST if a live result
 * holds that seq (the key is bound to it all the same). */
fb_err fb_store_result_put(fb_store *s, const char *scope, const fb_result *r,
                           const char *idem, int64_t now_ms,
                           int64_t expires_ms);
/* Bind an Idempotency-Key to (fp, seq), unless it is bound already (to a
 * binding unexpired at now_ms). */
fb_err fb_store_idem_bind(fb_store *s, const char *scope, const char *idem,
                          const uint8_t fp[32], int64_t seq, int64_t now_ms,
                          int64_t expires_ms);
/* Calls fn for every kept result (its scope, fp, seq), expired ones that
 * are not purged yet included (read from an index, not the bodies). */
fb_err fb_store_result_keys(fb_store *s, int64_t now_ms,
                            int (*fn)(void *arg, const char *scope,
                                      const uint8_t fp[32], int64_t seq),
                            void *arg);
/* Delete results expired at now_ms, at most limit of them (0: no limit),
 * or, with scope_prefix, the results of that scope (a prefix when it
 * ends in '/' or is empty: every result whose scope starts with it); then,
 * while the kept bodies exceed max_bytes (0: no cap), the oldest. *n gets
 * the count deleted. */
fb_err fb_store_results_purge(fb_store *s, int64_t now_ms,
                              const char *scope_prefix, int64_t max_bytes,
                              int64_t limit, int64_t *n);
/* Ledger rows (paid, in flight or replayed) of (tenant, job, attempt, fp):
 * how many times this attempt already sent this request. Attempts are
 * numbered from 1; attempt 0 (none) always counts 0. */
fb_err fb_store_occurrences(fb_store *s, const char *tenant, const char *job,
                            const char *key_id, int64_t attempt,
                            const uint8_t fp[32], int64_t *n);

/* ---- trips: fuses blown by hand or by a spent retry budget ---- */
fb_err fb_store_trip_set(fb_store *s, const char *scope, const char *reason,
                         int64_t now_ms);
/* FB_ENOTFOUND if the scope was not tripped. */
fb_err fb_store_trip_clear(fb_store *s, const char *scope);
/* Trip (set) or reset scope by hand, with the change that tells running
 * daemons, in one transaction: what `fusebox trip`/`reset` and the
 * dashboard do. A reset also clears the scope's failed runs; resetting a
 * scope that is not tripped is not an error. */
fb_err fb_store_trip_apply(fb_store *s, const char *scope, int set,
                           const char *reason, int64_t now_ms);
fb_err fb_store_trips(fb_store *s,
                      int (*fn)(void *arg, const char *scope,
                                const char *reason, int64_t ts_ms),
                      void *arg);

/* ---- runs: each invocation of fusebox run, for its rerun guard ---- */
typedef enum fb_run_refusal {
    FB_RUN_OK = 0,
    FB_RUN_TOO_MANY,     /* max_runs_per_day reached today */
    FB_RUN_FAILED_TODAY, /* the same job (identity) failed deterministically
                            today (not a preflight: those run again) and
                            nobody reset it */
} fb_run_refusal;

/* Record a new run of scope ("job:T/J") with this identity (a hash of the
 * command, its preflights and its files). *refused says whether the guard
 * refuses it (the run is recorded as refused); *attempts_before the
 * attempts its earlier runs made today. */
fb_err fb_store_run_begin(fb_store *s, const char *scope,
                          const uint8_t identity[32], int64_t now_ms,
                          int max_runs, fb_run_refusal *refused,
                          int64_t *run_id, int64_t *attempts_before);
fb_err fb_store_run_end(fb_store *s, int64_t run_id, const char *outcome,
                        int exit_code, int attempts, int64_t now_ms);
/* fusebox reset: earlier deterministic failures no longer block reruns. */
fb_err fb_store_runs_clear(fb_store *s, const char *scope);
/* Calls, reserved and settled cost per (provider, model, path) of the
 * paid (or in-flight) calls that f selects. */
fb_err fb_store_breakdown(fb_store *s, const fb_spend_filter *f,
                          int (*fn)(void *arg, const char *provider,
                                    const char *model, const char *path,
                                    int64_t calls, fb_money reserved,
                                    fb_money cost),
                          void *arg);

/* ---- reports (fusebox spend --by, the dashboard) ---- */
typedef enum fb_report_by {
    FB_BY_TENANT,
    FB_BY_JOB, /* group "tenant/job" */
    FB_BY_MODEL,
    FB_BY_KEY,
    FB_BY_HOUR, /* bucket_ms: the UTC hour's start */
    FB_BY_DAY,  /* bucket_ms: the UTC day's start */
    FB_BY_TENANT_HOUR, /* group the tenant, bucket_ms the hour (one pass
                          for every tenant's time line) */
} fb_report_by;

typedef struct fb_report_row {
    const char *group;  /* the tenant, "tenant/job", model or key id; for
                           hour and day the bucket as decimal ms */
    int64_t bucket_ms;  /* hour and day; 0 otherwise */
    int64_t calls, paid_calls, blocked_calls, replayed_calls;
    fb_money cost;      /* settled */
    fb_money in_flight; /* reserved by calls not yet settled */
    fb_money saved;
} fb_report_row;

/* Spend grouped by `by` over f (tenant, job, key_id, since, until), in
 * group order. Whole hours come from the rollup that triggers keep with
 * each ledger row; the partial hours at the edges and the calls in flight
 * from the ledger itself: exact, and a million rows cost no more than
 * the hours they span. fn returns non-zero to stop. */
fb_err fb_store_report(fb_store *s, fb_report_by by, const fb_spend_filter *f,
                       int (*fn)(void *arg, const fb_report_row *r),
                       void *arg);

/* ---- the dashboard ---- */
typedef struct fb_blocked_row {
    int64_t id, ts_ms;
    const char *tenant, *job, *key_id, *model, *outcome;
    int status;
} fb_blocked_row;

/* The last `limit` blocked calls, newest first (an index of their own). */
fb_err fb_store_blocked_recent(fb_store *s, int limit,
                               int (*fn)(void *arg, const fb_blocked_row *r),
                               void *arg);
/* Scopes that fusebox run started more than once since since_ms: how
 * many runs, and the newest one's outcome. */
fb_err fb_store_reruns(fb_store *s, int64_t since_ms,
                       int (*fn)(void *arg, const char *scope, int64_t runs,
                                 const char *last_outcome),
                       void *arg);

/* ---- alerts (alerts.h) ---- */
typedef struct fb_alert_rec {
    const char *dedup; /* the key that makes it once: "budget:job:a/b:..." */
    int64_t ts_ms;
    const char *kind, *scope, *message;
    const char *body; /* the JSON delivered */
} fb_alert_rec;

/* Record an alert and an outbox row for each destination, once: FB_EEXIST
 * (nothing written) when its dedup key was raised before. */
fb_err fb_store_alert_add(fb_store *s, const fb_alert_rec *a,
                          const char *const *dests, size_t ndests);

typedef struct fb_outbox_row {
    int64_t id;
    const char *dedup, *dest, *kind, *scope, *message, *body;
    int attempts;
} fb_outbox_row;

/* Pending deliveries due at now_ms, oldest first, at most limit. On a
 * shared store they are claimed for a minute (no other node sends them
 * meanwhile); fb_store_outbox_update then sets their state. */
fb_err fb_store_outbox_due(fb_store *s, int64_t now_ms, int limit,
                           int (*fn)(void *arg, const fb_outbox_row *r),
                           void *arg);
/* state: 0 pending (retry at next_ms), 1 sent, 2 given up. */
fb_err fb_store_outbox_update(fb_store *s, int64_t id, int state,
                              int attempts, int64_t next_ms,
                              const char *error);
/* Requests (fingerprints) bought at least min_count times since since_ms,
 * per tenant and job. */
fb_err fb_store_fp_storms(fb_store *s, int64_t since_ms, int min_count,
                          int (*fn)(void *arg, const char *tenant,
                                    const char *job, const uint8_t fp[32],
                                    int64_t count),
                          void *arg);

/* ---- fusebox ledger verify ---- */
typedef enum fb_verify_level {
    FB_VERIFY_INFO = 0, /* a count, for the report */
    FB_VERIFY_OK,       /* a check that passed */
    FB_VERIFY_WARN,     /* a state the daemon handles, worth knowing */
    FB_VERIFY_FAIL,     /* the store is damaged or inconsistent */
} fb_verify_level;

/* Check the store: SQLite's integrity_check and quick_check, then the
 * ledger's own invariants (no negative money, settled rows costed, kept
 * results well-formed, Idempotency-Keys bound to kept results), and
 * counts (rows in flight, results). Calls fn once per check with its name,
 * level, a count (bad rows, or the figure) and a detail (borrowed).
 * Reads one snapshot; safe beside a running daemon. FB_EIO when a query
 * cannot run at all (then the checks run so far were reported). */
fb_err fb_store_verify(fb_store *s, int64_t now_ms,
                       void (*fn)(void *arg, const char *check,
                                  fb_verify_level level, int64_t count,
                                  const char *detail),
                       void *arg);

fb_err fb_store_change_add(fb_store *s, const char *kind, const char *subject);
/* Changes with seq > after, in order; fn may stop early by returning != 0. */
fb_err fb_store_changes(fb_store *s, int64_t after,
                        int (*fn)(void *arg, const fb_change *c), void *arg);
fb_err fb_store_last_change(fb_store *s, int64_t *seq);

#endif
