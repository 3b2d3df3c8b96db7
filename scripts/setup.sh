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
