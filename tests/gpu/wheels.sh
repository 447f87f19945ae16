#!/usr/bin/env bash
# Fetch, here, the wheels of what tests/gpu/check.sh needs and the lent GPU machine
# lacks (its image has torch, transformers, peft, anyio, pytest; not these), for its
# Python (3.12, x86-64 Linux), at the versions this checkout's .venv uses:
#
#   tests/gpu/wheels.sh [DIR]     (DIR: build/whl, which check.sh installs from)
#
# About 3 MB. build/ is ignored by git, so the wheels travel only when the device call
# carries them (carry: [build/whl]; docs/gpu.md). The list was found by running
# check.sh --dry with only the machine's packages importable (pydantic and its parts,
# structlog, sniffio, tenacity, httpx2 and its parts).
set -euo pipefail
dir=${1:-build/whl}
root=$(cd "$(dirname "$0")/../.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
mkdir -p "$dir"
packages=(pydantic pydantic-core typing-inspection annotated-types structlog sniffio tenacity httpx2 httpcore2 truststore)
pins=$("$py" - "${packages[@]}" <<'EOF'
import importlib.metadata as m, sys
print(" ".join(f"{name}=={m.version(name)}" for name in sys.argv[1:]))
EOF
)
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
# shellcheck disable=SC2086
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dir" $pins
ls -1 "$dir"
