/*
 * The daemon's LLM gateway and its routes (llm.c).
 */
#ifndef TH_SERVER_LLM_H
#define TH_SERVER_LLM_H

#include "server/http.h"

/* Makes the gateway from the configuration (providers, prices, budgets).
 * 0, or -1 with one line in `err`. */
int th__llm_start(th__server *s, char *err, size_t errlen);
/* Frees the gateway; calls still running end with TH_ECLOSED. */
void th__llm_stop(th__server *s);
/* Serves /v1/providers[/NAME] and /v1/spend; 0 when the path is not one of
 * them (nothing was sent). */
int th__route_llm(th__req *q, enum evhttp_cmd_type method);

#endif
