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
        s->line -= s->start;
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
    if (len == 0) /* libcurl may hand over an empty piece: buf is NULL */
        return FB_OK;
    memcpy(s->buf + s->len, data, len);
    s->len += len;
    return FB_OK;
}

/* Length of the line ending at p: 1 or 2; 0 for a CR that is the last
 * byte so far (it may be the first half of a CRLF). */
static size_t eol_len(const char *p, const char *end)
{
    if (*p == '\n')
        return 1;
    if (p + 1 == end)
        return 0;
    return p[1] == '\n' ? 2 : 1;
}

int fb_sse_next(fb_sse *s, const char **ev, size_t *len)
{
    if (s->buf == NULL) /* nothing fed yet */
        return 0;
    const char *base = s->buf, *end = s->buf + s->len;
    /* An event ends at a blank line that follows at least one field
     * line. Blank lines before any field stay in the event's bytes, so
     * that what is forwarded is exactly what was received. s->line is
     * where the current line starts, s->scan where the search resumes. */
    while (base + s->scan < end) {
        const char *p = base + s->scan;
        const char *lf = memchr(p, '\n', (size_t)(end - p));
        const char *cr = memchr(p, '\r', (size_t)((lf ? lf : end) - p));
        const char *eol = cr ? cr : lf;
        if (eol == NULL) {
            s->scan = s->len;
            break;
        }
        int blank = eol == base + s->line;
        size_t n = eol_len(eol, end);
        if (n == 0) {
            /* A lone CR at the end: a blank line ends the event now (an
             * LF after it would only be a blank line of the next one);
             * otherwise look at it again when more bytes come. */
            if (!(blank && s->has_field)) {
                s->scan = (size_t)(eol - base);
                break;
            }
            n = 1;
        }
        size_t next = (size_t)(eol - base) + n;
        if (blank && s->has_field) {
            *ev = base + s->start;
            *len = next - s->start;
            s->start = s->line = s->scan = next;
            s->has_field = 0;
            return 1;
        }
        if (!blank)
            s->has_field = 1;
        s->line = s->scan = next;
    }
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
