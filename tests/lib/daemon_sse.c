/*
 * Server-Sent Events reader of the black-box daemon helpers (daemon.h): one
 * background thread per stream drives libcurl's multi interface, parses the
 * "id:" / "event:" / "data:" lines and keeps the events under a mutex.
 */
#include "daemon.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "daemon_util.h"

/* ---- Server-Sent Events ------------------------------------------------- */

struct thd_sse {
    char *url;
    char *token;
    char *last_id;
    pthread_t thread;
    int started, joined;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;      /* asked to stop */
    int done;      /* the transfer ended */
    long status;   /* from the status line */
    int connected; /* the header block ended */
    char content_type[128];
    buf line;         /* the line being read */
    buf data;         /* data lines of the event being read */
    char type[32];    /* event: of the event being read */
    long long cur_id; /* id: of the event being read */
    int has_data;
    thd_event *ev;
    size_t n, cap;
    size_t comments;
    int curl_rc; /* how the transfer ended (CURLcode) */
};

static void sse_dispatch(thd_sse *s)
{
    if (!s->has_data && !s->type[0] && s->cur_id < 0)
        return;
    thd_event e;
    e.id = s->cur_id;
    snprintf(e.type, sizeof e.type, "%s", s->type[0] ? s->type : "message");
    e.data = thd_xstrdup(s->data.p ? s->data.p : "");
    e.json = json_loads(e.data, 0, NULL);
    pthread_mutex_lock(&s->mu);
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        thd_event *ev = realloc(s->ev, cap * sizeof *ev);
        if (!ev)
            abort();
        s->ev = ev;
        s->cap = cap;
    }
    s->ev[s->n++] = e;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    s->data.n = 0;
    if (s->data.p)
        s->data.p[0] = '\0';
    s->type[0] = '\0';
    s->cur_id = -1;
    s->has_data = 0;
}

static void sse_line(thd_sse *s, char *l)
{
    size_t n = strlen(l);
    if (n && l[n - 1] == '\r')
        l[--n] = '\0';
    if (n == 0) {
        sse_dispatch(s);
        return;
    }
    if (l[0] == ':') {
        pthread_mutex_lock(&s->mu);
        s->comments++;
        pthread_mutex_unlock(&s->mu);
        return;
    }
    char *colon = strchr(l, ':');
    const char *val = "";
    if (colon) {
        *colon = '\0';
        val = colon + 1;
        if (*val == ' ')
            val++;
    }
    if (strcmp(l, "data") == 0) {
        if (s->has_data)
            thd_buf_add(&s->data, "\n", 1);
        thd_buf_add(&s->data, val, strlen(val));
        s->has_data = 1;
    } else if (strcmp(l, "event") == 0) {
        snprintf(s->type, sizeof s->type, "%s", val);
    } else if (strcmp(l, "id") == 0) {
        char *end = NULL;
        long long v = strtoll(val, &end, 10);
        s->cur_id = end && end != val ? v : -1;
    }
}

static size_t sse_body(char *data, size_t size, size_t nmemb, void *ud)
{
    thd_sse *s = ud;
    size_t n = size * nmemb;
    for (size_t i = 0; i < n; i++) {
        if (data[i] == '\n') {
            thd_buf_add(&s->line, "", 0);
            sse_line(s, s->line.p);
            s->line.n = 0;
        } else {
            thd_buf_add(&s->line, data + i, 1);
        }
    }
    return n;
}

static size_t sse_header(char *data, size_t size, size_t nmemb, void *ud)
{
    thd_sse *s = ud;
    size_t n = size * nmemb;
    pthread_mutex_lock(&s->mu);
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        const char *sp = memchr(data, ' ', n);
        s->status = sp ? strtol(sp + 1, NULL, 10) : 0;
    } else if (n >= 13 && strncasecmp(data, "content-type:", 13) == 0) {
        size_t vn = n - 13;
        const char *v = data + 13;
        while (vn && (*v == ' ' || *v == '\t'))
            v++, vn--;
        while (vn && isspace((unsigned char)v[vn - 1]))
            vn--;
        snprintf(s->content_type, sizeof s->content_type, "%.*s", (int)vn, v);
    } else if (n <= 2 && (data[0] == '\r' || data[0] == '\n')) {
        s->connected = 1;
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void *sse_main(void *arg)
{
    thd_sse *s = arg;
    CURL *c = curl_easy_init();
    CURLM *m = curl_multi_init();
    struct curl_slist *hl = NULL;
    char *auth = s->token ? thd_fmt("Authorization: Bearer %s", s->token) : NULL;
    char *lei = s->last_id ? thd_fmt("Last-Event-ID: %s", s->last_id) : NULL;
    if (auth)
        hl = curl_slist_append(hl, auth);
    if (lei)
        hl = curl_slist_append(hl, lei);
    hl = curl_slist_append(hl, "Accept: text/event-stream");
    curl_easy_setopt(c, CURLOPT_URL, s->url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sse_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, sse_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, s);
    curl_multi_add_handle(m, c);
    /* Bounded even if nobody stops it. */
    long long end = thd_now_ms() + 10LL * 60 * 1000;
    for (;;) {
        int running = 0;
        curl_multi_perform(m, &running);
        if (!running)
            break;
        pthread_mutex_lock(&s->mu);
        int stop = s->stop;
        pthread_mutex_unlock(&s->mu);
        if (stop || thd_now_ms() > end)
            break;
        curl_multi_poll(m, NULL, 0, 50, NULL);
    }
    int msgs = 0;
    CURLMsg *msg;
    while ((msg = curl_multi_info_read(m, &msgs)) != NULL)
        if (msg->msg == CURLMSG_DONE) {
            pthread_mutex_lock(&s->mu);
            s->curl_rc = (int)msg->data.result;
            pthread_mutex_unlock(&s->mu);
        }
    curl_multi_remove_handle(m, c);
    curl_easy_cleanup(c);
    curl_multi_cleanup(m);
    curl_slist_free_all(hl);
    free(auth);
    free(lei);
    pthread_mutex_lock(&s->mu);
    s->done = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

thd_sse *thd_sse_open(const thd_daemon *d, const char *path, const char *last_event_id)
{
    thd_curl_init();
    thd_sse *s = calloc(1, sizeof *s);
    if (!s)
        abort();
    s->url = thd_fmt("%s%s", d->url, path);
    s->token = d->token ? thd_xstrdup(d->token) : NULL;
    s->last_id = last_event_id ? thd_xstrdup(last_event_id) : NULL;
    s->cur_id = -1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (pthread_create(&s->thread, NULL, sse_main, s) != 0)
        abort();
    s->started = 1;
    return s;
}

/* Waits on s->cv until `deadline` (monotonic ms); returns 0 at the deadline. */
static int sse_wait_until(thd_sse *s, long long deadline)
{
    long long left = deadline - thd_now_ms();
    if (left <= 0)
        return 0;
    if (left > 50)
        left = 50; /* re-check often; the condvar uses the realtime clock */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += left * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    return 1;
}

long thd_sse_wait_connected(thd_sse *s, int timeout_ms)
{
    long long end = thd_now_ms() + timeout_ms;
    pthread_mutex_lock(&s->mu);
    while (!s->connected && !s->done && sse_wait_until(s, end)) {
    }
    long st = s->connected ? s->status : 0;
    pthread_mutex_unlock(&s->mu);
    return st;
}

static int sse_has(thd_sse *s, const char *type, const char *task)
{
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->ev[i].type, type) != 0)
            continue;
        const char *t = thd_jstr(s->ev[i].json, "task");
        if (!task || (t && strcmp(t, task) == 0))
            return 1;
    }
    return 0;
}

int thd_sse_wait_for(thd_sse *s, const char *type, const char *task, int timeout_ms)
{
    long long end = thd_now_ms() + timeout_ms;
    pthread_mutex_lock(&s->mu);
    int found;
    while (!(found = sse_has(s, type, task)) && !s->done && sse_wait_until(s, end)) {
    }
    pthread_mutex_unlock(&s->mu);
    return found;
}

size_t thd_sse_wait_count(thd_sse *s, size_t n, int timeout_ms)
{
    long long end = thd_now_ms() + timeout_ms;
    pthread_mutex_lock(&s->mu);
    while (s->n < n && !s->done && sse_wait_until(s, end)) {
    }
    size_t got = s->n;
    pthread_mutex_unlock(&s->mu);
    return got;
}

void thd_sse_stop(thd_sse *s)
{
    if (!s || !s->started || s->joined)
        return;
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    s->joined = 1;
}

size_t thd_sse_count(thd_sse *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->n;
    pthread_mutex_unlock(&s->mu);
    return n;
}

const thd_event *thd_sse_event(thd_sse *s, size_t i)
{
    pthread_mutex_lock(&s->mu);
    const thd_event *e = i < s->n ? &s->ev[i] : NULL;
    pthread_mutex_unlock(&s->mu);
    return e;
}

size_t thd_sse_count_type(thd_sse *s, const char *type)
{
    pthread_mutex_lock(&s->mu);
    size_t n = 0;
    for (size_t i = 0; i < s->n; i++)
        n += strcmp(s->ev[i].type, type) == 0;
    pthread_mutex_unlock(&s->mu);
    return n;
}

size_t thd_sse_comments(thd_sse *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->comments;
    pthread_mutex_unlock(&s->mu);
    return n;
}

long thd_sse_status(thd_sse *s)
{
    pthread_mutex_lock(&s->mu);
    long st = s->status;
    pthread_mutex_unlock(&s->mu);
    return st;
}

int thd_sse_curl_rc(thd_sse *s)
{
    pthread_mutex_lock(&s->mu);
    int rc = s->curl_rc;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

const char *thd_sse_content_type(thd_sse *s)
{
    return s->content_type;
}

void thd_sse_close(thd_sse *s)
{
    if (!s)
        return;
    thd_sse_stop(s);
    for (size_t i = 0; i < s->n; i++) {
        free(s->ev[i].data);
        json_decref(s->ev[i].json);
    }
    free(s->ev);
    free(s->line.p);
    free(s->data.p);
    free(s->url);
    free(s->token);
    free(s->last_id);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
