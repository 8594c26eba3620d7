/*
 * The error model: one list of codes (OB_ERROR_LIST) gives the constants,
 * their names and their messages; a caller-owned ob_error_t carries the
 * details of one failure.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/internal.h"

struct error_entry {
    int code;
    const char *name;
    const char *message;
};

static const struct error_entry error_table[] = {
#define OB_ERROR_ENTRY(name, value, msg) {value, "OB_E" #name, msg},
    OB_ERROR_LIST(OB_ERROR_ENTRY)
#undef OB_ERROR_ENTRY
};

static const struct error_entry *error_find(int code)
{
    size_t i;

    for (i = 0; i < OB__ARRAY_LEN(error_table); i++) {
        if (error_table[i].code == code)
            return &error_table[i];
    }
    return NULL;
}

const char *ob_error_name(int code)
{
    const struct error_entry *e = error_find(code);

    if (code == 0)
        return "OB_OK";
    return e != NULL ? e->name : "OB_E?";
}

const char *ob_strerror(int code)
{
    const struct error_entry *e = error_find(code);

    if (code == 0)
        return "success";
    return e != NULL ? e->message : "unknown error code";
}

int ob_error_is_retriable(const ob_error_t *err)
{
    return err != NULL && (err->flags & OB_ERROR_RETRIABLE) != 0;
}

/* Drops trailing newlines and blanks, which libpq and strerror add. */
static void message_trim(char *msg)
{
    size_t len = strlen(msg);

    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' ' ||
                       msg[len - 1] == '\r' || msg[len - 1] == '\t'))
        msg[--len] = '\0';
}

static void error_vfill(ob_error_t *err, int code, ob_domain_t domain,
                        int native, unsigned flags, const char *fmt,
                        va_list ap)
{
    err->code = code;
    err->domain = domain;
    err->native = native;
    err->sqlstate[0] = '\0';
    err->flags = flags;
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    message_trim(err->message);
}

int ob__error_set(ob_error_t *err, int code, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        return code;

    va_start(ap, fmt);
    error_vfill(err, code, OB_DOMAIN_ONCEBOX, 0, 0, fmt, ap);
    va_end(ap);
    return code;
}

int ob__error_full(ob_error_t *err, int code, ob_domain_t domain,
                   int native, unsigned flags, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        return code;

    va_start(ap, fmt);
    error_vfill(err, code, domain, native, flags, fmt, ap);
    va_end(ap);
    return code;
}

int ob__error_sys(ob_error_t *err, int errnum, const char *what)
{
    unsigned flags = 0;
    char buf[128];

    if (errnum == EINTR || errnum == EAGAIN || errnum == ENOMEM)
        flags = OB_ERROR_RETRIABLE;
    if (errnum == ENOMEM)
        return ob__error_full(err, OB_ENOMEM, OB_DOMAIN_SYSTEM, errnum,
                              flags, "%s: out of memory", what);

    return ob__error_full(err, OB_ESYS, OB_DOMAIN_SYSTEM, errnum, flags,
                          "%s: %s", what,
                          strerror_r(errnum, buf, sizeof(buf)));
}

void ob__error_prefix(ob_error_t *err, const char *fmt, ...)
{
    char prefix[OB_ERROR_MESSAGE_MAX];
    char old[OB_ERROR_MESSAGE_MAX];
    va_list ap;

    if (err == NULL)
        return;

    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, err->message, sizeof(old));

    /* A message cut at the buffer's end is still worth more than none. */
    if (snprintf(err->message, sizeof(err->message), "%s: %s", prefix,
                 old) < 0)
        memcpy(err->message, old, sizeof(old));
}

int ob__error_nomem(ob_error_t *err, const char *what)
{
    return ob__error_full(err, OB_ENOMEM, OB_DOMAIN_SYSTEM, ENOMEM,
                          OB_ERROR_RETRIABLE, "out of memory (%s)", what);
}
