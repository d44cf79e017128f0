/*
 * The daemon's key store: provider API keys kept encrypted at rest in
 * DATA_DIR/keys.db, so they need not live in the environment or a file in
 * clear. Each key is sealed with libsodium's secretbox (XSalsa20-Poly1305)
 * under a master key: TASKHIVE_MASTER_KEY (64 hex digits) when set, else
 * DATA_DIR/master.key (32 random bytes, made with mode 0600 on first use).
 * A [provider.NAME] with `api_key_store = KEY` takes its key from here, and
 * storing a new value under KEY rotates it in every such provider at once
 * (th_llm_set_api_key): attempts started after that send the new key.
 *
 * Values never leave the daemon: the API lists names and dates only, and
 * plaintext buffers are wiped (sodium_memzero) after use.
 */
#include "server/keys.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "server/log.h"

#define KEY_VALUE_MAX 4096

struct th__keys {
    sqlite3 *db;
    unsigned char master[crypto_secretbox_KEYBYTES];
};

static int load_master(const char *dir, unsigned char *m, char *err, size_t errlen)
{
    const char *hex = getenv("TASKHIVE_MASTER_KEY");
    if (hex && *hex) {
        size_t n = 0;
        if (sodium_hex2bin(m, crypto_secretbox_KEYBYTES, hex, strlen(hex), NULL, &n, NULL) != 0 ||
            n != crypto_secretbox_KEYBYTES) {
            snprintf(err, errlen, "TASKHIVE_MASTER_KEY must be 64 hex digits");
            return -1;
        }
        return 0;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/master.key", dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t r = read(fd, m, crypto_secretbox_KEYBYTES);
        close(fd);
        if (r != crypto_secretbox_KEYBYTES) {
            snprintf(err, errlen, "%s: not a master key (%d bytes expected)", path,
                     crypto_secretbox_KEYBYTES);
            return -1;
        }
        return 0;
    }
    if (errno != ENOENT) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    randombytes_buf(m, crypto_secretbox_KEYBYTES);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, m, crypto_secretbox_KEYBYTES) != crypto_secretbox_KEYBYTES ||
        fsync(fd) != 0) {
        snprintf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

th__keys *th__keys_open(const char *dir, char *err, size_t errlen)
{
    th__keys *k = th__calloc(1, sizeof *k);
    if (!k) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/keys.db", dir);
    if (load_master(dir, k->master, err, errlen) != 0)
        goto fail;
    if (sqlite3_open_v2(path, &k->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
            SQLITE_OK ||
        sqlite3_exec(k->db,
                     "CREATE TABLE IF NOT EXISTS keys (name TEXT PRIMARY KEY, nonce BLOB NOT NULL,"
                     " sealed BLOB NOT NULL, created_ms INTEGER NOT NULL,"
                     " rotated_ms INTEGER NOT NULL)",
                     NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, k->db ? sqlite3_errmsg(k->db) : "cannot open");
        goto fail;
    }
    return k;
fail:
    th__keys_free(k);
    return NULL;
}

void th__keys_free(th__keys *k)
{
    if (!k)
        return;
    sqlite3_close(k->db);
    sodium_memzero(k->master, sizeof k->master);
    th__free(k);
}

int th__keys_get(th__keys *k, const char *name, char **value)
{
    *value = NULL;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(k->db, "SELECT nonce, sealed FROM keys WHERE name = ?1", -1, &st,
                           NULL) != SQLITE_OK)
        return TH_EIO;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int rc = TH_ENOTFOUND;
    if (sqlite3_step(st) == SQLITE_ROW) {
        const unsigned char *nonce = sqlite3_column_blob(st, 0);
        const unsigned char *sealed = sqlite3_column_blob(st, 1);
        int nn = sqlite3_column_bytes(st, 0), ns = sqlite3_column_bytes(st, 1);
        rc = TH_ECORRUPT;
        if (nonce && sealed && nn == (int)crypto_secretbox_NONCEBYTES &&
            ns > (int)crypto_secretbox_MACBYTES) {
            size_t len = (size_t)ns - crypto_secretbox_MACBYTES;
            char *v = th__malloc(len + 1);
            if (!v)
                rc = TH_ENOMEM;
            else if (crypto_secretbox_open_easy((unsigned char *)v, sealed, (size_t)ns, nonce,
                                                k->master) != 0)
                th__free(v); /* another master key, or the row was altered */
            else {
                v[len] = '\0';
                *value = v;
                rc = 0;
            }
        }
    }
    sqlite3_finalize(st);
    return rc;
}

int th__keys_put(th__keys *k, const char *name, const char *value, int *existed)
{
    size_t len = strlen(value);
    if (len == 0 || len > KEY_VALUE_MAX)
        return TH_EINVAL;
    unsigned char nonce[crypto_secretbox_NONCEBYTES];
    unsigned char *sealed = th__malloc(len + crypto_secretbox_MACBYTES);
    if (!sealed)
        return TH_ENOMEM;
    randombytes_buf(nonce, sizeof nonce);
    crypto_secretbox_easy(sealed, (const unsigned char *)value, len, nonce, k->master);
    sqlite3_stmt *st;
    int64_t now = th__wall_ms();
    char *old = NULL;
    *existed = th__keys_get(k, name, &old) != TH_ENOTFOUND;
    if (old) {
        sodium_memzero(old, strlen(old));
        th__free(old);
    }
    int rc = TH_EIO;
    if (sqlite3_prepare_v2(k->db,
                           "INSERT INTO keys VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (name) DO"
                           " UPDATE SET nonce = ?2, sealed = ?3, rotated_ms = ?4",
                           -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_blob(st, 2, nonce, sizeof nonce, SQLITE_STATIC);
        sqlite3_bind_blob(st, 3, sealed, (int)(len + crypto_secretbox_MACBYTES), SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, now);
        if (sqlite3_step(st) == SQLITE_DONE)
            rc = 0;
        sqlite3_finalize(st);
    }
    th__free(sealed);
    return rc;
}

int th__keys_delete(th__keys *k, const char *name)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(k->db, "DELETE FROM keys WHERE name = ?1", -1, &st, NULL) != SQLITE_OK)
        return TH_EIO;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : TH_EIO;
    sqlite3_finalize(st);
    if (rc == 0 && sqlite3_changes(k->db) == 0)
        rc = TH_ENOTFOUND;
    return rc;
}

json_t *th__keys_list(th__keys *k)
{
    json_t *a = json_array();
    sqlite3_stmt *st;
    if (!a ||
        sqlite3_prepare_v2(k->db, "SELECT name, created_ms, rotated_ms FROM keys ORDER BY name", -1,
                           &st, NULL) != SQLITE_OK)
        return a;
    while (sqlite3_step(st) == SQLITE_ROW)
        json_array_append_new(a, json_pack("{s:s,s:I,s:I}", "name",
                                           (const char *)sqlite3_column_text(st, 0), "created_ms",
                                           (json_int_t)sqlite3_column_int64(st, 1), "rotated_ms",
                                           (json_int_t)sqlite3_column_int64(st, 2)));
    sqlite3_finalize(st);
    return a;
}
