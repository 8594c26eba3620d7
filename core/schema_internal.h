/*
 * The migrations built into the library. tools/embed-sql.sh generates
 * the table from sql/NNN_name.sql; core/schema.c applies it. Private.
 */
#ifndef ONCEBOX_CORE_SCHEMA_INTERNAL_H
#define ONCEBOX_CORE_SCHEMA_INTERNAL_H

#include <stddef.h>

typedef struct ob__migration {
    int version;      /* from the file name, strictly increasing */
    const char *name; /* the file name without number and ".sql" */
    const char *sql;  /* with @SCHEMA@ and @SCHEMA_LITERAL@ placeholders */
} ob__migration_t;

extern const ob__migration_t ob__migrations[];
extern const size_t ob__migration_count;

/*
 * sql with every @SCHEMA@ replaced by schema as a quoted identifier and
 * every @SCHEMA_LITERAL@ by schema as a string literal (E'...' form, so
 * it reads the same whatever standard_conforming_strings is). A new
 * string for ob__free(), or NULL when out of memory.
 */
char *ob__schema_render(const char *sql, const char *schema);

#endif
