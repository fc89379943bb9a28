"""Stand-in for vllm.distributed.parallel_state: the two teardown calls factory's engine makes."""

CALLS: list[str] = []


def destroy_model_parallel() -> None:
    CALLS.append("destroy_model_parallel")


def destroy_distributed_environment() -> None:
    CALLS.append("destroy_distributed_environment")
