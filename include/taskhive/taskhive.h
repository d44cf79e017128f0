/*
 * taskhive: a durable background task queue, worker pools and a supervisor
 * for AI-agent and CPU work. This umbrella header includes the whole public
 * C API.
 */
#ifndef TASKHIVE_H
#define TASKHIVE_H

#include "common.h"
#include "engine.h"
#include "error.h"
#include "llm.h"
#include "pool.h"
#include "store.h"
#include "supervisor.h"
#include "task.h"

#endif
