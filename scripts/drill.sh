#!/usr/bin/env bash
# The failover drill (issue 9 section 9): three regions on loopback through fault
# proxies, a pusher, kill -9 / partition / return of the old primary, with sync off
# and on; one `drill:` line per scenario, targets vs achieved at the end.
#   scripts/drill.sh [--quick] [--scenarios a,c] [--sync on] [--keep]   (make drill)
# Exit 1 when an acknowledged push is lost with sync on, when two nodes acknowledge
# writes in one epoch, or when the regions do not converge.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export GEOREG_BIN="${GEOREG_BIN:-$root/build/georeg}"
export FAULTPROXY_BIN="${FAULTPROXY_BIN:-$root/build/faultproxy}"
export GEOREG_CERTS_SCRIPT="${GEOREG_CERTS_SCRIPT:-$root/scripts/gen-certs.sh}"
for b in "$GEOREG_BIN" "$FAULTPROXY_BIN"; do
    [ -x "$b" ] || { echo "drill: $b missing; run make all build/faultproxy" >&2; exit 2; }
done
exec "${PYTHON:-/usr/bin/python3}" "$root/scripts/drill.py" "$@"
