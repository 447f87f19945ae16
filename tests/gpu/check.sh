#!/usr/bin/env bash
# The prepared device check: everything the GPU path needs measured, in one script that
# fits a short loan of one GPU (under 8 minutes on one H100; nothing downloaded).
#
#   tests/gpu/check.sh OUT          on a machine with a CUDA GPU
#   tests/gpu/check.sh OUT --dry    on the CPU at tiny sizes, in seconds (the suite runs
#                                   this: tests/test_gpu_ready.py), so the script cannot rot
#
# Writes into the folder OUT:
#   pytest.txt   the GPU tests: test_vllm_engine.py::test_in_process_on_a_gpu (skips
#                without vLLM) and test_device.py::test_the_engine_on_a_gpu_matches_the_cpu_and_takes_weights
#                (dry: only collected, so a renamed test fails here)
#   check.md     the tables of tests/gpu/check.py (every learner kind on the device in
#                bf16; a learner's weights handed to an engine in the process; the engine
#                against HF generate on a random Qwen2.5-0.5B; learner tokens/s), each
#                headed by the configuration it ran
#   check.json   the same rows
#
# Python: $PYTHON, else the repository's .venv, else python3. The project's own
# dependencies (pydantic, structlog, ...) must be importable; on a machine that has
# torch, transformers and peft but not them, carry their wheels in build/whl/
# (tests/gpu/wheels.sh fetches them) and they are installed into a temporary folder
# first. Where the repository is not installed, its metadata is written to a temporary
# folder on the path, so its named checkpoints (bundled) resolve. Exit status: 0 when
# every part passed.
set -uo pipefail

out=${1:?usage: tests/gpu/check.sh OUT [--dry]}
mode=${2:-}
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$root" || exit 2

if [ -n "${PYTHON:-}" ]; then py=$PYTHON
elif [ -x .venv/bin/python ]; then py=.venv/bin/python
else py=python3; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

if ! "$py" -c "import pydantic, structlog, sniffio, tenacity, httpx2" 2>/dev/null; then
    if ! compgen -G "build/whl/*.whl" >/dev/null; then
        echo "the project's dependencies are missing: run tests/gpu/wheels.sh and carry build/whl" >&2
        exit 2
    fi
    site=$(mktemp -d)
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" build/whl/*.whl || exit 2
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$py" -c "import importlib.metadata as m; m.distribution('searchlearn')" 2>/dev/null; then
    # Not installed: its metadata alone (entry points: named checkpoints such as bundled),
    # beside the checkout on the path; nothing is built or installed.
    meta=$(mktemp -d)
    "$py" - "$meta" <<'EOF' || exit 2
import pathlib, sys, tomllib
project = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]
info = pathlib.Path(sys.argv[1]) / f"searchlearn-{project['version']}.dist-info"
info.mkdir(parents=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: searchlearn\nVersion: {project['version']}\n")
groups = {"console_scripts": project.get("scripts", {}), **project.get("entry-points", {})}
text = "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items())
(info / "entry_points.txt").write_text(text)
EOF
    export PYTHONPATH="$meta:$root${PYTHONPATH:+:$PYTHONPATH}"
fi

gpu_tests=(
    "tests/test_vllm_engine.py::test_in_process_on_a_gpu"
    "tests/test_device.py::test_the_engine_on_a_gpu_matches_the_cpu_and_takes_weights"
)
status=0
started=$(date +%s)
if [ "$mode" = "--dry" ]; then
    "$py" -m pytest -q -p no:cacheprovider --collect-only "${gpu_tests[@]}" >"$out/pytest.txt" 2>&1 || status=1
    "$py" tests/gpu/check.py "$out" --dry 2>"$out/check.log" || status=1
else
    "$py" -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$out/device.txt"
    timeout 240 "$py" -m pytest -q -p no:cacheprovider -rs "${gpu_tests[@]}" 2>&1 | tee "$out/pytest.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    timeout 360 "$py" tests/gpu/check.py "$out" 2>"$out/check.log" || status=1
fi
echo "device check: exit $status after $(( $(date +%s) - started )) s; tables in $out" >&2
exit $status
