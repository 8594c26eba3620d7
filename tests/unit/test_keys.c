/*
 * Unit tests of key derivation: UUIDv7 event ids and content keys.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/internal.h"
#include "oncebox/dedup.h"
#include "oncebox/outbox.h"
#include "tests/support/failalloc.h"

#define SEQUENTIAL_KEYS 200000
#define THREADS 4
#define KEYS_PER_THREAD 50000

static int64_t wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The 48-bit millisecond timestamp at the start of a UUIDv7. */
static int64_t uuid_time(const char *uuid)
{
    char hex[13];

    memcpy(hex, uuid, 8);
    memcpy(hex + 8, uuid + 9, 4);
    hex[12] = '\0';
    return strtoll(hex, NULL, 16);
}

static void assert_uuidv7_format(const char *u)
{
    size_t i;

    assert_int_equal(strlen(u), OB_UUID_LEN);
    for (i = 0; i < OB_UUID_LEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            assert_int_equal(u[i], '-');
        else if (!((u[i] >= '0' && u[i] <= '9') ||
                   (u[i] >= 'a' && u[i] <= 'f')))
            fail_msg("%s: byte %zu is not lowercase hex", u, i);
    }
    assert_int_equal(u[14], '7');      /* the version nibble */
    if (strchr("89ab", u[19]) == NULL) /* variant bits 10 */
        fail_msg("%s: variant nibble %c is not 10xx", u, u[19]);
}

static void uuidv7_has_version_variant_and_lowercase_hex(void **state)
{
    char u[OB_UUID_LEN + 1];
    int i;

    (void)state;
    for (i = 0; i < 1000; i++) {
        assert_int_equal(ob_key_uuidv7(u, NULL), 0);
        assert_uuidv7_format(u);
    }
}

static void uuidv7_embeds_the_wall_clock(void **state)
{
    char u[OB_UUID_LEN + 1];
    int64_t before, after, t;

    (void)state;
    before = wall_ms();
    assert_int_equal(ob_key_uuidv7(u, NULL), 0);
    after = wall_ms();
    t = uuid_time(u);

    /* Other tests may have pushed the generator up to a few ms ahead. */
    assert_true(t >= before);
    assert_true(t <= after + 2000);
}

static void uuidv7_keys_strictly_increase_within_a_millisecond(void **state)
{
    char(*keys)[OB_UUID_LEN + 1] = malloc(SEQUENTIAL_KEYS * sizeof(*keys));
    int64_t first, last;
    size_t i, same_ms = 0;

    (void)state;
    assert_non_null(keys);
    for (i = 0; i < SEQUENTIAL_KEYS; i++)
        assert_int_equal(ob_key_uuidv7(keys[i], NULL), 0);

    for (i = 1; i < SEQUENTIAL_KEYS; i++) {
        if (strcmp(keys[i - 1], keys[i]) >= 0)
            fail_msg("key %zu %s is not above %s", i, keys[i], keys[i - 1]);
        same_ms += uuid_time(keys[i - 1]) == uuid_time(keys[i]);
    }
    first = uuid_time(keys[0]);
    last = uuid_time(keys[SEQUENTIAL_KEYS - 1]);
    assert_true(last >= first);
    assert_true(same_ms > 0); /* the counter, not the clock, ordered some */
    free(keys);
}

struct worker {
    pthread_t thread;
    char (*keys)[OB_UUID_LEN + 1];
    int rc;
};

static void *generate(void *arg)
{
    struct worker *w = arg;
    size_t i;

    for (i = 0; i < KEYS_PER_THREAD && w->rc == 0; i++)
        w->rc = ob_key_uuidv7(w->keys[i], NULL);
    return NULL;
}

static int compare_keys(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void uuidv7_keys_from_threads_are_unique(void **state)
{
    char(*all)[OB_UUID_LEN + 1];
    struct worker w[THREADS];
    size_t i, total = THREADS * KEYS_PER_THREAD;
    int t;

    (void)state;
    all = malloc(total * sizeof(*all));
    assert_non_null(all);
    for (t = 0; t < THREADS; t++) {
        w[t].keys = all + (size_t)t * KEYS_PER_THREAD;
        w[t].rc = 0;
        assert_int_equal(pthread_create(&w[t].thread, NULL, generate, &w[t]),
                         0);
    }
    for (t = 0; t < THREADS; t++) {
        pthread_join(w[t].thread, NULL);
        assert_int_equal(w[t].rc, 0);
        for (i = 1; i < KEYS_PER_THREAD; i++)
            assert_true(strcmp(w[t].keys[i - 1], w[t].keys[i]) < 0);
    }

    qsort(all, total, sizeof(*all), compare_keys);
    for (i = 1; i < total; i++) {
        if (strcmp(all[i - 1], all[i]) == 0)
            fail_msg("duplicate key %s", all[i]);
    }
    free(all);
}

/* The 62 random bits: the last 17 characters minus the variant bits. */
static void assert_random_parts_differ(const char *a, const char *b)
{
    assert_true(strcmp(a + 20, b + 20) != 0 || a[19] != b[19]);
}

static void uuidv7_child_after_fork_draws_new_random_bits(void **state)
{
    char parent[OB_UUID_LEN + 1], child[OB_UUID_LEN + 1];
    int fds[2], status;
    pid_t pid;

    (void)state;
    /* Fill the random block, so that the child inherits unused bytes. */
    assert_int_equal(ob_key_uuidv7(parent, NULL), 0);
    assert_int_equal(pipe(fds), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        if (ob_key_uuidv7(child, NULL) != 0 ||
            write(fds[1], child, sizeof(child)) != (ssize_t)sizeof(child))
            _exit(1);
        _exit(0);
    }
    close(fds[1]);
    assert_int_equal(ob_key_uuidv7(parent, NULL), 0);
    assert_int_equal(read(fds[0], child, sizeof(child)), sizeof(child));
    close(fds[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    assert_uuidv7_format(child);
    assert_random_parts_differ(parent, child);
}

static void uuidv7_refuses_a_null_output(void **state)
{
    ob_error_t err;

    (void)state;
    assert_int_equal(ob_key_uuidv7(NULL, &err), OB_EINVAL);
    assert_int_equal(err.code, OB_EINVAL);
}

/*
 * Expected content keys, computed independently of this code with
 * Python's hashlib over the canonical payload written out by hand:
 *
 *   def key(*fields):
 *       h = hashlib.sha256(b"oncebox.content.v1")
 *       for f in fields:
 *           b = f.encode("utf-8")
 *           h.update(struct.pack(">Q", len(b)) + b)
 *       return h.hexdigest()[:32]
 *
 *   key("account", "42", "deposited", '{"amount":100,"currency":"EUR"}')
 *   key("order", "o-1", "placed",
 *       '{"items":[{"qty":2,"sku":"a"}],"note":"café"}')
 *   key("ab", "c", "e", "1") and key("a", "bc", "e", "1")
 */
#define KEY_DEPOSIT "a404f0bd26bd080dff3514a36e16669e"
#define KEY_ORDER "cd0c94fc01ce3f99c35d82000c08bf31"
#define KEY_AB_C "feadb6ebc7a4fd30cc011ec941764714"
#define KEY_A_BC "4beeb8bef333f7eacc1c0a19a133e74e"

#define DEPOSIT_WITH(amount, currency)                                         \
    "{\"amount\":" amount ",\"currency\":" currency "}"
#define DEPOSIT DEPOSIT_WITH("100", "\"EUR\"")

static void content_key(const char *type, const char *id, const char *event,
                        const char *payload, char out[OB_CONTENT_KEY_LEN + 1])
{
    ob_error_t err;

    if (ob_key_content(type, id, event, payload, strlen(payload), out, &err))
        fail_msg("ob_key_content: %s", err.message);
    assert_int_equal(strlen(out), OB_CONTENT_KEY_LEN);
}

static void content_key_matches_independent_vectors(void **state)
{
    char k[OB_CONTENT_KEY_LEN + 1];

    (void)state;
    content_key("account", "42", "deposited",
                "{\"amount\":100,\"currency\":\"EUR\"}", k);
    assert_string_equal(k, KEY_DEPOSIT);
    content_key("order", "o-1", "placed",
                "{\"note\":\"caf\\u00e9\",\"items\":[{\"sku\":\"a\","
                "\"qty\":2}]}",
                k);
    assert_string_equal(k, KEY_ORDER);
    content_key("ab", "c", "e", "1", k);
    assert_string_equal(k, KEY_AB_C);
}

static void content_key_ignores_key_order_whitespace_and_spelling(void **s)
{
    static const char *const payloads[] = {
        "{\"currency\":\"EUR\",\"amount\":100}",
        " {\n  \"amount\" : 1e2 ,\n  \"currency\" : \"\\u0045UR\"\n}\n",
        "{\"amount\":100.00,\"currency\":\"USD\",\"currency\":\"EUR\"}",
    };
    char k[OB_CONTENT_KEY_LEN + 1];
    size_t i;

    (void)s;
    for (i = 0; i < OB__ARRAY_LEN(payloads); i++) {
        content_key("account", "42", "deposited", payloads[i], k);
        assert_string_equal(k, KEY_DEPOSIT);
    }
}

static void content_key_changes_when_any_field_changes(void **state)
{
    static const char *const variants[][4] = {
        {"accounts", "42", "deposited", DEPOSIT},
        {"account", "43", "deposited", DEPOSIT},
        {"account", "42", "withdrawn", DEPOSIT},
        {"account", "42", "deposited", DEPOSIT_WITH("101", "\"EUR\"")},
        {"account", "42", "deposited", DEPOSIT_WITH("100", "\"eur\"")},
        {"account", "42", "deposited", DEPOSIT_WITH("\"100\"", "\"EUR\"")},
    };
    char k[OB_CONTENT_KEY_LEN + 1];
    size_t i;

    (void)state;
    for (i = 0; i < OB__ARRAY_LEN(variants); i++) {
        content_key(variants[i][0], variants[i][1], variants[i][2],
                    variants[i][3], k);
        if (strcmp(k, KEY_DEPOSIT) == 0)
            fail_msg("variant %zu has the key of the original", i);
    }
}

static void content_key_fields_cannot_shift_their_boundary(void **state)
{
    char k1[OB_CONTENT_KEY_LEN + 1], k2[OB_CONTENT_KEY_LEN + 1];

    (void)state;
    content_key("ab", "c", "e", "1", k1);
    content_key("a", "bc", "e", "1", k2);
    assert_string_equal(k1, KEY_AB_C);
    assert_string_equal(k2, KEY_A_BC);
    assert_string_not_equal(k1, k2);

    content_key("a", "b", "ce", "1", k1);
    content_key("a", "bc", "e", "1", k2);
    assert_string_not_equal(k1, k2);
}

static void assert_key_error(const char *type, const char *id,
                             const char *event, const char *payload, int code,
                             const char *message_start)
{
    char k[OB_CONTENT_KEY_LEN + 1] = "untouched";
    ob_error_t err;
    int rc;

    rc = ob_key_content(type, id, event, payload,
                        payload != NULL ? strlen(payload) : 0, k, &err);
    assert_int_equal(rc, code);
    assert_int_equal(err.code, code);
    if (strncmp(err.message, message_start, strlen(message_start)) != 0)
        fail_msg("expected \"%s...\", got \"%s\"", message_start, err.message);
    assert_string_equal(k, "untouched");
}

/* A string of n copies of c, in a static buffer. */
static const char *repeat(char c, size_t n)
{
    static char buf[2][512];
    static int which;

    which = !which;
    memset(buf[which], c, n);
    buf[which][n] = '\0';
    return buf[which];
}

static void content_key_refuses_bad_arguments(void **state)
{
    char k[OB_CONTENT_KEY_LEN + 1];
    const char *p = "{}";

    (void)state;
    assert_key_error(NULL, "1", "e", p, OB_EEMPTY, "aggregate type is empty");
    assert_key_error("", "1", "e", p, OB_EEMPTY, "aggregate type is empty");
    assert_key_error("t", NULL, "e", p, OB_EEMPTY, "aggregate id is empty");
    assert_key_error("t", "1", "", p, OB_EEMPTY, "event type is empty");
    assert_key_error(repeat('t', OB_AGGREGATE_TYPE_MAX + 1), "1", "e", p,
                     OB_ETOOLONG, "aggregate type is 101 bytes long");
    assert_key_error("t", repeat('i', OB_AGGREGATE_ID_MAX + 1), "e", p,
                     OB_ETOOLONG, "aggregate id is 256 bytes long");
    assert_key_error("t", "1", repeat('e', OB_EVENT_TYPE_MAX + 1), p,
                     OB_ETOOLONG, "event type is 101 bytes long");
    assert_key_error("t\xff", "1", "e", p, OB_EUTF8,
                     "aggregate type is not valid UTF-8");
    assert_key_error("t", "\xc0\xaf", "e", p, OB_EUTF8,
                     "aggregate id is not valid UTF-8");
    assert_key_error("t", "1", "e", NULL, OB_EINVAL, "payload is NULL");
    assert_key_error("t", "1", "e", "", OB_EJSON,
                     "payload: invalid JSON at byte 0: empty document");
    assert_key_error("t", "1", "e", "{\"a\" 1}", OB_EJSON,
                     "payload: invalid JSON at byte 5: expected ':'");
    assert_key_error("t", "1", "e", "[\"\xed\xa0\x80\"]", OB_EUTF8,
                     "payload: invalid JSON at byte 2: invalid UTF-8");
    assert_int_equal(ob_key_content("t", "1", "e", "[\0]", 3, k, NULL),
                     OB_ENUL);
    assert_int_equal(ob_key_content("t", "1", "e", p, 2, NULL, NULL),
                     OB_EINVAL);

    /* The limits themselves are accepted. */
    assert_int_equal(ob_key_content(repeat('t', OB_AGGREGATE_TYPE_MAX),
                                    repeat('i', OB_AGGREGATE_ID_MAX), "e", p, 2,
                                    k, NULL),
                     0);
    assert_int_equal(
        ob_key_content("t", "1", repeat('e', OB_EVENT_TYPE_MAX), p, 2, k, NULL),
        0);
}

static void content_key_reads_exactly_payload_len_bytes(void **state)
{
    char k1[OB_CONTENT_KEY_LEN + 1], k2[OB_CONTENT_KEY_LEN + 1];

    (void)state;
    assert_int_equal(ob_key_content("ab", "c", "e", "1", 1, k1, NULL), 0);
    assert_int_equal(ob_key_content("ab", "c", "e", "1xyz", 1, k2, NULL), 0);
    assert_string_equal(k1, KEY_AB_C);
    assert_string_equal(k2, KEY_AB_C);
}

static void content_key_survives_every_failed_allocation(void **state)
{
    const char *p = "{\"currency\":\"EUR\",\"amount\":100}";
    char k[OB_CONTENT_KEY_LEN + 1];
    ob_error_t err;
    long n;
    int rc;

    (void)state;
    for (n = 0;; n++) {
        obt_failalloc_install(n);
        rc =
            ob_key_content("account", "42", "deposited", p, strlen(p), k, &err);
        obt_failalloc_remove();
        assert_int_equal(obt_live_blocks, 0);
        if (rc == 0)
            break;
        assert_int_equal(rc, OB_ENOMEM);
        assert_true(ob_error_is_retriable(&err));
    }
    assert_string_equal(k, KEY_DEPOSIT);
    assert_true(n >= 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(uuidv7_has_version_variant_and_lowercase_hex),
        cmocka_unit_test(uuidv7_embeds_the_wall_clock),
        cmocka_unit_test(uuidv7_keys_strictly_increase_within_a_millisecond),
        cmocka_unit_test(uuidv7_keys_from_threads_are_unique),
        cmocka_unit_test(uuidv7_child_after_fork_draws_new_random_bits),
        cmocka_unit_test(uuidv7_refuses_a_null_output),
        cmocka_unit_test(content_key_matches_independent_vectors),
        cmocka_unit_test(content_key_ignores_key_order_whitespace_and_spelling),
        cmocka_unit_test(content_key_changes_when_any_field_changes),
        cmocka_unit_test(content_key_fields_cannot_shift_their_boundary),
        cmocka_unit_test(content_key_refuses_bad_arguments),
        cmocka_unit_test(content_key_reads_exactly_payload_len_bytes),
        cmocka_unit_test(content_key_survives_every_failed_allocation),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
