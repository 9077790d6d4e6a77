#!/usr/bin/env bash
# A local three-region georeg cluster on loopback, with mutual TLS between regions:
#   eu-west  primary    http://127.0.0.1:5000
#   us-east  secondary  http://127.0.0.1:5001   (everything)
#   ap-south secondary  http://127.0.0.1:5002   (filter: prod/** and base/*, no **/tmp-*)
# Usage: scripts/cluster.sh start|stop|status   (data and logs under ./var/cluster)
# BASE_PORT (default 5000) moves the HTTP ports; replication uses BASE_PORT+2001...
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${CLUSTER_DIR:-$root/var/cluster}"
bin="${GEOREG_BIN:-$root/build/georeg}"
base="${BASE_PORT:-5000}"
names=(eu-west us-east ap-south)

write_configs() {
    mkdir -p "$dir"
    bash "$root/scripts/gen-certs.sh" "$dir/tls" "${names[@]}"
    cat > "$dir/eu-west.yaml" <<YAML
node: {name: eu-west, data_dir: $dir/eu-west}
http: {listen: 127.0.0.1:$base, public_url: "http://127.0.0.1:$base"}
auth: {mode: none}   # a development cluster on loopback; deploy/config runs token auth
replication:
  role: primary
  tls: {cert: $dir/tls/eu-west.pem, key: $dir/tls/eu-west.key, ca: $dir/tls/ca.pem,
        client_cert: $dir/tls/eu-west-client.pem}
  replicas:
    - name: us-east
      address: tls+tcp://127.0.0.1:$((base + 2001))
    - name: ap-south
      address: tls+tcp://127.0.0.1:$((base + 2002))
      include: ["prod/**", "base/*"]
      exclude: ["**/tmp-*"]
YAML
    local i=1
    for n in us-east ap-south; do
        cat > "$dir/$n.yaml" <<YAML
node: {name: $n, data_dir: $dir/$n}
http: {listen: 127.0.0.1:$((base + i))}
auth: {mode: none}
replication:
  role: secondary
  primaries: [eu-west]
  listen: tls+tcp://127.0.0.1:$((base + 2000 + i))
  tls: {cert: $dir/tls/$n.pem, key: $dir/tls/$n.key, ca: $dir/tls/ca.pem}
YAML
        i=$((i + 1))
    done
}

start() {
    [ -x "$bin" ] || { echo "cluster: $bin missing; run make" >&2; exit 1; }
    write_configs
    for n in "${names[@]}"; do
        if [ -f "$dir/$n.pid" ] && kill -0 "$(cat "$dir/$n.pid")" 2>/dev/null; then
            echo "cluster: $n already running (pid $(cat "$dir/$n.pid"))"
            continue
        fi
        "$bin" serve --config "$dir/$n.yaml" 2>>"$dir/$n.log" &
        echo $! > "$dir/$n.pid"
    done
    for i in 0 1 2; do
        for _ in $(seq 50); do
            curl -sf "http://127.0.0.1:$((base + i))/readyz" >/dev/null && break
            sleep 0.1
        done
    done
    cat <<TXT
georeg cluster is up (logs and data in $dir):
  eu-west  primary    http://127.0.0.1:$base
  us-east  secondary  http://127.0.0.1:$((base + 1))
  ap-south secondary  http://127.0.0.1:$((base + 2))   filter: prod/**, base/* (not **/tmp-*)
Push:    skopeo copy --dest-tls-verify=false oci:DIR:tag docker://127.0.0.1:$base/prod/app:1
Lag:     $bin lag --url http://127.0.0.1:$base
Wait:    $bin wait prod/app:1 --regions us-east,ap-south --url http://127.0.0.1:$base
Stop:    scripts/cluster.sh stop
TXT
}

stop() {
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

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) "$bin" lag --url "http://127.0.0.1:$base" ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
