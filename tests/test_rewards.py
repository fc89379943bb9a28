"""The reward seam: one factory for the recipe's reward, the correct-generation term, their weighted sum."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from test_recipe import MINIMAL

from factory.artifacts import read_meta
from factory.engines.base import Completion
from factory.errors import UserError
from factory.formats import SOLUTION_CLOSE, SOLUTION_OPEN, StudentFormat, build_student_sequence, explanation_ids
from factory.pipeline import execute
from factory.recipe import CorrectGeneration, Reward, load_recipe
from factory.rewards.base import RewardItem
from factory.rewards.build import build_reward, components_of, find_term, notes_of
from factory.rewards.composite import SUM_NOTE, CompositeReward
from factory.rewards.correct_generation import CorrectGenerationReward
from factory.rewards.rlt import COMPONENTS, RLTReward

pytestmark = pytest.mark.usefixtures("torch_one_thread")

FORMAT = StudentFormat(system="Think.")
QUESTIONS = [
    ("What is 12 + 7?", "12 + 7 = 19. The answer is \\boxed{19}.", "Add the units, then the tens."),
    ("A train covers 60 km in 1.5 hours; its speed?", "60 / 1.5 = 40, so \\boxed{40}.", "Divide distance by time."),
    ("What is 3 + 4?", "7", ""),  # no box: the whole solution is the reference answer; an empty explanation
]
# What a fixed generator answers for each item above, and the fractions that follow.
ANSWERS = [
    ["so \\boxed{19}", "\\boxed{18}", "I do not know.", f"\\boxed{{\\frac{{38}}{{2}}}}{SOLUTION_CLOSE}"],
    ["\\boxed{40}"] * 4,
    ["\\boxed{7}", "\\boxed{7}", "\\boxed{8}", "seven"],
]
ANSWERED, CORRECT = [0.75, 1.0, 0.75], [0.5, 1.0, 0.5]


@pytest.fixture(scope="module")
def items(reward_models):
    tokenizer = reward_models[2]
    return [RewardItem(q, s, explanation_ids(tokenizer, e), True) for q, s, e in QUESTIONS]


def build(reward_models, settings: Reward):
    teacher, student, tokenizer = reward_models
    return build_reward(
        settings, teacher_model=teacher, student_model=student, tokenizer=tokenizer, student_format=FORMAT
    )


def fixed_generator(monkeypatch) -> list[tuple]:
    """HFEngine.generate answers ANSWERS by prompt; returns the (prompts, sampling, seeds) of each call."""
    from factory.engines.hf import HFEngine

    calls, by_prompt = [], {}

    def generate(self, prompts, sampling, *, seeds=None):
        calls.append((prompts, sampling, seeds))
        return [[Completion([], text, "stop") for text in by_prompt[tuple(prompt)]] for prompt in prompts]

    monkeypatch.setattr(HFEngine, "generate", generate)
    return calls, by_prompt


def test_the_default_reward_is_the_rlt_reward_with_its_numbers(reward_models, items):
    reward = build(reward_models, Reward())
    assert type(reward) is RLTReward and reward.components == COMPONENTS == components_of(Reward())
    teacher, student, tokenizer = reward_models
    assert reward.score(items) == RLTReward(teacher, student, tokenizer, Reward(), None, FORMAT).score(items)
    assert find_term(reward, "rlt") is reward and find_term(reward, "correct_generation") is None


def test_every_reward_says_what_each_of_its_components_measures():
    """The reward seam: `notes` name the components in order, so a new reward's numbers reach the traces card
    and the compare Space explained, with no change to either."""
    for reward in (RLTReward, CorrectGenerationReward):
        assert tuple(reward.notes) == reward.components and all(len(note) > 20 for note in reward.notes.values())
    both = Reward(terms=["rlt", "correct_generation"], correct_generation_coeff=0.5)
    assert notes_of(Reward()) == RLTReward.notes and tuple(notes_of(both)) == components_of(both)
    assert notes_of(both)["correct_generation.reward"] == CorrectGenerationReward.notes["reward"]
    assert notes_of(both)["reward"] == SUM_NOTE


def test_components_follow_the_terms():
    rlt = tuple(f"rlt.{name}" for name in COMPONENTS)
    assert components_of(Reward(terms=["correct_generation"])) == ("answered", "reward")
    both = components_of(Reward(terms=["rlt", "correct_generation"]))
    assert both == (*rlt, "correct_generation.answered", "correct_generation.reward", "reward")
    weighted = components_of(Reward(terms=["correct_generation"], correct_generation_coeff=2.0))
    assert weighted == ("correct_generation.answered", "correct_generation.reward", "reward")


def test_correct_generation_is_the_fraction_of_correct_answers(reward_models, items, monkeypatch):
    _, student, tokenizer = reward_models
    settings = CorrectGeneration(rollouts=4, temperature=0.7, max_new_tokens=32, seed=5)
    reward = CorrectGenerationReward(student, tokenizer, settings, FORMAT, batch_size=2)
    calls, by_prompt = fixed_generator(monkeypatch)
    for item, answers in zip(items, ANSWERS):
        by_prompt[tuple(reward.prompt_ids(item))] = answers
    results = reward.score(items)
    assert [r["answered"] for r in results] == ANSWERED and [r["reward"] for r in results] == CORRECT
    assert [r["explanation_tokens"] for r in results] == [len(item.explanation_ids) for item in items]
    assert not any(r["truncated"] for r in results)

    prompts, sampling, seeds = calls[0]
    assert (sampling.n, sampling.temperature, sampling.max_new_tokens, sampling.stop) == (4, 0.7, 32, (SOLUTION_CLOSE,))
    for item, prompt in zip(items, prompts):  # the student's sequence up to its solution, thought closed
        sequence = build_student_sequence(tokenizer, item.question, list(item.explanation_ids), item.solution, FORMAT)
        assert prompt == sequence.input_ids[: sequence.solution_span[0]]
        assert tokenizer.decode(prompt).endswith(f"{SOLUTION_OPEN}\n\n") and item.solution not in tokenizer.decode(
            prompt
        )
    reward.score(items[::-1])
    assert calls[1][2] == seeds[::-1]  # seeded per item, whatever its place in the batch
    assert len(set(seeds)) == 3


def test_correct_generation_on_the_tiny_student_is_seeded_per_item(reward_models, items):
    _, student, tokenizer = reward_models
    reward = CorrectGenerationReward(
        student, tokenizer, CorrectGeneration(rollouts=3, temperature=1.0, max_new_tokens=6), FORMAT, batch_size=2
    )
    answers = reward.answers(items)
    assert [len(a) for a in answers] == [3, 3, 3] and len({text for a in answers for text in a}) > 1
    assert reward.answers(items[::-1]) == answers[::-1] and reward.answers(items[1:2]) == answers[1:2]
    assert all(r["reward"] in (0.0, 1 / 3, 2 / 3, 1.0) for r in reward.score(items))


def test_the_sum_is_its_terms_weighted(reward_models, items, monkeypatch):
    settings = Reward(terms=["rlt", "correct_generation"], correct_generation_coeff=0.5)
    settings.correct_generation.rollouts = 4
    reward = build(reward_models, settings)
    assert isinstance(reward, CompositeReward) and reward.components == components_of(settings)
    assert reward.summaries == ("rlt.reward", "correct_generation.reward", "r_ss", "r_kl")
    term = find_term(reward, "correct_generation")
    monkeypatch.setattr(term, "answers", lambda batch: [ANSWERS[items.index(item)] for item in batch])
    results = reward.score(items)

    teacher, student, tokenizer = reward_models
    alone = RLTReward(teacher, student, tokenizer, settings, None, FORMAT).score(items)
    for result, rlt, correct in zip(results, alone, CORRECT):
        assert set(reward.components) | {"truncated", "explanation_tokens", "solution_tokens"} == set(result)
        assert result["reward"] == result["rlt.reward"] + 0.5 * result["correct_generation.reward"]
        assert result["correct_generation.reward"] == correct
        for name in COMPONENTS:
            assert result[f"rlt.{name}"] == pytest.approx(rlt[name], abs=1e-5)
        assert (result["explanation_tokens"], result["solution_tokens"]) == (
            rlt["explanation_tokens"],
            rlt["solution_tokens"],
        )
        figures = reward.summarise(result)
        assert figures["r_ss"] == result["rlt.r_ss_mean"] + 0.01 * result["rlt.r_ss_min"]
        assert figures["correct_generation.reward"] == correct
    assert results[2]["rlt.kl_mean"] == 1.0  # the empty explanation pays the RLT term's KL penalty inside the sum


def test_recipe_terms_are_checked(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(MINIMAL + "reward:\n  terms: [rlt, correct_generation]\n  correct_generation: {rollouts: 2}\n")
    recipe = load_recipe(path)
    assert recipe.reward.terms == ["rlt", "correct_generation"] and recipe.reward.correct_generation.rollouts == 2
    with pytest.raises(UserError, match=r"reward\.terms .*each term once"):
        load_recipe(path, ["reward.terms=[rlt, rlt]"])
    with pytest.raises(UserError, match=r"reward\.terms .*recipe.yaml:\d+.*zero3"):
        load_recipe(path, ["launch.preset=zero3", "launch.num_processes=2"])
    assert load_recipe(path, ["launch.preset=zero3", "launch.num_processes=2", "reward.terms=[rlt]"])


def test_a_sum_of_reward_terms_ranks_the_candidates_and_writes_every_component(
    tmp_path, tiny_model_dir, tiny_student_dir
):
    """reward.terms [rlt, correct_generation]: built by factory.rewards.build in the worker, best-of-n ranks by the
    sum, each component is a column marked as one (the compare Space reads them), the figures follow."""
    from generating import plan_for, question, read, write_recipe

    from factory import compare

    with open(tmp_path / "train.jsonl", "w") as handle:
        handle.writelines(json.dumps(question(i)) + "\n" for i in range(5))
    (tmp_path / "eval.jsonl").write_text(json.dumps({"question": "What is 100 + 1?", "answer": "101"}) + "\n")
    recipe = write_recipe(tmp_path, tiny_model_dir, tiny_student_dir, tmp_path, limit=5, n=2, drop_unclosed=False)
    terms = ["reward.terms=[rlt, correct_generation]", "reward.correct_generation_coeff=2.0"]
    generation = ["reward.correct_generation.rollouts=2", "reward.correct_generation.max_new_tokens=6"]
    plan = plan_for(recipe, tmp_path / "runs", [*terms, *generation])
    execute(plan, str(recipe), log=lambda message: None)
    artifact = plan.stage("generate").artifact_dir
    candidates, selected = read(artifact / "data" / "candidates"), read(artifact / "data")
    added = ("rlt.reward", "rlt.kl_mean", "rlt.penalty", "correct_generation.answered", "correct_generation.reward")
    for c in candidates:
        assert c["reward"] == c["rlt.reward"] + 2.0 * c["correct_generation.reward"]
        assert c["correct_generation.reward"] in (0.0, 0.5, 1.0) and c["rlt.penalty"] == (0.0 if c["closed"] else -1.0)
        assert "kl_mean" not in c and all(name in c for name in added)
    for row in selected:
        group = [c for c in candidates if c["id"] == row["id"]]
        assert row["reward"] == max(c["reward"] for c in group if c["explanation"].strip())
    schema = pq.read_schema(next((artifact / "data").glob("train-*.parquet")))
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    marked = [name for name, feature in features.items() if feature.get("id") == "reward_component"]
    rlt = [f"rlt.{name}" for name in ("r_ss_mean", "r_ss_min", "kl_mean", "kl_max", "penalty", "reward")]
    assert marked == ["reward", *rlt, "correct_generation.answered", "correct_generation.reward"]
    source = compare.space_module("compare_data").load_source(str(artifact))
    assert source.components == marked[1:]
    # what each component measures travels with the artifact from the reward classes to the Space's page
    assert set(read_meta(artifact).columns) == set(marked) and source.notes == read_meta(artifact).columns
    notes = compare.space_module("compare_render").component_notes(source.components, source.notes)
    assert f"- **rlt.kl_mean**: {RLTReward.notes['kl_mean']}" in notes
    assert f"- **reward**: {SUM_NOTE}" in notes.splitlines()
    components = read_meta(artifact).metrics["reward"]["selected_components"]
    assert set(components) == set(marked[1:])
    assert components["correct_generation.reward"] == pytest.approx(
        sum(r["correct_generation.reward"] for r in selected) / len(selected)
    )
