/* money.c - picodollar arithmetic, and conversion between decimal USD text
 * and fb_money. Parsing and formatting work on the digits themselves, so a
 * price read from a file or a config is exact; fb_money_from_double is
 * the one place a double is touched. */
#include "money.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>

/* Exponents beyond this already overflow (any non-zero digit) or fall
 * below a picodollar (every digit), so clamping keeps the arithmetic on
 * positions small without changing any result. */
#define EXP_CLAMP 1000000

fb_err fb_money_add(fb_money a, fb_money b, fb_money *out)
{
    fb_money r;
    if (__builtin_add_overflow(a, b, &r))
        return FB_EOVERFLOW;
    *out = r;
    return FB_OK;
}

fb_err fb_money_mul(fb_money a, int64_t n, fb_money *out)
{
    fb_money r;
    if (n < 0)
        return FB_EINVAL;
    if (__builtin_mul_overflow(a, n, &r))
        return FB_EOVERFLOW;
    *out = r;
    return FB_OK;
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Grammar: digits ['.' digits] [('e'|'E') ['+'|'-'] digits], with at
 * least one mantissa digit on either side of the point. No sign, no
 * blanks: callers trim, and a '-' must never turn into a credit. */
fb_err fb_money_parse(const char *s, size_t len, fb_money *out)
{
    size_t i = 0, mant_end, int_digits = 0, frac_digits = 0;
    int64_t exp10 = 0, pos, acc = 0;
    int exp_neg = 0, have_pos = 0, round_up = 0;

    if (s == NULL || len == 0 || len > (size_t)INT32_MAX)
        return FB_EINVAL;

    while (i < len && is_digit(s[i])) {
        i++;
        int_digits++;
    }
    if (i < len && s[i] == '.') {
        i++;
        while (i < len && is_digit(s[i])) {
            i++;
            frac_digits++;
        }
    }
    if (int_digits + frac_digits == 0)
        return FB_EINVAL;
    mant_end = i;

    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        size_t exp_digits = 0;
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-')) {
            exp_neg = s[i] == '-';
            i++;
        }
        while (i < len && is_digit(s[i])) {
            if (exp10 < EXP_CLAMP)
                exp10 = exp10 * 10 + (s[i] - '0');
            i++;
            exp_digits++;
        }
        if (exp_digits == 0)
            return FB_EINVAL;
        if (exp_neg)
            exp10 = -exp10;
    }
    if (i != len)
        return FB_EINVAL;

    /* Walk the mantissa digits from the most significant one. pos is the
     * power of ten, in picodollars, of the current digit; it falls by one
     * per digit. Digits at pos >= 0 build the integer (Horner), the rest
     * only decide whether to round up. */
    pos = (int64_t)int_digits - 1 + exp10 + 12;
    for (size_t k = 0; k < mant_end; k++) {
        int d;
        if (s[k] == '.')
            continue;
        d = s[k] - '0';
        if (pos >= 0) {
            if (__builtin_mul_overflow(acc, 10, &acc) ||
                __builtin_add_overflow(acc, d, &acc))
                return FB_EOVERFLOW;
            have_pos = 1;
        } else if (d != 0) {
            round_up = 1;
        }
        pos--;
    }
    /* The last integer digit sat at pos + 1 (or the mantissa ended above
     * the units of a picodollar): scale acc up to picodollars. */
    if (have_pos && acc != 0) {
        for (int64_t z = pos + 1; z > 0; z--) {
            if (__builtin_mul_overflow(acc, 10, &acc))
                return FB_EOVERFLOW;
        }
    }
    if (round_up && __builtin_add_overflow(acc, 1, &acc))
        return FB_EOVERFLOW;
    *out = acc;
    return FB_OK;
}

fb_err fb_money_from_double(double d, fb_money *out)
{
    char buf[32];
    int n;

    if (isnan(d) || isinf(d) || d < 0)
        return FB_EINVAL;
    /* -0.0 passes the test above but prints as "-0". */
    if (d == 0) {
        *out = 0;
        return FB_OK;
    }
    /* A JSON parser turns a literal into the nearest double. DBL_DIG is
     * 15: every decimal of up to 15 significant digits survives the trip
     * to a double and back at 15 digits, so "%.15g" gives back the
     * literal's exact value (maybe in another notation, e.g. "1.5e-07"),
     * and the decimal parser above takes it from there with no binary
     * error. Longer literals are cut to 15 digits, and the parser then
     * rounds up. fusebox never calls setlocale, so the point is '.'. */
    n = snprintf(buf, sizeof(buf), "%.15g", d);
    if (n <= 0 || (size_t)n >= sizeof(buf))
        return FB_EINVAL;
    return fb_money_parse(buf, (size_t)n, out);
}

size_t fb_money_format(fb_money m, char *buf, size_t cap)
{
    uint64_t mag, whole, frac;
    char fdigits[13];
    int flen = 12, n;

    FB_ASSERT(buf != NULL && cap >= 32);
    /* Negate in unsigned arithmetic: -INT64_MIN does not fit in int64. */
    mag = m < 0 ? (uint64_t)0 - (uint64_t)m : (uint64_t)m;
    whole = mag / (uint64_t)FB_PICO_PER_USD;
    frac = mag % (uint64_t)FB_PICO_PER_USD;
    for (int k = 11; k >= 0; k--) {
        fdigits[k] = (char)('0' + frac % 10);
        frac /= 10;
    }
    while (flen > 1 && fdigits[flen - 1] == '0')
        flen--;
    fdigits[flen] = '\0';
    n = snprintf(buf, cap, "%s%" PRIu64 ".%s", m < 0 ? "-" : "", whole,
                 fdigits);
    FB_ASSERT(n > 0 && (size_t)n < cap);
    return (size_t)n;
}
