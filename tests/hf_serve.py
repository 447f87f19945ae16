"""``transformers serve`` on loopback: the real OpenAI-compatible server the tests without
vLLM talk to (the bundled tiny policy, or SmolLM2 from the model cache)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import httpx2
import pytest
from fakeserver import free_port

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

    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if proc.poll() is not None:
                fail(f"exited with {proc.returncode}")
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if time.monotonic() > deadline:
                fail(f"did not come up in {STARTUP_SECONDS} s")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
