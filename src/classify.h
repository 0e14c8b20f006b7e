/* classify.h - decides whether a failed batch job is worth retrying, from
 * its exit status and the tail of its stderr, with rules kept as data: the
 * built-in data/classify.rules (compiled in) and rules files of the user's,
 * in the same format (see that file for the format). */
#ifndef FB_CLASSIFY_H
#define FB_CLASSIFY_H

#include <stddef.h>
#include "common.h"

typedef struct fb_rules fb_rules; /* an ordered rule list; opaque */

typedef enum {
    FB_FAIL_UNKNOWN = 0,   /* no rule matched */
    FB_FAIL_DETERMINISTIC, /* retrying cannot help */
    FB_FAIL_TRANSIENT,     /* retrying may help */
    FB_FAIL_BUDGET,        /* a fusebox fuse stopped the job */
} fb_fail_class;

typedef struct fb_verdict {
    fb_fail_class cls;
    char rule[64]; /* the deciding rule's NAME, or "unknown" */
    /* For humans: the stderr line that decided (cut to fit from a little
     * before the match), or "exit status 65", "killed by signal 9 (SIGKILL)";
     * blank-trimmed, valid UTF-8 without control bytes; "" when unknown. */
    char matched[160];
} fb_verdict;

/* A rule set holding the built-in rules; NULL on ENOMEM. */
fb_rules *fb_rules_new(void);
void fb_rules_free(fb_rules *r); /* NULL is fine */

/* Add the rules of a file (at most 1 MiB, 1024 rules in a set) so that they
 * are consulted before every rule already in r: the file loaded last wins.
 * On error r is unchanged and errbuf (when cap > 0) holds "file:line:
 * reason" for a bad line, or "file: reason" for the file itself. FB_EINVAL
 * for bad rules, FB_EIO when the file cannot be read, FB_ENOMEM. */
fb_err fb_rules_load_file(fb_rules *r, const char *path, char *errbuf,
                          size_t cap);
/* The same for text[0..len); name (NULL: "<rules>") starts error messages. */
fb_err fb_rules_load_text(fb_rules *r, const char *text, size_t len,
                          const char *name, char *errbuf, size_t cap);

/* Classify a failure. exit_status >= 0 is the exit code, term_signal > 0 a
 * death by that signal (pass -1 and 0 for "not that"). tail holds the last
 * len bytes of stderr: any bytes, NULs and broken UTF-8 included, need not
 * end in a newline; only its last 64 KiB are read.
 *   1. The first exit=/signal= rule, in order, matching the status decides.
 *   2. Else the lines of the tail from the last backwards (at most 512
 *      non-blank ones, each up to its first 4 KiB; "\r" ends a line, ANSI
 *      colour codes are dropped): on each line the first regex rule, in
 *      order, that matches decides, unless it is an ignore rule, which
 *      passes the line over. The last error printed thus wins.
 *   3. Else cls FB_FAIL_UNKNOWN and rule "unknown" (also when memory for
 *      a copy of the tail cannot be had).
 * Always fills in out. Reads r only: a loaded set may serve many threads. */
void fb_classify(const fb_rules *r, int exit_status, int term_signal,
                 const char *tail, size_t len, fb_verdict *out);

/* "unknown", "deterministic", "transient" or "budget"; never NULL. */
const char *fb_fail_class_name(fb_fail_class c);

/* Internal, for tests and fuzzing: a rule set with no rules at all. */
fb_rules *fb__rules_new_empty(void);

#endif
