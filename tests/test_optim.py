"""Weight-decay groups and LR schedules against hand-computed values."""

import pytest
import torch.nn as nn

from llmpy.config import ModelConfig
from llmpy.errors import LlmpyError
from llmpy.model import GPT
from llmpy.train.optim import LRSchedule, apply_learning_rate, build_optimizer, learning_rate_at, param_groups


def test_weight_decay_only_on_2d_tensors_and_tied_weight_once():
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=32))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    # wte (tied with lm_head), wpe, and 4 matmul weights per block
    assert len(decay["params"]) == 2 + 2 * 4
    # LayerNorm weight+bias x2 per block and final, plus 4 Linear biases per block
    assert len(no_decay["params"]) == 2 * (4 + 4) + 2
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    optimizer = build_optimizer(model, 6e-4, 0.1)
    assert optimizer.defaults["betas"] == (0.9, 0.95) and optimizer.defaults["eps"] == 1e-8
    apply_learning_rate(optimizer, 1e-5)
    assert all(g["lr"] == 1e-5 for g in optimizer.param_groups)


def test_frozen_parameters_are_left_out():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    model[0].weight.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["params"] == [] and len(no_decay["params"]) == 3


# max_lr 6e-4, warmup 10, 100 steps, final fraction 0.1 (min_lr 6e-5); values worked out by hand:
#   warmup step s: 6e-4 * (s+1)/10;  decay ratio r = (s-10)/90
#   cosine: 6e-5 + 0.5*(1+cos(pi*r))*5.4e-4;  linear: 6e-4 - r*5.4e-4
#   wsd (cooldown 0.2): flat until step 80, then 6e-4 - (s-80)/20 * 5.4e-4
HAND = {
    "cosine": {0: 6e-5, 9: 6e-4, 10: 6e-4, 55: 3.3e-4, 99: 6.016448e-05},
    "linear": {0: 6e-5, 9: 6e-4, 10: 6e-4, 55: 3.3e-4, 99: 6.6e-05},
    "constant": {0: 6e-5, 9: 6e-4, 10: 6e-4, 55: 6e-4, 99: 6e-4},
    "wsd": {0: 6e-5, 9: 6e-4, 10: 6e-4, 79: 6e-4, 80: 6e-4, 90: 3.3e-4, 99: 8.7e-05},
}


@pytest.mark.parametrize("schedule", sorted(HAND))
def test_schedules_match_hand_computation(schedule):
    sched = LRSchedule(max_lr=6e-4, warmup_steps=10, total_steps=100, final_lr_frac=0.1, schedule=schedule)
    for step, expected in HAND[schedule].items():
        assert sched(step) == pytest.approx(expected, rel=1e-6), (schedule, step)


def test_cosine_reaches_min_lr_at_the_end_and_no_warmup_starts_at_max():
    kwargs = dict(max_lr=1.0, warmup_steps=0, total_steps=4, final_lr_frac=0.0, schedule="cosine")
    # r = s/4: 0.5*(1+cos(pi*r)) = 1, 0.853553, 0.5, 0.146447, 0
    assert [round(learning_rate_at(s, **kwargs), 6) for s in range(5)] == [1.0, 0.853553, 0.5, 0.146447, 0.0]


def test_unknown_schedule_and_state_round_trip():
    with pytest.raises(LlmpyError, match="use one of cosine, linear, constant, wsd"):
        LRSchedule(max_lr=1.0, warmup_steps=0, total_steps=10, schedule="step")
    sched = LRSchedule(max_lr=1.0, warmup_steps=2, total_steps=10, final_lr_frac=0.5, schedule="linear")
    other = LRSchedule(max_lr=0.1, warmup_steps=0, total_steps=1)
    other.load_state_dict(sched.state_dict())
    assert [other(s) for s in range(10)] == [sched(s) for s in range(10)]
