/*
 * The exec handler: runs a configured command by argv (never through a shell
 * unless the pool allows it), feeds it stdin, logs its output line by line
 * and returns its exit status and the tail of its stdout.
 *
 * The child is started with posix_spawnp in a process group of its own, with
 * an empty signal mask, default signal dispositions and every descriptor but
 * 0, 1 and 2 closed (glibc 2.34+: posix_spawn_file_actions_addclosefrom_np).
 * One loop polls its stdout and stderr (and stdin while there is input left
 * to write, non-blocking so a child that writes before it reads cannot
 * deadlock us), checks th_ctx_cancelled between polls of at most 20 ms, and
 * on cancellation or timeout sends SIGTERM to the group, then SIGKILL after
 * 2 s. When the command exits, output still in flight is drained for up to
 * 1 s and whatever is left of its process group is killed, so a task never
 * leaves stray processes behind. The group is signalled only while the
 * command is an unreaped zombie at worst, so its id cannot have been reused.
 */
#include "handlers/handlers.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/clock.h"

#if !defined(__GLIBC__) || __GLIBC__ < 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ < 34)
#error "exec.c needs glibc 2.34+ (posix_spawn_file_actions_addclosefrom_np)"
#endif

#define LOG_LINES_MAX 1000            /* lines of output logged per run */
#define LINE_BYTES_MAX 4000           /* longer lines are logged in pieces */
#define TAIL_BYTES ((size_t)64 << 10) /* stdout kept for the result */
#define POLL_MS 20                    /* longest wait between cancel checks */
#define KILL_GRACE_NS 2000000000LL    /* SIGTERM -> SIGKILL */
#define DRAIN_GRACE_NS 1000000000LL   /* output drained after the exit */
#define COMMAND_NAME_MAX 64
#define SHELL_PATH "/bin/sh"

typedef struct stream {
    int fd; /* -1 once at EOF */
    th_log_level level;
    size_t line_len;
    char line[LINE_BYTES_MAX];
} stream;

typedef struct run {
    th_ctx *ctx;
    stream out, err;
    int in_fd; /* -1 when closed or never opened */
    const unsigned char *in_data;
    size_t in_len, in_pos;
    unsigned char *tail; /* ring of the last TAIL_BYTES of stdout */
    size_t tail_pos, tail_len;
    int lines_logged;
    int truncated_logged;
} run;

/* ---- output ------------------------------------------------------------- */

static void log_text(run *r, th_log_level level, const char *text, size_t len)
{
    if (r->lines_logged >= LOG_LINES_MAX) {
        if (!r->truncated_logged) {
            th_ctx_log(r->ctx, TH_LOG_INFO, "... truncated", NULL);
            r->truncated_logged = 1;
        }
        return;
    }
    r->lines_logged++;
    char *msg = th__utf8_sanitize((const unsigned char *)text, len);
    if (!msg)
        return;
    /* Keep the message within TH_MESSAGE_MAX, cutting at a character. */
    size_t n = strlen(msg);
    if (n >= TH_MESSAGE_MAX) {
        n = TH_MESSAGE_MAX - 1;
        while (n > 0 && ((unsigned char)msg[n] & 0xC0) == 0x80)
            n--;
        msg[n] = '\0';
    }
    th_ctx_log(r->ctx, level, msg, NULL);
    th__free(msg);
}

static void flush_line(run *r, stream *s)
{
    size_t n = s->line_len;
    if (n > 0 && s->line[n - 1] == '\r')
        n--;
    log_text(r, s->level, s->line, n);
    s->line_len = 0;
}

/* Splits `buf` into lines for the log. */
static void feed_lines(run *r, stream *s, const char *buf, size_t len)
{
    while (len > 0 && !r->truncated_logged) {
        const char *nl = memchr(buf, '\n', len);
        size_t take = nl ? (size_t)(nl - buf) : len;
        size_t room = LINE_BYTES_MAX - s->line_len;
        if (take >= room) {
            memcpy(s->line + s->line_len, buf, room);
            s->line_len += room;
            flush_line(r, s);
            buf += room;
            len -= room;
            continue;
        }
        memcpy(s->line + s->line_len, buf, take);
        s->line_len += take;
        buf += take;
        len -= take;
        if (nl) {
            flush_line(r, s);
            buf++;
            len--;
        }
    }
}

static void keep_tail(run *r, const unsigned char *buf, size_t len)
{
    if (len > TAIL_BYTES) {
        buf += len - TAIL_BYTES;
        len = TAIL_BYTES;
    }
    while (len > 0) {
        size_t room = TAIL_BYTES - r->tail_pos;
        size_t n = len < room ? len : room;
        memcpy(r->tail + r->tail_pos, buf, n);
        r->tail_pos = (r->tail_pos + n) % TAIL_BYTES;
        r->tail_len = r->tail_len + n > TAIL_BYTES ? TAIL_BYTES : r->tail_len + n;
        buf += n;
        len -= n;
    }
}

/* The kept stdout as a JSON string; a cut-off first character is dropped. */
static json_t *tail_json(run *r, int truncated)
{
    unsigned char *lin = th__malloc(r->tail_len);
    if (!lin)
        return NULL;
    size_t start = (r->tail_pos + TAIL_BYTES - r->tail_len) % TAIL_BYTES;
    size_t first = TAIL_BYTES - start < r->tail_len ? TAIL_BYTES - start : r->tail_len;
    memcpy(lin, r->tail + start, first);
    memcpy(lin + first, r->tail, r->tail_len - first);
    size_t skip = 0;
    while (truncated && skip < r->tail_len && skip < 3 && (lin[skip] & 0xC0) == 0x80)
        skip++;
    json_t *v = th__json_text(lin + skip, r->tail_len - skip);
    th__free(lin);
    return v;
}

/* Reads what `s` has; closes it at EOF or on error. */
static void read_stream(run *r, stream *s, unsigned char *buf, uint64_t *stdout_total)
{
    ssize_t n = read(s->fd, buf, TH__HANDLER_CHUNK);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n <= 0) {
        if (s->line_len)
            flush_line(r, s);
        close(s->fd);
        s->fd = -1;
        return;
    }
    if (s == &r->out) {
        keep_tail(r, buf, (size_t)n);
        *stdout_total += (uint64_t)n;
    }
    feed_lines(r, s, (const char *)buf, (size_t)n);
}

/* write(2) that turns a closed pipe into EPIPE without raising SIGPIPE in
 * the process: SIGPIPE is blocked in this thread for the call and a SIGPIPE
 * the call raised is consumed before unblocking. */
static ssize_t write_nosigpipe(int fd, const void *buf, size_t len)
{
    sigset_t pipe_set, old, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigemptyset(&pending);
    sigpending(&pending);
    int was_pending = sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    ssize_t w = write(fd, buf, len);
    int e = errno;
    if (w < 0 && e == EPIPE && !was_pending) {
        struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = e;
    return w;
}

static void write_stdin(run *r)
{
    size_t left = r->in_len - r->in_pos;
    if (left > TH__HANDLER_CHUNK)
        left = TH__HANDLER_CHUNK;
    ssize_t w = left ? write_nosigpipe(r->in_fd, r->in_data + r->in_pos, left) : 0;
    if (w < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (w > 0)
        r->in_pos += (size_t)w;
    if (w < 0 || r->in_pos == r->in_len) {
        close(r->in_fd); /* EOF for the child, or it stopped reading */
        r->in_fd = -1;
    }
}

/* ---- spawning ----------------------------------------------------------- */

/* A close-on-exec pipe whose ends are both above 2, so they cannot collide
 * with the child's 0, 1 and 2 whatever this process has closed. */
static int pipe_high(int p[2])
{
    if (pipe2(p, O_CLOEXEC) != 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        if (p[i] > 2)
            continue;
        int moved = fcntl(p[i], F_DUPFD_CLOEXEC, 3);
        if (moved < 0) {
            int e = errno;
            close(p[0]);
            close(p[1]);
            errno = e;
            return -1;
        }
        close(p[i]);
        p[i] = moved;
    }
    return 0;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static void close_pair(int p[2])
{
    close_fd(&p[0]);
    close_fd(&p[1]);
}

static int spawn_errno_permanent(int e)
{
    return e == ENOENT || e == EACCES || e == ENOEXEC || e == ENOTDIR || e == ELOOP ||
           e == ENAMETOOLONG || e == EISDIR || e == EPERM || e == E2BIG;
}

/*
 * Starts argv[0] (PATH-searched when it has no slash). On success *pid is
 * set and r's descriptors are the parent's pipe ends (non-blocking).
 * `what` names the configuration or payload field for spawn errors.
 */
static int spawn_child(run *r, char *const argv[], char *const envp[], const char *cwd,
                       int with_stdin, const char *what, pid_t *pid)
{
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
    if ((with_stdin && pipe_high(in) != 0) || pipe_high(out) != 0 || pipe_high(err) != 0) {
        int e = errno;
        close_pair(in);
        close_pair(out);
        close_pair(err);
        return th__hretry(r->ctx, "cannot create pipes: %s", strerror(e));
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&at);
    int e = 0;
    if (with_stdin)
        e = posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    else
        e = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (!e)
        e = posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    if (!e)
        e = posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    if (!e && cwd)
        e = posix_spawn_file_actions_addchdir_np(&fa, cwd);
    if (!e)
        e = posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    if (!e)
        e = posix_spawnattr_setsigmask(&at, &none);
    if (!e)
        e = posix_spawnattr_setsigdefault(&at, &all);
    if (!e)
        e = posix_spawnattr_setpgroup(&at, 0);
    if (!e)
        e = posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                              POSIX_SPAWN_SETPGROUP);
    int rc = 0;
    if (e) {
        rc = e == ENOMEM ? th__hnomem(r->ctx)
                         : th__hretry(r->ctx, "cannot prepare the spawn: %s", strerror(e));
    } else if ((e = posix_spawnp(pid, argv[0], &fa, &at, argv, envp)) != 0) {
        if (spawn_errno_permanent(e))
            rc = th__hfail(r->ctx, "%s: cannot execute \"%s\": %s", what, argv[0], strerror(e));
        else
            rc = th__hretry(r->ctx, "%s: cannot execute \"%s\": %s", what, argv[0], strerror(e));
    }
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    /* The child's ends are the child's business now. */
    close_fd(&in[0]);
    close_fd(&out[1]);
    close_fd(&err[1]);
    if (rc) {
        close_pair(in);
        close_pair(out);
        close_pair(err);
        return rc;
    }
    r->in_fd = in[1];
    r->out.fd = out[0];
    r->err.fd = err[0];
    int fds[3] = {r->in_fd, r->out.fd, r->err.fd};
    for (int i = 0; i < 3; i++)
        if (fds[i] >= 0)
            fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
    return 0;
}

/* ---- supervising -------------------------------------------------------- */

/* Runs the poll loop until the child has exited (and its output is drained),
 * then reaps it. *status receives the wait status, or -1 when it was lost
 * (someone else reaped the child). Returns 1 when it was cancelled. */
static int supervise(run *r, pid_t pid, unsigned char *buf, int *status, uint64_t *stdout_total)
{
    int cancelled = 0, exited = 0, killed = 0;
    int64_t term_at = 0, exit_at = 0;
    *status = -1;
    for (;;) {
        int64_t now = th__mono_ns();
        if (!cancelled && th_ctx_cancelled(r->ctx)) {
            cancelled = 1;
            term_at = now;
            kill(-pid, SIGTERM);
        }
        if (cancelled && !killed && now - term_at >= KILL_GRACE_NS) {
            killed = 1;
            kill(-pid, SIGKILL);
        }
        if (!exited) {
            siginfo_t si;
            memset(&si, 0, sizeof si);
            if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0) {
                if (errno == ECHILD)
                    exited = 2; /* reaped elsewhere */
            } else if (si.si_pid == pid) {
                exited = 1;
            }
            if (exited)
                exit_at = now;
        }
        if (exited && (cancelled || exited == 2 || (r->out.fd < 0 && r->err.fd < 0) ||
                       now - exit_at >= DRAIN_GRACE_NS))
            break;

        struct pollfd pf[3];
        stream *which[3] = {NULL, NULL, NULL};
        nfds_t n = 0;
        if (r->out.fd >= 0) {
            pf[n] = (struct pollfd){.fd = r->out.fd, .events = POLLIN};
            which[n++] = &r->out;
        }
        if (r->err.fd >= 0) {
            pf[n] = (struct pollfd){.fd = r->err.fd, .events = POLLIN};
            which[n++] = &r->err;
        }
        if (r->in_fd >= 0)
            pf[n++] = (struct pollfd){.fd = r->in_fd, .events = POLLOUT};
        int64_t left = th_ctx_remaining_ms(r->ctx);
        int timeout = left < POLL_MS ? (int)(left > 0 ? left : 1) : POLL_MS;
        int ready = poll(pf, n, timeout);
        if (ready <= 0)
            continue;
        for (nfds_t i = 0; i < n; i++) {
            if (!pf[i].revents)
                continue;
            if (which[i])
                read_stream(r, which[i], buf, stdout_total);
            else
                write_stdin(r);
        }
    }
    /* Stragglers of the group (the command itself is at most a zombie). */
    if (exited != 2)
        kill(-pid, SIGKILL);
    if (exited != 2) {
        int st;
        pid_t w;
        do
            w = waitpid(pid, &st, 0);
        while (w < 0 && errno == EINTR);
        if (w == pid)
            *status = st;
    }
    /* Flush what is buffered and give up on what is not. */
    stream *ss[2] = {&r->out, &r->err};
    for (int i = 0; i < 2; i++) {
        if (ss[i]->fd < 0)
            continue;
        if (ss[i]->line_len)
            flush_line(r, ss[i]);
        close(ss[i]->fd);
        ss[i]->fd = -1;
    }
    if (r->in_fd >= 0) {
        close(r->in_fd);
        r->in_fd = -1;
    }
    return cancelled;
}

/* ---- the payload -------------------------------------------------------- */

static int valid_command_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > COMMAND_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return 0;
    }
    return 1;
}

/* A string array element without NUL bytes, or NULL. */
static const char *arg_string(json_t *v)
{
    if (!json_is_string(v) || memchr(json_string_value(v), '\0', json_string_length(v)))
        return NULL;
    return json_string_value(v);
}

/* Builds envp: the inherited environment with the payload's "env" entries
 * added or replacing. *owned_from: index of the first th__malloc'd entry. */
static int build_env(th_ctx *ctx, json_t *env, char ***out, size_t *owned_from)
{
    size_t ninh = 0, nenv = json_object_size(env);
    while (environ && environ[ninh])
        ninh++;
    char **envp = th__calloc(ninh + nenv + 1, sizeof *envp);
    if (!envp)
        return th__hnomem(ctx);
    size_t k = 0;
    for (size_t i = 0; i < ninh; i++) {
        const char *eq = strchr(environ[i], '=');
        size_t klen = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
        const char *key;
        json_t *v;
        int replaced = 0;
        json_object_foreach(env, key, v)
        {
            if (strlen(key) == klen && memcmp(key, environ[i], klen) == 0)
                replaced = 1;
        }
        if (!replaced)
            envp[k++] = environ[i];
    }
    *owned_from = k;
    const char *key;
    json_t *v;
    json_object_foreach(env, key, v)
    {
        size_t len = strlen(key) + 1 + strlen(json_string_value(v)) + 1;
        char *kv = th__malloc(len);
        if (!kv) {
            for (size_t i = *owned_from; i < k; i++)
                th__free(envp[i]);
            th__free(envp);
            return th__hnomem(ctx);
        }
        snprintf(kv, len, "%s=%s", key, json_string_value(v));
        envp[k++] = kv;
    }
    envp[k] = NULL;
    *out = envp;
    return 0;
}

static int check_env(th_ctx *ctx, json_t *env)
{
    if (!json_is_object(env))
        return th__hfail(ctx, "payload.env: must be an object of strings");
    const char *key;
    json_t *v;
    json_object_foreach(env, key, v)
    {
        if (!*key || strchr(key, '='))
            return th__hfail(ctx, "payload.env.%s: names must be non-empty, without '='", key);
        if (!arg_string(v))
            return th__hfail(ctx, "payload.env.%s: must be a string without NUL characters", key);
    }
    return 0;
}

/*
 * Payload {"command": NAME, "args": [strings], "stdin": text, "env": {K: V},
 * "cwd": path} or {"shell": "cmd", ...} (only with exec.allow_shell "true";
 * runs /bin/sh -c cmd). NAME must be configured as exec.command.NAME, a JSON
 * array argv prefix; args are appended. Without "stdin" the child reads
 * /dev/null. "env" adds to (or overrides) the inherited environment.
 *
 * Result {"exit_code": N or null, "signal": N or null, "stdout": last 64 KiB}.
 * Exit 0 completes; another status or a signal fails the attempt (retry);
 * an unknown command or a program that cannot be executed fails for good.
 */
int th_handler_exec(th_ctx *ctx, void *ud)
{
    (void)ud;
    static const char *const allowed[] = {"command", "shell", "args", "stdin", "env", "cwd", NULL};
    json_t *p = NULL, *prefix = NULL;
    const char **argv = NULL;
    char **envp = NULL;
    size_t env_owned = 0;
    run r;
    memset(&r, 0, sizeof r);
    r.ctx = ctx;
    r.in_fd = r.out.fd = r.err.fd = -1;
    r.out.level = TH_LOG_INFO;
    r.err.level = TH_LOG_WARN;
    unsigned char *buf = NULL;
    char what[COMMAND_NAME_MAX + 32];

    int rc = th__payload_parse(ctx, allowed, &p);
    if (rc)
        return rc;
    json_t *jcmd = json_object_get(p, "command"), *jshell = json_object_get(p, "shell");
    json_t *jargs = json_object_get(p, "args"), *jenv = json_object_get(p, "env");
    const char *cwd = NULL, *in_text = NULL;
    size_t in_len = 0;
    if (jcmd && jshell) {
        rc = th__hfail(ctx, "payload.shell: give either \"command\" or \"shell\"");
        goto done;
    }
    if (!jcmd && !jshell) {
        rc = th__hfail(ctx, "payload.command: required");
        goto done;
    }
    if (jargs && !json_is_array(jargs)) {
        rc = th__hfail(ctx, "payload.args: must be an array of strings");
        goto done;
    }
    for (size_t i = 0; jargs && i < json_array_size(jargs); i++)
        if (!arg_string(json_array_get(jargs, i))) {
            rc = th__hfail(ctx, "payload.args[%zu]: must be a string without NUL characters", i);
            goto done;
        }
    if (jenv && (rc = check_env(ctx, jenv)) != 0)
        goto done;
    if ((rc = th__payload_string(ctx, p, "stdin", 0, &in_text, &in_len)) != 0 ||
        (rc = th__payload_string(ctx, p, "cwd", 0, &cwd, NULL)) != 0)
        goto done;
    if (cwd) {
        struct stat st;
        if (!*cwd || stat(cwd, &st) != 0 || !S_ISDIR(st.st_mode)) {
            rc = th__hfail(ctx, "payload.cwd: \"%s\" is not a directory", cwd);
            goto done;
        }
    }

    size_t nprefix, nargs = jargs ? json_array_size(jargs) : 0;
    if (jshell) {
        const char *sh = NULL;
        if ((rc = th__payload_string(ctx, p, "shell", 1, &sh, NULL)) != 0)
            goto done;
        const char *allow = th_ctx_config(ctx, "exec.allow_shell");
        if (!allow || strcmp(allow, "true") != 0) {
            rc = th__hfail(ctx, "payload.shell: shell commands are not allowed "
                                "(exec.allow_shell is not \"true\")");
            goto done;
        }
        if (jargs) {
            rc = th__hfail(ctx, "payload.args: not allowed with \"shell\"");
            goto done;
        }
        snprintf(what, sizeof what, "payload.shell");
        nprefix = 3;
        if (!(argv = th__calloc(nprefix + 1, sizeof *argv))) {
            rc = th__hnomem(ctx);
            goto done;
        }
        argv[0] = SHELL_PATH;
        argv[1] = "-c";
        argv[2] = sh;
    } else {
        const char *name = NULL;
        if ((rc = th__payload_string(ctx, p, "command", 1, &name, NULL)) != 0)
            goto done;
        if (!valid_command_name(name)) {
            rc = th__hfail(ctx, "payload.command: must be a name of [A-Za-z0-9_.-]{1,%d}",
                           COMMAND_NAME_MAX);
            goto done;
        }
        snprintf(what, sizeof what, "exec.command.%s", name);
        const char *cfg = th_ctx_config(ctx, what);
        if (!cfg) {
            rc = th__hfail(ctx, "payload.command: \"%s\" is not configured (no %s)", name, what);
            goto done;
        }
        prefix = json_loads(cfg, JSON_DECODE_ANY, NULL);
        nprefix = json_is_array(prefix) ? json_array_size(prefix) : 0;
        for (size_t i = 0; i < nprefix; i++)
            if (!arg_string(json_array_get(prefix, i)) ||
                (i == 0 && !*json_string_value(json_array_get(prefix, 0))))
                nprefix = 0;
        if (nprefix == 0) {
            rc = th__hfail(ctx, "%s: must be a non-empty JSON array of strings (argv)", what);
            goto done;
        }
        if (!(argv = th__calloc(nprefix + nargs + 1, sizeof *argv))) {
            rc = th__hnomem(ctx);
            goto done;
        }
        for (size_t i = 0; i < nprefix; i++)
            argv[i] = json_string_value(json_array_get(prefix, i));
    }
    for (size_t i = 0; i < nargs; i++)
        argv[nprefix + i] = json_string_value(json_array_get(jargs, i));
    argv[nprefix + nargs] = NULL;
    if (jenv && (rc = build_env(ctx, jenv, &envp, &env_owned)) != 0)
        goto done;
    if (!(buf = th__malloc(TH__HANDLER_CHUNK)) || !(r.tail = th__malloc(TAIL_BYTES))) {
        rc = th__hnomem(ctx);
        goto done;
    }
    r.in_data = (const unsigned char *)in_text;
    r.in_len = in_len;

    if (th_ctx_cancelled(ctx)) {
        rc = th__hcancelled(ctx);
        goto done;
    }
    pid_t pid;
    if ((rc = spawn_child(&r, (char *const *)argv, envp ? envp : environ, cwd, in_text != NULL,
                          what, &pid)) != 0)
        goto done;
    if (r.in_fd >= 0 && r.in_len == 0) {
        close(r.in_fd);
        r.in_fd = -1;
    }
    int status;
    uint64_t stdout_total = 0;
    int cancelled = supervise(&r, pid, buf, &status, &stdout_total);

    json_t *code = json_null(), *sig = json_null();
    if (status != -1 && WIFEXITED(status))
        code = json_integer(WEXITSTATUS(status));
    else if (status != -1 && WIFSIGNALED(status))
        sig = json_integer(WTERMSIG(status));
    json_t *res = json_pack("{s:o, s:o, s:o}", "exit_code", code, "signal", sig, "stdout",
                            tail_json(&r, stdout_total > TAIL_BYTES));
    if (cancelled)
        rc = th__hcancelled(ctx);
    else if (status == -1)
        rc = th__hretry(ctx, "the exit status was lost (the child was reaped elsewhere)");
    else if (WIFSIGNALED(status))
        rc = th__hretry(ctx, "killed by signal %d", WTERMSIG(status));
    else if (WEXITSTATUS(status) != 0)
        rc = th__hretry(ctx, "exited with status %d", WEXITSTATUS(status));
    else
        rc = TH_HANDLER_OK;
    rc = th__hresult(ctx, res, rc);
done:
    if (envp) {
        for (size_t i = env_owned; envp[i]; i++)
            th__free(envp[i]);
        th__free(envp);
    }
    th__free(r.tail);
    th__free(buf);
    th__free(argv);
    json_decref(prefix);
    json_decref(p);
    return rc;
}
