#!/bin/sh
# schedule-conversations.sh: plans the next conversations, once per run.
#
# Meant to run under the taskhive supervisor as a periodic service on a cron
# schedule, e.g. with the C API:
#     spec.argv = {"examples/seed003/schedule-conversations.sh"};
#     spec.type = TH_SERVICE_PERIODIC; spec.cron = "*/15 * * * *";
# Each run prints one line (time-stamped by the supervisor in
# <log_dir>/<service>.log) and exits 0.
set -u
name=${TH_SERVICE:-schedule-conversations}
instance=${TH_INSTANCE:-0}
echo "$name[$instance]: scheduled conversations at $(date -u +%Y-%m-%dT%H:%M:%SZ)"
exit 0
