/*
 * Unit tests of the JSON validator and the canonical form that content
 * keys hash. The tables were checked against PostgreSQL 15: every
 * document in valid_docs and canonical_cases is accepted by
 * '...'::jsonb, every one in invalid_docs refused (the depth cases
 * excepted, which oncebox refuses earlier on purpose), and each
 * canonical form is jsonb-equal to its input.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/internal.h"
#include "oncebox/dedup.h"
#include "tests/support/failalloc.h"

/* A string literal and its length, embedded NUL bytes included. */
#define DOC(s) s, sizeof(s) - 1

struct valid_case {
    const char *doc;
    size_t len;
};

struct invalid_case {
    const char *doc;
    size_t len;
    int code;
    size_t at; /* the byte the message must name */
};

struct canonical_case {
    const char *doc;
    const char *canonical;
};

static const struct valid_case valid_docs[] = {
    {DOC("0")},
    {DOC("-0")},
    {DOC("true")},
    {DOC("false")},
    {DOC("null")},
    {DOC("\"\"")},
    {DOC("[]")},
    {DOC("{}")},
    {DOC(" \t\r\n[ ]\r\n")},
    {DOC("{\"a\":1,\"a\":2}")},
    {DOC("[1E5, 1e-5, 1E+5, -0.0E-0]")},
    {DOC("1e131071")}, /* the largest power numeric holds */
    {DOC("9.999e131071")},
    {DOC("-1e131071")},
    {DOC("0.1e131072")},
    {DOC("0e131072")},     /* zero has no weight */
    {DOC("0e1073741822")}, /* just below INT_MAX / 2 */
    {DOC("1e-16383")},     /* the largest display scale */
    {DOC("1.5e-16382")},
    {DOC("0e-16383")},
    {DOC("1e0000000000000000000000000001")},
    {DOC("\"\\uffff\\ufffe\"")}, /* noncharacters are characters */
    {DOC("\"\xef\xbf\xbf\"")},
    {DOC("\"\\udbff\\udfff\"")}, /* U+10FFFF */
    {DOC("\"\xf4\x8f\xbf\xbf\"")},
    {DOC("\"\x7f\"")}, /* DEL needs no escape */
    {DOC("\"\\u2028\xe2\x80\xa9\"")},
    {DOC("\"\\uD83D\\uDE00\"")},
    {DOC("{\"\":{\"\":[]}}")},
};

static const struct invalid_case invalid_docs[] = {
    /* Empty input and whitespace jsonb does not accept. */
    {DOC(""), OB_EJSON, 0},
    {DOC("   "), OB_EJSON, 3},
    {DOC("\f1"), OB_EJSON, 0},
    {DOC("\v1"), OB_EJSON, 0},
    {DOC("1\xc2\xa0"), OB_EJSON, 1},
    {DOC("\xef\xbb\xbf{}"), OB_EJSON, 0},
    /* Raw NUL bytes, wherever they are. */
    {DOC("[1]\0"), OB_ENUL, 3},
    {DOC("\"a\0b\""), OB_ENUL, 2},
    {DOC("\0"), OB_ENUL, 0},
    {DOC("\"\\\0\""), OB_ENUL, 2},
    /* Bytes that are not UTF-8. */
    {DOC("\"\xc0\xaf\""), OB_EUTF8, 1},
    {DOC("\"\xe0\x80\xaf\""), OB_EUTF8, 1},
    {DOC("\"\xf0\x80\x80\xaf\""), OB_EUTF8, 1},
    {DOC("\"\xed\xa0\x80\""), OB_EUTF8, 1},
    {DOC("\"\xf4\x90\x80\x80\""), OB_EUTF8, 1},
    {DOC("\"\xf5\x80\x80\x80\""), OB_EUTF8, 1},
    {DOC("\"\xc3\""), OB_EUTF8, 1},
    {DOC("\"ab\xe2\x82"), OB_EUTF8, 3},
    {DOC("\"\x80\""), OB_EUTF8, 1},
    {DOC("\"\xff\""), OB_EUTF8, 1},
    {DOC("[\xff]"), OB_EUTF8, 1},
    /* Strings. */
    {DOC("\"\x01\""), OB_EJSON, 1},
    {DOC("\"a\tb\""), OB_EJSON, 2},
    {DOC("\"\x1f\""), OB_EJSON, 1},
    {DOC("\"\\ud800\""), OB_EJSON, 1},
    {DOC("\"\\udc00\""), OB_EJSON, 1},
    {DOC("\"\\udc00\\ud800\""), OB_EJSON, 1},
    {DOC("\"\\ud800\\u0041\""), OB_EJSON, 1},
    {DOC("\"x\\ud800\\ud800\""), OB_EJSON, 2},
    {DOC("\"\\ud800\\n\""), OB_EJSON, 1},
    {DOC("\"\\u0000\""), OB_EJSON, 1},
    {DOC("{\"\\u0000\":1}"), OB_EJSON, 2},
    {DOC("\"\\x41\""), OB_EJSON, 1},
    {DOC("\"\\U00e9\""), OB_EJSON, 1},
    {DOC("\"\\u00g9\""), OB_EJSON, 1},
    {DOC("\"\\u12\""), OB_EJSON, 1},
    {DOC("\"\\"), OB_EJSON, 2},
    {DOC("\"abc"), OB_EJSON, 4},
    /* Numbers. */
    {DOC("01"), OB_EJSON, 1},
    {DOC("-01"), OB_EJSON, 2},
    {DOC("00"), OB_EJSON, 1},
    {DOC("+1"), OB_EJSON, 0},
    {DOC(".5"), OB_EJSON, 0},
    {DOC("1."), OB_EJSON, 2},
    {DOC("[1.e5]"), OB_EJSON, 3},
    {DOC("-"), OB_EJSON, 1},
    {DOC("-a"), OB_EJSON, 1},
    {DOC("1e"), OB_EJSON, 2},
    {DOC("1e+"), OB_EJSON, 3},
    {DOC("0x10"), OB_EJSON, 1},
    {DOC("NaN"), OB_EJSON, 0},
    {DOC("Infinity"), OB_EJSON, 0},
    {DOC("-Infinity"), OB_EJSON, 1},
    /* Numbers PostgreSQL's numeric cannot hold. */
    {DOC("1e131072"), OB_EJSON, 0},
    {DOC("[10e131071]"), OB_EJSON, 1},
    {DOC("1e-16384"), OB_EJSON, 0},
    {DOC("1.50e-16382"), OB_EJSON, 0},
    {DOC("0e-16384"), OB_EJSON, 0},
    {DOC("0e1073741823"), OB_EJSON, 0},
    {DOC("1e99999999999999999999"), OB_EJSON, 0},
    /* Literals. */
    {DOC("nul"), OB_EJSON, 0},
    {DOC("True"), OB_EJSON, 0},
    {DOC("truex"), OB_EJSON, 4},
    /* Structure. */
    {DOC("[1,]"), OB_EJSON, 3},
    {DOC("{\"a\":1,}"), OB_EJSON, 7},
    {DOC("[,1]"), OB_EJSON, 1},
    {DOC("{,}"), OB_EJSON, 1},
    {DOC("[1]x"), OB_EJSON, 3},
    {DOC("{} {}"), OB_EJSON, 3},
    {DOC("\"a\"\"b\""), OB_EJSON, 3},
    {DOC("[]]"), OB_EJSON, 2},
    {DOC("1 2"), OB_EJSON, 2},
    {DOC("{\"a\" 1}"), OB_EJSON, 5},
    {DOC("{1:1}"), OB_EJSON, 1},
    {DOC("{\"a\":1 \"b\":2}"), OB_EJSON, 7},
    {DOC("[1 2]"), OB_EJSON, 3},
    {DOC("[true false]"), OB_EJSON, 6},
    {DOC("["), OB_EJSON, 1},
    {DOC("{\"a\":"), OB_EJSON, 5},
    {DOC("{\"a\""), OB_EJSON, 4},
    {DOC("[}"), OB_EJSON, 1},
    {DOC("{]"), OB_EJSON, 1},
};

static const struct canonical_case canonical_cases[] = {
    /* Whitespace and key order. */
    {" \t\r\n{ \"b\" : [ 1 , 2 ] ,\n\"a\":{}}\n", "{\"a\":{},\"b\":[1,2]}"},
    {"{\"b\":1,\"a\":2,\"ab\":3,\"\":4,\"B\":5}",
     "{\"\":4,\"B\":5,\"a\":2,\"ab\":3,\"b\":1}"},
    {"{\"aa\":1,\"a\":2,\"a\\u0000b\":3}", NULL}, /* \u0000: invalid */
    {"{\"ab\":1,\"a\":2,\"abc\":3}", "{\"a\":2,\"ab\":1,\"abc\":3}"},
    /* Bytes, not UTF-16 units: U+FFFF sorts before U+1F600. */
    {"{\"\xf0\x9f\x98\x80\":1,\"\\uffff\":2}",
     "{\"\xef\xbf\xbf\":2,\"\xf0\x9f\x98\x80\":1}"},
    {"{\"\xc3\xa9\":1,\"z\":2}", "{\"z\":2,\"\xc3\xa9\":1}"},
    /* Keys compare unescaped. */
    {"{\"\\u0062\":1,\"a\":2}", "{\"a\":2,\"b\":1}"},
    {"{\"a\\\"b\":1,\"a\":2}", "{\"a\":2,\"a\\\"b\":1}"},
    /* Duplicate keys: the last one wins, at every level. */
    {"{\"a\":1,\"b\":2,\"a\":3}", "{\"a\":3,\"b\":2}"},
    {"{\"a\":{\"x\":1},\"a\":{\"y\":2}}", "{\"a\":{\"y\":2}}"},
    {"{\"\\u00e9\":1,\"z\":0,\"\xc3\xa9\":2}", "{\"z\":0,\"\xc3\xa9\":2}"},
    {"[{\"k\":1,\"k\":[{\"k\":2,\"k\":3}]}]", "[{\"k\":[{\"k\":3}]}]"},
    /* Nested objects sort inside arrays too. */
    {"{\"z\":{\"b\":[{\"d\":1,\"c\":2}],\"a\":null},\"a\":[]}",
     "{\"a\":[],\"z\":{\"a\":null,\"b\":[{\"c\":2,\"d\":1}]}}"},
    /* Unicode escapes and minimal re-escaping. */
    {"\"\\u00e9\"", "\"\xc3\xa9\""},
    {"\"\\u00E9\"", "\"\xc3\xa9\""},
    {"\"\xc3\xa9\"", "\"\xc3\xa9\""},
    {"\"\\ud83d\\ude00\"", "\"\xf0\x9f\x98\x80\""},
    {"\"\\uD83D\\uDE00\"", "\"\xf0\x9f\x98\x80\""},
    {"\"\xf0\x9f\x98\x80\"", "\"\xf0\x9f\x98\x80\""},
    {"\"\\/\"", "\"/\""},
    {"\"a/b\"", "\"a/b\""},
    {"\"\\u0041\\u005C\\u0022\"", "\"A\\\\\\\"\""},
    {"\"\\\"\\\\\"", "\"\\\"\\\\\""},
    {"\"\\u0008\\u000c\\u000A\\u000d\\u0009\"", "\"\\b\\f\\n\\r\\t\""},
    {"\"\\b\\f\\n\\r\\t\"", "\"\\b\\f\\n\\r\\t\""},
    {"\"\\u001F\\u0001\\u000B\\u007f\"", "\"\\u001f\\u0001\\u000b\x7f\""},
    {"{\"\\n\\u0001\":\"\\u20ac\"}", "{\"\\n\\u0001\":\"\xe2\x82\xac\"}"},
    /* Numbers: zero. */
    {"-0", "0"},
    {"0.0", "0"},
    {"0e5", "0"},
    {"-0.0e-5", "0"},
    {"0.000e+0", "0"},
    /* Numbers: one, spelled many ways. */
    {"1", "1"},
    {"1.0", "1"},
    {"1e0", "1"},
    {"1E+0", "1"},
    {"10e-1", "1"},
    {"0.1e1", "1"},
    {"100e-2", "1"},
    /* Integers up to 21 digits are written plainly, exactly. */
    {"100", "100"},
    {"1e2", "100"},
    {"-1.50e+3", "-1500"},
    {"9007199254740993", "9007199254740993"},
    {"123456789012345678901", "123456789012345678901"},
    {"1e20", "100000000000000000000"},
    {"1.5e20", "150000000000000000000"},
    {"-99999999999999999999.9e1", "-999999999999999999999"},
    /* Fractions in [1e-6, 1e21) are written plainly. */
    {"1.5", "1.5"},
    {"12.50", "12.5"},
    {"-0.25", "-0.25"},
    {"123.456e1", "1234.56"},
    {"0.000001", "0.000001"},
    {"1e-6", "0.000001"},
    {"0.00000123", "0.00000123"},
    {"123456789012345678901.5", "123456789012345678901.5"},
    /* Everything else has an exponent; every digit is kept. */
    {"1e21", "1e+21"},
    {"1E21", "1e+21"},
    {"1000000000000000000000", "1e+21"},
    {"1.2345e30", "1.2345e+30"},
    {"1234567890123456789012.5", "1.2345678901234567890125e+21"},
    {"123456789012345678901234567890", "1.2345678901234567890123456789e+29"},
    {"0.0000001", "1e-7"},
    {"1.5e-7", "1.5e-7"},
    {"-0.000000123", "-1.23e-7"},
    {"-5e-324", "-5e-324"},
    {"1e400", "1e+400"},
    {"1e-16383", "1e-16383"},
    {"1e131071", "1e+131071"},
    {"0.1e131072", "1e+131071"},
    {"1.10e-100", "1.1e-100"},
    /* Literals and top-level scalars. */
    {"[true,false,null]", "[true,false,null]"},
    {" \"x\" ", "\"x\""},
    {"\t42\n", "42"},
    {"[[],{},[{}],\"\"]", "[[],{},[{}],\"\"]"},
};

/* Checks that both calls refuse doc with code, naming byte at. */
static void assert_fails(const char *doc, size_t len, int code, size_t at)
{
    char prefix[64];
    char *out = (char *)"untouched";
    size_t out_len = 99;
    ob_error_t err;
    int rc;

    snprintf(prefix, sizeof(prefix), "invalid JSON at byte %zu: ", at);
    memset(&err, 0, sizeof(err));
    rc = ob_json_validate(doc, len, &err);
    if (rc != code || err.code != code ||
        strncmp(err.message, prefix, strlen(prefix)) != 0)
        fail_msg("%.40s: expected %s \"%s...\", got %s \"%s\"", doc,
                 ob_error_name(code), prefix, ob_error_name(rc), err.message);

    memset(&err, 0, sizeof(err));
    rc = ob_json_canonicalize(doc, len, &out, &out_len, &err);
    assert_int_equal(rc, code);
    assert_null(out);
    assert_int_equal(out_len, 0);
    assert_int_equal(strncmp(err.message, prefix, strlen(prefix)), 0);
}

/* The canonical form of doc; fails the test when there is none. */
static char *canonical(const char *doc, size_t len, size_t *out_lenp)
{
    ob_error_t err;
    char *out;
    int rc;

    rc = ob_json_canonicalize(doc, len, &out, out_lenp, &err);
    if (rc != 0)
        fail_msg("canonicalize(%.60s): %s", doc, err.message);
    assert_int_equal(strlen(out), *out_lenp);
    return out;
}

/* "[[[...]]]" nested depth times, or objects {"a":{"a":...1}}. */
static char *nested(int depth, int objects, size_t *lenp)
{
    size_t open = objects ? 5 : 1, len = (open + 1) * depth + 1, i;
    char *s = malloc(len + 1), *w = s;

    assert_non_null(s);
    for (i = 0; i < (size_t)depth; i++) {
        memcpy(w, objects ? "{\"a\":" : "[", open);
        w += open;
    }
    *w++ = '1';
    for (i = 0; i < (size_t)depth; i++)
        *w++ = objects ? '}' : ']';
    *w = '\0';
    *lenp = (size_t)(w - s);
    return s;
}

static void validator_accepts_what_jsonb_accepts(void **state)
{
    ob_error_t err;
    size_t i;

    (void)state;
    for (i = 0; i < OB__ARRAY_LEN(valid_docs); i++) {
        if (ob_json_validate(valid_docs[i].doc, valid_docs[i].len, &err))
            fail_msg("valid_docs[%zu] %s: %s", i, valid_docs[i].doc,
                     err.message);
    }
    for (i = 0; i < OB__ARRAY_LEN(canonical_cases); i++) {
        const struct canonical_case *c = &canonical_cases[i];

        if (c->canonical == NULL)
            continue;
        if (ob_json_validate(c->doc, strlen(c->doc), &err) != 0)
            fail_msg("canonical_cases[%zu] %s: %s", i, c->doc, err.message);
    }
}

static void validator_refuses_with_code_and_byte_offset(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < OB__ARRAY_LEN(invalid_docs); i++) {
        const struct invalid_case *c = &invalid_docs[i];

        assert_fails(c->doc, c->len, c->code, c->at);
    }
}

static void validator_messages_say_what_was_expected(void **state)
{
    ob_error_t err;

    (void)state;
    ob_json_validate(DOC("{\"amount\" 17}"), &err);
    assert_string_equal(err.message, "invalid JSON at byte 10: expected "
                                     "':' after object key");
    ob_json_validate(DOC("[1,2"), &err);
    assert_string_equal(err.message, "invalid JSON at byte 4: expected ',' "
                                     "or ']' after array element, found "
                                     "the end of input");
    ob_json_validate(DOC("\"\xed\xa0\x80\""), &err);
    assert_string_equal(err.message, "invalid JSON at byte 1: invalid "
                                     "UTF-8 (UTF-16 surrogate)");
    ob_json_validate(DOC("{\"a\":\"\0\"}"), &err);
    assert_string_equal(err.message, "invalid JSON at byte 6: raw NUL byte");
    ob_json_validate(DOC("\"\\u0000\""), &err);
    assert_string_equal(err.message, "invalid JSON at byte 1: \\u0000 is "
                                     "not allowed: jsonb cannot store it");
}

static void validator_reads_exactly_len_bytes(void **state)
{
    (void)state;
    assert_int_equal(ob_json_validate("[1]garbage", 3, NULL), 0);
    assert_int_equal(ob_json_validate("[1]", 2, NULL), OB_EJSON);
    assert_int_equal(ob_json_validate("\"ab\"", 3, NULL), OB_EJSON);
    assert_int_equal(ob_json_validate(NULL, 0, NULL), OB_EINVAL);
}

static void numbers_at_numeric_limits_are_told_apart(void **state)
{
    size_t len = 131072, i;
    char *s = malloc(len + 2);

    (void)state;
    assert_non_null(s);

    /* 131072 digits before the point fit; 131073 do not. */
    s[0] = '9';
    memset(s + 1, '0', len);
    assert_int_equal(ob_json_validate(s, len, NULL), 0);
    assert_fails(s, len + 1, OB_EJSON, 0);

    /* 16383 digits after the point fit, trailing zeros counted. */
    memcpy(s, "0.", 2);
    for (i = 2; i < 16383 + 2; i++)
        s[i] = i == 16383 + 1 ? '7' : '0';
    assert_int_equal(ob_json_validate(s, 16383 + 2, NULL), 0);
    s[16383 + 1] = '0';
    s[16383 + 2] = '7';
    assert_fails(s, 16383 + 3, OB_EJSON, 0);
    free(s);
}

static void nesting_stops_at_the_maximum_depth(void **state)
{
    size_t len;
    char *s;
    int objects;

    (void)state;
    for (objects = 0; objects <= 1; objects++) {
        s = nested(OB_JSON_MAX_DEPTH, objects, &len);
        assert_int_equal(ob_json_validate(s, len, NULL), 0);
        free(s);
        s = nested(OB_JSON_MAX_DEPTH + 1, objects, &len);
        assert_fails(s, len, OB_EJSON,
                     (size_t)OB_JSON_MAX_DEPTH * (objects ? 5 : 1));
        free(s);
    }
}

static void canonical_form_matches_the_vectors(void **state)
{
    size_t i, len;
    char *out;

    (void)state;
    for (i = 0; i < OB__ARRAY_LEN(canonical_cases); i++) {
        const struct canonical_case *c = &canonical_cases[i];

        if (c->canonical == NULL) {
            assert_int_equal(
                ob_json_canonicalize(c->doc, strlen(c->doc), &out, &len, NULL),
                OB_EJSON);
            continue;
        }
        out = canonical(c->doc, strlen(c->doc), &len);
        if (strcmp(out, c->canonical) != 0)
            fail_msg("canonical_cases[%zu] %s: expected %s, got %s", i, c->doc,
                     c->canonical, out);
        ob_free(out);
    }
}

static void canonical_form_of_spellings_of_one_document_is_equal(void **state)
{
    static const char *const spellings[] = {
        "{\"id\":7,\"tags\":[\"a\",\"\xc3\xa9\"],\"total\":12.5}",
        "{ \"total\" : 1.25e1, \"id\" : 7.0, \"tags\" : [\"a\", \"\\u00e9\"] }",
        "{\"tags\":[\"\\u0061\",\"\\u00E9\"],\"id\":70e-1,"
        "\"total\":12.50,\"id\":7}",
    };
    size_t i, len;
    char *out;

    (void)state;
    for (i = 0; i < OB__ARRAY_LEN(spellings); i++) {
        out = canonical(spellings[i], strlen(spellings[i]), &len);
        assert_string_equal(out, "{\"id\":7,\"tags\":[\"a\",\"\xc3\xa9\"],"
                                 "\"total\":12.5}");
        ob_free(out);
    }
}

static void assert_idempotent(const char *doc, size_t len)
{
    size_t once_len, twice_len;
    char *once, *twice;

    once = canonical(doc, len, &once_len);
    twice = canonical(once, once_len, &twice_len);
    assert_int_equal(once_len, twice_len);
    assert_memory_equal(once, twice, once_len);
    ob_free(twice);
    ob_free(once);
}

static void canonicalizing_twice_changes_nothing(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < OB__ARRAY_LEN(valid_docs); i++)
        assert_idempotent(valid_docs[i].doc, valid_docs[i].len);
    for (i = 0; i < OB__ARRAY_LEN(canonical_cases); i++) {
        if (canonical_cases[i].canonical != NULL)
            assert_idempotent(canonical_cases[i].doc,
                              strlen(canonical_cases[i].doc));
    }
}

static void deepest_documents_canonicalize_without_recursion(void **state)
{
    size_t len, out_len;
    char *s, *out;
    int objects;

    (void)state;
    for (objects = 0; objects <= 1; objects++) {
        s = nested(OB_JSON_MAX_DEPTH, objects, &len);
        out = canonical(s, len, &out_len);
        assert_int_equal(out_len, len);
        assert_memory_equal(out, s, len);
        ob_free(out);
        free(s);
    }
}

static void canonicalize_checks_its_arguments(void **state)
{
    char *out = (char *)"untouched";
    size_t len = 5;
    ob_error_t err;

    (void)state;
    assert_int_equal(ob_json_canonicalize(NULL, 1, &out, &len, &err),
                     OB_EINVAL);
    assert_null(out);
    assert_int_equal(len, 0);
    assert_int_equal(ob_json_canonicalize("1", 1, NULL, &len, &err), OB_EINVAL);
    assert_int_equal(ob_json_canonicalize("[1 ]", 4, &out, NULL, NULL), 0);
    assert_string_equal(out, "[1]");
    ob_free(out);
}

static void canonicalize_survives_every_failed_allocation(void **state)
{
    /* An escaped key (the key arena), objects (the member array) and an
     * output past the buffer's first 256 bytes (a reallocation). */
    static const char doc[] =
        "{\"k\\u00e9y\":[1e20,1e20,1e20,1e20,1e20,1e20,1e20,1e20,1e20,"
        "1e20,1e20,1e20,1e20,1e20,1e20,1e20],\"b\":{\"z\":1,\"a\":2}}";
    ob_error_t err;
    size_t len;
    char *out;
    long n;
    int rc;

    (void)state;
    for (n = 0;; n++) {
        obt_failalloc_install(n);
        out = NULL;
        rc = ob_json_canonicalize(doc, strlen(doc), &out, &len, &err);
        if (rc == 0) {
            assert_true(len > 256);
            assert_int_equal(obt_live_blocks, 1);
            ob_free(out);
        } else {
            assert_int_equal(rc, OB_ENOMEM);
            assert_int_equal(err.code, OB_ENOMEM);
            assert_true(ob_error_is_retriable(&err));
            assert_null(out);
        }
        assert_int_equal(obt_live_blocks, 0);
        obt_failalloc_remove();
        if (rc == 0)
            break;
    }
    assert_true(n >= 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(validator_accepts_what_jsonb_accepts),
        cmocka_unit_test(validator_refuses_with_code_and_byte_offset),
        cmocka_unit_test(validator_messages_say_what_was_expected),
        cmocka_unit_test(validator_reads_exactly_len_bytes),
        cmocka_unit_test(numbers_at_numeric_limits_are_told_apart),
        cmocka_unit_test(nesting_stops_at_the_maximum_depth),
        cmocka_unit_test(canonical_form_matches_the_vectors),
        cmocka_unit_test(canonical_form_of_spellings_of_one_document_is_equal),
        cmocka_unit_test(canonicalizing_twice_changes_nothing),
        cmocka_unit_test(deepest_documents_canonicalize_without_recursion),
        cmocka_unit_test(canonicalize_checks_its_arguments),
        cmocka_unit_test(canonicalize_survives_every_failed_allocation),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
