/* journal.h - the write-ahead journal of the ledger: a paid call's
 * reservation and its kept result are made durable by one write(2) on the
 * loop, and reach the store later, in the ledger thread's large batches.
 *
 * Why: with durability "process" (synchronous=NORMAL) a SQLite commit is a
 * write() into its WAL: it survives kill -9, not power loss. A write() of
 * the record into this file makes the same promise without waiting for the
 * ledger thread and its B-tree work, which were two round trips of about
 * 100 µs on every forwarded call. Durability "full" does not use it.
 *
 * Two files, fusebox.journal.0 and .1, take records in turn: one until it
 * passes a size, then the other once that one is empty. A file is emptied
 * when the store holds all its records. At start both are read and what
 * they hold is applied again (applying a record twice changes nothing).
 *
 * A record: u32 payload length, u32 checksum (of the sequence number and
 * payload), u64 sequence number, payload. A torn tail (cut short, or a bad
 * checksum) ends the reading of its file. Loop thread only. */
#ifndef FB_JOURNAL_H
#define FB_JOURNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include "common.h"

typedef struct fb_journal fb_journal;

/* Open (creating) the journal files in dir. */
fb_err fb_journal_open(const char *dir, fb_journal **out);
void fb_journal_close(fb_journal *j);

/* Every intact record of both files, oldest first. fn returns non-zero to
 * stop; fb_journal_read then returns FB_EINVAL. */
fb_err fb_journal_read(fb_journal *j,
                       int (*fn)(void *arg, const char *rec, size_t len),
                       void *arg);
/* Empty both files (once what they held is in the store). */
fb_err fb_journal_reset(fb_journal *j);

/* Append one record made of iov[0..n). Its sequence number (> 0) once it
 * is written, or 0 when the write failed (then nothing counts as written:
 * the caller falls back to waiting for the store). */
uint64_t fb_journal_append(fb_journal *j, const struct iovec *iov, int n);
/* The store holds every record up to seq: files of such records only are
 * emptied (UINT64_MAX: all of them, even a small one in use). fb_journal_hold: a record was not applied; keep everything
 * (it is applied at the next start). */
void fb_journal_applied(fb_journal *j, uint64_t seq);
void fb_journal_hold(fb_journal *j);
/* 0 after a failed write, until the store caught up and the files were
 * emptied. (A record held back does not count: records are still
 * written, and what was held is applied at the next start.) */
int fb_journal_ok(const fb_journal *j);

#endif
