/* store_sqlite.c - the embedded store: one SQLite database in WAL mode
 * under data_dir. Statements are prepared once per handle. Durability:
 * "process" uses synchronous=NORMAL (a commit is a write() into the WAL,
 * which survives kill -9 but not power loss); "full" uses synchronous=FULL
 * (fsync per commit, amortised by the ledger thread's group commit).
 * Commits never checkpoint (wal_autocheckpoint=0): a checkpoint fsyncs,
 * and the commit path must not wait for that. The daemon's maintenance
 * thread checkpoints instead (fb_store_checkpoint); SQLite also
 * checkpoints when the last connection closes. */
#include "store.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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
    ST_SPEND,
    ST_CHANGE_ADD,
    ST_CHANGES,
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
        "status,reserved,cost,state,outcome) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)",
    [ST_ENTRY_SETTLE] = "UPDATE ledger SET status=?,cost=?,state=1,outcome=? "
                        "WHERE id=? AND state=0",
    [ST_SPEND] =
        "SELECT COALESCE(SUM(CASE state WHEN 0 THEN reserved ELSE cost END),0),"
        " COALESCE(SUM(CASE state WHEN 0 THEN reserved ELSE 0 END),0),"
        " COUNT(CASE WHEN state=1 AND cost>0 THEN 1 END),"
        " COUNT(CASE WHEN state=2 THEN 1 END), COUNT(*)"
        " FROM ledger WHERE ts_ms>=?1 AND (?2=0 OR ts_ms<?2)"
        " AND (?3 IS NULL OR tenant=?3) AND (?4 IS NULL OR job=?4)"
        " AND (?5 IS NULL OR key_id=?5)",
    [ST_CHANGE_ADD] = "INSERT INTO changes(kind,subject) VALUES(?,?)",
    [ST_CHANGES] = "SELECT seq,kind,subject FROM changes WHERE seq>? "
                   "ORDER BY seq",
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

struct fb_store {
    sqlite3 *db;
    sqlite3_stmt *st[ST__COUNT];
};

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

fb_err fb_store_open(const fb_config *c, fb_store **out, char *errbuf,
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
                              ? "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0;"
                              : "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=0;";
    if (sqlite3_exec(s->db, pragmas, NULL, NULL, &msg) != SQLITE_OK)
        goto sqlfail;
    {
        sqlite3_stmt *v = NULL;
        if (sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &v, NULL) !=
            SQLITE_OK)
            goto sqlfail_db;
        if (sqlite3_step(v) == SQLITE_ROW)
            version = sqlite3_column_int(v, 0);
        sqlite3_finalize(v);
    }
    if (version > 1) {
        snprintf(errbuf, errcap,
                 "%s has schema version %d, newer than this fusebox knows (1)",
                 path, version);
        goto out;
    }
    if (version < 1 &&
        sqlite3_exec(s->db, "BEGIN IMMEDIATE;", NULL, NULL, &msg) == SQLITE_OK) {
        if (sqlite3_exec(s->db, schema_v1, NULL, NULL, &msg) != SQLITE_OK ||
            sqlite3_exec(s->db, "COMMIT;", NULL, NULL, &msg) != SQLITE_OK) {
            sqlite3_exec(s->db, "ROLLBACK;", NULL, NULL, NULL);
            goto sqlfail;
        }
    } else if (msg != NULL) {
        goto sqlfail;
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
    fb_store_close(s);
    return err;
}

void fb_store_close(fb_store *s)
{
    if (s == NULL)
        return;
    for (int i = 0; i < ST__COUNT; i++)
        sqlite3_finalize(s->st[i]);
    sqlite3_close(s->db);
    free(s);
}

fb_err fb_store_begin(fb_store *s)
{
    return step_done(stmt(s, ST_BEGIN));
}

fb_err fb_store_commit(fb_store *s)
{
    return step_done(stmt(s, ST_COMMIT));
}

void fb_store_rollback(fb_store *s)
{
    if (!sqlite3_get_autocommit(s->db))
        (void)step_done(stmt(s, ST_ROLLBACK));
}

int fb_store_in_transaction(fb_store *s)
{
    return !sqlite3_get_autocommit(s->db);
}

fb_err fb_store_key_insert(fb_store *s, const fb_key_rec *k)
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

fb_err fb_store_key_by_hash(fb_store *s, const uint8_t hash[32],
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

fb_err fb_store_key_revoke(fb_store *s, const char *id, int64_t now_ms)
{
    sqlite3_stmt *st = stmt(s, ST_KEY_REVOKE);
    sqlite3_bind_int64(st, 1, now_ms);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_STATIC);
    fb_err err = step_done(st);
    if (err == FB_OK && sqlite3_changes(s->db) == 0)
        err = FB_ENOTFOUND;
    return err;
}

fb_err fb_store_key_find(fb_store *s, const char *id_or_prefix,
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

fb_err fb_store_key_list(fb_store *s,
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

fb_err fb_store_entry_insert(fb_store *s, const fb_entry *e)
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
    return step_done(st);
}

fb_err fb_store_entry_settle(fb_store *s, int64_t id, int status,
                             fb_money cost, const char *outcome)
{
    sqlite3_stmt *st = stmt(s, ST_ENTRY_SETTLE);
    sqlite3_bind_int(st, 1, status);
    sqlite3_bind_int64(st, 2, cost);
    sqlite3_bind_text(st, 3, outcome, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, id);
    return step_done(st);
}

fb_err fb_store_recover(fb_store *s, int64_t *n)
{
    char *msg = NULL;
    *n = 0;
    int rc = sqlite3_exec(s->db,
                          "UPDATE ledger SET cost=reserved, state=1,"
                          " outcome='charged_after_crash' WHERE state=0",
                          NULL, NULL, &msg);
    sqlite3_free(msg);
    if (rc != SQLITE_OK)
        return sqlite_err(rc);
    *n = sqlite3_changes(s->db);
    return FB_OK;
}

fb_err fb_store_max_entry_id(fb_store *s, int64_t *out)
{
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

fb_err fb_store_spend(fb_store *s, const fb_spend_filter *f, fb_spend *out)
{
    sqlite3_stmt *st = stmt(s, ST_SPEND);
    fb_err err;
    memset(out, 0, sizeof *out);
    sqlite3_bind_int64(st, 1, f->since_ms);
    sqlite3_bind_int64(st, 2, f->until_ms);
    bind_opt(st, 3, f->tenant);
    bind_opt(st, 4, f->job);
    bind_opt(st, 5, f->key_id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        out->spent = sqlite3_column_int64(st, 0);
        out->reserved = sqlite3_column_int64(st, 1);
        out->paid_calls = sqlite3_column_int64(st, 2);
        out->blocked_calls = sqlite3_column_int64(st, 3);
        out->calls = sqlite3_column_int64(st, 4);
        err = FB_OK;
    } else {
        err = sqlite_err(rc == SQLITE_DONE ? SQLITE_ERROR : rc);
    }
    sqlite3_reset(st);
    return err;
}

fb_err fb_store_scopes(fb_store *s,
                       int (*fn)(void *arg, const char *tenant,
                                 const char *job),
                       void *arg)
{
    sqlite3_stmt *st = NULL;
    fb_err err = FB_EIO;
    int rc;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT DISTINCT tenant, job FROM ledger "
                           "ORDER BY tenant, job",
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

/* Past this many WAL frames (16 MiB of 4 KiB pages), restart the log. */
#define WAL_RESTART_FRAMES 4096

fb_err fb_store_checkpoint(fb_store *s)
{
    int log = 0, done = 0;
    /* This handle only checkpoints: never wait for locks (a TRUNCATE
     * pass holds writers back while it waits for readers). */
    sqlite3_busy_timeout(s->db, 0);
    /* PASSIVE copies what it can without taking the writer's lock. Under a
     * steady stream of commits it never catches up with the end of the
     * log, so the log is never reused; once it is long, a TRUNCATE pass
     * holds writers back for the short rest of the copy and resets it. */
    int rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_PASSIVE,
                                       &log, &done);
    if (rc == SQLITE_OK && log > WAL_RESTART_FRAMES)
        rc = sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE,
                                       NULL, NULL);
    return rc == SQLITE_BUSY ? FB_OK : sqlite_err(rc);
}

fb_err fb_store_change_add(fb_store *s, const char *kind, const char *subject)
{
    sqlite3_stmt *st = stmt(s, ST_CHANGE_ADD);
    sqlite3_bind_text(st, 1, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, subject, -1, SQLITE_STATIC);
    return step_done(st);
}

fb_err fb_store_changes(fb_store *s, int64_t after,
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

fb_err fb_store_last_change(fb_store *s, int64_t *seq)
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
