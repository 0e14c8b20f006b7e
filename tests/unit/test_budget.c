/* test_budget.c - reservation and settlement: all-or-nothing across
 * scopes, ceilings never passed by what is in flight, settlement to the
 * real cost (above the reservation too), period windows rolling over
 * (forward only, when the wall clock steps back), and overflow refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "budget.h"

#define USD(x) ((fb_money)(x) * FB_PICO_PER_USD)
#define HOUR (3600 * INT64_C(1000))
#define DAY (24 * HOUR)

static fb_scope *mk(fb_budget *b, const char *name, fb_money limit,
                    fb_period p)
{
    fb_scope *s = fb_budget_scope(b, name);
    fb_budget_spec spec = {limit >= 0, limit, p};
    assert_non_null(s);
    fb_scope_set_limit(s, &spec);
    return s;
}

static void test_all_or_nothing(void **state)
{
    (void)state;
    fb_budget *b = fb_budget_new();
    fb_scope *sc[3] = {mk(b, "global", USD(100), FB_PERIOD_NONE),
                       mk(b, "tenant:t", USD(10), FB_PERIOD_NONE),
                       mk(b, "job:t/j", USD(1), FB_PERIOD_NONE)};
    fb_reservation r;
    fb_refusal why;
    fb_money spent, resv;
    assert_int_equal(fb_budget_reserve(sc, 3, USD(1), 0, &r, &why), FB_OK);
    /* The job is full: the next cent is refused in every scope. */
    assert_int_equal(fb_budget_reserve(sc, 3, 1, 0, &r, &why), FB_ELIMIT);
    assert_ptr_equal(why.scope, sc[2]);
    assert_int_equal(why.limit, USD(1));
    assert_int_equal(why.reserved, USD(1));
    assert_int_equal(why.request, 1);
    fb_scope_counters(sc[0], 0, &spent, &resv);
    assert_int_equal(resv, USD(1)); /* not 1 USD + 1 pico */
    fb_scope_counters(sc[1], 0, &spent, &resv);
    assert_int_equal(resv, USD(1));
    assert_string_equal(fb_scope_display(sc[2]), "job:j");
    assert_string_equal(fb_scope_name(sc[2]), "job:t/j");
    fb_budget_free(b);
}

static void test_settle_moves_reserved_to_spent(void **state)
{
    (void)state;
    fb_budget *b = fb_budget_new();
    fb_scope *sc[1] = {mk(b, "job:t/j", 1000, FB_PERIOD_NONE)};
    fb_reservation r1, r2;
    fb_refusal why;
    fb_money spent, resv;
    assert_int_equal(fb_budget_reserve(sc, 1, 600, 0, &r1, &why), FB_OK);
    assert_int_equal(fb_budget_reserve(sc, 1, 500, 0, &r2, &why), FB_ELIMIT);
    fb_budget_settle(&r1, 150); /* real cost below the worst case */
    fb_scope_counters(sc[0], 0, &spent, &resv);
    assert_int_equal(spent, 150);
    assert_int_equal(resv, 0);
    assert_int_equal(fb_budget_reserve(sc, 1, 850, 0, &r2, &why), FB_OK);
    assert_int_equal(fb_budget_reserve(sc, 1, 1, 0, &r1, &why), FB_ELIMIT);
    /* A cost above the reservation is still booked in full. */
    fb_budget_settle(&r2, 900);
    fb_scope_counters(sc[0], 0, &spent, &resv);
    assert_int_equal(spent, 1050);
    assert_int_equal(resv, 0);
    fb_budget_free(b);
}

static void test_unlimited_scopes_count(void **state)
{
    (void)state;
    fb_budget *b = fb_budget_new();
    fb_scope *sc[2] = {fb_budget_scope(b, "global"),
                       fb_budget_scope(b, "key:k_1")};
    fb_reservation r;
    fb_refusal why;
    fb_money spent, resv;
    assert_int_equal(fb_budget_reserve(sc, 2, USD(1000000), 0, &r, &why),
                     FB_OK);
    fb_budget_settle(&r, 7);
    fb_scope_counters(sc[1], 0, &spent, &resv);
    assert_int_equal(spent, 7);
    fb_budget_free(b);
}

static void test_zero_ceiling_refuses_paid_but_not_free(void **state)
{
    (void)state;
    fb_budget *b = fb_budget_new();
    fb_scope *sc[1] = {mk(b, "tenant:t", 0, FB_PERIOD_DAY)};
    fb_reservation r;
    fb_refusal why;
    assert_int_equal(fb_budget_reserve(sc, 1, 1, 0, &r, &why), FB_ELIMIT);
    assert_int_equal(fb_budget_reserve(sc, 1, 0, 0, &r, &why), FB_OK);
    fb_budget_free(b);
}

static void test_period_rollover(void **state)
{
    (void)state;
    fb_budget *b = fb_budget_new();
    fb_scope *sc[1] = {mk(b, "job:t/d", 100, FB_PERIOD_DAY)};
    fb_reservation r, late;
    fb_refusal why;
    fb_money spent, resv;
    int64_t t0 = 20000 * DAY + 5 * HOUR;
    fb_scope_seed(sc[0], fb_period_start(FB_PERIOD_DAY, t0), 90);
    assert_int_equal(fb_budget_reserve(sc, 1, 11, t0, &r, &why), FB_ELIMIT);
    assert_int_equal(why.spent, 90);
    assert_int_equal(fb_budget_reserve(sc, 1, 10, t0, &late, &why), FB_OK);
    /* Next day: a fresh window; the late settlement of yesterday's call
     * does not leak into it. */
    int64_t t1 = t0 + DAY;
    assert_int_equal(fb_budget_reserve(sc, 1, 100, t1, &r, &why), FB_OK);
    fb_budget_settle(&late, 10);
    fb_scope_counters(sc[0], t1, &spent, &resv);
    assert_int_equal(spent, 0);
    assert_int_equal(resv, 100);
    fb_budget_free(b);
}

/* The wall clock stepped back across midnight (NTP, a VM restored): the
 * day's spend is not forgotten, so the ceiling is not spent twice. */
static void test_clock_stepped_back(void **state)
{
    (void)state;
    fb_budget *b = fb_budget_new();
    fb_scope *sc[1] = {mk(b, "job:t/back", 100, FB_PERIOD_DAY)};
    fb_reservation r;
    fb_refusal why;
    int64_t t0 = 20000 * DAY + 10 * 60 * 1000; /* 00:10 */
    assert_int_equal(fb_budget_reserve(sc, 1, 90, t0, &r, &why), FB_OK);
    fb_budget_settle(&r, 90);
    int64_t back = t0 - 20 * 60 * 1000; /* 23:50 the day before */
    assert_int_equal(fb_budget_reserve(sc, 1, 20, back, &r, &why), FB_ELIMIT);
    assert_int_equal(why.spent, 90);
    assert_int_equal(fb_budget_reserve(sc, 1, 10, back, &r, &why), FB_OK);
    /* Forward again, into the next day: a fresh window. */
    assert_int_equal(fb_budget_reserve(sc, 1, 100, t0 + DAY, &r, &why), FB_OK);
    fb_budget_free(b);
}

static void test_period_start(void **state)
{
    (void)state;
    /* 2026-11-28T13:45:10.123Z */
    int64_t t = INT64_C(1795873510123);
    assert_int_equal(fb_period_start(FB_PERIOD_NONE, t), 0);
    assert_int_equal(fb_period_start(FB_PERIOD_HOUR, t), INT64_C(1795870800000));
    assert_int_equal(fb_period_start(FB_PERIOD_DAY, t), INT64_C(1795824000000));
    /* 2026-11-01T00:00:00Z */
    assert_int_equal(fb_period_start(FB_PERIOD_MONTH, t),
                     INT64_C(1793491200000));
}

static void test_overflow_refused(void **state)
{
    (void)state;
    fb_budget *b = fb_budget_new();
    fb_scope *sc[1] = {fb_budget_scope(b, "global")};
    fb_reservation r;
    fb_refusal why;
    assert_int_equal(fb_budget_reserve(sc, 1, FB_MONEY_MAX, 0, &r, &why),
                     FB_OK);
    assert_int_equal(fb_budget_reserve(sc, 1, 1, 0, &r, &why), FB_EOVERFLOW);
    fb_budget_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_or_nothing),
        cmocka_unit_test(test_settle_moves_reserved_to_spent),
        cmocka_unit_test(test_unlimited_scopes_count),
        cmocka_unit_test(test_zero_ceiling_refuses_paid_but_not_free),
        cmocka_unit_test(test_period_rollover),
        cmocka_unit_test(test_clock_stepped_back),
        cmocka_unit_test(test_period_start),
        cmocka_unit_test(test_overflow_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
