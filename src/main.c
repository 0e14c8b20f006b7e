/* main.c - the fusebox command: parse the subcommand and dispatch. */
#include <getopt.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "common.h"
#include "run.h"
#include "config.h"
#include "fake.h"
#include "gateway.h"
#include "scan.h"

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
            "  fusebox run --job J [options] -- COMMAND...   run a batch job "
            "under the fuse\n"
            "  fusebox trip|reset --job J | --tenant T | --key ID | --global\n"
            "  fusebox replay purge [--job J | --tenant T | --key ID | --all]\n"
            "  fusebox ledger verify [--json]      check the store and the "
            "ledger\n"
            "  fusebox migrate                     the store's schema to "
            "this version\n"
            "  fusebox scan [PATH] [--format text|json] [--fail-on "
            "high|blocked|never]\n"
            "                                      secrets in a repository\n"
            "  fusebox fake-provider [--listen HOST:PORT]  a fake paid API "
            "for tests\n"
            "  fusebox version | help\n\n"
            "Every command takes --config FILE (default $FUSEBOX_CONFIG, "
            "then ./fusebox.yaml).\n",
            FUSEBOX_VERSION);
}

/* Replace a config string, or fail (out of memory). */
static int set_str(char **field, const char *value)
{
    char *copy = strdup(value);
    if (copy == NULL)
        return -1;
    free(*field);
    *field = copy;
    return 0;
}

/* "HOST:PORT" or "[V6]:PORT" into the config. */
static int set_listen(fb_config *c, const char *v)
{
    const char *colon = strrchr(v, ':');
    char *end;
    if (colon == NULL || colon == v)
        return -1;
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 0 || port > 65535 || end == colon + 1)
        return -1;
    size_t hl = (size_t)(colon - v);
    if (v[0] == '[' && hl >= 2 && v[hl - 1] == ']') {
        v++;
        hl -= 2;
    }
    char *host = fb_strndup(v, hl);
    if (host == NULL)
        return -1;
    free(c->listen_host);
    c->listen_host = host;
    c->listen_port = (int)port;
    return 0;
}

/* fusebox run --serve and --staging start a gateway of their own: on a
 * free port, and for staging on a scratch store in front of a fake
 * provider (whose keys fusebox run puts in FUSEBOX_STAGING_*_KEY). */
static int staging_upstream(fb_config *c, const char *url)
{
    static const char *const keys[] = {[FB_PROVIDER_OPENAI] =
                                           "FUSEBOX_STAGING_OPENAI_KEY",
                                       [FB_PROVIDER_ANTHROPIC] =
                                           "FUSEBOX_STAGING_ANTHROPIC_KEY",
                                       [FB_PROVIDER_GENERIC] =
                                           "FUSEBOX_STAGING_GENERIC_KEY"};
    char base[1024];
    for (size_t i = 0; i < c->nproviders; i++) {
        fb_provider_conf *p = &c->providers[i];
        snprintf(base, sizeof base, "%s%s", url,
                 p->kind == FB_PROVIDER_GENERIC ? "/generic" : "");
        if (set_str(&p->base_url, base) != 0 ||
            set_str(&p->api_key_env, keys[p->kind]) != 0)
            return -1;
        if (p->kind == FB_PROVIDER_GENERIC && p->auth_header != NULL) {
            free(p->auth_header); /* the fake takes Authorization: Bearer */
            p->auth_header = NULL;
        }
    }
    return 0;
}

static int serve(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"listen", required_argument, NULL, 'l'},
        {"data-dir", required_argument, NULL, 'd'},
        {"staging-upstream", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *cfg = NULL, *listen = NULL, *data_dir = NULL, *staging = NULL;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        if (o == 'c')
            cfg = optarg;
        else if (o == 'l')
            listen = optarg;
        else if (o == 'd')
            data_dir = optarg;
        else if (o == 's')
            staging = optarg;
        else if (o == 'h') {
            printf("fusebox serve [--config FILE] [--listen HOST:PORT] "
                   "[--data-dir DIR]\n");
            return 0;
        } else
            return 2;
    }
    fb_config *c = fb_cli_config(cfg);
    if (c == NULL)
        return 1;
    if (staging) {
        /* A staging gateway prices a run on a scratch store of its own:
         * never the shared one the config or FUSEBOX_STORE names. */
        free(c->store_url);
        c->store_url = NULL;
        unsetenv("FUSEBOX_STORE");
    }
    if ((listen && set_listen(c, listen) != 0) ||
        (data_dir && set_str(&c->data_dir, data_dir) != 0) ||
        (staging && staging_upstream(c, staging) != 0)) {
        fprintf(stderr, "fusebox serve: bad --listen, --data-dir or "
                        "--staging-upstream\n");
        fb_config_free(c);
        return 2;
    }
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
    if (strcmp(cmd, "scan") == 0)
        return fb_cli_scan(argc - 1, argv + 1);
    if (strcmp(cmd, "run") == 0)
        return fb_run_main(argc - 1, argv + 1);
    if (strcmp(cmd, "trip") == 0)
        return fb_cli_trip(argc - 1, argv + 1, 1);
    if (strcmp(cmd, "reset") == 0)
        return fb_cli_trip(argc - 1, argv + 1, 0);
    if (strcmp(cmd, "replay") == 0)
        return fb_cli_replay(argc - 1, argv + 1);
    if (strcmp(cmd, "ledger") == 0)
        return fb_cli_ledger(argc - 1, argv + 1);
    if (strcmp(cmd, "migrate") == 0)
        return fb_cli_migrate(argc - 1, argv + 1);
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
