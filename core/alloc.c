/*
 * Allocation hooks. Every allocation the library makes goes through these
 * three pointers, so a test can make the Nth allocation fail and prove
 * that each path cleans up after itself.
 */
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

static ob_malloc_fn alloc_malloc = malloc;
static ob_realloc_fn alloc_realloc = realloc;
static ob_free_fn alloc_free = free;

int ob_set_allocator(ob_malloc_fn m, ob_realloc_fn r, ob_free_fn f)
{
    if (m == NULL && r == NULL && f == NULL) {
        alloc_malloc = malloc;
        alloc_realloc = realloc;
        alloc_free = free;
        return 0;
    }
    if (m == NULL || r == NULL || f == NULL)
        return OB_EINVAL;

    alloc_malloc = m;
    alloc_realloc = r;
    alloc_free = f;
    return 0;
}

void *ob__malloc(size_t size)
{
    return alloc_malloc(size == 0 ? 1 : size);
}

void *ob__calloc(size_t count, size_t size)
{
    void *p;

    if (size != 0 && count > SIZE_MAX / size)
        return NULL;

    p = ob__malloc(count * size);
    if (p != NULL)
        memset(p, 0, count * size);
    return p;
}

void *ob__realloc(void *ptr, size_t size)
{
    return alloc_realloc(ptr, size == 0 ? 1 : size);
}

void ob__free(void *ptr)
{
    if (ptr != NULL)
        alloc_free(ptr);
}

void ob_free(void *ptr)
{
    ob__free(ptr);
}

char *ob__strndup(const char *s, size_t len)
{
    char *copy = ob__malloc(len + 1);

    if (copy == NULL)
        return NULL;

    memcpy(copy, s, len);
    copy[len] = '\0';
    return copy;
}

char *ob__strdup(const char *s)
{
    return ob__strndup(s, strlen(s));
}
