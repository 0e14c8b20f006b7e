/* test_replay.c - fingerprints (canonical JSON: key order and blanks do
 * not matter, ignored fields do not count, everything else does), the
 * single-flight registry, occurrence counters with a loading base, retry
 * budgets (per fingerprint and per job a day) and trips. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "replay.h"
#include "store.h"

static void fp_of(const char *body, char *const *ignore, size_t n,
                  uint8_t out[32])
{
    fb_fingerprint("POST", "openai", "/v1/chat/completions", body,
                   strlen(body), NULL, ignore, n, out);
}

static void test_fingerprint(void **state)
{
    (void)state;
    uint8_t a[32], b[32], c[32];
    fp_of("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
          NULL, 0, a);
    fp_of("{ \"messages\" : [ {\"content\":\"hi\", \"role\":\"user\"} ],\n"
          "  \"model\": \"m\" }",
          NULL, 0, b);
    assert_memory_equal(a, b, 32);
    /* Array order and values matter. */
    fp_of("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hI\"}]}",
          NULL, 0, c);
    assert_memory_not_equal(a, c, 32);
    /* Ignored volatile fields do not count; others do. */
    char *ignore[] = {"user"};
    fp_of("{\"model\":\"m\",\"user\":\"u1\",\"messages\":[{\"role\":\"user\","
          "\"content\":\"hi\"}]}",
          ignore, 1, c);
    assert_memory_equal(a, c, 32);
    fp_of("{\"model\":\"m\",\"user\":\"u1\",\"messages\":[{\"role\":\"user\","
          "\"content\":\"hi\"}]}",
          NULL, 0, c);
    assert_memory_not_equal(a, c, 32);
    /* The route is part of it. */
    fb_fingerprint("POST", "openai", "/v1/responses", "{}", 2, NULL, NULL, 0, b);
    fb_fingerprint("POST", "openai", "/v1/embeddings", "{}", 2, NULL, NULL, 0, c);
    assert_memory_not_equal(b, c, 32);
    /* Not JSON: the bytes as they are. */
    fb_fingerprint("POST", "sms", "/send", "a=1", 3, NULL, NULL, 0, b);
    fb_fingerprint("POST", "sms", "/send", "a=2", 3, NULL, NULL, 0, c);
    assert_memory_not_equal(b, c, 32);
}

static void test_flights(void **state)
{
    (void)state;
    fb_replay *r = fb_replay_new();
    uint8_t k[32] = {1}, k2[32] = {2};
    int w1, w2;
    size_t n;
    assert_int_equal(fb_flight_join(r, k, NULL), 1);
    assert_true(fb_flight_active(r, k));
    assert_false(fb_flight_active(r, k2));
    assert_int_equal(fb_flight_join(r, k, &w1), 0);
    assert_int_equal(fb_flight_join(r, k, &w2), 0);
    void **w = fb_flight_end(r, k, &n);
    assert_int_equal(n, 2);
    assert_ptr_equal(w[0], &w1); /* in arrival order */
    assert_ptr_equal(w[1], &w2);
    free(w);
    assert_false(fb_flight_active(r, k));
    assert_int_equal(fb_flight_join(r, k, NULL), 1);
    w = fb_flight_end(r, k, &n);
    assert_int_equal(n, 0);
    free(w);
    fb_replay_free(r);
}

static void test_occurrences(void **state)
{
    (void)state;
    fb_replay *r = fb_replay_new();
    uint8_t k[32] = {7};
    int a, b, c, loading;
    int64_t seq = 0;
    size_t n;
    /* The first caller starts the load, the second queues behind it. */
    assert_int_equal(fb_occ_next(r, k, &a, &loading, &seq), 0);
    assert_true(loading);
    assert_int_equal(fb_occ_next(r, k, &b, &loading, &seq), 0);
    assert_false(loading);
    /* The ledger says this attempt already sent it twice. */
    void **w = fb_occ_loaded(r, k, 2, &n);
    assert_int_equal(n, 2);
    assert_ptr_equal(w[0], &a);
    free(w);
    assert_int_equal(fb_occ_next(r, k, &a, &loading, &seq), 1);
    assert_int_equal(seq, 3);
    assert_int_equal(fb_occ_next(r, k, &b, &loading, &seq), 1);
    assert_int_equal(seq, 4);
    assert_int_equal(fb_occ_next(r, k, &c, &loading, &seq), 1);
    assert_int_equal(seq, 5);
    /* Calls 3 and 5 failed: their retries are occurrences 3 and 5 again,
     * smallest first, before a new one. */
    fb_occ_release(r, k, 5);
    fb_occ_release(r, k, 3);
    assert_int_equal(fb_occ_next(r, k, &a, &loading, &seq), 1);
    assert_int_equal(seq, 3);
    assert_int_equal(fb_occ_next(r, k, &a, &loading, &seq), 1);
    assert_int_equal(seq, 5);
    assert_int_equal(fb_occ_next(r, k, &a, &loading, &seq), 1);
    assert_int_equal(seq, 6);
    fb_replay_free(r);
}

static void test_retry_budgets_and_trips(void **state)
{
    (void)state;
    fb_replay *r = fb_replay_new();
    fb_retry_limits lim = {.max_per_fp = 3, .max_percent = 20, .floor = 2};
    uint8_t k[32] = {9};
    fb_retry_outcome(r, k, 1);
    fb_retry_outcome(r, k, 1);
    assert_int_equal(fb_retry_failures(r, k), 2);
    fb_retry_outcome(r, k, 0); /* a success clears it */
    assert_int_equal(fb_retry_failures(r, k), 0);
    /* 20% of calls, at least 2 a day. */
    int64_t day = INT64_C(20000) * 86400000;
    assert_false(fb_retry_count_call(r, "job:t/j", 1, day, &lim));
    assert_false(fb_retry_count_call(r, "job:t/j", 1, day, &lim));
    assert_true(fb_retry_count_call(r, "job:t/j", 1, day, &lim));
    /* A new day starts afresh; plain calls raise the allowance. */
    for (int i = 0; i < 20; i++)
        assert_false(fb_retry_count_call(r, "job:t/j", 0, day + 86400000,
                                         &lim));
    for (int i = 0; i < 5; i++)
        assert_false(fb_retry_count_call(r, "job:t/j", 1, day + 86400000,
                                         &lim));
    assert_true(fb_retry_count_call(r, "job:t/j", 1, day + 86400000, &lim));
    fb_trip_set(r, "job:t/j", "retry_budget: too many");
    assert_string_equal(fb_trip_reason(r, "job:t/j"), "retry_budget: too many");
    assert_null(fb_trip_reason(r, "job:t/x"));
    fb_retry_outcome(r, k, 1);
    fb_trip_clear(r, "job:t/j"); /* a reset: fresh budgets */
    assert_null(fb_trip_reason(r, "job:t/j"));
    assert_int_equal(fb_retry_failures(r, k), 0);
    assert_false(fb_retry_count_call(r, "job:t/j", 1, day + 86400000, &lim));
    fb_replay_free(r);
}

static void test_kept_filter(void **state)
{
    (void)state;
    fb_replay *r = fb_replay_new();
    uint8_t fp[32] = {5}, key[32];
    int maybe = 0;
    /* Added keys are always "maybe"; of 100k others, few are. */
    for (int i = 0; i < 10000; i++) {
        fb_replay_key(key, "job:t/j", "r", fp, i);
        fb_kept_add(r, key);
    }
    for (int i = 0; i < 10000; i++) {
        fb_replay_key(key, "job:t/j", "r", fp, i);
        assert_true(fb_kept_maybe(r, key));
    }
    for (int i = 0; i < 100000; i++) {
        fb_replay_key(key, "job:t/other", "r", fp, i);
        maybe += fb_kept_maybe(r, key);
    }
    assert_true(maybe < 100); /* 0.1%: far fewer keys than the filter holds */
    fb_replay_free(r);
}

/* The cache of kept results: copies in and out, expiry, least recently
 * used first out past the cap, one big answer never cached. */
static void test_result_cache(void **state)
{
    (void)state;
    fb_replay *r = fb_replay_new();
    uint8_t k[4][32];
    char body[1000];
    fb_result in = {.status = 200, .headers = "a: b\r\n", .headers_len = 6,
                    .body = body, .body_len = 100, .cost = 7,
                    .seq = 3},
              out;
    assert_non_null(r);
    memset(body, 'x', sizeof body);
    for (int i = 0; i < 4; i++)
        fb_replay_key(k[i], "job:t/j", "r", NULL, i);
    fb_cache_set_cap(r, 0); /* off: nothing is kept */
    fb_cache_put(r, k[0], &in, 1000);
    assert_int_equal(fb_cache_get(r, k[0], 0, &out), 0);
    fb_cache_set_cap(r, 1 << 20);
    fb_cache_put(r, k[0], &in, 1000);
    size_t one = fb_cache_bytes(r); /* what one such entry counts for */
    assert_true(one > 100);
    body[0] = 'y'; /* the cache holds a copy */
    assert_int_equal(fb_cache_get(r, k[0], 999, &out), 1);
    assert_int_equal(out.status, 200);
    assert_int_equal(out.cost, 7);
    assert_int_equal(out.seq, 3);
    assert_int_equal(out.body_len, 100);
    assert_int_equal(out.body[0], 'x');
    assert_memory_equal(out.headers, "a: b\r\n", 6);
    fb_result_clear(&out);
    /* Expired: gone, and dropped. */
    assert_int_equal(fb_cache_get(r, k[0], 1000, &out), 0);
    assert_int_equal(fb_cache_bytes(r), 0);
    /* Two fit under a cap of two and a half: at the third the least
     * recently used goes. k[1] is read again, so k[2] is the one. */
    fb_cache_set_cap(r, one * 5 / 2);
    fb_cache_put(r, k[1], &in, 1000);
    fb_cache_put(r, k[2], &in, 1000);
    assert_int_equal(fb_cache_get(r, k[1], 0, &out), 1);
    fb_result_clear(&out);
    fb_cache_put(r, k[3], &in, 1000);
    assert_int_equal(fb_cache_bytes(r), 2 * one);
    assert_int_equal(fb_cache_get(r, k[2], 0, &out), 0);
    assert_int_equal(fb_cache_get(r, k[1], 0, &out), 1);
    fb_result_clear(&out);
    assert_int_equal(fb_cache_get(r, k[3], 0, &out), 1);
    fb_result_clear(&out);
    /* Replacing a key keeps one copy. */
    size_t before = fb_cache_bytes(r);
    fb_cache_put(r, k[3], &in, 2000);
    assert_int_equal(fb_cache_bytes(r), before);
    /* More than a quarter of the cap is never cached. */
    in.body_len = 1000;
    fb_cache_set_cap(r, 2000);
    fb_cache_put(r, k[0], &in, 1000);
    assert_int_equal(fb_cache_get(r, k[0], 0, &out), 0);
    fb_cache_clear(r);
    assert_int_equal(fb_cache_bytes(r), 0);
    assert_int_equal(fb_cache_get(r, k[1], 0, &out), 0);
    fb_replay_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fingerprint),
        cmocka_unit_test(test_flights),
        cmocka_unit_test(test_occurrences),
        cmocka_unit_test(test_retry_budgets_and_trips),
        cmocka_unit_test(test_kept_filter),
        cmocka_unit_test(test_result_cache),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
