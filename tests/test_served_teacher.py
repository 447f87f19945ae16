"""On-policy distillation from a served teacher (issue 23 item 3): the teacher's
log-probs of the student's own tokens come from a server on loopback (vLLM's
``prompt_logprobs`` protocol, answered here by a small HTTP server computing them with
the bundled policy), and the student's reverse KL to the teacher falls; a teacher that
is down or answers without log-probs never ends the run."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch
from test_on_policy_distill import sample, student
from transformers import AutoModelForCausalLM

from learners import Example, OnPolicyDistill, OnPolicyDistillLearner
from learners.on_policy_distill import load_teacher
from learners.served_teacher import ServedTeacher, ServedTeacherSettings
from runtime.policy.checkpoints import resolve_checkpoint
from runtime.policy.local import LocalPolicy
from runtime.search.context import Sampling
from runtime.tiny.tasks import TinyTasks

pytestmark = pytest.mark.anyio


class _Teacher(BaseHTTPRequestHandler):
    """POST /v1/completions with a token-id prompt and ``prompt_logprobs``: the bundled
    policy's log-prob of each prompt token, in vLLM's reply layout."""

    model: Any = None
    requests = 0
    broken = False  # answer without prompt_logprobs, as a server that lacks them

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests += 1
        ids, k = body["prompt"], body["prompt_logprobs"]
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        logprobs = torch.log_softmax(logits, -1)
        positions: list[Any] = [None]
        for t, row in enumerate(logprobs.tolist()):  # vLLM: the top k (all with -1) and the prompt's own token
            top = sorted(range(len(row)), key=row.__getitem__, reverse=True)[: len(row) if k == -1 else k]
            positions.append({str(i): {"logprob": row[i]} for i in {*top, ids[t + 1]}})
        choice: dict[str, Any] = {"index": 0, "text": "", "finish_reason": "length"}
        if not self.broken:
            choice["prompt_logprobs"] = positions
        data = json.dumps({"choices": [choice], "usage": {"prompt_tokens": len(ids), "completion_tokens": 1}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def teacher_url() -> Iterator[str]:
    _Teacher.model = AutoModelForCausalLM.from_pretrained(resolve_checkpoint("bundled"), dtype=torch.float32).eval()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Teacher)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


async def test_the_served_teachers_log_probs_lower_the_students_reverse_kl(teacher_url: str) -> None:
    model, tokenizer = student()
    spec = OnPolicyDistill(teacher_server={"base_url": teacher_url, "model": "bundled"}, lr=2e-4, threads=2)
    learner = spec.build_learner(model, tokenizer, Sampling())
    assert isinstance(learner, OnPolicyDistillLearner) and learner.served
    # the exact KL, measured with the teacher in process (the same weights the server has)
    exact = OnPolicyDistillLearner(model, tokenizer, spec, teacher=load_teacher("bundled", tokenizer))
    engine_model, _ = student()
    tasks = list(TinyTasks(size=8, steps=[3, 4], seed=1).tasks())
    async with LocalPolicy(engine_model, tokenizer, threads=2) as policy:
        samples = await sample(policy, tasks, n=4, seed=0)
        before = exact.reverse_kl(samples)
        assert learner.reverse_kl(samples) == pytest.approx(before, rel=1e-4)  # the whole vocabulary: the same KL
        served_before = _Teacher.requests
        results = [await learner.update(samples) for _ in range(4)]
        after = exact.reverse_kl(samples)
    assert _Teacher.requests - served_before == 4 * 32  # every example scored by the server, each step
    assert all(r.examples == 32 and r.tokens > 0 and r.metrics["teacher_failed"] == 0 for r in results)
    assert after < 0.6 * before, (before, after)  # as with the teacher in process (test_on_policy_distill)
    learner.teacher.close()


@pytest.mark.parametrize("top", [0, 8])
async def test_a_partial_reply_gives_the_estimate_it_allows(teacher_url: str, top: int) -> None:
    """The sampled token's log-prob alone (the one-sample estimate ``log p_s - log p_t``),
    or the teacher's top 8: each scores every example, and a step trains on them."""
    model, tokenizer = student()
    spec = OnPolicyDistill(
        teacher_server={"base_url": teacher_url, "model": "bundled", "top_logprobs": top}, lr=1e-4, threads=2
    )
    learner = spec.build_learner(model, tokenizer, Sampling())
    exact = OnPolicyDistillLearner(model, tokenizer, spec, teacher=load_teacher("bundled", tokenizer))
    tasks = list(TinyTasks(size=4, steps=[3, 4], seed=2).tasks())
    engine_model, _ = student()
    async with LocalPolicy(engine_model, tokenizer, threads=2) as policy:
        samples = await sample(policy, tasks, n=4, seed=0)
    estimate, true = learner.reverse_kl(samples), exact.reverse_kl(samples)
    assert 0 < estimate and abs(estimate - true) < 0.5 * true, (estimate, true)
    result = await learner.update(samples)
    assert result.examples == 16 and result.tokens > 0 and learner.steps == 1
    learner.teacher.close()


async def test_a_teacher_that_is_down_or_gives_no_log_probs_trains_nothing_and_says_so(teacher_url: str) -> None:
    model, tokenizer = student()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    example = Example([{"role": "user", "content": "Evaluate: 2+3"}], "2+3=5\nAnswer: 5", ("t", "x", 0))
    down = ServedTeacherSettings(base_url="http://127.0.0.1:9/v1", model="m", retry_attempts=2)
    learner = OnPolicyDistillLearner(model, tokenizer, teacher=ServedTeacher(down), lr=1e-3)
    result = await learner.update([example])
    assert result.tokens == 0 and learner.teacher_failed == 1 and learner.steps == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    _Teacher.broken = True
    try:
        served = ServedTeacher(ServedTeacherSettings(base_url=teacher_url, model="m"))
        [error] = served.score_all([[1, 2, 3]])
        assert isinstance(error, Exception) and "no prompt_logprobs" in str(error)
    finally:
        _Teacher.broken = False


def test_exactly_one_teacher_is_configured() -> None:
    with pytest.raises(ValueError, match="exactly one of learner.teacher"):
        OnPolicyDistill()
    with pytest.raises(ValueError, match="exactly one of learner.teacher"):
        OnPolicyDistill(teacher="bundled", teacher_server={"base_url": "http://x/v1", "model": "m"})
