/*
 * The daemon's supervisor and its routes (services.c).
 */
#ifndef TH_SERVER_SERVICES_H
#define TH_SERVER_SERVICES_H

#include "server/http.h"

/* Builds the supervisor from the configuration and starts every service
 * (no-op without [service.*] sections). 0, or -1 with `err`. */
int th__services_start(th__server *s, char *err, size_t errlen);
/* Stops every service in reverse dependency order (blocking). */
void th__services_stop(th__server *s);
void th__services_free(th__server *s);
/* /v1/services[/...] (q->seg[1] is "services"). */
void th__route_services(th__req *q, enum evhttp_cmd_type method);

#endif
