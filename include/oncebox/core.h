/*
 * oncebox core: version, errors, logging, configuration and memory.
 *
 * Every other oncebox header builds on this one. Nothing here talks to a
 * server.
 *
 * Conventions that hold for the whole library:
 *
 * - Fallible calls return an int: 0 on success, a negative OB_E* code on
 *   failure. They take an optional caller-owned ob_error_t * (NULL is
 *   allowed) that is filled on failure and left untouched on success.
 * - Retry loops branch on ob_error_is_retriable(), never on message text.
 * - Objects come from *_new() and go back with *_destroy(); every
 *   *_destroy() accepts NULL. A function that takes ownership of an
 *   argument says so and takes it also when it fails.
 * - The library never prints. Messages reach the log callback of the
 *   configuration an object was created from; without one they are
 *   dropped.
 */
#ifndef ONCEBOX_CORE_H
#define ONCEBOX_CORE_H

#include <stdarg.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(OB_BUILDING_LIBRARY) && defined(__GNUC__)
#define OB_API __attribute__((visibility("default")))
#else
#define OB_API
#endif

#if defined(__GNUC__)
#define OB_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define OB_PRINTF(fmt, args)
#endif

/*
 * Version. The ABI rule: the soname's number is OB_VERSION_MAJOR; a
 * release that removes or changes an exported function or a public struct
 * field bumps it. Minor releases only add.
 */
#define OB_VERSION_MAJOR 0
#define OB_VERSION_MINOR 1
#define OB_VERSION_PATCH 0
#define OB_VERSION_STRING "0.1.0"
#define OB_VERSION_NUMBER                                                  \
    (OB_VERSION_MAJOR * 10000 + OB_VERSION_MINOR * 100 + OB_VERSION_PATCH)

/* The version of the library actually loaded, as OB_VERSION_NUMBER. */
OB_API int ob_version(void);

/* The same as a string, e.g. "0.1.0". Static storage. */
OB_API const char *ob_version_string(void);

/*
 * Error codes. One list generates the constants, their names and their
 * messages. X(NAME, value, "message").
 */
#define OB_ERROR_LIST(X)                                                   \
    X(INVAL, -1, "invalid argument")                                       \
    X(NOMEM, -2, "out of memory")                                          \
    X(CONF, -3, "invalid configuration")                                   \
    X(NOTXN, -4, "connection is not inside a usable transaction")          \
    X(EMPTY, -5, "required field is empty")                                \
    X(TOOLONG, -6, "field is longer than its limit")                       \
    X(TOOBIG, -7, "payload is larger than the configured maximum")         \
    X(NUL, -8, "field contains a NUL byte")                                \
    X(UTF8, -9, "field is not valid UTF-8")                                \
    X(JSON, -10, "payload is not valid JSON")                              \
    X(NAME, -11, "name contains characters that are not allowed")          \
    X(RESERVED, -12, "header name is reserved by the wire contract")       \
    X(PG, -13, "PostgreSQL request failed")                                \
    X(KAFKA, -14, "Kafka request failed")                                  \
    X(LMDB, -15, "LMDB request failed")                                    \
    X(SYS, -16, "system call failed")                                      \
    X(SCHEMA, -17, "database schema is missing or too new")                \
    X(STATE, -18, "call not allowed in the object's current state")        \
    X(NOTFOUND, -19, "not found")                                          \
    X(TIMEOUT, -20, "timed out")                                           \
    X(INTERNAL, -21, "internal error")

enum {
#define OB_ERROR_ENUM(name, value, msg) OB_E##name = (value),
    OB_ERROR_LIST(OB_ERROR_ENUM)
#undef OB_ERROR_ENUM
    OB_OK = 0
};

/* Where an error came from, and so what ob_error_t.native means. */
typedef enum ob_domain {
    OB_DOMAIN_ONCEBOX = 0, /* native: 0 */
    OB_DOMAIN_POSTGRES,    /* native: 0; sqlstate holds the SQLSTATE */
    OB_DOMAIN_KAFKA,       /* native: rd_kafka_resp_err_t */
    OB_DOMAIN_LMDB,        /* native: the MDB_* or errno return code */
    OB_DOMAIN_SYSTEM       /* native: errno */
} ob_domain_t;

#define OB_ERROR_RETRIABLE 0x1u /* the same call may succeed later */
#define OB_ERROR_FATAL 0x2u     /* the object must be destroyed */

#define OB_ERROR_MESSAGE_MAX 512

/*
 * The caller-owned error. Zero it or leave it uninitialised: a failing
 * call overwrites every field. The message never ends in a newline and
 * never contains a password.
 */
typedef struct ob_error {
    int code;            /* OB_E* */
    ob_domain_t domain;  /* see ob_domain_t */
    int native;          /* the domain's own code */
    char sqlstate[6];    /* PostgreSQL SQLSTATE, or "" */
    unsigned flags;      /* OB_ERROR_RETRIABLE, OB_ERROR_FATAL */
    char message[OB_ERROR_MESSAGE_MAX];
} ob_error_t;

/* "OB_EJSON" for OB_EJSON, "OB_OK" for 0, "OB_E?" for unknown codes. */
OB_API const char *ob_error_name(int code);

/* The fixed message of a code, e.g. "payload is not valid JSON". */
OB_API const char *ob_strerror(int code);

/* Non-zero when err describes a failure worth retrying. NULL gives 0. */
OB_API int ob_error_is_retriable(const ob_error_t *err);

/*
 * Logging. Levels are syslog's: 0 emergency .. 7 debug. The facility is a
 * short tag such as "writer", "relay", "pg" or "kafka". The callback runs
 * on the thread that made the call which logs, or for librdkafka's logs
 * on one of librdkafka's threads; it must not call back into the object
 * that logs. message is only valid during the call and has no newline.
 */
enum {
    OB_LOG_ERR = 3,
    OB_LOG_WARNING = 4,
    OB_LOG_NOTICE = 5,
    OB_LOG_INFO = 6,
    OB_LOG_DEBUG = 7
};

typedef void (*ob_log_fn)(void *opaque, int level, const char *facility,
                          const char *message);

/*
 * Allocation. The three functions are used for every allocation the
 * library makes itself (libpq, librdkafka, LMDB and jansson allocate on
 * their own). Call before creating any oncebox object; not thread-safe.
 * Passing NULL for all three restores malloc, realloc and free.
 */
typedef void *(*ob_malloc_fn)(size_t size);
typedef void *(*ob_realloc_fn)(void *ptr, size_t size);
typedef void (*ob_free_fn)(void *ptr);

OB_API int ob_set_allocator(ob_malloc_fn m, ob_realloc_fn r, ob_free_fn f);

/* Frees memory that an oncebox call returned to the caller. NULL is ok. */
OB_API void ob_free(void *ptr);

/*
 * Configuration: string keys and string values, validated on set.
 *
 * Keys of the form "kafka.<property>" are handed to librdkafka unchanged
 * (without the prefix) by the objects that talk to Kafka, so its
 * properties are not mirrored one by one; librdkafka validates them when
 * such an object is created. Every other key must be one oncebox knows:
 * ob_conf_set() refuses unknown keys and bad values with OB_ECONF and a
 * message naming the key.
 *
 * A configuration is not thread-safe; objects created from it copy what
 * they need, so it may be changed or destroyed afterwards.
 */
typedef struct ob_conf ob_conf_t;

/* A new configuration holding the defaults. Free with ob_conf_destroy(). */
OB_API int ob_conf_new(ob_conf_t **confp, ob_error_t *err);

/* A new, independent copy of conf. Free with ob_conf_destroy(). */
OB_API int ob_conf_dup(const ob_conf_t *conf, ob_conf_t **copyp,
                       ob_error_t *err);

OB_API void ob_conf_destroy(ob_conf_t *conf);

/*
 * Sets name to value; both are copied. value NULL restores the default
 * (for a "kafka." key: removes it). Errors: OB_EINVAL (NULL name),
 * OB_ECONF (unknown key or bad value; nothing changed), OB_ENOMEM.
 */
OB_API int ob_conf_set(ob_conf_t *conf, const char *name, const char *value,
                       ob_error_t *err);

/*
 * The value of name: what was set, else the default, else NULL (unknown
 * key, or a "kafka." key not set). Borrowed: valid until the next
 * ob_conf_set() of that key or ob_conf_destroy().
 */
OB_API const char *ob_conf_get(const ob_conf_t *conf, const char *name);

/*
 * Routes the log of every object created from conf to fn with opaque,
 * for messages of level max_level and more severe. fn NULL silences.
 */
OB_API void ob_conf_set_log(ob_conf_t *conf, ob_log_fn fn, void *opaque,
                            int max_level);

/*
 * Calls fn for every key oncebox knows, with its current value and a one
 * line description, in a stable order (for --help and documentation).
 */
typedef void (*ob_conf_each_fn)(void *opaque, const char *name,
                                const char *value, const char *doc);

OB_API void ob_conf_each(const ob_conf_t *conf, ob_conf_each_fn fn,
                         void *opaque);

#ifdef __cplusplus
}
#endif

#endif
