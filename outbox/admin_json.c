/*
 * JSON renderings of a status and of a parked-rows list, built from the
 * public accessors only, so they show exactly what a C caller sees.
 * Missing values (no owner, no row to age, an unknown lag) are JSON null
 * rather than a sentinel number.
 */
#include <jansson.h>

#include "core/internal.h"
#include "oncebox/outbox.h"
#include "outbox/admin.h"

/* jansson's setters take ownership of the value, also on failure; a NULL
 * value makes them fail, which marks the whole document as failed. */
static void put(json_t *obj, const char *key, json_t *value, int *failed)
{
    if (json_object_set_new(obj, key, value) != 0)
        *failed = 1;
}

static void push(json_t *arr, json_t *value, int *failed)
{
    if (json_array_append_new(arr, value) != 0)
        *failed = 1;
}

static json_t *str_or_null(const char *s)
{
    return s != NULL ? json_string(s) : json_null();
}

static json_t *age_or_null(double age)
{
    return age >= 0 ? json_real(age) : json_null();
}

static json_t *bytes_or_null(long long n)
{
    return n >= 0 ? json_integer(n) : json_null();
}

static json_t *outbox_json(const ob_status_t *s, int *failed)
{
    json_t *o = json_object();

    put(o, "pending", json_integer(ob_status_pending(s)), failed);
    put(o, "due", json_integer(ob_status_due(s)), failed);
    put(o, "retrying", json_integer(ob_status_retrying(s)), failed);
    put(o, "parked", json_integer(ob_status_parked(s)), failed);
    put(o, "published", json_integer(ob_status_published(s)), failed);
    put(o, "oldest_pending_age_s",
        age_or_null(ob_status_oldest_pending_age(s)), failed);
    put(o, "oldest_published_age_s",
        age_or_null(ob_status_oldest_published_age(s)), failed);
    return o;
}

static json_t *owner_json(const ob_status_t *s, int g, int *failed)
{
    json_t *o;

    if (ob_status_lane_pid(s, g) == 0)
        return json_null();

    o = json_object();
    put(o, "pid", json_integer(ob_status_lane_pid(s, g)), failed);
    put(o, "application_name",
        str_or_null(ob_status_lane_application(s, g)), failed);
    put(o, "client_addr", str_or_null(ob_status_lane_client_addr(s, g)),
        failed);
    put(o, "since", str_or_null(ob_status_lane_since(s, g)), failed);
    return o;
}

static json_t *lanes_json(const ob_status_t *s, int *failed)
{
    json_t *o = json_object(), *groups = json_array();
    int g;

    put(o, "groups", json_integer(ob_status_lanes(s)), failed);
    put(o, "recorded", json_boolean(ob_status_lanes_recorded(s)), failed);
    put(o, "relays", json_integer(ob_status_relays(s)), failed);
    put(o, "owned", json_integer(ob_status_lanes_owned(s)), failed);
    for (g = 0; groups != NULL && g < ob_status_lanes(s); g++) {
        json_t *e = json_object();

        put(e, "group", json_integer(g), failed);
        put(e, "pending", json_integer(ob_status_lane_pending(s, g)),
            failed);
        put(e, "owner", owner_json(s, g, failed), failed);
        push(groups, e, failed);
    }
    put(o, "by_group", groups, failed);
    return o;
}

static json_t *inbox_json(const ob_status_t *s, int *failed)
{
    json_t *arr = json_array();
    size_t i;

    for (i = 0; arr != NULL && i < ob_status_inbox_count(s); i++) {
        json_t *e = json_object();

        put(e, "namespace", str_or_null(ob_status_inbox_namespace(s, i)),
            failed);
        put(e, "keys", json_integer(ob_status_inbox_keys(s, i)), failed);
        put(e, "oldest_age_s", age_or_null(ob_status_inbox_oldest_age(s, i)),
            failed);
        push(arr, e, failed);
    }
    return arr;
}

static json_t *slots_json(const ob_status_t *s, int *failed)
{
    json_t *arr = json_array();
    size_t i;

    for (i = 0; arr != NULL && i < ob_status_slot_count(s); i++) {
        json_t *e = json_object();

        put(e, "slot_name", str_or_null(ob_status_slot_name(s, i)), failed);
        put(e, "plugin", str_or_null(ob_status_slot_plugin(s, i)), failed);
        put(e, "active", json_boolean(ob_status_slot_active(s, i)), failed);
        put(e, "lag_bytes", bytes_or_null(ob_status_slot_lag_bytes(s, i)),
            failed);
        put(e, "retained_bytes",
            bytes_or_null(ob_status_slot_retained_bytes(s, i)), failed);
        push(arr, e, failed);
    }
    return arr;
}

/* Renders doc (taking it) into *jsonp, or reports the failure. */
static int dump(json_t *doc, int failed, char **jsonp, ob_error_t *err)
{
    char *text = NULL;

    if (doc != NULL && !failed)
        text = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER |
                                    JSON_REAL_PRECISION(10));
    json_decref(doc);
    return ob__admin_json_out(text, jsonp, err);
}

int ob_status_json(const ob_status_t *status, char **jsonp, ob_error_t *err)
{
    json_t *doc;
    int failed = 0;

    if (status == NULL || jsonp == NULL)
        return ob__error_set(err, OB_EINVAL, "status or jsonp is NULL");
    *jsonp = NULL;

    doc = json_object();
    put(doc, "schema", str_or_null(ob_status_schema(status)), &failed);
    put(doc, "taken_at", str_or_null(ob_status_taken_at(status)), &failed);
    put(doc, "outbox", outbox_json(status, &failed), &failed);
    put(doc, "lanes", lanes_json(status, &failed), &failed);
    put(doc, "inbox", inbox_json(status, &failed), &failed);
    put(doc, "replication_slots", slots_json(status, &failed), &failed);
    return dump(doc, failed, jsonp, err);
}

static json_t *parked_row_json(const ob_parked_t *p, size_t i, int *failed)
{
    json_t *e = json_object();

    put(e, "id", str_or_null(ob_parked_id(p, i)), failed);
    put(e, "aggregate_type", str_or_null(ob_parked_aggregate_type(p, i)),
        failed);
    put(e, "aggregate_id", str_or_null(ob_parked_aggregate_id(p, i)),
        failed);
    put(e, "event_type", str_or_null(ob_parked_event_type(p, i)), failed);
    put(e, "retry_count", json_integer(ob_parked_retry_count(p, i)), failed);
    put(e, "last_error", str_or_null(ob_parked_last_error(p, i)), failed);
    put(e, "created_at", str_or_null(ob_parked_created_at(p, i)), failed);
    put(e, "topic", str_or_null(ob_parked_topic(p, i)), failed);
    return e;
}

int ob_parked_json(const ob_parked_t *parked, char **jsonp, ob_error_t *err)
{
    json_t *doc, *rows;
    int failed = 0;
    size_t i;

    if (parked == NULL || jsonp == NULL)
        return ob__error_set(err, OB_EINVAL, "parked or jsonp is NULL");
    *jsonp = NULL;

    doc = json_object();
    rows = json_array();
    put(doc, "total", json_integer(ob_parked_total(parked)), &failed);
    for (i = 0; rows != NULL && i < ob_parked_count(parked); i++)
        push(rows, parked_row_json(parked, i, &failed), &failed);
    put(doc, "rows", rows, &failed);
    return dump(doc, failed, jsonp, err);
}
