/*
 * The encrypt and decrypt handlers: libsodium secretbox (XSalsa20-Poly1305)
 * with the pool's key from configuration "crypto.key" and a fresh random
 * nonce per message. Key and plaintext copies are wiped before release.
 */
#include "handlers/handlers.h"

#include <sodium.h>
#include <string.h>

#include "core/alloc.h"

#define KEY_CONFIG "crypto.key"

/* Decodes the key: exactly 64 hex digits (32 bytes). */
static int load_key(th_ctx *ctx, unsigned char key[crypto_secretbox_KEYBYTES])
{
    const char *hex = th_ctx_config(ctx, KEY_CONFIG);
    if (!hex)
        return th__hfail(ctx, KEY_CONFIG ": not configured (64 hex digits)");
    size_t n = 0;
    size_t len = strlen(hex);
    if (len != 2 * crypto_secretbox_KEYBYTES ||
        sodium_hex2bin(key, crypto_secretbox_KEYBYTES, hex, len, NULL, &n, NULL) != 0 ||
        n != crypto_secretbox_KEYBYTES) {
        sodium_memzero(key, crypto_secretbox_KEYBYTES);
        return th__hfail(ctx, KEY_CONFIG ": must be 64 hex digits (a 32-byte key)");
    }
    return 0;
}

static void wipe_free(unsigned char *buf, size_t len)
{
    if (buf)
        sodium_memzero(buf, len);
    th__free(buf);
}

/*
 * Payload {"data" (text) | "data_base64"}. Result {"nonce_base64",
 * "ciphertext_base64"} where the ciphertext carries the 16-byte tag.
 */
int th_handler_encrypt(th_ctx *ctx, void *ud)
{
    (void)ud;
    static const char *const allowed[] = {"data", "data_base64", NULL};
    json_t *p = NULL;
    th__hinput in = {0};
    unsigned char key[crypto_secretbox_KEYBYTES];
    unsigned char nonce[crypto_secretbox_NONCEBYTES];
    unsigned char *box = NULL;
    int have_key = 0;
    int rc = th__payload_parse(ctx, allowed, &p);
    if (rc)
        return rc;
    if ((rc = th__payload_input(ctx, p, TH__INPUT_TEXT | TH__INPUT_BASE64, &in)) != 0 ||
        (rc = load_key(ctx, key)) != 0)
        goto done;
    have_key = 1;
    if (th__sodium_ready() != 0) {
        rc = th__hretry(ctx, "libsodium failed to initialise");
        goto done;
    }
    size_t box_len = in.len + crypto_secretbox_MACBYTES;
    if (!(box = th__malloc(box_len))) {
        rc = th__hnomem(ctx);
        goto done;
    }
    randombytes_buf(nonce, sizeof nonce);
    crypto_secretbox_easy(box, in.buf ? in.buf : (const unsigned char *)"", in.len, nonce, key);
    char *nonce64 = th__b64_encode(nonce, sizeof nonce);
    char *box64 = th__b64_encode(box, box_len);
    json_t *res = nonce64 && box64
                      ? json_pack("{s:s, s:s}", "nonce_base64", nonce64, "ciphertext_base64", box64)
                      : NULL;
    th__free(nonce64);
    th__free(box64);
    rc = th__hresult(ctx, res, TH_HANDLER_OK);
done:
    if (have_key)
        sodium_memzero(key, sizeof key);
    th__free(box);
    if (in.buf)
        sodium_memzero(in.buf, in.len);
    th__hinput_free(&in);
    json_decref(p);
    return rc;
}

/* Decodes base64 field `name` of `p` into *out (th__free) / *len. */
static int b64_field(th_ctx *ctx, json_t *p, const char *name, unsigned char **out, size_t *len)
{
    const char *s = NULL;
    size_t n = 0;
    int rc = th__payload_string(ctx, p, name, 1, &s, &n);
    if (rc)
        return rc;
    if (n / 4 * 3 > TH__HANDLER_MEM_MAX)
        return th__hfail(ctx, "payload.%s: larger than the %s limit", name,
                         TH__HANDLER_MEM_MAX_NAME);
    rc = th__b64_decode(s, n, out, len);
    if (rc == TH_ENOMEM)
        return th__hnomem(ctx);
    if (rc)
        return th__hfail(ctx, "payload.%s: not valid base64", name);
    return 0;
}

/*
 * Payload {"nonce_base64", "ciphertext_base64"} as encrypt returns them.
 * Result {"data_base64"} plus "data" (text) when the plaintext is valid
 * UTF-8. A ciphertext altered in any way, or made with another key, fails
 * permanently with "authentication failed".
 */
int th_handler_decrypt(th_ctx *ctx, void *ud)
{
    (void)ud;
    static const char *const allowed[] = {"nonce_base64", "ciphertext_base64", NULL};
    json_t *p = NULL;
    unsigned char *nonce = NULL, *box = NULL, *plain = NULL;
    size_t nonce_len = 0, box_len = 0, plain_len = 0;
    unsigned char key[crypto_secretbox_KEYBYTES];
    int have_key = 0;
    int rc = th__payload_parse(ctx, allowed, &p);
    if (rc)
        return rc;
    if ((rc = b64_field(ctx, p, "nonce_base64", &nonce, &nonce_len)) != 0)
        goto done;
    if (nonce_len != crypto_secretbox_NONCEBYTES) {
        rc = th__hfail(ctx, "payload.nonce_base64: must decode to %d bytes",
                       (int)crypto_secretbox_NONCEBYTES);
        goto done;
    }
    if ((rc = b64_field(ctx, p, "ciphertext_base64", &box, &box_len)) != 0)
        goto done;
    if (box_len < crypto_secretbox_MACBYTES) {
        rc = th__hfail(ctx, "payload.ciphertext_base64: shorter than the %d-byte tag",
                       (int)crypto_secretbox_MACBYTES);
        goto done;
    }
    if ((rc = load_key(ctx, key)) != 0)
        goto done;
    have_key = 1;
    if (th__sodium_ready() != 0) {
        rc = th__hretry(ctx, "libsodium failed to initialise");
        goto done;
    }
    plain_len = box_len - crypto_secretbox_MACBYTES;
    if (!(plain = th__malloc(plain_len))) {
        rc = th__hnomem(ctx);
        goto done;
    }
    if (crypto_secretbox_open_easy(plain, box, box_len, nonce, key) != 0) {
        rc = th__hfail(ctx, "authentication failed");
        goto done;
    }
    char *b64 = th__b64_encode(plain, plain_len);
    json_t *res = b64 ? json_pack("{s:s}", "data_base64", b64) : NULL;
    th__free(b64);
    if (res && th__utf8_valid(plain, plain_len)) {
        json_t *text = json_stringn(plain_len ? (const char *)plain : "", plain_len);
        if (!text || json_object_set_new(res, "data", text) != 0) {
            json_decref(res);
            res = NULL;
        }
    }
    rc = th__hresult(ctx, res, TH_HANDLER_OK);
done:
    if (have_key)
        sodium_memzero(key, sizeof key);
    wipe_free(plain, plain_len);
    th__free(nonce);
    th__free(box);
    json_decref(p);
    return rc;
}
