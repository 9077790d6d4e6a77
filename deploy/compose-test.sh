#!/usr/bin/env bash
# make compose-test: the three-region docker-compose cluster (deploy/docker-compose.yml),
# exercised end to end and torn down.
#
#   1. build/georeg (make), the FROM-scratch image (deploy/build-image.sh), the
#      cluster certificates (scripts/gen-certs.sh), `docker-compose up -d`
#   2. push a locally made image to the primary (eu-west) with skopeo; pull it
#      back from us-east and ap-south with skopeo and compare digests
#   3. filters: repositories outside ap-south's filter reach us-east, never ap-south
#   4. secondaries refuse pushes with DENIED naming the primary's URL
#   5. `docker network disconnect <project>_wan us-east`, push more: the primary's
#      lag API shows us-east unreachable with lag growing while ap-south keeps up
#   6. reconnect: us-east converges (lag 0, in-sync) and serves the new image
#   7. failover drill: `docker kill` eu-west, `georeg promote --url` us-east, wait
#      until it is writable, push to it, ap-south serves the push (filter prod/**);
#      prints `compose-drill: rto_s=...` (kill until the push is on ap-south);
#      `docker start` eu-west: it comes back a secondary (403 DENIED naming us-east)
#      and converges (serves what was pushed to us-east)
#   8. always (trap): `down -v`, remove the image tag, remove temporary files
#
# Without a Docker engine it prints SKIPPED and exits 0. Any failed check exits 1.
# Environment: EU_WEST_PORT / US_EAST_PORT / AP_SOUTH_PORT (default 15000-15002,
# or the first free block of three above when those are taken), COMPOSE_PROJECT_NAME,
# KEEP=1 (leave the cluster running for a look; clean up with the printed command).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
t0=$(date +%s)

say() { printf '[%3ds] %s\n' "$(($(date +%s) - t0))" "$*"; }
pass() { say "PASS: $*"; }
fail() {
    say "FAIL: $*"
    exit 1
}

if ! docker info >/dev/null 2>&1; then
    cat <<'TXT'
################################################################
###  SKIPPED: no Docker engine (`docker info` failed);       ###
###  make compose-test did NOT exercise the compose cluster. ###
################################################################
TXT
    exit 0
fi

# docker-compose v1 or the `docker compose` v2 plugin, whichever this machine has
if docker-compose version >/dev/null 2>&1; then
    dc=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    dc=(docker compose)
else
    fail "neither docker-compose nor 'docker compose' is installed (apt-get install docker-compose)"
fi
command -v skopeo >/dev/null || fail "skopeo is not installed (scripts/install-deps.sh --test)"
command -v jq >/dev/null || fail "jq is not installed"
command -v curl >/dev/null || fail "curl is not installed"

project="${COMPOSE_PROJECT_NAME:-georeg-ct-$$}"
export GEOREG_IMAGE="georeg:compose-test-$$"
export GEOREG_TLS_DIR="$root/build/compose-tls"
work=""
compose_file="$root/deploy/docker-compose.yml"
failure_log="$root/build/compose-test-failure.log"
mkdir -p "$root/build"
rm -f "$failure_log"
compose() { "${dc[@]}" -f "$compose_file" -p "$project" "$@"; }
started=0

# ports: the environment's, else 15000-15002, else the first free block above
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ -z "${EU_WEST_PORT:-}${US_EAST_PORT:-}${AP_SOUTH_PORT:-}" ]; then
    base=15000
    while port_busy $base || port_busy $((base + 1)) || port_busy $((base + 2)); do
        base=$((base + 10))
        [ $base -lt 16000 ] || fail "no free block of three ports in 15000-15999"
    done
    EU_WEST_PORT=$base US_EAST_PORT=$((base + 1)) AP_SOUTH_PORT=$((base + 2))
fi
export EU_WEST_PORT="${EU_WEST_PORT:-15000}" US_EAST_PORT="${US_EAST_PORT:-15001}" \
    AP_SOUTH_PORT="${AP_SOUTH_PORT:-15002}"
EU="127.0.0.1:$EU_WEST_PORT" US="127.0.0.1:$US_EAST_PORT" AP="127.0.0.1:$AP_SOUTH_PORT"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$started" = 1 ]; then
        if [ $rc -ne 0 ]; then
            say "---- on failure: primary replication status and node logs ----"
            authcurl -s -m 3 "http://$EU/_georeg/v1/replication" | jq -c '.replicas[]? |
                {name, state, acked_seq, lag_events, lag_bytes, lag_seconds, last_error}' 2>/dev/null
            {
                for hp in "eu-west $EU" "us-east $US" "ap-south $AP"; do
                    set -- $hp
                    echo "== $1: GET http://$2/_georeg/v1/replication"
                    authcurl -s -m 3 "http://$2/_georeg/v1/replication"
                    echo
                done
                for n in us-east ap-south; do
                    echo; echo "== $n: docker inspect networks"
                    docker inspect -f '{{json .NetworkSettings.Networks}}' "$(compose ps -q $n)"
                done
                echo "== logs"
                compose logs --no-color
            } >"$failure_log" 2>&1
            tail -n 60 "$failure_log" | sed 's/^/    /'
            say "full status and logs: $failure_log"
        fi
        if [ "${KEEP:-0}" = 1 ]; then
            say "KEEP=1: cluster left running; tear down with:"
            echo "    EU_WEST_PORT=$EU_WEST_PORT US_EAST_PORT=$US_EAST_PORT AP_SOUTH_PORT=$AP_SOUTH_PORT" \
                "GEOREG_IMAGE=$GEOREG_IMAGE GEOREG_TLS_DIR=$GEOREG_TLS_DIR" \
                "${dc[*]} -f $compose_file -p $project down -v && docker rmi $GEOREG_IMAGE"
        else
            compose down -v --remove-orphans -t 5 >"$work/down.log" 2>&1 ||
                { cat "$work/down.log"; rc=1; }
        fi
    fi
    if [ "${KEEP:-0}" != 1 ]; then
        docker image inspect "$GEOREG_IMAGE" >/dev/null 2>&1 &&
            docker rmi "$GEOREG_IMAGE" >/dev/null 2>&1
    fi
    [ -z "$work" ] || rm -rf "$work"
    if [ $rc -eq 0 ]; then
        say "PASS: compose-test ($(($(date +%s) - t0)) s)"
    else
        say "FAIL: compose-test (exit $rc, $(($(date +%s) - t0)) s)"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
work="$(mktemp -d "${TMPDIR:-/tmp}/georeg-compose-test.XXXXXX")"

# ---------------------------------------------------------------- helpers

# make_image DIR SIZE TEXT: an OCI image layout in DIR (ref "latest") with one
# layer of SIZE random bytes and a text file; prints the manifest digest
make_image() {
    local dir="$1" size="$2" text="$3" l c m
    mkdir -p "$dir/blobs/sha256" "$dir/src"
    printf '%s\n' "$text" >"$dir/src/hello.txt"
    head -c "$size" /dev/urandom >"$dir/src/payload.bin"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        -C "$dir/src" -cf "$dir/layer.tar" hello.txt payload.bin
    local diffid
    diffid=$(sha256sum <"$dir/layer.tar" | cut -d' ' -f1)
    gzip -n -c "$dir/layer.tar" >"$dir/layer.tgz"
    l=$(sha256sum <"$dir/layer.tgz" | cut -d' ' -f1)
    mv "$dir/layer.tgz" "$dir/blobs/sha256/$l"
    printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/hello.txt"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"georeg compose-test"}]}' \
        "$diffid" >"$dir/config.json"
    c=$(sha256sum <"$dir/config.json" | cut -d' ' -f1)
    mv "$dir/config.json" "$dir/blobs/sha256/$c"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
        "$c" "$(stat -c %s "$dir/blobs/sha256/$c")" "$l" "$(stat -c %s "$dir/blobs/sha256/$l")" \
        >"$dir/manifest.json"
    m=$(sha256sum <"$dir/manifest.json" | cut -d' ' -f1)
    local msize
    msize=$(stat -c %s "$dir/manifest.json")
    mv "$dir/manifest.json" "$dir/blobs/sha256/$m"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
        "$m" "$msize" >"$dir/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
    rm -rf "$dir/src" "$dir/layer.tar"
    echo "sha256:$m"
}

sk() { skopeo --insecure-policy "$@"; }
# every region runs token auth (deploy/config/*.yaml); the built-in admin's password
# is written by the bring-up below
CREDS=""
authcurl() { curl -u "$CREDS" "$@"; }

# push LAYOUT REPO:TAG EXPECTED_DIGEST: skopeo copy to the primary
push() {
    local out
    out=$(sk copy --quiet --dest-tls-verify=false --dest-creds "$CREDS" --digestfile "$work/digest" \
        "oci:$1:latest" "docker://$EU/$2" 2>&1) || fail "skopeo push of $2 to eu-west: $out"
    [ "$(cat "$work/digest")" = "$3" ] ||
        fail "push of $2: registry digest $(cat "$work/digest") != local $3"
    pass "pushed $2 to eu-west ($3)"
}

# pull_check HOST REGION REPO:TAG EXPECTED_DIGEST: skopeo copy (blob digests are
# verified on the way) into an OCI layout; the manifest digest must match
pull_check() {
    local dest="$work/pull-$2-${3//[:\/]/_}" out got
    rm -rf "$dest"
    out=$(sk copy --quiet --src-tls-verify=false --src-creds "$CREDS" "docker://$1/$3" "oci:$dest:latest" 2>&1) ||
        fail "skopeo pull of $3 from $2: $out"
    got=$(jq -r '.manifests[0].digest' "$dest/index.json")
    [ "$got" = "$4" ] || fail "$3 from $2: digest $got, pushed $4"
    cmp -s "$dest/blobs/${4/://}" "$work/img-blobs/${4#sha256:}" ||
        fail "$3 from $2: manifest bytes differ from what was pushed"
    pass "pulled $3 from $2 with skopeo, digest $got matches"
}

# wait_regions REPO:TAG REGIONS SECONDS: georeg wait against the primary
wait_regions() {
    "$root/build/georeg" wait "$1" --regions "$2" --timeout "${3}s" --url "http://$EU" \
        >"$work/wait.out" 2>&1 || fail "georeg wait $1 --regions $2: $(cat "$work/wait.out")"
}

repl_json() { authcurl -sf -m 5 "http://$EU/_georeg/v1/replication"; }
# replica NAME: that replica's entry on the primary, one line of JSON
replica() { repl_json | jq -c --arg n "$1" '.replicas[] | select(.name == $n)'; }
show() {
    jq -r '"state=\(.state) acked_seq=\(.acked_seq) lag_events=\(.lag_events) lag_bytes=\(.lag_bytes) lag_seconds=\(.lag_seconds) last_contact=\(.last_contact)"' <<<"$1"
}

# http_code URL [curl args...]
http_code() {
    local u="$1"
    shift
    authcurl -s -m 5 -o "$work/body" -w '%{http_code}' "$@" "$u"
}

# ---------------------------------------------------------------- bring-up

say "compose-test: ${dc[*]} ($("${dc[@]}" version --short 2>/dev/null || echo '?')), project $project," \
    "ports eu-west $EU_WEST_PORT, us-east $US_EAST_PORT, ap-south $AP_SOUTH_PORT"
make -C "$root" --no-print-directory all >"$work/make.log" 2>&1 ||
    { cat "$work/make.log"; fail "make"; }
bash "$root/deploy/build-image.sh" "$GEOREG_IMAGE" || fail "image build"
bash "$root/scripts/gen-certs.sh" "$GEOREG_TLS_DIR" eu-west us-east ap-south ||
    fail "certificates"
# the built-in admin's password, mounted read-only into every region
(umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$GEOREG_TLS_DIR/admin.pw") ||
    fail "admin password file"
CREDS="admin:$(cat "$GEOREG_TLS_DIR/admin.pw")"
export GEOREG_USER=admin GEOREG_PASSWORD="${CREDS#admin:}" # for build/georeg wait

started=1
compose up -d >"$work/up.log" 2>&1 || { cat "$work/up.log"; fail "${dc[*]} up"; }
say "cluster started"
for hp in "eu-west $EU" "us-east $US" "ap-south $AP"; do
    set -- $hp
    ok=0
    for _ in $(seq 150); do # 30 s
        if curl -sf -m 2 "http://$2/readyz" >/dev/null; then ok=1; break; fi
        sleep 0.2
    done
    [ $ok = 1 ] || fail "$1 not ready on http://$2/readyz within 30 s"
done
pass "all three regions answer /readyz"

# secure by default: no credentials, no access; the challenge names the region's own realm
for hp in "eu-west $EU" "us-east $US" "ap-south $AP"; do
    set -- $hp
    hdr=$(curl -s -m 5 -o /dev/null -D - "http://$2/v2/" | tr -d '\r')
    grep -q '^HTTP/1.1 401' <<<"$hdr" || fail "$1: anonymous GET /v2/ is not 401: $hdr"
    grep -qi "^www-authenticate: Bearer realm=\"http://$2/_georeg/v1/token\"" <<<"$hdr" ||
        fail "$1: challenge does not name http://$2/_georeg/v1/token: $hdr"
    code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' -u "admin:wrong-password" "http://$2/v2/")
    [ "$code" = 401 ] || fail "$1: a wrong admin password answers $code"
done
pass "token auth on every region: anonymous and wrong-password requests get 401 with the region's realm"

# the primary must see both secondaries over mutual TLS before we go on
for _ in $(seq 100); do # 20 s
    n=$(repl_json | jq '[.replicas[] | select(.state == "in-sync")] | length' 2>/dev/null)
    [ "${n:-0}" = 2 ] && break
    sleep 0.2
done
[ "${n:-0}" = 2 ] || fail "eu-west does not see both replicas in-sync over tls+tcp: $(repl_json)"
pass "eu-west reaches us-east and ap-south over tls+tcp (mutual TLS), both in-sync"

# ---------------------------------------------------------------- push and pull

mkdir -p "$work/img-blobs"
mkimg() { # mkimg NAME SIZE -> digest; keeps a copy of the manifest for byte comparison
    local d
    d=$(make_image "$work/$1" "$2" "georeg compose-test $1 $$") || fail "making image $1"
    cp "$work/$1/blobs/sha256/${d#sha256:}" "$work/img-blobs/"
    echo "$d"
}
app1=$(mkimg app1 300000) || fail "making image app1"
dev1=$(mkimg dev1 100000) || fail "making image dev1"
tmp1=$(mkimg tmp1 50000) || fail "making image tmp1"

push "$work/app1" prod/app:1 "$app1"
wait_regions prod/app:1 us-east,ap-south 30
pass "georeg wait: prod/app:1 is on us-east and ap-south"
pull_check "$US" us-east prod/app:1 "$app1"
pull_check "$AP" ap-south prod/app:1 "$app1"

# ---------------------------------------------------------------- filters

push "$work/dev1" dev/tool:1 "$dev1"
push "$work/tmp1" prod/tmp-build:1 "$tmp1"
wait_regions dev/tool:1 us-east 30
wait_regions prod/tmp-build:1 us-east 30
pull_check "$US" us-east dev/tool:1 "$dev1"
# ap-south's cursor must have moved past the filtered events before absence means anything
for _ in $(seq 100); do # 20 s
    j=$(repl_json)
    [ "$(jq '.head_seq' <<<"$j")" = "$(jq '.replicas[] | select(.name=="ap-south") | .acked_seq' <<<"$j")" ] &&
        break
    sleep 0.2
done
[ "$(jq '.head_seq' <<<"$j")" = "$(jq '.replicas[] | select(.name=="ap-south") | .acked_seq' <<<"$j")" ] ||
    fail "ap-south did not acknowledge the primary's head: $(jq -c . <<<"$j")"
for ref in dev/tool:1 prod/tmp-build:1; do
    code=$(http_code "http://$AP/v2/${ref%%:*}/manifests/${ref#*:}" \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json')
    [ "$code" = 404 ] || fail "ap-south serves $ref (HTTP $code), outside its filter"
done
layer=$(jq -r '.layers[0].digest' "$work/img-blobs/${dev1#sha256:}")
code=$(http_code "http://$AP/v2/dev/tool/blobs/$layer" -I)
[ "$code" = 404 ] || fail "ap-south serves dev/tool's layer (HTTP $code)"
catalog=$(authcurl -sf -m 5 "http://$AP/v2/_catalog") || fail "ap-south catalog"
jq -e '.repositories | index("prod/app")' <<<"$catalog" >/dev/null ||
    fail "ap-south catalog lacks prod/app: $catalog"
jq -e '(.repositories | index("dev/tool")) == null and (.repositories | index("prod/tmp-build")) == null' \
    <<<"$catalog" >/dev/null || fail "ap-south catalog has filtered repositories: $catalog"
us_catalog=$(authcurl -sf -m 5 "http://$US/v2/_catalog")
jq -e '(.repositories | index("dev/tool")) != null and (.repositories | index("prod/tmp-build")) != null' \
    <<<"$us_catalog" >/dev/null || fail "us-east catalog lacks dev/tool or prod/tmp-build: $us_catalog"
pass "filters: dev/tool and prod/tmp-build are on us-east, not on ap-south (catalog $(jq -c .repositories <<<"$catalog"))"

# ---------------------------------------------------------------- read-only secondaries

for hp in "us-east $US" "ap-south $AP"; do
    set -- $hp
    code=$(http_code "http://$2/v2/prod/app/blobs/uploads/" -X POST)
    if [ "$code" != 403 ] || ! jq -e '.errors[0].code == "DENIED"' "$work/body" >/dev/null 2>&1 ||
        ! grep -qF "http://$EU" "$work/body"; then
        fail "push to $1: HTTP $code $(cat "$work/body"); want 403 DENIED naming http://$EU"
    fi
    pass "$1 refuses a push: 403 $(jq -c '.errors[0] | {code, message}' "$work/body")"
done

# ---------------------------------------------------------------- partition us-east

wan="$(docker network ls -q --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.network=wan")"
[ -n "$wan" ] || wan="${project}_wan"
wan_name=$(docker network inspect -f '{{.Name}}' "$wan" 2>/dev/null) || fail "no wan network ($wan)"
us_ctr=$(compose ps -q us-east)
[ -n "$us_ctr" ] || fail "no us-east container"
us_name=$(docker inspect -f '{{.Name}}' "$us_ctr" | sed 's,^/,,')

docker network disconnect "$wan_name" "$us_ctr" || fail "docker network disconnect $wan_name $us_name"
say "cut us-east off: docker network disconnect $wan_name $us_name"
app2=$(mkimg app2 2000000) || fail "making image app2"
base1=$(mkimg base1 400000) || fail "making image base1"
push "$work/app2" prod/app:2 "$app2"

deadline=$(($(date +%s) + 30))
first=""
while :; do
    r=$(replica us-east)
    say "  us-east on eu-west: $(show "$r")"
    [ -n "$first" ] || first="$r"
    if [ "$(jq -r .state <<<"$r")" = unreachable ] && [ "$(jq .lag_events <<<"$r")" -gt 0 ]; then
        break
    fi
    [ "$(date +%s)" -lt $deadline ] || fail "us-east not unreachable with lag_events > 0 within 30 s"
    sleep 1
done
pass "us-east is unreachable with lag_events $(jq .lag_events <<<"$r") > 0, lag_bytes $(jq .lag_bytes <<<"$r")"
# the lag keeps growing: more pushes while cut off, and the age of the oldest change
before="$r"
push "$work/base1" base/alpine:1 "$base1"
sleep 1
r=$(replica us-east)
say "  us-east on eu-west: $(show "$r")"
jq -e --argjson b "$before" '.lag_events > $b.lag_events and .lag_bytes > $b.lag_bytes and
    .lag_seconds > $b.lag_seconds and .state == "unreachable"' <<<"$r" >/dev/null ||
    fail "us-east lag did not grow: before $(show "$before"), after $(show "$r")"
pass "us-east lag grows while cut off: events $(jq .lag_events <<<"$before") -> $(jq .lag_events <<<"$r")," \
    "bytes $(jq .lag_bytes <<<"$before") -> $(jq .lag_bytes <<<"$r")," \
    "seconds $(jq .lag_seconds <<<"$before") -> $(jq .lag_seconds <<<"$r")"
# the rest of the cluster carries on
wait_regions prod/app:2 ap-south 20
wait_regions base/alpine:1 ap-south 20
pass "ap-south keeps receiving while us-east is cut off (prod/app:2, base/alpine:1)"
sec=$(authcurl -sf -m 5 "http://$US/_georeg/v1/replication" | jq -c '{state, applied_seq, primary_head_seq, lag_events, staleness_seconds}')
say "  us-east's own view: $sec"
pull_check "$US" us-east prod/app:1 "$app1"
code=$(http_code "http://$US/v2/prod/app/manifests/2" -I -H 'Accept: application/vnd.oci.image.manifest.v1+json')
[ "$code" = 404 ] || fail "us-east serves prod/app:2 while cut off (HTTP $code)?"
pass "us-east still serves what it has (prod/app:1) and not yet prod/app:2"

# ---------------------------------------------------------------- reconnect

docker network connect --alias us-east "$wan_name" "$us_ctr" ||
    fail "docker network connect $wan_name $us_name"
say "reconnected us-east: docker network connect --alias us-east $wan_name $us_name"
deadline=$(($(date +%s) + 60))
while :; do
    r=$(replica us-east)
    say "  us-east on eu-west: $(show "$r")"
    if [ "$(jq -r .state <<<"$r")" = in-sync ] && [ "$(jq .lag_events <<<"$r")" = 0 ]; then
        break
    fi
    if [ "$(date +%s)" -ge $deadline ]; then
        n=$(compose logs --no-color eu-west 2>/dev/null | grep -c 'REPL-PEER-CONNECTED replica=us-east')
        say "  eu-west logged $n replication connections to us-east in all; last peer events:"
        compose logs --no-color eu-west 2>/dev/null | grep 'REPL-PEER.*replica=us-east' | tail -n 3 |
            sed 's/^/    /'
        fail "us-east did not converge (in-sync, lag 0) within 60 s of reconnecting"
    fi
    sleep 1
done
pass "us-east converged after reconnect: in-sync, lag_events 0"
pull_check "$US" us-east prod/app:2 "$app2"
pull_check "$US" us-east base/alpine:1 "$base1"
pull_check "$AP" ap-south prod/app:2 "$app2"
final=$(repl_json | jq -c '[.replicas[] | {name, state, lag_events, lag_bytes}]')
jq -e 'all(.state == "in-sync" and .lag_events == 0)' <<<"$final" >/dev/null ||
    fail "replicas not all in-sync with zero lag at the end: $final"
pass "end state on eu-west: $final"

# ---------------------------------------------------------------- failover drill
#
# eu-west is lost (docker kill); us-east is promoted (georeg promote), becomes
# writable and takes a push that reaches ap-south through its filter. RTO: from
# the kill until that push is served by ap-south. eu-west, started again, learns
# of the promotion, demotes itself to a secondary of us-east and converges.

st_of() { authcurl -sf -m 5 "http://$1/_georeg/v1/replication"; }
jst() { st_of "$1" | jq -c "$2" 2>/dev/null; }
say "failover drill: $(jst "$EU" '{role, epoch, writable}') on eu-west," \
    "$(jst "$US" '{role, epoch, applied_seq}') on us-east"
[ "$(jst "$EU" .role)" = '"primary"' ] && [ "$(jst "$US" .role)" = '"secondary"' ] ||
    fail "before the drill: eu-west is not the primary or us-east not a secondary"
epoch0=$(jst "$EU" .epoch)
eu_ctr=$(compose ps -q eu-west)
[ -n "$eu_ctr" ] || fail "no eu-west container"
app3=$(mkimg app3 500000) || fail "making image app3"

t_kill=$(date +%s.%N)
docker kill "$eu_ctr" >/dev/null || fail "docker kill eu-west"
say "compose-drill: killed eu-west (docker kill)"
"$root/build/georeg" promote --url "http://$US" >"$work/promote.out" 2>&1 ||
    { cat "$work/promote.out"; fail "georeg promote --url http://$US refused or failed"; }
sed 's/^/    /' "$work/promote.out"
t_prom=$(date +%s.%N)
ok=0
for _ in $(seq 150); do # 15 s
    [ "$(jst "$US" .writable)" = true ] && { ok=1; break; }
    sleep 0.1
done
[ $ok = 1 ] || fail "us-east not writable within 15 s of its promotion: $(st_of "$US")"
t_wr=$(date +%s.%N)
j=$(st_of "$US")
jq -e --argjson e "$epoch0" '.role == "primary" and .epoch > $e' <<<"$j" >/dev/null ||
    fail "us-east after promotion: $(jq -c '{role, epoch, writable}' <<<"$j")"
pass "us-east promoted: $(jq -c '{role, epoch, writable, confirming}' <<<"$j")"

out=$(sk copy --quiet --dest-tls-verify=false --dest-creds "$CREDS" --digestfile "$work/digest" \
    "oci:$work/app3:latest" "docker://$US/prod/app:3" 2>&1) || fail "skopeo push of prod/app:3 to us-east: $out"
[ "$(cat "$work/digest")" = "$app3" ] || fail "push prod/app:3 to us-east: digest $(cat "$work/digest"), want $app3"
pass "pushed prod/app:3 to us-east ($app3)"
ok=0
for _ in $(seq 300); do # 30 s
    code=$(http_code "http://$AP/v2/prod/app/manifests/3" -I -H 'Accept: application/vnd.oci.image.manifest.v1+json')
    [ "$code" = 200 ] && { ok=1; break; }
    sleep 0.1
done
t_ap=$(date +%s.%N)
[ $ok = 1 ] || fail "ap-south does not serve prod/app:3 within 30 s (HTTP $code); us-east: $(st_of "$US" | jq -c .replicas)"
pull_check "$AP" ap-south prod/app:3 "$app3"
rto=$(awk -v a="$t_kill" -v b="$t_ap" 'BEGIN{printf "%.1f", b-a}')
say "compose-drill: rto_s=$rto (promote $(awk -v a="$t_kill" -v b="$t_prom" 'BEGIN{printf "%.1f", b-a}') s," \
    "writable $(awk -v a="$t_kill" -v b="$t_wr" 'BEGIN{printf "%.1f", b-a}') s, on ap-south $rto s after the kill)"
# ap-south refuses pushes naming the new primary
code=$(http_code "http://$AP/v2/prod/app/blobs/uploads/" -X POST)
[ "$code" = 403 ] && grep -qF "http://$US" "$work/body" ||
    fail "push to ap-south after failover: HTTP $code $(cat "$work/body"); want 403 naming http://$US"
pass "ap-south follows us-east and names it when refusing a push"

# the old primary comes back: a secondary of us-east, never writable
docker start "$eu_ctr" >/dev/null || fail "docker start eu-west"
say "compose-drill: started eu-west again (docker start)"
ok=0
for _ in $(seq 300); do # 30 s
    [ "$(jst "$EU" .role)" = '"secondary"' ] && { ok=1; break; }
    sleep 0.1
done
[ $ok = 1 ] || fail "eu-west did not come back as a secondary within 30 s: $(st_of "$EU")"
t_back=$(date +%s.%N)
pass "eu-west is a secondary again: $(jst "$EU" '{role, epoch, primary, writable}')"
# every refusal is 403 DENIED; within a few heartbeats it names the new primary
deadline=$(($(date +%s) + 10))
while :; do
    code=$(http_code "http://$EU/v2/prod/app/blobs/uploads/" -X POST)
    if [ "$code" != 403 ] || ! jq -e '.errors[0].code == "DENIED"' "$work/body" >/dev/null 2>&1; then
        fail "push to the old primary eu-west: HTTP $code $(cat "$work/body"); want 403 DENIED"
    fi
    grep -qF "http://$US" "$work/body" && break
    [ "$(date +%s)" -lt $deadline ] ||
        fail "eu-west's refusal does not name the new primary http://$US within 10 s: $(cat "$work/body")"
    sleep 0.2
done
pass "eu-west refuses a push: 403 $(jq -c '.errors[0] | {code, message}' "$work/body")"
deadline=$(($(date +%s) + 60))
while :; do
    r=$(st_of "$US" | jq -c '.replicas[] | select(.name == "eu-west")')
    [ "$(jq -r .state <<<"$r" 2>/dev/null)" = in-sync ] && [ "$(jq .lag_events <<<"$r")" = 0 ] && break
    [ "$(date +%s)" -lt $deadline ] || fail "eu-west not in-sync on us-east within 60 s: $r"
    sleep 0.5
done
pull_check "$EU" eu-west prod/app:3 "$app3"
pull_check "$EU" eu-west prod/app:2 "$app2"
final=$(st_of "$US" | jq -c '[.replicas[] | {name, state, lag_events}]')
jq -e 'length == 2 and all(.state == "in-sync" and .lag_events == 0)' <<<"$final" >/dev/null ||
    fail "replicas of us-east not all in-sync: $final"
say "compose-drill: eu-west rejoined as a secondary and converged" \
    "$(awk -v a="$t_kill" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s after the kill" \
    "(secondary at $(awk -v a="$t_kill" -v b="$t_back" 'BEGIN{printf "%.1f", b-a}') s)"
pass "end state on us-east (primary): $final"
