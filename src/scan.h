/* scan.h - fusebox scan: what a repository is about to ship (issue 8):
 * secrets (tier blocked), paid API calls and schema changes (tier high).
 * Secrets: rules as data (data/scan.rules, compiled
 * in; --rules adds), a keyword prefilter, then the rule's PCRE2 pattern,
 * then the secret's entropy and the placeholder list, then the allowlists
 * (an inline "fusebox:allow", and .fuseboxignore: fingerprints and path
 * patterns). A finding never holds the secret: only its first four
 * characters and its length, and a fingerprint (SHA-256 of the rule, the
 * file, the line and the secret). */
#ifndef FB_SCAN_H
#define FB_SCAN_H

#include <stddef.h>
#include <stdint.h>
#include "common.h"

typedef struct fb_scan_rules fb_scan_rules;

/* The built-in rules (NULL on ENOMEM). */
fb_scan_rules *fb_scan_rules_builtin(void);
/* Add (or replace, by id) rules from text; errors name "origin:LINE"
 * (the lines before it are loaded). */
fb_err fb_scan_rules_load(fb_scan_rules *r, const char *text, size_t len,
                          const char *origin, char *err, size_t errcap);
void fb_scan_rules_free(fb_scan_rules *r);
size_t fb_scan_rules_count(const fb_scan_rules *r);

typedef struct fb_scan_finding {
    const char *kind;    /* "secret", "paid", "schema" or "migration" */
    const char *rule;    /* its id */
    const char *desc;
    const char *file;
    int64_t line, column; /* 1-based */
    char redacted[64];    /* a secret: "sk-p...(51 chars)"; else what was
                             seen, cut short */
    size_t length;        /* of the match */
    char fingerprint[17]; /* 16 hex digits */
    char key[17];         /* a secret's: of the rule and the secret alone
                             (the same key anywhere, in any commit) */
    const char *via;      /* paid: "fusebox" or "direct" */
} fb_scan_finding;

/* The migration rules whose path patterns match file: a finding each. */
void fb_scan_path(const fb_scan_rules *r, const char *file,
                  void (*fn)(void *arg, const fb_scan_finding *f), void *arg);

/* Scan one file's bytes (named file, as reported) and call fn for each
 * finding not allowed inline. Binary content (a NUL in the first 8 KiB)
 * is skipped: returns 1 then, else 0. */
int fb_scan_buffer(const fb_scan_rules *r, const char *file, const char *buf,
                   size_t len,
                   void (*fn)(void *arg, const fb_scan_finding *f),
                   void *arg);
/* The same, line i of buf being line map[i] of the file (--history: a
 * commit's added lines). */
int fb_scan_buffer_mapped(const fb_scan_rules *r, const char *file,
                          const char *buf, size_t len, const int64_t *map,
                          size_t nmap,
                          void (*fn)(void *arg, const fb_scan_finding *f),
                          void *arg);

/* fusebox scan [PATH] [--format text|json] [--fail-on high|blocked|never]
 * [--rules FILE]: exit 0 under the --fail-on tier, 1 at or above it, 2 for
 * a usage error, 3 when the input cannot be read. */
int fb_cli_scan(int argc, char **argv);

#endif
