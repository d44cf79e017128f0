/*
 * Connection tracking for the daemon: counts open connections (so a cap can
 * refuse new ones with 503) and owns each connection's single close
 * callback, passing the event on to whichever user asked (an event stream,
 * a parked claim, an executor job). libevent 2.1 offers no connection cap
 * of its own. Loop thread only.
 */
#include <uthash.h>

#include "core/alloc.h"
#include "server/http.h"

struct th__conn {
    struct evhttp_connection *evcon; /* the key */
    UT_hash_handle hh;
    th__server *s;
    th__close_fn user;
    void *user_arg;
};

static void conn_closed(struct evhttp_connection *evcon, void *arg)
{
    th__conn *c = arg;
    th__server *s = c->s;
    th__close_fn user = c->user;
    void *ua = c->user_arg;
    HASH_DEL(s->conns, c);
    s->nconns--;
    th__free(c);
    if (user)
        user(evcon, ua);
}

int th__conn_track(th__server *s, struct evhttp_request *r)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(r);
    if (!evcon)
        return 0;
    th__conn *c = NULL;
    HASH_FIND_PTR(s->conns, &evcon, c);
    if (c)
        return 0;
    if (s->nconns >= s->cfg.max_connections)
        return -1;
    if (!(c = th__calloc(1, sizeof *c)))
        return 0; /* untracked: harmless, merely uncounted */
    c->evcon = evcon;
    c->s = s;
    HASH_ADD_PTR(s->conns, evcon, c);
    s->nconns++;
    evhttp_connection_set_closecb(evcon, conn_closed, c);
    return 0;
}

void th__conn_on_close(th__server *s, struct evhttp_request *r, th__close_fn fn, void *arg)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(r);
    if (!evcon)
        return;
    th__conn *c = NULL;
    HASH_FIND_PTR(s->conns, &evcon, c);
    if (c) {
        c->user = fn;
        c->user_arg = arg;
    } else {
        evhttp_connection_set_closecb(evcon, fn, arg); /* untracked connection */
    }
}

void th__conn_free_all(th__server *s)
{
    th__conn *c, *tmp;
    HASH_ITER(hh, s->conns, c, tmp)
    {
        HASH_DEL(s->conns, c);
        th__free(c);
    }
    s->nconns = 0;
}
