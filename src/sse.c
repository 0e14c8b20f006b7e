/* sse.c - SSE framing per the WHATWG "server-sent events" text: lines end
 * in CRLF, LF or CR; a blank line ends an event; "data:" lines (one
 * optional space after the colon) make up its data. */
#include "sse.h"

#include <stdlib.h>
#include <string.h>

void fb_sse_init(fb_sse *s, size_t max_event)
{
    memset(s, 0, sizeof *s);
    s->max = max_event;
}

void fb_sse_free(fb_sse *s)
{
    free(s->buf);
    memset(s, 0, sizeof *s);
}

fb_err fb_sse_feed(fb_sse *s, const char *data, size_t len)
{
    if (s->start > 0) { /* drop the events already handed out */
        memmove(s->buf, s->buf + s->start, s->len - s->start);
        s->len -= s->start;
        s->scan -= s->start;
        s->start = 0;
    }
    if (s->len + len > s->max)
        return FB_ELIMIT;
    if (s->len + len > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->len + len)
            cap *= 2;
        char *nb = realloc(s->buf, cap);
        if (nb == NULL)
            return FB_ENOMEM;
        s->buf = nb;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, data, len);
    s->len += len;
    return FB_OK;
}

/* Length of the line ending at p (0 if none, or if a CR might still be
 * followed by LF in bytes not yet received). */
static size_t eol_len(const char *p, const char *end)
{
    if (*p == '\n')
        return 1;
    if (*p == '\r') {
        if (p + 1 == end)
            return 0;
        return p[1] == '\n' ? 2 : 1;
    }
    return 0;
}

int fb_sse_next(fb_sse *s, const char **ev, size_t *len)
{
    const char *base = s->buf, *end = s->buf + s->len;
    size_t i = s->scan > s->start ? s->scan : s->start;
    /* An event ends where a line ending is followed by another one. */
    while (base + i < end) {
        const char *p = memchr(base + i, '\n', (size_t)(end - base - i));
        const char *q = memchr(base + i, '\r', (size_t)(end - base - i));
        if (p == NULL || (q != NULL && q < p))
            p = q;
        if (p == NULL) {
            i = (size_t)(end - base);
            break;
        }
        size_t n = eol_len(p, end);
        if (n == 0) { /* lone CR at the end: wait for more */
            i = (size_t)(p - base);
            break;
        }
        const char *next = p + n;
        int at_line_start = (size_t)(p - base) == s->start ||
                            p[-1] == '\n' || p[-1] == '\r';
        if (at_line_start && (size_t)(p - base) > s->start) {
            /* p is a blank line: the event is [start, next). */
            *ev = base + s->start;
            *len = (size_t)(next - base) - s->start;
            s->start = (size_t)(next - base);
            s->scan = s->start;
            return 1;
        }
        if (at_line_start) { /* stray blank line before any field */
            s->start = (size_t)(next - base);
        }
        i = (size_t)(next - base);
    }
    s->scan = i;
    return 0;
}

const char *fb_sse_rest(const fb_sse *s, size_t *len)
{
    *len = s->len - s->start;
    return s->buf ? s->buf + s->start : "";
}

size_t fb_sse_data(const char *ev, size_t len, char *out, size_t cap)
{
    size_t total = 0, i = 0;
    int first = 1;
    while (i < len) {
        size_t j = i;
        while (j < len && ev[j] != '\n' && ev[j] != '\r')
            j++;
        if (j - i >= 5 && memcmp(ev + i, "data:", 5) == 0) {
            size_t k = i + 5;
            if (k < j && ev[k] == ' ')
                k++;
            if (!first) {
                if (total + 1 < cap)
                    out[total] = '\n';
                total++;
            }
            first = 0;
            for (; k < j; k++, total++)
                if (total + 1 < cap)
                    out[total] = ev[k];
        }
        if (j < len && ev[j] == '\r' && j + 1 < len && ev[j + 1] == '\n')
            j++;
        i = j + 1;
    }
    if (cap > 0)
        out[total < cap ? total : cap - 1] = '\0';
    return total;
}
