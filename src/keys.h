/* keys.h - virtual keys: "fbk_" + 160 random bits in hex. Only their
 * SHA-256 is stored; the text is shown once, at creation. */
#ifndef FB_KEYS_H
#define FB_KEYS_H

#include <stddef.h>
#include <stdint.h>
#include "common.h"
#include "store.h"

#define FB_KEY_PREFIX "fbk_"
#define FB_KEY_TEXT_LEN 44 /* "fbk_" + 40 hex */

/* Make a new key: text (NUL-terminated, FB_KEY_TEXT_LEN chars) and the
 * record's id, hash and prefix. FB_EIO if the system has no randomness. */
fb_err fb_key_generate(char text[FB_KEY_TEXT_LEN + 1], fb_key_rec *rec);
void fb_key_hash(const char *text, size_t len, uint8_t out[32]);
/* Shape check only (prefix, length, hex): a cheap filter before hashing. */
int fb_key_well_formed(const char *text, size_t len);
/* Constant-time comparison of two hashes. */
int fb_key_hash_equal(const uint8_t a[32], const uint8_t b[32]);

#endif
