/* config.c - reads fusebox.yaml into an immutable fb_config through
 * libyaml's document API. Each mapping is checked against the keys known
 * at its level, money is parsed from the scalar's own text (never through
 * a double), and every error names the file, the line and the dotted key
 * path, e.g. "fusebox.yaml:12: budgets.global: '5/week' is not ...". */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h>

#define NAME_MAX_LEN 64   /* providers, tenants, jobs */
#define MODEL_MAX_LEN 256 /* model_prices keys */
#define HOST_MAX_LEN 253
#define CONFIG_MAX_BYTES ((size_t)16 << 20)
#define PARSED_NAME "<config>" /* file name for text given to parse */

#define BUDGET_SYNTAX "USD[/hour|day|month]"

typedef struct ctx {
    yaml_document_t *doc;
    const char *file;     /* the name errors start with */
    const char *base_dir; /* relative paths resolve against this */
    unsigned char *seen;  /* per node: reached once already */
    size_t nnodes;
    char *err;
    size_t errcap;
} ctx;

/* ---- errors ---------------------------------------------------------- */

static fb_err fail(ctx *x, const yaml_node_t *at, const char *where,
                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* "file:line: where: message"; the line and where are left out when
 * unknown. Always returns FB_EINVAL so callers can `return fail(...)`. */
static fb_err fail(ctx *x, const yaml_node_t *at, const char *where,
                   const char *fmt, ...)
{
    if (x->errcap == 0)
        return FB_EINVAL;
    int n;
    if (at != NULL)
        n = snprintf(x->err, x->errcap, "%s:%lu: ", x->file,
                     (unsigned long)at->start_mark.line + 1);
    else
        n = snprintf(x->err, x->errcap, "%s: ", x->file);
    if (n < 0 || (size_t)n >= x->errcap)
        return FB_EINVAL;
    if (where != NULL && where[0] != '\0') {
        int m = snprintf(x->err + n, x->errcap - (size_t)n, "%s: ", where);
        if (m < 0 || (size_t)m >= x->errcap - (size_t)n)
            return FB_EINVAL;
        n += m;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->err + n, x->errcap - (size_t)n, fmt, ap);
    va_end(ap);
    return FB_EINVAL;
}

static fb_err nomem(ctx *x)
{
    if (x->errcap > 0)
        snprintf(x->err, x->errcap, "%s: out of memory", x->file);
    return FB_ENOMEM;
}

/* A printable excerpt of a scalar for messages: control bytes become '?'
 * and long values are cut, so a hostile file cannot flood the log. */
static const char *show(const yaml_node_t *n, char *buf, size_t cap)
{
    const char *v = "";
    size_t len = 0, k = 0;
    if (n->type == YAML_SCALAR_NODE) {
        v = (const char *)n->data.scalar.value;
        len = n->data.scalar.length;
    }
    FB_ASSERT(cap >= 8);
    for (size_t i = 0; i < len && k + 4 < cap; i++) {
        unsigned char ch = (unsigned char)v[i];
        buf[k++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    if (k < len) {
        k = k >= 3 ? k - 3 : 0;
        memcpy(buf + k, "...", 3);
        k += 3;
    }
    buf[k] = '\0';
    return buf;
}

static const char *kind_name(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_SCALAR_NODE:
        return "a scalar";
    case YAML_SEQUENCE_NODE:
        return "a sequence";
    case YAML_MAPPING_NODE:
        return "a mapping";
    case YAML_NO_NODE:
        break;
    }
    return "nothing";
}

/* ---- node access ----------------------------------------------------- */

/* The document API resolves an alias to the node it names, so a node met
 * twice is an alias. They are refused: a few nested aliases would let a
 * small file expand into billions of tenants and jobs. */
static fb_err node_at(ctx *x, int idx, const yaml_node_t *from,
                      const char *where, yaml_node_t **out)
{
    yaml_node_t *n = yaml_document_get_node(x->doc, idx);
    FB_ASSERT(n != NULL && (size_t)idx <= x->nnodes);
    if (x->seen[idx - 1])
        return fail(x, from, where, "YAML aliases are not supported");
    x->seen[idx - 1] = 1;
    *out = n;
    return FB_OK;
}

/* An empty value ("key:" or "key: ~") where a mapping or a sequence is
 * expected means an empty one, as for a section commented out. */
static int is_null(const yaml_node_t *n)
{
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};
    if (n->type != YAML_SCALAR_NODE ||
        n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return 0;
    for (size_t i = 0; i < FB_ARRAY_LEN(nulls); i++)
        if (n->data.scalar.length == strlen(nulls[i]) &&
            memcmp(n->data.scalar.value, nulls[i], n->data.scalar.length) == 0)
            return 1;
    return 0;
}

/* The scalar's text, NUL-terminated by libyaml; control bytes (NUL
 * included) are refused so the text is also a safe C string. */
static fb_err scalar(ctx *x, const yaml_node_t *n, const char *where,
                     const char **s, size_t *len)
{
    if (n->type != YAML_SCALAR_NODE)
        return fail(x, n, where, "expected a scalar, got %s", kind_name(n));
    const char *v = (const char *)n->data.scalar.value;
    size_t l = n->data.scalar.length;
    for (size_t i = 0; i < l; i++) {
        unsigned char ch = (unsigned char)v[i];
        if (ch < 0x20 || ch == 0x7f)
            return fail(x, n, where, "control characters are not allowed");
    }
    *s = v;
    *len = l;
    return FB_OK;
}

typedef struct field {
    const char *name;
    yaml_node_t *key;
    yaml_node_t *val;
} field;

/* Match a fixed-key mapping against f[]: unknown and duplicate keys are
 * errors; absent keys leave f[i].val NULL. A null node is empty. */
static fb_err take_fields(ctx *x, yaml_node_t *map, const char *where, field *f,
                          size_t nf)
{
    char buf[80];
    fb_err rc;
    if (is_null(map))
        return FB_OK;
    if (map->type != YAML_MAPPING_NODE)
        return fail(x, map, where, "expected a mapping, got %s",
                    kind_name(map));
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start;
         p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k, *v;
        if ((rc = node_at(x, p->key, map, where, &k)) != FB_OK)
            return rc;
        if (k->type != YAML_SCALAR_NODE)
            return fail(x, k, where, "keys must be scalars, got %s",
                        kind_name(k));
        if ((rc = node_at(x, p->value, k, where, &v)) != FB_OK)
            return rc;
        size_t i;
        for (i = 0; i < nf; i++)
            if (k->data.scalar.length == strlen(f[i].name) &&
                memcmp(k->data.scalar.value, f[i].name,
                       k->data.scalar.length) == 0)
                break;
        if (i == nf)
            return fail(x, k, where, "unknown key '%s'",
                        show(k, buf, sizeof buf));
        if (f[i].val != NULL)
            return fail(x, k, where, "duplicate key '%s'", f[i].name);
        f[i].key = k;
        f[i].val = v;
    }
    return FB_OK;
}

typedef struct entry {
    yaml_node_t *key;
    yaml_node_t *val;
    const char *name; /* the key's text */
    size_t len;
    size_t pos; /* order in the file */
} entry;

static int entry_cmp(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->name, y->name, n);
    if (c != 0)
        return c;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* The pairs of a mapping keyed by names (providers, tenants, ...), in
 * file order, with duplicate keys refused (libyaml keeps both and a
 * later one must not silently replace a budget). Sorting a copy keeps
 * this O(n log n) for configs with many tenants. *out is malloc'd. */
static fb_err take_entries(ctx *x, yaml_node_t *map, const char *where,
                           entry **out, size_t *nout)
{
    char buf[80];
    entry *e = NULL, *sorted = NULL;
    size_t n = 0;
    fb_err rc = FB_OK;

    *out = NULL;
    *nout = 0;
    if (is_null(map))
        goto out;
    if (map->type != YAML_MAPPING_NODE) {
        rc = fail(x, map, where, "expected a mapping, got %s", kind_name(map));
        goto out;
    }
    size_t cap =
        (size_t)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
    if (cap == 0)
        goto out;
    e = calloc(cap, sizeof *e);
    sorted = calloc(cap, sizeof *sorted);
    if (e == NULL || sorted == NULL) {
        rc = nomem(x);
        goto out;
    }
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start;
         p < map->data.mapping.pairs.top; p++) {
        entry *en = &e[n];
        if ((rc = node_at(x, p->key, map, where, &en->key)) != FB_OK)
            goto out;
        if (en->key->type != YAML_SCALAR_NODE) {
            rc = fail(x, en->key, where, "keys must be scalars, got %s",
                      kind_name(en->key));
            goto out;
        }
        if ((rc = node_at(x, p->value, en->key, where, &en->val)) != FB_OK)
            goto out;
        en->name = (const char *)en->key->data.scalar.value;
        en->len = en->key->data.scalar.length;
        en->pos = n++;
    }
    memcpy(sorted, e, n * sizeof *e);
    qsort(sorted, n, sizeof *sorted, entry_cmp);
    for (size_t i = 1; i < n; i++)
        if (sorted[i].len == sorted[i - 1].len &&
            memcmp(sorted[i].name, sorted[i - 1].name, sorted[i].len) == 0) {
            rc = fail(x, sorted[i].key, where, "duplicate key '%s'",
                      show(sorted[i].key, buf, sizeof buf));
            goto out;
        }
    *out = e;
    *nout = n;
    e = NULL;
out:
    free(sorted);
    free(e);
    return rc;
}

/* ---- values ---------------------------------------------------------- */

/* [A-Za-z0-9_.-]{1,max}, but not "." or ".." (path segments). */
static int name_ok(const char *s, size_t len, size_t max)
{
    if (len == 0 || len > max)
        return 0;
    if (s[0] == '.' && (len == 1 || (len == 2 && s[1] == '.')))
        return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' || ch == '-'))
            return 0;
    }
    return 1;
}

static fb_err check_name(ctx *x, const entry *e, const char *where)
{
    char buf[80];
    if (name_ok(e->name, e->len, NAME_MAX_LEN))
        return FB_OK;
    return fail(x, e->key, where,
                "'%s' is not a valid name ([A-Za-z0-9_.-], 1-%d characters)",
                show(e->key, buf, sizeof buf), NAME_MAX_LEN);
}

static fb_err str_value(ctx *x, const yaml_node_t *n, const char *where,
                        char **out)
{
    const char *s;
    size_t len;
    fb_err rc = scalar(x, n, where, &s, &len);
    if (rc != FB_OK)
        return rc;
    if (len == 0)
        return fail(x, n, where, "must not be empty");
    if ((*out = fb_strndup(s, len)) == NULL)
        return nomem(x);
    return FB_OK;
}

static fb_err money_value(ctx *x, const yaml_node_t *n, const char *where,
                          fb_money *out)
{
    char buf[80];
    const char *s;
    size_t len;
    fb_err rc = scalar(x, n, where, &s, &len);
    if (rc != FB_OK)
        return rc;
    rc = fb_money_parse(s, len, out);
    if (rc == FB_EOVERFLOW)
        return fail(x, n, where, "'%s' is too large", show(n, buf, sizeof buf));
    if (rc != FB_OK)
        return fail(x, n, where, "'%s' is not a USD amount",
                    show(n, buf, sizeof buf));
    return FB_OK;
}

static fb_err int_value(ctx *x, const yaml_node_t *n, const char *where,
                        int64_t min, int64_t max, int64_t *out)
{
    char buf[80];
    const char *s;
    size_t len;
    fb_err rc = scalar(x, n, where, &s, &len);
    if (rc != FB_OK)
        return rc;
    int64_t v = 0;
    int ok = len > 0;
    for (size_t i = 0; ok && i < len; i++) {
        if (s[i] < '0' || s[i] > '9' || v > (INT64_MAX - 9) / 10)
            ok = 0;
        else
            v = v * 10 + (s[i] - '0');
    }
    if (!ok || v < min || v > max)
        return fail(x, n, where, "'%s' is not an integer in %lld..%lld",
                    show(n, buf, sizeof buf), (long long)min, (long long)max);
    *out = v;
    return FB_OK;
}

/* Index of the scalar's text in names[], or an error quoting `expect`. */
static fb_err choice(ctx *x, const yaml_node_t *n, const char *where,
                     const char *const *names, size_t nnames,
                     const char *expect, size_t *out)
{
    char buf[80];
    const char *s;
    size_t len;
    fb_err rc = scalar(x, n, where, &s, &len);
    if (rc != FB_OK)
        return rc;
    for (size_t i = 0; i < nnames; i++)
        if (len == strlen(names[i]) && memcmp(s, names[i], len) == 0) {
            *out = i;
            return FB_OK;
        }
    return fail(x, n, where, "'%s' is not %s", show(n, buf, sizeof buf),
                expect);
}

/* ---- budgets --------------------------------------------------------- */

static int is_blank(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* The parser proper; keeps FB_EOVERFLOW apart so messages can say so. */
static fb_err budget_parse(const char *s, size_t len, fb_budget_spec *out)
{
    static const struct {
        const char *name;
        fb_period period;
    } periods[] = {
        {"hour", FB_PERIOD_HOUR},
        {"day", FB_PERIOD_DAY},
        {"month", FB_PERIOD_MONTH},
    };
    const char *end = s + len;
    while (s < end && is_blank(*s))
        s++;
    while (end > s && is_blank(end[-1]))
        end--;
    if (s < end && *s == '$')
        s++;
    const char *slash = memchr(s, '/', (size_t)(end - s));
    const char *amount_end = slash != NULL ? slash : end;
    while (amount_end > s && is_blank(amount_end[-1]))
        amount_end--;
    if (amount_end == s || is_blank(*s))
        return FB_EINVAL;

    fb_period period = FB_PERIOD_NONE;
    if (slash != NULL) {
        const char *p = slash + 1;
        while (p < end && is_blank(*p))
            p++;
        size_t i;
        for (i = 0; i < FB_ARRAY_LEN(periods); i++)
            if (fb_strcaseeq(p, (size_t)(end - p), periods[i].name,
                             strlen(periods[i].name)))
                break;
        if (i == FB_ARRAY_LEN(periods))
            return FB_EINVAL;
        period = periods[i].period;
    }
    fb_money limit;
    fb_err rc = fb_money_parse(s, (size_t)(amount_end - s), &limit);
    if (rc != FB_OK)
        return rc == FB_EOVERFLOW ? FB_EOVERFLOW : FB_EINVAL;
    out->set = 1;
    out->limit = limit;
    out->period = period;
    return FB_OK;
}

fb_err fb_budget_spec_parse(const char *s, fb_budget_spec *out)
{
    fb_budget_spec b;
    if (s == NULL || budget_parse(s, strlen(s), &b) != FB_OK)
        return FB_EINVAL;
    *out = b;
    return FB_OK;
}

size_t fb_budget_spec_format(const fb_budget_spec *b, char *buf, size_t cap)
{
    FB_ASSERT(cap >= 48);
    if (!b->set)
        return fb_strlcpy(buf, "none", cap);
    size_t n = fb_money_format(b->limit, buf, cap);
    const char *suffix = "";
    switch (b->period) {
    case FB_PERIOD_NONE:
        break;
    case FB_PERIOD_HOUR:
        suffix = "/hour";
        break;
    case FB_PERIOD_DAY:
        suffix = "/day";
        break;
    case FB_PERIOD_MONTH:
        suffix = "/month";
        break;
    }
    return n + fb_strlcpy(buf + n, suffix, cap - n);
}

static fb_err budget_value(ctx *x, const yaml_node_t *n, const char *where,
                           fb_budget_spec *out)
{
    char buf[80];
    const char *s;
    size_t len;
    fb_err rc = scalar(x, n, where, &s, &len);
    if (rc != FB_OK)
        return rc;
    rc = budget_parse(s, len, out);
    if (rc == FB_EOVERFLOW)
        return fail(x, n, where, "'%s' is too large", show(n, buf, sizeof buf));
    if (rc != FB_OK)
        return fail(x, n, where, "'%s' is not " BUDGET_SYNTAX,
                    show(n, buf, sizeof buf));
    return FB_OK;
}

/* ---- paths and addresses --------------------------------------------- */

/* base/rel with leading "./" dropped from rel; rel is not absolute. */
static char *path_join(const char *base, const char *rel, size_t rlen)
{
    while (rlen >= 2 && rel[0] == '.' && rel[1] == '/') {
        rel += 2, rlen -= 2;
        while (rlen > 0 && rel[0] == '/')
            rel++, rlen--;
    }
    if (rlen == 1 && rel[0] == '.')
        rlen = 0;
    size_t blen = strlen(base);
    if (rlen == 0)
        return fb_strndup(base, blen);
    int sep = blen > 0 && base[blen - 1] != '/';
    char *p = malloc(blen + (size_t)sep + rlen + 1);
    if (p == NULL)
        return NULL;
    memcpy(p, base, blen);
    if (sep)
        p[blen] = '/';
    memcpy(p + blen + sep, rel, rlen);
    p[blen + sep + rlen] = '\0';
    return p;
}

static fb_err path_value(ctx *x, const yaml_node_t *n, const char *where,
                         char **out)
{
    const char *s;
    size_t len;
    fb_err rc = scalar(x, n, where, &s, &len);
    if (rc != FB_OK)
        return rc;
    if (len == 0)
        return fail(x, n, where, "must not be empty");
    *out = s[0] == '/' ? fb_strndup(s, len) : path_join(x->base_dir, s, len);
    return *out == NULL ? nomem(x) : FB_OK;
}

static int host_ok(const char *s, size_t len)
{
    if (len == 0 || len > HOST_MAX_LEN)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' || ch == '_'))
            return 0;
    }
    return 1;
}

/* "host:port" or "[v6addr]:port"; port 0 (any free port) is allowed. */
static fb_err listen_value(ctx *x, const yaml_node_t *n, const char *where,
                           char **out_host, int *out_port)
{
    char buf[80];
    const char *s, *host, *colon;
    size_t len, hlen;
    fb_err rc;

    if (n->type == YAML_SEQUENCE_NODE)
        return fail(x, n, where,
                    "expected host:port, got a sequence"
                    " (quote IPv6 addresses: \"[::1]:8787\")");
    if ((rc = scalar(x, n, where, &s, &len)) != FB_OK)
        return rc;
    if (len > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (close == NULL || close + 1 == s + len || close[1] != ':')
            return fail(x, n, where, "'%s' is not [address]:port",
                        show(n, buf, sizeof buf));
        host = s + 1;
        hlen = (size_t)(close - host);
        colon = close + 1;
        char addr[INET6_ADDRSTRLEN + 1];
        struct in6_addr a6;
        if (hlen == 0 || hlen >= sizeof addr)
            return fail(x, n, where, "'%s' is not an IPv6 address",
                        show(n, buf, sizeof buf));
        memcpy(addr, host, hlen);
        addr[hlen] = '\0';
        if (inet_pton(AF_INET6, addr, &a6) != 1)
            return fail(x, n, where, "'%s' is not an IPv6 address",
                        show(n, buf, sizeof buf));
    } else {
        colon = memrchr(s, ':', len);
        if (colon == NULL)
            return fail(x, n, where, "'%s' is not host:port",
                        show(n, buf, sizeof buf));
        host = s;
        hlen = (size_t)(colon - s);
        if (memchr(host, ':', hlen) != NULL)
            return fail(x, n, where,
                        "'%s': write IPv6 addresses as [address]:port",
                        show(n, buf, sizeof buf));
        if (!host_ok(host, hlen))
            return fail(x, n, where, "'%s' has no valid host",
                        show(n, buf, sizeof buf));
    }
    const char *port = colon + 1;
    size_t plen = (size_t)(s + len - port);
    long v = 0;
    int ok = plen >= 1 && plen <= 5;
    for (size_t i = 0; ok && i < plen; i++) {
        if (port[i] < '0' || port[i] > '9')
            ok = 0;
        else
            v = v * 10 + (port[i] - '0');
    }
    if (!ok || v > 65535)
        return fail(x, n, where, "'%s' has no port in 0..65535",
                    show(n, buf, sizeof buf));
    char *h = fb_strndup(host, hlen);
    if (h == NULL)
        return nomem(x);
    free(*out_host);
    *out_host = h;
    *out_port = (int)v;
    return FB_OK;
}

static int env_name_ok(const char *s, size_t len);

/* admin: the loopback surface for /metrics and the dashboard. */
static fb_err admin_section(ctx *x, yaml_node_t *n, fb_config *c)
{
    enum { LISTEN, TOKEN, NF };
    field f[NF] = {[LISTEN] = {.name = "listen"},
                   [TOKEN] = {.name = "token_env"}};
    char buf[80];
    const char *s;
    size_t len;
    fb_err rc;
    if (is_null(n))
        return FB_OK;
    if ((rc = take_fields(x, n, "admin", f, NF)) != FB_OK)
        return rc;
    if (f[LISTEN].val != NULL) {
        const yaml_node_t *v = f[LISTEN].val;
        if (v->type == YAML_SCALAR_NODE && v->data.scalar.length == 3 &&
            memcmp(v->data.scalar.value, "off", 3) == 0) {
            free(c->admin_host);
            c->admin_host = NULL;
        } else if ((rc = listen_value(x, v, "admin.listen", &c->admin_host,
                                      &c->admin_port)) != FB_OK) {
            return rc;
        }
    }
    if (f[TOKEN].val != NULL) {
        if ((rc = scalar(x, f[TOKEN].val, "admin.token_env", &s, &len)) !=
            FB_OK)
            return rc;
        if (!env_name_ok(s, len))
            return fail(x, f[TOKEN].val, "admin.token_env",
                        "'%s' is not an environment variable name",
                        show(f[TOKEN].val, buf, sizeof buf));
        char *e = fb_strndup(s, len);
        if (e == NULL)
            return nomem(x);
        free(c->admin_token_env);
        c->admin_token_env = e;
    }
    return FB_OK;
}

int fb_store_url_ok(const char *s, size_t len)
{
    static const char *const schemes[] = {"postgres://", "postgresql://"};
    int ok = 0;
    for (size_t i = 0; i < FB_ARRAY_LEN(schemes); i++) {
        size_t n = strlen(schemes[i]);
        if (len > n && memcmp(s, schemes[i], n) == 0)
            ok = 1;
    }
    for (size_t i = 0; ok && i < len; i++)
        if ((unsigned char)s[i] <= ' ' || s[i] == 0x7f)
            ok = 0;
    return ok;
}

/* store: "sqlite" (the embedded default, under data_dir) or a PostgreSQL
 * URL. The URL may hold a password: it is never echoed in a message. */
static fb_err store_value(ctx *x, const yaml_node_t *n, fb_config *c)
{
    const char *s;
    size_t len;
    fb_err rc = scalar(x, n, "store", &s, &len);
    if (rc != FB_OK)
        return rc;
    if (len == 6 && memcmp(s, "sqlite", 6) == 0) {
        free(c->store_url);
        c->store_url = NULL;
        return FB_OK;
    }
    if (!fb_store_url_ok(s, len))
        return fail(x, n, "store",
                    "expected sqlite or a postgres:// URL (not echoed: it "
                    "may hold a password)");
    char *u = fb_strndup(s, len);
    if (u == NULL)
        return nomem(x);
    free(c->store_url);
    c->store_url = u;
    return FB_OK;
}

/* cluster: how nodes sharing a PostgreSQL store hold budget slices. */
static fb_err cluster_section(ctx *x, yaml_node_t *n, fb_config *c)
{
    enum { LEASE, NF };
    field f[NF] = {[LEASE] = {.name = "lease_ms"}};
    int64_t v;
    fb_err rc;
    if (is_null(n))
        return FB_OK;
    if ((rc = take_fields(x, n, "cluster", f, NF)) != FB_OK)
        return rc;
    if (f[LEASE].val != NULL) {
        if ((rc = int_value(x, f[LEASE].val, "cluster.lease_ms", 1000, 600000,
                            &v)) != FB_OK)
            return rc;
        c->cluster_lease_ms = (int)v;
    }
    return FB_OK;
}

/* ---- sections -------------------------------------------------------- */

/* A sequence of strings (value() reads each: plain or a path) into *out. */
static fb_err string_seq(ctx *x, yaml_node_t *n, const char *name,
                         fb_err (*value)(ctx *, const yaml_node_t *,
                                         const char *, char **),
                         char ***out, size_t *count)
{
    char where[64];
    fb_err rc;
    if (is_null(n))
        return FB_OK;
    if (n->type != YAML_SEQUENCE_NODE)
        return fail(x, n, name, "expected a sequence, got %s", kind_name(n));
    size_t cap =
        (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (cap == 0)
        return FB_OK;
    if ((*out = calloc(cap, sizeof **out)) == NULL)
        return nomem(x);
    for (yaml_node_item_t *it = n->data.sequence.items.start;
         it < n->data.sequence.items.top; it++) {
        yaml_node_t *item;
        snprintf(where, sizeof where, "%s[%zu]", name, *count);
        if ((rc = node_at(x, *it, n, where, &item)) != FB_OK)
            return rc;
        if ((rc = value(x, item, where, &(*out)[*count])) != FB_OK)
            return rc;
        (*count)++;
    }
    return FB_OK;
}

static fb_err prices_section(ctx *x, yaml_node_t *n, fb_config *c)
{
    return string_seq(x, n, "prices", path_value, &c->prices, &c->nprices);
}

static fb_err model_price(ctx *x, const entry *e, fb_model_price_conf *m)
{
    enum { IN, OUT, CREAD, CWRITE, MAXOUT, MAXTOK, MAXIN, NF };
    field f[NF] = {
        [IN] = {.name = "input_cost_per_token"},
        [OUT] = {.name = "output_cost_per_token"},
        [CREAD] = {.name = "cache_read_input_token_cost"},
        [CWRITE] = {.name = "cache_creation_input_token_cost"},
        [MAXOUT] = {.name = "max_output_tokens"},
        [MAXTOK] = {.name = "max_tokens"},
        [MAXIN] = {.name = "max_input_tokens"},
    };
    char where[MODEL_MAX_LEN + 64], fw[MODEL_MAX_LEN + 128];
    int64_t maxtok = 0;
    fb_err rc;

    snprintf(where, sizeof where, "model_prices.%.*s", (int)e->len, e->name);
    if ((rc = take_fields(x, e->val, where, f, NF)) != FB_OK)
        return rc;
    /* Both are needed: an override replaces the model's whole price. */
    for (int i = IN; i <= OUT; i++)
        if (f[i].val == NULL)
            return fail(x, e->key, where, "%s is required", f[i].name);
    fb_money *money[] = {&m->price.input, &m->price.output,
                         &m->price.cache_read, &m->price.cache_write};
    for (int i = IN; i <= CWRITE; i++) {
        if (f[i].val == NULL)
            continue;
        snprintf(fw, sizeof fw, "%s.%s", where, f[i].name);
        if ((rc = money_value(x, f[i].val, fw, money[i])) != FB_OK)
            return rc;
    }
    if (f[CREAD].val == NULL)
        m->price.cache_read = m->price.input;
    if (f[CWRITE].val == NULL)
        m->price.cache_write = m->price.input;
    m->price.cache_write_1h = m->price.cache_write;
    int64_t *ints[] = {&m->price.max_output_tokens, &maxtok,
                       &m->price.max_input_tokens};
    for (int i = MAXOUT; i <= MAXIN; i++) {
        if (f[i].val == NULL)
            continue;
        snprintf(fw, sizeof fw, "%s.%s", where, f[i].name);
        if ((rc = int_value(x, f[i].val, fw, 0, 1000000000,
                            ints[i - MAXOUT])) != FB_OK)
            return rc;
    }
    if (f[MAXOUT].val == NULL)
        m->price.max_output_tokens = maxtok;
    return FB_OK;
}

static fb_err model_prices_section(ctx *x, yaml_node_t *n, fb_config *c)
{
    char buf[80];
    entry *e = NULL;
    size_t ne = 0;
    fb_err rc = take_entries(x, n, "model_prices", &e, &ne);
    if (rc != FB_OK || ne == 0)
        goto out;
    if ((c->model_prices = calloc(ne, sizeof *c->model_prices)) == NULL) {
        rc = nomem(x);
        goto out;
    }
    for (size_t i = 0; i < ne; i++) {
        int ok = e[i].len > 0 && e[i].len <= MODEL_MAX_LEN;
        for (size_t k = 0; ok && k < e[i].len; k++) {
            unsigned char ch = (unsigned char)e[i].name[k];
            ok = ch > 0x20 && ch != 0x7f;
        }
        if (!ok) {
            rc = fail(x, e[i].key, "model_prices",
                      "'%s' is not a model name (1-%d characters, no "
                      "blanks)",
                      show(e[i].key, buf, sizeof buf), MODEL_MAX_LEN);
            goto out;
        }
        fb_model_price_conf *m = &c->model_prices[c->nmodel_prices];
        if ((m->model = fb_strndup(e[i].name, e[i].len)) == NULL) {
            rc = nomem(x);
            goto out;
        }
        c->nmodel_prices++;
        if ((rc = model_price(x, &e[i], m)) != FB_OK)
            goto out;
    }
out:
    free(e);
    return rc;
}

static fb_err base_url_value(ctx *x, const yaml_node_t *n, const char *where,
                             char **out)
{
    char buf[80];
    const char *s;
    size_t len, skip;
    fb_err rc = scalar(x, n, where, &s, &len);
    if (rc != FB_OK)
        return rc;
    if (len >= 7 && fb_strcaseeq(s, 7, "http://", 7))
        skip = 7;
    else if (len >= 8 && fb_strcaseeq(s, 8, "https://", 8))
        skip = 8;
    else
        return fail(x, n, where, "'%s' does not start with http:// or https://",
                    show(n, buf, sizeof buf));
    for (size_t i = 0; i < len; i++)
        if (s[i] == ' ' || s[i] == '?' || s[i] == '#')
            return fail(x, n, where,
                        "'%s': no blanks, query or fragment allowed",
                        show(n, buf, sizeof buf));
    if (skip == len || s[skip] == '/')
        return fail(x, n, where, "'%s' has no host", show(n, buf, sizeof buf));
    while (len > skip && s[len - 1] == '/')
        len--;
    if ((*out = fb_strndup(s, len)) == NULL)
        return nomem(x);
    return FB_OK;
}

static int env_name_ok(const char *s, size_t len)
{
    if (len == 0 || (s[0] >= '0' && s[0] <= '9'))
        return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '_'))
            return 0;
    }
    return 1;
}

/* RFC 9110 token characters. */
static int header_name_ok(const char *s, size_t len)
{
    if (len == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || strchr("!#$%&'*+-.^_`|~", ch)))
            return 0;
    }
    return 1;
}

static fb_err provider(ctx *x, const entry *e, fb_provider_conf *p)
{
    enum { KIND, URL, KEYENV, PRICE, COUNT, AUTH, NF };
    field f[NF] = {
        [KIND] = {.name = "kind"},
        [URL] = {.name = "base_url"},
        [KEYENV] = {.name = "api_key_env"},
        [PRICE] = {.name = "price_per_call_usd"},
        [COUNT] = {.name = "count_field"},
        [AUTH] = {.name = "auth_header"},
    };
    static const char *const kinds[] = {"openai", "anthropic", "generic"};
    static const fb_provider_kind kind_of[] = {
        FB_PROVIDER_OPENAI, FB_PROVIDER_ANTHROPIC, FB_PROVIDER_GENERIC};
    char where[NAME_MAX_LEN + 32], fw[NAME_MAX_LEN + 64], buf[80];
    const char *s;
    size_t len, k;
    fb_err rc;

    snprintf(where, sizeof where, "providers.%.*s", (int)e->len, e->name);
    if ((rc = take_fields(x, e->val, where, f, NF)) != FB_OK)
        return rc;
    for (int i = KIND; i <= URL; i++)
        if (f[i].val == NULL)
            return fail(x, e->key, where, "%s is required", f[i].name);

    snprintf(fw, sizeof fw, "%s.kind", where);
    if ((rc = choice(x, f[KIND].val, fw, kinds, FB_ARRAY_LEN(kinds),
                     "openai|anthropic|generic", &k)) != FB_OK)
        return rc;
    p->kind = kind_of[k];

    snprintf(fw, sizeof fw, "%s.base_url", where);
    if ((rc = base_url_value(x, f[URL].val, fw, &p->base_url)) != FB_OK)
        return rc;

    if (f[KEYENV].val != NULL) {
        snprintf(fw, sizeof fw, "%s.api_key_env", where);
        if ((rc = scalar(x, f[KEYENV].val, fw, &s, &len)) != FB_OK)
            return rc;
        if (!env_name_ok(s, len))
            return fail(x, f[KEYENV].val, fw,
                        "'%s' is not an environment variable name",
                        show(f[KEYENV].val, buf, sizeof buf));
        if ((p->api_key_env = fb_strndup(s, len)) == NULL)
            return nomem(x);
    }

    if (p->kind != FB_PROVIDER_GENERIC) {
        for (int i = PRICE; i <= AUTH; i++)
            if (f[i].val != NULL)
                return fail(x, f[i].key, where,
                            "%s is only valid for kind: generic", f[i].name);
        return FB_OK;
    }

    if (f[PRICE].val == NULL)
        return fail(x, e->key, where,
                    "price_per_call_usd is required for kind: generic");
    snprintf(fw, sizeof fw, "%s.price_per_call_usd", where);
    if ((rc = money_value(x, f[PRICE].val, fw, &p->price_per_call)) != FB_OK)
        return rc;

    if (f[COUNT].val != NULL) {
        snprintf(fw, sizeof fw, "%s.count_field", where);
        if ((rc = str_value(x, f[COUNT].val, fw, &p->count_field)) != FB_OK)
            return rc;
    }

    snprintf(fw, sizeof fw, "%s.auth_header", where);
    if (f[AUTH].val != NULL) {
        if ((rc = scalar(x, f[AUTH].val, fw, &s, &len)) != FB_OK)
            return rc;
        if (!header_name_ok(s, len))
            return fail(x, f[AUTH].val, fw, "'%s' is not a header name",
                        show(f[AUTH].val, buf, sizeof buf));
    } else {
        s = "Authorization";
        len = strlen(s);
    }
    if ((p->auth_header = fb_strndup(s, len)) == NULL)
        return nomem(x);
    return FB_OK;
}

static fb_err providers_section(ctx *x, yaml_node_t *n, fb_config *c)
{
    entry *e = NULL;
    size_t ne = 0;
    fb_err rc = take_entries(x, n, "providers", &e, &ne);
    if (rc != FB_OK || ne == 0)
        goto out;
    if ((c->providers = calloc(ne, sizeof *c->providers)) == NULL) {
        rc = nomem(x);
        goto out;
    }
    for (size_t i = 0; i < ne; i++) {
        if ((rc = check_name(x, &e[i], "providers")) != FB_OK)
            goto out;
        fb_provider_conf *p = &c->providers[c->nproviders];
        if ((p->name = fb_strndup(e[i].name, e[i].len)) == NULL) {
            rc = nomem(x);
            goto out;
        }
        c->nproviders++;
        if ((rc = provider(x, &e[i], p)) != FB_OK)
            goto out;
    }
out:
    free(e);
    return rc;
}

/* A job is "{budget: 5/day}" or just "5/day". */
static fb_err job(ctx *x, const entry *e, const char *twhere, fb_job_conf *j)
{
    field f[] = {{.name = "budget"}, {.name = "max_runs_per_day"}};
    char where[2 * NAME_MAX_LEN + 64], fw[2 * NAME_MAX_LEN + 96];
    int64_t runs = 0;
    fb_err rc;

    snprintf(where, sizeof where, "%s.jobs.%.*s", twhere, (int)e->len, e->name);
    if (e->val->type == YAML_SCALAR_NODE && !is_null(e->val))
        return budget_value(x, e->val, where, &j->budget);
    if (e->val->type != YAML_MAPPING_NODE)
        return fail(x, e->val, where, "expected a budget or a mapping, got %s",
                    is_null(e->val) ? "nothing" : kind_name(e->val));
    if ((rc = take_fields(x, e->val, where, f, FB_ARRAY_LEN(f))) != FB_OK)
        return rc;
    if (f[1].val != NULL) {
        snprintf(fw, sizeof fw, "%s.max_runs_per_day", where);
        if ((rc = int_value(x, f[1].val, fw, 1, 1000000, &runs)) != FB_OK)
            return rc;
        j->max_runs_per_day = (int)runs;
    }
    if (f[0].val == NULL)
        return FB_OK;
    snprintf(fw, sizeof fw, "%s.budget", where);
    return budget_value(x, f[0].val, fw, &j->budget);
}

static fb_err tenant(ctx *x, const entry *e, fb_tenant_conf *t)
{
    enum { BUDGET, JOBS, NF };
    field f[NF] = {[BUDGET] = {.name = "budget"}, [JOBS] = {.name = "jobs"}};
    char where[NAME_MAX_LEN + 32], fw[NAME_MAX_LEN + 64];
    entry *je = NULL;
    size_t nje = 0;
    fb_err rc;

    snprintf(where, sizeof where, "budgets.tenants.%.*s", (int)e->len, e->name);
    if ((rc = take_fields(x, e->val, where, f, NF)) != FB_OK)
        goto out;
    if (f[BUDGET].val != NULL) {
        snprintf(fw, sizeof fw, "%s.budget", where);
        if ((rc = budget_value(x, f[BUDGET].val, fw, &t->budget)) != FB_OK)
            goto out;
    }
    if (f[JOBS].val == NULL)
        goto out;
    snprintf(fw, sizeof fw, "%s.jobs", where);
    if ((rc = take_entries(x, f[JOBS].val, fw, &je, &nje)) != FB_OK || nje == 0)
        goto out;
    if ((t->jobs = calloc(nje, sizeof *t->jobs)) == NULL) {
        rc = nomem(x);
        goto out;
    }
    for (size_t i = 0; i < nje; i++) {
        if ((rc = check_name(x, &je[i], fw)) != FB_OK)
            goto out;
        fb_job_conf *j = &t->jobs[t->njobs];
        if ((j->name = fb_strndup(je[i].name, je[i].len)) == NULL) {
            rc = nomem(x);
            goto out;
        }
        t->njobs++;
        if ((rc = job(x, &je[i], where, j)) != FB_OK)
            goto out;
    }
out:
    free(je);
    return rc;
}

static fb_err budgets_section(ctx *x, yaml_node_t *n, fb_config *c)
{
    enum { GLOBAL, TENANTS, NF };
    field f[NF] = {
        [GLOBAL] = {.name = "global"}, [TENANTS] = {.name = "tenants"}};
    entry *e = NULL;
    size_t ne = 0;
    fb_err rc;

    if ((rc = take_fields(x, n, "budgets", f, NF)) != FB_OK)
        goto out;
    if (f[GLOBAL].val != NULL &&
        (rc = budget_value(x, f[GLOBAL].val, "budgets.global", &c->global)) !=
            FB_OK)
        goto out;
    if (f[TENANTS].val == NULL)
        goto out;
    if ((rc = take_entries(x, f[TENANTS].val, "budgets.tenants", &e, &ne)) !=
            FB_OK ||
        ne == 0)
        goto out;
    if ((c->tenants = calloc(ne, sizeof *c->tenants)) == NULL) {
        rc = nomem(x);
        goto out;
    }
    for (size_t i = 0; i < ne; i++) {
        if ((rc = check_name(x, &e[i], "budgets.tenants")) != FB_OK)
            goto out;
        fb_tenant_conf *t = &c->tenants[c->ntenants];
        if ((t->name = fb_strndup(e[i].name, e[i].len)) == NULL) {
            rc = nomem(x);
            goto out;
        }
        c->ntenants++;
        if ((rc = tenant(x, &e[i], t)) != FB_OK)
            goto out;
    }
out:
    free(e);
    return rc;
}

static fb_err limits_section(ctx *x, yaml_node_t *n, fb_config *c)
{
    enum { BODY, HEADER, CONNS, CLIENT_TO, CONNECT_TO, UPSTREAM_TO, NF };
    /* Bounds catch unit mistakes (bytes for KiB, seconds for ms) and keep
     * every value well inside size_t and int. */
    static const struct {
        const char *name;
        int64_t min, max;
    } lim[NF] = {
        [BODY] = {"max_body_bytes", 1, INT64_C(1) << 30},
        [HEADER] = {"max_header_bytes", 1024, INT64_C(16) << 20},
        [CONNS] = {"max_connections", 1, 1000000},
        [CLIENT_TO] = {"client_timeout_ms", 1, 86400000},
        [CONNECT_TO] = {"upstream_connect_timeout_ms", 1, 86400000},
        [UPSTREAM_TO] = {"upstream_timeout_ms", 1, 86400000},
    };
    field f[NF];
    char where[64];
    int64_t v[NF] = {0};
    fb_err rc;

    memset(f, 0, sizeof f);
    for (int i = 0; i < NF; i++)
        f[i].name = lim[i].name;
    if ((rc = take_fields(x, n, "limits", f, NF)) != FB_OK)
        return rc;
    for (int i = 0; i < NF; i++) {
        if (f[i].val == NULL)
            continue;
        snprintf(where, sizeof where, "limits.%s", lim[i].name);
        if ((rc = int_value(x, f[i].val, where, lim[i].min, lim[i].max,
                            &v[i])) != FB_OK)
            return rc;
    }
    if (f[BODY].val)
        c->max_body_bytes = (size_t)v[BODY];
    if (f[HEADER].val)
        c->max_header_bytes = (size_t)v[HEADER];
    if (f[CONNS].val)
        c->max_connections = (int)v[CONNS];
    if (f[CLIENT_TO].val)
        c->client_timeout_ms = (int)v[CLIENT_TO];
    if (f[CONNECT_TO].val)
        c->upstream_connect_timeout_ms = (int)v[CONNECT_TO];
    if (f[UPSTREAM_TO].val)
        c->upstream_timeout_ms = (int)v[UPSTREAM_TO];
    return FB_OK;
}

static fb_err ignore_list(ctx *x, yaml_node_t *n, fb_config *c)
{
    return string_seq(x, n, "replay.ignore_fields", str_value,
                      &c->replay_ignore, &c->nreplay_ignore);
}

static fb_err replay_section(ctx *x, yaml_node_t *n, fb_config *c)
{
    enum { ENABLED, TTL, MAXB, IGNORE, IDEM, PERFP, PCT, FLOOR, CACHE, NF };
    field f[NF] = {
        [ENABLED] = {.name = "enabled"},
        [TTL] = {.name = "ttl_hours"},
        [MAXB] = {.name = "max_bytes"},
        [IGNORE] = {.name = "ignore_fields"},
        [IDEM] = {.name = "idempotency_in_flight"},
        [PERFP] = {.name = "max_upstream_attempts"},
        [PCT] = {.name = "max_retry_percent"},
        [FLOOR] = {.name = "retry_floor"},
        [CACHE] = {.name = "cache_bytes"},
    };
    static const char *const bools[] = {"false", "true"};
    static const char *const idem[] = {"reject", "wait"};
    int64_t v;
    size_t k;
    fb_err rc;
    if (is_null(n))
        return FB_OK;
    if ((rc = take_fields(x, n, "replay", f, NF)) != FB_OK)
        return rc;
    if (f[ENABLED].val) {
        if ((rc = choice(x, f[ENABLED].val, "replay.enabled", bools, 2,
                         "true|false", &k)) != FB_OK)
            return rc;
        c->replay_enabled = (int)k;
    }
    if (f[TTL].val) {
        if ((rc = int_value(x, f[TTL].val, "replay.ttl_hours", 1, 24 * 3660,
                            &v)) != FB_OK)
            return rc;
        c->replay_ttl_ms = v * 3600 * 1000;
    }
    if (f[MAXB].val &&
        (rc = int_value(x, f[MAXB].val, "replay.max_bytes", 1 << 20,
                        INT64_C(1) << 50, &c->replay_max_bytes)) != FB_OK)
        return rc;
    if (f[CACHE].val &&
        (rc = int_value(x, f[CACHE].val, "replay.cache_bytes", 0,
                        INT64_C(1) << 40, &c->replay_cache_bytes)) != FB_OK)
        return rc;
    if (f[IGNORE].val && (rc = ignore_list(x, f[IGNORE].val, c)) != FB_OK)
        return rc;
    if (f[IDEM].val) {
        if ((rc = choice(x, f[IDEM].val, "replay.idempotency_in_flight", idem,
                         2, "reject|wait", &k)) != FB_OK)
            return rc;
        c->idempotency_wait = (int)k;
    }
    int *ints[] = {&c->retry_max_per_fp, &c->retry_max_percent,
                   &c->retry_floor};
    static const char *const names[] = {"replay.max_upstream_attempts",
                                        "replay.max_retry_percent",
                                        "replay.retry_floor"};
    static const int64_t max[] = {1000, 100, 1000000};
    for (int i = PERFP; i <= FLOOR; i++) {
        if (f[i].val == NULL)
            continue;
        if ((rc = int_value(x, f[i].val, names[i - PERFP], i == PERFP ? 1 : 0,
                            max[i - PERFP], &v)) != FB_OK)
            return rc;
        *ints[i - PERFP] = (int)v;
    }
    return FB_OK;
}

/* ---- alerts ---- */

/* spend_rate: {factor, min_usd} | breaker: {window_minutes, factor,
 * min_usd} | rerun: {runs_per_day, forwards_per_fingerprint}; "off" turns
 * the rule off. Fields not given keep r's values. */
static fb_err rule_part(ctx *x, yaml_node_t *n, const char *where, int which,
                        fb_alert_rule *r)
{
    enum { A, B, C, NF };
    static const char *const names[3][3] = {
        {"factor", "min_usd", NULL},
        {"runs_per_day", "forwards_per_fingerprint", NULL},
        {"window_minutes", "factor", "min_usd"}};
    field f[NF] = {{.name = names[which][0]}, {.name = names[which][1]},
                   {.name = names[which][2] ? names[which][2] : "-"}};
    char fw[128];
    int64_t v;
    fb_err rc;
    if (n->type == YAML_SCALAR_NODE && n->data.scalar.length == 3 &&
        memcmp(n->data.scalar.value, "off", 3) == 0) {
        if (which == 0)
            r->rate_factor = 0;
        else if (which == 1)
            r->runs_per_day = r->forwards_per_fp = 0;
        else
            r->breaker_minutes = 0;
        return FB_OK;
    }
    if ((rc = take_fields(x, n, where, f, which == 2 ? 3 : 2)) != FB_OK)
        return rc;
    for (int i = 0; i < (which == 2 ? 3 : 2); i++) {
        if (f[i].val == NULL)
            continue;
        snprintf(fw, sizeof fw, "%s.%s", where, f[i].name);
        if (which == 1) {
            if ((rc = int_value(x, f[i].val, fw, 0, 1000000, &v)) != FB_OK)
                return rc;
            *(i == 0 ? &r->runs_per_day : &r->forwards_per_fp) = (int)v;
        } else if (which == 2 && i == 0) {
            if ((rc = int_value(x, f[i].val, fw, 1, 1440, &v)) != FB_OK)
                return rc;
            r->breaker_minutes = (int)v;
        } else {
            int factor = which == 0 ? i == 0 : i == 1;
            fb_money *out = which == 0 ? (i == 0 ? &r->rate_factor : &r->rate_min)
                                       : (i == 1 ? &r->breaker_factor
                                                 : &r->breaker_min);
            if ((rc = money_value(x, f[i].val, fw, out)) != FB_OK)
                return rc;
            if (factor && *out < FB_PICO_PER_USD)
                return fail(x, f[i].val, fw, "a factor is at least 1");
        }
    }
    if (which == 2 && r->breaker_minutes > 0 && r->breaker_factor == 0)
        return fail(x, n, where, "a breaker needs a factor");
    return FB_OK;
}

static fb_err rule_value(ctx *x, yaml_node_t *n, const char *where,
                         fb_alert_rule *r)
{
    enum { RATE, RERUN, BREAKER, NF };
    field f[NF] = {[RATE] = {.name = "spend_rate"},
                   [RERUN] = {.name = "rerun"},
                   [BREAKER] = {.name = "breaker"}};
    char fw[224];
    fb_err rc;
    if ((rc = take_fields(x, n, where, f, NF)) != FB_OK)
        return rc;
    for (int i = 0; i < NF; i++) {
        if (f[i].val == NULL)
            continue;
        snprintf(fw, sizeof fw, "%s.%s", where, f[i].name);
        if ((rc = rule_part(x, f[i].val, fw, i, r)) != FB_OK)
            return rc;
    }
    return FB_OK;
}

static fb_err alerts_section(ctx *x, yaml_node_t *n, fb_config *c)
{
    enum {
        ENABLED, EVERY, PERCENT, RATE, RERUN, BREAKER, JOBS, HOOKS, CMD,
        ATTEMPTS, NF
    };
    field f[NF] = {
        [ENABLED] = {.name = "enabled"},
        [EVERY] = {.name = "every_seconds"},
        [PERCENT] = {.name = "budget_percent"},
        [RATE] = {.name = "spend_rate"},
        [RERUN] = {.name = "rerun"},
        [BREAKER] = {.name = "breaker"},
        [JOBS] = {.name = "jobs"},
        [HOOKS] = {.name = "webhooks"},
        [CMD] = {.name = "command"},
        [ATTEMPTS] = {.name = "max_attempts"},
    };
    static const char *const bools[] = {"false", "true"};
    static const char *const formats[] = {"json", "slack"};
    char where[160], buf[80];
    int64_t v;
    size_t k;
    fb_err rc;
    if (is_null(n))
        return FB_OK;
    if ((rc = take_fields(x, n, "alerts", f, NF)) != FB_OK)
        return rc;
    if (f[ENABLED].val) {
        if ((rc = choice(x, f[ENABLED].val, "alerts.enabled", bools, 2,
                         "true|false", &k)) != FB_OK)
            return rc;
        c->alerts_enabled = (int)k;
    }
    if (f[EVERY].val) {
        if ((rc = int_value(x, f[EVERY].val, "alerts.every_seconds", 1, 86400,
                            &v)) != FB_OK)
            return rc;
        c->alert_every_ms = (int)v * 1000;
    }
    if (f[ATTEMPTS].val) {
        if ((rc = int_value(x, f[ATTEMPTS].val, "alerts.max_attempts", 1, 20,
                            &v)) != FB_OK)
            return rc;
        c->alert_max_attempts = (int)v;
    }
    if (f[PERCENT].val) {
        yaml_node_t *s = f[PERCENT].val;
        if (s->type != YAML_SEQUENCE_NODE)
            return fail(x, s, "alerts.budget_percent",
                        "expected a sequence like [50, 80, 100]");
        c->nalert_percents = 0;
        for (yaml_node_item_t *it = s->data.sequence.items.start;
             it < s->data.sequence.items.top; it++) {
            yaml_node_t *item;
            if (c->nalert_percents == FB_ARRAY_LEN(c->alert_percents))
                return fail(x, s, "alerts.budget_percent", "at most 8 values");
            snprintf(where, sizeof where, "alerts.budget_percent[%zu]",
                     c->nalert_percents);
            if ((rc = node_at(x, *it, s, where, &item)) != FB_OK ||
                (rc = int_value(x, item, where, 1, 1000, &v)) != FB_OK)
                return rc;
            c->alert_percents[c->nalert_percents++] = (int)v;
        }
    }
    const char *parts[] = {"alerts.spend_rate", "alerts.rerun",
                           "alerts.breaker"};
    for (int i = RATE; i <= BREAKER; i++)
        if (f[i].val &&
            (rc = rule_part(x, f[i].val, parts[i - RATE], i - RATE,
                            &c->alert_rule)) != FB_OK)
            return rc;
    if (f[JOBS].val) {
        entry *e = NULL;
        size_t ne = 0;
        if ((rc = take_entries(x, f[JOBS].val, "alerts.jobs", &e, &ne)) !=
            FB_OK)
            return rc;
        c->alert_overrides = calloc(ne ? ne : 1, sizeof *c->alert_overrides);
        if (c->alert_overrides == NULL) {
            free(e);
            return nomem(x);
        }
        for (size_t i = 0; i < ne && rc == FB_OK; i++) {
            fb_alert_override *o = &c->alert_overrides[i];
            const char *slash = memchr(e[i].name, '/', e[i].len);
            size_t tl = slash ? (size_t)(slash - e[i].name) : e[i].len;
            c->nalert_overrides++;
            if (!name_ok(e[i].name, tl, NAME_MAX_LEN) ||
                (slash && !name_ok(slash + 1, e[i].len - tl - 1,
                                   NAME_MAX_LEN))) {
                rc = fail(x, e[i].key, "alerts.jobs",
                          "'%s' is not TENANT or TENANT/JOB",
                          show(e[i].key, buf, sizeof buf));
                break;
            }
            o->tenant = fb_strndup(e[i].name, tl);
            o->job = slash ? fb_strndup(slash + 1, e[i].len - tl - 1) : NULL;
            if (o->tenant == NULL || (slash && o->job == NULL)) {
                rc = nomem(x);
                break;
            }
            o->rule = c->alert_rule;
            snprintf(where, sizeof where, "alerts.jobs.%.*s", (int)e[i].len,
                     e[i].name);
            rc = rule_value(x, e[i].val, where, &o->rule);
        }
        free(e);
        if (rc != FB_OK)
            return rc;
    }
    if (f[HOOKS].val) {
        yaml_node_t *s = f[HOOKS].val;
        if (s->type != YAML_SEQUENCE_NODE)
            return fail(x, s, "alerts.webhooks", "expected a sequence");
        size_t cap = (size_t)(s->data.sequence.items.top -
                              s->data.sequence.items.start);
        c->alert_webhooks = calloc(cap ? cap : 1, sizeof *c->alert_webhooks);
        if (c->alert_webhooks == NULL)
            return nomem(x);
        for (yaml_node_item_t *it = s->data.sequence.items.start;
             it < s->data.sequence.items.top; it++) {
            enum { URL, FORMAT, NW };
            field w[NW] = {[URL] = {.name = "url"},
                           [FORMAT] = {.name = "format"}};
            yaml_node_t *item;
            fb_alert_webhook *h = &c->alert_webhooks[c->nalert_webhooks];
            snprintf(where, sizeof where, "alerts.webhooks[%zu]",
                     c->nalert_webhooks);
            if ((rc = node_at(x, *it, s, where, &item)) != FB_OK ||
                (rc = take_fields(x, item, where, w, NW)) != FB_OK)
                return rc;
            if (w[URL].val == NULL)
                return fail(x, item, where, "a webhook needs a url");
            c->nalert_webhooks++;
            snprintf(where + strlen(where), sizeof where - strlen(where),
                     ".url");
            if ((rc = base_url_value(x, w[URL].val, where, &h->url)) != FB_OK)
                return rc;
            if (w[FORMAT].val) {
                if ((rc = choice(x, w[FORMAT].val, "format", formats, 2,
                                 "json|slack", &k)) != FB_OK)
                    return rc;
                h->slack = (int)k;
            }
        }
    }
    if (f[CMD].val &&
        (rc = string_seq(x, f[CMD].val, "alerts.command", str_value,
                         &c->alert_command, &c->nalert_command)) != FB_OK)
        return rc;
    return FB_OK;
}

const fb_alert_rule *fb_config_alert_rule(const fb_config *c,
                                          const char *tenant, const char *job)
{
    const fb_alert_rule *t = NULL;
    for (size_t i = 0; i < c->nalert_overrides; i++) {
        const fb_alert_override *o = &c->alert_overrides[i];
        if (strcmp(o->tenant, tenant) != 0)
            continue;
        if (o->job == NULL)
            t = &o->rule;
        else if (job[0] != '\0' && strcmp(o->job, job) == 0)
            return &o->rule;
    }
    return t ? t : &c->alert_rule;
}

static fb_err root_section(ctx *x, yaml_node_t *root, fb_config *c)
{
    enum {
        LISTEN,
        DATA_DIR,
        PRICES,
        MODEL_PRICES,
        PROVIDERS,
        BUDGETS,
        DURABILITY,
        LIMITS,
        LOG_LEVEL,
        REPLAY,
        ADMIN,
        ALERTS,
        STORE,
        CLUSTER,
        NF
    };
    field f[NF] = {
        [LISTEN] = {.name = "listen"},
        [DATA_DIR] = {.name = "data_dir"},
        [PRICES] = {.name = "prices"},
        [MODEL_PRICES] = {.name = "model_prices"},
        [PROVIDERS] = {.name = "providers"},
        [BUDGETS] = {.name = "budgets"},
        [DURABILITY] = {.name = "durability"},
        [LIMITS] = {.name = "limits"},
        [LOG_LEVEL] = {.name = "log_level"},
        [REPLAY] = {.name = "replay"},
        [ADMIN] = {.name = "admin"},
        [ALERTS] = {.name = "alerts"},
        [STORE] = {.name = "store"},
        [CLUSTER] = {.name = "cluster"},
    };
    static const char *const durabilities[] = {"process", "full"};
    static const char *const levels[] = {"debug", "info", "warn", "error"};
    size_t k;
    fb_err rc;

    if (root->type != YAML_MAPPING_NODE)
        return fail(x, root, NULL, "expected a mapping at the top, got %s",
                    kind_name(root));
    if ((rc = take_fields(x, root, NULL, f, NF)) != FB_OK)
        return rc;
    if (f[LISTEN].val != NULL &&
        (rc = listen_value(x, f[LISTEN].val, "listen", &c->listen_host,
                           &c->listen_port)) != FB_OK)
        return rc;
    if (f[DATA_DIR].val != NULL) {
        char *d = NULL;
        if ((rc = path_value(x, f[DATA_DIR].val, "data_dir", &d)) != FB_OK)
            return rc;
        free(c->data_dir);
        c->data_dir = d;
    }
    if (f[PRICES].val != NULL &&
        (rc = prices_section(x, f[PRICES].val, c)) != FB_OK)
        return rc;
    if (f[MODEL_PRICES].val != NULL &&
        (rc = model_prices_section(x, f[MODEL_PRICES].val, c)) != FB_OK)
        return rc;
    if (f[PROVIDERS].val != NULL &&
        (rc = providers_section(x, f[PROVIDERS].val, c)) != FB_OK)
        return rc;
    if (f[BUDGETS].val != NULL &&
        (rc = budgets_section(x, f[BUDGETS].val, c)) != FB_OK)
        return rc;
    if (f[DURABILITY].val != NULL) {
        if ((rc = choice(x, f[DURABILITY].val, "durability", durabilities,
                         FB_ARRAY_LEN(durabilities), "process|full", &k)) !=
            FB_OK)
            return rc;
        c->durability = k == 0 ? FB_DURABILITY_PROCESS : FB_DURABILITY_FULL;
    }
    if (f[LIMITS].val != NULL &&
        (rc = limits_section(x, f[LIMITS].val, c)) != FB_OK)
        return rc;
    if (f[LOG_LEVEL].val != NULL) {
        if ((rc = choice(x, f[LOG_LEVEL].val, "log_level", levels,
                         FB_ARRAY_LEN(levels), "debug|info|warn|error", &k)) !=
            FB_OK)
            return rc;
        char *l = fb_strndup(levels[k], strlen(levels[k]));
        if (l == NULL)
            return nomem(x);
        free(c->log_level);
        c->log_level = l;
    }
    if (f[REPLAY].val != NULL &&
        (rc = replay_section(x, f[REPLAY].val, c)) != FB_OK)
        return rc;
    if (f[ADMIN].val != NULL &&
        (rc = admin_section(x, f[ADMIN].val, c)) != FB_OK)
        return rc;
    if (f[ALERTS].val != NULL &&
        (rc = alerts_section(x, f[ALERTS].val, c)) != FB_OK)
        return rc;
    if (f[STORE].val != NULL &&
        (rc = store_value(x, f[STORE].val, c)) != FB_OK)
        return rc;
    if (f[CLUSTER].val != NULL &&
        (rc = cluster_section(x, f[CLUSTER].val, c)) != FB_OK)
        return rc;
    return FB_OK;
}

/* ---- entry points ---------------------------------------------------- */

static fb_err yaml_error(ctx *x, const yaml_parser_t *p)
{
    if (p->error == YAML_MEMORY_ERROR)
        return nomem(x);
    const char *problem = p->problem != NULL ? p->problem : "malformed";
    if (p->error == YAML_READER_ERROR) {
        if (x->errcap > 0)
            snprintf(x->err, x->errcap, "%s: byte %zu: YAML: %s", x->file,
                     p->problem_offset, problem);
        return FB_EINVAL;
    }
    if (x->errcap > 0)
        snprintf(x->err, x->errcap, "%s:%zu: YAML syntax error: %s%s%s%s",
                 x->file, p->problem_mark.line + 1, problem,
                 p->context != NULL ? " (" : "",
                 p->context != NULL ? p->context : "",
                 p->context != NULL ? ")" : "");
    return FB_EINVAL;
}

static fb_config *config_new(const char *file, const char *base_dir)
{
    fb_config *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->listen_port = 8787;
    c->durability = FB_DURABILITY_PROCESS;
    c->max_body_bytes = (size_t)8 << 20;
    c->max_header_bytes = (size_t)64 << 10;
    c->max_connections = 4096;
    c->client_timeout_ms = 30000;
    c->upstream_connect_timeout_ms = 10000;
    c->upstream_timeout_ms = 600000;
    c->replay_enabled = 1;
    c->replay_ttl_ms = INT64_C(7) * 24 * 3600 * 1000;
    c->replay_max_bytes = INT64_C(1) << 30;
    c->replay_cache_bytes = INT64_C(64) << 20;
    c->retry_max_per_fp = 3;
    c->retry_max_percent = 20;
    c->retry_floor = 10;
    c->path = fb_strndup(file, strlen(file));
    c->listen_host = fb_strndup("127.0.0.1", 9);
    c->data_dir = path_join(base_dir, "fusebox-data", 12);
    c->log_level = fb_strndup("info", 4);
    c->admin_host = fb_strndup("127.0.0.1", 9);
    c->admin_port = 8788;
    c->alerts_enabled = 1;
    c->alert_every_ms = 60000;
    c->alert_percents[0] = 50;
    c->alert_percents[1] = 80;
    c->alert_percents[2] = 100;
    c->nalert_percents = 3;
    c->alert_rule.rate_factor = 3 * FB_PICO_PER_USD;
    c->alert_rule.rate_min = 5 * FB_PICO_PER_USD;
    c->alert_rule.runs_per_day = 5;
    c->alert_rule.forwards_per_fp = 3;
    c->alert_max_attempts = 5;
    c->cluster_lease_ms = 10000;
    c->admin_token_env = fb_strndup("FUSEBOX_ADMIN_TOKEN", 19);
    if (c->path == NULL || c->listen_host == NULL || c->data_dir == NULL ||
        c->log_level == NULL || c->admin_host == NULL ||
        c->admin_token_env == NULL) {
        fb_config_free(c);
        return NULL;
    }
    return c;
}

static fb_err parse_named(const char *yaml, size_t len, const char *base_dir,
                          const char *file, fb_config **out, char *errbuf,
                          size_t errcap)
{
    yaml_parser_t parser;
    yaml_document_t doc, extra;
    int parser_ok = 0, doc_ok = 0;
    fb_config *c = NULL;
    ctx x = {.file = file,
             .base_dir = base_dir != NULL ? base_dir : ".",
             .err = errbuf,
             .errcap = errcap};
    fb_err rc = FB_OK;

    *out = NULL;
    if (errcap > 0)
        errbuf[0] = '\0';
    if (!yaml_parser_initialize(&parser)) {
        rc = nomem(&x);
        goto out;
    }
    parser_ok = 1;
    yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, len);
    if (!yaml_parser_load(&parser, &doc)) {
        rc = yaml_error(&x, &parser);
        goto out;
    }
    doc_ok = 1;
    x.doc = &doc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root == NULL) {
        rc = fail(&x, NULL, NULL, "the config is empty");
        goto out;
    }
    /* A second document would otherwise be ignored, budgets and all. */
    if (!yaml_parser_load(&parser, &extra)) {
        rc = yaml_error(&x, &parser);
        goto out;
    }
    yaml_node_t *more = yaml_document_get_root_node(&extra);
    if (more != NULL)
        rc = fail(&x, more, NULL, "only one YAML document is allowed");
    yaml_document_delete(&extra);
    if (rc != FB_OK)
        goto out;

    x.nnodes = (size_t)(doc.nodes.top - doc.nodes.start);
    if ((x.seen = calloc(x.nnodes, 1)) == NULL ||
        (c = config_new(file, x.base_dir)) == NULL) {
        rc = nomem(&x);
        goto out;
    }
    x.seen[0] = 1; /* the root */
    if ((rc = root_section(&x, root, c)) != FB_OK)
        goto out;
    *out = c;
    c = NULL;
out:
    fb_config_free(c);
    free(x.seen);
    if (doc_ok)
        yaml_document_delete(&doc);
    if (parser_ok)
        yaml_parser_delete(&parser);
    return rc;
}

fb_err fb_config_parse(const char *yaml, size_t len, const char *base_dir,
                       fb_config **out, char *errbuf, size_t errcap)
{
    return parse_named(yaml, len, base_dir, PARSED_NAME, out, errbuf, errcap);
}

/* The config file's directory, made absolute so that paths stay right if
 * the process later changes directory. NULL on ENOMEM. */
static char *config_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = NULL, *abs = NULL, *cwd = NULL;

    if (slash == NULL)
        dir = fb_strndup(".", 1);
    else
        dir = fb_strndup(path, slash == path ? 1 : (size_t)(slash - path));
    if (dir == NULL || dir[0] == '/')
        return dir;
    cwd = getcwd(NULL, 0);
    if (cwd == NULL) /* e.g. the directory was removed: stay relative */
        return dir;
    abs = path_join(cwd, dir, strlen(dir));
    free(cwd);
    free(dir);
    return abs;
}

fb_err fb_config_load(const char *path, fb_config **out, char *errbuf,
                      size_t errcap)
{
    FILE *f = NULL;
    char *buf = NULL, *base = NULL;
    size_t len = 0, cap = 0;
    fb_err rc = FB_OK;

    *out = NULL;
    if (errcap > 0)
        errbuf[0] = '\0';
    if ((f = fopen(path, "rb")) == NULL) {
        if (errcap > 0)
            snprintf(errbuf, errcap, "%s: %s", path, strerror(errno));
        rc = FB_EIO;
        goto out;
    }
    /* Read through EOF rather than trusting a size from stat, so pipes
     * and /dev/stdin work; one byte past the cap tells "too large". */
    for (;;) {
        if (len == cap) {
            if (cap == CONFIG_MAX_BYTES + 1) {
                if (errcap > 0)
                    snprintf(errbuf, errcap, "%s: larger than %zu bytes", path,
                             CONFIG_MAX_BYTES);
                rc = FB_EINVAL;
                goto out;
            }
            size_t ncap = cap == 0 ? 4096 : cap * 2;
            if (ncap > CONFIG_MAX_BYTES + 1)
                ncap = CONFIG_MAX_BYTES + 1;
            char *nb = realloc(buf, ncap);
            if (nb == NULL) {
                rc = FB_ENOMEM;
                goto out;
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        if (errcap > 0)
            snprintf(errbuf, errcap, "%s: read error", path);
        rc = FB_EIO;
        goto out;
    }
    if ((base = config_dir(path)) == NULL) {
        rc = FB_ENOMEM;
        goto out;
    }
    rc = parse_named(buf, len, base, path, out, errbuf, errcap);
out:
    if (rc == FB_ENOMEM && errcap > 0 && errbuf[0] == '\0')
        snprintf(errbuf, errcap, "%s: out of memory", path);
    if (f != NULL)
        fclose(f);
    free(buf);
    free(base);
    return rc;
}

void fb_config_free(fb_config *c)
{
    if (c == NULL)
        return;
    free(c->path);
    free(c->listen_host);
    free(c->admin_host);
    free(c->admin_token_env);
    for (size_t i = 0; i < c->nalert_overrides; i++) {
        free(c->alert_overrides[i].tenant);
        free(c->alert_overrides[i].job);
    }
    free(c->alert_overrides);
    for (size_t i = 0; i < c->nalert_webhooks; i++)
        free(c->alert_webhooks[i].url);
    free(c->alert_webhooks);
    for (size_t i = 0; i < c->nalert_command; i++)
        free(c->alert_command[i]);
    free(c->alert_command);
    free(c->data_dir);
    free(c->store_url);
    for (size_t i = 0; i < c->nreplay_ignore; i++)
        free(c->replay_ignore[i]);
    free(c->replay_ignore);
    for (size_t i = 0; i < c->nprices; i++)
        free(c->prices[i]);
    free(c->prices);
    for (size_t i = 0; i < c->nmodel_prices; i++)
        free(c->model_prices[i].model);
    free(c->model_prices);
    for (size_t i = 0; i < c->nproviders; i++) {
        fb_provider_conf *p = &c->providers[i];
        free(p->name);
        free(p->base_url);
        free(p->api_key_env);
        free(p->count_field);
        free(p->auth_header);
    }
    free(c->providers);
    for (size_t i = 0; i < c->ntenants; i++) {
        fb_tenant_conf *t = &c->tenants[i];
        for (size_t j = 0; j < t->njobs; j++)
            free(t->jobs[j].name);
        free(t->jobs);
        free(t->name);
    }
    free(c->tenants);
    free(c->log_level);
    free(c);
}

const fb_provider_conf *fb_config_provider(const fb_config *c, const char *name,
                                           size_t len)
{
    if (c == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < c->nproviders; i++)
        if (strlen(c->providers[i].name) == len &&
            memcmp(c->providers[i].name, name, len) == 0)
            return &c->providers[i];
    return NULL;
}

const fb_tenant_conf *fb_config_tenant(const fb_config *c, const char *name)
{
    if (c == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < c->ntenants; i++)
        if (strcmp(c->tenants[i].name, name) == 0)
            return &c->tenants[i];
    return NULL;
}

const fb_job_conf *fb_config_job(const fb_tenant_conf *t, const char *name)
{
    if (t == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < t->njobs; i++)
        if (strcmp(t->jobs[i].name, name) == 0)
            return &t->jobs[i];
    return NULL;
}
