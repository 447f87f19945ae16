"""How the OpenAI-compatible backend continues a step, seen from the server: the bodies
it sends (recorded by tests/fakeserver.py on loopback), and the errors and defaults a
real run meets (issue 23: a server that is down or still loading, n > 1 fan-out, the
verifier timeout of MC-value step scoring)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from fakeserver import FakeServer, free_port, recorded, run, serve

from runtime.app.build import build_verifiers
from runtime.app.config import load_config
from runtime.core.concurrency import gather
from runtime.core.errors import ConfigError, PolicyRequestError, PolicyUnavailable
from runtime.core.types import Episode, Task
from runtime.policy.base import Completion, GenerationRequest, GenerationResult
from runtime.policy.continuation import SOLUTION_SO_FAR, ChatTemplate, first_new_step
from runtime.policy.openai_compatible import OpenAIPolicy
from runtime.policy.scripted import ScriptedPolicy
from runtime.rewards.outcome import ExactMatch
from runtime.scheduling.scheduler import Runtime
from runtime.scheduling.store import EpisodeStore
from runtime.search.context import Context, Sampling, Verifiers, _ended_turn
from runtime.tools.calculator import CalculatorEnvironment
from strategies import BestOfN, ChainOfThought

ROOT = Path(__file__).resolve().parents[1]
QUESTION = [{"role": "user", "content": "Evaluate: 2+3*4"}]
REPLY = "Step one.\nAnswer: 42"


@pytest.fixture(scope="module")
def template() -> ChatTemplate:
    return ChatTemplate.load("bundled")


@pytest.fixture
def recording() -> Iterator[str]:
    with serve(text=REPLY, record=True) as url:
        yield url


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


# -- completion mode: the model's own template ---------------------------------------------


@pytest.mark.anyio
async def test_vllm_completion_prompt_is_template_ids_then_the_parts(recording: str, template: ChatTemplate) -> None:
    parts: list[str | list[int]] = [[301, 302, 303], "\n", [304], "\n"]  # sampled ids stay as they are
    request = GenerationRequest(
        messages=QUESTION, assistant_prefix="x\ny\n", assistant_parts=parts, stop=["\n"], max_tokens=8
    )
    async with OpenAIPolicy("fake", base_url=recording, mode="completion", server="vllm", tokenizer="bundled") as p:
        result = await p.generate(request)
        whole = await p.generate(GenerationRequest(messages=QUESTION, max_tokens=8))  # ends on end-of-sequence
    body = recorded(recording)[0]
    newline = template.encode("\n")
    assert body["prompt"] == template.ids(QUESTION) + [301, 302, 303] + newline + [304] + newline
    assert template.ids(QUESTION) == template.tokenizer.apply_chat_template(
        QUESTION, tokenize=True, add_generation_prompt=True, return_dict=False
    )
    assert body["return_token_ids"] is True and body["return_tokens_as_token_ids"] is True
    assert body["include_stop_str_in_output"] is True and body["logprobs"] == 0
    c = result.completions[0]
    # the step's text stops before the delimiter; its ids hold every sampled token, the stop's too
    assert c.text == "Step one." and c.token_ids == [ord(ch) for ch in "Step one.\n"] and c.stop_reason == "\n"
    assert c.logprobs is None  # not asked for: logprobs 0 only named the ids
    c = whole.completions[0]  # the end-of-sequence id vLLM keeps is dropped, as the local engines do
    assert c.text == REPLY and c.token_ids == [ord(ch) for ch in REPLY] and c.stop_reason is None


@pytest.mark.anyio
async def test_a_step_that_ends_on_the_end_of_sequence_under_a_stop_string_drops_that_id() -> None:
    """A step asked to stop at the delimiter that ends on the end-of-sequence token
    instead: vLLM keeps that id (beside ``include_stop_str_in_output``), the local engine
    does not. Kept, the next call's prompt would hold the end of turn and the model would
    start a new turn after it (measured on SmolLM2 through vLLM's CPU server)."""
    with serve(text="Answer: 42", record=True) as url:
        async with OpenAIPolicy("fake", base_url=url, mode="completion", server="vllm", tokenizer="bundled") as p:
            result = await p.generate(GenerationRequest(messages=QUESTION, stop=["\n"], max_tokens=16))
        assert recorded(url)[0]["include_stop_str_in_output"] is True
    c = result.completions[0]
    assert c.finish_reason == "stop" and c.stop_reason is None
    assert c.text == "Answer: 42" and c.token_ids == [ord(ch) for ch in "Answer: 42"]


@pytest.mark.anyio
async def test_text_server_gets_template_text_and_continuations_are_text_only(
    recording: str, template: ChatTemplate
) -> None:
    async with OpenAIPolicy(
        "fake", base_url=recording, mode="completion", server="transformers", tokenizer="bundled"
    ) as p:
        first = await p.generate(GenerationRequest(messages=QUESTION, stop=["\n"]))
        later = await p.generate(
            GenerationRequest(messages=QUESTION, assistant_prefix="Step one.\n", assistant_parts=[[1, 2]], stop=["\n"])
        )
    bodies = recorded(recording)
    assert (
        bodies[0]["prompt"]
        == template.text(QUESTION)
        == "<|im_start|>user\nEvaluate: 2+3*4<|im_end|>\n<|im_start|>assistant\n"
    )
    assert bodies[1]["prompt"] == template.text(QUESTION) + "Step one.\n"
    assert first.completions[0].text == later.completions[0].text == "Step one."
    assert later.completions[0].token_ids is None


@pytest.mark.anyio
async def test_completion_mode_without_a_template_says_which_field(recording: str) -> None:
    async with OpenAIPolicy("fake", base_url=recording, mode="completion", server="vllm") as p:
        with pytest.raises(ConfigError, match="policy.tokenizer"):
            await p.generate(GenerationRequest(messages=QUESTION))
        raw = await p.generate(GenerationRequest(prompt="2+2=", stop=["\n"]))  # a raw prompt needs none
    assert raw.completions[0].text == "Step one." and recorded(recording)[-1]["prompt"] == "2+2="


# -- chat mode -----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("server", ["vllm", "sglang"])
async def test_chat_continuation_continues_the_final_assistant_message(recording: str, server: str) -> None:
    async with OpenAIPolicy("fake", base_url=recording, mode="chat", server=server) as p:  # type: ignore[arg-type]
        await p.generate(GenerationRequest(messages=QUESTION, assistant_prefix="Step one.\n", stop=["\n"]))
    body = recorded(recording)[-1]
    assert body["messages"] == [*QUESTION, {"role": "assistant", "content": "Step one.\n"}]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False


@pytest.mark.anyio
@pytest.mark.parametrize("server", ["openai", "other", "transformers"])
async def test_hosted_chat_shows_the_solution_so_far_and_takes_the_first_new_step(server: str) -> None:
    reply = "\nStep 1: 3*4=12\nStep 2: 2+12=14\nAnswer: 14"  # opens with a newline, restates step 1
    with serve(text=reply, record=True) as url:
        async with OpenAIPolicy("fake", base_url=url, mode="chat", server=server) as p:  # type: ignore[arg-type]
            result = await p.generate(
                GenerationRequest(messages=QUESTION, assistant_prefix="Step 1: 3*4=12\n", stop=["\n"], n=2)
            )
        bodies = recorded(url)
    for body in bodies:
        messages = body["messages"]
        assert [m["role"] for m in messages] == ["user"]  # no assistant turn, no extra user turn
        assert not any(m["content"].strip() == "Continue." for m in messages)
        assert messages[0]["content"] == QUESTION[0]["content"] + "\n\n" + SOLUTION_SO_FAR.format(
            prefix="Step 1: 3*4=12"
        )
        assert "stop" not in body and "continue_final_message" not in body
    assert [c.text for c in result.completions] == ["Step 2: 2+12=14"] * 2
    assert all(c.finish_reason == "stop" and c.token_ids is None for c in result.completions)


def test_first_new_step_skips_blank_lines_and_restated_steps() -> None:
    prefix = "a=1\nb=2\n"
    assert first_new_step("\n\na=1\nb=2\nc=3\nAnswer: 3", prefix, ["\n"]) == ("c=3", True)
    assert first_new_step("c=3", prefix, ["\n"]) == ("c=3", False)
    assert first_new_step(" b=2 \nc=3\n", prefix, ["\n"]) == ("c=3", True)
    assert first_new_step("\nrest of it", prefix, None) == ("rest of it", False)


# -- configuration -------------------------------------------------------------------------


def test_prompt_template_is_refused_naming_policy_tokenizer() -> None:
    with pytest.raises(ConfigError, match=r"policy\.prompt_template: .*was removed.*policy\.tokenizer") as info:
        load_config(ROOT / "configs" / "distill.yaml", ["policy.prompt_template=chatml"])
    assert "got 'chatml'" in str(info.value)
    # a run stored before the removal (and before backends owned their settings) holds the
    # old default and every backend's keys; read back from the store (export, report) it is dropped
    from runtime.app.config import RunConfig
    from runtime.policy.backends import STORED_CONFIG

    old = {"kind": "scripted", "prompt_template": "chatml", "model": "gpt-4o-mini", "path": "bundled"}
    stored = RunConfig.model_validate({"policy": old}, context=STORED_CONFIG)
    assert stored.model_dump()["policy"] == {
        "kind": "scripted",
        "max_concurrency": 64,
        "script": ["Answer: 42"],
        "latency": 0.0,
    }
    assert (
        "prompt_template"
        not in RunConfig.model_validate(
            {"policy": {"kind": "openai", "prompt_template": "chatml"}}, context=STORED_CONFIG
        ).model_dump()["policy"]
    )
    with pytest.raises(ValueError, match="policy.model"):  # anywhere else, a key of another backend is an error
        RunConfig.model_validate({"policy": old})


def test_completion_mode_needs_a_tokenizer_unless_the_model_is_a_directory() -> None:
    with pytest.raises(ConfigError, match=r"^policy\.tokenizer: completion mode"):
        load_config(ROOT / "configs" / "distill.yaml", ["policy.tokenizer=null", "policy.model=tiny"])
    config = load_config(ROOT / "configs" / "distill.yaml")
    assert config.policy.tokenizer == "bundled"
    with pytest.raises(ConfigError, match="no chat template|neither a checkpoint name"):
        OpenAIPolicy("m", mode="completion", tokenizer=str(ROOT / "configs"))


def test_distill_waits_for_its_server_within_the_episode_deadline() -> None:
    config = load_config(ROOT / "configs" / "distill.yaml")
    deadline = config.scheduler.episode_timeout
    assert deadline is not None and 0 < config.policy.wait_ready < deadline
    with pytest.raises(ConfigError, match=r"policy\.wait_ready: .*scheduler\.episode_timeout \(300 s\)"):
        load_config(ROOT / "configs" / "distill.yaml", ["policy.wait_ready=300"])


def test_verifier_timeout_scales_with_mc_rollouts() -> None:
    base = ["policy.kind=scripted", "verifiers.outcome=exact"]
    plain = load_config(None, base)
    assert plain.verifiers.call_timeout() == 30.0
    mc = load_config(None, [*base, "verifiers.process={name: mc_value, rollouts: 8, max_tokens: 256}"])
    assert mc.verifiers.call_timeout() == 30.0 + 8 * 256 / 4.0  # 542 s: minutes of CPU sampling fit
    policy = ScriptedPolicy(["Answer: 42"])
    assert build_verifiers(mc, policy).timeout == mc.verifiers.call_timeout()
    fixed = load_config(None, [*base, "verifiers.process=mc_value", "verifiers.timeout=45"])
    assert build_verifiers(fixed, policy).timeout == 45


# -- errors a real run meets ----------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("server", ["transformers", "openai"])
async def test_n_over_one_against_a_down_server_names_the_connection_error(server: str) -> None:
    p = OpenAIPolicy(
        "m",
        base_url=f"http://127.0.0.1:{closed_port()}/v1",
        server=server,  # type: ignore[arg-type]
        retry_attempts=2,
        retry_initial=0.01,
        retry_max_wait=0.02,
    )
    async with p:
        with pytest.raises(PolicyUnavailable, match=r"APIConnectionError after 2 attempts.*(refused|connect)"):
            await p.generate(GenerationRequest(messages=QUESTION, n=4))


@pytest.mark.anyio
async def test_a_rejected_model_name_is_stored_as_the_servers_message(tmp_path: Path) -> None:
    tasks = [{"id": str(i), "prompt": "q", "answer": "42"} for i in range(3)]
    store = str(tmp_path / "s.db")
    with serve(text=REPLY, served_model="served") as url:
        for server in ("openai", "transformers"):  # one request with n, or n single calls
            p = OpenAIPolicy("wrong-name", base_url=url, server=server)  # type: ignore[arg-type]
            async with (
                p,
                Runtime(
                    p,
                    BestOfN(n=4),
                    verifiers=Verifiers(outcome=ExactMatch()),
                    sampling=Sampling(),
                    store=store,
                    run_id=server,
                ) as rt,
            ):
                episodes = [ep async for ep in rt.stream(tasks)]
            assert len(episodes) == 3
            for ep in episodes:
                assert ep.status == "failed" and ep.errors[0].type == "PolicyRequestError", ep.errors
                assert "HTTP 404" in ep.errors[0].message and "does not exist" in ep.errors[0].message
                assert "ExceptionGroup" not in ep.errors[0].message
    with EpisodeStore(store) as st:
        assert st.summary("transformers")["failures"] == {"PolicyRequestError": 3}
    from typer.testing import CliRunner

    from runtime.app.cli import app

    shown = CliRunner().invoke(app, ["show", "transformers", "--store", store])
    assert shown.exit_code == 0 and "PolicyRequestError" in shown.output and "ExceptionGroup" not in shown.output


@pytest.mark.anyio
async def test_wait_ready_waits_for_a_server_that_comes_up_late() -> None:
    port = free_port()
    p = OpenAIPolicy("fake", base_url=f"http://127.0.0.1:{port}/v1", wait_ready=20, retry_attempts=1)

    async def late_server() -> None:
        await anyio.sleep(1.0)
        await run("127.0.0.1", port, FakeServer(text=REPLY))

    started = time.monotonic()
    async with p, anyio.create_task_group() as tg:
        tg.start_soon(late_server)
        request = GenerationRequest(messages=QUESTION)
        results = await gather([p.generate(request), p.generate(request)])  # both wait for one check
        tg.cancel_scope.cancel()
    assert time.monotonic() - started >= 1.0
    assert [r.completions[0].text for r in results] == [REPLY, REPLY]  # retry_attempts=1: no retry hid a failure


@pytest.mark.anyio
async def test_wait_ready_gives_up_with_one_message() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    async with OpenAIPolicy("fake", base_url=url, wait_ready=0.6) as p:
        started = time.monotonic()
        with pytest.raises(PolicyUnavailable, match=r"not ready after waiting 0.6 s \(policy.wait_ready\)"):
            await p.generate(GenerationRequest(messages=QUESTION))
        assert 0.6 <= time.monotonic() - started < 5
        started = time.monotonic()
        with pytest.raises(PolicyUnavailable, match="not ready"):  # later calls: at once, the same message
            await p.generate(GenerationRequest(messages=QUESTION))
        assert time.monotonic() - started < 0.1


def test_request_error_for_n_is_not_any_letter_n() -> None:
    from runtime.policy.admission import _N_PARAMETER

    assert _N_PARAMETER.search("HTTP 400: {'message': 'n must be 1'}")
    assert _N_PARAMETER.search("HTTP 400: {'param': 'n', 'message': 'Unsupported value'}")
    assert not _N_PARAMETER.search("HTTP 404: {'message': 'The model `x` does not exist.'}")
    assert issubclass(PolicyRequestError, Exception)


@pytest.mark.anyio
async def test_a_step_that_stops_at_once_is_asked_again_past_the_blank_line(template: ChatTemplate) -> None:
    prompts: list[Any] = []

    def respond(request: httpx2.Request) -> httpx2.Response:
        prompt = json.loads(request.content)["prompt"]
        prompts.append(prompt)
        # the model ended step one with a blank line: after a single newline it writes the
        # other (the stop string kept in the text, as transformers serve keeps it)
        text = "Step two.\n" if isinstance(prompt, str) and prompt.endswith("\n\n") else "\n"
        choice = {"index": 0, "text": text, "finish_reason": "stop"}
        return httpx2.Response(200, json={"choices": [choice], "usage": {"prompt_tokens": 9, "completion_tokens": 2}})

    request = GenerationRequest(messages=QUESTION, assistant_prefix="Step one.\n", stop=["\n"])
    default = OpenAIPolicy(  # off by default: an immediate stop ends the step, as on the local engine
        "m", base_url="http://blank-line/v1", mode="completion", server="transformers", tokenizer="bundled",
        transport=httpx2.MockTransport(respond),
    )  # fmt: skip
    async with default:
        result = await default.generate(request)
    assert result.completions[0].text == "" and len(prompts) == 1
    prompts.clear()
    text_server = OpenAIPolicy(
        "m", base_url="http://blank-line/v1", mode="completion", server="transformers", tokenizer="bundled",
        transport=httpx2.MockTransport(respond), blank_line_retry=True,
    )  # fmt: skip
    async with text_server:
        result = await text_server.generate(request)
    assert result.completions[0].text == "Step two."
    assert prompts == [template.text(QUESTION) + "Step one.\n", template.text(QUESTION) + "Step one.\n\n"]
    assert (result.prompt_tokens, result.completion_tokens) == (18, 4)  # both calls counted

    prompts.clear()  # sent as the sampled ids, the prompt ends where the model's tokens did: no retry
    ids_server = OpenAIPolicy(
        "m", base_url="http://blank-line/v1", mode="completion", server="vllm", tokenizer="bundled",
        transport=httpx2.MockTransport(respond), blank_line_retry=True,
    )  # fmt: skip
    async with ids_server:
        result = await ids_server.generate(request)
    assert len(prompts) == 1 and isinstance(prompts[0], list) and result.completions[0].text == ""


@pytest.mark.anyio
async def test_mc_value_step_scores_finish_under_the_scaled_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's verifier timeout, end to end: rollouts that take longer than the flat
    default fail their step scores under it, and fit the default scaled to their tokens
    (the constants shrunk so the test takes a second, not minutes)."""
    import runtime.app.config as config_module
    from runtime.app.build import build_runtime

    monkeypatch.setattr(config_module, "DEFAULT_VERIFIER_TIMEOUT", 0.05)
    monkeypatch.setattr(config_module, "VERIFIER_TOKENS_PER_S", 100.0)  # 0.05 s + 2 x 16 / 100 = 0.37 s
    tasks = [{"id": str(i), "prompt": "q", "answer": "42"} for i in range(2)]
    outcomes = {}
    for name, timeout in (("scaled", None), ("flat", 0.05)):
        config = load_config(
            None,
            [
                "policy.kind=scripted",
                'policy.script=["Step one.\\nAnswer: 42"]',  # a YAML newline: two steps
                "policy.latency=0.15",  # each rollout call: longer than the flat 0.05 s
                "strategy={name: best_of_n, n: 2, selection: process}",
                "verifiers.process={name: mc_value, rollouts: 2, max_tokens: 16}",
                "verifiers.answer_patterns=[answer_line]",
                f"verifiers.timeout={'null' if timeout is None else timeout}",
                f"store.path={tmp_path / 's.db'}",
                f"run_id={name}",
            ],
        )
        async with build_runtime(config) as rt:
            outcomes[name] = [ep async for ep in rt.stream(tasks)]
    assert all(ep.status == "ok" and ep.reward == 1.0 for ep in outcomes["scaled"]), [
        ep.errors for ep in outcomes["scaled"]
    ]
    assert all(any("timed out" in e.message for e in ep.errors) for ep in outcomes["flat"])


@pytest.mark.anyio
async def test_chain_of_thought_reaches_the_answer_with_a_model_that_restarts(tmp_path: Path) -> None:
    """A hosted chat model asked to continue writes its whole solution again (what
    SmolLM2 did after a "Continue." turn); shown the solution so far, each step call still
    takes the next new step, and the episode reaches the answer."""
    solution = "Step 1: 3*4=12\nStep 2: 2+12=14\nAnswer: 14"
    seen: list[list[dict[str, str]]] = []

    def respond(request: httpx2.Request) -> httpx2.Response:
        messages = json.loads(request.content)["messages"]
        seen.append(messages)
        message = {"role": "assistant", "content": solution}  # always from the start; stop not honoured
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return httpx2.Response(200, json={"choices": [choice], "usage": {"prompt_tokens": 9, "completion_tokens": 9}})

    policy = OpenAIPolicy("m", base_url="http://restarts/v1", transport=httpx2.MockTransport(respond))
    task = {"id": "t", "prompt": QUESTION[0]["content"], "answer": "14"}
    async with (
        policy,
        Runtime(
            policy,
            ChainOfThought(),
            verifiers=Verifiers(outcome=ExactMatch()),
            sampling=Sampling(),
            store=str(tmp_path / "s.db"),
            run_id="restarts",
        ) as rt,
    ):
        (episode,) = [ep async for ep in rt.stream([task])]
    assert episode.steps == ["Step 1: 3*4=12", "Step 2: 2+12=14", "Answer: 14"]
    assert episode.reward == 1.0 and episode.usage.calls == 3
    assert all([m["role"] for m in messages] == ["user"] for messages in seen)


class _EndsItsTurn:
    """A policy whose first step ends on the delimiter and every later one on the end of
    turn (no answer line), with ids (``ids``) or as a text-only backend."""

    def __init__(self, later: str, ids: bool = True) -> None:
        self.later, self.ids, self.calls = later, ids, 0

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        first = self.calls == 0
        self.calls += 1
        text = "Step one." if first else self.later
        completion = Completion(
            text=text,
            token_ids=[ord(ch) for ch in text + ("\n" if first else "")] if self.ids else None,
            finish_reason="stop",
            stop_reason="\n" if first and self.ids else None,
        )
        return GenerationResult([completion] * request.n, prompt_tokens=1, completion_tokens=1)


@pytest.mark.anyio
async def test_a_step_that_ends_the_turn_ends_the_path_without_another_call(tmp_path: Path) -> None:
    """A step whose sampling ended on the end of turn (ids, no stop string) is the path's
    last: no call asks for a step after the end of the message. A text-only backend
    cannot tell the end of turn from the delimiter and goes on; a tool call that ends
    the turn waits for its observation."""
    outcome = {}
    for name, ids in (("ids", True), ("text", False)):
        policy = _EndsItsTurn("The total is fourteen.", ids=ids)
        async with Runtime(
            policy, ChainOfThought(), verifiers=Verifiers(outcome=ExactMatch()), sampling=Sampling(max_steps=4),
            store=str(tmp_path / f"{name}.db"), run_id=name,
        ) as rt:  # fmt: skip
            (episode,) = [ep async for ep in rt.stream([{"id": "t", "prompt": "q", "answer": "14"}])]
        outcome[name] = (episode.steps, policy.calls)
    assert outcome["ids"] == (["Step one.", "The total is fourteen."], 2)
    assert outcome["text"][1] == 4  # to max_steps: every later step looks like one more line

    env = CalculatorEnvironment()
    ctx = Context(Episode(run_id="r", task=Task(id="t", prompt="q")), _EndsItsTurn("call: calc(2+3)"),
                  Verifiers(environment=env), Sampling())  # fmt: skip
    (step,) = await ctx.expand(ctx.root)
    (call,) = await ctx.expand(step)
    assert call.kind == "call" and call.stop_reason is None and not call.terminal
    (after,) = await ctx.expand(call)  # the call runs; the model's next turn follows its answer
    assert ctx.episode.nodes[after.parent].kind == "observation"


@pytest.mark.anyio
async def test_transformers_serve_keeps_its_stop_string_so_a_reply_without_one_ended_the_turn() -> None:
    """``transformers serve`` writes the stop string it stopped on into the text (checked
    on SmolLM2: ``"The three colors are:\\n"`` under ``stop: ["\\n"]``); a step without it
    ended on the end of turn, which ends the path as it does on backends with ids. A
    reply that runs past the delimiter (the server ignored ``stop``) did not."""
    replies = iter(["Step one.\n", "Answer: 5", "a\nb", ""])

    def respond(request: httpx2.Request) -> httpx2.Response:
        choice = {"index": 0, "text": next(replies), "finish_reason": "stop"}
        return httpx2.Response(200, json={"choices": [choice], "usage": {"prompt_tokens": 9, "completion_tokens": 2}})

    request = GenerationRequest(messages=QUESTION, stop=["\n"], max_tokens=16)
    policy = OpenAIPolicy(
        "m", base_url="http://t-serve/v1", mode="completion", server="transformers", tokenizer="bundled",
        transport=httpx2.MockTransport(respond), blank_line_retry=True,
    )  # fmt: skip
    async with policy:
        got = [(await policy.generate(request)).completions[0] for _ in range(4)]
    expected = [("Step one.", False), ("Answer: 5", True), ("a", False), ("", True)]
    assert [(c.text, c.end_of_turn) for c in got] == expected
    assert _ended_turn(got[1]) and not _ended_turn(got[0])  # what the search context reads
