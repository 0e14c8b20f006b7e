/* json.c - a strict JSON reader into flat tokens; see json.h.
 *
 * A token is a value: its span in the document, and for a container the
 * index just past its subtree, so a sibling is one step away. Object
 * members are key, value, key, value... Nothing is decoded until asked
 * for: most bodies never have a string with an escape in it. */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define MAX_DEPTH 2048 /* jansson's JSON_PARSER_MAX_DEPTH */
#define INLINE_TOKENS 64

enum { F_ESC = 1, F_INT = 2 };

typedef struct {
    uint32_t off, len; /* the value's bytes */
    uint32_t end;      /* the first token after this value's subtree */
    uint32_t n;        /* containers: elements, or pairs */
    uint8_t type;      /* fb_json_type */
    uint8_t flags;     /* F_ESC (string with escapes), F_INT */
} tok;

struct fb_json {
    const char *s;
    size_t n;
    tok *t;
    uint32_t nt, cap;
    tok inline_t[INLINE_TOKENS]; /* most bodies fit: no second malloc */
};

typedef struct {
    fb_json *j;
    const unsigned char *s;
    size_t n;
    char *err;
    size_t cap;
    int failed;
} parser;

/* A key, decoded: for the duplicate check and for sorting. */
typedef struct {
    const char *p;
    size_t len;
    int val; /* the value's token */
} key_ref;

static size_t fail(parser *p, size_t at, const char *what)
{
    if (!p->failed && p->cap > 0)
        snprintf(p->err, p->cap, "%s at byte %zu", what, at);
    p->failed = 1;
    return (size_t)-1;
}

static int push(fb_json *j, fb_json_type type, size_t off, uint8_t flags)
{
    if (j->nt == j->cap) {
        if (j->cap >= UINT32_MAX / 4)
            return -1;
        uint32_t cap = j->cap * 2;
        tok *t = j->t == j->inline_t ? malloc(cap * sizeof *t)
                                     : realloc(j->t, cap * sizeof *t);
        if (t == NULL)
            return -1;
        if (j->t == j->inline_t)
            memcpy(t, j->inline_t, sizeof j->inline_t);
        j->t = t;
        j->cap = cap;
    }
    tok *k = &j->t[j->nt];
    k->off = (uint32_t)off;
    k->len = 0;
    k->n = 0;
    k->type = (uint8_t)type;
    k->flags = flags;
    k->end = ++j->nt;
    return (int)(j->nt - 1);
}

static size_t skip_ws(const unsigned char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' ||
                     s[i] == '\t'))
        i++;
    return i;
}

static int hex4(const unsigned char *s, size_t n, size_t i, uint32_t *out)
{
    uint32_t v = 0;
    if (i + 4 > n)
        return -1;
    for (size_t k = i; k < i + 4; k++) {
        unsigned c = s[k];
        int d = c >= '0' && c <= '9'   ? (int)(c - '0')
                : c >= 'a' && c <= 'f' ? (int)(c - 'a' + 10)
                : c >= 'A' && c <= 'F' ? (int)(c - 'A' + 10)
                                       : -1;
        if (d < 0)
            return -1;
        v = v << 4 | (uint32_t)d;
    }
    *out = v;
    return 0;
}

/* The length of the UTF-8 sequence at s, 0 if it is not valid (overlong,
 * a surrogate, past U+10FFFF, cut short). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4, cp = c & 0x07;
    else
        return 0;
    if (n < len)
        return 0;
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[k] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

/* s[i] is the opening quote: the index past the closing one. */
static size_t scan_string(parser *p, size_t i, uint8_t *flags)
{
    const unsigned char *s = p->s;
    size_t n = p->n;
    i++;
    for (;;) {
        while (i < n && s[i] >= 0x20 && s[i] < 0x80 && s[i] != '"' &&
               s[i] != '\\')
            i++;
        if (i >= n)
            return fail(p, i, "premature end of input in a string");
        unsigned c = s[i];
        if (c == '"')
            return i + 1;
        if (c < 0x20)
            return fail(p, i, "control character in a string");
        if (c != '\\') {
            size_t len = utf8_seq(s + i, n - i);
            if (len == 0)
                return fail(p, i, "invalid UTF-8");
            i += len;
            continue;
        }
        *flags |= F_ESC;
        if (i + 1 >= n)
            return fail(p, i, "premature end of input in a string");
        c = s[i + 1];
        if (c != 'u') {
            if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' &&
                c != 'n' && c != 'r' && c != 't')
                return fail(p, i, "invalid escape");
            i += 2;
            continue;
        }
        uint32_t cp, lo;
        if (hex4(s, n, i + 2, &cp) != 0)
            return fail(p, i, "invalid \\u escape");
        if (cp == 0)
            return fail(p, i, "\\u0000 is not allowed");
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return fail(p, i, "invalid Unicode escape (lone low surrogate)");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (i + 7 >= n || s[i + 6] != '\\' || s[i + 7] != 'u' ||
                hex4(s, n, i + 8, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
                return fail(p, i, "invalid Unicode escape (lone surrogate)");
            i += 6;
        }
        i += 6;
    }
}

static int is_digit(unsigned c)
{
    return c >= '0' && c <= '9';
}

/* Parse s[0..n) as a number with strtoll or strtod (which need a NUL). */
static int number_value(const char *s, size_t n, int integer, int64_t *iv,
                        double *dv)
{
    char small[64], *buf = n < sizeof small ? small : malloc(n + 1);
    int ok;
    if (buf == NULL)
        return -2;
    memcpy(buf, s, n);
    buf[n] = '\0';
    errno = 0;
    if (integer) {
        long long v = strtoll(buf, NULL, 10);
        ok = errno != ERANGE;
        *iv = v;
    } else {
        double v = strtod(buf, NULL);
        ok = !((v == HUGE_VAL || v == -HUGE_VAL) && errno == ERANGE);
        *dv = v;
    }
    if (buf != small)
        free(buf);
    return ok ? 0 : -1;
}

static size_t scan_number(parser *p, size_t i, uint8_t *flags)
{
    const unsigned char *s = p->s;
    size_t n = p->n, st = i;
    int integer = 1;
    if (s[i] == '-')
        i++;
    if (i < n && s[i] == '0') {
        if (++i < n && is_digit(s[i]))
            return fail(p, i, "invalid number (leading zero)");
    } else if (i < n && s[i] >= '1' && s[i] <= '9') {
        while (i < n && is_digit(s[i]))
            i++;
    } else {
        return fail(p, i, "invalid number");
    }
    if (i < n && s[i] == '.') {
        integer = 0;
        if (++i >= n || !is_digit(s[i]))
            return fail(p, i, "invalid number");
        while (i < n && is_digit(s[i]))
            i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        integer = 0;
        if (++i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        if (i >= n || !is_digit(s[i]))
            return fail(p, i, "invalid number");
        while (i < n && is_digit(s[i]))
            i++;
    }
    /* Up to 18 digits always fits an int64; reals are rare in requests. */
    if (!integer || i - st > 18) {
        int64_t iv;
        double dv;
        int r = number_value((const char *)s + st, i - st, integer, &iv, &dv);
        if (r == -2)
            return fail(p, st, "out of memory");
        if (r != 0)
            return fail(p, st, integer ? "too big integer"
                                       : "real number overflow");
    }
    if (integer)
        *flags |= F_INT;
    return i;
}

/* Decode string token t into out (room for t->len bytes): its length. */
static size_t decode(const char *doc, const tok *t, char *out)
{
    const unsigned char *p = (const unsigned char *)doc + t->off + 1;
    const unsigned char *e = (const unsigned char *)doc + t->off + t->len - 1;
    char *o = out;
    if (!(t->flags & F_ESC)) {
        memcpy(out, p, (size_t)(e - p));
        return (size_t)(e - p);
    }
    while (p < e) {
        if (*p != '\\') {
            *o++ = (char)*p++;
            continue;
        }
        unsigned c = p[1];
        p += 2;
        switch (c) {
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            uint32_t cp = 0, lo = 0;
            (void)hex4(p, 4, 0, &cp); /* validated by the parser */
            p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                (void)hex4(p, 6, 2, &lo);
                p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (cp < 0x80) {
                *o++ = (char)cp;
            } else if (cp < 0x800) {
                *o++ = (char)(0xC0 | cp >> 6);
                *o++ = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                *o++ = (char)(0xE0 | cp >> 12);
                *o++ = (char)(0x80 | (cp >> 6 & 0x3F));
                *o++ = (char)(0x80 | (cp & 0x3F));
            } else {
                *o++ = (char)(0xF0 | cp >> 18);
                *o++ = (char)(0x80 | (cp >> 12 & 0x3F));
                *o++ = (char)(0x80 | (cp >> 6 & 0x3F));
                *o++ = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default: *o++ = (char)c; break; /* " \ / */
        }
    }
    return (size_t)(o - out);
}

static int key_cmp(const void *a, const void *b)
{
    const key_ref *x = a, *y = b;
    size_t m = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->p, y->p, m);
    return c != 0 ? c : (x->len > y->len) - (x->len < y->len);
}

/* Sorted keys; equal keys (allowed without FB_JSON_UNIQUE) in document
 * order, so that the last one can win. */
static int key_order(const void *a, const void *b)
{
    const key_ref *x = a, *y = b;
    int c = key_cmp(a, b);
    return c != 0 ? c : (x->val > y->val) - (x->val < y->val);
}

/* The keys of object obj, decoded (escaped ones into *scratch, which the
 * caller frees), in document order, into refs[] of obj's size. */
static int collect_keys(const fb_json *j, int obj, key_ref *refs,
                        char **scratch)
{
    size_t need = 0, used = 0;
    uint32_t k = (uint32_t)obj + 1;
    *scratch = NULL;
    for (uint32_t m = 0; m < j->t[obj].n; m++, k = j->t[k + 1].end)
        if (j->t[k].flags & F_ESC)
            need += j->t[k].len;
    if (need > 0 && (*scratch = malloc(need)) == NULL)
        return -1;
    k = (uint32_t)obj + 1;
    for (uint32_t m = 0; m < j->t[obj].n; m++, k = j->t[k + 1].end) {
        const tok *t = &j->t[k];
        refs[m].val = (int)k + 1;
        if (t->flags & F_ESC) {
            refs[m].p = *scratch + used;
            refs[m].len = decode(j->s, t, *scratch + used);
            used += refs[m].len;
        } else {
            refs[m].p = j->s + t->off + 1;
            refs[m].len = t->len - 2;
        }
    }
    return 0;
}

/* 1 if object obj names a key twice, -1 on ENOMEM. */
static int has_duplicate(const fb_json *j, int obj)
{
    uint32_t n = j->t[obj].n;
    key_ref small[16], *refs = n <= 16 ? small : malloc(n * sizeof *refs);
    char *scratch = NULL;
    int dup = 0;
    if (n < 2)
        return 0;
    if (refs == NULL || collect_keys(j, obj, refs, &scratch) != 0) {
        dup = -1;
        goto out;
    }
    if (n <= 16) { /* a few keys: pairwise beats sorting */
        for (uint32_t a = 0; a < n && !dup; a++)
            for (uint32_t b = a + 1; b < n && !dup; b++)
                dup = key_cmp(&refs[a], &refs[b]) == 0;
    } else {
        qsort(refs, n, sizeof *refs, key_cmp);
        for (uint32_t a = 1; a < n && !dup; a++)
            dup = key_cmp(&refs[a - 1], &refs[a]) == 0;
    }
out:
    free(scratch);
    if (refs != small)
        free(refs);
    return dup;
}

enum { ST_VALUE, ST_AFTER, ST_KEY };

fb_json *fb_json_parse(const char *s, size_t n, int flags, char *err,
                       size_t cap)
{
    parser p = {.s = (const unsigned char *)s, .n = n, .err = err,
                .cap = cap};
    uint32_t stack[MAX_DEPTH];
    int depth = 0, state = ST_VALUE;
    size_t i;
    fb_json *j = malloc(sizeof *j);
    if (cap > 0)
        err[0] = '\0';
    if (j == NULL) {
        fail(&p, 0, "out of memory");
        return NULL;
    }
    j->s = s;
    j->n = n;
    j->t = j->inline_t;
    j->nt = 0;
    j->cap = INLINE_TOKENS;
    p.j = j;
    if (n >= UINT32_MAX) {
        fail(&p, 0, "document too large");
        goto bad;
    }
    i = skip_ws(p.s, n, 0);
    for (;;) {
        if (state == ST_KEY) {
            uint8_t f = 0;
            if (i >= n || p.s[i] != '"') {
                fail(&p, i, "string or '}' expected");
                goto bad;
            }
            int k = push(j, FB_JSON_STRING, i, 0);
            size_t e = scan_string(&p, i, &f);
            if (k < 0 || e == (size_t)-1) {
                fail(&p, i, "out of memory");
                goto bad;
            }
            j->t[k].len = (uint32_t)(e - i);
            j->t[k].flags = f;
            i = skip_ws(p.s, n, e);
            if (i >= n || p.s[i] != ':') {
                fail(&p, i, "':' expected");
                goto bad;
            }
            i = skip_ws(p.s, n, i + 1);
            state = ST_VALUE;
            continue;
        }
        if (state == ST_VALUE) {
            uint8_t f = 0;
            size_t e;
            int k;
            if (i >= n) {
                fail(&p, i, "premature end of input");
                goto bad;
            }
            unsigned c = p.s[i];
            /* Every value counts toward the depth, scalars too (the root
             * is at 1), as in jansson. */
            if (depth == MAX_DEPTH) {
                fail(&p, i, "maximum nesting depth reached");
                goto bad;
            }
            if (c == '{' || c == '[') {
                if ((k = push(j, c == '{' ? FB_JSON_OBJECT : FB_JSON_ARRAY,
                              i, 0)) < 0) {
                    fail(&p, i, "out of memory");
                    goto bad;
                }
                stack[depth++] = (uint32_t)k;
                i = skip_ws(p.s, n, i + 1);
                if (i < n && p.s[i] == (c == '{' ? '}' : ']')) {
                    j->t[k].len = (uint32_t)(i + 1 - j->t[k].off);
                    depth--;
                    i++;
                    state = ST_AFTER;
                } else {
                    state = c == '{' ? ST_KEY : ST_VALUE;
                }
                continue;
            }
            fb_json_type type;
            if (c == '"') {
                type = FB_JSON_STRING;
                e = scan_string(&p, i, &f);
            } else if (c == '-' || is_digit(c)) {
                type = FB_JSON_NUMBER;
                e = scan_number(&p, i, &f);
            } else if (c == 't' && n - i >= 4 && memcmp(s + i, "true", 4) == 0) {
                type = FB_JSON_TRUE;
                e = i + 4;
            } else if (c == 'f' && n - i >= 5 &&
                       memcmp(s + i, "false", 5) == 0) {
                type = FB_JSON_FALSE;
                e = i + 5;
            } else if (c == 'n' && n - i >= 4 && memcmp(s + i, "null", 4) == 0) {
                type = FB_JSON_NULL;
                e = i + 4;
            } else {
                fail(&p, i, "invalid token");
                goto bad;
            }
            if (e == (size_t)-1)
                goto bad;
            if ((k = push(j, type, i, f)) < 0) {
                fail(&p, i, "out of memory");
                goto bad;
            }
            j->t[k].len = (uint32_t)(e - i);
            i = e;
            state = ST_AFTER;
            continue;
        }
        /* ST_AFTER: a value ended; its container goes on or closes. */
        i = skip_ws(p.s, n, i);
        if (depth == 0) {
            if (i != n) {
                fail(&p, i, "end of input expected");
                goto bad;
            }
            break;
        }
        tok *top = &j->t[stack[depth - 1]];
        int obj = top->type == FB_JSON_OBJECT;
        if (i < n && p.s[i] == ',') {
            top->n++;
            i = skip_ws(p.s, n, i + 1);
            state = obj ? ST_KEY : ST_VALUE;
            continue;
        }
        if (i >= n || p.s[i] != (obj ? '}' : ']')) {
            fail(&p, i, obj ? "',' or '}' expected" : "',' or ']' expected");
            goto bad;
        }
        top->n++;
        top->len = (uint32_t)(i + 1 - top->off);
        top->end = j->nt;
        if (obj && (flags & FB_JSON_UNIQUE)) {
            int d = has_duplicate(j, (int)stack[depth - 1]);
            if (d != 0) {
                fail(&p, i, d < 0 ? "out of memory" : "duplicate object key");
                goto bad;
            }
        }
        depth--;
        i++;
    }
    return j;
bad:
    fb_json_free(j);
    return NULL;
}

void fb_json_free(fb_json *j)
{
    if (j == NULL)
        return;
    if (j->t != j->inline_t)
        free(j->t);
    free(j);
}

static const tok *at(const fb_json *j, int v)
{
    return v >= 0 && (uint32_t)v < j->nt ? &j->t[v] : NULL;
}

fb_json_type fb_json_typeof(const fb_json *j, int v)
{
    const tok *t = at(j, v);
    return t ? (fb_json_type)t->type : FB_JSON_NONE;
}

int fb_json_get(const fb_json *j, int obj, const char *key)
{
    const tok *o = at(j, obj);
    size_t kl = strlen(key);
    int found = -1;
    if (o == NULL || o->type != FB_JSON_OBJECT)
        return -1;
    uint32_t k = (uint32_t)obj + 1;
    for (uint32_t m = 0; m < o->n; m++, k = j->t[k + 1].end) {
        const tok *t = &j->t[k];
        if (!(t->flags & F_ESC)) {
            if (t->len - 2 == kl && memcmp(j->s + t->off + 1, key, kl) == 0)
                found = (int)k + 1; /* the last one wins, as in jansson */
        } else if (t->len - 2 >= kl) {
            char small[256], *buf = t->len <= sizeof small ? small
                                                           : malloc(t->len);
            if (buf != NULL && decode(j->s, t, buf) == kl &&
                memcmp(buf, key, kl) == 0)
                found = (int)k + 1;
            if (buf != small)
                free(buf);
        }
    }
    return found;
}

size_t fb_json_size(const fb_json *j, int v)
{
    const tok *t = at(j, v);
    return t && (t->type == FB_JSON_ARRAY || t->type == FB_JSON_OBJECT)
               ? t->n
               : 0;
}

int fb_json_first(const fb_json *j, int arr)
{
    const tok *t = at(j, arr);
    return t && t->type == FB_JSON_ARRAY && t->n > 0 ? arr + 1 : -1;
}

int fb_json_int(const fb_json *j, int v, int64_t *out)
{
    const tok *t = at(j, v);
    double unused;
    if (t == NULL || t->type != FB_JSON_NUMBER || !(t->flags & F_INT))
        return 0;
    return number_value(j->s + t->off, t->len, 1, out, &unused) == 0;
}

long fb_json_str(const fb_json *j, int v, char *buf, size_t cap)
{
    const tok *t = at(j, v);
    if (t == NULL || t->type != FB_JSON_STRING)
        return -1;
    if (!(t->flags & F_ESC)) {
        size_t len = t->len - 2;
        if (len < cap) {
            memcpy(buf, j->s + t->off + 1, len);
            buf[len] = '\0';
        }
        return (long)len;
    }
    char *tmp = malloc(t->len);
    if (tmp == NULL)
        return -1;
    size_t len = decode(j->s, t, tmp);
    if (len < cap) {
        memcpy(buf, tmp, len);
        buf[len] = '\0';
    }
    free(tmp);
    return (long)len;
}

int fb_json_str_is(const fb_json *j, int v, const char *s)
{
    const tok *t = at(j, v);
    size_t sl = strlen(s);
    if (t == NULL || t->type != FB_JSON_STRING || t->len - 2 < sl)
        return 0;
    if (!(t->flags & F_ESC))
        return t->len - 2 == sl && memcmp(j->s + t->off + 1, s, sl) == 0;
    char small[256], *buf = t->len <= sizeof small ? small : malloc(t->len);
    int same = buf != NULL && decode(j->s, t, buf) == sl &&
               memcmp(buf, s, sl) == 0;
    if (buf != small)
        free(buf);
    return same;
}

void fb_json_span(const fb_json *j, int v, size_t *off, size_t *len)
{
    const tok *t = at(j, v);
    *off = t ? t->off : 0;
    *len = t ? t->len : 0;
}

/* ---- canonical output ---- */

typedef struct {
    char *b;
    size_t len, cap;
    int oom;
} buf;

static void put(buf *o, const void *p, size_t n)
{
    if (o->oom)
        return;
    if (o->len + n + 1 > o->cap) {
        size_t cap = o->cap * 2 > o->len + n + 1 ? o->cap * 2 : o->len + n + 1;
        char *b = realloc(o->b, cap);
        if (b == NULL) {
            o->oom = 1;
            return;
        }
        o->b = b;
        o->cap = cap;
    }
    memcpy(o->b + o->len, p, n);
    o->len += n;
}

/* A decoded string, escaped as jansson's dumper escapes it. */
static void put_string(buf *o, const char *s, size_t n)
{
    size_t run = 0;
    put(o, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[8];
        if (c == '"')
            esc = "\\\"";
        else if (c == '\\')
            esc = "\\\\";
        else if (c == '\b')
            esc = "\\b";
        else if (c == '\f')
            esc = "\\f";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c < 0x20) {
            snprintf(u, sizeof u, "\\u%04X", c);
            esc = u;
        }
        if (esc == NULL) {
            run++;
            continue;
        }
        put(o, s + i - run, run);
        run = 0;
        put(o, esc, strlen(esc));
    }
    put(o, s + n - run, run);
    put(o, "\"", 1);
}

/* A real as jansson prints it: %.17g, with ".0" when it would read back as
 * an integer, and the exponent without '+' or leading zeros. */
static void put_real(buf *o, double d)
{
    char b[64], *e;
    int n = snprintf(b, sizeof b - 2, "%.17g", d);
    if (n < 0 || (size_t)n >= sizeof b - 2) {
        o->oom = 1;
        return;
    }
    if (strchr(b, '.') == NULL && strchr(b, 'e') == NULL) {
        memcpy(b + n, ".0", 3);
        n += 2;
    }
    if ((e = strchr(b, 'e')) != NULL) {
        char *st = e + 1, *end = e + 2;
        if (*st == '-')
            st++;
        while (*end == '0')
            end++;
        if (end != st) {
            memmove(st, end, strlen(end) + 1);
            n = (int)strlen(b);
        }
    }
    put(o, b, (size_t)n);
}

static void emit(buf *o, const fb_json *j, int v, char *const *drop,
                 size_t ndrop)
{
    const tok *t = &j->t[v];
    switch ((fb_json_type)t->type) {
    case FB_JSON_NUMBER: {
        int64_t iv;
        double dv;
        char b[32];
        if (number_value(j->s + t->off, t->len, (t->flags & F_INT) != 0, &iv,
                         &dv) != 0) {
            o->oom = 1;
            return;
        }
        if (t->flags & F_INT)
            put(o, b, (size_t)snprintf(b, sizeof b, "%lld", (long long)iv));
        else
            put_real(o, dv);
        return;
    }
    case FB_JSON_STRING: {
        /* Without escapes the bytes need none either (the parser refused
         * raw control characters): printed as they are. */
        if (!(t->flags & F_ESC)) {
            put(o, j->s + t->off, t->len);
            return;
        }
        char *tmp = malloc(t->len);
        if (tmp == NULL) {
            o->oom = 1;
            return;
        }
        put_string(o, tmp, decode(j->s, t, tmp));
        free(tmp);
        return;
    }
    case FB_JSON_ARRAY: {
        int k = v + 1;
        put(o, "[", 1);
        for (uint32_t m = 0; m < t->n; m++, k = (int)j->t[k].end) {
            if (m > 0)
                put(o, ",", 1);
            emit(o, j, k, NULL, 0);
        }
        put(o, "]", 1);
        return;
    }
    case FB_JSON_OBJECT: {
        key_ref small[8], *refs = t->n <= 8 ? small
                                            : malloc(t->n * sizeof *refs);
        char *scratch = NULL;
        int first = 1;
        if (refs == NULL || collect_keys(j, v, refs, &scratch) != 0) {
            o->oom = 1;
            goto obj_out;
        }
        qsort(refs, t->n, sizeof *refs, key_order);
        put(o, "{", 1);
        for (uint32_t m = 0; m < t->n; m++) {
            int skip = 0;
            /* Duplicate keys (allowed without FB_JSON_UNIQUE): the last
             * one is the value, as jansson keeps it. */
            if (m + 1 < t->n && key_cmp(&refs[m], &refs[m + 1]) == 0)
                continue;
            for (size_t d = 0; d < ndrop && !skip; d++)
                skip = strlen(drop[d]) == refs[m].len &&
                       memcmp(drop[d], refs[m].p, refs[m].len) == 0;
            if (skip)
                continue;
            if (!first)
                put(o, ",", 1);
            first = 0;
            const tok *kt = &j->t[refs[m].val - 1];
            if (kt->flags & F_ESC)
                put_string(o, refs[m].p, refs[m].len);
            else
                put(o, j->s + kt->off, kt->len);
            put(o, ":", 1);
            emit(o, j, refs[m].val, NULL, 0);
        }
        put(o, "}", 1);
    obj_out:
        free(scratch);
        if (refs != small)
            free(refs);
        return;
    }
    case FB_JSON_TRUE:
    case FB_JSON_FALSE:
    case FB_JSON_NULL:
        put(o, j->s + t->off, t->len);
        return;
    case FB_JSON_NONE:
        break;
    }
    FB_ASSERT(0);
}

char *fb_json_canonical(const fb_json *j, char *const *drop, size_t ndrop,
                        size_t *len)
{
    buf o = {.b = malloc(j->n + 16), .cap = j->n + 16};
    if (o.b == NULL)
        return NULL;
    emit(&o, j, 0, drop, ndrop);
    if (o.oom) {
        free(o.b);
        return NULL;
    }
    o.b[o.len] = '\0';
    *len = o.len;
    return o.b;
}
