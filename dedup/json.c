/*
 * JSON validation and canonical form.
 *
 * One scanner walks the input and hands out tokens; it alone decides
 * what is valid. The validator only runs it to the end. The canonicaliser
 * runs it twice: once to validate and count, once to build a flat tree
 * in arrays sized by the count, which it then writes out with sorted
 * members. Nesting is tracked on explicit stacks bounded by
 * OB_JSON_MAX_DEPTH, never by recursion.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/internal.h"
#include "oncebox/dedup.h"

/*
 * PostgreSQL 15 numeric limits, measured against a server: an exponent
 * of INT_MAX / 2 or more in magnitude is refused outright; the display
 * scale (digits after the point minus the exponent) must fit 14 bits;
 * the weight, in base-10000 digits, must fit an int16, so the leading
 * digit may stand at most at 10^131071.
 */
#define PG_EXPONENT_LIMIT 1073741823
#define PG_DSCALE_MAX 16383
#define PG_POWER_MAX 131071

/* Exponents are accumulated only up to here, which is past every limit. */
#define EXPONENT_SATURATE 10000000000LL

/* Plain notation for decimal exponents of the leading digit in here. */
#define PLAIN_POWER_MIN (-6)
#define PLAIN_POWER_MAX 20

typedef enum tok_kind {
    TOK_EOF,
    TOK_OBJECT_BEGIN,
    TOK_OBJECT_END,
    TOK_ARRAY_BEGIN,
    TOK_ARRAY_END,
    TOK_KEY,
    TOK_STRING,
    TOK_NUMBER,
    TOK_LITERAL
} tok_kind_t;

/* For strings off and len cover the contents between the quotes. */
typedef struct tok {
    tok_kind_t kind;
    size_t off;
    size_t len;
    int escaped;
} tok_t;

typedef enum scan_state {
    ST_VALUE,        /* after ':' or ',' in an array, or at the start */
    ST_VALUE_OR_END, /* after '[' */
    ST_KEY,          /* after ',' in an object */
    ST_KEY_OR_END,   /* after '{' */
    ST_COLON,        /* after a key */
    ST_NEXT,         /* after a value inside a container */
    ST_DONE          /* after the top-level value */
} scan_state_t;

typedef struct scan {
    const unsigned char *s;
    size_t len;
    size_t pos;
    scan_state_t state;
    int depth;
    unsigned char objects[OB_JSON_MAX_DEPTH / 8]; /* bit set: an object */
    size_t values;       /* values seen, containers included */
    size_t keys;         /* object keys seen */
    size_t escaped_keys; /* bytes of keys that contain escapes */
    ob_error_t *err;
} scan_t;

/* A number token taken apart; digit indexes run over the integer digits
 * followed by the fraction digits, as if there were no point. */
typedef struct num {
    size_t len;
    int negative;
    size_t int_off, int_len;
    size_t frac_off, frac_len;
    int64_t exponent; /* saturated at +-EXPONENT_SATURATE */
    int zero;
    size_t lead; /* first non-zero digit */
    size_t last; /* last non-zero digit */
} num_t;

static int fail(scan_t *sc, int code, size_t at, const char *what)
{
    return ob__error_set(sc->err, code, "invalid JSON at byte %zu: %s", at,
                         what);
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The 4 hex digits at p as a code unit, or -1 when they are not hex. */
static long hex4(const unsigned char *p)
{
    long v = 0;
    int i, d;

    for (i = 0; i < 4; i++) {
        d = hex_value(p[i]);
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/*
 * Length of the UTF-8 sequence at s (s[0] >= 0x80), or 0 with *why set
 * when it is not well-formed.
 */
static size_t utf8_check(const unsigned char *s, size_t avail, const char **why)
{
    unsigned char c = s[0], lo = 0x80, hi = 0xbf;
    size_t len, i;

    *why = "invalid UTF-8 (unexpected continuation byte)";
    if (c < 0xc0)
        return 0;
    *why = "invalid UTF-8 (overlong encoding)";
    if (c < 0xc2)
        return 0;
    *why = "invalid UTF-8 (code point above U+10FFFF)";
    if (c > 0xf4)
        return 0;

    len = c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    *why = "invalid UTF-8 (incomplete sequence)";
    for (i = 1; i < len; i++) {
        if (i >= avail || (s[i] & 0xc0) != 0x80)
            return 0;
    }

    /* The second byte's range excludes what the lead byte cannot start. */
    if (c == 0xe0 || c == 0xf0)
        lo = c == 0xe0 ? 0xa0 : 0x90;
    if (c == 0xed || c == 0xf4)
        hi = c == 0xed ? 0x9f : 0x8f;
    *why = s[1] < lo   ? "invalid UTF-8 (overlong encoding)"
           : c == 0xed ? "invalid UTF-8 (UTF-16 surrogate)"
                       : "invalid UTF-8 (code point above U+10FFFF)";
    return s[1] < lo || s[1] > hi ? 0 : len;
}

/*
 * Fails at the current position, where something else was expected. A
 * NUL byte or invalid UTF-8 there is reported as such, so the code says
 * what is wrong with the byte itself.
 */
static int unexpected(scan_t *sc, const char *expected)
{
    size_t at = sc->pos;
    const char *why;

    if (at >= sc->len)
        return ob__error_set(sc->err, OB_EJSON,
                             "invalid JSON at byte %zu: %s, found the end "
                             "of input",
                             at, expected);
    if (sc->s[at] == '\0')
        return fail(sc, OB_ENUL, at, "raw NUL byte");
    if (sc->s[at] >= 0x80 && utf8_check(sc->s + at, sc->len - at, &why) == 0)
        return fail(sc, OB_EUTF8, at, why);
    return fail(sc, OB_EJSON, at, expected);
}

/* Checks the \u escape at s[i] and returns its length, or fails. */
static int scan_unicode_escape(scan_t *sc, size_t i, size_t *lenp)
{
    const unsigned char *s = sc->s;
    long unit, low;

    unit = i + 6 <= sc->len ? hex4(s + i + 2) : -1;
    if (unit < 0)
        return fail(sc, OB_EJSON, i,
                    "invalid \\u escape: expected 4 hex digits");
    if (unit == 0)
        return fail(sc, OB_EJSON, i,
                    "\\u0000 is not allowed: jsonb cannot store it");
    if (unit >= 0xdc00 && unit <= 0xdfff)
        return fail(sc, OB_EJSON, i,
                    "low surrogate escape without a high surrogate before it");
    *lenp = 6;
    if (unit < 0xd800 || unit > 0xdbff)
        return 0;

    low = -1;
    if (i + 12 <= sc->len && s[i + 6] == '\\' && s[i + 7] == 'u')
        low = hex4(s + i + 8);
    if (low < 0xdc00 || low > 0xdfff)
        return fail(sc, OB_EJSON, i,
                    "high surrogate escape without a low "
                    "surrogate escape after it");
    *lenp = 12;
    return 0;
}

/* Checks the escape at s[*ip] (a backslash) and steps over it. */
static int scan_escape(scan_t *sc, size_t *ip)
{
    size_t i = *ip, n = 2;
    int rc;

    if (i + 1 >= sc->len)
        return fail(sc, OB_EJSON, sc->len, "unterminated string");

    switch (sc->s[i + 1]) {
    case '"':
    case '\\':
    case '/':
    case 'b':
    case 'f':
    case 'n':
    case 'r':
    case 't':
        break;
    case 'u':
        rc = scan_unicode_escape(sc, i, &n);
        if (rc != 0)
            return rc;
        break;
    case '\0':
        return fail(sc, OB_ENUL, i + 1, "raw NUL byte");
    default:
        return fail(sc, OB_EJSON, i, "invalid escape sequence");
    }
    *ip = i + n;
    return 0;
}

static int scan_control(scan_t *sc, size_t i)
{
    if (sc->s[i] == '\0')
        return fail(sc, OB_ENUL, i, "raw NUL byte");
    return ob__error_set(sc->err, OB_EJSON,
                         "invalid JSON at byte %zu: control character "
                         "U+%04X must be escaped in a string",
                         i, (unsigned)sc->s[i]);
}

/* Scans the string whose opening quote is at the current position. */
static int scan_string(scan_t *sc, tok_t *tok)
{
    const unsigned char *s = sc->s;
    size_t i = sc->pos + 1, n;
    const char *why;
    int rc;

    tok->off = i;
    tok->escaped = 0;
    for (;;) {
        if (i >= sc->len)
            return fail(sc, OB_EJSON, sc->len, "unterminated string");
        if (s[i] == '"')
            break;
        if (s[i] == '\\') {
            tok->escaped = 1;
            rc = scan_escape(sc, &i);
            if (rc != 0)
                return rc;
        } else if (s[i] < 0x20) {
            return scan_control(sc, i);
        } else if (s[i] < 0x80) {
            i++;
        } else {
            n = utf8_check(s + i, sc->len - i, &why);
            if (n == 0)
                return fail(sc, OB_EUTF8, i, why);
            i += n;
        }
    }
    tok->len = i - tok->off;
    sc->pos = i + 1;
    return 0;
}

static size_t count_digits(const unsigned char *s, size_t i, size_t len)
{
    size_t start = i;

    while (i < len && is_digit(s[i]))
        i++;
    return i - start;
}

static unsigned char num_digit(const unsigned char *s, const num_t *n, size_t k)
{
    if (k < n->int_len)
        return s[n->int_off + k];
    return s[n->frac_off + k - n->int_len];
}

/* Finds the first and last non-zero digit, or marks the number zero. */
static void num_find_significant(const unsigned char *s, num_t *n)
{
    size_t total = n->int_len + n->frac_len, k;

    for (k = 0; k < total && num_digit(s, n, k) == '0'; k++)
        ;
    n->zero = k == total;
    if (n->zero)
        return;

    n->lead = k;
    for (k = total - 1; num_digit(s, n, k) == '0'; k--)
        ;
    n->last = k;
}

static size_t num_parse_exponent(const unsigned char *s, size_t i, size_t len,
                                 num_t *n)
{
    int negative = 0;
    size_t start;

    if (i < len && (s[i] == '+' || s[i] == '-'))
        negative = s[i++] == '-';
    start = i;
    for (; i < len && is_digit(s[i]); i++) {
        if (n->exponent < EXPONENT_SATURATE)
            n->exponent = n->exponent * 10 + (s[i] - '0');
    }
    if (negative)
        n->exponent = -n->exponent;
    return i == start ? 0 : i;
}

/*
 * Takes apart the number starting at s[at] (a '-' or a digit). Returns
 * 0, or -1 with *badp at the byte that breaks the syntax and *why set.
 */
static int num_parse(const unsigned char *s, size_t len, size_t at, num_t *n,
                     size_t *badp, const char **why)
{
    size_t i = at;

    memset(n, 0, sizeof(*n));
    n->negative = s[i] == '-';
    i += n->negative;
    n->int_off = i;
    n->int_len = count_digits(s, i, len);
    *badp = i;
    *why = "expected a digit after '-'";
    if (n->int_len == 0)
        return -1;

    *badp = i + 1;
    *why = "leading zero in number";
    if (s[i] == '0' && n->int_len > 1)
        return -1;

    i += n->int_len;
    if (i < len && s[i] == '.') {
        n->frac_off = ++i;
        n->frac_len = count_digits(s, i, len);
        *badp = i;
        *why = "expected a digit after the decimal point";
        if (n->frac_len == 0)
            return -1;
        i += n->frac_len;
    }
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        *badp = i + 1 + (i + 1 < len && (s[i + 1] == '+' || s[i + 1] == '-'));
        *why = "expected a digit in the exponent";
        i = num_parse_exponent(s, i + 1, len, n);
        if (i == 0)
            return -1;
    }
    n->len = i - at;
    num_find_significant(s, n);
    return 0;
}

/* Decimal exponent of the leading digit of a non-zero number. */
static int64_t num_power(const num_t *n)
{
    return (int64_t)n->int_len - 1 - (int64_t)n->lead + n->exponent;
}

/* Why PostgreSQL's numeric cannot hold n, or NULL when it can. */
static const char *num_pg_refusal(const num_t *n)
{
    if (n->exponent >= PG_EXPONENT_LIMIT || n->exponent <= -PG_EXPONENT_LIMIT)
        return "exponent out of range for PostgreSQL numeric";
    if ((int64_t)n->frac_len - n->exponent > PG_DSCALE_MAX)
        return "more than 16383 digits after the decimal point, the limit "
               "of PostgreSQL numeric";
    if (!n->zero && num_power(n) > PG_POWER_MAX)
        return "number of 10^131072 or more, too large for PostgreSQL numeric";
    return NULL;
}

static int scan_number(scan_t *sc, tok_t *tok)
{
    const char *why;
    size_t bad;
    num_t n;

    if (num_parse(sc->s, sc->len, sc->pos, &n, &bad, &why) != 0) {
        sc->pos = bad;
        return unexpected(sc, why);
    }
    why = num_pg_refusal(&n);
    if (why != NULL)
        return fail(sc, OB_EJSON, sc->pos, why);

    tok->kind = TOK_NUMBER;
    tok->off = sc->pos;
    tok->len = n.len;
    sc->pos += n.len;
    return 0;
}

static int scan_literal(scan_t *sc, tok_t *tok)
{
    static const char *const words[] = {"true", "false", "null"};
    size_t i, n;

    for (i = 0; i < OB__ARRAY_LEN(words); i++) {
        n = strlen(words[i]);
        if (sc->len - sc->pos >= n && memcmp(sc->s + sc->pos, words[i], n) == 0)
            break;
    }
    if (i == OB__ARRAY_LEN(words))
        return fail(sc, OB_EJSON, sc->pos,
                    "invalid literal: expected true, false or null");
    tok->kind = TOK_LITERAL;
    tok->off = sc->pos;
    tok->len = n;
    sc->pos += n;
    return 0;
}

static int scan_open(scan_t *sc, tok_t *tok, int object)
{
    if (sc->depth == OB_JSON_MAX_DEPTH)
        return ob__error_set(sc->err, OB_EJSON,
                             "invalid JSON at byte %zu: nesting deeper "
                             "than %d levels",
                             sc->pos, OB_JSON_MAX_DEPTH);

    if (object)
        sc->objects[sc->depth / 8] |= (unsigned char)(1u << sc->depth % 8);
    else
        sc->objects[sc->depth / 8] &= (unsigned char)~(1u << sc->depth % 8);
    sc->depth++;
    sc->values++;
    sc->state = object ? ST_KEY_OR_END : ST_VALUE_OR_END;
    tok->kind = object ? TOK_OBJECT_BEGIN : TOK_ARRAY_BEGIN;
    tok->off = sc->pos++;
    tok->len = 1;
    return 0;
}

static int in_object(const scan_t *sc)
{
    int top = sc->depth - 1;

    return (sc->objects[top / 8] >> top % 8) & 1;
}

static int scan_close(scan_t *sc, tok_t *tok)
{
    tok->kind = in_object(sc) ? TOK_OBJECT_END : TOK_ARRAY_END;
    tok->off = sc->pos++;
    tok->len = 1;
    sc->depth--;
    sc->state = sc->depth == 0 ? ST_DONE : ST_NEXT;
    return 0;
}

static int scan_peek_is(const scan_t *sc, unsigned char c)
{
    return sc->pos < sc->len && sc->s[sc->pos] == c;
}

static int scan_value(scan_t *sc, tok_t *tok)
{
    unsigned char c = sc->pos < sc->len ? sc->s[sc->pos] : 0;
    int rc;

    if (sc->pos >= sc->len)
        return unexpected(sc, "expected a value");
    if (sc->state == ST_VALUE && c == ']')
        return fail(sc, OB_EJSON, sc->pos,
                    "expected a value after ',', not ']' (trailing comma)");
    if (c == '{' || c == '[')
        return scan_open(sc, tok, c == '{');

    if (c == '"') {
        tok->kind = TOK_STRING;
        rc = scan_string(sc, tok);
    } else if (c == '-' || is_digit(c)) {
        rc = scan_number(sc, tok);
    } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        rc = scan_literal(sc, tok);
    } else {
        return unexpected(sc, "expected a value");
    }
    if (rc == 0) {
        sc->values++;
        sc->state = sc->depth == 0 ? ST_DONE : ST_NEXT;
    }
    return rc;
}

static int scan_key(scan_t *sc, tok_t *tok)
{
    int rc;

    if (sc->state == ST_KEY && scan_peek_is(sc, '}'))
        return fail(sc, OB_EJSON, sc->pos,
                    "expected a key after ',', not '}' (trailing comma)");
    if (sc->pos >= sc->len || sc->s[sc->pos] != '"')
        return unexpected(sc, sc->state == ST_KEY_OR_END
                                  ? "expected a string as object key or '}'"
                                  : "expected a string as object key");
    rc = scan_string(sc, tok);
    if (rc != 0)
        return rc;

    tok->kind = TOK_KEY;
    sc->keys++;
    if (tok->escaped)
        sc->escaped_keys += tok->len;
    sc->state = ST_COLON;
    return 0;
}

/* After a value inside a container: a ',' or the container's end. */
static int scan_after_value(scan_t *sc, tok_t *tok, int *again)
{
    unsigned char c = sc->pos < sc->len ? sc->s[sc->pos] : 0;
    int object = in_object(sc);

    *again = 0;
    if (sc->pos < sc->len && c == (object ? '}' : ']'))
        return scan_close(sc, tok);
    if (sc->pos >= sc->len || c != ',')
        return unexpected(sc, object ? "expected ',' or '}' after object member"
                                     : "expected ',' or ']' after array "
                                       "element");
    sc->pos++;
    sc->state = object ? ST_KEY : ST_VALUE;
    *again = 1;
    return 0;
}

static void skip_space(scan_t *sc)
{
    while (sc->pos < sc->len) {
        unsigned char c = sc->s[sc->pos];

        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            return;
        sc->pos++;
    }
}

/* The next token, or TOK_EOF after the document and the blanks after it. */
static int scan_next(scan_t *sc, tok_t *tok)
{
    int again, rc;

    for (;;) {
        skip_space(sc);
        switch (sc->state) {
        case ST_VALUE_OR_END:
            if (scan_peek_is(sc, ']'))
                return scan_close(sc, tok);
            return scan_value(sc, tok);
        case ST_VALUE:
            return scan_value(sc, tok);
        case ST_KEY_OR_END:
            if (scan_peek_is(sc, '}'))
                return scan_close(sc, tok);
            return scan_key(sc, tok);
        case ST_KEY:
            return scan_key(sc, tok);
        case ST_COLON:
            if (!scan_peek_is(sc, ':'))
                return unexpected(sc, "expected ':' after object key");
            sc->pos++;
            sc->state = ST_VALUE;
            break;
        case ST_NEXT:
            rc = scan_after_value(sc, tok, &again);
            if (rc != 0 || !again)
                return rc;
            break;
        case ST_DONE:
            if (sc->pos < sc->len)
                return unexpected(sc, "trailing content after the document");
            tok->kind = TOK_EOF;
            return 0;
        }
    }
}

static void scan_init(scan_t *sc, const char *json, size_t len, ob_error_t *err)
{
    memset(sc, 0, sizeof(*sc));
    sc->s = (const unsigned char *)json;
    sc->len = len;
    sc->state = ST_VALUE;
    sc->err = err;
}

/* Runs the scanner over the whole input: validation, with counts. */
static int scan_all(scan_t *sc, const char *json, size_t len, ob_error_t *err)
{
    tok_t tok;
    int rc;

    scan_init(sc, json, len, err);
    if (len == 0)
        return fail(sc, OB_EJSON, 0, "empty document");

    do {
        rc = scan_next(sc, &tok);
    } while (rc == 0 && tok.kind != TOK_EOF);
    return rc;
}

int ob_json_validate(const char *json, size_t len, ob_error_t *err)
{
    scan_t sc;

    if (json == NULL)
        return ob__error_set(err, OB_EINVAL, "JSON text is NULL");
    return scan_all(&sc, json, len, err);
}

/*
 * The canonicaliser's tree: one node per value and per key, in document
 * order. A container's subtree is the nodes up to its end; the value of
 * a member is the node right after its key.
 */
typedef enum node_kind {
    NODE_OBJECT,
    NODE_ARRAY,
    NODE_KEY,
    NODE_STRING,
    NODE_NUMBER,
    NODE_LITERAL
} node_kind_t;

typedef struct node {
    const char *str; /* keys: the unescaped bytes; scalars: the token */
    size_t len;      /* bytes at str; objects: number of members */
    size_t end;      /* index past the subtree; keys: see add_key() */
    size_t first;    /* objects: their first entry in members */
    node_kind_t kind;
    int escaped; /* strings: the token has escapes */
} node_t;

/* One object member in sorted order: its unescaped key and key node. */
typedef struct member {
    const char *key;
    size_t len;
    size_t node;
} member_t;

typedef struct canon {
    const char *json;
    node_t *nodes;
    size_t node_count;
    member_t *members;
    size_t member_count;
    char *arena; /* unescaped keys that had escapes */
    size_t arena_len;
    ob__buf_t out;
} canon_t;

/* Decodes the (valid) escape at p into a code point; returns its length. */
static size_t escape_decode(const unsigned char *p, uint32_t *cpp)
{
    static const char from[] = "\"\\/bfnrt";
    static const char to[] = "\"\\/\b\f\n\r\t";
    uint32_t unit, low;

    if (p[1] != 'u') {
        *cpp = (unsigned char)to[strchr(from, p[1]) - from];
        return 2;
    }
    unit = (uint32_t)hex4(p + 2);
    if (unit < 0xd800 || unit > 0xdbff) {
        *cpp = unit;
        return 6;
    }
    low = (uint32_t)hex4(p + 8);
    *cpp = 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
    return 12;
}

static size_t utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Unescapes s[0..len) into dst, which has room; returns the length. */
static size_t unescape(const unsigned char *s, size_t len, char *dst)
{
    size_t i = 0, n = 0;
    uint32_t cp;

    while (i < len) {
        if (s[i] != '\\') {
            dst[n++] = (char)s[i++];
            continue;
        }
        i += escape_decode(s + i, &cp);
        n += utf8_encode(cp, dst + n);
    }
    return n;
}

static size_t add_node(canon_t *c, node_kind_t kind, const tok_t *tok)
{
    node_t *n = &c->nodes[c->node_count];

    n->kind = kind;
    n->str = c->json + tok->off;
    n->len = tok->len;
    n->escaped = tok->escaped;
    n->end = c->node_count + 1;
    n->first = 0;
    return c->node_count++;
}

/*
 * Adds a key node to the open object obj. Until the object closes, its
 * keys form a chain: obj's first is its first key, obj's end its last,
 * and each key's end the next key.
 */
static void add_key(canon_t *c, size_t obj, const tok_t *tok)
{
    size_t k = add_node(c, NODE_KEY, tok);
    node_t *key = &c->nodes[k], *o = &c->nodes[obj];

    if (tok->escaped) {
        key->str = c->arena + c->arena_len;
        key->len = unescape((const unsigned char *)c->json + tok->off, tok->len,
                            c->arena + c->arena_len);
        c->arena_len += key->len;
    }
    if (o->len == 0)
        o->first = k;
    else
        c->nodes[o->end].end = k;
    o->end = k;
    o->len++;
}

/* Byte order of the keys, then document order, which puts duplicates
 * next to each other with the last one last. */
static int member_compare(const void *a, const void *b)
{
    const member_t *x = a, *y = b;
    int diff = memcmp(x->key, y->key, x->len < y->len ? x->len : y->len);

    if (diff != 0)
        return diff;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return x->node < y->node ? -1 : x->node > y->node;
}

static int member_same_key(const member_t *x, const member_t *y)
{
    return x->len == y->len && memcmp(x->key, y->key, x->len) == 0;
}

/* Turns the key chain of obj into a sorted slice of members with only
 * the last of each duplicate key kept. */
static void close_object(canon_t *c, size_t obj)
{
    node_t *o = &c->nodes[obj];
    member_t *m = c->members + c->member_count;
    size_t i, kept = 0, k = o->first;

    for (i = 0; i < o->len; i++) {
        m[i].key = c->nodes[k].str;
        m[i].len = c->nodes[k].len;
        m[i].node = k;
        k = c->nodes[k].end;
    }
    qsort(m, o->len, sizeof(*m), member_compare);

    for (i = 0; i < o->len; i++) {
        if (i + 1 < o->len && member_same_key(&m[i], &m[i + 1]))
            continue;
        m[kept++] = m[i];
    }
    o->first = c->member_count;
    o->len = kept;
    c->member_count += kept;
}

static void build_token(canon_t *c, const tok_t *tok, size_t *open, int *top)
{
    switch (tok->kind) {
    case TOK_OBJECT_BEGIN:
        open[++*top] = add_node(c, NODE_OBJECT, tok);
        c->nodes[open[*top]].len = 0;
        break;
    case TOK_ARRAY_BEGIN:
        open[++*top] = add_node(c, NODE_ARRAY, tok);
        break;
    case TOK_OBJECT_END:
        if (c->nodes[open[*top]].len > 0)
            close_object(c, open[*top]);
        c->nodes[open[(*top)--]].end = c->node_count;
        break;
    case TOK_ARRAY_END:
        c->nodes[open[(*top)--]].end = c->node_count;
        break;
    case TOK_KEY:
        add_key(c, open[*top], tok);
        break;
    case TOK_STRING:
        add_node(c, NODE_STRING, tok);
        break;
    case TOK_NUMBER:
        add_node(c, NODE_NUMBER, tok);
        break;
    case TOK_LITERAL:
        add_node(c, NODE_LITERAL, tok);
        break;
    case TOK_EOF:
        break;
    }
}

/* The second scan: the input is known to be valid, the arrays have room. */
static int build(canon_t *c, size_t len, ob_error_t *err)
{
    size_t open[OB_JSON_MAX_DEPTH];
    int top = -1, rc;
    scan_t sc;
    tok_t tok;

    scan_init(&sc, c->json, len, err);
    for (;;) {
        rc = scan_next(&sc, &tok);
        if (rc != 0)
            return rc;
        if (tok.kind == TOK_EOF)
            return 0;
        build_token(c, &tok, open, &top);
    }
}

/* Appends code point cp as it appears inside a canonical string. */
static void emit_code_point(ob__buf_t *b, uint32_t cp)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[6] = {'\\', 'u', '0', '0'};

    switch (cp) {
    case '"':
    case '\\':
        tmp[1] = (char)cp;
        ob__buf_append(b, tmp, 2);
        return;
    case '\b':
    case '\f':
    case '\n':
    case '\r':
    case '\t':
        tmp[1] = "btnvfr"[cp - '\b'];
        ob__buf_append(b, tmp, 2);
        return;
    }
    if (cp < 0x20) {
        tmp[4] = hex[cp >> 4];
        tmp[5] = hex[cp & 0xf];
        ob__buf_append(b, tmp, 6);
        return;
    }
    ob__buf_append(b, tmp, utf8_encode(cp, tmp));
}

/* Appends raw UTF-8 bytes as a canonical string, quotes included. */
static void emit_raw_string(ob__buf_t *b, const char *s, size_t len)
{
    size_t i, start = 0;
    unsigned char c;

    ob__buf_putc(b, '"');
    for (i = 0; i < len; i++) {
        c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        ob__buf_append(b, s + start, i - start);
        emit_code_point(b, c);
        start = i + 1;
    }
    ob__buf_append(b, s + start, len - start);
    ob__buf_putc(b, '"');
}

/*
 * Appends the contents of a string token as a canonical string. Raw
 * bytes in a valid token never need escaping, so only the escapes are
 * rewritten.
 */
static void emit_token_string(ob__buf_t *b, const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, start = 0;
    uint32_t cp;

    ob__buf_putc(b, '"');
    while (i < len) {
        if (u[i] != '\\') {
            i++;
            continue;
        }
        ob__buf_append(b, s + start, i - start);
        i += escape_decode(u + i, &cp);
        emit_code_point(b, cp);
        start = i;
    }
    ob__buf_append(b, s + start, len - start);
    ob__buf_putc(b, '"');
}

/* Appends digits [from, to) of n, skipping over the point. */
static void emit_digits(ob__buf_t *b, const char *s, const num_t *n,
                        size_t from, size_t to)
{
    size_t split = n->int_len;

    if (from < split)
        ob__buf_append(b, s + n->int_off + from,
                       (to < split ? to : split) - from);
    if (to > split) {
        from = from > split ? from : split;
        ob__buf_append(b, s + n->frac_off + (from - split), to - from);
    }
}

static void emit_zeros(ob__buf_t *b, int64_t count)
{
    static const char zeros[] = "0000000000000000000000000000";

    while (count > 0) {
        size_t n = count < 28 ? (size_t)count : 28;

        ob__buf_append(b, zeros, n);
        count -= (int64_t)n;
    }
}

static void emit_exponent(ob__buf_t *b, int64_t power)
{
    char tmp[24];
    int i = (int)sizeof(tmp);
    uint64_t v = (uint64_t)(power < 0 ? -power : power);

    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    tmp[--i] = power < 0 ? '-' : '+';
    tmp[--i] = 'e';
    ob__buf_append(b, tmp + i, sizeof(tmp) - (size_t)i);
}

/* Appends a number token in canonical form; see the header. */
static void emit_number(ob__buf_t *b, const char *s, size_t len)
{
    const char *why;
    size_t bad, digits;
    int64_t power, lowest;
    num_t n;

    num_parse((const unsigned char *)s, len, 0, &n, &bad, &why);
    if (n.zero) {
        ob__buf_putc(b, '0');
        return;
    }
    digits = n.last - n.lead + 1;
    power = num_power(&n);
    lowest = power - (int64_t)(digits - 1);
    if (n.negative)
        ob__buf_putc(b, '-');

    if (lowest >= 0 && power <= PLAIN_POWER_MAX) {
        emit_digits(b, s, &n, n.lead, n.last + 1);
        emit_zeros(b, lowest);
    } else if (power >= 0 && power <= PLAIN_POWER_MAX) {
        emit_digits(b, s, &n, n.lead, n.lead + (size_t)power + 1);
        ob__buf_putc(b, '.');
        emit_digits(b, s, &n, n.lead + (size_t)power + 1, n.last + 1);
    } else if (power < 0 && power >= PLAIN_POWER_MIN) {
        ob__buf_append(b, "0.", 2);
        emit_zeros(b, -power - 1);
        emit_digits(b, s, &n, n.lead, n.last + 1);
    } else {
        emit_digits(b, s, &n, n.lead, n.lead + 1);
        if (digits > 1)
            ob__buf_putc(b, '.');
        emit_digits(b, s, &n, n.lead + 1, n.last + 1);
        emit_exponent(b, power);
    }
}

static void emit_scalar(canon_t *c, const node_t *n)
{
    if (n->kind == NODE_STRING && n->escaped)
        emit_token_string(&c->out, n->str, n->len);
    else if (n->kind == NODE_STRING)
        emit_raw_string(&c->out, n->str, n->len);
    else if (n->kind == NODE_NUMBER)
        emit_number(&c->out, n->str, n->len);
    else
        ob__buf_append(&c->out, n->str, n->len);
}

/* An open container while writing: which node, and what comes next (a
 * node index for arrays, a member index for objects). */
typedef struct frame {
    size_t node;
    size_t next;
} frame_t;

/* Steps f to its next value, writing the ',' and key before it; 0 when
 * the container is complete. */
static int emit_step(canon_t *c, frame_t *f, size_t *valuep)
{
    const node_t *n = &c->nodes[f->node];
    const member_t *m;

    if (n->kind == NODE_ARRAY) {
        if (f->next == n->end)
            return 0;
        if (f->next != f->node + 1)
            ob__buf_putc(&c->out, ',');
        *valuep = f->next;
        f->next = c->nodes[f->next].end;
        return 1;
    }
    if (f->next == n->first + n->len)
        return 0;
    if (f->next != n->first)
        ob__buf_putc(&c->out, ',');
    m = &c->members[f->next++];
    emit_raw_string(&c->out, m->key, m->len);
    ob__buf_putc(&c->out, ':');
    *valuep = m->node + 1;
    return 1;
}

static void emit(canon_t *c)
{
    frame_t stack[OB_JSON_MAX_DEPTH];
    size_t i = 0;
    int top = -1;

    for (;;) {
        const node_t *n = &c->nodes[i];

        if (n->kind == NODE_OBJECT || n->kind == NODE_ARRAY) {
            ob__buf_putc(&c->out, n->kind == NODE_OBJECT ? '{' : '[');
            top++;
            stack[top].node = i;
            stack[top].next = n->kind == NODE_OBJECT ? n->first : i + 1;
        } else {
            emit_scalar(c, n);
        }
        while (top >= 0 && !emit_step(c, &stack[top], &i)) {
            n = &c->nodes[stack[top--].node];
            ob__buf_putc(&c->out, n->kind == NODE_OBJECT ? '}' : ']');
        }
        if (top < 0)
            return;
    }
}

/* Sizes the arrays by the counts of the first scan. */
static int canon_alloc(canon_t *c, const scan_t *sc, ob_error_t *err)
{
    c->nodes = ob__calloc(sc->values + sc->keys, sizeof(*c->nodes));
    if (c->nodes == NULL)
        return ob__error_nomem(err, "canonical JSON tree");

    if (sc->keys > 0) {
        c->members = ob__calloc(sc->keys, sizeof(*c->members));
        if (c->members == NULL)
            return ob__error_nomem(err, "canonical JSON members");
    }
    if (sc->escaped_keys > 0) {
        c->arena = ob__malloc(sc->escaped_keys);
        if (c->arena == NULL)
            return ob__error_nomem(err, "canonical JSON keys");
    }
    return 0;
}

static void canon_free(canon_t *c)
{
    ob__free(c->arena);
    ob__free(c->members);
    ob__free(c->nodes);
}

int ob_json_canonicalize(const char *json, size_t len, char **outp,
                         size_t *out_lenp, ob_error_t *err)
{
    canon_t c = {json, NULL, 0, NULL, 0, NULL, 0, OB__BUF_INIT};
    scan_t sc;
    int rc;

    if (outp != NULL)
        *outp = NULL;
    if (out_lenp != NULL)
        *out_lenp = 0;
    if (json == NULL || outp == NULL)
        return ob__error_set(err, OB_EINVAL, "JSON text or output is NULL");

    rc = scan_all(&sc, json, len, err);
    if (rc == 0)
        rc = canon_alloc(&c, &sc, err);
    if (rc == 0)
        rc = build(&c, len, err);
    if (rc == 0)
        emit(&c);
    canon_free(&c);
    if (rc == 0 && c.out.failed)
        rc = ob__error_nomem(err, "canonical JSON");
    if (rc != 0)
        goto free_out;

    *outp = c.out.data;
    if (out_lenp != NULL)
        *out_lenp = c.out.len;
    return 0;

free_out:
    ob__buf_free(&c.out);
    return rc;
}
