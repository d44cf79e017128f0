/*
 * The daemon's key store (keys.c): provider API keys sealed with a master
 * key in DATA_DIR/keys.db.
 */
#ifndef TH_SERVER_KEYS_H
#define TH_SERVER_KEYS_H

#include <jansson.h>

#include "taskhive/error.h"

typedef struct th__keys th__keys;

/* Opens (creating) DIR/keys.db with the master key from TASKHIVE_MASTER_KEY
 * or DIR/master.key (made when missing). NULL with one line in `err`. */
th__keys *th__keys_open(const char *dir, char *err, size_t errlen);
void th__keys_free(th__keys *k);
/* The key `name` decrypted into *value (th__free it after wiping it):
 * 0, TH_ENOTFOUND, TH_ECORRUPT (another master key, or altered), TH_EIO. */
int th__keys_get(th__keys *k, const char *name, char **value);
/* Stores (or replaces) `name`; *existed says whether it replaced one.
 * TH_EINVAL for an empty value or one over 4 KiB, TH_EIO. */
int th__keys_put(th__keys *k, const char *name, const char *value, int *existed);
/* TH_ENOTFOUND when there is no such key. */
int th__keys_delete(th__keys *k, const char *name);
/* [{"name", "created_ms", "rotated_ms"}, ...] sorted by name; never values. */
json_t *th__keys_list(th__keys *k);

#endif
