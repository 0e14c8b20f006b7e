/* classify.c - the failure classifier of classify.h. Rules are parsed from
 * text (the built-in data/classify.rules, compiled in by scripts/embed.sh,
 * and users' files) into one list in the order they are consulted, each
 * regex compiled once; fb_classify cleans a copy of the stderr tail and
 * walks its lines from the end.
 *
 * Notes:
 *  1. A load parses and compiles its rules aside and puts them in front of
 *     the list only when every one of them is good, so a failed load leaves
 *     the set as it was. Rules are held by pointer: a regex_t is never
 *     moved once compiled.
 *  2. The work is bounded whatever the input: 64 KiB of tail, 512 non-blank
 *     lines, 4 KiB of each line; patterns of at most 1 KiB, whose repeats
 *     ({m,n}, +) add at most 256 atoms once glibc has expanded them, and
 *     with no back-references, the one ERE extension whose matching time
 *     can explode. regexec runs without submatches until a rule decides.
 *  3. The tail is cleaned before matching: NULs and other control bytes
 *     become spaces, ANSI escape sequences are dropped, "\r" ends a line,
 *     bytes that are not UTF-8 become '?'. Matched text is then safe to
 *     print and to put into JSON. */
#include "classify.h"

#include <errno.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TAIL_MAX ((size_t)64 << 10)
#define LINES_MAX 512
#define LINE_BYTES_MAX 4096
#define RULES_MAX 1024
#define PATTERN_MAX 1024
#define PATTERN_REPEAT_MAX 256 /* atoms that repeats may add */
#define PATTERN_DEPTH_MAX 32   /* nested groups */
#define CODES_MAX 16
#define FILE_MAX ((size_t)1 << 20)
#define CLS_IGNORE (-1)
#define DEFAULT_NAME "<rules>"

#ifndef NSIG
#define NSIG 65
#endif

/* Generated from data/classify.rules into $(BUILD)/gen/classify_rules.c. */
extern const char fb_classify_rules_builtin[];
extern const size_t fb_classify_rules_builtin_len;

typedef enum { KIND_REGEX, KIND_EXIT, KIND_SIGNAL } rule_kind;

typedef struct rule {
    int cls; /* an fb_fail_class, or CLS_IGNORE */
    rule_kind kind;
    int ncodes;
    int codes[CODES_MAX]; /* exit statuses or signal numbers */
    char name[64];
    regex_t re; /* KIND_REGEX only */
} rule;

struct fb_rules {
    rule **v; /* in the order they are consulted */
    size_t n;
};

static const struct {
    const char *name;
    int num;
} signal_names[] = {
    {"HUP", SIGHUP},       {"INT", SIGINT},       {"QUIT", SIGQUIT},
    {"ILL", SIGILL},       {"TRAP", SIGTRAP},     {"ABRT", SIGABRT},
    {"IOT", SIGABRT},      {"BUS", SIGBUS},       {"FPE", SIGFPE},
    {"KILL", SIGKILL},     {"USR1", SIGUSR1},     {"SEGV", SIGSEGV},
    {"USR2", SIGUSR2},     {"PIPE", SIGPIPE},     {"ALRM", SIGALRM},
    {"TERM", SIGTERM},     {"CHLD", SIGCHLD},     {"CONT", SIGCONT},
    {"STOP", SIGSTOP},     {"TSTP", SIGTSTP},     {"TTIN", SIGTTIN},
    {"TTOU", SIGTTOU},     {"URG", SIGURG},       {"XCPU", SIGXCPU},
    {"XFSZ", SIGXFSZ},     {"VTALRM", SIGVTALRM}, {"PROF", SIGPROF},
    {"WINCH", SIGWINCH},   {"SYS", SIGSYS},
#ifdef SIGIO
    {"IO", SIGIO},
#endif
#ifdef SIGPWR
    {"PWR", SIGPWR},
#endif
#ifdef SIGSTKFLT
    {"STKFLT", SIGSTKFLT},
#endif
};

const char *fb_fail_class_name(fb_fail_class c)
{
    switch (c) {
    case FB_FAIL_UNKNOWN:
        return "unknown";
    case FB_FAIL_DETERMINISTIC:
        return "deterministic";
    case FB_FAIL_TRANSIENT:
        return "transient";
    case FB_FAIL_BUDGET:
        return "budget";
    }
    return "unknown";
}

/* ---- rule sets -------------------------------------------------------- */

static void rule_free(rule *ru)
{
    if (ru == NULL)
        return;
    if (ru->kind == KIND_REGEX)
        regfree(&ru->re);
    free(ru);
}

static void rules_free_array(rule **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        rule_free(v[i]);
    free(v);
}

fb_rules *fb__rules_new_empty(void)
{
    return calloc(1, sizeof(fb_rules));
}

void fb_rules_free(fb_rules *r)
{
    if (r == NULL)
        return;
    rules_free_array(r->v, r->n);
    free(r);
}

fb_rules *fb_rules_new(void)
{
    char err[256];
    fb_rules *r = fb__rules_new_empty();
    if (r == NULL)
        return NULL;
    fb_err rc = fb_rules_load_text(
        r, fb_classify_rules_builtin, fb_classify_rules_builtin_len,
        "classify.rules (built in)", err, sizeof err);
    if (rc == FB_ENOMEM) {
        fb_rules_free(r);
        return NULL;
    }
    /* The built-in rules are checked by the unit tests: a bad one is a bug. */
    if (rc != FB_OK)
        fprintf(stderr, "fusebox: %s\n", err);
    FB_ASSERT(rc == FB_OK);
    return r;
}

/* ---- parsing ---------------------------------------------------------- */

static int is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* A decimal number of at most max; 0 on anything else. */
static int parse_num(const char *s, size_t n, int max, int *out)
{
    int v = 0;
    if (n == 0 || n > 5)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max)
        return 0;
    *out = v;
    return 1;
}

static int parse_signal(const char *s, size_t n, int *out)
{
    if (parse_num(s, n, NSIG - 1, out))
        return *out > 0;
    if (n > 3 && fb_strcaseeq(s, 3, "SIG", 3)) {
        s += 3;
        n -= 3;
    }
    for (size_t i = 0; i < FB_ARRAY_LEN(signal_names); i++) {
        const char *name = signal_names[i].name;
        if (fb_strcaseeq(s, n, name, strlen(name))) {
            *out = signal_names[i].num;
            return 1;
        }
    }
    return 0;
}

/* "N,N,..." after "exit=" or "signal=" into ru->codes. */
static int parse_codes(rule *ru, const char *s, size_t n, char *why,
                       size_t whycap)
{
    const char *end = s + n;
    ru->ncodes = 0;
    for (;;) {
        const char *comma = memchr(s, ',', (size_t)(end - s));
        const char *item_end = comma ? comma : end;
        size_t len = (size_t)(item_end - s);
        int v;
        int ok = ru->kind == KIND_EXIT ? parse_num(s, len, 255, &v)
                                       : parse_signal(s, len, &v);
        if (!ok) {
            snprintf(why, whycap,
                     ru->kind == KIND_EXIT
                         ? "bad exit status '%.*s' (exit=N[,N...], N 0-255)"
                         : "unknown signal '%.*s' (a name such as KILL, "
                           "SIGKILL, or a number)",
                     (int)(len > 40 ? 40 : len), s);
            return 0;
        }
        if (ru->ncodes == CODES_MAX) {
            snprintf(why, whycap, "more than %d codes in one rule", CODES_MAX);
            return 0;
        }
        ru->codes[ru->ncodes++] = v;
        if (comma == NULL)
            return 1;
        s = comma + 1;
    }
}

/* Index of the ']' closing the bracket expression opened at p[i]. */
static size_t bracket_end(const char *p, size_t n, size_t i)
{
    size_t j = i + 1;
    if (j < n && p[j] == '^')
        j++;
    if (j < n && p[j] == ']')
        j++; /* a leading ']' is a member */
    while (j < n) {
        if (p[j] == '[' && j + 1 < n &&
            (p[j + 1] == ':' || p[j + 1] == '.' || p[j + 1] == '=')) {
            char kind = p[j + 1];
            size_t k = j + 2;
            while (k + 1 < n && !(p[k] == kind && p[k + 1] == ']'))
                k++;
            j = k + 2;
            continue;
        }
        if (p[j] == ']')
            return j;
        j++;
    }
    return n - 1; /* unterminated: regcomp says so */
}

/* The last atom, of size *last, repeated k times: what the copies add.
 * 0 when all repeats together add too much. */
static int add_repeat(size_t *total, size_t *last, size_t *added, size_t k)
{
    if (k > 1) {
        *added += *last * (k - 1);
        *total += *last * (k - 1);
        *last *= k;
    }
    return *added <= PATTERN_REPEAT_MAX;
}

/* Refuses patterns whose compiled form or matching time could blow up:
 * back-references, deep nesting, and repeats that multiply out. glibc
 * copies an atom repeated {m,n} n times and a+ as aa*, and the cost of a
 * copy of something optional grows with the square of the copies (2000
 * copies of "a?" took 1 GiB and 35 s per 4 KiB line), so all repeats
 * together may add at most PATTERN_REPEAT_MAX atoms. Empty alternatives
 * and a repeat of a repeat ("a++", undefined in POSIX) are refused too:
 * glibc's regcomp spent over 10 s on "(||...||ab)++" (fuzzing found it),
 * walking the empty branches once per nested loop. An alternative counts
 * as an atom. NULL when acceptable. The syntax is left to regcomp; this
 * only has to over-estimate. */
static const char *pattern_check(const char *p, size_t n)
{
    static const char too_complex[] =
        "too complex: its repeats expand it too far";
    static const char repeat_repeat[] =
        "a repeat of a repeat (like a++ or a*{2}) is not supported";
    /* Per open group, its size so far and that of its last atom. */
    size_t total[PATTERN_DEPTH_MAX], last[PATTERN_DEPTH_MAX], added = 0;
    int depth = 0, quant = 0; /* quant: the last token was a repeat */
    total[0] = last[0] = 0;
    for (size_t i = 0; i < n; i++) {
        size_t atom = 1;
        char c = p[i];
        if ((c == '*' || c == '?' || c == '+' || c == '{') && quant)
            return repeat_repeat;
        quant = 0;
        switch (c) {
        case '\\':
            if (i + 1 < n && p[i + 1] >= '1' && p[i + 1] <= '9')
                return "back-references are not supported";
            i++;
            break;
        case '[':
            i = bracket_end(p, n, i);
            break;
        case '(':
            if (depth + 1 == PATTERN_DEPTH_MAX)
                return "groups nested too deeply";
            depth++;
            total[depth] = last[depth] = 0;
            continue;
        case ')':
            if (depth > 0)
                atom = total[depth--];
            break;
        case '|':
            if (i == 0 || p[i - 1] == '(' || p[i - 1] == '|' || i + 1 == n ||
                p[i + 1] == ')' || p[i + 1] == '|')
                return "empty alternatives (||, (|, |) are not supported";
            last[depth] = 0;
            total[depth]++;
            continue;
        case '*':
        case '?':
            quant = 1;
            continue;
        case '+':
            quant = 1;
            if (!add_repeat(&total[depth], &last[depth], &added, 2))
                return too_complex;
            continue;
        case '{': {
            size_t j = i + 1, m = 0, hi = 0;
            int digits = 0, comma = 0, upper = 0;
            for (; j < n && p[j] != '}'; j++) {
                if (p[j] == ',' && !comma) {
                    comma = 1;
                } else if (p[j] >= '0' && p[j] <= '9' && j - i < 12) {
                    size_t *v = comma ? &hi : &m;
                    *v = *v * 10 + (size_t)(p[j] - '0');
                    digits = 1;
                    upper |= comma;
                } else {
                    break;
                }
            }
            if (j == n || p[j] != '}' || !digits)
                break; /* not an interval: a literal, or regcomp's error */
            size_t k = upper ? hi : comma ? m + 1 : m;
            if (k < m)
                k = m;
            if (k > PATTERN_REPEAT_MAX)
                return "a repeat count is too large";
            i = j;
            quant = 1;
            if (!add_repeat(&total[depth], &last[depth], &added, k))
                return too_complex;
            continue;
        }
        default:
            break;
        }
        last[depth] = atom;
        total[depth] += atom;
    }
    return NULL;
}

static int class_of(const char *s, size_t n, int *cls)
{
    static const struct {
        const char *name;
        int cls;
    } classes[] = {
        {"deterministic", FB_FAIL_DETERMINISTIC},
        {"transient", FB_FAIL_TRANSIENT},
        {"budget", FB_FAIL_BUDGET},
        {"ignore", CLS_IGNORE},
    };
    for (size_t i = 0; i < FB_ARRAY_LEN(classes); i++) {
        if (n == strlen(classes[i].name) &&
            memcmp(s, classes[i].name, n) == 0) {
            *cls = classes[i].cls;
            return 1;
        }
    }
    return 0;
}

static int name_ok(const char *s, size_t n)
{
    if (n == 0 || n >= sizeof(((rule *)0)->name))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

static const char *next_field(const char *s, const char *end, size_t *n)
{
    while (s < end && is_blank(*s))
        s++;
    const char *e = s;
    while (e < end && !is_blank(*e))
        e++;
    *n = (size_t)(e - s);
    return s;
}

/* The exit=/signal= pattern of a rule. */
static fb_err status_rule(rule *ru, const char *pat, size_t n, char *why,
                          size_t whycap)
{
    size_t skip = ru->kind == KIND_EXIT ? 5 : 7;
    if (ru->cls == CLS_IGNORE) {
        snprintf(why, whycap, "an ignore rule takes a regex, not %.*s",
                 (int)skip, pat);
        return FB_EINVAL;
    }
    if (!parse_codes(ru, pat + skip, n - skip, why, whycap))
        return FB_EINVAL;
    return FB_OK;
}

/* Compiles the regex of a rule; on failure nothing is left to regfree. */
static fb_err regex_rule(rule *ru, const char *pat, size_t n, char *why,
                         size_t whycap)
{
    char buf[PATTERN_MAX + 1], msg[128];
    const char *bad = pattern_check(pat, n);
    int erc;
    if (bad != NULL) {
        snprintf(why, whycap, "%s", bad);
        return FB_EINVAL;
    }
    FB_ASSERT(n < sizeof buf);
    memcpy(buf, pat, n);
    buf[n] = '\0';
    if ((erc = regcomp(&ru->re, buf, REG_EXTENDED | REG_ICASE)) == 0)
        return FB_OK;
    regerror(erc, &ru->re, msg, sizeof msg);
    snprintf(why, whycap, "bad regex: %s", msg);
    return erc == REG_ESPACE ? FB_ENOMEM : FB_EINVAL;
}

/* One line of a rules file. *out stays NULL for a blank or comment line.
 * On error, why says what is wrong. */
static fb_err parse_line(const char *s, size_t len, rule **out, char *why,
                         size_t whycap)
{
    const char *end = s + len, *cls_s, *name_s, *pat;
    size_t cls_n, name_n, pat_n;
    rule *ru = NULL;
    fb_err rc = FB_EINVAL;
    int cls;

    *out = NULL;
    while (end > s && (is_blank(end[-1]) || end[-1] == '\r'))
        end--;
    if (memchr(s, '\0', (size_t)(end - s)) != NULL) {
        snprintf(why, whycap, "a NUL byte in the line");
        goto out;
    }
    cls_s = next_field(s, end, &cls_n);
    if (cls_n == 0 || cls_s[0] == '#')
        return FB_OK;
    name_s = next_field(cls_s + cls_n, end, &name_n);
    pat = next_field(name_s + name_n, end, &pat_n);
    pat_n = (size_t)(end - pat); /* the pattern runs to the end of line */
    if (name_n == 0 || pat_n == 0) {
        snprintf(why, whycap, "expected CLASS NAME PATTERN");
        goto out;
    }
    if (!class_of(cls_s, cls_n, &cls)) {
        snprintf(why, whycap,
                 "unknown class '%.*s' (deterministic, transient, budget or "
                 "ignore)",
                 (int)(cls_n > 40 ? 40 : cls_n), cls_s);
        goto out;
    }
    if (!name_ok(name_s, name_n)) {
        snprintf(why, whycap,
                 "bad rule name '%.*s' (1-63 of A-Z a-z 0-9 _ . -)",
                 (int)(name_n > 40 ? 40 : name_n), name_s);
        goto out;
    }
    if (pat_n > PATTERN_MAX) {
        snprintf(why, whycap, "pattern longer than %d bytes", PATTERN_MAX);
        goto out;
    }
    if ((ru = calloc(1, sizeof(*ru))) == NULL) {
        rc = FB_ENOMEM;
        snprintf(why, whycap, "out of memory");
        goto out;
    }
    ru->cls = cls;
    memcpy(ru->name, name_s, name_n);
    ru->name[name_n] = '\0';
    if (pat_n >= 5 && memcmp(pat, "exit=", 5) == 0)
        ru->kind = KIND_EXIT;
    else if (pat_n >= 7 && memcmp(pat, "signal=", 7) == 0)
        ru->kind = KIND_SIGNAL;
    else
        ru->kind = KIND_REGEX;
    rc = ru->kind == KIND_REGEX ? regex_rule(ru, pat, pat_n, why, whycap)
                                : status_rule(ru, pat, pat_n, why, whycap);
    if (rc == FB_OK) {
        *out = ru;
        ru = NULL;
    }
out:
    free(ru); /* not a rule: nothing compiled to regfree */
    return rc;
}

fb_err fb_rules_load_text(fb_rules *r, const char *text, size_t len,
                          const char *name, char *errbuf, size_t cap)
{
    rule **nv = NULL, **merged = NULL;
    size_t nn = 0, ncap = 0, lineno = 0;
    const char *p = text, *end = text + len;
    char why[256];
    fb_err rc = FB_OK;

    FB_ASSERT(r != NULL && (text != NULL || len == 0));
    if (cap > 0)
        errbuf[0] = '\0';
    if (name == NULL)
        name = DEFAULT_NAME;
    if (len >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0)
        p += 3; /* a byte order mark from a Windows editor */
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        rule *ru;
        lineno++;
        why[0] = '\0';
        if ((rc = parse_line(p, (size_t)(le - p), &ru, why, sizeof why)) !=
            FB_OK)
            goto out;
        p = nl ? nl + 1 : end;
        if (ru == NULL)
            continue;
        if (r->n + nn >= RULES_MAX) {
            rule_free(ru);
            snprintf(why, sizeof why, "more than %d rules", RULES_MAX);
            rc = FB_EINVAL;
            goto out;
        }
        if (nn == ncap) {
            size_t c = ncap ? ncap * 2 : 32;
            rule **g = realloc(nv, c * sizeof(*g));
            if (g == NULL) {
                rule_free(ru);
                snprintf(why, sizeof why, "out of memory");
                rc = FB_ENOMEM;
                goto out;
            }
            nv = g;
            ncap = c;
        }
        nv[nn++] = ru;
    }
    if (nn == 0)
        goto out;
    if ((merged = malloc((nn + r->n) * sizeof(*merged))) == NULL) {
        lineno = 0;
        snprintf(why, sizeof why, "out of memory");
        rc = FB_ENOMEM;
        goto out;
    }
    memcpy(merged, nv, nn * sizeof(*merged));
    if (r->n > 0)
        memcpy(merged + nn, r->v, r->n * sizeof(*merged));
    free(r->v);
    r->v = merged;
    r->n += nn;
    nn = 0; /* the rules are r's now; only the array nv is left to free */
out:
    if (rc != FB_OK && cap > 0) {
        if (lineno > 0)
            snprintf(errbuf, cap, "%s:%zu: %s", name, lineno, why);
        else
            snprintf(errbuf, cap, "%s: %s", name, why);
    }
    rules_free_array(nv, nn);
    return rc;
}

fb_err fb_rules_load_file(fb_rules *r, const char *path, char *errbuf,
                          size_t cap)
{
    FILE *f = NULL;
    char *buf = NULL;
    size_t len = 0;
    fb_err rc = FB_OK;

    if (cap > 0)
        errbuf[0] = '\0';
    if ((f = fopen(path, "rb")) == NULL) {
        if (cap > 0)
            snprintf(errbuf, cap, "%s: %s", path, strerror(errno));
        rc = FB_EIO;
        goto out;
    }
    /* One byte past the cap tells "too large" without trusting stat. */
    if ((buf = malloc(FILE_MAX + 1)) == NULL) {
        rc = FB_ENOMEM;
        goto out;
    }
    len = fread(buf, 1, FILE_MAX + 1, f);
    if (ferror(f)) {
        if (cap > 0)
            snprintf(errbuf, cap, "%s: read error", path);
        rc = FB_EIO;
        goto out;
    }
    if (len > FILE_MAX) {
        if (cap > 0)
            snprintf(errbuf, cap, "%s: larger than %zu bytes", path, FILE_MAX);
        rc = FB_EINVAL;
        goto out;
    }
    rc = fb_rules_load_text(r, buf, len, path, errbuf, cap);
out:
    if (rc == FB_ENOMEM && cap > 0 && errbuf[0] == '\0')
        snprintf(errbuf, cap, "%s: out of memory", path);
    free(buf);
    if (f != NULL)
        fclose(f);
    return rc;
}

/* ---- cleaning the tail ------------------------------------------------ */

/* Length of the well-formed UTF-8 sequence at s, 0 if there is none. */
static size_t utf8_seq(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0], lo = 0x80, hi = 0xbf;
    size_t n;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4;
    else
        return 0;
    if (c == 0xe0)
        lo = 0xa0; /* overlong */
    else if (c == 0xed)
        hi = 0x9f; /* surrogates */
    else if (c == 0xf0)
        lo = 0x90; /* overlong */
    else if (c == 0xf4)
        hi = 0x8f; /* past U+10FFFF */
    if (avail < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return n;
}

/* Index just past the escape sequence that starts at s[i] == ESC: CSI
 * ("\e[31m") and OSC ("\e]0;title\a") are dropped whole, any other escape
 * with the byte after it. */
static size_t skip_escape(const unsigned char *s, size_t n, size_t i)
{
    size_t j = i + 1;
    if (j < n && s[j] == '[') {
        for (j++; j < n && s[j] >= 0x20 && s[j] <= 0x3f; j++)
            ;
        return j < n && s[j] >= 0x40 && s[j] <= 0x7e ? j + 1 : j;
    }
    if (j < n && s[j] == ']') {
        for (j++; j < n; j++) {
            if (s[j] == 0x07)
                return j + 1;
            if (s[j] == 0x1b && j + 1 < n && s[j + 1] == '\\')
                return j + 2;
        }
        return n;
    }
    return j < n && s[j] >= 0x20 && s[j] <= 0x7e ? j + 1 : j;
}

/* Copies src into dst (room for n bytes), cleaned as note 3 says; returns
 * the length written, never more than n. */
static size_t clean_tail(const char *src, size_t n, char *dst)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t i = 0, o = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c == 0x1b) {
            i = skip_escape(s, n, i);
        } else if (c == '\r' || c == '\n') {
            dst[o++] = '\n';
            i++;
        } else if (c == '\t' || (c >= 0x20 && c < 0x7f)) {
            dst[o++] = (char)c;
            i++;
        } else if (c < 0x80) {
            dst[o++] = ' '; /* NUL, DEL and the other controls */
            i++;
        } else {
            size_t k = utf8_seq(s + i, n - i);
            if (k == 2 && c == 0xc2 && s[i + 1] < 0xa0) {
                dst[o++] = ' '; /* C1 controls, U+0080-U+009F */
            } else if (k == 0) {
                dst[o++] = '?';
                k = 1;
            } else {
                memcpy(dst + o, s + i, k);
                o += k;
            }
            i += k;
        }
    }
    return o;
}

/* The longest prefix of s[0..n) (valid UTF-8) not longer than max that
 * does not cut a sequence. */
static size_t utf8_cut(const char *s, size_t n, size_t max)
{
    if (n <= max)
        return n;
    while (max > 0 && ((unsigned char)s[max] & 0xc0) == 0x80)
        max--;
    return max;
}

/* Of a line s[0..n) too long for out->matched, the part that starts a
 * little before offset so; blank-trimmed. Returns its length; *s moves. */
static size_t window(const char **s, size_t n, size_t so, size_t cap)
{
    const char *p = *s;
    if (n > cap && so > 0) {
        size_t from = so > 32 ? so - 32 : 0;
        if (n - from < cap)
            from = n - cap;
        while (from < n && ((unsigned char)p[from] & 0xc0) == 0x80)
            from++;
        p += from;
        n -= from;
    }
    n = utf8_cut(p, n, cap);
    while (n > 0 && is_blank(*p)) {
        p++;
        n--;
    }
    while (n > 0 && is_blank(p[n - 1]))
        n--;
    *s = p;
    return n;
}

/* The line that decided, around the match at so. A match of nothing but
 * blanks could leave nothing to show: then the line from its first
 * non-blank byte, which a line that was matched at all has. */
static void set_matched(fb_verdict *out, const char *line, size_t n, size_t so)
{
    const size_t cap = sizeof(out->matched) - 1;
    const char *s = line;
    size_t k = window(&s, n, so, cap);
    if (k == 0) {
        size_t first = 0;
        while (first < n && is_blank(line[first]))
            first++;
        s = line;
        k = window(&s, n, first, cap);
    }
    memcpy(out->matched, s, k);
    out->matched[k] = '\0';
}

/* ---- classifying ------------------------------------------------------ */

static void decide(fb_verdict *out, const rule *ru)
{
    out->cls = (fb_fail_class)ru->cls;
    fb_strlcpy(out->rule, ru->name, sizeof out->rule);
}

static const char *signal_name(int sig)
{
    for (size_t i = 0; i < FB_ARRAY_LEN(signal_names); i++)
        if (signal_names[i].num == sig)
            return signal_names[i].name;
    return NULL;
}

static int has_code(const rule *ru, int v)
{
    for (int i = 0; i < ru->ncodes; i++)
        if (ru->codes[i] == v)
            return 1;
    return 0;
}

static int by_status(const fb_rules *r, int exit_status, int term_signal,
                     fb_verdict *out)
{
    for (size_t i = 0; i < r->n; i++) {
        const rule *ru = r->v[i];
        if (ru->kind == KIND_EXIT && exit_status >= 0 &&
            has_code(ru, exit_status)) {
            decide(out, ru);
            snprintf(out->matched, sizeof out->matched, "exit status %d",
                     exit_status);
            return 1;
        }
        if (ru->kind == KIND_SIGNAL && term_signal > 0 &&
            has_code(ru, term_signal)) {
            const char *name = signal_name(term_signal);
            decide(out, ru);
            snprintf(out->matched, sizeof out->matched,
                     "killed by signal %d%s%s%s", term_signal,
                     name ? " (SIG" : "", name ? name : "", name ? ")" : "");
            return 1;
        }
    }
    return 0;
}

/* line is NUL-terminated at line[n]. */
static int by_line(const fb_rules *r, const char *line, size_t n,
                   fb_verdict *out)
{
    for (size_t i = 0; i < r->n; i++) {
        const rule *ru = r->v[i];
        regmatch_t m;
        if (ru->kind != KIND_REGEX || regexec(&ru->re, line, 0, NULL, 0) != 0)
            continue;
        if (ru->cls == CLS_IGNORE)
            return 0;
        decide(out, ru);
        if (regexec(&ru->re, line, 1, &m, 0) != 0 || m.rm_so < 0)
            m.rm_so = 0;
        set_matched(out, line, n, (size_t)m.rm_so);
        return 1;
    }
    return 0;
}

static int blank_line(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_blank(s[i]))
            return 0;
    return 1;
}

void fb_classify(const fb_rules *r, int exit_status, int term_signal,
                 const char *tail, size_t len, fb_verdict *out)
{
    char *buf = NULL;
    size_t n, end, seen = 0;

    FB_ASSERT(r != NULL && out != NULL);
    memset(out, 0, sizeof *out);
    out->cls = FB_FAIL_UNKNOWN;
    fb_strlcpy(out->rule, "unknown", sizeof out->rule);
    if (by_status(r, exit_status, term_signal, out))
        goto out;
    if (tail == NULL || len == 0)
        goto out;
    if (len > TAIL_MAX) {
        tail += len - TAIL_MAX;
        len = TAIL_MAX;
    }
    /* Without memory the answer is unknown, which is retried, bounded. */
    if ((buf = malloc(len + 1)) == NULL)
        goto out;
    n = clean_tail(tail, len, buf);
    end = n;
    for (;;) {
        size_t start = end;
        while (start > 0 && buf[start - 1] != '\n')
            start--;
        size_t ln = end - start;
        if (!blank_line(buf + start, ln)) {
            /* Terminating here is safe: the lines after it are done. */
            ln = utf8_cut(buf + start, ln, LINE_BYTES_MAX);
            buf[start + ln] = '\0';
            if (by_line(r, buf + start, ln, out))
                goto out;
            if (++seen == LINES_MAX)
                break;
        }
        if (start == 0)
            break;
        end = start - 1;
    }
out:
    free(buf);
}
