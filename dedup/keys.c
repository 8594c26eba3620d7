/*
 * Idempotency keys for the writer: time-ordered UUIDv7 event ids and
 * deterministic content keys.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/evp.h>

#include "core/internal.h"
#include "oncebox/dedup.h"

/* The same limits as the outbox columns (OB_*_MAX in outbox.h). */
#define AGGREGATE_TYPE_MAX 100
#define AGGREGATE_ID_MAX 255
#define EVENT_TYPE_MAX 100

#define CONTENT_TAG "oncebox.content.v1"

#define UUID_TIME_MAX ((INT64_C(1) << 48) - 1)
#define UUID_COUNTER_MAX 0xfff

/*
 * The generator's state, all under one lock: the last timestamp and
 * counter handed out, and a block of random bytes from getrandom(2).
 * After fork() the child must not reuse the bytes its parent has not
 * used yet, or both would hand out the same random bits; the atfork
 * handlers empty the block in the child.
 */
static struct {
    pthread_mutex_t lock;
    int64_t last_ms;
    unsigned counter;
    size_t left;
    unsigned char pool[512];
} uuid_state = {PTHREAD_MUTEX_INITIALIZER, -1, 0, 0, {0}};

static void uuid_atfork_prepare(void)
{
    pthread_mutex_lock(&uuid_state.lock);
}

static void uuid_atfork_parent(void)
{
    pthread_mutex_unlock(&uuid_state.lock);
}

static void uuid_atfork_child(void)
{
    uuid_state.left = 0;
    pthread_mutex_unlock(&uuid_state.lock);
}

/*
 * Registers the atfork handlers once. Not under the generator's lock:
 * some C libraries hold their own atfork lock while running prepare
 * handlers, and ours takes the generator's lock.
 */
static int uuid_register_atfork(ob_error_t *err)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static int registered;
    int rc = 0;

    if (__atomic_load_n(&registered, __ATOMIC_ACQUIRE))
        return 0;

    pthread_mutex_lock(&lock);
    if (!registered) {
        rc = pthread_atfork(uuid_atfork_prepare, uuid_atfork_parent,
                            uuid_atfork_child);
        if (rc == 0)
            __atomic_store_n(&registered, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&lock);
    return rc != 0 ? ob__error_sys(err, rc, "pthread_atfork") : 0;
}

/* Copies n random bytes from the pool, refilling it when it runs low. */
static int uuid_random(unsigned char *dst, size_t n, ob_error_t *err)
{
    size_t got = 0;
    ssize_t r;

    if (uuid_state.left < n) {
        while (got < sizeof(uuid_state.pool)) {
            r = getrandom(uuid_state.pool + got, sizeof(uuid_state.pool) - got,
                          0);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0)
                return ob__error_sys(err, errno, "getrandom");
            got += (size_t)r;
        }
        uuid_state.left = sizeof(uuid_state.pool);
    }
    memcpy(dst, uuid_state.pool + sizeof(uuid_state.pool) - uuid_state.left, n);
    uuid_state.left -= n;
    return 0;
}

/*
 * Picks the timestamp and counter of the next id, called with the lock
 * held. A new millisecond restarts the counter at a random value below
 * 2048, which leaves at least 2048 ids for that millisecond before the
 * counter overflows into the next one.
 */
static int uuid_next_tick(int64_t now, int64_t *msp, unsigned *counterp,
                          ob_error_t *err)
{
    unsigned char seed[2];
    int rc;

    if (now > uuid_state.last_ms || uuid_state.counter == UUID_COUNTER_MAX) {
        rc = uuid_random(seed, sizeof(seed), err);
        if (rc != 0)
            return rc;
        uuid_state.last_ms =
            now > uuid_state.last_ms ? now : uuid_state.last_ms + 1;
        uuid_state.counter = ((unsigned)seed[0] << 8 | seed[1]) & 0x7ff;
    } else {
        uuid_state.counter++;
    }
    *msp = uuid_state.last_ms;
    *counterp = uuid_state.counter;
    return 0;
}

static void uuid_format(const unsigned char b[16], char *out)
{
    static const char hex[] = "0123456789abcdef";
    size_t i;
    char *w = out;

    for (i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *w++ = '-';
        *w++ = hex[b[i] >> 4];
        *w++ = hex[b[i] & 0xf];
    }
    *w = '\0';
}

int ob_key_uuidv7(char out[OB_UUID_LEN + 1], ob_error_t *err)
{
    unsigned char b[16];
    unsigned counter;
    int64_t now, ms;
    int rc, i;

    if (out == NULL)
        return ob__error_set(err, OB_EINVAL, "UUID output is NULL");

    rc = uuid_register_atfork(err);
    if (rc != 0)
        return rc;

    now = ob__wall_ms();
    now = now < 0 ? 0 : now > UUID_TIME_MAX ? UUID_TIME_MAX : now;
    pthread_mutex_lock(&uuid_state.lock);
    rc = uuid_next_tick(now, &ms, &counter, err);
    if (rc == 0)
        rc = uuid_random(b + 8, 8, err);
    pthread_mutex_unlock(&uuid_state.lock);
    if (rc != 0)
        return rc;

    for (i = 0; i < 6; i++)
        b[i] = (unsigned char)(ms >> (40 - 8 * i));
    b[6] = (unsigned char)(0x70 | counter >> 8);
    b[7] = (unsigned char)(counter & 0xff);
    b[8] = (unsigned char)(0x80 | (b[8] & 0x3f));
    uuid_format(b, out);
    return 0;
}

static int digest_field(EVP_MD_CTX *ctx, const void *data, size_t len)
{
    unsigned char be[8];
    int i;

    for (i = 0; i < 8; i++)
        be[i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    return EVP_DigestUpdate(ctx, be, sizeof(be)) == 1 &&
           EVP_DigestUpdate(ctx, data, len) == 1;
}

/* SHA-256 over the tag and the four length-prefixed fields. */
static int content_digest(const char *const fields[4], const size_t lens[4],
                          unsigned char digest[32], ob_error_t *err)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int digest_len = 0;
    int ok, i;

    if (ctx == NULL)
        return ob__error_nomem(err, "SHA-256 context");

    ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
         EVP_DigestUpdate(ctx, CONTENT_TAG, strlen(CONTENT_TAG)) == 1;
    for (i = 0; ok && i < 4; i++)
        ok = digest_field(ctx, fields[i], lens[i]);
    ok = ok && EVP_DigestFinal_ex(ctx, digest, &digest_len) == 1 &&
         digest_len == 32;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return ob__error_set(err, OB_EINTERNAL, "SHA-256 failed");
    return 0;
}

/* Writes n bytes as 2n lowercase hex digits and a NUL. */
static void hex_encode(const unsigned char *bytes, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    size_t i;

    for (i = 0; i < n; i++) {
        out[2 * i] = hex[bytes[i] >> 4];
        out[2 * i + 1] = hex[bytes[i] & 0xf];
    }
    out[2 * n] = '\0';
}

static int check_name(const char *field, const char *s, size_t max,
                      ob_error_t *err)
{
    return ob__check_text(field, s, s != NULL ? strlen(s) : 0, max, err);
}

int ob_key_content(const char *aggregate_type, const char *aggregate_id,
                   const char *event_type, const char *payload,
                   size_t payload_len, char out[OB_CONTENT_KEY_LEN + 1],
                   ob_error_t *err)
{
    const char *fields[4] = {aggregate_type, aggregate_id, event_type};
    size_t lens[4];
    unsigned char digest[32];
    char *canonical;
    int rc, i;

    rc = check_name("aggregate type", aggregate_type, AGGREGATE_TYPE_MAX, err);
    if (rc == 0)
        rc = check_name("aggregate id", aggregate_id, AGGREGATE_ID_MAX, err);
    if (rc == 0)
        rc = check_name("event type", event_type, EVENT_TYPE_MAX, err);
    if (rc != 0)
        return rc;
    if (payload == NULL || out == NULL)
        return ob__error_set(err, OB_EINVAL, "%s is NULL",
                             payload == NULL ? "payload" : "key output");

    rc = ob_json_canonicalize(payload, payload_len, &canonical, &lens[3], err);
    if (rc != 0) {
        ob__error_prefix(err, "payload");
        return rc;
    }
    for (i = 0; i < 3; i++)
        lens[i] = strlen(fields[i]);
    fields[3] = canonical;
    rc = content_digest(fields, lens, digest, err);
    ob__free(canonical);
    if (rc != 0)
        return rc;

    hex_encode(digest, OB_CONTENT_KEY_LEN / 2, out);
    return 0;
}
