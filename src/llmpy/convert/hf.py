"""Hugging Face GPT-2 <-> llmpy: weights (safetensors / pytorch_model.bin), config.json and the GPT-2 tokenizer files.

HF's GPT-2 stores its projections as `Conv1D` weights of shape (in, out); llmpy uses `nn.Linear`, (out, in), so those
four matrices per block are transposed on the way in and out. HF keeps the real 50257-row embedding; llmpy pads it to
50304 zero rows (llm.c's layout), added on load and dropped on save.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import torch
import torch.nn as nn

from llmpy.atomic import atomic_open, atomic_write_bytes
from llmpy.config import ModelConfig
from llmpy.convert.hf_modern import is_hf_modern, modern_from_hf
from llmpy.errors import LlmpyError
from llmpy.families import require_gpt2
from llmpy.gpt2 import BLOCK_SIZE, EOT_TEXT, EOT_TOKEN, HUB_NAMES, VOCAB_SIZE
from llmpy.model import GPT

TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
# per-block tensors; the Conv1D ones are (in, out) in HF and (out, in) in llmpy
_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
_LAYER_NORMS = ("ln_1", "ln_2")
# what `save_hf_model` writes (the last four only with the tokenizer)
HF_FILES = ("model.safetensors", "config.json", "vocab.json", "merges.txt", "tokenizer_config.json",
            "special_tokens_map.json")


_BLOCK_TENSORS = [
    f"{module}.{kind}" for module in ("ln_1", *_CONV1D[:2], "ln_2", *_CONV1D[2:]) for kind in ("weight", "bias")
]


def config_from_hf(hf_config: dict, origin: str = "config.json") -> ModelConfig:
    """A `GPT2Config` dict -> ModelConfig; anything llmpy's GPT-2 cannot represent is an error."""
    if hf_config.get("model_type", "gpt2") != "gpt2":
        raise LlmpyError(f"{origin}: model_type is {hf_config.get('model_type')!r}, only 'gpt2' and 'llmpy' (llmpy's "
                         f"own export) can be converted")
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in TANH_GELUS:
        raise LlmpyError(f"{origin}: activation_function {activation!r} is not GPT-2's tanh GELU ({' or '.join(TANH_GELUS)})")
    vocab = hf_config.get("vocab_size", VOCAB_SIZE)
    if vocab != VOCAB_SIZE:
        raise LlmpyError(f"{origin}: vocab_size is {vocab}, llmpy needs GPT-2's {VOCAB_SIZE}")
    eps = hf_config.get("layer_norm_epsilon", 1e-5)
    if abs(eps - 1e-5) > 1e-12:  # llmpy's LayerNorm uses PyTorch's default 1e-5
        raise LlmpyError(f"{origin}: layer_norm_epsilon is {eps}, llmpy's GPT-2 uses 1e-5")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf_config.get(flag):
            raise LlmpyError(f"{origin}: {flag}=true is not plain GPT-2 attention")
    if hf_config.get("scale_attn_weights", True) is False:
        raise LlmpyError(f"{origin}: scale_attn_weights=false is not plain GPT-2 attention")
    try:
        return ModelConfig(
            n_layer=int(hf_config["n_layer"]),
            n_head=int(hf_config["n_head"]),
            n_embd=int(hf_config["n_embd"]),
            block_size=int(hf_config["n_positions"]),
        )
    except KeyError as exc:
        raise LlmpyError(f"{origin}: missing GPT-2 config field {exc.args[0]!r}") from None


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as in `GPT2Model` (no `transformer.` prefix); buffers that are not weights are dropped."""
    out = {}
    for key, value in state.items():
        name = key.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the causal-mask buffers older transformers saved
        out[name] = value
    return out


def _take(state: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], origin: str) -> torch.Tensor:
    """The tensor `name` checked against `shape`, as fp32."""
    if name not in state:
        raise LlmpyError(f"{origin}: missing tensor transformer.{name} (expected shape {list(shape)})")
    tensor = state[name]
    if tuple(tensor.shape) != shape:
        raise LlmpyError(f"{origin}: tensor transformer.{name} has shape {list(tensor.shape)}, expected {list(shape)}")
    return tensor.detach().to(torch.float32)


def _expected_shape(name: str, C: int) -> tuple[int, ...]:
    """Shape of a per-block tensor in HF's layout (Conv1D: (in, out))."""
    module, kind = name.rsplit(".", 1)
    out_features = {"attn.c_attn": 3 * C, "attn.c_proj": C, "mlp.c_fc": 4 * C, "mlp.c_proj": C}.get(module, C)
    in_features = 4 * C if module == "mlp.c_proj" else C
    if kind == "bias" or module in _LAYER_NORMS:
        return (out_features,)
    return (in_features, out_features)


def gpt_from_hf_state_dict(state: dict[str, torch.Tensor], hf_config: dict, origin: str = "state dict") -> GPT:
    """A GPT2LMHeadModel / GPT2Model state dict plus its config dict -> an llmpy GPT with the same weights."""
    config = config_from_hf(hf_config, origin)
    state = _strip_prefix(state)
    C, V = config.n_embd, config.vocab_size
    wte = _take(state, "wte.weight", (V, C), origin)
    if "lm_head.weight" in state and not torch.equal(state["lm_head.weight"].to(torch.float32), wte):
        raise LlmpyError(f"{origin}: lm_head.weight differs from wte; llmpy's GPT-2 ties the output head to wte")
    model = GPT(config)
    ours = {
        "transformer.wpe.weight": _take(state, "wpe.weight", (config.block_size, C), origin),
        "transformer.ln_f.weight": _take(state, "ln_f.weight", (C,), origin),
        "transformer.ln_f.bias": _take(state, "ln_f.bias", (C,), origin),
    }
    padded = torch.zeros(config.padded_vocab_size, C)
    padded[:V] = wte
    ours["transformer.wte.weight"] = padded
    ours["lm_head.weight"] = padded
    for i in range(config.n_layer):
        for name in _BLOCK_TENSORS:
            tensor = _take(state, f"h.{i}.{name}", _expected_shape(name, C), origin)
            if name.rsplit(".", 1)[0] in _CONV1D and name.endswith("weight"):
                tensor = tensor.t().contiguous()
            ours[f"transformer.h.{i}.{name}"] = tensor
    model.load_state_dict(ours, strict=True)
    return model


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All weights in a model directory: *.safetensors preferred, else pytorch_model.bin (tensors only, no pickled code)."""
    safetensor_files = sorted(directory.glob("*.safetensors"))
    if safetensor_files:
        from safetensors.torch import load_file

        state: dict[str, torch.Tensor] = {}
        for file in safetensor_files:
            try:
                state.update(load_file(file))
            except Exception as exc:
                raise LlmpyError(f"{file}: not a readable safetensors file ({exc})") from None
        return state
    bin_file = directory / "pytorch_model.bin"
    if bin_file.is_file():
        try:
            return torch.load(bin_file, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise LlmpyError(f"{bin_file}: not a readable weights-only PyTorch file ({type(exc).__name__})") from None
    raise LlmpyError(f"{directory}: no model.safetensors or pytorch_model.bin")


def _download(name: str) -> Path:
    """The hub snapshot of `name` (config.json + safetensors): from the local HF cache, else downloaded."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise LlmpyError(f"cannot download {name}: huggingface_hub is not installed; pass a local directory") from None
    patterns = ["config.json", "*.safetensors"]
    try:
        return Path(snapshot_download(name, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass  # not cached yet: go to the network
    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as exc:
        raise LlmpyError(
            f"cannot download {name} from the Hugging Face hub: offline? ({type(exc).__name__}); "
            f"pass a local directory with config.json and model.safetensors instead"
        ) from None


def load_hf_model(path_or_name: str | Path) -> nn.Module:
    """A local HF GPT-2 directory, or a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl) -> llmpy GPT; a directory
    `convert --to hf` wrote of a modern-family model (model_type "llmpy") -> that ModernGPT."""
    path = Path(path_or_name)
    if path.is_dir():
        directory = path
    elif str(path_or_name).removeprefix("openai-community/") in HUB_NAMES:
        directory = _download(str(path_or_name))
    else:
        raise LlmpyError(f"{path_or_name}: not a directory and not one of the hub models {', '.join(HUB_NAMES)}")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise LlmpyError(f"{directory}: no config.json (not a Hugging Face model directory)")
    try:
        hf_config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise LlmpyError(f"{config_file}: invalid JSON ({exc})") from None
    if is_hf_modern(hf_config):  # an export of llmpy's modern family (`convert --to hf`)
        return modern_from_hf(_read_weights(directory), hf_config, origin=str(directory))
    return gpt_from_hf_state_dict(_read_weights(directory), hf_config, origin=str(directory))


def hf_config_dict(config: ModelConfig) -> dict:
    """The GPT2Config fields for `config`."""
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_embd": config.n_embd,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "vocab_size": config.vocab_size,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "bos_token_id": EOT_TOKEN,
        "eos_token_id": EOT_TOKEN,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "summary_first_dropout": 0.0,
        "tie_word_embeddings": True,
        "scale_attn_weights": True,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """llmpy weights in GPT2LMHeadModel's layout: unpadded wte, Conv1D (in, out) projections, no tied lm_head."""
    config = model.config
    out = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied to wte; HF re-ties it on load
        tensor = value.detach().to("cpu", torch.float32)
        if key == "transformer.wte.weight":
            tensor = tensor[: config.vocab_size]
        elif key.endswith(".weight") and any(f".{m}." in key for m in _CONV1D):
            tensor = tensor.t()
        out[key] = tensor.contiguous().clone()
    return out


def save_hf_model(model: GPT, out_dir: str | Path, bpe_file: Path | None = None) -> None:
    """Write `config.json` + `model.safetensors` (and the tokenizer files when `bpe_file` is given) to `out_dir`."""
    from safetensors.torch import save_file

    require_gpt2(model, "Hugging Face GPT-2", out_dir)
    if model.config.vocab_size != VOCAB_SIZE or model.config.padded_vocab_size < VOCAB_SIZE:
        raise LlmpyError(f"{out_dir}: only GPT-2's {VOCAB_SIZE}-token vocabulary can be exported")
    out_dir = Path(out_dir)
    with atomic_open(out_dir / "model.safetensors") as handle:
        # safetensors writes by file name, straight from the tensors (no copy in memory): into the temp file
        save_file(hf_state_dict(model), handle.name, metadata={"format": "pt"})  # transformers wants the format tag
    atomic_write_bytes(out_dir / "config.json", (json.dumps(hf_config_dict(model.config), indent=2) + "\n").encode())
    if bpe_file is not None:
        save_hf_tokenizer(out_dir, bpe_file, model_max_length=model.config.block_size)


# --- tokenizer: tiktoken ranks -> OpenAI's encoder.json / vocab.bpe (HF's vocab.json / merges.txt) ---


def read_tiktoken_ranks(bpe_file: str | Path) -> dict[bytes, int]:
    """tiktoken's ranks file (`base64(token) rank` per line) -> {token bytes: rank}."""
    bpe_file = Path(bpe_file)
    if not bpe_file.is_file():
        raise LlmpyError(f"{bpe_file}: no such BPE ranks file (GPT-2's gpt2.tiktoken)")
    ranks = {}
    for number, line in enumerate(bpe_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError:
            raise LlmpyError(f"{bpe_file}:{number}: not a tiktoken ranks line ({line[:40]!r})") from None
    return ranks


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (printable bytes map to themselves, the rest above 255)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Run BPE over `token`'s bytes using only merges ranked below `max_rank`; returns the final parts."""
    parts = [bytes([b]) for b in token]
    while True:
        best_index, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_index, best_rank = i, rank
        if best_index < 0:
            return parts
        parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list in rank order: each multi-byte token is the one merge of the two parts lower ranks leave."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = _bpe_parts(ranks, token, max_rank=rank)
        if len(parts) != 2:
            raise LlmpyError(f"BPE ranks: token {token!r} (rank {rank}) is not one merge of lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def gpt2_vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[str]]:
    """tiktoken ranks -> (encoder.json dict with <|endoftext|>, merges as 'a b' lines), in OpenAI's spelling."""
    byte_map = bytes_to_unicode()
    spell = lambda token: "".join(byte_map[b] for b in token)  # noqa: E731
    vocab = {spell(token): rank for token, rank in ranks.items()}
    vocab[EOT_TEXT] = EOT_TOKEN
    merges = [f"{spell(a)} {spell(b)}" for a, b in recover_merges(ranks)]
    return vocab, merges


def save_hf_tokenizer(out_dir: str | Path, bpe_file: str | Path, model_max_length: int = BLOCK_SIZE) -> None:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json for GPT2Tokenizer(Fast)."""
    out_dir = Path(out_dir)
    vocab, merges = gpt2_vocab_and_merges(read_tiktoken_ranks(bpe_file))
    atomic_write_bytes(out_dir / "vocab.json", json.dumps(vocab, ensure_ascii=False).encode())
    atomic_write_bytes(out_dir / "merges.txt", ("#version: 0.2\n" + "\n".join(merges) + "\n").encode())
    special = {"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT}
    tokenizer_config = {
        **special,
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": model_max_length,
        "add_prefix_space": False,
    }
    atomic_write_bytes(out_dir / "tokenizer_config.json", (json.dumps(tokenizer_config, indent=2) + "\n").encode())
    atomic_write_bytes(out_dir / "special_tokens_map.json", (json.dumps(special, indent=2) + "\n").encode())
