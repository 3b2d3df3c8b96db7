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
# The TLS tests (tests/js/tls.test.mjs) make their certificate with openssl.
command -v openssl >/dev/null || apt_missing+=(openssl)
if ! dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q 'install ok installed'; then
    apt_missing+=(chromium)
fi
# The multi-node tests: a real Redis (started by the tests on a free port in a temporary
# directory) and Debian's nginx in front of two nodes. Only the binaries are needed: the
# packages' own services are not used (and not started when the system blocks service starts).
command -v redis-server >/dev/null || apt_missing+=(redis-server)
[[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null || apt_missing+=(nginx)
# The systemd unit in deploy/ is checked with systemd-analyze verify.
command -v systemd-analyze >/dev/null || apt_missing+=(systemd)
# The Python SDK tests (tests/python): python3 with venv (Debian's python3-venv brings ensurepip).
command -v python3 >/dev/null || apt_missing+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || apt_missing+=(python3-venv)
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

# Installs the npm packages pinned in a folder's package-lock.json, when they are missing or
# the lock file changed since; never a downloaded browser (tests use Debian's chromium).
npm_packages() {
    local dir="$(dirname "$0")/../$1"
    if [[ ! -f $dir/node_modules/.package-lock.json \
        || $dir/package-lock.json -nt $dir/node_modules/.package-lock.json ]]; then
        say "installing the npm packages of $1"
        (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
    fi
}

npm_packages tests/js

# The web UI (web/: Vite, TypeScript, React; its browser tests use playwright-core with
# Debian's chromium). Vite 8 wants Node.js 20.19 or later.
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
    say "Node.js $(node --version) is too old for web/ (Vite): install Node.js 20.19 or later"
    exit 1
fi
npm_packages web

# The AI SDK's useChat test (tests/aisdk: npm `ai` + `@ai-sdk/react`, a page built with Vite, run
# in Debian's chromium by playwright-core), installed the same way.
npm_packages tests/aisdk

# Durable Streams (tests/durable): the protocol's own server conformance suite and the official
# TypeScript client, run with vitest.
npm_packages tests/durable

# The official OpenAI SDK for Python and pytest, pinned in tests/python/requirements.txt, in a
# virtual environment at .venv/ (git-ignored). pip runs only when the requirements differ from
# the copy kept in .venv/ after the last install; a venv that no longer starts is made anew.
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    say "Python $(python3 -V 2>&1) is too old for tests/python: install Python 3.11 or later"
    exit 1
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
venv=$root/.venv
requirements=$root/tests/python/requirements.txt
if ! "$venv/bin/python" -c '' 2>/dev/null; then
    say "creating the Python virtual environment .venv"
    python3 -m venv --clear "$venv"
fi
if ! cmp -s "$requirements" "$venv/requirements.installed"; then
    say "installing the Python packages of tests/python into .venv"
    "$venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
        --requirement "$requirements"
    cp "$requirements" "$venv/requirements.installed"
fi

# The built-in local model (SmolLM2-135M-Instruct GGUF, 98 MB): `make run` serves it and the
# tests run it. Fetched once into models/ (git-ignored), its sha256 checked; quiet when there.
bash "$(dirname "$0")/fetch-model.sh"
