/* test_ledger.c - the store and the ledger thread: a reservation is in
 * the database when its callback runs; settlement and crash recovery
 * (RESERVED rows charged in full); spend sums per scope and period; keys
 * by hash and revocation; the change feed reaching the loop; the
 * maintenance thread really running (purge of expired results, WAL
 * checkpoints) while the ledger is up. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <libpq-fe.h>
#include <pthread.h>

#include "journal.h"
#include "keys.h"
#include "ledger.h"
#include "store.h"

static char dir[] = "/tmp/fb-ledger-XXXXXX";
static fb_config cfg;
/* The second run: the same tests on PostgreSQL (FUSEBOX_TEST_PG, a
 * throw-away cluster that make test starts: scripts/pg.sh). */
static const char *pg_url;

static int setup(void **state)
{
    (void)state;
    assert_non_null(mkdtemp(dir));
    cfg.data_dir = dir;
    cfg.durability = FB_DURABILITY_PROCESS;
    cfg.cluster_lease_ms = 1000;
    evthread_use_pthreads();
    return 0;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap_50ms(void)
{
    struct timespec ts = {0, 50 * 1000000L};
    nanosleep(&ts, NULL);
}

/* Run SQL on the test database directly (the tests' own connection). */
static void pg_sql(const char *sql)
{
    PGconn *c = PQconnectdb(pg_url);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    PQclear(PQexec(c, "SET client_min_messages=warning"));
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK &&
        PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(c);
}

/* A fresh schema, migrated as `fusebox migrate` does. */
static int setup_pg(void **state)
{
    const char *kind;
    char err[512];
    int from, to;
    setup(state);
    cfg.store_url = (char *)pg_url;
    pg_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public");
    /* Before the migration, a node refuses the database. */
    fb_store *s = NULL;
    assert_int_equal(fb_store_open(&cfg, &s, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "fusebox migrate"));
    assert_null(strstr(err, "postgres://")); /* never the URL */
    assert_int_equal(fb_store_migrate(&cfg, &kind, &from, &to, err,
                                      sizeof err),
                     FB_OK);
    assert_string_equal(kind, "postgresql");
    assert_int_equal(from, 0);
    assert_true(to >= 1);
    /* The tests write calls in flight with small ids, node 0's range: a
     * node 0 that never goes stale (a reservation needs a live node). */
    pg_sql("INSERT INTO nodes VALUES(0, 0, 9223372036854775807)");
    return 0;
}

static int teardown(void **state)
{
    char cmd[128];
    (void)state;
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static fb_store *open_store(void)
{
    char err[256];
    fb_store *s = NULL;
    assert_int_equal(fb_store_open(&cfg, &s, err, sizeof err), FB_OK);
    return s;
}

static fb_entry entry(int64_t id, int64_t ts, const char *tenant,
                      const char *job, fb_money reserved)
{
    fb_entry e = {.id = id, .ts_ms = ts, .tenant = tenant, .job = job,
                  .key_id = "k_test", .provider = "openai",
                  .model = "gpt-4o-mini", .path = "/v1/chat/completions",
                  .reserved = reserved, .state = FB_ENTRY_RESERVED,
                  .outcome = "in_flight"};
    return e;
}

typedef struct waiter {
    struct event_base *base;
    int calls;
    fb_err err;
    int durable_rows; /* rows visible to a second connection at callback */
} waiter;

static void on_insert(void *arg, fb_err err)
{
    waiter *w = arg;
    fb_store *other = open_store();
    fb_spend sp;
    fb_spend_filter f = {.tenant = "acme"};
    assert_int_equal(fb_store_spend(other, &f, &sp), FB_OK);
    fb_store_close(other);
    w->calls++;
    w->err = err;
    w->durable_rows = (int)sp.calls;
    if (w->calls == 3)
        event_base_loopbreak(w->base);
}

static void test_insert_durable_then_recover(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    waiter w = {.base = base};
    int64_t node, base_id;
    fb_store *ns = open_store();
    assert_int_equal(fb_store_node_join(ns, &node, &base_id), FB_OK);
    fb_ledger *l = fb_ledger_start(base, open_store(), open_store(), NULL, 50, NULL, NULL);
    assert_non_null(l);
    for (int i = 1; i <= 3; i++) {
        fb_entry e = entry(base_id + i, 1000 + i, "acme", "nightly", 100 * i);
        fb_ledger_insert(l, &e, on_insert, &w);
    }
    fb_ledger_settle(l, base_id + 1, 200, 40, "ok");
    event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY);
    assert_int_equal(w.calls, 3);
    assert_int_equal(w.err, FB_OK);
    /* Each callback saw its own row committed, from another connection. */
    assert_true(w.durable_rows >= 3);
    fb_ledger_stop(l);
    event_base_free(base);

    /* As after kill -9: rows 2 and 3 never settled. */
    fb_store *s = open_store();
    fb_spend sp;
    fb_spend_filter all = {.tenant = "acme"};
    assert_int_equal(fb_store_spend(s, &all, &sp), FB_OK);
    assert_int_equal(sp.spent, 40 + 200 + 300);
    assert_int_equal(sp.reserved, 500);
    int64_t n;
    if (pg_url == NULL) {
        assert_int_equal(fb_store_recover(s, &n), FB_OK);
        assert_int_equal(n, 2);
    } else {
        /* A cluster node's rows are recovered when the node is reaped:
         * once its heartbeat is older than the lease (1 s here), by
         * whichever node looks first. */
        assert_int_equal(fb_store_recover(s, &n), FB_OK);
        assert_int_equal(n, 0); /* still alive */
        int64_t t0 = mono_ms();
        while (n == 0 && mono_ms() - t0 < 15000) {
            nap_50ms();
            assert_int_equal(fb_store_reap(s, &n), FB_OK);
        }
        assert_int_equal(n, 1);
        assert_int_equal(fb_store_node_beat(ns, node), FB_ENOTFOUND);
    }
    fb_store_close(ns);
    assert_int_equal(fb_store_spend(s, &all, &sp), FB_OK);
    assert_int_equal(sp.spent, 540);
    assert_int_equal(sp.reserved, 0);
    assert_int_equal(sp.paid_calls, 3);
    /* Settling twice does not change a settled row. */
    assert_int_equal(fb_store_entry_settle(s, base_id + 2, 200, 1, "late"),
                     FB_OK);
    assert_int_equal(fb_store_spend(s, &all, &sp), FB_OK);
    assert_int_equal(sp.spent, 540);
    /* Filters: period start, job, and a blocked row. */
    fb_entry b = entry(base_id + 4, 5000, "acme", "other", 0);
    b.state = FB_ENTRY_BLOCKED;
    b.status = 402;
    assert_int_equal(fb_store_entry_insert(s, &b), FB_OK);
    fb_spend_filter since = {.tenant = "acme", .since_ms = 1002};
    assert_int_equal(fb_store_spend(s, &since, &sp), FB_OK);
    assert_int_equal(sp.spent, 500);
    assert_int_equal(sp.blocked_calls, 1);
    fb_spend_filter job = {.tenant = "acme", .job = "nightly"};
    assert_int_equal(fb_store_spend(s, &job, &sp), FB_OK);
    assert_int_equal(sp.calls, 3);
    int64_t max, node2;
    assert_int_equal(fb_store_node_join(s, &node2, &max), FB_OK);
    /* The next ids never meet this node's: after them on SQLite, a range
     * of their own on PostgreSQL. */
    assert_true(max >= base_id + 4);
    fb_store_close(s);
}

typedef struct key_wait {
    struct event_base *base;
    fb_err err;
    fb_key_rec k;
    fb_money spent;
    int changes;
    char subject[256];
} key_wait;

static void on_key(void *arg, fb_err err, const fb_key_rec *k, fb_money spent)
{
    key_wait *w = arg;
    w->err = err;
    if (k)
        w->k = *k;
    w->spent = spent;
    event_base_loopbreak(w->base);
}

static void on_change(void *arg, const fb_change *c)
{
    key_wait *w = arg;
    w->changes++;
    snprintf(w->subject, sizeof w->subject, "%s", c->subject);
    event_base_loopbreak(w->base);
}

static void test_keys_and_change_feed(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    key_wait w = {.base = base};
    char text[FB_KEY_TEXT_LEN + 1];
    fb_key_rec k = {0};
    fb_store *cli = open_store();
    assert_int_equal(fb_key_generate(text, &k), FB_OK);
    assert_true(fb_key_well_formed(text, strlen(text)));
    snprintf(k.tenant, sizeof k.tenant, "acme");
    snprintf(k.job, sizeof k.job, "nightly");
    k.budget.set = 1;
    k.budget.limit = 1000;
    k.budget.period = FB_PERIOD_NONE;
    k.created_ms = 1;
    assert_int_equal(fb_store_key_insert(cli, &k), FB_OK);
    assert_int_equal(fb_store_key_insert(cli, &k), FB_EEXIST);

    fb_ledger *l = fb_ledger_start(base, open_store(), NULL, NULL, 20, on_change, &w);
    assert_non_null(l);
    uint8_t h[32];
    fb_key_hash(text, strlen(text), h);
    fb_ledger_key_lookup(l, h, 10, on_key, &w);
    event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY);
    assert_int_equal(w.err, FB_OK);
    assert_string_equal(w.k.id, k.id);
    assert_true(w.k.budget.set);
    assert_int_equal(w.k.budget.limit, 1000);
    assert_int_equal(w.spent, 0);
    assert_true(fb_key_hash_equal(w.k.hash, h));

    h[0] ^= 1;
    fb_ledger_key_lookup(l, h, 10, on_key, &w);
    event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY);
    assert_int_equal(w.err, FB_ENOTFOUND);

    /* Another process revokes: the running ledger hears of it. */
    assert_int_equal(fb_store_key_revoke(cli, k.id, 5), FB_OK);
    assert_int_equal(fb_store_key_revoke(cli, k.id, 6), FB_ENOTFOUND);
    assert_int_equal(fb_store_change_add(cli, "key_revoked", k.id), FB_OK);
    event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY);
    assert_int_equal(w.changes, 1);
    assert_string_equal(w.subject, k.id);
    fb_ledger_stop(l);
    fb_store_close(cli);
    event_base_free(base);
}

static void test_results_and_trips(void **state)
{
    (void)state;
    fb_store *s = open_store();
    uint8_t fp[32] = {1, 2, 3};
    fb_result r = {.status = 200, .stream = 1, .headers = "A: b\r\n",
                   .headers_len = 6, .body = "data: x\n\n", .body_len = 9,
                   .cost = 123, .seq = 1, .attempt = 1};
    fb_result got;
    memcpy(r.fp, fp, 32);
    assert_int_equal(fb_store_result_put(s, "job:t/j", &r, NULL, 1000, 5000),
                     FB_OK);
    /* Seq 1 is taken; an idempotency key names one result only. */
    assert_int_equal(fb_store_result_put(s, "job:t/j", &r, NULL, 1000, 5000),
                     FB_EEXIST);
    r.seq = 2;
    r.body = "{}";
    r.body_len = 2;
    assert_int_equal(fb_store_result_put(s, "job:t/j", &r, "idem-1", 1000, 9000),
                     FB_OK);
    assert_int_equal(fb_store_result_get(s, "job:t/j", fp, 1, 2000, &got),
                     FB_OK);
    assert_int_equal(got.stream, 1);
    assert_int_equal(got.cost, 123);
    assert_memory_equal(got.body, "data: x\n\n", 9);
    assert_string_equal(got.headers, "A: b\r\n");
    fb_result_clear(&got);
    /* Scopes never cross; expired results are not found. */
    assert_int_equal(fb_store_result_get(s, "job:t/other", fp, 1, 2000, &got),
                     FB_ENOTFOUND);
    assert_int_equal(fb_store_result_get(s, "job:t/j", fp, 1, 6000, &got),
                     FB_ENOTFOUND);
    assert_int_equal(fb_store_result_by_idem(s, "job:t/j", "idem-1", 2000, &got),
                     FB_OK);
    assert_int_equal(got.seq, 2);
    fb_result_clear(&got);
    int64_t n;
    assert_int_equal(fb_store_results_purge(s, 6000, NULL, 0, 0, &n), FB_OK);
    assert_int_equal(n, 1); /* the expired one */
    assert_int_equal(fb_store_results_purge(s, 6000, "job:t/", 0, 0, &n),
                     FB_OK);
    assert_int_equal(n, 1);

    /* Occurrences count this attempt's calls of fp, blocked ones aside. */
    fb_entry e = entry(100, 1, "t", "j", 5);
    e.fp = fp;
    e.attempt = 2;
    assert_int_equal(fb_store_entry_insert(s, &e), FB_OK);
    e.id = 101;
    e.state = FB_ENTRY_REPLAYED;
    e.saved = 77;
    assert_int_equal(fb_store_entry_insert(s, &e), FB_OK);
    e.id = 102;
    e.state = FB_ENTRY_BLOCKED;
    assert_int_equal(fb_store_entry_insert(s, &e), FB_OK);
    assert_int_equal(fb_store_occurrences(s, "t", "j", "k_test", 2, fp, &n),
                     FB_OK);
    assert_int_equal(n, 2);
    /* A row without a fingerprint after rows with one does not take the
     * previous row's binding (stmt() clears them). */
    e.id = 103;
    e.state = FB_ENTRY_SETTLED;
    e.status = 200;
    e.fp = NULL;
    assert_int_equal(fb_store_entry_insert(s, &e), FB_OK);
    assert_int_equal(fb_store_occurrences(s, "t", "j", "k_test", 2, fp, &n),
                     FB_OK);
    assert_int_equal(n, 2);
    fb_spend sp;
    fb_spend_filter f = {.tenant = "t"};
    assert_int_equal(fb_store_spend(s, &f, &sp), FB_OK);
    assert_int_equal(sp.replayed_calls, 1);
    assert_int_equal(sp.saved, 77);

    /* Settle and keep in one call: the cost counts, the result is kept;
     * a second call for the same seq is settled, its result dropped. */
    uint8_t fp8[32] = {8, 8};
    fb_result k = {.status = 200, .headers = "H: v\r\n", .headers_len = 6,
                   .body = "{\"x\":1}", .body_len = 7, .cost = 90, .seq = 1,
                   .attempt = 0};
    memcpy(k.fp, fp8, 32);
    fb_entry c1 = entry(200, 3, "cmp", "j", 100), c2 = entry(201, 4, "cmp",
                                                                "j", 100);
    assert_int_equal(fb_store_entry_insert(s, &c1), FB_OK);
    assert_int_equal(fb_store_entry_insert(s, &c2), FB_OK);
    assert_int_equal(fb_store_begin(s), FB_OK);
    assert_int_equal(fb_store_entry_complete(s, 200, 200, 90, "ok", "job:cmp/j",
                                             &k, "idem-c", 1000, 9000),
                     FB_OK);
    k.body = "{\"x\":2}";
    assert_int_equal(fb_store_entry_complete(s, 201, 200, 80, "ok", "job:cmp/j",
                                             &k, NULL, 1000, 9000),
                     FB_EEXIST);
    assert_int_equal(fb_store_commit(s), FB_OK);
    fb_spend_filter cf = {.tenant = "cmp"};
    assert_int_equal(fb_store_spend(s, &cf, &sp), FB_OK);
    assert_int_equal(sp.spent, 170);
    assert_int_equal(sp.reserved, 0);
    assert_int_equal(fb_store_result_by_idem(s, "job:cmp/j", "idem-c", 2000,
                                             &got),
                     FB_OK);
    assert_memory_equal(got.body, "{\"x\":1}", 7);
    fb_result_clear(&got);

    assert_int_equal(fb_store_trip_set(s, "job:t/j", "by hand", 1), FB_OK);
    assert_int_equal(fb_store_trip_set(s, "job:t/j", "again", 2), FB_OK);
    assert_int_equal(fb_store_trip_clear(s, "job:t/j"), FB_OK);
    assert_int_equal(fb_store_trip_clear(s, "job:t/j"), FB_ENOTFOUND);
    fb_store_close(s);
}

/* ---- maintenance: once a second, on its own store handle ----
 * Regression: maint_main computed its deadline on CLOCK_REALTIME while
 * the condvar waits on CLOCK_MONOTONIC, so the deadline lay decades
 * ahead and the thread never woke before fb_ledger_stop: no purge and no
 * checkpoint while the daemon ran. These tests watch for the effect,
 * polling with a bound far above one maintenance round. */

#define MAINT_BOUND_MS 15000

static int64_t file_size(const char *name)
{
    char path[256];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0 ? (int64_t)st.st_size : -1;
}

/* The result (scope, fp, seq 1) still exists: looked up at a time before
 * it expired, so that only its deletion hides it. */
static int result_present(fb_store *s, const char *scope, const uint8_t *fp,
                          int64_t at_ms)
{
    fb_result got;
    fb_err err = fb_store_result_get(s, scope, fp, 1, at_ms, &got);
    if (err == FB_OK)
        fb_result_clear(&got);
    else
        assert_int_equal(err, FB_ENOTFOUND);
    return err == FB_OK;
}

static void test_maintenance_purges_expired(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    fb_store *cli = open_store();
    uint8_t old_fp[32] = {0xee, 1}, live_fp[32] = {0xee, 2};
    fb_result r = {.status = 200, .headers = "", .body = "{}", .body_len = 2,
                   .cost = 5, .seq = 1, .attempt = 1};
    fb_result got;
    int64_t now = fb_wall_ms();

    /* Kept in 1970 for a second: long expired. And one kept for a day. */
    memcpy(r.fp, old_fp, 32);
    assert_int_equal(fb_store_result_put(cli, "job:m/old", &r, "idem-old",
                                         1000, 2000),
                     FB_OK);
    memcpy(r.fp, live_fp, 32);
    assert_int_equal(fb_store_result_put(cli, "job:m/live", &r, NULL, now,
                                         now + 86400000),
                     FB_OK);
    assert_true(result_present(cli, "job:m/old", old_fp, 1500));
    assert_int_equal(fb_store_result_by_idem(cli, "job:m/old", "idem-old",
                                             1500, &got),
                     FB_OK);
    fb_result_clear(&got);

    fb_ledger *l = fb_ledger_start(base, open_store(), open_store(), NULL, 50, NULL,
                                   NULL);
    assert_non_null(l);
    int64_t t0 = mono_ms();
    while (result_present(cli, "job:m/old", old_fp, 1500) &&
           mono_ms() - t0 < MAINT_BOUND_MS)
        nap_50ms();
    /* Gone while the ledger runs (not at fb_ledger_stop), its key too. */
    assert_false(result_present(cli, "job:m/old", old_fp, 1500));
    int64_t t1 = mono_ms();
    fb_err err;
    while ((err = fb_store_result_by_idem(cli, "job:m/old", "idem-old", 1500,
                                          &got)) != FB_ENOTFOUND &&
           mono_ms() - t1 < MAINT_BOUND_MS) {
        if (err == FB_OK || err == FB_EAGAIN)
            fb_result_clear(&got);
        nap_50ms();
    }
    assert_int_equal(err, FB_ENOTFOUND);
    /* The live one stays. */
    assert_true(result_present(cli, "job:m/live", live_fp, now));
    fb_ledger_stop(l);
    fb_store_close(cli);
    event_base_free(base);
}

static void test_maintenance_checkpoints_wal(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    fb_store *cli = open_store();
    /* Every handle of the earlier tests is closed, and the last close
     * checkpointed: the main file holds everything so far. From here on
     * commits only append to the -wal file (wal_autocheckpoint=0), so the
     * main file grows only when maintenance checkpoints. */
    int64_t before = file_size("fusebox.db");
    assert_true(before > 0);

    fb_ledger *l = fb_ledger_start(base, open_store(), open_store(), NULL, 50, NULL,
                                   NULL);
    assert_non_null(l);
    char path[301];
    memset(path, 'p', sizeof path - 1);
    path[sizeof path - 1] = '\0';
    enum { ROWS = 600 }; /* ~200 KB of rows: dozens of new pages */
    for (int i = 0; i < ROWS; i++) {
        fb_entry e = entry(10000 + i, 2000000 + i, "wal", "grow", 1);
        e.path = path;
        fb_ledger_insert(l, &e, NULL, NULL);
    }
    int64_t t0 = mono_ms();
    while (fb_ledger_backlog(l) > 0 && mono_ms() - t0 < MAINT_BOUND_MS)
        nap_50ms();
    assert_int_equal(fb_ledger_backlog(l), 0);
    fb_spend sp;
    fb_spend_filter f = {.tenant = "wal"};
    assert_int_equal(fb_store_spend(cli, &f, &sp), FB_OK);
    assert_int_equal(sp.calls, ROWS); /* committed (in the WAL at least) */

    int64_t t1 = mono_ms();
    while (file_size("fusebox.db") < before + 100 * 1024 &&
           mono_ms() - t1 < MAINT_BOUND_MS)
        nap_50ms();
    /* Copied into the main file while every handle is still open. */
    assert_true(file_size("fusebox.db") >= before + 100 * 1024);
    fb_ledger_stop(l);
    fb_store_close(cli);
    event_base_free(base);
}

/* The size cap: the oldest results go until the bodies fit, no more. */
static void test_results_size_cap(void **state)
{
    (void)state;
    fb_store *s = open_store();
    char body[1000];
    int64_t n = 0;
    memset(body, 'b', sizeof body);
    /* Whatever other tests kept is purged first (expired at a far time). */
    assert_int_equal(fb_store_results_purge(s, INT64_MAX, NULL, 0, 0, &n),
                     FB_OK);
    for (int i = 1; i <= 10; i++) {
        fb_result r = {.status = 200, .headers = "", .body = body,
                       .body_len = sizeof body, .seq = 1};
        memset(r.fp, i, sizeof r.fp);
        assert_int_equal(fb_store_result_put(s, "job:cap/j", &r, NULL, 1000,
                                             INT64_MAX / 2),
                         FB_OK);
    }
    /* 10,000 bytes against a cap of 5,500: the five oldest go. */
    assert_int_equal(fb_store_results_purge(s, 2000, NULL, 5500, 0, &n),
                     FB_OK);
    assert_int_equal(n, 5);
    for (int i = 1; i <= 10; i++) {
        fb_result got;
        uint8_t fp[32];
        memset(fp, i, sizeof fp);
        fb_err e = fb_store_result_get(s, "job:cap/j", fp, 1, 2000, &got);
        assert_int_equal(e, i <= 5 ? FB_ENOTFOUND : FB_OK);
        if (e == FB_OK)
            fb_result_clear(&got);
    }
    /* Under the cap: nothing more goes. */
    assert_int_equal(fb_store_results_purge(s, 2000, NULL, 5500, 0, &n),
                     FB_OK);
    assert_int_equal(n, 0);
    fb_store_close(s);
}

/* ---- the journal ----
 * Inserts and completions are acked as soon as their records are written
 * (the callbacks run inline), and the ledger thread writes a call's
 * insert and completion as one settled row when they share a batch. */

static void count_ack(void *arg, fb_err err)
{
    int *n = arg;
    assert_int_equal(err, FB_OK);
    (*n)++;
}

static void test_journal_acks_and_coalesces(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    fb_journal *j = NULL;
    int acked = 0;
    assert_int_equal(fb_journal_open(dir, &j), FB_OK);
    fb_ledger *l = fb_ledger_start(base, open_store(), NULL, j, 50, NULL,
                                   NULL);
    assert_non_null(l);
    for (int i = 1; i <= 20; i++) {
        fb_entry e = entry(900000 + i, 9000 + i, "coal", "nightly", 1000);
        fb_ledger_insert(l, &e, count_ack, &acked);
        assert_int_equal(acked, 2 * i - 1); /* inline: before it returns */
        fb_ledger_complete(l, 900000 + i, 200, 400, "ok", NULL, NULL, NULL, 0,
                           count_ack, &acked);
        assert_int_equal(acked, 2 * i);
    }
    fb_ledger_stop(l);
    event_base_free(base);

    /* Every call settled at its cost, nothing left in flight; the journal
     * emptied at the stop. */
    fb_store *s = open_store();
    fb_spend sp;
    fb_spend_filter f = {.tenant = "coal"};
    assert_int_equal(fb_store_spend(s, &f, &sp), FB_OK);
    assert_int_equal(sp.calls, 20);
    assert_int_equal(sp.paid_calls, 20);
    assert_int_equal(sp.reserved, 0); /* none left in flight */
    assert_int_equal(sp.spent, 20 * 400);
    fb_store_close(s);
    char path[128];
    struct stat st;
    snprintf(path, sizeof path, "%s/fusebox.journal.0", dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 0);
}

/* The spend rollup: a delta that cannot be written fails the whole
 * transaction (the rows too), so that the rollup never undercounts; and
 * a read inside a transaction sees what it settled. */
static void test_rollup_fails_whole(void **state)
{
    (void)state;
    fb_store *s = open_store();
    char path[256];
    sqlite3 *db = NULL;
    if (pg_url != NULL) {
        pg_sql("CREATE FUNCTION fail_roll() RETURNS trigger LANGUAGE plpgsql"
               " AS $$BEGIN IF NEW.key_id='kfail' THEN RAISE EXCEPTION 'no';"
               " END IF; RETURN NEW; END$$;"
               "CREATE TRIGGER fail_roll BEFORE INSERT ON spend_rollup FOR"
               " EACH ROW EXECUTE FUNCTION fail_roll()");
    } else {
        snprintf(path, sizeof path, "%s/fusebox.db", dir);
        assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
        assert_int_equal(
            sqlite3_exec(db,
                         "CREATE TRIGGER fail_roll BEFORE INSERT ON "
                         "spend_rollup WHEN NEW.key_id='kfail' BEGIN SELECT "
                         "RAISE(ABORT,'no'); END;",
                         NULL, NULL, NULL),
            SQLITE_OK);
    }
    /* 300 final rows in as many groups: the 257th delta is written early
     * (256 are held), and fails. */
    static char keys[300][16];
    fb_err err = fb_store_begin(s), first = FB_OK;
    assert_int_equal(err, FB_OK);
    for (int i = 0; i < 300; i++) {
        fb_entry e = entry(7000 + i, 3600000, "tr", "j", 5);
        snprintf(keys[i], sizeof keys[i], i == 3 ? "kfail" : "k%d", i);
        e.key_id = keys[i];
        e.state = FB_ENTRY_SETTLED;
        e.cost = 5;
        e.status = 200;
        e.outcome = "ok";
        fb_err x = fb_store_entry_insert(s, &e);
        if (first == FB_OK)
            first = x;
    }
    assert_int_not_equal(first, FB_OK);
    assert_int_not_equal(fb_store_commit(s), FB_OK);
    fb_store_rollback(s);
    fb_spend sp;
    fb_spend_filter f = {.tenant = "tr", .job = "j"};
    assert_int_equal(fb_store_spend(s, &f, &sp), FB_OK);
    assert_int_equal(sp.calls, 0); /* nothing of it committed */
    if (pg_url != NULL) {
        pg_sql("DROP TRIGGER fail_roll ON spend_rollup");
        goto settle_in_transaction;
    }
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT COUNT(*) FROM ledger "
                                            "WHERE id BETWEEN 7000 AND 7299",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 0);
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_exec(db, "DROP TRIGGER fail_roll", NULL, NULL,
                                  NULL),
                     SQLITE_OK);
    sqlite3_close(db);

settle_in_transaction:
    /* A settle inside a transaction is seen by a read in it. */
    fb_entry e = entry(7400, 3600000, "tr", "j2", 500);
    assert_int_equal(fb_store_entry_insert(s, &e), FB_OK); /* its own */
    f.job = "j2";
    assert_int_equal(fb_store_spend(s, &f, &sp), FB_OK);
    assert_int_equal(sp.spent, 500); /* in flight: the reservation */
    assert_int_equal(fb_store_begin(s), FB_OK);
    assert_int_equal(fb_store_entry_settle(s, 7400, 200, 400, "ok"), FB_OK);
    assert_int_equal(fb_store_spend(s, &f, &sp), FB_OK);
    assert_int_equal(sp.spent, 400);
    assert_int_equal(sp.calls, 1);
    assert_int_equal(fb_store_commit(s), FB_OK);
    assert_int_equal(fb_store_spend(s, &f, &sp), FB_OK);
    assert_int_equal(sp.spent, 400);
    fb_store_close(s);
}

/* ---- the cluster (PostgreSQL): leases, reaping, flights ---- */

static fb_money pool_taken(const char *scope)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT taken FROM budget_pool WHERE scope='%s'", scope);
    PGconn *c = PQconnectdb(pg_url);
    PGresult *r = PQexec(c, sql);
    assert_int_equal(PQntuples(r), 1);
    fb_money v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    PQfinish(c);
    return v;
}

/* Slices never add up past the ceiling; what a node gives back, or what
 * a reaped node did not spend, can be taken again; its calls in flight
 * are charged in full and count. */
static void test_leases(void **state)
{
    (void)state;
    fb_store *a = open_store(), *b = open_store();
    int64_t na, nb, ba, bb;
    fb_money got, taken;
    assert_int_equal(fb_store_node_join(a, &na, &ba), FB_OK);
    assert_int_equal(fb_store_node_join(b, &nb, &bb), FB_OK);
    assert_true(na != nb);
    assert_true(bb - ba >= INT64_C(1) << 40); /* id ranges apart */
    /* Spend from before (no lease) is in the pool when it is created. */
    fb_entry e = entry(7, 1000, "lt", "j", 0);
    e.state = FB_ENTRY_SETTLED;
    e.cost = 100;
    e.status = 200;
    e.outcome = "ok";
    assert_int_equal(fb_store_entry_insert(a, &e), FB_OK);
    /* 900 left: a slice is at most a quarter of it, unless need is more. */
    assert_int_equal(fb_store_lease_take(a, na, "job:lt/j", 0, 1000, 600, 1,
                                         &got, &taken),
                     FB_OK);
    assert_int_equal(got, 225);
    assert_int_equal(fb_store_lease_give(a, na, "job:lt/j", 0, 225), FB_OK);
    assert_int_equal(fb_store_lease_take(a, na, "job:lt/j", 0, 1000, 600,
                                         600, &got, &taken),
                     FB_OK);
    assert_int_equal(got, 600);
    /* 300 left: B wants 500, needs 300 and gets it; then nothing. */
    assert_int_equal(fb_store_lease_take(b, nb, "job:lt/j", 0, 1000, 500,
                                         300, &got, &taken),
                     FB_OK);
    assert_int_equal(got, 300);
    assert_int_equal(taken, 1000);
    assert_int_equal(fb_store_lease_take(b, nb, "job:lt/j", 0, 1000, 5, 1,
                                         &got, &taken),
                     FB_ELIMIT);
    assert_int_equal(pool_taken("job:lt/j"), 1000);
    /* A gives 200 back: B can take it. Giving more than held fails. */
    assert_int_equal(fb_store_lease_give(a, na, "job:lt/j", 0, 200), FB_OK);
    assert_int_equal(fb_store_lease_take(b, nb, "job:lt/j", 0, 1000, 500,
                                         200, &got, &taken),
                     FB_OK);
    assert_int_equal(got, 200);
    assert_int_equal(fb_store_lease_give(a, na, "job:lt/j", 0, 401),
                     FB_ENOTFOUND); /* more than A holds: nothing given */
    assert_int_equal(pool_taken("job:lt/j"), 1000); /* refused: unchanged */
    /* A (slice 400) has one call settled at 50 and one in flight (70),
     * then dies. Reaped: the flight charged in full, 400 - 120 back. */
    fb_entry p = entry(ba + 1, 2000, "lt", "j", 60);
    p.state = FB_ENTRY_SETTLED;
    p.cost = 50;
    p.status = 200;
    p.outcome = "ok";
    assert_int_equal(fb_store_entry_insert(a, &p), FB_OK);
    fb_entry q = entry(ba + 2, 2001, "lt", "j", 70);
    assert_int_equal(fb_store_entry_insert(a, &q), FB_OK);
    assert_int_equal(fb_store_node_leave(b, na), FB_OK);
    assert_int_equal(pool_taken("job:lt/j"), 1000 - (400 - 120));
    /* A reaped node reserves nothing more under its old number (its
     * slices are back in the pool: the call would be counted nowhere). */
    fb_entry late = entry(ba + 3, 2002, "lt", "j", 80);
    assert_int_equal(fb_store_entry_insert(a, &late), FB_ENOTFOUND);
    /* A reaped node takes nothing more until it joins again. */
    assert_int_equal(fb_store_lease_take(a, na, "job:lt/j", 0, 1000, 10, 1,
                                         &got, &taken),
                     FB_ENOTFOUND);
    fb_spend sp;
    fb_spend_filter f = {.tenant = "lt", .job = "j"};
    assert_int_equal(fb_store_spend(b, &f, &sp), FB_OK);
    assert_int_equal(sp.spent, 100 + 50 + 70);
    assert_int_equal(sp.reserved, 0);
    assert_int_equal(fb_store_node_leave(b, nb), FB_OK);
    fb_store_close(a);
    fb_store_close(b);
}

typedef struct claimer {
    fb_store *s;
    int64_t node;
    uint8_t fp[32];
    fb_err err;
    fb_result res;
} claimer;

static void *claim_thread(void *arg)
{
    claimer *c = arg;
    c->err = fb_store_result_claim(c->s, c->node, "job:f/j", c->fp, 1, 2000,
                                   &c->res);
    return NULL;
}

/* How many sessions wait on a lock now (the tests' own connection). */
static int lock_waiters(void)
{
    PGconn *c = PQconnectdb(pg_url);
    /* this database's sessions waiting on a lock in fusebox_claim */
    PGresult *r = PQexec(c, "SELECT COUNT(*) FROM pg_stat_activity WHERE "
                            "wait_event_type='Lock' AND "
                            "datname=current_database() AND "
                            "query LIKE '%fusebox_claim%'");
    int n = PQntuples(r) == 1 ? atoi(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    PQfinish(c);
    return n;
}

/* A claim that waits on a marker whose holder keeps the result and drops
 * the marker in one transaction sees the kept result once that commits
 * (review: it bought it again, its snapshot older than the commit). */
static void test_claim_sees_a_result_kept_meanwhile(void **state)
{
    (void)state;
    fb_store *a = open_store(), *b = open_store();
    claimer c = {.s = b, .fp = {7, 7, 7}};
    int64_t na, x;
    pthread_t th;
    fb_result r = {.status = 200, .headers = "", .body = "{\"k\":1}",
                   .body_len = 7, .seq = 1};
    assert_int_equal(fb_store_node_join(a, &na, &x), FB_OK);
    assert_int_equal(fb_store_node_join(b, &c.node, &x), FB_OK);
    memcpy(r.fp, c.fp, 32);
    assert_int_equal(fb_store_result_claim(a, na, "job:f/j", c.fp, 1, 2000,
                                           &c.res),
                     FB_ENOTFOUND); /* A buys it */
    assert_int_equal(fb_store_begin(a), FB_OK);
    assert_int_equal(fb_store_result_put(a, "job:f/j", &r, NULL, 1000,
                                         INT64_MAX / 2),
                     FB_OK);
    assert_int_equal(pthread_create(&th, NULL, claim_thread, &c), 0);
    int64_t t0 = mono_ms();
    while (lock_waiters() < 1 && mono_ms() - t0 < 10000)
        nap_50ms();
    assert_int_equal(lock_waiters(), 1); /* B waits on A's marker row */
    assert_int_equal(fb_store_commit(a), FB_OK);
    pthread_join(th, NULL);
    assert_int_equal(c.err, FB_OK); /* kept: not bought again */
    assert_memory_equal(c.res.body, "{\"k\":1}", 7);
    fb_result_clear(&c.res);
    assert_int_equal(fb_store_node_leave(a, na), FB_OK);
    assert_int_equal(fb_store_node_leave(a, c.node), FB_OK);
    fb_store_close(a);
    fb_store_close(b);
}

static int count_row(void *arg, const fb_outbox_row *r)
{
    (void)r;
    ++*(int *)arg;
    return 0;
}

/* One node buys a result at a time: a second claim waits while the
 * holder lives; a kept result releases the marker, and so does reaping
 * the holder. */
static void test_flights(void **state)
{
    (void)state;
    fb_store *a = open_store(), *b = open_store();
    int64_t na, nb, x;
    uint8_t fp[32] = {9, 9};
    assert_int_equal(fb_store_node_join(a, &na, &x), FB_OK);
    assert_int_equal(fb_store_node_join(b, &nb, &x), FB_OK);
    assert_int_equal(fb_store_flight_claim(a, na, "job:f/j", fp, 1), FB_OK);
    assert_int_equal(fb_store_flight_claim(a, na, "job:f/j", fp, 1), FB_OK);
    assert_int_equal(fb_store_flight_claim(b, nb, "job:f/j", fp, 1),
                     FB_EEXIST);
    assert_int_equal(fb_store_flight_claim(b, nb, "job:f/j", fp, 2), FB_OK);
    fb_result r = {.status = 200, .headers = "", .body = "{}", .body_len = 2,
                   .seq = 1, .attempt = 0};
    memcpy(r.fp, fp, 32);
    assert_int_equal(fb_store_result_put(a, "job:f/j", &r, NULL, 1000,
                                         INT64_MAX / 2),
                     FB_OK);
    assert_int_equal(fb_store_flight_claim(b, nb, "job:f/j", fp, 1), FB_OK);
    assert_int_equal(fb_store_flight_release(b, nb, "job:f/j", fp, 1), FB_OK);
    /* A lookup claims in the same round trip when nothing is kept. */
    fb_result got;
    uint8_t fp5[32] = {5};
    assert_int_equal(fb_store_result_claim(a, na, "job:f/j", fp5, 1, 2000,
                                           &got),
                     FB_ENOTFOUND);
    assert_int_equal(fb_store_result_claim(b, nb, "job:f/j", fp5, 1, 2000,
                                           &got),
                     FB_EEXIST);
    memcpy(r.fp, fp5, 32);
    assert_int_equal(fb_store_result_put(a, "job:f/j", &r, NULL, 1000,
                                         INT64_MAX / 2),
                     FB_OK);
    assert_int_equal(fb_store_result_claim(b, nb, "job:f/j", fp5, 1, 2000,
                                           &got),
                     FB_OK);
    assert_memory_equal(got.body, "{}", 2);
    fb_result_clear(&got);
    assert_int_equal(fb_store_flight_claim(a, na, "job:f/j", fp, 3), FB_OK);
    assert_int_equal(fb_store_node_leave(b, na), FB_OK);
    /* An alert is delivered by one node: what one takes, others skip for
     * a minute. */
    const char *dests[] = {"log"};
    fb_alert_rec al = {.dedup = "budget:x:50", .ts_ms = 1000, .kind = "budget",
                       .scope = "job:f/j", .message = "m", .body = "{}"};
    assert_int_equal(fb_store_alert_add(a, &al, dests, 1), FB_OK);
    assert_int_equal(fb_store_alert_add(b, &al, dests, 1), FB_EEXIST);
    int seen_a = 0, seen_b = 0;
    assert_int_equal(fb_store_outbox_due(a, 2000, 10, count_row, &seen_a),
                     FB_OK);
    assert_int_equal(fb_store_outbox_due(b, 2000, 10, count_row, &seen_b),
                     FB_OK);
    assert_int_equal(seen_a + seen_b, 1);
    assert_int_equal(fb_store_outbox_due(b, 2000 + 161000, 10, count_row,
                                         &seen_b),
                     FB_OK);
    assert_int_equal(seen_a + seen_b, 2); /* again once the claim lapsed */
    assert_int_equal(fb_store_flight_claim(b, nb, "job:f/j", fp, 3), FB_OK);
    assert_int_equal(fb_store_node_leave(b, nb), FB_OK);
    fb_store_close(a);
    fb_store_close(b);
}

/* A bad URL, or a server that cannot be reached, is named in errors
 * without the password (the URL is never echoed). */
static void test_store_url_secret(void **state)
{
    (void)state;
    static const char *const urls[] = {
        "postgres://u:topsecret@127.0.0.1:1/db",
        "postgres://u:top%zzsecret@127.0.0.1:1/db",
        "postgres://u:topsecret@[::1/db",
        "postgresql://u:topsecret@/db?host=/nonexistent&sslmode=bogus",
    };
    fb_config c = cfg;
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        char err[512] = "";
        fb_store *s = NULL;
        c.store_url = (char *)urls[i];
        assert_int_not_equal(fb_store_open(&c, &s, err, sizeof err), FB_OK);
        assert_null(s);
        assert_true(err[0] != '\0');
        if (strstr(err, "secret") != NULL)
            fail_msg("the password in: %s", err);
    }
}

int main(void)
{
    const struct CMUnitTest pg_tests[] = {
        cmocka_unit_test(test_insert_durable_then_recover),
        cmocka_unit_test(test_keys_and_change_feed),
        cmocka_unit_test(test_results_and_trips),
        cmocka_unit_test(test_maintenance_purges_expired),
        cmocka_unit_test(test_results_size_cap),
        cmocka_unit_test(test_rollup_fails_whole),
        cmocka_unit_test(test_leases),
        cmocka_unit_test(test_flights),
        cmocka_unit_test(test_claim_sees_a_result_kept_meanwhile),
    };
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_insert_durable_then_recover),
        cmocka_unit_test(test_keys_and_change_feed),
        cmocka_unit_test(test_results_and_trips),
        cmocka_unit_test(test_maintenance_purges_expired),
        cmocka_unit_test(test_maintenance_checkpoints_wal),
        cmocka_unit_test(test_journal_acks_and_coalesces),
        cmocka_unit_test(test_results_size_cap),
        cmocka_unit_test(test_rollup_fails_whole),
        cmocka_unit_test(test_store_url_secret),
    };
    int failed = cmocka_run_group_tests_name("sqlite", tests, setup,
                                             teardown);
    pg_url = getenv("FUSEBOX_TEST_PG");
    if (pg_url == NULL || pg_url[0] == '\0') {
        printf("[  SKIPPED ] postgresql: FUSEBOX_TEST_PG is not set "
               "(make test sets it)\n");
        return failed;
    }
    memcpy(dir, "/tmp/fb-ledger-XXXXXX", sizeof dir);
    return failed + cmocka_run_group_tests_name("postgresql", pg_tests,
                                                setup_pg, teardown);
}
