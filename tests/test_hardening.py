"""What a model writes, a server sends or a user types cannot kill, freeze or fool a run:
text at the boundaries, total deadlines, size caps, one budget, secrets, exit status
and logs. Each test reproduces a failure the runtime had before it was hardened."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import structlog
from fakeserver import loopback, serve
from typer.testing import CliRunner

from runtime.app.cli import app
from runtime.app.config import load_config
from runtime.core.errors import ConfigError, PolicyRequestError, PolicyUnavailable, TaskError
from runtime.core.types import Episode, Node, Task
from runtime.policy.base import GenerationRequest
from runtime.policy.limits import EndpointLimits, Price
from runtime.policy.openai_compatible import OpenAIPolicy
from runtime.policy.scripted import ScriptedPolicy
from runtime.rewards.judge import LLMJudge
from runtime.rewards.outcome import ExactMatch
from runtime.scheduling.scheduler import Runtime, SchedulerSettings, fit_episode
from runtime.scheduling.store import EpisodeStore
from runtime.scheduling.tasks import jsonl_tasks, to_task
from runtime.search.context import Sampling, Verifiers
from strategies import ChainOfThought

CONFIGS = Path(__file__).parent.parent / "configs"
runner = CliRunner()


def chat(text: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": usage or {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def mock_policy(respond: Any, **kwargs: Any) -> OpenAIPolicy:
    return OpenAIPolicy(
        "m", base_url=f"http://mock-{id(respond)}/v1", transport=httpx2.MockTransport(respond), **kwargs
    )


# -- text at the boundaries ------------------------------------------------------------


@pytest.mark.anyio
async def test_lone_surrogates_in_completions_and_tasks_are_stored(tmp_path: Path) -> None:
    tasks = [Task(id=f"t\ud800{i}", prompt="q\udfff", answer="1") for i in range(3)]
    policy = ScriptedPolicy(["Think \ud800 hard.", "Answer: 1\udc80"])
    async with Runtime(
        policy, ChainOfThought(), verifiers=Verifiers(outcome=ExactMatch()), store=tmp_path / "s.db"
    ) as rt:
        stored = [ep async for ep in rt.stream(tasks)]
    assert len(stored) == 3 and all(ep.status == "ok" for ep in stored)
    with EpisodeStore(tmp_path / "s.db") as st:
        again = list(st.episodes("default"))
    assert len(again) == 3
    assert all("\ufffd" in ep.task.id and "\ufffd" in ep.nodes[1].text for ep in again)


def test_jsonl_surrogate_escape_non_utf8_and_bad_metadata(tmp_path: Path) -> None:
    good = tmp_path / "s.jsonl"
    good.write_text(json.dumps({"id": "a", "prompt": "x\ud800y"}, ensure_ascii=True) + "\n", encoding="utf-8")
    assert jsonl_tasks(good)[0].prompt == "x\ufffdy"
    bad = tmp_path / "b.jsonl"
    bad.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(TaskError, match=r"b\.jsonl:2: not UTF-8"):
        jsonl_tasks(bad)
    meta = tmp_path / "m.jsonl"
    meta.write_text('{"prompt": "p", "metadata": [1, 2]}\n', encoding="utf-8")
    with pytest.raises(TaskError, match="m.jsonl:1: .*metadata must be an object"):
        jsonl_tasks(meta)


def test_a_jsonl_line_over_the_cap_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("w", encoding="utf-8") as f:
        f.write('{"prompt": "small"}\n')
        f.write(json.dumps({"prompt": "x" * 3_000_000}) + "\n")
    with pytest.raises(TaskError, match=r"big\.jsonl:2: line longer than 1,048,576 bytes"):
        jsonl_tasks(path)
    assert len(jsonl_tasks(path, max_line_bytes=4_000_000)) == 2


@pytest.mark.anyio
async def test_a_huge_completion_is_cut_and_counted(tmp_path: Path) -> None:
    huge = "Answer: 1 " + "y" * 5_000_000
    policy = ScriptedPolicy([huge])
    async with Runtime(
        policy, ChainOfThought(), store=tmp_path / "s.db", sampling=Sampling(max_completion_chars=10_000)
    ) as rt:
        [ep] = [ep async for ep in rt.stream([Task(id="t", prompt="q", answer="1")])]
    assert ep.usage.capped == 1 and rt.stats.capped == 1
    assert max(len(n.text) for n in ep.nodes) <= 10_000
    size = sqlite3.connect(tmp_path / "s.db").execute("SELECT length(data) FROM episodes").fetchone()[0]
    assert size < 50_000


def test_an_oversized_tree_keeps_its_chosen_path() -> None:
    nodes = [Node(id=0, parent=None, depth=0, children=list(range(1, 41)))]
    nodes += [Node(id=i, parent=0, depth=1, text="z" * 100_000, token_ids=list(range(500))) for i in range(1, 41)]
    ep = Episode(run_id="r", task=Task(id="t", prompt="q"), nodes=nodes, chosen_path=[7])
    fit_episode(ep, 1_000_000)
    assert ep.usage.capped == 1
    assert len(ep.nodes[7].text) == 100_000 and ep.nodes[7].token_ids is not None
    assert sum(len(n.text) for n in ep.nodes) < 1_200_000


def test_scripted_policy_with_an_empty_script_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one text"):
        ScriptedPolicy([])
    with pytest.raises(ConfigError, match="policy.script"):
        load_config(None, ["policy.kind=scripted", "policy.script=[]"])


# -- deadlines ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_server_dripping_bytes_cannot_hold_a_request() -> None:
    async def drip(stream: Any) -> None:
        async with stream:
            await stream.receive(65536)
            body = json.dumps(chat("Answer: 1")).encode()
            try:
                await stream.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                await stream.send(b"Content-Length: %d\r\n\r\n" % len(body))
                for byte in body:  # one byte every 0.2 s: every read completes in time
                    await stream.send(bytes([byte]))
                    await anyio.sleep(0.2)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # the client gave up: what the test wants

    async with loopback(drip) as base_url:
        policy = OpenAIPolicy("m", base_url=base_url, timeout=1.0, retry_attempts=2, retry_initial=0.01)
        started = time.monotonic()
        with anyio.fail_after(20):  # before the fix: ~40 s of dripping per attempt
            with pytest.raises(PolicyUnavailable, match="no complete response within 1 s"):
                await policy.generate(GenerationRequest(messages=[{"role": "user", "content": "q"}]))
        assert time.monotonic() - started < 5
        await policy.aclose()


def test_episodes_have_a_deadline_by_default_and_shipped_configs_set_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SchedulerSettings().episode_timeout is not None
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-for-config-loading")
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.scheduler.episode_timeout is not None, path.name
        if cfg.policy.kind == "openai":
            assert cfg.scheduler.episode_timeout <= 900 and cfg.policy.timeout <= 120, path.name


# -- usage, budgets ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_negative_usage_cannot_undercut_the_budget() -> None:
    def respond(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=chat("Answer: 1", {"prompt_tokens": -(10**9), "completion_tokens": -5}))

    policy = mock_policy(respond, price=Price(1000.0, 1000.0))
    result = await policy.generate(GenerationRequest(messages=[{"role": "user", "content": "q" * 400}]))
    assert result.prompt_tokens > 0 and result.completion_tokens > 0 and result.cost > 0
    await policy.aclose()


def judge_endpoint(calls: list[int]) -> Any:
    def respond(request: httpx2.Request) -> httpx2.Response:
        calls.append(1)
        return httpx2.Response(
            200, json=chat("The answer is right. VERDICT: 1", {"prompt_tokens": 1000, "completion_tokens": 1000})
        )

    return respond


@pytest.mark.anyio
async def test_the_judges_spend_is_episode_cost_and_its_budget_stops_admission() -> None:
    calls: list[int] = []
    # $2 per call (1000 + 1000 tokens at $1000/M), budget $7: four calls, then admission stops.
    judge_policy = mock_policy(
        judge_endpoint(calls), price=Price(1000.0, 1000.0), limits=EndpointLimits(budget_usd=7.0)
    )
    judge = LLMJudge(judge_policy)
    tasks = [Task(id=f"t{i}", prompt="q", answer="1") for i in range(40)]
    settings = SchedulerSettings(concurrency=1)
    async with Runtime(
        ScriptedPolicy(["Answer: 1"]), ChainOfThought(), verifiers=Verifiers(outcome=judge), settings=settings
    ) as rt:
        episodes = [ep async for ep in rt.stream(tasks)]
    await judge_policy.aclose()
    ok = [ep for ep in episodes if ep.status == "ok"]
    assert ok and all(ep.usage.cost == pytest.approx(2.0) for ep in ok)
    assert rt.stats.cost == pytest.approx(2.0 * len(ok))
    assert rt.stop_reason is not None and "verifiers.outcome.policy" in rt.stop_reason and "budget" in rt.stop_reason
    assert len(episodes) <= 5 and len(calls) == 4  # not forty episodes failing one by one


@pytest.mark.anyio
async def test_a_run_budget_counts_verifier_spend_and_stored_episodes(tmp_path: Path) -> None:
    calls: list[int] = []
    judge_policy = mock_policy(judge_endpoint(calls), price=Price(1000.0, 1000.0))
    tasks = [Task(id=f"t{i}", prompt="q", answer="1") for i in range(20)]
    settings = SchedulerSettings(concurrency=1, budget_usd=5.0)
    db = tmp_path / "s.db"
    for _ in range(2):  # the resumed run counts what the first one spent
        async with Runtime(
            ScriptedPolicy(["Answer: 1"]),
            ChainOfThought(),
            verifiers=Verifiers(outcome=LLMJudge(judge_policy)),
            settings=settings,
            store=db,
        ) as rt:
            await rt.run(tasks)
        assert rt.stop_reason is not None and rt.stop_reason.startswith("run budget spent")
    await judge_policy.aclose()
    assert len(calls) == 3  # $2 each: 0, 2, 4 < 5 admitted; the resumed run admits nothing


# -- secrets -----------------------------------------------------------------------------

KEY = "sk-live-0123456789abcdefghijklmnop"


@pytest.mark.anyio
async def test_a_key_echoed_in_an_error_body_is_not_stored(tmp_path: Path) -> None:
    def respond(request: httpx2.Request) -> httpx2.Response:
        sent = request.headers["authorization"]
        return httpx2.Response(400, json={"error": {"message": f"bad request from {sent}"}})

    policy = mock_policy(respond, api_key=KEY)
    with pytest.raises(PolicyRequestError):
        await policy.generate(GenerationRequest(messages=[{"role": "user", "content": "q"}]))
    async with Runtime(policy, ChainOfThought(), store=tmp_path / "s.db") as rt:
        [ep] = [ep async for ep in rt.stream([Task(id="t", prompt="q")])]
    assert ep.status == "failed" and "***" in ep.errors[0].message
    assert KEY not in (tmp_path / "s.db").read_bytes().decode("utf-8", "replace")


def test_a_key_in_the_config_is_masked_everywhere(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    cfg = tmp_path / "c.yaml"
    with serve() as base_url:
        cfg.write_text(
            f"run_id: k\npolicy: {{kind: openai, model: fake, base_url: '{base_url}', api_key: {KEY}}}\n"
            f"tasks: {{source: tiny, size: 3}}\nstore: {{path: {db}}}\n",
            encoding="utf-8",
        )
        result = runner.invoke(app, ["run", str(cfg), "--no-progress", "--verbose"])
    assert result.exit_code == 0, result.output
    assert KEY not in result.output
    assert KEY not in db.read_bytes().decode("utf-8", "replace")
    # a key given to a backend without one (the scripted fake) is refused, not echoed
    cfg.write_text(f"policy: {{kind: scripted, api_key: {KEY}}}\n", encoding="utf-8")
    result = runner.invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2 and "policy.api_key" in result.output and KEY not in result.output
    cfg.write_text(f"policy: {{api_key_env: {KEY}}}\n", encoding="utf-8")
    result = runner.invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2 and "api_key_env" in result.output and KEY not in result.output


# -- exit status, failure policy, logs ----------------------------------------------------


def write_config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "run_id: f\npolicy: {kind: scripted, script: ['Answer: 7']}\ntasks: {source: tiny, size: 30}\n"
        f"verifiers: {{outcome: {{name: table, fail_on: ['7']}}}}\nstore: {{path: {tmp_path / 's.db'}}}\n{extra}",
        encoding="utf-8",
    )
    return cfg


def test_a_run_in_which_every_episode_fails_exits_non_zero(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(write_config(tmp_path)), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "every episode failed (30 of 30; most often VerifierError)" in result.output


def test_the_failure_policy_stops_after_k_in_a_row(tmp_path: Path) -> None:
    extra = "scheduler: {concurrency: 1, max_consecutive_failures: 5}\n"
    result = runner.invoke(app, ["run", str(write_config(tmp_path, extra)), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "5 episodes in a row failed with VerifierError" in result.output
    with EpisodeStore(tmp_path / "s.db") as st:
        assert st.count("f") < 10


def test_verbose_and_json_logs_say_what_happened(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(write_config(tmp_path)), "--no-progress", "--verbose", "--log-json"])
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "run started" in names and "run ended" in names
    assert names.count("episode failed") == 30
    failed = next(e for e in events if e["event"] == "episode failed")
    assert failed["error"] == "VerifierError" and failed["level"] == "info"
    (tmp_path / "q").mkdir()
    quiet = runner.invoke(app, ["run", str(write_config(tmp_path / "q")), "--no-progress"])
    assert "run started" not in quiet.stderr and "VerifierError" in quiet.stderr  # the summary only


@pytest.mark.anyio
async def test_retries_and_rate_limit_waits_are_logged() -> None:
    attempts: list[int] = []

    def respond(request: httpx2.Request) -> httpx2.Response:
        attempts.append(1)
        if len(attempts) == 1:
            return httpx2.Response(503, json={"error": {"message": "busy"}})
        return httpx2.Response(200, json=chat("Answer: 1"))

    policy = mock_policy(respond, retry_initial=0.01, limits=EndpointLimits(requests_per_minute=60, burst_seconds=1))
    request = GenerationRequest(messages=[{"role": "user", "content": "q"}])
    with structlog.testing.capture_logs() as logs:
        await policy.generate(request)
        await policy.generate(request)
    events = [e["event"] for e in logs]
    assert "retrying request" in events and "rate limit wait" in events
    await policy.aclose()


# -- user input ---------------------------------------------------------------------------


def test_a_yaml_error_inside_set_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(CONFIGS / "scripted.yaml"), "--set", "run_id=[", "--no-progress"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "--set run_id: the value is not valid YAML" in result.output


def test_an_invalid_regex_is_one_line(tmp_path: Path) -> None:
    for override in ("verifiers.outcome={name: regex, pattern: '('}", "verifiers.answer_patterns=['(']"):
        result = runner.invoke(
            app, ["run", str(CONFIGS / "scripted.yaml"), "--set", override, "--set", f"store.path={tmp_path}/s.db"]
        )
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error:") and result.output.count("\n") == 1


def test_a_task_given_as_a_python_object_is_cleaned() -> None:
    task = to_task(Task(id="a\ud800", prompt="p", messages=[{"role": "user", "content": "m\udfff"}]), 0)
    assert task.id == "a\ufffd" and task.messages == [{"role": "user", "content": "m\ufffd"}]


@pytest.mark.anyio
async def test_a_response_body_past_the_cap_fails_the_call() -> None:
    body = json.dumps(chat("Answer: 1 " + "w" * 3_000_000)).encode()

    async def big(stream: Any) -> None:
        async with stream:
            await stream.receive(65536)
            try:
                await stream.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                await stream.send(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    async with loopback(big) as base:
        policy = OpenAIPolicy("m", base_url=base, max_response_bytes=1_000_000, retry_attempts=2, retry_initial=0.01)
        with pytest.raises(PolicyUnavailable, match="larger than 1,000,000 bytes"):
            await policy.generate(GenerationRequest(messages=[{"role": "user", "content": "q"}]))
        roomy = OpenAIPolicy("m", base_url=base, max_response_bytes=8_000_000)
        result = await roomy.generate(GenerationRequest(messages=[{"role": "user", "content": "q"}]))
        assert len(result.completions[0].text) > 3_000_000
        await policy.aclose()
        await roomy.aclose()


# -- the store, seen from the command line ------------------------------------------------


def test_a_second_process_on_the_same_run_is_refused_in_one_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    holder = EpisodeStore(tmp_path / "s.db")
    holder.acquire_run("f")  # another live owner (a second store object counts as another process)
    result = runner.invoke(app, ["run", str(cfg), "--no-progress"])
    holder.release_run("f")
    holder.close()
    assert result.exit_code == 4, result.output
    assert result.output.startswith("error:") and "already running" in result.output
    assert result.output.count("\n") == 1


def test_store_faults_on_the_command_line_are_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    cfg = write_config(tmp_path, "")
    result = runner.invoke(app, ["run", str(cfg), "--set", f"store.path={blocker}/s.db", "--no-progress"])
    assert result.exit_code == 4 and result.output.startswith("error:") and result.output.count("\n") == 1
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not a database" * 100)
    for command in (["show", "r", "--store", str(broken)], ["export", "r", "--store", str(broken)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 4 and str(broken) in result.output and result.output.count("\n") == 1


@pytest.mark.anyio
async def test_code_outcome_runs_the_tests_of_a_task_without_an_answer() -> None:
    from runtime.rewards.code_exec import CodeExecution

    task = Task(id="c", prompt="write add", metadata={"tests": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]})
    policy = ScriptedPolicy(["add = lambda a, b: a + b"])  # one step, then the step cap ends the path
    verifiers = Verifiers(outcome=CodeExecution())
    async with Runtime(policy, ChainOfThought(), verifiers=verifiers, sampling=Sampling(max_steps=1)) as rt:
        [ep] = [ep async for ep in rt.stream([task])]
    assert ep.status == "ok" and ep.reward == 1.0
