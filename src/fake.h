/* fake.h - the fake paid provider behind `fusebox fake-provider`: one HTTP
 * server that answers like OpenAI, Anthropic and a generic per-call API,
 * bills every answer from the price table and injects faults on request.
 * It is the only provider stand-in in the test suite. */
#ifndef FB_FAKE_H
#define FB_FAKE_H

/* Run the fake provider until SIGTERM or SIGINT. argv[0] is the subcommand
 * name ("fake-provider"); the options follow (usage text in fake.c). Once
 * listening it prints exactly one line to stdout:
 *     fake-provider listening on HOST:PORT
 * Returns 0 after a clean stop, 1 when it cannot start (bind failure,
 * unreadable --prices file), 2 on bad usage. Runs one event loop on the
 * calling thread and frees everything it took before returning. */
int fb_fake_main(int argc, char **argv);

#endif
