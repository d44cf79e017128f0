/*
 * Stores: where tasks live. Every store gives the same semantics; they differ
 * in durability and reach:
 *
 *   "memory"            in-process, not durable; the fastest.
 *   "sqlite:PATH"       one file (or a bare PATH ending in .db / .sqlite);
 *                       WAL, group commit, versioned schema. The file is
 *                       held exclusively by one process.
 *   "postgres://..."    a PostgreSQL database (any libpq URI, also
 *                       "postgresql://"); several processes on several
 *                       machines share it. Durability is the server's.
 *
 * The engine is the only user of a store; see engine.h.
 */
#ifndef TASKHIVE_STORE_H
#define TASKHIVE_STORE_H

#include <stdint.h>

#include "common.h"
#include "error.h"

typedef struct th_store th_store;

typedef enum th_durability {
    /* A write acknowledged to the caller survives a crash of the process
     * (SQLite WAL, synchronous=NORMAL). */
    TH_DURABILITY_NORMAL = 0,
    /* ... and survives power loss: every commit is fsynced
     * (synchronous=FULL). */
    TH_DURABILITY_FULL = 1,
} th_durability;

typedef struct th_store_options {
    th_durability durability;
} th_store_options;

/* Fills `o` with the defaults (durability normal). */
TH_EXPORT void th_store_options_init(th_store_options *o);

/*
 * Opens the store named by `uri` ("memory", "sqlite:/var/lib/x.db", "x.db",
 * "postgres://user@host/db").
 * `opts` may be NULL for defaults. Returns NULL on failure and fills `err`:
 * TH_EINVAL for a bad uri, TH_EBUSY when another process holds the file,
 * TH_ECORRUPT for a damaged or foreign file, TH_EVERSION for a newer schema,
 * TH_EIO otherwise (for postgres: the server cannot be reached or refused
 * the schema). A refused file is never modified.
 * The caller owns the result: hand it to th_engine_new, or th_store_free it.
 */
TH_EXPORT th_store *th_store_open(const char *uri, const th_store_options *opts, th_error *err);

/* Closes a store that was never handed to an engine; accepts NULL. */
TH_EXPORT void th_store_free(th_store *store);

/* "memory", "sqlite" or "postgres". Static. */
TH_EXPORT const char *th_store_kind(const th_store *store);

#endif
