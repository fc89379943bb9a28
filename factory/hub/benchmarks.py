"""Eval sets the Hub does not host, published so that scores can name them.

The Hub reads a model's scores from `.eval_results/` entries that name their benchmark by Hub dataset id
(factory.hub.eval_results). An eval set from a local file, or the bundled quick-start task, has none: a
store publishes its evaluated questions as a dataset repo of their own, `{namespace}/{recipe}-eval-{set}`
(`content.benchmark_repo`), split `test`, with a card and a factory.json record whose fingerprint is the
rows' hash. As with every artifact, the same rows are published once (tag vN) and a change makes a new
version; the `.eval_results/` entry names the commit evaluated.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import TYPE_CHECKING, Any

from factory.hub.content import CARD_FILE, RECORD_FILE, Target, benchmark_repo, hub_id, next_tag

if TYPE_CHECKING:
    from factory.recipe import EvalSet

DATA_FILE = "data/test-00000-of-00001.parquet"


class BenchmarkPublishing:
    """Mixed into factory.hub.store.Store: it supplies the repo operations (`_versions`, `_head`, `_commit`...) and
    `_benchmarks`, None until the first call."""

    _benchmarks: dict[str, str] | None

    def benchmark_commits(self) -> dict[str, str]:
        """Eval set name -> the commit of its published questions, for every set the Hub does not host;
        published on the first call, remembered after."""
        if self._benchmarks is None:
            sets = [s for s in self.recipe.data.eval if not hub_id(s.source)]
            self._benchmarks = {s.name: self._run(lambda s=s: self._publish_benchmark(s)) for s in sets}
        return self._benchmarks

    def _publish_benchmark(self, eval_set: EvalSet) -> str:
        from factory.data.loaders import load_rows

        rows = load_rows(eval_set)
        fingerprint = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
        target = Target(benchmark_repo(self.namespace, self.recipe.name, eval_set.name), "dataset")
        self._ensure_repo(target)
        versions = self._versions(target)  # listed once: on the Hub, one record download per tag
        known = next((v for v in versions if v.record.get("fingerprint") == fingerprint), None)
        if known is not None:
            return known.commit
        tag = next_tag(v.number for v in versions)
        record = {
            "fingerprint": fingerprint,
            "tag": tag,
            "kind": "benchmark",
            "recipe_name": self.recipe.name,
            "eval_set": eval_set.model_dump(mode="json"),
            "rows": len(rows),
        }
        files = {
            DATA_FILE: _parquet(rows),
            RECORD_FILE: json.dumps(record, indent=2, sort_keys=True).encode() + b"\n",
            CARD_FILE: _card(target, eval_set, len(rows), self.recipe.hub.license).encode(),
        }
        head = self._head(target)
        commit = self._commit(target, files, [], head.commit, f"eval set {eval_set.name}: {tag}")
        self._tag(target, tag, commit)
        self.log(f"evaluate: eval set {eval_set.name} published as {target.repo}@{tag}, so its scores can name it")
        return commit


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def _card(target: Target, eval_set: EvalSet, rows: int, license_id: str | None) -> str:
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(
        license=license_id,
        tags=["factory", "benchmark"],
        configs=[{"config_name": "default", "data_files": [{"split": "test", "path": DATA_FILE}]}],
    )
    body = (
        f"# {target.repo}\n\nThe {rows} questions of the eval set `{eval_set.name}` (source `{eval_set.source}`, "
        f"format `{eval_set.format}`, split `{eval_set.split}`) as factory evaluated them, published so that the "
        "`.eval_results/` of the models it scored can name their benchmark by Hub dataset id.\n"
    )
    return DatasetCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + body).content
