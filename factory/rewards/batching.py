"""How the RLT reward plans its work, before any forward (pure Python): items in batches (one question's
explanations together, closed early past `max_padding`), each batch's decoder forwards (the prefix all rows
share once, then one question's prompt once more, then the rows), and the module calls those make, which
ranks agree on in lockstep (factory.rewards.rlt)."""

from __future__ import annotations

from factory.rewards.sequences import ScoringSequences


def grouped_order(built: list[ScoringSequences]) -> list[int]:
    """Item indices with equal teacher prompts together: larger groups first (a group that fills
    whole batches shares its full prompt in each), then by mean length; items by length."""

    def length(i: int) -> int:
        return len(built[i].teacher.input_ids) + len(built[i].student.input_ids)

    groups: dict[tuple[int, ...], list[int]] = {}
    for index, b in enumerate(built):
        groups.setdefault(tuple(b.teacher.input_ids[: b.teacher.explanation_span[0]]), []).append(index)
    ordered = sorted(groups.values(), key=lambda members: (-len(members), sum(map(length, members)) / len(members)))
    return [index for members in ordered for index in sorted(members, key=length)]


def batches_of(order: list[int], built: list[ScoringSequences], size: int, max_padding: float) -> list[list[int]]:
    """Consecutive runs of `order` of at most `size` items, each closed early rather than let padding
    pass `max_padding` of its positions (right padding runs through the decoder like real tokens)."""
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        candidate = [*current, index]
        if current and (len(candidate) > size or padding_share([built[i] for i in candidate]) > max_padding):
            batches.append(current)
            candidate = [index]
        current = candidate
    return [*batches, current] if current else batches


def padding_share(batch: list[ScoringSequences]) -> float:
    teacher, student = [len(b.teacher.input_ids) for b in batch], [len(b.student.input_ids) for b in batch]
    return 1 - (sum(teacher) + sum(student)) / (len(batch) * (max(teacher) + max(student)))


MIN_SHARED_PREFIX = 8  # tokens; a shorter common prefix is not worth a separate forward


def shared_prefix_length(sequences: list[list[int]], span_groups: list[list[tuple[int, int]]]) -> int:
    """Tokens every sequence starts with, short of the first scored position's predecessor (whose
    hidden state is needed) and of each sequence's last token (each row keeps one to run)."""
    limit = min(len(ids) for ids in sequences) - 1
    for spans in span_groups:
        limit = min([limit, *(start - 1 for start, end in spans if end > start)])
    first = sequences[0]
    length = 0
    while length < limit and all(ids[length] == first[length] for ids in sequences):
        length += 1
    return length if length >= MIN_SHARED_PREFIX and len(sequences) > 1 else 0


def forward_plan(sequences: list[list[int]], span_groups: list[list[tuple[int, int]]]) -> tuple[int, list]:
    """How `_hidden_rows` runs one batch through one decoder: the prefix all rows share (0: none), then each
    forward after it as (rows, prefix length) (`prefix_groups`)."""
    shared = shared_prefix_length(sequences, span_groups)
    return shared, prefix_groups(sequences, span_groups, shared)


def decoder_calls(plan: tuple[int, list]) -> int:
    shared, units = plan
    return int(shared > 0) + sum(1 + (prefix > shared) for _, prefix in units)


def call_counts(plans: list[tuple[int, list]], span_groups: list[list[list[tuple[int, int]]]], chunk: int) -> list[int]:
    """A batch's module calls, known from its spans before any forward: the decoder calls of the teacher and
    the student (`plans`), the student's head chunks (explanation and solution rows), then the teacher's head
    chunks, or the full KL's chunk pairs (explanation rows)."""
    rows = [sum(end - start for spans in groups for start, end in spans) for groups in span_groups]
    return [*map(decoder_calls, plans), -(-rows[1] // chunk), -(-rows[0] // chunk)]


def prefix_groups(
    sequences: list[list[int]], span_groups: list[list[tuple[int, int]]], shared: int
) -> list[tuple[list[int], int]]:
    """(rows, prefix length) of each forward after the batch's shared prefix: rows whose sequences are
    equal up to their first scored position's predecessor, when that is at least MIN_SHARED_PREFIX
    tokens past `shared`, with that length; then every other row, with `shared`."""
    by_prefix: dict[tuple[int, ...], list[int]] = {}
    for row, ids in enumerate(sequences):
        limit = min([len(ids) - 1, *(spans[row][0] - 1 for spans in span_groups if spans[row][1] > spans[row][0])])
        by_prefix.setdefault(tuple(ids[:limit]), []).append(row)
    units, alone = [], []
    for prefix, rows in by_prefix.items():
        if len(rows) > 1 and len(prefix) - shared >= MIN_SHARED_PREFIX:
            units.append((rows, len(prefix)))
        else:
            alone += rows
    return units + [(sorted(alone), shared)] if alone else units
