/* scan.c - fusebox scan: rules, the secret finder, files, reports; see
 * scan.h. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "scan.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keys.h"
#include "map.h"

extern const char fb_scan_rules_builtin_text[];
extern const size_t fb_scan_rules_builtin_text_len;

#define MAX_KW 16
#define MAX_FILE_BYTES (16u << 20) /* larger files are skipped, and said */
#define BINARY_PROBE 8192
#define FB_SCAN_VERSION "0.1.0" 

typedef struct rule {
    char id[64];
    char kind[16];
    char desc[160];
    char kw[MAX_KW][32];
    size_t nkw;
    char path[MAX_KW][64]; /* migration rules: file name patterns */
    size_t npath;
    double entropy;
    int weak; /* reported only where no other rule found a secret */
    pcre2_code *re;
    pcre2_match_data *md;
} rule;

/* The keyword prefilter: every keyword once, found in one pass over a
 * file by its first two bytes (a 64 Ki-bit map, then a short bucket). */
typedef struct kwi {
    const char *text; /* a rule's kw[] */
    size_t len;
    size_t *rules; /* indices of the rules that list it */
    size_t nrules;
} kwi;

struct fb_scan_rules {
    rule *v;
    size_t n, cap;
    kwi *kws;
    size_t nkws;
    uint64_t pair_map[65536 / 64]; /* first two bytes of some keyword */
    uint32_t bucket[65537];        /* kws sorted by pair: [bucket[p], [p+1]) */
    size_t *order;                 /* keyword indices in pair order */
    /* Bounds on one match: a pattern that backtracks without end (a rule
     * file's, or a line made to trip one) gives up on that line. */
    pcre2_match_context *mc;
};

#define MATCH_LIMIT 1000000
#define DEPTH_LIMIT 10000

/* ---- rules ---- */

static void rule_clear(rule *r)
{
    pcre2_match_data_free(r->md);
    pcre2_code_free(r->re);
    r->md = NULL;
    r->re = NULL;
}

static void index_free(fb_scan_rules *r)
{
    for (size_t i = 0; i < r->nkws; i++)
        free(r->kws[i].rules);
    free(r->kws);
    free(r->order);
    r->kws = NULL;
    r->order = NULL;
    r->nkws = 0;
}

static unsigned pair_of(const char *k)
{
    return (unsigned)(unsigned char)k[0] << 8 | (unsigned char)k[1];
}

/* (Re)build the prefilter from the rules' keywords. */
static fb_err index_build(fb_scan_rules *r)
{
    index_free(r);
    memset(r->pair_map, 0, sizeof r->pair_map);
    memset(r->bucket, 0, sizeof r->bucket);
    size_t cap = 0;
    for (size_t k = 0; k < r->n; k++)
        cap += r->v[k].nkw;
    r->kws = calloc(cap ? cap : 1, sizeof *r->kws);
    r->order = calloc(cap ? cap : 1, sizeof *r->order);
    if (r->kws == NULL || r->order == NULL)
        return FB_ENOMEM;
    for (size_t k = 0; k < r->n; k++) {
        for (size_t w = 0; w < r->v[k].nkw; w++) {
            const char *t = r->v[k].kw[w];
            size_t i = 0;
            while (i < r->nkws && strcmp(r->kws[i].text, t) != 0)
                i++;
            if (i == r->nkws)
                r->kws[r->nkws++] = (kwi){.text = t, .len = strlen(t)};
            size_t *v = realloc(r->kws[i].rules,
                                (r->kws[i].nrules + 1) * sizeof *v);
            if (v == NULL)
                return FB_ENOMEM;
            r->kws[i].rules = v;
            v[r->kws[i].nrules++] = k;
        }
    }
    for (size_t i = 0; i < r->nkws; i++) {
        unsigned p = pair_of(r->kws[i].text);
        r->pair_map[p / 64] |= UINT64_C(1) << (p % 64);
        r->bucket[p + 1]++;
    }
    for (unsigned p = 0; p < 65536; p++)
        r->bucket[p + 1] += r->bucket[p];
    uint32_t *fill = calloc(65536, sizeof *fill);
    if (fill == NULL)
        return FB_ENOMEM;
    for (size_t i = 0; i < r->nkws; i++) {
        unsigned p = pair_of(r->kws[i].text);
        r->order[r->bucket[p] + fill[p]++] = i;
    }
    free(fill);
    return FB_OK;
}

void fb_scan_rules_free(fb_scan_rules *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n; i++)
        rule_clear(&r->v[i]);
    free(r->v);
    index_free(r);
    pcre2_match_context_free(r->mc);
    free(r);
}

size_t fb_scan_rules_count(const fb_scan_rules *r)
{
    return r->n;
}

/* One "key=value" token at *p (value quoted or up to a blank). */
static int token(const char **p, const char *end, char *key, size_t kcap,
                 char *val, size_t vcap)
{
    const char *s = *p;
    while (s < end && (*s == ' ' || *s == '\t'))
        s++;
    const char *eq = s;
    while (eq < end && *eq != '=' && *eq != ' ' && *eq != '\t')
        eq++;
    if (eq == end || *eq != '=' || (size_t)(eq - s) >= kcap)
        return -1;
    memcpy(key, s, (size_t)(eq - s));
    key[eq - s] = '\0';
    const char *v = eq + 1, *ve;
    if (strcmp(key, "re") == 0) {
        ve = end; /* the pattern runs to the end of the line */
    } else if (v < end && *v == '"') {
        v++;
        ve = memchr(v, '"', (size_t)(end - v));
        if (ve == NULL)
            return -1;
    } else {
        ve = v;
        while (ve < end && *ve != ' ' && *ve != '\t')
            ve++;
    }
    if ((size_t)(ve - v) >= vcap)
        return -1;
    memcpy(val, v, (size_t)(ve - v));
    val[ve - v] = '\0';
    *p = ve < end && *ve == '"' ? ve + 1 : ve;
    return 0;
}

static int parse_line(const char *s, const char *end, rule *r, char *why,
                      size_t whycap)
{
    char key[16], val[1024];
    const char *p = s;
    int n = 0;
    memset(r, 0, sizeof *r);
    /* KIND ID */
    for (int k = 0; k < 2; k++) {
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        const char *w = p;
        while (p < end && *p != ' ' && *p != '\t')
            p++;
        char *dst = k == 0 ? r->kind : r->id;
        size_t cap = k == 0 ? sizeof r->kind : sizeof r->id;
        if (p == w || (size_t)(p - w) >= cap) {
            snprintf(why, whycap, "expected KIND ID ... re=PATTERN");
            return -1;
        }
        memcpy(dst, w, (size_t)(p - w));
        dst[p - w] = '\0';
    }
    if (strcmp(r->kind, "secret") != 0 && strcmp(r->kind, "paid") != 0 &&
        strcmp(r->kind, "schema") != 0 && strcmp(r->kind, "migration") != 0) {
        snprintf(why, whycap,
                 "unknown kind '%s' (secret, paid, schema, migration)",
                 r->kind);
        return -1;
    }
    r->entropy = 0;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        if (p == end)
            break;
        if (token(&p, end, key, sizeof key, val, sizeof val) != 0) {
            snprintf(why, whycap, "expected key=value");
            return -1;
        }
        n++;
        if (strcmp(key, "kw") == 0) {
            char *save = NULL;
            for (char *w = strtok_r(val, ",", &save); w;
                 w = strtok_r(NULL, ",", &save)) {
                if (r->nkw == MAX_KW || strlen(w) >= sizeof r->kw[0] ||
                    strlen(w) < 2) {
                    snprintf(why, whycap, "keywords are 2 to 31 characters, "
                                          "at most %d a rule",
                             MAX_KW);
                    return -1;
                }
                for (char *c = w; *c; c++)
                    if (*c >= 'A' && *c <= 'Z')
                        *c = (char)(*c + 32);
                strcpy(r->kw[r->nkw++], w);
            }
        } else if (strcmp(key, "entropy") == 0) {
            char *e;
            r->entropy = strtod(val, &e);
            if (*e != '\0' || r->entropy < 0 || r->entropy > 8) {
                snprintf(why, whycap, "entropy is a number of bits 0-8");
                return -1;
            }
        } else if (strcmp(key, "path") == 0) {
            char *save = NULL;
            for (char *w = strtok_r(val, ",", &save); w;
                 w = strtok_r(NULL, ",", &save)) {
                if (r->npath == MAX_KW || strlen(w) >= sizeof r->path[0]) {
                    snprintf(why, whycap, "too many or too long paths");
                    return -1;
                }
                strcpy(r->path[r->npath++], w);
            }
        } else if (strcmp(key, "weak") == 0) {
            if (strcmp(val, "yes") != 0 && strcmp(val, "no") != 0) {
                snprintf(why, whycap, "weak is yes or no");
                return -1;
            }
            r->weak = strcmp(val, "yes") == 0;
        } else if (strcmp(key, "desc") == 0) {
            if (strlen(val) >= sizeof r->desc) {
                snprintf(why, whycap, "desc longer than %zu bytes",
                         sizeof r->desc - 1);
                return -1;
            }
            memcpy(r->desc, val, strlen(val) + 1);
        } else if (strcmp(key, "re") == 0) {
            int ec;
            PCRE2_SIZE off;
            r->re = pcre2_compile((PCRE2_SPTR)val, strlen(val), 0, &ec, &off,
                                  NULL);
            if (r->re == NULL) {
                PCRE2_UCHAR msg[160];
                pcre2_get_error_message(ec, msg, sizeof msg);
                snprintf(why, whycap, "bad pattern at %zu: %s", (size_t)off,
                         (char *)msg);
                return -1;
            }
            (void)pcre2_jit_compile(r->re, PCRE2_JIT_COMPLETE);
            r->md = pcre2_match_data_create_from_pattern(r->re, NULL);
            if (r->md == NULL) {
                rule_clear(r);
                snprintf(why, whycap, "out of memory");
                return -1;
            }
        } else {
            snprintf(why, whycap,
                     "unknown key '%s' (kw, path, entropy, weak, desc, re)",
                     key);
            return -1;
        }
    }
    if (strcmp(r->kind, "migration") == 0) {
        if (r->npath == 0 || r->re != NULL || r->nkw != 0) {
            rule_clear(r);
            snprintf(why, whycap, "a migration rule takes path=, not kw= "
                                  "or re=");
            return -1;
        }
    } else if (r->re == NULL || r->nkw == 0) {
        rule_clear(r);
        snprintf(why, whycap, "a rule needs kw= and re=");
        return -1;
    }
    (void)n;
    return 0;
}

static fb_err load_lines(fb_scan_rules *rs, const char *text, size_t len,
                         const char *origin, char *err, size_t errcap);

/* The prefilter points into the rules' array: rebuilt after any change,
 * a failed load's too (the lines before the bad one are in). */
fb_err fb_scan_rules_load(fb_scan_rules *rs, const char *text, size_t len,
                          const char *origin, char *err, size_t errcap)
{
    fb_err e = load_lines(rs, text, len, origin, err, errcap);
    fb_err i = index_build(rs);
    return e != FB_OK ? e : i;
}

static fb_err load_lines(fb_scan_rules *rs, const char *text, size_t len,
                         const char *origin, char *err, size_t errcap)
{
    const char *p = text, *end = text + len;
    int lineno = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        lineno++;
        const char *s = p;
        p = nl ? nl + 1 : end;
        while (s < le && (*s == ' ' || *s == '\t'))
            s++;
        const char *e = le;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
            e--;
        if (s == e || *s == '#')
            continue;
        if (memchr(s, '\0', (size_t)(e - s)) != NULL) {
            snprintf(err, errcap, "%s:%d: a NUL byte in the line", origin,
                     lineno);
            return FB_EINVAL;
        }
        rule r;
        char why[200];
        if (parse_line(s, e, &r, why, sizeof why) != 0) {
            snprintf(err, errcap, "%s:%d: %s", origin, lineno, why);
            return FB_EINVAL;
        }
        size_t at = rs->n;
        for (size_t i = 0; i < rs->n; i++)
            if (strcmp(rs->v[i].id, r.id) == 0)
                at = i;
        if (at == rs->n && rs->n == rs->cap) {
            size_t cap = rs->cap ? 2 * rs->cap : 32;
            rule *v = realloc(rs->v, cap * sizeof *v);
            if (v == NULL) {
                rule_clear(&r);
                return FB_ENOMEM;
            }
            rs->v = v;
            rs->cap = cap;
        }
        if (at < rs->n)
            rule_clear(&rs->v[at]); /* replaced by id */
        else
            rs->n++;
        rs->v[at] = r;
    }
    return FB_OK;
}

fb_scan_rules *fb_scan_rules_builtin(void)
{
    char err[256];
    fb_scan_rules *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    if ((r->mc = pcre2_match_context_create(NULL)) == NULL) {
        free(r);
        return NULL;
    }
    pcre2_set_match_limit(r->mc, MATCH_LIMIT);
    pcre2_set_depth_limit(r->mc, DEPTH_LIMIT);
    if (fb_scan_rules_load(r, fb_scan_rules_builtin_text,
                           fb_scan_rules_builtin_text_len, "scan.rules", err,
                           sizeof err) != FB_OK) {
        fprintf(stderr, "fusebox: built-in %s\n", err);
        fb_scan_rules_free(r);
        return NULL;
    }
    return r;
}

/* ---- the finder ---- */

static double entropy(const char *s, size_t n)
{
    size_t count[256] = {0};
    double h = 0;
    for (size_t i = 0; i < n; i++)
        count[(unsigned char)s[i]]++;
    for (int c = 0; c < 256; c++) {
        if (count[c] == 0)
            continue;
        double p = (double)count[c] / (double)n;
        h -= p * log2(p);
    }
    return h;
}

static int contains_ci(const char *s, size_t n, const char *w)
{
    size_t wl = strlen(w);
    for (size_t i = 0; i + wl <= n; i++)
        if (fb_strcaseeq(s + i, wl, w, wl))
            return 1;
    return 0;
}

/* Documentation's stand-ins for a key, never reported. */
static int placeholder(const rule *r, const char *s, size_t n)
{
    static const char *const any[] = {
        "...", "xxxx", "****", "your_", "your-", "yourkey", "example",
        "placeholder", "changeme", "change_me", "dummy", "redacted",
        "${", "{{", "<", ">", "$(", "%s", "fake", "sample"};
    /* a generic value that names where the secret comes from */
    static const char *const generic[] = {
        "env", "config", "settings", "secret", "token", "password",
        "passwd", "apikey", "api_key", "getenv", "vault", "param"};
    /* keys meant to be public or harmless: Stripe's publishable and
     * test-mode keys */
    static const char *const public_prefix[] = {"pk_live_", "pk_test_",
                                                "sk_test_", "rk_test_"};
    for (size_t i = 0; i < sizeof any / sizeof any[0]; i++)
        if (contains_ci(s, n, any[i]))
            return 1;
    for (size_t i = 0; i < sizeof public_prefix / sizeof public_prefix[0]; i++)
        if (n >= strlen(public_prefix[i]) &&
            memcmp(s, public_prefix[i], strlen(public_prefix[i])) == 0)
            return 1;
    if (strcmp(r->id, "generic-secret") == 0) {
        for (size_t i = 0; i < sizeof generic / sizeof generic[0]; i++)
            if (contains_ci(s, n, generic[i]))
                return 1;
        /* Keys mix digits and letters; a value of words ("my-dev-key")
         * is a name, not a secret. */
        int digit = 0, alpha = 0;
        for (size_t i = 0; i < n; i++) {
            digit |= s[i] >= '0' && s[i] <= '9';
            alpha |= (s[i] | 32) >= 'a' && (s[i] | 32) <= 'z';
        }
        if (!digit || !alpha)
            return 1;
    }
    return 0;
}

typedef struct lines {
    const char *buf;
    size_t len;
    const char *low; /* buf lowercased */
    const int64_t *map; /* --history: the real number of each line, or NULL */
    size_t nmap;
    const char *via; /* paid calls in this file: "fusebox" or "direct";
                        NULL until a paid call asks */
    size_t *start; /* offsets of line starts, built on first use */
    size_t n;
} lines;

static int64_t line_of(lines *L, size_t off, int64_t *col)
{
    if (L->start == NULL) {
        size_t cap = 1024;
        L->start = malloc(cap * sizeof *L->start);
        if (L->start == NULL)
            return 0;
        L->start[L->n++] = 0;
        for (const char *p = L->buf, *e = L->buf + L->len;
             (p = memchr(p, '\n', (size_t)(e - p))) != NULL; p++) {
            if (L->n == cap) {
                size_t *v = realloc(L->start, 2 * cap * sizeof *v);
                if (v == NULL)
                    break;
                L->start = v;
                cap *= 2;
            }
            L->start[L->n++] = (size_t)(p - L->buf) + 1;
        }
    }
    size_t lo = 0, hi = L->n;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (L->start[mid] <= off)
            lo = mid;
        else
            hi = mid;
    }
    *col = (int64_t)(off - L->start[lo]) + 1;
    if (L->map != NULL) /* the commit's own line numbers */
        return lo < L->nmap ? L->map[lo] : 0;
    return (int64_t)lo + 1;
}

/* 16 hex digits of the SHA-256 of parts: rule, file, line, secret. */
static void digest(const char *rule_id, const char *file, int64_t line,
                   const char *s, size_t n, char out[17])
{
    char *head = NULL;
    uint8_t h[32];
    int hl = asprintf(&head, "%s\n%s\n%lld\n", rule_id, file, (long long)line);
    char *t = hl >= 0 ? malloc((size_t)hl + n + 1) : NULL;
    memset(out, '0', 16);
    out[16] = '\0';
    if (t != NULL) {
        memcpy(t, head, (size_t)hl);
        memcpy(t + hl, s, n);
        fb_key_hash(t, (size_t)hl + n, h);
        for (int i = 0; i < 8; i++)
            snprintf(out + 2 * i, 3, "%02x", h[i]);
    }
    free(t);
    if (hl >= 0)
        free(head);
}

/* The finding's fingerprint: rule, file, line and secret (stable while
 * the secret stays where it is). */
static void fingerprint(const char *rule_id, const char *file, int64_t line,
                        const char *s, size_t n, char out[17])
{
    digest(rule_id, file, line, s, n, out);
}

/* Paid calls in a file that names the gateway (a base URL from the
 * environment, FUSEBOX_URL, the default port) go through fusebox; looked
 * for once per file, when it has a paid call. */
static const char *via_of(lines *L)
{
    static const char *const gateway[] = {"openai_base_url",
                                          "anthropic_base_url", "fusebox_url",
                                          "fusebox", ":8787"};
    if (L->via == NULL) {
        L->via = "direct";
        for (size_t i = 0; i < sizeof gateway / sizeof gateway[0]; i++)
            if (memmem(L->low, L->len, gateway[i], strlen(gateway[i])) != NULL)
                L->via = "fusebox";
    }
    return L->via;
}

/* Where secrets were found in this buffer: a weak rule's match that
 * overlaps one is the same secret, already reported. Sorted (by start)
 * before the weak rules run, then searched. */
typedef struct spans {
    size_t *v; /* start, end pairs */
    size_t n, cap;
    int sorted;
} spans;

#define SPAN_MAX 4096 /* a secret longer than this is not one */

static int cmp_span(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

static int overlaps(spans *sp, size_t so, size_t eo)
{
    if (sp->n == 0)
        return 0;
    if (!sp->sorted) {
        qsort(sp->v, sp->n / 2, 2 * sizeof *sp->v, cmp_span);
        sp->sorted = 1;
    }
    /* the last span that starts before eo, then back while they could
     * still reach so */
    size_t lo = 0, hi = sp->n / 2;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (sp->v[2 * mid] < eo)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t i = lo; i-- > 0;) {
        if (sp->v[2 * i + 1] > so)
            return 1;
        if (sp->v[2 * i] + SPAN_MAX < so)
            break;
    }
    return 0;
}

static void span_add(spans *sp, size_t so, size_t eo)
{
    if (sp->n + 2 > sp->cap) {
        size_t cap = sp->cap ? 2 * sp->cap : 16;
        size_t *v = realloc(sp->v, cap * sizeof *v);
        if (v == NULL)
            return;
        sp->v = v;
        sp->cap = cap;
    }
    sp->v[sp->n++] = so;
    sp->v[sp->n++] = eo;
    sp->sorted = 0;
}

/* One line [ls, le) of buf, against one rule. */
static void match_line(const rule *r, pcre2_match_context *mc,
                       const char *file, lines *L, spans *sp, const char *ls,
                       const char *le,
                       void (*fn)(void *, const fb_scan_finding *), void *arg)
{
    const char *lls = L->low + (ls - L->buf);
    if (memmem(lls, (size_t)(le - ls), "fusebox:allow", 13) != NULL)
        return;
    PCRE2_SIZE start = 0, n = (PCRE2_SIZE)(le - ls);
    while (start <= n) {
        int rc = pcre2_match(r->re, (PCRE2_SPTR)ls, n, start, 0, r->md, mc);
        if (rc <= 0)
            return;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(r->md);
        int g = rc > 1 && ov[2] != PCRE2_UNSET ? 1 : 0;
        size_t so = ov[2 * g], eo = ov[2 * g + 1];
        const char *sec = ls + so;
        size_t sl = eo - so;
        size_t abs = (size_t)(sec - L->buf);
        int secret = strcmp(r->kind, "secret") == 0;
        /* Hex holds 4 bits a character at most: its threshold is half a
         * bit lower, or most random hex keys would pass as names. */
        double need = r->entropy;
        size_t hexn = 0;
        while (hexn < sl && strchr("0123456789abcdefABCDEF", sec[hexn]))
            hexn++;
        if (hexn == sl && need > 0.5)
            need -= 0.5;
        if (sl > 0 && (!secret || !placeholder(r, sec, sl)) &&
            (need <= 0 || entropy(sec, sl) >= need) &&
            !(r->weak && overlaps(sp, abs, abs + sl))) {
            if (secret)
                span_add(sp, abs, abs + sl);
            fb_scan_finding f = {.kind = r->kind,
                                 .rule = r->id,
                                 .desc = r->desc,
                                 .file = file,
                                 .length = sl,
                                 .via = strcmp(r->kind, "paid") == 0
                                            ? via_of(L)
                                            : NULL};
            f.line = line_of(L, (size_t)(sec - L->buf), &f.column);
            if (secret) /* never the secret: 4 characters and the length */
                snprintf(f.redacted, sizeof f.redacted, "%.*s...(%zu chars)",
                         (int)(sl < 4 ? sl : 4), sec, sl);
            else /* what was seen, printable, cut short */
                for (size_t i = 0, o = 0; i < sl && o + 1 < 48; i++)
                    f.redacted[o++] = sec[i] >= 0x20 && sec[i] < 0x7f
                                          ? sec[i]
                                          : '?';
            fingerprint(r->id, file, f.line, sec, sl, f.fingerprint);
            digest(r->id, "", 0, sec, sl, f.key);
            fn(arg, &f);
        }
        start = ov[1] > ov[0] ? ov[1] : ov[0] + 1;
    }
}

void fb_scan_path(const fb_scan_rules *rs, const char *file,
                  void (*fn)(void *arg, const fb_scan_finding *f), void *arg)
{
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    for (size_t k = 0; k < rs->n; k++) {
        const rule *r = &rs->v[k];
        for (size_t i = 0; i < r->npath; i++) {
            /* a pattern with a / is matched against the whole path */
            const char *subject = strchr(r->path[i], '/') ? file : base;
            if (fnmatch(r->path[i], subject, 0) != 0)
                continue;
            fb_scan_finding f = {.kind = r->kind,
                                 .rule = r->id,
                                 .desc = r->desc,
                                 .file = file,
                                 .line = 1,
                                 .column = 1,
                                 .length = strlen(file)};
            snprintf(f.redacted, sizeof f.redacted, "%s", base);
            fingerprint(r->id, file, 1, file, strlen(file), f.fingerprint);
            fn(arg, &f);
            return; /* one family per file: the first that knows it */
        }
    }
}

int fb_scan_buffer(const fb_scan_rules *rs, const char *file, const char *buf,
                   size_t len,
                   void (*fn)(void *arg, const fb_scan_finding *f),
                   void *arg)
{
    return fb_scan_buffer_mapped(rs, file, buf, len, NULL, 0, fn, arg);
}

int fb_scan_buffer_mapped(const fb_scan_rules *rs, const char *file,
                          const char *buf, size_t len, const int64_t *map,
                          size_t nmap,
                          void (*fn)(void *arg, const fb_scan_finding *f),
                          void *arg)
{
    if (memchr(buf, '\0', len < BINARY_PROBE ? len : BINARY_PROBE) != NULL)
        return 1;
    /* The prefilter: keywords in a lowercased copy, then only the lines
     * that hold one go to the rule's pattern (once per line and rule). */
    char *low = malloc(len ? len : 1);
    if (low == NULL)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = buf[i];
        low[i] = c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
    }
    lines L = {.buf = buf, .len = len, .low = low, .map = map, .nmap = nmap};
    spans sp = {0};
    /* One pass: for each rule, the ends of the lines holding one of its
     * keywords, in order. */
    typedef struct hits_ {
        size_t *v;
        size_t n, cap;
    } hits_;
    hits_ *per = calloc(rs->n ? rs->n : 1, sizeof *per);
    size_t nl_at = 0; /* the next newline at or after i */
    int nl_known = 0;
    if (per == NULL)
        goto out;
    for (size_t i = 0; i + 1 < len; i++) {
        unsigned pr = pair_of(low + i);
        if (!(rs->pair_map[pr / 64] >> (pr % 64) & 1))
            continue;
        for (uint32_t b = rs->bucket[pr]; b < rs->bucket[pr + 1]; b++) {
            const kwi *k = &rs->kws[rs->order[b]];
            if (k->len > len - i || memcmp(low + i, k->text, k->len) != 0)
                continue;
            if (!nl_known || nl_at < i) {
                const char *nl = memchr(low + i, '\n', len - i);
                nl_at = nl ? (size_t)(nl - low) : len;
                nl_known = 1;
            }
            for (size_t j = 0; j < k->nrules; j++) {
                hits_ *h = &per[k->rules[j]];
                if (h->n > 0 && h->v[h->n - 1] == nl_at)
                    continue; /* this line is in already */
                if (h->n == h->cap) {
                    size_t c2 = h->cap ? 2 * h->cap : 64;
                    size_t *v = realloc(h->v, c2 * sizeof *v);
                    if (v == NULL)
                        goto out;
                    h->v = v;
                    h->cap = c2;
                }
                h->v[h->n++] = nl_at;
            }
        }
    }
    /* The specific rules first, then the weak ones (which may only add). */
    for (size_t k2 = 0; k2 < 2 * rs->n; k2++) {
        size_t k = k2 % rs->n;
        const rule *r = &rs->v[k];
        if (r->weak != (k2 >= rs->n) || r->re == NULL)
            continue;
        for (size_t i = 0; i < per[k].n; i++) {
            const char *le = buf + per[k].v[i], *ls = le;
            while (ls > buf && ls[-1] != '\n')
                ls--;
            match_line(r, rs->mc, file, &L, &sp, ls, le, fn, arg);
        }
    }
out:
    if (per != NULL)
        for (size_t k = 0; k < rs->n; k++)
            free(per[k].v);
    free(per);
    free(sp.v);
    free(L.start);
    free(low);
    return 0;
}

/* ---- the command ---- */

/* --diff: the lines each file gained since BASE (a file new to git gains
 * them all: no entry, all = 1). */
typedef struct diff_file {
    char *path;
    int all;
    int64_t *from, *to; /* added line ranges, 1-based, inclusive */
    size_t n, cap;
} diff_file;

/* --diff: a column a migration adds, and code that uses a name. */
typedef struct column {
    char name[64], table[64];
    char where[256]; /* "db/migrate/...rb:3" */
} column;

typedef struct report {
    json_t *findings;
    size_t files, bytes, binary, large;
    char **ignore;  /* .fuseboxignore lines: fingerprints or path patterns */
    size_t nignore;
    /* --diff */
    int diff;
    const diff_file *cur; /* the file being scanned, with its added lines */
    column *cols;
    size_t ncols;
    char **code;      /* added lines of code (not migrations): "file:line\ttext" */
    size_t ncode;
    /* --history: the commit being read; the secrets seen (file and key) */
    const char *commit;
    fb_map *seen;
    size_t lost; /* findings that could not be reported */
} report;

static int added(const diff_file *d, int64_t line)
{
    if (d == NULL || d->all)
        return 1;
    for (size_t i = 0; i < d->n; i++)
        if (line >= d->from[i] && line <= d->to[i])
            return 1;
    return 0;
}

static int ignored_path(const report *rp, const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    for (size_t i = 0; i < rp->nignore; i++)
        if (fnmatch(rp->ignore[i], path, 0) == 0 ||
            fnmatch(rp->ignore[i], base, 0) == 0)
            return 1;
    return 0;
}

/* s as valid UTF-8 with no control character: a file name is bytes, JSON
 * and SARIF want text, and a terminal must not be driven by a name.
 * Other bytes become '?'. */
static void clean_text(const char *s, char *out, size_t cap)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0;
    while (*p && o + 5 < cap) {
        unsigned char c = *p;
        size_t k = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
        int ok = k > 0 && c != 0xc0 && c != 0xc1 && c < 0xf5;
        for (size_t i = 1; ok && i < k; i++)
            ok = (p[i] & 0xc0) == 0x80;
        if (k == 1 && (c < 0x20 || c == 0x7f))
            ok = 0;
        if (!ok) {
            out[o++] = '?';
            p++;
            continue;
        }
        memcpy(out + o, p, k);
        o += k;
        p += k;
    }
    out[o] = '\0';
}

static void on_finding(void *arg, const fb_scan_finding *f)
{
    report *rp = arg;
    if (rp->commit != NULL) {
        /* --history: secrets only (a paid call of the past ships nothing
         * now), each secret of a file once (its newest commit) */
        char k[4200];
        if (strcmp(f->kind, "secret") != 0)
            return;
        int kl = snprintf(k, sizeof k, "%s\n%s", f->key, f->file);
        if (kl < 0 || (size_t)kl >= sizeof k ||
            fb_map_get(rp->seen, k, (size_t)kl) != NULL)
            return;
        (void)fb_map_put(rp->seen, k, (size_t)kl, (void *)1, NULL);
    }
    if (rp->diff && strcmp(f->kind, "migration") != 0 &&
        !added(rp->cur, f->line))
        return; /* there before BASE */
    for (size_t i = 0; i < rp->nignore; i++)
        if (strcmp(rp->ignore[i], f->fingerprint) == 0)
            return;
    int secret = strcmp(f->kind, "secret") == 0;
    char file[4096], shown[128], desc[256];
    clean_text(f->file, file, sizeof file);
    clean_text(f->redacted, shown, sizeof shown);
    clean_text(f->desc, desc, sizeof desc);
    json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:s,s:I,s:s,s:s}", "kind",
                          f->kind, "rule", f->rule, "message", desc, "file",
                          file, "line", (json_int_t)f->line, "column",
                          (json_int_t)f->column, secret ? "redacted" : "match",
                          shown, "length", (json_int_t)f->length,
                          "fingerprint", f->fingerprint, "tier",
                          secret ? "blocked" : "high");
    if (o == NULL) {
        rp->lost++; /* cannot be reported: the scan fails (exit 3) */
        return;
    }
    if (f->via != NULL && strcmp(f->kind, "paid") == 0)
        json_object_set_new(o, "via", json_string(f->via));
    if (rp->commit != NULL)
        json_object_set_new(o, "commit", json_string(rp->commit));
    json_array_append_new(rp->findings, o);
}

/* All of stream f into *out (malloc'd) and *len; -1 on a read error or
 * ENOMEM (*out freed). */
static int read_all(FILE *f, char **out, size_t *len)
{
    size_t cap = 1 << 16, n = 0, r;
    char *b = malloc(cap);
    while (b && (r = fread(b + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *nb = realloc(b, cap * 2);
            if (nb == NULL) {
                free(b);
                b = NULL;
                break;
            }
            b = nb;
            cap *= 2;
        }
    }
    if (b == NULL || ferror(f)) {
        free(b);
        return -1;
    }
    *out = b;
    *len = n;
    return 0;
}

/* "git -C 'ROOT" into cmd, ROOT quoted for the shell (' becomes '\''),
 * the quote left open for the caller's "' ARGS"; returns the length. */
static size_t git_prefix(const char *root, char *cmd, size_t cap)
{
    /* names as they are (not "caf\303\251"), paths from ROOT */
    size_t o = (size_t)snprintf(cmd, cap, "git -c core.quotePath=false -C '");
    for (const char *p = root; *p && o + 8 < cap; p++) {
        if (*p == '\'') {
            memcpy(cmd + o, "'\\''", 4);
            o += 4;
        } else {
            cmd[o++] = *p;
        }
    }
    cmd[o] = '\0';
    return o;
}

/* --diff: in a migration's added lines, the columns it adds; in other
 * added lines, the code, kept to look for those columns' names. */
static void pair_lines(report *rp, const char *rel, const char *buf,
                       size_t len, int migration)
{
    /* SQL, Rails, Alembic, Django, Knex, Prisma: the table and column. */
    static const char *const adds[] = {
        "(?i)alter\\s+table\\s+(?:if\\s+exists\\s+)?[\"`]?(\\w+)[\"`]?\\s+add\\s+"
        "(?:column\\s+)?(?:if\\s+not\\s+exists\\s+)?[\"`]?(\\w+)",
        "add_column\\s*\\(?\\s*:(\\w+)\\s*,\\s*:(\\w+)",
        "add_column\\(\\s*[\"'](\\w+)[\"']\\s*,\\s*(?:sa\\.)?Column\\(\\s*[\"'](\\w+)",
        "AddField\\(\\s*model_name\\s*=\\s*[\"'](\\w+)[\"']\\s*,\\s*name\\s*=\\s*"
        "[\"'](\\w+)",
        "table\\(\\s*[\"'](\\w+)[\"'][^)]*\\)[^;]*\\.\\w+\\(\\s*[\"'](\\w+)"};
    static pcre2_code *re[sizeof adds / sizeof adds[0]];
    static pcre2_match_data *md;
    if (md == NULL) {
        for (size_t i = 0; i < sizeof adds / sizeof adds[0]; i++) {
            int ec;
            PCRE2_SIZE off;
            re[i] = pcre2_compile((PCRE2_SPTR)adds[i], PCRE2_ZERO_TERMINATED,
                                  0, &ec, &off, NULL);
        }
        md = pcre2_match_data_create(8, NULL);
        if (md == NULL)
            return;
    }
    int64_t line = 1;
    for (const char *p = buf, *e = buf + len; p < e; line++) {
        const char *nl = memchr(p, '\n', (size_t)(e - p));
        const char *le = nl ? nl : e;
        if (added(rp->cur, line)) {
            int is_ddl = 0;
            for (size_t i = 0; i < sizeof adds / sizeof adds[0]; i++) {
                if (re[i] == NULL ||
                    pcre2_match(re[i], (PCRE2_SPTR)p, (size_t)(le - p), 0, 0,
                                md, NULL) < 3)
                    continue;
                PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
                column *v = realloc(rp->cols, (rp->ncols + 1) * sizeof *v);
                if (v == NULL)
                    break;
                rp->cols = v;
                column *c = &rp->cols[rp->ncols++];
                snprintf(c->table, sizeof c->table, "%.*s",
                         (int)(ov[3] - ov[2]), p + ov[2]);
                snprintf(c->name, sizeof c->name, "%.*s", (int)(ov[5] - ov[4]),
                         p + ov[4]);
                snprintf(c->where, sizeof c->where, "%s:%lld", rel,
                         (long long)line);
                is_ddl = 1;
                break;
            }
            if (!migration && !is_ddl) {
                char **v = realloc(rp->code, (rp->ncode + 1) * sizeof *v);
                if (v != NULL) {
                    rp->code = v;
                    if (asprintf(&rp->code[rp->ncode], "%s:%lld\t%.*s", rel,
                                 (long long)line, (int)(le - p), p) >= 0)
                        rp->ncode++;
                }
            }
        }
        p = nl ? nl + 1 : e;
    }
}

/* A word w in s, on word boundaries. */
static int has_word(const char *s, const char *w)
{
    size_t wl = strlen(w);
    for (const char *p = s; (p = strstr(p, w)) != NULL; p++) {
        int l = p == s || !((p[-1] | 32) >= 'a' && (p[-1] | 32) <= 'z') ||
                (p[-1] == '_');
        char a = p[wl];
        int r = !(((a | 32) >= 'a' && (a | 32) <= 'z') || a == '_' ||
                  (a >= '0' && a <= '9'));
        if (p > s && (p[-1] == '_' || (p[-1] >= '0' && p[-1] <= '9')))
            l = 0;
        if (l && r)
            return 1;
    }
    return 0;
}

/* Each added column that added code uses: apply the migration first. */
static void pair_report(report *rp, json_t *reasons)
{
    char why[1024];
    for (size_t i = 0; i < rp->ncols; i++) {
        const column *c = &rp->cols[i];
        for (size_t k = 0; k < rp->ncode; k++) {
            const char *tab = strchr(rp->code[k], '\t');
            if (tab == NULL || !has_word(tab + 1, c->name))
                continue;
            snprintf(why, sizeof why,
                     "%.*s uses column %s, which the migration %s adds: "
                     "apply the migration before deploying the code, and "
                     "check it in the job: fusebox run --job JOB --preflight "
                     "\"psql \\\"$DATABASE_URL\\\" -c 'SELECT %s FROM %s "
                     "LIMIT 0'\" -- COMMAND",
                     (int)(tab - rp->code[k]), rp->code[k], c->name, c->where,
                     c->name, c->table);
            json_array_append_new(reasons, json_string(why));
            break;
        }
    }
}

/* "@@ -a[,b] +c[,d] @@": the lines the hunk removes and adds, and where
 * the added ones start. 0 when it is not a hunk header. */
static int hunk_header(const char *line, long long *old_n, long long *new_at,
                       long long *new_n)
{
    long long a, b = 1, c, d = 1;
    const char *p = line + 3;
    if (strncmp(line, "@@ -", 4) != 0)
        return 0;
    if (sscanf(p, "-%lld,%lld", &a, &b) < 1)
        return 0;
    p = strchr(p, '+');
    if (p == NULL || sscanf(p, "+%lld,%lld", &c, &d) < 1)
        return 0;
    *old_n = b;
    *new_at = c;
    *new_n = d;
    return 1;
}

/* The path of a "+++ " header (git's b/ side), unquoted; "" for
 * /dev/null. A name git still quotes ("a\\tb") is unescaped. */
static void header_path(const char *s, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    if (strncmp(s, "/dev/null", 9) == 0)
        return;
    if (*s == '"') {
        for (s++; *s && *s != '"' && o + 1 < cap; s++) {
            char c = *s;
            if (c == '\\' && s[1]) {
                s++;
                if (*s >= '0' && *s <= '7' && s[1] >= '0' && s[1] <= '7' &&
                    s[2] >= '0' && s[2] <= '7') {
                    c = (char)((s[0] - '0') * 64 + (s[1] - '0') * 8 +
                               (s[2] - '0'));
                    s += 2;
                } else {
                    c = *s == 't' ? '\t' : *s == 'n' ? '\n' : *s;
                }
            }
            out[o++] = c;
        }
    } else {
        /* a name with a blank ends with a tab */
        while (*s && *s != '\t' && *s != '\n' && o + 1 < cap)
            out[o++] = *s++;
    }
    out[o] = '\0';
    if (strncmp(out, "b/", 2) == 0)
        memmove(out, out + 2, strlen(out + 2) + 1);
}

/* `git diff -U0 BASE` of the work tree: the lines each file gained. */
static int git_diff(const char *root, const char *base, diff_file **out,
                    size_t *nout)
{
    char cmd[4400];
    size_t o = git_prefix(root, cmd, sizeof cmd);
    /* BASE is checked to be a revision name: no shell in it, and not an
     * option either. */
    if (base[0] == '-' || base[0] == '\0')
        return -2;
    for (const char *p = base; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              (*p >= '0' && *p <= '9') || strchr("/._-~^@{}", *p)))
            return -2;
    snprintf(cmd + o, sizeof cmd - o,
             "' diff --no-color --no-ext-diff --relative --src-prefix=a/ "
             "--dst-prefix=b/ -U0 --diff-filter=d %s -- 2>/dev/null",
             base);
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        return -1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    diff_file *v = NULL;
    size_t nv = 0;
    long long old_left = 0, new_left = 0;
    char path[4096];
    while ((n = getline(&line, &cap, p)) > 0) {
        /* A hunk's body is exactly its removed and added lines: a body
         * line that looks like a header ("++ b/x" added) is not one. */
        if (old_left > 0 || new_left > 0) {
            if (line[0] == '-')
                old_left--;
            else if (line[0] == '+')
                new_left--;
            else if (line[0] != '\\')
                old_left = new_left = 0; /* not a body line after all */
            if (old_left > 0 || new_left > 0 || line[0] == '-' ||
                line[0] == '+')
                continue;
        }
        if (strncmp(line, "+++ ", 4) == 0) {
            header_path(line + 4, path, sizeof path);
            if (path[0] == '\0')
                continue;
            diff_file *nvp = realloc(v, (nv + 1) * sizeof *v);
            if (nvp == NULL)
                break;
            v = nvp;
            v[nv] = (diff_file){.path = strdup(path)};
            nv++;
        } else if (nv > 0) {
            long long c = 0, d = 1, b = 1;
            if (!hunk_header(line, &b, &c, &d))
                continue;
            old_left = b;
            new_left = d;
            if (d <= 0)
                continue;
            diff_file *f = &v[nv - 1];
            if (f->n == f->cap) {
                size_t nc = f->cap ? 2 * f->cap : 8;
                int64_t *a = realloc(f->from, nc * sizeof *a);
                int64_t *bb = a ? realloc(f->to, nc * sizeof *bb) : NULL;
                if (a)
                    f->from = a;
                if (bb == NULL)
                    continue;
                f->to = bb;
                f->cap = nc;
            }
            f->from[f->n] = c;
            f->to[f->n] = c + d - 1;
            f->n++;
        }
    }
    free(line);
    int st = pclose(p);
    if (st != 0) {
        for (size_t i = 0; i < nv; i++) {
            free(v[i].path);
            free(v[i].from);
            free(v[i].to);
        }
        free(v);
        return -1;
    }
    *out = v;
    *nout = nv;
    return 0;
}

static int scan_file(const fb_scan_rules *rs, report *rp, const char *root,
                     const char *rel)
{
    char path[8192];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", root, rel);
    if (ignored_path(rp, rel))
        return 0;
    /* Regular files only, never through a link (a tracked symlink may
     * point out of the repository, or at a FIFO that would block). */
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ELOOP)
            return 0; /* a symlink */
        /* gone from the work tree: fine for ls-files (deleted, not yet
         * staged), not for a file git diff just named */
        return errno == ENOENT && !rp->diff ? 0 : -1;
    }
    FILE *f = fdopen(fd, "rb");
    if (f == NULL) {
        close(fd);
        return -1;
    }
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return 0;
    }
    if ((uint64_t)st.st_size > MAX_FILE_BYTES) {
        rp->large++;
        fclose(f);
        return 0;
    }
    size_t len = (size_t)st.st_size;
    char *buf = malloc(len ? len : 1);
    if (buf == NULL || fread(buf, 1, len, f) != len) {
        free(buf);
        fclose(f);
        return -1;
    }
    fclose(f);
    rp->files++;
    rp->bytes += len;
    size_t before = json_array_size(rp->findings);
    fb_scan_path(rs, rel, on_finding, rp);
    int migration = json_array_size(rp->findings) > before;
    int binary = fb_scan_buffer(rs, rel, buf, len, on_finding, rp) == 1;
    if (binary)
        rp->binary++;
    else if (rp->diff)
        pair_lines(rp, rel, buf, len, migration);
    free(buf);
    return 0;
}

/* The files git tracks or would track under root (NUL-separated into
 * *out), or -1 when root is not in a git work tree. */
static int git_list(const char *root, int untracked_only, char **out,
                    size_t *len);

static int git_files(const char *root, char **out, size_t *len)
{
    return git_list(root, 0, out, len);
}

static int git_files_untracked(const char *root, char **out, size_t *len)
{
    return git_list(root, 1, out, len);
}

static int git_list(const char *root, int untracked_only, char **out,
                    size_t *len)
{
    char cmd[4200];
    size_t o = git_prefix(root, cmd, sizeof cmd);
    snprintf(cmd + o, sizeof cmd - o,
             "' ls-files -z %s--others --exclude-standard 2>/dev/null",
             untracked_only ? "" : "--cached ");
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        return -1;
    char *b = NULL;
    size_t n = 0;
    int got = read_all(p, &b, &n);
    int st = pclose(p);
    if (got != 0 || st != 0) {
        free(b);
        return -1;
    }
    *out = b;
    *len = n;
    return 0;
}

static int walk(const fb_scan_rules *rs, report *rp, const char *root,
                const char *rel)
{
    char path[8192];
    snprintf(path, sizeof path, "%s%s%s", root, rel[0] ? "/" : "", rel);
    DIR *d = opendir(path);
    if (d == NULL)
        return -1;
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 ||
            strcmp(e->d_name, ".git") == 0)
            continue;
        char sub[4096];
        snprintf(sub, sizeof sub, "%s%s%s", rel, rel[0] ? "/" : "",
                 e->d_name);
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", root, sub);
        if (lstat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode))
            rc = walk(rs, rp, root, sub);
        else if (S_ISREG(st.st_mode))
            rc = scan_file(rs, rp, root, sub);
    }
    closedir(d);
    return rc;
}

static void load_ignore(report *rp, const char *root)
{
    char path[4096], line[1024];
    snprintf(path, sizeof path, "%s/.fuseboxignore", root);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    while (fgets(line, sizeof line, f)) {
        char *s = line, *e = line + strlen(line);
        while (s < e && (*s == ' ' || *s == '\t'))
            s++;
        while (e > s && (e[-1] == '\n' || e[-1] == '\r' || e[-1] == ' '))
            *--e = '\0';
        if (s == e || *s == '#')
            continue;
        char **v = realloc(rp->ignore, (rp->nignore + 1) * sizeof *v);
        if (v == NULL)
            break;
        rp->ignore = v;
        if ((rp->ignore[rp->nignore] = strdup(s)) != NULL)
            rp->nignore++;
    }
    fclose(f);
}

static int read_text(const char *path, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -1;
    int bad = read_all(f, out, len);
    fclose(f);
    return bad;
}

/* --history: every commit's added lines (git log -p -U0, newest first),
 * scanned per commit and file as one buffer; a finding's line is mapped
 * back through hist_lines. Secrets only. */
static void hist_flush(const fb_scan_rules *rs, report *rp, const char *file,
                       char *buf, size_t len, const int64_t *nums,
                       size_t nlines)
{
    if (file[0] == '\0' || len == 0 || ignored_path(rp, file))
        return;
    (void)fb_scan_buffer_mapped(rs, file, buf, len, nums, nlines, on_finding,
                                rp);
}

static int scan_history(const fb_scan_rules *rs, report *rp, const char *root)
{
    char cmd[4400];
    size_t o = git_prefix(root, cmd, sizeof cmd);
    /* merges too (what a merge's resolution added, against its first
     * parent) */
    snprintf(cmd + o, sizeof cmd - o,
             "' log -p -U0 --no-color --no-ext-diff --no-renames --relative "
             "--src-prefix=a/ --dst-prefix=b/ --diff-merges=first-parent "
             "--format=%%x01%%H HEAD -- 2>/dev/null");
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        return -1;
    char *line = NULL, *buf = NULL, file[4096] = "", commit[16] = "";
    size_t lcap = 0, blen = 0, bcap = 0, nl = 0, lncap = 0;
    int64_t *nums = NULL, at = 0;
    long long old_left = 0, new_left = 0;
    ssize_t n;
    int rc = 0;
    while ((n = getline(&line, &lcap, p)) > 0) {
        if (line[n - 1] == '\n')
            line[--n] = '\0';
        /* a hunk's body: exactly its removed and added lines */
        int body = 0;
        if (old_left > 0 || new_left > 0) {
            if (line[0] == '-' && old_left > 0) {
                old_left--;
                continue;
            }
            if (line[0] == '+' && new_left > 0) {
                new_left--;
                body = 1;
            } else if (line[0] == '\\') {
                continue;
            } else {
                old_left = new_left = 0;
            }
        }
        int boundary = !body && (line[0] == '\x01' ||
                                 strncmp(line, "diff --git ", 11) == 0);
        if (boundary) {
            hist_flush(rs, rp, file, buf, blen, nums, nl);
            blen = nl = 0;
            if (line[0] == '\x01') {
                snprintf(commit, sizeof commit, "%.12s", line + 1);
                rp->commit = commit;
                file[0] = '\0';
            }
            continue;
        }
        if (!body && strncmp(line, "+++ ", 4) == 0) {
            header_path(line + 4, file, sizeof file);
            continue;
        }
        long long hb, hc, hd;
        if (!body && hunk_header(line, &hb, &hc, &hd)) {
            at = hc;
            old_left = hb;
            new_left = hd;
            continue;
        }
        if (!body || file[0] == '\0')
            continue;
        /* an added line: into the buffer, with its number */
        size_t ll = (size_t)n - 1;
        if (blen + ll + 1 > bcap) {
            size_t c2 = bcap ? 2 * bcap : 1 << 16;
            while (c2 < blen + ll + 1)
                c2 *= 2;
            char *b = realloc(buf, c2);
            if (b == NULL) {
                rc = -1;
                break;
            }
            buf = b;
            bcap = c2;
        }
        memcpy(buf + blen, line + 1, ll);
        buf[blen + ll] = '\n';
        blen += ll + 1;
        if (nl == lncap) {
            size_t c2 = lncap ? 2 * lncap : 1024;
            int64_t *v = realloc(nums, c2 * sizeof *v);
            if (v == NULL) {
                rc = -1;
                break;
            }
            nums = v;
            lncap = c2;
        }
        nums[nl++] = at++;
        rp->bytes += ll + 1;
    }
    if (rc == 0)
        hist_flush(rs, rp, file, buf, blen, nums, nl);
    rp->commit = NULL;
    free(line);
    free(buf);
    free(nums);
    if (pclose(p) != 0)
        rc = -1;
    return rc;
}

/* A relative path as a URI reference (RFC 3986): unreserved bytes and
 * "/" as they are, every other byte %XX. */
static void uri_path(const char *p, char *out, size_t cap)
{
    size_t o = 0;
    for (; *p && o + 4 < cap; p++) {
        unsigned char c = (unsigned char)*p;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            (c >= '0' && c <= '9') || strchr("-._~/", c))
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, cap - o, "%%%02X", c);
    }
    out[o] = '\0';
}

/* SARIF 2.1.0, as GitHub code scanning takes it: the rules that have
 * results, a result per finding with its location and a partial
 * fingerprint, and never a secret (its message holds the redaction). */
static char *sarif_text(json_t *findings, const char *tier, json_t *reasons)
{
    json_t *rules = json_array(), *results = json_array(), *index = json_object();
    size_t i;
    json_t *f;
    char msg[512];
    json_array_foreach(findings, i, f)
    {
        const char *rid = json_string_value(json_object_get(f, "rule"));
        const char *kind = json_string_value(json_object_get(f, "kind"));
        const char *desc = json_string_value(json_object_get(f, "message"));
        const char *via = json_string_value(json_object_get(f, "via"));
        int secret = strcmp(kind, "secret") == 0;
        json_t *at = json_object_get(index, rid);
        if (at == NULL) {
            json_t *r = json_pack(
                "{s:s,s:s,s:{s:s},s:{s:s},s:{s:[s]}}", "id", rid, "name",
                rid, "shortDescription", "text", desc && *desc ? desc : rid,
                "defaultConfiguration", "level", secret ? "error" : "warning",
                "properties", "tags", kind);
            at = json_integer((json_int_t)json_array_size(rules));
            json_array_append_new(rules, r);
            json_object_set_new(index, rid, at);
        }
        if (secret)
            snprintf(msg, sizeof msg,
                     "%s: %s. Remove it from the repository and rotate it.",
                     desc, json_string_value(json_object_get(f, "redacted")));
        else
            snprintf(msg, sizeof msg, "%s%s%s: %s", desc,
                     via ? ", called " : "",
                     via ? (strcmp(via, "direct") == 0
                                ? "straight to the provider"
                                : "through fusebox")
                         : "",
                     json_string_value(json_object_get(f, "match")));
        char uri[3 * 4096];
        uri_path(json_string_value(json_object_get(f, "file")), uri,
                 sizeof uri);
        json_t *res = json_pack(
            "{s:s,s:I,s:s,s:{s:s},s:[{s:{s:{s:s,s:s},s:{s:I,s:I}}}],"
            "s:{s:s}}",
            "ruleId", rid, "ruleIndex", json_integer_value(at), "level",
            secret ? "error" : "warning", "message", "text", msg, "locations",
            "physicalLocation", "artifactLocation", "uri", uri, "uriBaseId",
            "%SRCROOT%", "region", "startLine",
            json_integer_value(json_object_get(f, "line")), "startColumn",
            json_integer_value(json_object_get(f, "column")),
            "partialFingerprints", "fuseboxFingerprint/v1",
            json_string_value(json_object_get(f, "fingerprint")));
        json_array_append_new(results, res);
    }
    json_decref(index);
    json_t *doc = json_pack(
        "{s:s,s:s,s:[{s:{s:{s:s,s:s,s:o}},s:o,s:{s:s,s:O}}]}", "$schema",
        "https://json.schemastore.org/sarif-2.1.0.json", "version", "2.1.0",
        "runs", "tool", "driver", "name", "fusebox scan", "version",
        FB_SCAN_VERSION, "rules", rules, "results",
        results, "properties", "tier", tier, "reasons", reasons);
    char *t = doc ? json_dumps(doc, JSON_INDENT(2)) : NULL;
    json_decref(doc);
    return t;
}

int fb_cli_scan(int argc, char **argv)
{
    static const struct option opts[] = {
        {"format", required_argument, NULL, 'f'},
        {"fail-on", required_argument, NULL, 'F'},
        {"rules", required_argument, NULL, 'r'},
        {"diff", required_argument, NULL, 'd'},
        {"history", no_argument, NULL, 'H'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    static const char usage[] =
        "usage: fusebox scan [PATH] [--diff BASE | --history] "
        "[--format text|json|sarif] [--fail-on high|blocked|never] "
        "[--rules FILE]\n";
    const char *format = "text", *fail_on = "blocked", *rules_file = NULL,
               *base = NULL;
    diff_file *df = NULL;
    size_t ndf = 0;
    int o, rc = 3, history = 0;
    optind = 1;
    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case 'f': format = optarg; break;
        case 'F': fail_on = optarg; break;
        case 'r': rules_file = optarg; break;
        case 'd': base = optarg; break;
        case 'H': history = 1; break;
        case 'h': fputs(usage, stdout); return 0;
        default: fputs(usage, stderr); return 2;
        }
    }
    int json = strcmp(format, "json") == 0;
    int sarif = strcmp(format, "sarif") == 0;
    int fail_rank = strcmp(fail_on, "high") == 0      ? 1
                    : strcmp(fail_on, "blocked") == 0 ? 2
                    : strcmp(fail_on, "never") == 0   ? 3
                                                      : -1;
    if ((!json && !sarif && strcmp(format, "text") != 0) || fail_rank < 0 ||
        (history && base != NULL) ||
        argc - optind > 1) {
        fprintf(stderr, "fusebox scan: %s", usage);
        return 2;
    }
    const char *root = optind < argc ? argv[optind] : ".";
    struct stat st;
    if (stat(root, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "fusebox scan: %s is not a directory\n", root);
        return 3;
    }
    fb_scan_rules *rs = fb_scan_rules_builtin();
    report rp = {.findings = json_array()};
    char *files = NULL;
    size_t flen = 0;
    if (rs == NULL || rp.findings == NULL)
        goto out;
    if (rules_file != NULL) {
        char *text, err[512];
        size_t len;
        if (read_text(rules_file, &text, &len) != 0) {
            fprintf(stderr, "fusebox scan: cannot read %s\n", rules_file);
            goto out;
        }
        fb_err e = fb_scan_rules_load(rs, text, len, rules_file, err,
                                      sizeof err);
        free(text);
        if (e != FB_OK) {
            fprintf(stderr, "fusebox scan: %s\n", err);
            rc = 2;
            goto out;
        }
    }
    load_ignore(&rp, root);
    int walked;
    if (base != NULL) {
        /* What changed since BASE: the lines modified files gained, and
         * files new to git (untracked ones too) whole. */
        int g = git_diff(root, base, &df, &ndf);
        if (g != 0) {
            fprintf(stderr,
                    g == -2 ? "fusebox scan: '%s' is not a revision name\n"
                            : "fusebox scan: git diff %s failed (is %s in "
                              "a git work tree, and %s a revision?)\n",
                    base, root, base);
            rc = g == -2 ? 2 : 3;
            goto out;
        }
        rp.diff = 1;
        walked = 0;
        for (size_t i = 0; i < ndf && walked == 0; i++) {
            if (df[i].path == NULL)
                continue;
            rp.cur = &df[i];
            walked = scan_file(rs, &rp, root, df[i].path);
        }
        /* untracked: new whole */
        diff_file whole = {.all = 1};
        if (walked == 0 && git_files_untracked(root, &files, &flen) == 0)
            for (size_t i = 0; i < flen && walked == 0;) {
                const char *rel = files + i;
                size_t l = strnlen(rel, flen - i);
                rp.cur = &whole;
                walked = scan_file(rs, &rp, root, rel);
                i += l + 1;
            }
        rp.cur = NULL;
    } else if (git_files(root, &files, &flen) == 0) {
        walked = 0;
        const char *prev = "";
        for (size_t i = 0; i < flen && walked == 0;) {
            const char *rel = files + i;
            size_t l = strnlen(rel, flen - i);
            /* a file in a merge conflict is listed once per stage */
            if (strcmp(rel, prev) != 0)
                walked = scan_file(rs, &rp, root, rel);
            prev = rel;
            i += l + 1;
        }
    } else {
        walked = walk(rs, &rp, root, "");
    }
    if (walked != 0) {
        fprintf(stderr, "fusebox scan: cannot read every file under %s\n",
                root);
        goto out;
    }
    if (history && (rp.seen = fb_map_new()) == NULL)
        goto out;
    if (history && scan_history(rs, &rp, root) != 0) {
        fprintf(stderr, "fusebox scan: cannot read the history of %s (a git "
                        "work tree with commits?)\n",
                root);
        goto out;
    }
    if (rp.lost > 0) {
        fprintf(stderr, "fusebox scan: %zu findings could not be reported "
                        "(out of memory)\n",
                rp.lost);
        goto out;
    }
    /* The tier and its reasons. */
    size_t nf = json_array_size(rp.findings), nsecret = 0, npaid = 0,
           ndirect = 0, nschema = 0, i;
    json_t *x, *reasons = json_array();
    json_array_foreach(rp.findings, i, x)
    {
        const char *k = json_string_value(json_object_get(x, "kind"));
        const char *via = json_string_value(json_object_get(x, "via"));
        nsecret += strcmp(k, "secret") == 0;
        npaid += strcmp(k, "paid") == 0;
        ndirect += via != NULL && strcmp(via, "direct") == 0;
        nschema += strcmp(k, "schema") == 0 || strcmp(k, "migration") == 0;
    }
    const char *tier = nsecret   ? "blocked"
                       : npaid || nschema ? "high"
                                          : "low";
    int rank = nsecret ? 2 : npaid || nschema ? 1 : 0;
    char why[256];
    if (nsecret) {
        snprintf(why, sizeof why,
                 "%zu live-looking secret%s: remove, rotate, then ship",
                 nsecret, nsecret == 1 ? "" : "s");
        json_array_append_new(reasons, json_string(why));
    }
    if (npaid) {
        snprintf(why, sizeof why,
                 "%zu paid API call site%s: run it in staging under a "
                 "budget, and have an engineer review it",
                 npaid, npaid == 1 ? "" : "s");
        json_array_append_new(reasons, json_string(why));
    }
    if (ndirect) {
        snprintf(why, sizeof why,
                 "%zu of them call the provider directly, not through "
                 "fusebox: set OPENAI_BASE_URL (or ANTHROPIC_BASE_URL) to "
                 "the gateway",
                 ndirect);
        json_array_append_new(reasons, json_string(why));
    }
    if (nschema) {
        snprintf(why, sizeof why,
                 "%zu schema change%s: apply the migration before the code "
                 "that needs it is deployed (fusebox run --preflight)",
                 nschema, nschema == 1 ? "" : "s");
        json_array_append_new(reasons, json_string(why));
    }
    if (rp.diff)
        pair_report(&rp, reasons);
    if (rp.large > 0) {
        snprintf(why, sizeof why,
                 "%zu file%s over 16 MiB not read: look at %s by hand",
                 rp.large, rp.large == 1 ? "" : "s",
                 rp.large == 1 ? "it" : "them");
        json_array_append_new(reasons, json_string(why));
    }
    if (nf == 0)
        json_array_append_new(reasons,
                              json_string("no secret, paid call or schema "
                                          "change: fast lane"));
    if (sarif) {
        char *t = sarif_text(rp.findings, tier, reasons);
        if (t == NULL)
            goto out;
        printf("%s\n", t);
        free(t);
    } else if (json) {
        json_t *root_j = json_pack(
            "{s:i,s:s,s:o,s:O,s:{s:I,s:I,s:I,s:I}}", "version", 1, "tier",
            tier, "reasons", reasons, "findings", rp.findings, "stats",
            "files", (json_int_t)rp.files, "bytes", (json_int_t)rp.bytes,
            "skipped_binary", (json_int_t)rp.binary, "skipped_large",
            (json_int_t)rp.large);
        reasons = NULL; /* the root owns it */
        char *t = root_j ? json_dumps(root_j, JSON_INDENT(2)) : NULL;
        json_decref(root_j);
        if (t == NULL)
            goto out;
        printf("%s\n", t);
        free(t);
    } else {
        json_array_foreach(rp.findings, i, x)
        {
            const char *k = json_string_value(json_object_get(x, "kind"));
            const char *via = json_string_value(json_object_get(x, "via"));
            int sec = strcmp(k, "secret") == 0;
            const char *commit =
                json_string_value(json_object_get(x, "commit"));
            printf("%s:%lld:%lld: %s: %s (%s): %s%s%s%s%s [%s]\n",
                   json_string_value(json_object_get(x, "file")),
                   (long long)json_integer_value(json_object_get(x, "line")),
                   (long long)json_integer_value(json_object_get(x, "column")),
                   sec ? "blocked" : "high",
                   json_string_value(json_object_get(x, "message")),
                   json_string_value(json_object_get(x, "rule")),
                   json_string_value(json_object_get(x, sec ? "redacted"
                                                            : "match")),
                   via ? ", via " : "", via ? via : "",
                   commit ? ", in commit " : "", commit ? commit : "",
                   json_string_value(json_object_get(x, "fingerprint")));
        }
        printf("tier: %s (%zu secret%s, %zu paid call site%s, %zu schema "
               "change%s) in %zu files, %zu bytes\n",
               tier, nsecret, nsecret == 1 ? "" : "s", npaid,
               npaid == 1 ? "" : "s", nschema, nschema == 1 ? "" : "s",
               rp.files, rp.bytes);
        json_array_foreach(reasons, i, x)
        {
            printf("  %s\n", json_string_value(x));
        }
    }
    json_decref(reasons);
    rc = rank >= fail_rank ? 1 : 0;
out:
    free(files);
    for (size_t k = 0; k < ndf; k++) {
        free(df[k].path);
        free(df[k].from);
        free(df[k].to);
    }
    free(df);
    for (size_t k = 0; k < rp.ncode; k++)
        free(rp.code[k]);
    free(rp.code);
    free(rp.cols);
    fb_map_free(rp.seen, NULL);
    for (size_t k = 0; k < rp.nignore; k++)
        free(rp.ignore[k]);
    free(rp.ignore);
    json_decref(rp.findings);
    fb_scan_rules_free(rs);
    return rc;
}
