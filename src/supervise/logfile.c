/*
 * Service logs: the children's stdout and stderr arrive through pipes read
 * by the loop, are cut into lines and written, each with a UTC time stamp
 * and its stream, to <log_dir>/<name>.log:
 *
 *   2026-11-23T17:00:00.123Z stdout listening on :8080
 *
 * Instances of a multi-instance service share the file; their streams read
 * "stdout[2]". The supervisor's own notes (start, exit, restart reasons) use
 * the stream "supervisor". A line longer than SV_LINE_MAX is split.
 *
 * Rotation is by size: when a line would take the file past log_max_bytes,
 * <name>.log.(k) becomes .(k+1) for k = keep-1 .. 1 (the rename over .keep
 * drops the oldest), <name>.log becomes .1, and a fresh file starts. With
 * log_keep 0 the file is simply started again.
 */
#include "supervise/sv_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"

#define READ_CHUNK 65536

static void stamp(char *buf, size_t n)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(buf, n, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ts.tv_nsec / 1000000) % 1000);
}

static int log_open(sv_service *s, int flags)
{
    if (s->log_fd >= 0)
        return 0;
    if (!s->log_path) {
        size_t n = strlen(s->sv->log_dir) + strlen(s->spec.name) + 8;
        if (!(s->log_path = th__malloc(n)))
            return -1;
        snprintf(s->log_path, n, "%s/%s.log", s->sv->log_dir, s->spec.name);
    }
    s->log_fd = open(s->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | flags, 0644);
    if (s->log_fd < 0)
        return -1;
    struct stat st;
    s->log_size = fstat(s->log_fd, &st) == 0 ? (size_t)st.st_size : 0;
    return 0;
}

void th__sv_log_close(sv_service *s)
{
    if (s->log_fd >= 0)
        close(s->log_fd);
    s->log_fd = -1;
}

static void rotate(sv_service *s)
{
    th__sv_log_close(s);
    size_t n = strlen(s->log_path) + 16;
    char from[4200], to[4200];
    if (n > sizeof from)
        return;
    for (int k = s->spec.log_keep - 1; k >= 1; k--) {
        snprintf(from, sizeof from, "%s.%d", s->log_path, k);
        snprintf(to, sizeof to, "%s.%d", s->log_path, k + 1);
        if (rename(from, to) != 0 && errno != ENOENT)
            break;
    }
    if (s->spec.log_keep > 0) {
        snprintf(to, sizeof to, "%s.1", s->log_path);
        rename(s->log_path, to);
    }
    if (log_open(s, O_TRUNC) == 0) {
        th_supervisor_event ev = {.type = TH_SEV_LOG_ROTATED,
                                  .service = s->spec.name,
                                  .instance = -1,
                                  .exit_code = -1,
                                  .message = s->log_path};
        th__sv_emit(s->sv, &ev);
    }
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return; /* disk full or the like: the line is lost, the service is not */
        p += k;
        n -= (size_t)k;
    }
}

void th__sv_log(sv_service *s, const char *stream, const char *text, size_t len)
{
    if (log_open(s, 0) != 0)
        return;
    char line[SV_LINE_MAX + 96];
    char ts[96];
    stamp(ts, sizeof ts);
    if (len > SV_LINE_MAX)
        len = SV_LINE_MAX;
    int head = snprintf(line, sizeof line, "%s %s ", ts, stream);
    if (head < 0 || (size_t)head + len + 1 > sizeof line)
        return;
    memcpy(line + head, text, len);
    size_t total = (size_t)head + len;
    line[total++] = '\n';
    if (s->log_size > 0 && s->log_size + total > s->spec.log_max_bytes) {
        rotate(s);
        if (s->log_fd < 0)
            return;
    }
    write_all(s->log_fd, line, total);
    s->log_size += total;
}

void th__sv_logf(sv_service *s, const sv_inst *in, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof text)
        n = (int)sizeof text - 1;
    char stream[32];
    if (in && s->spec.instances > 1)
        snprintf(stream, sizeof stream, "supervisor[%d]", in->index);
    else
        snprintf(stream, sizeof stream, "supervisor");
    th__sv_log(s, stream, text, (size_t)n);
}

/* ---- pipes ------------------------------------------------------------------- */

static void feed(sv_pipe *p, const char *data, size_t n)
{
    sv_service *s = p->inst->svc;
    while (n) {
        const char *nl = memchr(data, '\n', n);
        size_t take = nl ? (size_t)(nl - data) : n;
        if (take > SV_LINE_MAX - p->n)
            take = SV_LINE_MAX - p->n;
        memcpy(p->buf + p->n, data, take);
        p->n += take;
        data += take;
        n -= take;
        int end = n && *data == '\n';
        if (end || p->n == SV_LINE_MAX) {
            th__sv_log(s, p->stream, p->buf, p->n);
            p->n = 0;
        }
        if (end) {
            data++;
            n--;
        }
    }
}

static void close_fd(sv_pipe *p)
{
    if (p->n) {
        th__sv_log(p->inst->svc, p->stream, p->buf, p->n);
        p->n = 0;
    }
    if (p->ev)
        event_free(p->ev);
    p->ev = NULL;
    if (p->fd >= 0)
        close(p->fd);
    p->fd = -1;
    th__free(p->buf);
    p->buf = NULL;
}

/* Reads one chunk; returns 1 while the pipe stays open. */
static int read_some(sv_pipe *p)
{
    char chunk[READ_CHUNK];
    ssize_t k = read(p->fd, chunk, sizeof chunk);
    if (k > 0) {
        feed(p, chunk, (size_t)k);
        return 1;
    }
    if (k < 0 && errno == EINTR)
        return 1;
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 0;
    close_fd(p); /* EOF or error */
    return -1;
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    read_some(arg);
}

int th__sv_pipe_open(sv_pipe *p, sv_inst *in, int fd, const char *stream)
{
    p->inst = in;
    p->fd = fd;
    p->n = 0;
    if (in->svc->spec.instances > 1)
        snprintf(p->stream, sizeof p->stream, "%s[%d]", stream, in->index);
    else
        snprintf(p->stream, sizeof p->stream, "%s", stream);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    p->buf = th__malloc(SV_LINE_MAX);
    p->ev = p->buf ? event_new(in->svc->sv->base, fd, EV_READ | EV_PERSIST, on_readable, p) : NULL;
    if (!p->ev || event_add(p->ev, NULL) != 0) {
        close_fd(p);
        return -1;
    }
    return 0;
}

void th__sv_pipe_close(sv_pipe *p)
{
    if (p->fd < 0)
        return;
    /* Bounded: what the exited process wrote is in the pipe already; a
     * leftover writer (killed with its group) must not hold the loop. */
    for (int i = 0; i < 64 && p->fd >= 0; i++)
        if (read_some(p) <= 0)
            break;
    if (p->fd >= 0)
        close_fd(p);
}
