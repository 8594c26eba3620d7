/*
 * The log: a callback per object, copied from its configuration, silent
 * when none is set. Messages are formatted only when they will be
 * delivered, so debug logging costs nothing when it is off.
 */
#include <stdio.h>

#include "core/internal.h"

void ob__vlog(const ob__log_t *log, int level, const char *facility,
              const char *fmt, va_list ap)
{
    char msg[1024];
    int n;

    if (log == NULL || log->fn == NULL || level > log->max_level)
        return;

    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    while (n > 0 && (size_t)n < sizeof(msg) && msg[n - 1] == '\n')
        msg[--n] = '\0';
    log->fn(log->opaque, level, facility, msg);
}

void ob__log(const ob__log_t *log, int level, const char *facility,
             const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    ob__vlog(log, level, facility, fmt, ap);
    va_end(ap);
}
