"""Muon and MuonAdamW: the orthogonalization against float64 SVD, the optimizer's step against hand-written float64
formulas, found_inf skipping, the Adam groups against torch.optim.AdamW, exact checkpoint round trips, the groups
build_muon makes for GPT-2, falling loss on a tiny GPT, and FSDP2 / DDP on 2 gloo ranks against 1 process."""

import copy
import io
import itertools
import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from llmpy.config import ModelConfig
from llmpy.errors import LlmpyError
from llmpy.families import build_model
from llmpy.train.muon import ADAM_LR_SCALES, Muon, MuonAdamW, build_muon
from llmpy.train.polar import (
    JORDAN_COEFFICIENTS, NORM_SAFETY, POLAR_EXPRESS_LOWER, _minimax_quintic, _quintic, orthogonalize,
    polar_express_coefficients,
)
from llmpy.train.optim import masked_step


def composed(coefficients, x: np.ndarray) -> np.ndarray:
    """What the iteration does to each singular value: the scalar polynomials applied one after the other."""
    for c in coefficients:
        x = _quintic(c, x)
    return x


def normalized_singular_values(g: torch.Tensor) -> np.ndarray:
    """g's singular values (float64) as orthogonalize scales them: divided by 1.01 times the Frobenius norm."""
    g = g.double()
    norm = torch.linalg.matrix_norm(g).unsqueeze(-1)
    return (torch.linalg.svdvals(g) / (norm * NORM_SAFETY)).numpy()


def matrix_with_singular_values(rows: int, cols: int, values: torch.Tensor, seed: int) -> torch.Tensor:
    """U diag(values) V^T with random orthonormal U (rows x r) and V (cols x r), r = min(rows, cols)."""
    gen = torch.Generator().manual_seed(seed)
    r = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, r, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, r, generator=gen, dtype=torch.float64))
    return (u * values) @ v.T


# After 5 Polar Express steps every normalised singular value in [POLAR_EXPRESS_LOWER, 1] = [1e-3, 1] ends in
# [0.867, 1.133] (the composed polynomials' range, checked on a grid below). orthogonalize divides by
# 1.01 |g|_F <= 1.01 sqrt(rank) sigma_max, so a matrix whose condition number times 1.01 sqrt(rank) is below 1000 has
# all its scaled singular values in [1e-3, 1]: its result's singular values must lie in the band.
BAND_5 = (0.867, 1.133)


def test_each_polar_express_quintic_is_minimax_on_its_interval():
    # the alternation theorem: the error 1 - p equioscillates at 4 points of [lo, hi] (3 coefficients + 1), and
    # then no odd quintic does better; random perturbations of the coefficients must all be worse
    for lo, hi in [(0.02407, 1.0), (0.1, 1.0), (0.5, 1.5), (0.9, 1.1)]:
        a, b, c = _minimax_quintic(lo, hi)
        roots = np.sort(np.sqrt(np.roots([5 * c, 3 * b, a]).real))
        points = np.array([lo, roots[0], roots[1], hi])
        errors = 1 - _quintic((a, b, c), points)
        np.testing.assert_allclose(np.abs(errors), np.abs(errors[0]), rtol=1e-9)
        assert np.all(np.sign(errors) == [1, -1, 1, -1])
        grid = np.linspace(lo, hi, 20001)
        best = np.max(np.abs(1 - _quintic((a, b, c), grid)))
        assert best == pytest.approx(abs(errors[0]), rel=1e-6)
        rng = np.random.default_rng(0)
        for _ in range(200):
            other = np.array([a, b, c]) * (1 + 1e-3 * rng.standard_normal(3))
            assert np.max(np.abs(1 - _quintic(other, grid))) > best


def test_polar_express_bands_by_step_count():
    grid = np.geomspace(POLAR_EXPRESS_LOWER, 1.0, 100001)
    bands = {steps: (composed(polar_express_coefficients(steps), grid).min(),
                     composed(polar_express_coefficients(steps), grid).max()) for steps in (4, 5, 6, 8)}
    assert BAND_5[0] < bands[5][0] and bands[5][1] < BAND_5[1]
    assert bands[4][0] < 0.44 and bands[4][1] > 1.5  # one step fewer: far wider, so the band tests can fail
    assert 1 - 2e-3 < bands[6][0] and bands[6][1] < 1 + 2e-3
    assert 1 - 1e-9 < bands[8][0] and bands[8][1] < 1 + 1e-9
    # the band needs the condition bound: a scaled singular value of 1e-4 (condition ~1e4) is still far below it
    assert composed(polar_express_coefficients(5), np.array([1e-4]))[0] < 0.5
    # the first polynomial is steep (it has to lift 1e-3); the late ones tend to Newton-Schulz's (15, -10, 3) / 8
    assert polar_express_coefficients(5)[0][0] > 8
    # (scaled to where the safety factor leaves the interval, a few 1e-6 below 1)
    np.testing.assert_allclose(polar_express_coefficients(12)[-1], (15 / 8, -10 / 8, 3 / 8), rtol=1e-4)
    # Jordan's fixed quintic, for comparison: 5 steps from singular values >= 0.1 end in about [0.68, 1.20]
    jordan = composed((JORDAN_COEFFICIENTS,) * 5, np.linspace(0.1, 1, 10001))
    assert 0.67 < jordan.min() < 0.7 and 1.13 < jordan.max() < 1.21


@pytest.mark.parametrize("shape", [(16, 32), (32, 16), (64, 64), (3, 8, 24)])
def test_orthogonalize_applies_the_polynomials_to_the_singular_values(shape):
    # exact arithmetic: orthogonalize(g) = U f(S) V^T for g = U S V^T, with f the composed quintic of the scaled
    # singular values. Checked in fp32 against float64 SVD, singular vectors included (the whole matrix is compared)
    g = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    out = orthogonalize(g)
    assert out.dtype == g.dtype and out.shape == g.shape
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    f = torch.from_numpy(composed(polar_express_coefficients(5), normalized_singular_values(g)))
    expected = (u * f.unsqueeze(-2)) @ vh
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("rows,cols,condition", [(16, 32, 100.0), (32, 16, 100.0), (64, 64, 100.0), (24, 8, 300.0)])
def test_orthogonalize_lands_in_the_band_its_step_count_implies(rows, cols, condition):
    # condition * 1.01 * sqrt(rank) < 1000: every scaled singular value is in [1e-3, 1], so 5 steps give BAND_5
    r = min(rows, cols)
    assert condition * NORM_SAFETY * math.sqrt(r) < 1 / POLAR_EXPRESS_LOWER
    values = torch.logspace(0, -math.log10(condition), r, dtype=torch.float64)
    g = matrix_with_singular_values(rows, cols, values, seed=rows + cols).float()
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    polar = u @ vh
    s = torch.linalg.svdvals(orthogonalize(g).double())
    assert BAND_5[0] - 1e-4 < s.min() and s.max() < BAND_5[1] + 1e-4
    # |O - U V^T|_F / sqrt(r) <= max |f(s) - 1|, and 8 steps converge to U V^T up to fp32 rounding
    assert torch.linalg.matrix_norm(orthogonalize(g).double() - polar) / math.sqrt(r) < 0.134
    assert torch.linalg.matrix_norm(orthogonalize(g, steps=8).double() - polar) / math.sqrt(r) < 1e-4
    # 4 steps are not enough for this band on these matrices (the smallest singular value stays low)
    assert torch.linalg.svdvals(orthogonalize(g, steps=4).double()).min() < BAND_5[0] - 0.1


def test_orthogonalize_in_bf16_and_with_jordan_coefficients():
    values = torch.linspace(1.0, 0.2, 32, dtype=torch.float64)  # well conditioned: bf16 resolves it
    g = matrix_with_singular_values(32, 64, values, seed=3).float()
    s = torch.linalg.svdvals(orthogonalize(g, dtype=torch.bfloat16).double())
    assert orthogonalize(g, dtype=torch.bfloat16).dtype == torch.float32  # computed in bf16, returned as g's dtype
    assert BAND_5[0] - 0.02 < s.min() and s.max() < BAND_5[1] + 0.02  # bf16 keeps ~3 digits
    s = torch.linalg.svdvals(orthogonalize(g, method="jordan").double())
    assert 0.68 < s.min() and s.max() < 1.21
    with pytest.raises(ValueError, match="matrix"):
        orthogonalize(torch.ones(4))


def reference_muon(weight, grads, *, lr, weight_decay, start, end, warmup, nesterov, normuon_beta=None):
    """Muon's formulas in float64, with the exact polar factor (SVD) in place of the iteration."""
    w, m = weight.clone(), torch.zeros_like(weight)
    v = torch.zeros(weight.shape[0], dtype=torch.float64)
    rows, cols = weight.shape
    for t, g in enumerate(grads):
        beta = start + (end - start) * min(1.0, t / warmup)
        m = beta * m + (1 - beta) * g
        direction = (1 - beta) * g + beta * m if nesterov else m
        u, _, vh = torch.linalg.svd(direction, full_matrices=False)
        o = u @ vh
        if normuon_beta is not None:
            v = normuon_beta * v + (1 - normuon_beta) * (o ** 2).mean(dim=1)
            normalized = o / (v.sqrt() + 1e-10)[:, None]
            o = normalized * (torch.linalg.norm(o) / torch.linalg.norm(normalized))
        w = w * (1 - lr * weight_decay) - lr * math.sqrt(max(1.0, rows / cols)) * o
    return w, m


@pytest.mark.parametrize("nesterov,normuon", [(True, False), (False, False), (True, True)])
def test_muon_steps_match_the_formulas_in_float64(nesterov, normuon):
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(6, 4, generator=gen, dtype=torch.float64)  # tall: scaled by sqrt(6 / 4)
    grads = [torch.randn(6, 4, generator=gen, dtype=torch.float64) for _ in range(3)]
    p = nn.Parameter(weight.clone())
    lr = torch.tensor(0.02, dtype=torch.float64)
    # warmup over 2 steps: beta 0.85, 0.9, 0.95; 10 iterations reach U V^T (to fp32 rounding, the iteration's dtype)
    optimizer = Muon([{"params": [p], "lr": 0.5}], lr, weight_decay=0.1, momentum_warmup=2, nesterov=nesterov,
                     ns_steps=10, normuon=normuon)
    for g in grads:
        p.grad = g.clone()
        optimizer.step()
    expected_w, expected_m = reference_muon(weight, grads, lr=0.01, weight_decay=0.1, start=0.85, end=0.95, warmup=2,
                                            nesterov=nesterov, normuon_beta=0.95 if normuon else None)
    torch.testing.assert_close(optimizer.state[p]["momentum_buffer"], expected_m, atol=1e-12, rtol=0)
    torch.testing.assert_close(p.detach(), expected_w, atol=2e-6, rtol=0)
    assert optimizer.state[p]["step"].dtype == torch.float32 and float(optimizer.state[p]["step"]) == 3


class ToyBlock(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(dim))
        self.up = nn.Linear(dim, hidden)  # (5, 8): 5 rows, shards of 3 and 2 on 2 ranks
        self.down = nn.Linear(hidden, dim, bias=False)  # (8, 5): tall

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x * self.gain)))


class Toy(nn.Module):
    """GPT-shaped and tiny: an embedding, 3 blocks of matrices (an odd number per shape), gains and biases, and an
    untied head."""

    def __init__(self, vocab: int = 11, dim: int = 8, hidden: int = 5, layers: int = 3, make_block=None):
        super().__init__()
        make_block = make_block or (lambda: ToyBlock(dim, hidden))
        self.transformer = nn.ModuleDict({"wte": nn.Embedding(vocab, dim),
                                          "h": nn.ModuleList([make_block() for _ in range(layers)])})
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        x = self.transformer.wte(idx)
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(x)


def toy_batch(seed: int, batch: int = 4, length: int = 6, vocab: int = 11):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=gen), torch.randint(0, vocab, (batch, length),
                                                                                   generator=gen)


def toy_loss(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))


def snapshot(model, optimizer):
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    states = [{k: v.clone() for k, v in optimizer.state[p].items()} for g in optimizer.param_groups
              for p in g["params"]]
    return weights, states


def assert_bitwise(a, b):
    (weights_a, states_a), (weights_b, states_b) = a, b
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    assert len(states_a) == len(states_b)
    for sa, sb in zip(states_a, states_b):
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key


def train_toy(model, optimizer, seeds):
    for seed in seeds:
        loss = toy_loss(model, *toy_batch(seed))
        loss.backward()
        masked_step(optimizer, torch.tensor(False))
        optimizer.zero_grad(set_to_none=True)


def test_found_inf_skips_everything_even_with_nan_grads_and_zero_is_a_plain_step():
    torch.manual_seed(0)
    model = Toy()
    optimizer = build_muon(model, torch.tensor(0.02), weight_decay=0.1, normuon=True)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():  # a skipped first step: the state is created, nothing else moves
        p.grad = torch.full_like(p, float("nan"))
    masked_step(optimizer, torch.tensor(True))
    assert all(torch.equal(p, initial[name]) for name, p in model.named_parameters())
    assert all(float(optimizer.state[p]["step"]) == 0 for p in model.parameters())
    optimizer.zero_grad(set_to_none=True)
    train_toy(model, optimizer, [1])
    before = snapshot(model, optimizer)
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    list(model.parameters())[1].grad[0] = float("inf")
    masked_step(optimizer, torch.tensor(True))
    assert_bitwise(snapshot(model, optimizer), before)  # weights, momenta, moments, step counts
    optimizer.zero_grad(set_to_none=True)
    # found_inf = 0 is the same step as one with no found_inf at all (as torch.distributed.checkpoint calls it)
    twin = copy.deepcopy(model)
    twin_optimizer = build_muon(twin, torch.tensor(0.02), weight_decay=0.1, normuon=True)
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for m in (model, twin):
        toy_loss(m, *toy_batch(2)).backward()
    masked_step(optimizer, torch.tensor(False))
    twin_optimizer.step()
    assert_bitwise(snapshot(model, optimizer), snapshot(twin, twin_optimizer))
    assert not torch.equal(snapshot(model, optimizer)[0]["transformer.h.0.up.weight"],
                           before[0]["transformer.h.0.up.weight"])


def test_adam_groups_match_torch_adamw():
    gen = torch.Generator().manual_seed(5)
    initial = [torch.randn(5, 3, generator=gen), torch.randn(3, generator=gen)]
    ours = [nn.Parameter(t.clone()) for t in initial]
    theirs = [nn.Parameter(t.clone()) for t in initial]
    lr = torch.tensor(0.01)
    optimizer = MuonAdamW([{"kind": "adam", "params": ours, "lr": 2.0, "weight_decay": 0.1}], lr,
                          adam={"betas": (0.8, 0.95), "eps": 1e-10})
    reference = torch.optim.AdamW(theirs, lr=0.02, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1, foreach=False)
    for _ in range(5):
        grads = [torch.randn(t.shape, generator=gen) for t in initial]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        masked_step(optimizer, torch.tensor(False))
        reference.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.detach(), q.detach(), atol=1e-6, rtol=0)
        assert (p.detach() - initial[0 if p.dim() == 2 else 1]).abs().max() > 0.05  # it moved
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(optimizer.state[p]["exp_avg_sq"], reference.state[q]["exp_avg_sq"])
        assert float(optimizer.state[p]["step"]) == 5


def restored_twins(model, optimizer, make_optimizer) -> list:
    """(twin model, twin optimizer) restored from `optimizer`'s state, once through state_dict() and once through
    torch.distributed.checkpoint's state dict keyed by parameter name (as llmpy's checkpoints hold it)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    saved = io.BytesIO()
    torch.save({"plain": optimizer.state_dict(), "by_name": get_optimizer_state_dict(model, optimizer)}, saved)
    copies = []
    for key in ("plain", "by_name"):
        twin = copy.deepcopy(model)
        twin_optimizer = make_optimizer(twin)
        saved.seek(0)
        state = torch.load(saved, weights_only=False)[key]
        if key == "plain":
            twin_optimizer.load_state_dict(state)
        else:
            assert "transformer.h.0.up.weight" in state["state"] or "transformer.h.0.c_q.weight" in state["state"]
            set_optimizer_state_dict(twin, twin_optimizer, state)
        copies.append((twin, twin_optimizer))
    return copies


def test_state_dict_round_trips_give_bitwise_identical_training():
    torch.manual_seed(0)
    model = Toy()
    optimizer = build_muon(model, torch.tensor(0.02), weight_decay=0.1, normuon=True)
    train_toy(model, optimizer, [1, 2])
    copies = restored_twins(model, optimizer, lambda twin: build_muon(twin, torch.tensor(0.02), weight_decay=0.1,
                                                                      normuon=True))
    train_toy(model, optimizer, [3, 4])
    for twin, twin_optimizer in copies:
        train_toy(twin, twin_optimizer, [3, 4])
        assert_bitwise(snapshot(twin, twin_optimizer), snapshot(model, optimizer))


def test_build_muon_groups_for_gpt2_and_an_untied_head():
    model = build_model(ModelConfig.from_descriptor("d2w64"))
    optimizer = build_muon(model, torch.tensor(0.05), weight_decay=0.1)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert [g["name"] for g in optimizer.param_groups] == ["muon", "embedding", "head", "scalar"]
    names = {id(p): name for name, p in model.named_parameters()}
    members = {key: sorted(names[id(p)] for p in g["params"]) for key, g in groups.items()}
    assert members["muon"] == sorted(n for n, p in model.named_parameters() if p.dim() == 2 and ".h." in n)
    assert len(members["muon"]) == 8  # c_attn, attn.c_proj, c_fc, mlp.c_proj in 2 blocks
    assert members["embedding"] == ["transformer.wpe.weight", "transformer.wte.weight"]  # the tied head once
    assert members["head"] == []
    assert members["scalar"] == sorted(n for n, p in model.named_parameters() if p.dim() < 2)
    assert {k: g["kind"] for k, g in groups.items()} == {"muon": "muon", "embedding": "adam", "head": "adam",
                                                         "scalar": "adam"}
    assert [g["lr"] for g in optimizer.param_groups] == [1.0, 12.0, 0.16, 0.8] == [1.0, *ADAM_LR_SCALES.values()]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0, 0.0, 0.0]
    assert groups["embedding"]["betas"] == (0.8, 0.95) and groups["embedding"]["eps"] == 1e-10
    toy = Toy()  # untied head: its own group; custom scales
    groups = {g["name"]: g for g in build_muon(toy, torch.tensor(0.05), 0.0,
                                               adam_lr_scales={"head": 0.1}).param_groups}
    assert groups["head"]["params"] == [toy.lm_head.weight] and groups["head"]["lr"] == 0.1
    assert len(groups["muon"]["params"]) == 6
    with pytest.raises(ValueError, match="adam_lr_scales"):
        build_muon(toy, torch.tensor(0.05), 0.0, adam_lr_scales={"heads": 0.1})
    toy.extra = nn.Linear(2, 2)
    with pytest.raises(LlmpyError, match="extra.weight"):
        build_muon(toy, torch.tensor(0.05), 0.0)
    with pytest.raises(ValueError, match="matrices"):
        Muon([torch.zeros(3, requires_grad=True)], torch.tensor(0.1))


def test_a_tiny_gpt_trains_with_falling_loss():
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_descriptor("d2w64"))
    lr = torch.tensor(0.0)
    optimizer = build_muon(model, lr, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, 50257, (2, 16), generator=gen) for _ in range(2))  # one fixed batch, memorised
    losses = []
    for _ in range(6):
        lr.fill_(0.01)  # -l: Muon's LR (embeddings 12x, scalars 0.8x), filled as the trainer does
        logits = model.logits(model(x))
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        losses.append(loss.item())
        loss.backward()
        masked_step(optimizer, torch.tensor(False))
        optimizer.zero_grad(set_to_none=True)
    assert losses[0] == pytest.approx(math.log(50257), abs=0.5)
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < 1.0, losses


# --- 2 gloo ranks (FSDP2 and DDP) against 1 process ----------------------------------------------------------------

DIST_SEEDS = [11, 12, 13]  # the step with seed 12 is skipped (found_inf = 1, NaN gradients)


def _train(model, optimizer, rank: int = 0, world: int = 1, wrapped=None) -> None:
    for seed in DIST_SEEDS:
        x, y = toy_batch(seed)
        half = x.size(0) // world  # each rank the mean loss of its part: their average is the whole batch's
        toy_loss(wrapped or model, x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]).backward()
        if seed == 12:
            for p in model.parameters():
                p.grad.fill_(float("nan"))  # (a DTensor gradient: this rank's shard)
        masked_step(optimizer, torch.tensor(seed == 12))
        optimizer.zero_grad(set_to_none=True)


def _full_state(model, optimizer) -> tuple[dict, dict]:
    """Whole weights and optimizer state by name, as llmpy's checkpoints gather them (a collective under FSDP; the
    state on rank 0 only)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    from torch.distributed.tensor import DTensor

    weights = {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
               for name, p in model.named_parameters()}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return weights, get_optimizer_state_dict(model, optimizer, options=options).get("state")


def _normuon_run(model, wrapped, rank: int, world: int, mode: str) -> MuonAdamW:
    optimizer = build_muon(model, torch.tensor(0.05), weight_decay=0.1, normuon=True)
    _train(model, optimizer, rank, world, wrapped)
    if mode == "ddp" and rank == 0:
        # under DDP only rank 0 gathers the optimizer state; on a fresh optimizer torch.distributed.checkpoint
        # then takes a zero-LR step on rank 0 alone, which must not wait for the other ranks
        _full_state(model, build_muon(model, torch.tensor(0.05), weight_decay=0.1, normuon=True))
    return optimizer


def two_rank_worker(rank: int, world: int, init_file: str, out_dir: str, make_model, run) -> None:
    """One of `world` gloo ranks: for FSDP2 (blocks and root sharded) and then DDP, a `make_model()` (seed 0) trained
    by `run(model, wrapped, rank, world, mode)`, which returns its optimizer; rank 0 saves both final states."""
    from datetime import timedelta

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=300))
    try:
        results = {}
        for mode in ("fsdp", "ddp"):
            torch.manual_seed(0)
            model = make_model()
            if mode == "fsdp":
                mesh = init_device_mesh("cpu", (world,))
                for block in model.transformer.h:
                    fully_shard(block, mesh=mesh)
                fully_shard(model, mesh=mesh)
            wrapped = DistributedDataParallel(model) if mode == "ddp" else model
            optimizer = run(model, wrapped, rank, world, mode)
            results[mode] = _full_state(model, optimizer)
            dist.barrier()
        if rank == 0:
            torch.save(results, os.path.join(out_dir, "results.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_two_ranks_fsdp2_and_ddp_equal_one_process(tmp_path):
    # uneven FSDP shards (5 rows on 2 ranks), 3 matrices of a shape (rank 0 orthogonalizes 2, rank 1 one), NorMuon's
    # moments and a skipped step with NaN gradients; weights and every optimizer state tensor, gathered by name
    mp.spawn(two_rank_worker, args=(2, str(tmp_path / "init"), str(tmp_path), Toy, _normuon_run), nprocs=2)
    results = torch.load(tmp_path / "results.pt", weights_only=False)
    torch.manual_seed(0)
    model = Toy()
    optimizer = build_muon(model, torch.tensor(0.05), weight_decay=0.1, normuon=True)
    _train(model, optimizer)
    weights, state = _full_state(model, optimizer)
    assert float(state["transformer.h.0.up.weight"]["step"]) == 2  # the skipped step is not counted
    assert_same_states(results, weights, state)


def assert_same_states(results: dict, weights: dict, state: dict) -> None:
    """Each mode's (weights, optimizer state) by name in `results` equals the one process's, to 1e-6."""
    for mode in ("fsdp", "ddp"):
        got_weights, got_state = results[mode]
        assert got_weights.keys() == weights.keys() and got_state.keys() == state.keys()
        for name in weights:
            torch.testing.assert_close(got_weights[name], weights[name], atol=1e-6, rtol=0, msg=f"{mode} {name}")
        for name in state:
            assert got_state[name].keys() == state[name].keys()
            for key, value in state[name].items():
                torch.testing.assert_close(got_state[name][key], value, atol=1e-6, rtol=0, msg=f"{mode} {name} {key}")
