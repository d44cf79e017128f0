/*
 * The compress and decompress handlers: zstd or zlib, over data carried in
 * the payload (in memory, output bounded by TH__HANDLER_MEM_MAX) or from an
 * input file to an output file (streamed in 64 KiB chunks; the output is
 * written to a temporary file beside it and renamed into place on success,
 * so a failed or cancelled run never leaves a partial output).
 */
#include "handlers/handlers.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ZLIB_CONST
#include <zlib.h>
#include <zstd.h>

#include "core/alloc.h"

enum { ALG_ZSTD = 0, ALG_ZLIB = 1 };
static const char *const alg_names[] = {"zstd", "zlib", NULL};

#define ZSTD_LEVEL_MAX 19
#define ZSTD_LEVEL_DEFAULT 3
#define ZLIB_LEVEL_MAX 9
#define ZLIB_LEVEL_DEFAULT 6

/* Where the bytes come from: memory (fd < 0) or a file. */
typedef struct source {
    const unsigned char *mem;
    size_t len, pos;
    int fd;
    const char *path;
    unsigned char *buf; /* file chunk buffer */
    uint64_t total;     /* bytes handed out so far */
    uint64_t size;      /* file size for progress; 0 when unknown */
    int last_pct;
} source;

/* Where they go: a growing buffer (fd < 0) or a file. */
typedef struct sink {
    unsigned char *buf; /* th__free */
    size_t len, cap;
    int fd;
    const char *path; /* the final path, for messages */
    uint64_t total;
} sink;

/* The next chunk of input in *ptr / *n; *n == 0 at the end. */
static int source_next(th_ctx *ctx, source *s, const unsigned char **ptr, size_t *n)
{
    if (s->fd < 0) {
        size_t left = s->len - s->pos;
        *n = left < TH__HANDLER_CHUNK ? left : TH__HANDLER_CHUNK;
        *ptr = s->mem + s->pos;
        s->pos += *n;
        s->total += *n;
        return 0;
    }
    ssize_t r;
    do
        r = read(s->fd, s->buf, TH__HANDLER_CHUNK);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return th__hretry(ctx, "payload.input: cannot read \"%s\": %s", s->path, strerror(errno));
    *ptr = s->buf;
    *n = (size_t)r;
    s->total += (uint64_t)r;
    if (s->size) {
        int pct = s->total >= s->size ? 100 : (int)(s->total * 100 / s->size);
        if (pct != s->last_pct) {
            th_ctx_progress(ctx, pct, 0, 0, NULL);
            s->last_pct = pct;
        }
    }
    return 0;
}

static int sink_write(th_ctx *ctx, sink *k, const unsigned char *p, size_t n)
{
    if (!n)
        return 0;
    if (k->fd >= 0) {
        while (n) {
            ssize_t w = write(k->fd, p, n);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0)
                return th__hretry(ctx, "payload.output: cannot write \"%s\": %s", k->path,
                                  strerror(errno));
            p += w;
            n -= (size_t)w;
            k->total += (uint64_t)w;
        }
        return 0;
    }
    if (n > TH__HANDLER_MEM_MAX - k->len)
        return th__hfail(ctx,
                         "output exceeds the in-memory limit of %s; use \"input\" and "
                         "\"output\" files",
                         TH__HANDLER_MEM_MAX_NAME);
    if (k->len + n > k->cap) {
        size_t cap = k->cap ? k->cap : TH__HANDLER_CHUNK;
        while (cap < k->len + n)
            cap *= 2;
        if (cap > TH__HANDLER_MEM_MAX)
            cap = TH__HANDLER_MEM_MAX;
        unsigned char *nb = th__realloc(k->buf, cap);
        if (!nb)
            return th__hnomem(ctx);
        k->buf = nb;
        k->cap = cap;
    }
    memcpy(k->buf + k->len, p, n);
    k->len += n;
    k->total += n;
    return 0;
}

/* ---- the four codecs ---------------------------------------------------- */

static int zstd_compress(th_ctx *ctx, source *src, sink *dst, int level, unsigned char *obuf)
{
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    if (!cc)
        return th__hnomem(ctx);
    int rc = 0;
    ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 1);
    if (src->fd < 0)
        ZSTD_CCtx_setPledgedSrcSize(cc, src->len);
    for (;;) {
        const unsigned char *ip;
        size_t n;
        if ((rc = source_next(ctx, src, &ip, &n)) != 0)
            break;
        ZSTD_EndDirective mode = n == 0 ? ZSTD_e_end : ZSTD_e_continue;
        ZSTD_inBuffer in = {ip, n, 0};
        int finished;
        do {
            if (th_ctx_cancelled(ctx)) {
                rc = th__hcancelled(ctx);
                goto done;
            }
            ZSTD_outBuffer out = {obuf, TH__HANDLER_CHUNK, 0};
            size_t r = ZSTD_compressStream2(cc, &out, &in, mode);
            if (ZSTD_isError(r)) {
                rc = th__hretry(ctx, "cannot compress: zstd: %s", ZSTD_getErrorName(r));
                goto done;
            }
            if ((rc = sink_write(ctx, dst, obuf, out.pos)) != 0)
                goto done;
            finished = mode == ZSTD_e_end ? r == 0 : in.pos == in.size;
        } while (!finished);
        if (n == 0)
            break;
    }
done:
    ZSTD_freeCCtx(cc);
    return rc;
}

static int zstd_decompress(th_ctx *ctx, source *src, sink *dst, unsigned char *obuf)
{
    ZSTD_DCtx *dc = ZSTD_createDCtx();
    if (!dc)
        return th__hnomem(ctx);
    int rc = 0, any = 0;
    size_t last = 0; /* 0: at a frame boundary */
    for (;;) {
        const unsigned char *ip;
        size_t n;
        if ((rc = source_next(ctx, src, &ip, &n)) != 0)
            goto done;
        if (n == 0)
            break;
        any = 1;
        ZSTD_inBuffer in = {ip, n, 0};
        for (;;) {
            if (th_ctx_cancelled(ctx)) {
                rc = th__hcancelled(ctx);
                goto done;
            }
            ZSTD_outBuffer out = {obuf, TH__HANDLER_CHUNK, 0};
            size_t r = ZSTD_decompressStream(dc, &out, &in);
            if (ZSTD_isError(r)) {
                rc = th__hfail(ctx, "cannot decompress: zstd: %s", ZSTD_getErrorName(r));
                goto done;
            }
            if ((rc = sink_write(ctx, dst, obuf, out.pos)) != 0)
                goto done;
            last = r;
            /* Input used up: done once the frame is complete or a call
             * produces nothing more. */
            if (in.pos == in.size && (r == 0 || out.pos == 0))
                break;
        }
    }
    if (!any)
        rc = th__hfail(ctx, "cannot decompress: zstd: the input is empty");
    else if (last != 0)
        rc = th__hfail(ctx, "cannot decompress: zstd: the input is truncated");
done:
    ZSTD_freeDCtx(dc);
    return rc;
}

static int zlib_compress(th_ctx *ctx, source *src, sink *dst, int level, unsigned char *obuf)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    int zr = deflateInit(&zs, level);
    if (zr != Z_OK)
        return zr == Z_MEM_ERROR ? th__hnomem(ctx)
                                 : th__hretry(ctx, "cannot compress: zlib: %s", zError(zr));
    int rc = 0;
    for (;;) {
        const unsigned char *ip;
        size_t n;
        if ((rc = source_next(ctx, src, &ip, &n)) != 0)
            break;
        int flush = n == 0 ? Z_FINISH : Z_NO_FLUSH;
        zs.next_in = ip;
        zs.avail_in = (uInt)n;
        do {
            if (th_ctx_cancelled(ctx)) {
                rc = th__hcancelled(ctx);
                goto done;
            }
            zs.next_out = obuf;
            zs.avail_out = (uInt)TH__HANDLER_CHUNK;
            zr = deflate(&zs, flush);
            if (zr == Z_STREAM_ERROR) {
                rc = th__hretry(ctx, "cannot compress: zlib: %s", zError(zr));
                goto done;
            }
            if ((rc = sink_write(ctx, dst, obuf, TH__HANDLER_CHUNK - zs.avail_out)) != 0)
                goto done;
        } while (zs.avail_out == 0);
        if (flush == Z_FINISH)
            break;
    }
done:
    deflateEnd(&zs);
    return rc;
}

static int zlib_decompress(th_ctx *ctx, source *src, sink *dst, unsigned char *obuf)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    /* 15 + 32: the zlib format, and gzip too (detected by its header). */
    int zr = inflateInit2(&zs, 15 + 32);
    if (zr != Z_OK)
        return zr == Z_MEM_ERROR ? th__hnomem(ctx)
                                 : th__hretry(ctx, "cannot decompress: zlib: %s", zError(zr));
    int rc = 0, any = 0, ended = 0;
    for (;;) {
        const unsigned char *ip;
        size_t n;
        if ((rc = source_next(ctx, src, &ip, &n)) != 0)
            goto done;
        if (n == 0)
            break;
        if (ended) {
            rc = th__hfail(ctx, "cannot decompress: zlib: trailing data after the stream");
            goto done;
        }
        any = 1;
        zs.next_in = ip;
        zs.avail_in = (uInt)n;
        do {
            if (th_ctx_cancelled(ctx)) {
                rc = th__hcancelled(ctx);
                goto done;
            }
            zs.next_out = obuf;
            zs.avail_out = (uInt)TH__HANDLER_CHUNK;
            zr = inflate(&zs, Z_NO_FLUSH);
            if (zr == Z_MEM_ERROR) {
                rc = th__hnomem(ctx);
                goto done;
            }
            if (zr == Z_NEED_DICT || zr == Z_DATA_ERROR || zr == Z_STREAM_ERROR) {
                const char *msg = zr == Z_NEED_DICT ? "a preset dictionary is needed"
                                  : zs.msg          ? zs.msg
                                                    : zError(zr);
                rc = th__hfail(ctx, "cannot decompress: zlib: %s", msg);
                goto done;
            }
            if ((rc = sink_write(ctx, dst, obuf, TH__HANDLER_CHUNK - zs.avail_out)) != 0)
                goto done;
            if (zr == Z_STREAM_END) {
                ended = 1;
                break;
            }
        } while (zs.avail_out == 0);
        if (ended && zs.avail_in > 0) {
            rc = th__hfail(ctx, "cannot decompress: zlib: trailing data after the stream");
            goto done;
        }
    }
    if (!any)
        rc = th__hfail(ctx, "cannot decompress: zlib: the input is empty");
    else if (!ended)
        rc = th__hfail(ctx, "cannot decompress: zlib: the input is truncated");
done:
    inflateEnd(&zs);
    return rc;
}

static int run_codec(th_ctx *ctx, int alg, int decompress, int level, source *src, sink *dst)
{
    unsigned char *obuf = th__malloc(TH__HANDLER_CHUNK);
    if (!obuf)
        return th__hnomem(ctx);
    int rc;
    if (alg == ALG_ZSTD)
        rc = decompress ? zstd_decompress(ctx, src, dst, obuf)
                        : zstd_compress(ctx, src, dst, level, obuf);
    else
        rc = decompress ? zlib_decompress(ctx, src, dst, obuf)
                        : zlib_compress(ctx, src, dst, level, obuf);
    th__free(obuf);
    return rc;
}

/* ---- file mode ---------------------------------------------------------- */

static atomic_uint tmp_counter;

/* Opens a fresh temporary file beside `path`; *tmp_out receives its name
 * (th__free). */
static int open_tmp(th_ctx *ctx, const char *path, char **tmp_out)
{
    size_t size = strlen(path) + 64;
    char *tmp = th__malloc(size);
    if (!tmp)
        return th__hnomem(ctx);
    for (int attempt = 0; attempt < 100; attempt++) {
        snprintf(tmp, size, "%s.tmp-%ld-%u", path, (long)getpid(),
                 atomic_fetch_add(&tmp_counter, 1));
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0666);
        if (fd >= 0) {
            *tmp_out = tmp;
            return fd;
        }
        if (errno == EEXIST)
            continue;
        int e = errno;
        th__free(tmp);
        if (e == ENOENT || e == ENOTDIR || e == EACCES || e == EROFS || e == ENAMETOOLONG ||
            e == ELOOP)
            return -th__hfail(ctx, "payload.output: cannot create \"%s\": %s", path, strerror(e));
        return -th__hretry(ctx, "payload.output: cannot create \"%s\": %s", path, strerror(e));
    }
    th__free(tmp);
    return -th__hretry(ctx, "payload.output: cannot create a temporary file beside \"%s\"", path);
}

static int run_files(th_ctx *ctx, int alg, int decompress, int level, const char *input,
                     const char *output)
{
    source src = {.fd = -1, .path = input, .last_pct = -1};
    sink dst = {.fd = -1, .path = output};
    char *tmp = NULL;
    int rc = 0;
    src.fd = open(input, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (src.fd < 0) {
        int e = errno;
        if (e == ENOENT || e == ENOTDIR || e == EACCES || e == ELOOP || e == ENAMETOOLONG)
            return th__hfail(ctx, "payload.input: cannot open \"%s\": %s", input, strerror(e));
        return th__hretry(ctx, "payload.input: cannot open \"%s\": %s", input, strerror(e));
    }
    struct stat st;
    if (fstat(src.fd, &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            rc = th__hfail(ctx, "payload.input: \"%s\" is a directory", input);
            goto done;
        }
        if (S_ISREG(st.st_mode))
            src.size = (uint64_t)st.st_size;
    }
    if (!(src.buf = th__malloc(TH__HANDLER_CHUNK))) {
        rc = th__hnomem(ctx);
        goto done;
    }
    int fd = open_tmp(ctx, output, &tmp);
    if (fd < 0) {
        rc = -fd;
        goto done;
    }
    dst.fd = fd;
    if ((rc = run_codec(ctx, alg, decompress, level, &src, &dst)) != 0)
        goto done;
    if (fsync(dst.fd) != 0 || close(dst.fd) != 0) {
        dst.fd = -1;
        rc = th__hretry(ctx, "payload.output: cannot write \"%s\": %s", output, strerror(errno));
        goto done;
    }
    dst.fd = -1;
    if (rename(tmp, output) != 0) {
        int e = errno;
        if (e == EISDIR || e == ENOTDIR || e == EACCES || e == EROFS || e == EPERM)
            rc = th__hfail(ctx, "payload.output: cannot replace \"%s\": %s", output, strerror(e));
        else
            rc = th__hretry(ctx, "payload.output: cannot replace \"%s\": %s", output, strerror(e));
        goto done;
    }
    th__free(tmp);
    tmp = NULL;
    rc = th__hresult(ctx,
                     json_pack("{s:s, s:s, s:I, s:I}", "algorithm", alg_names[alg], "output",
                               output, "bytes_in", (json_int_t)src.total, "bytes_out",
                               (json_int_t)dst.total),
                     TH_HANDLER_OK);
done:
    if (dst.fd >= 0)
        close(dst.fd);
    if (tmp) {
        unlink(tmp);
        th__free(tmp);
    }
    th__free(src.buf);
    close(src.fd);
    return rc;
}

/* ---- memory mode -------------------------------------------------------- */

static int run_memory(th_ctx *ctx, int alg, int decompress, int level, const th__hinput *in)
{
    source src = {.mem = in->buf, .len = in->len, .fd = -1, .last_pct = -1};
    sink dst = {.fd = -1};
    int rc = run_codec(ctx, alg, decompress, level, &src, &dst);
    if (rc) {
        th__free(dst.buf);
        return rc;
    }
    char *b64 = th__b64_encode(dst.buf ? dst.buf : (const unsigned char *)"", dst.len);
    json_t *res =
        b64 ? json_pack("{s:s, s:s, s:I, s:I}", "algorithm", alg_names[alg], "data_base64", b64,
                        "bytes_in", (json_int_t)in->len, "bytes_out", (json_int_t)dst.len)
            : NULL;
    th__free(b64);
    if (res && decompress && th__utf8_valid(dst.buf, dst.len)) {
        json_t *text = json_stringn(dst.len ? (const char *)dst.buf : "", dst.len);
        if (!text || json_object_set_new(res, "data", text) != 0) {
            json_decref(res);
            res = NULL;
        }
    }
    th__free(dst.buf);
    return th__hresult(ctx, res, TH_HANDLER_OK);
}

/* ---- the handlers ------------------------------------------------------- */

static int run(th_ctx *ctx, int decompress)
{
    static const char *const allowed_c[] = {"algorithm", "level",  "data", "data_base64",
                                            "input",     "output", NULL};
    static const char *const allowed_d[] = {"algorithm", "data",   "data_base64",
                                            "input",     "output", NULL};
    json_t *p = NULL;
    th__hinput in = {0};
    int alg = ALG_ZSTD;
    int rc = th__payload_parse(ctx, decompress ? allowed_d : allowed_c, &p);
    if (rc)
        return rc;
    if ((rc = th__payload_enum(ctx, p, "algorithm", alg_names, &alg)) != 0)
        goto done;
    int64_t level = alg == ALG_ZSTD ? ZSTD_LEVEL_DEFAULT : ZLIB_LEVEL_DEFAULT;
    if (!decompress &&
        (rc = th__payload_int(ctx, p, "level", 1, alg == ALG_ZSTD ? ZSTD_LEVEL_MAX : ZLIB_LEVEL_MAX,
                              0, &level)) != 0)
        goto done;
    if (decompress && json_object_get(p, "data")) {
        rc = th__hfail(ctx, "payload.data: compressed input is binary; give \"data_base64\"");
        goto done;
    }
    int has_in = json_object_get(p, "input") != NULL;
    int has_out = json_object_get(p, "output") != NULL;
    if (has_in || has_out) {
        const char *input = NULL, *output = NULL;
        if (json_object_get(p, "data") || json_object_get(p, "data_base64")) {
            rc = th__hfail(ctx, "payload.input: give either \"input\" and \"output\" or %s",
                           decompress ? "\"data_base64\"" : "\"data\" or \"data_base64\"");
            goto done;
        }
        if ((rc = th__payload_string(ctx, p, "input", 1, &input, NULL)) != 0 ||
            (rc = th__payload_string(ctx, p, "output", 1, &output, NULL)) != 0)
            goto done;
        if (!*input) {
            rc = th__hfail(ctx, "payload.input: must not be empty");
            goto done;
        }
        if (!*output) {
            rc = th__hfail(ctx, "payload.output: must not be empty");
            goto done;
        }
        rc = run_files(ctx, alg, decompress, (int)level, input, output);
    } else {
        int accept = decompress ? TH__INPUT_BASE64 : TH__INPUT_TEXT | TH__INPUT_BASE64;
        if ((rc = th__payload_input(ctx, p, accept, &in)) != 0)
            goto done;
        rc = run_memory(ctx, alg, decompress, (int)level, &in);
    }
done:
    th__hinput_free(&in);
    json_decref(p);
    return rc;
}

/*
 * Payload {"algorithm": "zstd" | "zlib" (default zstd), "level" (zstd 1..19,
 * default 3; zlib 1..9, default 6), and either "data" / "data_base64" or
 * "input" + "output" file paths}. Result {"algorithm", "data_base64",
 * "bytes_in", "bytes_out"} or, for files, {"algorithm", "output",
 * "bytes_in", "bytes_out"}. zstd frames carry a checksum; zlib output uses
 * the zlib format (RFC 1950).
 */
int th_handler_compress(th_ctx *ctx, void *ud)
{
    (void)ud;
    return run(ctx, 0);
}

/*
 * Payload {"algorithm": "zstd" | "zlib" (default zstd), and either
 * "data_base64" or "input" + "output"}. zlib also accepts gzip input.
 * Result as for compress, with "data" (text) beside "data_base64" when the
 * output is valid UTF-8. Corrupt or truncated input fails permanently with
 * the library's message.
 */
int th_handler_decompress(th_ctx *ctx, void *ud)
{
    (void)ud;
    return run(ctx, 1);
}
