/* http.c - the HTTP/1.1 request-head parser and chunked body decoder
 * declared in http.h, written from RFC 9112 (message syntax) and RFC 9110
 * (field semantics). Both run on every request the proxy forwards, so
 * they make one pass over the bytes and never allocate. */
#include "http.h"

#include "common.h"

#include <limits.h>
#include <string.h>

/*
 * NOTES ON THE DESIGN
 *
 * The head parser keeps no state between calls: each call re-reads the
 * head from byte 0. Heads are small and nearly always arrive in one read,
 * so this costs less than carrying a resumable state machine, and it lets
 * every pointer in fb_http_req point straight into the caller's buffer.
 *
 * Invariants of fb_http_parse_request:
 *   1. No byte at or past min(len, max_head) is read: every dereference is
 *      preceded by a comparison with `end`.
 *   2. Running out of bytes is never an error by itself: it returns 0, or
 *      -431 once the head can no longer fit in max_head.
 *   3. A field's meaning (Content-Length, Connection, ...) is applied only
 *      after its line terminator has been seen. So a prefix of a valid head
 *      returns 0, never an error the whole head would not give: a truncated
 *      "Content-Length: 1" of "12" is never compared with another value.
 *   4. Framing checks that need the whole head (Content-Length together
 *      with Transfer-Encoding, ...) run once, after the empty line.
 *
 * The chunked decoder must accept input split at any byte, so it is a
 * byte-level state machine and consumes every byte it is offered until the
 * body ends; payload runs are copied with one memmove each.
 *
 *   SIZE_START -hex-> SIZE -CR-> SIZE_LF -LF-> DATA -> DATA_CR -> DATA_LF
 *                      |  \-SP-> SIZE_BWS -;-> EXT -CR-^          |
 *                      \-;-> EXT               (size 0)           |
 *        ^                          SIZE_LF -LF-> TRAILER_START   |
 *        \--------------------------------------------------------/
 *
 *   TRAILER_START -tchar-> TRAILER_NAME -:-> TRAILER_VALUE -CR-> TRAILER_LF
 *        |  ^-----------------------------------------LF-----------/
 *        \-CR-> END_LF -LF-> DONE
 *
 *   5. total only grows by chunk sizes already checked against max_body.
 *   6. metalen counts the bytes of the current size line, or of the whole
 *      trailer section; it is reset when either begins and bounded by
 *      FB_HTTP_MAX_CHUNK_LINE / FB_HTTP_MAX_TRAILERS.
 *   7. Chunk framing needs CRLF. RFC 9112 allows a bare LF only for the
 *      start-line and header fields, and disagreeing about chunk line ends
 *      is a known request-smuggling vector.
 */

enum { C_TCHAR = 1, C_VALUE = 2, C_TARGET = 4, C_HEX = 8 };

/* One lookup per byte on the hot path. C_TCHAR: token characters (RFC 9110
 * 5.6.2). C_VALUE: field-value bytes, i.e. HTAB, SP, VCHAR and obs-text.
 * C_TARGET: VCHAR, what a request-target may hold. C_HEX: hex digits. */
static const unsigned char cls[256] = {
    0,  0,  0,  0,  0,  0,  0,  0,  0,  2,  0, 0, 0, 0, 0, 0, /* 0x00 */
    0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0, 0, 0, 0, 0, 0, /* 0x10 */
    2,  7,  6,  7,  7,  7,  7,  7,  6,  6,  7, 7, 6, 7, 7, 6, /* 0x20 */
    15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 6, 6, 6, 6, 6, 6, /* 0x30 */
    6,  15, 15, 15, 15, 15, 15, 7,  7,  7,  7, 7, 7, 7, 7, 7, /* 0x40 */
    7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7, 6, 6, 6, 7, 7, /* 0x50 */
    7,  15, 15, 15, 15, 15, 15, 7,  7,  7,  7, 7, 7, 7, 7, 7, /* 0x60 */
    7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7, 6, 7, 6, 7, 0, /* 0x70 */
    2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2, 2, 2, 2, 2, 2, /* 0x80 */
    2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2, 2, 2, 2, 2, 2, /* 0x90 */
    2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2, 2, 2, 2, 2, 2, /* 0xa0 */
    2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2, 2, 2, 2, 2, 2, /* 0xb0 */
    2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2, 2, 2, 2, 2, 2, /* 0xc0 */
    2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2, 2, 2, 2, 2, 2, /* 0xd0 */
    2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2, 2, 2, 2, 2, 2, /* 0xe0 */
    2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2, 2, 2, 2, 2, 2, /* 0xf0 */
};

/* Eight bytes at a time for the long runs (targets, header values): a word
 * is skipped whole when no byte in it can end or spoil the run. Both tests
 * are exact about whether any byte qualifies, though not about which. */
#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

/* Nonzero if some byte of x is below n; needs n <= 128. */
static inline uint64_t any_below(uint64_t x, unsigned n)
{
    return (x - ONES * n) & ~x & HIGHS;
}

/* Nonzero if some byte of x is above n; needs n <= 127. */
static inline uint64_t any_above(uint64_t x, unsigned n)
{
    return ((x + ONES * (127 - n)) | x) & HIGHS;
}

static inline uint64_t load8(const unsigned char *p)
{
    uint64_t x;
    memcpy(&x, p, sizeof x);
    return x;
}

/* First byte in [p, end) that is not a request-target byte. */
static const unsigned char *scan_target(const unsigned char *p,
                                        const unsigned char *end)
{
    while (end - p >= 8) {
        uint64_t x = load8(p);
        if (any_below(x, 0x21) | any_above(x, 0x7e))
            break;
        p += 8;
    }
    while (p < end && (cls[*p] & C_TARGET))
        p++;
    return p;
}

/* First byte in [p, end) that is not a field-value byte. A word holding a
 * control byte drops to the byte loop, which passes HTAB and goes on. */
static const unsigned char *scan_value(const unsigned char *p,
                                       const unsigned char *end)
{
    for (;;) {
        while (end - p >= 8) {
            uint64_t x = load8(p);
            if (any_below(x, 0x20) | any_below(x ^ (ONES * 0x7f), 1))
                break;
            p += 8;
        }
        const unsigned char *stop = end - p >= 8 ? p + 8 : end;
        while (p < stop && (cls[*p] & C_VALUE))
            p++;
        if (p < stop || p == end)
            return p;
    }
}

static const unsigned char *scan_token(const unsigned char *p,
                                       const unsigned char *end)
{
    while (p < end && (cls[*p] & C_TCHAR))
        p++;
    return p;
}

/* Consume the line terminator at *pp (precondition: *pp < end): 1 when
 * done, 0 when the CR of a CRLF is the last byte, -400 for anything else,
 * a bare CR included. */
static int eat_eol(const unsigned char **pp, const unsigned char *end)
{
    const unsigned char *p = *pp;
    if (*p == '\n') {
        *pp = p + 1;
        return 1;
    }
    if (*p != '\r')
        return -400;
    if (p + 1 == end)
        return 0;
    if (p[1] != '\n')
        return -400;
    *pp = p + 2;
    return 1;
}

/* ASCII case-insensitive equality of s[0..n) with lowercase lit[0..n). */
static int lower_eq(const char *s, const char *lit, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + ('a' - 'A'));
        if (c != (unsigned char)lit[i])
            return 0;
    }
    return 1;
}

#define LIT_EQ(s, n, lit) ((n) == sizeof(lit) - 1 && lower_eq(s, lit, n))

static int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Walks a comma-separated field value, RFC 9110 5.6.1. Each call yields the
 * next element with OWS trimmed (possibly empty); 0 when none are left. */
typedef struct list_iter {
    const char *p, *end;
    int done;
} list_iter;

static int list_next(list_iter *it, const char **elem, size_t *elen)
{
    if (it->done)
        return 0;
    const char *s = it->p;
    const char *comma = memchr(s, ',', (size_t)(it->end - s));
    const char *e = comma != NULL ? comma : it->end;
    if (comma != NULL)
        it->p = comma + 1;
    else
        it->done = 1;
    while (s < e && is_ows(*s))
        s++;
    while (e > s && is_ows(e[-1]))
        e--;
    *elem = s;
    *elen = (size_t)(e - s);
    return 1;
}

/* What the fields seen so far say about framing and the connection. */
typedef struct head_facts {
    int64_t content_length; /* -1 when absent */
    int te_seen;            /* a Transfer-Encoding field was present */
    int te_chunked;         /* how many codings were "chunked" */
    int te_other;           /* how many were something else */
    int te_last_chunked;    /* the last coding so far was "chunked" */
    int conn_close;
    int conn_keep_alive;
    int expect_continue;
} head_facts;

/* RFC 9110 8.6: a list of equal values is one value; unequal ones, or
 * anything but digits, make the framing unknowable. */
static int content_length_field(head_facts *f, const char *v, size_t vlen)
{
    list_iter it = {v, v + vlen, 0};
    const char *e;
    size_t elen;
    while (list_next(&it, &e, &elen)) {
        if (elen == 0)
            return -400;
        int64_t n = 0;
        for (size_t i = 0; i < elen; i++) {
            unsigned d = (unsigned char)e[i] - (unsigned)'0';
            if (d > 9)
                return -400;
            if (n > (INT64_MAX - (int64_t)d) / 10)
                return -400;
            n = n * 10 + (int64_t)d;
        }
        if (f->content_length >= 0 && f->content_length != n)
            return -400;
        f->content_length = n;
    }
    return 0;
}

/* Codings accumulate over all Transfer-Encoding fields in order; whether
 * they are acceptable is decided once the head is complete. */
static void transfer_encoding_field(head_facts *f, const char *v, size_t vlen)
{
    list_iter it = {v, v + vlen, 0};
    const char *e;
    size_t elen;
    f->te_seen = 1;
    while (list_next(&it, &e, &elen)) {
        if (elen == 0)
            continue; /* RFC 9110 5.6.1: empty elements are ignored */
        if (LIT_EQ(e, elen, "chunked")) {
            f->te_chunked++;
            f->te_last_chunked = 1;
        } else {
            f->te_other++;
            f->te_last_chunked = 0;
        }
    }
}

static void connection_field(head_facts *f, const char *v, size_t vlen)
{
    list_iter it = {v, v + vlen, 0};
    const char *e;
    size_t elen;
    while (list_next(&it, &e, &elen)) {
        if (LIT_EQ(e, elen, "close"))
            f->conn_close = 1;
        else if (LIT_EQ(e, elen, "keep-alive"))
            f->conn_keep_alive = 1;
    }
}

/* Dispatch on length first: most fields match none of these, and that is
 * decided by one switch. */
static int apply_field(head_facts *f, const fb_http_header *h)
{
    switch (h->name_len) {
    case 6:
        /* Any Expect field asking for 100-continue sets it. */
        if (LIT_EQ(h->name, h->name_len, "expect") &&
            LIT_EQ(h->value, h->value_len, "100-continue"))
            f->expect_continue = 1;
        break;
    case 10:
        if (LIT_EQ(h->name, h->name_len, "connection"))
            connection_field(f, h->value, h->value_len);
        break;
    case 14:
        if (LIT_EQ(h->name, h->name_len, "content-length"))
            return content_length_field(f, h->value, h->value_len);
        break;
    case 17:
        if (LIT_EQ(h->name, h->name_len, "transfer-encoding"))
            transfer_encoding_field(f, h->value, h->value_len);
        break;
    }
    return 0;
}

/* Methods are case-sensitive (RFC 9110 9.1). */
static fb_http_method method_of(const unsigned char *m, size_t n)
{
    switch (n) {
    case 3:
        if (memcmp(m, "GET", 3) == 0)
            return FB_HTTP_GET;
        if (memcmp(m, "PUT", 3) == 0)
            return FB_HTTP_PUT;
        break;
    case 4:
        if (memcmp(m, "POST", 4) == 0)
            return FB_HTTP_POST;
        if (memcmp(m, "HEAD", 4) == 0)
            return FB_HTTP_HEAD;
        break;
    case 5:
        if (memcmp(m, "PATCH", 5) == 0)
            return FB_HTTP_PATCH;
        break;
    case 6:
        if (memcmp(m, "DELETE", 6) == 0)
            return FB_HTTP_DELETE;
        break;
    case 7:
        if (memcmp(m, "OPTIONS", 7) == 0)
            return FB_HTTP_OPTIONS;
        break;
    }
    return FB_HTTP_OTHER;
}

/* HTTP-version = "HTTP/" DIGIT "." DIGIT, RFC 9112 2.3. Checks the n <= 8
 * bytes available so that garbage is refused before it is complete. */
static int version_syntax_ok(const unsigned char *p, size_t n)
{
    static const char shape[8] = {'H', 'T', 'T', 'P', '/', 'D', '.', 'D'};
    for (size_t i = 0; i < n; i++) {
        if (shape[i] == 'D') {
            if (p[i] < '0' || p[i] > '9')
                return 0;
        } else if (p[i] != (unsigned char)shape[i]) {
            return 0;
        }
    }
    return 1;
}

int fb_http_parse_request(const char *buf, size_t len, size_t max_head,
                          fb_http_req *req)
{
    FB_ASSERT(req != NULL);
    FB_ASSERT(buf != NULL || len == 0);

    /* The return value is an int, so no head can be longer than INT_MAX. */
    size_t cap = max_head < (size_t)INT_MAX ? max_head : (size_t)INT_MAX;
    /* Invariant 2: what running out of bytes means for this call. */
    const int incomplete = len >= cap ? -431 : 0;
    if (len == 0)
        return incomplete;

    const unsigned char *const start = (const unsigned char *)buf;
    const unsigned char *const end = start + (len < cap ? len : cap);
    const unsigned char *p = start;
    const unsigned char *tok;
    int rc;

    /* RFC 9112 2.2: empty lines before the request line, as some clients
     * send after a body, are skipped. They count toward max_head. */
    for (;;) {
        if (p == end)
            return incomplete;
        if (*p != '\r' && *p != '\n')
            break;
        if ((rc = eat_eol(&p, end)) <= 0)
            return rc == 0 ? incomplete : rc;
    }

    /* request-line = method SP request-target SP HTTP-version, with single
     * spaces: accepting other whitespace (RFC 9112 3) would let us read a
     * line differently from the upstream. */
    tok = p;
    p = scan_token(p, end);
    if (p == end)
        return incomplete;
    if (*p != ' ' || p == tok)
        return -400;
    req->method_str = (const char *)tok;
    req->method_len = (size_t)(p - tok);
    req->method = method_of(tok, req->method_len);
    p++;

    tok = p;
    p = scan_target(p, end);
    if (p == end)
        return incomplete;
    if (*p != ' ' || p == tok)
        return -400;
    req->target = (const char *)tok;
    req->target_len = (size_t)(p - tok);
    p++;

    size_t avail = (size_t)(end - p);
    if (!version_syntax_ok(p, avail < 8 ? avail : 8))
        return -400;
    if (avail < 8)
        return incomplete;
    if (p[5] != '1' || (p[7] != '0' && p[7] != '1'))
        return -505;
    req->minor_version = p[7] - '0';
    p += 8;
    if (p == end)
        return incomplete;
    if ((rc = eat_eol(&p, end)) <= 0)
        return rc == 0 ? incomplete : rc;

    head_facts f = {.content_length = -1};
    size_t nh = 0;
    for (;;) {
        if (p == end)
            return incomplete;
        if (*p == '\r' || *p == '\n') {
            if ((rc = eat_eol(&p, end)) <= 0)
                return rc == 0 ? incomplete : rc;
            break;
        }
        if (nh == FB_HTTP_MAX_HEADERS)
            return -431;

        /* field-line = field-name ":" OWS field-value OWS. A line opening
         * with whitespace (obs-fold, RFC 9112 5.2) and whitespace before
         * the colon (5.1) both fail here as a non-token byte. */
        tok = p;
        p = scan_token(p, end);
        if (p == end)
            return incomplete;
        if (*p != ':' || p == tok)
            return -400;
        fb_http_header *h = &req->headers[nh];
        h->name = (const char *)tok;
        h->name_len = (size_t)(p - tok);
        p++;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        tok = p;
        p = scan_value(p, end);
        if (p == end)
            return incomplete;
        const unsigned char *vend = p;
        /* A control byte stopped the scan unless it is the line end. */
        if ((rc = eat_eol(&p, end)) <= 0)
            return rc == 0 ? incomplete : rc;
        while (vend > tok && (vend[-1] == ' ' || vend[-1] == '\t'))
            vend--;
        h->value = (const char *)tok;
        h->value_len = (size_t)(vend - tok);
        nh++;
        if ((rc = apply_field(&f, h)) < 0)
            return rc;
    }

    /* Invariant 4: framing, RFC 9112 6.1 and 6.3. */
    req->chunked = 0;
    if (f.te_seen) {
        if (f.content_length >= 0)
            return -400; /* 6.3: a smuggling attempt, not a choice */
        if (req->minor_version == 0)
            return -400; /* 6.1: HTTP/1.0 framing is faulty with TE */
        if (f.te_other > 0 || !f.te_last_chunked)
            return -501;
        if (f.te_chunked > 1)
            return -400; /* 6.1: chunked must not be applied twice */
        req->chunked = 1;
    }
    req->nheaders = nh;
    req->content_length = f.content_length;
    if (req->minor_version == 1)
        req->keep_alive = !f.conn_close;
    else
        req->keep_alive = f.conn_keep_alive && !f.conn_close;
    /* RFC 9110 10.1.1: a 100-continue from HTTP/1.0 must be ignored. */
    req->expect_continue = req->minor_version == 1 && f.expect_continue;
    return (int)(p - start);
}

const char *fb_http_header_get(const fb_http_req *req, const char *name,
                               size_t *vlen)
{
    FB_ASSERT(req != NULL && name != NULL);
    size_t n = strlen(name);
    for (size_t i = 0; i < req->nheaders; i++) {
        const fb_http_header *h = &req->headers[i];
        if (fb_strcaseeq(h->name, h->name_len, name, n)) {
            if (vlen != NULL)
                *vlen = h->value_len;
            return h->value;
        }
    }
    if (vlen != NULL)
        *vlen = 0;
    return NULL;
}

enum {
    CH_SIZE_START = 0, /* zero so that a zeroed decoder is ready */
    CH_SIZE,
    CH_SIZE_BWS,
    CH_EXT,
    CH_SIZE_LF,
    CH_DATA,
    CH_DATA_CR,
    CH_DATA_LF,
    CH_TRAILER_START,
    CH_TRAILER_NAME,
    CH_TRAILER_VALUE,
    CH_TRAILER_LF,
    CH_END_LF,
    CH_DONE,
    CH_ERR_400,
    CH_ERR_413,
};

static unsigned hex_value(unsigned char c)
{
    if (c <= '9')
        return (unsigned)(c - '0');
    return (unsigned)((c | 0x20) - 'a' + 10);
}

int fb_http_chunked_decode(fb_http_chunked *d, const char *in, size_t inlen,
                           size_t *consumed, char *out, size_t *outlen,
                           uint64_t max_body)
{
    FB_ASSERT(d != NULL && consumed != NULL && outlen != NULL);
    FB_ASSERT((in != NULL && out != NULL) || inlen == 0);

    size_t i = 0, o = 0;
    int rc = 0;

    switch (d->state) {
    case CH_DONE:
        rc = 1;
        goto out;
    case CH_ERR_400:
        rc = -400;
        goto out;
    case CH_ERR_413:
        rc = -413;
        goto out;
    }

    while (i < inlen) {
        if (d->state == CH_DATA) {
            size_t n = inlen - i;
            if (n > d->remaining)
                n = (size_t)d->remaining;
            /* out may equal in; it never runs ahead of the input. */
            memmove(out + o, in + i, n);
            i += n;
            o += n;
            d->remaining -= n;
            d->total += n;
            if (d->remaining == 0)
                d->state = CH_DATA_CR;
            continue;
        }

        unsigned char c = (unsigned char)in[i++];
        if (d->state <= CH_SIZE_LF) {
            if (++d->metalen > FB_HTTP_MAX_CHUNK_LINE)
                goto bad;
        } else if (d->state >= CH_TRAILER_START) {
            if (++d->metalen > FB_HTTP_MAX_TRAILERS)
                goto bad;
        }

        switch (d->state) {
        case CH_SIZE_START:
            if (!(cls[c] & C_HEX))
                goto bad;
            d->remaining = hex_value(c);
            d->state = CH_SIZE;
            break;
        case CH_SIZE:
            if (cls[c] & C_HEX) {
                if (d->remaining > (UINT64_MAX >> 4))
                    goto bad;
                d->remaining = (d->remaining << 4) | hex_value(c);
            } else if (c == ';') {
                d->state = CH_EXT;
            } else if (c == ' ' || c == '\t') {
                d->state = CH_SIZE_BWS;
            } else if (c == '\r') {
                d->state = CH_SIZE_LF;
            } else {
                goto bad;
            }
            break;
        case CH_SIZE_BWS:
            /* RFC 9112 7.1.1: BWS is allowed only before an extension. */
            if (c == ';')
                d->state = CH_EXT;
            else if (c != ' ' && c != '\t')
                goto bad;
            break;
        case CH_EXT:
            /* Extensions are ignored; neither a token nor a quoted-string
             * may hold control bytes, so only the CR can end one. */
            if (c == '\r')
                d->state = CH_SIZE_LF;
            else if (!(cls[c] & C_VALUE))
                goto bad;
            break;
        case CH_SIZE_LF:
            if (c != '\n')
                goto bad;
            if (d->remaining == 0) {
                d->state = CH_TRAILER_START;
            } else {
                /* Invariant 5, checked before any byte of the chunk. */
                if (d->remaining > max_body ||
                    d->total > max_body - d->remaining) {
                    d->state = CH_ERR_413;
                    rc = -413;
                    goto out;
                }
                d->state = CH_DATA;
            }
            d->metalen = 0;
            break;
        case CH_DATA_CR:
            if (c != '\r')
                goto bad;
            d->state = CH_DATA_LF;
            break;
        case CH_DATA_LF:
            if (c != '\n')
                goto bad;
            d->state = CH_SIZE_START;
            d->metalen = 0;
            break;
        case CH_TRAILER_START:
            if (c == '\r')
                d->state = CH_END_LF;
            else if (cls[c] & C_TCHAR)
                d->state = CH_TRAILER_NAME;
            else
                goto bad;
            break;
        case CH_TRAILER_NAME:
            if (c == ':')
                d->state = CH_TRAILER_VALUE;
            else if (!(cls[c] & C_TCHAR))
                goto bad;
            break;
        case CH_TRAILER_VALUE:
            if (c == '\r')
                d->state = CH_TRAILER_LF;
            else if (!(cls[c] & C_VALUE))
                goto bad;
            break;
        case CH_TRAILER_LF:
            if (c != '\n')
                goto bad;
            d->state = CH_TRAILER_START;
            break;
        case CH_END_LF:
            if (c != '\n')
                goto bad;
            d->state = CH_DONE;
            rc = 1;
            goto out;
        default:
            FB_ASSERT(!"unknown chunked decoder state");
        }
    }
    goto out;

bad:
    d->state = CH_ERR_400;
    rc = -400;
out:
    *consumed = i;
    *outlen = o;
    return rc;
}

const char *fb_http_cookie(const char *v, size_t vlen, const char *name,
                           size_t *len)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i + nl < vlen; i++) {
        if ((i == 0 || v[i - 1] == ' ' || v[i - 1] == ';') &&
            memcmp(v + i, name, nl) == 0 && v[i + nl] == '=') {
            const char *t = v + i + nl + 1;
            size_t n = 0;
            while (t + n < v + vlen && t[n] != ';')
                n++;
            *len = n;
            return t;
        }
    }
    return NULL;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int fb_http_form_get(const char *b, size_t len, const char *name, char *out,
                     size_t cap)
{
    size_t nl = strlen(name), i = 0;
    if (cap == 0)
        return 0;
    while (i < len) {
        size_t end = i;
        while (end < len && b[end] != '&')
            end++;
        if (end - i > nl && memcmp(b + i, name, nl) == 0 && b[i + nl] == '=') {
            size_t o = 0;
            for (size_t k = i + nl + 1; k < end; k++) {
                int c = (unsigned char)b[k];
                if (c == '+') {
                    c = ' ';
                } else if (c == '%') {
                    int hi = k + 2 < end ? hexval(b[k + 1]) : -1;
                    int lo = k + 2 < end ? hexval(b[k + 2]) : -1;
                    if (hi < 0 || lo < 0)
                        return 0;
                    c = hi * 16 + lo;
                    k += 2;
                }
                if (o + 1 >= cap || c == 0)
                    return 0;
                out[o++] = (char)c;
            }
            out[o] = '\0';
            return 1;
        }
        i = end + 1;
    }
    return 0;
}
