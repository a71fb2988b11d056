"""GPT-2 model: shapes, llm.c's parameter counts, init, and equality with transformers' GPT2LMHeadModel."""

import math

import pytest
import torch
import torch.nn.functional as F

from llmpy.config import ModelConfig
from llmpy.errors import LlmpyError
from llmpy.loss import ModelWithLoss, build_loss
from llmpy.model import GPT

TINY = ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=64)


def plain_loss(config: ModelConfig):
    return build_loss("plain", config.vocab_size, config.padded_vocab_size)


def logits_and_loss(model: GPT, idx, targets=None):
    """The old `logits, loss = model(idx, targets)`: the hidden states through the head, and the plain loss."""
    hidden = model(idx)
    loss = None if targets is None else plain_loss(model.config)(hidden, targets, model.lm_head)
    return model.logits(hidden), loss


@pytest.mark.parametrize(
    "descriptor, layers, heads, width, params",
    [
        # N = 50304*C (padded wte) + 1024*C (wpe) + L*(12*C*C + 13*C) + 2*C, worked out by hand
        ("d12", 12, 12, 768, 124_475_904),
        ("d24", 24, 16, 1024, 354_871_296),
        ("d36", 36, 20, 1280, 774_090_240),
        ("d48", 48, 25, 1600, 1_557_686_400),
    ],
)
def test_gpt2_family_shapes_and_parameter_counts(descriptor, layers, heads, width, params):
    config = ModelConfig.from_descriptor(descriptor)
    assert (config.n_layer, config.n_head, config.n_embd) == (layers, heads, width)
    with torch.device("meta"):  # no allocation
        model = GPT(config)
    assert sum(p.numel() for p in model.parameters()) == params  # the tied head counted once, as llm.c prints it


def test_descriptor_aliases_and_errors():
    assert ModelConfig.from_descriptor("gpt2-medium") == ModelConfig.from_descriptor("d24")
    assert ModelConfig.from_descriptor("d6").n_embd == 384
    assert ModelConfig.from_descriptor("d20").n_embd == 1280  # llm.c's 64*N rule off the table
    small = ModelConfig.from_descriptor("d4w128")
    assert (small.n_layer, small.n_embd, small.n_head) == (4, 128, 2)
    for bad in ("x12", "d0", "d4w100", "12"):
        with pytest.raises(LlmpyError):
            ModelConfig.from_descriptor(bad)


def test_forward_shapes_loss_and_padded_vocab():
    torch.manual_seed(0)
    model = GPT(TINY)
    idx = torch.randint(0, 50257, (3, 17))
    targets = torch.randint(0, 50257, (3, 17))
    hidden = model(idx)
    assert hidden.shape == (3, 17, 64)  # the final hidden states, after ln_f
    logits, loss = logits_and_loss(model, idx, targets)
    assert logits.shape == (3, 17, 50257)  # padded rows (50304) never returned
    torch.testing.assert_close(logits, model.lm_head(hidden)[..., :50257])
    torch.testing.assert_close(model(idx, output=model.logits), logits)  # the head run inside forward (FSDP's way)
    expected = F.cross_entropy(logits.reshape(-1, 50257), targets.reshape(-1))
    torch.testing.assert_close(loss, expected)
    # a fresh model predicts nearly uniformly: loss close to ln(50257) on unrelated targets
    assert abs(loss.item() - math.log(50257)) < 0.1
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert torch.all(model.transformer.wte.weight[50257:] == 0)
    with pytest.raises(ValueError):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_gpt2_init_statistics():
    torch.manual_seed(0)
    config = ModelConfig(n_layer=4, n_head=4, n_embd=256, block_size=64)
    model = GPT(config)
    residual = model.transformer.h[0].mlp.c_proj.weight
    regular = model.transformer.h[0].mlp.c_fc.weight
    assert residual.std().item() == pytest.approx(0.02 / math.sqrt(2 * 4), rel=0.05)
    assert regular.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(model.transformer.h[1].attn.c_attn.bias == 0)
    assert torch.all(model.transformer.ln_f.weight == 1)


def test_causality_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    a = torch.randint(0, 50257, (1, 10))
    b = a.clone()
    b[0, 6:] = torch.randint(0, 50257, (4,))
    la, _ = logits_and_loss(model, a)
    lb, _ = logits_and_loss(model, b)
    torch.testing.assert_close(la[:, :6], lb[:, :6])


def _copy_from_hf(hf, model: GPT) -> None:
    """Independent reference mapping: HF's Conv1D stores (in, out), torch Linear (out, in)."""
    sd = hf.state_dict()
    ours = model.state_dict()
    with torch.no_grad():
        ours["transformer.wte.weight"][:50257].copy_(sd["transformer.wte.weight"])
        ours["transformer.wpe.weight"].copy_(sd["transformer.wpe.weight"])
        for key, value in sd.items():
            if key.startswith("transformer.h.") and not key.endswith("attn.bias") and not key.endswith("masked_bias"):
                conv = any(key.endswith(f"{n}.weight") for n in ("c_attn", "c_proj", "c_fc"))
                ours[key].copy_(value.t() if conv else value)
        ours["transformer.ln_f.weight"].copy_(sd["transformer.ln_f.weight"])
        ours["transformer.ln_f.bias"].copy_(sd["transformer.ln_f.bias"])


def test_matches_transformers_gpt2lmheadmodel():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(
        vocab_size=50257, n_positions=64, n_embd=64, n_layer=2, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new",
    )
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    model = GPT(TINY).eval()
    _copy_from_hf(hf, model)
    idx = torch.randint(0, 50257, (2, 40))
    with torch.no_grad():
        hf_out = hf(idx, labels=idx)
        logits, loss = logits_and_loss(model, idx[:, :-1], idx[:, 1:])
    torch.testing.assert_close(logits, hf_out.logits[:, :-1], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(loss, hf_out.loss, atol=2e-5, rtol=1e-5)


class _OpCounter:
    """Counts aten ops run while active (a TorchDispatchMode), to see what the backward pass recomputes."""

    def __init__(self):
        from collections import Counter

        from torch.utils._python_dispatch import TorchDispatchMode

        counts = Counter()

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                counts[func.overloadpacket.__name__] += 1
                return func(*args, **(kwargs or {}))

        self.counts, self.mode = counts, Mode()


@pytest.mark.parametrize("level, recomputed", [
    (0, {}),
    (1, {"gelu": 2}),  # llm.c -r 1: one GELU per block (2 blocks) runs again, nothing else
    (2, {"gelu": 2, "native_layer_norm": 4}),  # -r 2: and both LayerNorms of each block
    (3, {"gelu": 2, "native_layer_norm": 4, "addmm": 6}),  # whole blocks: the matmuls with bias too
])
def test_recompute_levels_recompute_exactly_their_ops_and_keep_the_gradients(level, recomputed):
    torch.manual_seed(0)
    config = ModelConfig.from_descriptor("d2w64")
    baseline = GPT(config)
    x = torch.randint(0, 50257, (2, 16))
    loss = ModelWithLoss(baseline, plain_loss(config))(x, x)
    loss.backward()
    reference = [p.grad.clone() for p in baseline.parameters()]
    model = GPT(config, recompute=level)
    model.load_state_dict(baseline.state_dict())
    assert all(block.recompute == level for block in model.transformer.h)
    loss = ModelWithLoss(model, plain_loss(config))(x, x)
    counter = _OpCounter()
    with counter.mode:
        loss.backward()
    for op in ("gelu", "native_layer_norm", "addmm"):  # forward ops seen during the backward = recomputed ones
        assert counter.counts[op] == recomputed.get(op, 0), op
    for grad, expected in zip((p.grad for p in model.parameters()), reference):
        torch.testing.assert_close(grad, expected, rtol=0, atol=0)


def test_bf16_autocast_path_matches_fp32_within_bf16_tolerance():
    """The fast path (bf16 autocast, bf16 residual stream, masked padded logits) against plain fp32."""
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_descriptor("d2w64"))
    x = torch.randint(0, 50257, (4, 32))
    logits32, loss32 = logits_and_loss(model, x, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits16, loss16 = logits_and_loss(model, x, x)
    assert logits16.shape == logits32.shape == (4, 32, 50257)  # padded rows never returned
    assert abs(loss16.item() - loss32.item()) < 2e-2 * loss32.item()
    # the loss over the padded logits with a -inf mask is the plain softmax over the real vocabulary
    assert loss32.item() == pytest.approx(F.cross_entropy(logits32.reshape(-1, 50257), x.reshape(-1)).item(), rel=1e-6)
