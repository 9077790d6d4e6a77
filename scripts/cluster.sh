#!/usr/bin/env bash
# A local three-region georeg cluster on loopback, one cluster description
# (cluster.regions) with mutual TLS between regions:
#   eu-west   initial primary  http://127.0.0.1:5000
#   us-east   secondary        http://127.0.0.1:5001   (everything; eligible for primary)
#   ap-south  secondary        http://127.0.0.1:5002   (filter: prod/** and base/*, no **/tmp-*;
#                                                       a filtered region is never primary)
# Usage: scripts/cluster.sh start|stop|status|promote NAME [--force]
#   start    starts every region that is not running (again: a killed old primary
#            comes back and follows whichever region was promoted meanwhile)
#   status   each region's role, epoch and writability, then the lag on the primary
#   promote  georeg promote [--force] --url <that region's URL>
# Data, configs and logs under ./var/cluster (CLUSTER_DIR). BASE_PORT (default 5000)
# moves the HTTP ports; replication uses BASE_PORT+2000, +2001, +2002.
# initial_primary counts on the first start only (empty data dirs); afterwards the
# role is state in each data dir: `stop` and `start` keep the roles a promotion made.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${CLUSTER_DIR:-$root/var/cluster}"
bin="${GEOREG_BIN:-$root/build/georeg}"
base="${BASE_PORT:-5000}"
names=(eu-west us-east ap-south)

# idx NAME: the region's index (its ports are base+idx and base+2000+idx)
idx() {
    local i
    for i in "${!names[@]}"; do
        [ "${names[$i]}" = "$1" ] && { echo "$i"; return 0; }
    done
    echo "cluster: no region $1 (one of ${names[*]})" >&2
    return 1
}
url_of() { echo "http://127.0.0.1:$((base + $(idx "$1")))"; }

write_configs() {
    mkdir -p "$dir"
    bash "$root/scripts/gen-certs.sh" "$dir/tls" "${names[@]}"
    local n i
    for n in "${names[@]}"; do
        i=$(idx "$n")
        cat > "$dir/$n.yaml" <<YAML
node: {name: $n, data_dir: $dir/$n}
http: {listen: 127.0.0.1:$((base + i)), public_url: "http://127.0.0.1:$((base + i))"}
auth: {mode: none}   # a development cluster on loopback; deploy/config runs token auth
cluster:
  initial_primary: eu-west   # first start only; then the role is state in $dir/$n
  regions:
    - {name: eu-west, url: "http://127.0.0.1:$base", address: "tls+tcp://127.0.0.1:$((base + 2000))"}
    - {name: us-east, url: "http://127.0.0.1:$((base + 1))", address: "tls+tcp://127.0.0.1:$((base + 2001))"}
    - name: ap-south
      url: "http://127.0.0.1:$((base + 2))"
      address: "tls+tcp://127.0.0.1:$((base + 2002))"
      include: ["prod/**", "base/*"]
      exclude: ["**/tmp-*"]
replication:
  tls: {cert: $dir/tls/$n.pem, key: $dir/tls/$n.key, ca: $dir/tls/ca.pem,
        client_cert: $dir/tls/$n-client.pem}
YAML
    done
}

running() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }

# role_line NAME: "role epoch writable" of a region, or "down"
role_line() {
    local out
    if ! out=$("$bin" status --url "$(url_of "$1")" 2>/dev/null); then
        echo "down"
        return
    fi
    awk '$1 == "role" { $1 = ""; role = substr($0, 2) } $1 == "epoch" { ep = $2 }
         END { printf "%s, epoch %s\n", role, ep }' <<<"$out"
}

# primary_name: the region that reports itself primary and takes pushes (else one
# that reports primary, else nothing)
primary_name() {
    local n out any=""
    for n in "${names[@]}"; do
        out=$("$bin" status --url "$(url_of "$n")" 2>/dev/null) || continue
        grep -q '^role *primary (accepting' <<<"$out" && { echo "$n"; return 0; }
        grep -q '^role *primary' <<<"$out" && any="${any:-$n}"
    done
    [ -n "$any" ] && echo "$any"
    return 0
}

start() {
    [ -x "$bin" ] || { echo "cluster: $bin missing; run make" >&2; exit 1; }
    write_configs
    local n i
    # secondaries first: a primary takes writes once a majority follows it
    for n in us-east ap-south eu-west; do
        if running "$n"; then
            echo "cluster: $n already running (pid $(cat "$dir/$n.pid"))"
            continue
        fi
        # stdout too: a pipe after `cluster.sh start` must not wait for the nodes
        "$bin" serve --config "$dir/$n.yaml" >>"$dir/$n.log" 2>&1 </dev/null &
        echo $! > "$dir/$n.pid"
    done
    for i in 0 1 2; do # live (not necessarily ready: a primary confirms first)
        for _ in $(seq 50); do
            curl -sf "http://127.0.0.1:$((base + i))/healthz" >/dev/null && break
            sleep 0.1
        done
    done
    local p=""
    for _ in $(seq 50); do # a writable primary, 5 s at most
        p=$(primary_name)
        [ -n "$p" ] && "$bin" status --url "$(url_of "$p")" 2>/dev/null |
            grep -q '^role *primary (accepting' && break
        sleep 0.1
    done
    echo "georeg cluster is up (configs, logs and data in $dir):"
    for n in "${names[@]}"; do
        printf '  %-9s %-24s %s%s\n' "$n" "$(url_of "$n")" "$(role_line "$n")" \
            "$([ "$n" = ap-south ] && echo '   filter: prod/**, base/* (not **/tmp-*)')"
    done
    p="${p:-eu-west}"
    cat <<TXT
Push:    skopeo copy --dest-tls-verify=false oci:DIR:tag docker://127.0.0.1:$((base + $(idx "$p")))/prod/app:1
Status:  scripts/cluster.sh status          (roles; lag on the primary)
Wait:    $bin wait prod/app:1 --regions us-east,ap-south --url $(url_of "$p")
Failover: scripts/cluster.sh promote us-east [--force]
Stop:    scripts/cluster.sh stop
TXT
}

stop() {
    local n f pid
    for n in "${names[@]}"; do
        f="$dir/$n.pid"
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        fi
        rm -f "$f"
        echo "cluster: stopped $n"
    done
}

status() {
    local n p
    printf '%-9s %-24s %-7s %s\n' REGION URL PID ROLE
    for n in "${names[@]}"; do
        printf '%-9s %-24s %-7s %s\n' "$n" "$(url_of "$n")" \
            "$(running "$n" && cat "$dir/$n.pid" || echo -)" "$(role_line "$n")"
    done
    p=$(primary_name)
    if [ -z "$p" ]; then
        echo "no region reports itself primary (promote one: scripts/cluster.sh promote us-east)"
        return 0
    fi
    echo
    echo "lag on the primary, $p:"
    "$bin" lag --url "$(url_of "$p")"
}

promote() {
    [ $# -ge 1 ] || { echo "usage: $0 promote NAME [--force]" >&2; exit 2; }
    local n="$1" force=()
    shift
    case "${1:-}" in
        "") ;;
        --force) force=(--force) ;;
        *) echo "usage: $0 promote NAME [--force]" >&2; exit 2 ;;
    esac
    idx "$n" >/dev/null || exit 2
    exec "$bin" promote "${force[@]}" --url "$(url_of "$n")"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    promote) shift; promote "$@" ;;
    *) echo "usage: $0 start|stop|status|promote NAME [--force]" >&2; exit 2 ;;
esac
