"""Config loading: every problem is a ConfigError naming the field, the value and what
is allowed; ``--set`` overrides; the built run matches the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.app.build import build_runtime, build_tasks, build_verifiers
from runtime.app.config import DEFAULT_CONCURRENCY, RunConfig, apply_overrides, load_config
from runtime.core.errors import ConfigError
from runtime.policy.scripted import ScriptedPolicy
from runtime.rewards.outcome import ExactMatch, MathVerify
from runtime.tiny.verifier import TinyStepVerifier
from strategies import BestOfN, ChainOfThought

SCRIPTED = "policy:\n  kind: scripted\n"


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), overrides)
    message = str(info.value)
    assert "\n" not in message, "config errors are one line"
    return message


def test_defaults_and_a_good_file(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            SCRIPTED + "run_id: r1\nstrategy: {name: best_of_n, n: 3}\nscheduler: {concurrency: 5}\n",
        )
    )
    assert isinstance(config, RunConfig)
    assert config.run_id == "r1"
    assert config.strategy.name == "best_of_n" and config.strategy.n == 3  # type: ignore[union-attr]
    assert config.scheduler.concurrency == 5
    assert config.sampling.step_delimiter == "\n"  # untouched sections keep their defaults
    assert load_config(write(tmp_path, SCRIPTED, "b.yaml")).scheduler.concurrency == DEFAULT_CONCURRENCY


def test_unknown_strategy_names_field_value_and_choices(tmp_path: Path) -> None:
    message = config_error(tmp_path, SCRIPTED + "strategy:\n  name: monte_carlo_magic\n")
    assert "strategy" in message
    assert "monte_carlo_magic" in message
    assert "chain_of_thought" in message and "best_of_n" in message


def test_negative_concurrency(tmp_path: Path) -> None:
    message = config_error(tmp_path, SCRIPTED + "scheduler:\n  concurrency: -4\n")
    assert "scheduler.concurrency" in message
    assert "-4" in message
    assert "greater than or equal to 1" in message


def test_out_of_range_and_wrong_type(tmp_path: Path) -> None:
    message = config_error(tmp_path, SCRIPTED + "sampling: {temperature: 3.5, max_steps: many}\n")
    assert "sampling.temperature" in message and "3.5" in message and "less than or equal to 2" in message
    assert "sampling.max_steps" in message and "many" in message  # both errors, one line


def test_unknown_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, SCRIPTED + "scheduler:\n  concurency: 8\n")
    assert "scheduler.concurency" in message and "8" in message
    assert "Extra inputs are not permitted" in message


def test_missing_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEARCHLEARN_TEST_KEY", raising=False)
    text = "policy:\n  kind: openai\n  api_key_env: SEARCHLEARN_TEST_KEY\n"
    message = config_error(tmp_path, text)
    assert "policy.api_key_env" in message and "SEARCHLEARN_TEST_KEY" in message
    assert "base_url" in message  # the alternative: a local server
    # Set the variable, or point at a local server, and the same config loads.
    monkeypatch.setenv("SEARCHLEARN_TEST_KEY", "sk-test")
    assert load_config(write(tmp_path, text, "k.yaml")).policy.api_key_env == "SEARCHLEARN_TEST_KEY"
    monkeypatch.delenv("SEARCHLEARN_TEST_KEY")
    local = load_config(write(tmp_path, text + "  base_url: http://127.0.0.1:9/v1\n", "l.yaml"))
    assert local.policy.base_url == "http://127.0.0.1:9/v1"


def test_default_openai_policy_needs_openai_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert "OPENAI_API_KEY" in config_error(tmp_path, "run_id: x\n")


def test_missing_file_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    message = config_error(tmp_path, "policy: [kind: scripted\nrun_id: {\n")
    assert "not valid YAML" in message and "line " in message
    assert "must hold a mapping" in config_error(tmp_path, "- just\n- a list\n")


def test_cross_field_checks(tmp_path: Path) -> None:
    assert "tasks.name" in config_error(tmp_path, SCRIPTED + "tasks: {source: reasoning_gym}\n")
    assert "tasks.path" in config_error(tmp_path, SCRIPTED + "tasks: {source: jsonl}\n")
    message = config_error(tmp_path, SCRIPTED + "strategy: {name: best_of_n, selection: process}\n")
    assert "verifiers.process" in message and "'process'" in message and "tiny_rule" in message


def test_unknown_reasoning_gym_dataset_fails_when_building_tasks(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SCRIPTED + "tasks: {source: reasoning_gym, name: basic_arithmatic}\n"))
    with pytest.raises(ConfigError) as info:
        build_tasks(config)
    message = str(info.value)
    assert message.startswith("tasks.name:")
    assert "basic_arithmatic" in message and "basic_arithmetic" in message  # value and the close match


def test_empty_task_file(tmp_path: Path) -> None:
    tasks_file = write(tmp_path, "\n", "tasks.jsonl")
    config = load_config(write(tmp_path, SCRIPTED + f"tasks: {{source: jsonl, path: '{tasks_file}'}}\n"))
    with pytest.raises(ConfigError, match="holds no tasks") as info:
        build_tasks(config)
    assert str(info.value).startswith("tasks.path:")


def test_malformed_jsonl_line(tmp_path: Path) -> None:
    tasks_file = write(tmp_path, '{"id": "a", "prompt": "x"}\n{"id": "b", prompt: y}\n', "tasks.jsonl")
    config = load_config(write(tmp_path, SCRIPTED + f"tasks: {{source: jsonl, path: '{tasks_file}'}}\n"))
    with pytest.raises(ConfigError) as info:
        build_tasks(config)
    assert f"{tasks_file}:2:" in str(info.value)


def test_set_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, SCRIPTED + "scheduler: {concurrency: 2}\n")
    config = load_config(
        path,
        ["scheduler.concurrency=16", "strategy.name=best_of_n", "strategy.n=4", "run_id=over", "sampling.seed=null"],
    )
    assert config.scheduler.concurrency == 16  # YAML scalar: an int, not "16"
    assert config.strategy.name == "best_of_n" and config.strategy.n == 4  # type: ignore[union-attr]
    assert config.run_id == "over" and config.sampling.seed is None
    # Overrides are validated like the file.
    with pytest.raises(ConfigError, match="scheduler.concurrency"):
        load_config(path, ["scheduler.concurrency=0"])


def test_set_override_syntax_errors() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["scheduler.concurrency"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"run_id": "x"}, ["run_id.sub=1"])
    assert apply_overrides({}, ["a.b.c=[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}


def test_build_from_config(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, SCRIPTED + "tasks: {size: 5}\nverifiers: {outcome: math, process: tiny_rule}\n"),
        [f"store.path={tmp_path / 'store.db'}", "scheduler.concurrency=7", "strategy.name=best_of_n", "strategy.n=2"],
    )
    tasks = list(build_tasks(config))
    assert len(tasks) == 5 and all(t.metadata["source"] == "tiny" for t in tasks)
    verifiers = build_verifiers(config)
    assert isinstance(verifiers.outcome, MathVerify) and isinstance(verifiers.process, TinyStepVerifier)
    runtime = build_runtime(config)
    try:
        assert isinstance(runtime.policy, ScriptedPolicy)
        assert isinstance(runtime.strategy, BestOfN) and runtime.strategy.n == 2
        assert runtime.settings.concurrency == 7
        assert runtime.store is not None and runtime.store.path == tmp_path / "store.db"
        assert runtime.config["strategy"]["n"] == 2
    finally:
        assert runtime.store is not None
        runtime.store.close()


def test_bad_answer_pattern_is_a_config_error(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SCRIPTED + "verifiers: {answer_patterns: ['no group']}\n"))
    with pytest.raises(ConfigError, match="verifiers.answer_patterns"):
        build_verifiers(config)
    default = load_config(write(tmp_path, SCRIPTED, "d.yaml"))
    assert isinstance(build_verifiers(default).outcome, ExactMatch)
    assert build_verifiers(default).process is None


def test_default_strategy_is_chain_of_thought(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SCRIPTED))
    assert config.strategy.name == "chain_of_thought"
    from runtime.app.build import build_strategy

    assert isinstance(build_strategy(config), ChainOfThought)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # hosted configs need a key; none is used
    from runtime.app.build import build_strategy
    from runtime.core.registry import lookup

    config = load_config(path)
    assert config.run_id
    # Every component is the registered class its name selects, and builds.
    assert type(config.strategy) is lookup("strategies", config.strategy.name)
    assert type(config.tasks) is lookup("tasks", config.tasks.source)
    if config.learner is not None:
        assert type(config.learner) is lookup("learners", config.learner.kind)
    assert build_strategy(config).config() == config.strategy.config()
    verifiers = build_verifiers(config, ScriptedPolicy(["Answer: 1"]))
    assert (verifiers.outcome is None) == (config.verifiers.outcome is None)
    assert (verifiers.process is None) == (config.verifiers.process is None)


def test_final_answer_patterns_are_checked_and_built(tmp_path: Path) -> None:
    bad = load_config(write(tmp_path, SCRIPTED + "verifiers: {final_answer_patterns: ['(']}\n"))
    with pytest.raises(ConfigError, match="verifiers.final_answer_patterns"):
        build_verifiers(bad)
    config = load_config(write(tmp_path, SCRIPTED + "verifiers: {final_answer_patterns: [last_number]}\n"))
    final = build_verifiers(config).final
    assert final is not None and final("so 6 + 5 = 11") == "11"
    assert build_verifiers(load_config(write(tmp_path, SCRIPTED))).final is None
