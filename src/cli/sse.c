/*
 * The event-stream reader: follows GET /v1/events (Server-Sent Events) with a
 * libcurl multi handle, parses "id:", "event:" and "data:" lines in the write
 * callback, and hands complete events to the caller from the loop (never from
 * inside libcurl, so callbacks may make other requests). A dropped
 * connection is reopened with Last-Event-ID after a backoff; silence longer
 * than three keepalive periods counts as a drop.
 */
#include "cli/cli.h"

#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#define CONNECT_TIMEOUT_MS 5000L
#define SILENCE_LIMIT_S 45L /* the server sends ": keepalive" every 15 s */
#define BACKOFF_MIN_MS 250
#define BACKOFF_MAX_MS 5000
#define MAX_PENDING 100000 /* parsed events waiting for dispatch */

volatile int th__sse_stop;

typedef struct pending_event {
    char *id, *type, *data;
} pending_event;

typedef struct sse_state {
    th__sbuf line;     /* the line being read */
    th__sbuf data;     /* data lines of the event being read */
    th__sbuf type;     /* its "event:" field */
    th__sbuf id;       /* its "id:" field */
    int has_id;        /* it had an "id:" field */
    int cr;            /* the last byte was '\r' (a following '\n' is part of it) */
    char last_id[128]; /* id of the last event dispatched */
    long retry_ms;     /* from a "retry:" field; 0 = ours */
    int overflow;      /* a line or the queue went over its limit */
    int headers_done;  /* the header block ended */
    int open_pending;  /* HTTP 200 seen; on_open not yet called */
    long status;       /* HTTP status of this connection */
    th__sbuf errbody;  /* body of a non-200 answer */
    pending_event *queue;
    size_t nqueue, capqueue;
} sse_state;

static void reset_event(sse_state *s)
{
    s->data.len = s->type.len = s->id.len = 0;
    if (s->data.data)
        s->data.data[0] = '\0';
    if (s->type.data)
        s->type.data[0] = '\0';
    if (s->id.data)
        s->id.data[0] = '\0';
    s->has_id = 0;
}

static char *dup_str(const th__sbuf *b)
{
    return strdup(th__sbuf_str(b));
}

/* An empty line: queue the event being read, if it carried anything. */
static void end_event(sse_state *s)
{
    if (s->has_id && s->id.len < sizeof s->last_id)
        memcpy(s->last_id, th__sbuf_str(&s->id), s->id.len + 1);
    if (s->data.len == 0 && s->type.len == 0) {
        reset_event(s);
        return;
    }
    if (s->data.len > 0 && s->data.data[s->data.len - 1] == '\n')
        s->data.data[--s->data.len] = '\0';
    if (s->nqueue == s->capqueue) {
        size_t cap = s->capqueue ? s->capqueue * 2 : 16;
        pending_event *q = cap <= MAX_PENDING ? realloc(s->queue, cap * sizeof *q) : NULL;
        if (!q) {
            s->overflow = 1;
            reset_event(s);
            return;
        }
        s->queue = q;
        s->capqueue = cap;
    }
    pending_event *e = &s->queue[s->nqueue];
    e->id = strdup(s->has_id ? th__sbuf_str(&s->id) : s->last_id);
    e->type = s->type.len ? dup_str(&s->type) : strdup("message");
    e->data = dup_str(&s->data);
    if (!e->id || !e->type || !e->data) {
        free(e->id);
        free(e->type);
        free(e->data);
        s->overflow = 1;
    } else {
        s->nqueue++;
    }
    reset_event(s);
}

/* One complete line (without its end). */
static void on_line(sse_state *s, const char *line, size_t n)
{
    if (n == 0) {
        end_event(s);
        return;
    }
    if (line[0] == ':')
        return; /* a comment: the keepalive */
    const char *colon = memchr(line, ':', n);
    size_t fn = colon ? (size_t)(colon - line) : n;
    const char *val = colon ? colon + 1 : line + n;
    size_t vn = (size_t)(line + n - val);
    if (vn > 0 && val[0] == ' ') {
        val++;
        vn--;
    }
    if (fn == 4 && memcmp(line, "data", 4) == 0) {
        th__sbuf_add(&s->data, val, vn);
        th__sbuf_add(&s->data, "\n", 1);
    } else if (fn == 5 && memcmp(line, "event", 5) == 0) {
        s->type.len = 0;
        th__sbuf_add(&s->type, val, vn);
    } else if (fn == 2 && memcmp(line, "id", 2) == 0) {
        if (!memchr(val, '\0', vn)) {
            s->id.len = 0;
            th__sbuf_add(&s->id, val, vn);
            s->has_id = 1;
        }
    } else if (fn == 5 && memcmp(line, "retry", 5) == 0) {
        long ms = 0;
        size_t i = 0;
        for (; i < vn && val[i] >= '0' && val[i] <= '9' && ms < 3600000; i++)
            ms = ms * 10 + (val[i] - '0');
        if (i == vn && vn > 0)
            s->retry_ms = ms;
    }
    if (s->data.failed || s->type.failed || s->id.failed)
        s->overflow = 1;
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
    sse_state *s = ud;
    size_t n = size * nmemb;
    if (s->status != 200)
        return th__sbuf_add(&s->errbody, ptr, n) == 0 ? n : 0;
    for (size_t i = 0; i < n; i++) {
        char c = ptr[i];
        if (c == '\n' && s->cr) {
            s->cr = 0;
            continue;
        }
        s->cr = c == '\r';
        if (c == '\n' || c == '\r') {
            on_line(s, th__sbuf_str(&s->line), s->line.len);
            s->line.len = 0;
        } else if (th__sbuf_add(&s->line, &c, 1) != 0) {
            s->overflow = 1;
        }
        if (s->overflow)
            return 0; /* aborts the transfer: treated as a drop */
    }
    return n;
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *ud)
{
    sse_state *s = ud;
    size_t n = size * nmemb;
    if (n >= 5 && memcmp(ptr, "HTTP/", 5) == 0) {
        /* A status line; "HTTP/1.1 200 OK". */
        const char *sp = memchr(ptr, ' ', n);
        s->status = 0;
        for (const char *p = sp ? sp + 1 : ptr + n; p < ptr + n && *p >= '0' && *p <= '9'; p++)
            s->status = s->status * 10 + (*p - '0');
        s->headers_done = 0;
    } else if ((n == 2 && ptr[0] == '\r' && ptr[1] == '\n') || (n == 1 && ptr[0] == '\n')) {
        s->headers_done = 1;
        if (s->status == 200)
            s->open_pending = 1;
    }
    return n;
}

static void free_queue(sse_state *s)
{
    for (size_t i = 0; i < s->nqueue; i++) {
        free(s->queue[i].id);
        free(s->queue[i].type);
        free(s->queue[i].data);
    }
    s->nqueue = 0;
}

/* Hands queued events to the handler; returns its stop value or TH_SSE_CONTINUE. */
static int dispatch(sse_state *s, const th__sse_handler *h, int *connected_before)
{
    int rc = TH_SSE_CONTINUE;
    if (s->open_pending) {
        s->open_pending = 0;
        if (h->on_open)
            rc = h->on_open(h->ud, *connected_before);
        *connected_before = 1;
    }
    size_t i = 0;
    for (; i < s->nqueue && rc < 0; i++) {
        pending_event *e = &s->queue[i];
        th__sse_event ev = {e->id, e->type, e->data, NULL};
        ev.json = json_loads(e->data, JSON_DECODE_ANY, NULL);
        if (h->on_event)
            rc = h->on_event(h->ud, &ev);
        json_decref(ev.json);
    }
    free_queue(s);
    return rc;
}

/* When the daemon started, from GET /v1/stats (engine uptime); 0 if unknown.
 * Event numbers restart with the daemon, so a Last-Event-ID from before a
 * restart would skip the new daemon's first events: comparing start times
 * tells a restart from a dropped connection. */
static int64_t daemon_start(th__cli *cli)
{
    json_t *st = NULL;
    int quiet = cli->quiet;
    cli->quiet = 1;
    int rc = th__http(cli, "GET", "/v1/stats", NULL, &st, NULL);
    cli->quiet = quiet;
    json_t *eng = json_object_get(st, "engine");
    json_t *up = json_object_get(eng, "uptime");
    if (!up)
        up = json_object_get(eng, "uptime_ms");
    int64_t start =
        rc == 0 && json_is_number(up) ? th__now_ms() - (int64_t)json_number_value(up) : 0;
    json_decref(st);
    return start;
}

static long elapsed_since(int64_t t0)
{
    return (long)(th__now_ms() - t0);
}

int th__sse_run(th__cli *cli, const char *path, const th__sse_handler *h)
{
    if (!cli->url_checked && th__cli_check_url(cli) != 0)
        return TH_CLI_USAGE;
    int rc = TH_SSE_CONTINUE;
    int connected_before = 0;
    int backoff = BACKOFF_MIN_MS;
    int tick_ms = h->tick_ms > 0 ? h->tick_ms : 1000;
    int64_t last_tick = th__now_ms();
    sse_state s;
    memset(&s, 0, sizeof s);
    th__sbuf_init(&s.line, TH_CLI_MAX_SSE_LINE);
    th__sbuf_init(&s.data, TH_CLI_MAX_SSE_LINE);
    th__sbuf_init(&s.type, 256);
    th__sbuf_init(&s.id, 256);
    th__sbuf url;
    th__sbuf_init(&url, 64 * 1024);
    th__sbuf_adds(&url, cli->url);
    th__sbuf_adds(&url, path);
    CURLM *multi = curl_multi_init();
    if (!multi || url.failed) {
        rc = th__cli_fail(cli, TH_CLI_FAILED, "cannot initialise libcurl");
        goto done;
    }

    int64_t started = 0; /* daemon_start() at the last connection */
    while (rc < 0) {
        char errbuf[CURL_ERROR_SIZE] = "";
        if (connected_before && s.last_id[0] && started) {
            int64_t now_start = daemon_start(cli);
            if (now_start && (now_start - started > 2000 || started - now_start > 2000)) {
                /* A new daemon: its events are numbered from 1 again. */
                snprintf(s.last_id, sizeof s.last_id, "0");
                started = now_start;
            }
        }
        struct curl_slist *hdrs = NULL;
        th__sbuf hv;
        th__sbuf_init(&hv, 16 * 1024);
        hdrs = curl_slist_append(hdrs, "Accept: text/event-stream");
        hdrs = curl_slist_append(hdrs, "Cache-Control: no-cache");
        if (cli->token) {
            th__sbuf_addf(&hv, "Authorization: Bearer %s", cli->token);
            hdrs = curl_slist_append(hdrs, th__sbuf_str(&hv));
        }
        if (s.last_id[0]) {
            char idh[200];
            snprintf(idh, sizeof idh, "Last-Event-ID: %s", s.last_id);
            hdrs = curl_slist_append(hdrs, idh);
        }
        th__sbuf_free(&hv);
        s.status = 0;
        s.headers_done = s.open_pending = s.cr = s.overflow = 0;
        s.line.len = 0;
        s.line.failed = s.data.failed = s.type.failed = s.id.failed = 0;
        reset_event(&s);
        th__sbuf_init(&s.errbody, 64 * 1024);

        CURL *e = curl_easy_init();
        if (!e) {
            curl_slist_free_all(hdrs);
            rc = th__cli_fail(cli, TH_CLI_FAILED, "cannot initialise libcurl");
            break;
        }
        curl_easy_setopt(e, CURLOPT_URL, th__sbuf_str(&url));
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_TIMEOUT_MS);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, SILENCE_LIMIT_S);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, &s);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, &s);
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(e, CURLOPT_USERAGENT, "taskhive-cli");
        curl_multi_add_handle(multi, e);

        CURLcode result = CURLE_OK;
        int finished = 0;
        while (!finished && rc < 0) {
            int running = 0;
            curl_multi_perform(multi, &running);
            int left;
            CURLMsg *m;
            while ((m = curl_multi_info_read(multi, &left)))
                if (m->msg == CURLMSG_DONE) {
                    result = m->data.result;
                    finished = 1;
                }
            if (s.open_pending && !started)
                started = daemon_start(cli);
            if (s.status == 200 || s.open_pending)
                rc = dispatch(&s, h, &connected_before);
            if (rc < 0 && connected_before)
                backoff = BACKOFF_MIN_MS;
            if (rc < 0 && th__sse_stop)
                rc = TH_CLI_OK;
            if (rc < 0 && h->on_tick && elapsed_since(last_tick) >= tick_ms) {
                last_tick = th__now_ms();
                rc = h->on_tick(h->ud);
            }
            if (rc < 0 && !finished)
                curl_multi_poll(multi, NULL, 0, 100, NULL);
        }
        curl_multi_remove_handle(multi, e);
        curl_easy_cleanup(e);
        curl_slist_free_all(hdrs);
        if (rc >= 0) {
            th__sbuf_free(&s.errbody);
            break;
        }

        /* The connection ended: decide between an error and a reconnect. */
        char why[TH_CLI_ERRMSG];
        if (s.status != 0 && s.status != 200) {
            th__http_error_text(s.status, s.errbody.data, s.errbody.len, why, sizeof why);
            if (s.status < 500 || !connected_before) {
                rc = th__cli_fail_answer(cli, s.status, s.errbody.data, s.errbody.len);
                th__sbuf_free(&s.errbody);
                break;
            }
        } else if (result == CURLE_OK) {
            snprintf(why, sizeof why, "the server closed the event stream");
        } else if (s.overflow) {
            snprintf(why, sizeof why, "an event was over the size limit");
        } else {
            snprintf(why, sizeof why, "%s", *errbuf ? errbuf : curl_easy_strerror(result));
        }
        th__sbuf_free(&s.errbody);
        if (!connected_before && s.status == 0) {
            rc = th__cli_fail(cli, TH_CLI_UNREACHABLE, "cannot reach the server at %s: %s",
                              cli->url, why);
            break;
        }
        if (h->on_drop)
            h->on_drop(h->ud, why);
        /* Wait before reconnecting, still ticking and watching for a stop. */
        int64_t until = th__now_ms() + (s.retry_ms > 0 ? s.retry_ms : backoff);
        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
        while (rc < 0 && th__now_ms() < until) {
            poll(NULL, 0, 50);
            if (th__sse_stop)
                rc = TH_CLI_OK;
            else if (h->on_tick && elapsed_since(last_tick) >= tick_ms) {
                last_tick = th__now_ms();
                rc = h->on_tick(h->ud);
            }
        }
    }

done:
    free_queue(&s);
    free(s.queue);
    th__sbuf_free(&s.line);
    th__sbuf_free(&s.data);
    th__sbuf_free(&s.type);
    th__sbuf_free(&s.id);
    th__sbuf_free(&url);
    if (multi)
        curl_multi_cleanup(multi);
    return rc < 0 ? TH_CLI_OK : rc;
}
