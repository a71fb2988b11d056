"""The frontier recipe's optimizer settings of --optimizer muon (cautious and lr^2-tied weight decay, Adam groups'
decay, NorMuon's axis and beta, Q/K per pair of heads, the "scalar" module marker) against float64 hand computations
with SVD polar factors, per-block orthogonalize calls and a hand-written Adam; skipped steps, bitwise resumes, old
checkpoints, one-line errors, and FSDP2 / DDP on 2 gloo ranks against 1 process."""

import copy
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from llmpy.errors import LlmpyError
from llmpy.train.muon import Muon, MuonAdamW
from llmpy.train.optim import build_optimizer, masked_step
from llmpy.train.polar import orthogonalize
from test_muon import (Toy, _full_state, assert_bitwise, assert_same_states, restored_twins, snapshot, toy_batch,
                       two_rank_worker)

ALL_ON = ("cautious_wd=1,wd_schedule=lr2,embedding_wd=0.5,head_wd=0.3,normuon=1,normuon_axis=auto,"
          "normuon_beta=0.9,qk_pairs=1,momentum_warmup=2")


def polar(m: torch.Tensor) -> torch.Tensor:
    """The exact orthogonal polar factor U V^T (float64 SVD), batched."""
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    return u @ vh


def reference_muon(weight, grads, *, lr, wd, momentum=0.95, cautious=False, schedule="lr", normuon_beta=None,
                   per_row=True, block=0):
    """Muon in float64 (Nesterov, no momentum warmup), every formula written out: the direction as row blocks of
    `block` rows, each its own polar factor, NorMuon statistic and shape factor; decay c = lr wd or wd lr^2
    (`schedule`), only where u w >= 0 when `cautious`. Returns the weight, the last moment and the smallest |u w| seen."""
    rows, cols = weight.shape
    n = block or rows
    w, m, moment, margin = weight.clone(), torch.zeros_like(weight), None, math.inf
    for g in grads:
        m = momentum * m + (1 - momentum) * g
        o = polar(((1 - momentum) * g + momentum * m).reshape(rows // n, n, cols))
        if normuon_beta is not None:
            axis = -1 if per_row else -2
            stat = (1 - normuon_beta) * (o ** 2).mean(axis)
            moment = stat if moment is None else normuon_beta * moment + stat
            normalized = o / (moment.sqrt() + 1e-10).unsqueeze(axis)
            o = normalized * (torch.linalg.matrix_norm(o) / torch.linalg.matrix_norm(normalized))[:, None, None]
        u = (o * math.sqrt(max(1.0, n / cols))).reshape(rows, cols)
        decay = lr * wd if schedule == "lr" else wd * lr ** 2
        mask = (u * w >= 0).double() if cautious else torch.ones_like(w)
        margin = min(margin, float((u * w).abs().min()))
        w = w - decay * mask * w - lr * u
    return w, moment, margin


def random(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def run_muon(weight, grads, **settings):
    """Muon's steps (lr 0.2 x group lr 0.5 = 0.1; 10 Polar Express steps reach U V^T to fp32 rounding)."""
    p = nn.Parameter(weight.clone())
    optimizer = Muon([{"params": [p], "lr": 0.5}], torch.tensor(0.2, dtype=torch.float64), ns_steps=10,
                     momentum_warmup=0, **settings)
    for g in grads:
        p.grad = g.clone()
        masked_step(optimizer, torch.tensor(False))
    return p.detach(), optimizer.state[p]


@pytest.mark.parametrize("cautious,schedule", [(True, "lr"), (True, "lr2"), (False, "lr2")])
def test_muon_cautious_and_lr2_decay_match_the_formulas(cautious, schedule):
    gen = torch.Generator().manual_seed(1)
    weight, grads = random(gen, 6, 4), [random(gen, 6, 4) for _ in range(2)]
    got, _ = run_muon(weight, grads, weight_decay=3.0, cautious_wd=cautious, wd_schedule=schedule)
    expected, _, margin = reference_muon(weight, grads, lr=0.1, wd=3.0, cautious=cautious, schedule=schedule)
    assert margin > 1e-3  # no sign of u w is within rounding of 0: the mask is the same in both
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)
    # the setting matters far beyond the tolerance: today's rule (lr wd on every entry) lands elsewhere
    plain, _, _ = reference_muon(weight, grads, lr=0.1, wd=3.0)
    assert (plain - expected).abs().max() > 1e-2


def reference_adam(weight, grads, *, lr, wd, cautious, schedule, betas=(0.8, 0.95), eps=1e-10):
    """AdamW in float64 with the bias-corrected step u; decay only where u w > 0 when `cautious`."""
    w, m, v = weight.clone(), torch.zeros_like(weight), torch.zeros_like(weight)
    for t, g in enumerate(grads, start=1):
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        u = (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)
        decay = lr * wd if schedule == "lr" else wd * lr ** 2
        mask = (u * w > 0).double() if cautious else torch.ones_like(w)
        w = w - decay * mask * w - lr * u
    return w, m, v


@pytest.mark.parametrize("cautious,schedule", [(True, "lr"), (True, "lr2"), (False, "lr2"), (False, "lr")])
def test_adam_cautious_and_lr2_decay_match_a_hand_written_adam(cautious, schedule):
    gen = torch.Generator().manual_seed(2)
    weight = random(gen, 5, 3)
    grads = [random(gen, 5, 3) for _ in range(3)]
    for g in grads:
        g[0] = 0.0  # u = 0 on row 0: the strict mask u w > 0 leaves it undecayed (>= would decay it)
    p = nn.Parameter(weight.clone())
    optimizer = MuonAdamW([{"kind": "adam", "params": [p], "lr": 2.0, "weight_decay": 4.0}],
                          torch.tensor(0.05, dtype=torch.float64),
                          adam={"cautious_wd": cautious, "wd_schedule": schedule})
    for g in grads:
        p.grad = g.clone()
        masked_step(optimizer, torch.tensor(False))
    expected, m, v = reference_adam(weight, grads, lr=0.1, wd=4.0, cautious=cautious, schedule=schedule)
    torch.testing.assert_close(p.detach(), expected, atol=1e-7, rtol=0)
    torch.testing.assert_close(optimizer.state[p]["exp_avg"], m, atol=1e-12, rtol=0)
    torch.testing.assert_close(optimizer.state[p]["exp_avg_sq"], v, atol=1e-12, rtol=0)
    assert float(optimizer.state[p]["step"]) == 3
    if cautious:
        decayed = reference_adam(weight, grads, lr=0.1, wd=4.0, cautious=False, schedule=schedule)[0]
        assert torch.equal(p.detach()[0], weight[0])  # no update there, and no decay
        assert (decayed - expected).abs().max() > 1e-3


@pytest.mark.parametrize("rows,cols", [(4, 6), (6, 4)])
def test_normuon_auto_axis_per_column_of_wide_matrices(rows, cols):
    gen = torch.Generator().manual_seed(3)
    weight, grads = random(gen, rows, cols), [random(gen, rows, cols) for _ in range(2)]
    got, state = run_muon(weight, grads, weight_decay=0.0, normuon=True, normuon_axis="auto", normuon_beta=0.8)
    per_row = rows >= cols
    expected, moment, _ = reference_muon(weight, grads, lr=0.1, wd=0.0, normuon_beta=0.8, per_row=per_row)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)
    assert state["normuon_second_moment"].shape == ((rows,) if per_row else (cols,))
    torch.testing.assert_close(state["normuon_second_moment"], moment[0], atol=1e-6, rtol=0)
    if not per_row:  # a wide U V^T has orthonormal rows: per-row statistics are all equal and change nothing
        rows_rule, _, _ = reference_muon(weight, grads, lr=0.1, wd=0.0, normuon_beta=0.8, per_row=True)
        assert (rows_rule - expected).abs().max() > 1e-3


class Gate(nn.Module):
    """A small gate matrix the model wants in the Adam "scalar" group."""

    optimizer_group = "scalar"

    def __init__(self, dim: int, heads: int = 2):
        super().__init__()
        self.weight = nn.Parameter(0.1 * torch.randn(heads, dim))

    def forward(self, x):
        return torch.sigmoid(x @ self.weight.T).mean(-1, keepdim=True)


class PairedBlock(nn.Module):
    """c_q (6 x 4) marked as row blocks of 2 (wide blocks: NorMuon per column under auto; 3 rows per FSDP shard on
    2 ranks, so one block spans both), c_v of the same shape unmarked, a wide output matrix and a gate."""

    def __init__(self, dim: int = 4, rows: int = 6):
        super().__init__()
        self.c_q = nn.Linear(dim, rows, bias=False)
        self.c_q.muon_row_blocks = 2
        self.c_v = nn.Linear(dim, rows, bias=False)
        self.out = nn.Linear(rows, dim, bias=False)
        self.gate = Gate(dim)

    def forward(self, x):
        return x + self.out(torch.relu(self.c_q(x)) * self.c_v(x)) * self.gate(x)


class PairedToy(Toy):
    def __init__(self, vocab: int = 11, dim: int = 4, layers: int = 3):
        super().__init__(vocab, dim, layers=layers, make_block=lambda: PairedBlock(dim))


def paired_loss(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))


def train_paired(model, optimizer, seeds, skip=()):
    for seed in seeds:
        paired_loss(model, *toy_batch(seed)).backward()
        if seed in skip:
            for p in model.parameters():
                p.grad.fill_(float("nan"))
        masked_step(optimizer, torch.tensor(seed in skip))
        optimizer.zero_grad(set_to_none=True)


def test_groups_with_qk_pairs_and_the_scalar_marker():
    model = PairedToy()
    model.outside = Gate(4)  # a marked matrix outside the blocks: scalar too
    groups = {g["name"]: g for g in build_optimizer("muon", model, torch.tensor(0.1), 0.1, ALL_ON).param_groups}
    assert list(groups) == ["muon", "muon_row_blocks_2", "embedding", "head", "scalar"]
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    blocks = model.transformer.h
    assert ids(groups["muon_row_blocks_2"]["params"]) == ids(b.c_q.weight for b in blocks)
    assert groups["muon_row_blocks_2"]["row_block"] == 2 and groups["muon"]["row_block"] == 0
    assert ids(groups["muon"]["params"]) == ids(p for b in blocks for p in (b.c_v.weight, b.out.weight))
    assert ids(groups["scalar"]["params"]) == ids([model.outside.weight, *(b.gate.weight for b in blocks)])
    assert [groups[name]["weight_decay"] for name in groups] == [0.1, 0.1, 0.5, 0.3, 0.0]
    assert all(groups[name]["cautious_wd"] and groups[name]["wd_schedule"] == "lr2" for name in groups)
    off = {g["name"]: g for g in build_optimizer("muon", model, torch.tensor(0.1), 0.1, "").param_groups}
    assert list(off) == ["muon", "embedding", "head", "scalar"]  # qk_pairs off: the marked c_q stay whole
    assert ids(off["muon"]["params"]) == ids(p for b in blocks for p in (b.c_q.weight, b.c_v.weight, b.out.weight))
    assert [off[name]["weight_decay"] for name in off] == [0.1, 0.0, 0.0, 0.0]
    model.transformer.wte.optimizer_group = "head"  # another Adam group's name: the embedding trains as the head
    groups = {g["name"]: g for g in build_optimizer("muon", model, torch.tensor(0.1), 0.1, "head_wd=0.2").param_groups}
    assert ids(groups["head"]["params"]) == ids([model.transformer.wte.weight, model.lm_head.weight])
    assert groups["embedding"]["params"] == [] and groups["head"]["weight_decay"] == 0.2
    del model.transformer.wte.optimizer_group
    del Gate.optimizer_group  # unmarked, the outside matrix has no group (and gates are Muon matrices)
    try:
        with pytest.raises(LlmpyError, match="outside.weight"):
            build_optimizer("muon", model, torch.tensor(0.1), 0.1, "")
    finally:
        Gate.optimizer_group = "scalar"


@pytest.mark.parametrize("qk_pairs", [1, 0])
def test_qk_pairs_orthogonalize_each_block_on_its_own(qk_pairs):
    torch.manual_seed(0)
    model = PairedToy().double()
    optimizer = build_optimizer("muon", model, torch.tensor(0.1, dtype=torch.float64), 0.0,
                                f"qk_pairs={qk_pairs},ns_steps=10,momentum_warmup=0")
    gen = torch.Generator().manual_seed(4)
    q, v = model.transformer.h[1].c_q.weight, model.transformer.h[1].c_v.weight  # (6, 4): same shape
    weights = {name: p.detach().clone() for name, p in [("q", q), ("v", v)]}
    grads = {name: [random(gen, 6, 4) for _ in range(2)] for name in weights}
    for step in range(2):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        q.grad, v.grad = grads["q"][step].clone(), grads["v"][step].clone()
        if step == 0:  # one step against orthogonalize called on each block (the same iteration, fp32)
            blocks = (0.05 + 0.95 * 0.05) * q.grad  # (1 - beta) g + beta m, m = (1 - beta) g
            blocks = blocks.reshape(3, 2, 4) if qk_pairs else blocks.reshape(1, 6, 4)
            direction = torch.cat([orthogonalize(b, 10) for b in blocks.unbind(0)])
            expected = weights["q"] - 0.1 * direction * (1.0 if qk_pairs else math.sqrt(6 / 4))
        masked_step(optimizer, torch.tensor(False))
        if step == 0:
            torch.testing.assert_close(q.detach(), expected, atol=1e-7, rtol=0)
    expected_q, _, _ = reference_muon(weights["q"], grads["q"], lr=0.1, wd=0.0, block=2 if qk_pairs else 0)
    expected_v, _, _ = reference_muon(weights["v"], grads["v"], lr=0.1, wd=0.0)
    torch.testing.assert_close(q.detach(), expected_q, atol=2e-6, rtol=0)
    torch.testing.assert_close(v.detach(), expected_v, atol=2e-6, rtol=0)  # same shape, not in the blocks' bucket
    if qk_pairs:
        whole, _, _ = reference_muon(weights["q"], grads["q"], lr=0.1, wd=0.0)
        assert (whole - expected_q).abs().max() > 1e-2


def test_qk_pairs_with_normuon_statistics_per_block():
    gen = torch.Generator().manual_seed(5)
    weight, grads = random(gen, 8, 3), [random(gen, 8, 3) for _ in range(2)]
    for axis, block, per_row in [("auto", 2, False), ("auto", 4, True), ("rows", 2, True)]:
        got, state = run_muon(weight, grads, weight_decay=0.0, normuon=True, normuon_axis=axis, normuon_beta=0.9,
                              row_block=block)
        expected, moment, _ = reference_muon(weight, grads, lr=0.1, wd=0.0, normuon_beta=0.9, per_row=per_row,
                                             block=block)
        torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)
        assert state["normuon_second_moment"].shape == moment.shape  # (blocks, rows or columns of each)
        torch.testing.assert_close(state["normuon_second_moment"], moment, atol=1e-6, rtol=0)


def test_skipped_steps_change_nothing_with_every_setting_on():
    torch.manual_seed(0)
    model = PairedToy()
    optimizer = build_optimizer("muon", model, torch.tensor(0.05), 0.1, ALL_ON)
    initial = snapshot(model, optimizer)[0]
    train_paired(model, optimizer, [1], skip={1})  # a skipped first step: state created, nothing moves
    assert all(torch.equal(p, initial[name]) for name, p in model.named_parameters())
    assert all(float(optimizer.state[p]["step"]) == 0 for p in model.parameters())
    train_paired(model, optimizer, [2, 3])
    before = snapshot(model, optimizer)
    train_paired(model, optimizer, [4], skip={4})
    assert_bitwise(snapshot(model, optimizer), before)  # weights, momenta, moments, Adam moments, step counts
    train_paired(model, optimizer, [5])
    assert not torch.equal(model.transformer.wte.weight, before[0]["transformer.wte.weight"])


def test_state_dict_round_trips_with_every_setting_on_are_bitwise():
    torch.manual_seed(0)
    model = PairedToy()
    optimizer = build_optimizer("muon", model, torch.tensor(0.05), 0.1, ALL_ON)
    train_paired(model, optimizer, [1, 2])
    moment = optimizer.state[model.transformer.h[0].c_q.weight]["normuon_second_moment"]
    assert moment.shape == (3, 4)  # 3 blocks of (2, 4), per column
    copies = restored_twins(model, optimizer,
                            lambda twin: build_optimizer("muon", twin, torch.tensor(0.05), 0.1, ALL_ON))
    train_paired(model, optimizer, [3, 4])
    for twin, twin_optimizer in copies:
        train_paired(twin, twin_optimizer, [3, 4])
        assert_bitwise(snapshot(twin, twin_optimizer), snapshot(model, optimizer))


def test_a_checkpoint_saved_before_the_settings_existed_resumes_bitwise():
    torch.manual_seed(0)
    model = PairedToy()
    optimizer = build_optimizer("muon", model, torch.tensor(0.05), 0.1, "normuon=1")
    train_paired(model, optimizer, [1, 2])
    state = copy.deepcopy(optimizer.state_dict())  # (its tensors are the optimizer's own)
    new = ("normuon_axis", "row_block", "cautious_wd", "wd_schedule")
    for group in state["param_groups"]:  # as the optimizer of the commit before these settings saved it
        for key in new:
            group.pop(key, None)  # (the Adam groups have only the last two)
    twin = copy.deepcopy(model)
    twin_optimizer = build_optimizer("muon", twin, torch.tensor(0.05), 0.1, "normuon=1")
    twin_optimizer.load_state_dict(state)
    assert all(key in group for group in twin_optimizer.param_groups for key in new[2:])
    assert twin_optimizer.param_groups[0]["normuon_axis"] == "rows"
    train_paired(model, optimizer, [3, 4])
    train_paired(twin, twin_optimizer, [3, 4])
    assert_bitwise(snapshot(twin, twin_optimizer), snapshot(model, optimizer))


@pytest.mark.parametrize("settings,message", [
    ("cautious_wd=2", "cautious_wd must be 0 or 1"),
    ("wd_schedule=lr3", "wd_schedule must be lr or lr2"),
    ("normuon_axis=cols", "normuon_axis must be rows or auto"),
    ("normuon_beta=1", "normuon_beta must be a number in"),
    ("qk_pairs=yes", "qk_pairs must be 0 or 1"),
    ("embedding_wd=-0.1", "embedding_wd must be a finite number >= 0"),
    ("head_wd=nan", "head_wd must be a finite number >= 0"),
    ("cautious=1", "muon has no setting 'cautious'"),
    ("row_block=2", "muon has no setting 'row_block'"),
])
def test_bad_settings_are_one_line_errors(settings, message):
    with pytest.raises(LlmpyError, match=message) as caught:
        build_optimizer("muon", PairedToy(), torch.tensor(0.1), 0.0, settings)
    assert "\n" not in str(caught.value)


def test_bad_markers_are_one_line_errors():
    model = PairedToy()
    model.transformer.h[2].c_q.muon_row_blocks = 4  # does not divide 6 rows
    with pytest.raises(LlmpyError, match=r"transformer\.h\.2\.c_q has muon_row_blocks 4") as caught:
        build_optimizer("muon", model, torch.tensor(0.1), 0.0, "qk_pairs=1")
    assert "\n" not in str(caught.value)
    build_optimizer("muon", model, torch.tensor(0.1), 0.0, "")  # unread without qk_pairs
    for block in model.transformer.h:  # blocks of at least all 6 rows (a single head): the matrices stay whole
        block.c_q.muon_row_blocks = 6 if block is model.transformer.h[0] else 12
    names = [g["name"] for g in build_optimizer("muon", model, torch.tensor(0.1), 0.0, "qk_pairs=1").param_groups]
    assert names == ["muon", "embedding", "head", "scalar"]
    model.transformer.h[0].gate.optimizer_group = "scalars"
    with pytest.raises(LlmpyError, match=r"transformer\.h\.0\.gate has optimizer_group 'scalars'"):
        build_optimizer("muon", model, torch.tensor(0.1), 0.0, "")
    with pytest.raises(ValueError, match="row_block"):
        Muon([{"params": [torch.zeros(6, 4, requires_grad=True)], "row_block": 4}], torch.tensor(0.1))


# --- 2 gloo ranks (FSDP2 and DDP) against 1 process, every setting on ---------------------------------------------

DIST_SEEDS = [11, 12, 13, 14]


def _paired_train(model, optimizer, ranks: tuple[int, ...], world: int = 2, wrapped=None) -> None:
    """Each rank's gradient is its half of the batch's; one process does both halves (the same sums: this toy's
    NorMuon turns the rounding of a whole-batch gradient into differences of 1e-6)."""
    for seed in DIST_SEEDS:
        x, y = toy_batch(seed)
        half = x.size(0) // world
        for rank in ranks:
            loss = paired_loss(wrapped or model, x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half])
            (loss / len(ranks)).backward()
        if seed == 12:
            for p in model.parameters():
                p.grad.fill_(float("nan"))
        masked_step(optimizer, torch.tensor(seed == 12))
        optimizer.zero_grad(set_to_none=True)


def _every_setting_run(model, wrapped, rank: int, world: int, mode: str) -> MuonAdamW:
    optimizer = build_optimizer("muon", model, torch.tensor(0.05), 0.1, ALL_ON)
    _paired_train(model, optimizer, (rank,), world, wrapped)
    return optimizer


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_two_ranks_fsdp2_and_ddp_equal_one_process_with_every_setting_on(tmp_path):
    # c_q's row blocks of 2 cross FSDP's shards of 3 rows; 3 matrices per bucket; a skipped step with NaN gradients
    mp.spawn(two_rank_worker, args=(2, str(tmp_path / "init"), str(tmp_path), PairedToy, _every_setting_run),
             nprocs=2)
    results = torch.load(tmp_path / "results.pt", weights_only=False)
    torch.manual_seed(0)
    model = PairedToy()
    optimizer = build_optimizer("muon", model, torch.tensor(0.05), 0.1, ALL_ON)
    _paired_train(model, optimizer, (0, 1))
    weights, state = _full_state(model, optimizer)
    assert state["transformer.h.0.c_q.weight"]["normuon_second_moment"].shape == (3, 4)
    assert_same_states(results, weights, state)
