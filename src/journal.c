/* journal.c - the ledger's write-ahead journal; see journal.h. */
#include "journal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

#define HEADER 16
/* A file takes records until it passes this; it is emptied once all of
 * them are in the store, so the journal stays near twice this on disk. */
#define ROTATE_BYTES (16u << 20)
/* Past this, the file in use is also emptied whenever the store has
 * caught up; below it, emptying it after every batch is a syscall saved. */
#define TRIM_BYTES (1u << 20)
#define MAX_RECORD (256u << 20)

struct fb_journal {
    int fd[2];
    int cur;          /* the file records go to */
    uint64_t last[2]; /* the last record in each file; 0 when empty */
    uint64_t size[2];
    uint64_t next;    /* the next record's sequence number */
    uint64_t applied; /* every record up to this one is in the store */
    int held;         /* a record failed to apply: keep everything */
    int broken;       /* a write failed: no more records */
};

/* FNV-1a, a 64-bit word at a time: enough to tell a torn record. The
 * words are those of the whole record however it is split into parts (a
 * record is written in parts and read back in one). */
typedef struct {
    uint64_t h;
    unsigned char tail[8];
    size_t ntail;
} sum_state;

static void sum_word(sum_state *s, const unsigned char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    s->h = (s->h ^ w) * 0x100000001b3ull;
}

static void sum_add(sum_state *s, const unsigned char *p, size_t n)
{
    if (n == 0) /* p may be NULL then */
        return;
    if (s->ntail > 0) {
        while (s->ntail < 8 && n > 0) {
            s->tail[s->ntail++] = *p++;
            n--;
        }
        if (s->ntail < 8)
            return;
        sum_word(s, s->tail);
        s->ntail = 0;
    }
    for (; n >= 8; p += 8, n -= 8)
        sum_word(s, p);
    memcpy(s->tail, p, n);
    s->ntail = n;
}

static uint32_t checksum(uint64_t seq, const struct iovec *iov, int n)
{
    sum_state s = {.h = 0xcbf29ce484222325ull};
    sum_add(&s, (const void *)&seq, 8);
    for (int i = 0; i < n; i++)
        sum_add(&s, iov[i].iov_base, iov[i].iov_len);
    for (size_t i = 0; i < s.ntail; i++)
        s.h = (s.h ^ s.tail[i]) * 0x100000001b3ull;
    return (uint32_t)(s.h ^ s.h >> 32);
}

fb_err fb_journal_open(const char *dir, fb_journal **out)
{
    fb_journal *j = calloc(1, sizeof *j);
    fb_err err = FB_EIO;
    if (j == NULL)
        return FB_ENOMEM;
    j->fd[0] = j->fd[1] = -1;
    j->next = 1;
    for (int i = 0; i < 2; i++) {
        char path[4096];
        struct stat sb;
        if ((size_t)snprintf(path, sizeof path, "%s/fusebox.journal.%d", dir,
                             i) >= sizeof path)
            goto out;
        /* O_APPEND: after a file is emptied, writes start at 0 again. */
        j->fd[i] = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (j->fd[i] < 0 || fstat(j->fd[i], &sb) != 0) {
            fb_log(FB_LOG_ERROR, "cannot open %s: %s", path, strerror(errno));
            goto out;
        }
        j->size[i] = (uint64_t)sb.st_size;
    }
    *out = j;
    return FB_OK;
out:
    fb_journal_close(j);
    return err;
}

void fb_journal_close(fb_journal *j)
{
    if (j == NULL)
        return;
    for (int i = 0; i < 2; i++)
        if (j->fd[i] >= 0)
            close(j->fd[i]);
    free(j);
}

/* Read file i whole into *buf. */
static fb_err slurp(int fd, char **buf, size_t *len)
{
    struct stat sb;
    *buf = NULL;
    *len = 0;
    if (fstat(fd, &sb) != 0)
        return FB_EIO;
    if (sb.st_size == 0)
        return FB_OK;
    char *b = malloc((size_t)sb.st_size);
    size_t got = 0;
    if (b == NULL)
        return FB_ENOMEM;
    while (got < (size_t)sb.st_size) {
        ssize_t r = pread(fd, b + got, (size_t)sb.st_size - got, (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    *buf = b;
    *len = got;
    return FB_OK;
}

/* The first sequence number in b, 0 if none. */
static uint64_t first_seq(const char *b, size_t len)
{
    uint64_t seq = 0;
    if (len >= HEADER)
        memcpy(&seq, b + 8, 8);
    return seq;
}

static fb_err read_file(const char *b, size_t len, uint64_t *last,
                        int (*fn)(void *, const char *, size_t), void *arg)
{
    size_t at = 0;
    while (len - at >= HEADER) {
        uint32_t plen, sum;
        uint64_t seq;
        memcpy(&plen, b + at, 4);
        memcpy(&sum, b + at + 4, 4);
        memcpy(&seq, b + at + 8, 8);
        struct iovec v = {.iov_base = (void *)(b + at + HEADER),
                          .iov_len = plen};
        if (plen > MAX_RECORD || plen > len - at - HEADER ||
            checksum(seq, &v, 1) != sum) {
            fb_log(FB_LOG_WARN,
                   "journal: a torn record at byte %zu ends the file (the "
                   "call it held had not been answered)",
                   at);
            break;
        }
        if (fn(arg, b + at + HEADER, plen) != 0)
            return FB_EINVAL;
        *last = seq;
        at += HEADER + plen;
    }
    return FB_OK;
}

fb_err fb_journal_read(fb_journal *j,
                       int (*fn)(void *arg, const char *rec, size_t len),
                       void *arg)
{
    char *b[2] = {NULL, NULL};
    size_t len[2] = {0, 0};
    uint64_t last = 0;
    fb_err err = FB_OK;
    for (int i = 0; i < 2 && err == FB_OK; i++)
        err = slurp(j->fd[i], &b[i], &len[i]);
    if (err == FB_OK) {
        /* The files never interleave: the older one goes first. */
        uint64_t s0 = first_seq(b[0], len[0]), s1 = first_seq(b[1], len[1]);
        int first = s1 != 0 && (s0 == 0 || s1 < s0) ? 1 : 0;
        err = read_file(b[first], len[first], &last, fn, arg);
        if (err == FB_OK)
            err = read_file(b[!first], len[!first], &last, fn, arg);
    }
    if (last >= j->next)
        j->next = last + 1;
    free(b[0]);
    free(b[1]);
    return err;
}

static fb_err empty(fb_journal *j, int i)
{
    if (ftruncate(j->fd[i], 0) != 0) {
        fb_log(FB_LOG_WARN, "journal: cannot empty a file: %s",
               strerror(errno));
        return FB_EIO;
    }
    j->size[i] = 0;
    j->last[i] = 0;
    return FB_OK;
}

fb_err fb_journal_reset(fb_journal *j)
{
    fb_err e0 = empty(j, 0), e1 = empty(j, 1);
    j->cur = 0;
    j->applied = j->next - 1;
    return e0 != FB_OK ? e0 : e1;
}

uint64_t fb_journal_append(fb_journal *j, const struct iovec *iov, int n)
{
    struct iovec all[8];
    unsigned char hdr[HEADER];
    uint64_t seq = j->next, plen = 0;
    FB_ASSERT(n >= 1 && n < 8);
    if (j->broken)
        return 0;
    for (int i = 0; i < n; i++)
        plen += iov[i].iov_len;
    if (plen > MAX_RECORD)
        return 0;
    uint32_t pl = (uint32_t)plen, sum = checksum(seq, iov, n);
    memcpy(hdr, &pl, 4);
    memcpy(hdr + 4, &sum, 4);
    memcpy(hdr + 8, &seq, 8);
    all[0] = (struct iovec){.iov_base = hdr, .iov_len = HEADER};
    memcpy(all + 1, iov, (size_t)n * sizeof *iov);
    size_t want = HEADER + plen;
    int fd = j->fd[j->cur];
    ssize_t w;
    do
        w = writev(fd, all, n + 1);
    while (w < 0 && errno == EINTR);
    if (w != (ssize_t)want) {
        /* A short write leaves a torn record at the end, which the next
         * start reads as the end; records after it would be lost, so
         * this file takes no more. */
        fb_log(FB_LOG_ERROR,
               "journal: write failed: %s; calls wait for the store until "
               "it is writable again",
               w < 0 ? strerror(errno) : "short write");
        j->broken = 1;
        return 0;
    }
    j->next++;
    j->size[j->cur] += want;
    j->last[j->cur] = seq;
    if (j->size[j->cur] > ROTATE_BYTES && j->last[!j->cur] == 0)
        j->cur = !j->cur;
    return seq;
}

/* Empty file fd; does it take a write? Truncating frees space even on a
 * full disk, so only a write tells. A crash between the calls leaves a
 * zero header, which reads as a torn record: the end of the file. */
static int probe(int fd)
{
    static const unsigned char zero[HEADER];
    ssize_t w;
    if (ftruncate(fd, 0) != 0)
        return 0;
    do
        w = pwrite(fd, zero, sizeof zero, 0);
    while (w < 0 && errno == EINTR);
    return ftruncate(fd, 0) == 0 && w == (ssize_t)sizeof zero;
}

void fb_journal_applied(fb_journal *j, uint64_t seq)
{
    if (seq > j->applied)
        j->applied = seq;
    if (j->held)
        return;
    /* After a failed write (a disk full, say): once the store holds every
     * record written before it, the files, torn end and all, are emptied
     * and take records again; if the disk is still full, the next write
     * fails the same way. */
    if (j->broken && j->applied >= j->next - 1) {
        /* Quietly: the failed write was logged, and this runs often. */
        if (ftruncate(j->fd[1], 0) == 0 && probe(j->fd[0])) {
            for (int i = 0; i < 2; i++)
                j->size[i] = j->last[i] = 0;
            j->cur = 0;
            j->broken = 0;
            fb_log(FB_LOG_INFO, "journal: writable again");
        }
        return;
    }
    for (int i = 0; i < 2; i++) {
        if (j->last[i] == 0 || j->last[i] > j->applied)
            continue;
        if (i == j->cur && j->size[i] < TRIM_BYTES && seq != UINT64_MAX)
            continue;
        (void)empty(j, i);
    }
}

void fb_journal_hold(fb_journal *j)
{
    if (!j->held)
        fb_log(FB_LOG_WARN, "journal: a record did not reach the store; the "
                            "journal is kept until the next start");
    j->held = 1;
}

int fb_journal_ok(const fb_journal *j)
{
    return !j->broken;
}
