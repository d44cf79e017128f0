#!/bin/sh
# Runs taskhive's benchmark programs of one build and prints their figures
# ("<name> <value> <unit>" lines), then '#' comment lines saying when and on
# what machine they ran, so a pasted result carries its context.
#
#   sh bench/run.sh BUILD_DIR [ARGS...]     ARGS go to every benchmark (--quick, --only P)
set -eu

if [ $# -lt 1 ]; then
    echo "usage: sh bench/run.sh BUILD_DIR [--quick] [--only NAME-PREFIX]" >&2
    exit 2
fi
build=$1
shift

status=0
for name in engine_bench pool_bench http_bench supervisor_bench llm_bench; do
    bin=$build/bench/$name
    if [ ! -x "$bin" ]; then
        echo "bench/run.sh: $bin is missing; build it with 'make bench'" >&2
        exit 1
    fi
    TH_TASKHIVE_BIN=${TH_TASKHIVE_BIN:-$build/taskhive} "$bin" "$@" || status=$?
done

cpu=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo 2>/dev/null | head -n 1)
if [ -z "$cpu" ] && command -v lscpu >/dev/null 2>&1; then
    cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
fi
echo "# date: $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
echo "# machine: $(uname -srm)"
echo "# cpus: $(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)"
echo "# cpu model: ${cpu:-unknown}"
if [ "$status" -ne 0 ]; then
    echo "# engine_bench exited with status $status"
fi
exit "$status"
