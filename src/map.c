/* map.c - the string-keyed hash map of map.h: open addressing with linear
 * probing over a power-of-two table that doubles at 70% load. Deletion
 * shifts later entries back instead of leaving tombstones, so a probe
 * stops at the first empty slot and the load never silts up. */
#include "map.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAP_MIN_CAP 16

typedef struct slot {
    char *key; /* NULL: empty */
    size_t klen;
    uint64_t hash;
    void *val;
} slot;

struct fb_map {
    slot *slots;
    size_t cap; /* a power of two */
    size_t count;
};

/* FNV-1a over the bytes, then the murmur3 finaliser: FNV alone leaves the
 * low bits, which pick the slot, weakly mixed for short similar keys. */
static uint64_t hash_bytes(const char *key, size_t klen)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < klen; i++) {
        h ^= (unsigned char)key[i];
        h *= UINT64_C(0x100000001b3);
    }
    h ^= h >> 33;
    h *= UINT64_C(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h *= UINT64_C(0xc4ceb9fe1a85ec53);
    h ^= h >> 33;
    return h;
}

fb_map *fb_map_new(void)
{
    fb_map *m = malloc(sizeof(*m));
    if (m == NULL)
        return NULL;
    m->slots = calloc(MAP_MIN_CAP, sizeof(slot));
    if (m->slots == NULL) {
        free(m);
        return NULL;
    }
    m->cap = MAP_MIN_CAP;
    m->count = 0;
    return m;
}

void fb_map_free(fb_map *m, void (*free_val)(void *))
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->cap; i++) {
        if (m->slots[i].key == NULL)
            continue;
        free(m->slots[i].key);
        if (free_val != NULL && m->slots[i].val != NULL)
            free_val(m->slots[i].val);
    }
    free(m->slots);
    free(m);
}

/* Index of the slot holding key, or of the empty slot ending its probe.
 * The load limit guarantees an empty slot exists. */
static size_t find_slot(const fb_map *m, const char *key, size_t klen,
                        uint64_t h)
{
    size_t mask = m->cap - 1;
    size_t i = (size_t)h & mask;
    for (;;) {
        const slot *s = &m->slots[i];
        if (s->key == NULL)
            return i;
        if (s->hash == h && s->klen == klen &&
            (klen == 0 || memcmp(s->key, key, klen) == 0))
            return i;
        i = (i + 1) & mask;
    }
}

static fb_err grow(fb_map *m)
{
    size_t ncap, nmask;
    slot *ns;

    if (m->cap > SIZE_MAX / 2 / sizeof(slot))
        return FB_ENOMEM;
    ncap = m->cap * 2;
    ns = calloc(ncap, sizeof(slot));
    if (ns == NULL)
        return FB_ENOMEM;
    nmask = ncap - 1;
    for (size_t i = 0; i < m->cap; i++) {
        size_t j;
        if (m->slots[i].key == NULL)
            continue;
        j = (size_t)m->slots[i].hash & nmask;
        while (ns[j].key != NULL)
            j = (j + 1) & nmask;
        ns[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = ns;
    m->cap = ncap;
    return FB_OK;
}

fb_err fb_map_put(fb_map *m, const char *key, size_t klen, void *val,
                  void **old)
{
    uint64_t h = hash_bytes(key, klen);
    size_t i = find_slot(m, key, klen, h);
    char *kcopy = NULL;
    fb_err err = FB_OK;

    if (old != NULL)
        *old = NULL;
    if (m->slots[i].key != NULL) {
        if (old != NULL)
            *old = m->slots[i].val;
        m->slots[i].val = val;
        goto out;
    }
    kcopy = fb_strndup(key, klen);
    if (kcopy == NULL) {
        err = FB_ENOMEM;
        goto out;
    }
    /* Keep the load at or under 70%: past that, linear probe runs grow
     * quickly. */
    if ((m->count + 1) * 10 > m->cap * 7) {
        err = grow(m);
        if (err != FB_OK)
            goto out;
        i = find_slot(m, key, klen, h);
    }
    m->slots[i].key = kcopy;
    m->slots[i].klen = klen;
    m->slots[i].hash = h;
    m->slots[i].val = val;
    m->count++;
    kcopy = NULL;
out:
    free(kcopy);
    return err;
}

void *fb_map_get(const fb_map *m, const char *key, size_t klen)
{
    size_t i = find_slot(m, key, klen, hash_bytes(key, klen));
    return m->slots[i].key != NULL ? m->slots[i].val : NULL;
}

void *fb_map_del(fb_map *m, const char *key, size_t klen)
{
    size_t mask = m->cap - 1;
    size_t i = find_slot(m, key, klen, hash_bytes(key, klen));
    size_t j;
    void *val;

    if (m->slots[i].key == NULL)
        return NULL;
    val = m->slots[i].val;
    free(m->slots[i].key);
    m->count--;

    /* Backward shift: walk the run after the hole; an entry may move into
     * the hole when its home slot is not in (hole, j], i.e. the move does
     * not put it before its home. Then the hole moves to j. */
    j = i;
    for (;;) {
        size_t home;
        j = (j + 1) & mask;
        if (m->slots[j].key == NULL)
            break;
        home = (size_t)m->slots[j].hash & mask;
        if (((j - home) & mask) >= ((j - i) & mask)) {
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    memset(&m->slots[i], 0, sizeof(slot));
    return val;
}

size_t fb_map_count(const fb_map *m)
{
    return m->count;
}

int fb_map_next(const fb_map *m, size_t *it, const char **key, size_t *klen,
                void **val)
{
    for (size_t i = *it; i < m->cap; i++) {
        if (m->slots[i].key == NULL)
            continue;
        if (key != NULL)
            *key = m->slots[i].key;
        if (klen != NULL)
            *klen = m->slots[i].klen;
        if (val != NULL)
            *val = m->slots[i].val;
        *it = i + 1;
        return 1;
    }
    *it = m->cap;
    return 0;
}
