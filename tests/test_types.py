"""Core types: Episode JSON round-trips losslessly (property-based), and the small
conveniences learners rely on (key, steps, leaves, usage tokens, error boundaries)."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.core.errors import EpisodeTimeout, PolicyUnavailable, VerifierError
from runtime.core.types import Episode, ErrorInfo, Node, Task, Usage, episode_from_json, episode_to_json

# Finite floats and, often, the two infinities (NaN is excluded: NaN != NaN breaks
# equality). The infinities are drawn on purpose: hypothesis rarely lands on them.
floats = st.floats(allow_nan=False, allow_infinity=True) | st.sampled_from([math.inf, -math.inf])
text = st.text(max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | floats | text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(text, children, max_size=3),
    max_leaves=10,
)
json_objects = st.dictionaries(text, json_values, max_size=4)
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": text}), max_size=3
)

tasks = st.builds(
    Task,
    id=text,
    prompt=st.none() | text,
    messages=st.none() | messages,
    answer=st.none() | text,
    metadata=json_objects,
)
usages = st.builds(
    Usage,
    calls=st.integers(0, 10**6),
    prompt_tokens=st.integers(0, 10**9),
    completion_tokens=st.integers(0, 10**9),
    cost=floats,
    wall_time=floats,
)
errors = st.builds(
    ErrorInfo, type=text, message=text, boundary=st.sampled_from(["policy", "verifier", "budget", "strategy"])
)


@st.composite
def node_trees(draw: st.DrawFn) -> list[Node]:
    """A random tree: node 0 is the root; every later node hangs under an earlier one."""
    count = draw(st.integers(1, 12))
    nodes = [Node(id=0, parent=None, depth=0)]
    for i in range(1, count):
        parent = nodes[draw(st.integers(0, i - 1))]
        node = Node(
            id=i,
            parent=parent.id,
            depth=parent.depth + 1,
            text=draw(text),
            token_ids=draw(st.none() | st.lists(st.integers(0, 2**31 - 1), max_size=5)),
            logprobs=draw(st.none() | st.lists(floats, max_size=5)),
            policy_version=draw(st.none() | st.integers(0, 1000)),
            finish_reason=draw(st.none() | st.sampled_from(["stop", "length"])),
            terminal=draw(st.booleans()),
            answer=draw(st.none() | text),
            scores=draw(st.dictionaries(text, floats, max_size=3)),
            explanations=draw(st.dictionaries(text, text, max_size=2)),
            value=draw(st.none() | floats),
            visits=draw(st.integers(0, 10**6)),
            meta=draw(json_objects),
        )
        parent.children.append(i)
        nodes.append(node)
    return nodes


@st.composite
def episodes(draw: st.DrawFn) -> Episode:
    nodes = draw(node_trees())
    leaf = draw(st.sampled_from(nodes))
    path = []
    node: Node | None = leaf
    while node is not None and node.parent is not None:
        path.append(node.id)
        node = nodes[node.parent]
    return Episode(
        run_id=draw(text),
        task=draw(tasks),
        sample=draw(st.integers(0, 1000)),
        strategy=draw(text),
        strategy_config=draw(json_objects),
        nodes=nodes,
        chosen_path=path[::-1],
        final_answer=draw(st.none() | text),
        reward=draw(st.none() | floats),
        usage=draw(usages),
        policy_versions=draw(st.lists(st.integers(0, 100), max_size=2)),
        errors=draw(st.lists(errors, max_size=2)),
        status=draw(st.sampled_from(["ok", "failed"])),
        started_at=draw(floats),
        finished_at=draw(st.none() | floats),
    )


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(episodes())
def test_episode_json_round_trip_is_lossless(episode: Episode) -> None:
    data = episode_to_json(episode)
    back = episode_from_json(data)
    assert back == episode
    # And once more from bytes, through the serialized form of the copy.
    assert episode_from_json(episode_to_json(back).encode()) == episode


def test_infinities_survive_inside_free_form_metadata() -> None:
    """inf inside ``Any``-typed dicts (task metadata, node meta, strategy config) must
    not turn into null."""
    inf = math.inf
    episode = Episode(
        run_id="r",
        task=Task(id="t", metadata={"bound": inf, "nested": {"lo": -inf, "xs": [1.5, inf]}}),
        strategy_config={"temperature": inf},
        nodes=[Node(id=0, parent=None, depth=0, meta={"v": -inf}, scores={"s": inf}, value=-inf)],
        reward=inf,
    )
    back = episode_from_json(episode_to_json(episode))
    assert back.task.metadata == {"bound": inf, "nested": {"lo": -inf, "xs": [1.5, inf]}}
    assert back.strategy_config == {"temperature": inf}
    assert back.nodes[0].meta == {"v": -inf}
    assert back.nodes[0].scores == {"s": inf}
    assert back.reward == inf
    assert back == episode


def test_json_is_one_object_with_the_tree() -> None:
    episode = Episode(
        run_id="r",
        task=Task(id="t", prompt="p", answer="4"),
        nodes=[Node(id=0, parent=None, depth=0, children=[1]), Node(id=1, parent=0, depth=1, text="Answer: 4")],
        chosen_path=[1],
        final_answer="4",
    )
    raw: dict[str, Any] = json.loads(episode_to_json(episode))
    assert raw["task"]["id"] == "t"
    assert [n["id"] for n in raw["nodes"]] == [0, 1]
    assert raw["nodes"][1]["parent"] == 0
    assert raw["chosen_path"] == [1]


def test_episode_key_steps_and_leaves() -> None:
    nodes = [
        Node(id=0, parent=None, depth=0, children=[1, 2]),
        Node(id=1, parent=0, depth=1, text="a", children=[3]),
        Node(id=2, parent=0, depth=1, text="b"),
        Node(id=3, parent=1, depth=2, text="c"),
    ]
    episode = Episode(run_id="run", task=Task(id="t"), sample=3, nodes=nodes, chosen_path=[1, 3])
    assert episode.key == ("run", "t", 3)
    assert episode.steps == ["a", "c"]
    assert [n.id for n in episode.leaves] == [2, 3]
    # A lone root is not a leaf: nothing was explored.
    assert Episode(run_id="r", task=Task(id="t"), nodes=[Node(id=0, parent=None, depth=0)]).leaves == []


def test_usage_tokens_and_task_messages() -> None:
    assert Usage(prompt_tokens=7, completion_tokens=5).tokens == 12
    assert Task(id="a", prompt="hi").as_messages() == [{"role": "user", "content": "hi"}]
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert Task(id="b", prompt="ignored", messages=chat).as_messages() is chat


def test_error_info_names_class_message_and_boundary() -> None:
    assert ErrorInfo.from_exception(PolicyUnavailable("503 after 6 attempts")) == ErrorInfo(
        "PolicyUnavailable", "503 after 6 attempts", "policy"
    )
    assert ErrorInfo.from_exception(VerifierError("x")).boundary == "verifier"
    assert ErrorInfo.from_exception(EpisodeTimeout("t")).boundary == "budget"
    # Not ours: escaped from user code inside the episode; an empty message shows the repr.
    info = ErrorInfo.from_exception(KeyError())
    assert (info.type, info.boundary) == ("KeyError", "strategy")
    assert info.message == "KeyError()"
