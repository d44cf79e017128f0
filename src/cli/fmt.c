/*
 * Text helpers of the command line: durations, timestamps, clipping UTF-8 to a
 * width, progress bars, tolerant JSON member access and terminal size.
 */
#include "cli/cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

int64_t th__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void th__fmt_duration(int64_t ms, char *buf, size_t size)
{
    if (ms < 0) {
        snprintf(buf, size, "-");
        return;
    }
    int64_t s = ms / 1000;
    if (ms < 1000)
        snprintf(buf, size, "%lldms", (long long)ms);
    else if (s < 60)
        snprintf(buf, size, "%llds", (long long)s);
    else if (s < 3600)
        snprintf(buf, size, "%lldm", (long long)(s / 60));
    else if (s < 86400)
        snprintf(buf, size, "%lldh", (long long)(s / 3600));
    else
        snprintf(buf, size, "%lldd", (long long)(s / 86400));
}

void th__fmt_bytes(double bytes, char *buf, size_t size)
{
    static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
    if (!(bytes >= 0)) {
        snprintf(buf, size, "-");
        return;
    }
    if (bytes < 1024) {
        snprintf(buf, size, "%.0fB", bytes);
        return;
    }
    size_t u = 0;
    bytes /= 1024;
    while (bytes >= 1023.95 && u + 1 < sizeof units / sizeof units[0]) {
        bytes /= 1024;
        u++;
    }
    snprintf(buf, size, "%.1f%s", bytes, units[u]);
}

void th__fmt_time(int64_t ms, char *buf, size_t size)
{
    if (ms <= 0) {
        snprintf(buf, size, "-");
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!localtime_r(&t, &tm) || strftime(buf, size, "%Y-%m-%d %H:%M:%S", &tm) == 0)
        snprintf(buf, size, "%lld", (long long)ms);
}

size_t th__text_width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            w++;
    return w;
}

void th__fmt_clip(const char *s, size_t width, char *buf, size_t size)
{
    if (size == 0)
        return;
    size_t total = th__text_width(s);
    size_t keep = total <= width ? total : (width > 0 ? width - 1 : 0);
    size_t o = 0, cols = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        int start = (*p & 0xC0) != 0x80;
        if (start && cols == keep)
            break;
        if (o + 1 >= size)
            break;
        if (start)
            cols++;
        char c = (char)*p;
        if (c == '\n' || c == '\r' || c == '\t')
            c = ' ';
        else if ((unsigned char)c < 0x20)
            c = '?';
        buf[o++] = c;
    }
    /* Never leave half a UTF-8 sequence behind when the buffer was short. */
    while (o > 0 && ((unsigned char)buf[o - 1] & 0x80)) {
        size_t k = o - 1;
        while (k > 0 && ((unsigned char)buf[k] & 0xC0) == 0x80)
            k--;
        unsigned char lead = (unsigned char)buf[k];
        size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
        if (o - k >= need)
            break;
        o = k;
    }
    if (total > width && width > 0 && o + 3 < size) {
        memcpy(buf + o, "\xe2\x80\xa6", 3); /* … */
        o += 3;
    }
    buf[o] = '\0';
}

void th__fmt_bar(double percent, int width, char *buf, size_t size)
{
    if (width < 1 || size < (size_t)width + 3) {
        snprintf(buf, size, "%s", "");
        return;
    }
    if (!(percent >= 0))
        percent = 0;
    if (percent > 100)
        percent = 100;
    int full = (int)lround(percent * width / 100.0);
    size_t o = 0;
    buf[o++] = '[';
    for (int i = 0; i < width; i++)
        buf[o++] = i < full ? '#' : '-';
    buf[o++] = ']';
    buf[o] = '\0';
}

void th__fmt_json(const json_t *v, char *buf, size_t size)
{
    if (!v || json_is_null(v)) {
        snprintf(buf, size, "-");
        return;
    }
    if (json_is_string(v)) {
        snprintf(buf, size, "%s", json_string_value(v));
        return;
    }
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    snprintf(buf, size, "%s", s ? s : "?");
    free(s);
}

const char *th__jstr(const json_t *obj, const char *key)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

int64_t th__jint(const json_t *obj, const char *key)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    if (json_is_real(v))
        return (int64_t)json_real_value(v);
    return 0;
}

double th__jnum(const json_t *obj, const char *key)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    return json_is_number(v) ? json_number_value(v) : 0;
}

int th__jbool(const json_t *obj, const char *key)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    return json_is_true(v) || (json_is_integer(v) && json_integer_value(v) != 0);
}

void th__print_json(FILE *f, const json_t *v)
{
    char *s = json_dumps(v, JSON_INDENT(2) | JSON_ENCODE_ANY);
    if (s) {
        fputs(s, f);
        fputc('\n', f);
        free(s);
    }
}

int th__term_cols(void)
{
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    return 80;
}

int th__term_rows(void)
{
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0)
        return ws.ws_row;
    return 24;
}

int th__state_final(const char *state)
{
    static const char *const finals[] = {"completed", "failed", "cancelled", "timeout", "expired"};
    if (!state)
        return 0;
    for (size_t i = 0; i < sizeof finals / sizeof finals[0]; i++)
        if (strcmp(state, finals[i]) == 0)
            return 1;
    return 0;
}
