/* main.c - the fusebox command: parse the subcommand and dispatch. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "config.h"
#include "fake.h"
#include "gateway.h"

#define FUSEBOX_VERSION "0.1.0"

static void usage(FILE *f)
{
    fprintf(f,
            "fusebox %s - a budget fuse in front of paid APIs\n\n"
            "usage:\n"
            "  fusebox serve [--config FILE]       run the gateway\n"
            "  fusebox key create --tenant T [--job J] [--budget USD[/period]]\n"
            "  fusebox key list | key revoke ID\n"
            "  fusebox spend [--tenant T] [--job J] [--since T] [--json]\n"
            "  fusebox trip|reset --job J | --tenant T | --key ID | --global\n"
            "  fusebox replay purge [--job J | --tenant T | --key ID | --all]\n"
            "  fusebox fake-provider [--listen HOST:PORT]  a fake paid API "
            "for tests\n"
            "  fusebox version | help\n\n"
            "Every command takes --config FILE (default $FUSEBOX_CONFIG, "
            "then ./fusebox.yaml).\n",
            FUSEBOX_VERSION);
}

static int serve(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *cfg = NULL;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        if (o == 'c')
            cfg = optarg;
        else if (o == 'h') {
            printf("fusebox serve [--config FILE]\n");
            return 0;
        } else
            return 2;
    }
    fb_config *c = fb_cli_config(cfg);
    if (c == NULL)
        return 1;
    int rc = fb_gateway_serve(c);
    fb_config_free(c);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0)
        return serve(argc - 1, argv + 1);
    if (strcmp(cmd, "key") == 0)
        return fb_cli_key(argc - 1, argv + 1);
    if (strcmp(cmd, "spend") == 0)
        return fb_cli_spend(argc - 1, argv + 1);
    if (strcmp(cmd, "trip") == 0)
        return fb_cli_trip(argc - 1, argv + 1, 1);
    if (strcmp(cmd, "reset") == 0)
        return fb_cli_trip(argc - 1, argv + 1, 0);
    if (strcmp(cmd, "replay") == 0)
        return fb_cli_replay(argc - 1, argv + 1);
    if (strcmp(cmd, "fake-provider") == 0)
        return fb_fake_main(argc - 1, argv + 1);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("fusebox %s\n", FUSEBOX_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 ||
        strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "fusebox: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
