"""The Slurm examples start the commands the README promises: `srun`, `scontrol` and `factory` are stand-ins that
record what they are asked to run; the recorded `--set` keys are then checked against the real recipe schema."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from factory.cli import _parse_shard
from factory.recipe import load_recipe

SLURM = Path(__file__).resolve().parent.parent / "examples" / "slurm"

STUBS = {
    "scontrol": 'printf "gpu-a\\ngpu-b\\n"',
    # one task per node, as --ntasks-per-node=1 over SLURM_NNODES nodes
    "srun": 'while [[ $1 == --* ]]; do shift; done\nfor n in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$n "$@"; done',
    "factory": 'python3 -c "import json, sys; print(json.dumps(sys.argv[1:]))" "$@" >> "$CALLS"',
}


@pytest.fixture
def slurm_env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), "RUN_DIR": "/shared/runs"}
    return env, calls


def recorded(calls: Path) -> list[list[str]]:
    return [json.loads(line) for line in calls.read_text().splitlines()]


def sets_of(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]


def test_train_starts_one_factory_run_per_node_with_its_rank_and_the_first_node_as_main(slurm_env):
    env, calls = slurm_env
    env.update(SLURM_JOB_NODELIST="gpu-[a-b]", SLURM_NNODES="2")
    subprocess.run(["bash", str(SLURM / "train.sbatch"), "--push"], env=env, check=True)
    runs = recorded(calls)
    assert len(runs) == 2
    for rank, argv in enumerate(runs):
        assert argv[:4] == ["run", "recipes/aime.yaml", "--run-dir", "/shared/runs"]
        assert argv[4:8] == ["--only", "teacher_sft", "--only", "teacher_rl"] and argv[-1] == "--push"
        assert sets_of(argv) == [
            "launch.num_machines=2",
            f"launch.machine_rank={rank}",
            "launch.main_process_ip=gpu-a",
        ]
        recipe = load_recipe("recipes/aime.yaml", sets_of(argv))  # real keys, a valid combination
        assert (recipe.launch.machine_rank, recipe.launch.num_machines) == (rank, 2)


def test_generate_array_task_claims_its_shard_of_the_array(slurm_env):
    env, calls = slurm_env
    env.update(SLURM_ARRAY_TASK_ID="3", SLURM_ARRAY_TASK_COUNT="8")
    subprocess.run(["bash", str(SLURM / "generate.sbatch")], env=env, check=True)
    [argv] = recorded(calls)
    assert argv[:4] == ["generate-shard", "recipes/aime.yaml", "--run-dir", "/shared/runs"]
    shard = argv[argv.index("--shard") + 1]
    recipe = load_recipe("recipes/aime.yaml", sets_of(argv))
    assert _parse_shard(shard, recipe.stages.generate.shards) == (3, 8)
