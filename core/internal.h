/*
 * What the modules share inside the library. Never installed; nothing
 * outside the library's own sources and unit tests includes it.
 */
#ifndef ONCEBOX_CORE_INTERNAL_H
#define ONCEBOX_CORE_INTERNAL_H

#include <stdint.h>

#include "oncebox/core.h"

#define OB__ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Allocation through the hooks of ob_set_allocator(). */
void *ob__malloc(size_t size);
void *ob__calloc(size_t count, size_t size);
void *ob__realloc(void *ptr, size_t size);
void ob__free(void *ptr);
char *ob__strdup(const char *s);
char *ob__strndup(const char *s, size_t len);

/*
 * Fills err (when not NULL) with code in the oncebox domain and a
 * formatted message; returns code so that callers can write
 * "return ob__error_set(err, OB_EINVAL, ...)".
 */
int ob__error_set(ob_error_t *err, int code, const char *fmt, ...)
    OB_PRINTF(3, 4);

/* The same with an explicit domain, native code and flags. */
int ob__error_full(ob_error_t *err, int code, ob_domain_t domain,
                   int native, unsigned flags, const char *fmt, ...)
    OB_PRINTF(6, 7);

/* OB_ESYS from errno value errnum, message "what: strerror(errnum)". */
int ob__error_sys(ob_error_t *err, int errnum, const char *what);

/* Adds "context: " in front of the message already in err. */
void ob__error_prefix(ob_error_t *err, const char *fmt, ...)
    OB_PRINTF(2, 3);

/* OB_ENOMEM with "out of memory" and what was being allocated. */
int ob__error_nomem(ob_error_t *err, const char *what);

/* The log destination an object copies from its configuration. */
typedef struct ob__log {
    ob_log_fn fn;
    void *opaque;
    int max_level;
} ob__log_t;

void ob__log(const ob__log_t *log, int level, const char *facility,
             const char *fmt, ...) OB_PRINTF(4, 5);
void ob__vlog(const ob__log_t *log, int level, const char *facility,
              const char *fmt, va_list ap);

/* The log destination of conf (never NULL). */
const ob__log_t *ob__conf_log(const ob_conf_t *conf);

/*
 * Integer value of a known integer key. The value was validated when it
 * was set, so this cannot fail for keys of integer type.
 */
long long ob__conf_int(const ob_conf_t *conf, const char *name);

/* Calls fn for every "kafka." key set, with the prefix removed. Stops at
 * and returns the first non-zero return of fn. */
typedef int (*ob__conf_kafka_fn)(void *opaque, const char *name,
                                 const char *value);
int ob__conf_each_kafka(const ob_conf_t *conf, ob__conf_kafka_fn fn,
                        void *opaque);

/*
 * Text checks shared by every module that accepts names from users.
 * ob__utf8_valid: non-zero when s[0..len) is well-formed UTF-8 (no
 * overlong forms, no surrogates, nothing above U+10FFFF).
 */
int ob__utf8_valid(const char *s, size_t len);

/*
 * Checks a required text field: not NULL, not empty, no NUL in the first
 * len bytes (len is strlen(s) for C strings), valid UTF-8, at most max
 * bytes. field names the field in the message.
 */
int ob__check_text(const char *field, const char *s, size_t len,
                   size_t max, ob_error_t *err);

/*
 * Writes name as a quoted SQL identifier ("a""b") into a new string.
 * Returns NULL when out of memory.
 */
char *ob__sql_ident(const char *name);

/* Monotonic and wall clocks. */
int64_t ob__now_ms(void);      /* CLOCK_MONOTONIC, milliseconds */
int64_t ob__wall_ms(void);     /* CLOCK_REALTIME, ms since the epoch */

#endif
