"""One self-contained HTML page about a stored run (``searchlearn report RUN``): its
summary, its learning curve, per-strategy statistics and every episode's search tree.

Design decisions:
- Self-contained: inline CSS, a few lines of inline JS (a filter and expand/collapse
  buttons) and the curve as inline SVG; nothing is fetched, so the page opens offline,
  from a mail attachment or a CI artifact.
- Browsable without JS: an episode is a ``<details>`` element, its tree nested
  ``<details>``, one per node. The chosen path is highlighted and open; rejected,
  abandoned and duplicate siblings stay in the tree, marked, with every process and
  outcome score and the verifiers' explanations beside the step.
- Everything a model, a task or a verifier wrote (and every name from the store) goes
  through :func:`html.escape` before it reaches the page: a step that writes
  ``<script>`` shows those characters and runs nothing.
- The figures are those of ``searchlearn show`` (the store's summary and curve); the
  per-strategy statistics count every episode in one pass over the store, and the
  trees of the first ``max_episodes`` are drawn, so a run of 100 000 episodes gives a
  page a browser still opens (the page says how many it leaves out).
- Written whole (a temporary file renamed over the target).
"""

from __future__ import annotations

import html
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from runtime.core.types import Episode, Node
from runtime.scheduling.files import written_whole
from runtime.scheduling.store import EpisodeStore

__all__ = ["curve_svg", "episode_html", "write_report"]

MAX_EPISODES = 500
"""Episodes whose trees a page draws by default."""
SUMMARY_CHARS = 160
"""Characters of a step shown in its one-line summary (the whole text is inside)."""
PASS = 0.5
"""A score at or above this is drawn as a pass."""
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_FLAGS = ("rejected", "accepted", "abandoned", "reflection", "unverified", "duplicate_of")


def _e(value: Any) -> str:
    """Escaped text of anything, for an element's content or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _summary_rows(stats: dict[str, Any]) -> list[tuple[str, str]]:
    """The figures ``searchlearn show`` prints."""
    rows = [
        ("episodes", f"{stats['episodes']:,}"),
        ("failed", f"{stats['failed']:,}"),
        ("accuracy", _pct(stats.get("accuracy"))),
        ("mean reward", "-" if stats.get("mean_reward") is None else f"{stats['mean_reward']:.3f}"),
        ("prompt tokens", f"{stats['prompt_tokens']:,}"),
        ("completion tokens", f"{stats['completion_tokens']:,}"),
        ("cost", f"${stats['cost']:.4f}"),
    ]
    if stats.get("span_seconds"):
        rows.append(("episodes/s", f"{stats['episodes'] / stats['span_seconds']:.2f}"))
    rows += [(f"failures: {name}", f"{count:,}") for name, count in stats.get("failures", {}).items()]
    return rows


def _table(header: list[str] | None, rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header or [])
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{thead}<tbody>{body}</tbody></table>'


# -- the learning curve ----------------------------------------------------------------


def curve_svg(curve: list[dict[str, Any]], width: int = 640, height: int = 300) -> str:
    """Held-out accuracy metrics against policy version, as an inline SVG element."""
    metrics = [k for k in curve[0] if k not in ("version", "episodes", "wall_time")]
    left, right, top, bottom = 48, 150, 16, 36
    versions: list[float] = [float(p["version"]) for p in curve]
    lo, hi = min(versions), max(versions)
    span = (hi - lo) or 1

    def x(v: float) -> float:
        return left + (v - lo) / span * (width - left - right)

    def y(value: float) -> float:
        return top + (1 - value) * (height - top - bottom)

    parts = [
        f'<svg class="curve" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="held-out accuracy by policy version">'
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{100 * tick:.0f}%</text>'
        )
    for v in sorted(set(versions)):
        parts.append(f'<text x="{x(v):.1f}" y="{height - bottom + 16}" text-anchor="middle">{v:g}</text>')
    parts.append(
        f'<text x="{(left + width - right) / 2:.1f}" y="{height - 4}" text-anchor="middle">policy version</text>'
    )
    for i, metric in enumerate(metrics):
        colour = _COLOURS[i % len(_COLOURS)]
        points = [(p["version"], float(p[metric]), p) for p in curve if p.get(metric) is not None]
        coords = " ".join(f"{x(v):.1f},{y(val):.1f}" for v, val, _ in points)
        parts.append(f'<polyline class="metric" data-metric="{_e(metric)}" points="{coords}" stroke="{colour}"/>')
        for v, val, p in points:
            tip = f"{metric}: {100 * val:.1f} % at version {v} ({p['episodes']:,} episodes, {p['wall_time']:.0f} s)"
            parts.append(
                f'<circle cx="{x(v):.1f}" cy="{y(val):.1f}" r="3.5" fill="{colour}"><title>{_e(tip)}</title></circle>'
            )
        ly = top + 14 + 18 * i
        parts.append(
            f'<line x1="{width - right + 12}" x2="{width - right + 30}" y1="{ly - 4}" y2="{ly - 4}" '
            f'stroke="{colour}" stroke-width="2"/><text x="{width - right + 36}" y="{ly}">{_e(metric)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# -- per-strategy statistics -------------------------------------------------------------


class _StrategyStats:
    """Counts over one strategy's episodes (one pass over the store)."""

    def __init__(self) -> None:
        self.episodes = self.failed = self.scored = self.solved = 0
        self.reward = 0.0
        self.nodes = self.rejected = self.calls = self.tokens = 0
        self.wall = 0.0

    def add(self, ep: Episode) -> None:
        self.episodes += 1
        self.failed += ep.status != "ok"
        if ep.reward is not None:
            self.scored += 1
            self.reward += ep.reward
            self.solved += ep.reward >= 1.0
        self.nodes += max(0, len(ep.nodes) - 1)
        self.rejected += sum(bool(n.meta.get("rejected")) for n in ep.nodes)
        self.calls += ep.usage.calls
        self.tokens += ep.usage.prompt_tokens + ep.usage.completion_tokens
        self.wall += ep.usage.wall_time

    def row(self, name: str) -> list[str]:
        n = max(self.episodes, 1)
        return [
            name or "-",
            f"{self.episodes:,}",
            f"{self.failed:,}",
            _pct(self.solved / self.scored if self.scored else None),
            f"{self.reward / self.scored:.3f}" if self.scored else "-",
            f"{self.nodes / n:.1f}",
            f"{self.rejected / n:.1f}",
            f"{self.calls / n:.1f}",
            f"{self.tokens / n:,.0f}",
            f"{self.wall / n:.2f} s",
        ]


STRATEGY_HEADER = [
    "strategy", "episodes", "failed", "accuracy", "mean reward", "nodes / episode", "rejected steps / episode",
    "calls / episode", "tokens / episode", "wall time / episode",
]  # fmt: skip


# -- episode trees ---------------------------------------------------------------------


def _score_list(node: Node) -> str:
    if not node.scores and node.value is None:
        return ""
    items = []
    for name, value in node.scores.items():
        kind = "outcome" if name.startswith("outcome:") else "process"
        verdict = "pass" if value >= PASS else "fail"
        why = node.explanations.get(name)
        explanation = f' <span class="why">{_e(why)}</span>' if why else ""
        items.append(
            f'<li class="score {kind} {verdict}"><span class="name">{_e(name)}</span> '
            f'<span class="value">{value:.3f}</span>{explanation}</li>'
        )
    if node.value is not None:
        items.append(
            f'<li class="score value"><span class="name">value</span> {node.value:.3f} ({node.visits} visits)</li>'
        )
    return '<ul class="scores">' + "".join(items) + "</ul>"


def _node_open(node: Node, chosen: set[int]) -> str:
    """A node's ``<details>`` up to where its children go (closed by ``</div></details>``)."""
    flags = [f for f in _FLAGS if node.meta.get(f) not in (None, False)]
    classes = ["node", *flags]
    if node.id in chosen:
        classes.append("chosen")
    if node.terminal:
        classes.append("terminal")
    first = node.text.strip().splitlines()[0] if node.text.strip() else "(empty step)"
    if len(first) > SUMMARY_CHARS:
        first = first[:SUMMARY_CHARS] + "…"
    badges = "".join(f'<span class="badge {f}">{_e(f.replace("_", " "))}</span>' for f in flags)
    if node.id in chosen:
        badges = '<span class="badge chosen">chosen</span>' + badges
    marks = "".join(
        f'<span class="mark {"pass" if v >= PASS else "fail"}" title="{_e(k)}">{v:.2f}</span>'
        for k, v in node.scores.items()
    )
    facts = [f"node {node.id}", f"depth {node.depth}"]
    if node.answer is not None:
        facts.append(f"answer {node.answer}")
    if node.finish_reason:
        facts.append(f"finish {node.finish_reason}")
    if node.policy_version is not None:
        facts.append(f"policy v{node.policy_version}")
    open_ = " open" if node.id in chosen else ""
    return (
        f'<details class="{" ".join(classes)}" data-node="{node.id}"{open_}><summary>{badges}{marks}'
        f'<span class="step">{_e(first)}</span></summary><div class="body">'
        f'<pre class="text">{_e(node.text)}</pre><div class="facts">{_e(" · ".join(facts))}</div>'
        f"{_score_list(node)}"
    )


def _tree_html(ep: Episode) -> str:
    """The tree under the root as nested ``<details>``, built without recursion (a tree
    may be deeper than Python's stack); a child id always exceeds its parent's (nodes
    are appended), which bounds the walk even over a damaged tree."""
    if not ep.nodes:
        return ""
    chosen = set(ep.chosen_path)
    n = len(ep.nodes)
    out: list[str] = []
    stack: list[int] = [c for c in reversed(ep.nodes[0].children) if 0 < c < n]
    while stack:
        item = stack.pop()
        if item < 0:  # the end of node ~item
            out.append("</div></details>")
            continue
        node = ep.nodes[item]
        out.append(_node_open(node, chosen))
        stack.append(~item)
        stack.extend(c for c in reversed(node.children) if item < c < n)
    return "".join(out)


def episode_html(ep: Episode, index: int) -> str:
    """One episode as a ``<details>`` element holding its task and its whole tree (the
    first episode of the page is open)."""
    solved = ep.reward is not None and ep.reward >= 1.0
    state = "failed" if ep.status != "ok" else "solved" if solved else "unsolved"
    reward = "-" if ep.reward is None else f"{ep.reward:.2f}"
    prompt = "\n\n".join(f"[{m.get('role', '')}] {m.get('content', '')}" for m in ep.task.as_messages())
    errors = "".join(f"<li>{_e(err.type)} ({_e(err.boundary)}): {_e(err.message)}</li>" for err in ep.errors)
    tree = _tree_html(ep)
    u = ep.usage
    answer = "-" if ep.final_answer is None else ep.final_answer
    facts = (
        f"strategy {ep.strategy or '-'} · reward {reward} · answer {answer} (reference {ep.task.answer}) · "
        f"{max(0, len(ep.nodes) - 1)} nodes · {u.calls} calls · {u.prompt_tokens + u.completion_tokens:,} tokens · "
        f"{u.wall_time:.2f} s"
    )
    search = f"{ep.task.id} {ep.strategy} {state}".lower()
    open_ = " open" if index == 0 else ""
    return (
        f'<details class="episode {state}" data-state="{state}" data-search="{_e(search)}"{open_}>'
        f'<summary><span class="badge {state}">{state}</span> <b>{_e(ep.task.id)}</b> '
        f"<span>sample {ep.sample}</span> <span>{_e(ep.strategy or '-')}</span> <span>reward {reward}</span> "
        f'<span>{max(0, len(ep.nodes) - 1)} nodes</span> <span class="idx">#{index}</span></summary>'
        f'<div class="body"><div class="facts">{_e(facts)}</div><pre class="prompt">{_e(prompt)}</pre>'
        + (f'<ul class="errors">{errors}</ul>' if errors else "")
        + f'<div class="tree">{tree or "<p>(no steps)</p>"}</div></div></details>'
    )


# -- the page --------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em auto;max-width:1100px;color:#222;
  padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}
svg.curve text{font-size:11px;fill:#444}svg.curve .grid{stroke:#e4e4e4}
svg.curve polyline{fill:none;stroke-width:2}
details{margin:2px 0}summary{cursor:pointer}
details.episode{border:1px solid #ddd;border-radius:4px;padding:4px 8px}
details.episode>summary span{margin-left:.6em;color:#555}.idx{float:right}
.body{margin-left:1.2em}pre{white-space:pre-wrap;margin:.3em 0;background:#f8f8f8;padding:4px 6px}
details.node{border-left:3px solid #ccc;padding-left:6px}
details.node.chosen{border-left-color:#2ca02c;background:#f3fbf3}
details.node.chosen>summary .step{font-weight:600}
details.node.rejected{border-left-color:#d62728}details.node.rejected>summary .step{color:#a33}
details.node.abandoned>summary .step,details.node.duplicate_of>summary .step{color:#888}
.badge{font-size:11px;border-radius:3px;padding:0 4px;margin-right:4px;background:#eee;color:#333}
.badge.chosen,.badge.solved,.badge.accepted{background:#d4f0d4}.badge.rejected,.badge.failed{background:#f6d0d0}
.badge.unsolved{background:#f6ecc8}
.mark{font:11px monospace;margin-right:4px;padding:0 3px;border-radius:3px}
.mark.pass{background:#e2f3e2}.mark.fail{background:#f8dede}
ul.scores{margin:.2em 0;padding-left:1.2em}.score .name{font-family:monospace}.score.fail .value{color:#c00}
.why{color:#555;font-style:italic}.facts{color:#666;font-size:12px}
#controls{margin:.5em 0}#controls input{width:18em}
"""

_JS = """
(function () {
  var box = document.getElementById("filter"), state = document.getElementById("state");
  var episodes = Array.prototype.slice.call(document.querySelectorAll("details.episode"));
  function apply() {
    var q = box.value.toLowerCase(), s = state.value;
    episodes.forEach(function (ep) {
      var ok = (!q || ep.dataset.search.indexOf(q) >= 0) && (!s || ep.dataset.state === s);
      ep.hidden = !ok;
    });
  }
  box.addEventListener("input", apply);
  state.addEventListener("change", apply);
  function toggle(open) {
    document.querySelectorAll("details.episode:not([hidden]) details.node").forEach(function (d) { d.open = open; });
  }
  document.getElementById("expand").addEventListener("click", function () { toggle(true); });
  document.getElementById("collapse").addEventListener("click", function () { toggle(false); });
})();
"""


def _curve_table(curve: list[dict[str, Any]]) -> str:
    """The curve's figures, as ``searchlearn show`` prints them."""
    metrics = [k for k in curve[0] if k not in ("version", "episodes", "wall_time")]
    rows = [
        [str(p["version"]), f"{p['episodes']:,}", f"{p['wall_time']:.0f} s", *[_pct(p.get(m)) for m in metrics]]
        for p in curve
    ]
    return _table(["version", "episodes", "wall time", *metrics], rows, "curve-table")


def write_report(
    store: EpisodeStore, run_id: str, path: str | Path, *, max_episodes: int = MAX_EPISODES, source: str = ""
) -> int:
    """Write run ``run_id``'s page to ``path`` (written whole); returns how many episode
    trees it shows."""
    summary = store.summary(run_id)
    curve = store.curve(run_id)
    strategies: dict[str, _StrategyStats] = defaultdict(_StrategyStats)
    trees: list[str] = []
    total = 0
    for ep in store.episodes(run_id):
        strategies[ep.strategy].add(ep)
        if len(trees) < max_episodes:
            trees.append(episode_html(ep, total))
        total += 1
    title = f"searchlearn run {run_id}"
    curve_part = (
        curve_svg(curve) + _curve_table(curve)
        if curve
        else ("<p>This run has no learning curve (only runs with a learner section that evaluates have one).</p>")
    )
    left_out = total - len(trees)
    note = f"<p>The first {len(trees):,} of {total:,} episodes (--max-episodes).</p>" if left_out else ""
    generated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head><body>
<h1>{_e(title)}</h1>
<p class="facts">store {_e(source or "-")} · written {_e(generated)}</p>
<h2 id="summary">Summary</h2>
{_table(None, [list(r) for r in _summary_rows(summary)], "summary")}
<h2 id="curve">Learning curve</h2>
<div class="curve">{curve_part}</div>
<h2 id="strategies">Strategies</h2>
{_table(STRATEGY_HEADER, [s.row(name) for name, s in sorted(strategies.items())], "strategies")}
<h2 id="episodes">Episodes</h2>
<p>Click an episode to open its search tree: the chosen path is green and open, rejected steps red;
each step shows its process and outcome scores and the verifiers' explanations.</p>
{note}
<div id="controls"><input id="filter" type="search" placeholder="filter by task id or strategy">
<select id="state"><option value="">all</option><option value="solved">solved</option>
<option value="unsolved">unsolved</option><option value="failed">failed</option></select>
<button id="expand" type="button">expand all steps</button>
<button id="collapse" type="button">collapse all steps</button></div>
<div id="episode-list">
{"".join(trees)}
</div>
<script>{_JS}</script>
</body></html>
"""
    with written_whole(path, "report") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return len(trees)
