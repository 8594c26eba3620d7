/*
 * A growable byte buffer with a sticky failure flag: a sequence of
 * appends needs one check at the end instead of one per call.
 */
#ifndef ONCEBOX_CORE_BUF_H
#define ONCEBOX_CORE_BUF_H

#include <stddef.h>

typedef struct ob__buf {
    char *data; /* NUL-terminated while len > 0 and !failed */
    size_t len;
    size_t cap;
    int failed; /* an allocation failed; the contents are incomplete */
} ob__buf_t;

#define OB__BUF_INIT {NULL, 0, 0, 0}

void ob__buf_append(ob__buf_t *b, const char *s, size_t n);
void ob__buf_puts(ob__buf_t *b, const char *s);
void ob__buf_putc(ob__buf_t *b, char c);

/* Appends s[0..n) as a JSON string, quotes included. s is valid UTF-8. */
void ob__buf_json_string(ob__buf_t *b, const char *s, size_t n);

/* Appends s[0..n) as one double-quoted element of a PostgreSQL array
 * literal in text form. */
void ob__buf_array_elem(ob__buf_t *b, const char *s, size_t n);

void ob__buf_reset(ob__buf_t *b);
void ob__buf_free(ob__buf_t *b);

#endif
