"""The frontier's architecture switches (llmpy.frontier, wired into the modern family), each against an independent
computation: the bigram hash and sign patterns in plain Python integers, the smear and the gates by explicit loops,
the sigmoid cap by hand, the whole wiring by a hand-written forward pass in fp64, and KV-cache decoding against
full forward passes."""

import math

import pytest
import torch

from llmpy.checkpoint import export_model, load_model
from llmpy.errors import LlmpyError
from llmpy.families import build_model, model_config
from llmpy.frontier.bigram import BigramEmbedding, sign_patterns, table_rows
from llmpy.frontier.key_offset import offset_keys
from llmpy.frontier.smear import Smear
from llmpy.infer import generate
from llmpy.modern import ModernConfig, Rotary, rms_norm
from llmpy.recipes import merge_settings, with_recipe

ALL = ("bigram=0.01,bigram_dim=32,smear=1,sigmoid_cap=23,attn_gate=1,ve_gate=1,skip_gate=1,rope_dims=32,key_offset=1,"
       "backout=1")


def tiny(arch: str = "", depth: int = 2, width: int = 64):
    torch.manual_seed(0)
    return build_model(model_config("modern", f"d{depth}w{width}", arch), "modern").double()


def randomise(model):
    """The frontier's components start as no-ops (zero tables and gates): give every weight a random value."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model


def python_sign(row: int, column: int, dim: int) -> int:
    """The documented sign formula in Python integers: bit 7 of a 32-bit mix of row * dim + column."""
    h = row * dim + column
    for shift, multiplier in ((16, 0x7FEB352D), (15, 0x5BD1E995)):
        h = ((h ^ (h >> shift)) * multiplier) & 0xFFFFFFFF
    h ^= h >> 16
    return 1 - 2 * ((h >> 7) & 1)


def python_bigram(table: torch.Tensor, tokens: list[int], previous: int | None, dim: int) -> torch.Tensor:
    """b_t for one row by hand: the hashed row of (x_{t-1}, x_t) times the pair's sign pattern."""
    rows, out = table.size(0), []
    for t, x in enumerate(tokens):
        p = tokens[t - 1] if t else previous
        if p is None:
            row, sign_row = rows - 1, 0
        else:
            row, sign_row = ((36313 * x) ^ (27191 * p)) % (rows - 1), (p ^ x) % 8192
        signs = torch.tensor([python_sign(sign_row, j, dim) for j in range(dim)], dtype=table.dtype)
        out.append(table[row] * signs)
    return torch.stack(out)


def test_sign_patterns_follow_the_formula_and_look_random():
    signs = sign_patterns(8192, 48)
    for row, column in ((0, 0), (0, 47), (1, 0), (8191, 47), (4097, 13)):
        assert signs[row, column].item() == python_sign(row, column, 48)
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    assert abs(signs.mean().item()) < 0.01  # balanced
    overlap = (signs[:500] @ signs[:500].T) / 48
    overlap.fill_diagonal_(0)
    assert overlap.abs().max() < 1.0  # no two rows the same pattern


def test_the_bigram_embedding_is_the_hashed_row_times_the_pairs_signs():
    rows, dim = 1000, 16
    bigram = BigramEmbedding(rows, dim).double()
    with torch.no_grad():
        bigram.table.weight.copy_(torch.randn(rows, dim, dtype=torch.float64))
    tokens = [[50256, 464, 3290, 3290, 0], [11, 50255, 7, 13, 464]]
    out = bigram(torch.tensor(tokens))
    for b, row in enumerate(tokens):
        assert torch.equal(out[b], python_bigram(bigram.table.weight, row, None, dim))
    # decoding on: the token before the first is given
    out = bigram(torch.tensor([[3290, 0]]), previous=torch.tensor([464]))
    assert torch.equal(out[0], python_bigram(bigram.table.weight, [3290, 0], 464, dim))
    assert table_rows(5, 50304) == 251520 and table_rows(1e-9, 50304) == 2
    assert not BigramEmbedding(rows, dim).table.weight.any()  # zero at the start


def test_smear_adds_the_gated_previous_embedding_and_starts_as_a_no_op():
    smear = Smear(20).double()
    e = torch.randn(2, 5, 20, dtype=torch.float64)
    assert torch.equal(smear(e), e)  # lam = 0, gate 0
    with torch.no_grad():
        smear.gate.copy_(torch.randn(1, 12, dtype=torch.float64))
        smear.lam.fill_(0.7)
    out = smear(e)
    for b in range(2):
        assert torch.equal(out[b, 0], e[b, 0])
        for t in range(1, 5):
            gate = 1 / (1 + math.exp(-float(e[b, t, :12] @ smear.gate[0].detach())))
            assert torch.allclose(out[b, t], e[b, t] + 0.7 * gate * e[b, t - 1], atol=1e-12)
    before = torch.randn(2, 20, dtype=torch.float64)  # decoding: the previous token's embedding
    out = smear(e[:, :1], previous=before)
    gate = torch.sigmoid(e[:, 0, :12] @ smear.gate[0])
    assert torch.allclose(out[:, 0], e[:, 0] + 0.7 * gate[:, None] * before, atol=1e-12)


def test_the_attention_gate_scales_each_heads_output_by_a_sigmoid_of_its_input():
    gated, plain = randomise(tiny("attn_gate=1,value_embeds=0", width=128)), tiny("value_embeds=0", width=128)
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if "gate" not in k})
    heads = 2  # d2w128: two heads of 64
    a, b = gated.transformer.h[0].attn, plain.transformer.h[0].attn
    with torch.no_grad():
        for attn in (a, b):
            attn.c_proj.weight.copy_(torch.eye(128, dtype=torch.float64))  # the output is the heads' outputs
    x = torch.randn(2, 6, 128, dtype=torch.float64)
    out, ref = a(x, None, 0), b(x, None, 0)
    W = a.output_gate.weight
    for h in range(heads):
        for bt in range(2):
            for t in range(6):
                g = 1 / (1 + math.exp(-float(x[bt, t, :12] @ W[h].detach())))
                assert torch.allclose(out[bt, t, h * 64:(h + 1) * 64], g * ref[bt, t, h * 64:(h + 1) * 64], atol=1e-12)


def test_the_value_embedding_gate_adds_the_embedding_to_v_with_twice_a_sigmoid():
    model = randomise(tiny("ve_gate=1,value_embeds=1", width=128))
    attn = model.transformer.h[0].attn
    assert attn.value_mix is None and attn.value_gate is not None
    with torch.no_grad():
        attn.c_proj.weight.copy_(torch.eye(128, dtype=torch.float64))
    x, ve = torch.randn(3, 1, 128, dtype=torch.float64), torch.randn(3, 1, 128, dtype=torch.float64)
    out = attn(x, ve, 0)  # one position: attention returns its own value
    v = x @ attn.c_v.weight.T
    W = attn.value_gate.weight
    for b in range(3):
        for h in range(2):
            features = torch.cat([x[b, 0, :6], ve[b, 0, :6]])
            g = 2 / (1 + math.exp(-float(features @ W[h].detach())))
            expected = v[b, 0, h * 64:(h + 1) * 64] + g * ve[b, 0, h * 64:(h + 1) * 64]
            assert torch.allclose(out[b, 0, h * 64:(h + 1) * 64], expected, atol=1e-12)
    # at the start the gate is 1: v + ve, the learned mixing (1, 1) of the model without the gate
    fresh, mixed = tiny("ve_gate=1,value_embeds=1"), tiny("value_embeds=1")
    with torch.no_grad():
        mixed.load_state_dict({k: v for k, v in randomise(fresh).state_dict().items() if "gate" not in k},
                              strict=False)
        for module in fresh.modules():
            if hasattr(module, "reset_parameters") and "Gate" in type(module).__name__:
                module.reset_parameters()
        for block in mixed.transformer.h:
            block.attn.value_mix.copy_(torch.tensor([1.0, 1.0]))
    idx = torch.randint(0, 50257, (2, 7))
    assert torch.allclose(fresh(idx), mixed(idx), atol=1e-10)


def test_the_sigmoid_cap_is_cap_times_a_shifted_scaled_sigmoid():
    model = randomise(tiny("sigmoid_cap=23"))
    hidden = torch.randn(2, 3, 64, dtype=torch.float64) * 5
    raw = hidden @ model.lm_head.weight.T
    capped = model.lm_head(hidden)
    for index in ((0, 0, 0), (1, 2, 50256), (0, 1, 12345)):
        assert capped[index].item() == pytest.approx(23 / (1 + math.exp(-(raw[index].item() + 5) / 7.5)), rel=1e-12)
    assert 0 < model.logits(hidden).min() and model.logits(hidden).max() < 23


def test_the_whole_forward_pass_by_hand_with_the_bigram_smear_and_skip_gate():
    model = randomise(tiny("bigram=0.02,bigram_dim=32,smear=1,skip_gate=1,value_embeds=0"))
    idx = torch.tensor([[50256, 464, 3290, 318, 464, 3290], [7, 7, 7, 1, 2, 3]])
    e = model.transformer.wte.weight[idx]
    smear = model.smear
    x = e.clone()
    for t in range(1, 6):
        gate = torch.sigmoid(e[:, t, :12] @ smear.gate[0])[:, None]
        x[:, t] = e[:, t] + smear.lam * gate * e[:, t - 1]
    x = x / x.pow(2).mean(-1, keepdim=True).sqrt()
    x0 = x
    b = torch.stack([python_bigram(model.bigram.table.weight, row, None, 32) for row in idx.tolist()])
    b = torch.cat([b, torch.zeros(2, 6, 32, dtype=torch.float64)], dim=-1)  # the first 32 of 64 dims
    lam = model.bigram_lambdas
    x = x + lam[0] * b
    blocks = model.transformer.h
    h0 = x + blocks[0].attn(rms_norm(x), None, 0) + lam[1] * b
    h0 = h0 + blocks[0].mlp(rms_norm(h0))
    gate = 2 * torch.sigmoid(x0[..., :12] @ model.skip_gate.weight[0])[..., None]
    x = h0 + model.skip_weights[0] * gate * h0
    h1 = x + blocks[1].attn(rms_norm(x), None, 0) + lam[2] * b
    h1 = h1 + blocks[1].mlp(rms_norm(h1))
    assert torch.allclose(model(idx), rms_norm(h1), atol=1e-10)


def test_every_switch_starts_as_a_no_op_except_the_halved_attention_and_the_cap():
    plain, frontier = tiny("value_embeds=1"), tiny("value_embeds=1,bigram=0.01,smear=1,ve_gate=1,skip_gate=1")
    randomise(plain)
    state = plain.state_dict()
    with torch.no_grad():
        for block in plain.transformer.h:
            block.attn.value_mix.copy_(torch.tensor([1.0, 1.0]))  # the gate's v + 1 * ve
    frontier.load_state_dict({k: v for k, v in state.items() if "value_mix" not in k}, strict=False)
    idx = torch.randint(0, 50257, (2, 9))
    assert torch.allclose(frontier(idx), plain(idx), atol=1e-10)


def test_partial_rotary_turns_only_the_first_dims_and_the_key_offset_shifts_the_rest():
    rotary = Rotary(8, 16, 100.0, rotated=4)
    x = torch.randn(1, 16, 2, 8, dtype=torch.float64)
    y = rotary(x.float()).double()
    for m in (0, 3, 15):
        for i in range(2):  # pairs (0, 2) and (1, 3), angle m * 100^(-2i/4)
            angle = m * 100.0 ** (-2 * i / 4)
            a, b = x[0, m, 1, i].item(), x[0, m, 1, i + 2].item()
            assert y[0, m, 1, i].item() == pytest.approx(a * math.cos(angle) - b * math.sin(angle), abs=1e-5)
            assert y[0, m, 1, i + 2].item() == pytest.approx(a * math.sin(angle) + b * math.cos(angle), abs=1e-5)
    assert torch.allclose(y[..., 4:], x[..., 4:], atol=1e-6)  # stationary dims
    k = torch.randn(2, 5, 3, 8, dtype=torch.float64)
    shifted, newest = offset_keys(k, 4)
    for t in range(5):
        assert torch.equal(shifted[:, t, :, :4], k[:, t, :, :4])
        assert torch.equal(shifted[:, t, :, 4:], k[:, max(t - 1, 0), :, 4:])
    assert torch.equal(newest, k[:, 4:5, :, 4:])
    shifted, _ = offset_keys(k[:, 2:], 4, previous=k[:, 1:2, :, 4:])  # decoding on from position 2
    assert torch.equal(shifted, offset_keys(k, 4)[0][:, 2:])


def test_attention_with_the_key_offset_by_hand():
    model = randomise(tiny("rope_dims=32,key_offset=1,value_embeds=0"))  # one head of 64: 32 rotate, 32 stay
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 6, 64, dtype=torch.float64)
    q, k, v = (x @ lin.weight.T for lin in (attn.c_q, attn.c_k, attn.c_v))
    q, k = (t / t.pow(2).mean(-1, keepdim=True).sqrt() for t in (q, k))
    inv = 10000.0 ** (-torch.arange(0, 16, dtype=torch.float64) * 2 / 32)
    angles = torch.arange(6, dtype=torch.float64)[:, None] * inv
    cos, sin = angles.cos(), angles.sin()
    q, k = (torch.cat((t[..., :16] * cos - t[..., 16:32] * sin, t[..., :16] * sin + t[..., 16:32] * cos,
                       t[..., 32:]), -1) for t in (q, k))
    k = torch.cat([k[..., :32], torch.cat([k[:, :1, 32:], k[:, :-1, 32:]], dim=1)], dim=-1)
    scores = (q @ k.transpose(-1, -2) / 8).masked_fill(torch.triu(torch.ones(6, 6, dtype=torch.bool), 1), -math.inf)
    assert torch.allclose(attn(x, None, 0), (scores.softmax(-1) @ v) @ attn.c_proj.weight.T, atol=1e-10)


def test_backout_subtracts_the_weighted_stream_after_two_thirds_of_the_blocks():
    model = randomise(tiny("backout=1,value_embeds=0,unet=0", depth=3))
    idx = torch.randint(0, 50257, (2, 5))
    streams = []
    hooks = [block.register_forward_hook(lambda mod, args, out: streams.append(out)) for block in model.transformer.h]
    hidden = model(idx)
    for hook in hooks:
        hook.remove()
    assert model.backout_after == 2
    assert torch.allclose(hidden, rms_norm(streams[2] - model.backout_lambda * streams[1]), atol=1e-12)
    assert tiny("backout=1").backout_lambda.item() == 0.5


@pytest.mark.parametrize("arch", [ALL + ",value_embeds=1", "bigram=0.01,smear=1,value_embeds=0"])
def test_kv_cache_decoding_equals_full_forward_passes_with_every_switch(arch):
    model = randomise(tiny(arch, depth=4))
    prompt = torch.randint(0, 50257, (2, 5))
    full = torch.cat([prompt, torch.randint(0, 50257, (2, 4))], dim=1)
    expected = model(full, output=model.logits)
    from llmpy.infer import KVCache
    cache = KVCache(model.config.n_layer, model.config.block_size)
    got = [model(prompt, kv_cache=cache, output=model.logits)]
    for t in range(5, 9):  # one token at a time: the smear and the bigram read the cached previous token
        got.append(model(full[:, t:t + 1], kv_cache=cache, output=model.logits))
    assert torch.allclose(torch.cat(got, dim=1), expected, atol=1e-9)
    out = generate(model.float(), prompt, 5, temperature=0.0)
    seq = prompt
    for _ in range(5):
        logits = model(seq, output=lambda hidden: model.logits(hidden[:, -1]))
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_a_frontier_checkpoint_keeps_its_switches_and_outputs(tmp_path):
    model = randomise(tiny(ALL + ",value_embeds=1")).float()
    export_model(tmp_path / "run", model, {})
    loaded, _ = load_model(tmp_path / "run")
    assert loaded.config == model.config and loaded.config.bigram == 0.01 and loaded.config.skip_gate == 1
    idx = torch.randint(0, 50257, (2, 7))
    assert torch.equal(loaded(idx), model(idx))
    # a modern config saved before these switches existed has them all off
    old = {k: v for k, v in model.config.to_dict().items() if k not in ModernConfig.SWITCHES[14:]}
    assert ModernConfig.from_dict(old) == ModernConfig.from_dict({**old, **dict.fromkeys(
        ("bigram", "bigram_dim", "smear", "sigmoid_cap", "attn_gate", "ve_gate", "skip_gate"), 0)})


@pytest.mark.parametrize("arch, message", [
    ("bigram=-1", "bigram must be >= 0"), ("sigmoid_cap=nan", "sigmoid_cap must be >= 0"),
    ("smear=2", "smear must be 0 or 1"), ("bigram_dim=65", "bigram_dim must be 0"), ("ve_gate=0.5", "whole number"),
    ("rope_dims=3", "rope_dims must be an even number"), ("key_offset=1", "key_offset=1 shifts the dims"),
    ("rope_dims=64,key_offset=1", "rope_dims between 0"),
])
def test_bad_frontier_switches_are_one_line_errors(arch, message):
    with pytest.raises(LlmpyError, match=message):
        model_config("modern", "d2w64", arch)


def test_the_frontier_recipe_merges_its_switches_with_the_users():
    values = with_recipe({"recipe": "frontier", "arch": "smear=0, bigram-dim=16"})
    assert values["family"] == "modern" and values["optimizer"] == "muon"
    config = model_config("modern", "d2w64", values["arch"])
    assert (config.smear, config.bigram_dim, config.bigram, config.sigmoid_cap, config.attn_gate) == (0, 16, 5, 23, 1)
    assert with_recipe({"recipe": "frontier"})["arch"] == with_recipe({"recipe": "frontier", "arch": ""})["arch"]
    assert merge_settings("a=1,b=2", "b=3,c=4") == "a=1,b=3,c=4"
    assert with_recipe({"recipe": "modern", "arch": "smear=1"})["arch"] == "smear=1"
