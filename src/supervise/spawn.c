/*
 * Starting child processes. Everything a child needs (program path, argv,
 * environment, user and groups) is prepared before fork, because the child
 * of a threaded process may only make async-signal-safe calls until it
 * execs. The child then: resets its signal mask and every disposition
 * (an ignored SIGPIPE would survive exec), makes its own process group,
 * wires stdin to /dev/null and stdout / stderr to the given fds, closes
 * every other descriptor, drops to the user (groups, gid, uid), changes
 * directory, sets PR_SET_PDEATHSIG(SIGTERM) after that (a credential change
 * clears it) and checks that its parent is still the supervisor's process,
 * then execs.
 */
#include "supervise/sv_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/alloc.h"

extern char **environ;

#define GROUPS_MAX 1024

void th__sv_exec_clear(th__sv_exec *x)
{
    th__free(x->path);
    if (x->argv)
        for (size_t i = 0; x->argv[i]; i++)
            th__free(x->argv[i]);
    th__free(x->argv);
    if (x->envp)
        for (size_t i = 0; x->envp[i]; i++)
            th__free(x->envp[i]);
    th__free(x->envp);
    th__free(x->groups);
    memset(x, 0, sizeof *x);
}

static size_t key_len(const char *kv)
{
    const char *eq = strchr(kv, '=');
    return eq ? (size_t)(eq - kv) : strlen(kv);
}

/* Adds (or replaces) KEY=VALUE in the NULL-ended list env[0..*n). */
static int env_put(char **env, size_t *n, const char *kv)
{
    size_t k = key_len(kv);
    char *copy = th__strdup(kv);
    if (!copy)
        return -1;
    for (size_t i = 0; i < *n; i++)
        if (key_len(env[i]) == k && strncmp(env[i], kv, k) == 0) {
            th__free(env[i]);
            env[i] = copy;
            return 0;
        }
    env[(*n)++] = copy;
    env[*n] = NULL;
    return 0;
}

static void env_del(char **env, size_t *n, const char *key)
{
    size_t k = strlen(key);
    for (size_t i = 0; i < *n; i++)
        if (key_len(env[i]) == k && strncmp(env[i], key, k) == 0) {
            th__free(env[i]);
            env[i] = env[--(*n)];
            env[*n] = NULL;
            return;
        }
}

static const char *env_get(char **env, size_t n, const char *key)
{
    size_t k = strlen(key);
    for (size_t i = 0; i < n; i++)
        if (key_len(env[i]) == k && strncmp(env[i], key, k) == 0)
            return env[i] + k + 1;
    return NULL;
}

static int put_fmt(char **env, size_t *n, const char *key, const char *value)
{
    char buf[4200];
    int len = snprintf(buf, sizeof buf, "%s=%s", key, value);
    if (len < 0 || (size_t)len >= sizeof buf)
        return -1;
    return env_put(env, n, buf);
}

int th__sv_exec_prepare(th__sv_exec *x, sv_inst *in, const char *const *argv,
                        const char *const *extra, char *why, size_t wn)
{
    memset(x, 0, sizeof *x);
    const th_service_spec *s = &in->svc->spec;
    x->cwd = s->cwd;
    size_t ninh = 0, nextra = 0;
    while (environ && environ[ninh])
        ninh++;
    while (extra && extra[nextra])
        nextra++;
    size_t cap = ninh + s->nenv + nextra + 8;
    size_t n = 0;
    if (!(x->envp = th__calloc(cap + 1, sizeof *x->envp)))
        goto nomem;
    for (size_t i = 0; i < ninh; i++)
        if (strchr(environ[i], '=') && env_put(x->envp, &n, environ[i]))
            goto nomem;
    /* The supervisor's own readiness socket (under systemd) is not theirs. */
    env_del(x->envp, &n, "NOTIFY_SOCKET");
    env_del(x->envp, &n, "WATCHDOG_USEC");
    env_del(x->envp, &n, "WATCHDOG_PID");

    if (s->user) {
        struct passwd pw, *res = NULL;
        char buf[4096];
        if (getpwnam_r(s->user, &pw, buf, sizeof buf, &res) != 0 || !res) {
            snprintf(why, wn, "no such user \"%s\"", s->user);
            goto fail;
        }
        x->set_user = 1;
        x->uid = pw.pw_uid;
        x->gid = pw.pw_gid;
        int ng = GROUPS_MAX;
        if (!(x->groups = th__calloc((size_t)ng, sizeof *x->groups)))
            goto nomem;
        if (getgrouplist(s->user, pw.pw_gid, x->groups, &ng) < 0)
            ng = 1, x->groups[0] = pw.pw_gid;
        x->ngroups = ng;
        if (put_fmt(x->envp, &n, "USER", pw.pw_name) ||
            put_fmt(x->envp, &n, "LOGNAME", pw.pw_name) || put_fmt(x->envp, &n, "HOME", pw.pw_dir))
            goto nomem;
    }
    for (size_t i = 0; i < s->nenv; i++)
        if (env_put(x->envp, &n, s->env[i]))
            goto nomem;
    char num[32];
    snprintf(num, sizeof num, "%d", in->index);
    if (put_fmt(x->envp, &n, "TH_INSTANCE", num) || put_fmt(x->envp, &n, "TH_SERVICE", s->name))
        goto nomem;
    for (size_t i = 0; i < nextra; i++)
        if (env_put(x->envp, &n, extra[i]))
            goto nomem;

    size_t argc = 0;
    const char *const shell[] = {"/bin/sh", "-c", s->command, NULL};
    if (!argv)
        argv = s->use_shell ? shell : s->argv;
    while (argv[argc])
        argc++;
    if (!(x->argv = th__calloc(argc + 1, sizeof *x->argv)))
        goto nomem;
    for (size_t i = 0; i < argc; i++)
        if (!(x->argv[i] = th__strdup(argv[i])))
            goto nomem;
    char full[4096];
    if (th__sv_find_program(argv[0], env_get(x->envp, n, "PATH"), s->cwd, full, sizeof full)) {
        snprintf(why, wn, "\"%s\": no such executable file", argv[0]);
        goto fail;
    }
    if (!(x->path = th__strdup(full)))
        goto nomem;
    return 0;
nomem:
    snprintf(why, wn, "out of memory");
    th__sv_exec_clear(x);
    return TH_ENOMEM;
fail:
    th__sv_exec_clear(x);
    return TH_EINVAL;
}

/* ---- the child (async-signal-safe calls only) --------------------------------------- */

static void child_fail(const char *what, const char *arg) __attribute__((noreturn));
static void child_fail(const char *what, const char *arg)
{
    int e = errno;
    char msg[512];
    size_t n = 0;
    const char *parts[] = {"taskhive supervisor: ", what,       arg ? " " : "",
                           arg ? arg : "",          ": errno ", NULL};
    for (int i = 0; parts[i]; i++)
        for (const char *p = parts[i]; *p && n < sizeof msg - 16; p++)
            msg[n++] = *p;
    char digits[12];
    int d = 0;
    do {
        digits[d++] = (char)('0' + e % 10);
        e /= 10;
    } while (e && d < 11);
    while (d)
        msg[n++] = digits[--d];
    msg[n++] = '\n';
    ssize_t w = write(2, msg, n);
    (void)w;
    _exit(127);
}

static void close_from(int lowfd)
{
    if (syscall(SYS_close_range, (unsigned)lowfd, ~0u, 0u) == 0)
        return;
    struct rlimit rl;
    int max = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < 65536)
        max = (int)rl.rlim_cur;
    for (int fd = lowfd; fd < max; fd++)
        close(fd);
}

static void child_main(const th__sv_exec *x, int out_fd, int err_fd, pid_t parent)
    __attribute__((noreturn));
static void child_main(const th__sv_exec *x, int out_fd, int err_fd, pid_t parent)
{
    /* Handlers first, then the mask: a signal pending since the fork (a
     * stop sent at once) must not run the parent's handler here — libevent's
     * would write it into the daemon's own signal pipe, and the daemon would
     * act on a signal meant for this child. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            sigaction(sig, &dfl, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setpgid(0, 0);
    /* Move the fds above 2 first, so dup2 never overwrites one still needed. */
    int null = open("/dev/null", O_RDWR);
    int fin = null >= 0 ? fcntl(null, F_DUPFD, 10) : -1;
    int fout = fcntl(out_fd >= 0 ? out_fd : null, F_DUPFD, 10);
    int ferr = fcntl(err_fd >= 0 ? err_fd : null, F_DUPFD, 10);
    if (fin < 0 || fout < 0 || ferr < 0 || dup2(fin, 0) < 0 || dup2(fout, 1) < 0 ||
        dup2(ferr, 2) < 0)
        _exit(126);
    close_from(3);
    if (x->set_user) {
        if (setgroups((size_t)x->ngroups, x->groups) != 0 && getuid() == 0)
            child_fail("setgroups", NULL);
        if (setgid(x->gid) != 0)
            child_fail("setgid", NULL);
        if (setuid(x->uid) != 0)
            child_fail("setuid", NULL);
    }
    /* As the user: a directory it may not enter is an error, as under systemd. */
    if (x->cwd && chdir(x->cwd) != 0)
        child_fail("cannot change directory to", x->cwd);
    /* After the credential change, which resets it. If the supervisor's
     * process died before this line, nobody will send the signal: check. */
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent)
        _exit(125);
    execve(x->path, x->argv, x->envp);
    child_fail("cannot execute", x->path);
}

/* ---- the parent ------------------------------------------------------------------- */

pid_t th__sv_spawn(const th__sv_exec *x, int out_fd, int err_fd, int *pidfd, char *why, size_t n)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(why, n, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0)
        child_main(x, out_fd, err_fd, parent);
    /* Both sides set the group, so it exists before either relies on it
     * (EACCES: the child has exec'd, after setting it itself). */
    (void)setpgid(pid, pid);
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (fd < 0) {
        snprintf(why, n, "pidfd_open: %s (the supervisor needs Linux >= 5.3)", strerror(errno));
        kill(pid, SIGKILL);
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        return -1;
    }
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    *pidfd = fd;
    return pid;
}

void th__sv_reap(pid_t pid, int pidfd, int *code, int *sig)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    *code = -1;
    *sig = 0;
    int rc;
    while ((rc = waitid((idtype_t)P_PIDFD, (id_t)pidfd, &si, WEXITED)) < 0 && errno == EINTR)
        ;
    if (rc == 0) {
        if (si.si_code == CLD_EXITED)
            *code = si.si_status;
        else
            *sig = si.si_status;
    }
    /* Otherwise (ECHILD: SIGCHLD set to SIG_IGN, or someone reaped it with
     * waitpid(-1)) the status is lost: *code -1 and *sig 0 say so. */
    (void)pid;
    close(pidfd);
}
