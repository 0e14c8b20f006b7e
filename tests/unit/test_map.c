/* test_map.c - unit tests for map.c: put, get, replace, delete (including
 * the backward shift that keeps probe runs intact), growth to 100k keys,
 * iteration, keys with odd bytes, and freeing values. Includes map.c to
 * check the table's load and probe invariants directly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../src/map.c"

/* Every entry is reachable: no empty slot between its home and itself. */
static void check_invariants(const fb_map *m)
{
    size_t n = 0, mask = m->cap - 1;
    assert_true(m->cap >= MAP_MIN_CAP && (m->cap & mask) == 0);
    assert_true(m->count * 10 <= m->cap * 7);
    for (size_t i = 0; i < m->cap; i++) {
        if (m->slots[i].key == NULL)
            continue;
        n++;
        for (size_t j = (size_t)m->slots[i].hash & mask; j != i;
             j = (j + 1) & mask)
            assert_non_null(m->slots[j].key);
    }
    assert_int_equal(n, m->count);
}

static size_t key_of(char *buf, size_t cap, size_t i)
{
    int n = snprintf(buf, cap, "key-%zu", i);
    assert_true(n > 0 && (size_t)n < cap);
    return (size_t)n;
}

static void test_put_get(void **state)
{
    fb_map *m = fb_map_new();
    int a = 1, b = 2;
    void *old = &a;
    (void)state;
    assert_non_null(m);
    assert_int_equal(fb_map_count(m), 0);
    assert_null(fb_map_get(m, "x", 1));
    assert_int_equal(fb_map_put(m, "alpha", 5, &a, &old), FB_OK);
    assert_null(old);
    assert_int_equal(fb_map_put(m, "beta", 4, &b, NULL), FB_OK);
    assert_ptr_equal(fb_map_get(m, "alpha", 5), &a);
    assert_ptr_equal(fb_map_get(m, "beta", 4), &b);
    /* Only klen bytes are the key. */
    assert_ptr_equal(fb_map_get(m, "alphabet", 5), &a);
    assert_null(fb_map_get(m, "alph", 4));
    assert_null(fb_map_get(m, "alphab", 6));
    assert_int_equal(fb_map_count(m), 2);
    fb_map_free(m, NULL);
}

static void test_key_is_copied(void **state)
{
    fb_map *m = fb_map_new();
    char key[8] = "model";
    int v = 1;
    (void)state;
    assert_int_equal(fb_map_put(m, key, 5, &v, NULL), FB_OK);
    memset(key, 'z', sizeof(key));
    assert_ptr_equal(fb_map_get(m, "model", 5), &v);
    assert_null(fb_map_get(m, key, 5));
    fb_map_free(m, NULL);
}

static void test_odd_keys(void **state)
{
    fb_map *m = fb_map_new();
    int a = 1, b = 2, c = 3;
    const char *k;
    size_t klen, it = 0;
    (void)state;
    /* The empty key and keys with NUL bytes are keys like any other. */
    assert_int_equal(fb_map_put(m, "", 0, &a, NULL), FB_OK);
    assert_int_equal(fb_map_put(m, "a\0b", 3, &b, NULL), FB_OK);
    assert_int_equal(fb_map_put(m, "a\0c", 3, &c, NULL), FB_OK);
    assert_ptr_equal(fb_map_get(m, "", 0), &a);
    assert_ptr_equal(fb_map_get(m, "a\0b", 3), &b);
    assert_ptr_equal(fb_map_get(m, "a\0c", 3), &c);
    assert_null(fb_map_get(m, "a", 1));
    assert_ptr_equal(fb_map_del(m, "", 0), &a);
    assert_null(fb_map_get(m, "", 0));
    assert_int_equal(fb_map_count(m), 2);
    while (fb_map_next(m, &it, &k, &klen, NULL))
        assert_int_equal(klen, 3);
    fb_map_free(m, NULL);
}

static void test_replace(void **state)
{
    fb_map *m = fb_map_new();
    int a = 1, b = 2, c = 3;
    void *old = NULL;
    (void)state;
    assert_int_equal(fb_map_put(m, "k", 1, &a, &old), FB_OK);
    assert_null(old);
    assert_int_equal(fb_map_put(m, "k", 1, &b, &old), FB_OK);
    assert_ptr_equal(old, &a);
    assert_ptr_equal(fb_map_get(m, "k", 1), &b);
    assert_int_equal(fb_map_count(m), 1);
    /* Replacing with old == NULL just drops the old value pointer. */
    assert_int_equal(fb_map_put(m, "k", 1, &c, NULL), FB_OK);
    assert_ptr_equal(fb_map_get(m, "k", 1), &c);
    assert_int_equal(fb_map_count(m), 1);
    fb_map_free(m, NULL);
}

static void test_delete(void **state)
{
    fb_map *m = fb_map_new();
    int v[10];
    (void)state;
    for (int i = 0; i < 10; i++) {
        char k[16];
        size_t n = key_of(k, sizeof(k), (size_t)i);
        assert_int_equal(fb_map_put(m, k, n, &v[i], NULL), FB_OK);
    }
    assert_ptr_equal(fb_map_del(m, "key-3", 5), &v[3]);
    assert_null(fb_map_del(m, "key-3", 5));
    assert_null(fb_map_del(m, "nope", 4));
    assert_null(fb_map_get(m, "key-3", 5));
    assert_int_equal(fb_map_count(m), 9);
    for (int i = 0; i < 10; i++) {
        char k[16];
        size_t n = key_of(k, sizeof(k), (size_t)i);
        if (i != 3)
            assert_ptr_equal(fb_map_get(m, k, n), &v[i]);
    }
    /* Put back after delete. */
    assert_int_equal(fb_map_put(m, "key-3", 5, &v[3], NULL), FB_OK);
    assert_ptr_equal(fb_map_get(m, "key-3", 5), &v[3]);
    check_invariants(m);
    fb_map_free(m, NULL);
}

/* Keys that collide on the home slot, deleted from the middle and the
 * front of a run that wraps past the end of the table. */
static void test_delete_in_wrapping_run(void **state)
{
    fb_map *m = fb_map_new();
    char keys[64][16];
    size_t lens[64], nk = 0;
    int v = 0;
    (void)state;
    /* Gather keys whose home is one of the last two slots of 16. */
    for (size_t i = 0; nk < 8 && i < 100000; i++) {
        size_t n = key_of(keys[nk], sizeof(keys[nk]), i);
        if ((hash_bytes(keys[nk], n) & (MAP_MIN_CAP - 1)) >= MAP_MIN_CAP - 2)
            lens[nk++] = n;
    }
    assert_int_equal(nk, 8);
    for (size_t i = 0; i < nk; i++)
        assert_int_equal(fb_map_put(m, keys[i], lens[i], &v, NULL), FB_OK);
    assert_int_equal(m->cap, MAP_MIN_CAP);
    check_invariants(m);
    for (size_t i = 0; i < nk; i += 2) {
        assert_ptr_equal(fb_map_del(m, keys[i], lens[i]), &v);
        check_invariants(m);
        for (size_t j = 0; j < nk; j++) {
            void *got = fb_map_get(m, keys[j], lens[j]);
            if (j <= i && j % 2 == 0)
                assert_null(got);
            else
                assert_ptr_equal(got, &v);
        }
    }
    fb_map_free(m, NULL);
}

static void test_grow_100k(void **state)
{
    enum { N = 100000 };
    fb_map *m = fb_map_new();
    uintptr_t *seen = calloc(N, sizeof(*seen));
    size_t it = 0, visited = 0;
    const char *k;
    size_t klen;
    void *val;
    (void)state;
    assert_non_null(seen);
    for (size_t i = 0; i < N; i++) {
        char key[32];
        size_t n = key_of(key, sizeof(key), i);
        assert_int_equal(fb_map_put(m, key, n, (void *)(i + 1), NULL), FB_OK);
    }
    assert_int_equal(fb_map_count(m), N);
    check_invariants(m);
    for (size_t i = 0; i < N; i++) {
        char key[32];
        size_t n = key_of(key, sizeof(key), i);
        assert_ptr_equal(fb_map_get(m, key, n), (void *)(i + 1));
    }
    /* Iteration visits each key once, with its value. */
    while (fb_map_next(m, &it, &k, &klen, &val)) {
        uintptr_t i = (uintptr_t)val - 1;
        char key[32];
        size_t n;
        assert_true(i < N);
        n = key_of(key, sizeof(key), i);
        assert_int_equal(klen, n);
        assert_memory_equal(k, key, n);
        assert_int_equal(seen[i], 0);
        seen[i] = 1;
        visited++;
    }
    assert_int_equal(visited, N);
    assert_int_equal(fb_map_next(m, &it, &k, &klen, &val), 0);
    /* Delete every other key; the rest stay reachable. */
    for (size_t i = 0; i < N; i += 2) {
        char key[32];
        size_t n = key_of(key, sizeof(key), i);
        assert_ptr_equal(fb_map_del(m, key, n), (void *)(i + 1));
    }
    assert_int_equal(fb_map_count(m), N / 2);
    check_invariants(m);
    for (size_t i = 0; i < N; i++) {
        char key[32];
        size_t n = key_of(key, sizeof(key), i);
        void *got = fb_map_get(m, key, n);
        if (i % 2 == 0)
            assert_null(got);
        else
            assert_ptr_equal(got, (void *)(i + 1));
    }
    free(seen);
    fb_map_free(m, NULL);
}

static void test_iterate_empty(void **state)
{
    fb_map *m = fb_map_new();
    size_t it = 0;
    (void)state;
    assert_int_equal(fb_map_next(m, &it, NULL, NULL, NULL), 0);
    assert_int_equal(fb_map_next(m, &it, NULL, NULL, NULL), 0);
    fb_map_free(m, NULL);
    fb_map_free(NULL, NULL);
}

static int freed;
static void count_free(void *p)
{
    freed++;
    free(p);
}

static void test_free_values(void **state)
{
    fb_map *m = fb_map_new();
    (void)state;
    freed = 0;
    for (size_t i = 0; i < 50; i++) {
        char key[32];
        size_t n = key_of(key, sizeof(key), i);
        int *v = malloc(sizeof(*v));
        assert_non_null(v);
        assert_int_equal(fb_map_put(m, key, n, v, NULL), FB_OK);
    }
    /* A NULL value is stored but not passed to free_val. */
    assert_int_equal(fb_map_put(m, "null", 4, NULL, NULL), FB_OK);
    assert_int_equal(fb_map_count(m), 51);
    fb_map_free(m, count_free);
    assert_int_equal(freed, 50);
}

/* Random puts and deletes against a plain array as the model. */
static void test_random_ops(void **state)
{
    enum { K = 2000 };
    fb_map *m = fb_map_new();
    static int present[K];
    uint64_t seed = 0x9e3779b97f4a7c15u;
    size_t expect = 0;
    (void)state;
    memset(present, 0, sizeof(present));
    for (int step = 0; step < 200000; step++) {
        char key[32];
        size_t i, n;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        i = (size_t)(seed % K);
        n = key_of(key, sizeof(key), i);
        if ((seed >> 32) % 3 == 0) {
            void *got = fb_map_del(m, key, n);
            if (present[i]) {
                assert_ptr_equal(got, (void *)(i + 1));
                expect--;
            } else {
                assert_null(got);
            }
            present[i] = 0;
        } else {
            void *old = NULL;
            assert_int_equal(fb_map_put(m, key, n, (void *)(i + 1), &old),
                             FB_OK);
            if (present[i])
                assert_ptr_equal(old, (void *)(i + 1));
            else
                expect++;
            present[i] = 1;
        }
        assert_int_equal(fb_map_count(m), expect);
    }
    check_invariants(m);
    for (size_t i = 0; i < K; i++) {
        char key[32];
        size_t n = key_of(key, sizeof(key), i);
        assert_ptr_equal(fb_map_get(m, key, n),
                         present[i] ? (void *)(i + 1) : NULL);
    }
    fb_map_free(m, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get),
        cmocka_unit_test(test_key_is_copied),
        cmocka_unit_test(test_odd_keys),
        cmocka_unit_test(test_replace),
        cmocka_unit_test(test_delete),
        cmocka_unit_test(test_delete_in_wrapping_run),
        cmocka_unit_test(test_grow_100k),
        cmocka_unit_test(test_iterate_empty),
        cmocka_unit_test(test_free_values),
        cmocka_unit_test(test_random_ops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
