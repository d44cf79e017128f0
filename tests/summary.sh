#!/bin/sh
# Adds up the results files written by tests/run.sh and prints the closing
# line "N passed, N failed"; exits non-zero when anything failed or nothing ran.
set -u
p=0; f=0
for r in "$@"; do
    [ -f "$r" ] || { echo "missing results: $r"; f=$((f + 1)); continue; }
    while read -r _ a b; do p=$((p + a)); f=$((f + b)); done < "$r"
done
echo "$p passed, $f failed"
[ "$f" -eq 0 ] && [ "$p" -gt 0 ]
