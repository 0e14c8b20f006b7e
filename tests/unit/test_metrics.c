/* test_metrics.c - the /metrics text: counters per (tenant, job), the
 * bound on label sets (the overflow series is marked and does not grow
 * per scrape), histogram buckets at their edges, budget gauges. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "budget.h"
#include "metrics.h"
#include "replay.h"

static char *render(fb_metrics *m, fb_budget *b, fb_replay *r)
{
    size_t len = 0;
    fb_metrics_src src = {.budget = b, .replay = r, .now_ms = 1, .store_ok = 1};
    char *t = fb_metrics_render(m, &src, &len);
    assert_non_null(t);
    assert_int_equal(strlen(t), len);
    return t;
}

static void test_series_and_bound(void **state)
{
    (void)state;
    fb_metrics *m = fb_metrics_new();
    fb_budget *b = fb_budget_new();
    fb_replay *r = fb_replay_new();
    char job[32];
    fb_metrics_paid(m, "acme", "main", 1500000, 1, 1000);
    fb_metrics_paid(m, "acme", "main", 0, 0, 1000); /* forwarded, not paid */
    fb_metrics_replayed(m, "acme", "main", 1500000, 1000);
    fb_metrics_blocked(m, "acme", "main", "budget_exceeded");
    fb_metrics_blocked(m, "acme", "main", "something new");
    for (int i = 0; i < FB_METRICS_MAX_SERIES + 5; i++) {
        snprintf(job, sizeof job, "j%d", i);
        fb_metrics_paid(m, "many", job, 1, 0, 1000);
    }
    char *t = render(m, b, r);
    assert_non_null(strstr(t, "fusebox_forwarded_calls_total{tenant=\"acme\","
                              "job=\"main\"} 2\n"));
    assert_non_null(strstr(t, "fusebox_paid_calls_total{tenant=\"acme\","
                              "job=\"main\"} 1\n"));
    assert_non_null(strstr(t, "fusebox_spent_usd_total{tenant=\"acme\","
                              "job=\"main\"} 0.0000015\n"));
    assert_non_null(strstr(t, "fusebox_retries_total{tenant=\"acme\","
                              "job=\"main\"} 1\n"));
    assert_non_null(strstr(t, "reason=\"budget_exceeded\"} 1\n"));
    assert_non_null(strstr(t, "reason=\"other\"} 1\n"));
    /* 1,000 label sets, then the overflow one, marked as such. */
    assert_non_null(strstr(t, "{tenant=\"_other\",job=\"_other\","
                              "overflow=\"1\"} 6\n"));
    assert_non_null(strstr(t, "fusebox_metrics_overflow_total 6\n"));
    free(t);
    /* A scrape changes no counter. */
    t = render(m, b, r);
    assert_non_null(strstr(t, "fusebox_metrics_overflow_total 6\n"));
    free(t);
    fb_metrics_free(m);
    fb_budget_free(b);
    fb_replay_free(r);
}

static void test_histogram_edges(void **state)
{
    (void)state;
    fb_metrics *m = fb_metrics_new();
    fb_budget *b = fb_budget_new();
    fb_replay *r = fb_replay_new();
    fb_metrics_paid(m, "t", "j", 0, 0, 500000);       /* exactly 0.5 ms */
    fb_metrics_paid(m, "t", "j", 0, 0, 500999);       /* just over */
    fb_metrics_paid(m, "t", "j", 0, 0, INT64_C(9e11)); /* 900 s: +Inf */
    char *t = render(m, b, r);
    assert_non_null(strstr(t, "fusebox_forward_duration_seconds_bucket"
                              "{le=\"0.000500\"} 1\n"));
    assert_non_null(strstr(t, "fusebox_forward_duration_seconds_bucket"
                              "{le=\"0.001000\"} 2\n"));
    assert_non_null(strstr(t, "fusebox_forward_duration_seconds_bucket"
                              "{le=\"60.000000\"} 2\n"));
    assert_non_null(strstr(t, "fusebox_forward_duration_seconds_bucket"
                              "{le=\"+Inf\"} 3\n"));
    assert_non_null(strstr(t, "fusebox_forward_duration_seconds_count 3\n"));
    assert_non_null(strstr(t, "fusebox_forward_duration_seconds_sum "
                              "900.001000999\n"));
    free(t);
    fb_metrics_free(m);
    fb_budget_free(b);
    fb_replay_free(r);
}

static void test_budget_gauges_and_escaping(void **state)
{
    (void)state;
    fb_metrics *m = fb_metrics_new();
    fb_budget *b = fb_budget_new();
    fb_replay *r = fb_replay_new();
    fb_budget_spec spec;
    assert_int_equal(fb_budget_spec_parse("2/day", &spec), FB_OK);
    fb_scope *sc = fb_budget_scope(b, "job:acme/main");
    fb_scope_set_limit(sc, &spec);
    fb_scope_seed(sc, fb_period_start(FB_PERIOD_DAY, 1), 500000000000);
    fb_trip_set(r, "job:a\"b/c", "by hand: \"x\"\nnext");
    char *t = render(m, b, r);
    assert_non_null(strstr(t, "fusebox_budget_limit_usd{scope=\"job:acme/main"
                              "\",period=\"day\"} 2.0\n"));
    assert_non_null(strstr(t, "fusebox_budget_remaining_usd{scope=\"job:acme/"
                              "main\",period=\"day\"} 1.5\n"));
    assert_non_null(strstr(t, "fusebox_tripped{scope=\"job:a\\\"b/c\","
                              "reason=\"by hand: \\\"x\\\"\\nnext\"} 1\n"));
    free(t);
    fb_metrics_free(m);
    fb_budget_free(b);
    fb_replay_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_series_and_bound),
        cmocka_unit_test(test_histogram_edges),
        cmocka_unit_test(test_budget_gauges_and_escaping),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
