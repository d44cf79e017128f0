/*
 * Daemon configuration: defaults that run with nothing configured, then an
 * INI file (systemd-like sections), then TASKHIVE_* environment variables,
 * then command-line flags. Every bad key or value is refused with the file,
 * the line and the reason.
 */
#ifndef TH_SERVER_CONFIG_H
#define TH_SERVER_CONFIG_H

#include <stddef.h>

#include "pool/ctx.h"
#include "server/llm_config.h"
#include "taskhive/pool.h"
#include "taskhive/store.h"
#include "taskhive/supervisor.h"

enum {
    TH_SCOPE_READ = 1,
    TH_SCOPE_SUBMIT = 2,
    TH_SCOPE_WORKER = 4,
    TH_SCOPE_ADMIN = 8,
};

typedef struct th__token {
    char name[64];
    unsigned char hash[32]; /* SHA-256 of the token; the token itself is never stored */
    unsigned scopes;
} th__token;

/* One [service.NAME] section: the spec and the strings it points to. */
typedef struct th__svc_conf {
    char name[TH_SERVICE_NAME_MAX + 1];
    int line;
    th_service_spec spec;
    char **argv, **env, **deps;
    size_t argc, nenv, ndeps;
    char *command, *cwd, *user, *cron, *group, *trigger_queue;
    char *health_command, *health_url, *health_host;
} th__svc_conf;

typedef struct th__group_conf {
    char name[TH_SERVICE_NAME_MAX + 1];
    th_group_strategy strategy;
} th__group_conf;

typedef struct th__config {
    char *file; /* the INI file read, or NULL */
    char host[256];
    int port;
    char *data_dir;
    char *store; /* a store uri; NULL = sqlite in data_dir */
    th_durability durability;
    th_log_level log_level;
    size_t max_body; /* a request body; a batch may use max_batch_body */
    size_t max_batch_body;
    int max_batch;
    int request_timeout_s;
    size_t max_connections;
    size_t max_queued; /* waiting tasks before submits get 429; 0 = no limit */
    int64_t drain_grace_ms;
    size_t event_buffer; /* events kept for Last-Event-ID resume */
    int pool_enabled;
    th_pool_options pool;
    th__kv *handlers; /* [handlers] key = value, for th_pool_set_config */
    size_t nhandlers;
    th__token *tokens;
    size_t ntokens;
    char *port_file;
    int check_only;
    /* The supervisor (svc_config.c). */
    char *sv_log_dir;
    int64_t sv_sample_ms;
    th__svc_conf *svcs;
    size_t nsvcs;
    th__group_conf *groups;
    size_t ngroups;
    /* The LLM gateway and agents (llm_config.c). */
    th__llm_conf llm;
} th__config;

/*
 * Fills `c` from defaults, the file (--config or TASKHIVE_CONFIG), the
 * environment and `argv` (argv[0] is "serve"). Returns 0, 1 after printing
 * help (the caller exits 0), or -1 with one line in `err`.
 */
int th__config_load(th__config *c, int argc, char **argv, char *err, size_t errlen);
void th__config_free(th__config *c);
/* 1 when the configured address is a loopback one. */
int th__config_loopback(const th__config *c);

#endif
