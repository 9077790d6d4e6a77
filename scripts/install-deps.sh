#!/usr/bin/env bash
# Installs every Debian 12 package georeg needs to build, run, test and bench.
# Idempotent: packages already present are skipped; safe to run repeatedly.
set -euo pipefail

BUILD_PKGS="build-essential pkg-config libuv1-dev node-llhttp librocksdb-dev libnng-dev
  libprotobuf-c-dev protobuf-c-compiler libssl-dev libjansson-dev libyaml-dev
  libcurl4-openssl-dev libcmocka-dev"
TEST_PKGS="python3 python3-pytest skopeo curl openssl containerd runc etcd-server"
BENCH_PKGS="docker-registry nginx-light wrk"
FUZZ_PKGS="clang libclang-rt-14-dev"

want="$BUILD_PKGS"
case "${1:-}" in
    --test) want="$BUILD_PKGS $TEST_PKGS" ;;
    --bench) want="$BUILD_PKGS $TEST_PKGS $BENCH_PKGS" ;;
    --all) want="$BUILD_PKGS $TEST_PKGS $BENCH_PKGS" ;;
    --fuzz) want="$BUILD_PKGS $FUZZ_PKGS" ;;
    "") ;;
    *) echo "usage: $0 [--test|--bench|--all|--fuzz]" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -n "$missing" ]; then
    echo "install-deps: installing:$missing" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
