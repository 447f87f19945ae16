"""Tool-call formats (issue 26, item 1): ``chat_template`` (the model's own template's
call and tool-turn syntax, parsed through transformers' response parser with a JSON
fallback), ``openai`` (the ``tools`` / ``tool_calls`` fields on the wire), and
``compact`` staying the default.

Templates: the tiny policy's ChatML (no tool syntax of its own), a Qwen2.5-style
template written out below (tools in the system turn, ``<tool_call>`` calls, answers as
``<tool_response>`` in a user turn), and SmolLM2-135M-Instruct's own where it is
fetched. The OpenAI wire is an ``httpx2.MockTransport`` that records every body.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from recording import recording_weak_policy
from transformers import AutoTokenizer

from runtime.app.config import load_config
from runtime.core.errors import ConfigError
from runtime.core.types import Episode, Node, Task, path_pieces
from runtime.policy.base import GenerationRequest
from runtime.policy.checkpoints import model_cache
from runtime.policy.continuation import ChatTemplate
from runtime.policy.openai_compatible import OpenAIPolicy
from runtime.policy.openai_tools import call_text
from runtime.policy.scripted import ScriptedPolicy
from runtime.rewards.base import VerifierEnv
from runtime.rewards.tool_call import ToolCallVerifier
from runtime.search.context import Context, Sampling, Verifiers
from runtime.tiny.policy_format import WEAK_POLICY
from runtime.tools import CalculatorEnvironment, ChatTemplateFormat, OpenAIFormat
from runtime.tools.base import ToolOutput
from runtime.tools.formats import read_json_call
from strategies.chain_of_thought import ChainOfThought
from strategies.verify_backtrack import VerifyAndBacktrack

pytestmark = pytest.mark.anyio

TASK = Task(id="t", prompt="What is 6*7?", answer="42")
QWEN_STYLE = (Path(__file__).parent / "data" / "qwen_style_tools.jinja").read_text(encoding="utf-8")
"""Qwen2.5's tool-calling chat template (its structure and wording, whitespace-controlled)."""


@pytest.fixture(scope="module")
def chatml() -> Any:
    """The tiny policy's tokenizer: plain ChatML, no tool syntax, tools ignored."""
    return AutoTokenizer.from_pretrained(WEAK_POLICY)


@pytest.fixture(scope="module")
def qwen() -> Any:
    tokenizer = AutoTokenizer.from_pretrained(WEAK_POLICY)
    tokenizer.chat_template = QWEN_STYLE
    return tokenizer


def context(script: Any, env: Any, **verifiers: Any) -> Context:
    return Context(
        Episode(run_id="r", task=TASK),
        ScriptedPolicy(script),
        Verifiers(environment=env, **verifiers),
        Sampling(temperature=0.0, max_steps=12),
    )


def render(tokenizer: Any, messages: list[dict[str, Any]], **extra: Any) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra))


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# -- the syntax, read off the template -----------------------------------------------------


def test_the_call_syntax_and_tool_turn_are_read_off_the_template(qwen: Any, chatml: Any) -> None:
    s = ChatTemplateFormat.of(qwen).syntax()
    assert (s.open, s.close, s.from_template, s.renders_tools) == ("<tool_call>\n", "\n</tool_call>", True, True)
    assert s.observation_before == "<|im_end|>\n<|im_start|>user\n<tool_response>\n"
    assert s.observation_after == "\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    plain = ChatTemplateFormat.of(chatml).syntax()  # writes no calls: Hermes's markers, its own tool role
    assert (plain.open, plain.close, plain.from_template, plain.renders_tools) == (
        "<tool_call>", "</tool_call>", False, False)  # fmt: skip
    assert plain.observation_before == "<|im_end|>\n<|im_start|>tool\n"
    assert ChatTemplateFormat.of(qwen).call_text("calc", {"expression": "6*7"}) == (
        '<tool_call>{"name": "calc", "arguments": {"expression": "6*7"}}</tool_call>')  # fmt: skip
    kept = ChatTemplateFormat.of(qwen, one_line=False).call_text("calc", {"expression": "6*7"})
    assert kept == '<tool_call>\n{"name": "calc", "arguments": {"expression": "6*7"}}\n</tool_call>'


# -- parsing -----------------------------------------------------------------------------


def test_well_formed_calls_parse_one_line_multi_line_and_as_the_template_renders_them(qwen: Any) -> None:
    env = CalculatorEnvironment(format=ChatTemplateFormat.of(qwen))
    call = {"type": "function", "function": {"name": "calc", "arguments": {"expression": "12*7"}}}
    conversation = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    rendered = str(qwen.apply_chat_template(conversation, tokenize=False))
    as_template = rendered.split("<|im_start|>assistant\n", 1)[1].split("<|im_end|>", 1)[0]
    assert as_template.count("\n") == 2  # the template's own call spans three lines
    for text in [
        '<tool_call>{"name": "calc", "arguments": {"expression": "12*7"}}</tool_call>',
        as_template,
        'Let me compute. <tool_call>{"name": "calc", "arguments": "{\\"expression\\": \\"12*7\\"}"}</tool_call>',
    ]:
        parsed = env.parse(text)
        assert parsed is not None and parsed.error is None, text
        assert (parsed.name, parsed.arguments, parsed.text) == ("calc", {"expression": "12*7"}, text)
        assert env.check(parsed) is None
    assert env.parse("4*5=20, leaving 3+20-6") is None and env.parse("call: calc(6*7)") is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('<tool_call>{"name": "calc", "arguments": {"expression": "1+2"}}', "unclosed"),
        ('<tool_call>{"name": "calc", "arguments": {"expression": "1+2"}</tool_call>', "not JSON"),
        ("<tool_call>{'name': 'calc'}</tool_call>", "not JSON"),
        ('<tool_call>{"arguments": {"expression": "1"}}</tool_call>', "names no tool"),
        ('<tool_call>{"name": "calc", "arguments": [1, 2]}</tool_call>', "not a JSON object"),
        ('<tool_call>{"name": "calc", "arguments": "1+2"}</tool_call>', "not JSON"),
        ("<tool_call>[1, 2]</tool_call>", "a call is a JSON object"),
        ('<tool_call>{"name": "calc", "arguments": {}}</tool_call><tool_call>{"name": "x"}</tool_call>', "one call"),
        ('<tool_call>{"name": "calc", "arguments": {"expression": 12}}</tool_call>', "must be string"),
        ('<tool_call>{"name": "sqrt", "arguments": {"x": 2}}</tool_call>', "unknown tool"),
    ],
)
def test_a_malformed_call_is_a_call_whose_check_names_the_problem(qwen: Any, text: str, why: str) -> None:
    env = CalculatorEnvironment(format=ChatTemplateFormat.of(qwen))
    parsed = env.parse(text)
    assert parsed is not None, text
    problem = env.check(parsed)
    assert problem is not None and why in problem, problem


def test_parsing_goes_through_transformers_response_parser(chatml: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer = AutoTokenizer.from_pretrained(WEAK_POLICY)  # a tokenizer that declares its own reply syntax
    tokenizer.response_template = {
        "start_anchor": "<|im_start|>assistant\n",
        "fields": {
            "content": {"content": "text"},
            "tool_calls": {"open_pattern": r"<function=(?P<name>[\w.-]+)>", "close": "</function>",
                           "repeats": True, "content": "json",
                           "transform": {"type": "function", "function": {"name": "{name}", "arguments": "{content}"}}},
        },
    }  # fmt: skip
    env = CalculatorEnvironment(format=ChatTemplateFormat.of(tokenizer))
    text = '<function=calc>{"expression": "2+3"}</function>'
    assert read_json_call(text, "<tool_call>", "</tool_call>") is None  # the JSON reader cannot read it
    parsed = env.parse(text)
    assert parsed is not None and (parsed.name, parsed.arguments, parsed.error) == ("calc", {"expression": "2+3"}, None)

    # where transformers' parser fails, the JSON reader still reads a well-formed call
    import transformers.utils.chat_parsing as chat_parsing

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("parser unavailable")

    monkeypatch.setattr(chat_parsing, "parse_response", broken)
    fallback = CalculatorEnvironment(format=ChatTemplateFormat.of(chatml)).parse(
        '<tool_call>{"name": "calc", "arguments": {"expression": "2+3"}}</tool_call>'
    )
    assert fallback is not None and (fallback.name, fallback.arguments, fallback.error) == (
        "calc", {"expression": "2+3"}, None)  # fmt: skip


# -- the prompt --------------------------------------------------------------------------


def test_the_prompt_offers_the_tools_through_the_template_or_a_system_message(qwen: Any, chatml: Any) -> None:
    env = CalculatorEnvironment(format=ChatTemplateFormat.of(qwen))
    messages, tools = env.prompt(TASK.as_messages())
    assert messages == TASK.as_messages() and tools == [env.specs()["calc"].schema]
    rendered = ChatTemplate(qwen).text(messages, tools)  # completion mode's renderer, as the engines'
    assert '"name": "calc"' in rendered and "# Tools" in rendered
    assert "# Tools" not in ChatTemplate(qwen).text(messages)

    plain = CalculatorEnvironment(format=ChatTemplateFormat.of(chatml))
    messages, tools = plain.prompt(TASK.as_messages())
    assert tools is None and [m["role"] for m in messages] == ["system", "user"]
    assert '"name": "calc"' in messages[0]["content"] and "<tool_call>" in messages[0]["content"]
    quiet = CalculatorEnvironment(format=ChatTemplateFormat.of(chatml, describe_tools=False))
    assert quiet.prompt(TASK.as_messages()) == (TASK.as_messages(), None)


def test_compact_stays_the_default_and_offers_no_tools() -> None:
    env = CalculatorEnvironment()
    assert env.format.name == "compact"
    assert env.prompt(TASK.as_messages()) == (TASK.as_messages(), None)
    assert env.assistant_messages([Node(id=1, parent=0, depth=1, text="call: calc(6*7)", kind="call")], "\n") is None


async def test_a_compact_episode_sends_no_tools() -> None:
    seen: list[GenerationRequest] = []

    def script(request: GenerationRequest, i: int) -> str:
        seen.append(request)
        return "call: calc(6*7)" if not request.assistant_prefix else "Answer: 42"

    ep = await ChainOfThought().run(context(script, CalculatorEnvironment()))
    assert [n.text for n in ep.nodes[1:]] == ["call: calc(6*7)", "= 42", "Answer: 42"]
    assert [(r.tools, r.assistant_messages) for r in seen] == [(None, None), (None, None)]


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["qwen", "chatml"])
async def test_a_call_is_parsed_run_and_answered_in_the_templates_own_tool_turn(
    template: str, qwen: Any, chatml: Any
) -> None:
    tokenizer = {"qwen": qwen, "chatml": chatml}[template]
    fmt = ChatTemplateFormat.of(tokenizer)
    env = CalculatorEnvironment(format=fmt)
    call = fmt.call_text("calc", {"expression": "6*7"})
    seen: list[GenerationRequest] = []

    def script(request: GenerationRequest, i: int) -> str:
        seen.append(request)
        return call if not request.assistant_prefix else "Answer: 42"

    ctx = context(script, env)
    ep = await ChainOfThought().run(ctx)
    assert [n.kind for n in ep.nodes[1:]] == ["call", "observation", "step"]
    assert ep.nodes[1].meta["call"] == {"name": "calc", "arguments": {"expression": "6*7"}}
    assert ctx.turns is not None and ctx.turns.executions == 1 and ep.final_answer == "42"
    obs = ep.nodes[2]
    assert not obs.trained and "42" in obs.text and not obs.text.endswith("\n")

    # what the engine is fed after the observation is the template's own rendering of
    # the conversation: the assistant wrote the call, the tool answered 42
    messages, tools = seen[1].messages or [], seen[1].tools
    assert (tools is not None) == (template == "qwen")
    extra = {"tools": tools} if tools else {}
    fed = render(tokenizer, messages, **extra) + seen[1].assistant_prefix
    conversation = [*messages, {"role": "assistant", "content": call + "\n"}, {"role": "tool", "content": "42"}]
    assert fed == render(tokenizer, conversation, **extra)
    pieces = path_pieces(ctx.path(obs), "\n")  # as an ids backend and the learner encode the path
    ids = encode(tokenizer, render(tokenizer, messages, **extra))
    for piece in pieces:
        ids += encode(tokenizer, piece.text)
    assert ids == encode(tokenizer, render(tokenizer, conversation, **extra))


async def test_verify_backtrack_rejects_a_malformed_template_call_before_it_runs(qwen: Any) -> None:
    fmt = ChatTemplateFormat.of(qwen)
    env = CalculatorEnvironment(format=fmt)
    verifier = ToolCallVerifier().build(VerifierEnv(environment=env))
    good = fmt.call_text("calc", {"expression": "6*7"})
    script = [good.removesuffix("</tool_call>"), good, "Answer: 42"]
    ctx = context(script, env, process=verifier)
    ep = await VerifyAndBacktrack(step_retries=4).run(ctx)
    calls = [n for n in ep.nodes if n.kind == "call"]
    assert [c.meta.get("accepted", False) for c in calls] == [False, True]
    assert "unclosed" in calls[0].meta["call"]["malformed"] and not calls[0].children
    assert ctx.turns is not None and ctx.turns.executions == 1 and ep.final_answer == "42"


@pytest.fixture
async def local_policy(chatml: Any) -> AsyncIterator[Any]:
    policy = recording_weak_policy(chatml, max_batch=2)
    async with policy:
        yield policy


async def test_the_local_engine_is_fed_the_templates_ids_for_the_tool_turn(local_policy: Any, chatml: Any) -> None:
    fmt = ChatTemplateFormat.of(chatml, describe_tools=False)  # the schemas would not fit its 512-token context
    env = CalculatorEnvironment(format=fmt)
    sampling = Sampling(temperature=0.0, max_steps=8, step_max_tokens=12)
    ctx = Context(Episode(run_id="r", task=TASK), local_policy, Verifiers(environment=env), sampling)
    (step,) = await ctx.expand(ctx.root)  # sampled by the engine: ids kept
    call = ctx.fork(step, fmt.call_text("calc", {"expression": "6*7"}))  # a call as a strategy writes one
    assert call.kind == "call" and step.token_ids
    (after,) = await ctx.expand(call)
    obs = ctx.node(after.parent or 0)
    assert obs.kind == "observation" and "42" in obs.text
    messages, _ = env.prompt(TASK.as_messages())
    prompt = encode(chatml, render(chatml, messages))
    sent: list[list[int]] = local_policy.sent
    assert sent[0] == prompt
    tail = "\n" if step.stop_reason is None else ""
    steps = step.token_ids + encode(chatml, tail + call.text + "\n")
    assert sent[1] == prompt + steps + encode(chatml, obs.text + "\n")
    turn = render(chatml, [*messages, {"role": "assistant", "content": "x"}, {"role": "tool", "content": "42"}])
    turn_ids = encode(chatml, turn[turn.index("x") + 1 :])
    assert sent[1][-len(turn_ids) :] == turn_ids  # the tool turn's ids are the template's own


def smollm2() -> Path:
    path = model_cache() / "smollm2-135m"
    if not (path / "tokenizer.json").is_file():
        pytest.skip("smollm2-135m is not fetched (run `searchlearn fetch smollm2-135m`): its template is not tested")
    return path


async def test_smollm2_runs_the_calculator_in_its_own_templates_tool_turn() -> None:
    smollm2()
    env = CalculatorEnvironment(format={"name": "chat_template", "tokenizer": "smollm2-135m"})
    fmt: ChatTemplateFormat = env.format
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2()))
    assert fmt.syntax().observation_before == "<|im_end|>\n<|im_start|>tool\n" and not fmt.syntax().renders_tools
    call = fmt.call_text("calc", {"expression": "123*45"})
    seen: list[GenerationRequest] = []

    def script(request: GenerationRequest, i: int) -> str:
        seen.append(request)
        return call if not request.assistant_prefix else "Answer: 5535"

    ep = await ChainOfThought().run(context(script, env))
    assert [n.kind for n in ep.nodes[1:]] == ["call", "observation", "step"] and "5535" in ep.nodes[2].text
    messages = seen[1].messages or []
    assert messages[0]["role"] == "system" and '"name": "calc"' in messages[0]["content"]
    conversation = [*messages, {"role": "assistant", "content": call + "\n"}, {"role": "tool", "content": "5535"}]
    assert render(tokenizer, messages) + seen[1].assistant_prefix == render(tokenizer, conversation)


def test_a_config_names_the_format_and_its_tokenizer(tmp_path: Path) -> None:
    base = {"policy": {"kind": "scripted", "script": ["Answer: 1"]}, "tasks": {"source": "tiny", "size": 1}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(base | {"environment": {
        "name": "calculator", "format": {"name": "chat_template", "tokenizer": "bundled-weak"}}}))  # fmt: skip
    env = load_config(path).environment
    assert env is not None and isinstance(env.format, ChatTemplateFormat) and env.format.tokenizer == "bundled-weak"
    assert env.format.syntax().observation_before == "<|im_end|>\n<|im_start|>tool\n"
    path.write_text(yaml.safe_dump(base | {"environment": {
        "name": "calculator", "format": {"name": "chat_template", "tokenizer": str(tmp_path / "none")}}}))  # fmt: skip
    with pytest.raises(ConfigError, match="tokenizer"):
        load_config(path)


# -- the OpenAI tool protocol on the wire ----------------------------------------------------


def reply(message: dict[str, Any], finish: str = "stop") -> httpx2.Response:
    body = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", **message}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}  # fmt: skip
    return httpx2.Response(200, json=body)


def tool_call(arguments: str, name: str = "calc", id_: str = "call_srv") -> dict[str, Any]:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}


def wire(replies: list[httpx2.Response]) -> tuple[httpx2.MockTransport, list[dict[str, Any]]]:
    bodies: list[dict[str, Any]] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        bodies.append(json.loads(request.content))
        return replies[len(bodies) - 1]

    return httpx2.MockTransport(handle), bodies


async def run_openai(replies: list[httpx2.Response], server: str = "openai") -> tuple[Episode, list[dict[str, Any]]]:
    transport, bodies = wire(replies)
    env = CalculatorEnvironment(format=OpenAIFormat())
    policy = OpenAIPolicy("m", base_url="http://fake/v1", transport=transport, server=server)  # type: ignore[arg-type]
    async with policy:
        ctx = Context(Episode(run_id="r", task=TASK), policy, Verifiers(environment=env), Sampling(max_steps=8))
        ep = await ChainOfThought().run(ctx)
    return ep, bodies


async def test_openai_tools_go_out_and_tool_calls_come_back_as_call_nodes() -> None:
    ep, bodies = await run_openai([
        reply({"content": None, "tool_calls": [tool_call('{"expression": "6*7"}')]}, "tool_calls"),
        reply({"content": "6*7 is 42.\nAnswer: 42"}),
        reply({"content": "Answer: 42"}),
    ])  # fmt: skip
    schema = CalculatorEnvironment().specs()["calc"].schema
    assert all(b["tools"] == [schema] for b in bodies) and all("stop" not in b for b in bodies)
    assert [n.kind for n in ep.nodes[1:]] == ["call", "observation", "step", "step"]
    call, obs = ep.nodes[1], ep.nodes[2]
    assert call.text == call_text("calc", {"expression": "6*7"})
    assert call.meta["call"]["arguments"] == {"expression": "6*7"}
    assert obs.text == "42" and ep.nodes[3].text == "6*7 is 42."  # a text reply is cut at the step here
    assert ep.final_answer == "42"
    question = {"role": "user", "content": TASK.prompt}
    sent_call = {"id": "call_1", "type": "function", "function": {"name": "calc", "arguments": '{"expression": "6*7"}'}}
    assistant = {"role": "assistant", "content": None, "tool_calls": [sent_call]}
    answer = {"role": "tool", "tool_call_id": "call_1", "content": "42"}
    assert bodies[0]["messages"] == [question]
    assert bodies[1]["messages"] == [question, assistant, answer]  # the observation as a tool message
    # OpenAI cannot continue an assistant message: the text since the answer is shown after it
    assert bodies[2]["messages"][:3] == [question, assistant, answer]
    assert bodies[2]["messages"][3]["role"] == "user" and "6*7 is 42." in bodies[2]["messages"][3]["content"]


async def test_a_server_that_continues_gets_the_text_since_the_answer_as_the_final_assistant_message() -> None:
    ep, bodies = await run_openai([
        reply({"content": "First the product.", "tool_calls": [tool_call('{"expression": "6*7"}'),
                                                               tool_call('{"expression": "1"}', id_="b")]}),
        reply({"content": "So it is 42."}),
        reply({"content": "Answer: 42"}),
    ], server="vllm")  # fmt: skip
    call = ep.nodes[1]
    assert call.kind == "call" and call.text.startswith("First the product. <tool_call>")  # the first call kept
    messages = bodies[2]["messages"]
    sent_call = {"id": "call_1", "type": "function", "function": {"name": "calc", "arguments": '{"expression": "6*7"}'}}
    assert messages[1] == {"role": "assistant", "content": "First the product.", "tool_calls": [sent_call]}
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": "42"}
    assert messages[3] == {"role": "assistant", "content": "So it is 42.\n"}
    assert bodies[2]["continue_final_message"] is True


async def test_malformed_tool_call_arguments_are_answered_with_the_error_and_sent_back_as_given() -> None:
    ep, bodies = await run_openai([
        reply({"content": None, "tool_calls": [tool_call('{"expression": 6*7')]}, "tool_calls"),
        reply({"content": "Answer: 42"}),
    ])  # fmt: skip
    call, obs = ep.nodes[1], ep.nodes[2]
    assert call.kind == "call" and "not JSON" in call.meta["call"]["malformed"]
    assert obs.text.startswith("error: ") and "execution" not in obs.meta  # nothing ran
    sent_call, sent_answer = bodies[1]["messages"][1:3]
    assert sent_call["tool_calls"][0]["function"]["arguments"] == '{"expression": 6*7'
    assert sent_answer == {"role": "tool", "tool_call_id": "call_1", "content": obs.text}


def test_openai_format_reads_what_the_backend_writes() -> None:
    fmt = OpenAIFormat()
    text = call_text("calc", '{"expression": "2+3"}', content="Let me\nsee.")
    assert text == 'Let me see. <tool_call>{"name": "calc", "arguments": {"expression": "2+3"}}</tool_call>'
    parsed = fmt.parse(text, {"calc": ["expression"]})
    assert parsed is not None and (parsed.name, parsed.arguments, parsed.error) == ("calc", {"expression": "2+3"}, None)
    assert fmt.parse("Answer: 5", {}) is None
    assert fmt.observation(ToolOutput("5")) == "5" and fmt.observation(ToolOutput("", "boom")) == "error: boom"
    plain = [Node(id=1, parent=0, depth=1, text="a step")]
    assert fmt.assistant_messages(plain, "\n") is None  # no tool turn: the path goes as text
    assert fmt.prompt([{"role": "user", "content": "q"}], []) == ([{"role": "user", "content": "q"}], None)
