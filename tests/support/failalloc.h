/*
 * A failing allocator for tests: installed with ob_set_allocator(), it
 * fails the Nth allocation the library makes (counting from 0) and
 * counts the blocks still live, so a loop over N = 0, 1, 2, ... proves
 * that every allocation failure is reported as OB_ENOMEM and that each
 * path frees what it took. Header-only, for unit and integration tests.
 */
#ifndef ONCEBOX_TEST_FAILALLOC_H
#define ONCEBOX_TEST_FAILALLOC_H

#include <stdlib.h>

#include "oncebox/core.h"

static long obt_fail_at = -1;
static long obt_alloc_calls;
static long obt_live_blocks;

static inline void *obt_failing_malloc(size_t n)
{
    if (obt_alloc_calls++ == obt_fail_at)
        return NULL;
    obt_live_blocks++;
    return malloc(n);
}

static inline void *obt_failing_realloc(void *p, size_t n)
{
    void *q;

    if (obt_alloc_calls++ == obt_fail_at)
        return NULL;
    q = realloc(p, n);
    if (p == NULL && q != NULL)
        obt_live_blocks++;
    return q;
}

static inline void obt_counting_free(void *p)
{
    if (p != NULL)
        obt_live_blocks--;
    free(p);
}

/* Makes the nth allocation from now on fail; n < 0: none fails. */
static inline void obt_failalloc_install(long n)
{
    obt_fail_at = n;
    obt_alloc_calls = 0;
    obt_live_blocks = 0;
    ob_set_allocator(obt_failing_malloc, obt_failing_realloc,
                     obt_counting_free);
}

/* Restores malloc; returns the blocks allocated and not freed since. */
static inline long obt_failalloc_remove(void)
{
    ob_set_allocator(NULL, NULL, NULL);
    obt_fail_at = -1;
    return obt_live_blocks;
}

#endif
