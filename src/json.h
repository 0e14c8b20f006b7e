/* json.h - a strict JSON reader for the request path: one pass over the
 * bytes into a flat array of tokens that point into the caller's buffer.
 *
 * Why not jansson here: a jansson tree costs a malloc per value and a hash
 * table per object, and the gateway parsed each body three times (price,
 * fingerprint, usage); callgrind put that at 40% of the instructions of a
 * forwarded call. jansson stays for config, CLI and replies.
 *
 * What it accepts is what jansson's json_loadb accepts (RFC 8259, valid
 * UTF-8, no \u0000, integers within int64, finite reals, values nested
 * up to 2048 deep), with one exception: jansson 2.14 skips a NUL byte
 * right after a number or a literal ("1\0"), which is refused here. And
 * fb_json_canonical prints what jansson's json_dumps prints with
 * JSON_SORT_KEYS | JSON_COMPACT, so fingerprints did not change. Both are
 * checked against jansson by tests/unit/test_json.c and fuzz/json_fuzz.c.
 *
 * Values are named by int indices; the root is 0; -1 is "absent", and
 * every accessor takes -1 quietly, so lookups chain. */
#ifndef FB_JSON_H
#define FB_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    FB_JSON_NONE = 0, /* index -1: the value is absent */
    FB_JSON_NULL,
    FB_JSON_FALSE,
    FB_JSON_TRUE,
    FB_JSON_NUMBER,
    FB_JSON_STRING,
    FB_JSON_ARRAY,
    FB_JSON_OBJECT
} fb_json_type;

/* Refuse a document in which an object names a key twice (a request where
 * fusebox and the provider could read different values). Without it the
 * last one wins, as in jansson. */
#define FB_JSON_UNIQUE 1

typedef struct fb_json fb_json;

/* Parse s[0..n). The result borrows s, which must outlive it. NULL on
 * invalid JSON, with a message in err ("... at byte N"), or on ENOMEM. */
fb_json *fb_json_parse(const char *s, size_t n, int flags, char *err,
                       size_t cap);
void fb_json_free(fb_json *j);

fb_json_type fb_json_typeof(const fb_json *j, int v);
/* The value of key in object obj, or -1. */
int fb_json_get(const fb_json *j, int obj, const char *key);
/* Members of an array or pairs of an object; 0 for anything else. */
size_t fb_json_size(const fb_json *j, int v);
/* The first element of a non-empty array, or -1. */
int fb_json_first(const fb_json *j, int arr);
/* 1 and *out set if v is a number without fraction or exponent. */
int fb_json_int(const fb_json *j, int v, int64_t *out);
/* Decoded length of string v (always <= its raw length), copied with a
 * NUL into buf when it fits in cap; -1 if v is not a string. */
long fb_json_str(const fb_json *j, int v, char *buf, size_t cap);
/* v is the string s. */
int fb_json_str_is(const fb_json *j, int v, const char *s);
/* Where v's text is in the document (a string's quotes included). */
void fb_json_span(const fb_json *j, int v, size_t *off, size_t *len);

/* The document as canonical JSON (keys sorted bytewise, no blanks, numbers
 * and strings printed as jansson prints them), minus the root object's
 * keys in drop[]. malloc'd, NUL-terminated, *len set; NULL on ENOMEM. */
char *fb_json_canonical(const fb_json *j, char *const *drop, size_t ndrop,
                        size_t *len);

#endif
