/* gateway.h - fusebox serve: the budget fuse in front of paid APIs. */
#ifndef FB_GATEWAY_H
#define FB_GATEWAY_H

#include "config.h"

/* Run the daemon for config c until SIGTERM or SIGINT, then drain the
 * requests in flight and the ledger. Prints "fusebox listening on
 * HOST:PORT" on stdout once ready. Returns a process exit status. */
int fb_gateway_serve(const fb_config *c);

#endif
