#!/usr/bin/env bash
#
# make install installs what a user builds against: the headers, both
# libraries with the soname, the pkg-config file and the tool, under
# DESTDIR when given; the shared library exports ob_* symbols only; and a
# program built with `pkg-config --cflags --libs oncebox` against an
# installed copy links and runs.

set -u -o pipefail

: "${OB_BUILD:?OB_BUILD must name the build directory}"
: "${OB_ROOT:?OB_ROOT must name the repository}"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
DEST=$TMP/dest
PREFIX=/opt/oncebox-test
CHECKS=0
FAILED=0

check() {
    local what=$1
    shift

    CHECKS=$((CHECKS + 1))
    if ! "$@"; then
        FAILED=$((FAILED + 1))
        echo "FAIL: $what"
    fi
}

install_to() {
    if ! make -s -C "$OB_ROOT" BUILD="$OB_BUILD" "$@" install \
            >"$TMP/install.log" 2>&1; then
        echo "FAIL: make install $*"
        cat "$TMP/install.log"
        exit 1
    fi
}

install_to PREFIX="$PREFIX" DESTDIR="$DEST"
lib=$DEST$PREFIX/lib
soname=$(readelf -d "$lib/liboncebox.so" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')

check "nothing is installed outside DESTDIR" \
    test ! -e "$PREFIX"
check "the pkg-config file names the final prefix" \
    grep -qx "prefix=$PREFIX" "$lib/pkgconfig/oncebox.pc"
check "the umbrella header is installed" \
    test -f "$DEST$PREFIX/include/oncebox/oncebox.h"
check "every public header is installed" \
    test "$(ls "$DEST$PREFIX/include/oncebox" | wc -l)" -eq \
         "$(ls "$OB_ROOT/include/oncebox" | wc -l)"
check "the static library is installed" test -f "$lib/liboncebox.a"
check "the shared library has a soname" test "$soname" = liboncebox.so.0
check "the soname link points at the library" test -L "$lib/$soname"
check "the pkg-config file is installed" \
    test -f "$lib/pkgconfig/oncebox.pc"
check "the tool is installed" test -x "$DEST$PREFIX/bin/oncebox"

# Exported symbols: ob_ functions and nothing else of ours.
nm -D --defined-only "$lib/liboncebox.so" | awk '$2 ~ /[TDBR]/ {print $3}' |
    grep -v '^_' | sort >"$TMP/exports"
check "the library exports symbols" test -s "$TMP/exports"
check "every export starts with ob_ and none with ob__" \
    test -z "$(grep -v '^ob_' "$TMP/exports"; grep '^ob__' "$TMP/exports")"
check "the writer is exported" grep -qx ob_writer_append "$TMP/exports"

cat >"$TMP/hello.c" <<'EOF'
#include <stdio.h>
#include <oncebox/oncebox.h>

int main(void)
{
    char id[OB_UUID_LEN + 1];

    if (ob_key_uuidv7(id, NULL) != 0)
        return 1;
    printf("%s %s\n", ob_version_string(), id);
    return ob_version() == OB_VERSION_NUMBER ? 0 : 1;
}
EOF

# A program against a copy installed under a prefix of its own. A
# sanitizer build of the library needs its runtime in the program too.
install_to PREFIX="$TMP/prefix"
lib=$TMP/prefix/lib
san=
if nm -D "$lib/liboncebox.so" | grep -q __asan_; then
    san="-fsanitize=address,undefined"
fi
export PKG_CONFIG_PATH=$lib/pkgconfig
flags=$(pkg-config --cflags --libs oncebox)
check "pkg-config names the installed library" \
    grep -q -- "-L$lib" <<<"$flags"
# shellcheck disable=SC2086
check "a program builds against the installed library" \
    cc $san -o "$TMP/hello" "$TMP/hello.c" $flags
out=$(LD_LIBRARY_PATH=$lib "$TMP/hello" 2>&1)
check "the program runs against the installed library" \
    test "${out%% *}" = "$(sed -n 's/^#define OB_VERSION_STRING "\(.*\)"/\1/p' \
        "$OB_ROOT/include/oncebox/core.h")"

echo "test_install: $CHECKS checks, $FAILED failed"
[[ $FAILED -eq 0 ]]
