/*
 * The hash handler: SHA-256 or BLAKE2b-256 (libsodium) of text, base64 data
 * or a file streamed in 64 KiB chunks.
 */
#include "handlers/handlers.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"

enum { ALG_SHA256 = 0, ALG_BLAKE2B = 1 };
static const char *const alg_names[] = {"sha256", "blake2b", NULL};

#define DIGEST_BYTES 32

typedef struct hasher {
    int alg;
    crypto_hash_sha256_state sha;
    crypto_generichash_state b2;
} hasher;

static void hasher_init(hasher *h, int alg)
{
    h->alg = alg;
    if (alg == ALG_SHA256)
        crypto_hash_sha256_init(&h->sha);
    else
        crypto_generichash_init(&h->b2, NULL, 0, DIGEST_BYTES);
}

static void hasher_update(hasher *h, const unsigned char *buf, size_t len)
{
    if (h->alg == ALG_SHA256)
        crypto_hash_sha256_update(&h->sha, buf, len);
    else
        crypto_generichash_update(&h->b2, buf, len);
}

static void hasher_final(hasher *h, unsigned char out[DIGEST_BYTES])
{
    if (h->alg == ALG_SHA256)
        crypto_hash_sha256_final(&h->sha, out);
    else
        crypto_generichash_final(&h->b2, out, DIGEST_BYTES);
}

/* Streams `path` through `h`; *total receives the byte count. Reports
 * progress for regular files and stops when cancelled. */
static int hash_file(th_ctx *ctx, hasher *h, const char *path, uint64_t *total)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT || e == ENOTDIR || e == EACCES || e == ELOOP || e == ENAMETOOLONG)
            return th__hfail(ctx, "payload.file: cannot open \"%s\": %s", path, strerror(e));
        return th__hretry(ctx, "payload.file: cannot open \"%s\": %s", path, strerror(e));
    }
    struct stat st;
    uint64_t size = 0; /* for progress; 0 when unknown */
    if (fstat(fd, &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            close(fd);
            return th__hfail(ctx, "payload.file: \"%s\" is a directory", path);
        }
        if (S_ISREG(st.st_mode))
            size = (uint64_t)st.st_size;
    }
    unsigned char *buf = th__malloc(TH__HANDLER_CHUNK);
    if (!buf) {
        close(fd);
        return th__hnomem(ctx);
    }
    int rc = 0, last_pct = -1;
    *total = 0;
    for (;;) {
        if (th_ctx_cancelled(ctx)) {
            rc = th__hcancelled(ctx);
            break;
        }
        ssize_t n = read(fd, buf, TH__HANDLER_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = th__hretry(ctx, "payload.file: cannot read \"%s\": %s", path, strerror(errno));
            break;
        }
        if (n == 0)
            break;
        hasher_update(h, buf, (size_t)n);
        *total += (uint64_t)n;
        if (size) {
            int pct = *total >= size ? 100 : (int)(*total * 100 / size);
            if (pct != last_pct) {
                th_ctx_progress(ctx, pct, 0, 0, NULL);
                last_pct = pct;
            }
        }
    }
    th__free(buf);
    close(fd);
    return rc;
}

/*
 * Payload {"algorithm": "sha256" | "blake2b" (default sha256), and one of
 * "data" (text), "data_base64" or "file" (a path)}. BLAKE2b gives a 32-byte
 * digest. Result {"algorithm", "hex", "bytes"}.
 */
int th_handler_hash(th_ctx *ctx, void *ud)
{
    (void)ud;
    static const char *const allowed[] = {"algorithm", "data", "data_base64", "file", NULL};
    json_t *p = NULL;
    th__hinput in = {0};
    int alg = ALG_SHA256;
    int rc = th__payload_parse(ctx, allowed, &p);
    if (rc)
        return rc;
    if ((rc = th__payload_enum(ctx, p, "algorithm", alg_names, &alg)) != 0 ||
        (rc = th__payload_input(ctx, p, TH__INPUT_TEXT | TH__INPUT_BASE64 | TH__INPUT_FILE, &in)) !=
            0)
        goto done;
    if (th__sodium_ready() != 0) {
        rc = th__hretry(ctx, "libsodium failed to initialise");
        goto done;
    }

    hasher h;
    hasher_init(&h, alg);
    uint64_t total = 0;
    if (in.file) {
        if ((rc = hash_file(ctx, &h, in.file, &total)) != 0)
            goto done;
    } else {
        hasher_update(&h, in.buf, in.len);
        total = in.len;
    }
    unsigned char digest[DIGEST_BYTES];
    char hex[2 * DIGEST_BYTES + 1];
    hasher_final(&h, digest);
    sodium_bin2hex(hex, sizeof hex, digest, sizeof digest);
    rc = th__hresult(ctx,
                     json_pack("{s:s, s:s, s:I}", "algorithm", alg_names[alg], "hex", hex, "bytes",
                               (json_int_t)total),
                     TH_HANDLER_OK);
done:
    th__hinput_free(&in);
    json_decref(p);
    return rc;
}
