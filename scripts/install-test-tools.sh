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

install_tool oras "oras.land/oras/cmd/oras@$ORAS_VERSION"
install_tool buildkitd "github.com/moby/buildkit/cmd/buildkitd@$BUILDKIT_VERSION"
install_tool buildctl "github.com/moby/buildkit/cmd/buildctl@$BUILDKIT_VERSION"

# Never fail `make test` because an optional client tool could not be built.
exit 0
