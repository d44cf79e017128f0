/*
 * A private PostgreSQL server for tests: initdb and pg_ctl from
 * /usr/lib/postgresql/<version>/bin in a temp dir, listening only on
 * 127.0.0.1 on a free port, with its unix socket in that dir. It is started
 * once per test binary, on first use, and stopped when the binary exits in
 * any way: a watcher process holds a pipe to the test and stops the server
 * (immediate shutdown) and removes the dir when the pipe closes, so a crash
 * or a SIGKILL leaves no server behind. As root the server runs as the
 * unprivileged user "nobody" (initdb refuses root).
 *
 * $TH_TEST_PG_URI, when set, names an existing server to use instead. The
 * functions report failures on stderr and return NULL or -1; they never
 * assert, so benchmarks use them too (tests: thtest_pg_uri).
 */
#ifndef THTEST_PGSERVER_H
#define THTEST_PGSERVER_H

/* The base uri of the server (starting it on first call), or NULL when it
 * cannot start (the reason on stderr). Static. */
const char *thpg_base(void);

/* A uri for a fresh, empty schema on the server: a store opened on it sees
 * no other test's tables. NULL on failure. The caller frees it. */
char *thpg_new_schema(void);

/* Runs one SQL command on the database of `uri`; returns 0 or -1 (printing
 * the error). */
int thpg_exec(const char *uri, const char *sql);

/* Restarts the server (same port and data): an immediate stop, which drops
 * every connection, then a start. Returns 0 or -1. */
int thpg_restart(void);

#endif
