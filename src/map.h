/* map.h - a string-keyed hash map (open addressing, keys copied) used for
 * the price table, the key cache and budget scopes. Not thread-safe. */
#ifndef FB_MAP_H
#define FB_MAP_H

#include <stddef.h>
#include "common.h"

typedef struct fb_map fb_map;

fb_map *fb_map_new(void); /* NULL on ENOMEM */
/* Frees the map and, when free_val is not NULL, every value. */
void fb_map_free(fb_map *m, void (*free_val)(void *));

/* Insert or replace. The key bytes are copied; the value is not. When a
 * value is replaced and old is not NULL, *old gets it (else NULL). */
fb_err fb_map_put(fb_map *m, const char *key, size_t klen, void *val,
                  void **old);
void *fb_map_get(const fb_map *m, const char *key, size_t klen);
/* Remove and return the value (NULL if absent). */
void *fb_map_del(fb_map *m, const char *key, size_t klen);
size_t fb_map_count(const fb_map *m);

/* Iterate: start with *it = 0; returns 0 at the end. The map must not be
 * changed while iterating. */
int fb_map_next(const fb_map *m, size_t *it, const char **key, size_t *klen,
                void **val);

#endif
