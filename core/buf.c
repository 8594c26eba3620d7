#include <string.h>

#include "core/buf.h"
#include "core/internal.h"

static int buf_reserve(ob__buf_t *b, size_t extra)
{
    size_t need, cap;
    char *grown;

    if (b->failed)
        return -1;
    if (extra > SIZE_MAX - b->len - 1)
        goto fail;

    need = b->len + extra + 1;
    if (need <= b->cap)
        return 0;

    cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    grown = ob__realloc(b->data, cap);
    if (grown == NULL)
        goto fail;
    b->data = grown;
    b->cap = cap;
    return 0;

fail:
    b->failed = 1;
    return -1;
}

void ob__buf_append(ob__buf_t *b, const char *s, size_t n)
{
    if (buf_reserve(b, n) != 0)
        return;

    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void ob__buf_puts(ob__buf_t *b, const char *s)
{
    ob__buf_append(b, s, strlen(s));
}

void ob__buf_putc(ob__buf_t *b, char c)
{
    ob__buf_append(b, &c, 1);
}

void ob__buf_json_string(ob__buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t i, start = 0;
    char esc[6];

    ob__buf_putc(b, '"');
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        ob__buf_append(b, s + start, i - start);
        start = i + 1;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            ob__buf_append(b, esc, 2);
            continue;
        }
        memcpy(esc, "\\u00", 4);
        esc[4] = hex[c >> 4];
        esc[5] = hex[c & 0xf];
        ob__buf_append(b, esc, 6);
    }
    ob__buf_append(b, s + start, n - start);
    ob__buf_putc(b, '"');
}

void ob__buf_array_elem(ob__buf_t *b, const char *s, size_t n)
{
    size_t i, start = 0;

    if (buf_reserve(b, n + 2) != 0)
        return;

    ob__buf_putc(b, '"');
    for (i = 0; i < n; i++) {
        if (s[i] != '"' && s[i] != '\\')
            continue;
        ob__buf_append(b, s + start, i - start);
        ob__buf_putc(b, '\\');
        start = i;
    }
    ob__buf_append(b, s + start, n - start);
    ob__buf_putc(b, '"');
}

void ob__buf_reset(ob__buf_t *b)
{
    b->len = 0;
    b->failed = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

void ob__buf_free(ob__buf_t *b)
{
    ob__free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->failed = 0;
}
