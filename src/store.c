/* store.c - the store's one interface (store.h) over its two backends:
 * SQLite under data_dir, the embedded default (store_sqlite.c), and a
 * PostgreSQL server that several nodes share (store_pg.c). Also what the
 * backends share: the spend rollup's deltas and trip_apply, which is
 * made of other calls. */
#include "store_int.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define OPS(s) (*(const fb_store_ops *const *)(const void *)(s))

#define FB__WRAP(ret, name, params, args)                                      \
    ret fb_store_##name params { return OPS(s)->name args; }
FB_STORE_OPS(FB__WRAP)
#undef FB__WRAP

/* The PostgreSQL URL this config names (FUSEBOX_STORE first), or NULL
 * for SQLite; *bad when FUSEBOX_STORE is neither. */
static const char *store_url(const fb_config *c, int *bad)
{
    const char *url = getenv("FUSEBOX_STORE");
    *bad = 0;
    if (url == NULL || url[0] == '\0')
        url = c->store_url;
    if (url == NULL || strcmp(url, "sqlite") == 0)
        return NULL;
    *bad = !fb_store_url_ok(url, strlen(url));
    return url;
}

static fb_err bad_url(char *errbuf, size_t errcap)
{
    snprintf(errbuf, errcap,
             "FUSEBOX_STORE: expected sqlite or a postgres:// URL (not "
             "echoed: it may hold a password)");
    return FB_EINVAL;
}

fb_err fb_store_open(const fb_config *c, fb_store **out, char *errbuf,
                     size_t errcap)
{
    int bad;
    const char *url = store_url(c, &bad);
    *out = NULL;
    if (bad)
        return bad_url(errbuf, errcap);
    if (url == NULL)
        return fb__sqlite_open(c, out, errbuf, errcap);
    return fb__pg_open(c, url, 0, NULL, out, errbuf, errcap);
}

fb_err fb_store_open_local(const fb_config *c, fb_store **out, char *errbuf,
                           size_t errcap)
{
    return fb__sqlite_open(c, out, errbuf, errcap);
}

int fb_store_embedded(const fb_config *c)
{
    int bad;
    return store_url(c, &bad) == NULL;
}

fb_err fb_store_migrate(const fb_config *c, const char **kind, int *from,
                        int *to, char *errbuf, size_t errcap)
{
    int bad;
    const char *url = store_url(c, &bad);
    fb_store *s = NULL;
    fb_err err;
    *from = *to = -1;
    if (bad)
        return bad_url(errbuf, errcap);
    *kind = url ? "postgresql" : "sqlite";
    if (url == NULL) /* SQLite migrates as it opens */
        err = fb__sqlite_open(c, &s, errbuf, errcap);
    else
        err = fb__pg_open(c, url, 1, from, &s, errbuf, errcap);
    if (err == FB_OK)
        *to = url ? fb__pg_schema_version() : fb__sqlite_schema_version();
    fb_store_close(s);
    return err;
}

void fb_store_close(fb_store *s)
{
    if (s != NULL)
        OPS(s)->close(s);
}

void fb_store_rollback(fb_store *s)
{
    OPS(s)->rollback(s);
}

fb_err fb_store_trip_apply(fb_store *s, const char *scope, int set,
                           const char *reason, int64_t now_ms)
{
    char subject[512];
    fb_err err;
    if (set)
        snprintf(subject, sizeof subject, "%s\t%s", scope, reason);
    else
        snprintf(subject, sizeof subject, "%s", scope);
    if ((err = fb_store_begin(s)) != FB_OK)
        return err;
    if (set) {
        err = fb_store_trip_set(s, scope, reason, now_ms);
    } else {
        err = fb_store_trip_clear(s, scope);
        if (err == FB_ENOTFOUND)
            err = FB_OK;
        if (err == FB_OK)
            err = fb_store_runs_clear(s, scope);
    }
    if (err == FB_OK)
        err = fb_store_change_add(s, set ? "trip" : "reset", subject);
    if (err == FB_OK)
        err = fb_store_commit(s);
    if (err != FB_OK)
        fb_store_rollback(s);
    return err;
}

fb_err fb_store_scope_spend(fb_store *s, const char *scope, int64_t since_ms,
                            fb_spend *out)
{
    fb_spend_filter f = {.since_ms = since_ms};
    char buf[2 * FB_NAME_MAX + 16];
    if (fb_strlcpy(buf, scope, sizeof buf) >= sizeof buf)
        return FB_EINVAL;
    if (strncmp(buf, "tenant:", 7) == 0) {
        f.tenant = buf + 7;
    } else if (strncmp(buf, "job:", 4) == 0) {
        char *slash = strchr(buf + 4, '/');
        if (slash == NULL)
            return FB_EINVAL;
        *slash = '\0';
        f.tenant = buf + 4;
        f.job = slash + 1;
    } else if (strncmp(buf, "key:", 4) == 0) {
        f.key_id = buf + 4;
    } else if (strcmp(buf, "global") != 0) {
        return FB_EINVAL;
    }
    return fb_store_spend(s, &f, out);
}

void fb_result_clear(fb_result *r)
{
    free(r->headers);
    free(r->body);
    r->headers = r->body = NULL;
    r->headers_len = r->body_len = 0;
}

/* ---- the purge epoch ---- */

/* Map data_dir/fusebox.epoch (8 bytes, created if missing). */
static uint64_t *epoch_map(const char *data_dir, int writable)
{
    char path[4096];
    uint64_t *p = NULL;
    struct stat sb;
    int fd = -1;
    if ((size_t)snprintf(path, sizeof path, "%s/fusebox.epoch", data_dir) >=
            sizeof path ||
        (fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0)
        goto out;
    if (fstat(fd, &sb) != 0 ||
        (sb.st_size < 8 && ftruncate(fd, 8) != 0))
        goto out;
    p = mmap(NULL, 8, writable ? PROT_READ | PROT_WRITE : PROT_READ,
             MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        p = NULL;
out:
    if (fd >= 0)
        close(fd);
    return p;
}

const uint64_t *fb_store_epoch_map(const char *data_dir)
{
    return epoch_map(data_dir, 0);
}

fb_err fb_store_epoch_bump(const char *data_dir)
{
    uint64_t *p = epoch_map(data_dir, 1);
    if (p == NULL)
        return FB_EIO;
    __atomic_add_fetch(p, 1, __ATOMIC_SEQ_CST);
    munmap(p, 8);
    return FB_OK;
}

void fb__spend_bounds(const fb_spend_filter *f, int64_t *S, int64_t *U,
                      int64_t *A, int64_t *B)
{
    const int64_t hour = INT64_C(3600000);
    *S = f->since_ms > 0 ? f->since_ms : 0;
    *U = f->until_ms > 0 ? f->until_ms : INT64_MAX;
    *A = (*S % hour) != 0 ? *S - *S % hour + hour : *S;
    *B = *U - *U % hour;
    if (*B <= *A)
        *A = *B = *U;
}

/* ---- the spend rollup's deltas ---- */

void fb__roll_drop(fb__rolls *rl)
{
    for (size_t i = 0; i < rl->npend; i++) {
        fb__roll *r = &rl->pend[i];
        free(r->tenant);
        free(r->job);
        free(r->key_id);
        free(r->model);
    }
    rl->npend = 0;
}

/* The rollup's primary key order. */
static int roll_cmp(const void *a, const void *b)
{
    const fb__roll *x = a, *y = b;
    int c;
    if (x->hour_ms != y->hour_ms)
        return x->hour_ms < y->hour_ms ? -1 : 1;
    if ((c = strcmp(x->tenant, y->tenant)) != 0 ||
        (c = strcmp(x->job, y->job)) != 0 ||
        (c = strcmp(x->key_id, y->key_id)) != 0)
        return c;
    return strcmp(x->model, y->model);
}

fb_err fb__roll_flush(fb__rolls *rl, fb_store *s)
{
    fb_err err = FB_OK;
    /* In key order: nodes sharing a store lock the same rollup rows in
     * the same order, so their batches cannot deadlock on them. */
    if (rl->npend > 1)
        qsort(rl->pend, rl->npend, sizeof rl->pend[0], roll_cmp);
    if (rl->npend > 0)
        err = rl->write(s, rl->pend, rl->npend);
    if (err != FB_OK)
        rl->failed = 1;
    fb__roll_drop(rl);
    return err;
}

static int str_eq(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

fb_err fb__roll_note(fb__rolls *rl, fb_store *s, int64_t ts_ms,
                     const char *tenant, const char *job, const char *key_id,
                     const char *model, int state, fb_money cost,
                     fb_money saved)
{
    int64_t hour = ts_ms - ts_ms % 3600000;
    fb__roll *r = NULL;
    for (size_t i = 0; i < rl->npend && r == NULL; i++) {
        fb__roll *x = &rl->pend[i];
        if (x->hour_ms == hour && str_eq(x->tenant, tenant) &&
            str_eq(x->job, job) && str_eq(x->key_id, key_id) &&
            str_eq(x->model, model))
            r = x;
    }
    if (r == NULL) {
        /* A delta lost (a failed early flush, no memory) would make the
         * rollup undercount for good, and budgets are seeded from it:
         * the whole transaction fails instead (the backend's commit). */
        fb_err err;
        if (rl->npend == FB__ROLL_MAX && (err = fb__roll_flush(rl, s)) != FB_OK)
            return err; /* FB_EBUSY: the batch runs again */
        r = &rl->pend[rl->npend];
        *r = (fb__roll){.hour_ms = hour,
                        .tenant = strdup(tenant ? tenant : ""),
                        .job = strdup(job ? job : ""),
                        .key_id = strdup(key_id ? key_id : ""),
                        .model = strdup(model ? model : "")};
        rl->npend++; /* counted before the check: roll_drop frees it */
        if (!r->tenant || !r->job || !r->key_id || !r->model) {
            rl->failed = 1;
            return FB_ENOMEM;
        }
    }
    r->calls++;
    r->paid += state == FB_ENTRY_SETTLED && cost > 0;
    r->blocked += state == FB_ENTRY_BLOCKED;
    r->replayed += state == FB_ENTRY_REPLAYED;
    r->cost += cost;
    r->saved += state == FB_ENTRY_REPLAYED ? saved : 0; /* as replays save */
    return FB_OK;
}
