/* cli.h - the subcommands that work on the store directly, with or
 * without a running daemon: fusebox key ..., fusebox spend. */
#ifndef FB_CLI_H
#define FB_CLI_H

/* argv[0] is the subcommand name. Return a process exit status: 0 ok,
 * 1 failure, 2 bad usage. */
int fb_cli_key(int argc, char **argv);
int fb_cli_spend(int argc, char **argv);
/* fusebox trip (set = 1) and fusebox reset (set = 0). */
int fb_cli_trip(int argc, char **argv, int set);
int fb_cli_replay(int argc, char **argv);
/* fusebox ledger verify: the store's integrity and the ledger's
 * invariants; 0 clean, 1 a problem (or no store), 2 bad usage. */
int fb_cli_ledger(int argc, char **argv);
/* fusebox migrate: the store's schema to this build's version. */
int fb_cli_migrate(int argc, char **argv);

/* Load --config FILE (default ./fusebox.yaml or $FUSEBOX_CONFIG) found in
 * argv; prints the error and returns NULL on failure. */
struct fb_config *fb_cli_config(const char *path);

#endif
