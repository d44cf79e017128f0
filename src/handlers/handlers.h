/*
 * Shared helpers of the built-in handlers (private): payload parsing that
 * refuses bad or unknown fields with a message naming the field, the
 * "data" / "data_base64" / "file" input convention, base64 and UTF-8
 * helpers, and result output.
 *
 * Conventions. Every helper that validates input returns 0 when the input is
 * good, otherwise it has already set the context's error ("payload.level:
 * must be an integer in 1..19") and returns the handler code to return:
 * TH_HANDLER_PERMANENT for bad input, TH_HANDLER_RETRY for a transient
 * failure such as running out of memory. Handlers therefore write
 *
 *     if ((rc = th__payload_int(ctx, p, "ms", 0, MAX, 1, &ms)) != 0)
 *         goto done;
 *
 * JSON values come from jansson and are released with json_decref; byte
 * buffers the helpers hand over are freed with th__free.
 */
#ifndef TH_HANDLERS_HANDLERS_H
#define TH_HANDLERS_HANDLERS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "taskhive/pool.h"

/* Largest amount of data a handler holds in memory: decoded inputs, and the
 * output of compress / decompress in their in-memory mode. */
#define TH__HANDLER_MEM_MAX ((size_t)64 << 20)
#define TH__HANDLER_MEM_MAX_NAME "64 MiB"

/* Chunk size for streamed files. */
#define TH__HANDLER_CHUNK ((size_t)64 << 10)

/* Sets the context's error (printf-style) and returns TH_HANDLER_PERMANENT. */
int th__hfail(th_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Sets the context's error (printf-style) and returns TH_HANDLER_RETRY. */
int th__hretry(th_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Sets the error "out of memory" and returns TH_HANDLER_RETRY. */
int th__hnomem(th_ctx *ctx);
/* Sets the error "cancelled" and returns TH_HANDLER_RETRY: what a handler
 * returns once th_ctx_cancelled says stop. */
int th__hcancelled(th_ctx *ctx);

/*
 * Parses the task payload into *out, a JSON object the caller releases with
 * json_decref. A payload of null counts as the empty object. Refuses a
 * payload that is not an object and any key not in `allowed` (a
 * NULL-terminated list) naming it: "payload.colour: unknown field".
 */
int th__payload_parse(th_ctx *ctx, const char *const *allowed, json_t **out);

/*
 * Reads string field `key` of `obj`: *out (borrowed from obj) and, when `len`
 * is not NULL, its length in bytes (which may include NUL bytes; without
 * `len` a string holding a NUL byte is refused). An absent field is refused
 * when `required`, otherwise leaves *out untouched.
 */
int th__payload_string(th_ctx *ctx, json_t *obj, const char *key, int required, const char **out,
                       size_t *len);

/* Reads integer field `key` in [min, max] into *out; absent as above. */
int th__payload_int(th_ctx *ctx, json_t *obj, const char *key, int64_t min, int64_t max,
                    int required, int64_t *out);

/* Reads string field `key`, which must be one of the NULL-terminated `names`;
 * *out receives its index. Absent leaves *out untouched. */
int th__payload_enum(th_ctx *ctx, json_t *obj, const char *key, const char *const *names, int *out);

/* Input bytes given as "data" (UTF-8 text), "data_base64" or "file". */
typedef struct th__hinput {
    unsigned char *buf; /* owned (th__free), or NULL for "file" */
    size_t len;
    const char *file;  /* borrowed from the payload, or NULL */
    const char *field; /* which of the fields was given */
} th__hinput;

enum {
    TH__INPUT_TEXT = 1,   /* "data" */
    TH__INPUT_BASE64 = 2, /* "data_base64" */
    TH__INPUT_FILE = 4,   /* "file" */
};

/*
 * Reads the input: exactly one of the fields in `accept` (TH__INPUT_* bits)
 * must be present. Decoded data larger than TH__HANDLER_MEM_MAX is refused.
 * Release with th__hinput_free.
 */
int th__payload_input(th_ctx *ctx, json_t *obj, int accept, th__hinput *in);
void th__hinput_free(th__hinput *in);

/* Base64 (standard alphabet, padded). Encode returns a NUL-terminated string
 * (th__free) or NULL when out of memory. Decode accepts whitespace and
 * returns 0, TH_EINVAL for malformed text or TH_ENOMEM; *out is th__free'd. */
char *th__b64_encode(const unsigned char *buf, size_t len);
int th__b64_decode(const char *text, size_t len, unsigned char **out, size_t *outlen);

/* 1 when s[0..n) is well-formed UTF-8 without NUL bytes. */
int th__utf8_valid(const unsigned char *s, size_t n);

/* A JSON string holding s[0..n) with every byte sequence that is not
 * well-formed UTF-8 (and every NUL) replaced by U+FFFD; NULL when out of
 * memory. */
json_t *th__json_text(const unsigned char *s, size_t n);

/* The same as a NUL-terminated string (th__free); NULL when out of memory. */
char *th__utf8_sanitize(const unsigned char *s, size_t n);

/* Sets the result to `obj` (released here; NULL counts as out of memory) and
 * returns `rc`, or TH_HANDLER_RETRY when the result could not be set. */
int th__hresult(th_ctx *ctx, json_t *obj, int rc);

/* Calls sodium_init once; 0 when libsodium is usable. */
int th__sodium_ready(void);

#endif
