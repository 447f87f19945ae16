"""searchlearn embedded in your own async program.

    python examples/embedded.py            # the bundled tiny policy, in process
    python examples/embedded.py --scripted # the scripted fake policy (instant)

Streams finished episodes as they complete and prints each one's chosen path. Each mode
has its own run id in the store: a run id's stored episodes are skipped when it runs again,
so a real run that shared the scripted run's id would skip every task and print nothing.
"""

from __future__ import annotations

import argparse

import anyio

from runtime import ExactMatch, Runtime, Sampling, ScriptedPolicy, TinyStepVerifier, Verifiers, tiny_tasks
from runtime.rewards.base import AnswerExtractor
from strategies import BestOfN

#: One run id per mode (a run id that is already stored resumes: its tasks are skipped).
RUN_IDS = {"scripted": "embedded-scripted", "bundled": "embedded-bundled"}


async def main(scripted: bool) -> None:
    if scripted:
        policy = ScriptedPolicy(["7*8=56\nAnswer: 56"])
    else:
        from runtime.policy.local import LocalPolicy

        policy = LocalPolicy.from_path("bundled", max_batch=32)
    verifiers = Verifiers(outcome=ExactMatch(), process=TinyStepVerifier(), extractor=AnswerExtractor(["answer_line"]))
    tasks = tiny_tasks(16, steps=[3, 4], seed=1)
    async with (
        policy,
        Runtime(
            policy,
            BestOfN(n=4, selection="process"),
            verifiers=verifiers,
            sampling=Sampling(temperature=0.8, max_tokens=160),
            store="runs/embedded.db",
            run_id=RUN_IDS["scripted" if scripted else "bundled"],
        ) as rt,
    ):
        async for ep in rt.stream(tasks):
            mark = "ok " if ep.reward == 1.0 else "bad"
            print(f"[{mark}] {ep.task.prompt}  ->  {' | '.join(ep.steps)}")  # noqa: T201
        print(rt.statistics())  # noqa: T201


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scripted", action="store_true", help="use the scripted fake policy")
    anyio.run(main, parser.parse_args().scripted)
