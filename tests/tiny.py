"""Tiny random causal LMs for offline tests: a BPE tokenizer trained on the fly, a Qwen2 config.

Everything is built locally in seconds; nothing comes from the network. The tokenizer has a
ChatML chat template (the family SmolLM2 and Qwen2.5 use), so the chat formats are exercised the
same way as with real models.

recipe_head and QUICKSTART_DATA are the YAML that recipes running stages on these models start with;
TINY_DISTILL the distill settings that train them quickly.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% if not loop.last or add_generation_prompt %}{{ '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "What is 12 + 7? Add the units first, then the tens. The answer is \\boxed{19}.",
    "<|begin_of_solution|> The result is \\boxed{42}. <|end_of_solution|>",
    "<|begin_of_explanation|> We multiply both sides by two and simplify. <|end_of_explanation|>",
    "<|begin_of_thought|> Let me think step by step about the problem. <|end_of_thought|>",
    "system user assistant You are a careful teacher. Explain the solution step by step.",
    "Question: a train travels 60 km in 1.5 hours; what is its speed? 40 km/h.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 + - * / = ( ) { } [ ] \\frac{1}{2} x y z",
]


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer with ChatML special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(vocab_size: int, seed: int = 0, hidden_size: int = 64, layers: int = 2):
    """A Qwen2-architecture model with random weights, well under 1M parameters."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    )
    return Qwen2ForCausalLM(config).eval()


def save_tiny(folder: Path, seed: int = 0) -> Path:
    """Build and save a tiny model and its tokenizer into `folder`; returns the folder."""
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), seed=seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def recipe_head(name: str, teacher: Path | str, student: Path | str | None = None) -> str:
    """A recipe's first lines: its name and its models, as YAML. The teacher is also the distill base; the
    student is the teacher unless given. Paths as they are, or a placeholder the caller replaces."""
    student = teacher if student is None else student
    return (
        f"name: {name}\n"
        "models:\n"
        f"  teacher: {{source: {teacher}}}\n"
        f"  student: {{source: {student}}}\n"
        f"  distill_base: {{source: {teacher}}}\n"
    )


# stages.distill settings that train a tiny model in seconds on a CPU (recipes given as dicts add them).
TINY_DISTILL = {
    "learning_rate": 1e-3,
    "epochs": 1,
    "global_batch_size": 4,
    "per_device_batch_size": 4,
    "max_length": 256,
    "bf16": False,
}

# A recipe's data section: the bundled quickstart set, its train split and its eval split as `held_out`.
QUICKSTART_DATA = """\
data:
  train: {source: quickstart, format: quickstart}
  eval:
    - {name: held_out, source: quickstart, format: quickstart, split: eval}
"""
