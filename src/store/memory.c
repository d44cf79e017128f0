/*
 * The memory store: qcore on its own, with no journal. Fast and not durable;
 * for pools that need no durability and for tests.
 */
#include "store/qcore.h"

th_store *th__memory_store_new(th_error *err)
{
    return th__qcore_new("memory", err);
}
