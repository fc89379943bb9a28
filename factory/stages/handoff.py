"""Values a stage and its worker process must agree on, kept apart from both so that no worker
imports its stage module: a worker runs alone on every rank under `accelerate launch`, and the
stage module is the pipeline's side of the job (recipe checks, row preparation, result reading)."""

IGNORE = -100  # the label of a token the loss skips (the ignore index of transformers and TRL)
ROLLOUTS_FILE = "rollouts.jsonl"  # teacher_rl: every rollout with its reward terms, in the artifact folder
VLLM_SERVER_PORT = 8000  # teacher_rl, server mode: the stage's `vllm serve` listens here, the worker's trainer connects
