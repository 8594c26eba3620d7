/*
 * oncebox check: the exactly-once checker for end-to-end tests. It
 * compares what producers committed with what consumers applied and
 * reports every event that was lost, applied more than once, applied out
 * of order within its aggregate, or applied without having been
 * committed (a phantom: rolled back, or never written at all).
 *
 * Input files hold one event per line, either a JSON object
 * {"key": "...", "aggregate": "...", "seq": N} or tab-separated
 * "key<TAB>aggregate<TAB>seq" as `psql -At -F "<TAB>"` prints it;
 * aggregate and seq may be left out. Committed events are ordered by seq
 * within their aggregate; applied events are read in the order they were
 * applied, and their own seq (when given) must match the committed one.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "tools/oncebox/cli.h"

enum {
    OPT_COMMITTED = CLI_OPT_FIRST,
    OPT_APPLIED,
    OPT_ROLLED_BACK,
    OPT_JSON,
    OPT_EXAMPLES
};

/* What is known about one idempotency key. */
struct event {
    char *key;
    char *aggregate; /* NULL: none given */
    long long seq;   /* -1: none given */
    int committed;
    int rolled_back;
    long applied; /* how many times */
};

struct table {
    struct event *slots;
    size_t cap, used;
};

/* Per aggregate: the committed seq last applied, for the order check. */
struct order_slot {
    char *aggregate;
    long long last;
};

struct orders {
    struct order_slot *slots;
    size_t cap, used;
};

enum { LOST, DUPLICATED, OUT_OF_ORDER, PHANTOM, FINDING_COUNT };

static const char *const finding_names[FINDING_COUNT] = {
    "lost", "duplicated", "out_of_order", "phantom"};

struct report {
    long count[FINDING_COUNT];
    json_t *examples[FINDING_COUNT];
    long max_examples;
    long committed, rolled_back, applied_lines;
};

struct check_args {
    const char *committed, *applied, *rolled_back;
    long max_examples;
    int json;
};

/* A parsed input line. */
struct line {
    char *key, *aggregate;
    long long seq;
};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;

    while (*s != '\0')
        h = (h ^ (unsigned char)*s++) * 1099511628211ULL;
    return h;
}

static int table_grow(struct table *t)
{
    size_t cap = t->cap ? t->cap * 2 : 1024, i, j;
    struct event *slots = calloc(cap, sizeof(*slots));

    if (slots == NULL)
        return -1;
    for (i = 0; i < t->cap; i++) {
        if (t->slots[i].key == NULL)
            continue;
        j = hash_str(t->slots[i].key) & (cap - 1);
        while (slots[j].key != NULL)
            j = (j + 1) & (cap - 1);
        slots[j] = t->slots[i];
    }
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
    return 0;
}

/* The event for key, created (taking ownership of key) when absent. */
static struct event *table_get(struct table *t, char **key)
{
    size_t i;

    if (t->used * 2 >= t->cap && table_grow(t) != 0)
        return NULL;
    i = hash_str(*key) & (t->cap - 1);
    while (t->slots[i].key != NULL) {
        if (strcmp(t->slots[i].key, *key) == 0)
            return &t->slots[i];
        i = (i + 1) & (t->cap - 1);
    }
    t->slots[i].key = *key;
    t->slots[i].seq = -1;
    *key = NULL;
    t->used++;
    return &t->slots[i];
}

static int orders_grow(struct orders *o)
{
    size_t cap = o->cap ? o->cap * 2 : 256, i, j;
    struct order_slot *slots = calloc(cap, sizeof(*slots));

    if (slots == NULL)
        return -1;
    for (i = 0; i < o->cap; i++) {
        if (o->slots[i].aggregate == NULL)
            continue;
        j = hash_str(o->slots[i].aggregate) & (cap - 1);
        while (slots[j].aggregate != NULL)
            j = (j + 1) & (cap - 1);
        slots[j] = o->slots[i];
    }
    free(o->slots);
    o->slots = slots;
    o->cap = cap;
    return 0;
}

/* The order slot of an aggregate (borrowed name), created when absent. */
static struct order_slot *orders_get(struct orders *o, char *aggregate)
{
    size_t i;

    if (o->used * 2 >= o->cap && orders_grow(o) != 0)
        return NULL;
    i = hash_str(aggregate) & (o->cap - 1);
    while (o->slots[i].aggregate != NULL) {
        if (strcmp(o->slots[i].aggregate, aggregate) == 0)
            return &o->slots[i];
        i = (i + 1) & (o->cap - 1);
    }
    o->slots[i].aggregate = aggregate;
    o->slots[i].last = -1;
    o->used++;
    return &o->slots[i];
}

static int parse_json_line(const char *text, struct line *l)
{
    json_t *doc = json_loads(text, 0, NULL), *k, *a, *s;
    int rc = -1;

    if (doc == NULL || !json_is_object(doc))
        goto done;
    k = json_object_get(doc, "key");
    a = json_object_get(doc, "aggregate");
    s = json_object_get(doc, "seq");
    if (!json_is_string(k) || (a != NULL && !json_is_string(a) &&
                               !json_is_null(a)) ||
        (s != NULL && !json_is_integer(s) && !json_is_null(s)))
        goto done;

    l->key = strdup(json_string_value(k));
    l->aggregate = json_is_string(a) ? strdup(json_string_value(a)) : NULL;
    l->seq = json_is_integer(s) ? json_integer_value(s) : -1;
    rc = l->key != NULL ? 0 : -1;
done:
    json_decref(doc);
    return rc;
}

static int parse_tsv_line(char *text, struct line *l)
{
    char *agg = strchr(text, '\t'), *seq = NULL, *end;

    if (agg != NULL) {
        *agg++ = '\0';
        seq = strchr(agg, '\t');
        if (seq != NULL)
            *seq++ = '\0';
    }
    l->seq = -1;
    if (seq != NULL && *seq != '\0') {
        errno = 0;
        l->seq = strtoll(seq, &end, 10);
        if (errno != 0 || *end != '\0' || l->seq < 0)
            return -1;
    }
    l->key = strdup(text);
    l->aggregate = agg != NULL && *agg != '\0' ? strdup(agg) : NULL;
    return l->key != NULL && *text != '\0' ? 0 : -1;
}

static int parse_line(char *text, struct line *l)
{
    size_t len = strlen(text);

    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
        text[--len] = '\0';
    l->key = l->aggregate = NULL;
    if (text[0] == '{')
        return parse_json_line(text, l);
    return parse_tsv_line(text, l);
}

static void line_free(struct line *l)
{
    free(l->key);
    free(l->aggregate);
}

typedef int (*line_fn)(void *ctx, struct line *l);

/* Calls fn for every non-blank line of path; 2 for bad input. */
static int each_line(cli_t *cli, const char *path, line_fn fn, void *ctx)
{
    FILE *f = fopen(path, "r");
    size_t cap = 0;
    char *text = NULL;
    long n = 0;
    struct line l;
    int rc = CLI_CONTINUE;

    if (f == NULL)
        return cli_usage_error(cli, "%s: %s", path, strerror(errno));
    while (rc == CLI_CONTINUE && getline(&text, &cap, f) >= 0) {
        n++;
        if (text[strspn(text, " \t\r\n")] == '\0')
            continue;
        if (parse_line(text, &l) != 0)
            rc = cli_usage_error(cli, "%s:%ld: expected a JSON object with "
                                 "\"key\", or key<TAB>aggregate<TAB>seq",
                                 path, n);
        else if (fn(ctx, &l) != 0)
            rc = cli_error(cli, "out of memory");
        line_free(&l);
    }
    if (rc == CLI_CONTINUE && ferror(f))
        rc = cli_error(cli, "%s: read error", path);
    free(text);
    fclose(f);
    return rc;
}

struct state {
    struct table events;
    struct orders orders;
    struct report report;
};

static void note(struct report *r, int finding, const struct event *e,
                 const char *detail)
{
    json_t *ex;

    r->count[finding]++;
    if ((long)json_array_size(r->examples[finding]) >= r->max_examples)
        return;
    ex = json_pack("{s:s}", "key", e->key);
    if (e->aggregate != NULL)
        json_object_set_new(ex, "aggregate", json_string(e->aggregate));
    if (e->seq >= 0)
        json_object_set_new(ex, "seq", json_integer(e->seq));
    if (detail != NULL)
        json_object_set_new(ex, "detail", json_string(detail));
    json_array_append_new(r->examples[finding], ex);
}

static int take_committed(void *ctx, struct line *l)
{
    struct state *st = ctx;
    struct event *e = table_get(&st->events, &l->key);

    if (e == NULL)
        return -1;
    if (!e->committed)
        st->report.committed++;
    e->committed = 1;
    if (e->aggregate == NULL) {
        e->aggregate = l->aggregate;
        l->aggregate = NULL;
    }
    if (l->seq >= 0)
        e->seq = l->seq;
    return 0;
}

static int take_rolled_back(void *ctx, struct line *l)
{
    struct state *st = ctx;
    struct event *e = table_get(&st->events, &l->key);

    if (e == NULL)
        return -1;
    if (!e->rolled_back)
        st->report.rolled_back++;
    e->rolled_back = 1;
    if (e->aggregate == NULL) {
        e->aggregate = l->aggregate;
        l->aggregate = NULL;
    }
    return 0;
}

/* First applications of an aggregate's events must rise in seq. */
static int check_order(struct state *st, struct event *e, struct line *l)
{
    struct order_slot *o;
    char detail[96];

    if (l->seq >= 0 && e->seq >= 0 && l->seq != e->seq) {
        snprintf(detail, sizeof(detail), "applied with seq %lld",
                 l->seq);
        note(&st->report, OUT_OF_ORDER, e, detail);
        return 0;
    }
    if (e->aggregate == NULL || e->seq < 0)
        return 0;

    o = orders_get(&st->orders, e->aggregate);
    if (o == NULL)
        return -1;
    if (e->seq < o->last) {
        snprintf(detail, sizeof(detail), "applied after seq %lld",
                 o->last);
        note(&st->report, OUT_OF_ORDER, e, detail);
        return 0;
    }
    o->last = e->seq;
    return 0;
}

static int take_applied(void *ctx, struct line *l)
{
    struct state *st = ctx;
    struct event *e = table_get(&st->events, &l->key);

    if (e == NULL)
        return -1;
    st->report.applied_lines++;
    if (e->aggregate == NULL) {
        e->aggregate = l->aggregate;
        l->aggregate = NULL;
    }
    if (++e->applied > 1) {
        if (e->applied == 2)
            note(&st->report, DUPLICATED, e, NULL);
        return 0;
    }
    if (!e->committed) {
        note(&st->report, PHANTOM, e,
             e->rolled_back ? "rolled back" : "never committed");
        return 0;
    }
    return check_order(st, e, l);
}

static void find_lost(struct state *st)
{
    size_t i;

    for (i = 0; i < st->events.cap; i++) {
        struct event *e = &st->events.slots[i];

        if (e->key != NULL && e->committed && e->applied == 0)
            note(&st->report, LOST, e, NULL);
    }
}

static json_t *report_json(const struct report *r)
{
    json_t *out = json_object();
    int i, ok = 1;

    json_object_set_new(out, "committed", json_integer(r->committed));
    json_object_set_new(out, "rolled_back", json_integer(r->rolled_back));
    json_object_set_new(out, "applied", json_integer(r->applied_lines));
    for (i = 0; i < FINDING_COUNT; i++) {
        json_object_set_new(out, finding_names[i],
                            json_integer(r->count[i]));
        ok &= r->count[i] == 0;
    }
    json_object_set_new(out, "ok", json_boolean(ok));
    return out;
}

static void print_text(const struct report *r)
{
    size_t j;
    int i;

    printf("committed %ld, rolled back %ld, applied %ld\n", r->committed,
           r->rolled_back, r->applied_lines);
    for (i = 0; i < FINDING_COUNT; i++) {
        printf("%s: %ld\n", finding_names[i], r->count[i]);
        for (j = 0; j < json_array_size(r->examples[i]); j++) {
            char *s = json_dumps(json_array_get(r->examples[i], j),
                                 JSON_COMPACT | JSON_SORT_KEYS);

            printf("  %s\n", s != NULL ? s : "?");
            free(s);
        }
    }
}

static int print_report(const struct report *r, int as_json)
{
    json_t *out = report_json(r), *examples;
    int ok = json_is_true(json_object_get(out, "ok")), i;
    char *s;

    if (as_json) {
        examples = json_object();
        for (i = 0; i < FINDING_COUNT; i++)
            json_object_set(examples, finding_names[i], r->examples[i]);
        json_object_set_new(out, "examples", examples);
        s = json_dumps(out, JSON_SORT_KEYS);
        printf("%s\n", s != NULL ? s : "{}");
        free(s);
    } else {
        print_text(r);
        printf("%s\n", ok ? "exactly once: yes" : "exactly once: NO");
    }
    json_decref(out);
    return ok ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
}

static int check_option(void *opaque, cli_t *cli, int opt, const char *arg)
{
    struct check_args *a = opaque;
    char *end;

    switch (opt) {
    case OPT_COMMITTED: a->committed = arg; break;
    case OPT_APPLIED: a->applied = arg; break;
    case OPT_ROLLED_BACK: a->rolled_back = arg; break;
    case OPT_JSON: a->json = 1; break;
    case OPT_EXAMPLES:
        a->max_examples = strtol(arg, &end, 10);
        if (*arg == '\0' || *end != '\0' || a->max_examples < 0)
            return cli_usage_error(cli, "--examples takes a count, not "
                                   "\"%s\"", arg);
        break;
    default: return cli_usage_error(cli, "unknown option");
    }
    return CLI_CONTINUE;
}

static void state_free(struct state *st)
{
    size_t i;
    int f;

    for (i = 0; i < st->events.cap; i++) {
        free(st->events.slots[i].key);
        free(st->events.slots[i].aggregate);
    }
    free(st->events.slots);
    free(st->orders.slots);
    for (f = 0; f < FINDING_COUNT; f++)
        json_decref(st->report.examples[f]);
}

static int check_files(cli_t *cli, const struct check_args *a)
{
    struct state st;
    int rc, f;

    memset(&st, 0, sizeof(st));
    st.report.max_examples = a->max_examples;
    for (f = 0; f < FINDING_COUNT; f++)
        st.report.examples[f] = json_array();

    rc = each_line(cli, a->committed, take_committed, &st);
    if (rc == CLI_CONTINUE && a->rolled_back != NULL)
        rc = each_line(cli, a->rolled_back, take_rolled_back, &st);
    if (rc == CLI_CONTINUE)
        rc = each_line(cli, a->applied, take_applied, &st);
    if (rc == CLI_CONTINUE) {
        find_lost(&st);
        rc = print_report(&st.report, a->json);
    }
    state_free(&st);
    return rc;
}

static int check_run(cli_t *cli, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"committed", required_argument, NULL, OPT_COMMITTED},
        {"applied", required_argument, NULL, OPT_APPLIED},
        {"rolled-back", required_argument, NULL, OPT_ROLLED_BACK},
        {"json", no_argument, NULL, OPT_JSON},
        {"examples", required_argument, NULL, OPT_EXAMPLES},
        {NULL, 0, NULL, 0},
    };
    struct check_args a = {NULL, NULL, NULL, 10, 0};
    int rc = cli_parse(cli, argc, argv, NULL, longopts, check_option, &a);

    if (rc == CLI_CONTINUE)
        rc = cli_no_operands(cli);
    if (rc != CLI_CONTINUE)
        return rc;
    if (a.committed == NULL || a.applied == NULL)
        return cli_usage_error(cli, "--committed and --applied are "
                               "required");
    return check_files(cli, &a);
}

const cli_cmd_t cli_cmd_check = {
    .name = "check",
    .summary = "compare committed and applied events: lost, duplicated, "
               "out of order, phantom",
    .synopsis = "check --committed FILE --applied FILE [--rolled-back FILE]"
                " [--examples N] [--json]",
    .options =
        "  --committed FILE    events producers committed\n"
        "  --applied FILE      events consumers applied, in the order "
        "applied\n"
        "  --rolled-back FILE  events whose transaction rolled back\n"
        "  --examples N        examples to show per finding (default 10)\n"
        "  --json              print one JSON object\n"
        "Each line: {\"key\": K, \"aggregate\": A, \"seq\": N} or "
        "K<TAB>A<TAB>N;\naggregate and seq may be left out. Exit 0 when "
        "every committed event\nwas applied exactly once, in order, and "
        "nothing else; 1 otherwise.\n",
    .run = check_run,
};
