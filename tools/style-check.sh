#!/bin/sh
# The style rules a machine can check: lines of at most 80 columns, no
# tabs, no trailing blanks, no two blank lines in a row, a newline at the
# end. Prints each offence as file:line: rule, exits 1 when any is found.
status=0
for f in "$@"; do
    awk -v f="$f" '
        length($0) > 80 { print f ":" NR ": longer than 80 columns"; bad = 1 }
        /\t/ { print f ":" NR ": tab"; bad = 1 }
        /[ \t]$/ { print f ":" NR ": trailing blank"; bad = 1 }
        /^$/ { if (blank) { print f ":" NR ": two blank lines"; bad = 1 }
               blank = 1; next }
        { blank = 0 }
        END { exit bad }
    ' "$f" || status=1
    if [ -s "$f" ] && [ "$(tail -c 1 "$f" | od -An -c | tr -d ' ')" != '\n' ]
    then
        echo "$f: no newline at the end"
        status=1
    fi
done
[ $status -eq 0 ] && echo "style-check: $# files clean"
exit $status
