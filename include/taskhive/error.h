/*
 * One error convention for the whole library: functions return int, 0 on
 * success and a negative TH_E* code on failure. Where the caller needs to know
 * *what* was wrong (which field of a request), the function also fills an
 * optional th_error.
 */
#ifndef TASKHIVE_ERROR_H
#define TASKHIVE_ERROR_H

#include "common.h"

enum {
    TH_OK = 0,
    TH_EINVAL = -1,     /* an argument or field is invalid */
    TH_ENOMEM = -2,     /* out of memory */
    TH_ENOTFOUND = -3,  /* no such task / queue / dependency */
    TH_EBUSY = -4,      /* queue full or resource in use; try again later */
    TH_ESTATE = -5,     /* not allowed in the task's current state */
    TH_ESTALE = -6,     /* lease token no longer valid: the lease expired or moved */
    TH_ETIMEDOUT = -7,  /* a wait ran out */
    TH_ECLOSED = -8,    /* the engine or store is shutting down */
    TH_EIO = -9,        /* storage I/O error */
    TH_ECORRUPT = -10,  /* database file is damaged or not a taskhive database */
    TH_EVERSION = -11,  /* database written by a newer schema version */
    TH_ETOOBIG = -12,   /* a value exceeds its size limit */
    TH_ECONFLICT = -13, /* conflicting request (e.g. duplicate id in a batch) */
    TH_EBUDGET = -14,   /* a spending budget would be exceeded */
    TH_EUPSTREAM = -15, /* an upstream service (LLM provider) failed or answered an error */
    TH_EUNAVAIL = -16,  /* a provider is unavailable: circuit open or unhealthy */
    TH_ECANCELED = -17, /* the call was cancelled by its caller */
};

/* Detail for a failed call. `field` names the offending input ("payload",
 * "deps[2]", "retry.multiplier") or is empty when no single field is at fault. */
typedef struct th_error {
    int code;
    char field[64];
    char message[256];
} th_error;

/* Returns a static, human-readable description of `code`. Never NULL. */
TH_EXPORT const char *th_strerror(int code);

/* Returns the symbolic name of `code` ("EINVAL"...); static; never NULL. */
TH_EXPORT const char *th_errname(int code);

#endif
