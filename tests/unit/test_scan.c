/* test_scan.c - the secret rules of fusebox scan: for every rule, a
 * realistic fake key is found (built here from a PRNG: no real key is in
 * the repository, and none is written out in full), and its placeholders
 * and look-alikes are not. Redaction, fingerprints, the prefilter, inline
 * allows, binary files, and rules from a file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "scan.h"

/* ---- fake keys ---- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static char rnd_char(const char *set)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return set[rng % strlen(set)];
}

static const char ALNUM[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
static const char UPNUM[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
static const char HEX[] = "0123456789abcdef";
static const char URLSAFE[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* prefix + n characters of set, into a static buffer (one at a time) */
static const char *fake(const char *prefix, const char *set, int n)
{
    static char buf[256];
    size_t p = strlen(prefix);
    memcpy(buf, prefix, p);
    for (int i = 0; i < n; i++)
        buf[p + (size_t)i] = rnd_char(set);
    buf[p + (size_t)n] = '\0';
    return buf;
}

/* ---- scanning ---- */

typedef struct got {
    int n;
    char rule[8][64];
    char redacted[8][64];
    char fp[8][17];
    long line[8], col[8];
    size_t len[8];
    char via[8][16];
    char kind[8][16];
} got;

static void collect(void *arg, const fb_scan_finding *f)
{
    got *g = arg;
    if (g->n == 8)
        return;
    snprintf(g->rule[g->n], sizeof g->rule[0], "%s", f->rule);
    snprintf(g->redacted[g->n], sizeof g->redacted[0], "%s", f->redacted);
    memcpy(g->fp[g->n], f->fingerprint, 17);
    g->line[g->n] = (long)f->line;
    g->col[g->n] = (long)f->column;
    g->len[g->n] = f->length;
    snprintf(g->via[g->n], sizeof g->via[0], "%s", f->via ? f->via : "");
    snprintf(g->kind[g->n], sizeof g->kind[0], "%s", f->kind);
    g->n++;
}

static fb_scan_rules *rules;

static got scan(const char *text)
{
    got g = {0};
    assert_int_equal(fb_scan_buffer(rules, "f.py", text, strlen(text),
                                    collect, &g),
                     0);
    return g;
}

/* text holds one secret, found by rule (and never shown whole); paid or
 * schema findings on the same lines do not count here */
static void found(const char *text, const char *rule, const char *secret)
{
    got g = scan(text);
    int at = -1, secrets = 0;
    for (int i = 0; i < g.n; i++)
        if (strcmp(g.kind[i], "secret") == 0) {
            secrets++;
            at = i;
        }
    if (secrets != 1 || strcmp(g.rule[at], rule) != 0)
        fail_msg("wanted one %s in\n%s\ngot %d secrets (%s)", rule, text,
                 secrets, at >= 0 ? g.rule[at] : "-");
    assert_int_equal(g.len[at], strlen(secret));
    assert_null(strstr(g.redacted[at], secret));
    assert_int_equal(strncmp(g.redacted[at], secret, 4), 0);
}

/* no secret in text */
static void nothing(const char *text)
{
    got g = scan(text);
    for (int i = 0; i < g.n; i++)
        if (strcmp(g.kind[i], "secret") == 0)
            fail_msg("wanted nothing in\n%s\ngot %s (%s)", text, g.rule[i],
                     g.redacted[i]);
}

/* nothing at all in text */
static void none(const char *text)
{
    got g = scan(text);
    if (g.n != 0)
        fail_msg("wanted no finding in\n%s\ngot %s", text, g.rule[0]);
}

static int setup(void **state)
{
    (void)state;
    rules = fb_scan_rules_builtin();
    return rules ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    fb_scan_rules_free(rules);
    return 0;
}

static void test_openai(void **state)
{
    (void)state;
    char t[512], key[256];
    const char *prefixes[] = {"sk-", "sk-proj-", "sk-svcacct-", "sk-admin-"};
    for (size_t i = 0; i < 4; i++) {
        snprintf(key, sizeof key, "%s", fake(prefixes[i], URLSAFE, 48));
        snprintf(t, sizeof t, "client = OpenAI(api_key=\"%s\")\n", key);
        found(t, "openai-api-key", key);
    }
    nothing("OPENAI_API_KEY=sk-...\n");
    nothing("export OPENAI_API_KEY=sk-YOUR_API_KEY_GOES_HERE_REPLACE_ME_NOW\n");
    nothing("key = os.environ[\"OPENAI_API_KEY\"]\n");
    nothing("sk-short123\n");
    nothing("risk-assessment-for-the-quarterly-report-2026-final\n");
}

static void test_anthropic(void **state)
{
    (void)state;
    char t[512], key[256];
    snprintf(key, sizeof key, "%sAA",
             fake("sk-ant-api03-", URLSAFE, 93));
    snprintf(t, sizeof t, "ANTHROPIC_API_KEY=%s\n", key);
    found(t, "anthropic-api-key", key);
    snprintf(key, sizeof key, "%s", fake("sk-ant-admin01-", URLSAFE, 80));
    snprintf(t, sizeof t, "  \"key\": \"%s\",\n", key);
    found(t, "anthropic-api-key", key);
    nothing("ANTHROPIC_API_KEY=sk-ant-api03-...\n");
    nothing("ANTHROPIC_API_KEY=${ANTHROPIC_API_KEY}\n");
}

static void test_aws_github_slack_stripe_google(void **state)
{
    (void)state;
    char t[512], key[256];
    snprintf(key, sizeof key, "%s", fake("AKIA", UPNUM, 16));
    snprintf(t, sizeof t, "aws_access_key_id = %s\n", key);
    found(t, "aws-access-key-id", key);
    nothing("aws_access_key_id = AKIAIOSFODNN7EXAMPLE\n");
    nothing("AKIAXXXXXXXXXXXXXXXX\n");

    const char *gh[] = {"ghp_", "gho_", "ghu_", "ghs_"};
    for (size_t i = 0; i < 4; i++) {
        snprintf(key, sizeof key, "%s", fake(gh[i], ALNUM, 36));
        snprintf(t, sizeof t, "token: %s\n", key);
        found(t, "github-token", key);
    }
    snprintf(key, sizeof key, "%s", fake("github_pat_", ALNUM, 82));
    snprintf(t, sizeof t, "GH_TOKEN=%s\n", key);
    found(t, "github-fine-grained-token", key);
    nothing("GH_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n");

    snprintf(key, sizeof key, "%s", fake("xoxb-", "0123456789", 12));
    size_t k = strlen(key);
    snprintf(key + k, sizeof key - k, "-%s", fake("", ALNUM, 24));
    snprintf(t, sizeof t, "slack = \"%s\"\n", key);
    found(t, "slack-token", key);
    char hook[256];
    snprintf(hook, sizeof hook, "https://hooks.slack.com/services/%s",
             fake("T", UPNUM, 8));
    k = strlen(hook);
    snprintf(hook + k, sizeof hook - k, "/%s", fake("B", UPNUM, 10));
    k = strlen(hook);
    snprintf(hook + k, sizeof hook - k, "/%s", fake("", ALNUM, 24));
    snprintf(t, sizeof t, "webhook_url: %s\n", hook);
    found(t, "slack-webhook", hook);
    nothing("webhook_url: https://hooks.slack.com/services/T000/B000/XXXX\n");

    snprintf(key, sizeof key, "%s", fake("sk_live_", ALNUM, 24));
    snprintf(t, sizeof t, "Stripe.api_key = '%s'\n", key);
    found(t, "stripe-secret-key", key);
    snprintf(key, sizeof key, "%s", fake("rk_live_", ALNUM, 24));
    snprintf(t, sizeof t, "STRIPE=%s\n", key);
    found(t, "stripe-secret-key", key);
    nothing("Stripe.api_key = 'sk_test_4eC39HqLyjWDarjtT1zdp7dc'\n");

    snprintf(key, sizeof key, "%s", fake("AIza", URLSAFE, 35));
    snprintf(t, sizeof t, "const GOOGLE = \"%s\";\n", key);
    found(t, "google-api-key", key);
    nothing("const GOOGLE = \"AIzaYOUR_KEY\";\n");
}

static void test_twilio_private_generic(void **state)
{
    (void)state;
    char t[512], key[256];
    snprintf(key, sizeof key, "%s", fake("", HEX, 32));
    snprintf(t, sizeof t, "TWILIO_AUTH_TOKEN=%s\n", key);
    found(t, "twilio-api-key", key);
    nothing("TWILIO_AUTH_TOKEN=your_auth_token\n");

    /* fusebox:allow below: the scanner reads this file too */
    found("-----BEGIN RSA PRIVATE KEY-----\nMIIEow...\n", /* fusebox:allow */
          "private-key", "RSA PRIVATE KEY");
    found("-----BEGIN OPENSSH PRIVATE KEY-----\n", /* fusebox:allow */
          "private-key", "OPENSSH PRIVATE KEY");
    nothing("-----BEGIN PUBLIC KEY-----\n");

    snprintf(key, sizeof key, "%s", fake("", ALNUM, 32));
    snprintf(t, sizeof t, "db_password = \"%s\"\n", key);
    found(t, "generic-secret", key);
    snprintf(t, sizeof t, "MY_SERVICE_TOKEN: %s\n", key);
    found(t, "generic-secret", key);
    nothing("api_key = \"YOUR_API_KEY\"\n");
    nothing("api_key = \"<key>\"\n");
    nothing("token = \"${OPENAI_API_KEY}\"\n");
    nothing("password = \"correct-horse-battery-staple\"\n"); /* words */
    nothing("secret_key = settings.DJANGO_SECRET_KEY_VALUE\n");
    nothing("token = \"aaaaaaaaaaaaaaaaaaaaaaaa1\"\n"); /* no entropy */
    /* hex holds 4 bits a character: a random 32-digit one is a key */
    snprintf(key, sizeof key, "%s", fake("", HEX, 32));
    snprintf(t, sizeof t, "SECRET_KEY = \"%s\"\n", key);
    found(t, "generic-secret", key);
}

static void test_positions_allow_binary(void **state)
{
    (void)state;
    char t[512], key[256];
    snprintf(key, sizeof key, "%s", fake("sk-proj-", URLSAFE, 48));
    snprintf(t, sizeof t, "line one\n\nx = '%s'\n", key);
    got g = scan(t);
    assert_int_equal(g.n, 1);
    assert_int_equal(g.line[0], 3);
    assert_int_equal(g.col[0], 6);
    /* The same secret at the same place: the same fingerprint. */
    got g2 = scan(t);
    assert_string_equal(g.fp[0], g2.fp[0]);
    assert_int_equal(strlen(g.fp[0]), 16);
    /* A long path: the fingerprint covers all of it, and is stable (it
     * once hashed past a 600-byte buffer, differently each run). */
    char longpath[800];
    memset(longpath, 'd', sizeof longpath - 1);
    longpath[sizeof longpath - 1] = '\0';
    got l1 = {0}, l2 = {0};
    fb_scan_buffer(rules, longpath, t, strlen(t), collect, &l1);
    longpath[700] = 'e'; /* another path, far along */
    fb_scan_buffer(rules, longpath, t, strlen(t), collect, &l2);
    assert_int_equal(l1.n, 1);
    assert_int_equal(l2.n, 1);
    assert_string_not_equal(l1.fp[0], l2.fp[0]);
    longpath[700] = 'd';
    got l3 = {0};
    fb_scan_buffer(rules, longpath, t, strlen(t), collect, &l3);
    assert_string_equal(l1.fp[0], l3.fp[0]);
    /* Inline allow */
    snprintf(t, sizeof t, "x = '%s'  # fusebox:allow (a revoked test key)\n",
             key);
    nothing(t);
    /* Binary: a NUL early on */
    char bin[128] = "\x7f"
                    "ELF\0\0\0";
    size_t bl = 7;
    bl += (size_t)snprintf(bin + bl, sizeof bin - bl, "%s", key);
    got gb = {0};
    assert_int_equal(fb_scan_buffer(rules, "a.out", bin, bl, collect, &gb),
                     1);
    assert_int_equal(gb.n, 0);
    /* Keywords in any case: a key in upper case is still checked. */
    snprintf(key, sizeof key, "%s", fake("AKIA", UPNUM, 16));
    snprintf(t, sizeof t, "KEY_ID=%s\n", key);
    found(t, "aws-access-key-id", key);
}

static void test_rules_file(void **state)
{
    (void)state;
    char err[256];
    size_t n0 = fb_scan_rules_count(rules);
    static const char add[] =
        "# ours\n"
        "secret acme-token kw=acme_ entropy=3 desc=\"ACME token\" "
        "re=(acme_[a-z0-9]{20})\n"
        "secret google-api-key kw=aiza entropy=6 re=(AIza[0-9A-Za-z_-]{35})\n";
    assert_int_equal(fb_scan_rules_load(rules, add, strlen(add), "mine.rules",
                                        err, sizeof err),
                     FB_OK);
    assert_int_equal(fb_scan_rules_count(rules), n0 + 1); /* one replaced */
    char t[256], key[64];
    snprintf(key, sizeof key, "%s", fake("acme_", "abcdefghij0123456789", 20));
    snprintf(t, sizeof t, "X=%s\n", key);
    found(t, "acme-token", key);
    /* google-api-key now wants entropy 6: more than 39 characters hold */
    snprintf(t, sizeof t, "G=%s\n", fake("AIza", URLSAFE, 35));
    nothing(t);

    static const struct {
        const char *text, *err;
    } bad[] = {
        {"secret x kw=ab re=(\n", "mine.rules:1: bad pattern"},
        {"secret x kw=a re=b\n", "mine.rules:1: keywords are 2 to 31"},
        {"secret x re=abc\n", "mine.rules:1: a rule needs kw= and re="},
        {"bogus x kw=ab re=b\n", "mine.rules:1: unknown kind 'bogus'"},
        {"migration x kw=ab re=b\n",
         "mine.rules:1: a migration rule takes path=, not kw= or re="},
        {"secret x kw=ab nope=1 re=b\n", "mine.rules:1: unknown key 'nope'"},
        {"secret x kw=ab entropy=many re=b\n", "mine.rules:1: entropy"},
        {"\nsecret\n", "mine.rules:2: expected KIND ID"},
    };
    /* A load that fails after adding a rule (the array grew): the rules
     * before the bad line are in, and the prefilter points at the new
     * array (fuzzing found it reading the freed one). */
    {
        static const char part[] = "secret zz-token kw=zz_ re=(zz_[0-9]{8})\n"
                                   "secret broken\n";
        fb_scan_rules *r = fb_scan_rules_builtin();
        assert_int_equal(fb_scan_rules_load(r, part, strlen(part), "p.rules",
                                            err, sizeof err),
                         FB_EINVAL);
        got g = {0};
        static const char text[] = "TOKEN = zz_31415926\n";
        fb_scan_buffer(r, "x", text, strlen(text), collect, &g);
        assert_int_equal(g.n, 1);
        assert_string_equal(g.rule[0], "zz-token");
        fb_scan_rules_free(r);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        fb_scan_rules *r = fb_scan_rules_builtin();
        err[0] = '\0';
        assert_int_equal(fb_scan_rules_load(r, bad[i].text,
                                            strlen(bad[i].text), "mine.rules",
                                            err, sizeof err),
                         FB_EINVAL);
        if (strstr(err, bad[i].err) == NULL)
            fail_msg("%s: got \"%s\"", bad[i].text, err);
        fb_scan_rules_free(r);
    }
}

/* text holds a finding of rule (among others maybe), with its via */
static void has(const char *text, const char *rule)
{
    got g = scan(text);
    for (int i = 0; i < g.n; i++)
        if (strcmp(g.rule[i], rule) == 0)
            return;
    fail_msg("wanted %s in\n%s\ngot %d findings (%s)", rule, text, g.n,
             g.n ? g.rule[0] : "-");
}

static void test_paid_apis(void **state)
{
    (void)state;
    static const struct {
        const char *text, *rule;
    } yes[] = {
        {"from openai import OpenAI\n", "openai-sdk"},
        {"import openai\n", "openai-sdk"},
        {"const OpenAI = require('openai');\n", "openai-sdk"},
        {"import OpenAI from \"openai\";\n", "openai-sdk"},
        {"client := openai.NewClient() // github.com/openai/openai-go\n",
         "openai-sdk"},
        {"gem 'ruby-openai'\n", "openai-sdk"},
        {"curl https://api.openai.com/v1/chat/completions\n", "openai-sdk"},
        {"import anthropic\n", "anthropic-sdk"},
        {"import Anthropic from '@anthropic-ai/sdk';\n", "anthropic-sdk"},
        {"import com.anthropic.client.AnthropicClient;\n", "anthropic-sdk"},
        {"import google.generativeai as genai\n", "gemini-sdk"},
        {"from google import genai\n", "gemini-sdk"},
        {"import { GoogleGenerativeAI } from \"@google/generative-ai\";\n",
         "gemini-sdk"},
        {"from mistralai import Mistral\n", "mistral-sdk"},
        {"import cohere\n", "cohere-sdk"},
        {"from tavily import TavilyClient\n", "tavily-sdk"},
        {"from serpapi import GoogleSearch\n", "serpapi-sdk"},
        {"from twilio.rest import Client\n", "twilio-sdk"},
        {"const sg = require('@sendgrid/mail');\n", "sendgrid-sdk"},
        {"import stripe\n", "stripe-sdk"},
        {"  \"cells\": [{\"source\": [\"from openai import OpenAI\\n\"]}]\n",
         "openai-sdk"}, /* a notebook */
    };
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        has(yes[i].text, yes[i].rule);
    /* look-alikes: the names in prose, in identifiers, in other words */
    static const char *const no[] = {
        "# we compared openai and anthropic pricing last year\n",
        "openai_compatible = True  # the OpenAI-compatible flag\n",
        "anthropic_principle = 'weak'\n",
        "The Gemini spacecraft; generative art in our slides.\n",
        "mistral = 'a cold wind'\n",
        "cohere_score = cohesion(a, b)\n",
        "tavily_notes.md mentions search later\n",
        "serpapi_results = []  # filled by hand\n",
        "twilight = True\n",
        "sendgrid_template_id = 'welcome'\n",
        "stripes = ['red', 'white']  # stripe widths\n",
    };
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        none(no[i]);

    /* via: the file names the gateway, or not */
    got g = scan("from openai import OpenAI\nclient = OpenAI()\n");
    assert_true(g.n >= 1);
    assert_string_equal(g.via[0], "direct");
    g = scan("import os\nfrom openai import OpenAI\n"
             "client = OpenAI(base_url=os.environ['OPENAI_BASE_URL'])\n");
    assert_true(g.n >= 1);
    assert_string_equal(g.via[0], "fusebox");
}

static void test_schema_and_migrations(void **state)
{
    (void)state;
    has("cur.execute(\"ALTER TABLE reports ADD COLUMN summary TEXT\")\n",
        "ddl");
    has("DROP TABLE old_reports;\n", "ddl");
    has("create unique index idx on t(a);\n", "ddl");
    has("op.rename_table('a', 'b')  # RENAME TABLE a TO b\n", "ddl");
    none("# we will drop the old table later, after the report\n");
    static const struct {
        const char *path, *rule;
    } paths[] = {
        {"alembic/versions/3f2a_add_summary.py", "alembic"},
        {"app/migrations/0004_report_summary.py", "django"},
        {"db/migrate/20261128_add_summary.rb", "rails"},
        {"sql/V2__add_summary.sql", "flyway"},
        {"db/changelog-master.yaml", "liquibase"},
        {"prisma/migrations/20261128_x/migration.sql", "prisma"},
        {"migrations/000002_add_summary.up.sql", "golang-migrate"},
        {"db/migrations/20261128_add_summary.js", "knex"},
        {"schema/init.sql", "sql"},
    };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        got g = {0};
        fb_scan_path(rules, paths[i].path, collect, &g);
        if (g.n != 1 || strcmp(g.rule[0], paths[i].rule) != 0)
            fail_msg("%s: wanted %s, got %d (%s)", paths[i].path,
                     paths[i].rule, g.n, g.n ? g.rule[0] : "-");
    }
    got g = {0};
    fb_scan_path(rules, "src/app/models.py", collect, &g);
    fb_scan_path(rules, "docs/migrations.md", collect, &g);
    assert_int_equal(g.n, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openai),
        cmocka_unit_test(test_anthropic),
        cmocka_unit_test(test_aws_github_slack_stripe_google),
        cmocka_unit_test(test_twilio_private_generic),
        cmocka_unit_test(test_positions_allow_binary),
        cmocka_unit_test(test_rules_file),
        cmocka_unit_test(test_paid_apis),
        cmocka_unit_test(test_schema_and_migrations),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
