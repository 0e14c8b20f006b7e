/* test_run.c - the backoff of fusebox run: full jitter within
 * [0, min(cap, base * 2^(attempt-2))], every value of that range
 * reachable, no overflow for late attempts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "run.h"

static void test_backoff_bounds(void **state)
{
    (void)state;
    /* attempt 2 waits up to base, 3 up to 2*base, ... then the cap */
    assert_int_equal(fb_backoff_ms(100, 10000, 2, UINT64_MAX),
                     (int64_t)(UINT64_MAX % 101));
    for (uint64_t r = 0; r < 5000; r += 7) {
        assert_true(fb_backoff_ms(100, 10000, 2, r) <= 100);
        assert_true(fb_backoff_ms(100, 10000, 3, r) <= 200);
        assert_true(fb_backoff_ms(100, 10000, 4, r) <= 400);
        assert_true(fb_backoff_ms(100, 250, 4, r) <= 250);
        assert_true(fb_backoff_ms(100, 10000, 60, r) <= 10000);
        assert_true(fb_backoff_ms(100, 10000, 60, r) >= 0);
    }
    /* The top of the range is reachable: full jitter, not a fraction. */
    assert_int_equal(fb_backoff_ms(100, 10000, 3, 200), 200);
    assert_int_equal(fb_backoff_ms(100, 10000, 3, 201), 0);
    assert_int_equal(fb_backoff_ms(0, 10000, 5, 12345), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backoff_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
