/* server.h - the HTTP/1.1 front: accepts connections on the event loop,
 * reads one request at a time per connection (head, then a bounded body),
 * hands it to a handler, and writes the handler's answer, whole or
 * streamed. Protocol errors get a JSON error and a close. */
#ifndef FB_SERVER_H
#define FB_SERVER_H

#include <stddef.h>
#include "common.h"
#include "http.h"

struct event_base;
typedef struct fb_server fb_server;
typedef struct fb_req fb_req;

typedef struct fb_server_opts {
    size_t max_head;   /* request line + headers */
    size_t max_body;   /* decoded body */
    int timeout_ms;    /* to receive a whole request; to drain a write */
    int max_conns;     /* further connections are closed at accept */
} fb_server_opts;

/* Called once per complete request, on the loop. The handler owns req
 * until it finishes it with fb_req_reply or fb_req_stream_end. */
typedef void (*fb_handler_fn)(void *ud, fb_req *req);

fb_server *fb_server_new(struct event_base *base, const fb_server_opts *o,
                         fb_handler_fn handler, void *ud);
/* Listen on host:port (port 0 picks one; *bound_port gets it). */
fb_err fb_server_listen(fb_server *s, const char *host, int port,
                        int *bound_port);
/* Graceful drain: close the listeners (new connections are refused) and
 * idle connections; every connection closes after its current answer. */
void fb_server_drain(fb_server *s);
/* Close every connection and free. Requests still owned by the handler
 * must have been finished before. */
void fb_server_free(fb_server *s);
size_t fb_server_connections(const fb_server *s);

const fb_http_req *fb_req_head(const fb_req *r);
const char *fb_req_body(const fb_req *r, size_t *len);
/* The peer's address as text, for logs. */
const char *fb_req_peer(const fb_req *r);

/* Called at most once if the client goes away before the request is
 * finished; the request stays valid until the handler finishes it, and
 * output is then discarded. fn may finish the request. */
void fb_req_on_close(fb_req *r, void (*fn)(void *arg), void *arg);
int fb_req_client_gone(const fb_req *r);

/* A whole answer. extra_headers is "" or lines "Name: value\r\n". ctype
 * may be NULL. Finishes and frees r. */
void fb_req_reply(fb_req *r, int status, const char *extra_headers,
                  const char *ctype, const char *body, size_t len);
/* A JSON error in the OpenAI shape {"error": {"message", "type", "param",
 * "code"}}. Finishes and frees r. */
void fb_req_error(fb_req *r, int status, const char *type,
                  const char *message, const char *extra_headers);

/* A streamed answer (chunked transfer coding; close-delimited for 1.0). */
void fb_req_stream_begin(fb_req *r, int status, const char *extra_headers,
                         const char *ctype);
void fb_req_stream_write(fb_req *r, const void *data, size_t len);
/* Bytes waiting to go to the client (for back-pressure). */
size_t fb_req_pending_output(const fb_req *r);
/* Call fn once when the bytes waiting for the client have all been
 * written (not if the client leaves: see fb_req_on_close). */
void fb_req_on_drain(fb_req *r, void (*fn)(void *arg), void *arg);
/* Finishes and frees r. */
void fb_req_stream_end(fb_req *r);
/* End a streamed answer abnormally: what was written is flushed, then the
 * connection closes without the final chunk, so the client sees a cut
 * stream. Finishes and frees r. */
void fb_req_abort(fb_req *r);

/* Reason phrase for a status code. */
const char *fb_http_reason(int status);

#endif
