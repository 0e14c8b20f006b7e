/* keys.c - generation, hashing and comparison of virtual keys. */
#include "keys.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <string.h>

static const char hexd[] = "0123456789abcdef";

static void to_hex(const uint8_t *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hexd[in[i] >> 4];
        out[2 * i + 1] = hexd[in[i] & 15];
    }
    out[2 * n] = '\0';
}

fb_err fb_key_generate(char text[FB_KEY_TEXT_LEN + 1], fb_key_rec *rec)
{
    uint8_t secret[20], id[6];
    if (RAND_bytes(secret, sizeof secret) != 1 ||
        RAND_bytes(id, sizeof id) != 1)
        return FB_EIO;
    memcpy(text, FB_KEY_PREFIX, 4);
    to_hex(secret, sizeof secret, text + 4);
    memcpy(rec->id, "k_", 2);
    to_hex(id, sizeof id, rec->id + 2);
    fb_key_hash(text, FB_KEY_TEXT_LEN, rec->hash);
    memcpy(rec->prefix, text, 10);
    rec->prefix[10] = '\0';
    OPENSSL_cleanse(secret, sizeof secret);
    return FB_OK;
}

void fb_key_hash(const char *text, size_t len, uint8_t out[32])
{
    unsigned int n = 32;
    int ok = EVP_Digest(text, len, out, &n, EVP_sha256(), NULL);
    FB_ASSERT(ok == 1 && n == 32);
}

int fb_key_well_formed(const char *text, size_t len)
{
    if (len != FB_KEY_TEXT_LEN || memcmp(text, FB_KEY_PREFIX, 4) != 0)
        return 0;
    for (size_t i = 4; i < len; i++) {
        char c = text[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return 0;
    }
    return 1;
}

int fb_key_hash_equal(const uint8_t a[32], const uint8_t b[32])
{
    return CRYPTO_memcmp(a, b, 32) == 0;
}
