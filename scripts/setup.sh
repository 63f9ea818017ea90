#!/usr/bin/env bash
# Atelier on one host, from a fresh Debian 12 machine.
#
#   scripts/setup.sh deps       Debian packages, .venv, the project (idempotent)
#   scripts/setup.sh test-deps  deps + what only the test suite needs (a local registry)
#   scripts/setup.sh template   deps + build the base template if it is missing
#   scripts/setup.sh code-interpreter-template   the template with Jupyter kernels (tests use it)
#   scripts/setup.sh up         template + start the server, wait for it, print how to use it
#
# Every step is skipped when already done, so a second run takes a second or two.
# Environment: ATELIER_DATA_DIR (default /var/lib/atelier), ATELIER_HOST, ATELIER_PORT,
# ATELIER_UP_TIMEOUT (seconds to wait for the server, default 60).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

export ATELIER_DATA_DIR=${ATELIER_DATA_DIR:-/var/lib/atelier}
HOST=${ATELIER_HOST:-127.0.0.1}
PORT=${ATELIER_PORT:-8080}
VENV=$ROOT/.venv
STAMP=$VENV/.atelier-install-stamp
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

PACKAGES=(
    runsc debootstrap debian-archive-keyring e2fsprogs util-linux iproute2 nftables
    python3-venv python3-dev gcc libc6-dev git openssh-client curl ca-certificates procps psmisc
    skopeo umoci busybox-static
    qemu-system-x86 qemu-utils lz4 cpio
)
# Only the test suite needs these: a local registry (with htpasswd auth) to pull
# images from. Never installed by `up`: on a systemd host docker-registry
# would start a registry daemon.
TEST_PACKAGES=(docker-registry apache2-utils openssh-server)

if [ -t 1 ]; then BOLD=$'\033[1m' RED=$'\033[1;31m' OFF=$'\033[0m'; else BOLD="" RED="" OFF=""; fi
say() { printf '%s==>%s %s\n' "$BOLD" "$OFF" "$*"; }
die() { printf '%serror:%s %s\n' "$RED" "$OFF" "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

missing_packages() {
    local installed
    installed=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "$@" 2>/dev/null \
        | awk '$1 == "ii" { print $2 }' | sed 's/:.*//') || true
    local pkg
    for pkg in "$@"; do
        grep -qxF "$pkg" <<<"$installed" || printf '%s\n' "$pkg"
    done
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages "$@")
    [ "${#missing[@]}" -eq 0 ] && return 0
    say "installing Debian packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}"
}

install_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        /usr/bin/python3 -m venv "$VENV"
    fi
    local want have=""
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    [ -f "$STAMP" ] && have=$(cat "$STAMP")
    if [ "$want" != "$have" ] || [ ! -x "$VENV/bin/atelier" ]; then
        say "installing the project into $VENV"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
        printf '%s\n' "$want" >"$STAMP"
    fi
}

deps() {
    install_packages "${PACKAGES[@]}"
    install_venv
}

test_deps() {
    install_packages "${PACKAGES[@]}" "${TEST_PACKAGES[@]}"
    # the TypeScript SDK's tests need Node >= 20 with npm; a machine that has a
    # Node.js keeps it (Debian 12's own nodejs is 18: its tests then fail in CI)
    command -v node >/dev/null 2>&1 || install_packages nodejs npm
    install_venv
}

template() {
    deps
    if [ ! -f "$ATELIER_DATA_DIR/templates/base/manifest.json" ]; then
        say "building the base template in $ATELIER_DATA_DIR (about a minute)"
    fi
    "$VENV/bin/python" -m atelier.images build base --data-dir "$ATELIER_DATA_DIR"
}

# The code interpreter's kernels (docs/interpreter.md). debootstrap does not
# follow virtual dependencies: python3-zmq needs python3-cffi-backend, and
# ipykernel's debugpy reaches libboost-regex through gdb.
CODE_INTERPRETER_PACKAGES=python3-ipykernel,python3-jupyter-client,python3-matplotlib,python3-numpy,python3-pandas,python3-cffi-backend,libboost-regex1.74.0,nodejs

code_interpreter_template() {
    deps
    if [ ! -f "$ATELIER_DATA_DIR/templates/code-interpreter/manifest.json" ]; then
        say "building the code-interpreter template in $ATELIER_DATA_DIR (a few minutes)"
    fi
    "$VENV/bin/python" -m atelier.images build code-interpreter \
        --include "$CODE_INTERPRETER_PACKAGES" --data-dir "$ATELIER_DATA_DIR"
}

client_host() {
    case "$HOST" in
        0.0.0.0 | "" | "::" | "[::]") echo 127.0.0.1 ;;
        *:*) echo "[$HOST]" ;;
        *) echo "$HOST" ;;
    esac
}

healthy() {
    curl -fsS --max-time 2 "$1/healthz" >/dev/null 2>&1
}

up() {
    template
    local url timeout deadline
    url="http://$(client_host):$PORT"
    if ! healthy "$url"; then
        "$ROOT/scripts/atelierctl" start
        timeout=${ATELIER_UP_TIMEOUT:-60}
        deadline=$((SECONDS + timeout))
        until healthy "$url"; do
            if [ "$SECONDS" -ge "$deadline" ] || ! "$ROOT/scripts/atelierctl" status >/dev/null 2>&1; then
                echo "--- last lines of $ATELIER_DATA_DIR/server.log ---" >&2
                tail -n 30 "$ATELIER_DATA_DIR/server.log" >&2 2>/dev/null || true
                die "the server did not answer $url/healthz within ${timeout}s"
            fi
            sleep 0.3
        done
    fi
    local token_file=$ATELIER_DATA_DIR/admin-token token
    token=$(cat "$token_file" 2>/dev/null) || die "no admin token in $token_file"
    cat <<EOF

Atelier is up at $url
admin token (also in $token_file): $token

Try it (paste into a shell):

export ATELIER_URL=$url
export ATELIER_TOKEN=$token
$VENV/bin/python - <<'PY'
from atelier import Sandbox
with Sandbox.create(template="base", timeout=300) as sb:
    print(sb.commands.run("python3 -c 'print(6*7)'").stdout)
PY

Stop the server with: make down   (running sandboxes are left alone)
EOF
}

case "${1:-up}" in
    deps) deps ;;
    test-deps) test_deps ;;
    template) template ;;
    code-interpreter-template) code_interpreter_template ;;
    up) up ;;
    -h | --help | help) sed -n '2,10p' "$0" | cut -c3- ;;
    *) die "unknown command ${1}; use deps, test-deps, template, code-interpreter-template or up" ;;
esac
