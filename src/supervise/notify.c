/*
 * Readiness notification, compatible with sd_notify(3): an instance with
 * notify = 1 gets NOTIFY_SOCKET naming an AF_UNIX datagram socket in the
 * abstract namespace ("@taskhive/<pid>/<supervisor>/<service id>/<i>"),
 * one per instance, so the socket a message arrives on says who sent it
 * and any process of the service may send (systemd's NotifyAccess=all).
 *
 * Understood: READY=1 (starting -> running), STATUS=... (shown in the
 * list), WATCHDOG=1 (remembered), STOPPING=1; other lines are ignored.
 */
#include "supervise/sv_impl.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MSG_MAX 4096

static void handle(th_supervisor *sv, sv_inst *in, char *msg, size_t n)
{
    msg[n] = '\0';
    char *line = msg;
    while (line && *line) {
        char *next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        if (strcmp(line, "READY=1") == 0) {
            if (in->pid > 0 && in->state == TH_SVC_STARTING)
                th__sv_set_running(sv, in);
        } else if (strncmp(line, "STATUS=", 7) == 0) {
            snprintf(in->status, sizeof in->status, "%s", line + 7);
        } else if (strcmp(line, "WATCHDOG=1") == 0) {
            in->last_watchdog_mono_ms = th__sv_mono_ms();
        } else if (strcmp(line, "STOPPING=1") == 0) {
            snprintf(in->status, sizeof in->status, "stopping");
        }
        line = next;
    }
}

static void on_message(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    sv_inst *in = arg;
    th_supervisor *sv = in->svc->sv;
    char buf[MSG_MAX + 1];
    for (int i = 0; i < 16; i++) {
        ssize_t k = recv(fd, buf, MSG_MAX, MSG_DONTWAIT);
        if (k < 0)
            break;
        /* Only the current process's messages count. */
        if (in->pid > 0)
            handle(sv, in, buf, (size_t)k);
    }
    th__sv_reconcile(sv);
}

int th__sv_notify_open(th_supervisor *sv, sv_inst *in)
{
    if (in->notify_fd >= 0) {
        char buf[MSG_MAX];
        while (recv(in->notify_fd, buf, sizeof buf, MSG_DONTWAIT) >= 0)
            ; /* left by an earlier process */
        return 0;
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    int len = snprintf(sa.sun_path, sizeof sa.sun_path, "@taskhive/%d/%u/%llu/%d", (int)sv->pid,
                       sv->seq, (unsigned long long)in->svc->id, in->index);
    if (len < 0 || (size_t)len >= sizeof sa.sun_path) {
        close(fd);
        return -1;
    }
    snprintf(in->notify_name, sizeof in->notify_name, "%s", sa.sun_path);
    sa.sun_path[0] = '\0'; /* abstract: nothing in the file system to clean up */
    if (bind(fd, (struct sockaddr *)&sa,
             (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) != 0) {
        close(fd);
        return -1;
    }
    in->notify_ev = event_new(sv->base, fd, EV_READ | EV_PERSIST, on_message, in);
    if (!in->notify_ev || event_add(in->notify_ev, NULL) != 0) {
        if (in->notify_ev)
            event_free(in->notify_ev);
        in->notify_ev = NULL;
        close(fd);
        return -1;
    }
    in->notify_fd = fd;
    return 0;
}

void th__sv_notify_close(sv_inst *in)
{
    if (in->notify_ev)
        event_free(in->notify_ev);
    in->notify_ev = NULL;
    if (in->notify_fd >= 0)
        close(in->notify_fd);
    in->notify_fd = -1;
}
