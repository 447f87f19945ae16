"""``transformers serve`` on loopback: the real OpenAI-compatible server the tests without
vLLM talk to (the bundled tiny policy, or SmolLM2 from the model cache)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import pytest
from fakeserver import free_port, started

__all__ = ["transformers_serve"]

STARTUP_SECONDS = 120


@contextmanager
def transformers_serve(
    model: Path, log_dir: Path, *extra: str, on_failure: Literal["raise", "skip"] = "raise"
) -> Iterator[str]:
    """``transformers serve MODEL`` (with ``extra`` flags) on a free loopback port, offline,
    logging to ``log_dir/serve.log``; its base URL. A server that exits or does not come
    up in ``STARTUP_SECONDS`` fails the test (``raise``) or skips it, saying why (``skip``)."""
    port = free_port()
    exe = Path(sys.executable).parent / "transformers"
    hf_home = log_dir / "hf"
    (hf_home / "hub").mkdir(parents=True, exist_ok=True)  # its /v1/models fails without a hub cache directory
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home), "OMP_NUM_THREADS": "2"}
    log_path = log_dir / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(exe), "serve", str(model), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def fail(why: str) -> None:
        message = f"transformers serve {why}: {log_path.read_text()[-500:]}"
        if on_failure == "skip":
            pytest.skip(message)
        raise RuntimeError(message)

    with started(proc, f"http://127.0.0.1:{port}/health", STARTUP_SECONDS, fail):
        yield f"http://127.0.0.1:{port}/v1"
