#!/usr/bin/env bash
# Installs the Go-based client tools that the integration tests drive
# (oras; buildkitd and buildctl for the containerd-client token tests) into build/tools/, with `go install` from the Go module
# proxy. Idempotent: a tool already present is skipped.
# A tool that cannot be installed (no Go toolchain, no network) is reported but
# does not fail the script: the tests that need it say SKIPPED.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
GOBIN="$root/build/tools"
GO="${GO:-/usr/local/go/bin/go}"
[ -x "$GO" ] || GO="$(command -v go || true)"

ORAS_VERSION="v1.3.6"
BUILDKIT_VERSION="v0.35.0"

mkdir -p "$GOBIN"

install_tool() { # name module@version
    local name="$1" mod="$2"
    if [ -x "$GOBIN/$name" ]; then
        return 0
    fi
    if [ -z "$GO" ] || [ ! -x "$GO" ]; then
        echo "install-test-tools: no Go toolchain; $name not installed (tests needing it will be SKIPPED)" >&2
        return 0
    fi
    echo "install-test-tools: go install $mod" >&2
    GOBIN="$GOBIN" GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0 "$GO" install "$mod" ||
        echo "install-test-tools: failed to install $name (tests needing it will be SKIPPED)" >&2
}

# build_tool: for a module whose go.mod has replace/exclude directives (go install
# pkg@version refuses those): fetch the module's source from the proxy, copy it
# somewhere writable and go build there, with its own go.mod and go.sum.
build_tool() { # name module version package-dir
    local name="$1" mod="$2" ver="$3" pkg="$4" dir tmp
    if [ -x "$GOBIN/$name" ]; then
        return 0
    fi
    if [ -z "$GO" ] || [ ! -x "$GO" ]; then
        echo "install-test-tools: no Go toolchain; $name not installed (tests needing it will be SKIPPED)" >&2
        return 0
    fi
    echo "install-test-tools: go build $mod@$ver/$pkg" >&2
    dir="$(cd /tmp && GOFLAGS=-mod=mod "$GO" mod download -json "$mod@$ver" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    if [ -z "$dir" ] || [ ! -d "$dir" ]; then
        echo "install-test-tools: cannot download $mod@$ver; $name not installed (tests needing it will be SKIPPED)" >&2
        return 0
    fi
    tmp="$(mktemp -d)"
    cp -r "$dir/." "$tmp/src" && chmod -R u+w "$tmp/src" &&
        (cd "$tmp/src" && GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0 \
            "$GO" build -o "$GOBIN/$name" "./$pkg") ||
        echo "install-test-tools: failed to build $name (tests needing it will be SKIPPED)" >&2
    rm -rf "$tmp"
}

install_tool oras "oras.land/oras/cmd/oras@$ORAS_VERSION"
build_tool buildkitd github.com/moby/buildkit "$BUILDKIT_VERSION" cmd/buildkitd
build_tool buildctl github.com/moby/buildkit "$BUILDKIT_VERSION" cmd/buildctl

# Never fail `make test` because an optional client tool could not be built.
exit 0
