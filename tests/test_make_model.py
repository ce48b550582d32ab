"""Tests for tools/make_model.py: every family writes a directory that transformers loads offline."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel


def _load_tool() -> ModuleType:
    # tools/ is not a package, so load the script straight from its file.
    path = Path(__file__).resolve().parents[1] / "tools" / "make_model.py"
    spec = importlib.util.spec_from_file_location("make_model_tool", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


tool = _load_tool()

TINY = {"layers": 2, "hidden": 32, "vocab": 320}
SENTENCE = "Beautiful is better than ugly."


def quiet(_: str) -> None:
    pass


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(model_dir.glob("*.safetensors"))


def saved_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(model_dir):
        with safe_open(str(path), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                tensors[name] = handle.get_tensor(name)
    return tensors


def load_model(model_dir: Path, family: str) -> PreTrainedModel:
    auto_class = AutoModel if family == "bert" else AutoModelForCausalLM
    return auto_class.from_pretrained(model_dir, local_files_only=True)


@pytest.mark.parametrize("family", tool.FAMILIES)
def test_family_writes_a_loadable_model(tmp_path: Path, family: str) -> None:
    out = tool.make_model(family, tmp_path / family, **TINY, log=quiet)

    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert (out / "generation_config.json").is_file() == (family != "bert")
    umask = os.umask(0)
    os.umask(umask)
    # safetensors writes 0600 files; the tool must leave ordinary, readable permissions.
    assert {path.stat().st_mode & 0o777 for path in out.iterdir()} == {0o666 & ~umask}
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == family

    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    model = load_model(out, family)
    assert len(tokenizer) <= model.config.vocab_size
    assert model.config.pad_token_id == tokenizer.pad_token_id
    encoded = tokenizer(SENTENCE, return_tensors="pt")
    with torch.no_grad():
        output = model(**encoded)
    sequence_length = encoded["input_ids"].shape[1]

    if family == "bert":
        assert tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist())[0] == "[CLS]"
        assert output.last_hidden_state.shape == (1, sequence_length, TINY["hidden"])
    else:
        assert tokenizer.decode(encoded["input_ids"][0]) == SENTENCE  # byte-level BPE is lossless
        assert model.config.eos_token_id == tokenizer.eos_token_id
        assert model.generation_config.eos_token_id == tokenizer.eos_token_id
        assert output.logits.shape == (1, sequence_length, model.config.vocab_size)


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    first = tool.make_model("mixtral", tmp_path / "first", **TINY, seed=7, log=quiet)
    second = tool.make_model("mixtral", tmp_path / "second", **TINY, seed=7, log=quiet)
    other = tool.make_model("mixtral", tmp_path / "other", **TINY, seed=8, log=quiet)

    names = sorted(path.name for path in first.iterdir())
    assert names == sorted(path.name for path in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()


def test_small_max_shard_size_writes_an_index(tmp_path: Path) -> None:
    out = tool.make_model("llama", tmp_path / "sharded", **TINY, max_shard_size="50KB", log=quiet)

    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = weight_files(out)
    assert len(shards) > 1
    assert set(index["weight_map"].values()) == {path.name for path in shards}
    model = load_model(out, "llama")
    with torch.no_grad():
        model(input_ids=torch.tensor([[3, 4, 5]]))


@pytest.mark.parametrize("family", ["llama", "mixtral", "gpt2", "bert"])
def test_params_lands_near_the_target(tmp_path: Path, family: str) -> None:
    out = tool.make_model(family, tmp_path / family, params="2M", log=quiet)

    # Tied embeddings are stored once, so the file holds each parameter exactly once.
    count = sum(tensor.numel() for tensor in saved_tensors(out).values())
    assert 1_500_000 <= count <= 2_500_000


def test_cli_reports_the_actual_parameter_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    exit_code = tool.main(["--family", "qwen2", "--out", str(out), "--params", "1M", "--max-shard-size", "10MB"])

    assert exit_code == 0
    printed = capsys.readouterr().out
    assert "target 1,000,000" in printed
    count = sum(tensor.numel() for tensor in saved_tensors(out).values())
    assert f"{count:,} parameters" in printed


def test_bfloat16_weights_and_config(tmp_path: Path) -> None:
    out = tool.make_model("qwen2", tmp_path / "bf16", **TINY, dtype="bfloat16", log=quiet)

    assert {tensor.dtype for tensor in saved_tensors(out).values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_model(out, "qwen2").dtype == torch.bfloat16


def test_tied_embeddings_are_stored_once(tmp_path: Path) -> None:
    tied = tool.make_model("llama", tmp_path / "tied", **TINY, tie_embeddings=True, log=quiet)
    untied = tool.make_model("llama", tmp_path / "untied", **TINY, tie_embeddings=False, log=quiet)

    assert "lm_head.weight" not in saved_tensors(tied)
    assert "lm_head.weight" in saved_tensors(untied)
    model = load_model(tied, "llama")
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_mixtral_experts_are_saved_per_expert_and_round_trip(tmp_path: Path) -> None:
    out = tool.make_model("mixtral", tmp_path / "moe", **TINY, experts=3, log=quiet)

    original = saved_tensors(out)
    # transformers 5 fuses experts in memory (mlp.experts.gate_up_proj) but saves the classic layout.
    expected = {
        f"model.layers.{layer}.block_sparse_moe.experts.{expert}.{matrix}.weight"
        for layer in range(TINY["layers"])
        for expert in range(3)
        for matrix in ("w1", "w2", "w3")
    }
    assert expected <= original.keys()
    assert not [name for name in original if "gate_up_proj" in name]

    load_model(out, "mixtral").save_pretrained(tmp_path / "resaved")
    resaved = saved_tensors(tmp_path / "resaved")
    assert resaved.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(tensor, resaved[name]), name


def test_tiny_vocab_is_padded_to_cover_the_tokenizer(tmp_path: Path) -> None:
    out = tool.make_model("gpt2", tmp_path / "tiny-vocab", layers=1, hidden=32, vocab=64, log=quiet)

    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    config = json.loads((out / "config.json").read_text())
    assert len(tokenizer) > 64  # 256 byte symbols always exist
    assert config["vocab_size"] == len(tokenizer)


def test_existing_output_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("precious")

    with pytest.raises(tool.MakeModelError, match="--force"):
        tool.make_model("llama", out, **TINY, log=quiet)
    assert tool.main(["--family", "llama", "--out", str(out), "--layers", "1"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"

    tool.make_model("llama", out, **TINY, force=True, log=quiet)
    assert not (out / "keep.txt").exists()
    assert (out / "model.safetensors").is_file()
    assert [path.name for path in tmp_path.iterdir()] == ["existing"]  # no leftover staging directory


@pytest.mark.parametrize(
    ("family", "options", "message"),
    [
        ("llama", {"experts": 4}, "experts"),
        ("gpt2", {"kv_heads": 2}, "kv-heads"),
        ("bert", {"tie_embeddings": True}, "tie-embeddings"),
        ("llama", {"hidden": 48, "heads": 5}, "divisible"),
        ("llama", {"params": "1M", "layers": 2, "hidden": 64}, "at most one"),
    ],
)
def test_rejects_inconsistent_options(tmp_path: Path, family: str, options: dict[str, object], message: str) -> None:
    with pytest.raises(tool.MakeModelError, match=message):
        tool.make_model(family, tmp_path / "rejected", log=quiet, **options)
    assert not (tmp_path / "rejected").exists()


def test_parse_param_count() -> None:
    assert tool.parse_param_count("2M") == 2_000_000
    assert tool.parse_param_count("1.5g") == 1_500_000_000
    assert tool.parse_param_count("500K") == 500_000
    assert tool.parse_param_count("7B") == 7_000_000_000
    assert tool.parse_param_count("123") == 123
    for bad in ("", "M", "2X", "-1M", "0"):
        with pytest.raises(ValueError):
            tool.parse_param_count(bad)


def test_zen_text_is_read_without_printing(capsys: pytest.CaptureFixture[str]) -> None:
    sys.modules.pop("this", None)  # `import this` prints only on its first import
    text = tool.zen_of_python()
    assert text.startswith("The Zen of Python")
    assert "Beautiful is better than ugly." in text
    assert capsys.readouterr().out == ""


def test_demo_continues_the_zen(tmp_path: Path) -> None:
    out = tool.make_demo(tmp_path / "demo", seed=0, log=quiet)

    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    # Any: transformers' own annotations make mypy reject generate() on an auto-loaded model.
    model: Any = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    prompt = tokenizer("Beautiful is", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**prompt, do_sample=False, max_new_tokens=12)
    continuation = str(tokenizer.decode(generated[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True))
    assert continuation.startswith(" better than ugly.")
