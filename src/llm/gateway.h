/*
 * The LLM gateway's internals (private to src/llm/gateway*.c): the gateway,
 * its providers and the calls in flight.
 *
 * Threads and locks. One gateway thread runs libcurl's multi interface and
 * owns every call's progress: target choice, admission, attempts, retries,
 * breakers, fallbacks, health checks. Other threads only put calls in the
 * inbox, ask for cancellation, and read snapshots. Lock order: gw->mu, then
 * call->mu. gw->mu guards the inbox, the cancel list, the provider list and
 * every provider's counters and state; the gateway thread holds it while it
 * processes and drops it while curl transfers data and while it sleeps in
 * epoll_wait. call->mu guards what a waiting caller reads: the ended
 * flag, the outcome and the buffered deltas.
 */
#ifndef TH_LLM_GATEWAY_H
#define TH_LLM_GATEWAY_H

#include <curl/curl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdint.h>

#include "core/heap.h"
#include "core/rng.h"
#include "llm/wire.h"
#include "llm/wire_impl.h"
#include "taskhive/llm.h"

#define TH__LLM_MAX_PROVIDERS 64
#define TH__LLM_NAME_MAX 63
/* In-flight requests to one provider above which a new transfer does not
 * look for an idle connection to reuse (gateway_http.c). */
#define TH__LLM_REUSE_MAX 128

typedef struct th__llm_call_list {
    struct th_llm_call *head, *tail;
    size_t n;
} th__llm_call_list;

/* A token bucket: `rate` tokens a minute, at most one second's worth saved
 * up (th__llm_bucket_cap). */
typedef struct th__llm_bucket {
    double rate; /* per minute; 0 = unlimited */
    double level;
    int64_t at_ms; /* when `level` was measured */
} th__llm_bucket;

typedef struct th__llm_provider {
    th_llm_provider_options o; /* strings below are owned copies */
    char *name, *base_url, *api_key, *model, *embed_model, *anthropic_version, *key_name;
    /* Admission. */
    int in_flight;
    th__llm_call_list queue; /* waiting for a slot, FIFO */
    th__llm_bucket req_bucket, tok_bucket;
    int64_t blocked_until_ms; /* Retry-After or an exhausted rate-limit window */
    /* Breaker. */
    th_llm_breaker_state breaker;
    int breaker_failures, breaker_successes;
    int64_t breaker_opened_ms;
    int probes; /* half-open attempts in flight */
    /* Health. */
    int healthy, health_failures, health_running;
    int64_t next_health_ms, last_health_wall;
    /* Counters. */
    uint64_t requests, successes, failures, retries, rate_limited;
    int64_t input_tokens, output_tokens;
    double cost_usd;
} th__llm_provider;

typedef struct th__llm_price {
    char *model;
    double in_per_m, out_per_m;
} th__llm_price;

/* A line of the spend ledger; dirty until the writer thread saved it. */
typedef struct th__llm_spend {
    th_llm_spend_row row;
    int dirty;
    uint64_t gen; /* bumped on each change; the writer clears dirty only for
                     the generation it saved */
} th__llm_spend;

typedef struct th__llm_budget {
    char scope[80]; /* "agent:NAME", "key:NAME", "total" */
    double daily_usd, monthly_usd;
    double reserved_usd; /* worst cases of the calls admitted and not ended */
} th__llm_budget;

typedef enum th__llm_call_kind {
    TH__LLM_CHAT = 0,
    TH__LLM_EMBED,
    TH__LLM_HEALTH,
} th__llm_call_kind;

enum { TH__TIMER_REQUEUE = 1, TH__TIMER_MOCK = 2 };

typedef enum th__llm_call_state {
    TH__CALL_INBOX = 0, /* handed to the gateway, not yet looked at */
    TH__CALL_QUEUED,    /* in a provider's queue, waiting for a slot */
    TH__CALL_TIMER,     /* waiting for its timer (backoff, mock tokens) */
    TH__CALL_RUNNING,   /* a transfer (or the mock) is under way */
    TH__CALL_ENDED,
} th__llm_call_state;

struct th_llm_call {
    th_llm_gateway *gw;
    th__llm_call_kind kind;
    th__llm_call_state state;
    struct th_llm_call *next, *prev; /* inbox, a provider queue, or the cancel list */
    struct th_llm_call *cnext;       /* the cancel list */
    int on_cancel_list;
    struct th_llm_call *anext, *aprev; /* every live call (gw->all) */

    /* The request, deep-copied into `mem` (one allocation). */
    th_llm_request req;
    void *mem;
    char **texts; /* embeddings: the texts (inside mem) */
    size_t ntexts;
    th_llm_done_fn done;
    void *ud;

    /* Progress (gateway thread). */
    size_t ti;           /* current target */
    th__llm_provider *p; /* its provider, once resolved */
    const char *model;   /* the model sent */
    int tries;           /* attempts on this target */
    int holds_slot;      /* counted in p->in_flight */
    int probe;           /* a half-open breaker probe */
    int64_t est_tokens;  /* estimated tokens of the call */
    double tok_charged;  /* taken from the token bucket by this attempt */
    double reserved_usd; /* held against budgets (rsv) while admitted */
    int rsv[3];          /* indices into gw->budgets; -1 = none */
    int64_t wake_ms;     /* TH__CALL_TIMER */
    int timer_action;    /* TH__TIMER_* */
    size_t heap_idx;
    int64_t start_ns, first_ns;
    int attempts;      /* over every target */
    int streamed;      /* a delta reached the caller: no retry, no fallback */
    th_error last_err; /* the last attempt's failure */
    int last_rc;

    /* The transfer in flight. */
    CURL *easy;
    struct curl_slist *hdrs;
    th__llm_http http;
    long status;
    th__llm_buf body; /* non-streamed answer or error body */
    th__llm_stream *stream;
    th__llm_limits limits;
    int write_failed; /* the write callback refused data */
    int feed_rc;      /* the stream parser's failure */
    th_error feed_err;
    char curl_err[CURL_ERROR_SIZE];
    size_t mock_off; /* mock streaming: bytes of resp.text sent */

    /* The outcome. */
    th_llm_response resp;
    float *vectors;
    int dim;
    th_llm_usage embed_usage;

    /* What a waiting caller reads (call->mu). */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ended;
    int rc;
    th_error err;
    int want_deltas;
    th__llm_buf deltas;
    int taken; /* the answer was moved out by th_llm_call_result */
    atomic_int cancel;
    int in_done, free_after_done;
};

struct th_llm_gateway {
    pthread_mutex_t mu;
    pthread_t thread;
    int thread_started;
    int stop;
    CURLM *multi;
    int epfd;         /* the sockets curl asks to watch, and wakefd */
    int wakefd;       /* an eventfd other threads write to wake the loop */
    int64_t curl_due; /* when curl wants its timeout action (mono ms); -1 none */
    th__rng rng;
    void (*on_event)(const th_llm_event *ev, void *ud);
    void *ud;

    th__llm_provider *prov[TH__LLM_MAX_PROVIDERS];
    int nprov;
    th__llm_price *prices;
    size_t nprices, capprices;

    th__llm_call_list inbox;
    th__llm_call_list finished; /* ended, their done callbacks not yet run */
    struct th_llm_call *all;    /* every live call (anext / aprev) */

    /* Spending (spend.c), under mu. */
    th__llm_spend *spend;
    size_t nspend, capspend;
    th__llm_budget *budgets;
    size_t nbudgets;
    sqlite3 *usage_db; /* NULL: memory only */
    pthread_t spend_thread;
    pthread_mutex_t spend_mu; /* the writer's sleep */
    pthread_cond_t spend_cv;
    int spend_stop;
    th_error spend_err; /* the writer's last failure (it tries again) */
    struct th_llm_call *cancels;
    th__heap timers; /* calls in TH__CALL_TIMER by wake_ms */
    size_t live;     /* calls handed over and not yet ended */
};

/* ---- gateway_calls.c: call objects ---------------------------------------- */

/* A call of `kind` with a deep copy of `req` (NULL for health checks).
 * NULL with err on OOM. Free with th__llm_call_destroy. */
struct th_llm_call *th__llm_call_new(th_llm_gateway *gw, th__llm_call_kind kind,
                                     const th_llm_request *req, th_error *err);
/* Copies the texts of an embedding call into it; TH_ENOMEM. */
int th__llm_call_set_texts(struct th_llm_call *c, const char *const *texts, size_t n);
/* Frees a call and everything it owns. Accepts NULL. */
void th__llm_call_destroy(struct th_llm_call *c);
/* Appends delta text for a waiting caller (takes call->mu). */
void th__llm_call_push_delta(struct th_llm_call *c, const char *text, size_t len);

void th__llm_list_push(th__llm_call_list *l, struct th_llm_call *c);
void th__llm_list_push_front(th__llm_call_list *l, struct th_llm_call *c);
struct th_llm_call *th__llm_list_pop(th__llm_call_list *l);
void th__llm_list_remove(th__llm_call_list *l, struct th_llm_call *c);

/* ---- gateway_loop.c: the gateway thread ----------------------------------- */

/* The gateway thread's body. */
void *th__llm_loop(void *arg);
/* Starts a call taken from the inbox (gw->mu held; gateway thread). */
void th__llm_begin_call(th_llm_gateway *gw, struct th_llm_call *c, int64_t now);
/* The provider named `name`, or NULL (gw->mu held). */
th__llm_provider *th__llm_find_provider(th_llm_gateway *gw, const char *name);
/* The most tokens a bucket holds. */
double th__llm_bucket_cap(const th__llm_bucket *b);
/* The price of `model` (gw->mu held); NULL when unknown. */
th__llm_price *th__llm_find_price(th_llm_gateway *gw, const char *model);

/* ---- spend.c: the ledger and budgets --------------------------------------- */

/* Opens (creating) the usage file, loads its ledger and starts the writer
 * thread. gw->mu must be initialised. TH_EIO with err. */
int th__llm_spend_open(th_llm_gateway *gw, const char *path, th_error *err);
/* Stops the writer, saves what changed, frees the ledger and budgets. */
void th__llm_spend_close(th_llm_gateway *gw);
/* Adds a successful call's usage to today's line (gw->mu held). */
void th__llm_spend_record(th_llm_gateway *gw, const th__llm_provider *p, const char *model,
                          const char *agent, const th_llm_usage *u, double cost);
/* Checks the budgets call `c` on provider `p` is subject to (its agent's,
 * the provider's key's, the total) against their spend plus what admitted
 * calls reserved plus `worst`, and reserves `worst` in each (gw->mu held).
 * 0, or TH_EBUDGET with err naming the scope (nothing reserved then). */
int th__llm_budget_reserve(th_llm_gateway *gw, struct th_llm_call *c, const th__llm_provider *p,
                           double worst, th_error *err);
/* Gives back what th__llm_budget_reserve held for `c`; idempotent. */
void th__llm_budget_release(th_llm_gateway *gw, struct th_llm_call *c);
/* A call's worst-case cost on `model`: its estimated input plus max_tokens
 * of output at the model's price (gw->mu held). */
double th__llm_worst_cost(th_llm_gateway *gw, const struct th_llm_call *c, const char *model);

/* ---- gateway_http.c: transfers -------------------------------------------- */

/* Sets up the multi handle's socket and timer callbacks over an epoll set
 * and the wake-up eventfd. TH_ENOMEM / TH_EIO. */
int th__llm_io_init(th_llm_gateway *gw);
/* Closes what th__llm_io_init made (after curl_multi_cleanup). */
void th__llm_io_close(th_llm_gateway *gw);
/* Waits up to `wait_ms` for sockets or the wake-up, then lets curl work on
 * the ready sockets and its due timeouts (gateway thread, without gw->mu). */
void th__llm_io_run(th_llm_gateway *gw, long wait_ms);
/* Wakes the gateway thread from any thread. */
void th__llm_io_wake(th_llm_gateway *gw);

/* Builds and adds the curl transfer of the call's current attempt.
 * TH_EINVAL / TH_ENOMEM with err (nothing added then). */
int th__llm_transfer_start(th_llm_gateway *gw, struct th_llm_call *c, th_error *err);
/* Removes and frees the call's transfer, if any. */
void th__llm_transfer_stop(th_llm_gateway *gw, struct th_llm_call *c);
/* The outcome of a finished transfer: 0 (resp or vectors filled), or a
 * failure with `retriable` set when the attempt may be repeated and
 * `breaker` set when it counts against the provider's health. */
int th__llm_transfer_outcome(struct th_llm_call *c, CURLcode cc, int *retriable, int *breaker,
                             th_error *err);

#endif
