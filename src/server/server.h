/*
 * The daemon (private entry point): `taskhive serve`. It loads the
 * configuration, opens the store, starts the engine and a worker pool with
 * the built-in handlers, and serves the HTTP API (docs/API.md) on one libevent
 * loop until SIGTERM or SIGINT, then drains gracefully.
 */
#ifndef TH_SERVER_SERVER_H
#define TH_SERVER_SERVER_H

/* Runs `taskhive serve` with its arguments (argv[0] is "serve"). Returns the
 * process exit status: 0 after a clean shutdown, 1 when the configuration or
 * the store cannot be used (one line on stderr says why), 2 for bad usage. */
int th__server_main(int argc, char **argv);

#endif
