"""Weight-decay groups, AdamW construction and LR schedules against hand-computed values."""

import pytest
import torch
import torch.nn as nn

from llmpy.errors import LlmpyError
from llmpy.train.optim import OPTIMIZERS, LRSchedule, build_optimizer, learning_rate_at, masked_step, param_groups


class TinyTiedModel(nn.Module):
    """Embedding, LayerNorm, Linear with bias, and a head tied to the embedding (like GPT-2's wte/lm_head)."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(10, 4)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 8)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.wte.weight


def test_decay_group_is_exactly_the_2d_params_with_the_tied_weight_once():
    model = TinyTiedModel()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model.wte.weight), id(model.fc.weight)}
    assert len(decay["params"]) == 2  # head.weight is wte.weight: listed once
    assert {id(p) for p in no_decay["params"]} == {id(model.ln.weight), id(model.ln.bias), id(model.fc.bias)}
    assert len(no_decay["params"]) == 3


def test_frozen_parameters_are_left_out():
    model = TinyTiedModel()
    model.fc.weight.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.1)
    assert [id(p) for p in decay["params"]] == [id(model.wte.weight)]
    assert len(no_decay["params"]) == 3


def test_build_optimizer_defaults_and_decay_applies_only_to_2d_params():
    model = TinyTiedModel()
    lr = torch.tensor(0.1)
    optimizer = build_optimizer("adamw", model, lr, weight_decay=0.5)
    assert sorted(OPTIMIZERS) == ["adamw", "muon"]
    assert optimizer.defaults["betas"] == (0.9, 0.95) and optimizer.defaults["eps"] == 1e-8
    assert optimizer.defaults["fused"]  # always fused (CPU too): tensor LR and found_inf masking on the device
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    # zero gradients: Adam's update is 0, so only decoupled decay moves weights, by a factor 1 - lr * wd = 0.95
    for name, p in model.named_parameters():
        factor = 0.95 if p.dim() >= 2 else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor)
    # the learning rate is read from the tensor at every step: filling it changes the next update
    lr.fill_(1e-5)
    assert [float(g["lr"]) for g in optimizer.param_groups] == pytest.approx([1e-5, 1e-5])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer.step()
    for name, p in model.named_parameters():
        factor = 1 - 1e-5 * 0.5 if p.dim() >= 2 else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor)
    with pytest.raises(LlmpyError, match="adamw"):
        build_optimizer("sgd", model, lr, weight_decay=0.5)


def test_masked_step_changes_nothing_when_skipped():
    model = TinyTiedModel()
    optimizer = build_optimizer("adamw", model, torch.tensor(0.1), weight_decay=0.5)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    masked_step(optimizer, torch.tensor(True))
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    assert all(float(s["step"]) == 0 for s in optimizer.state.values())  # the step count did not advance
    masked_step(optimizer, torch.tensor(False))
    # a first Adam step with unit gradients moves every weight by lr (m/sqrt(v) = 1), after the decay factor 0.95
    for name, p in model.named_parameters():
        factor = 0.95 if p.dim() >= 2 else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor - 0.1)
    assert all(float(s["step"]) == 1 for s in optimizer.state.values())


# max_lr 6e-4, warmup 10, total 100, final_lr_frac 0.1 -> min_lr 6e-5; worked out by hand:
#   warmup:   step s < 10 -> 6e-4 * (s + 1) / 10            (s=0: 6e-5, s=9: 6e-4)
#   cosine:   r = (s - 10) / 90; 6e-5 + 0.5 * (1 + cos(pi r)) * 5.4e-4
#             s=40: r=1/3, cos=0.5 -> 6e-5 + 0.75*5.4e-4 = 4.65e-4;  s=55: r=1/2 -> 3.3e-4
#             s=99: r=89/90, cos(pi r) = -cos(2 deg) = -0.99939083 -> 6e-5 + 0.000304586*5.4e-4 = 6.0164477e-5
#   linear:   6e-4 - r * 5.4e-4: s=40 -> 4.2e-4, s=55 -> 3.3e-4, s=99 -> 6e-4 - 5.34e-4 = 6.6e-5
#   wsd:      decay starts at int(0.8 * 100) = 80: s=90 -> 6e-4 - 0.5*5.4e-4 = 3.3e-4; s=99 -> 6e-4 - 0.95*5.4e-4 = 8.7e-5
HAND = {
    "cosine": {0: 6e-5, 9: 6e-4, 10: 6e-4, 40: 4.65e-4, 55: 3.3e-4, 99: 6.0164477e-5},
    "linear": {0: 6e-5, 9: 6e-4, 10: 6e-4, 40: 4.2e-4, 55: 3.3e-4, 99: 6.6e-5},
    "constant": {0: 6e-5, 9: 6e-4, 10: 6e-4, 55: 6e-4, 99: 6e-4},
    "wsd": {0: 6e-5, 9: 6e-4, 10: 6e-4, 55: 6e-4, 79: 6e-4, 80: 6e-4, 90: 3.3e-4, 99: 8.7e-5},
}


@pytest.mark.parametrize("schedule", sorted(HAND))
def test_schedules_match_hand_computation(schedule):
    for step, expected in HAND[schedule].items():
        lr = learning_rate_at(
            step, max_lr=6e-4, warmup_steps=10, total_steps=100, final_lr_frac=0.1, schedule=schedule
        )
        assert lr == pytest.approx(expected, rel=1e-6), (schedule, step)


def test_cosine_without_warmup_runs_from_max_to_min():
    kwargs = dict(max_lr=1.0, warmup_steps=0, total_steps=4, final_lr_frac=0.0, schedule="cosine")
    # 0.5 * (1 + cos(pi * s / 4)) for s = 0..4: 1, 0.853553, 0.5, 0.146447, 0
    assert [round(learning_rate_at(s, **kwargs), 6) for s in range(5)] == [1.0, 0.853553, 0.5, 0.146447, 0.0]


def test_wsd_decay_never_starts_inside_warmup():
    kwargs = dict(max_lr=1.0, warmup_steps=90, total_steps=100, final_lr_frac=0.0, schedule="wsd")
    # int(0.8 * 100) = 80 < 90, so the decay runs from step 90 to 100: step 95 is half way
    assert learning_rate_at(89, **kwargs) == 1.0
    assert learning_rate_at(90, **kwargs) == 1.0
    assert learning_rate_at(95, **kwargs) == pytest.approx(0.5)


def test_total_steps_equal_to_warmup_does_not_divide_by_zero():
    for schedule in ("cosine", "linear", "wsd"):
        kwargs = dict(max_lr=1.0, warmup_steps=10, total_steps=10, final_lr_frac=0.0, schedule=schedule)
        assert learning_rate_at(9, **kwargs) == 1.0
        assert 0.0 <= learning_rate_at(10, **kwargs) <= 1.0


def test_unknown_schedule_names_the_valid_ones():
    with pytest.raises(LlmpyError, match="cosine, linear, constant, wsd"):
        learning_rate_at(0, max_lr=1.0, warmup_steps=0, total_steps=10, final_lr_frac=1.0, schedule="step")
    with pytest.raises(LlmpyError, match="cosine, linear, constant, wsd"):
        LRSchedule(max_lr=1.0, warmup_steps=0, total_steps=10, schedule="step")


def test_schedule_state_round_trip():
    sched = LRSchedule(max_lr=1.0, warmup_steps=2, total_steps=10, final_lr_frac=0.5, schedule="linear")
    assert sched(5) == pytest.approx(1.0 - 3 / 8 * 0.5)  # r = (5 - 2) / 8
    other = LRSchedule(max_lr=0.1, warmup_steps=0, total_steps=1)
    other.load_state_dict(sched.state_dict())
    assert other == sched
    with pytest.raises(LlmpyError, match="unknown keys"):
        other.load_state_dict({"max_lr": 1.0, "gamma": 0.5})
