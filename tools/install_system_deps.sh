#!/usr/bin/env bash
# Install the Debian packages Tether needs at build and test time:
#   bazel-bootstrap  Bazel 4.2.3, used offline for `bazel build //...` and `bazel test //...`
#   postgresql       the metadata store's server for the `postgres` tests
#   a Java runtime   runs the PlantUML jar that renders docs/diagrams/
#   prometheus       `promtool` checks and unit-tests deploy/prometheus/ and the server
#                    scrapes a running network in tests/ops/
#   iproute2, nftables  the network lab of tests/lab (namespaces, veth, bridges, NAT; tools/lab.py)
#   mmdebstrap, buildah, podman, runc  the OCI images (deploy/images/build.py: a Debian rootfs,
#                    no registry) and tests/deploy, which runs a region from them
# Idempotent and quiet: packages already present are skipped, and `apt-get update` runs once,
# only when something has to be installed.
set -euo pipefail

missing=()

have_pkg() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

have_pkg bazel-bootstrap || missing+=(bazel-bootstrap)
have_pkg postgresql || missing+=(postgresql)
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
have_pkg iproute2 || missing+=(iproute2)
have_pkg nftables || missing+=(nftables)
for pkg in mmdebstrap buildah podman runc; do
    have_pkg "$pkg" || missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    sudo_cmd=(sudo)
else
    sudo_cmd=()
fi

echo "installing system packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# apt is chatty even with -qq; its output is shown only when it fails.
if ! { "${sudo_cmd[@]}" apt-get update -qq &&
       "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
       >"$log" 2>&1; then
    cat "$log" >&2
    echo "install_system_deps: could not install ${missing[*]}" >&2
    exit 1
fi
