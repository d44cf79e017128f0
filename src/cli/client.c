/*
 * The HTTP client of the command line: one reused libcurl handle, JSON in and
 * out with jansson, and the mapping of every failure to one line on stderr
 * and an exit status (docs/API.md, "Errors").
 */
#include "cli/cli.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#define CONNECT_TIMEOUT_MS 5000L
#define REQUEST_TIMEOUT_MS 120000L

int th__cli_init(th__cli *cli)
{
    memset(cli, 0, sizeof *cli);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "taskhive: cannot initialise libcurl\n");
        return TH_CLI_FAILED;
    }
    const char *url = getenv("TASKHIVE_URL");
    cli->url = url && *url ? url : TH_CLI_DEFAULT_URL;
    const char *token = getenv("TASKHIVE_TOKEN");
    cli->token = token && *token ? token : NULL;
    return 0;
}

void th__cli_cleanup(th__cli *cli)
{
    if (cli->curl)
        curl_easy_cleanup(cli->curl);
    cli->curl = NULL;
    curl_global_cleanup();
}

int th__cli_check_url(th__cli *cli)
{
    static char copy[2048];
    const char *u = cli->url;
    if (strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0)
        return th__cli_usage_error(cli, "bad server URL '%s' (want http://HOST:PORT)", u);
    size_t n = strlen(u);
    while (n > 0 && u[n - 1] == '/')
        n--;
    if (n >= sizeof copy)
        return th__cli_usage_error(cli, "server URL too long");
    memmove(copy, u, n);
    copy[n] = '\0';
    cli->url = copy;
    cli->url_checked = 1;
    return 0;
}

int th__cli_fail(th__cli *cli, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cli->err, sizeof cli->err, fmt, ap);
    va_end(ap);
    if (!cli->quiet)
        fprintf(stderr, "taskhive: %s\n", cli->err);
    return code;
}

int th__cli_usage_error(th__cli *cli, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char msg[TH_CLI_ERRMSG];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (cli->verb)
        fprintf(stderr, "taskhive: %s: %s\n", cli->verb, msg);
    else
        fprintf(stderr, "taskhive: %s\n", msg);
    return TH_CLI_USAGE;
}

/* Copies the first line of `s` (at most `n` bytes) into buf, clipped. */
static void first_line(const char *s, size_t n, char *buf, size_t size)
{
    size_t i = 0;
    while (i < n && s[i] != '\n' && s[i] != '\r' && i + 1 < size && i < 200) {
        buf[i] = s[i];
        i++;
    }
    buf[i] = '\0';
}

void th__http_error_text(long status, const char *body, size_t len, char *buf, size_t size)
{
    json_t *root = body && len ? json_loadb(body, len, 0, NULL) : NULL;
    json_t *e = root ? json_object_get(root, "error") : NULL;
    const char *msg = th__jstr(e, "message");
    const char *code = th__jstr(e, "code");
    const char *field = th__jstr(e, "field");
    if (msg || code) {
        if (field && *field)
            snprintf(buf, size, "%s (field: %s)", msg ? msg : code, field);
        else
            snprintf(buf, size, "%s", msg ? msg : code);
    } else {
        char line[256];
        first_line(body ? body : "", len, line, sizeof line);
        if (*line)
            snprintf(buf, size, "HTTP %ld: %s", status, line);
        else
            snprintf(buf, size, "HTTP %ld", status);
    }
    json_decref(root);
}

int th__task_path(th__sbuf *b, const char *id, const char *suffix)
{
    th__sbuf_adds(b, "/v1/tasks/");
    th__sbuf_add_escaped(b, id);
    th__sbuf_adds(b, suffix);
    return b->failed ? -1 : 0;
}

int th__cli_fail_answer(th__cli *cli, long status, const char *body, size_t len)
{
    char msg[TH_CLI_ERRMSG];
    th__http_error_text(status, body, len, msg, sizeof msg);
    if (status == 401 && !cli->token)
        return th__cli_fail(cli, TH_CLI_FAILED, "%s (set TASKHIVE_TOKEN or use --token)", msg);
    return th__cli_fail(cli, TH_CLI_FAILED, "%s", msg);
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    th__sbuf *b = ud;
    size_t n = size * nmemb;
    return th__sbuf_add(b, ptr, n) == 0 ? n : 0;
}

int th__http(th__cli *cli, const char *method, const char *path, json_t *body, json_t **out,
             long *status)
{
    int rc = TH_CLI_FAILED;
    char *text = NULL;
    struct curl_slist *hdrs = NULL;
    th__sbuf url, resp;
    th__sbuf_init(&url, 64 * 1024);
    th__sbuf_init(&resp, TH_CLI_MAX_BODY);
    char errbuf[CURL_ERROR_SIZE] = "";
    if (out)
        *out = NULL;
    if (status)
        *status = 0;

    if (!cli->url_checked && th__cli_check_url(cli) != 0) {
        rc = TH_CLI_USAGE;
        goto fail;
    }
    if (!cli->curl && !(cli->curl = curl_easy_init())) {
        rc = th__cli_fail(cli, TH_CLI_FAILED, "cannot initialise libcurl");
        goto fail;
    }
    CURL *h = cli->curl;
    curl_easy_reset(h);
    th__sbuf_adds(&url, cli->url);
    th__sbuf_adds(&url, path);
    if (url.failed) {
        rc = th__cli_fail(cli, TH_CLI_USAGE, "request URL too long");
        goto fail;
    }
    hdrs = curl_slist_append(hdrs, "Accept: application/json");
    hdrs = curl_slist_append(hdrs, "Expect:");
    if (body) {
        text = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!text) {
            rc = th__cli_fail(cli, TH_CLI_FAILED, "out of memory");
            goto fail;
        }
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    }
    if (cli->token) {
        th__sbuf auth;
        th__sbuf_init(&auth, 8192);
        th__sbuf_addf(&auth, "Authorization: Bearer %s", cli->token);
        hdrs = curl_slist_append(hdrs, th__sbuf_str(&auth));
        th__sbuf_free(&auth);
    }
    curl_easy_setopt(h, CURLOPT_URL, th__sbuf_str(&url));
    /* Names are path segments as they are: a service named ".." stays one. */
    curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_TIMEOUT_MS);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, REQUEST_TIMEOUT_MS);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &resp);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "taskhive-cli");
    if (strcmp(method, "GET") != 0) {
        if (strcmp(method, "POST") == 0) {
            curl_easy_setopt(h, CURLOPT_POST, 1L);
            curl_easy_setopt(h, CURLOPT_POSTFIELDS, text ? text : "");
        } else {
            curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
            if (text)
                curl_easy_setopt(h, CURLOPT_POSTFIELDS, text);
        }
    }

    CURLcode cc = curl_easy_perform(h);
    if (cc == CURLE_WRITE_ERROR && resp.failed) {
        rc = th__cli_fail(cli, TH_CLI_FAILED, "the server's answer is over %u MiB",
                          TH_CLI_MAX_BODY >> 20);
        goto fail;
    }
    if (cc != CURLE_OK) {
        int code = (cc == CURLE_URL_MALFORMAT || cc == CURLE_UNSUPPORTED_PROTOCOL)
                       ? TH_CLI_USAGE
                       : TH_CLI_UNREACHABLE;
        rc = th__cli_fail(cli, code, "cannot reach the server at %s: %s", cli->url,
                          *errbuf ? errbuf : curl_easy_strerror(cc));
        goto fail;
    }
    long st = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &st);
    if (status)
        *status = st;
    if (st < 200 || st > 299) {
        rc = th__cli_fail_answer(cli, st, resp.data, resp.len);
        goto fail;
    }
    if (resp.len > 0) {
        json_error_t jerr;
        json_t *v = json_loadb(resp.data, resp.len, JSON_DECODE_ANY, &jerr);
        if (!v) {
            rc = th__cli_fail(cli, TH_CLI_FAILED, "the server sent invalid JSON: %s", jerr.text);
            goto fail;
        }
        if (out)
            *out = v;
        else
            json_decref(v);
    }
    rc = TH_CLI_OK;
fail:
    if (cli->curl) { /* it must not keep pointers to what is freed here */
        curl_easy_setopt(cli->curl, CURLOPT_ERRORBUFFER, NULL);
        curl_easy_setopt(cli->curl, CURLOPT_HTTPHEADER, NULL);
        curl_easy_setopt(cli->curl, CURLOPT_POSTFIELDS, NULL);
    }
    curl_slist_free_all(hdrs);
    free(text);
    th__sbuf_free(&url);
    th__sbuf_free(&resp);
    return rc;
}
