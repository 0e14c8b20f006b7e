/* http.h - an incremental HTTP/1.1 request-head parser. Pure: no I/O, no
 * allocation; all pointers point into the caller's buffer. The server
 * feeds it the bytes received so far and calls again when more arrive. */
#ifndef FB_HTTP_H
#define FB_HTTP_H

#include <stddef.h>
#include <stdint.h>

#define FB_HTTP_MAX_HEADERS 64

typedef struct fb_http_header {
    const char *name;
    size_t name_len;
    const char *value; /* leading and trailing blanks trimmed */
    size_t value_len;
} fb_http_header;

typedef enum fb_http_method {
    FB_HTTP_OTHER = 0,
    FB_HTTP_GET,
    FB_HTTP_HEAD,
    FB_HTTP_POST,
    FB_HTTP_PUT,
    FB_HTTP_DELETE,
    FB_HTTP_PATCH,
    FB_HTTP_OPTIONS,
} fb_http_method;

typedef struct fb_http_req {
    fb_http_method method;
    const char *method_str;
    size_t method_len;
    const char *target; /* request-target as sent: "/openai/v1/chat?x=1" */
    size_t target_len;
    int minor_version; /* 0 or 1 */
    fb_http_header headers[FB_HTTP_MAX_HEADERS];
    size_t nheaders;
    int64_t content_length; /* -1 when absent */
    int chunked;            /* Transfer-Encoding: chunked */
    int keep_alive;         /* after HTTP version and Connection header */
    int expect_continue;    /* Expect: 100-continue */
} fb_http_req;

/* Parse a request head from buf[0..len).
 * Returns > 0: the head is complete and that many bytes were consumed;
 *           0: incomplete, call again with more bytes;
 *         < 0: minus an HTTP status to answer with before closing:
 *              -400 malformed (bad request line, bad header syntax, bare
 *              CR, control bytes, duplicate or invalid Content-Length,
 *              both Content-Length and Transfer-Encoding),
 *              -431 head larger than max_head or more than
 *              FB_HTTP_MAX_HEADERS headers, -501 a Transfer-Encoding other
 *              than chunked, -505 not HTTP/1.0 or HTTP/1.1.
 * Leading empty lines before the request line are skipped (RFC 9112 2.2).
 * An incomplete head already longer than max_head returns -431.
 * Details: lines may end in LF alone; the request-target must be visible
 * ASCII; repeated Content-Length values are accepted when all equal;
 * Transfer-Encoding must be exactly "chunked" (other codings -501, chunked
 * twice or in an HTTP/1.0 request -400); Expect: 100-continue only counts
 * in HTTP/1.1. On a return <= 0 the contents of *req are unspecified. */
int fb_http_parse_request(const char *buf, size_t len, size_t max_head,
                          fb_http_req *req);

/* Case-insensitive header lookup; NULL if absent. *vlen gets its length. */
const char *fb_http_header_get(const fb_http_req *req, const char *name,
                               size_t *vlen);

/* The value of cookie `name` in a Cookie header's value v (RFC 6265
 * "a=b; c=d"); NULL if absent. Points into v. */
const char *fb_http_cookie(const char *v, size_t vlen, const char *name,
                           size_t *len);

/* The decoded value of field `name` in an application/x-www-form-
 * urlencoded body into out (NUL-terminated; '+' is a blank, %XX a byte);
 * 0 if absent, malformed, holding a NUL, or not fitting in cap. */
int fb_http_form_get(const char *body, size_t len, const char *name,
                     char *out, size_t cap);

/* Incremental decoder for a chunked request body. */
typedef struct fb_http_chunked {
    int state;
    uint64_t remaining;
    uint64_t total;   /* payload bytes decoded so far */
    uint32_t metalen; /* bytes in the current size line or trailer section */
} fb_http_chunked;

/* Framing that carries no payload is bounded, so a client cannot keep a
 * connection busy with endless chunk extensions or trailers. */
#define FB_HTTP_MAX_CHUNK_LINE 4096 /* one chunk-size line with extensions */
#define FB_HTTP_MAX_TRAILERS 8192   /* the whole trailer section */

/* Decode chunked framing from in[0..inlen). Payload bytes are written to
 * out (which may equal in: decoding never expands), *outlen gets their
 * count and *consumed the input bytes used. Trailers are skipped.
 * Returns 1 when the last chunk and trailers are complete, 0 when more
 * input is needed (bytes not consumed must be offered again with more),
 * -400 on malformed framing (chunk lines need CRLF; a size line or the
 * trailer section over the limits above is malformed too), -413 when the
 * decoded total would exceed max_body. Zero-initialise d before the first
 * call; after an error the decoder keeps returning that error. */
int fb_http_chunked_decode(fb_http_chunked *d, const char *in, size_t inlen,
                           size_t *consumed, char *out, size_t *outlen,
                           uint64_t max_body);

#endif
