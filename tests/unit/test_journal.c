/* test_journal.c - unit tests for journal.c: records written in parts
 * read back whole and in order; a torn or damaged tail ends the reading;
 * files are emptied only when the store holds all their records (and not
 * at all once a record was held back); the two files take turns past the
 * rotation size, and are read oldest first; after a failed write (a full
 * disk) the journal takes records again once the store caught up. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

/* The module itself, for its descriptors (a full disk is simulated by
 * putting /dev/full behind one). */
#include "../../src/journal.c"

typedef struct {
    char dir[64];
    char path[2][96];
} tmp;

static void tmp_make(tmp *t)
{
    strcpy(t->dir, "/tmp/fb-journal-XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    for (int i = 0; i < 2; i++) {
        char p[sizeof t->path[0]];
        snprintf(p, sizeof p, "%s/fusebox.journal.%d", t->dir, i);
        memcpy(t->path[i], p, sizeof p);
    }
}

static void tmp_drop(tmp *t)
{
    unlink(t->path[0]);
    unlink(t->path[1]);
    rmdir(t->dir);
}

static long file_size(const char *path)
{
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    return (long)sb.st_size;
}

/* What a read saw: the records' first bytes, and their lengths. */
typedef struct {
    int n;
    char first[64];
    size_t len[64];
    int stop_at; /* return non-zero at this record (-1: never) */
} seen;

static int collect(void *arg, const char *rec, size_t len)
{
    seen *s = arg;
    if (s->n == s->stop_at)
        return 1;
    s->first[s->n] = len ? rec[0] : 0;
    s->len[s->n] = len;
    s->n++;
    return 0;
}

static uint64_t append_text(fb_journal *j, const char *a, const char *b)
{
    struct iovec iov[2] = {{.iov_base = (void *)a, .iov_len = strlen(a)},
                           {.iov_base = (void *)b, .iov_len = b ? strlen(b) : 0}};
    return fb_journal_append(j, iov, b ? 2 : 1);
}

static void test_round_trip_and_torn_tail(void **state)
{
    (void)state;
    tmp t;
    fb_journal *j;
    tmp_make(&t);
    assert_int_equal(fb_journal_open(t.dir, &j), FB_OK);
    /* Parts of every length around the checksum's 8-byte words. */
    assert_int_equal(append_text(j, "a", "bcdefghij"), 1);
    assert_int_equal(append_text(j, "bcdefgh", "ijklmnop"), 2);
    assert_int_equal(append_text(j, "c", NULL), 3);
    assert_int_equal(append_text(j, "dddddddddddddddd", "x"), 4);
    fb_journal_close(j);

    seen s = {.stop_at = -1};
    assert_int_equal(fb_journal_open(t.dir, &j), FB_OK);
    assert_int_equal(fb_journal_read(j, collect, &s), FB_OK);
    assert_int_equal(s.n, 4);
    assert_memory_equal(s.first, "abcd", 4);
    assert_int_equal(s.len[0], 10);
    assert_int_equal(s.len[1], 15);
    assert_int_equal(s.len[2], 1);
    assert_int_equal(s.len[3], 17);
    /* A callback that stops the reading is an error. */
    seen stop = {.stop_at = 1};
    assert_int_equal(fb_journal_read(j, collect, &stop), FB_EINVAL);
    fb_journal_close(j);

    /* A record cut short, as by a crash in the middle of a write: the
     * records before it are read, nothing after. */
    long full = file_size(t.path[0]);
    assert_int_equal(truncate(t.path[0], full - 3), 0);
    s = (seen){.stop_at = -1};
    assert_int_equal(fb_journal_open(t.dir, &j), FB_OK);
    assert_int_equal(fb_journal_read(j, collect, &s), FB_OK);
    assert_int_equal(s.n, 3);
    fb_journal_close(j);

    /* A damaged byte in the second record: only the first is read. */
    FILE *f = fopen(t.path[0], "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, 16 + 10 + 16 + 4, SEEK_SET), 0);
    fputc('Z', f);
    fclose(f);
    s = (seen){.stop_at = -1};
    assert_int_equal(fb_journal_open(t.dir, &j), FB_OK);
    assert_int_equal(fb_journal_read(j, collect, &s), FB_OK);
    assert_int_equal(s.n, 1);
    /* Numbering goes on after what was read; reset empties both. */
    assert_int_equal(append_text(j, "e", NULL), 2);
    assert_int_equal(fb_journal_reset(j), FB_OK);
    assert_int_equal(file_size(t.path[0]), 0);
    assert_int_equal(file_size(t.path[1]), 0);
    fb_journal_close(j);
    tmp_drop(&t);
}

static void test_emptied_when_applied(void **state)
{
    (void)state;
    tmp t;
    fb_journal *j;
    tmp_make(&t);
    assert_int_equal(fb_journal_open(t.dir, &j), FB_OK);
    uint64_t a = append_text(j, "one", NULL), b = append_text(j, "two", NULL);
    assert_true(a > 0 && b > a);
    /* A small file in use is kept (emptying it each time costs a
     * syscall); all applied at the stop, it is emptied. */
    fb_journal_applied(j, b);
    assert_true(file_size(t.path[0]) > 0);
    fb_journal_applied(j, UINT64_MAX);
    assert_int_equal(file_size(t.path[0]), 0);
    /* Held back: nothing is emptied any more. */
    (void)append_text(j, "three", NULL);
    fb_journal_hold(j);
    fb_journal_applied(j, UINT64_MAX);
    assert_true(file_size(t.path[0]) > 0);
    fb_journal_close(j);
    tmp_drop(&t);
}

static void test_rotation(void **state)
{
    (void)state;
    tmp t;
    fb_journal *j;
    size_t big = 1u << 20;
    char *blob = malloc(big);
    assert_non_null(blob);
    tmp_make(&t);
    assert_int_equal(fb_journal_open(t.dir, &j), FB_OK);
    /* Past 16 MiB the next records go to the other file. */
    uint64_t last_first = 0, seq = 0;
    for (int i = 0; i < 20; i++) {
        memset(blob, 'a' + i, big);
        struct iovec iov = {.iov_base = blob, .iov_len = big};
        seq = fb_journal_append(j, &iov, 1);
        assert_true(seq > 0);
        if (file_size(t.path[1]) == 0)
            last_first = seq;
    }
    assert_true(last_first > 0 && last_first < seq);
    assert_true(file_size(t.path[1]) > 0);
    /* Not all of the first file applied: both stay. */
    fb_journal_applied(j, last_first - 1);
    assert_true(file_size(t.path[0]) > 0);
    fb_journal_close(j);

    /* Read back: oldest first across both files. */
    seen s = {.stop_at = -1};
    assert_int_equal(fb_journal_open(t.dir, &j), FB_OK);
    assert_int_equal(fb_journal_read(j, collect, &s), FB_OK);
    assert_int_equal(s.n, 20);
    for (int i = 0; i < 20; i++)
        assert_int_equal(s.first[i], 'a' + i);
    assert_int_equal(fb_journal_reset(j), FB_OK);
    fb_journal_close(j);

    /* Applied up to the first file's last record: that file is emptied,
     * the one in use is kept. */
    assert_int_equal(fb_journal_open(t.dir, &j), FB_OK);
    for (int i = 0; i < 20; i++) {
        struct iovec iov = {.iov_base = blob, .iov_len = big};
        seq = fb_journal_append(j, &iov, 1);
        if (file_size(t.path[1]) == 0)
            last_first = seq;
    }
    fb_journal_applied(j, last_first);
    assert_int_equal(file_size(t.path[0]), 0);
    assert_true(file_size(t.path[1]) > 0);
    fb_journal_close(j);
    free(blob);
    tmp_drop(&t);
}

static void test_full_disk_then_recovered(void **state)
{
    (void)state;
    tmp t;
    fb_journal *j;
    tmp_make(&t);
    assert_int_equal(fb_journal_open(t.dir, &j), FB_OK);
    assert_int_equal(append_text(j, "before", NULL), 1);
    assert_true(fb_journal_ok(j));
    int real = dup(j->fd[j->cur]), full = open("/dev/full", O_WRONLY);
    assert_true(real >= 0 && full >= 0);
    assert_true(dup2(full, j->fd[j->cur]) >= 0);
    /* The disk is full: nothing counts as written, the caller waits for
     * the store instead, and /readyz would say so. */
    assert_int_equal(append_text(j, "lost", NULL), 0);
    assert_false(fb_journal_ok(j));
    assert_int_equal(append_text(j, "also", NULL), 0);
    /* The store has not applied record 1 yet: nothing may be emptied. */
    fb_journal_applied(j, 0);
    assert_false(fb_journal_ok(j));
    /* It has, but the disk is still full: emptying (or the probe write)
     * fails, and the journal stays broken. */
    fb_journal_applied(j, 1);
    assert_false(fb_journal_ok(j));
    /* Space is back: emptied, and writable again. */
    assert_true(dup2(real, j->fd[j->cur]) >= 0);
    fb_journal_applied(j, 1);
    assert_true(fb_journal_ok(j));
    assert_int_equal(file_size(t.path[0]), 0);
    assert_int_equal(append_text(j, "after", NULL), 2);
    close(real);
    close(full);
    fb_journal_close(j);
    tmp_drop(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_and_torn_tail),
        cmocka_unit_test(test_emptied_when_applied),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_full_disk_then_recovered),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
