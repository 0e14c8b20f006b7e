/* json_fuzz.c - differential libFuzzer target for src/json.c, checked
 * against jansson on the promise json.h makes. The input is
 *   byte 0: bit 0 FB_JSON_UNIQUE (jansson: JSON_REJECT_DUPLICATES),
 *           bits 1-7 the size of the error and string buffers json.c gets
 *   then the document, parsed by both (jansson with JSON_DECODE_ANY).
 * Checked: both accept or both refuse (a refusal says why in err);
 * accepted, fb_json_canonical prints the bytes of json_dumps(JSON_SORT_KEYS
 * | JSON_COMPACT | JSON_ENCODE_ANY), whole and with a root key dropped;
 * walking jansson's tree (every key of an object, the first element of an
 * array), fb_json_get, fb_json_first, fb_json_str, fb_json_str_is,
 * fb_json_int and fb_json_size give the same values; each root member's
 * span reads back alone to its canonical bytes; every token's span lies in
 * the document. A disagreement prints both sides and aborts; any crash or
 * sanitizer report is a finding too.
 *   make build-fuzz/json_fuzz && build-fuzz/json_fuzz \
 *       -dict=fuzz/json.dict fuzz/corpus/json */
#include "json.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "json_fuzz: %s:%d: %s\n", __FILE__, __LINE__,      \
                    #cond);                                                    \
            abort();                                                           \
        }                                                                      \
    } while (0)

typedef struct ctx {
    const fb_json *j;
    const char *doc;
    size_t n;
    int unique;
    size_t scap; /* string buffer size, from the flag byte */
} ctx;

static fb_json_type type_of(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return FB_JSON_OBJECT;
    case JSON_ARRAY: return FB_JSON_ARRAY;
    case JSON_STRING: return FB_JSON_STRING;
    case JSON_INTEGER:
    case JSON_REAL: return FB_JSON_NUMBER;
    case JSON_TRUE: return FB_JSON_TRUE;
    case JSON_FALSE: return FB_JSON_FALSE;
    case JSON_NULL: return FB_JSON_NULL;
    }
    return FB_JSON_NONE;
}

/* got[0..glen) must be want (a NUL-terminated jansson dump). */
static void same_text(const char *what, const char *got, size_t glen,
                      const char *want)
{
    if (glen == strlen(want) && memcmp(got, want, glen) == 0)
        return;
    fprintf(stderr, "json_fuzz: %s differs\n  fb_json: %.*s\n  jansson: %s\n",
            what, (int)glen, got, want);
    abort();
}

static void check_string(const ctx *c, const json_t *jv, int v)
{
    const char *want = json_string_value(jv);
    size_t wlen = json_string_length(jv);
    /* Exactly scap bytes, so that a write past cap is an ASan report. */
    char *buf = malloc(c->scap ? c->scap : 1);
    CHECK(buf != NULL);
    memset(buf, 0x5a, c->scap ? c->scap : 1);
    long got = fb_json_str(c->j, v, buf, c->scap);
    CHECK(got >= 0 && (size_t)got == wlen);
    if ((size_t)got < c->scap) {
        CHECK(memcmp(buf, want, wlen) == 0 && buf[wlen] == '\0');
    } else {
        for (size_t i = 0; i < c->scap; i++) /* too small: untouched */
            CHECK(buf[i] == 0x5a);
    }
    free(buf);
    /* jansson refuses \u0000 and raw NULs: want has no NUL inside. */
    CHECK(strlen(want) == wlen);
    CHECK(fb_json_str_is(c->j, v, want) == 1);
    if (wlen > 0) {
        char *shorter = malloc(wlen);
        CHECK(shorter != NULL);
        memcpy(shorter, want, wlen - 1);
        shorter[wlen - 1] = '\0';
        CHECK(fb_json_str_is(c->j, v, shorter) == 0);
        free(shorter);
    }
}

/* jv (jansson's) and v (fb_json's) are the same value. */
static void walk(const ctx *c, const json_t *jv, int v)
{
    fb_json_type t = fb_json_typeof(c->j, v);
    int64_t iv = 0;
    CHECK(t == type_of(jv));
    CHECK(fb_json_int(c->j, v, &iv) == json_is_integer(jv));
    if (json_is_integer(jv))
        CHECK(iv == json_integer_value(jv));
    if (t != FB_JSON_STRING) {
        char one[1] = {0x5a};
        CHECK(fb_json_str(c->j, v, one, sizeof one) == -1 && one[0] == 0x5a);
        CHECK(fb_json_str_is(c->j, v, "") == 0);
    }
    if (t != FB_JSON_OBJECT)
        CHECK(fb_json_get(c->j, v, "model") == -1);
    if (t != FB_JSON_ARRAY)
        CHECK(fb_json_first(c->j, v) == -1);
    switch (t) {
    case FB_JSON_STRING:
        check_string(c, jv, v);
        break;
    case FB_JSON_ARRAY: {
        size_t n = json_array_size(jv);
        CHECK(fb_json_size(c->j, v) == n);
        int first = fb_json_first(c->j, v);
        CHECK((first >= 0) == (n > 0));
        if (n > 0)
            walk(c, json_array_get(jv, 0), first);
        break;
    }
    case FB_JSON_OBJECT: {
        /* Duplicates (allowed without unique) count in fb_json_size. */
        size_t n = json_object_size(jv), fn = fb_json_size(c->j, v);
        CHECK(c->unique ? fn == n : fn >= n);
        const char *key;
        json_t *member;
        json_object_foreach((json_t *)jv, key, member) {
            int k = fb_json_get(c->j, v, key);
            CHECK(k > v);
            walk(c, member, k); /* the last of duplicates, in both */
        }
        break;
    }
    default:
        CHECK(fb_json_size(c->j, v) == 0);
        break;
    }
}

/* v's span, copied to a buffer of its exact size, parses alone to the
 * canonical bytes of jv. */
static void span_alone(const ctx *c, const json_t *jv, int v)
{
    size_t off, len, clen;
    char err[128];
    fb_json_span(c->j, v, &off, &len);
    CHECK(len > 0 && off <= c->n && len <= c->n - off);
    char *copy = malloc(len);
    CHECK(copy != NULL);
    memcpy(copy, c->doc + off, len);
    fb_json *sub = fb_json_parse(copy, len, c->unique ? FB_JSON_UNIQUE : 0,
                                 err, sizeof err);
    CHECK(sub != NULL);
    char *got = fb_json_canonical(sub, NULL, 0, &clen);
    char *want = json_dumps(jv, JSON_SORT_KEYS | JSON_COMPACT |
                                    JSON_ENCODE_ANY);
    CHECK(got != NULL && want != NULL);
    same_text("canonical of a member's span", got, clen, want);
    free(got);
    free(want);
    fb_json_free(sub);
    free(copy);
}

/* Every token, whatever it is (keys too): accessors stay in bounds. */
static void every_token(const ctx *c)
{
    for (int v = 0; fb_json_typeof(c->j, v) != FB_JSON_NONE; v++) {
        fb_json_type t = fb_json_typeof(c->j, v);
        size_t off, len;
        fb_json_span(c->j, v, &off, &len);
        CHECK(len > 0 && off <= c->n && len <= c->n - off);
        const char *s = c->doc + off;
        if (t == FB_JSON_STRING)
            CHECK(len >= 2 && s[0] == '"' && s[len - 1] == '"');
        else if (t == FB_JSON_ARRAY)
            CHECK(s[0] == '[' && s[len - 1] == ']');
        else if (t == FB_JSON_OBJECT)
            CHECK(s[0] == '{' && s[len - 1] == '}');
        long sl = fb_json_str(c->j, v, NULL, 0);
        CHECK(t == FB_JSON_STRING ? sl >= 0 && (size_t)sl <= len - 2
                                  : sl == -1);
        if (t == FB_JSON_OBJECT) {
            (void)fb_json_get(c->j, v, "");
            (void)fb_json_get(c->j, v, "model");
        }
        int64_t iv;
        (void)fb_json_int(c->j, v, &iv);
        (void)fb_json_first(c->j, v);
        (void)fb_json_size(c->j, v);
    }
    size_t off = 1, len = 1;
    fb_json_span(c->j, -1, &off, &len);
    CHECK(off == 0 && len == 0);
    CHECK(fb_json_typeof(c->j, -1) == FB_JSON_NONE);
    CHECK(fb_json_get(c->j, -1, "a") == -1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int unique = data[0] & 1;
    size_t cap = data[0] >> 1; /* 0..127 */
    const char *doc = (const char *)data + 1;
    size_t n = size - 1;

    json_error_t jerr;
    json_t *root = json_loadb(doc, n,
                              JSON_DECODE_ANY |
                                  (unique ? JSON_REJECT_DUPLICATES : 0),
                              &jerr);
    char *err = malloc(cap + 1);
    CHECK(err != NULL);
    fb_json *j = fb_json_parse(doc, n, unique ? FB_JSON_UNIQUE : 0, err,
                               cap + 1);
    CHECK(strnlen(err, cap + 1) < cap + 1);
    if (root != NULL && j == NULL && memchr(doc, 0, n) != NULL) {
        /* The one known difference (json.h): jansson 2.14 skips a NUL
         * right after a number or literal; fb_json refuses it. Without
         * the NULs, both must agree on everything. */
        uint8_t *bare = malloc(size);
        size_t bn = 1;
        CHECK(bare != NULL);
        bare[0] = data[0];
        for (size_t i = 0; i < n; i++)
            if (doc[i] != '\0')
                bare[bn++] = (uint8_t)doc[i];
        json_decref(root);
        free(err);
        (void)LLVMFuzzerTestOneInput(bare, bn);
        free(bare);
        return 0;
    }
    if (root == NULL || j == NULL) {
        if (root != NULL || j != NULL) {
            fprintf(stderr,
                    "json_fuzz: %s (unique=%d)\n  fb_json: %s\n  jansson: %s\n",
                    root ? "fb_json refuses what jansson accepts"
                         : "fb_json accepts what jansson refuses",
                    unique, j ? "accepted" : err,
                    root ? "accepted" : jerr.text);
            abort();
        }
        CHECK(cap == 0 || err[0] != '\0');
        free(err);
        return 0;
    }
    CHECK(err[0] == '\0');
    free(err);

    ctx c = {.j = j, .doc = doc, .n = n, .unique = unique, .scap = cap};
    size_t len;
    char *got = fb_json_canonical(j, NULL, 0, &len);
    char *want = json_dumps(root, JSON_SORT_KEYS | JSON_COMPACT |
                                      JSON_ENCODE_ANY);
    CHECK(got != NULL && want != NULL);
    same_text("canonical", got, len, want);
    CHECK(got[len] == '\0');
    free(got);
    free(want);

    every_token(&c);
    walk(&c, root, 0);
    if (json_is_array(root) && json_array_size(root) > 0)
        span_alone(&c, json_array_get(root, 0), fb_json_first(j, 0));
    if (json_is_object(root)) {
        const char *key;
        json_t *member;
        json_object_foreach(root, key, member)
            span_alone(&c, member, fb_json_get(j, 0, key));
        /* Dropping a root key (and one that is absent) is deleting it. */
        void *it = json_object_iter(root);
        if (it != NULL) {
            char *drop[2] = {strdup(json_object_iter_key(it)),
                             "\001absent"};
            CHECK(drop[0] != NULL);
            CHECK(json_object_del(root, drop[0]) == 0);
            got = fb_json_canonical(j, drop, 2, &len);
            want = json_dumps(root, JSON_SORT_KEYS | JSON_COMPACT |
                                        JSON_ENCODE_ANY);
            CHECK(got != NULL && want != NULL);
            same_text("canonical without a root key", got, len, want);
            free(got);
            free(want);
            free(drop[0]);
        }
    }
    json_decref(root);
    fb_json_free(j);
    return 0;
}
