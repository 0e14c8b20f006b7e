/* common.c - the error strings, the assertion hook and bounded string
 * helpers declared in common.h. */
#include "common.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *fb_strerror(fb_err err)
{
    switch (err) {
    case FB_OK: return "ok";
    case FB_ENOMEM: return "out of memory";
    case FB_EINVAL: return "invalid input";
    case FB_EIO: return "i/o error";
    case FB_ENOTFOUND: return "not found";
    case FB_EEXIST: return "already exists";
    case FB_EOVERFLOW: return "arithmetic overflow";
    case FB_ELIMIT: return "limit reached";
    case FB_EAGAIN: return "incomplete input";
    case FB_EAUTH: return "not authorised";
    case FB_EUPSTREAM: return "upstream failure";
    case FB_EBUSY: return "conflict, try again";
    }
    return "unknown error";
}

void fb__assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "fusebox: assertion failed: %s (%s:%d)\n", expr, file, line);
    abort();
}

size_t fb_strlcpy(char *dst, const char *src, size_t cap)
{
    size_t n = strlen(src);
    if (cap > 0) {
        size_t k = n < cap - 1 ? n : cap - 1;
        memcpy(dst, src, k);
        dst[k] = '\0';
    }
    return n;
}

char *fb_strndup(const char *s, size_t len)
{
    char *p = malloc(len + 1);
    if (p == NULL)
        return NULL;
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

int fb_strcaseeq(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen)
        return 0;
    for (size_t i = 0; i < alen; i++) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
        if (x >= 'A' && x <= 'Z')
            x = (unsigned char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (unsigned char)(y + 32);
        if (x != y)
            return 0;
    }
    return 1;
}

/* The test clock's file, or NULL; looked up once. */
static const char *clock_path;
static pthread_once_t clock_once = PTHREAD_ONCE_INIT;

static void clock_lookup(void)
{
    clock_path = getenv("FUSEBOX_CLOCK_FILE");
}

static const char *clock_file(void)
{
    pthread_once(&clock_once, clock_lookup);
    return clock_path;
}

static int64_t test_clock(const char *path)
{
    char buf[32];
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *end;
    long long v = strtoll(buf, &end, 10);
    return end != buf && v > 0 ? (int64_t)v : -1;
}

int64_t fb_wall_ms(void)
{
    const char *cf = clock_file();
    if (cf != NULL) {
        int64_t t = test_clock(cf);
        if (t > 0)
            return t;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t fb_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
