#!/bin/sh
# initiative-worker.sh: reviewing initiatives, one pass every ${INITIATIVE_INTERVAL:-60} seconds.
#
# Meant to run under the taskhive supervisor as an "always" service (it
# loops itself), e.g. with the C API:
#     spec.argv = {"examples/seed003/initiative-worker.sh"}; spec.type = TH_SERVICE_ALWAYS;
# Each pass prints one line (the supervisor time-stamps it in
# <log_dir>/<service>.log). With --once it makes one pass and exits, so it
# can also run as a periodic service (spec.interval_ms = 60000).
#
# Environment: INITIATIVE_INTERVAL (seconds between passes), TH_INSTANCE and
# TH_SERVICE (set by the supervisor).
set -u
interval=${INITIATIVE_INTERVAL:-60}
name=${TH_SERVICE:-initiative-worker}
instance=${TH_INSTANCE:-0}
pass=0

trap 'echo "$name[$instance]: stopping after $pass passes"; exit 0' TERM INT

run_once() {
    pass=$((pass + 1))
    echo "$name[$instance]: reviewing initiatives pass $pass at $(date -u +%Y-%m-%dT%H:%M:%SZ)"
}

if [ "${1:-}" = "--once" ]; then
    run_once
    exit 0
fi
echo "$name[$instance]: started (pid $$, every ${interval}s)"
while :; do
    run_once
    # In the background, so a stop signal is handled at once.
    sleep "$interval" &
    wait $!
done
