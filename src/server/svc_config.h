/*
 * The supervisor's sections of the daemon configuration (svc_config.c).
 */
#ifndef TH_SERVER_SVC_CONFIG_H
#define TH_SERVER_SVC_CONFIG_H

#include "server/config.h"

/* Reads one key of [supervisor], [group.NAME] or [service.NAME]. Returns 1,
 * or 0 with a message in `err`. `line` is the key's line (for messages). */
int th__svc_config_key(th__config *c, const char *section, const char *key, const char *value,
                       int line, char *err, size_t errlen);
/* Validates every service once the file is read. 0, or -1 with `err`. */
int th__svc_config_finish(th__config *c, char *err, size_t errlen);
void th__svc_config_free(th__config *c);

#endif
