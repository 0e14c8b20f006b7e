/* run.c - fusebox run: runs a batch job under the fuse, attempt by attempt.
 *
 *   rerun guard --refused--> 78
 *       |
 *   [attempt n] preflights --fail--> 78 (nothing ran, nothing paid)
 *       |  budget room? --no--> 69
 *       |  mint key (attempt n), run COMMAND with it, revoke the key
 *       |  exit 0 --> 0
 *       |  classify: deterministic --> 65, budget --> 69,
 *       |            transient/unknown --> backoff, next attempt, or 75
 *
 * Notes:
 *  1. Every attempt has its own key, bound to the job and to an attempt
 *     number that keeps counting across invocations of the same day, so
 *     replay answers attempt n with what attempts before it bought.
 *  2. The job never sees a provider key: the variables that the config
 *     names are removed from its environment, and the SDK variables point
 *     at the gateway with the attempt key.
 *  3. Signals (INT, TERM, HUP, QUIT) are passed on to the job; the harness
 *     ends after it. */
#include "run.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "budget.h"
#include "classify.h"
#include "cli.h"
#include "config.h"
#include "keys.h"
#include "store.h"

extern char **environ;

#define MAX_PREFLIGHTS 16
#define TAIL_BYTES 65536

typedef struct attempt_rec {
    int n;            /* attempt number, counted across the day's runs */
    int exit_status;  /* -1 when killed by a signal */
    int term_signal;
    fb_verdict v;
    int64_t ms;
    int64_t backoff_ms; /* waited before it */
    char key_id[FB_KEY_ID_LEN];
} attempt_rec;

typedef struct run_ctx {
    /* options */
    const char *config_path, *job, *tenant, *budget_s, *gateway, *rules;
    const char *preflights[MAX_PREFLIGHTS];
    int npreflights;
    int attempts, serve, staging, json, reruns, max_runs;
    int64_t backoff_base, backoff_cap;
    char **cmd;
    /* state */
    fb_config *c;
    const fb_tenant_conf *tc;
    const fb_job_conf *jc;
    char scope[2 * FB_NAME_MAX + 16];
    fb_store *store;
    fb_rules *rule_set;
    fb_budget_spec run_budget;
    char gw_url[300];
    char self[4096];
    char tmpdir[256];
    pid_t gw_pid, fake_pid;
    attempt_rec rec[64];
    int nrec;
    const char *stopped; /* why it stopped, for the summary */
    const char *failed_preflight;
    int exit_code;
} run_ctx;

static volatile sig_atomic_t got_signal;
static volatile pid_t child_pid; /* also its process group */

/* Pass the signal on to the job's whole process group: a shell script's
 * worker gets it too, not only the shell. */
static void on_signal(int sig)
{
    got_signal = sig;
    if (child_pid > 0)
        kill(-child_pid, sig);
}

int64_t fb_backoff_ms(int64_t base_ms, int64_t cap_ms, int attempt,
                      uint64_t rnd)
{
    int64_t ceiling = base_ms;
    for (int i = 2; i < attempt && ceiling < cap_ms; i++)
        ceiling *= 2;
    if (ceiling > cap_ms)
        ceiling = cap_ms;
    return ceiling <= 0 ? 0 : (int64_t)(rnd % (uint64_t)(ceiling + 1));
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: fusebox run --job NAME [--tenant T] [--budget USD]\n"
            "         [--attempts N] [--preflight CMD]... [--gateway URL | "
            "--serve]\n"
            "         [--staging [--reruns N]] [--max-runs N] [--rules FILE]\n"
            "         [--backoff-base MS] [--backoff-cap MS] [--json]\n"
            "         [--config FILE] -- COMMAND [ARGS...]\n"
            "       fusebox run --http-status\n"
            "exit: 0 ok, 65 deterministic failure, 78 preflight failed or "
            "rerun refused,\n"
            "      75 transient failures used up the attempts, 69 a budget "
            "stopped the job\n");
}

static void print_http_status(void)
{
    printf("exit  meaning                                      HTTP status\n"
           " 0    success                                      200\n"
           "65    deterministic failure: do not retry          422\n"
           "78    preflight failed or rerun refused: fix first 422\n"
           "69    a budget or retry budget stopped the job     402\n"
           "75    transient failures used up the attempts      503\n"
           "128+N interrupted by signal N                     503\n");
}

static int http_status_of(int code)
{
    switch (code) {
    case FB_EXIT_OK: return 200;
    case FB_EXIT_BUDGET: return 402;
    case FB_EXIT_TEMPFAIL: return 503;
    case FB_EXIT_DETERMINISTIC:
    case FB_EXIT_CONFIG: return 422;
    default: return 503; /* interrupted (128+N) or broken: try later */
    }
}

/* ---- child processes ---- */

/* Wait for pid; the status, retrying after signals. */
static int wait_child(pid_t pid, int *status)
{
    for (;;) {
        pid_t r = waitpid(pid, status, 0);
        if (r == pid)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

/* Start a helper (our own binary: serve, fake-provider) and read the
 * "... listening on HOST:PORT" line it prints when ready. Its stderr goes
 * to log (a file). */
static pid_t start_helper(run_ctx *x, char *const argv[], const char *log,
                          char *addr, size_t cap)
{
    int out[2];
    pid_t pid;
    if (pipe(out) != 0)
        return -1;
    pid = fork();
    if (pid < 0) {
        close(out[0]);
        close(out[1]);
        return -1;
    }
    if (pid == 0) {
        /* Its own group: a signal for our group (a service stop) must not
         * reach the gateway before the job is done with it. */
        setpgid(0, 0);
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        dup2(out[1], 1);
        if (fd >= 0)
            dup2(fd, 2);
        close(out[0]);
        execv(x->self, argv);
        _exit(127);
    }
    close(out[1]);
    char buf[512];
    size_t len = 0;
    int64_t deadline = fb_mono_ns() + INT64_C(15000000000);
    addr[0] = '\0';
    while (len < sizeof buf - 1 && fb_mono_ns() < deadline) {
        struct pollfd p = {out[0], POLLIN, 0};
        int r = poll(&p, 1, 100);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            continue;
        ssize_t n = read(out[0], buf + len, sizeof buf - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = '\0';
        char *nl = strchr(buf, '\n');
        const char *at = strstr(buf, "listening on ");
        if (nl && at) {
            at += 13;
            snprintf(addr, cap, "%.*s", (int)(nl - at), at);
            break;
        }
    }
    close(out[0]);
    if (addr[0] == '\0') {
        kill(pid, SIGKILL);
        int st;
        wait_child(pid, &st);
        return -1;
    }
    return pid;
}

static void stop_helper(pid_t *pid)
{
    int st;
    if (*pid <= 0)
        return;
    kill(*pid, SIGTERM);
    wait_child(*pid, &st);
    *pid = 0;
}

/* The job's environment: ours, minus every provider key the config names
 * (the job must go through the fuse), plus the gateway's. */
static char **job_env(run_ctx *x, const char *key, int attempt)
{
    size_t n = 0, k = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 16, sizeof *env);
    if (env == NULL)
        return NULL;
    static const char *const ours[] = {
        "OPENAI_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_BASE_URL",
        "ANTHROPIC_API_KEY", "FUSEBOX_URL", "FUSEBOX_KEY", "FUSEBOX_JOB",
        "FUSEBOX_ATTEMPT"};
    for (size_t i = 0; i < n; i++) {
        const char *e = environ[i];
        size_t nl = strcspn(e, "=");
        int drop = 0;
        for (size_t j = 0; j < FB_ARRAY_LEN(ours) && !drop; j++)
            drop = strlen(ours[j]) == nl && strncmp(e, ours[j], nl) == 0;
        for (size_t j = 0; j < x->c->nproviders && !drop; j++) {
            const char *ke = x->c->providers[j].api_key_env;
            drop = ke && strlen(ke) == nl && strncmp(e, ke, nl) == 0;
        }
        if (!drop)
            env[k++] = strdup(e);
    }
    char buf[1024];
    const char *openai = NULL, *anthropic = NULL;
    for (size_t j = 0; j < x->c->nproviders; j++) {
        const fb_provider_conf *p = &x->c->providers[j];
        if (p->kind == FB_PROVIDER_OPENAI &&
            (openai == NULL || strcmp(p->name, "openai") == 0))
            openai = p->name;
        if (p->kind == FB_PROVIDER_ANTHROPIC &&
            (anthropic == NULL || strcmp(p->name, "anthropic") == 0))
            anthropic = p->name;
    }
    if (openai) {
        snprintf(buf, sizeof buf, "OPENAI_BASE_URL=%s/%s/v1", x->gw_url,
                 openai);
        env[k++] = strdup(buf);
        snprintf(buf, sizeof buf, "OPENAI_API_KEY=%s", key);
        env[k++] = strdup(buf);
    }
    if (anthropic) {
        snprintf(buf, sizeof buf, "ANTHROPIC_BASE_URL=%s/%s", x->gw_url,
                 anthropic);
        env[k++] = strdup(buf);
        snprintf(buf, sizeof buf, "ANTHROPIC_API_KEY=%s", key);
        env[k++] = strdup(buf);
    }
    snprintf(buf, sizeof buf, "FUSEBOX_URL=%s", x->gw_url);
    env[k++] = strdup(buf);
    snprintf(buf, sizeof buf, "FUSEBOX_KEY=%s", key);
    env[k++] = strdup(buf);
    snprintf(buf, sizeof buf, "FUSEBOX_JOB=%s", x->job);
    env[k++] = strdup(buf);
    snprintf(buf, sizeof buf, "FUSEBOX_ATTEMPT=%d", attempt);
    env[k++] = strdup(buf);
    env[k] = NULL;
    for (size_t i = 0; i < k; i++)
        if (env[i] == NULL)
            FB_ASSERT(!"out of memory building the job's environment");
    return env;
}

static void free_env(char **env)
{
    for (size_t i = 0; env && env[i]; i++) {
        explicit_bzero(env[i], strlen(env[i]));
        free(env[i]);
    }
    free(env);
}

/* Run a command with env, stdin and stdout shared; stderr passes through
 * and its last TAIL_BYTES are kept in tail. sh: run argv[0] with /bin/sh. */
static int run_child(char *const *argv, char **env, int sh, char *tail,
                     size_t *tail_len, int *status)
{
    int err[2];
    /* A job run from a terminal keeps it: its group becomes the
     * foreground one (and we take it back after). */
    int tty = isatty(0) && tcgetpgrp(0) == getpgrp();
    if (tty)
        signal(SIGTTOU, SIG_IGN);
    if (pipe(err) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0) {
        close(err[0]);
        close(err[1]);
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        if (tty) /* before exec: a job reading stdin at once must not stop */
            tcsetpgrp(0, getpid());
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        signal(SIGQUIT, SIG_DFL);
        signal(SIGTTOU, SIG_DFL);
        dup2(err[1], 2);
        close(err[0]);
        close(err[1]);
        if (sh) {
            char *shargv[] = {"/bin/sh", "-c", argv[0], NULL};
            execve("/bin/sh", shargv, env);
        } else {
            execvpe(argv[0], argv, env);
        }
        fprintf(stderr, "fusebox run: cannot run %s: %s\n", argv[0],
                strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid); /* also here: no race with the child's own call */
    child_pid = pid;
    if (tty)
        tcsetpgrp(0, pid);
    if (got_signal) /* arrived before the child existed */
        kill(-pid, got_signal);
    close(err[1]);
    fcntl(err[0], F_SETFL, fcntl(err[0], F_GETFL) | O_NONBLOCK);
    size_t len = 0;
    char buf[8192];
    int exited = 0, st = 0;
    size_t after_exit = 0;
    for (;;) {
        /* Until the job's main process ends; what it left running in the
         * background may hold stderr open, and is not waited for. */
        if (!exited && waitpid(pid, &st, WNOHANG) == pid)
            exited = 1;
        ssize_t n = read(err[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            if (exited)
                break;
            struct pollfd p = {err[0], POLLIN, 0};
            poll(&p, 1, 50);
            continue;
        }
        if (n <= 0)
            break;
        /* Something the job left behind may write forever: bounded. */
        if (exited && (after_exit += (size_t)n) > (1u << 20))
            break;
        ssize_t w = write(2, buf, (size_t)n);
        (void)w;
        if (tail != NULL) {
            /* Keep the last TAIL_BYTES (buf is smaller): what ends a
             * failure tells most. */
            if (len + (size_t)n > TAIL_BYTES) {
                size_t drop = len + (size_t)n - TAIL_BYTES;
                memmove(tail, tail + drop, len - drop);
                len -= drop;
            }
            memcpy(tail + len, buf, (size_t)n);
            len += (size_t)n;
        }
    }
    close(err[0]);
    int rc = 0;
    if (exited)
        *status = st;
    else
        rc = wait_child(pid, status);
    if (tty) {
        tcsetpgrp(0, getpgrp());
        signal(SIGTTOU, SIG_DFL);
        /* At a terminal, ^C and ^\ reach only the job's group: a job
         * killed by them was interrupted, as a shell would see it. */
        if (rc == 0 && WIFSIGNALED(*status) &&
            (WTERMSIG(*status) == SIGINT || WTERMSIG(*status) == SIGQUIT))
            got_signal = WTERMSIG(*status);
    }
    child_pid = 0;
    if (tail_len)
        *tail_len = len;
    return rc;
}

/* ---- keys, budgets, spend ---- */

static fb_err mint_key(run_ctx *x, fb_store *s, int attempt, fb_money limit,
                       int limited, char text[FB_KEY_TEXT_LEN + 1],
                       char id[FB_KEY_ID_LEN])
{
    fb_key_rec k = {0};
    fb_err err;
    fb_strlcpy(k.tenant, x->tc->name, sizeof k.tenant);
    fb_strlcpy(k.job, x->job, sizeof k.job);
    k.attempt = attempt;
    k.created_ms = fb_wall_ms();
    if (limited) {
        k.budget.set = 1;
        k.budget.limit = limit;
        k.budget.period = FB_PERIOD_NONE;
    }
    if ((err = fb_key_generate(text, &k)) != FB_OK)
        return err;
    if ((err = fb_store_begin(s)) == FB_OK &&
        (err = fb_store_key_insert(s, &k)) == FB_OK &&
        (err = fb_store_change_add(s, "key_created", k.id)) == FB_OK)
        err = fb_store_commit(s);
    if (err != FB_OK)
        fb_store_rollback(s);
    memcpy(id, k.id, FB_KEY_ID_LEN);
    return err;
}

static void revoke_key(fb_store *s, const char *id)
{
    if (fb_store_begin(s) == FB_OK && fb_store_key_revoke(s, id, fb_wall_ms()) ==
                                          FB_OK &&
        fb_store_change_add(s, "key_revoked", id) == FB_OK &&
        fb_store_commit(s) == FB_OK)
        return;
    fb_store_rollback(s);
}

/* What this run's attempt keys spent, paid and replayed so far. */
static fb_err run_spend(run_ctx *x, fb_store *s, fb_spend *total)
{
    memset(total, 0, sizeof *total);
    for (int i = 0; i < x->nrec; i++) {
        fb_spend sp;
        fb_spend_filter f = {.key_id = x->rec[i].key_id};
        if (x->rec[i].key_id[0] == '\0')
            continue;
        fb_err err = fb_store_spend(s, &f, &sp);
        if (err != FB_OK)
            return err;
        total->spent += sp.spent;
        total->paid_calls += sp.paid_calls;
        total->blocked_calls += sp.blocked_calls;
        total->replayed_calls += sp.replayed_calls;
        total->saved += sp.saved;
    }
    return FB_OK;
}

/* Is there room for another attempt? Fills why when not. */
static int budget_room(run_ctx *x, fb_money *run_left, int *limited,
                       const char **why)
{
    fb_spend sp;
    *limited = 0;
    if (x->jc != NULL && x->jc->budget.set) {
        fb_spend_filter f = {.tenant = x->tc->name, .job = x->job};
        f.since_ms = fb_period_start(x->jc->budget.period, fb_wall_ms());
        if (fb_store_spend(x->store, &f, &sp) == FB_OK &&
            sp.spent >= x->jc->budget.limit) {
            *why = "the job's budget is spent";
            return 0;
        }
    }
    if (x->run_budget.set) {
        if (run_spend(x, x->store, &sp) != FB_OK)
            return 0;
        *run_left = x->run_budget.limit > sp.spent
                        ? x->run_budget.limit - sp.spent
                        : 0;
        *limited = 1;
        if (*run_left == 0) {
            *why = "the run's --budget is spent";
            return 0;
        }
    }
    return 1;
}

/* A hash of what the job is: its command, its preflights and the files
 * its command names (a script's contents). A deterministic failure blocks
 * reruns until one of these changes (or fusebox reset). */
static void identity(run_ctx *x, uint8_t out[32])
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned int ol = 32;
    char buf[65536];
    FB_ASSERT(c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1);
    for (char **a = x->cmd; *a; a++) {
        EVP_DigestUpdate(c, *a, strlen(*a) + 1);
        struct stat st;
        if (stat(*a, &st) == 0 && S_ISREG(st.st_mode) &&
            st.st_size <= (1 << 20)) {
            int fd = open(*a, O_RDONLY | O_CLOEXEC);
            ssize_t n;
            while (fd >= 0 && (n = read(fd, buf, sizeof buf)) > 0)
                EVP_DigestUpdate(c, buf, (size_t)n);
            if (fd >= 0)
                close(fd);
        }
    }
    EVP_DigestUpdate(c, "\x01", 1);
    for (int i = 0; i < x->npreflights; i++)
        EVP_DigestUpdate(c, x->preflights[i], strlen(x->preflights[i]) + 1);
    EVP_DigestFinal_ex(c, out, &ol);
    EVP_MD_CTX_free(c);
}

/* Sleep ms, or less if a signal comes. Returns 0 if interrupted. */
static int nap(int64_t ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0) {
        if (errno != EINTR || got_signal)
            return 0;
    }
    return !got_signal;
}

/* ---- summary ---- */

static json_t *summary(run_ctx *x, const fb_spend *sp, json_t *staging)
{
    char buf[32];
    json_t *o = json_object(), *arr = json_array();
    for (int i = 0; i < x->nrec; i++) {
        attempt_rec *r = &x->rec[i];
        json_t *a = json_pack("{s:i,s:I,s:I}", "attempt", r->n, "duration_ms",
                              (json_int_t)r->ms, "backoff_ms",
                              (json_int_t)r->backoff_ms);
        if (r->term_signal)
            json_object_set_new(a, "signal", json_integer(r->term_signal));
        else
            json_object_set_new(a, "exit_status",
                                json_integer(r->exit_status));
        if (r->exit_status != 0 || r->term_signal) {
            json_object_set_new(a, "class",
                                json_string(fb_fail_class_name(r->v.cls)));
            json_object_set_new(a, "rule", json_string(r->v.rule));
            json_object_set_new(a, "matched", json_string(r->v.matched));
        }
        json_array_append_new(arr, a);
    }
    json_object_set_new(o, "job", json_string(x->job));
    json_object_set_new(o, "tenant", json_string(x->tc->name));
    json_object_set_new(o, "attempts", arr);
    json_object_set_new(o, "paid_calls", json_integer(sp->paid_calls));
    json_object_set_new(o, "replayed_calls", json_integer(sp->replayed_calls));
    json_object_set_new(o, "blocked_calls", json_integer(sp->blocked_calls));
    fb_money_format(sp->spent, buf, sizeof buf);
    json_object_set_new(o, "spent_usd", json_string(buf));
    json_object_set_new(o, "spent_pico", json_integer(sp->spent));
    fb_money_format(sp->saved, buf, sizeof buf);
    json_object_set_new(o, "saved_usd", json_string(buf));
    json_object_set_new(o, "saved_pico", json_integer(sp->saved));
    json_object_set_new(o, "stopped_because", json_string(x->stopped));
    if (x->failed_preflight)
        json_object_set_new(o, "failed_preflight",
                            json_string(x->failed_preflight));
    json_object_set_new(o, "exit_code", json_integer(x->exit_code));
    json_object_set_new(o, "http_status",
                        json_integer(http_status_of(x->exit_code)));
    if (staging)
        json_object_set_new(o, "staging", staging);
    return o;
}

static void print_summary(json_t *o)
{
    size_t i;
    json_t *a;
    fprintf(stderr, "\nfusebox run: job %s/%s: %s (exit %lld)\n",
            json_string_value(json_object_get(o, "tenant")),
            json_string_value(json_object_get(o, "job")),
            json_string_value(json_object_get(o, "stopped_because")),
            (long long)json_integer_value(json_object_get(o, "exit_code")));
    json_array_foreach(json_object_get(o, "attempts"), i, a)
    {
        json_t *cls = json_object_get(a, "class");
        json_t *sig = json_object_get(a, "signal");
        fprintf(stderr, "  attempt %lld: %s %lld",
                (long long)json_integer_value(json_object_get(a, "attempt")),
                sig ? "signal" : "exit",
                (long long)json_integer_value(
                    sig ? sig : json_object_get(a, "exit_status")));
        if (cls)
            fprintf(stderr, ", %s (rule %s: \"%s\")", json_string_value(cls),
                    json_string_value(json_object_get(a, "rule")),
                    json_string_value(json_object_get(a, "matched")));
        long long back =
            (long long)json_integer_value(json_object_get(a, "backoff_ms"));
        if (back)
            fprintf(stderr, " after a %lld ms backoff", back);
        fprintf(stderr, "\n");
    }
    fprintf(stderr,
            "  paid calls %lld, replayed %lld, blocked %lld; spent $%s, "
            "saved $%s by replay\n",
            (long long)json_integer_value(json_object_get(o, "paid_calls")),
            (long long)json_integer_value(json_object_get(o, "replayed_calls")),
            (long long)json_integer_value(json_object_get(o, "blocked_calls")),
            json_string_value(json_object_get(o, "spent_usd")),
            json_string_value(json_object_get(o, "saved_usd")));
    json_t *st = json_object_get(o, "staging");
    if (st) {
        fprintf(stderr, "  staging: nothing was paid; projected bill per run "
                        "(worst case, real prices):\n");
        json_array_foreach(json_object_get(st, "calls"), i, a)
        {
            fprintf(stderr, "    %-10s %-28s %-24s %5lld calls  $%s\n",
                    json_string_value(json_object_get(a, "provider")),
                    json_string_value(json_object_get(a, "model")),
                    json_string_value(json_object_get(a, "path")),
                    (long long)json_integer_value(json_object_get(a, "calls")),
                    json_string_value(
                        json_object_get(a, "projected_usd")));
        }
        fprintf(stderr,
                "    per run $%s; %lld reruns without replay $%s, with "
                "replay $%s\n",
                json_string_value(json_object_get(st, "projected_usd")),
                (long long)json_integer_value(json_object_get(st, "reruns")),
                json_string_value(
                    json_object_get(st, "reruns_without_replay_usd")),
                json_string_value(json_object_get(st, "projected_usd")));
    }
}

static int breakdown_row(void *arg, const char *provider, const char *model,
                         const char *path, int64_t calls, fb_money reserved,
                         fb_money cost)
{
    json_t *arr = arg;
    char buf[32];
    (void)cost;
    fb_money_format(reserved, buf, sizeof buf);
    json_array_append_new(arr, json_pack("{s:s,s:s,s:s,s:I,s:s,s:I}",
                                         "provider", provider, "model", model,
                                         "path", path, "calls",
                                         (json_int_t)calls, "projected_usd",
                                         buf, "projected_pico",
                                         (json_int_t)reserved));
    return 0;
}

/* The projected bill of a staging run, from its scratch store. */
static json_t *staging_report(run_ctx *x, fb_store *s)
{
    json_t *o = json_object(), *calls = json_array();
    fb_spend_filter f = {.tenant = x->tc->name, .job = x->job};
    fb_money total = 0, reruns;
    char buf[32];
    size_t i;
    json_t *a;
    if (fb_store_breakdown(s, &f, breakdown_row, calls) != FB_OK) {
        json_decref(calls);
        json_decref(o);
        return NULL;
    }
    json_array_foreach(calls, i, a)
    {
        if (fb_money_add(total,
                         json_integer_value(json_object_get(a, "projected_pico")),
                         &total) != FB_OK)
            total = FB_MONEY_MAX;
    }
    if (fb_money_mul(total, x->reruns, &reruns) != FB_OK)
        reruns = FB_MONEY_MAX;
    json_object_set_new(o, "calls", calls);
    fb_money_format(total, buf, sizeof buf);
    json_object_set_new(o, "projected_usd", json_string(buf));
    json_object_set_new(o, "projected_pico", json_integer(total));
    json_object_set_new(o, "reruns", json_integer(x->reruns));
    fb_money_format(reruns, buf, sizeof buf);
    json_object_set_new(o, "reruns_without_replay_usd", json_string(buf));
    return o;
}

/* ---- the run ---- */

static int parse_opts(run_ctx *x, int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"job", required_argument, NULL, 'j'},
        {"tenant", required_argument, NULL, 't'},
        {"budget", required_argument, NULL, 'b'},
        {"attempts", required_argument, NULL, 'a'},
        {"preflight", required_argument, NULL, 'p'},
        {"gateway", required_argument, NULL, 'g'},
        {"serve", no_argument, NULL, 's'},
        {"staging", no_argument, NULL, 'S'},
        {"reruns", required_argument, NULL, 'R'},
        {"max-runs", required_argument, NULL, 'm'},
        {"rules", required_argument, NULL, 'r'},
        {"backoff-base", required_argument, NULL, 'B'},
        {"backoff-cap", required_argument, NULL, 'C'},
        {"json", no_argument, NULL, 'J'},
        {"http-status", no_argument, NULL, 'H'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    int o;
    long long v;
    char *end;
    x->attempts = 3;
    x->reruns = 21;
    x->max_runs = -1;
    x->backoff_base = 1000;
    x->backoff_cap = 30000;
    optind = 1;
    while ((o = getopt_long(argc, argv, "+c:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c': x->config_path = optarg; break;
        case 'j': x->job = optarg; break;
        case 't': x->tenant = optarg; break;
        case 'b': x->budget_s = optarg; break;
        case 'g': x->gateway = optarg; break;
        case 's': x->serve = 1; break;
        case 'S': x->staging = 1; break;
        case 'r': x->rules = optarg; break;
        case 'J': x->json = 1; break;
        case 'H': print_http_status(); return 0;
        case 'h': usage(stdout); return 0;
        case 'p':
            if (x->npreflights == MAX_PREFLIGHTS) {
                fprintf(stderr, "fusebox run: at most %d --preflight\n",
                        MAX_PREFLIGHTS);
                return 2;
            }
            x->preflights[x->npreflights++] = optarg;
            break;
        case 'a':
        case 'R':
        case 'm':
        case 'B':
        case 'C':
            v = strtoll(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || v < 0 || v > 86400000 ||
                ((o == 'a' || o == 'R') && (v < 1 || v > 64))) {
                fprintf(stderr, "fusebox run: bad number '%s'\n", optarg);
                return 2;
            }
            if (o == 'a')
                x->attempts = (int)v;
            else if (o == 'R')
                x->reruns = (int)v;
            else if (o == 'm')
                x->max_runs = (int)v;
            else if (o == 'B')
                x->backoff_base = v;
            else
                x->backoff_cap = v;
            break;
        default: usage(stderr); return 2;
        }
    }
    if (x->job == NULL || optind >= argc) {
        fprintf(stderr, "fusebox run: --job and a command are required\n");
        usage(stderr);
        return 2;
    }
    x->cmd = argv + optind;
    if (x->serve + x->staging + (x->gateway != NULL) > 1) {
        fprintf(stderr, "fusebox run: --gateway, --serve and --staging "
                        "exclude each other\n");
        return 2;
    }
    return -1; /* go on */
}

/* Find the job's tenant and config. */
static int resolve_job(run_ctx *x)
{
    if (x->tenant == NULL) {
        for (size_t i = 0; i < x->c->ntenants; i++) {
            if (fb_config_job(&x->c->tenants[i], x->job) == NULL)
                continue;
            if (x->tc != NULL) {
                fprintf(stderr, "fusebox run: job %s is in several tenants; "
                                "add --tenant\n",
                        x->job);
                return -1;
            }
            x->tc = &x->c->tenants[i];
        }
        if (x->tc == NULL) {
            fprintf(stderr,
                    "fusebox run: job %s is not in %s; add it, or give "
                    "--tenant\n",
                    x->job, x->c->path);
            return -1;
        }
    } else if ((x->tc = fb_config_tenant(x->c, x->tenant)) == NULL) {
        fprintf(stderr, "fusebox run: tenant %s is not in %s\n", x->tenant,
                x->c->path);
        return -1;
    }
    x->jc = fb_config_job(x->tc, x->job);
    snprintf(x->scope, sizeof x->scope, "job:%s/%s", x->tc->name, x->job);
    return 0;
}

/* Start the gateway the job will talk to, when we own it. */
static int start_gateway(run_ctx *x)
{
    char addr[256], log[300], fake_url[300];
    if (!x->serve && !x->staging) {
        if (x->gateway)
            snprintf(x->gw_url, sizeof x->gw_url, "%s", x->gateway);
        else
            snprintf(x->gw_url, sizeof x->gw_url, "http://%s%s%s:%d",
                     strchr(x->c->listen_host, ':') ? "[" : "",
                     x->c->listen_host,
                     strchr(x->c->listen_host, ':') ? "]" : "",
                     x->c->listen_port);
        size_t l = strlen(x->gw_url);
        if (l > 0 && x->gw_url[l - 1] == '/')
            x->gw_url[l - 1] = '\0';
        return 0;
    }
    snprintf(x->tmpdir, sizeof x->tmpdir, "/tmp/fusebox-run.XXXXXX");
    if (mkdtemp(x->tmpdir) == NULL) {
        x->tmpdir[0] = '\0';
        return -1;
    }
    if (x->staging) {
        char *fargv[] = {"fusebox", "fake-provider", "--listen",
                         "127.0.0.1:0", "--any-model", NULL};
        snprintf(log, sizeof log, "%s/fake.log", x->tmpdir);
        x->fake_pid = start_helper(x, fargv, log, addr, sizeof addr);
        if (x->fake_pid <= 0)
            return -1;
        snprintf(fake_url, sizeof fake_url, "http://%s", addr);
        setenv("FUSEBOX_STAGING_OPENAI_KEY", "sk-fake-openai", 1);
        setenv("FUSEBOX_STAGING_ANTHROPIC_KEY", "sk-fake-anthropic", 1);
        setenv("FUSEBOX_STAGING_GENERIC_KEY", "fake-generic-key", 1);
    }
    char data[300];
    snprintf(data, sizeof data, "%s/data", x->tmpdir);
    char *gargv[12];
    int k = 0;
    gargv[k++] = "fusebox";
    gargv[k++] = "serve";
    gargv[k++] = "--config";
    gargv[k++] = (char *)x->c->path;
    gargv[k++] = "--listen";
    gargv[k++] = "127.0.0.1:0";
    if (x->staging) {
        gargv[k++] = "--data-dir";
        gargv[k++] = data;
        gargv[k++] = "--staging-upstream";
        gargv[k++] = fake_url;
    }
    gargv[k] = NULL;
    snprintf(log, sizeof log, "%s/gateway.log", x->tmpdir);
    x->gw_pid = start_helper(x, gargv, log, addr, sizeof addr);
    if (x->gw_pid <= 0) {
        x->exit_code = FB_EXIT_CONFIG; /* retrying the same way cannot help */
        fprintf(stderr, "fusebox run: the gateway did not start (is a "
                        "fusebox serve already using this store? then drop "
                        "--serve); its log:\n");
        FILE *f = fopen(log, "r");
        char line[512];
        while (f && fgets(line, sizeof line, f))
            fprintf(stderr, "  %s", line);
        if (f)
            fclose(f);
        return -1;
    }
    snprintf(x->gw_url, sizeof x->gw_url, "http://%s", addr);
    return 0;
}

static void cleanup(run_ctx *x)
{
    stop_helper(&x->gw_pid);
    stop_helper(&x->fake_pid);
    if (x->tmpdir[0]) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", x->tmpdir);
        int r = system(cmd);
        (void)r;
        x->tmpdir[0] = '\0';
    }
}

/* One attempt: preflights, room, key, the job, its verdict. Returns -1 to
 * go on to the next attempt, else the exit code. */
static int attempt(run_ctx *x, fb_store *keys, int n, int64_t backoff)
{
    attempt_rec *r = &x->rec[x->nrec];
    char tail[TAIL_BYTES], text[FB_KEY_TEXT_LEN + 1];
    size_t tail_len = 0;
    int status = 0;
    fb_money left = 0;
    int limited = 0;
    const char *why = NULL;

    for (int i = 0; i < x->npreflights; i++) {
        char *pargv[] = {(char *)x->preflights[i], NULL};
        char **env = job_env(x, "", n);
        int rc = run_child(pargv, env, 1, NULL, NULL, &status);
        free_env(env);
        if (got_signal) {
            x->stopped = "interrupted";
            return 128 + got_signal;
        }
        if (rc != 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr,
                    "fusebox run: preflight failed: %s (nothing was run, "
                    "nothing was paid)\n",
                    x->preflights[i]);
            x->stopped = "a preflight failed";
            x->failed_preflight = x->preflights[i];
            return FB_EXIT_CONFIG;
        }
    }
    if (!x->staging && !budget_room(x, &left, &limited, &why)) {
        fprintf(stderr, "fusebox run: not starting attempt %d: %s\n", n, why);
        x->stopped = why;
        return FB_EXIT_BUDGET;
    }
    memset(r, 0, sizeof *r);
    r->n = n;
    r->backoff_ms = backoff;
    if (mint_key(x, keys, n, left, limited, text, r->key_id) != FB_OK) {
        fprintf(stderr, "fusebox run: cannot mint an attempt key\n");
        x->stopped = "the store failed";
        return 1;
    }
    x->nrec++;
    char **env = job_env(x, text, n);
    explicit_bzero(text, sizeof text);
    int64_t t0 = fb_mono_ns();
    int rc = run_child(x->cmd, env, 0, tail, &tail_len, &status);
    free_env(env);
    r->ms = (fb_mono_ns() - t0) / 1000000;
    revoke_key(keys, r->key_id);
    if (rc != 0) {
        x->stopped = "the job could not be run";
        return 1;
    }
    if (got_signal) { /* passed on to the job: whatever it did, it was
                         interrupted */
        r->exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        r->term_signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
        r->v.cls = FB_FAIL_UNKNOWN;
        snprintf(r->v.rule, sizeof r->v.rule, "interrupted");
        x->stopped = "interrupted";
        return 128 + got_signal;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        r->exit_status = 0;
        x->stopped = "the job succeeded";
        return FB_EXIT_OK;
    }
    r->exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r->term_signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    fb_classify(x->rule_set, r->exit_status, r->term_signal, tail, tail_len,
                &r->v);
    fprintf(stderr, "fusebox run: attempt %d failed: %s (rule %s)\n", n,
            fb_fail_class_name(r->v.cls), r->v.rule);
    switch (r->v.cls) {
    case FB_FAIL_DETERMINISTIC:
        x->stopped = "a deterministic failure: retrying cannot help";
        return FB_EXIT_DETERMINISTIC;
    case FB_FAIL_BUDGET:
        x->stopped = "a budget or retry budget stopped the job";
        return FB_EXIT_BUDGET;
    default:
        return -1; /* transient, or unknown and bounded by the attempts */
    }
}

int fb_run_main(int argc, char **argv)
{
    run_ctx x = {0};
    int rc = parse_opts(&x, argc, argv);
    fb_store *scratch = NULL;
    json_t *staging = NULL;
    char errbuf[512];
    int64_t run_id = 0, before = 0;
    uint8_t ident[32];
    fb_run_refusal refused = FB_RUN_OK;
    struct sigaction sa = {0};

    if (rc >= 0)
        return rc;
    rc = 1;
    x.stopped = "not started";
    ssize_t sl = readlink("/proc/self/exe", x.self, sizeof x.self - 1);
    if (sl <= 0)
        goto out;
    x.self[sl] = '\0';
    if ((x.c = fb_cli_config(x.config_path)) == NULL)
        goto out;
    if (resolve_job(&x) != 0) {
        rc = 2;
        goto out;
    }
    if (x.budget_s != NULL &&
        (fb_budget_spec_parse(x.budget_s, &x.run_budget) != FB_OK ||
         x.run_budget.period != FB_PERIOD_NONE)) {
        fprintf(stderr, "fusebox run: --budget takes USD (the whole run)\n");
        rc = 2;
        goto out;
    }
    x.rule_set = fb_rules_new();
    if (x.rule_set == NULL)
        goto out;
    if (x.rules &&
        fb_rules_load_file(x.rule_set, x.rules, errbuf, sizeof errbuf) !=
            FB_OK) {
        fprintf(stderr, "fusebox run: %s\n", errbuf);
        rc = 2;
        goto out;
    }
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGQUIT, &sa, NULL);

    if (fb_store_open(x.c, &x.store, errbuf, sizeof errbuf) != FB_OK) {
        fprintf(stderr, "fusebox run: %s\n", errbuf);
        goto out;
    }
    if (!x.staging) {
        int max = x.max_runs >= 0 ? x.max_runs
                  : x.jc          ? x.jc->max_runs_per_day
                                  : 0;
        identity(&x, ident);
        if (fb_store_run_begin(x.store, x.scope, ident, fb_wall_ms(), max,
                               &refused, &run_id, &before) != FB_OK) {
            fprintf(stderr, "fusebox run: cannot write the store\n");
            goto out;
        }
        if (refused != FB_RUN_OK) {
            fprintf(stderr,
                    "fusebox run: not running %s: %s\n", x.scope,
                    refused == FB_RUN_TOO_MANY
                        ? "it already ran max_runs_per_day times today"
                        : "it failed deterministically today and nothing "
                          "changed since (its command, preflights and files "
                          "are the same); fix it, or `fusebox reset --job` "
                          "it");
            x.stopped = "refused by the rerun guard";
            x.exit_code = rc = FB_EXIT_CONFIG;
            goto report;
        }
    }
    if (start_gateway(&x) != 0) {
        x.stopped = "the gateway did not start";
        x.exit_code = rc = FB_EXIT_CONFIG;
        goto report;
    }
    if (x.staging) {
        /* Keys for the scratch store the staging gateway uses. */
        fb_config tmp = *x.c;
        char data[300];
        snprintf(data, sizeof data, "%s/data", x.tmpdir);
        tmp.data_dir = data;
        if (fb_store_open_local(&tmp, &scratch, errbuf, sizeof errbuf) !=
            FB_OK) {
            fprintf(stderr, "fusebox run: %s\n", errbuf);
            goto out;
        }
        x.attempts = 1; /* pricing needs one run */
    }

    rc = -1;
    int64_t backoff = 0;
    for (int a = 1; a <= x.attempts && rc < 0; a++) {
        rc = attempt(&x, x.staging ? scratch : x.store, (int)before + a,
                     backoff);
        if (rc >= 0 || a == x.attempts)
            break;
        uint64_t rnd = 0;
        RAND_bytes((unsigned char *)&rnd, sizeof rnd);
        backoff = fb_backoff_ms(x.backoff_base, x.backoff_cap, a + 1, rnd);
        fprintf(stderr, "fusebox run: retrying in %lld ms\n",
                (long long)backoff);
        if (!nap(backoff)) {
            x.stopped = "interrupted";
            rc = 128 + got_signal;
        }
    }
    if (rc < 0) {
        x.stopped = "transient failures used up the attempts";
        rc = FB_EXIT_TEMPFAIL;
    }
    x.exit_code = rc;

report:
    /* Our gateway flushes its ledger when it stops; then the figures are
     * final. */
    stop_helper(&x.gw_pid);
    if (x.staging && scratch != NULL)
        staging = staging_report(&x, scratch);
    {
        fb_spend sp = {0}, prev;
        fb_store *s = x.staging ? scratch : x.store;
        /* An outside gateway records replays just after answering them:
         * read until two reads agree (bounded). */
        for (int i = 0; s != NULL && i < 20; i++) {
            prev = sp;
            if (run_spend(&x, s, &sp) != FB_OK)
                break;
            if (i > 0 && memcmp(&prev, &sp, sizeof sp) == 0)
                break;
            if (x.gateway == NULL && !x.serve && !x.staging && i > 0)
                break;
            struct timespec ts = {0, 50000000};
            nanosleep(&ts, NULL);
        }
        if (x.staging) /* synthetic answers: nothing was paid */
            memset(&sp, 0, sizeof sp);
        json_t *o = summary(&x, &sp, staging);
        staging = NULL;
        print_summary(o);
        if (x.json) {
            char *t = json_dumps(o, JSON_COMPACT);
            printf("%s\n", t ? t : "{}");
            fflush(stdout);
            free(t);
        }
        json_decref(o);
    }
    if (run_id > 0 && refused == FB_RUN_OK) {
        const char *outcome =
            rc == FB_EXIT_OK              ? "ok"
            : rc == FB_EXIT_DETERMINISTIC ? "deterministic"
            : rc == FB_EXIT_CONFIG        ? "preflight"
            : rc == FB_EXIT_BUDGET        ? "budget"
            : rc == FB_EXIT_TEMPFAIL      ? "transient"
                                          : "interrupted";
        fb_store_run_end(x.store, run_id, outcome, rc, x.nrec, fb_wall_ms());
    } else if (run_id > 0) {
        fb_store_run_end(x.store, run_id, "refused", rc, 0, fb_wall_ms());
    }
out:
    cleanup(&x);
    json_decref(staging);
    fb_store_close(scratch);
    fb_store_close(x.store);
    fb_rules_free(x.rule_set);
    fb_config_free(x.c);
    return rc;
}
