/*
 * Spending: the gateway's ledger of usage and cost per UTC day, provider,
 * model, agent and key; budgets per agent, per key and in total; and the
 * optional SQLite file that keeps the ledger across restarts.
 *
 * The ledger lives in memory under gw->mu (a few rows a day: one per
 * combination actually used). A writer thread copies the rows changed since
 * its last pass, once a second, and upserts them in one transaction, so the
 * gateway thread never waits for the disk.
 */
#include "llm/gateway.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/error.h"

#define FLUSH_MS 1000

static void utc_day(char day[11])
{
    time_t t = (time_t)(th__wall_ms() / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(day, 11, "%Y-%m-%d", &tm);
}

static void copy(char *dst, size_t cap, const char *s)
{
    snprintf(dst, cap, "%s", s ? s : "");
}

/* The row for (today, provider, model, agent, key), made when new (gw->mu
 * held); NULL on OOM. */
static th__llm_spend *row_for(th_llm_gateway *gw, const char *day, const char *provider,
                              const char *model, const char *agent, const char *key)
{
    for (size_t i = gw->nspend; i-- > 0;) {
        th_llm_spend_row *r = &gw->spend[i].row;
        if (strcmp(r->day, day) == 0 && strcmp(r->provider, provider) == 0 &&
            strcmp(r->model, model) == 0 && strcmp(r->agent, agent ? agent : "") == 0 &&
            strcmp(r->key, key) == 0)
            return &gw->spend[i];
    }
    if (gw->nspend == gw->capspend) {
        size_t cap = gw->capspend ? gw->capspend * 2 : 16;
        th__llm_spend *n = th__realloc(gw->spend, cap * sizeof *n);
        if (!n)
            return NULL;
        gw->spend = n;
        gw->capspend = cap;
    }
    th__llm_spend *s = &gw->spend[gw->nspend++];
    memset(s, 0, sizeof *s);
    copy(s->row.day, sizeof s->row.day, day);
    copy(s->row.provider, sizeof s->row.provider, provider);
    copy(s->row.model, sizeof s->row.model, model);
    copy(s->row.agent, sizeof s->row.agent, agent);
    copy(s->row.key, sizeof s->row.key, key);
    return s;
}

void th__llm_spend_record(th_llm_gateway *gw, const th__llm_provider *p, const char *model,
                          const char *agent, const th_llm_usage *u, double cost)
{
    char day[11];
    utc_day(day);
    th__llm_spend *s = row_for(gw, day, p->name, model ? model : "", agent, p->key_name);
    if (!s)
        return; /* out of memory: the provider's own counters still hold it */
    s->row.requests++;
    s->row.input_tokens += u->input_tokens;
    s->row.output_tokens += u->output_tokens;
    s->row.cost_usd += cost;
    s->dirty = 1;
    s->gen++;
}

/* Splits a scope "agent:NAME" / "key:NAME" / "total" into its kind and name. */
static int parse_scope(const char *scope, int *kind, const char **name)
{
    if (!scope)
        return TH_EINVAL;
    if (strcmp(scope, "total") == 0) {
        *kind = 0;
        *name = "";
        return 0;
    }
    if (strncmp(scope, "agent:", 6) == 0 && scope[6]) {
        *kind = 1;
        *name = scope + 6;
    } else if (strncmp(scope, "key:", 4) == 0 && scope[4]) {
        *kind = 2;
        *name = scope + 4;
    } else {
        return TH_EINVAL;
    }
    return strlen(*name) < 64 ? 0 : TH_EINVAL;
}

/* Spend of a scope today and this month (gw->mu held). */
static void spent(th_llm_gateway *gw, int kind, const char *name, double *today, double *month)
{
    char day[11];
    utc_day(day);
    *today = *month = 0;
    for (size_t i = 0; i < gw->nspend; i++) {
        const th_llm_spend_row *r = &gw->spend[i].row;
        if ((kind == 1 && strcmp(r->agent, name) != 0) || (kind == 2 && strcmp(r->key, name) != 0))
            continue;
        if (strncmp(r->day, day, 7) != 0)
            continue;
        *month += r->cost_usd;
        if (strcmp(r->day, day) == 0)
            *today += r->cost_usd;
    }
}

static int budget_index(th_llm_gateway *gw, const char *scope)
{
    for (size_t i = 0; i < gw->nbudgets; i++)
        if (strcmp(gw->budgets[i].scope, scope) == 0)
            return (int)i;
    return -1;
}

int th__llm_budget_reserve(th_llm_gateway *gw, struct th_llm_call *c, const th__llm_provider *p,
                           double worst, th_error *err)
{
    if (gw->nbudgets == 0) /* the common case: nothing to check or hold */
        return 0;
    char scopes[3][80];
    snprintf(scopes[0], sizeof scopes[0], "agent:%s", c->req.agent ? c->req.agent : "");
    snprintf(scopes[1], sizeof scopes[1], "key:%s", p->key_name);
    snprintf(scopes[2], sizeof scopes[2], "total");
    int idx[3];
    for (int i = 0; i < 3; i++) {
        idx[i] = i == 0 && !c->req.agent ? -1 : budget_index(gw, scopes[i]);
        if (idx[i] < 0)
            continue;
        th__llm_budget *b = &gw->budgets[idx[i]];
        int kind;
        const char *name;
        parse_scope(scopes[i], &kind, &name);
        double today, month;
        spent(gw, kind, name, &today, &month);
        /* Calls admitted and not yet ended count with their worst case, so
         * many concurrent calls cannot each pass against the same rest. */
        double held = b->reserved_usd + worst;
        if (b->daily_usd > 0 && today + held > b->daily_usd)
            return th__err(err, TH_EBUDGET, "",
                           "%s: daily budget of %.4f USD reached (spent %.4f, %.4f held by calls "
                           "in flight)",
                           scopes[i], b->daily_usd, today, b->reserved_usd);
        if (b->monthly_usd > 0 && month + held > b->monthly_usd)
            return th__err(err, TH_EBUDGET, "",
                           "%s: monthly budget of %.4f USD reached (spent %.4f, %.4f held by "
                           "calls in flight)",
                           scopes[i], b->monthly_usd, month, b->reserved_usd);
    }
    for (int i = 0; i < 3; i++) {
        c->rsv[i] = idx[i];
        if (idx[i] >= 0)
            gw->budgets[idx[i]].reserved_usd += worst;
    }
    c->reserved_usd = worst;
    return 0;
}

void th__llm_budget_release(th_llm_gateway *gw, struct th_llm_call *c)
{
    for (int i = 0; i < 3; i++) {
        if (c->rsv[i] < 0)
            continue;
        th__llm_budget *b = &gw->budgets[c->rsv[i]];
        b->reserved_usd -= c->reserved_usd;
        if (b->reserved_usd < 1e-12)
            b->reserved_usd = 0;
        c->rsv[i] = -1;
    }
    c->reserved_usd = 0;
}

int th_llm_set_budget(th_llm_gateway *gw, const char *scope, double daily_usd, double monthly_usd)
{
    int kind;
    const char *name;
    if (parse_scope(scope, &kind, &name) < 0 || !(daily_usd >= 0) || !(monthly_usd >= 0))
        return TH_EINVAL;
    int rc = 0;
    pthread_mutex_lock(&gw->mu);
    int at = budget_index(gw, scope);
    th__llm_budget *b = at >= 0 ? &gw->budgets[at] : NULL;
    if (!b) {
        th__llm_budget *n = th__realloc(gw->budgets, (gw->nbudgets + 1) * sizeof *n);
        if (!n) {
            rc = TH_ENOMEM;
            goto out;
        }
        gw->budgets = n;
        b = &gw->budgets[gw->nbudgets++];
        memset(b, 0, sizeof *b);
        copy(b->scope, sizeof b->scope, scope);
    }
    b->daily_usd = daily_usd;
    b->monthly_usd = monthly_usd;
out:
    pthread_mutex_unlock(&gw->mu);
    return rc;
}

int th_llm_spent(th_llm_gateway *gw, const char *scope, double *today_usd, double *month_usd)
{
    int kind;
    const char *name;
    if (parse_scope(scope, &kind, &name) < 0)
        return TH_EINVAL;
    pthread_mutex_lock(&gw->mu);
    spent(gw, kind, name, today_usd, month_usd);
    pthread_mutex_unlock(&gw->mu);
    return 0;
}

static int row_cmp(const void *a, const void *b)
{
    const th_llm_spend_row *x = a, *y = b;
    int c;
    if ((c = strcmp(x->day, y->day)) || (c = strcmp(x->provider, y->provider)) ||
        (c = strcmp(x->model, y->model)) || (c = strcmp(x->agent, y->agent)))
        return c;
    return strcmp(x->key, y->key);
}

int th_llm_spend(th_llm_gateway *gw, const char *since_day, th_llm_spend_row **rows, size_t *n)
{
    *rows = NULL;
    *n = 0;
    pthread_mutex_lock(&gw->mu);
    th_llm_spend_row *out = th__malloc((gw->nspend ? gw->nspend : 1) * sizeof *out);
    if (!out) {
        pthread_mutex_unlock(&gw->mu);
        return TH_ENOMEM;
    }
    size_t k = 0;
    for (size_t i = 0; i < gw->nspend; i++)
        if (!since_day || strcmp(gw->spend[i].row.day, since_day) >= 0)
            out[k++] = gw->spend[i].row;
    pthread_mutex_unlock(&gw->mu);
    qsort(out, k, sizeof *out, row_cmp);
    *rows = out;
    *n = k;
    return 0;
}

/* ---- the file ------------------------------------------------------------- */

static const char *SCHEMA =
    "CREATE TABLE IF NOT EXISTS llm_spend ("
    " day TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,"
    " agent TEXT NOT NULL, key TEXT NOT NULL, requests INTEGER NOT NULL,"
    " input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,"
    " cost_usd REAL NOT NULL, PRIMARY KEY (day, provider, model, agent, key))";

static const char *UPSERT = "INSERT INTO llm_spend VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                            " ON CONFLICT (day, provider, model, agent, key) DO UPDATE SET"
                            " requests = ?6, input_tokens = ?7, output_tokens = ?8, cost_usd = ?9";

/* Writes the rows changed since the last pass. A row is marked clean only
 * when the generation saved is still its latest and the commit succeeded;
 * otherwise the next pass writes it again. */
static void flush(th_llm_gateway *gw)
{
    pthread_mutex_lock(&gw->mu);
    size_t k = 0, n = gw->nspend;
    th_llm_spend_row *rows = th__malloc((n ? n : 1) * sizeof *rows);
    size_t *at = th__malloc((n ? n : 1) * sizeof *at);
    uint64_t *gen = th__malloc((n ? n : 1) * sizeof *gen);
    for (size_t i = 0; rows && at && gen && i < n; i++)
        if (gw->spend[i].dirty) {
            rows[k] = gw->spend[i].row;
            gen[k] = gw->spend[i].gen;
            at[k++] = i;
        }
    pthread_mutex_unlock(&gw->mu);
    int ok = k > 0 && rows && at && gen;
    sqlite3_stmt *st = NULL;
    if (ok && sqlite3_exec(gw->usage_db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        ok = 0;
    else if (ok) {
        if (sqlite3_prepare_v2(gw->usage_db, UPSERT, -1, &st, NULL) != SQLITE_OK)
            ok = 0;
        for (size_t i = 0; ok && i < k; i++) {
            const th_llm_spend_row *r = &rows[i];
            sqlite3_bind_text(st, 1, r->day, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 2, r->provider, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 3, r->model, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 4, r->agent, -1, SQLITE_STATIC);
            sqlite3_bind_text(st, 5, r->key, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 6, (sqlite3_int64)r->requests);
            sqlite3_bind_int64(st, 7, r->input_tokens);
            sqlite3_bind_int64(st, 8, r->output_tokens);
            sqlite3_bind_double(st, 9, r->cost_usd);
            ok = sqlite3_step(st) == SQLITE_DONE;
            sqlite3_reset(st);
        }
        sqlite3_finalize(st);
        if (!ok || sqlite3_exec(gw->usage_db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            sqlite3_exec(gw->usage_db, "ROLLBACK", NULL, NULL, NULL);
            ok = 0;
        }
    }
    if (ok) {
        pthread_mutex_lock(&gw->mu);
        for (size_t i = 0; i < k; i++)
            if (gw->spend[at[i]].gen == gen[i])
                gw->spend[at[i]].dirty = 0;
        pthread_mutex_unlock(&gw->mu);
    } else if (k) {
        th__err(&gw->spend_err, TH_EIO, "usage_path", "%s", sqlite3_errmsg(gw->usage_db));
    }
    th__free(rows);
    th__free(at);
    th__free(gen);
}

static void *writer(void *arg)
{
    th_llm_gateway *gw = arg;
    pthread_mutex_lock(&gw->spend_mu);
    while (!gw->spend_stop) {
        struct timespec dl = th__mono_deadline(FLUSH_MS);
        pthread_cond_timedwait(&gw->spend_cv, &gw->spend_mu, &dl);
        pthread_mutex_unlock(&gw->spend_mu);
        flush(gw);
        pthread_mutex_lock(&gw->spend_mu);
    }
    pthread_mutex_unlock(&gw->spend_mu);
    return NULL;
}

int th__llm_spend_open(th_llm_gateway *gw, const char *path, th_error *err)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK ||
        sqlite3_exec(db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_busy_timeout(db, 5000) != SQLITE_OK ||
        sqlite3_exec(db, SCHEMA, NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "SELECT * FROM llm_spend", -1, &st, NULL) != SQLITE_OK) {
        th__err(err, TH_EIO, "usage_path", "%s: %s", path, db ? sqlite3_errmsg(db) : "cannot open");
        sqlite3_close(db);
        return TH_EIO;
    }
    int rc = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *col[5];
        for (int i = 0; i < 5; i++)
            col[i] = (const char *)sqlite3_column_text(st, i);
        th__llm_spend *s = row_for(gw, col[0] ? col[0] : "", col[1] ? col[1] : "",
                                   col[2] ? col[2] : "", col[3], col[4] ? col[4] : "");
        if (!s) {
            rc = th__err(err, TH_ENOMEM, "", "out of memory");
            break;
        }
        s->row.requests = (uint64_t)sqlite3_column_int64(st, 5);
        s->row.input_tokens = sqlite3_column_int64(st, 6);
        s->row.output_tokens = sqlite3_column_int64(st, 7);
        s->row.cost_usd = sqlite3_column_double(st, 8);
    }
    sqlite3_finalize(st);
    if (rc == 0) {
        gw->usage_db = db;
        pthread_mutex_init(&gw->spend_mu, NULL);
        th__cond_init_mono(&gw->spend_cv);
        if (pthread_create(&gw->spend_thread, NULL, writer, gw) != 0) {
            pthread_mutex_destroy(&gw->spend_mu);
            pthread_cond_destroy(&gw->spend_cv);
            gw->usage_db = NULL;
            rc = th__err(err, TH_ENOMEM, "", "cannot start the usage writer");
        }
    }
    if (rc < 0)
        sqlite3_close(db);
    return rc;
}

void th__llm_spend_close(th_llm_gateway *gw)
{
    if (gw->usage_db) {
        pthread_mutex_lock(&gw->spend_mu);
        gw->spend_stop = 1;
        pthread_cond_signal(&gw->spend_cv);
        pthread_mutex_unlock(&gw->spend_mu);
        pthread_join(gw->spend_thread, NULL);
        flush(gw);
        sqlite3_close(gw->usage_db);
        gw->usage_db = NULL;
        pthread_mutex_destroy(&gw->spend_mu);
        pthread_cond_destroy(&gw->spend_cv);
    }
    th__free(gw->spend);
    th__free(gw->budgets);
    gw->spend = NULL;
    gw->budgets = NULL;
    gw->nspend = gw->capspend = gw->nbudgets = 0;
}
