"""Learning signal of teacher RL on the real small model: SmolLM2-135M-Instruct, the quick-start task, CPU.

Runs the quick-start recipe's teacher warm-up SFT on 16 questions, then teacher RL (GRPO with the RLT reward) for
`--steps` steps of 2 prompts x 4 explanations x 64 tokens (SmolLM2 is both teacher and reward student),
and compares the mean RLT reward and mean r_SS of the last third of the steps against the first
third of the same run (the baseline). Prints what it measured, whatever it shows; slow on a shared
2-core CPU (minutes per step). Re-running with the same run dir reuses the cached SFT artifact and
resumes an interrupted RL run from its last checkpoint.

    python bench/teacher_rl.py [--steps 30] [--run-dir /tmp/factory-bench-teacher-rl]

Headline (last line): ratio = r_SS(last third) / r_SS(first third); r_SS is a log-probability
(negative), so a ratio below 1 means the student finds the reference solutions likelier after the
teacher's later explanations.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from factory.pipeline import execute, make_plan
from factory.recipe import load_recipe
from factory.stages import load_stages

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/factory-bench-teacher-rl"))
    args = parser.parse_args()
    overrides = [
        "data.train.limit=16",  # 2 warm-up SFT steps; RL cycles over these 16 questions
        f"stages.teacher_rl.steps={args.steps}",
        "stages.teacher_rl.prompts_per_step=2",
        "stages.teacher_rl.generations_per_prompt=4",
        "stages.teacher_rl.per_device_batch_size=4",
        "stages.teacher_rl.max_completion_length=64",
        "stages.teacher_rl.save_steps=5",
        "stages.generate.enabled=false",
        "stages.distill.enabled=false",
        "stages.evaluate.enabled=false",
    ]
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", overrides)
    plan = make_plan(recipe, args.run_dir, load_stages())
    started = time.monotonic()
    execute(plan, "recipes/quickstart.yaml", log=print)
    elapsed = time.monotonic() - started
    artifact = plan.stage("teacher_rl").artifact_dir
    with (artifact / "reward_curve.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["reward"]]
    metrics = json.loads((artifact / "artifact.json").read_text())["metrics"]
    print(f"\nstep  reward    r_SS      r_KL     penalty  expl_tokens   ({artifact})")
    for row in rows:
        print(
            f"{int(row['step']):>4}  {float(row['reward']):8.3f}  {float(row['r_ss']):8.3f}  {float(row['r_kl']):7.3f}"
            f"  {float(row['penalty_rate']):7.2f}  {float(row['explanation_tokens']):7.1f}"
        )
    print(f"curve: {artifact / 'reward_curve.png'}; wall time {elapsed / 60:.1f} min (cached stages excluded)")
    print(
        f"penalty rate first third {metrics['penalty_rate_first_third']:.3f}, "
        f"last third {metrics['penalty_rate_last_third']:.3f}"
    )
    print(
        f"teacher_rl SmolLM2-135M quickstart {metrics['steps']} steps: mean reward first third "
        f"{metrics['reward_first_third']:.3f} -> last third {metrics['reward_last_third']:.3f}; mean r_SS first third "
        f"{metrics['r_ss_first_third']:.3f} -> last third {metrics['r_ss_last_third']:.3f}; "
        f"ratio={metrics['r_ss_last_third'] / metrics['r_ss_first_third']:.4f}"
    )


if __name__ == "__main__":
    main()
