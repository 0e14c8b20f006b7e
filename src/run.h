/* run.h - fusebox run: a harness that makes batch jobs safe to retry.
 * Preflights before any money is spent, one attempt key per attempt (so
 * replay hands back what earlier attempts bought), failure classification,
 * retries only for transient failures, and exit codes queues understand. */
#ifndef FB_RUN_H
#define FB_RUN_H

#include <stdint.h>

/* Exit codes (sysexits.h where one fits). */
#define FB_EXIT_OK 0
#define FB_EXIT_DETERMINISTIC 65 /* EX_DATAERR: retrying cannot help */
#define FB_EXIT_BUDGET 69        /* EX_UNAVAILABLE: a budget or retry
                                    budget stopped the job */
#define FB_EXIT_TEMPFAIL 75      /* EX_TEMPFAIL: transient failures used up
                                    the attempts; a later retry may help */
#define FB_EXIT_CONFIG 78        /* EX_CONFIG: a preflight failed, or the
                                    rerun guard refused the run */

/* fusebox run [options] -- COMMAND [ARGS...]; argv[0] is "run". Returns
 * the exit code above, or the usage status 2. */
int fb_run_main(int argc, char **argv);

/* The wait before attempt `attempt` (2, 3, ...): exponential backoff with
 * full jitter, uniform in [0, min(cap, base * 2^(attempt-2))], drawn from
 * rnd. */
int64_t fb_backoff_ms(int64_t base_ms, int64_t cap_ms, int attempt,
                      uint64_t rnd);

#endif
