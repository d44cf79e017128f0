/*
 * The PostgreSQL store (private): shared between postgres.c (connections,
 * transactions, schema, wake-ups) and postgres_ops.c (the state machine in
 * SQL). Several processes on several machines may share one database; every
 * operation is one transaction, and rows are locked with FOR UPDATE (claims
 * and ticks with SKIP LOCKED), so nodes never act twice on one task.
 *
 * Lock order: a pooled connection is taken first (pool_mu is held only while
 * taking or returning one), then smu (a leaf: the PRNG, the id generator,
 * counters and interned queue names). No lock is held across a round trip to
 * the server except the connection itself.
 */
#ifndef TH_STORE_POSTGRES_H
#define TH_STORE_POSTGRES_H

#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>

#include "core/rng.h"
#include "core/ulid.h"
#include "store/store.h"

#define TH_PG_POOL 4             /* connections per store */
#define TH_PG_POLL_MS 1000       /* fallback poll: a lost notification costs this much latency */
#define TH_PG_CHANNEL "th_ready" /* + "_" and a hash of database and schema */
#define TH_PG_EVENTS "th_events"
#define TH_PG_TP_BUCKETS 10

typedef struct th__pg_name {
    struct th__pg_name *next;
    char name[]; /* a queue name, interned for events */
} th__pg_name;

typedef struct th__pg {
    th_store base;
    th__store_ops ops;
    char *conninfo;

    pthread_mutex_t pool_mu;
    pthread_cond_t pool_cv;
    PGconn *conns[TH_PG_POOL];
    int idle[TH_PG_POOL]; /* 1 when conns[i] is free to take */

    pthread_mutex_t smu;
    th__rng rng;
    th__ulid_gen ids;
    th__store_config cfg;
    th__store_stats st; /* counters of this node; counts come from the database */
    int64_t tp_sec[TH_PG_TP_BUCKETS];
    uint64_t tp_n[TH_PG_TP_BUCKETS];
    th__pg_name *names;

    /* The notifier: a thread LISTENing on its own connection, which hands
     * other nodes' ready notices and events to the engine (hooks). */
    th__store_hooks hooks;
    uint64_t node; /* random: tells this store's own notices from others' */
    /* Channels of this database and schema, so stores in other schemas of
     * one server do not hear each other. */
    char ch_ready[48], ch_events[48];
    pthread_t notifier;
    int has_notifier;
    pthread_mutex_t lmu; /* guards listening; a leaf */
    pthread_cond_t lcv;
    int listening;  /* 0 until the first LISTEN answered: 1 done, -1 failed */
    int wake_fd[2]; /* a pipe that stops the notifier */
    _Atomic int stopping;
} th__pg;

/* Counters one transaction adds to the node's, once it committed. */
typedef struct th__pg_delta {
    uint64_t submitted, completed, failed_attempts, retries;
    double run_ms_sum, wait_ms_sum;
    uint64_t run_n, wait_n;
} th__pg_delta;

/* One transaction in progress: its connection, and what it will report when
 * it commits. Events go to `pend` and reach the caller's buffer, numbered,
 * only after the commit, so a rolled-back attempt leaves no trace. */
typedef struct th__pg_tx {
    th__pg *p;
    PGconn *c;
    int64_t now;
    th__evbuf pend;
    _Atomic uint64_t pend_seq;
    th__pg_delta d;
    int dberr;        /* a statement failed: roll back */
    int abort;        /* the body refused: roll back, report nothing */
    char sqlstate[6]; /* of the failed statement */
    char errmsg[256]; /* of the failed statement */
} th__pg_tx;

/* A transaction body: returns a result for the caller (>= 0 or a TH_E*
 * code). When it set tx->dberr the transaction is rolled back and may be run
 * again on a fresh attempt. */
typedef int (*th__pg_body)(th__pg_tx *tx, void *arg);

/* How th__pg_run wraps a body. */
typedef enum th__pg_mode {
    TH_PG_READ,    /* no transaction: one consistent statement, or reads */
    TH_PG_DURABLE, /* a transaction whose COMMIT waits for the WAL flush */
    /* A transaction committed without waiting for the flush
     * (synchronous_commit off): for claim, heartbeat, progress, log and
     * tick, whose loss in a server crash only means a task runs again, as
     * store.h allows. A later durable commit flushes it too. */
    TH_PG_ASYNC,
} th__pg_mode;

/* Runs `body` in one transaction as `mode` says. Retries on a lost connection before COMMIT, a
 * deadlock, a serialization failure or a unique-key race; a COMMIT whose
 * outcome is unknown is never retried. On success the events, readiness and
 * deadlines the body noted are added to `ev` (may be NULL). A database
 * failure returns TH_EIO with a message in `err` (may be NULL). */
int th__pg_run(th__pg *p, th__pg_mode mode, th__pg_body body, void *arg, int64_t now, th__evbuf *ev,
               th_error *err);

/* Parameter lists for PQexecParams: text values, NULL for SQL NULL. */
#define TH_PG_MAXP 40
typedef struct th__pg_params {
    const char *v[TH_PG_MAXP];
    char buf[TH_PG_MAXP][24];
    int n;
} th__pg_params;
void th__pg_p_str(th__pg_params *pr, const char *s);
void th__pg_p_i64(th__pg_params *pr, int64_t x);
void th__pg_p_dbl(th__pg_params *pr, double x);

/* Runs one statement in tx; returns the result (PQclear it) or NULL after
 * noting the failure in tx (dberr, sqlstate, message). */
PGresult *th__pg_exec(th__pg_tx *tx, const char *sql, const th__pg_params *pr);
/* Like th__pg_exec for statements whose rows are not needed: 0 or -1. */
int th__pg_cmd(th__pg_tx *tx, const char *sql, const th__pg_params *pr);

/* A statement built piece by piece, for batches: SQL text and its
 * parameters grow together (each value appends its "$k"). Free with
 * th__pg_s_free; an allocation failure sets `oom` and th__pg_s_exec then
 * returns NULL without touching the database. */
typedef struct th__pg_stmt {
    char *sql;
    size_t len, cap;
    char **v;
    int n, capv;
    int oom;
} th__pg_stmt;
void th__pg_s_sql(th__pg_stmt *s, const char *text);
void th__pg_s_str(th__pg_stmt *s, const char *value);
void th__pg_s_i64(th__pg_stmt *s, int64_t value);
void th__pg_s_dbl(th__pg_stmt *s, double value);
PGresult *th__pg_s_exec(th__pg_tx *tx, th__pg_stmt *s);
/* The same builder used for an array literal's text (no parameters):
 * elements are appended quoted (NULL for a NULL value) or as numbers;
 * th__pg_s_array closes it and returns the text, or NULL on OOM. */
void th__pg_s_elem(th__pg_stmt *s, const char *value);
void th__pg_s_elem_i64(th__pg_stmt *s, int64_t value);
const char *th__pg_s_array(th__pg_stmt *s);
void th__pg_s_free(th__pg_stmt *s);

int64_t th__pg_i64(const PGresult *r, int row, int col);
/* The value, or NULL for SQL NULL; owned by r. */
const char *th__pg_str(const PGresult *r, int row, int col);

/* The interned copy of a queue name (lives as long as the store), or NULL on
 * OOM. */
const char *th__pg_intern(th__pg *p, const char *queue);

/* The operations (postgres_ops.c), installed by th__pg_store_open. */
extern const th__store_ops th__pg_ops;

#endif
