/*
 * Checks of text that users hand to the library, quoting of SQL
 * identifiers, and clocks.
 */
#include <string.h>
#include <time.h>

#include "core/internal.h"

/* Length of the UTF-8 sequence starting at s, or 0 when it is invalid. */
static size_t utf8_sequence(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    size_t len, i;
    unsigned long cp;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (avail < len)
        return 0;

    for (i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }

    /* Overlong forms, UTF-16 surrogates and code points past U+10FFFF. */
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000))
        return 0;
    if ((cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
        return 0;
    return len;
}

int ob__utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, n;

    while (i < len) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        n = utf8_sequence(p + i, len - i);
        if (n == 0)
            return 0;
        i += n;
    }
    return 1;
}

int ob__check_text(const char *field, const char *s, size_t len,
                   size_t max, ob_error_t *err)
{
    if (s == NULL || len == 0)
        return ob__error_set(err, OB_EEMPTY, "%s is empty", field);
    if (memchr(s, '\0', len) != NULL)
        return ob__error_set(err, OB_ENUL, "%s contains a NUL byte", field);
    if (len > max)
        return ob__error_set(err, OB_ETOOLONG,
                             "%s is %zu bytes long, the limit is %zu", field,
                             len, max);
    if (!ob__utf8_valid(s, len))
        return ob__error_set(err, OB_EUTF8, "%s is not valid UTF-8", field);
    return 0;
}

char *ob__sql_ident(const char *name)
{
    size_t len = strlen(name), quotes = 0, i;
    char *out, *w;

    for (i = 0; i < len; i++)
        quotes += name[i] == '"';

    out = ob__malloc(len + quotes + 3);
    if (out == NULL)
        return NULL;

    w = out;
    *w++ = '"';
    for (i = 0; i < len; i++) {
        if (name[i] == '"')
            *w++ = '"';
        *w++ = name[i];
    }
    *w++ = '"';
    *w = '\0';
    return out;
}

static int64_t clock_ms(clockid_t id)
{
    struct timespec ts;

    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t ob__now_ms(void)
{
    return clock_ms(CLOCK_MONOTONIC);
}

int64_t ob__wall_ms(void)
{
    return clock_ms(CLOCK_REALTIME);
}
