/*
 * The migration texts without a server: tools/embed-sql.sh carries every
 * byte of the sql/ files into the library, refuses badly named files,
 * and ob__schema_render() substitutes the schema name safely.
 */
#include <glob.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/internal.h"
#include "core/schema_internal.h"
#include "oncebox/schema.h"
#include "tests/support/failalloc.h"

static const char *root(void)
{
    const char *r = getenv("OB_ROOT");

    return r != NULL && r[0] != '\0' ? r : ".";
}

static char *read_all(FILE *f)
{
    size_t len = 0, cap = 4096, n;
    char *buf = malloc(cap);

    assert_non_null(buf);
    while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len - 1 == 0) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    buf[len] = '\0';
    return buf;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *text;

    if (f == NULL)
        fail_msg("cannot open %s", path);
    text = read_all(f);
    fclose(f);
    return text;
}

static void embedded_migrations_match_the_sql_files(void **state)
{
    char pattern[4096];
    glob_t files;
    size_t i;

    (void)state;
    snprintf(pattern, sizeof(pattern), "%s/sql/[0-9]*_*.sql", root());
    assert_int_equal(glob(pattern, 0, NULL, &files), 0);
    assert_int_equal(files.gl_pathc, ob__migration_count);
    assert_int_equal(ob_schema_latest(),
                     ob__migrations[ob__migration_count - 1].version);

    for (i = 0; i < files.gl_pathc; i++) {
        const ob__migration_t *m = &ob__migrations[i];
        const char *base = strrchr(files.gl_pathv[i], '/') + 1;
        char expected_name[256];
        char *text = read_file(files.gl_pathv[i]);

        snprintf(expected_name, sizeof(expected_name), "%d_%s.sql", m->version,
                 m->name);
        assert_int_equal(atoi(base), m->version);
        assert_string_equal(strchr(base, '_') + 1,
                            strchr(expected_name, '_') + 1);
        assert_string_equal(m->sql, text);
        if (i > 0)
            assert_true(m->version > ob__migrations[i - 1].version);
        free(text);
    }
    globfree(&files);
}

/* Decodes the C string literals of embed-sql.sh's output, in order. */
static char *decode_literals(const char *c)
{
    /* The only escapes embed-sql.sh writes, and what they stand for. */
    static const char from[] = "ntr\\\"?", to[] = "\n\t\r\\\"?";
    char *out = malloc(strlen(c) + 1), *w = out;
    const char *p = strstr(c, "\n     \""), *hit;

    assert_non_null(out);
    assert_non_null(p);
    while (p != NULL && strncmp(p, "\n     \"", 7) == 0) {
        for (p += 7; *p != '"'; p++) {
            if (*p != '\\') {
                *w++ = *p;
                continue;
            }
            hit = *++p != '\0' ? strchr(from, *p) : NULL;
            if (hit == NULL)
                fail_msg("unexpected escape \\%c", *p);
            *w++ = to[hit - from];
        }
        p = strchr(p, '\n');
    }
    *w = '\0';
    return out;
}

/* Runs embed-sql.sh on the files; returns its output, or NULL if it failed. */
static char *embed(const char *files)
{
    char cmd[8192];
    FILE *p;
    char *out;

    snprintf(cmd, sizeof(cmd), "sh '%s/tools/embed-sql.sh' %s 2>/dev/null",
             root(), files);
    p = popen(cmd, "r");
    assert_non_null(p);
    out = read_all(p);
    if (pclose(p) != 0) {
        free(out);
        return NULL;
    }
    return out;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");

    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static void embed_keeps_quotes_backslashes_tabs_and_trigraphs(void **state)
{
    static const char tricky[] =
        "SELECT 'it''s', E'a\\\\b', \"Odd \"\"x\"\"\";\n"
        "\tindented\twith tabs\r\n"
        "trigraphs ?\?= ?\?/ ?\?( and %s %d\n"
        "$$ body $$ -- \xe2\x82\xac\n"
        "\n"
        "no newline at the end";
    char dir[] = "/tmp/ob-embed-XXXXXX", path[128], files[160];
    char *out, *text;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/007_tricky.sql", dir);
    write_file(path, tricky);
    snprintf(files, sizeof(files), "'%s'", path);

    out = embed(files);
    assert_non_null(out);
    assert_non_null(strstr(out, "{7, \"tricky\","));
    assert_non_null(strstr(out, "ob__migration_count = 1;"));
    assert_null(strchr(out, '\t'));
    assert_null(strchr(out, '\r'));
    assert_null(strstr(out, "?\?"));

    /* The missing last newline is added; every other byte is kept. */
    text = decode_literals(out);
    assert_int_equal(strlen(text), strlen(tricky) + 1);
    assert_memory_equal(text, tricky, strlen(tricky));
    assert_int_equal(text[strlen(tricky)], '\n');

    free(text);
    free(out);
    unlink(path);
    rmdir(dir);
}

static void embed_refuses_badly_named_or_ordered_files(void **state)
{
    static const char *const sets[] = {
        "nonumber.sql",        "000_zero.sql",  "002_b.sql 001_a.sql",
        "001_a.sql 001_b.sql", "001_Upper.sql", "001_a.txt",
    };
    char dir[] = "/tmp/ob-embed-XXXXXX", files[512], path[128], *out;
    const char *p;
    size_t i, n;

    (void)state;
    assert_non_null(mkdtemp(dir));
    out = embed("");
    assert_null(out);

    for (i = 0; i < sizeof(sets) / sizeof(sets[0]); i++) {
        files[0] = '\0';
        for (p = sets[i]; *p != '\0'; p += n + (p[n] == ' ')) {
            n = strcspn(p, " ");
            snprintf(path, sizeof(path), "%s/%.*s", dir, (int)n, p);
            write_file(path, "SELECT 1;\n");
            snprintf(files + strlen(files), sizeof(files) - strlen(files),
                     " '%s'", path);
        }
        out = embed(files);
        if (out != NULL)
            fail_msg("embed-sql.sh accepted: %s", sets[i]);
    }

    /* The same files, well named and ordered, are accepted. */
    snprintf(path, sizeof(path), "%s/001_a.sql", dir);
    snprintf(files, sizeof(files), "'%s' '%s/002_b.sql'", path, dir);
    out = embed(files);
    assert_non_null(out);
    free(out);

    snprintf(files, sizeof(files), "rm -rf '%s'", dir);
    assert_int_equal(system(files), 0);
}

static void render_substitutes_both_placeholders(void **state)
{
    char *out;

    (void)state;
    out = ob__schema_render("CREATE TABLE @SCHEMA@.t; SELECT @SCHEMA_LITERAL@;"
                            " @x@ @SCHEMA @",
                            "We'ird \"S\" \\");
    assert_non_null(out);
    assert_string_equal(out, "CREATE TABLE \"We'ird \"\"S\"\" \\\".t;"
                             " SELECT E'We''ird \"S\" \\\\';"
                             " @x@ @SCHEMA @");
    ob__free(out);

    out = ob__schema_render("", "s");
    assert_non_null(out);
    assert_string_equal(out, "");
    ob__free(out);
}

static void render_survives_every_failing_allocation(void **state)
{
    const char *sql = ob__migrations[0].sql;
    char *good, *out;
    long n;

    (void)state;
    good = ob__schema_render(sql, "s");
    assert_non_null(good);

    for (n = 0;; n++) {
        obt_failalloc_install(n);
        out = ob__schema_render(sql, "s");
        if (out != NULL) {
            assert_int_equal(obt_live_blocks, 1);
            ob__free(out);
        }
        assert_int_equal(obt_failalloc_remove(), 0);
        if (out != NULL)
            break;
    }
    assert_true(n > 0);
    ob__free(good);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(embedded_migrations_match_the_sql_files),
        cmocka_unit_test(embed_keeps_quotes_backslashes_tabs_and_trigraphs),
        cmocka_unit_test(embed_refuses_badly_named_or_ordered_files),
        cmocka_unit_test(render_substitutes_both_placeholders),
        cmocka_unit_test(render_survives_every_failing_allocation),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
