"""Learning algorithms by name (learners.algorithms): an estimator, a step credit or a
policy loss written here as one decorated function is named in a config and changes what
the learner computes; a bad name fails when the config loads, naming the field, the
value and the registered names; `searchlearn components` lists the registries."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
import torch
from test_policy_gradient import rollout, scripted_tree, tiny_model
from transformers import AutoTokenizer
from typer.testing import CliRunner

from learners import algorithms
from learners.advantages import LeafCredit, group_advantages
from learners.algorithms import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    REGISTRIES,
    STEP_CREDITS,
    register_advantage,
    register_credit,
    register_policy_loss,
)
from learners.grpo import GRPO
from learners.policy_gradient import PolicyGradientLearner
from learners.rollouts import Rollouts, RolloutSettings
from runtime.app.cli import app
from runtime.app.config import load_config
from runtime.core.errors import ConfigError
from runtime.rewards.outcome import ExactMatch
from runtime.search.context import Verifiers
from runtime.tiny.policy_format import BUNDLED_POLICY
from runtime.tiny.verifier import TinyStepVerifier

pytestmark = pytest.mark.anyio

GRPO_CONFIG = Path(__file__).parent.parent / "configs" / "grpo.yaml"


# -- what a user adds: one function each ---------------------------------------------------


@register_advantage("test_max_baseline", paper="this test's")
def max_baseline(rewards: Sequence[float]) -> list[float]:
    """``r_i - max``: only the group's worst solutions are pushed (down), the best get 0."""
    best = max(rewards)
    return [r - best for r in rewards]


@register_credit("test_last_step", paper="this test's", process=False)
def last_step(leaf: LeafCredit, settings: Any) -> list[float]:
    """The outcome advantage on the answer step only."""
    return [0.0] * (leaf.steps - 1) + [leaf.outcome]


@register_policy_loss("test_unclipped", paper="Williams 1992 (REINFORCE with an importance ratio)")
def unclipped(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, settings: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``-r * A``: no clip, so nothing is ever clipped."""
    return -(logp - old_logp).exp() * advantages, torch.zeros(())


@pytest.fixture(scope="module", autouse=True)
def _forget_after() -> Iterator[None]:
    """This module's registrations end with it (other tests see the built-ins only)."""
    yield
    ADVANTAGE_ESTIMATORS.unregister("test_max_baseline")
    STEP_CREDITS.unregister("test_last_step")
    POLICY_LOSSES.unregister("test_unclipped")


def three_solutions() -> Any:
    """Two right answers and a wrong one to 19-22+29, three steps each."""
    return scripted_tree(
        [
            ["19-22=-3, leaving -3+29", "-3+29=26", "Answer: 26"],
            ["19-22=-3, leaving -3+29", "-3+29=25", "Answer: 25"],
            ["19-22=-3, leaving -3+29", "-3+29=26", "Answer: 26"],
        ],
        answer="26",
        expression="19-22+29",
    )


# -- a registered estimator, named in a run config, changes the advantages -----------------


async def test_an_estimator_registered_here_is_named_in_a_run_config_and_changes_the_advantages() -> None:
    config = load_config(GRPO_CONFIG, ["learner.estimator=test_max_baseline"])
    assert isinstance(config.learner, GRPO) and config.learner.estimator == "test_max_baseline"
    verifiers = Verifiers(outcome=ExactMatch())
    mine = await config.learner.build_converter("\n").examples(three_solutions(), verifiers)
    default = await load_config(GRPO_CONFIG).learner.build_converter("\n").examples(three_solutions(), verifiers)
    assert [r.meta["reward"] for r in mine] == [1.0, 0.0, 1.0]
    assert [r.step_advantages for r in mine] == [[0.0] * 3, [-1.0] * 3, [0.0] * 3]  # r - max, on every step
    assert [r.step_advantages for r in default] == [[a] * 3 for a in group_advantages([1.0, 0.0, 1.0], "grpo")]
    assert mine[0].step_advantages != default[0].step_advantages


async def test_a_step_credit_registered_here_places_the_advantage_and_scores_no_step() -> None:
    source = Rollouts(RolloutSettings(advantage="test_last_step"))
    verifiers = Verifiers(outcome=ExactMatch(), process=TinyStepVerifier())
    mine = await source.examples(three_solutions(), verifiers)
    outcome = await Rollouts().examples(three_solutions(), verifiers)
    assert [r.step_advantages for r in mine] == [[0.0, 0.0, o.step_advantages[-1]] for o in outcome]
    assert mine[1].step_advantages[-1] < 0
    assert source.rejected_by_process == 0  # process=False: the steps were never scored


async def test_a_name_may_be_module_colon_function() -> None:
    settings = RolloutSettings(estimator=f"{__name__}:max_baseline")
    rollouts = await Rollouts(settings).examples(three_solutions(), Verifiers(outcome=ExactMatch()))
    assert [r.step_advantages[0] for r in rollouts] == [0.0, -1.0, 0.0]
    with pytest.raises(ValueError, match="is not a registered advantage estimator"):
        RolloutSettings(estimator=f"{__name__}:three_solutions")


def test_an_installed_package_adds_an_estimator_through_an_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name the registry does not hold is looked up in the entry point group
    ``searchlearn.advantage_estimators``; loading it imports the package's module, whose
    decorator registers the function."""
    (tmp_path / "plugin_estimators.py").write_text(
        "from learners.algorithms import register_advantage\n\n\n"
        "@register_advantage('test_plugin_zero', paper='none')\n"
        "def zero(rewards):\n"
        "    return [0.0 for _ in rewards]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    point = EntryPoint("test_plugin_zero", "plugin_estimators:zero", "searchlearn.advantage_estimators")
    monkeypatch.setattr(algorithms, "entry_points", lambda group: [point] if group == point.group else [])
    try:
        assert RolloutSettings(estimator="test_plugin_zero").estimator == "test_plugin_zero"
        assert group_advantages([1.0, 0.0], "test_plugin_zero") == [0.0, 0.0]
    finally:
        ADVANTAGE_ESTIMATORS.unregister("test_plugin_zero")


# -- a registered policy loss, named in the learner's settings, is the loss it steps -------


def test_a_policy_loss_registered_here_is_the_loss_the_learner_steps() -> None:
    """Three mini-batches against one proximal policy with a tight clip: PPO's clip acts
    from the second step on; the registered loss has no clip, clips nothing, and so the
    weights end elsewhere."""
    tokenizer = AutoTokenizer.from_pretrained(BUNDLED_POLICY)
    pairs = ((5, 1.0), (6, -1.0), (4, -1.0), (7, -1.0), (8, -1.0), (9, -1.0))
    batch = [rollout(f"2+3={v}\nAnswer: {v}", a) for v, a in pairs]
    ends = {}
    for loss in ("ppo_clip", "test_unclipped"):
        learner = PolicyGradientLearner(
            tiny_model(tokenizer), tokenizer, lr=1e-1, mini_batches=3, clip_low=0.02, clip_high=0.02, policy_loss=loss
        )
        result = learner.step(batch)
        ends[loss] = (result.metrics["clipped_tokens"], [p.detach().clone() for p in learner.model.parameters()])
    assert ends["ppo_clip"][0] > 0 and ends["test_unclipped"][0] == 0
    assert any(not torch.equal(a, b) for a, b in zip(ends["ppo_clip"][1], ends["test_unclipped"][1], strict=True))


# -- a bad name is refused when the config loads -------------------------------------------


@pytest.mark.parametrize(
    ("field", "registered"),
    [
        ("estimator", "grpo, dr_grpo, rloo, test_max_baseline"),
        ("advantage", "outcome, process, outcome_process, first_error, test_last_step"),
        ("loss_norm", "token, sequence, constant"),
        ("policy_loss", "ppo_clip"),
        ("kl_estimator", "k3"),
    ],
)
def test_a_bad_name_in_a_config_names_the_field_the_value_and_the_registered_names(field: str, registered: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(GRPO_CONFIG, [f"learner.{field}=grop"])
    message = str(caught.value)
    assert f"learner.{field}:" in message and "'grop'" in message
    assert f"(registered: {registered}" in message


def test_a_lookup_by_a_bad_name_lists_the_registered_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown advantage estimator 'grop' \(registered: grpo, dr_grpo, rloo"):
        group_advantages([1.0, 0.0], "grop")


def test_a_taken_name_is_refused_naming_both_functions() -> None:
    def grpo(rewards: Sequence[float]) -> list[float]:
        return list(rewards)

    with pytest.raises(ConfigError, match=r"'grpo' is claimed by both learners.advantages:grpo and .*grpo"):
        register_advantage("grpo", paper="none")(grpo)
    assert ADVANTAGE_ESTIMATORS.get("grpo").__module__ == "learners.advantages"


# -- what is listed ------------------------------------------------------------------------


def test_every_builtin_names_its_paper_and_the_reference_lists_builtins_only() -> None:
    for registry in REGISTRIES.values():
        for name, member in registry.members().items():
            assert member.paper and member.fn.__doc__, f"{registry.family}:{name}"
    assert ADVANTAGE_ESTIMATORS.builtin_names() == ["grpo", "dr_grpo", "rloo"]
    assert "test_max_baseline" in ADVANTAGE_ESTIMATORS.names()


def test_searchlearn_components_lists_each_registry_with_what_is_registered() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["components", "advantage_estimators"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ("grpo", "dr_grpo", "rloo", "test_max_baseline", "Ahmadian et al. 2024"):
        assert name in result.stdout
    everything = runner.invoke(app, ["components"], env={"COLUMNS": "200"})
    assert everything.exit_code == 0, everything.output
    for family in REGISTRIES:
        assert family in everything.stdout
    for name in ("ppo_clip", "test_unclipped", "first_error", "constant", "k3", "best_of_n"):
        assert name in everything.stdout
