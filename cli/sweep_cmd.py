"""``radgr experiment thesis-sweep --out DIR [--config default|tiny] [--seeds 2] [--knobs ...]`` — the paper's
thesis tested on the simulator (``training.thesis_sweep`` says what is measured and how it is reported).

For every point (the base world, then each knob at its low and high level) the command runs, each as a
``radgr`` child process under ``OUT/points/<name>/`` with a step marker (the demo's mechanism, ``cli.demo_cmd``):
``data simulate`` → ``index build`` → ``data samples`` → ``train sft`` → ``experiment paper-table`` (SFT, DPO,
SimPO, RAD-DPO and its three ablations). A rerun reuses every finished step and the paper table resumes per run,
so a stopped sweep continues where it stopped. After every point ``OUT/sweep.{json,md,png}`` are rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console

from cli.children import Children, Stopped
from cli.demo_cmd import Step, run_step
from training.thesis_sweep import SWEEP_VARIANTS, SweepPoint, sweep_report, write_sweep_files

console = Console()


@dataclass(frozen=True)
class SweepPreset:
    """World size, knob levels and the paper table's budget of one sweep."""

    sim: tuple[str, ...]  # ``radgr data simulate`` options of every world
    levels: dict[str, tuple[str, str, str]]  # knob → (low, base, high)
    sft: tuple[str, ...]  # ``radgr train sft`` options
    table: tuple[str, ...]  # ``radgr experiment paper-table`` options (without --seeds)


SWEEP_PRESETS: dict[str, SweepPreset] = {
    # the demo's world (2,400 items, 12,000 sessions) and SFT; the default paper-table preset at 150 steps and
    # 500 test sessions, so 7 worlds × (1 + 6 × 2) runs fit in about 75 minutes on 2 cores
    "default": SweepPreset(
        sim=(), levels={"position_bias": ("0", "1", "3"), "relevant_breadth": ("2", "6", "12"),
                        "codebooks": ("128,8,8", "32,16,16", "8,32,16")},
        sft=("--preset", "tiny"), table=("--config", "default", "--max-steps", "150", "--eval-limit", "500")),
    # CI: a small world, a few SFT steps, the tiny paper table; one knob at a time keeps it short
    "tiny": SweepPreset(
        sim=("--items", "200", "--users", "60", "--sessions-per-day", "60", "--days", "3"),
        levels={"position_bias": ("0", "1", "3"), "relevant_breadth": ("2", "6", "12"),
                "codebooks": ("16,4,4", "8,8,8", "4,16,8")},
        sft=("--preset", "tiny", "--max-steps", "20", "--batch-size", "8"), table=("--config", "tiny")),
}


def sweep_points(preset: SweepPreset, knobs: tuple[str, ...]) -> list[SweepPoint]:
    """The base point, then each knob's low and high level (others at base)."""
    base_cb = preset.levels["codebooks"][1]
    base_sim = {k: preset.levels[k][1] for k in ("position_bias", "relevant_breadth")}

    def sim_options(over: dict[str, str]) -> tuple[str, ...]:
        vals = {**base_sim, **over}
        return ("--position-bias", vals["position_bias"], "--relevant-breadth", vals["relevant_breadth"])

    points = [SweepPoint("base", "base", "base", sim_options({}), base_cb)]
    for knob in knobs:
        low, _, high = preset.levels[knob]
        for value in (low, high):
            name = f"{knob}={value}"
            if knob == "codebooks":
                points.append(SweepPoint(name, knob, value, sim_options({}), value))
            else:
                points.append(SweepPoint(name, knob, value, sim_options({knob: value}), base_cb))
    return points


def point_steps(root: Path, point: SweepPoint, preset: SweepPreset, seeds: int) -> list[Step]:
    w = root / "points" / point.name
    data, index, samples, sft, table = (str(w / d) for d in ("data", "index", "samples", "sft", "table"))
    return [
        Step("simulate", ("data", "simulate", "--out", data, *preset.sim, *point.sim_options), (Path(data),)),
        Step("index", ("index", "build", "--catalog", f"{data}/catalog.parquet", "--out", index, "--codebooks",
                       point.codebooks), (Path(index),)),
        Step("samples", ("data", "samples", "--sessions", f"{data}/sessions.parquet", "--index", index,
                         "--catalog", f"{data}/catalog.parquet", "--out", samples), (Path(samples),)),
        Step("sft", ("train", "sft", "--samples", samples, "--index", index, "--out", sft, *preset.sft),
             (Path(sft) / "final",)),
        Step("table", ("experiment", "paper-table", "--samples", samples, "--index", index, "--sft", f"{sft}/final",
                       "--out", table, "--seeds", str(seeds), "--methods", ",".join(SWEEP_VARIANTS),
                       *preset.table), (Path(table) / "paper_table.json",)),
    ]


def thesis_sweep_command(
    out: Path = typer.Option(..., "--out", help="Output directory: points/<name>/..., sweep.{json,md,png}."),
    config: str = typer.Option("default", "--config", help="default (≈ 75 min on 2 CPU cores) or tiny (CI)."),
    seeds: int = typer.Option(2, "--seeds", help="Seeds per aligned method at every point."),
    knobs: str = typer.Option("position_bias,relevant_breadth,codebooks", "--knobs",
                              help="Comma-separated knobs to move: position_bias, relevant_breadth, codebooks."),
) -> int:
    """RAD-DPO's gain over DPO and SimPO, and its ablations' loss, as the simulator's failure rates grow."""
    if config not in SWEEP_PRESETS:
        console.print(f"[red]--config must be one of {', '.join(SWEEP_PRESETS)}, given {config!r}[/red]")
        return 2
    if seeds < 1:
        console.print(f"[red]--seeds must be >= 1, given {seeds}[/red]")
        return 2
    preset = SWEEP_PRESETS[config]
    chosen = tuple(k.strip() for k in knobs.split(",") if k.strip())
    bad = [k for k in chosen if k not in preset.levels]
    if bad or not chosen:
        console.print(f"[red]--knobs must be a non-empty subset of {', '.join(preset.levels)}, given {knobs!r}[/red]")
        return 2
    points = sweep_points(preset, chosen)
    try:
        with Children() as children:
            for k, point in enumerate(points, 1):
                console.rule(f"[bold]point {k}/{len(points)}: {point.name}")
                done = out / "points" / point.name / ".steps"
                done.mkdir(parents=True, exist_ok=True)
                for step in point_steps(out, point, preset, seeds):
                    run_step(step, done, children)
                paths = write_sweep_files(sweep_report(points, out), out)
    except Stopped as exc:
        console.print(f"[yellow]stopped ({exc}); rerun the same command to continue[/yellow]")
        return 130
    console.print(f"sweep: {paths['markdown']}  json: {paths['json']}  plot: {paths['png']}")
    return 0
