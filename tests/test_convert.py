"""Conversion to and from Hugging Face GPT-2 and llm.c's .bin formats: same logits, same bytes, clear errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from llmpy.config import ModelConfig  # noqa: E402
from llmpy.convert.hf import gpt_from_hf_state_dict, load_hf_model, save_hf_model  # noqa: E402
from llmpy.convert.llmc import read_llmc_model, write_llmc_model, write_llmc_tokenizer  # noqa: E402
from llmpy.errors import LlmpyError  # noqa: E402
from llmpy.model import GPT  # noqa: E402

DATA = Path("/work/shared/data")
BPE_FILE = DATA / "gpt2.tiktoken"
OPENAI_BPE = DATA / "gpt2_bpe"
TINY = dict(n_layer=2, n_head=2, n_embd=64, n_positions=64)


def tiny_hf_config(**overrides) -> "transformers.GPT2Config":
    values = dict(TINY, vocab_size=50257, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                  attn_pdrop=0.0, summary_first_dropout=0.0)  # fmt: skip
    return transformers.GPT2Config(**{**values, **overrides})


@pytest.fixture(scope="module")
def hf_model() -> "transformers.GPT2LMHeadModel":
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(tiny_hf_config()).eval()
    with torch.no_grad():  # non-trivial biases and norms, so a missed tensor shows in the logits
        for name, p in model.named_parameters():
            if "bias" in name or "ln" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def tiny_gpt() -> GPT:
    torch.manual_seed(1)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=64)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def tokens() -> torch.Tensor:
    return torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(2))


def llmpy_logits(model: GPT) -> torch.Tensor:
    with torch.no_grad():
        return model.logits(model.eval()(tokens()))


def hf_logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(tokens()).logits


# --- Hugging Face ---


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_hf_round_trip(hf_model, tmp_path, safe):
    hf_model.save_pretrained(tmp_path / "hf", safe_serialization=safe)
    model = load_hf_model(tmp_path / "hf")
    assert model.config.block_size == 64 and model.transformer.wte.weight.shape == (50304, 64)
    assert torch.all(model.transformer.wte.weight[50257:] == 0)
    torch.testing.assert_close(llmpy_logits(model), hf_logits(hf_model), atol=1e-5, rtol=0)

    save_hf_model(model, tmp_path / "out")
    reloaded, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    torch.testing.assert_close(hf_logits(reloaded), hf_logits(hf_model), atol=1e-5, rtol=0)


def test_hf_config_written(tiny_gpt, tmp_path):
    save_hf_model(tiny_gpt, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no temp files
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o644
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["n_layer"], config["n_head"], config["n_embd"], config["n_positions"]) == (2, 2, 64, 64)
    assert config["vocab_size"] == 50257 and config["activation_function"] == "gelu_new"
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()
        assert f.get_slice("transformer.wte.weight").get_shape() == [50257, 64]
        assert f.get_slice("transformer.h.0.mlp.c_fc.weight").get_shape() == [64, 256]  # Conv1D (in, out)


def test_hf_keys_without_prefix(hf_model):
    state = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    model = gpt_from_hf_state_dict(state, hf_model.config.to_dict())
    torch.testing.assert_close(llmpy_logits(model), hf_logits(hf_model), atol=1e-5, rtol=0)


def test_hf_misshaped_tensor(hf_model):
    state = dict(hf_model.state_dict())
    state["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(256, 64)  # (out, in): not HF's Conv1D layout
    with pytest.raises(LlmpyError, match=r"h\.1\.mlp\.c_fc\.weight has shape \[256, 64\], expected \[64, 256\]"):
        gpt_from_hf_state_dict(state, hf_model.config.to_dict())


def test_hf_missing_tensor(hf_model):
    state = {k: v for k, v in hf_model.state_dict().items() if "ln_f.bias" not in k}
    with pytest.raises(LlmpyError, match=r"missing tensor transformer\.ln_f\.bias"):
        gpt_from_hf_state_dict(state, hf_model.config.to_dict())


@pytest.mark.parametrize(
    "overrides, message",
    [({"activation_function": "relu"}, "activation_function 'relu'"), ({"vocab_size": 1000}, "vocab_size is 1000")],
)
def test_hf_bad_config(hf_model, overrides, message):
    with pytest.raises(LlmpyError, match=message):
        gpt_from_hf_state_dict(hf_model.state_dict(), {**hf_model.config.to_dict(), **overrides})


def test_hf_unknown_name():
    with pytest.raises(LlmpyError, match="not a directory"):
        load_hf_model("no-such-model-dir")


def test_hf_offline_download(monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-llmpy-test-hf-home")
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(LlmpyError, match="cannot download gpt2 from the Hugging Face hub: offline"):
        load_hf_model("gpt2")


@pytest.mark.skipif(not BPE_FILE.is_file(), reason="gpt2.tiktoken not available")
def test_hf_tokenizer_files(tiny_gpt, tmp_path):
    save_hf_model(tiny_gpt, tmp_path, bpe_file=BPE_FILE)
    if (OPENAI_BPE / "encoder.json").is_file():
        assert json.loads((tmp_path / "vocab.json").read_text()) == json.loads((OPENAI_BPE / "encoder.json").read_text())
        ours = [line for line in (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()[1:] if line]
        theirs = [line for line in (OPENAI_BPE / "vocab.bpe").read_text(encoding="utf-8").splitlines()[1:] if line]
        assert ours == theirs
    for cls in (transformers.GPT2TokenizerFast, transformers.GPT2Tokenizer):
        tokenizer = cls.from_pretrained(tmp_path)
        assert tokenizer.encode("Hello world") == [15496, 995]
        assert tokenizer.eos_token_id == 50256


# --- llm.c model .bin ---


def numpy_llmc_bytes(model: GPT, dtype: str = "fp32") -> bytes:
    """An independent llm.c writer: header + parameters in llm.c's order, straight from the named parameters."""
    c = model.config
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    blocks = lambda key: np.stack([sd[f"transformer.h.{i}.{key}"] for i in range(c.n_layer)])  # noqa: E731
    tensors = [sd["transformer.wte.weight"], sd["transformer.wpe.weight"]]
    for key in ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                "mlp.c_proj.weight", "mlp.c_proj.bias"):  # fmt: skip
        tensors.append(blocks(key))
    tensors += [sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"]]
    header = np.zeros(256, dtype=np.int32)
    header[:8] = [20240326, 3 if dtype == "fp32" else 5, c.block_size, c.vocab_size, c.n_layer, c.n_head,
                  c.n_embd, c.padded_vocab_size]  # fmt: skip
    flat = np.concatenate([t.astype(np.float32).ravel() for t in tensors])
    if dtype == "bf16":  # round to nearest even, then keep the top 16 bits
        bits = flat.view(np.uint32)
        flat = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return header.tobytes() + flat.tobytes()


def test_llmc_read_numpy_written(tiny_gpt, tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(numpy_llmc_bytes(tiny_gpt))
    model = read_llmc_model(path)
    torch.testing.assert_close(llmpy_logits(model), llmpy_logits(tiny_gpt), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_llmc_write_byte_identical(tiny_gpt, tmp_path, dtype):
    write_llmc_model(tiny_gpt, tmp_path / "model.bin", dtype=dtype)
    assert (tmp_path / "model.bin").read_bytes() == numpy_llmc_bytes(tiny_gpt, dtype)
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]  # no temp file left behind


def test_llmc_bf16_round_trip(tiny_gpt, tmp_path):
    write_llmc_model(tiny_gpt, tmp_path / "model.bin", dtype="bf16")
    model = read_llmc_model(tmp_path / "model.bin")
    for (name, ours), theirs in zip(model.state_dict().items(), tiny_gpt.state_dict().values()):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=2**-8, msg=name)
    exact = tiny_gpt.state_dict()["transformer.h.0.attn.c_attn.weight"].to(torch.bfloat16).float()
    assert torch.equal(model.state_dict()["transformer.h.0.attn.c_attn.weight"], exact)


def _header_file(tmp_path: Path, tiny_gpt: GPT, index: int, value: int) -> Path:
    data = bytearray(numpy_llmc_bytes(tiny_gpt))
    data[index * 4 : index * 4 + 4] = np.int32(value).tobytes()
    path = tmp_path / "model.bin"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "index, value, message",
    [
        (0, 12345, "bad magic 12345"),
        (0, 20240520, "token shard"),
        (1, 4, "unsupported llm.c model version 4"),
        (6, -64, "channels=-64 is out of range"),
        (5, 3, "inconsistent header"),
    ],
)
def test_llmc_bad_header(tiny_gpt, tmp_path, index, value, message):
    with pytest.raises(LlmpyError, match=message):
        read_llmc_model(_header_file(tmp_path, tiny_gpt, index, value))


def test_llmc_size_mismatch(tiny_gpt, tmp_path):
    data = numpy_llmc_bytes(tiny_gpt)
    path = tmp_path / "model.bin"
    path.write_bytes(data[:-8])
    with pytest.raises(LlmpyError, match=f"truncated: header implies {len(data)} bytes, found {len(data) - 8}"):
        read_llmc_model(path)
    path.write_bytes(data + b"\0" * 4)
    with pytest.raises(LlmpyError, match="oversized"):
        read_llmc_model(path)
    with pytest.raises(LlmpyError, match="no such llm.c model file"):
        read_llmc_model(tmp_path / "missing.bin")


# --- llm.c tokenizer .bin ---


@pytest.mark.skipif(not BPE_FILE.is_file(), reason="gpt2.tiktoken not available")
def test_llmc_tokenizer(tmp_path):
    path = tmp_path / "gpt2_tokenizer.bin"
    write_llmc_tokenizer(path, BPE_FILE)
    header = np.frombuffer(path.read_bytes()[:1024], dtype=np.uint32)
    assert list(header[:4]) == [20240328, 2, 50257, 50256] and not header[4:].any()
    data, tokens, offset = path.read_bytes(), [], 1024
    while offset < len(data):  # llm.c's layout: one length byte, then the token's bytes
        tokens.append(data[offset + 1 : offset + 1 + data[offset]])
        offset += 1 + data[offset]
    assert len(tokens) == 50257 and offset == len(data)
    assert tokens[15496] == b"Hello" and tokens[995] == b" world" and tokens[50256] == b"<|endoftext|>"


@pytest.fixture(autouse=True)
def _quiet_transformers():
    logging.getLogger("transformers").setLevel(logging.ERROR)


# --- file modes and --out safety (issue 15 items 13 and 7) ---


@pytest.mark.parametrize("umask", [0o002, 0o027])
def test_hf_files_get_the_mode_of_any_new_file(tiny_gpt, tmp_path, umask):
    import os

    previous = os.umask(umask)
    try:
        save_hf_model(tiny_gpt, tmp_path / "hf")
        (tmp_path / "plain").write_bytes(b"")
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    assert (tmp_path / "plain").stat().st_mode & 0o777 == expected
    for name in ("model.safetensors", "config.json"):  # safetensors alone used to come out 0600
        assert (tmp_path / "hf" / name).stat().st_mode & 0o777 == expected, name


@pytest.fixture()
def llmpy_run(tiny_gpt, tmp_path, monkeypatch):
    from llmpy.checkpoint import export_model

    monkeypatch.setenv("LLMPY_OFFLINE", "1")
    monkeypatch.setenv("LLMPY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LLMPY_GPT2_BPE", raising=False)
    monkeypatch.chdir(tmp_path)
    return export_model(tmp_path / "run", tiny_gpt, {}).parent


def convert(capsys, model, to, out, *extra) -> tuple[int, str]:
    from llmpy.cli import main

    code = main(["convert", "--model", str(model), "--to", to, "--out", str(out), *extra])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("to", ["hf", "llmpy", "llmc"])
def test_convert_never_overwrites_an_unrelated_file(llmpy_run, tmp_path, capsys, to):
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes")
    code, err = convert(capsys, llmpy_run, to, mine)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"llmpy: error: --out {mine}: ")
    assert "choose a new" in err and "Traceback" not in err
    assert mine.read_text() == "my notes"
    code, err = convert(capsys, llmpy_run, to, mine / "model.bin")  # a file where a directory must be
    assert code == 2 and f"{mine} is a file, not a directory" in err and mine.read_text() == "my notes"


@pytest.mark.parametrize("to", ["hf", "llmpy", "llmc"])
def test_convert_refuses_a_directory_of_other_files(llmpy_run, tmp_path, capsys, to):
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("mine")
    code, err = convert(capsys, llmpy_run, to, other)
    assert code == 2 and err.count("\n") == 1 and f"--out {other}: " in err
    assert ("thesis.tex" in err) if to != "llmc" else ("is a directory" in err and "model.bin" in err)
    assert sorted(p.name for p in other.iterdir()) == ["thesis.tex"]


def test_convert_refuses_an_output_of_another_kind(llmpy_run, tmp_path, capsys):
    code, err = convert(capsys, llmpy_run, "hf", llmpy_run)  # an llmpy run directory is not an hf output
    assert code == 2 and "model_00000000.pt" in err
    assert convert(capsys, llmpy_run, "hf", tmp_path / "hf")[0] == 0
    code, err = convert(capsys, llmpy_run, "llmpy", tmp_path / "hf")  # nor the reverse
    assert code == 2 and "config.json" in err and not (tmp_path / "hf" / "model_00000000.pt").exists()


def test_convert_replaces_its_own_earlier_output(llmpy_run, tmp_path, capsys):
    from llmpy.cli import main

    for to, out in (("hf", tmp_path / "hf"), ("llmpy", tmp_path / "copy"), ("llmc", tmp_path / "llmc" / "m.bin")):
        assert convert(capsys, llmpy_run, to, out)[0] == 0
        assert main(["convert", "--model", str(llmpy_run), "--to", to, "--out", str(out)]) == 0
        assert "replacing the earlier conversion there" in capsys.readouterr().out
    tokenizer = tmp_path / "llmc" / "gpt2_tokenizer.bin"
    tokenizer.write_text("not llm.c's")  # beside the model: refused too, the model not written
    (tmp_path / "llmc" / "m.bin").unlink()
    code, err = convert(capsys, llmpy_run, "llmc", tmp_path / "llmc" / "m.bin")
    assert code == 2 and "gpt2_tokenizer.bin" in err and not (tmp_path / "llmc" / "m.bin").exists()
