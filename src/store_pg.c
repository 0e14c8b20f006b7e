/* store_pg.c - the shared store: one PostgreSQL database behind several
 * fusebox nodes (libpq). The same tables as the SQLite store, plus what a
 * cluster needs: nodes with heartbeats, budget pools and the slices
 * (leases) nodes hold of them, and in-flight markers for single flight
 * across nodes. Statements are prepared on first use, once per
 * connection; the schema is versioned and kept by `fusebox migrate`.
 *
 * NOTES ON THE DESIGN OF BUDGET LEASING
 *
 * A scope with a ceiling has a pool row per window (period start): taken,
 * the money handed out as slices and not given back. A node reserves
 * from its own slice in memory (budget.c) and takes more with one call of
 * fusebox_take(), which locks the pool row, grants between need and want
 * of what the ceiling leaves, and records the slice in budget_lease.
 *
 *  1. taken never passes the ceiling: fusebox_take grants at most
 *     limit - taken, under the row lock.
 *  2. What a node spends from a slice stays within it (budget.c counts
 *     spent + reserved <= slice), so the sum over nodes of what was spent
 *     is at most the sum of slices, at most taken, at most the ceiling.
 *  3. A node gives unused slices back (fusebox_give) while it runs; a
 *     dead node's slices come back when it is reaped: its calls in flight
 *     are charged in full (the provider may have billed them) and taken
 *     drops by granted - spent, spent read from its own ledger rows (one
 *     primary-key range: ids are numbered per node, store_int.h).
 *  4. A node stops reserving from its slices once its heartbeat is older
 *     than half the lease (gateway.c), before anyone may reap it after a
 *     whole one; a node that finds itself reaped takes a new number.
 *  5. Errors only ever make a pool count more than was spent, never less
 *     (calls refused, never overspent): a reaped node's spend is read
 *     from its rows since the window's start with no end (a slice of a
 *     past window also counts later rows), and a pool created mid-window
 *     starts from all spend in the window, which a node reaped later
 *     counts again if it spent before the pool existed.
 *
 * Times that decide liveness are the database's clock (fusebox_now()),
 * not the nodes'. */
#include "store_int.h"

#include <endian.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PG_SCHEMA_VERSION 1
/* Every session: bytea as hex (col_bytes reads it); and a node cut off in
 * the middle of a batch must not hold its row locks (rollup rows, markers,
 * its own node row) for long: the server ends such a session. */
#define SESSION_SETUP                                                          \
    "SET bytea_output=hex;SET application_name=fusebox;"                       \
    "SET idle_in_transaction_session_timeout='60s'"
#define PREP_MAX 96
#define ARGS_MAX 17

static const fb_store_ops pg_ops;

/* Every PQexec*, PQprepare is one round trip (no pipelining); those of
 * budget slices (takes and gives) are counted apart as well. */
static uint64_t round_trips, lease_trips;

uint64_t fb_store_round_trips(uint64_t *leases)
{
    *leases = __atomic_load_n(&lease_trips, __ATOMIC_RELAXED);
    return __atomic_load_n(&round_trips, __ATOMIC_RELAXED);
}

static void trip_count(void)
{
    __atomic_add_fetch(&round_trips, 1, __ATOMIC_RELAXED);
}

struct fb_store {
    const fb_store_ops *ops; /* first: store.c reads it */
    PGconn *pg;
    char why[256];
    fb__rolls rolls;
    int lease_ms;
    int txn;          /* between pg_begin and its commit or rollback */
    int64_t stale_ms; /* a marker held longer was lost: the longest call */
    const char *prep[PREP_MAX]; /* statements prepared on this connection,
                                   by their text's address ("sN": index) */
    int nprep;
};

/* A statement whose result does not matter (a rollback after a failure). */
static void exec_quiet(fb_store *s, const char *sql)
{
    trip_count();
    PQclear(PQexec(s->pg, sql));
}

/* Version 1: everything of SQLite's schema 4, in PostgreSQL's types,
 * and the cluster's tables. Money columns are integer picodollars. */
static const char schema_v1[] =
    "CREATE TABLE keys("
    " id TEXT PRIMARY KEY, hash BYTEA NOT NULL UNIQUE, prefix TEXT NOT NULL,"
    " tenant TEXT NOT NULL, job TEXT NOT NULL DEFAULT '',"
    " attempt BIGINT NOT NULL DEFAULT 0, budget_limit BIGINT,"
    " budget_period INT NOT NULL DEFAULT 0, created_ms BIGINT NOT NULL,"
    " revoked_ms BIGINT NOT NULL DEFAULT 0);"
    "CREATE INDEX keys_prefix ON keys(prefix);"
    "CREATE TABLE ledger("
    " id BIGINT PRIMARY KEY, ts_ms BIGINT NOT NULL, tenant TEXT NOT NULL,"
    " job TEXT NOT NULL DEFAULT '', key_id TEXT NOT NULL,"
    " provider TEXT NOT NULL, model TEXT, path TEXT, status INT NOT NULL,"
    " reserved BIGINT NOT NULL, cost BIGINT NOT NULL, state INT NOT NULL,"
    " outcome TEXT, fp BYTEA, attempt BIGINT NOT NULL DEFAULT 0,"
    " retry INT NOT NULL DEFAULT 0, saved BIGINT NOT NULL DEFAULT 0);"
    "CREATE INDEX ledger_scope ON ledger(tenant, job, ts_ms);"
    "CREATE INDEX ledger_key ON ledger(key_id, ts_ms);"
    "CREATE INDEX ledger_ts ON ledger(ts_ms);"
    "CREATE INDEX ledger_pending ON ledger(id) WHERE state=0;"
    "CREATE INDEX ledger_blocked ON ledger(id) WHERE state=2;"
    "CREATE INDEX ledger_attempt_fp ON ledger(tenant, job, key_id, fp)"
    " WHERE fp IS NOT NULL AND attempt>0;"
    "CREATE TABLE changes(seq BIGSERIAL PRIMARY KEY, kind TEXT NOT NULL,"
    " subject TEXT NOT NULL);"
    "CREATE TABLE results("
    " id BIGSERIAL PRIMARY KEY, scope TEXT NOT NULL, fp BYTEA NOT NULL,"
    " seq BIGINT NOT NULL, attempt BIGINT NOT NULL, status INT NOT NULL,"
    " stream INT NOT NULL, headers BYTEA NOT NULL, body BYTEA NOT NULL,"
    " cost BIGINT NOT NULL, created_ms BIGINT NOT NULL,"
    " expires_ms BIGINT NOT NULL, UNIQUE(scope, fp, seq));"
    "CREATE INDEX results_expiry ON results(expires_ms);"
    "CREATE TABLE idem_keys("
    " scope TEXT NOT NULL, idem TEXT NOT NULL, fp BYTEA NOT NULL,"
    " seq BIGINT NOT NULL, expires_ms BIGINT NOT NULL,"
    " PRIMARY KEY(scope, idem));"
    "CREATE INDEX idem_expiry ON idem_keys(expires_ms);"
    "CREATE TABLE trips(scope TEXT PRIMARY KEY, reason TEXT NOT NULL,"
    " ts_ms BIGINT NOT NULL);"
    "CREATE TABLE runs("
    " id BIGSERIAL PRIMARY KEY, scope TEXT NOT NULL, identity BYTEA NOT NULL,"
    " started_ms BIGINT NOT NULL, ended_ms BIGINT, outcome TEXT NOT NULL,"
    " exit_code INT, attempts INT NOT NULL DEFAULT 0,"
    " cleared INT NOT NULL DEFAULT 0);"
    "CREATE INDEX runs_scope ON runs(scope, started_ms);"
    "CREATE TABLE spend_rollup("
    " hour_ms BIGINT NOT NULL, tenant TEXT NOT NULL, job TEXT NOT NULL,"
    " key_id TEXT NOT NULL, model TEXT NOT NULL, calls BIGINT NOT NULL,"
    " paid BIGINT NOT NULL, blocked BIGINT NOT NULL,"
    " replayed BIGINT NOT NULL, cost BIGINT NOT NULL, saved BIGINT NOT NULL,"
    " PRIMARY KEY(hour_ms, tenant, job, key_id, model));"
    "CREATE INDEX spend_rollup_scope ON spend_rollup(tenant, job, hour_ms);"
    "CREATE INDEX spend_rollup_key ON spend_rollup(key_id, hour_ms);"
    "CREATE TABLE alerts("
    " dedup TEXT PRIMARY KEY, ts_ms BIGINT NOT NULL, kind TEXT NOT NULL,"
    " scope TEXT NOT NULL, message TEXT NOT NULL, body TEXT NOT NULL);"
    "CREATE INDEX alerts_ts ON alerts(ts_ms);"
    "CREATE TABLE alert_outbox("
    " id BIGSERIAL PRIMARY KEY, dedup TEXT NOT NULL, dest TEXT NOT NULL,"
    " attempts INT NOT NULL DEFAULT 0, next_ms BIGINT NOT NULL,"
    " state INT NOT NULL DEFAULT 0, last_error TEXT, UNIQUE(dedup, dest));"
    "CREATE INDEX alert_outbox_due ON alert_outbox(next_ms) WHERE state=0;"
    /* the cluster */
    "CREATE SEQUENCE node_ids;"
    "CREATE TABLE nodes(id BIGINT PRIMARY KEY, started_ms BIGINT NOT NULL,"
    " beat_ms BIGINT NOT NULL);"
    "CREATE TABLE budget_pool(scope TEXT NOT NULL, window_ms BIGINT NOT NULL,"
    " taken BIGINT NOT NULL, PRIMARY KEY(scope, window_ms));"
    "CREATE TABLE budget_lease(node BIGINT NOT NULL, scope TEXT NOT NULL,"
    " window_ms BIGINT NOT NULL, granted BIGINT NOT NULL,"
    " PRIMARY KEY(node, scope, window_ms));"
    "CREATE TABLE flights(scope TEXT NOT NULL, fp BYTEA NOT NULL,"
    " seq BIGINT NOT NULL, node BIGINT NOT NULL, stale_at BIGINT NOT NULL,"
    " PRIMARY KEY(scope, fp, seq));"
    "CREATE FUNCTION fusebox_now() RETURNS BIGINT LANGUAGE sql AS"
    " $$SELECT (extract(epoch FROM clock_timestamp())*1000)::bigint$$;"
    /* A slice between need and want of what the ceiling leaves (at most a
     * quarter of it, unless need is more): got its size, 0 when less than
     * need is left, NULL when the pool has no row yet, -1 when the node
     * was reaped (it must join again); taken what the pool handed out. */
    "CREATE FUNCTION fusebox_take(p_node BIGINT, p_scope TEXT,"
    " p_window BIGINT, p_limit BIGINT, p_want BIGINT, p_need BIGINT,"
    " OUT got BIGINT, OUT taken BIGINT) LANGUAGE plpgsql AS $$"
    "DECLARE t BIGINT; g BIGINT;"
    "BEGIN"
    " PERFORM 1 FROM nodes WHERE id=p_node FOR SHARE;"
    " IF NOT FOUND THEN got := -1; RETURN; END IF;"
    " SELECT budget_pool.taken INTO t FROM budget_pool WHERE scope=p_scope"
    "  AND window_ms=p_window FOR UPDATE;"
    " IF NOT FOUND THEN RETURN; END IF;"
    " taken := t;"
    /* never more than a quarter of what is left (unless need asks for
     * more): slices shrink as the budget runs out, so what other nodes
     * hold unused at the end stays small */
    " g := LEAST(p_want, p_limit - t, GREATEST(p_need, (p_limit - t) / 4));"
    " IF g < p_need OR g <= 0 THEN got := 0; RETURN; END IF;"
    " UPDATE budget_pool SET taken=t+g WHERE scope=p_scope"
    "  AND window_ms=p_window;"
    " INSERT INTO budget_lease VALUES(p_node, p_scope, p_window, g)"
    "  ON CONFLICT(node, scope, window_ms) DO UPDATE"
    "  SET granted=budget_lease.granted+g;"
    " got := g; taken := t + g;"
    "END$$;"
    /* An in-flight marker for p_node, taken over from a node that is gone
     * or held past its stale_at (its holder's longest call: a release that
     * was lost):
     * got is p_node when it is now this node's (never for a node reaped:
     * it looks again, and joins again at its next heartbeat). */
    "CREATE FUNCTION fusebox_flight(p_scope TEXT, p_fp BYTEA, p_seq BIGINT,"
    " p_node BIGINT, p_stale BIGINT) RETURNS BIGINT LANGUAGE sql AS $$"
    "INSERT INTO flights SELECT p_scope, p_fp, p_seq, p_node,"
    " fusebox_now() + p_stale WHERE EXISTS(SELECT 1 FROM nodes WHERE"
    " id=p_node) ON CONFLICT(scope, fp, seq) DO UPDATE SET"
    " node=excluded.node, stale_at=excluded.stale_at WHERE"
    " flights.node=excluded.node OR flights.stale_at < fusebox_now() OR"
    " NOT EXISTS(SELECT 1 FROM nodes WHERE id=flights.node) RETURNING"
    " node$$;"
    /* A lookup that claims: 2 when the result is kept, else 0 when the
     * marker is now p_node's (buy it) or 1 while another node holds it.
     * The result is looked for again after the claim: each statement
     * here reads a fresh snapshot, so a result its holder kept while the
     * claim waited on its marker row is seen (and the claim undone). */
    "CREATE FUNCTION fusebox_claim(p_scope TEXT, p_fp BYTEA, p_seq BIGINT,"
    " p_node BIGINT, p_now BIGINT, p_stale BIGINT) RETURNS INT"
    " LANGUAGE plpgsql AS $$"
    "DECLARE got BIGINT;"
    "BEGIN"
    " PERFORM 1 FROM results WHERE scope=p_scope AND fp=p_fp AND seq=p_seq"
    "  AND expires_ms>p_now;"
    " IF FOUND THEN RETURN 2; END IF;"
    " got := fusebox_flight(p_scope, p_fp, p_seq, p_node, p_stale);"
    " PERFORM 1 FROM results WHERE scope=p_scope AND fp=p_fp AND seq=p_seq"
    "  AND expires_ms>p_now;"
    " IF FOUND THEN"
    "  DELETE FROM flights WHERE scope=p_scope AND fp=p_fp AND seq=p_seq"
    "   AND node=p_node;"
    "  RETURN 2;"
    " END IF;"
    " RETURN CASE WHEN got IS NULL THEN 1 ELSE 0 END;"
    "END$$;"
    "CREATE FUNCTION fusebox_give(p_node BIGINT, p_scope TEXT,"
    " p_window BIGINT, p_amount BIGINT) RETURNS BOOLEAN LANGUAGE plpgsql AS $$"
    "BEGIN"
    " UPDATE budget_lease SET granted=granted-p_amount WHERE node=p_node"
    "  AND scope=p_scope AND window_ms=p_window AND granted>=p_amount;"
    " IF NOT FOUND THEN RETURN false; END IF;"
    " UPDATE budget_pool SET taken=taken-p_amount WHERE scope=p_scope"
    "  AND window_ms=p_window;"
    " RETURN true;"
    "END$$;"
    /* Reap one node (dead, or leaving cleanly): its calls in flight
     * charged in full with their rollup, its slices' unused part back. */
    "CREATE FUNCTION fusebox_reap_node(n BIGINT) RETURNS VOID"
    " LANGUAGE plpgsql AS $$"
    "DECLARE lo BIGINT := n << 40; hi BIGINT := (n + 1) << 40; l RECORD;"
    " used BIGINT;"
    "BEGIN"
    /* the rollup from the rows this charged (a settle that committed
     * meanwhile is not charged again, nor counted twice) */
    " WITH c AS (UPDATE ledger SET cost=reserved, state=1,"
    "  outcome='charged_after_crash' WHERE state=0 AND id>=lo AND id<hi"
    "  RETURNING ts_ms, tenant, job, key_id, model, reserved)"
    " INSERT INTO spend_rollup SELECT ts_ms-ts_ms%3600000, tenant, job,"
    "  key_id, COALESCE(model,''), COUNT(*), COUNT(*) FILTER (WHERE"
    "  reserved>0), 0, 0, SUM(reserved), 0 FROM c GROUP BY 1,2,3,4,5"
    "  ORDER BY 1,2,3,4,5"
    "  ON CONFLICT(hour_ms, tenant, job, key_id, model) DO UPDATE SET"
    "  calls=spend_rollup.calls+excluded.calls,"
    "  paid=spend_rollup.paid+excluded.paid,"
    "  cost=spend_rollup.cost+excluded.cost;"
    " FOR l IN SELECT scope, window_ms, granted FROM budget_lease"
    "  WHERE node=n LOOP"
    "  SELECT COALESCE(SUM(cost),0) INTO used FROM ledger WHERE id>=lo"
    "   AND id<hi AND state=1 AND ts_ms>=l.window_ms AND (l.scope='global'"
    "   OR (l.scope LIKE 'tenant:%' AND tenant=substr(l.scope,8))"
    "   OR (l.scope LIKE 'job:%' AND tenant||'/'||job=substr(l.scope,5))"
    "   OR (l.scope LIKE 'key:%' AND key_id=substr(l.scope,5)));"
    "  UPDATE budget_pool SET taken=taken-l.granted+used"
    "   WHERE scope=l.scope AND window_ms=l.window_ms;"
    " END LOOP;"
    " DELETE FROM budget_lease WHERE node=n;"
    " DELETE FROM flights WHERE node=n;"
    " DELETE FROM nodes WHERE id=n;"
    "END$$;"
    "CREATE FUNCTION fusebox_reap(p_lease_ms BIGINT) RETURNS INT"
    " LANGUAGE plpgsql AS $$"
    "DECLARE k INT := 0; n BIGINT;"
    "BEGIN"
    " FOR n IN SELECT id FROM nodes WHERE beat_ms < fusebox_now()-p_lease_ms"
    "  FOR UPDATE SKIP LOCKED LOOP"
    "  PERFORM fusebox_reap_node(n); k := k + 1;"
    " END LOOP;"
    " RETURN k;"
    "END$$;";

static const char *const migrations[PG_SCHEMA_VERSION] = {schema_v1};

/* ---- calling PostgreSQL ---- */

typedef struct args {
    const char *v[ARGS_MAX];
    int len[ARGS_MAX];
    int fmt[ARGS_MAX];
    char num[ARGS_MAX][24];
    int n;
} args;

static void a_str(args *a, const char *v)
{
    a->v[a->n] = v; /* NULL: SQL NULL */
    a->len[a->n] = 0;
    a->fmt[a->n] = 0;
    a->n++;
}

static void a_i64(args *a, int64_t v)
{
    snprintf(a->num[a->n], sizeof a->num[0], "%lld", (long long)v);
    a_str(a, a->num[a->n]);
}

static void a_bin(args *a, const void *p, size_t n)
{
    a->v[a->n] = p ? p : ""; /* not NULL: that would be SQL NULL */
    a->len[a->n] = (int)n;
    a->fmt[a->n] = 1;
    a->n++;
}

static void note_why(fb_store *s, const PGresult *r)
{
    const char *m = r ? PQresultErrorMessage(r) : PQerrorMessage(s->pg);
    snprintf(s->why, sizeof s->why, "%s", m && m[0] ? m : "error");
    size_t n = strlen(s->why);
    while (n > 0 && (s->why[n - 1] == '\n' || s->why[n - 1] == ' '))
        s->why[--n] = '\0';
}

static fb_err res_err(fb_store *s, PGresult *r)
{
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return FB_OK;
    note_why(s, r);
    const char *code = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    if (code != NULL && strcmp(code, "23505") == 0)
        return FB_EEXIST; /* unique_violation */
    if (code != NULL &&
        (strcmp(code, "40P01") == 0 || strcmp(code, "40001") == 0))
        return FB_EBUSY; /* deadlock, serialization: the batch again */
    return FB_EIO;
}

static void heal(fb_store *s);
static int in_block(fb_store *s);

/* Run sql (its text a constant: prepared once per connection, named by
 * its slot) with a's parameters. Returns the result (PQclear it) and
 * *err. dyn: sql is built per call, not prepared. */
static PGresult *run(fb_store *s, const char *sql, const args *a, int dyn,
                     fb_err *err)
{
    PGresult *r;
    int n = a ? a->n : 0;
    const char *const *v = a ? a->v : NULL;
    const int *len = a ? a->len : NULL, *fmt = a ? a->fmt : NULL;
    int slot = -1;
    char name[16];
    /* A connection that broke (a server restart) comes back on the next
     * statement outside a transaction: every handle, readers included. */
    if (PQstatus(s->pg) != CONNECTION_OK && !s->txn)
        heal(s);
    for (int i = 0; !dyn && i < s->nprep && slot < 0; i++)
        if (s->prep[i] == sql)
            slot = i;
    if (!dyn && slot < 0 && s->nprep < PREP_MAX) {
        snprintf(name, sizeof name, "s%d", s->nprep);
        trip_count();
        r = PQprepare(s->pg, name, sql, n, NULL);
        *err = res_err(s, r);
        PQclear(r);
        if (*err != FB_OK)
            return NULL;
        s->prep[s->nprep] = sql;
        slot = s->nprep++;
    }
    trip_count();
    if (slot >= 0) {
        snprintf(name, sizeof name, "s%d", slot);
        r = PQexecPrepared(s->pg, name, n, v, len, fmt, 0);
    } else {
        r = PQexecParams(s->pg, sql, n, NULL, v, len, fmt, 0);
    }
    *err = res_err(s, r);
    if (*err != FB_OK) {
        PQclear(r);
        return NULL;
    }
    return r;
}

/* A statement whose rows do not matter: FB_OK, *changed the rows it
 * touched (may be NULL). */
static fb_err exec(fb_store *s, const char *sql, const args *a, int *changed)
{
    fb_err err;
    PGresult *r = run(s, sql, a, 0, &err);
    if (r != NULL && changed != NULL)
        *changed = atoi(PQcmdTuples(r));
    PQclear(r);
    return err;
}

static int64_t col_i64(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return 0;
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static const char *col_str(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* A bytea column (hex output: "\x0a1b..."), decoded into a malloc'd
 * buffer with a NUL after it. NULL on ENOMEM or a malformed value. */
static char *col_bytes(const PGresult *r, int row, int col, size_t *len)
{
    const char *t = PQgetvalue(r, row, col);
    size_t tl = (size_t)PQgetlength(r, row, col);
    *len = 0;
    if (tl < 2 || t[0] != '\\' || t[1] != 'x' || (tl - 2) % 2 != 0)
        return NULL;
    char *out = malloc((tl - 2) / 2 + 1);
    if (out == NULL)
        return NULL;
    for (size_t i = 2; i < tl; i += 2) {
        int hi = hexval(t[i]), lo = hexval(t[i + 1]);
        if (hi < 0 || lo < 0) {
            free(out);
            return NULL;
        }
        out[(*len)++] = (char)(hi << 4 | lo);
    }
    out[*len] = '\0';
    return out;
}

/* A 32-byte bytea column into dst; 0 if it is not 32 bytes. */
static int col_fp(const PGresult *r, int row, int col, uint8_t dst[32])
{
    size_t n;
    if (PQgetisnull(r, row, col))
        return 0;
    char *b = col_bytes(r, row, col, &n);
    int ok = b != NULL && n == 32;
    if (ok)
        memcpy(dst, b, 32);
    free(b);
    return ok;
}

static void copy_col(const PGresult *r, int row, int col, char *dst,
                     size_t cap)
{
    const char *t = col_str(r, row, col);
    fb_strlcpy(dst, t ? t : "", cap);
}

/* ---- opening, the schema ---- */

static fb_err read_version(fb_store *s, int *version)
{
    fb_err err;
    *version = 0;
    PGresult *r = run(s, "SELECT to_regclass('fusebox_schema') IS NOT NULL",
                      NULL, 1, &err);
    int there = r != NULL && PQntuples(r) == 1 &&
                strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    if (err != FB_OK || !there)
        return err;
    r = run(s, "SELECT COALESCE(MAX(version),0) FROM fusebox_schema", NULL, 1,
            &err);
    if (r != NULL && PQntuples(r) == 1)
        *version = (int)col_i64(r, 0, 0);
    PQclear(r);
    return err;
}

/* Apply every migration this build knows, under an advisory lock that
 * makes concurrent `fusebox migrate` runs wait for one another. */
static fb_err migrate(fb_store *s, int *from, char *errbuf, size_t errcap)
{
    fb_err err;
    PGresult *r = PQexec(s->pg, "BEGIN; SELECT pg_advisory_xact_lock(7246);"
                                "CREATE TABLE IF NOT EXISTS fusebox_schema("
                                "version INT NOT NULL)");
    if ((err = res_err(s, r)) != FB_OK) {
        PQclear(r);
        goto out;
    }
    PQclear(r);
    int v = 0;
    if ((err = read_version(s, &v)) != FB_OK)
        goto out;
    *from = v;
    if (v > PG_SCHEMA_VERSION) {
        err = FB_EINVAL;
        snprintf(s->why, sizeof s->why,
                 "the database has schema version %d, newer than this "
                 "fusebox knows (%d)",
                 v, PG_SCHEMA_VERSION);
        goto out;
    }
    for (; v < PG_SCHEMA_VERSION; v++) {
        char sql[64];
        r = PQexec(s->pg, migrations[v]);
        err = res_err(s, r);
        PQclear(r);
        if (err != FB_OK)
            goto out;
        snprintf(sql, sizeof sql, "INSERT INTO fusebox_schema VALUES(%d)",
                 v + 1);
        r = PQexec(s->pg, sql);
        err = res_err(s, r);
        PQclear(r);
        if (err != FB_OK)
            goto out;
    }
    r = PQexec(s->pg, "COMMIT");
    err = res_err(s, r);
    PQclear(r);
out:
    if (err != FB_OK) {
        exec_quiet(s, "ROLLBACK");
        snprintf(errbuf, errcap, "store: migrate: %s", s->why);
    }
    return err;
}

static void pg_close(fb_store *s)
{
    if (s == NULL)
        return;
    fb__roll_drop(&s->rolls);
    PQfinish(s->pg);
    free(s);
}

static fb_err roll_write(fb_store *s, const fb__roll *x, size_t n);

/* A notice (a NOTICE from a migration, say) is not an error: quiet. */
static void no_notice(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

fb_err fb__pg_open(const fb_config *c, const char *url, int do_migrate,
                   int *from, fb_store **out, char *errbuf, size_t errcap)
{
    fb_err err = FB_EIO;
    fb_store *s = calloc(1, sizeof *s);
    int version = 0;
    *out = NULL;
    if (s == NULL)
        return FB_ENOMEM;
    s->ops = &pg_ops;
    s->rolls.write = roll_write;
    s->lease_ms = c->cluster_lease_ms > 0 ? c->cluster_lease_ms : 10000;
    /* A marker may be held while its holder waits on another marker
     * (an Idempotency-Key's, then the result's) and then buys: twice the
     * longest call, and a minute. */
    s->stale_ms = 2 * (int64_t)c->upstream_timeout_ms + 60000;
    /* Parsed first: libpq's own parse errors quote the URL, password and
     * all; this message names nothing of it. */
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &perr);
    if (opts == NULL) {
        PQfreemem(perr);
        snprintf(errbuf, errcap, "store: the PostgreSQL URL cannot be read "
                                 "(it is not shown: it may hold a password)");
        err = FB_EINVAL;
        goto out;
    }
    const char *kw[64], *val[64];
    size_t n = 0;
    for (PQconninfoOption *o = opts; o->keyword != NULL && n < 63; o++)
        if (o->val != NULL) {
            kw[n] = o->keyword;
            val[n++] = o->val;
        }
    kw[n] = val[n] = NULL;
    s->pg = PQconnectdbParams(kw, val, 0);
    PQconninfoFree(opts);
    if (s->pg == NULL || PQstatus(s->pg) != CONNECTION_OK) {
        /* libpq's message names the host and the reason, not the
         * password */
        note_why(s, NULL);
        snprintf(errbuf, errcap, "store: cannot connect to PostgreSQL: %s",
                 s->why);
        goto out;
    }
    PQsetNoticeProcessor(s->pg, no_notice, NULL);
    PGresult *r = PQexec(s->pg, SESSION_SETUP);
    err = res_err(s, r);
    PQclear(r);
    if (err != FB_OK) {
        snprintf(errbuf, errcap, "store: %s", s->why);
        goto out;
    }
    if (do_migrate && (err = migrate(s, &version, errbuf, errcap)) != FB_OK)
        goto out;
    if (from != NULL)
        *from = version;
    if ((err = read_version(s, &version)) != FB_OK) {
        snprintf(errbuf, errcap, "store: %s", s->why);
        goto out;
    }
    if (version != PG_SCHEMA_VERSION) {
        err = FB_EINVAL;
        snprintf(errbuf, errcap,
                 version == 0 ? "store: the database has no fusebox schema; "
                                "run `fusebox migrate`"
                 : version < PG_SCHEMA_VERSION
                     ? "store: the database has schema version %d, older "
                       "than this fusebox's %d; run `fusebox migrate`"
                     : "store: the database has schema version %d, newer "
                       "than this fusebox knows (%d)",
                 version, PG_SCHEMA_VERSION);
        goto out;
    }
    *out = s;
    s = NULL;
    err = FB_OK;
out:
    pg_close(s);
    return err;
}

int fb__pg_schema_version(void)
{
    return PG_SCHEMA_VERSION;
}

/* ---- transactions ---- */

static fb_err simple(fb_store *s, const char *sql)
{
    trip_count();
    PGresult *r = PQexec(s->pg, sql);
    fb_err err = res_err(s, r);
    PQclear(r);
    return err;
}

/* A connection that broke is reset between transactions (its prepared
 * statements went with it). */
static void heal(fb_store *s)
{
    if (PQstatus(s->pg) == CONNECTION_OK)
        return;
    PQreset(s->pg);
    s->nprep = 0;
    if (PQstatus(s->pg) == CONNECTION_OK)
        exec_quiet(s, SESSION_SETUP);
}

static fb_err pg_begin(fb_store *s)
{
    fb__roll_drop(&s->rolls);
    s->rolls.failed = 0;
    heal(s);
    fb_err err = simple(s, "BEGIN");
    s->txn = err == FB_OK;
    return err;
}

static fb_err pg_commit(fb_store *s)
{
    fb_err err = s->rolls.failed ? FB_EIO : fb__roll_flush(&s->rolls, s);
    if (err != FB_OK)
        return err; /* the caller rolls back */
    /* A transaction a statement failed in is rolled back by COMMIT, which
     * then answers "ROLLBACK" as a success: neither is a commit. */
    if (PQtransactionStatus(s->pg) != PQTRANS_INTRANS)
        return FB_EIO;
    trip_count();
    s->txn = 0;
    PGresult *r = PQexec(s->pg, "COMMIT");
    err = res_err(s, r);
    if (err == FB_OK && strcmp(PQcmdStatus(r), "COMMIT") != 0) {
        snprintf(s->why, sizeof s->why, "the transaction was rolled back");
        err = FB_EIO;
    }
    PQclear(r);
    return err;
}

static void pg_rollback(fb_store *s)
{
    fb__roll_drop(&s->rolls);
    s->rolls.failed = 0;
    s->txn = 0;
    if (PQstatus(s->pg) == CONNECTION_OK &&
        PQtransactionStatus(s->pg) != PQTRANS_IDLE)
        exec_quiet(s, "ROLLBACK");
}

/* After a failed statement PostgreSQL ends the transaction's use (every
 * later statement fails until a rollback): no longer "in" one, as
 * SQLite's is not after an error that ends it. */
static int pg_in_transaction(fb_store *s)
{
    PGTransactionStatusType t = PQtransactionStatus(s->pg);
    return t == PQTRANS_INTRANS || t == PQTRANS_ACTIVE;
}

/* Inside a transaction block at all, a failed one included: a write is
 * part of it (and fails with it), never one of its own. */
static int in_block(fb_store *s)
{
    /* (A broken connection reports PQTRANS_UNKNOWN: in one only if a
     * BEGIN of ours is still open on it.) */
    PGTransactionStatusType t = PQtransactionStatus(s->pg);
    return s->txn || t == PQTRANS_INTRANS || t == PQTRANS_INERROR ||
           t == PQTRANS_ACTIVE;
}

static const char *pg_why(fb_store *s)
{
    return s->why;
}

static int pg_shared(fb_store *s)
{
    return 1;
}

static fb_err pg_probe(fb_store *s)
{
    heal(s);
    return simple(s, "BEGIN; SELECT pg_advisory_xact_lock(7247); COMMIT");
}

static fb_err pg_checkpoint(fb_store *s)
{
    return FB_OK; /* the server's business */
}

/* ---- keys ---- */

#define KEY_COLS                                                               \
    "id,hash,prefix,tenant,job,attempt,budget_limit,budget_period,"            \
    "created_ms,revoked_ms"

static fb_err pg_key_insert(fb_store *s, const fb_key_rec *k)
{
    args a = {0};
    a_str(&a, k->id);
    a_bin(&a, k->hash, 32);
    a_str(&a, k->prefix);
    a_str(&a, k->tenant);
    a_str(&a, k->job);
    a_i64(&a, k->attempt);
    if (k->budget.set)
        a_i64(&a, k->budget.limit);
    else
        a_str(&a, NULL);
    a_i64(&a, (int64_t)k->budget.period);
    a_i64(&a, k->created_ms);
    return exec(s,
                "INSERT INTO keys(" KEY_COLS ") VALUES($1,$2,$3,$4,$5,$6,"
                "$7::bigint,$8,$9,0)",
                &a, NULL);
}

static void read_key(const PGresult *r, int row, fb_key_rec *k)
{
    memset(k, 0, sizeof *k);
    copy_col(r, row, 0, k->id, sizeof k->id);
    col_fp(r, row, 1, k->hash);
    copy_col(r, row, 2, k->prefix, sizeof k->prefix);
    copy_col(r, row, 3, k->tenant, sizeof k->tenant);
    copy_col(r, row, 4, k->job, sizeof k->job);
    k->attempt = col_i64(r, row, 5);
    if (!PQgetisnull(r, row, 6)) {
        k->budget.set = 1;
        k->budget.limit = col_i64(r, row, 6);
        int64_t per = col_i64(r, row, 7);
        /* A period this build does not know reads as a lifetime ceiling,
         * the strictest reading. */
        k->budget.period = per >= FB_PERIOD_NONE && per <= FB_PERIOD_MONTH
                               ? (fb_period)per
                               : FB_PERIOD_NONE;
    }
    k->created_ms = col_i64(r, row, 8);
    k->revoked_ms = col_i64(r, row, 9);
}

static fb_err pg_key_by_hash(fb_store *s, const uint8_t hash[32],
                             fb_key_rec *out)
{
    args a = {0};
    fb_err err;
    a_bin(&a, hash, 32);
    PGresult *r = run(s, "SELECT " KEY_COLS " FROM keys WHERE hash=$1", &a, 0,
                      &err);
    if (r != NULL) {
        if (PQntuples(r) == 1)
            read_key(r, 0, out);
        else
            err = FB_ENOTFOUND;
    }
    PQclear(r);
    return err;
}

static fb_err pg_key_revoke(fb_store *s, const char *id, int64_t now_ms)
{
    args a = {0};
    int n = 0;
    a_i64(&a, now_ms);
    a_str(&a, id);
    fb_err err = exec(s,
                      "UPDATE keys SET revoked_ms=$1 WHERE id=$2 AND "
                      "revoked_ms=0",
                      &a, &n);
    return err == FB_OK && n == 0 ? FB_ENOTFOUND : err;
}

static fb_err pg_key_find(fb_store *s, const char *id_or_prefix,
                          fb_key_rec *out)
{
    args a = {0};
    fb_err err;
    a_str(&a, id_or_prefix);
    PGresult *r = run(s,
                      "SELECT " KEY_COLS " FROM keys WHERE id=$1 OR "
                      "prefix=$1 LIMIT 2",
                      &a, 0, &err);
    if (r != NULL) {
        int n = PQntuples(r);
        if (n >= 1)
            read_key(r, 0, out);
        err = n == 0 ? FB_ENOTFOUND : n == 1 ? FB_OK : FB_EEXIST;
    }
    PQclear(r);
    return err;
}

static fb_err pg_key_list(fb_store *s, fb__key_fn fn, void *arg)
{
    fb_err err;
    fb_key_rec k;
    PGresult *r = run(s,
                      "SELECT " KEY_COLS " FROM keys ORDER BY created_ms, id",
                      NULL, 0, &err);
    for (int i = 0; r != NULL && i < PQntuples(r); i++) {
        read_key(r, i, &k);
        if (fn(arg, &k) != 0)
            break;
    }
    PQclear(r);
    return err;
}

/* ---- the ledger ---- */

/* Every delta of a batch in one statement (its rows in key order). */
static fb_err roll_write(fb_store *s, const fb__roll *x, size_t n)
{
    enum { COLS = 11 };
    /* a row's placeholders take at most 68 bytes (np < 10,000), the rest
     * under 512: the text fits by construction */
    size_t np = n * COLS, cap = 512 + n * 96;
    const char **v = calloc(np, sizeof *v);
    char (*num)[24] = calloc(np, sizeof *num);
    char *sql = malloc(cap);
    PGresult *r = NULL;
    fb_err err = FB_ENOMEM;
    size_t used;
    if (v == NULL || num == NULL || sql == NULL)
        goto out;
    used = (size_t)snprintf(sql, cap, "INSERT INTO spend_rollup VALUES");
    for (size_t i = 0; i < n; i++) {
        const fb__roll *d = &x[i];
        const int64_t ints[] = {d->calls, d->paid, d->blocked, d->replayed,
                                d->cost, d->saved};
        size_t b = i * COLS;
        snprintf(num[b], sizeof num[0], "%lld", (long long)d->hour_ms);
        v[b] = num[b];
        v[b + 1] = d->tenant;
        v[b + 2] = d->job;
        v[b + 3] = d->key_id;
        v[b + 4] = d->model;
        for (size_t k = 0; k < 6; k++) {
            snprintf(num[b + 5 + k], sizeof num[0], "%lld",
                     (long long)ints[k]);
            v[b + 5 + k] = num[b + 5 + k];
        }
        used += (size_t)snprintf(sql + used, cap - used,
                                 "%s($%zu,$%zu,$%zu,$%zu,$%zu,$%zu,$%zu,$%zu,"
                                 "$%zu,$%zu,$%zu)",
                                 i ? "," : "", b + 1, b + 2, b + 3, b + 4,
                                 b + 5, b + 6, b + 7, b + 8, b + 9, b + 10,
                                 b + 11);
    }
    used += (size_t)snprintf(
        sql + used, cap - used,
        " ON CONFLICT(hour_ms,tenant,job,key_id,model) DO UPDATE SET "
        "calls=spend_rollup.calls+excluded.calls,"
        "paid=spend_rollup.paid+excluded.paid,"
        "blocked=spend_rollup.blocked+excluded.blocked,"
        "replayed=spend_rollup.replayed+excluded.replayed,"
        "cost=spend_rollup.cost+excluded.cost,"
        "saved=spend_rollup.saved+excluded.saved");
    FB_ASSERT(used < cap);
    trip_count();
    r = PQexecParams(s->pg, sql, (int)np, NULL, v, NULL, NULL, 0);
    err = res_err(s, r);
out:
    PQclear(r);
    free(v);
    free(num);
    free(sql);
    return err;
}

static fb_err entry_insert(fb_store *s, const fb_entry *e)
{
    args a = {0};
    a_i64(&a, e->id);
    a_i64(&a, e->ts_ms);
    a_str(&a, e->tenant);
    a_str(&a, e->job ? e->job : "");
    a_str(&a, e->key_id);
    a_str(&a, e->provider);
    a_str(&a, e->model);
    a_str(&a, e->path);
    a_i64(&a, e->status);
    a_i64(&a, e->reserved);
    a_i64(&a, e->cost);
    a_i64(&a, (int64_t)e->state);
    a_str(&a, e->outcome);
    if (e->fp != NULL)
        a_bin(&a, e->fp, 32);
    else
        a_str(&a, NULL);
    a_i64(&a, e->attempt);
    a_i64(&a, e->saved);
    a_i64(&a, e->retry);
    /* A call in flight belongs to a live node: the row's node (its id's
     * high bits) is locked against the reaper until this commits, and a
     * node reaped already writes none (its slices were given back; a late
     * reservation would be counted in no pool). */
    int n = 0;
    fb_err err = exec(
        s,
        e->state == FB_ENTRY_RESERVED
            ? "INSERT INTO ledger(id,ts_ms,tenant,job,key_id,provider,"
              "model,path,status,reserved,cost,state,outcome,fp,attempt,"
              "saved,retry) SELECT $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,"
              "$13,$14::bytea,$15,$16,$17 WHERE EXISTS(SELECT 1 FROM nodes"
              " WHERE id=$1::bigint>>40 FOR KEY SHARE)"
            : "INSERT INTO ledger(id,ts_ms,tenant,job,key_id,provider,"
              "model,path,status,reserved,cost,state,outcome,fp,attempt,"
              "saved,retry) VALUES($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,"
              "$13,$14::bytea,$15,$16,$17)",
        &a, &n);
    if (err == FB_OK && n == 0) {
        snprintf(s->why, sizeof s->why, "this node was reaped: no new calls "
                                        "under its old number");
        err = FB_ENOTFOUND;
    }
    if (err == FB_OK && e->state != FB_ENTRY_RESERVED)
        err = fb__roll_note(&s->rolls, s, e->ts_ms, e->tenant, e->job,
                            e->key_id, e->model, (int)e->state, e->cost,
                            e->saved);
    return err;
}

static fb_err entry_settle(fb_store *s, int64_t id, int status, fb_money cost,
                           const char *outcome)
{
    args a = {0};
    fb_err err;
    a_i64(&a, status);
    a_i64(&a, cost);
    a_str(&a, outcome);
    a_i64(&a, id);
    /* RETURNING: what the rollup needs, in the same round trip */
    PGresult *r = run(s,
                      "UPDATE ledger SET status=$1,cost=$2,state=1,outcome=$3"
                      " WHERE id=$4 AND state=0 RETURNING ts_ms,tenant,job,"
                      "key_id,model,saved",
                      &a, 0, &err);
    if (r != NULL && PQntuples(r) == 1) /* else settled before */
        err = fb__roll_note(&s->rolls, s, col_i64(r, 0, 0), col_str(r, 0, 1),
                            col_str(r, 0, 2), col_str(r, 0, 3),
                            col_str(r, 0, 4), FB_ENTRY_SETTLED, cost,
                            col_i64(r, 0, 5));
    PQclear(r);
    return err;
}

/* A ledger write and its rollup delta commit together: outside a
 * transaction, each call is one of its own. */
static fb_err pg_entry_insert(fb_store *s, const fb_entry *e)
{
    if (in_block(s))
        return entry_insert(s, e);
    fb_err err = pg_begin(s);
    if (err == FB_OK)
        err = entry_insert(s, e);
    if (err == FB_OK)
        err = pg_commit(s);
    if (err != FB_OK)
        pg_rollback(s);
    return err;
}

static fb_err pg_entry_settle(fb_store *s, int64_t id, int status,
                              fb_money cost, const char *outcome)
{
    if (in_block(s))
        return entry_settle(s, id, status, cost, outcome);
    fb_err err = pg_begin(s);
    if (err == FB_OK)
        err = entry_settle(s, id, status, cost, outcome);
    if (err == FB_OK)
        err = pg_commit(s);
    if (err != FB_OK)
        pg_rollback(s);
    return err;
}

static fb_err pg_idem_bind(fb_store *s, const char *scope, const char *idem,
                           const uint8_t *fp, int64_t seq, int64_t now_ms,
                           int64_t expires_ms);

#define RESULT_COLS                                                            \
    "id,status,stream,headers,body,cost,seq,attempt,fp,expires_ms"

/* Keep a result (its 11 values, a_result's order, as VALUES): an expired
 * row not yet purged gives way; a live one stays (then nothing changes:
 * the caller's FB_EEXIST). */
#define RESULT_KEEP(VALUES)                                                    \
    "INSERT INTO results(scope,fp,seq,attempt,status,stream,headers,body,"     \
    "cost,created_ms,expires_ms) VALUES" VALUES                                \
    " ON CONFLICT(scope,fp,seq) DO UPDATE SET attempt=excluded.attempt,"       \
    "status=excluded.status,stream=excluded.stream,headers=excluded.headers,"  \
    "body=excluded.body,cost=excluded.cost,created_ms=excluded.created_ms,"    \
    "expires_ms=excluded.expires_ms WHERE "                                    \
    "results.expires_ms<=excluded.created_ms"

static void a_result(args *a, const char *scope, const fb_result *r,
                     int64_t now_ms, int64_t expires_ms)
{
    a_str(a, scope);
    a_bin(a, r->fp, 32);
    a_i64(a, r->seq);
    a_i64(a, r->attempt);
    a_i64(a, r->status);
    a_i64(a, r->stream);
    a_bin(a, r->headers, r->headers_len);
    a_bin(a, r->body, r->body_len);
    a_i64(a, r->cost);
    a_i64(a, now_ms);
    a_i64(a, expires_ms);
}

/* The settlement, the kept result and its marker's release in one
 * statement (one round trip instead of two): the UPDATE's RETURNING
 * feeds the rollup as pg_entry_settle's does, the INSERT's the race. */
static fb_err pg_entry_complete(fb_store *s, int64_t id, int status,
                                fb_money cost, const char *outcome,
                                const char *scope, const fb_result *r,
                                const char *idem, int64_t now_ms,
                                int64_t expires_ms)
{
    args a = {0};
    fb_err err;
    a_i64(&a, status);
    a_i64(&a, cost);
    a_str(&a, outcome);
    a_i64(&a, id);
    a_result(&a, scope, r, now_ms, expires_ms);
    PGresult *q = run(
        s,
        "WITH u AS (UPDATE ledger SET status=$1,cost=$2,state=1,outcome=$3"
        " WHERE id=$4 AND state=0 RETURNING ts_ms,tenant,job,key_id,model,"
        "saved), f AS (DELETE FROM flights WHERE scope=$5 AND fp=$6 AND"
        " seq=$7), k AS (" RESULT_KEEP("($5,$6,$7,$8,$9,$10,$11,$12,$13,$14,"
                                      "$15)") " RETURNING 1)"
        " SELECT (SELECT COUNT(*) FROM k), u.* FROM (SELECT 1) one LEFT JOIN"
        " u ON true",
        &a, 0, &err);
    if (q == NULL)
        return err;
    if (PQntuples(q) != 1) {
        PQclear(q);
        return FB_EIO;
    }
    int kept = col_i64(q, 0, 0) > 0;
    if (!PQgetisnull(q, 0, 1)) /* it was in flight: now it counts */
        err = fb__roll_note(&s->rolls, s, col_i64(q, 0, 1), col_str(q, 0, 2),
                            col_str(q, 0, 3), col_str(q, 0, 4),
                            col_str(q, 0, 5), FB_ENTRY_SETTLED, cost,
                            col_i64(q, 0, 6));
    PQclear(q);
    if (err == FB_OK && idem != NULL)
        err = pg_idem_bind(s, scope, idem, r->fp, r->seq, now_ms, expires_ms);
    return err == FB_OK && !kept ? FB_EEXIST : err;
}

/* At a start, nothing of this node is in flight yet (a new number every
 * start); what earlier lives left in flight is reaped with them. */
static fb_err pg_recover(fb_store *s, int64_t *n)
{
    return fb_store_reap(s, n);
}

/* ---- nodes, leases, flights ---- */

static fb_err pg_node_join(fb_store *s, int64_t *node, int64_t *id_base)
{
    fb_err err;
    PGresult *r = run(s,
                      "INSERT INTO nodes SELECT nextval('node_ids'),"
                      " fusebox_now(), fusebox_now() RETURNING id",
                      NULL, 0, &err);
    if (r != NULL && PQntuples(r) == 1) {
        *node = col_i64(r, 0, 0);
        *id_base = *node << FB__NODE_SHIFT;
    } else if (r != NULL) {
        err = FB_EIO;
    }
    PQclear(r);
    return err;
}

static fb_err pg_node_beat(fb_store *s, int64_t node)
{
    args a = {0};
    int n = 0;
    heal(s);
    a_i64(&a, node);
    fb_err err = exec(s, "UPDATE nodes SET beat_ms=fusebox_now() WHERE id=$1",
                      &a, &n);
    return err == FB_OK && n == 0 ? FB_ENOTFOUND : err;
}

static fb_err pg_node_leave(fb_store *s, int64_t node)
{
    args a = {0};
    a_i64(&a, node);
    return exec(s, "SELECT fusebox_reap_node($1)", &a, NULL);
}

static fb_err pg_reap(fb_store *s, int64_t *n)
{
    args a = {0};
    fb_err err;
    *n = 0;
    heal(s);
    a_i64(&a, s->lease_ms);
    PGresult *r = run(s, "SELECT fusebox_reap($1)", &a, 0, &err);
    if (r != NULL && PQntuples(r) == 1)
        *n = col_i64(r, 0, 0);
    PQclear(r);
    return err;
}

/* The pool of a scope's window starts from what the ledger already holds
 * there (spend from before the cluster, or from before the ceiling). */
static fb_err pool_create(fb_store *s, const char *scope, int64_t window)
{
    fb_spend sp;
    fb_err err = fb_store_scope_spend(s, scope, window, &sp);
    if (err != FB_OK)
        return err;
    args a = {0};
    a_str(&a, scope);
    a_i64(&a, window);
    a_i64(&a, sp.spent);
    return exec(s,
                "INSERT INTO budget_pool VALUES($1,$2,$3) ON CONFLICT DO "
                "NOTHING",
                &a, NULL);
}

static fb_err pg_lease_take(fb_store *s, int64_t node, const char *scope,
                            int64_t window, fb_money limit, fb_money want,
                            fb_money need, fb_money *got, fb_money *taken)
{
    fb_err err = FB_OK;
    *got = *taken = 0;
    for (int round = 0; round < 2; round++) {
        args a = {0};
        a_i64(&a, node);
        a_str(&a, scope);
        a_i64(&a, window);
        a_i64(&a, limit);
        a_i64(&a, want);
        a_i64(&a, need);
        __atomic_add_fetch(&lease_trips, 1, __ATOMIC_RELAXED);
        PGresult *r = run(s, "SELECT * FROM fusebox_take($1,$2,$3,$4,$5,$6)",
                          &a, 0, &err);
        if (r == NULL)
            return err;
        int none = PQntuples(r) != 1 || PQgetisnull(r, 0, 0);
        int64_t g = none ? 0 : col_i64(r, 0, 0);
        *taken = none ? 0 : col_i64(r, 0, 1);
        PQclear(r);
        if (!none) {
            if (g < 0)
                return FB_ENOTFOUND; /* this node was reaped */
            *got = g;
            return g > 0 ? FB_OK : FB_ELIMIT;
        }
        if ((err = pool_create(s, scope, window)) != FB_OK)
            return err;
    }
    return FB_EIO;
}

static fb_err pg_lease_give(fb_store *s, int64_t node, const char *scope,
                            int64_t window, fb_money amount)
{
    args a = {0};
    a_i64(&a, node);
    a_str(&a, scope);
    a_i64(&a, window);
    a_i64(&a, amount);
    __atomic_add_fetch(&lease_trips, 1, __ATOMIC_RELAXED);
    fb_err err;
    PGresult *r = run(s, "SELECT fusebox_give($1,$2,$3,$4)", &a, 0, &err);
    /* false: the slice held less (nothing changed): not given */
    if (r != NULL && (PQntuples(r) != 1 || strcmp(PQgetvalue(r, 0, 0), "t")))
        err = FB_ENOTFOUND;
    PQclear(r);
    return err;
}

static fb_err pg_flight_claim(fb_store *s, int64_t node, const char *scope,
                              const uint8_t *fp, int64_t seq)
{
    args a = {0};
    fb_err err;
    a_str(&a, scope);
    a_bin(&a, fp, 32);
    a_i64(&a, seq);
    a_i64(&a, node);
    a_i64(&a, s->stale_ms);
    /* A marker of a node that is gone (reaped), or stale, gives way. */
    PGresult *r = run(s, "SELECT fusebox_flight($1,$2,$3,$4,$5)", &a, 0, &err);
    if (r != NULL && (PQntuples(r) != 1 || PQgetisnull(r, 0, 0)))
        err = FB_EEXIST;
    PQclear(r);
    return err;
}

static fb_err pg_flight_release(fb_store *s, int64_t node, const char *scope,
                                const uint8_t *fp, int64_t seq)
{
    args a = {0};
    a_str(&a, scope);
    a_bin(&a, fp, 32);
    a_i64(&a, seq);
    a_i64(&a, node);
    return exec(s,
                "DELETE FROM flights WHERE scope=$1 AND fp=$2 AND seq=$3 AND"
                " node=$4",
                &a, NULL);
}

/* ---- spend ---- */

/* $1..$4 the bounds, then the filters that are set, as SQL and args. */
static void spend_args(const fb_spend_filter *f, args *a, char *filt,
                       size_t cap)
{
    int64_t S, U, A, B;
    size_t used = 0;
    fb__spend_bounds(f, &S, &U, &A, &B);
    a_i64(a, S);
    a_i64(a, U);
    a_i64(a, A);
    a_i64(a, B);
    filt[0] = '\0';
    const char *cols[3] = {"tenant", "job", "key_id"};
    const char *vals[3] = {f->tenant, f->job, f->key_id};
    for (int i = 0; i < 3; i++) {
        if (vals[i] == NULL)
            continue;
        a_str(a, vals[i]);
        int n = snprintf(filt + used, cap - used, " AND %s=$%d", cols[i],
                         a->n);
        if (n > 0 && (size_t)n < cap - used)
            used += (size_t)n;
    }
}

static fb_err roll_sync(fb_store *s)
{
    if (!in_block(s) || s->rolls.npend == 0)
        return FB_OK;
    return fb__roll_flush(&s->rolls, s);
}

/* The three parts of a spend or report query over [S, U) (whole hours
 * from the rollup, cut hours and calls in flight from the ledger), each
 * selecting: group, calls, paid, blocked, replayed, cost, in flight,
 * saved. G and LG: the group over the rollup's columns and the ledger's. */
static int spend_sql(char *sql, size_t cap, const char *head,
                     const char *G, const char *LG, const char *filt,
                     const char *tail)
{
    int n = snprintf(
        sql, cap,
        "%s FROM ("
        "SELECT %s AS g, calls AS c, paid AS p, blocked AS b, replayed AS r,"
        " cost, 0::bigint AS fl, saved AS sv FROM spend_rollup"
        " WHERE hour_ms>=$3 AND hour_ms<$4%s"
        " UNION ALL SELECT %s, 1, (state=1 AND cost>0)::int, (state=2)::int,"
        " (state=3)::int, cost, 0, CASE state WHEN 3 THEN saved ELSE 0 END"
        " FROM ledger WHERE state<>0 AND"
        " ((ts_ms>=$1 AND ts_ms<$3) OR (ts_ms>=$4 AND ts_ms<$2))%s"
        " UNION ALL SELECT %s, 1, 0, 0, 0, 0, reserved, 0 FROM ledger"
        " WHERE state=0 AND ts_ms>=$1 AND ts_ms<$2%s) x %s",
        head, G, filt, LG, filt, LG, filt, tail);
    return n > 0 && (size_t)n < cap;
}

static fb_err pg_spend(fb_store *s, const fb_spend_filter *f, fb_spend *out)
{
    char filt[96], sql[2048];
    args a = {0};
    fb_err err;
    memset(out, 0, sizeof *out);
    if ((err = roll_sync(s)) != FB_OK)
        return err;
    spend_args(f, &a, filt, sizeof filt);
    if (!spend_sql(sql, sizeof sql,
                   "SELECT COALESCE(SUM(cost)+SUM(fl),0), COALESCE(SUM(fl),0),"
                   " COALESCE(SUM(p),0), COALESCE(SUM(b),0),"
                   " COALESCE(SUM(c),0), COALESCE(SUM(r),0),"
                   " COALESCE(SUM(sv),0)",
                   "''", "''", filt, ""))
        return FB_EINVAL;
    PGresult *r = run(s, sql, &a, 1, &err);
    if (r != NULL && PQntuples(r) == 1) {
        out->spent = col_i64(r, 0, 0);
        out->reserved = col_i64(r, 0, 1);
        out->paid_calls = col_i64(r, 0, 2);
        out->blocked_calls = col_i64(r, 0, 3);
        out->calls = col_i64(r, 0, 4);
        out->replayed_calls = col_i64(r, 0, 5);
        out->saved = col_i64(r, 0, 6);
    } else if (r != NULL) {
        err = FB_EIO;
    }
    PQclear(r);
    return err;
}

static fb_err pg_report(fb_store *s, fb_report_by by, const fb_spend_filter *f,
                        fb__report_fn fn, void *arg)
{
    static const char *const grp[][2] = {
        [FB_BY_TENANT] = {"tenant", "tenant"},
        [FB_BY_JOB] = {"tenant||'/'||job", "tenant||'/'||job"},
        [FB_BY_MODEL] = {"model", "COALESCE(model,'')"},
        [FB_BY_KEY] = {"key_id", "key_id"},
        [FB_BY_HOUR] = {"hour_ms::text", "(ts_ms-ts_ms%3600000)::text"},
        [FB_BY_DAY] = {"(hour_ms-hour_ms%86400000)::text",
                       "(ts_ms-ts_ms%86400000)::text"},
        [FB_BY_TENANT_HOUR] = {"tenant||chr(31)||hour_ms",
                               "tenant||chr(31)||(ts_ms-ts_ms%3600000)"},
    };
    char filt[96], sql[2560];
    args a = {0};
    fb_err err;
    if ((unsigned)by > FB_BY_TENANT_HOUR)
        return FB_EINVAL;
    if ((err = roll_sync(s)) != FB_OK)
        return err;
    spend_args(f, &a, filt, sizeof filt);
    int timed = by == FB_BY_HOUR || by == FB_BY_DAY;
    /* Time buckets sort as numbers, not as their text. */
    if (!spend_sql(sql, sizeof sql,
                   "SELECT g, SUM(c), SUM(p), SUM(b), SUM(r), SUM(cost),"
                   " SUM(fl), SUM(sv)",
                   grp[by][0], grp[by][1], filt,
                   timed ? "GROUP BY g ORDER BY g::bigint"
                         : "GROUP BY g ORDER BY g COLLATE \"C\""))
        return FB_EINVAL;
    PGresult *r = run(s, sql, &a, 1, &err);
    for (int i = 0; r != NULL && i < PQntuples(r); i++) {
        const char *g = col_str(r, i, 0);
        fb_report_row row = {.group = g ? g : "",
                             .bucket_ms = timed ? col_i64(r, i, 0) : 0,
                             .calls = col_i64(r, i, 1),
                             .paid_calls = col_i64(r, i, 2),
                             .blocked_calls = col_i64(r, i, 3),
                             .replayed_calls = col_i64(r, i, 4),
                             .cost = col_i64(r, i, 5),
                             .in_flight = col_i64(r, i, 6),
                             .saved = col_i64(r, i, 7)};
        char tenant[FB_NAME_MAX];
        const char *sep =
            by == FB_BY_TENANT_HOUR ? strchr(row.group, 31) : NULL;
        if (sep != NULL && (size_t)(sep - row.group) < sizeof tenant) {
            memcpy(tenant, row.group, (size_t)(sep - row.group));
            tenant[sep - row.group] = '\0';
            row.bucket_ms = strtoll(sep + 1, NULL, 10);
            row.group = tenant;
        }
        if (fn(arg, &row) != 0)
            break;
    }
    PQclear(r);
    return err;
}

static fb_err pg_scopes(fb_store *s, fb__scopes_fn fn, void *arg)
{
    fb_err err;
    PGresult *r = run(s,
                      "SELECT tenant, job FROM (SELECT tenant, job FROM "
                      "spend_rollup UNION SELECT tenant, job FROM ledger "
                      "WHERE state=0) x ORDER BY tenant COLLATE \"C\", "
                      "job COLLATE \"C\"",
                      NULL, 0, &err);
    for (int i = 0; r != NULL && i < PQntuples(r); i++)
        if (fn(arg, col_str(r, i, 0), col_str(r, i, 1)) != 0)
            break;
    PQclear(r);
    return err;
}

static fb_err pg_breakdown(fb_store *s, const fb_spend_filter *f,
                           fb__breakdown_fn fn, void *arg)
{
    args a = {0};
    fb_err err;
    a_i64(&a, f->since_ms);
    a_i64(&a, f->until_ms);
    a_str(&a, f->tenant);
    a_str(&a, f->job);
    PGresult *r = run(
        s,
        "SELECT provider, COALESCE(model,''), COALESCE(path,''), COUNT(*),"
        " SUM(reserved), SUM(cost) FROM ledger WHERE ts_ms>=$1 AND"
        " ($2::bigint=0 OR ts_ms<$2) AND ($3::text IS NULL OR tenant=$3) AND"
        " ($4::text IS NULL OR job=$4) AND state IN (0,1)"
        " GROUP BY 1,2,3 ORDER BY provider COLLATE \"C\","
        " COALESCE(model,'') COLLATE \"C\", COALESCE(path,'') COLLATE \"C\"",
        &a, 0, &err);
    for (int i = 0; r != NULL && i < PQntuples(r); i++)
        if (fn(arg, col_str(r, i, 0), col_str(r, i, 1), col_str(r, i, 2),
               col_i64(r, i, 3), col_i64(r, i, 4), col_i64(r, i, 5)) != 0)
            break;
    PQclear(r);
    return err;
}

/* ---- the change feed ---- */

static fb_err pg_change_add(fb_store *s, const char *kind, const char *subject)
{
    args a = {0};
    a_str(&a, kind);
    a_str(&a, subject);
    /* Under a lock held to the commit: changes commit in the order of
     * their seq, so a reader of "seq > last" never skips one that
     * commits late. */
    return exec(s,
                "WITH l AS (SELECT pg_advisory_xact_lock(7248)) INSERT INTO "
                "changes(kind,subject) SELECT $1,$2 FROM l",
                &a, NULL);
}

static fb_err pg_changes(fb_store *s, int64_t after, fb__change_fn fn,
                         void *arg)
{
    args a = {0};
    fb_err err;
    fb_change c;
    a_i64(&a, after);
    PGresult *r = run(s,
                      "SELECT seq,kind,subject FROM changes WHERE seq>$1 "
                      "ORDER BY seq",
                      &a, 0, &err);
    for (int i = 0; r != NULL && i < PQntuples(r); i++) {
        memset(&c, 0, sizeof c);
        c.seq = col_i64(r, i, 0);
        copy_col(r, i, 1, c.kind, sizeof c.kind);
        copy_col(r, i, 2, c.subject, sizeof c.subject);
        if (fn(arg, &c) != 0)
            break;
    }
    PQclear(r);
    return err;
}

static fb_err one_i64(fb_store *s, const char *sql, const args *a,
                      int64_t *out)
{
    fb_err err;
    *out = 0;
    PGresult *r = run(s, sql, a, 0, &err);
    if (r != NULL && PQntuples(r) == 1)
        *out = col_i64(r, 0, 0);
    else if (r != NULL)
        err = FB_EIO;
    PQclear(r);
    return err;
}

static fb_err pg_last_change(fb_store *s, int64_t *seq)
{
    return one_i64(s, "SELECT COALESCE(MAX(seq),0) FROM changes", NULL, seq);
}

/* ---- kept results ---- */


static fb_err read_result(const PGresult *r, int row, fb_result *out)
{
    memset(out, 0, sizeof *out);
    out->id = col_i64(r, row, 0);
    out->status = (int)col_i64(r, row, 1);
    out->stream = (int)col_i64(r, row, 2);
    out->headers = col_bytes(r, row, 3, &out->headers_len);
    out->body = col_bytes(r, row, 4, &out->body_len);
    out->cost = col_i64(r, row, 5);
    out->seq = col_i64(r, row, 6);
    out->attempt = col_i64(r, row, 7);
    col_fp(r, row, 8, out->fp);
    out->expires_ms = col_i64(r, row, 9);
    if (out->headers == NULL || out->body == NULL) {
        fb_result_clear(out);
        return FB_ENOMEM;
    }
    return FB_OK;
}

static fb_err pg_result_get(fb_store *s, const char *scope, const uint8_t *fp,
                            int64_t seq, int64_t now_ms, fb_result *out)
{
    args a = {0};
    fb_err err;
    a_str(&a, scope);
    a_bin(&a, fp, 32);
    a_i64(&a, seq);
    a_i64(&a, now_ms);
    PGresult *r = run(s,
                      "SELECT " RESULT_COLS " FROM results WHERE scope=$1 AND"
                      " fp=$2 AND seq=$3 AND expires_ms>$4",
                      &a, 0, &err);
    if (r != NULL)
        err = PQntuples(r) == 1 ? read_result(r, 0, out) : FB_ENOTFOUND;
    PQclear(r);
    return err;
}

static fb_err pg_result_claim(fb_store *s, int64_t node, const char *scope,
                              const uint8_t *fp, int64_t seq, int64_t now_ms,
                              fb_result *out)
{
    args a = {0};
    int64_t k = 0;
    a_str(&a, scope);
    a_bin(&a, fp, 32);
    a_i64(&a, seq);
    a_i64(&a, node);
    a_i64(&a, now_ms);
    a_i64(&a, s->stale_ms);
    fb_err err = one_i64(s, "SELECT fusebox_claim($1,$2,$3,$4,$5,$6)", &a, &k);
    if (err != FB_OK)
        return err;
    if (k == 1)
        return FB_EEXIST; /* another node buys it now */
    if (k == 0)
        return FB_ENOTFOUND; /* claimed: buy it */
    /* Kept: read it (a second round trip, on the replay path only). Gone
     * meanwhile (expired, purged): neither bought nor claimed, so the
     * caller looks again. */
    err = pg_result_get(s, scope, fp, seq, now_ms, out);
    return err == FB_ENOTFOUND ? FB_EEXIST : err;
}

static fb_err pg_result_by_idem(fb_store *s, const char *scope,
                                const char *idem, int64_t now_ms,
                                fb_result *out)
{
    args a = {0};
    fb_err err;
    a_str(&a, scope);
    a_str(&a, idem);
    a_i64(&a, now_ms);
    PGresult *r = run(
        s,
        "SELECT r.id,r.status,r.stream,r.headers,r.body,r.cost,r.seq,"
        "r.attempt,k.fp,r.expires_ms FROM idem_keys k LEFT JOIN results r ON"
        " r.scope=k.scope AND r.fp=k.fp AND r.seq=k.seq AND r.expires_ms>$3"
        " WHERE k.scope=$1 AND k.idem=$2 AND k.expires_ms>$3",
        &a, 0, &err);
    if (r != NULL) {
        if (PQntuples(r) != 1) {
            err = FB_ENOTFOUND;
        } else if (PQgetisnull(r, 0, 0)) {
            /* Bound to a request whose result is gone: it is known. */
            memset(out, 0, sizeof *out);
            col_fp(r, 0, 8, out->fp);
            err = FB_EAGAIN;
        } else {
            err = read_result(r, 0, out);
        }
    }
    PQclear(r);
    return err;
}

static fb_err pg_idem_bind(fb_store *s, const char *scope, const char *idem,
                           const uint8_t *fp, int64_t seq, int64_t now_ms,
                           int64_t expires_ms)
{
    args a = {0};
    a_str(&a, scope);
    a_str(&a, idem);
    a_bin(&a, fp, 32);
    a_i64(&a, seq);
    a_i64(&a, expires_ms);
    a_i64(&a, now_ms);
    return exec(s,
                "INSERT INTO idem_keys(scope,idem,fp,seq,expires_ms) "
                "VALUES($1,$2,$3,$4,$5) ON CONFLICT(scope,idem) DO UPDATE "
                "SET fp=excluded.fp,seq=excluded.seq,"
                "expires_ms=excluded.expires_ms WHERE "
                "idem_keys.expires_ms<=$6",
                &a, NULL);
}

static fb_err pg_result_put(fb_store *s, const char *scope, const fb_result *r,
                            const char *idem, int64_t now_ms,
                            int64_t expires_ms)
{
    args a = {0};
    int n = 0;
    a_result(&a, scope, r, now_ms, expires_ms);
    /* The result is kept: nobody needs to wait for it any more (its
     * in-flight marker goes in the same statement). */
    fb_err err = exec(
        s,
        "WITH f AS (DELETE FROM flights WHERE scope=$1 AND fp=$2 AND seq=$3)"
        " " RESULT_KEEP("($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)"),
        &a, &n);
    if (err == FB_OK && n == 0)
        err = FB_EEXIST; /* a live result holds this seq */
    if ((err == FB_OK || err == FB_EEXIST) && idem != NULL) {
        fb_err b = pg_idem_bind(s, scope, idem, r->fp, r->seq, now_ms,
                                expires_ms);
        if (b != FB_OK)
            err = b;
    }
    return err;
}

static fb_err pg_result_keys(fb_store *s, int64_t now_ms, fb__rkeys_fn fn,
                             void *arg)
{
    fb_err err;
    uint8_t fp[32];
    (void)now_ms;
    PGresult *r = run(s, "SELECT scope, fp, seq FROM results", NULL, 0, &err);
    for (int i = 0; r != NULL && i < PQntuples(r); i++) {
        if (!col_fp(r, i, 1, fp))
            continue;
        if (fn(arg, col_str(r, i, 0), fp, col_i64(r, i, 2)) != 0)
            break;
    }
    PQclear(r);
    return err;
}

/* Delete from table what a purge names: a scope, a scope prefix, or
 * (neither) up to limit rows expired at now_ms. */
static fb_err purge_table(fb_store *s, const char *table, const char *scope,
                          int prefix, int64_t now_ms, int64_t limit,
                          int64_t *n)
{
    char sql[256];
    args a = {0};
    int changed = 0;
    fb_err err;
    if (prefix) {
        snprintf(sql, sizeof sql,
                 "DELETE FROM %s WHERE left(scope, length($1))=$1", table);
        a_str(&a, scope);
    } else if (scope) {
        snprintf(sql, sizeof sql, "DELETE FROM %s WHERE scope=$1", table);
        a_str(&a, scope);
    } else {
        snprintf(sql, sizeof sql,
                 "DELETE FROM %s WHERE ctid IN (SELECT ctid FROM %s WHERE "
                 "expires_ms<=$1 ORDER BY expires_ms LIMIT $2)",
                 table, table);
        a_i64(&a, now_ms);
        if (limit > 0)
            a_i64(&a, limit);
        else
            a_str(&a, NULL);
    }
    PGresult *r = run(s, sql, &a, 1, &err);
    if (r != NULL)
        changed = atoi(PQcmdTuples(r));
    PQclear(r);
    *n = changed;
    return err;
}

static fb_err pg_results_purge(fb_store *s, int64_t now_ms,
                               const char *scope_prefix, int64_t max_bytes,
                               int64_t limit, int64_t *n)
{
    int64_t keys = 0, total = 0, last = -1;
    fb_err err;
    *n = 0;
    size_t pl = scope_prefix ? strlen(scope_prefix) : 0;
    int prefix = scope_prefix && (pl == 0 || scope_prefix[pl - 1] == '/');
    if ((err = purge_table(s, "results", scope_prefix, prefix, now_ms, limit,
                           n)) != FB_OK ||
        (err = purge_table(s, "idem_keys", scope_prefix, prefix, now_ms,
                           limit, &keys)) != FB_OK)
        return err;
    if (max_bytes <= 0)
        return FB_OK;
    if ((err = one_i64(s,
                       "SELECT COALESCE(SUM(length(body)),0) FROM results",
                       NULL, &total)) != FB_OK ||
        total <= max_bytes)
        return err;
    /* The newest of the oldest rows that together cover the excess. */
    args a = {0};
    a_i64(&a, total - max_bytes);
    PGresult *r = run(s,
                      "SELECT id FROM (SELECT id, SUM(length(body)) OVER "
                      "(ORDER BY id) AS cum FROM results) x WHERE cum >= $1 "
                      "ORDER BY id LIMIT 1",
                      &a, 0, &err);
    if (r != NULL && PQntuples(r) == 1)
        last = col_i64(r, 0, 0);
    PQclear(r);
    if (err != FB_OK || last < 0)
        return err;
    args d = {0};
    int changed = 0;
    a_i64(&d, last);
    err = exec(s, "DELETE FROM results WHERE id <= $1", &d, &changed);
    *n += changed;
    return err;
}

static fb_err pg_occurrences(fb_store *s, const char *tenant, const char *job,
                             const char *key_id, int64_t attempt,
                             const uint8_t *fp, int64_t *n)
{
    args a = {0};
    a_str(&a, tenant);
    a_str(&a, job ? job : "");
    a_str(&a, key_id);
    a_i64(&a, attempt);
    a_bin(&a, fp, 32);
    /* Calls that hold an occurrence: in flight, replayed, or settled
     * with a result that is kept (2xx or a deterministic error). */
    return one_i64(
        s,
        "SELECT COUNT(*) FROM ledger WHERE tenant=$1 AND job=$2 AND "
        "key_id=$3 AND attempt=$4 AND attempt>0 AND fp=$5 AND (state IN "
        "(0,3) OR (state=1 AND (status BETWEEN 200 AND 299 OR status IN "
        "(400,401,403,404,422))))",
        &a, n);
}

/* ---- trips and runs ---- */

static fb_err pg_trip_set(fb_store *s, const char *scope, const char *reason,
                          int64_t now_ms)
{
    args a = {0};
    a_str(&a, scope);
    a_str(&a, reason);
    a_i64(&a, now_ms);
    return exec(s,
                "INSERT INTO trips(scope,reason,ts_ms) VALUES($1,$2,$3) ON "
                "CONFLICT(scope) DO UPDATE SET reason=excluded.reason,"
                "ts_ms=excluded.ts_ms",
                &a, NULL);
}

static fb_err pg_trip_clear(fb_store *s, const char *scope)
{
    args a = {0};
    int n = 0;
    a_str(&a, scope);
    fb_err err = exec(s, "DELETE FROM trips WHERE scope=$1", &a, &n);
    return err != FB_OK ? err : n > 0 ? FB_OK : FB_ENOTFOUND;
}

static fb_err pg_trips(fb_store *s, fb__trips_fn fn, void *arg)
{
    fb_err err;
    PGresult *r = run(s,
                      "SELECT scope, reason, ts_ms FROM trips ORDER BY scope"
                      " COLLATE \"C\"",
                      NULL, 0, &err);
    for (int i = 0; r != NULL && i < PQntuples(r); i++)
        if (fn(arg, col_str(r, i, 0), col_str(r, i, 1), col_i64(r, i, 2)) !=
            0)
            break;
    PQclear(r);
    return err;
}

static fb_err pg_run_begin(fb_store *s, const char *scope,
                           const uint8_t *identity, int64_t now_ms,
                           int max_runs, fb_run_refusal *refused,
                           int64_t *run_id, int64_t *attempts_before)
{
    int64_t day = now_ms - now_ms % 86400000, runs;
    args a = {0};
    fb_err err;
    *refused = FB_RUN_OK;
    *run_id = 0;
    *attempts_before = 0;
    a_str(&a, scope);
    a_i64(&a, day);
    a_bin(&a, identity, 32);
    PGresult *r = run(s,
                      "SELECT COUNT(*) FILTER (WHERE outcome<>'refused'),"
                      " COALESCE(SUM(attempts),0),"
                      /* a failed preflight does not count: preflights
                       * cost nothing and run again first */
                      " COUNT(*) FILTER (WHERE outcome='deterministic' AND"
                      " identity=$3 AND cleared=0)"
                      " FROM runs WHERE scope=$1 AND started_ms>=$2",
                      &a, 0, &err);
    if (r == NULL)
        return err;
    runs = col_i64(r, 0, 0);
    *attempts_before = col_i64(r, 0, 1);
    if (col_i64(r, 0, 2) > 0)
        *refused = FB_RUN_FAILED_TODAY;
    else if (max_runs > 0 && runs >= max_runs)
        *refused = FB_RUN_TOO_MANY;
    PQclear(r);
    args b = {0};
    a_str(&b, scope);
    a_bin(&b, identity, 32);
    a_i64(&b, now_ms);
    a_str(&b, *refused ? "refused" : "running");
    return one_i64(s,
                   "INSERT INTO runs(scope,identity,started_ms,outcome) "
                   "VALUES($1,$2,$3,$4) RETURNING id",
                   &b, run_id);
}

static fb_err pg_run_end(fb_store *s, int64_t run_id, const char *outcome,
                         int exit_code, int attempts, int64_t now_ms)
{
    args a = {0};
    a_str(&a, outcome);
    a_i64(&a, exit_code);
    a_i64(&a, attempts);
    a_i64(&a, now_ms);
    a_i64(&a, run_id);
    return exec(s,
                "UPDATE runs SET outcome=$1, exit_code=$2, attempts=$3,"
                " ended_ms=$4 WHERE id=$5",
                &a, NULL);
}

static fb_err pg_runs_clear(fb_store *s, const char *scope)
{
    args a = {0};
    a_str(&a, scope);
    return exec(s, "UPDATE runs SET cleared=1 WHERE scope=$1", &a, NULL);
}

/* ---- the dashboard and alerts ---- */

static fb_err pg_blocked_recent(fb_store *s, int limit, fb__blocked_fn fn,
                                void *arg)
{
    args a = {0};
    fb_err err;
    a_i64(&a, limit);
    PGresult *r = run(s,
                      "SELECT id, ts_ms, tenant, job, key_id,"
                      " COALESCE(model,''), COALESCE(outcome,''), status"
                      " FROM ledger WHERE state=2 ORDER BY id DESC LIMIT $1",
                      &a, 0, &err);
    for (int i = 0; r != NULL && i < PQntuples(r); i++) {
        fb_blocked_row b = {.id = col_i64(r, i, 0),
                            .ts_ms = col_i64(r, i, 1),
                            .tenant = col_str(r, i, 2),
                            .job = col_str(r, i, 3),
                            .key_id = col_str(r, i, 4),
                            .model = col_str(r, i, 5),
                            .outcome = col_str(r, i, 6),
                            .status = (int)col_i64(r, i, 7)};
        if (fn(arg, &b) != 0)
            break;
    }
    PQclear(r);
    return err;
}

static fb_err pg_reruns(fb_store *s, int64_t since_ms, fb__reruns_fn fn,
                        void *arg)
{
    args a = {0};
    fb_err err;
    a_i64(&a, since_ms);
    PGresult *r = run(s,
                      "SELECT scope, COUNT(*), (array_agg(outcome ORDER BY"
                      " started_ms DESC, id DESC))[1] FROM runs WHERE"
                      " started_ms>=$1 GROUP BY scope HAVING COUNT(*)>1"
                      " ORDER BY 2 DESC, scope COLLATE \"C\"",
                      &a, 0, &err);
    for (int i = 0; r != NULL && i < PQntuples(r); i++)
        if (fn(arg, col_str(r, i, 0), col_i64(r, i, 1), col_str(r, i, 2)) !=
            0)
            break;
    PQclear(r);
    return err;
}

static fb_err pg_alert_add(fb_store *s, const fb_alert_rec *al,
                           const char *const *dests, size_t ndests)
{
    args a = {0};
    int n = 0;
    fb_err err;
    if (pg_begin(s) != FB_OK)
        return FB_EIO;
    a_str(&a, al->dedup);
    a_i64(&a, al->ts_ms);
    a_str(&a, al->kind);
    a_str(&a, al->scope);
    a_str(&a, al->message);
    a_str(&a, al->body);
    err = exec(s,
               "INSERT INTO alerts(dedup,ts_ms,kind,scope,message,body) "
               "VALUES($1,$2,$3,$4,$5,$6) ON CONFLICT DO NOTHING",
               &a, &n);
    if (err == FB_OK && n == 0)
        err = FB_EEXIST; /* raised before */
    for (size_t i = 0; err == FB_OK && i < ndests; i++) {
        args d = {0};
        a_str(&d, al->dedup);
        a_str(&d, dests[i]);
        a_i64(&d, al->ts_ms);
        err = exec(s,
                   "INSERT INTO alert_outbox(dedup,dest,next_ms) "
                   "VALUES($1,$2,$3)",
                   &d, NULL);
    }
    if (err == FB_OK)
        err = pg_commit(s);
    if (err != FB_OK)
        pg_rollback(s);
    return err == FB_OK || err == FB_EEXIST ? err : FB_EIO;
}

static fb_err pg_outbox_due(fb_store *s, int64_t now_ms, int limit,
                            fb__outbox_fn fn, void *arg)
{
    args a = {0};
    fb_err err;
    a_i64(&a, now_ms);
    a_i64(&a, limit);
    /* Every node's alert thread delivers: a row handed out is pushed on
     * (claimed: a minute and 10 s per row, longer than a round of sends
     * with their timeouts) so that no other node sends it meanwhile; the
     * delivery's outcome then sets it. A node that dies while sending
     * leaves it to be sent again later (at least once). */
    PGresult *r = run(s,
                      "WITH c AS (SELECT id FROM alert_outbox WHERE state=0"
                      " AND next_ms<=$1 ORDER BY next_ms, id LIMIT $2 FOR"
                      " UPDATE SKIP LOCKED), u AS (UPDATE alert_outbox o SET"
                      " next_ms=$1+60000+$2*10000 FROM c WHERE o.id=c.id RETURNING"
                      " o.id, o.dedup, o.dest, o.attempts) SELECT u.id,"
                      " u.dedup, u.dest, u.attempts, a.kind, a.scope,"
                      " a.message, a.body FROM u JOIN alerts a ON"
                      " a.dedup=u.dedup ORDER BY u.id",
                      &a, 0, &err);
    for (int i = 0; r != NULL && i < PQntuples(r); i++) {
        fb_outbox_row o = {.id = col_i64(r, i, 0),
                           .dedup = col_str(r, i, 1),
                           .dest = col_str(r, i, 2),
                           .attempts = (int)col_i64(r, i, 3),
                           .kind = col_str(r, i, 4),
                           .scope = col_str(r, i, 5),
                           .message = col_str(r, i, 6),
                           .body = col_str(r, i, 7)};
        if (fn(arg, &o) != 0)
            break;
    }
    PQclear(r);
    return err;
}

static fb_err pg_outbox_update(fb_store *s, int64_t id, int state,
                               int attempts, int64_t next_ms,
                               const char *error)
{
    args a = {0};
    a_i64(&a, state);
    a_i64(&a, attempts);
    a_i64(&a, next_ms);
    a_str(&a, error);
    a_i64(&a, id);
    return exec(s,
                "UPDATE alert_outbox SET state=$1, attempts=$2, next_ms=$3,"
                " last_error=$4::text WHERE id=$5",
                &a, NULL);
}

static fb_err pg_fp_storms(fb_store *s, int64_t since_ms, int min_count,
                           fb__storms_fn fn, void *arg)
{
    args a = {0};
    fb_err err;
    uint8_t fp[32];
    a_i64(&a, since_ms);
    a_i64(&a, min_count);
    PGresult *r = run(s,
                      "SELECT tenant, job, fp, COUNT(*) FROM ledger"
                      " WHERE ts_ms>=$1 AND state IN (0,1) AND fp IS NOT"
                      " NULL GROUP BY 1,2,3 HAVING COUNT(*)>=$2",
                      &a, 0, &err);
    for (int i = 0; r != NULL && i < PQntuples(r); i++) {
        if (!col_fp(r, i, 2, fp))
            continue;
        if (fn(arg, col_str(r, i, 0), col_str(r, i, 1), fp,
               col_i64(r, i, 3)) != 0)
            break;
    }
    PQclear(r);
    return err;
}

/* ---- fusebox ledger verify ---- */

static fb_err pg_verify(fb_store *s, int64_t now_ms, fb__verify_fn fn,
                        void *arg)
{
    /* As store_sqlite.c's checks; the types are the server's to keep
     * (no typeof checks), and the cluster's own invariants come last. */
    static const struct {
        const char *name;
        fb_verify_level bad;
        const char *sql;
        const char *what;
    } checks[] = {
        {"ledger_rows", FB_VERIFY_INFO, "SELECT COUNT(*) FROM ledger",
         "ledger rows"},
        {"in_flight", FB_VERIFY_INFO,
         "SELECT COUNT(*) FROM ledger WHERE state=0",
         "calls in flight (state 0); charged in full when their node is "
         "reaped"},
        {"kept_results", FB_VERIFY_INFO, "SELECT COUNT(*) FROM results",
         "kept results (expired ones not yet purged included)"},
        {"idem_keys", FB_VERIFY_INFO, "SELECT COUNT(*) FROM idem_keys",
         "Idempotency-Key bindings"},
        {"nodes", FB_VERIFY_INFO, "SELECT COUNT(*) FROM nodes",
         "nodes registered (alive, or dead and not reaped yet)"},
        {"negative_money", FB_VERIFY_FAIL,
         "SELECT (SELECT COUNT(*) FROM ledger WHERE reserved<0 OR cost<0 OR "
         "saved<0) + (SELECT COUNT(*) FROM results WHERE cost<0) + "
         "(SELECT COUNT(*) FROM keys WHERE budget_limit<0) + (SELECT "
         "COUNT(*) FROM budget_lease WHERE granted<0)",
         "rows with a negative amount (ledger reserved/cost/saved, result "
         "cost, key budget, budget slice)"},
        {"ledger_state", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM ledger WHERE state NOT IN (0,1,2,3)",
         "ledger rows with an unknown state"},
        {"settled_cost", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM ledger WHERE state=1 AND (outcome IS NULL OR "
         "outcome='')",
         "settled rows without an outcome"},
        {"unpaid_rows_cost", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM ledger WHERE state IN (2,3) AND cost<>0",
         "blocked or replayed rows that carry a cost"},
        {"ledger_status", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM ledger WHERE status<>0 AND status NOT BETWEEN "
         "100 AND 599",
         "ledger rows with an impossible HTTP status"},
        {"ledger_fp", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM ledger WHERE fp IS NOT NULL AND "
         "length(fp)<>32",
         "ledger fingerprints that are not 32 bytes"},
        {"ledger_scope", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM ledger WHERE tenant='' OR key_id='' OR "
         "provider=''",
         "ledger rows without a tenant, key or provider"},
        {"results_wellformed", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM results WHERE length(fp)<>32 OR status NOT "
         "BETWEEN 100 AND 599 OR stream NOT IN (0,1) OR seq<0 OR scope='' "
         "OR expires_ms<created_ms",
         "kept results that are malformed (fingerprint not 32 bytes, status "
         "outside 100-599)"},
        {"results_empty_body", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM results WHERE length(body)=0 AND status "
         "BETWEEN 200 AND 299",
         "kept 2xx results with an empty body"},
        {"idem_dangling", FB_VERIFY_WARN,
         "SELECT COUNT(*) FROM idem_keys k WHERE k.expires_ms>$1 AND NOT "
         "EXISTS (SELECT 1 FROM results r WHERE r.scope=k.scope AND "
         "r.fp=k.fp AND r.seq=k.seq)",
         "live Idempotency-Keys whose kept result is gone (evicted by "
         "replay.max_bytes or purged); such a key answers 409"},
        {"rollup_consistent", FB_VERIFY_FAIL,
         "WITH l AS (SELECT ts_ms-ts_ms%3600000, tenant, job, key_id,"
         " COALESCE(model,''), COUNT(*), COUNT(*) FILTER (WHERE state=1 AND"
         " cost>0), COUNT(*) FILTER (WHERE state=2), COUNT(*) FILTER (WHERE"
         " state=3), SUM(cost)::bigint, SUM(CASE state WHEN 3 THEN saved"
         " ELSE 0 END)::bigint FROM ledger WHERE state<>0 GROUP BY"
         " 1,2,3,4,5), r AS (SELECT * FROM spend_rollup)"
         " SELECT (SELECT COUNT(*) FROM (SELECT * FROM l EXCEPT SELECT * FROM"
         " r) x) + (SELECT COUNT(*) FROM (SELECT * FROM r EXCEPT SELECT *"
         " FROM l) y)",
         "hours of the spend rollup (reports, dashboard) that disagree with "
         "the ledger rows they count"},
        {"idem_wellformed", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM idem_keys WHERE length(fp)<>32 OR idem='' OR "
         "seq<0",
         "Idempotency-Key bindings that are malformed"},
        {"slices_within_pools", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM (SELECT p.scope, p.window_ms FROM budget_pool"
         " p JOIN budget_lease l USING (scope, window_ms) GROUP BY"
         " p.scope, p.window_ms, p.taken HAVING SUM(l.granted)>p.taken) x",
         "budget pools whose live slices add up to more than the pool "
         "handed out"},
        {"slices_of_live_nodes", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM budget_lease WHERE node NOT IN (SELECT id"
         " FROM nodes)",
         "budget slices held by a node that is not registered"},
    };
    fb_err err = FB_OK;
    int snapshot = simple(s, "BEGIN ISOLATION LEVEL REPEATABLE READ "
                             "READ ONLY") == FB_OK;
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
        args a = {0};
        fb_err e;
        if (strstr(checks[i].sql, "$1") != NULL)
            a_i64(&a, now_ms);
        PGresult *r = run(s, checks[i].sql, &a, 1, &e);
        if (r == NULL || PQntuples(r) != 1) {
            fn(arg, checks[i].name, FB_VERIFY_FAIL, 1, s->why);
            err = FB_EIO;
        } else {
            int64_t n = col_i64(r, 0, 0);
            fb_verify_level lv = checks[i].bad == FB_VERIFY_INFO ? FB_VERIFY_INFO
                                 : n > 0                         ? checks[i].bad
                                                                 : FB_VERIFY_OK;
            fn(arg, checks[i].name, lv, n, checks[i].what);
        }
        PQclear(r);
    }
    if (snapshot)
        exec_quiet(s, "COMMIT");
    return err;
}

#define FB__PREFIXED(name) pg_##name
static const fb_store_ops pg_ops = {FB_STORE_OPS(FB__OP_INIT).rollback =
                                        pg_rollback,
                                    .close = pg_close};
#undef FB__PREFIXED
