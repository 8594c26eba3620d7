/*
 * oncebox dedup: idempotency keys and the JSON rules they depend on.
 *
 * Every event carries an idempotency key, and every consumer drops an
 * event whose key it has already seen. This header derives keys for the
 * writer: a time-ordered UUIDv7 (the default: every append is a new
 * event), or a content key (equal content is the same event). It also
 * holds the JSON validator the writer runs on payloads and the canonical
 * form that content keys hash.
 *
 * Notes:
 * - Every function here is thread-safe and talks to no server.
 * - A key is text of at most OB_KEY_MAX bytes. The outbox, the wire
 *   header and the inbox all accept keys up to that length and refuse
 *   longer ones.
 * - The JSON rules are PostgreSQL 15 jsonb's (in a UTF-8 database) and a
 *   little stricter, never looser: a payload that passes
 *   ob_json_validate() cannot make the INSERT into the outbox fail, and
 *   so cannot abort the caller's transaction, for a reason of syntax,
 *   encoding, number range or nesting depth. jsonb's own size limits
 *   (about 256 MB per document) are left to the writer's
 *   "writer.payload.max.bytes".
 */
#ifndef ONCEBOX_DEDUP_H
#define ONCEBOX_DEDUP_H

#include <stddef.h>

#include "oncebox/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Length of a UUID in text form, 8-4-4-4-12, without the NUL. */
#define OB_UUID_LEN 36

/* Length of a content key (32 lowercase hex digits), without the NUL. */
#define OB_CONTENT_KEY_LEN 32

/* The longest idempotency key, in bytes, that any component accepts. */
#define OB_KEY_MAX 255

/*
 * The deepest nesting of arrays and objects a payload may have: "[[1]]"
 * has depth 2, a scalar depth 0. PostgreSQL parses jsonb recursively and
 * fails with "stack depth limit exceeded" at about 620 levels under the
 * smallest max_stack_depth it allows (100kB), about 13,000 under the
 * default 2MB; 512 stays below both with room for the stack the query
 * itself uses.
 */
#define OB_JSON_MAX_DEPTH 512

/*
 * Writes a new RFC 9562 UUIDv7 into out as 36 lowercase characters,
 * 8-4-4-4-12, and a NUL. out must not be NULL.
 *
 * Layout: 48 bits of Unix time in milliseconds, the version 7, 12 bits
 * of counter (rand_a), the variant bits 10, then 62 random bits from
 * getrandom(2).
 *
 * Within one process the keys are strictly increasing, as 128-bit
 * numbers and as strings, in the order the calls return, across all
 * threads: the counter starts at a random value below 2048 each new
 * millisecond and counts up within it; when it would overflow, or when
 * the wall clock goes backwards, the embedded time runs ahead of the
 * clock by as much as needed (it catches up once the clock passes it).
 * Across processes (also a parent and a child after fork()) keys are
 * unique with the probability of 62 random bits, and ordered only as far
 * as their clocks agree.
 *
 * Errors: OB_EINVAL (out is NULL); OB_ESYS when getrandom(2) fails (no
 * kernel support or, early in boot, no entropy yet); nothing is written
 * to out then. Random bytes are fetched in blocks, so most calls make
 * no system call.
 */
OB_API int ob_key_uuidv7(char out[OB_UUID_LEN + 1], ob_error_t *err);

/*
 * Checks that json[0..len) is one JSON document (RFC 8259) that
 * PostgreSQL 15 jsonb accepts in a UTF-8 database. No allocation; len
 * bytes are read, NUL bytes included, so json need not be terminated;
 * they must not change during the call.
 *
 * Accepted: any JSON value at the top level, surrounded by optional
 * space, tab, LF or CR.
 *
 * Refused, with the code in brackets:
 * - a raw NUL byte anywhere [OB_ENUL];
 * - bytes that are not UTF-8: overlong forms, UTF-16 surrogates, code
 *   points past U+10FFFF, stray or missing continuation bytes [OB_EUTF8];
 * - and [OB_EJSON]: empty or blank input; other whitespace (form feed,
 *   vertical tab, U+00A0, a byte order mark); control characters below
 *   U+0020 unescaped in strings; escapes other than \" \\ \/ \b \f \n
 *   \r \t \uXXXX; \u0000 (jsonb cannot store it); a lone high or low
 *   surrogate escape, or a low one before a high one; numbers with a
 *   leading zero ("01"), a plus sign, no digit before or after the
 *   point (".5", "1."), or an empty exponent; NaN, Infinity and other
 *   bare words; trailing commas; content after the document; nesting
 *   deeper than OB_JSON_MAX_DEPTH; numbers PostgreSQL's numeric cannot
 *   hold: 10^131072 or more in magnitude (more than 131072 digits
 *   before the point), more than 16383 digits after the point, counted
 *   as PostgreSQL does: the digits written after the point minus the
 *   exponent, so "1.50e-16382" is refused where "1.5e-16382" is not,
 *   and an exponent of 1073741823 or more in magnitude even for zero.
 *
 * The message names the first offending byte, counted from 0, e.g.
 * "invalid JSON at byte 17: expected ':' after object key"; callers add
 * the field's name in front. None of these is retriable: fix the input.
 * OB_EINVAL when json is NULL.
 */
OB_API int ob_json_validate(const char *json, size_t len, ob_error_t *err);

/*
 * Validates json[0..len) exactly as ob_json_validate() does and writes
 * its canonical form into a new NUL-terminated buffer: *outp, to be
 * freed with ob_free(), and its length without the NUL in *out_lenp
 * (out_lenp may be NULL). On failure *outp is NULL and *out_lenp 0.
 *
 * The canonical form is a contract: content keys are derived from it,
 * so it never changes. Two documents that jsonb stores as equal values
 * (numbers compared by value) have the same canonical form:
 * - No whitespace at all.
 * - Object members sorted by the bytes of their unescaped UTF-8 keys,
 *   compared as unsigned bytes; when one key is a prefix of another the
 *   shorter comes first. Of members with equal keys only the last one
 *   in the input is kept, as jsonb keeps it.
 * - Array elements in their order.
 * - Strings, keys included, with escapes decoded and then re-escaped
 *   minimally: \" and \\, \b \f \n \r \t for U+0008, U+000C, U+000A,
 *   U+000D, U+0009, other characters below U+0020 as \u00xx with
 *   lowercase hex; everything else, "/" and all non-ASCII included, as
 *   raw UTF-8 (a surrogate pair escape becomes one 4-byte character).
 * - true, false and null as they are.
 * - Numbers normalised exactly in decimal, never through a double: the
 *   value is reduced to its significant digits d1 d2 ... dn (no leading
 *   or trailing zeros) and the decimal exponent p of d1 (the value is
 *   d1.d2...dn times 10^p), with a "-" in front for negative values.
 *   Zero in every spelling (-0, 0.0, 0e5) is "0". Then:
 *     an integer below 10^21 (p <= 20) is written plainly: 100,
 *       123456789012345678901;
 *     any other number with -6 <= p <= 20 is written plainly with a
 *       fraction: 1.5, 0.000001, -0.25;
 *     everything else as d1[.d2...dn]e+p or e-p with p in decimal
 *       without leading zeros: 1e+21, 1.5e-7, 1.2345e+30.
 *   So 1, 1.0, 1e0, 10e-1 and 0.1e1 are all "1", and -1.50e+3 is
 *   "-1500". Numbers keep every digit, however many.
 *
 * The work is done with explicit stacks: nothing recurses on the C
 * stack, whatever the input.
 *
 * Errors: those of ob_json_validate(); OB_EINVAL when json or outp is
 * NULL; OB_ENOMEM (retrying later may succeed).
 */
OB_API int ob_json_canonicalize(const char *json, size_t len, char **outp,
                                size_t *out_lenp, ob_error_t *err);

/*
 * Writes the content key of an event into out: 32 lowercase hex
 * characters and a NUL.
 *
 * The key is the first 16 bytes of
 *   SHA-256("oncebox.content.v1" || F(aggregate_type) ||
 *           F(aggregate_id) || F(event_type) || F(canonical payload))
 * where F(x) is the length of x in bytes as 8 bytes big-endian followed
 * by the bytes of x, so that no shift of bytes between fields yields
 * the same input, and the canonical payload is what
 * ob_json_canonicalize() makes of payload[0..payload_len). The tag
 * string is hashed as its 18 bytes, without a NUL or a length.
 *
 * Equal content gives equal keys however the payload is spelled (key
 * order, whitespace, escapes, number formatting), so a retried command
 * that appends the same event again is reported as a duplicate. The
 * trade-off: two events that are legitimately distinct but carry the
 * same content, such as two identical deposits to one account, also
 * collapse into one, and the second is dropped. Put what makes them
 * distinct (a request id, a sequence number) into the payload, or use
 * event-id keys or caller-supplied keys for such events.
 *
 * aggregate_type, aggregate_id and event_type are NUL-terminated UTF-8
 * strings; payload is payload_len bytes and need not be terminated. All
 * are borrowed for the call only. out must not be NULL.
 *
 * Errors, checked in argument order, with a message naming the field:
 *   OB_EEMPTY   a name NULL or empty
 *   OB_ETOOLONG aggregate_type or event_type longer than 100 bytes,
 *               aggregate_id longer than 255
 *   OB_EUTF8    a name that is not valid UTF-8
 *   OB_EINVAL   payload or out NULL
 *   OB_EJSON, OB_EUTF8, OB_ENUL: payload refused as by ob_json_validate()
 *               (the message starts with "payload: ")
 *   OB_ENOMEM   out of memory, retriable
 *   OB_EINTERNAL the SHA-256 implementation failed
 */
OB_API int ob_key_content(const char *aggregate_type, const char *aggregate_id,
                          const char *event_type, const char *payload,
                          size_t payload_len, char out[OB_CONTENT_KEY_LEN + 1],
                          ob_error_t *err);

#ifdef __cplusplus
}
#endif

#endif
