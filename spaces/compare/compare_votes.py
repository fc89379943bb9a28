"""Votes of the compare Space: each one appended to a JSONL file, the latest per question and pair counted,
decided ones turned into preference pairs and pushed to a Hub dataset. Split from compare_data.py (loading
and aligning the sources); like it, this file lives beside app.py and imports no `factory` code, so the Space
folder deploys unchanged, and `factory compare` imports it from here."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compare_data import Comparison

VOTES = ("left", "right", "tie")

PREFERENCE_FIELDS = {
    "id": "string",
    "prompt": "string",
    "solution": "string",
    "chosen": "string",
    "rejected": "string",
    "chosen_source": "string",
    "rejected_source": "string",
    "chosen_reward": "float64",
    "rejected_reward": "float64",
    "timestamp": "string",
}
VOTE_FIELDS = {
    "id": "string",
    "vote": "string",
    "left_source": "string",
    "right_source": "string",
    "left_label": "string",
    "right_label": "string",
    "left_reward": "float64",
    "right_reward": "float64",
    "question": "string",
    "solution": "string",
    "left_explanation": "string",
    "right_explanation": "string",
    "timestamp": "string",
}


class VoteStore:
    """Votes appended to a JSONL file, one line each; the latest vote per (id, pair) counts."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def record(self, comparison: Comparison, pos: int, left: int, right: int, vote: str) -> dict[str, Any]:
        if vote not in VOTES:
            raise ValueError(f"vote must be one of {VOTES}, got {vote!r}")
        if left == right:
            raise ValueError("left and right must be two different sources")
        a, b = comparison.panel(left, pos), comparison.panel(right, pos)
        entry = {
            "id": str(comparison.ids[pos]),
            "vote": vote,
            "left_source": comparison.sources[left].ref,
            "right_source": comparison.sources[right].ref,
            "left_label": a["label"],
            "right_label": b["label"],
            "left_reward": a["reward"],
            "right_reward": b["reward"],
            "question": comparison.question_text[pos],
            "solution": comparison.solution_text[pos],
            "left_explanation": a["explanation"],
            "right_explanation": b["explanation"],
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)
        return entry

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with self._lock:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def latest(self) -> list[dict[str, Any]]:
        """One vote per (id, left source, right source): the most recent one."""
        found: dict[tuple[str, str, str], dict[str, Any]] = {}
        for entry in self.records():
            found[(entry["id"], entry["left_source"], entry["right_source"])] = entry
        return list(found.values())

    def vote_for(self, qid: str, left_ref: str, right_ref: str) -> str | None:
        for entry in reversed(self.records()):
            if (entry["id"], entry["left_source"], entry["right_source"]) == (qid, left_ref, right_ref):
                return entry["vote"]
        return None


def preference_rows(votes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Decided votes as preference pairs (prompt, chosen, rejected), the shape TRL's DPO/reward trainers read."""
    rows = []
    for entry in votes:
        if entry["vote"] == "tie":
            continue
        win, lose = ("left", "right") if entry["vote"] == "left" else ("right", "left")
        rows.append(
            {
                "id": entry["id"],
                "prompt": entry["question"],
                "solution": entry["solution"],
                "chosen": entry[f"{win}_explanation"],
                "rejected": entry[f"{lose}_explanation"],
                "chosen_source": entry[f"{win}_source"],
                "rejected_source": entry[f"{lose}_source"],
                "chosen_reward": entry[f"{win}_reward"],
                "rejected_reward": entry[f"{lose}_reward"],
                "timestamp": entry["timestamp"],
            }
        )
    return rows


def publish_votes(store: VoteStore, repo_id: str, token: str | None = None, private: bool = False) -> dict[str, int]:
    """Push the votes to a Hub dataset: config `default` = preference pairs, config `votes` = every latest vote (ties too)."""
    import datasets

    votes = store.latest()
    if not votes:
        raise ValueError(f"no votes in {store.path} yet")
    pairs = preference_rows(votes)
    for name, rows, fields in (("default", pairs, PREFERENCE_FIELDS), ("votes", votes, VOTE_FIELDS)):
        features = datasets.Features({key: datasets.Value(kind) for key, kind in fields.items()})
        table = datasets.Dataset.from_list([{k: r[k] for k in fields} for r in rows], features=features)
        table.push_to_hub(
            repo_id,
            config_name=name,
            token=token,
            private=private,
            commit_message=f"compare votes: {len(pairs)} preference pairs, {len(votes)} votes",
        )
    return {"pairs": len(pairs), "votes": len(votes)}
