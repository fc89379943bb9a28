"""Model and dataset cards rendered from `factory.json` records, with the Hub's card classes.

Metadata goes through `ModelCardData` / `DatasetCardData` (and datasets' own `DatasetInfosDict` and
`MetadataConfigs` for `dataset_info` and `configs`), and every card is parsed back with
`ModelCard` / `DatasetCard` before it is returned, so what is uploaded is what those classes read.

Evaluation results come from the report's metrics: for each eval set of the recipe
(`data.eval[].name`), either `metrics[name] = {metric: value}` or flat keys `"name/metric"`; those
numbers become the `model-index`. The card's table shows them with the overall mean and the
baselines (`metrics["baselines"][label] = {set: value, "overall": value}`), one row per model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from factory.dotted import flatten
from factory.hub.content import BEFORE_RL, PLOTS_DIR, Target, data_layout, hub_id
from factory.hub.eval_results import where_published
from factory.recipe import Recipe, recipe_to_dict

TAGS = ["factory", "rlt", "reinforcement-learned-teaching"]
# factory has no public home to link to yet, so the card names the file in factory's source.
FIDELITY_LINE = (
    "Every setting of the method next to the RLT paper's reference code (SakanaAI/RLT@86a3f5c), and why where "
    "they differ: `docs/fidelity.md` in factory's source."
)
ROLE_TEXT = {
    "teacher": "an RLT teacher: given a question and its solution, it writes the explanation that best teaches a student",
    "student": "a student distilled on explanations written by an RLT teacher",
    # evaluate's distilled baselines (factory.stages.baselines): the student's settings, other traces
    "student_reference": "a baseline student, not an RLT one: distilled with the settings of this recipe's student on "
    "the train set's reference thoughts instead of an RLT teacher's explanations",
    "student_before_rl": "a baseline student, not an RLT one: distilled with the settings of this recipe's student on "
    "the explanations of the teacher before RL (same questions), so the student's evaluation shows what RL bought",
}
# why a card with a local or packaged base has no `base_model` metadata
NOT_ON_HUB = (
    " (a local folder or a packaged model, not a Hub model id: the metadata names no `base_model`, which the Hub "
    "would link to a model page)."
)


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    if not rows:
        return "_none recorded_\n"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _lineage(record: dict[str, Any], here: str) -> str:
    steps = []
    for entry in record["lineage"]:
        if entry.get("repo"):
            steps.append(f"[{entry['repo']}@{entry['revision']}]({entry['url']}) ({entry['stage']})")
        else:
            steps.append(f"{entry['stage']} `{entry['fingerprint'][:12]}` (not published)")
    return " → ".join([*steps, f"**{here}** (this version)"]) + "\n"


def _base_inputs(record: dict[str, Any]) -> str:
    rows = [(i["role"], i["source"], i["revision"] or "") for i in record["inputs"] if i.get("source")]
    return _table(rows, ("role", "source", "revision"))


def _plots(paths: list[str]) -> str:
    lines = []
    for path in paths:
        name = Path(path).stem.replace("_", " ")
        lines.append(
            f"![{name}]({path})" if path.endswith(".png") else f"- [{Path(path).name}]({path}) (data of the plots)"
        )
    return "\n\n".join(lines) + "\n" if lines else "_no plots recorded_\n"


def _recipe_block(recipe: Recipe) -> str:
    text = yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, allow_unicode=True)
    return (
        f"<details><summary>Resolved recipe <code>{recipe.name}</code></summary>\n\n```yaml\n{text}```\n\n</details>\n"
    )


def _footer(record: dict[str, Any], recipe: Recipe) -> str:
    versions = "\n".join(f"{k}=={v}" for k, v in sorted(record["versions"].items()))
    return (
        f"## Recipe\n\n{FIDELITY_LINE}\n\n{_recipe_block(recipe)}\n"
        f"## Provenance\n\nStage `{record['stage']}`, fingerprint `{record['fingerprint']}`; "
        f"the full record is [`factory.json`](factory.json).\n\n```text\n{versions}\n```\n"
    )


# --------------------------------------------------------------------------------------- evaluation


def evaluation_rows(metrics: dict[str, Any], recipe: Recipe) -> list[tuple[str | None, str, float]]:
    """(eval set or None, metric, value) for every number in a report's metrics."""
    names = {s.name for s in recipe.data.eval}
    rows: list[tuple[str | None, str, float]] = []
    scores = {k: v for k, v in metrics.items() if k != "protocol"}  # how, not how well
    for key, value in flatten(scores).items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        head, _, rest = key.replace("/", ".").partition(".")
        rows.append((head, rest, float(value)) if head in names and rest else (None, key, float(value)))
    return rows


BASELINE_TEXT = {  # evaluate's baselines (factory.stages.evaluate), as a reader of the card needs them
    "distill_base": "the distillation base, untouched",
    "reference_traces": "distilled with the same settings on the train set's reference thoughts",
    "before_rl_traces": "distilled with the same settings on the traces of the teacher before RL",
}


def evaluation_table(metrics: dict[str, Any], recipe: Recipe) -> str:
    """Models as rows (this model, then each baseline), eval sets and overall as columns, in the
    report's main metric (`accuracy`, or a set's first metric); a set's other metrics stay in the report."""
    sets = [s.name for s in recipe.data.eval]
    first = next((metrics[name] for name in sets if isinstance(metrics.get(name), dict)), {})
    metric = "accuracy" if "accuracy" in first else next(iter(first), "score")

    def cells(scores: dict[str, Any], per_set: Any) -> list[Any]:
        values = [per_set(scores.get(name)) for name in sets] + [scores.get("overall")]
        return ["-" if value is None else value for value in values]

    rows = [("**this model**", *cells(metrics, lambda entry: (entry or {}).get(metric)))]
    for label, scores in metrics.get("baselines", {}).items():
        rows.append((f"{label}: {BASELINE_TEXT.get(label, 'baseline')}", *cells(scores, lambda value: value)))
    return _table(rows, ("model", *(f"{name} ({metric})" for name in sets), "overall"))


def evaluation_protocol(protocol: dict[str, Any] | None) -> str:
    """The "Evaluation protocol" section: sampling, each set's template, options and grader, the system prompt."""
    if not protocol:
        return ""
    sampling = (
        f"temperature {protocol['temperature']:g}, top_p {protocol['top_p']:g}, n {protocol['n']}, "
        f"up to {protocol['max_new_tokens']} new tokens, seed {protocol['seed']}"
    )
    rows = []
    for name, entry in protocol["sets"].items():
        options = entry.get("options") or "-"
        if isinstance(options, dict):
            options = f"columns {', '.join(options['columns'])}; fixed shuffle, seed {options['shuffle_seed']}"
        template = f"`{entry['template']}`" + (f" ({entry['follows']})" if entry.get("follows") else "")
        grader = " ".join(filter(None, (entry["grader"]["name"], entry["grader"].get("version"))))
        rows.append((name, template, f"`{entry['template_text']}`", options, grader))
    return (
        "### Evaluation protocol\n\n"
        f"Every model answers in the student format, {sampling}. User turn per set:\n\n"
        + _table(rows, ("eval set", "template", "text", "options", "grader"))
        + f"\n<details><summary>System prompt</summary>\n\n```text\n{protocol['system_prompt']}\n```\n\n</details>\n"
    )


def _eval_results(rows: list[tuple[str | None, str, float]], recipe: Recipe) -> list[Any]:
    from huggingface_hub import EvalResult

    sets = {s.name: s for s in recipe.data.eval}
    return [
        EvalResult(
            task_type="text-generation",
            task_name="Reasoning",
            dataset_type=hub_id(sets[name].source) or name,
            dataset_name=name,
            dataset_split=sets[name].split,
            dataset_revision=sets[name].revision,
            metric_type=metric,
            metric_name=metric,
            metric_value=value,
        )
        for name, metric, value in rows
        if name is not None
    ]


# ------------------------------------------------------------------------------------------- model


def model_card(
    record: dict[str, Any],
    recipe: Recipe,
    target: Target,
    plots: list[str],
    evaluation: tuple[dict[str, Any], list[str]] | None = None,
) -> str:
    """The card of a model version; `evaluation` is (report record, report plots) when it has one."""
    from huggingface_hub import ModelCard, ModelCardData

    role = record["role"]
    version = evaluation[0] if evaluation else record  # the record of the version this card describes
    tag = version["tag"]
    base = recipe.models.teacher if role == "teacher" else recipe.models.distill_base
    datasets = [e["repo"] for e in record["lineage"] if e.get("repo") and e.get("repo_type") == "dataset"]
    if role == "teacher" and (train := hub_id(recipe.data.train.source)):
        datasets.append(train)
    rows = evaluation_rows(evaluation[0]["metrics"], recipe) if evaluation else []
    eval_results = _eval_results(rows, recipe)
    base_model = hub_id(base.source)
    data = ModelCardData(
        base_model=base_model,
        base_model_relation="finetune" if base_model else None,
        datasets=sorted(set(datasets)) or None,
        license=recipe.hub.license,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=[*TAGS, role.replace("_", "-"), record["stage"].replace("_", "-")],
        model_name=target.repo.split("/")[-1] if eval_results else None,
        eval_results=eval_results or None,
    )
    body = [
        f"# {target.repo.split('/')[-1]}\n",
        f"This model is {ROLE_TEXT[role]}. It was produced by the `{record['stage']}` stage of the factory "
        f"recipe `{recipe.name}` (Reinforcement-Learned Teaching).\n",
        "## Lineage\n",
        _lineage(version, f"{target.repo}@{tag}"),
        f"Base model: `{base.source}`{f' at `{base.revision}`' if base.revision else ''}"
        + ("." if base_model else NOT_ON_HUB)
        + "\n",
        "Base inputs:\n",
        _base_inputs(record),
    ]
    if evaluation:
        report, report_plots = evaluation
        body += [
            "## Evaluation\n",
            evaluation_table(report["metrics"], recipe),
            where_published(recipe, list(report["metrics"].get("baselines", {})), target.repo.split("/")[0]),
            evaluation_protocol(report["metrics"].get("protocol")),
            f"Settings: {_settings_line(report['config'])}\n",
            _plots(report_plots),
        ]
    body += [
        "## Training\n",
        _table(sorted((k, v) for k, v in flatten(record["metrics"]).items() if v is not None), ("metric", "value")),
        "Settings:\n",
        _table(sorted(flatten(record["config"]).items()), ("setting", "value")),
        _plots(plots),
        "## How to load\n",
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{target.repo}", revision="{tag}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{target.repo}", revision="{tag}")\n```\n',
        _footer(version, recipe),
    ]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))
    return str(card)


def _settings_line(config: dict[str, Any]) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in sorted(flatten(config).items())) or "defaults"


# ----------------------------------------------------------------------------------------- dataset


def dataset_card(
    record: dict[str, Any],
    recipe: Recipe,
    target: Target,
    plots: list[str],
    files: dict[str, Path],
    comparison: dict[str, Any] | None = None,
) -> str:
    """The card of a traces version: configs, features, sampling, QA figures, reward statistics, loading;
    with `comparison` (Store._comparison: sources, Space), how to see it before vs after RL."""
    import pyarrow.parquet as pq
    from datasets import DatasetInfo, Features, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    layout = data_layout(files)
    infos, configs, rows_total = DatasetInfosDict(), MetadataConfigs(), 0
    feature_rows: list[tuple[str, str, str]] = []
    for config, splits in layout.items():
        features, split_infos = None, SplitDict()
        for split, paths in splits.items():
            metas = [pq.ParquetFile(files[p]).metadata for p in paths]
            features = features or Features.from_arrow_schema(pq.read_schema(files[paths[0]]))
            rows = sum(m.num_rows for m in metas)
            size = sum(m.row_group(i).total_byte_size for m in metas for i in range(m.num_row_groups))
            split_infos.add(SplitInfo(name=split, num_bytes=size, num_examples=rows))
            rows_total += rows if config == "default" else 0
        infos[config] = DatasetInfo(features=features, splits=split_infos, config_name=config)
        configs[config] = {"data_files": [{"split": s, "path": p} for s, p in splits.items()]}
        feature_rows += [
            (config, name, getattr(feature, "dtype", None) or repr(feature), record.get("columns", {}).get(name, ""))
            for name, feature in features.items()
        ]
    generated_by = {i["fingerprint"] for i in record["inputs"] if i["role"] == "teacher"}
    teacher = [e for e in record["lineage"] if e["fingerprint"] in generated_by]
    data = DatasetCardData(
        license=recipe.hub.license,
        pretty_name=f"{recipe.name} RLT explanation traces",
        tags=[*TAGS, "synthetic", "distillation"],
        task_categories=["text-generation"],
        size_categories=[_size_category(rows_total)],
        **_traces_links(teacher, comparison),
    )
    configs.to_dataset_card_data(data)
    infos.to_dataset_card_data(data)
    metrics = flatten(record["metrics"])
    rewards = sorted((k, v) for k, v in metrics.items() if "reward" in k)
    qa = sorted((k, v) for k, v in metrics.items() if "reward" not in k)
    other_configs = [c for c in layout if c != "default"]
    snippet = [f'ds = load_dataset("{target.repo}", revision="{record["tag"]}")']
    snippet += [f'{c} = load_dataset("{target.repo}", "{c}", revision="{record["tag"]}")' for c in other_configs]
    body = [
        f"# {target.repo.split('/')[-1]}\n",
        "Explanation traces written by an RLT teacher: for each question, the teacher was given the reference "
        "solution and wrote the explanation that best teaches a student. Rows are in the student's format "
        f"and distill a student directly. Produced by the `{record['stage']}` stage of the factory recipe `{recipe.name}`.\n",
        "## Lineage\n",
        _lineage(record, f"{target.repo}@{record['tag']}"),
        "Teacher: "
        + (", ".join(f"[{e['repo']}@{e['revision']}]({e['url']})" for e in teacher if e.get("repo")) or "not published")
        + "\n",
        "Base inputs:\n",
        _base_inputs(record),
        "## Configs and features\n",
        _table(
            [(c, s, len(p), infos[c].splits[s].num_examples) for c, sp in layout.items() for s, p in sp.items()],
            ("config", "split", "files", "rows"),
        ),
        _table(feature_rows, ("config", "feature", "type", "meaning")),
        "## Sampling settings\n",
        _table(sorted(flatten(record["config"]).items()), ("setting", "value")),
        *_before_after(record["metrics"], comparison),
        "## Reward statistics\n",
        _table(rewards, ("statistic", "value")),
        "## Quality checks\n",
        _table(qa, ("figure", "value")),
        _plots(plots),
        "## How to load\n",
        "```python\nfrom datasets import load_dataset\n\n" + "\n".join(snippet) + "\n```\n",
        _footer(record, recipe),
    ]
    card = DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))
    return str(card)


def _traces_links(teacher: list[dict[str, Any]], comparison: dict[str, Any] | None) -> dict[str, Any]:
    """The traces card's metadata naming who wrote them (`teacher`: repo and revision of each published
    teacher version) and where they are compared (`compare_space`: the Space repo, when deployed)."""
    links: dict[str, Any] = {}
    published = [{"repo": e["repo"], "revision": e["revision"]} for e in teacher if e.get("repo")]
    if published:
        links["teacher"] = published[0] if len(published) == 1 else published
    if comparison and comparison["space"]:
        links["compare_space"] = comparison["space"]["repo"]
    return links


def _before_after(metrics: dict[str, Any], comparison: dict[str, Any] | None) -> list[str]:
    """The "before vs after RL" section: mean rewards of both teachers, and where to compare them."""
    before = metrics.get(BEFORE_RL)
    if not before:
        return []
    lines = [
        "## Before vs after RL\n",
        f"Config `{BEFORE_RL}` holds the explanations of the teacher before RL (the one RL started from) on the "
        "same questions, with the same sampling settings and seeds, scored by the same reward student.\n",
    ]
    after_all, before_all = metrics["reward"]["candidates"]["mean"], before["reward"]["candidates"]["mean"]
    if "reward_gain_vs_before_rl" in metrics:
        after_sel, before_sel = metrics["reward"]["selected"]["mean"], before["reward"]["selected"]["mean"]
        lines.append(
            f"Mean RLT reward of the traces: before RL **{before_sel:.4g}** → after RL **{after_sel:.4g}** "
            f"({metrics['reward_gain_vs_before_rl']:+.4g}; {before['rows']} vs {metrics['rows']} traces); "
            f"all candidates: {before_all:.4g} → {after_all:.4g}.\n"
        )
        paired = metrics.get("reward_gain_vs_before_rl_paired")
        if paired:
            lines.append(
                f"Paired by question ({paired['questions']} questions with a trace in both): mean difference "
                f"{paired['mean']:+.4g}, {paired['level']:.0%} percentile bootstrap interval [{paired['low']:+.4g}, "
                f"{paired['high']:+.4g}] ({paired['resamples']:,} resamples, seed {paired['seed']}).\n"
            )
    else:
        lines.append(
            f"No explanation of the teacher before RL passed the checks; mean RLT reward of all candidates: "
            f"before RL {before_all:.4g} → after RL {after_all:.4g}.\n"
        )
    if comparison:
        if comparison["space"]:
            space = comparison["space"]
            lines.append(f"Side by side, per question: the Space [{space['repo']}]({space['url']}).\n")
        lines.append(f"Locally: `factory compare {' '.join(comparison['sources'])}`\n")
    return lines


SIZE_CATEGORIES = ("n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B")


def _size_category(rows: int) -> str:
    """The Hub's size category: one per power of ten of the row count."""
    return SIZE_CATEGORIES[min(max(len(str(rows)) - 3, 0), len(SIZE_CATEGORIES) - 1)]


def plot_paths(files: dict[str, Any], prefix: str = PLOTS_DIR) -> list[str]:
    return sorted(p for p in files if p.startswith(prefix) and p.endswith((".png", ".csv")))
