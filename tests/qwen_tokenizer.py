"""A Qwen2.5 fast tokenizer built offline, for tests that need real BPE merges.

The tiny tokenizer of tests/tiny.py cannot show what a production vocabulary does at a tag border
(Qwen merges ".<" and ".\\n\\n" into single tokens) or how the real chat template spaces turns. The
Qwen BPE ranks ship as `qwen.tiktoken` in the PyPI package `dashscope` (installed with --no-deps by
scripts/test.sh: only its data file is used, the package is never imported). From those ranks,
transformers' own Qwen2 tokenizer class, Qwen2.5's added tokens and the Qwen2.5-Instruct chat
template this module builds the tokenizer of Qwen/Qwen2.5-*-Instruct, in seconds.
"""

from __future__ import annotations

import base64
from pathlib import Path

# Qwen2.5's added tokens from id 151643 on, with their `special` flag (tool and FIM tokens are not special).
ADDED_TOKENS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
RANKS = 151643
# Qwen2.5-Instruct's chat template without its tools branch (tool calls and tool turns).
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def ranks_file() -> Path | None:
    """`qwen.tiktoken` from the installed `dashscope` distribution, found without importing the package."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        files = distribution("dashscope").files or []
    except PackageNotFoundError:
        return None
    path = next((Path(f.locate()) for f in files if f.name == "qwen.tiktoken"), None)
    return path if path is not None and path.is_file() else None


def _read_ranks(path: Path) -> dict[bytes, int]:
    """tiktoken's format: one `base64(token bytes) rank` per line (what tiktoken.load reads, without tiktoken)."""
    ranks = {}
    for line in path.read_text().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != RANKS or sorted(ranks.values()) != list(range(RANKS)):
        raise ValueError(f"{path} does not hold Qwen's {RANKS} BPE ranks")
    return ranks


def build_qwen_tokenizer(path: Path):
    """Qwen2.5-Instruct's tokenizer (151665 tokens, eos <|im_end|>, pad <|endoftext|>) from the ranks at `path`.

    transformers' TikTokenConverter turns the ranks into vocab and merges; its `Qwen2Tokenizer`
    class supplies the rest of the pipeline (NFC, Qwen2's split regex, byte-level).
    """
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class _Converter(TikTokenConverter):
        load_tiktoken_bpe = staticmethod(lambda url: _read_ranks(Path(url)))

    vocab, merges = _Converter().extract_vocab_merges_from_model(str(path))
    vocab.update({content: RANKS + index for index, (content, _) in enumerate(ADDED_TOKENS)})
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        extra_special_tokens=[token for token, special in ADDED_TOKENS[1:] if special and token != "<|im_end|>"],
    )
    tokenizer.add_tokens([AddedToken(content, special=special, normalized=False) for content, special in ADDED_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
