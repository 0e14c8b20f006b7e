/* store_sqlite.c - the embedded store: one SQLite database in WAL mode
 * under data_dir. Statements are prepared once per handle. Durability:
 * "process" uses synchronous=NORMAL (a commit is a write() into the WAL,
 * which survives kill -9 but not power loss); "full" uses synchronous=FULL
 * (fsync per commit, amortised by the ledger thread's group commit).
 * Commits never checkpoint (wal_autocheckpoint=0): a checkpoint fsyncs,
 * and the commit path must not wait for that. The daemon's maintenance
 * thread checkpoints instead (fb_store_checkpoint); SQLite also
 * checkpoints when the last connection closes. */
#include "store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_KEY_INSERT,
    ST_KEY_BY_HASH,
    ST_KEY_REVOKE,
    ST_KEY_FIND,
    ST_KEY_LIST,
    ST_ENTRY_INSERT,
    ST_ENTRY_SETTLE,
    ST_ENTRY_ROLL,
    ST_CHANGE_ADD,
    ST_CHANGES,
    ST_RESULT_GET,
    ST_RESULT_IDEM,
    ST_RESULT_PUT,
    ST_IDEM_BIND,
    ST_OCCURRENCES,
    ST_ROLLUP_ADD,
    ST__COUNT
};

static const char *const stmt_sql[ST__COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_KEY_INSERT] =
        "INSERT INTO keys(id,hash,prefix,tenant,job,attempt,budget_limit,"
        "budget_period,created_ms,revoked_ms) VALUES(?,?,?,?,?,?,?,?,?,0)",
    [ST_KEY_BY_HASH] = "SELECT id,hash,prefix,tenant,job,attempt,budget_limit,"
                       "budget_period,created_ms,revoked_ms FROM keys "
                       "WHERE hash=?",
    [ST_KEY_REVOKE] = "UPDATE keys SET revoked_ms=? WHERE id=? AND revoked_ms=0",
    [ST_KEY_FIND] = "SELECT id,hash,prefix,tenant,job,attempt,budget_limit,"
                    "budget_period,created_ms,revoked_ms FROM keys "
                    "WHERE id=?1 OR prefix=?1 LIMIT 2",
    [ST_KEY_LIST] = "SELECT id,hash,prefix,tenant,job,attempt,budget_limit,"
                    "budget_period,created_ms,revoked_ms FROM keys "
                    "ORDER BY created_ms, id",
    [ST_ENTRY_INSERT] =
        "INSERT INTO ledger(id,ts_ms,tenant,job,key_id,provider,model,path,"
        "status,reserved,cost,state,outcome,fp,attempt,saved,retry) "
        "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    [ST_ENTRY_SETTLE] = "UPDATE ledger SET status=?,cost=?,state=1,outcome=? "
                        "WHERE id=? AND state=0",
    /* What the spend rollup needs of a row just settled. (Not RETURNING:
     * measured, it costs three times this lookup.) */
    [ST_ENTRY_ROLL] = "SELECT ts_ms,tenant,job,key_id,model,saved FROM ledger "
                      "WHERE id=?",
    [ST_CHANGE_ADD] = "INSERT INTO changes(kind,subject) VALUES(?,?)",
    [ST_CHANGES] = "SELECT seq,kind,subject FROM changes WHERE seq>? "
                   "ORDER BY seq",
#define RESULT_COLS \
    "id,status,stream,headers,body,cost,seq,attempt,fp,expires_ms"
    [ST_RESULT_GET] = "SELECT " RESULT_COLS " FROM results WHERE scope=? AND "
                      "fp=? AND seq=? AND expires_ms>?",
    [ST_RESULT_IDEM] =
        "SELECT r.id,r.status,r.stream,r.headers,r.body,r.cost,r.seq,"
        "r.attempt,k.fp,r.expires_ms FROM idem_keys k LEFT JOIN results r ON r.scope="
        "k.scope AND r.fp=k.fp AND r.seq=k.seq AND r.expires_ms>?3 WHERE "
        "k.scope=?1 AND k.idem=?2 AND k.expires_ms>?3",
    /* An expired row not yet purged gives way; a live one stays (and
     * then nothing changes: FB_EEXIST). */
    [ST_RESULT_PUT] =
        "INSERT INTO results(scope,fp,seq,attempt,status,stream,headers,"
        "body,cost,created_ms,expires_ms) VALUES(?,?,?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT(scope,fp,seq) DO UPDATE SET attempt=excluded.attempt,"
        "status=excluded.status,stream=excluded.stream,"
        "headers=excluded.headers,body=excluded.body,cost=excluded.cost,"
        "created_ms=excluded.created_ms,expires_ms=excluded.expires_ms "
        "WHERE results.expires_ms<=excluded.created_ms",
    [ST_IDEM_BIND] = "INSERT INTO idem_keys(scope,idem,fp,seq,expires_ms) "
                     "VALUES(?1,?2,?3,?4,?5) ON CONFLICT(scope,idem) DO "
                     "UPDATE SET fp=excluded.fp,seq=excluded.seq,"
                     "expires_ms=excluded.expires_ms "
                     "WHERE idem_keys.expires_ms<=?6",
    /* Calls that hold an occurrence: in flight, replayed, or settled
     * with a result that is kept (2xx or a deterministic error). */
    [ST_OCCURRENCES] =
        "SELECT COUNT(*) FROM ledger WHERE tenant=? AND job=? AND key_id=? "
        "AND attempt=? AND attempt>0 AND fp=? AND (state IN (0,3) OR (state=1 AND "
        "(status BETWEEN 200 AND 299 OR status IN (400,401,403,404,422))))",
    [ST_ROLLUP_ADD] =
        "INSERT INTO spend_rollup VALUES(?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT "
        "DO UPDATE SET calls=calls+excluded.calls,paid=paid+excluded.paid,"
        "blocked=blocked+excluded.blocked,replayed=replayed+excluded.replayed,"
        "cost=cost+excluded.cost,saved=saved+excluded.saved",
};

/* Version 1 of the schema. Money columns are integer picodollars. */
static const char schema_v1[] =
    "CREATE TABLE IF NOT EXISTS keys("
    " id TEXT PRIMARY KEY, hash BLOB NOT NULL UNIQUE, prefix TEXT NOT NULL,"
    " tenant TEXT NOT NULL, job TEXT NOT NULL DEFAULT '',"
    " attempt INTEGER NOT NULL DEFAULT 0,"
    " budget_limit INTEGER, budget_period INTEGER NOT NULL DEFAULT 0,"
    " created_ms INTEGER NOT NULL, revoked_ms INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS ledger("
    " id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, tenant TEXT NOT NULL,"
    " job TEXT NOT NULL DEFAULT '', key_id TEXT NOT NULL,"
    " provider TEXT NOT NULL, model TEXT, path TEXT, status INTEGER NOT NULL,"
    " reserved INTEGER NOT NULL, cost INTEGER NOT NULL,"
    " state INTEGER NOT NULL, outcome TEXT);"
    "CREATE INDEX IF NOT EXISTS ledger_scope ON ledger(tenant, job, ts_ms);"
    "CREATE INDEX IF NOT EXISTS ledger_key ON ledger(key_id, ts_ms);"
    "CREATE INDEX IF NOT EXISTS ledger_ts ON ledger(ts_ms);"
    "CREATE INDEX IF NOT EXISTS ledger_pending ON ledger(state) WHERE state=0;"
    "CREATE TABLE IF NOT EXISTS changes("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,"
    " subject TEXT NOT NULL);"
    "PRAGMA user_version=1;";

/* Version 2: replay. The fingerprint, attempt, retry flag and saved amount
 * of each call; kept results; trips. */
static const char schema_v2[] =
    "ALTER TABLE ledger ADD COLUMN fp BLOB;"
    "ALTER TABLE ledger ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE ledger ADD COLUMN retry INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE ledger ADD COLUMN saved INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX IF NOT EXISTS ledger_fp ON ledger(tenant, job, key_id, fp)"
    " WHERE fp IS NOT NULL;"
    "CREATE TABLE IF NOT EXISTS results("
    " id INTEGER PRIMARY KEY, scope TEXT NOT NULL, fp BLOB NOT NULL,"
    " seq INTEGER NOT NULL, attempt INTEGER NOT NULL,"
    " status INTEGER NOT NULL, stream INTEGER NOT NULL,"
    " headers BLOB NOT NULL, body BLOB NOT NULL, cost INTEGER NOT NULL,"
    " created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL,"
    " UNIQUE(scope, fp, seq));"
    /* An Idempotency-Key names one request (fp) and the result it got; a
     * key answered by a replay is bound as well as one that was paid. */
    "CREATE TABLE IF NOT EXISTS idem_keys("
    " scope TEXT NOT NULL, idem TEXT NOT NULL, fp BLOB NOT NULL,"
    " seq INTEGER NOT NULL, expires_ms INTEGER NOT NULL,"
    " PRIMARY KEY(scope, idem));"
    "CREATE INDEX IF NOT EXISTS results_expiry ON results(expires_ms);"
    "CREATE TABLE IF NOT EXISTS trips("
    " scope TEXT PRIMARY KEY, reason TEXT NOT NULL, ts_ms INTEGER NOT NULL);"
    /* fusebox run: every invocation, for the rerun guard */
    "CREATE TABLE IF NOT EXISTS runs("
    " id INTEGER PRIMARY KEY, scope TEXT NOT NULL, identity BLOB NOT NULL,"
    " started_ms INTEGER NOT NULL, ended_ms INTEGER, outcome TEXT NOT NULL,"
    " exit_code INTEGER, attempts INTEGER NOT NULL DEFAULT 0,"
    " cleared INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX IF NOT EXISTS runs_scope ON runs(scope, started_ms);"
    "PRAGMA user_version=2;";

/* Version 3: occurrences are counted for attempts only (fusebox run), so
 * only their rows need the fingerprint index: a call without an attempt
 * no longer updates a B-tree at a random page (profiling: a fifth of the
 * pages a forwarded call wrote). */
static const char schema_v3[] =
    "DROP INDEX IF EXISTS ledger_fp;"
    "CREATE INDEX IF NOT EXISTS ledger_attempt_fp ON ledger(tenant, job,"
    " key_id, fp) WHERE fp IS NOT NULL AND attempt>0;"
    "PRAGMA user_version=3;";

/* Version 4: reports (issue 7). Spend per hour, tenant, job, key and
 * model: a row counts once it is final (state 1, 2 or 3), added in the
 * same transaction as the ledger row (rollup_note, flushed at commit: one
 * upsert per group of a batch, not per call), and filled here from the
 * rows already there. `ledger verify` checks that the two agree. The last
 * blocked calls get an index of their own (few rows). */
#define ROLLUP_OF(WHERE)                                                       \
    "INSERT INTO spend_rollup SELECT ts_ms-ts_ms%3600000, tenant, job,"       \
    " key_id, COALESCE(model,''), COUNT(*), SUM(state=1 AND cost>0),"         \
    " SUM(state=2), SUM(state=3), SUM(cost),"                              \
    " SUM(CASE state WHEN 3 THEN saved ELSE 0 END) FROM ledger WHERE "        \
    WHERE " GROUP BY 1,2,3,4,5"
static const char schema_v4[] =
    "CREATE TABLE IF NOT EXISTS spend_rollup("
    " hour_ms INTEGER NOT NULL, tenant TEXT NOT NULL, job TEXT NOT NULL,"
    " key_id TEXT NOT NULL, model TEXT NOT NULL, calls INTEGER NOT NULL,"
    " paid INTEGER NOT NULL, blocked INTEGER NOT NULL,"
    " replayed INTEGER NOT NULL, cost INTEGER NOT NULL,"
    " saved INTEGER NOT NULL,"
    " PRIMARY KEY(hour_ms, tenant, job, key_id, model)) WITHOUT ROWID;"
    ROLLUP_OF("state<>0") ";"
    /* a scope's spend (budgets at start, key windows, fusebox spend) */
    "CREATE INDEX IF NOT EXISTS spend_rollup_scope ON spend_rollup(tenant,"
    " job, hour_ms);"
    "CREATE INDEX IF NOT EXISTS spend_rollup_key ON spend_rollup(key_id,"
    " hour_ms);"
    "CREATE INDEX IF NOT EXISTS ledger_blocked ON ledger(id) WHERE state=2;"
    /* alerts (alerts.h): each raised once (its dedup key), and an outbox
     * row per destination that survives a restart */
    "CREATE TABLE IF NOT EXISTS alerts("
    " dedup TEXT PRIMARY KEY, ts_ms INTEGER NOT NULL, kind TEXT NOT NULL,"
    " scope TEXT NOT NULL, message TEXT NOT NULL, body TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS alerts_ts ON alerts(ts_ms);"
    "CREATE TABLE IF NOT EXISTS alert_outbox("
    " id INTEGER PRIMARY KEY, dedup TEXT NOT NULL, dest TEXT NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0, next_ms INTEGER NOT NULL,"
    " state INTEGER NOT NULL DEFAULT 0, last_error TEXT,"
    " UNIQUE(dedup, dest));"
    "CREATE INDEX IF NOT EXISTS alert_outbox_due ON alert_outbox(next_ms)"
    " WHERE state=0;"
    "PRAGMA user_version=4;";

#define SCHEMA_VERSION 4
static const char *const migrations[SCHEMA_VERSION] = {schema_v1, schema_v2,
                                                       schema_v3, schema_v4};

static const fb_store_ops sq_ops;
static void sq_close(fb_store *s);
static fb_err roll_write(fb_store *s, const fb__roll *r, size_t n);

int fb__sqlite_schema_version(void)
{
    return SCHEMA_VERSION;
}

struct fb_store {
    const fb_store_ops *ops; /* first: store.c reads it */
    sqlite3 *db;
    sqlite3_stmt *st[ST__COUNT];
    char why[160]; /* why the last failed transaction failed */
    fb__rolls rolls;
    sqlite3_stmt *spend_st[8]; /* per filter set (spend_stmt) */
};

/* Keep why a write failed before a rollback resets SQLite's error: the
 * OS error when there was one ("No space left on device"). */
static void note_why(fb_store *s)
{
    int e = sqlite3_system_errno(s->db);
    snprintf(s->why, sizeof s->why, "%s%s%s%s", sqlite3_errmsg(s->db),
             e ? " (" : "", e ? strerror(e) : "", e ? ")" : "");
}

static fb_err sqlite_err(int rc)
{
    switch (rc) {
    case SQLITE_OK:
    case SQLITE_DONE:
    case SQLITE_ROW: return FB_OK;
    case SQLITE_NOMEM: return FB_ENOMEM;
    case SQLITE_CONSTRAINT: return FB_EEXIST;
    default: return FB_EIO;
    }
}

static sqlite3_stmt *stmt(fb_store *s, int which)
{
    sqlite3_stmt *st = s->st[which];
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return st;
}

/* Run a statement that returns no rows. */
static fb_err step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    fb_err err = rc == SQLITE_DONE ? FB_OK : sqlite_err(rc);
    sqlite3_reset(st);
    return err;
}

static int mkdir_p(const char *dir)
{
    char buf[4096];
    size_t n = fb_strlcpy(buf, dir, sizeof buf);
    if (n >= sizeof buf)
        return -1;
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char c = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST)
                return -1;
            buf[i] = c;
        }
    }
    return 0;
}

static int read_version(sqlite3 *db, int *version)
{
    sqlite3_stmt *v = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &v, NULL);
    if (rc == SQLITE_OK && sqlite3_step(v) == SQLITE_ROW)
        *version = sqlite3_column_int(v, 0);
    sqlite3_finalize(v);
    return rc;
}

fb_err fb__sqlite_open(const fb_config *c, fb_store **out, char *errbuf,
                       size_t errcap)
{
    fb_err err = FB_EIO;
    fb_store *s = NULL;
    char path[4096];
    char *msg = NULL;
    int version = 0;

    *out = NULL;
    if (mkdir_p(c->data_dir) != 0) {
        snprintf(errbuf, errcap, "cannot create data_dir %s: %s", c->data_dir,
                 strerror(errno));
        goto out;
    }
    if ((size_t)snprintf(path, sizeof path, "%s/fusebox.db", c->data_dir) >=
        sizeof path) {
        snprintf(errbuf, errcap, "data_dir path too long");
        goto out;
    }
    s = calloc(1, sizeof *s);
    if (s == NULL) {
        err = FB_ENOMEM;
        goto out;
    }
    s->ops = &sq_ops;
    s->rolls.write = roll_write;
    if (sqlite3_open_v2(path, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                            SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        snprintf(errbuf, errcap, "cannot open %s: %s", path,
                 s->db ? sqlite3_errmsg(s->db) : "out of memory");
        goto out;
    }
    sqlite3_busy_timeout(s->db, 5000);
    const char *pragmas = c->durability == FB_DURABILITY_FULL
                              ? "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit=67108864; PRAGMA cache_size=-16384;"
                              : "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit=67108864; PRAGMA cache_size=-16384;";
    if (sqlite3_exec(s->db, pragmas, NULL, NULL, &msg) != SQLITE_OK)
        goto sqlfail;
    if (read_version(s->db, &version) != SQLITE_OK)
        goto sqlfail_db;
    if (version > SCHEMA_VERSION) {
        snprintf(errbuf, errcap,
                 "%s has schema version %d, newer than this fusebox knows (%d)",
                 path, version, SCHEMA_VERSION);
        goto out;
    }
    /* Each step in its own transaction, the version read again under the
     * write lock (another process may have migrated meanwhile); a crash
     * mid-way leaves a version that the next start migrates from. */
    while (version < SCHEMA_VERSION) {
        if (sqlite3_exec(s->db, "BEGIN IMMEDIATE;", NULL, NULL, &msg) !=
            SQLITE_OK)
            goto sqlfail;
        if (read_version(s->db, &version) != SQLITE_OK) {
            sqlite3_exec(s->db, "ROLLBACK;", NULL, NULL, NULL);
            goto sqlfail_db;
        }
        if (version < SCHEMA_VERSION &&
            sqlite3_exec(s->db, migrations[version], NULL, NULL, &msg) !=
                SQLITE_OK) {
            sqlite3_exec(s->db, "ROLLBACK;", NULL, NULL, NULL);
            goto sqlfail;
        }
        if (sqlite3_exec(s->db, "COMMIT;", NULL, NULL, &msg) != SQLITE_OK) {
            sqlite3_exec(s->db, "ROLLBACK;", NULL, NULL, NULL);
            goto sqlfail;
        }
        if (read_version(s->db, &version) != SQLITE_OK)
            goto sqlfail_db;
    }
    for (int i = 0; i < ST__COUNT; i++) {
        if (sqlite3_prepare_v3(s->db, stmt_sql[i], -1,
                               SQLITE_PREPARE_PERSISTENT, &s->st[i],
                               NULL) != SQLITE_OK)
            goto sqlfail_db;
    }
    *out = s;
    s = NULL;
    err = FB_OK;
    goto out;
sqlfail:
    snprintf(errbuf, errcap, "store %s: %s", path, msg ? msg : "error");
    goto out;
sqlfail_db:
    snprintf(errbuf, errcap, "store %s: %s", path, sqlite3_errmsg(s->db));
out:
    sqlite3_free(msg);
    sq_close(s);
    return err;
}

static void sq_close(fb_store *s)
{
    if (s == NULL)
        return;
    for (int i = 0; i < ST__COUNT; i++)
        sqlite3_finalize(s->st[i]);
    for (int i = 0; i < 8; i++)
        sqlite3_finalize(s->spend_st[i]);
    fb__roll_drop(&s->rolls);
    sqlite3_close(s->db);
    free(s);
}

static fb_err roll_write_one(fb_store *s, const fb__roll *r)
{
    sqlite3_stmt *st = stmt(s, ST_ROLLUP_ADD);
    sqlite3_bind_int64(st, 1, r->hour_ms);
    sqlite3_bind_text(st, 2, r->tenant, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, r->job, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, r->key_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, r->model, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, r->calls);
    sqlite3_bind_int64(st, 7, r->paid);
    sqlite3_bind_int64(st, 8, r->blocked);
    sqlite3_bind_int64(st, 9, r->replayed);
    sqlite3_bind_int64(st, 10, r->cost);
    sqlite3_bind_int64(st, 11, r->saved);
    return step_done(st);
}

static fb_err roll_write(fb_store *s, const fb__roll *r, size_t n)
{
    fb_err err = FB_OK;
    for (size_t i = 0; i < n && err == FB_OK; i++)
        err = roll_write_one(s, &r[i]);
    return err;
}

static fb_err sq_begin(fb_store *s)
{
    fb__roll_drop(&s->rolls);
    s->rolls.failed = 0;
    return step_done(stmt(s, ST_BEGIN));
}

static fb_err sq_commit(fb_store *s)
{
    fb_err err = s->rolls.failed ? FB_EIO : fb__roll_flush(&s->rolls, s);
    if (err != FB_OK) {
        s->rolls.failed = 1; /* the caller rolls back */
        return err;
    }
    return step_done(stmt(s, ST_COMMIT));
}

static void sq_rollback(fb_store *s)
{
    note_why(s);
    fb__roll_drop(&s->rolls);
    s->rolls.failed = 0;
    if (!sqlite3_get_autocommit(s->db))
        (void)step_done(stmt(s, ST_ROLLBACK));
}

static int sq_in_transaction(fb_store *s)
{
    return !sqlite3_get_autocommit(s->db);
}

static fb_err sq_key_insert(fb_store *s, const fb_key_rec *k)
{
    sqlite3_stmt *st = stmt(s, ST_KEY_INSERT);
    sqlite3_bind_text(st, 1, k->id, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, k->hash, 32, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, k->prefix, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, k->tenant, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, k->job, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, k->attempt);
    if (k->budget.set)
        sqlite3_bind_int64(st, 7, k->budget.limit);
    sqlite3_bind_int(st, 8, (int)k->budget.period);
    sqlite3_bind_int64(st, 9, k->created_ms);
    return step_done(st);
}

static void copy_col(sqlite3_stmt *st, int col, char *dst, size_t cap)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    fb_strlcpy(dst, t ? (const char *)t : "", cap);
}

static void read_key(sqlite3_stmt *st, fb_key_rec *k)
{
    memset(k, 0, sizeof *k);
    copy_col(st, 0, k->id, sizeof k->id);
    if (sqlite3_column_bytes(st, 1) == 32)
        memcpy(k->hash, sqlite3_column_blob(st, 1), 32);
    copy_col(st, 2, k->prefix, sizeof k->prefix);
    copy_col(st, 3, k->tenant, sizeof k->tenant);
    copy_col(st, 4, k->job, sizeof k->job);
    k->attempt = sqlite3_column_int64(st, 5);
    if (sqlite3_column_type(st, 6) != SQLITE_NULL) {
        k->budget.set = 1;
        k->budget.limit = sqlite3_column_int64(st, 6);
        int per = sqlite3_column_int(st, 7);
        /* A period this build does not know reads as a lifetime ceiling,
         * the strictest reading. */
        k->budget.period = per >= FB_PERIOD_NONE && per <= FB_PERIOD_MONTH
                               ? (fb_period)per
                               : FB_PERIOD_NONE;
    }
    k->created_ms = sqlite3_column_int64(st, 8);
    k->revoked_ms = sqlite3_column_int64(st, 9);
}

static fb_err sq_key_by_hash(fb_store *s, const uint8_t hash[32],
                            fb_key_rec *out)
{
    sqlite3_stmt *st = stmt(s, ST_KEY_BY_HASH);
    fb_err err;
    sqlite3_bind_blob(st, 1, hash, 32, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        read_key(st, out);
        err = FB_OK;
    } else {
        err = rc == SQLITE_DONE ? FB_ENOTFOUND : sqlite_err(rc);
    }
    sqlite3_reset(st);
    return err;
}

static fb_err sq_key_revoke(fb_store *s, const char *id, int64_t now_ms)
{
    sqlite3_stmt *st = stmt(s, ST_KEY_REVOKE);
    sqlite3_bind_int64(st, 1, now_ms);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    fb_err err = step_done(st);
    if (err == FB_OK && sqlite3_changes(s->db) == 0)
        err = FB_ENOTFOUND;
    return err;
}

static fb_err sq_key_find(fb_store *s, const char *id_or_prefix,
                         fb_key_rec *out)
{
    sqlite3_stmt *st = stmt(s, ST_KEY_FIND);
    fb_err err = FB_ENOTFOUND;
    int rc;
    sqlite3_bind_text(st, 1, id_or_prefix, -1, SQLITE_STATIC);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (err == FB_OK) {
            err = FB_EEXIST; /* a prefix shared by several keys */
            break;
        }
        read_key(st, out);
        err = FB_OK;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        err = sqlite_err(rc);
    sqlite3_reset(st);
    return err;
}

static fb_err sq_key_list(fb_store *s,
                         int (*fn)(void *arg, const fb_key_rec *k), void *arg)
{
    sqlite3_stmt *st = stmt(s, ST_KEY_LIST);
    fb_key_rec k;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        read_key(st, &k);
        if (fn(arg, &k) != 0)
            break;
    }
    fb_err err = rc == SQLITE_ROW || rc == SQLITE_DONE ? FB_OK : sqlite_err(rc);
    sqlite3_reset(st);
    return err;
}

static fb_err entry_insert(fb_store *s, const fb_entry *e);
static fb_err entry_settle(fb_store *s, int64_t id, int status, fb_money cost,
                           const char *outcome);

/* A ledger write and its rollup delta commit together: outside a
 * transaction, each call is one of its own. */
static fb_err sq_entry_insert(fb_store *s, const fb_entry *e)
{
    if (!sqlite3_get_autocommit(s->db))
        return entry_insert(s, e);
    fb_err err = fb_store_begin(s);
    if (err == FB_OK)
        err = entry_insert(s, e);
    if (err == FB_OK)
        err = fb_store_commit(s);
    if (err != FB_OK)
        fb_store_rollback(s);
    return err;
}

static fb_err sq_entry_settle(fb_store *s, int64_t id, int status,
                             fb_money cost, const char *outcome)
{
    if (!sqlite3_get_autocommit(s->db))
        return entry_settle(s, id, status, cost, outcome);
    fb_err err = fb_store_begin(s);
    if (err == FB_OK)
        err = entry_settle(s, id, status, cost, outcome);
    if (err == FB_OK)
        err = fb_store_commit(s);
    if (err != FB_OK)
        fb_store_rollback(s);
    return err;
}

static fb_err entry_insert(fb_store *s, const fb_entry *e)
{
    sqlite3_stmt *st = stmt(s, ST_ENTRY_INSERT);
    sqlite3_bind_int64(st, 1, e->id);
    sqlite3_bind_int64(st, 2, e->ts_ms);
    sqlite3_bind_text(st, 3, e->tenant, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, e->job ? e->job : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, e->key_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, e->provider, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, e->model, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, e->path, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 9, e->status);
    sqlite3_bind_int64(st, 10, e->reserved);
    sqlite3_bind_int64(st, 11, e->cost);
    sqlite3_bind_int(st, 12, (int)e->state);
    sqlite3_bind_text(st, 13, e->outcome, -1, SQLITE_STATIC);
    if (e->fp != NULL)
        sqlite3_bind_blob(st, 14, e->fp, 32, SQLITE_STATIC);
    sqlite3_bind_int64(st, 15, e->attempt);
    sqlite3_bind_int64(st, 16, e->saved);
    sqlite3_bind_int(st, 17, e->retry);
    fb_err err = step_done(st);
    if (err == FB_OK && e->state != FB_ENTRY_RESERVED)
        err = fb__roll_note(&s->rolls, s, e->ts_ms, e->tenant, e->job, e->key_id, e->model,
                        (int)e->state, e->cost, e->saved);
    return err;
}

static fb_err entry_settle(fb_store *s, int64_t id, int status, fb_money cost,
                           const char *outcome)
{
    sqlite3_stmt *st = stmt(s, ST_ENTRY_SETTLE);
    sqlite3_bind_int(st, 1, status);
    sqlite3_bind_int64(st, 2, cost);
    sqlite3_bind_text(st, 3, outcome, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, id);
    fb_err err = step_done(st);
    if (err != FB_OK || sqlite3_changes(s->db) == 0)
        return err; /* settled before (a journal applied twice) */
    st = stmt(s, ST_ENTRY_ROLL); /* it was in flight: now it counts */
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        err = fb__roll_note(&s->rolls, s, sqlite3_column_int64(st, 0),
                        (const char *)sqlite3_column_text(st, 1),
                        (const char *)sqlite3_column_text(st, 2),
                        (const char *)sqlite3_column_text(st, 3),
                        (const char *)sqlite3_column_text(st, 4),
                        FB_ENTRY_SETTLED, cost, sqlite3_column_int64(st, 5));
    else
        err = rc == SQLITE_DONE ? FB_EIO : sqlite_err(rc);
    sqlite3_reset(st);
    return err;
}

static fb_err sq_result_put(fb_store *s, const char *scope, const fb_result *r,
                            const char *idem, int64_t now_ms,
                            int64_t expires_ms);

static fb_err sq_entry_complete(fb_store *s, int64_t id, int status,
                                fb_money cost, const char *outcome,
                                const char *scope, const fb_result *r,
                                const char *idem, int64_t now_ms,
                                int64_t expires_ms)
{
    fb_err err = sq_entry_settle(s, id, status, cost, outcome);
    if (err == FB_OK)
        err = sq_result_put(s, scope, r, idem, now_ms, expires_ms);
    return err;
}

static fb_err sq_recover(fb_store *s, int64_t *n)
{
    char *msg = NULL;
    *n = 0;
    /* One transaction: the rows, charged in full, and their rollup. */
    int rc = sqlite3_exec(
        s->db,
        "BEGIN IMMEDIATE;"
        "INSERT INTO spend_rollup SELECT ts_ms-ts_ms%3600000, tenant, job,"
        " key_id, COALESCE(model,''), COUNT(*), SUM(reserved>0), 0, 0,"
        " SUM(reserved), 0 FROM ledger WHERE state=0"
        " GROUP BY 1,2,3,4,5 ON CONFLICT DO UPDATE SET"
        " calls=calls+excluded.calls, paid=paid+excluded.paid,"
        " cost=cost+excluded.cost, saved=saved+excluded.saved;"
        "UPDATE ledger SET cost=reserved, state=1,"
        " outcome='charged_after_crash' WHERE state=0",
        NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        *n = sqlite3_changes(s->db);
    sqlite3_free(msg);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        fb_store_rollback(s);
        *n = 0;
        return sqlite_err(rc);
    }
    return FB_OK;
}

/* One node: ids go on from the highest in the ledger. */
static fb_err sq_node_join(fb_store *s, int64_t *node, int64_t *out)
{
    *node = 0;
    sqlite3_stmt *st = NULL;
    fb_err err = FB_EIO;
    *out = 0;
    if (sqlite3_prepare_v2(s->db, "SELECT COALESCE(MAX(id),0) FROM ledger", -1,
                           &st, NULL) != SQLITE_OK)
        goto out;
    if (sqlite3_step(st) == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        err = FB_OK;
    }
out:
    sqlite3_finalize(st);
    return err;
}

static void bind_opt(sqlite3_stmt *st, int i, const char *v)
{
    if (v != NULL)
        sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
}

/* The filters of f, as SQL: only those set, so that SQLite can use the
 * rollup's index (a "?5 IS NULL OR tenant=?5" cannot). Parameters ?5, ?6,
 * ?7. Over the ledger (ledger=1) the columns are written "+tenant": no
 * index on them, so that the time range (ledger_ts) or the calls in
 * flight (ledger_pending) pick the few rows: a tenant's index would walk
 * all its rows. */
static void spend_filter(const fb_spend_filter *f, int ledger, char *buf,
                         size_t cap)
{
    const char *p = ledger ? "+" : "";
    snprintf(buf, cap, "%s%s%s%s%s%s", f->tenant ? " AND " : "",
             f->tenant ? p : "", f->tenant ? "tenant=?5" : "",
             f->job ? (ledger ? " AND +job=?6" : " AND job=?6") : "",
             f->key_id ? " AND " : "",
             f->key_id ? (ledger ? "+key_id=?7" : "key_id=?7") : "");
}

static void bind_spend(sqlite3_stmt *st, const fb_spend_filter *f)
{
    int64_t S, U, A, B;
    fb__spend_bounds(f, &S, &U, &A, &B);
    sqlite3_bind_int64(st, 1, S);
    sqlite3_bind_int64(st, 2, U);
    sqlite3_bind_int64(st, 3, A);
    sqlite3_bind_int64(st, 4, B);
    bind_opt(st, 5, f->tenant);
    bind_opt(st, 6, f->job);
    bind_opt(st, 7, f->key_id);
}

/* Totals over [?1, ?2): whole hours [?3, ?4) from the rollup, the cut
 * hours and the calls in flight from the ledger (fb_store_report groups
 * the same three parts). Prepared once per filter set. */
static sqlite3_stmt *spend_stmt(fb_store *s, const fb_spend_filter *f)
{
    int mask = (f->tenant != NULL) | (f->job != NULL) << 1 |
               (f->key_id != NULL) << 2;
    if (s->spend_st[mask] == NULL) {
        char filt[64], lfilt[64], sql[1536];
        spend_filter(f, 0, filt, sizeof filt);
        spend_filter(f, 1, lfilt, sizeof lfilt);
        snprintf(sql, sizeof sql,
                 "SELECT COALESCE(SUM(cost)+SUM(fl),0), COALESCE(SUM(fl),0),"
                 " COALESCE(SUM(p),0), COALESCE(SUM(b),0), COALESCE(SUM(c),0),"
                 " COALESCE(SUM(r),0), COALESCE(SUM(sv),0) FROM ("
                 "SELECT calls AS c, paid AS p, blocked AS b, replayed AS r,"
                 " cost, 0 AS fl, saved AS sv FROM spend_rollup WHERE"
                 " hour_ms>=?3 AND hour_ms<?4%s"
                 " UNION ALL SELECT 1, state=1 AND cost>0, state=2, state=3,"
                 " cost, 0, CASE state WHEN 3 THEN saved ELSE 0 END FROM"
                 " ledger WHERE state<>0 AND ((ts_ms>=?1 AND ts_ms<?3) OR"
                 " (ts_ms>=?4 AND ts_ms<?2))%s"
                 " UNION ALL SELECT 1, 0, 0, 0, 0, reserved, 0 FROM ledger"
                 " WHERE state=0 AND ts_ms>=?1 AND ts_ms<?2%s)",
                 filt, lfilt, lfilt);
        if (sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT,
                               &s->spend_st[mask], NULL) != SQLITE_OK)
            return NULL;
    }
    sqlite3_stmt *st = s->spend_st[mask];
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return st;
}

/* Inside a transaction, the deltas of rows it settled are still in
 * memory: write them before reading. */
static fb_err roll_sync(fb_store *s)
{
    if (sqlite3_get_autocommit(s->db) || s->rolls.npend == 0)
        return FB_OK;
    return fb__roll_flush(&s->rolls, s);
}

static fb_err sq_spend(fb_store *s, const fb_spend_filter *f, fb_spend *out)
{
    if (roll_sync(s) != FB_OK)
        return FB_EIO;
    sqlite3_stmt *st = spend_stmt(s, f);
    fb_err err;
    memset(out, 0, sizeof *out);
    if (st == NULL)
        return FB_EIO;
    bind_spend(st, f);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        out->spent = sqlite3_column_int64(st, 0);
        out->reserved = sqlite3_column_int64(st, 1);
        out->paid_calls = sqlite3_column_int64(st, 2);
        out->blocked_calls = sqlite3_column_int64(st, 3);
        out->calls = sqlite3_column_int64(st, 4);
        out->replayed_calls = sqlite3_column_int64(st, 5);
        out->saved = sqlite3_column_int64(st, 6);
        err = FB_OK;
    } else {
        err = sqlite_err(rc == SQLITE_DONE ? SQLITE_ERROR : rc);
    }
    sqlite3_reset(st);
    return err;
}

static fb_err sq_scopes(fb_store *s,
                       int (*fn)(void *arg, const char *tenant,
                                 const char *job),
                       void *arg)
{
    sqlite3_stmt *st = NULL;
    fb_err err = FB_EIO;
    int rc;
    if (sqlite3_prepare_v2(s->db,
                           /* final rows are all in the rollup (an
                            * index on tenant, job); the rest in flight */
                           "SELECT tenant, job FROM spend_rollup UNION "
                           "SELECT tenant, job FROM ledger WHERE state=0 "
                           "ORDER BY 1, 2",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (fn(arg, (const char *)sqlite3_column_text(st, 0),
               (const char *)sqlite3_column_text(st, 1)) != 0)
            break;
    }
    err = rc == SQLITE_ROW || rc == SQLITE_DONE ? FB_OK : sqlite_err(rc);
out:
    sqlite3_finalize(st);
    return err;
}

static fb_err sq_probe(fb_store *s)
{
    /* Rewriting the schema version dirties the header page: a real write
     * to the log, of a value that does not change. */
    char sql[80];
    snprintf(sql, sizeof sql,
             "BEGIN IMMEDIATE;PRAGMA user_version=%d;COMMIT", SCHEMA_VERSION);
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        fb_store_rollback(s);
    return sqlite_err(rc);
}

static const char *sq_why(fb_store *s)
{
    return s->why;
}

/* Past this many WAL frames (16 MiB of 4 KiB pages), restart the log. */
#define WAL_RESTART_FRAMES 4096

static fb_err sq_checkpoint(fb_store *s)
{
    int log = 0, done = 0;
    /* This handle only checkpoints: never wait for locks (a TRUNCATE
     * pass holds writers back while it waits for readers). */
    sqlite3_busy_timeout(s->db, 0);
    /* PASSIVE copies what it can without taking the writer's lock. Under a
     * steady stream of commits it never catches up with the end of the
     * log, so the log is never reused; once it is long, a RESTART pass
     * holds writers back for the short rest of the copy and makes the
     * next commit start over at the beginning of the file. (Not TRUNCATE:
     * growing the file again costs the kernel zeroing every new block;
     * journal_size_limit bounds what stays on disk.) */
    int rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_PASSIVE,
                                       &log, &done);
    if (rc == SQLITE_OK && log > WAL_RESTART_FRAMES)
        rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_RESTART,
                                       NULL, NULL);
    return rc == SQLITE_BUSY ? FB_OK : sqlite_err(rc);
}

static fb_err sq_change_add(fb_store *s, const char *kind, const char *subject)
{
    sqlite3_stmt *st = stmt(s, ST_CHANGE_ADD);
    sqlite3_bind_text(st, 1, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, subject, -1, SQLITE_STATIC);
    return step_done(st);
}

static fb_err sq_changes(fb_store *s, int64_t after,
                        int (*fn)(void *arg, const fb_change *c), void *arg)
{
    sqlite3_stmt *st = stmt(s, ST_CHANGES);
    fb_change c;
    int rc;
    sqlite3_bind_int64(st, 1, after);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        memset(&c, 0, sizeof c);
        c.seq = sqlite3_column_int64(st, 0);
        copy_col(st, 1, c.kind, sizeof c.kind);
        copy_col(st, 2, c.subject, sizeof c.subject);
        if (fn(arg, &c) != 0)
            break;
    }
    fb_err err = rc == SQLITE_ROW || rc == SQLITE_DONE ? FB_OK : sqlite_err(rc);
    sqlite3_reset(st);
    return err;
}

static fb_err sq_last_change(fb_store *s, int64_t *seq)
{
    sqlite3_stmt *st = NULL;
    fb_err err = FB_EIO;
    *seq = 0;
    if (sqlite3_prepare_v2(s->db, "SELECT COALESCE(MAX(seq),0) FROM changes",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    if (sqlite3_step(st) == SQLITE_ROW) {
        *seq = sqlite3_column_int64(st, 0);
        err = FB_OK;
    }
out:
    sqlite3_finalize(st);
    return err;
}

/* ---- kept results ---- */

static fb_err read_result(sqlite3_stmt *st, fb_result *r)
{
    memset(r, 0, sizeof *r);
    r->id = sqlite3_column_int64(st, 0);
    r->status = sqlite3_column_int(st, 1);
    r->stream = sqlite3_column_int(st, 2);
    const void *h = sqlite3_column_blob(st, 3);
    r->headers_len = (size_t)sqlite3_column_bytes(st, 3);
    const void *b = sqlite3_column_blob(st, 4);
    r->body_len = (size_t)sqlite3_column_bytes(st, 4);
    r->cost = sqlite3_column_int64(st, 5);
    r->seq = sqlite3_column_int64(st, 6);
    r->attempt = sqlite3_column_int64(st, 7);
    if (sqlite3_column_bytes(st, 8) == 32)
        memcpy(r->fp, sqlite3_column_blob(st, 8), 32);
    r->expires_ms = sqlite3_column_int64(st, 9);
    r->headers = fb_strndup(h ? h : "", r->headers_len);
    r->body = malloc(r->body_len + 1);
    if (r->headers == NULL || r->body == NULL) {
        fb_result_clear(r);
        return FB_ENOMEM;
    }
    if (r->body_len)
        memcpy(r->body, b, r->body_len);
    r->body[r->body_len] = '\0';
    return FB_OK;
}

static fb_err one_result(sqlite3_stmt *st, fb_result *out)
{
    int rc = sqlite3_step(st);
    fb_err err = rc == SQLITE_ROW    ? read_result(st, out)
                 : rc == SQLITE_DONE ? FB_ENOTFOUND
                                     : sqlite_err(rc);
    sqlite3_reset(st);
    return err;
}

static fb_err sq_result_get(fb_store *s, const char *scope,
                           const uint8_t fp[32], int64_t seq, int64_t now_ms,
                           fb_result *out)
{
    sqlite3_stmt *st = stmt(s, ST_RESULT_GET);
    sqlite3_bind_text(st, 1, scope, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, fp, 32, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, seq);
    sqlite3_bind_int64(st, 4, now_ms);
    return one_result(st, out);
}

static fb_err sq_result_by_idem(fb_store *s, const char *scope,
                               const char *idem, int64_t now_ms,
                               fb_result *out)
{
    sqlite3_stmt *st = stmt(s, ST_RESULT_IDEM);
    sqlite3_bind_text(st, 1, scope, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, idem, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now_ms);
    int rc = sqlite3_step(st);
    fb_err err;
    if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) == SQLITE_NULL) {
        /* Bound to a request whose result is gone: the request is known. */
        memset(out, 0, sizeof *out);
        if (sqlite3_column_bytes(st, 8) == 32)
            memcpy(out->fp, sqlite3_column_blob(st, 8), 32);
        err = FB_EAGAIN;
    } else {
        err = rc == SQLITE_ROW    ? read_result(st, out)
              : rc == SQLITE_DONE ? FB_ENOTFOUND
                                  : sqlite_err(rc);
    }
    sqlite3_reset(st);
    return err;
}

static fb_err sq_result_put(fb_store *s, const char *scope, const fb_result *r,
                           const char *idem, int64_t now_ms,
                           int64_t expires_ms)
{
    sqlite3_stmt *st = stmt(s, ST_RESULT_PUT);
    sqlite3_bind_text(st, 1, scope, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, r->fp, 32, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, r->seq);
    sqlite3_bind_int64(st, 4, r->attempt);
    sqlite3_bind_int(st, 5, r->status);
    sqlite3_bind_int(st, 6, r->stream);
    sqlite3_bind_blob(st, 7, r->headers ? r->headers : "",
                      (int)r->headers_len, SQLITE_STATIC);
    sqlite3_bind_blob(st, 8, r->body ? r->body : "", (int)r->body_len,
                      SQLITE_STATIC);
    sqlite3_bind_int64(st, 9, r->cost);
    sqlite3_bind_int64(st, 10, now_ms);
    sqlite3_bind_int64(st, 11, expires_ms);
    fb_err err = step_done(st);
    if (err == FB_OK && sqlite3_changes(s->db) == 0)
        err = FB_EEXIST; /* a live result holds this seq */
    /* The key names this request either way: a live result for the same
     * (fp, seq) is the same answer. */
    if ((err == FB_OK || err == FB_EEXIST) && idem != NULL) {
        fb_err b = fb_store_idem_bind(s, scope, idem, r->fp, r->seq, now_ms,
                                      expires_ms);
        if (b != FB_OK)
            err = b;
    }
    return err;
}

static fb_err sq_idem_bind(fb_store *s, const char *scope, const char *idem,
                          const uint8_t fp[32], int64_t seq, int64_t now_ms,
                          int64_t expires_ms)
{
    sqlite3_stmt *st = stmt(s, ST_IDEM_BIND);
    sqlite3_bind_text(st, 1, scope, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, idem, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, fp, 32, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, seq);
    sqlite3_bind_int64(st, 5, expires_ms);
    sqlite3_bind_int64(st, 6, now_ms);
    return step_done(st);
}

static fb_err sq_result_keys(fb_store *s, int64_t now_ms,
                            int (*fn)(void *arg, const char *scope,
                                      const uint8_t fp[32], int64_t seq),
                            void *arg)
{
    sqlite3_stmt *st = NULL;
    fb_err err = FB_EIO;
    int rc;
    /* From the (scope, fp, seq) index alone, not the table and its
     * bodies (1.4 s at a million results): expired ones are included, and
     * only cost the filter a false "maybe" until they are purged. */
    (void)now_ms;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT scope, fp, seq FROM results",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (sqlite3_column_bytes(st, 1) != 32)
            continue;
        if (fn(arg, (const char *)sqlite3_column_text(st, 0),
               sqlite3_column_blob(st, 1), sqlite3_column_int64(st, 2)) != 0)
            break;
    }
    err = rc == SQLITE_ROW || rc == SQLITE_DONE ? FB_OK : sqlite_err(rc);
out:
    sqlite3_finalize(st);
    return err;
}

/* Delete from table (results or idem_keys) what a purge names: a scope,
 * a scope prefix, or (neither) up to limit rows expired at now_ms. */
static fb_err purge_table(fb_store *s, const char *table, const char *scope,
                          int prefix, int64_t now_ms, int64_t limit,
                          int64_t *n)
{
    sqlite3_stmt *st = NULL;
    char sql[256];
    fb_err err = FB_EIO;
    if (prefix)
        snprintf(sql, sizeof sql,
                 "DELETE FROM %s WHERE substr(scope,1,length(?1))=?1", table);
    else if (scope)
        snprintf(sql, sizeof sql, "DELETE FROM %s WHERE scope=?1", table);
    else
        snprintf(sql, sizeof sql,
                 "DELETE FROM %s WHERE rowid IN (SELECT rowid FROM %s WHERE "
                 "expires_ms<=?2 ORDER BY expires_ms LIMIT ?3)",
                 table, table);
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        goto out;
    if (scope)
        sqlite3_bind_text(st, 1, scope, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now_ms);
    sqlite3_bind_int64(st, 3, limit > 0 ? limit : -1);
    if (sqlite3_step(st) != SQLITE_DONE)
        goto out;
    *n = sqlite3_changes(s->db);
    err = FB_OK;
out:
    sqlite3_finalize(st);
    return err;
}

static fb_err sq_results_purge(fb_store *s, int64_t now_ms,
                              const char *scope_prefix, int64_t max_bytes,
                              int64_t limit, int64_t *n)
{
    sqlite3_stmt *st = NULL;
    fb_err err = FB_EIO;
    int64_t keys = 0;
    *n = 0;
    /* A scope ending in '/' (a tenant's jobs) or empty (all) is a prefix;
     * any other names one scope exactly ("job:t/pg" is not "job:t/pg2"). */
    size_t pl = scope_prefix ? strlen(scope_prefix) : 0;
    int prefix = scope_prefix && (pl == 0 || scope_prefix[pl - 1] == '/');
    if (purge_table(s, "results", scope_prefix, prefix, now_ms, limit, n) !=
            FB_OK ||
        purge_table(s, "idem_keys", scope_prefix, prefix, now_ms, limit,
                    &keys) != FB_OK)
        goto out;
    if (max_bytes > 0) {
        /* The sum reads every row: as a read of its own, which in WAL mode
         * holds no lock against the ledger's writes (inside the DELETE it
         * held the write lock for the whole scan: 0.5 s at a million
         * results). Over the cap, the oldest results up to the excess go,
         * in slices, each a short write. */
        int64_t total = 0, last = -1;
        if (sqlite3_prepare_v2(s->db,
                               "SELECT COALESCE(SUM(length(body)),0) FROM "
                               "results",
                               -1, &st, NULL) != SQLITE_OK ||
            sqlite3_step(st) != SQLITE_ROW)
            goto out;
        total = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        st = NULL;
        if (total > max_bytes) {
            /* The newest of the oldest rows that together cover the
             * excess (read from the oldest on, stopping there). */
            if (sqlite3_prepare_v2(
                    s->db,
                    "SELECT id FROM (SELECT id, SUM(length(body)) OVER "
                    "(ORDER BY id) AS cum FROM results) WHERE cum >= ?1 "
                    "LIMIT 1",
                    -1, &st, NULL) != SQLITE_OK)
                goto out;
            sqlite3_bind_int64(st, 1, total - max_bytes);
            int rc = sqlite3_step(st);
            if (rc == SQLITE_ROW)
                last = sqlite3_column_int64(st, 0);
            else if (rc != SQLITE_DONE)
                goto out;
            sqlite3_finalize(st);
            st = NULL;
        }
        if (last >= 0 &&
            sqlite3_prepare_v2(s->db,
                               "DELETE FROM results WHERE id IN (SELECT id "
                               "FROM results WHERE id <= ?1 ORDER BY id "
                               "LIMIT 1024)",
                               -1, &st, NULL) != SQLITE_OK)
            goto out;
        for (int round = 0; last >= 0 && round < 64; round++) {
            sqlite3_bind_int64(st, 1, last);
            int rc = sqlite3_step(st), ch = sqlite3_changes(s->db);
            sqlite3_reset(st);
            if (rc != SQLITE_DONE)
                goto out;
            *n += ch;
            if (ch == 0)
                break;
        }
    }
    err = FB_OK;
out:
    sqlite3_finalize(st);
    return err;
}

static fb_err sq_occurrences(fb_store *s, const char *tenant, const char *job,
                            const char *key_id, int64_t attempt,
                            const uint8_t fp[32], int64_t *n)
{
    sqlite3_stmt *st = stmt(s, ST_OCCURRENCES);
    fb_err err;
    sqlite3_bind_text(st, 1, tenant, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, job ? job : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, key_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, attempt);
    sqlite3_bind_blob(st, 5, fp, 32, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    *n = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    err = rc == SQLITE_ROW ? FB_OK : sqlite_err(rc);
    sqlite3_reset(st);
    return err;
}

/* ---- trips ---- */

static fb_err sq_trip_set(fb_store *s, const char *scope, const char *reason,
                         int64_t now_ms)
{
    sqlite3_stmt *st = NULL;
    fb_err err = FB_EIO;
    if (sqlite3_prepare_v2(s->db,
                           "INSERT INTO trips(scope,reason,ts_ms) VALUES(?,?,?)"
                           " ON CONFLICT(scope) DO UPDATE SET reason=excluded."
                           "reason, ts_ms=excluded.ts_ms",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, scope, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, reason, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now_ms);
    err = sqlite3_step(st) == SQLITE_DONE ? FB_OK : FB_EIO;
out:
    sqlite3_finalize(st);
    return err;
}

/* A one-shot statement whose only parameter is a scope; *changes gets
 * the number of rows it changed. */
static fb_err exec_scope(fb_store *s, const char *sql, const char *scope,
                         int *changes)
{
    sqlite3_stmt *st = NULL;
    fb_err err = FB_EIO;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, scope, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        goto out;
    *changes = sqlite3_changes(s->db);
    err = FB_OK;
out:
    sqlite3_finalize(st);
    return err;
}

static fb_err sq_trip_clear(fb_store *s, const char *scope)
{
    int n = 0;
    fb_err err = exec_scope(s, "DELETE FROM trips WHERE scope=?", scope, &n);
    return err != FB_OK ? err : n > 0 ? FB_OK : FB_ENOTFOUND;
}

static fb_err sq_trips(fb_store *s,
                      int (*fn)(void *arg, const char *scope,
                                const char *reason, int64_t ts_ms),
                      void *arg)
{
    sqlite3_stmt *st = NULL;
    fb_err err = FB_EIO;
    int rc;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT scope, reason, ts_ms FROM trips ORDER BY scope",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        if (fn(arg, (const char *)sqlite3_column_text(st, 0),
               (const char *)sqlite3_column_text(st, 1),
               sqlite3_column_int64(st, 2)) != 0)
            break;
    err = rc == SQLITE_ROW || rc == SQLITE_DONE ? FB_OK : sqlite_err(rc);
out:
    sqlite3_finalize(st);
    return err;
}

/* ---- runs (fusebox run) ---- */

static fb_err sq_run_begin(fb_store *s, const char *scope,
                          const uint8_t identity[32], int64_t now_ms,
                          int max_runs, fb_run_refusal *refused,
                          int64_t *run_id, int64_t *attempts_before)
{
    sqlite3_stmt *st = NULL;
    fb_err err = FB_EIO;
    int64_t day = now_ms - now_ms % 86400000, runs = 0;
    *refused = FB_RUN_OK;
    *run_id = 0;
    *attempts_before = 0;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT COUNT(CASE WHEN outcome<>'refused' THEN 1 END),"
                           " COALESCE(SUM(attempts),0),"
                           /* a failed preflight does not count: preflights
                            * cost nothing and run again first */
                           " COUNT(CASE WHEN outcome='deterministic' AND"
                           " identity=?3 AND cleared=0 THEN 1 END)"
                           " FROM runs WHERE scope=?1 AND started_ms>=?2",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, scope, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, day);
    sqlite3_bind_blob(st, 3, identity, 32, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW)
        goto out;
    runs = sqlite3_column_int64(st, 0);
    *attempts_before = sqlite3_column_int64(st, 1);
    if (sqlite3_column_int64(st, 2) > 0)
        *refused = FB_RUN_FAILED_TODAY;
    else if (max_runs > 0 && runs >= max_runs)
        *refused = FB_RUN_TOO_MANY;
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(s->db,
                           "INSERT INTO runs(scope,identity,started_ms,outcome)"
                           " VALUES(?,?,?,?)",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, scope, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, identity, 32, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now_ms);
    sqlite3_bind_text(st, 4, *refused ? "refused" : "running", -1,
                      SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        goto out;
    *run_id = sqlite3_last_insert_rowid(s->db);
    err = FB_OK;
out:
    sqlite3_finalize(st);
    return err;
}

static fb_err sq_run_end(fb_store *s, int64_t run_id, const char *outcome,
                        int exit_code, int attempts, int64_t now_ms)
{
    sqlite3_stmt *st = NULL;
    fb_err err = FB_EIO;
    if (sqlite3_prepare_v2(s->db,
                           "UPDATE runs SET outcome=?, exit_code=?, attempts=?,"
                           " ended_ms=? WHERE id=?",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, outcome, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, exit_code);
    sqlite3_bind_int(st, 3, attempts);
    sqlite3_bind_int64(st, 4, now_ms);
    sqlite3_bind_int64(st, 5, run_id);
    err = sqlite3_step(st) == SQLITE_DONE ? FB_OK : FB_EIO;
out:
    sqlite3_finalize(st);
    return err;
}

static fb_err sq_runs_clear(fb_store *s, const char *scope)
{
    int n = 0;
    return exec_scope(s, "UPDATE runs SET cleared=1 WHERE scope=?", scope, &n);
}

static fb_err sq_breakdown(fb_store *s, const fb_spend_filter *f,
                          int (*fn)(void *arg, const char *provider,
                                    const char *model, const char *path,
                                    int64_t calls, fb_money reserved,
                                    fb_money cost),
                          void *arg)
{
    sqlite3_stmt *st = NULL;
    fb_err err = FB_EIO;
    int rc;
    if (sqlite3_prepare_v2(
            s->db,
            "SELECT provider, COALESCE(model,''), COALESCE(path,''), COUNT(*),"
            " SUM(reserved), SUM(cost) FROM ledger WHERE ts_ms>=?1 AND"
            " (?2=0 OR ts_ms<?2) AND (?3 IS NULL OR tenant=?3) AND"
            " (?4 IS NULL OR job=?4) AND state IN (0,1)"
            " GROUP BY 1,2,3 ORDER BY 1,2,3",
            -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_int64(st, 1, f->since_ms);
    sqlite3_bind_int64(st, 2, f->until_ms);
    bind_opt(st, 3, f->tenant);
    bind_opt(st, 4, f->job);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        if (fn(arg, (const char *)sqlite3_column_text(st, 0),
               (const char *)sqlite3_column_text(st, 1),
               (const char *)sqlite3_column_text(st, 2),
               sqlite3_column_int64(st, 3), sqlite3_column_int64(st, 4),
               sqlite3_column_int64(st, 5)) != 0)
            break;
    err = rc == SQLITE_ROW || rc == SQLITE_DONE ? FB_OK : sqlite_err(rc);
out:
    sqlite3_finalize(st);
    return err;
}

/* ---- reports ---- */

static fb_err sq_report(fb_store *s, fb_report_by by, const fb_spend_filter *f,
                       int (*fn)(void *arg, const fb_report_row *r),
                       void *arg)
{
    /* The group, over the rollup's columns and over the ledger's. */
    static const char *const grp[][2] = {
        [FB_BY_TENANT] = {"tenant", "tenant"},
        [FB_BY_JOB] = {"tenant||'/'||job", "tenant||'/'||job"},
        [FB_BY_MODEL] = {"model", "COALESCE(model,'')"},
        [FB_BY_KEY] = {"key_id", "key_id"},
        [FB_BY_HOUR] = {"hour_ms", "ts_ms-ts_ms%3600000"},
        [FB_BY_DAY] = {"hour_ms-hour_ms%86400000", "ts_ms-ts_ms%86400000"},
        [FB_BY_TENANT_HOUR] = {"tenant||char(31)||hour_ms",
                               "tenant||char(31)||(ts_ms-ts_ms%3600000)"},
    };
    char filt[64], lfilt[64], sql[2048];
    sqlite3_stmt *st = NULL;
    fb_err err = FB_EINVAL;
    int rc;
    if ((unsigned)by > FB_BY_TENANT_HOUR)
        return FB_EINVAL;
    if (roll_sync(s) != FB_OK)
        return FB_EIO;
    spend_filter(f, 0, filt, sizeof filt);
    spend_filter(f, 1, lfilt, sizeof lfilt);
    int n = snprintf(
        sql, sizeof sql,
        "SELECT g, SUM(c), SUM(p), SUM(b), SUM(r), SUM(cost), SUM(fl),"
        " SUM(sv) FROM ("
        "SELECT %s AS g, calls AS c, paid AS p, blocked AS b, replayed AS r,"
        " cost, 0 AS fl, saved AS sv FROM spend_rollup"
        " WHERE hour_ms>=?3 AND hour_ms<?4%s"
        " UNION ALL SELECT %s, 1, state=1 AND cost>0, state=2, state=3,"
        " cost, 0, CASE state WHEN 3 THEN saved ELSE 0 END FROM ledger"
        " WHERE state<>0 AND"
        " ((ts_ms>=?1 AND ts_ms<?3) OR (ts_ms>=?4 AND ts_ms<?2))%s"
        " UNION ALL SELECT %s, 1, 0, 0, 0, 0, reserved, 0 FROM ledger"
        " WHERE state=0 AND ts_ms>=?1 AND ts_ms<?2%s"
        ") GROUP BY g ORDER BY g",
        grp[by][0], filt, grp[by][1], lfilt, grp[by][1], lfilt);
    if (n < 0 || (size_t)n >= sizeof sql)
        goto out;
    err = FB_EIO;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        goto out;
    bind_spend(st, f);
    int timed = by == FB_BY_HOUR || by == FB_BY_DAY;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        fb_report_row r = {
            .group = (const char *)sqlite3_column_text(st, 0),
            .bucket_ms = timed ? sqlite3_column_int64(st, 0) : 0,
            .calls = sqlite3_column_int64(st, 1),
            .paid_calls = sqlite3_column_int64(st, 2),
            .blocked_calls = sqlite3_column_int64(st, 3),
            .replayed_calls = sqlite3_column_int64(st, 4),
            .cost = sqlite3_column_int64(st, 5),
            .in_flight = sqlite3_column_int64(st, 6),
            .saved = sqlite3_column_int64(st, 7)};
        if (r.group == NULL)
            r.group = "";
        char tenant[FB_NAME_MAX];
        const char *sep = by == FB_BY_TENANT_HOUR ? strchr(r.group, 31) : NULL;
        if (sep != NULL && (size_t)(sep - r.group) < sizeof tenant) {
            memcpy(tenant, r.group, (size_t)(sep - r.group));
            tenant[sep - r.group] = '\0';
            r.bucket_ms = strtoll(sep + 1, NULL, 10);
            r.group = tenant;
        }
        if (fn(arg, &r) != 0)
            break;
    }
    err = rc == SQLITE_ROW || rc == SQLITE_DONE ? FB_OK : sqlite_err(rc);
out:
    sqlite3_finalize(st);
    return err;
}

/* ---- the dashboard ---- */

static fb_err sq_blocked_recent(fb_store *s, int limit,
                               int (*fn)(void *arg, const fb_blocked_row *r),
                               void *arg)
{
    sqlite3_stmt *st = NULL;
    fb_err err = FB_EIO;
    int rc;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT id, ts_ms, tenant, job, key_id,"
                           " COALESCE(model,''), COALESCE(outcome,''), status"
                           " FROM ledger WHERE state=2 ORDER BY id DESC"
                           " LIMIT ?",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_int(st, 1, limit);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        fb_blocked_row r = {
            .id = sqlite3_column_int64(st, 0),
            .ts_ms = sqlite3_column_int64(st, 1),
            .tenant = (const char *)sqlite3_column_text(st, 2),
            .job = (const char *)sqlite3_column_text(st, 3),
            .key_id = (const char *)sqlite3_column_text(st, 4),
            .model = (const char *)sqlite3_column_text(st, 5),
            .outcome = (const char *)sqlite3_column_text(st, 6),
            .status = sqlite3_column_int(st, 7)};
        if (fn(arg, &r) != 0)
            break;
    }
    err = rc == SQLITE_ROW || rc == SQLITE_DONE ? FB_OK : sqlite_err(rc);
out:
    sqlite3_finalize(st);
    return err;
}

static fb_err sq_reruns(fb_store *s, int64_t since_ms,
                       int (*fn)(void *arg, const char *scope, int64_t runs,
                                 const char *last_outcome),
                       void *arg)
{
    sqlite3_stmt *st = NULL;
    fb_err err = FB_EIO;
    int rc;
    /* The bare column takes its value from the MAX() row (SQLite). */
    if (sqlite3_prepare_v2(s->db,
                           "SELECT scope, COUNT(*), outcome, MAX(started_ms)"
                           " FROM runs WHERE started_ms>=? GROUP BY scope"
                           " HAVING COUNT(*)>1 ORDER BY 2 DESC, 1",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_int64(st, 1, since_ms);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        if (fn(arg, (const char *)sqlite3_column_text(st, 0),
               sqlite3_column_int64(st, 1),
               (const char *)sqlite3_column_text(st, 2)) != 0)
            break;
    err = rc == SQLITE_ROW || rc == SQLITE_DONE ? FB_OK : sqlite_err(rc);
out:
    sqlite3_finalize(st);
    return err;
}

/* ---- alerts ---- */

static fb_err sq_alert_add(fb_store *s, const fb_alert_rec *a,
                          const char *const *dests, size_t ndests)
{
    sqlite3_stmt *st = NULL;
    fb_err err = FB_EIO;
    if (fb_store_begin(s) != FB_OK)
        return FB_EIO;
    if (sqlite3_prepare_v2(s->db,
                           "INSERT INTO alerts(dedup,ts_ms,kind,scope,message,"
                           "body) VALUES(?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, a->dedup, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, a->ts_ms);
    sqlite3_bind_text(st, 3, a->kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, a->scope, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, a->message, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, a->body, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE)
        goto out;
    if (sqlite3_changes(s->db) == 0) {
        err = FB_EEXIST; /* raised before */
        goto out;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_prepare_v2(s->db,
                           "INSERT INTO alert_outbox(dedup,dest,next_ms) "
                           "VALUES(?,?,?)",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    for (size_t i = 0; i < ndests; i++) {
        sqlite3_reset(st);
        sqlite3_bind_text(st, 1, a->dedup, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, dests[i], -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, a->ts_ms);
        if (sqlite3_step(st) != SQLITE_DONE)
            goto out;
    }
    err = FB_OK;
out:
    sqlite3_finalize(st);
    if (err == FB_OK)
        err = fb_store_commit(s);
    if (err != FB_OK)
        fb_store_rollback(s);
    return err == FB_OK || err == FB_EEXIST ? err : FB_EIO;
}

static fb_err sq_outbox_due(fb_store *s, int64_t now_ms, int limit,
                           int (*fn)(void *arg, const fb_outbox_row *r),
                           void *arg)
{
    sqlite3_stmt *st = NULL;
    fb_err err = FB_EIO;
    int rc;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT o.id, o.dedup, o.dest, o.attempts, a.kind,"
                           " a.scope, a.message, a.body FROM alert_outbox o"
                           " JOIN alerts a ON a.dedup=o.dedup WHERE"
                           " o.state=0 AND o.next_ms<=? ORDER BY o.next_ms,"
                           " o.id LIMIT ?",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_int64(st, 1, now_ms);
    sqlite3_bind_int(st, 2, limit);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        fb_outbox_row r = {.id = sqlite3_column_int64(st, 0),
                           .dedup = (const char *)sqlite3_column_text(st, 1),
                           .dest = (const char *)sqlite3_column_text(st, 2),
                           .attempts = sqlite3_column_int(st, 3),
                           .kind = (const char *)sqlite3_column_text(st, 4),
                           .scope = (const char *)sqlite3_column_text(st, 5),
                           .message = (const char *)sqlite3_column_text(st, 6),
                           .body = (const char *)sqlite3_column_text(st, 7)};
        if (fn(arg, &r) != 0)
            break;
    }
    err = rc == SQLITE_ROW || rc == SQLITE_DONE ? FB_OK : sqlite_err(rc);
out:
    sqlite3_finalize(st);
    return err;
}

static fb_err sq_outbox_update(fb_store *s, int64_t id, int state,
                              int attempts, int64_t next_ms,
                              const char *error)
{
    sqlite3_stmt *st = NULL;
    fb_err err = FB_EIO;
    if (sqlite3_prepare_v2(s->db,
                           "UPDATE alert_outbox SET state=?, attempts=?,"
                           " next_ms=?, last_error=? WHERE id=?",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int(st, 1, state);
        sqlite3_bind_int(st, 2, attempts);
        sqlite3_bind_int64(st, 3, next_ms);
        if (error)
            sqlite3_bind_text(st, 4, error, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 5, id);
        err = sqlite3_step(st) == SQLITE_DONE ? FB_OK : FB_EIO;
    }
    sqlite3_finalize(st);
    return err;
}

static fb_err sq_fp_storms(fb_store *s, int64_t since_ms, int min_count,
                          int (*fn)(void *arg, const char *tenant,
                                    const char *job, const uint8_t fp[32],
                                    int64_t count),
                          void *arg)
{
    sqlite3_stmt *st = NULL;
    fb_err err = FB_EIO;
    int rc;
    /* Bought (forwarded, in flight or settled), not replayed or blocked. */
    if (sqlite3_prepare_v2(s->db,
                           "SELECT tenant, job, fp, COUNT(*) FROM ledger"
                           " WHERE ts_ms>=? AND state IN (0,1) AND fp IS NOT"
                           " NULL GROUP BY 1,2,3 HAVING COUNT(*)>=?",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_int64(st, 1, since_ms);
    sqlite3_bind_int(st, 2, min_count);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (sqlite3_column_bytes(st, 2) != 32)
            continue;
        if (fn(arg, (const char *)sqlite3_column_text(st, 0),
               (const char *)sqlite3_column_text(st, 1),
               sqlite3_column_blob(st, 2), sqlite3_column_int64(st, 3)) != 0)
            break;
    }
    err = rc == SQLITE_ROW || rc == SQLITE_DONE ? FB_OK : sqlite_err(rc);
out:
    sqlite3_finalize(st);
    return err;
}

/* ---- fusebox ledger verify ---- */

/* A PRAGMA integrity_check / quick_check: "ok" alone, or the problems
 * (the first few joined in detail). */
static fb_err verify_pragma(fb_store *s, const char *name, const char *sql,
                            void (*fn)(void *, const char *, fb_verify_level,
                                       int64_t, const char *),
                            void *arg)
{
    sqlite3_stmt *st = NULL;
    char detail[1024] = "";
    size_t used = 0;
    int64_t problems = 0;
    int rc;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        fn(arg, name, FB_VERIFY_FAIL, 1, sqlite3_errmsg(s->db));
        return FB_EIO;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(st, 0);
        if (t != NULL && strcmp(t, "ok") == 0)
            continue;
        problems++;
        if (t != NULL && used + 3 < sizeof detail) {
            int n = snprintf(detail + used, sizeof detail - used, "%s%s",
                             used ? "; " : "", t);
            if (n > 0)
                used += (size_t)n < sizeof detail - used
                            ? (size_t)n
                            : sizeof detail - used - 1;
        }
    }
    if (rc != SQLITE_DONE) {
        fn(arg, name, FB_VERIFY_FAIL, problems + 1, sqlite3_errmsg(s->db));
        sqlite3_finalize(st);
        return FB_EIO;
    }
    sqlite3_finalize(st);
    for (char *p = detail; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' '; /* one line per check in the report */
    fn(arg, name, problems ? FB_VERIFY_FAIL : FB_VERIFY_OK, problems,
       problems ? detail : "ok");
    return FB_OK;
}

static fb_err sq_verify(fb_store *s, int64_t now_ms,
                       void (*fn)(void *arg, const char *check,
                                  fb_verify_level level, int64_t count,
                                  const char *detail),
                       void *arg)
{
    /* Each: a COUNT of rows, how a non-zero count is rated (INFO: always
     * a figure), and what it means. ?1 is now_ms. */
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
         "calls in flight (state 0); charged in full at the next start if "
         "the daemon is not running"},
        {"kept_results", FB_VERIFY_INFO, "SELECT COUNT(*) FROM results",
         "kept results (expired ones not yet purged included)"},
        {"idem_keys", FB_VERIFY_INFO, "SELECT COUNT(*) FROM idem_keys",
         "Idempotency-Key bindings"},
        {"negative_money", FB_VERIFY_FAIL,
         "SELECT (SELECT COUNT(*) FROM ledger WHERE reserved<0 OR cost<0 OR "
         "saved<0) + (SELECT COUNT(*) FROM results WHERE cost<0) + "
         "(SELECT COUNT(*) FROM keys WHERE budget_limit<0)",
         "rows with a negative amount (ledger reserved/cost/saved, result "
         "cost, key budget)"},
        {"money_types", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM ledger WHERE typeof(reserved)<>'integer' OR "
         "typeof(cost)<>'integer' OR typeof(saved)<>'integer'",
         "ledger amounts that are not integer picodollars"},
        {"ledger_state", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM ledger WHERE state NOT IN (0,1,2,3) OR "
         "typeof(state)<>'integer'",
         "ledger rows with an unknown state"},
        {"settled_cost", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM ledger WHERE state=1 AND (cost IS NULL OR "
         "outcome IS NULL OR outcome='')",
         "settled rows without a cost or an outcome"},
        {"unpaid_rows_cost", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM ledger WHERE state IN (2,3) AND cost<>0",
         "blocked or replayed rows that carry a cost"},
        {"ledger_status", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM ledger WHERE status<>0 AND status NOT BETWEEN "
         "100 AND 599",
         "ledger rows with an impossible HTTP status"},
        {"ledger_fp", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM ledger WHERE fp IS NOT NULL AND "
         "(typeof(fp)<>'blob' OR length(fp)<>32)",
         "ledger fingerprints that are not 32 bytes"},
        {"ledger_scope", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM ledger WHERE tenant IS NULL OR tenant='' OR "
         "key_id IS NULL OR key_id='' OR provider IS NULL OR provider=''",
         "ledger rows without a tenant, key or provider"},
        {"results_wellformed", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM results WHERE typeof(fp)<>'blob' OR "
         "length(fp)<>32 OR status NOT BETWEEN 100 AND 599 OR "
         "stream NOT IN (0,1) OR body IS NULL OR headers IS NULL OR "
         "typeof(body) NOT IN ('blob','text') OR "
         "typeof(headers) NOT IN ('blob','text') OR seq<0 OR scope='' OR "
         "expires_ms<created_ms",
         "kept results that are malformed (fingerprint not 32 bytes, status "
         "outside 100-599, body or headers missing)"},
        {"results_empty_body", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM results WHERE length(body)=0 AND status "
         "BETWEEN 200 AND 299",
         "kept 2xx results with an empty body"},
        {"idem_dangling", FB_VERIFY_WARN,
         "SELECT COUNT(*) FROM idem_keys k WHERE k.expires_ms>?1 AND NOT "
         "EXISTS (SELECT 1 FROM results r WHERE r.scope=k.scope AND "
         "r.fp=k.fp AND r.seq=k.seq)",
         "live Idempotency-Keys whose kept result is gone (evicted by "
         "replay.max_bytes or purged); such a key answers 409"},
        {"rollup_consistent", FB_VERIFY_FAIL,
         "WITH l AS (SELECT ts_ms-ts_ms%3600000, tenant, job, key_id,"
         " COALESCE(model,''), COUNT(*), SUM(state=1 AND cost>0),"
         " SUM(state=2), SUM(state=3), SUM(cost),"
         " SUM(CASE state WHEN 3 THEN saved ELSE 0 END) FROM ledger"
         " WHERE state<>0 GROUP BY 1,2,3,4,5),"
         " r AS (SELECT * FROM spend_rollup)"
         " SELECT (SELECT COUNT(*) FROM (SELECT * FROM l EXCEPT SELECT * FROM"
         " r)) + (SELECT COUNT(*) FROM (SELECT * FROM r EXCEPT SELECT * FROM"
         " l))",
         "hours of the spend rollup (reports, dashboard) that disagree with "
         "the ledger rows they count"},
        {"idem_wellformed", FB_VERIFY_FAIL,
         "SELECT COUNT(*) FROM idem_keys WHERE typeof(fp)<>'blob' OR "
         "length(fp)<>32 OR idem='' OR seq<0",
         "Idempotency-Key bindings that are malformed"},
    };
    fb_err err = FB_OK;
    int snapshot = 0;

    if (verify_pragma(s, "integrity_check", "PRAGMA integrity_check(20)", fn,
                      arg) != FB_OK)
        err = FB_EIO;
    if (verify_pragma(s, "quick_check", "PRAGMA quick_check(20)", fn, arg) !=
        FB_OK)
        err = FB_EIO;
    /* One read transaction: the counts agree with one another even while
     * the daemon commits. */
    if (sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK)
        snapshot = 1;
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(s->db, checks[i].sql, -1, &st, NULL) !=
            SQLITE_OK) {
            fn(arg, checks[i].name, FB_VERIFY_FAIL, 1, sqlite3_errmsg(s->db));
            err = FB_EIO;
            continue;
        }
        if (sqlite3_bind_parameter_count(st) >= 1)
            sqlite3_bind_int64(st, 1, now_ms);
        if (sqlite3_step(st) != SQLITE_ROW) {
            fn(arg, checks[i].name, FB_VERIFY_FAIL, 1, sqlite3_errmsg(s->db));
            err = FB_EIO;
        } else {
            int64_t n = sqlite3_column_int64(st, 0);
            fb_verify_level lv = checks[i].bad == FB_VERIFY_INFO ? FB_VERIFY_INFO
                                 : n > 0                         ? checks[i].bad
                                                                 : FB_VERIFY_OK;
            fn(arg, checks[i].name, lv, n, checks[i].what);
        }
        sqlite3_finalize(st);
    }
    if (snapshot)
        sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
    return err;
}

/* ---- one node: nothing to share ---- */

static int sq_shared(fb_store *s)
{
    return 0;
}

static fb_err sq_node_beat(fb_store *s, int64_t node)
{
    return FB_OK;
}

static fb_err sq_node_leave(fb_store *s, int64_t node)
{
    return FB_OK;
}

static fb_err sq_reap(fb_store *s, int64_t *n)
{
    *n = 0;
    return FB_OK;
}

/* The only node holds the whole budget: its own counters are exact. */
static fb_err sq_lease_take(fb_store *s, int64_t node, const char *scope,
                            int64_t window, fb_money limit, fb_money want,
                            fb_money need, fb_money *got, fb_money *taken)
{
    *got = want;
    *taken = 0;
    return FB_OK;
}

static fb_err sq_lease_give(fb_store *s, int64_t node, const char *scope,
                            int64_t window, fb_money amount)
{
    return FB_OK;
}

static fb_err sq_flight_claim(fb_store *s, int64_t node, const char *scope,
                              const uint8_t *fp, int64_t seq)
{
    return FB_OK;
}

/* One node: its own single flight (replay.c) is the only one. */
static fb_err sq_result_claim(fb_store *s, int64_t node, const char *scope,
                              const uint8_t *fp, int64_t seq, int64_t now_ms,
                              fb_result *out)
{
    return sq_result_get(s, scope, fp, seq, now_ms, out);
}

static fb_err sq_flight_release(fb_store *s, int64_t node, const char *scope,
                                const uint8_t *fp, int64_t seq)
{
    return FB_OK;
}

#define FB__PREFIXED(name) sq_##name
static const fb_store_ops sq_ops = {FB_STORE_OPS(FB__OP_INIT).rollback =
                                        sq_rollback,
                                    .close = sq_close};
#undef FB__PREFIXED
