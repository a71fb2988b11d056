"""llm.c's binary formats: the model checkpoint (`gpt2_124M.bin`, fp32 or bf16) and `gpt2_tokenizer.bin`.

Model file: a 256 x int32 header, then every parameter concatenated in llm.c's order (see `_LLMC_ORDER`), each
tensor stacked over layers. llm.c's matmul weights are (out, in), exactly `nn.Linear`'s layout, so no transposes;
bf16 values are stored as the raw 16 bits of bfloat16.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from llmpy.atomic import atomic_open
from llmpy.config import ModelConfig
from llmpy.convert.hf import read_tiktoken_ranks
from llmpy.data.shards import SHARD_MAGIC
from llmpy.errors import LlmpyError
from llmpy.families import require_gpt2
from llmpy.gpt2 import EOT_TEXT, EOT_TOKEN, VOCAB_SIZE
from llmpy.model import GPT

MODEL_MAGIC = 20240326
TOKENIZER_MAGIC = 20240328
TOKENIZER_VERSION = 2
TOKENIZER_FILE_NAME = "gpt2_tokenizer.bin"  # llm.c's name; `convert --to llmc` writes it beside the model
HEADER_INTS = 256  # model and tokenizer files alike
HEADER_BYTES = HEADER_INTS * 4
VERSION_DTYPES = {3: "fp32", 5: "bf16"}
DTYPE_VERSIONS = {v: k for k, v in VERSION_DTYPES.items()}
BYTES_PER_PARAM = {"fp32": 4, "bf16": 2}
# header fields past this are nonsense, not a model (GPT-2 XL is 48 x 25 x 1600, T=1024)
_SANE_LIMIT = 1 << 20

# (llm.c tensor, llmpy per-block key or global key, per-layer?) in the file's order
_LLMC_ORDER = [
    ("wte", "transformer.wte.weight", False),
    ("wpe", "transformer.wpe.weight", False),
    ("ln1w", "ln_1.weight", True),
    ("ln1b", "ln_1.bias", True),
    ("qkvw", "attn.c_attn.weight", True),
    ("qkvb", "attn.c_attn.bias", True),
    ("attprojw", "attn.c_proj.weight", True),
    ("attprojb", "attn.c_proj.bias", True),
    ("ln2w", "ln_2.weight", True),
    ("ln2b", "ln_2.bias", True),
    ("fcw", "mlp.c_fc.weight", True),
    ("fcb", "mlp.c_fc.bias", True),
    ("fcprojw", "mlp.c_proj.weight", True),
    ("fcprojb", "mlp.c_proj.bias", True),
    ("lnfw", "transformer.ln_f.weight", False),
    ("lnfb", "transformer.ln_f.bias", False),
]


def _layer_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shape of each llm.c tensor, with the layer dimension first for per-layer ones."""
    L, C, Vp, T = config.n_layer, config.n_embd, config.padded_vocab_size, config.block_size
    return {
        "wte": (Vp, C), "wpe": (T, C),
        "ln1w": (L, C), "ln1b": (L, C),
        "qkvw": (L, 3 * C, C), "qkvb": (L, 3 * C),
        "attprojw": (L, C, C), "attprojb": (L, C),
        "ln2w": (L, C), "ln2b": (L, C),
        "fcw": (L, 4 * C, C), "fcb": (L, 4 * C),
        "fcprojw": (L, C, 4 * C), "fcprojb": (L, C),
        "lnfw": (C,), "lnfb": (C,),
    }  # fmt: skip


def _num_params(config: ModelConfig) -> int:
    return sum(int(np.prod(shape)) for shape in _layer_shapes(config).values())


def _config_from_header(header: np.ndarray, path: Path) -> tuple[ModelConfig, str]:
    """Validated (ModelConfig, dtype) from a model header."""
    magic, version = int(header[0]), int(header[1])
    if magic == SHARD_MAGIC:
        raise LlmpyError(f"{path}: this is an llm.c token shard (magic {SHARD_MAGIC}), not a model checkpoint")
    if magic != MODEL_MAGIC:
        raise LlmpyError(f"{path}: bad magic {magic}, expected {MODEL_MAGIC} (not an llm.c model .bin)")
    if version not in VERSION_DTYPES:
        raise LlmpyError(f"{path}: unsupported llm.c model version {version} (3 = fp32, 5 = bf16)")
    max_t, vocab, layers, heads, channels, padded = (int(x) for x in header[2:8])
    fields = dict(max_seq_len=max_t, vocab_size=vocab, num_layers=layers, num_heads=heads, channels=channels,
                  padded_vocab_size=padded)  # fmt: skip
    for name, value in fields.items():
        if not 0 < value <= _SANE_LIMIT:
            raise LlmpyError(f"{path}: header {name}={value} is out of range; the file is damaged or not a model")
    if channels % heads or padded < vocab:
        raise LlmpyError(f"{path}: inconsistent header (channels={channels}, num_heads={heads}, "
                         f"vocab_size={vocab}, padded_vocab_size={padded})")  # fmt: skip
    config = ModelConfig(n_layer=layers, n_head=heads, n_embd=channels, block_size=max_t, vocab_size=vocab,
                         padded_vocab_size=padded)  # fmt: skip
    return config, VERSION_DTYPES[version]


def _decode(raw: bytes, dtype: str) -> np.ndarray:
    """The parameter bytes as one flat fp32 array."""
    if dtype == "fp32":
        return np.frombuffer(raw, dtype="<f4")
    bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16  # bf16 is the top half of an fp32
    return bits.view(np.float32)


def _read_model_file(path: Path) -> bytes:
    """The bytes of an llm.c model file, checked to exist and to hold at least the header."""
    if not path.is_file():
        raise LlmpyError(f"{path}: no such llm.c model file")
    data = path.read_bytes()
    if len(data) < HEADER_BYTES:
        raise LlmpyError(f"{path}: {len(data)} bytes is shorter than the {HEADER_BYTES}-byte llm.c header")
    return data


def read_llmc_model(path: str | Path) -> GPT:
    """An llm.c model .bin (fp32 or bf16) -> an fp32 llmpy GPT."""
    path = Path(path)
    data = _read_model_file(path)
    header = np.frombuffer(data[:HEADER_BYTES], dtype="<i4")
    config, dtype = _config_from_header(header, path)
    expected = HEADER_BYTES + _num_params(config) * BYTES_PER_PARAM[dtype]
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "oversized"
        raise LlmpyError(f"{path}: file is {problem}: header implies {expected} bytes, found {len(data)}")
    flat = _decode(data[HEADER_BYTES:], dtype)
    state, offset = {}, 0
    for (name, key, per_layer), shape in zip(_LLMC_ORDER, _layer_shapes(config).values()):
        size = int(np.prod(shape))
        tensor = torch.from_numpy(flat[offset : offset + size].reshape(shape).copy())
        offset += size
        if per_layer:
            for i in range(config.n_layer):
                state[f"transformer.h.{i}.{key}"] = tensor[i]
        else:
            state[key] = tensor
    state["lm_head.weight"] = state["transformer.wte.weight"]
    model = GPT(config)
    model.load_state_dict(state, strict=True)
    return model


def _encode(tensor: torch.Tensor, dtype: str) -> bytes:
    """A tensor's bytes in llm.c's storage: little-endian fp32, or raw bfloat16 bits."""
    tensor = tensor.detach().to("cpu").contiguous()
    if dtype == "fp32":
        return tensor.to(torch.float32).numpy().astype("<f4").tobytes()
    return tensor.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes()


def write_llmc_model(model: GPT, path: str | Path, dtype: str = "fp32") -> None:
    """Write `model` as an llm.c model .bin (dtype "fp32" = version 3, "bf16" = version 5)."""
    require_gpt2(model, "llm.c", path)
    if dtype not in DTYPE_VERSIONS:
        raise LlmpyError(f"{path}: unsupported llm.c dtype {dtype!r} (use fp32 or bf16)")
    config = model.config
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:8] = [MODEL_MAGIC, DTYPE_VERSIONS[dtype], config.block_size, config.vocab_size, config.n_layer,
                  config.n_head, config.n_embd, config.padded_vocab_size]  # fmt: skip
    params = model.state_dict()
    with atomic_open(path) as handle:
        handle.write(header.tobytes())
        for _, key, per_layer in _LLMC_ORDER:
            if per_layer:
                tensor = torch.stack([params[f"transformer.h.{i}.{key}"] for i in range(config.n_layer)])
            else:
                tensor = params[key]
            handle.write(_encode(tensor, dtype))


def write_llmc_tokenizer(path: str | Path, bpe_file: Path) -> None:
    """Write llm.c's `gpt2_tokenizer.bin` (version 2: header, then each token as uint8 length + raw bytes)."""
    ranks = read_tiktoken_ranks(bpe_file)
    tokens = {rank: token for token, rank in ranks.items()}
    tokens[EOT_TOKEN] = EOT_TEXT.encode()
    missing = [i for i in range(VOCAB_SIZE) if i not in tokens]
    if missing or len(tokens) != VOCAB_SIZE:
        raise LlmpyError(f"{bpe_file}: ranks are not GPT-2's 0..{EOT_TOKEN - 1} (missing e.g. {missing[:3]})")
    header = np.zeros(HEADER_INTS, dtype="<u4")
    header[:4] = [TOKENIZER_MAGIC, TOKENIZER_VERSION, VOCAB_SIZE, EOT_TOKEN]
    records = []
    for i in range(VOCAB_SIZE):
        token = tokens[i]
        if not 0 < len(token) < 256:
            raise LlmpyError(f"{bpe_file}: token {i} is {len(token)} bytes; llm.c stores lengths in one byte")
        records.append(bytes([len(token)]) + token)
    with atomic_open(path) as handle:
        handle.write(header.tobytes())
        handle.write(b"".join(records))
