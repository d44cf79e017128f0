/*
 * Version and symbol-visibility macros shared by every public taskhive header.
 * The library is built with -fvisibility=hidden; only TH_EXPORT symbols are
 * part of the ABI.
 */
#ifndef TASKHIVE_COMMON_H
#define TASKHIVE_COMMON_H

#define TH_VERSION_MAJOR 0
#define TH_VERSION_MINOR 1
#define TH_VERSION_PATCH 0
#define TH_VERSION_STRING "0.1.0"

#if defined(__GNUC__) || defined(__clang__)
#define TH_EXPORT __attribute__((visibility("default")))
#else
#define TH_EXPORT
#endif

/* Returns TH_VERSION_STRING of the library actually linked. */
TH_EXPORT const char *th_version(void);

#endif
