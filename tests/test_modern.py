"""The modern family's architecture switches, each against an independent computation of its math: rotary by hand
and its relative-position property, QK-norm attention and RMSNorm in fp64, ReLU^2, soft-capping, zero init, untied
heads, value embeddings and U-net skips by turning them off through their weights, and KV-cache decoding."""

import math

import pytest
import torch
import torch.nn.functional as F

from llmpy.checkpoint import export_model, load_model
from llmpy.errors import LlmpyError
from llmpy.families import build_model, model_config
from llmpy.infer import generate
from llmpy.loss import CrossEntropyLoss, ModelWithLoss
from llmpy.modern import ModernConfig, ModernGPT, Rotary, rms_norm


def tiny(arch: str = "", depth: int = 4) -> ModernGPT:
    torch.manual_seed(0)
    return build_model(model_config("modern", f"d{depth}w64", arch), "modern").double()


def randomise(model: ModernGPT) -> ModernGPT:
    """Zero-initialised projections hide most of the math: give every weight a random value."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model


def test_rotary_rotates_each_channel_pair_by_position_times_frequency():
    head_dim, base = 4, 100.0
    rotary = Rotary(head_dim, 16, base)
    x = torch.randn(1, 16, 1, head_dim, dtype=torch.float64)
    y = rotary(x.float()).double()
    for m in (0, 1, 7, 15):
        for i in range(head_dim // 2):  # pair (i, i + hs/2), angle m * base^(-2i/hs)
            angle = m * base ** (-2 * i / head_dim)
            a, b = x[0, m, 0, i].item(), x[0, m, 0, i + head_dim // 2].item()
            assert y[0, m, 0, i].item() == pytest.approx(a * math.cos(angle) - b * math.sin(angle), abs=1e-5)
            assert y[0, m, 0, i + head_dim // 2].item() == pytest.approx(a * math.sin(angle) + b * math.cos(angle),
                                                                         abs=1e-5)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation keeps lengths


def test_rotary_scores_depend_only_on_the_relative_position():
    rotary = Rotary(8, 64, 10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    def score(m, n):
        return (rotary(q.expand(1, 64, 1, 8))[0, m] * rotary(k.expand(1, 64, 1, 8))[0, n]).sum().item()
    for m, n in ((5, 2), (9, 9), (3, 7)):
        for shift in (1, 20, 50):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)
    # a KV-cached call at offset `start` rotates like the full sequence at those positions
    x = torch.randn(2, 10, 3, 8)
    assert torch.allclose(rotary(x[:, 6:], start=6), rotary(x)[:, 6:], atol=1e-6)


def test_rms_norm_and_the_qk_normed_rotary_attention_match_fp64_by_hand():
    model = randomise(tiny())
    attn = model.transformer.h[1].attn  # 4 layers, 2 tables: every layer mixes a value embedding into v
    x = torch.randn(2, 6, 64, dtype=torch.float64)
    assert torch.allclose(rms_norm(x), x / x.pow(2).mean(-1, keepdim=True).sqrt(), atol=1e-6)
    ve = torch.randn(2, 6, 64, dtype=torch.float64)
    out = attn(x, ve, 0)
    T, C, nh = 6, 64, 1
    q, k, v = (x @ lin.weight.T for lin in (attn.c_q, attn.c_k, attn.c_v))
    v = attn.value_mix[0] * v + attn.value_mix[1] * ve
    normed = [t / t.pow(2).mean(-1, keepdim=True).sqrt() for t in (q, k)]  # one 64-wide head
    positions = torch.arange(T, dtype=torch.float64)
    inv = 10000.0 ** (-torch.arange(0, 32, dtype=torch.float64) * 2 / 64)
    cos, sin = torch.cos(positions[:, None] * inv), torch.sin(positions[:, None] * inv)
    q, k = ((torch.cat((t[..., :32] * cos - t[..., 32:] * sin, t[..., :32] * sin + t[..., 32:] * cos), -1))
            for t in normed)
    scores = q @ k.transpose(-1, -2) / math.sqrt(C // nh)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    expected = (scores.softmax(-1) @ v) @ attn.c_proj.weight.T
    assert torch.allclose(out, expected, atol=1e-5)


def test_relu_squared_mlp_and_the_gelu_switch():
    model = randomise(tiny())
    mlp = model.transformer.h[0].mlp
    x = torch.randn(3, 64, dtype=torch.float64)
    expected = torch.clamp(x @ mlp.c_fc.weight.T, min=0) ** 2 @ mlp.c_proj.weight.T
    assert torch.allclose(mlp(x), expected, atol=1e-8)
    gelu = randomise(tiny("relu2=0")).transformer.h[0].mlp
    assert torch.allclose(gelu(x), F.gelu(x @ gelu.c_fc.weight.T, approximate="tanh") @ gelu.c_proj.weight.T)


def test_zero_init_makes_every_block_the_identity_and_the_first_loss_ln_vocab():
    model = tiny()
    for block in model.transformer.h:
        assert not block.attn.c_proj.weight.any() and not block.mlp.c_proj.weight.any()
    assert not model.lm_head.weight.any() and model.lm_head.weight is not model.transformer.wte.weight
    idx = torch.randint(0, 50257, (2, 8))
    loss = ModelWithLoss(model, CrossEntropyLoss(50257, 50304).double())(idx, idx)
    assert loss.item() == pytest.approx(math.log(50257), abs=1e-9)  # zero logits: uniform over the real vocab
    tied = tiny("tie=1,zero_init=0")
    assert tied.lm_head.weight is tied.transformer.wte.weight and tied.lm_head.weight.any()


def test_softcap_bounds_the_logits_as_cap_tanh():
    model = randomise(tiny("softcap=5"))
    hidden = torch.randn(2, 3, 64, dtype=torch.float64) * 10
    raw = hidden @ model.lm_head.weight.T
    assert torch.allclose(model.lm_head(hidden), 5 * torch.tanh(raw / 5))
    assert model.logits(hidden).abs().max() <= 5 and model.logits(hidden).shape[-1] == 50257
    assert torch.equal(randomise(tiny("softcap=0")).lm_head(hidden), raw)


def test_value_embeddings_are_shared_by_a_first_and_a_last_layer_and_off_with_zero_mixing():
    model = randomise(tiny("value_embeds=2"))  # 4 layers: tables 0, 1 feed layers 0, 1 and again 2, 3
    assert len(model.transformer.value_embeds) == 2
    assert all(block.attn.value_mix is not None for block in model.transformer.h)
    seen = []
    hooks = [block.attn.register_forward_hook(lambda mod, args, out: seen.append(args[1]))
             for block in model.transformer.h]
    idx = torch.randint(0, 50257, (1, 5))
    model(idx)
    for hook in hooks:
        hook.remove()
    assert torch.equal(seen[0], seen[2]) and torch.equal(seen[1], seen[3]) and not torch.equal(seen[0], seen[1])
    assert torch.equal(seen[0], model.transformer.value_embeds[0](idx))
    plain = tiny("value_embeds=0")  # the same weights without the tables, and mixing (1, 0) in the full model
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.value_mix.copy_(torch.tensor([1.0, 0.0]))
    state = {k: v for k, v in model.state_dict().items() if "value" not in k}
    plain.load_state_dict(state)
    assert torch.allclose(model(idx), plain(idx), atol=1e-10)
    capped = tiny("value_embeds=9")  # at most L/2 tables, and the config says so
    assert len(capped.transformer.value_embeds) == 2 and capped.config.value_embeds == 2


def test_unet_skips_add_the_mirrored_encoder_output_and_vanish_at_zero_weight():
    model = randomise(tiny("value_embeds=0"))
    outputs = []
    hooks = [block.register_forward_hook(lambda mod, args, out: outputs.append((args[0], out)))
             for block in model.transformer.h]
    idx = torch.randint(0, 50257, (1, 5))
    model(idx)
    for hook in hooks:
        hook.remove()
    w = model.skip_weights  # 4 layers: layer 2 gets block 1's output, layer 3 block 0's
    assert torch.allclose(outputs[2][0], outputs[1][1] + w[1] * outputs[1][1])
    assert torch.allclose(outputs[3][0], outputs[2][1] + w[0] * outputs[0][1])
    plain = tiny("value_embeds=0,unet=0")
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "skip_weights"})
    with torch.no_grad():
        model.skip_weights.zero_()
    assert torch.allclose(model(idx), plain(idx), atol=1e-10)


def test_kv_cache_decoding_matches_full_forward_passes():
    model = randomise(tiny()).float()
    torch.manual_seed(3)
    prompt = torch.randint(0, 50257, (2, 5))
    out = generate(model, prompt, 6, temperature=0.0)  # greedy, through the cache (rotary offsets per step)
    seq = prompt
    for _ in range(6):  # greedy without a cache: the full sequence every step
        logits = model(seq, output=lambda hidden: model.logits(hidden[:, -1]))
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_a_modern_checkpoint_keeps_its_untied_head_and_switches(tmp_path):
    model = randomise(tiny("softcap=7,unet=0")).float()
    export_model(tmp_path / "run", model, {})
    loaded, payload = load_model(tmp_path / "run")
    assert isinstance(loaded, ModernGPT) and loaded.config == model.config and payload["family"] == "modern"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.lm_head.weight is not loaded.transformer.wte.weight


@pytest.mark.parametrize("family, arch, message", [
    ("modern", "sofcap=1", "--arch 'sofcap=1': expected name=value with name one of"),
    ("modern", "qk_norm=2", "--arch qk_norm must be 0 or 1"),
    ("gpt2", "softcap=0", "the gpt2 family has no architecture switches"),
    ("modern", "rotary=0.5", "rotary takes a whole number, got '0.5'"),
    ("modern", "unet=1,unet=0", "unet is given twice"),
    ("modern", "softcap=abc", "'abc' is not a number"),
])
def test_bad_arch_switches_are_one_line_errors(family, arch, message):
    with pytest.raises(LlmpyError, match=message):
        model_config(family, "d2", arch)


def test_arch_values_parse_with_spaces():
    assert ModernConfig.from_descriptor("d12").with_arch("softcap=30, rope_base=1024").softcap == 30.0


def test_convert_says_which_formats_cannot_hold_the_modern_architecture(tmp_path, capsys):
    from llmpy.cli import main

    export_model(tmp_path / "run", tiny().float(), {})
    out = tmp_path / "m.bin"
    assert main(["convert", "--model", str(tmp_path / "run"), "--to", "llmc", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the llm.c format holds only GPT-2's architecture, and this is a modern model" in err
    assert "export it with --to hf (llmpy's own Hugging Face model) or --to llmpy" in err and not out.exists()
    # Hugging Face: llmpy's own modeling file (tests/test_hf_modern.py)
    assert main(["convert", "--model", str(tmp_path / "run"), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert main(["convert", "--model", str(tmp_path / "run"), "--to", "llmpy", "--out", str(tmp_path / "copy")]) == 0
    assert isinstance(load_model(tmp_path / "copy")[0], ModernGPT)
