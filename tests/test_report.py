"""``searchlearn report RUN``: one self-contained HTML page of a stored run, opened in
headless Chromium (Debian's ``chromium``; the browser tests skip, saying why, where it
is not installed): the DOM holds the summary, the curve and every episode's tree, a
screenshot renders, the console logs no error, and a model's ``<script>`` is text."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_export_datasets import RUN, scripted_run
from typer.testing import CliRunner

from runtime.app.cli import app
from runtime.scheduling.store import EpisodeStore

INJECTED = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of a scripted verify-and-backtrack run whose every prompt ends with a
    script tag, with a two-point learning curve."""
    folder = tmp_path_factory.mktemp("report")
    db = scripted_run(folder / "s.db", prompt_suffix=f" {INJECTED}")
    with EpisodeStore(db) as st:
        st.add_curve_point(RUN, 0, 0, 1.0, {"greedy": 0.25})
        st.add_curve_point(RUN, 1, 4, 30.0, {"greedy": 0.75})
    out = folder / "report.html"
    result = CliRunner().invoke(app, ["report", RUN, "--store", str(db), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "4 episode trees" in result.output
    return out


def test_the_page_is_self_contained_and_holds_every_part(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "the page must fetch nothing"
    assert "<svg" in text and 'data-metric="greedy"' in text
    assert text.count('<details class="episode') == 4
    assert "verify_backtrack" in text  # the per-strategy table
    assert 'class="node' in text and "chosen" in text and "rejected" in text
    assert "tiny_rule" in text and "outcome:exact" in text  # process and outcome scores
    assert "is wrong" in text  # the rule verifier's explanation of a rejected step


def test_what_a_model_wrote_is_escaped(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert INJECTED not in text
    assert html_escaped(INJECTED) in text
    assert text.count("<script>") == 1  # the page's own


def html_escaped(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_report_refuses_an_unknown_run(page: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", "nope", "--store", str(page.parent / "s.db")])
    assert result.exit_code == 2 and RUN in result.output


def test_max_episodes_bounds_the_trees_not_the_statistics(page: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    args = ["report", RUN, "--store", str(page.parent / "s.db"), "--out", str(out), "--max-episodes", "1"]
    assert CliRunner().invoke(app, args).exit_code == 0
    text = out.read_text(encoding="utf-8")
    assert text.count('<details class="episode') == 1 and "first 1 of 4 episodes" in text


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def _browser(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    command = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_headless_chromium_renders_the_tree_and_the_curve_without_errors(page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    rendered = _browser(f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri(), tmp_path=tmp_path)
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 20_000  # a rendered page, not a blank one
    dom = _browser("--dump-dom", page.as_uri(), tmp_path=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<svg" in dom.stdout and "<polyline" in dom.stdout  # the curve
    assert dom.stdout.count('class="episode') == 4 and 'class="node' in dom.stdout  # the trees
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom.stdout and INJECTED not in dom.stdout
    for run in (rendered, dom):  # the page logs nothing: any console line is an error or a stray log
        console = [line for line in run.stderr.splitlines() if "Uncaught" in line or ":CONSOLE" in line]
        assert not console, console


def test_report_and_export_have_help() -> None:
    runner = CliRunner()
    report = runner.invoke(app, ["report", "--help"])
    assert report.exit_code == 0 and "self-contained HTML page" in report.stdout
    export = runner.invoke(app, ["export", "--help"])
    assert export.exit_code == 0 and "preference" in export.stdout and "parquet" in export.stdout


def test_a_tree_deeper_than_pythons_stack_renders_nested() -> None:
    from runtime.app.report import episode_html
    from runtime.core.types import Episode, Node, Task

    depth = 3000
    nodes = [Node(id=i, parent=i - 1 if i else None, depth=i, text=f"step {i}", children=[i + 1]) for i in range(depth)]
    nodes.append(Node(id=depth, parent=depth - 1, depth=depth, text=INJECTED, terminal=True))
    ep = Episode(run_id="r", task=Task("deep", prompt="q"), nodes=nodes, chosen_path=list(range(1, depth + 1)))
    text = episode_html(ep, 0)
    assert text.count('<details class="node') == depth == text.count("</div></details>") - 1
    assert text.index("step 1<") < text.index("step 2<") and html_escaped(INJECTED) in text
