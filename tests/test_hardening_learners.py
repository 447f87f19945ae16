"""What a learner, its checkpoint or an output file meets cannot publish a NaN, run code,
leave a torn file or train on nothing in silence: non-finite steps, pickled payloads,
full disks and bad paths, LoRA switched on a full-weight checkpoint, a ``max_length``
the prompts fill. Each test reproduces a failure the learners had before (issue 24)."""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import torch
import yaml
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
from typer.testing import CliRunner

from learners import DPOLearner, Example, LoraSettings, PolicyGradientLearner, SFTLearner
from learners.pairs import Pair
from learners.rollouts import Rollout
from learners.trainer import NONFINITE_STEPS_IN_A_ROW
from runtime.app.cli import app
from runtime.app.config import load_config
from runtime.core.errors import ConfigError, LearnerError, StoreError
from runtime.scheduling.store import EpisodeStore
from runtime.tiny.policy_format import BUNDLED_POLICY

CONFIGS = Path(__file__).parent.parent / "configs"
runner = CliRunner()
MESSAGES = [{"role": "user", "content": "Evaluate: 2+3*4"}]


@pytest.fixture(autouse=True)
def _no_loading_bars() -> Iterator[None]:
    """transformers, imported by this module before the CLI runs in-process, would draw its
    weight-loading bar (a fresh ``searchlearn`` process turns it off before the import)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(BUNDLED_POLICY)


def tiny_model(tokenizer: Any, hidden: int = 32) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2ForCausalLM(config)


def example(i: int = 0) -> Example:
    return Example(messages=MESSAGES, completion=f"3*4=12\n2+12=14\nAnswer: {14 + i}", key=("r", f"t{i}", 0))


def snapshot(learner: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def one_line_error(result: Any, code: int, *needles: str) -> None:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def learning_config(tmp_path: Path, **learner: Any) -> Path:
    """A learning run that takes seconds: a scripted teacher, a distilled bundled-weak student."""
    config = {
        "run_id": "h",
        "policy": {"kind": "scripted", "script": ["3*4=12", "Answer: 42"]},
        "tasks": {"source": "tiny", "size": 8},
        "strategy": {"name": "chain_of_thought"},
        "verifiers": {"outcome": "exact"},
        "scheduler": {"concurrency": 2},
        "learner": {
            "kind": "distill",
            "student": "bundled-weak",
            "keep": "chosen",
            "min_reward": 0.0,
            "batch_examples": 2,
            "eval": None,
            **learner,
        },
        "store": {"path": str(tmp_path / "runs" / "s.db")},
    }
    path = tmp_path / "learn.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


# -- 1. nothing non-finite is published -----------------------------------------------------


def sft(tokenizer: Any) -> tuple[Any, list[Any]]:
    return SFTLearner(tiny_model(tokenizer), tokenizer, lr=1e-3), [example(0), example(1)]


def grpo(tokenizer: Any) -> tuple[Any, list[Any]]:
    rollouts = [
        Rollout(MESSAGES, "", f"Answer: {a}", [adv], ("r", "t", i), ends=True)
        for i, (a, adv) in enumerate([(14, 1.0), (13, -1.0)])
    ]
    return PolicyGradientLearner(tiny_model(tokenizer), tokenizer, lr=1e-3), rollouts


def dpo(tokenizer: Any) -> tuple[Any, list[Any]]:
    return DPOLearner(tiny_model(tokenizer), tokenizer, lr=1e-3), [
        Pair(MESSAGES, "", "Answer: 14", "Answer: 13", ("r", "t", 0), "solutions")
    ]


@pytest.mark.parametrize("make", [sft, grpo, dpo], ids=["sft", "grpo", "dpo"])
def test_a_nonfinite_step_is_refused_counted_and_a_run_of_them_stops_the_learner(
    tokenizer: Any, make: Callable[[Any], tuple[Any, list[Any]]]
) -> None:
    learner, batch = make(tokenizer)
    before = snapshot(learner)
    poison = learner.model.lm_head.register_forward_hook(lambda module, args, out: out * float("nan"))
    for refused in range(1, NONFINITE_STEPS_IN_A_ROW):
        result = learner.step(batch)
        assert result.metrics["nonfinite_steps"] == 1.0
        assert learner.nonfinite_steps == refused and learner.steps == 0
        assert same(before, snapshot(learner))  # no optimizer step
        assert all(p.grad is None for p in learner.model.parameters())  # gradients dropped
    with pytest.raises(LearnerError, match=r"3 steps in a row .* learner\.lr \(0\.001\)"):
        learner.step(batch)
    assert same(before, snapshot(learner))
    poison.remove()
    result = learner.step(batch)  # a finite step goes through again
    assert learner.steps == 1 and "nonfinite_steps" not in result.metrics
    assert not same(before, snapshot(learner))


def test_nonfinite_weights_are_never_published_saved_or_exported(tokenizer: Any, tmp_path: Path) -> None:
    learner, _ = sft(tokenizer)
    learner.save(tmp_path / "learner.pt")
    good = (tmp_path / "learner.pt").read_bytes()
    with torch.no_grad():
        learner.model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    for publish in (
        learner.weights,
        lambda: learner.save(tmp_path / "learner.pt"),
        lambda: learner.export(tmp_path / "policy"),
    ):
        with pytest.raises(LearnerError, match=r"up_proj\.weight holds NaN or inf"):
            publish()
    assert (tmp_path / "learner.pt").read_bytes() == good  # the finite checkpoint is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["learner.pt"]


def test_a_learning_run_whose_steps_keep_diverging_stops_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("torch.nn.utils.clip_grad_norm_", lambda *a, **k: torch.tensor(float("nan")))
    result = runner.invoke(app, ["run", str(learning_config(tmp_path, checkpoint_every=1)), "--no-progress"])
    one_line_error(result, 2, "3 steps in a row had a non-finite loss or gradient norm", "learner.lr (0.0001)")
    assert "saved to" not in result.output
    run = tmp_path / "runs" / "h"
    assert not (run / "policy").exists()
    # no step moved the weights, so no version was published and nothing was checkpointed
    assert not (run / "learner.pt").exists()


def test_learner_settings_have_sane_ranges(tmp_path: Path) -> None:
    # weight_decay 1e6 drove every weight to NaN, and the run still said "saved"
    result = runner.invoke(app, ["run", str(learning_config(tmp_path, weight_decay=1e6)), "--no-progress"])
    one_line_error(result, 2, "learner.weight_decay", "less than or equal to 1")
    assert not (tmp_path / "runs").exists()
    for field, value in [("weight_decay", 2), ("max_grad_norm", 1e9), ("micro_batch", 10**6), ("kl_coef", 1e6)]:
        with pytest.raises(ConfigError, match=f"learner.{field}"):
            load_config(CONFIGS / "grpo.yaml", [f"learner.{field}={value}"])


# -- 2. a checkpoint is data, never code ----------------------------------------------------


class Payload:
    """What a replaced learner.pt could hold: unpickling it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_a_pickled_payload_in_a_checkpoint_is_refused_and_never_runs(tokenizer: Any, tmp_path: Path) -> None:
    learner, _ = sft(tokenizer)
    marker, path = tmp_path / "pwned", tmp_path / "learner.pt"
    torch.save({"model": Payload(marker), "optimizer": {}, "version": 0, "steps": 0, "extra": {}}, path)
    with pytest.raises(StoreError, match=f"learner checkpoint {path} holds code.*io.open"):
        learner.load(path)
    assert not marker.exists()
    # a class named in the saved fields is rebuilt only from the learners package
    learner.save(path, {"window": [[example()]]})
    state = torch.load(path, weights_only=True)
    state["extra"]["window"][0][0]["__dataclass__"] = "subprocess:Popen"
    torch.save(state, path)
    with pytest.raises(StoreError, match="holds an object of 'subprocess:Popen'"):
        learner.load(path)


def test_a_checkpoint_loads_as_data_and_restores_the_replay_window(tokenizer: Any, tmp_path: Path) -> None:
    learner, batch = sft(tokenizer)
    learner.step(batch)
    window = [[example(0), example(1)], [example(2)]]
    window[1][0].weight, window[1][0].segments = 0.5, [("3*4=12", 1.0), ("Answer: 16", 0.0)]
    extra = {"consumed": [("t0", 0)], "seen": [b"\x00digest"], "window": window, "stats": {"staleness": {0: 3}}}
    learner.save(tmp_path / "learner.pt", extra)
    torch.load(tmp_path / "learner.pt", weights_only=True)  # tensors and plain values only
    other, _ = sft(tokenizer)
    assert other.load(tmp_path / "learner.pt") == extra
    assert other.steps == 1 and same(snapshot(learner), snapshot(other))


# -- 3. checkpoint and export writes --------------------------------------------------------


def full_disk(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_checkpoint_write_that_fails_is_one_line_and_keeps_the_previous(
    tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    learner, batch = sft(tokenizer)
    path = tmp_path / "ck" / "learner.pt"
    learner.save(path)
    good = path.read_bytes()
    learner.step(batch)

    def half_written(state: Any, target: Any) -> None:
        Path(target).write_bytes(b"PK\x03\x04 torn")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 3200 vs 3150")

    faults: list[tuple[str, Callable[..., None], str]] = [
        ("torch.save", full_disk, "disk full"),
        ("torch.save", half_written, "unexpected pos"),  # what torch says on a full disk
        ("os.replace", lambda *a: (_ for _ in ()).throw(PermissionError(errno.EACCES, "denied")), "permission denied"),
    ]
    for target, fault, reason in faults:
        with monkeypatch.context() as patch:
            patch.setattr(target, fault)
            with pytest.raises(StoreError, match=f"learner checkpoint {path}: .*{reason}.*the previous one is kept"):
                learner.save(path)
        assert path.read_bytes() == good and sorted(p.name for p in path.parent.iterdir()) == ["learner.pt"]


def test_a_full_disk_during_a_learning_run_is_one_line_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = learning_config(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr("torch.save", full_disk)
        result = runner.invoke(app, ["run", str(config), "--no-progress"])
    one_line_error(result, 4, str(tmp_path / "runs" / "h" / "learner.pt"), "disk full")
    assert sorted(p.name for p in (tmp_path / "runs" / "h").iterdir()) == []  # no partial file
    again = runner.invoke(app, ["run", str(config), "--no-progress"])
    assert again.exit_code == 0, again.output
    assert re.search(r"episodes consumed\s+│\s+8 │", again.stdout)  # every stored episode, once
    assert (tmp_path / "runs" / "h" / "policy" / "config.json").is_file()


@pytest.mark.parametrize("case", ["under_a_file", "a_folder", "file_named_like_the_export"])
def test_checkpoint_and_export_paths_are_checked_before_the_run(tmp_path: Path, case: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    if case == "under_a_file":
        config, needle = learning_config(tmp_path, checkpoint=str(blocker / "learner.pt")), f"{blocker} is a file"
    elif case == "a_folder":
        config, needle = learning_config(tmp_path, checkpoint=str(tmp_path)), f"{tmp_path} is a folder, not a file"
    else:  # the final policy export goes to runs/h/policy: a file is there
        (tmp_path / "runs" / "h").mkdir(parents=True)
        (tmp_path / "runs" / "h" / "policy").write_text("not a checkpoint", encoding="utf-8")
        config, needle = learning_config(tmp_path), "policy export"
    result = runner.invoke(app, ["run", str(config), "--no-progress"])
    one_line_error(result, 4, needle)
    assert "saved to" not in result.output
    assert not (tmp_path / "runs" / "s.db").exists()  # refused before the run


def test_resuming_with_lora_switched_against_the_checkpoint_is_one_line(tokenizer: Any, tmp_path: Path) -> None:
    full = SFTLearner(tiny_model(tokenizer), tokenizer)
    full.save(tmp_path / "full.pt")
    lora = SFTLearner(tiny_model(tokenizer), tokenizer, lora=LoraSettings(r=4))
    with pytest.raises(StoreError, match=r"full\.pt was written without LoRA and learner\.lora is on"):
        lora.load(tmp_path / "full.pt")
    lora.save(tmp_path / "lora.pt")
    with pytest.raises(StoreError, match=r"lora\.pt was written with LoRA and learner\.lora is off"):
        full.load(tmp_path / "lora.pt")
    wider = SFTLearner(tiny_model(tokenizer, hidden=64), tokenizer)
    with pytest.raises(StoreError, match=r"full\.pt does not fit this learner \(.*size mismatch"):
        wider.load(tmp_path / "full.pt")


def test_a_failed_policy_export_keeps_the_previous_one(
    tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    learner, batch = sft(tokenizer)
    learner.export(tmp_path / "policy")
    before = {p.name: p.read_bytes() for p in (tmp_path / "policy").iterdir()}
    learner.step(batch)
    monkeypatch.setattr(learner.tokenizer, "save_pretrained", full_disk)  # after the weights were written
    with pytest.raises(StoreError, match=f"policy export {tmp_path / 'policy'}: disk full; the previous one is kept"):
        learner.export(tmp_path / "policy")
    assert {p.name: p.read_bytes() for p in (tmp_path / "policy").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]
    (tmp_path / "other").write_text("x", encoding="utf-8")
    with pytest.raises(StoreError, match=r"other is a file, not a folder"):
        learner.export(tmp_path / "other")


def stored_run(tmp_path: Path, data_dir: Path) -> Path:
    db = tmp_path / "store.db"
    result = runner.invoke(app, ["run", str(data_dir / "scripted.yaml"), "--set", f"store.path={db}", "--no-progress"])
    assert result.exit_code == 0, result.output
    return db


def test_episode_export_to_a_full_disk_or_an_uncreatable_path_is_one_line(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = stored_run(tmp_path, data_dir)
    out = tmp_path / "cli-test.jsonl"
    assert runner.invoke(app, ["export", "cli-test", "--store", str(db), "--out", str(out)]).exit_code == 0
    exported = out.read_bytes()
    written: list[int] = []

    def disk_fills(episode: Any) -> str:
        written.append(1)
        if len(written) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return "{}"

    with monkeypatch.context() as patch:
        patch.setattr("runtime.scheduling.store.episode_to_json", disk_fills)
        result = runner.invoke(app, ["export", "cli-test", "--store", str(db), "--out", str(out)])
    one_line_error(result, 4, str(out), "disk full")
    assert out.read_bytes() == exported  # not torn
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("cli-test")) == ["cli-test.jsonl"]
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    result = runner.invoke(app, ["export", "cli-test", "--store", str(db), "--out", str(blocker / "e.jsonl")])
    one_line_error(result, 4, str(blocker / "e.jsonl"), f"{blocker} is a file, not a folder")


def test_plot_into_a_missing_folder_is_written_and_an_unwritable_path_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    with EpisodeStore(db) as store:
        for version in (0, 1):
            store.add_curve_point("r", version, 10 * version, 5.0 * version, {"greedy": 0.5 + version / 10})
    target = tmp_path / "figures" / "new" / "curve.png"
    result = runner.invoke(app, ["plot", "r", "--store", str(db), "--out", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_bytes().startswith(b"\x89PNG") and sorted(p.name for p in target.parent.iterdir()) == [
        "curve.png"
    ]
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    result = runner.invoke(app, ["plot", "r", "--store", str(db), "--out", str(blocker / "c.png")])
    one_line_error(result, 4, str(blocker / "c.png"), f"{blocker} is a file, not a folder")


# -- 4. a max_length the prompts fill ---------------------------------------------------------


def test_a_max_length_the_prompts_fill_is_refused_counted_and_warned_once(tokenizer: Any, tmp_path: Path) -> None:
    learner = SFTLearner(tiny_model(tokenizer), tokenizer, max_length=12)  # the prompt is 19 tokens
    before = snapshot(learner)
    with structlog.testing.capture_logs() as logs:
        for skipped in (1, 2):
            result = learner.step([example(0), example(1)])
            assert result.tokens == 0 and result.metrics["empty_steps"] == 1.0
            assert learner.empty_steps == skipped and learner.steps == 0
    assert same(before, snapshot(learner))  # AdamW would have moved the weights on zero gradients
    warned = [e for e in logs if e["log_level"] == "warning"]
    assert len(warned) == 1 and "learner.max_length (12)" in warned[0]["hint"]
    # where the chat template alone fills it, the run is refused before it starts
    result = runner.invoke(app, ["run", str(learning_config(tmp_path, max_length=8)), "--no-progress"])
    one_line_error(result, 2, "learner.max_length: 8 tokens leave nothing to train on")
    assert not (tmp_path / "runs" / "s.db").exists()


def tool_learning_config(tmp_path: Path, fmt: dict[str, Any], max_length: int) -> Any:
    """``learning_config`` with the calculator environment in call format ``fmt``."""
    path = learning_config(tmp_path, max_length=max_length)
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    config["environment"] = {"name": "calculator", "format": fmt}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_a_max_length_the_tools_in_the_prompt_fill_is_refused_naming_the_numbers(tmp_path: Path) -> None:
    """bundled-weak's ChatML takes 8 tokens of the empty prompt; its template shows no
    tools, so chat_template describes the calculator in a system message: 523 tokens."""
    fmt = {"name": "chat_template", "tokenizer": "bundled-weak"}
    result = runner.invoke(app, ["run", str(tool_learning_config(tmp_path, fmt, 64)), "--no-progress"])
    one_line_error(
        result, 2, "learner.max_length: 64 tokens leave nothing to train on", "environment.format chat_template",
        "take 523 tokens of every example (515 of them the tools)",
    )  # fmt: skip
    assert not (tmp_path / "runs" / "s.db").exists()


def test_the_max_length_check_counts_rendered_schemas_and_only_tools_in_the_prompt(tmp_path: Path) -> None:
    """Schemas a template renders (``apply_chat_template(tools=...)``) count as the engine
    renders them; a format that keeps the prompt as it is (compact) adds nothing."""
    from types import SimpleNamespace

    from runtime.app.learning import _check_max_length
    from runtime.tiny.policy_format import WEAK_POLICY
    from runtime.tools import CalculatorEnvironment, ChatTemplateFormat

    qwen = AutoTokenizer.from_pretrained(WEAK_POLICY)
    qwen.chat_template = (Path(__file__).parent / "data" / "qwen_style_tools.jinja").read_text(encoding="utf-8")
    learner: Any = SimpleNamespace(tokenizer=qwen)
    base = load_config(learning_config(tmp_path, max_length=100))  # the template alone: 75 tokens
    _check_max_length(base, learner)
    rendered = base.model_copy(update={"environment": CalculatorEnvironment(format=ChatTemplateFormat.of(qwen))})
    with pytest.raises(ConfigError, match=r"take 719 tokens of every example \(644 of them the tools\)"):
        _check_max_length(rendered, learner)
    _check_max_length(base.model_copy(update={"environment": CalculatorEnvironment()}), learner)  # compact


def test_the_learner_summary_counts_skipped_steps(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(learning_config(tmp_path, max_length=15)), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert re.search(r"steps skipped \(no token within learner.max_length\)\s+│\s+4 │", result.stdout)
    assert "learner step skipped: no token to train on" in result.output


def test_the_continuous_export_on_a_full_disk_says_so_once(tmp_path: Path) -> None:
    """The run's own export (``export.path``): a write that fails is one StoreError, and
    closing afterwards does not raise it again (its buffer is dropped, not re-flushed)."""
    from runtime.core.errors import StoreError
    from runtime.core.types import Episode, Task
    from runtime.scheduling.export import EpisodeExport

    class FullDisk:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    export = EpisodeExport(tmp_path / "live.jsonl", "r")
    export.open()
    export._file.close()  # type: ignore[union-attr]
    export._file = FullDisk()  # type: ignore[assignment]
    with pytest.raises(StoreError, match="live.jsonl"):
        export.write(Episode(run_id="r", task=Task(id="t", prompt="q")))
    export.close()  # said once: nothing raised again on close
    export.close()
