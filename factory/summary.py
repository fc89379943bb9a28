"""What `factory run` prints last: how to load and compare the traces, the RLT reward of the teacher
before vs after RL (the selected traces paired by question: the mean difference with its 95% percentile
bootstrap interval, factory.qa.paired_bootstrap), and the student's evaluation next to its baselines
(with the `before_rl_traces` baseline, the held-out accuracy of students distilled on the traces before
vs after RL).

Read from the run manifest (where each artifact was published) and the artifacts themselves
(generate's metrics, evaluate's report.json); a stage that is disabled, did not complete in this
run's plan, or left no report adds no line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factory.artifacts import is_complete, read_meta
from factory.hub.content import BEFORE_RL
from factory.qa import paired_bootstrap
from factory.stages.evaluate import BEFORE_RL_BASELINE

if TYPE_CHECKING:
    from factory.pipeline import Plan


def run_summary(plan: Plan, manifest: dict[str, Any]) -> list[str]:
    """Plain-text lines (no markup) for the end of `factory run`."""
    lines: list[str] = []
    traces = _artifact(plan, manifest, "generate")
    if traces is not None:
        lines += _traces(*traces)
    report = _artifact(plan, manifest, "evaluate")
    if report is not None:
        lines += _evaluation(report[1])
    return lines


def _artifact(plan: Plan, manifest: dict[str, Any], stage: str) -> tuple[dict[str, Any], Path] | None:
    """The manifest entry and folder of `stage`'s artifact, when it is the complete one this plan names."""
    planned = next((s for s in plan.stages if s.name == stage), None)
    entry = manifest.get("stages", {}).get(stage)
    if planned is None or planned.fingerprint is None or not entry or entry.get("fingerprint") != planned.fingerprint:
        return None
    folder = plan.recipe_dir / entry["artifact_dir"]
    return (entry, folder) if is_complete(folder) else None


def _traces(entry: dict[str, Any], folder: Path) -> list[str]:
    published = entry.get("published") or {}
    before = any((folder / "data" / BEFORE_RL).glob("*.parquet"))
    if published.get("store") == "hub":
        repo, revision = published["repo"], published["revision"]
        load = f'load_dataset("{repo}", revision="{revision}")'
        load_before = f'load_dataset("{repo}", "{BEFORE_RL}", revision="{revision}")'
        source = f"{repo}@{revision}"
    elif published.get("store") == "local":  # the version's folder in the local store (README lists the configs)
        load, load_before = f'load_dataset("{published["url"]}")', f'load_dataset("{published["url"]}", "{BEFORE_RL}")'
        source = str(folder)
    else:
        load = f'load_dataset("parquet", data_files="{folder / "data" / "*.parquet"}")'
        load_before = f'load_dataset("parquet", data_files="{folder / "data" / BEFORE_RL / "*.parquet"}")'
        source = str(folder)
    lines = [f"traces: {load}"]
    if before:
        lines += [
            f"traces of the teacher before RL: {load_before}",
            f"compare after vs before RL: factory compare {source} {source}#{BEFORE_RL}",
        ]
        if published.get("space"):
            lines.append(f"compare Space: {published['space']}")
    metrics = read_meta(folder).metrics
    if BEFORE_RL in metrics:
        lines.append(_reward_line(folder, metrics))
    return lines


def _reward_line(folder: Path, metrics: dict[str, Any]) -> str:
    """Selected traces' mean reward before vs after RL, paired by question, with a 95% bootstrap interval."""
    prior, after = metrics[BEFORE_RL]["reward"], metrics["reward"]
    all_before, all_after = prior["candidates"]["mean"], after["candidates"]["mean"]
    paired = paired_bootstrap(_selected_rewards(folder / "data" / BEFORE_RL), _selected_rewards(folder / "data"))
    if paired is None:
        return (
            f"before RL no explanation passed the checks; mean reward of all candidates {all_before:.3f} "
            f"-> after RL {all_after:.3f}"
        )
    unpaired = ""
    if not metrics[BEFORE_RL]["rows"] == metrics["rows"] == paired["questions"]:
        unpaired = f", of {metrics[BEFORE_RL]['rows']} vs {metrics['rows']} traces"
    return (
        f"mean reward before RL {paired['before']:.3f} -> after RL {paired['after']:.3f} ({paired['mean']:+.3f}, "
        f"{paired['level']:.0%} paired bootstrap CI [{paired['low']:+.3f}, {paired['high']:+.3f}] over "
        f"{paired['questions']} questions{unpaired}; all candidates {all_before:.3f} -> {all_after:.3f})"
    )


def _selected_rewards(data: Path) -> dict[str, float]:
    """Question id -> reward of the selected trace, from a traces config's parquet files (none: empty)."""
    import pyarrow.parquet as pq

    rewards: dict[str, float] = {}
    for part in sorted(data.glob("*.parquet")):
        table = pq.read_table(part, columns=["id", "reward"])
        rewards.update(zip(table["id"].to_pylist(), table["reward"].to_pylist()))
    return rewards


def _evaluation(folder: Path) -> list[str]:
    """One line per eval set and overall: accuracy of the student, then of each baseline (report.json)."""
    path = folder / "report.json"
    scores = json.loads(path.read_text()).get("scores") if path.is_file() else None
    if not scores:
        return []
    models = sorted(scores, key=lambda model: model != "student")  # the student first (report.json sorts keys)
    sets = list(next(iter(scores.values()))["sets"])
    lines = []
    for name in [*sets, "overall"]:
        cells = []
        for model in models:
            value = (
                scores[model]["overall"] if name == "overall" else scores[model]["sets"].get(name, {}).get("accuracy")
            )
            cells.append(f"{model} {value:.1f}" if value is not None else f"{model} -")
        lines.append(f"eval {name} (accuracy %): " + " | ".join(cells))
    if BEFORE_RL_BASELINE in scores:
        after, before = scores["student"]["overall"], scores[BEFORE_RL_BASELINE]["overall"]
        lines.append(
            f"held-out accuracy of students distilled on the traces before RL {before:.1f}% -> after RL {after:.1f}% "
            f"({after - before:+.1f} points)"
        )
    return lines
