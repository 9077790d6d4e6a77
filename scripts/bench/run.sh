#!/usr/bin/env bash
# make bench: georeg side by side with CNCF Distribution 2.8 and nginx on
# loopback. Installs the bench dependencies (idempotent), builds the release
# georeg and the helpers, then runs scripts/bench/bench.py, which starts,
# measures and stops every server. See docs/BENCHMARKS.md.
#
#   make bench                 full run (3 interleaved rounds, < 10 minutes)
#   QUICK=1 make bench         one short round, for development
#   BENCH_ONLY=get,rss ...     only some sections (see bench.py)
#   BENCH_SKIP_BUILD=1         do not run make; use the existing build/georeg
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

bash scripts/install-deps.sh --bench
if [ "${BENCH_SKIP_BUILD:-0}" = 1 ] && [ -x build/georeg ]; then
    echo "bench: BENCH_SKIP_BUILD=1: using the existing build/georeg" >&2
else
    make -s all                 # build/georeg, release flags (-O2)
fi
mkdir -p build/bench
cc -O2 -Wall -Wextra -pthread -o build/bench/tcpstream scripts/bench/tcpstream.c
cc -O2 -Wall -Wextra -pthread -o build/bench/nngstream scripts/bench/nngstream.c -lnng
if [ -f tests/tools/faultproxy.c ]; then
    # the replication-under-latency figure needs it; without it that figure is "pending"
    cc -O2 -D_GNU_SOURCE -std=c11 tests/tools/faultproxy.c -luv -o build/bench/faultproxy ||
        echo "bench: building tests/tools/faultproxy.c failed; latency figure will be pending" >&2
fi

# bench.py stops everything it started (by PID) on exit, error or signal;
# forward SIGTERM/SIGHUP to it and wait for that cleanup.
/usr/bin/python3 scripts/bench/bench.py "$@" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true' TERM HUP
trap 'kill -INT "$pid" 2>/dev/null || true' INT
rc=0
wait "$pid" || rc=$?
while kill -0 "$pid" 2>/dev/null; do
    wait "$pid" || rc=$?
done

# Only if bench.py was killed without its cleanup (kill -9): its servers die
# with it (PR_SET_PDEATHSIG) but nginx workers would not. Kill what it recorded,
# by PID, and only if the PID still has the recorded start time.
if [ -f build/bench/run/pids ]; then
    while read -r p start name; do
        now=$(cut -d')' -f2- "/proc/$p/stat" 2>/dev/null | awk '{print $20}') || true
        if [ -n "$now" ] && [ "$now" = "$start" ]; then
            kill -KILL "$p" 2>/dev/null && echo "bench: killed leftover $name (pid $p)" >&2
        fi
    done < build/bench/run/pids
fi
if [ -f build/bench/run/tmpdirs ]; then
    while read -r d; do
        case "$d" in */georeg-bench-*) rm -rf -- "$d" ;; esac
    done < build/bench/run/tmpdirs
fi
exit "$rc"
