"""The modern family (llmpy's `modern` and `frontier` recipes) <-> a Hugging Face model directory that transformers
loads with `trust_remote_code=True`: `model.safetensors` under llmpy's own parameter names, a `config.json` holding
the architecture's switches (model_type "llmpy", classes named through `auto_map`), the GPT-2 tokenizer files, and
llmpy's configuration_llmpy.py / modeling_llmpy.py (llmpy/convert/hf_remote/, copied as they are: they import only
torch and transformers)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from llmpy.atomic import atomic_open, atomic_write_bytes
from llmpy.errors import LlmpyError
from llmpy.gpt2 import EOT_TOKEN, VOCAB_SIZE
from llmpy.modern import ModernConfig, ModernGPT

MODEL_TYPE = "llmpy"
REMOTE_FILES = ("configuration_llmpy.py", "modeling_llmpy.py")
GENERATION_CONFIG = "generation_config.json"
# what `save_hf_modern` writes beside llmpy.convert.hf.HF_FILES (the weights, config.json, the tokenizer files)
HF_MODERN_FILES = (*REMOTE_FILES, GENERATION_CONFIG)
AUTO_MAP = {"AutoConfig": "configuration_llmpy.LlmpyConfig",
            "AutoModelForCausalLM": "modeling_llmpy.LlmpyForCausalLM"}
_HF_ONLY = ("model_type", "architectures", "auto_map", "vocab_size", "bos_token_id", "eos_token_id", "pad_token_id",
            "tie_word_embeddings", "torch_dtype", "dtype", "transformers_version", "use_cache")


def hf_modern_config(config: ModernConfig, dtype: torch.dtype = torch.float32) -> dict:
    """config.json: every ModernConfig field under its own name, plus what transformers reads."""
    values = config.to_dict()
    return {"model_type": MODEL_TYPE, "architectures": ["LlmpyForCausalLM"], "auto_map": AUTO_MAP, **values,
            "bos_token_id": EOT_TOKEN, "eos_token_id": EOT_TOKEN, "pad_token_id": EOT_TOKEN,
            "tie_word_embeddings": bool(config.tie), "torch_dtype": str(dtype).removeprefix("torch."),
            "use_cache": True}


def save_hf_modern(model: ModernGPT, out_dir: str | Path, bpe_file: Path | None = None,
                   dtype: torch.dtype = torch.float32) -> None:
    """Write the directory (see the module docstring); the tokenizer files when `bpe_file` is given."""
    from safetensors.torch import save_file

    from llmpy.convert.hf import save_hf_tokenizer

    if model.config.vocab_size != VOCAB_SIZE:
        raise LlmpyError(f"{out_dir}: only GPT-2's {VOCAB_SIZE}-token vocabulary can be exported")
    out_dir = Path(out_dir)
    # every tensor its own copy (a tied head is stored twice: safetensors refuses shared storage)
    state = {key: value.detach().to("cpu", dtype).contiguous().clone() for key, value in model.state_dict().items()}
    with atomic_open(out_dir / "model.safetensors") as handle:
        save_file(state, handle.name, metadata={"format": "pt"})
    config = hf_modern_config(model.config, dtype)
    atomic_write_bytes(out_dir / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    source = Path(__file__).parent / "hf_remote"
    for name in REMOTE_FILES:
        atomic_write_bytes(out_dir / name, (source / name).read_bytes())
    generation = {"bos_token_id": EOT_TOKEN, "eos_token_id": EOT_TOKEN, "pad_token_id": EOT_TOKEN}
    atomic_write_bytes(out_dir / GENERATION_CONFIG, (json.dumps(generation, indent=2) + "\n").encode())
    if bpe_file is not None:
        save_hf_tokenizer(out_dir, bpe_file, model_max_length=model.config.block_size)


def is_hf_modern(hf_config: dict) -> bool:
    return hf_config.get("model_type") == MODEL_TYPE


def _config_values(hf_config: dict, origin: str) -> dict:
    """config.json's ModernConfig fields, each a number of its field's type (a whole number for an int field)."""
    values = {}
    for field in dataclasses.fields(ModernConfig):
        if field.name not in hf_config:
            continue
        value = hf_config[field.name]
        kind = int if field.type in (int, "int") else float
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int
                                                                             and not float(value).is_integer()):
            wanted = "a whole number" if kind is int else "a number"
            raise LlmpyError(f"{origin}: config.json {field.name} is {value!r}, expected {wanted}")
        values[field.name] = kind(value)
    return values


def modern_from_hf(state: dict[str, torch.Tensor], hf_config: dict, origin: str) -> ModernGPT:
    """An exported directory's weights and config.json -> the llmpy ModernGPT they came from."""
    fields = {f.name for f in dataclasses.fields(ModernConfig)}
    unknown = sorted(set(hf_config) - fields - set(_HF_ONLY))
    if unknown:
        raise LlmpyError(f"{origin}: config.json has settings this llmpy does not know: {', '.join(unknown)} "
                         "(written by a newer llmpy?)")
    if hf_config.get("vocab_size", VOCAB_SIZE) != VOCAB_SIZE:
        raise LlmpyError(f"{origin}: vocab_size is {hf_config.get('vocab_size')}, llmpy needs GPT-2's {VOCAB_SIZE}")
    config = ModernConfig(**_config_values(hf_config, origin))
    model = ModernGPT(config)
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise LlmpyError(f"{origin}: weights do not match config.json: "
                         + "; ".join(part for part in (f"missing {', '.join(missing[:5])}" if missing else "",
                                                        f"unexpected {', '.join(extra[:5])}" if extra else "") if part))
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise LlmpyError(f"{origin}: tensor {key} has shape {list(tensor.shape)}, config.json implies "
                             f"{list(expected[key].shape)}")
    model.load_state_dict({key: tensor.to(torch.float32) for key, tensor in state.items()}, strict=True)
    return model
