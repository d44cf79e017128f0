#!/bin/sh
# Runs unit-test binaries (cmocka) one by one, each with a time limit and its
# own temp dir, and appends "name passed failed" to $BUILD/results.txt.
set -u
build=$1; shift
results="$build/results.txt"
: > "$results"
status=0
for t in "$@"; do
    name=$(basename "$t")
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/th-$name.XXXXXX")
    out="$build/tests/$name.log"
    TH_TEST_TMPDIR="$tmp" timeout 600 "$t" > "$out" 2>&1
    rc=$?
    passed=$(grep -E '^\[  PASSED  \] [0-9]+ test' "$out" | awk '{s+=$4} END {print s+0}')
    failed=$(grep -E '^\[  FAILED  \] [0-9]+ test' "$out" | awk '{s+=$4} END {print s+0}')
    if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
    echo "$name $passed $failed" >> "$results"
    if [ "$rc" -ne 0 ]; then
        status=1
        echo "FAIL $build/$name (exit $rc); log: $out"
        tail -n 30 "$out"
    else
        echo "ok   $build/$name ($passed tests)"
    fi
    rm -rf "$tmp"
done
exit $status
