"""An llmpy modern-family model (llmpy's `modern` and `frontier` recipes) for Hugging Face transformers.

Written by `llmpy convert --to hf` next to the weights; needs only torch and transformers:

    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=True)  # else a prompt: it reads config
    out = model.generate(**tokenizer(["Hello"], return_tensors="pt"), max_new_tokens=20)

It computes what llmpy's ModernGPT computes (llmpy/modern.py, llmpy/frontier/), with its parameter names, so the
weights load as they are. GPT-2's sizes and BPE vocabulary; per block a pre-norm causal self-attention and MLP; the
switches in config.json (each 0 = off) change the math:

  rotary, rope_base, rope_dims  rotary positions on q and k (pairs (i, i + r/2) of the first r dims, r = rope_dims or
                                the head size), else learned absolute positions (transformer.wpe)
  qk_norm, relu2, rmsnorm, bias RMS-normed q and k; ReLU(x)^2 in the MLP (else GELU); parameter-free RMSNorm (else
                                LayerNorm); biases in the linear layers
  softcap, sigmoid_cap          logits -> softcap * tanh(l / softcap), or sigmoid_cap * sigmoid((l + 5) / 7.5)
  value_embeds, ve_gate         k extra token embeddings added to v in the first and last k blocks (table i serves
                                blocks i and L - k + i), with two learned scalars or a per-head sigmoid gate
  unet, skip_gate               block L - 1 - i adds block i's output (i < L/2), weighted, optionally per-token gated
  doc_mask                      a position attends only to its own document (documents start at each <|endoftext|>)
  attn_gate                     each head's output times a sigmoid of 12 dims of the attention input
  smear                         each token's embedding plus a gated copy of the previous token's
  bigram, bigram_dim            a hashed (previous token, token) embedding table, times a fixed +-1 pattern per pair,
                                added before the first block and after every attention sub-layer, with learned weights
  key_offset                    the keys' dims past rope_dims are taken from the previous position
  backout                       the stream after the first 2L/3 blocks, weighted, is subtracted before the final norm
  tie                           the head is the token embedding
`window` (a training-time schedule; a trained model attends to its whole context), `fp8_head` (a GPU matmul format),
`zero_init` and `untie_at` (training) do not change what a trained model computes.

Padding on the left (`attention_mask` zeros) gives each row the result it has alone: positions count real tokens
only, padded keys are never attended to, and the previous token of a row's first real token is "none" (smear, bigram,
key_offset). Decoding with a cache stores each block's keys before the key offset's shift (applied to the whole
history at each step) and reads earlier token ids from `history` (the full `input_ids`, which `generate` passes
through `prepare_inputs_for_generation`), so beam search's reordering needs nothing extra.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_llmpy import EOT_TOKEN, LlmpyConfig

GATE_DIMS = 12  # the input dims a gate reads (half each from x and the value embedding for ve_gate)
BIGRAM_HASH = (36313, 27191)  # h = ((a x_t) XOR (b x_{t-1})) mod (rows - 1); row rows - 1: no previous token
SIGN_ROWS = 8192
IGNORE = -100  # labels not predicted


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotate(x: torch.Tensor, positions: torch.Tensor, rotated: int, base: float) -> torch.Tensor:
    """x (B, T, nh, hs) at `positions` (B, T): channel pairs (i, i + r/2) of the first r dims turned by the angle
    position * base^(-2i/r); the other dims unchanged."""
    inverse = base ** (-torch.arange(0, rotated // 2, dtype=torch.float64, device=x.device) * 2 / rotated)
    angles = positions.double()[..., None] * inverse  # (B, T, r/2)
    cos, sin = (f(angles).float().to(x.dtype)[:, :, None, :] for f in (torch.cos, torch.sin))
    x1, x2 = x[..., :rotated].chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., rotated:]), dim=-1)


def signs(sign_rows: torch.Tensor, dim: int) -> torch.Tensor:
    """The +-1 patterns of the given rows, (*sign_rows.shape, dim): bit 7 of a 32-bit integer mix of row * dim + column
    (llmpy.frontier.bigram.sign_patterns, computed only for the rows asked for)."""
    h = sign_rows.long()[..., None] * dim + torch.arange(dim, device=sign_rows.device)
    for shift, multiplier in ((16, 0x7FEB352D), (15, 0x5BD1E995)):
        h = (torch.bitwise_xor(h, h >> shift) * multiplier) & 0xFFFFFFFF
    h = torch.bitwise_xor(h, h >> 16)
    return 1.0 - 2.0 * ((h >> 7) & 1).float()


class Norm(nn.Module):
    def __init__(self, config: LlmpyConfig):
        super().__init__()
        self.layer_norm = None if config.rmsnorm else nn.LayerNorm(config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x) if self.layer_norm is None else self.layer_norm(x)


class Gate(nn.Module):
    """factor * sigmoid(inputs[..., :dims] @ weight^T): one value per output (head or skip) and position."""

    def __init__(self, outputs: int, dims: int, factor: float):
        super().__init__()
        self.factor = factor
        self.weight = nn.Parameter(torch.zeros(outputs, dims))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.factor * torch.sigmoid(inputs[..., : self.weight.size(1)] @ self.weight.to(inputs.dtype).t())


class Smear(nn.Module):
    def __init__(self, config: LlmpyConfig):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(1, min(GATE_DIMS, config.n_embd)))
        self.lam = nn.Parameter(torch.zeros(1))

    def forward(self, e: torch.Tensor, before: torch.Tensor, has_before: torch.Tensor) -> torch.Tensor:
        """e_t + lam * sigmoid(gate . e_t[:12]) * e_{t-1} where there is a previous token, e_t elsewhere."""
        gate = torch.sigmoid(e[..., : self.gate.size(1)] @ self.gate.to(e.dtype).t())
        added = self.lam.to(e.dtype) * gate * before
        return e + torch.where(has_before[..., None], added, torch.zeros_like(added))


class Bigram(nn.Module):
    def __init__(self, config: LlmpyConfig):
        super().__init__()
        rows = max(2, round(config.bigram * config.padded_vocab_size))
        self.table = nn.Embedding(rows, config.bigram_dim or config.n_embd)

    def forward(self, tokens: torch.Tensor, before: torch.Tensor, has_before: torch.Tensor) -> torch.Tensor:
        rows, (a, b) = self.table.num_embeddings, BIGRAM_HASH
        hashed = torch.bitwise_xor(a * tokens, b * before) % (rows - 1)
        row = torch.where(has_before, hashed, rows - 1)
        sign_row = torch.where(has_before, torch.bitwise_xor(tokens, before) % SIGN_ROWS, 0)
        return self.table(row) * signs(sign_row, self.table.embedding_dim).to(self.table.weight.dtype)


@dataclasses.dataclass
class Context:
    """What every block reads: the new positions' rotary positions (B, T), the attention mask (B, 1, T, S) over all
    S positions so far, whether each of the S positions has a previous real token (B, S), the cache."""

    positions: torch.Tensor
    mask: torch.Tensor
    has_before: torch.Tensor
    cache: object | None


class Attention(nn.Module):
    def __init__(self, config: LlmpyConfig, layer: int, has_value_embed: bool):
        super().__init__()
        C, bias = config.n_embd, bool(config.bias)
        self.layer, self.n_head = layer, config.n_head
        self.head_dim = C // config.n_head
        self.qk_norm, self.rotary, self.rope_base = bool(config.qk_norm), bool(config.rotary), config.rope_base
        self.rotated = config.rope_dims or self.head_dim
        self.key_offset = bool(config.key_offset)
        self.c_q, self.c_k, self.c_v, self.c_proj = (nn.Linear(C, C, bias=bias) for _ in range(4))
        self.value_mix = nn.Parameter(torch.tensor([1.0, 0.5])) if has_value_embed and not config.ve_gate else None
        self.half = min(GATE_DIMS // 2, C)
        self.value_gate = Gate(config.n_head, 2 * self.half, 2.0) if has_value_embed and config.ve_gate else None
        self.output_gate = Gate(config.n_head, min(GATE_DIMS, C), 1.0) if config.attn_gate else None

    def forward(self, x: torch.Tensor, value_embed: torch.Tensor | None, context: Context) -> torch.Tensor:
        B, T, C = x.shape
        shape = (B, T, self.n_head, self.head_dim)
        q, k, v = self.c_q(x).view(shape), self.c_k(x).view(shape), self.c_v(x).view(shape)
        if self.value_mix is not None:
            v = self.value_mix[0] * v + self.value_mix[1] * value_embed.view(shape)
        elif self.value_gate is not None:
            gate = self.value_gate(torch.cat([x[..., : self.half], value_embed[..., : self.half]], dim=-1))
            v = v + gate[..., None] * value_embed.view(shape)
        if self.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        if self.rotary:
            q, k = (rotate(t, context.positions, self.rotated, self.rope_base) for t in (q, k))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if context.cache is not None:
            k, v = context.cache.update(k, v, self.layer)  # every position so far, (B, nh, S, hs)
        if self.key_offset:  # the stationary dims from the previous position where there is one
            shifted = torch.cat([k[:, :, :1, self.rotated:], k[:, :, :-1, self.rotated:]], dim=2)
            stationary = torch.where(context.has_before[:, None, :, None], shifted, k[..., self.rotated:])
            k = torch.cat([k[..., : self.rotated], stationary], dim=-1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=context.mask).transpose(1, 2)  # (B, T, nh, hs)
        if self.output_gate is not None:
            y = y * self.output_gate(x)[..., None]
        return self.c_proj(y.reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: LlmpyConfig):
        super().__init__()
        C, bias = config.n_embd, bool(config.bias)
        self.relu2 = bool(config.relu2)
        self.c_fc, self.c_proj = nn.Linear(C, 4 * C, bias=bias), nn.Linear(4 * C, C, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        return self.c_proj(F.relu(h).square() if self.relu2 else F.gelu(h, approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: LlmpyConfig, layer: int, has_value_embed: bool):
        super().__init__()
        self.norm_1, self.norm_2 = Norm(config), Norm(config)
        self.attn, self.mlp = Attention(config, layer, has_value_embed), MLP(config)

    def forward(self, x, value_embed, context: Context, bigram: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x), value_embed, context)
        if bigram is not None:
            x = x + bigram
        return x + self.mlp(self.norm_2(x))


class LlmpyPreTrainedModel(PreTrainedModel):
    config_class = LlmpyConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["Block"]
    _supports_cache_class = True
    _supports_static_cache = False

    def _init_weights(self, module: nn.Module) -> None:  # a fresh model (weights normally come from the export)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


class LlmpyForCausalLM(LlmpyPreTrainedModel, GenerationMixin):
    def __init__(self, config: LlmpyConfig):
        super().__init__(config)
        L, C, V = config.n_layer, config.n_embd, config.padded_vocab_size
        k = min(config.value_embeds, L // 2)
        self.n_value_embeds = k
        modules = {"wte": nn.Embedding(V, C),
                   "h": nn.ModuleList([Block(config, i, k > 0 and (i < k or i >= L - k)) for i in range(L)]),
                   "norm_f": Norm(config)}
        if not config.rotary:
            modules["wpe"] = nn.Embedding(config.block_size, C)
        if k:
            modules["value_embeds"] = nn.ModuleList([nn.Embedding(V, C) for _ in range(k)])
        self.transformer = nn.ModuleDict(modules)
        self.skip_weights = nn.Parameter(torch.ones(L // 2)) if config.unet else None
        self.skip_gate = Gate(L // 2, min(GATE_DIMS, C), 2.0) if config.unet and config.skip_gate and L // 2 else None
        self.smear = Smear(config) if config.smear else None
        self.bigram = Bigram(config) if config.bigram else None
        if config.bigram:
            self.bigram_lambdas = nn.Parameter(torch.zeros(L + 1))
        self.backout_after = max(1, 2 * L // 3) if config.backout else None
        if config.backout:
            self.backout_lambda = nn.Parameter(torch.zeros(1))
        self.lm_head = nn.Linear(C, V, bias=False)
        if config.tie:
            self.lm_head.weight = self.transformer.wte.weight
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.transformer.wte

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def _context(self, tokens, attention_mask, past: int, T: int, cache) -> Context:
        """Positions, mask and previous-token flags for the T new positions after `past` cached ones."""
        B, S = tokens.size(0), past + T
        real = torch.ones(B, S, dtype=torch.bool, device=tokens.device) if attention_mask is None \
            else attention_mask[:, -S:].bool()
        positions = (real.long().cumsum(1) - 1).clamp(min=0)[:, past:]  # counting real tokens only
        has_before = torch.cat([torch.zeros_like(real[:, :1]), real[:, :-1] & real[:, 1:]], dim=1)
        index = torch.arange(S, device=tokens.device)
        query = index[past:, None]
        allowed = (index[None, :] <= query) & real[:, None, :]  # causal, real keys: (B, T, S)
        if self.config.doc_mask:
            documents = (tokens == EOT_TOKEN).cumsum(1)
            allowed = allowed & (documents[:, past:, None] == documents[:, None, :])
        allowed = allowed | (index[None, :] == query)  # a padded query sees itself: no empty softmax
        return Context(positions, allowed[:, None], has_before, cache)

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, cache=None, past_key_values=None,
                use_cache: bool | None = None, history: torch.LongTensor | None = None, **kwargs):
        """input_ids (B, T) -> logits (B, T, vocab) in fp32. `history`: every token so far (B, past + T), for the
        smear, the bigram and the document mask when decoding with a cache; `labels`: shifted inside, as GPT-2."""
        cache = cache if cache is not None else past_key_values
        if cache is None and use_cache:
            cache = DynamicCache()
        B, T = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence length {past + T} exceeds the model's {self.config.block_size} positions")
        tokens = history if history is not None else input_ids
        if tokens.size(1) != past + T:
            if past and (self.config.smear or self.config.bigram or self.config.doc_mask):
                raise ValueError("this model reads earlier tokens (smear, bigram or doc_mask): pass history=<all "
                                 "input_ids so far> with a cache, as generate does")
            tokens = torch.cat([input_ids.new_zeros(B, past), input_ids], dim=1)
        context = self._context(tokens, attention_mask, past, T, cache)
        before = torch.cat([tokens[:, :1], tokens[:, :-1]], dim=1)[:, past:]  # each new position's previous token
        has_before = context.has_before[:, past:]
        x = self.transformer.wte(input_ids)
        if self.smear is not None:
            x = self.smear(x, self.transformer.wte(before), has_before)
        if not self.config.rotary:
            x = x + self.transformer.wpe(context.positions)
        x = rms_norm(x)
        L, k = self.config.n_layer, self.n_value_embeds
        tables = [table(input_ids) for table in self.transformer.value_embeds] if k else []
        value_embeds = tables + [None] * (L - 2 * k) + tables if k else [None] * L
        skip_gates = self.skip_gate(x) if self.skip_gate is not None else None  # from the embedding x0
        bigram = None
        if self.bigram is not None:
            bigram = self.bigram(input_ids, before, has_before)
            bigram = F.pad(bigram, (0, x.size(-1) - bigram.size(-1)))
            x = x + self.bigram_lambdas[0] * bigram
        skips, saved = [], None
        for layer, block in enumerate(self.transformer.h):
            if self.skip_weights is not None and layer >= L - L // 2:
                skip = L - 1 - layer
                weight = self.skip_weights[skip] if skip_gates is None else self.skip_weights[skip] * skip_gates[
                    ..., skip, None]
                x = x + weight * skips.pop()
            added = None if bigram is None else self.bigram_lambdas[layer + 1] * bigram
            x = block(x, value_embeds[layer], context, added)
            if self.skip_weights is not None and layer < L // 2:
                skips.append(x)
            if layer + 1 == self.backout_after:
                saved = x
        if saved is not None:
            x = x - self.backout_lambda * saved
        logits = self._cap(self.lm_head(self.transformer.norm_f(x)))[..., : self.config.vocab_size].float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                                   ignore_index=IGNORE)
        return _output(loss=loss, logits=logits, cache=cache)

    def _cap(self, logits: torch.Tensor) -> torch.Tensor:
        wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if self.config.sigmoid_cap:
            return self.config.sigmoid_cap * torch.sigmoid((wide + 5.0) / 7.5)
        if self.config.softcap:
            return self.config.softcap * torch.tanh(wide / self.config.softcap)
        return logits

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, attention_mask=None, **kwargs) -> dict:
        """The uncached tokens, the whole `history`, the mask and the cache (named as this transformers names it)."""
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("llmpy models take input_ids, not inputs_embeds")
        name = "cache" if "cache" in kwargs else "past_key_values"
        cache = kwargs.get(name)
        past = cache.get_seq_length() if cache is not None else 0
        inputs = {"input_ids": input_ids[:, past:], "history": input_ids, "attention_mask": attention_mask,
                  "use_cache": kwargs.get("use_cache", True)}
        if cache is not None:
            inputs[name] = cache
        return inputs


_OUTPUT_FIELDS = {field.name for field in dataclasses.fields(CausalLMOutputWithPast)}


def _output(loss, logits, cache) -> CausalLMOutputWithPast:
    """The output, with the cache under the name this transformers uses (`cache` from 5.x, else
    `past_key_values`)."""
    key = "cache" if "cache" in _OUTPUT_FIELDS else "past_key_values"
    return CausalLMOutputWithPast(loss=loss, logits=logits, **{key: cache})
