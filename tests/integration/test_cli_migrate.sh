#!/usr/bin/env bash
#
# oncebox migrate and the command's skeleton, run as a user would:
# results on stdout, messages on stderr, exit 0 / 1 (failure) / 2 (bad
# usage or input), every way of naming the database, and no password in
# any message. Needs OB_BUILD (the build dir) and ONCEBOX_TEST_DB (a
# libpq conninfo); tests/run-integration.sh provides both. Each schema it
# creates has a name of its own and is dropped on exit.

. "$(dirname "$0")/../support/clitest.sh"

# The quoted form the command prints a schema name in.
shown() {
    printf 'schema %s' "$(ident "$1")"
}

# --version names the schema version this build migrates to.
run "$ONCEBOX" --version
check "--version exits 0" rc_is 0
LATEST=$(sed -n 's/.*(schema version \([0-9][0-9]*\)).*/\1/p' "$TMP/out")
check "--version names the schema version" test -n "$LATEST"
LATEST=${LATEST:-0}

# --db, twice.
new_schema cli
run "$ONCEBOX" migrate --db "$ONCEBOX_TEST_DB" --schema "$s"
check "migrate exits 0" rc_is 0
check "migrate reports what it applied" \
    out_is "$(shown "$s") at version $LATEST (applied $LATEST)"
check "migrate is silent on stderr" err_empty
check "the schema is there" test "$(psql_test -v s="$s" <<<"
    SELECT count(*) FROM pg_namespace WHERE nspname = :'s'")" = 1

run "$ONCEBOX" migrate --db "$ONCEBOX_TEST_DB" --schema "$s"
check "a second migrate exits 0" rc_is 0
check "a second migrate applies nothing" \
    out_is "$(shown "$s") already at version $LATEST"

# The environment instead of options.
new_schema env_db
run ONCEBOX_DB="$ONCEBOX_TEST_DB" "$ONCEBOX" migrate --schema "$s"
check "ONCEBOX_DB works without --db" rc_is 0
check "ONCEBOX_DB migrates" \
    out_is "$(shown "$s") at version $LATEST (applied $LATEST)"

new_schema env_schema
run ONCEBOX_DB="$ONCEBOX_TEST_DB" ONCEBOX_SCHEMA="$s" "$ONCEBOX" migrate
check "ONCEBOX_SCHEMA names the schema" \
    out_is "$(shown "$s") at version $LATEST (applied $LATEST)"

env_schema=$s
new_schema option_wins
run ONCEBOX_DB="host=127.0.0.1 port=1" ONCEBOX_SCHEMA="$env_schema" \
    "$ONCEBOX" migrate --db "$ONCEBOX_TEST_DB" --schema "$s"
check "options win over the environment" \
    out_is "$(shown "$s") at version $LATEST (applied $LATEST)"

# libpq's own variables, taken from the test server's connection.
IFS='|' read -r pg_user pg_db pg_port pg_host < <(psql_test -F '|' -c \
    "SELECT current_user, current_database(), current_setting('port'),
            coalesce(host(inet_server_addr()),
                     trim(split_part(current_setting(
                         'unix_socket_directories'), ',', 1)))")
pg_password=
if [[ $ONCEBOX_TEST_DB =~ password=([^[:space:]]+) ]]; then
    pg_password=${BASH_REMATCH[1]}
fi
new_schema libpq_vars
run PGHOST="$pg_host" PGPORT="$pg_port" PGUSER="$pg_user" \
    PGDATABASE="$pg_db" ${pg_password:+PGPASSWORD="$pg_password"} \
    "$ONCEBOX" migrate --schema "$s"
check "PG* variables work without --db" rc_is 0
check "PG* variables migrate" \
    out_is "$(shown "$s") at version $LATEST (applied $LATEST)"

# A name that needs quoting.
new_schema 'Odd "Schema" name'
run "$ONCEBOX" migrate --db "$ONCEBOX_TEST_DB" --schema "$s"
check "a name that needs quoting migrates" rc_is 0
check "a name that needs quoting is shown quoted" \
    out_is "$(shown "$s") at version $LATEST (applied $LATEST)"

# Log levels: -v adds info lines in the log's format; default has none.
new_schema verbose
run "$ONCEBOX" migrate -v --db "$ONCEBOX_TEST_DB" --schema "$s"
check "-v exits 0" rc_is 0
check "-v logs at info level" err_has "oncebox: info: migrate: "
run "$ONCEBOX" migrate -q --db "$ONCEBOX_TEST_DB" --schema "$s"
check "-q keeps the result" out_is "$(shown "$s") already at version $LATEST"
check "-q logs nothing on success" err_empty

# A database at a newer version than this build knows.
psql_test -c "INSERT INTO $(ident "$s").oncebox_migrations (version, name)
              VALUES ($((LATEST + 1)), 'from_the_future')"
run "$ONCEBOX" migrate --db "$ONCEBOX_TEST_DB" --schema "$s"
check "a newer schema exits 1" rc_is 1
check "a newer schema says what to do" err_has "upgrade oncebox"
check "a newer schema prints no result" out_empty

# Bad usage and bad input: exit 2, usage on stderr, nothing on stdout.
run "$ONCEBOX" migrate --bogus
check "an unknown option exits 2" rc_is 2
check "an unknown option is named" err_has "unknown option '--bogus'"
check "an unknown option shows the usage" err_has "usage: oncebox migrate"
check "an unknown option prints no result" out_empty

run "$ONCEBOX" migrate --bogus="password=$SECRET"
check "an unknown option with a value exits 2" rc_is 2
check "an unknown option's value is not echoed" no_secret

run "$ONCEBOX" migrate --db
check "a missing value exits 2" rc_is 2
check "a missing value is named" err_has "option '--db' needs a value"

run "$ONCEBOX" migrate extra --db "$ONCEBOX_TEST_DB"
check "an operand exits 2" rc_is 2
check "an operand is named" err_has "unexpected argument 'extra'"

run "$ONCEBOX" migrate --db "$ONCEBOX_TEST_DB" --schema pg_reserved
check "a reserved schema name exits 2" rc_is 2
check "a reserved schema name is explained" err_has "reserved"

run "$ONCEBOX" migrate --db "$ONCEBOX_TEST_DB" --schema ""
check "an empty schema name exits 2" rc_is 2

run "$ONCEBOX" migrate --db "host=127.0.0.1 password=$SECRET port"
check "a malformed conninfo exits 2" rc_is 2
check "a malformed conninfo is reported" err_has "malformed"
check "a malformed conninfo is not echoed" no_secret

run "$ONCEBOX" frobnicate
check "an unknown command exits 2" rc_is 2
check "an unknown command is named" err_has "unknown command 'frobnicate'"
check "an unknown command shows the usage" err_has "usage: oncebox COMMAND"

run "$ONCEBOX"
check "no command exits 2" rc_is 2
check "no command shows the usage" err_has "usage: oncebox COMMAND"

# Help goes to stdout and succeeds.
run "$ONCEBOX" --help
check "--help exits 0" rc_is 0
check "--help lists migrate" out_has "  migrate "
run "$ONCEBOX" help migrate
check "help migrate exits 0" rc_is 0
check "help migrate shows the common options" out_has "--schema NAME"
run "$ONCEBOX" migrate --help
check "migrate --help exits 0" rc_is 0
check "migrate --help shows its usage" out_has "usage: oncebox migrate"
run "$ONCEBOX" help frobnicate
check "help on an unknown command exits 2" rc_is 2

# An unreachable server (nothing listens on port 1): exit 1, the server
# named, the password nowhere.
run "$ONCEBOX" migrate \
    --db "host=127.0.0.1 port=1 dbname=x user=x password=$SECRET"
check "an unreachable database exits 1" rc_is 1
check "an unreachable database is reported" \
    err_has "oncebox: error: migrate: cannot connect to the database"
check "the message names the server" err_has "127.0.0.1"
check "the message has no password (conninfo)" no_secret

run "$ONCEBOX" migrate --db "postgresql://x:$SECRET@127.0.0.1:1/x"
check "an unreachable URI exits 1" rc_is 1
check "the message has no password (URI)" no_secret

run ONCEBOX_DB="host=127.0.0.1 port=1 password=$SECRET" "$ONCEBOX" migrate
check "an unreachable ONCEBOX_DB exits 1" rc_is 1
check "the message has no password (ONCEBOX_DB)" no_secret

run PGPASSWORD="$SECRET" PGHOST=127.0.0.1 PGPORT=1 "$ONCEBOX" migrate
check "an unreachable PGHOST exits 1" rc_is 1
check "the message has no password (PGPASSWORD)" no_secret

finish
