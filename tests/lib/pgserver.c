/*
 * The tests' and benchmarks' private PostgreSQL server; see pgserver.h. No
 * cmocka here, so benchmarks link it too.
 */
#include "pgserver.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <glob.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_base[512];
static char g_dir[256];
static char g_bin[256];
static int g_port;
static int g_watch_fd = -1;
static pid_t g_watcher;
static unsigned g_schemas;

/* Runs argv (as "nobody" when we are root) and waits; returns its status. */
static int run(const char *const *argv, int quiet)
{
    const char *full[32];
    int n = 0;
    if (geteuid() == 0) {
        full[n++] = "runuser";
        full[n++] = "-u";
        full[n++] = "nobody";
        full[n++] = "--";
    }
    for (int i = 0; argv[i] && n < 31; i++)
        full[n++] = argv[i];
    full[n] = NULL;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        if (quiet) {
            int fd = open("/dev/null", O_WRONLY);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
            }
        }
        execvp(full[0], (char *const *)full);
        _exit(127);
    }
    int st;
    if (waitpid(pid, &st, 0) < 0)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static int find_bin(void)
{
    glob_t g;
    if (glob("/usr/lib/postgresql/*/bin/initdb", 0, NULL, &g) != 0)
        return -1;
    /* The highest version sorts last. */
    snprintf(g_bin, sizeof g_bin, "%s", g.gl_pathv[g.gl_pathc - 1]);
    globfree(&g);
    *strrchr(g_bin, '/') = '\0';
    return 0;
}

static const char *failed(const char *what, const char *arg)
{
    fprintf(stderr, "pgserver: %s%s\n", what, arg);
    return NULL;
}

static int start_server(void)
{
    char pgctl[300], opts[512], log[300];
    snprintf(pgctl, sizeof pgctl, "%s/pg_ctl", g_bin);
    snprintf(log, sizeof log, "%s/server.log", g_dir);
    snprintf(opts, sizeof opts, "-c listen_addresses=127.0.0.1 -p %d -k %s -c max_connections=200",
             g_port, g_dir);
    const char *argv[] = {pgctl, "start", "-w", "-t", "60", "-D",
                          g_dir, "-l",    log,  "-o", opts, NULL};
    return run(argv, 1);
}

/* The watcher: a shell that waits for the pipe from this process to close,
 * then stops the server at once and removes its dir. */
static int start_watcher(void)
{
    int p[2];
    if (pipe(p) != 0)
        return -1;
    char script[1024];
    snprintf(script, sizeof script,
             "cat >/dev/null; pid=$(head -n1 %s/postmaster.pid 2>/dev/null);"
             " if [ -n \"$pid\" ]; then kill -QUIT \"$pid\" 2>/dev/null;"
             " i=0; while kill -0 \"$pid\" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1;"
             " i=$((i+1)); done; fi; rm -rf %s",
             g_dir, g_dir);
    pid_t pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        dup2(p[0], 0);
        close(p[0]);
        close(p[1]);
        setsid(); /* out of the test's process group: a group kill must not stop it first */
        execl("/bin/sh", "sh", "-c", script, (char *)NULL);
        _exit(127);
    }
    close(p[0]);
    fcntl(p[1], F_SETFD, FD_CLOEXEC);
    g_watch_fd = p[1];
    g_watcher = pid;
    return 0;
}

static void stop_at_exit(void)
{
    if (g_watch_fd < 0)
        return;
    close(g_watch_fd);
    g_watch_fd = -1;
    waitpid(g_watcher, NULL, 0);
}

const char *thpg_base(void)
{
    if (g_base[0])
        return g_base;
    const char *env = getenv("TH_TEST_PG_URI");
    if (env && *env) {
        snprintf(g_base, sizeof g_base, "%s", env);
        return g_base;
    }
    if (find_bin() != 0)
        return failed("no /usr/lib/postgresql/*/bin/initdb; run scripts/install-deps.sh", "");
    snprintf(g_dir, sizeof g_dir, "/tmp/thpg.XXXXXX");
    if (!mkdtemp(g_dir))
        return failed("mkdtemp failed: ", g_dir);
    if (geteuid() == 0) {
        struct passwd *pw = getpwnam("nobody");
        if (!pw || chown(g_dir, pw->pw_uid, pw->pw_gid) != 0)
            return failed("cannot chown to nobody: ", g_dir);
    }
    if (start_watcher() != 0)
        return failed("cannot start the watcher of ", g_dir);
    atexit(stop_at_exit);
    char initdb[300];
    snprintf(initdb, sizeof initdb, "%s/initdb", g_bin);
    const char *argv[] = {initdb,  "-D", g_dir,  "-U",        "postgres", "-A",
                          "trust", "-E", "UTF8", "--no-sync", NULL};
    if (run(argv, 1) != 0)
        return failed("initdb failed in ", g_dir);
    for (int tries = 0;; tries++) {
        g_port = free_port();
        if (g_port > 0 && start_server() == 0)
            break;
        if (tries == 3)
            return failed("the server did not start; see server.log in ", g_dir);
    }
    snprintf(g_base, sizeof g_base, "postgresql://postgres@127.0.0.1:%d/postgres", g_port);
    return g_base;
}

int thpg_exec(const char *uri, const char *sql)
{
    PGconn *c = PQconnectdb(uri);
    int rc = -1;
    if (PQstatus(c) == CONNECTION_OK) {
        PGresult *r = PQexec(c, sql);
        if (PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK)
            rc = 0;
        PQclear(r);
    }
    if (rc)
        fprintf(stderr, "pgserver: %s: %s", sql, PQerrorMessage(c));
    PQfinish(c);
    return rc;
}

char *thpg_new_schema(void)
{
    const char *base = thpg_base();
    if (!base)
        return NULL;
    char schema[64], sql[128];
    snprintf(schema, sizeof schema, "th_%ld_%u", (long)getpid(), ++g_schemas);
    snprintf(sql, sizeof sql, "CREATE SCHEMA %s", schema);
    if (thpg_exec(base, sql) != 0)
        return NULL;
    size_t len = strlen(base) + strlen(schema) + 64;
    char *uri = malloc(len);
    if (uri)
        snprintf(uri, len, "%s%soptions=-csearch_path%%3D%s", base, strchr(base, '?') ? "&" : "?",
                 schema);
    return uri;
}

int thpg_restart(void)
{
    char pgctl[300];
    snprintf(pgctl, sizeof pgctl, "%s/pg_ctl", g_bin);
    const char *argv[] = {pgctl, "stop", "-m", "immediate", "-w", "-D", g_dir, NULL};
    if (!g_dir[0] || run(argv, 1) != 0)
        return -1;
    return start_server() == 0 ? 0 : -1;
}
