/*
 * The engine's pass-through to a store's shared registry of external
 * workers (private; see th__store_ops.worker_*). With a store that has none
 * (memory, sqlite: one process), the daemon keeps its workers in memory.
 */
#ifndef TH_ENGINE_WORKERS_H
#define TH_ENGINE_WORKERS_H

#include "taskhive/engine.h"

/* 1 when the store shares its worker registry between nodes. */
int th__engine_workers_shared(const th_engine *e);
/* Adds or replaces worker `id` with `info` (a JSON object text). */
int th__engine_worker_put(th_engine *e, const char *id, const char *info);
/* Worker `id`'s info (th__free), or TH_ENOTFOUND. */
int th__engine_worker_get(th_engine *e, const char *id, char **info);
/* Every worker as a JSON array text (th__free). */
int th__engine_worker_list(th_engine *e, char **json);

#endif
