#!/usr/bin/env bash
# Installs the peers that Sluice is benchmarked against, each one separately:
#
#   bench/peers/install.sh nchan     # nginx + the Nchan module, from Debian (apt)
#   bench/peers/install.sh litellm   # LiteLLM proxy (PyPI) in a venv
#   bench/peers/install.sh llama     # llama.cpp's llama-bench / llama-server / llama-cli,
#                                    # built from the llama.cpp tree vendored in the PyPI
#                                    # sdist of llama-cpp-python
#   bench/peers/install.sh durable   # the Durable Streams reference server (npm
#                                    # @durable-streams/server) in bench/peers/durable,
#                                    # as its package-lock.json pins it
#   bench/peers/install.sh all       # nchan, litellm, llama, durable
#
# Idempotent: every step checks first and is skipped when already done. Installs Debian
# packages with apt-get (through sudo when not root). Heavy compiles run with nice 19 in a
# scheduling group of their own (Linux autogroups make a plain nice useless across sessions).
#
# Environment:
#   LITELLM_VENV   venv for LiteLLM          (default bench/peers/.venv-litellm)
#   LLAMA_DIR      llama.cpp source + build  (default bench/peers/.llama)
#   JOBS           parallel compile jobs     (default 2)
#   PYTHON         interpreter for the venvs (default python3; needs 3.10+)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

# Pinned versions.
readonly NGINX_VERSION="1.22.1-9+deb12u11"        # bookworm-security; any 1.22.1-9* works
readonly NCHAN_VERSION="1:1.3.6+dfsg-2"            # bookworm/main
# litellm: 1.82.7, 1.82.8 (March 2026) and 1.107.0 were compromised releases (pulled from
# PyPI). 1.108.5 (2026-11-10) is a later stable one; the install checks that no .pth file
# other than the venv's own was added to site-packages.
readonly LITELLM_VERSION="1.108.5"
readonly LLAMA_CPP_PYTHON_VERSION="0.3.36"        # PyPI sdist 2026-10-01, vendors llama.cpp
readonly LLAMA_SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

LITELLM_VENV="${LITELLM_VENV:-$HERE/.venv-litellm}"
LLAMA_DIR="${LLAMA_DIR:-$HERE/.llama}"
JOBS="${JOBS:-2}"
PYTHON="${PYTHON:-python3}"

say()  { printf '[peers] %s\n' "$*" >&2; }
die()  { printf '[peers] ERROR: %s\n' "$*" >&2; exit 1; }
step() { printf '[peers] --- %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root or sudo to run: $*"; fi
}

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

APT_UPDATED=""
apt_install() {  # apt_install PKG[=VERSION]...
    local missing=() p
    for p in "$@"; do pkg_installed "${p%%=*}" || missing+=("$p"); done
    if [ ${#missing[@]} -eq 0 ]; then say "apt: already installed: ${*%%=*}"; return 0; fi
    if [ -z "$APT_UPDATED" ]; then
        say "apt-get update"
        as_root apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
    say "apt-get install ${missing[*]}"
    # policy-rc.d (present on this machine) keeps the packaged nginx service from starting.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

need_python() {
    command -v "$PYTHON" >/dev/null || die "no $PYTHON"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "$PYTHON is older than 3.10"
    "$PYTHON" -c 'import venv' 2>/dev/null || die "$PYTHON has no venv module"
}

make_venv() {  # make_venv DIR
    if [ -x "$1/bin/python" ]; then say "venv exists: $1"; return 0; fi
    say "creating venv $1"
    "$PYTHON" -m venv "$1" || die "venv creation failed: $1"
    "$1/bin/python" -m pip install -q --upgrade pip || die "pip upgrade failed in $1"
}

# Runs a command at the lowest priority, in a session (and so an autogroup) of its own.
low_priority() {
    setsid --wait bash -c 'echo 19 > /proc/self/autogroup 2>/dev/null || true; exec nice -n 19 "$@"' \
        low_priority "$@"
}

# ---------------------------------------------------------------------------------------
install_nchan() {
    step "nchan: nginx $NGINX_VERSION + libnginx-mod-nchan $NCHAN_VERSION"
    local t0=$SECONDS
    # Any nginx that provides nginx-abi-1.22.1-7 will do; take the candidate version
    # (bookworm-security moves on). The module's version is fixed in bookworm.
    apt_install nginx libnginx-mod-nchan curl
    local so=/usr/lib/nginx/modules/ngx_nchan_module.so
    [ -f "$so" ] || die "nchan module not found at $so"
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || die "nginx binary missing"
    # Smoke test: the template parses with the module loaded.
    local tmp; tmp="$(mktemp -d)"
    mkdir -p "$tmp/logs" "$tmp/tmp"
    sed -e "s|@WORKDIR@|$tmp|g" -e "s|@PORT@|18099|g" "$HERE/nchan.conf.template" > "$tmp/nginx.conf"
    /usr/sbin/nginx -t -p "$tmp" -c "$tmp/nginx.conf" -g 'daemon off;' 2>"$tmp/t.log" \
        || { cat "$tmp/t.log" >&2; rm -rf "$tmp"; die "nginx -t failed on nchan.conf.template"; }
    rm -rf "$tmp"
    say "nchan: ok ($(/usr/sbin/nginx -v 2>&1 | sed 's/.*: //'), module $(dpkg-query -W -f='${Version}' libnginx-mod-nchan)) in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------------------
install_litellm() {
    step "litellm: litellm[proxy]==$LITELLM_VERSION in $LITELLM_VENV"
    local t0=$SECONDS
    need_python
    local have=""
    if [ -x "$LITELLM_VENV/bin/python" ]; then
        have="$("$LITELLM_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))' 2>/dev/null || true)"
    fi
    if [ "$have" = "$LITELLM_VERSION" ] && [ -x "$LITELLM_VENV/bin/litellm" ]; then
        say "litellm $have already installed"
    else
        make_venv "$LITELLM_VENV"
        local pths_before
        pths_before="$(ls "$LITELLM_VENV"/lib/python3*/site-packages/*.pth 2>/dev/null | sort || true)"
        say "pip install litellm[proxy]==$LITELLM_VERSION (about 1-2 minutes)"
        "$LITELLM_VENV/bin/python" -m pip install -q --disable-pip-version-check \
            "litellm[proxy]==$LITELLM_VERSION" || die "pip install litellm[proxy]==$LITELLM_VERSION failed"
        local pths_after
        pths_after="$(ls "$LITELLM_VENV"/lib/python3*/site-packages/*.pth 2>/dev/null | sort || true)"
        if [ "$pths_before" != "$pths_after" ]; then
            say "new .pth files in site-packages:"; diff <(echo "$pths_before") <(echo "$pths_after") >&2 || true
            grep -l -i litellm $pths_after 2>/dev/null && die "a litellm .pth file appeared: do not use this venv"
        fi
    fi
    "$LITELLM_VENV/bin/litellm" --help >/dev/null 2>&1 || die "litellm CLI does not start"
    say "litellm: ok ($LITELLM_VENV/bin/litellm) in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------------------
LLAMA_SRC="$LLAMA_DIR/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
LLAMA_BUILD="$LLAMA_DIR/build"
LLAMA_TARGETS=(llama-bench llama-server llama-cli)

install_llama() {
    step "llama: llama.cpp from llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sdist -> $LLAMA_BUILD/bin"
    local t0=$SECONDS
    need_python
    local t
    local all=1
    for t in "${LLAMA_TARGETS[@]}"; do [ -x "$LLAMA_BUILD/bin/$t" ] || all=""; done
    if [ -n "$all" ] && [ -f "$LLAMA_BUILD/.done-$LLAMA_CPP_PYTHON_VERSION" ]; then
        say "llama.cpp tools already built"
    else
        apt_install cmake g++ make
        mkdir -p "$LLAMA_DIR/dl"
        local sdist="$LLAMA_DIR/dl/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
        if [ ! -f "$sdist" ]; then
            say "pip download llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION (sdist, ~77 MB)"
            # Only this package as an sdist (its build backend, scikit-build-core, comes as a
            # wheel for pip's metadata step; `--no-binary :all:` would build that from source).
            "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps \
                --no-binary llama-cpp-python \
                -d "$LLAMA_DIR/dl" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" \
                || die "pip download llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION failed"
        fi
        [ -f "$sdist" ] || die "sdist not where expected: $sdist"
        [ "$(sha256sum "$sdist" | cut -d' ' -f1)" = "$LLAMA_SDIST_SHA256" ] \
            || die "sha256 mismatch for $sdist (delete it to download again)"
        if [ ! -f "$LLAMA_SRC/vendor/llama.cpp/CMakeLists.txt" ]; then
            say "extracting $sdist"
            tar -xzf "$sdist" -C "$LLAMA_DIR" || die "cannot extract $sdist"
        fi
        [ -f "$LLAMA_SRC/vendor/llama.cpp/CMakeLists.txt" ] || die "no vendored llama.cpp in the sdist"
        if [ -f "$LLAMA_BUILD/CMakeCache.txt" ] && ! grep -qxF \
            "CMAKE_HOME_DIRECTORY:INTERNAL=$LLAMA_SRC/vendor/llama.cpp" "$LLAMA_BUILD/CMakeCache.txt"; then
            say "build dir was configured for another source tree; starting it afresh"
            rm -rf "$LLAMA_BUILD"
        fi
        say "cmake configure (GGML_NATIVE=ON, Release, no curl, shared libs)"
        cmake -S "$LLAMA_SRC/vendor/llama.cpp" -B "$LLAMA_BUILD" \
            -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=ON \
            -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
            -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON >"$LLAMA_DIR/cmake-configure.log" 2>&1 \
            || { tail -30 "$LLAMA_DIR/cmake-configure.log" >&2; die "cmake configure failed (log: $LLAMA_DIR/cmake-configure.log)"; }
        say "building ${LLAMA_TARGETS[*]} with -j$JOBS at nice 19 (about 10-20 minutes on 2 busy cores)"
        local b0=$SECONDS
        low_priority cmake --build "$LLAMA_BUILD" -j"$JOBS" --target "${LLAMA_TARGETS[@]}" \
            >"$LLAMA_DIR/cmake-build.log" 2>&1 \
            || { tail -30 "$LLAMA_DIR/cmake-build.log" >&2; die "build failed (log: $LLAMA_DIR/cmake-build.log)"; }
        say "build took $((SECONDS - b0)) s"
        for t in "${LLAMA_TARGETS[@]}"; do [ -x "$LLAMA_BUILD/bin/$t" ] || die "missing $LLAMA_BUILD/bin/$t after build"; done
        touch "$LLAMA_BUILD/.done-$LLAMA_CPP_PYTHON_VERSION"
    fi
    "$LLAMA_BUILD/bin/llama-bench" --help >/dev/null 2>&1 || die "llama-bench does not run"
    local model="$REPO/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    if [ ! -f "$model" ]; then
        say "model missing; running scripts/fetch-model.sh"
        "$REPO/scripts/fetch-model.sh" || die "scripts/fetch-model.sh failed"
    fi
    say "llama: ok ($LLAMA_BUILD/bin/{llama-bench,llama-server,llama-cli}) in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------------------
install_durable() {
    step "durable: npm @durable-streams/server as bench/peers/durable/package-lock.json pins it"
    local t0=$SECONDS dir="$HERE/durable"
    command -v node >/dev/null || die "no node (Node.js 20 or later)"
    node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' \
        || die "node $(node --version) is older than 20"
    local want have=""
    want="$(node -p 'require(process.argv[1]).dependencies["@durable-streams/server"]' "$dir/package.json")"
    if [ -f "$dir/node_modules/@durable-streams/server/package.json" ]; then
        have="$(node -p 'require(process.argv[1]).version' "$dir/node_modules/@durable-streams/server/package.json")"
    fi
    if [ "$have" = "$want" ]; then
        say "@durable-streams/server $have already installed"
    else
        say "npm ci in $dir"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed in $dir"
    fi
    # The file-backed mode needs LMDB's native module: load it once.
    (cd "$dir" && node -e 'await import("lmdb")' --input-type=module) \
        || die "the reference server's LMDB module does not load"
    say "durable: ok (@durable-streams/server $want) in $((SECONDS - t0)) s"
}

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] || usage
for what in "$@"; do
    case "$what" in
        nchan) install_nchan ;;
        litellm) install_litellm ;;
        llama) install_llama ;;
        durable) install_durable ;;
        all) install_nchan; install_litellm; install_llama; install_durable ;;
        -h|--help|help) usage ;;
        *) say "unknown peer: $what"; usage ;;
    esac
done
say "done: $*"
