/*
 * The LLM sections of the daemon configuration (llm_config.c):
 *
 *   [llm]            usage_db, memory_db, default_provider, budget_daily,
 *                    budget_monthly, confidence_half_life
 *   [provider.NAME]  one provider of the gateway (every th_llm_provider_options
 *                    field; the key comes from the environment: api_key_env)
 *   [prices]         MODEL = INPUT, OUTPUT (USD per million tokens)
 *   [agent.NAME]     an agent definition (its keys are the agent module's)
 */
#ifndef TH_SERVER_LLM_CONFIG_H
#define TH_SERVER_LLM_CONFIG_H

#include "pool/ctx.h"
#include "taskhive/llm.h"

typedef struct th__provider_conf {
    char name[64];
    th_llm_provider_options o; /* strings point at the fields below */
    char *base_url, *model, *embed_model, *api_key_env, *key_name, *anthropic_version;
    char *api_key_store;   /* a key of the daemon's key store (keys.c) */
    char *restart_service; /* a [service.NAME] restarted when the provider turns unhealthy */
    double budget_daily, budget_monthly;
} th__provider_conf;

typedef struct th__price_conf {
    char *model;
    double in_per_m, out_per_m;
} th__price_conf;

typedef struct th__agent_conf {
    char name[64];
    th__kv *kv;
    size_t nkv;
} th__agent_conf;

typedef struct th__llm_conf {
    char *usage_db;  /* NULL = DATA_DIR/llm-usage.db */
    char *memory_db; /* NULL = DATA_DIR/memory.db */
    char *default_provider;
    double budget_daily, budget_monthly;
    int64_t half_life_ms; /* confidence decay of results; 0 = none */
    th__provider_conf *providers;
    size_t nproviders;
    th__price_conf *prices;
    size_t nprices;
    th__agent_conf *agents;
    size_t nagents;
} th__llm_conf;

/* Reads one key of [llm], [provider.NAME], [prices] or [agent.NAME]. Returns
 * 1, or 0 with a message in `err`. */
int th__llm_config_key(th__llm_conf *c, const char *section, const char *key, const char *value,
                       char *err, size_t errlen);
/* Checks what needs the whole file (a default provider that exists).
 * 0, or -1 with `err`. */
int th__llm_config_finish(th__llm_conf *c, char *err, size_t errlen);
void th__llm_config_free(th__llm_conf *c);

#endif
