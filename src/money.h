/* money.h - money as an integer count of picodollars (1 USD = 10^12).
 *
 * Every per-token price in LiteLLM's table is a whole number of
 * picodollars, so token costs are exact. int64 holds up to ~9.2 million
 * USD; every operation checks for overflow and never uses floating point. */
#ifndef FB_MONEY_H
#define FB_MONEY_H

#include <stdint.h>
#include <stddef.h>
#include "common.h"

typedef int64_t fb_money;
#define FB_PICO_PER_USD INT64_C(1000000000000)
#define FB_MONEY_MAX INT64_MAX

/* *out = a + b. FB_EOVERFLOW (and *out untouched) on overflow. */
fb_err fb_money_add(fb_money a, fb_money b, fb_money *out);
/* *out = a * n for n >= 0. FB_EOVERFLOW on overflow, FB_EINVAL if n < 0. */
fb_err fb_money_mul(fb_money a, int64_t n, fb_money *out);

/* Parse a non-negative decimal USD amount: "5", "0.008", "1.5e-07",
 * "2.5E-6", ".5". Digits finer than a picodollar round UP (a price is
 * never under-stated). FB_EINVAL on syntax or a negative sign,
 * FB_EOVERFLOW when too large. s need not be NUL-terminated. */
fb_err fb_money_parse(const char *s, size_t len, fb_money *out);

/* A price that a JSON parser already turned into a double: recovered
 * exactly from its shortest decimal form ("%.15g" round-trips every
 * literal of up to 15 significant digits) and then parsed as text.
 * FB_EINVAL for NaN, infinities or negatives. */
fb_err fb_money_from_double(double d, fb_money *out);

/* Write m as a decimal USD string with trailing zeros trimmed but at
 * least one decimal ("0.0", "0.000123", "5.0", "-1.25"). Returns the
 * length written (excluding NUL); needs cap >= 32. */
size_t fb_money_format(fb_money m, char *buf, size_t cap);

#endif
