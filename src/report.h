/* report.h - `fusebox spend --by`: spend grouped by tenant, job, model,
 * key, hour or day, as a table with bars, JSON or CSV. The rows come
 * from fb_store_report (store.h); hours and days with no spend between
 * the first and the last are shown as zero, so the bars are a time line. */
#ifndef FB_REPORT_H
#define FB_REPORT_H

#include <stdio.h>
#include "store.h"

typedef enum fb_report_format {
    FB_REPORT_TEXT,
    FB_REPORT_JSON,
    FB_REPORT_CSV,
} fb_report_format;

/* "tenant" -> FB_BY_TENANT ...; -1 for an unknown name. */
int fb_report_by_parse(const char *name);
const char *fb_report_by_name(fb_report_by by);

/* Write the report to out. FB_EIO when the store cannot be read (nothing
 * written then). */
fb_err fb_report_write(fb_store *s, fb_report_by by, const fb_spend_filter *f,
                       fb_report_format fmt, FILE *out);

#endif
