#!/usr/bin/env bash
# Installs what `make run` and `make test` need and is not in the repository. Idempotent: each
# step checks first and does nothing when its piece is already there.
set -euo pipefail

say() { printf 'setup: %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null; then
    say "cargo is missing: install the stable Rust toolchain (https://rustup.rs) and run again"
    exit 1
fi

# rustfmt and clippy ship as rustup components; a minimal profile may lack them.
if command -v rustup >/dev/null; then
    for component in rustfmt clippy; do
        if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
            say "adding the $component component"
            rustup component add "$component"
        fi
    done
fi

# The third-party-client and browser tests (tests/js): curl, Debian's chromium (never a
# downloaded browser), Node.js 20 or later, and the npm packages pinned in the lock file.
apt_missing=()
command -v curl >/dev/null || apt_missing+=(curl)
if ! dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q 'install ok installed'; then
    apt_missing+=(chromium)
fi
if ((${#apt_missing[@]})); then
    say "installing ${apt_missing[*]} (Debian packages)"
    as_root=()
    if [[ $(id -u) != 0 ]]; then as_root=(sudo); fi
    "${as_root[@]}" apt-get update
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${apt_missing[@]}"
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    say "node and npm are missing: install Node.js 20 or later and run again"
    exit 1
fi
if (($(node -p 'process.versions.node.split(".")[0]') < 20)); then
    say "Node.js $(node --version) is too old for tests/js: install Node.js 20 or later"
    exit 1
fi

js_dir="$(dirname "$0")/../tests/js"
if [[ ! -f $js_dir/node_modules/.package-lock.json \
    || $js_dir/package-lock.json -nt $js_dir/node_modules/.package-lock.json ]]; then
    say "installing the npm packages of tests/js"
    (cd "$js_dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi
