"""Tie-then-untie (llmpy.frontier.untie): until the split the two weights train exactly as one shared tensor does
(a model built with tie=1, whose autograd sums both uses' gradients, stepped by the same optimizer with the shared
weight in the head's group); at the split the embedding takes the head's optimizer state, and after it trains on
its own gradient by Adam's formula written out in fp64."""

import pytest
import torch

from llmpy.errors import LlmpyError
from llmpy.families import build_model, model_config
from llmpy.frontier.untie import TiedUntil, split_step
from llmpy.loss import CrossEntropyLoss, ModelWithLoss
from llmpy.train.muon import MuonAdamW, muon_param_groups
from llmpy.train.optim import masked_step

ARCH = "untie_at=0.5,value_embeds=0"


def model(arch=ARCH):
    torch.manual_seed(0)
    return build_model(model_config("modern", "d2w64", arch), "modern")


def groups_by_name(module):
    return {group["name"]: group["params"] for group in muon_param_groups(module, 0.0)}


def train_step(module, optimizer, lr, batch, tie=None, step=0):
    loss = ModelWithLoss(module, CrossEntropyLoss(50257, 50304))(*batch)
    loss.backward()
    if tie is not None:
        tie.merge_gradients(step)
    masked_step(optimizer, torch.zeros((), dtype=torch.bool))
    if tie is not None:
        tie.after_update(step)
    optimizer.zero_grad(set_to_none=True)


def batches(count):
    generator = torch.Generator().manual_seed(5)
    return [tuple(torch.randint(0, 50257, (2, 8), generator=generator) for _ in range(2)) for _ in range(count)]


def test_the_two_weights_start_equal_small_and_in_the_heads_group():
    m = model()
    assert torch.equal(m.transformer.wte.weight, m.lm_head.weight)
    assert m.transformer.wte.weight is not m.lm_head.weight
    assert m.lm_head.weight.std().item() == pytest.approx(0.005, rel=0.05)
    groups = groups_by_name(m)
    assert any(p is m.transformer.wte.weight for p in groups["head"])
    assert not any(p is m.transformer.wte.weight for p in groups["embedding"])
    assert split_step(0.5, 10) == 4 and split_step(0.667, 300) == 199 and split_step(0.01, 10) == 0
    with pytest.raises(LlmpyError, match="untie_at must be a fraction"):
        model_config("modern", "d2w64", "untie_at=0.5,tie=1")


def test_until_the_split_it_trains_as_one_shared_weight_then_apart_by_adams_formula():
    untied = model()
    shared = model("tie=1,value_embeds=0")
    shared.load_state_dict({k: v for k, v in untied.state_dict().items() if k != "transformer.wte.weight"},
                           strict=False)
    shared.transformer.wte.weight.data.copy_(untied.lm_head.weight)
    assert shared.lm_head.weight is shared.transformer.wte.weight
    lr = torch.tensor(0.02)
    opt_untied = MuonAdamW(muon_param_groups(untied, 0.0), lr)
    reference_groups = muon_param_groups(shared, 0.0)  # the shared weight trains as the head, as the tie does
    by_name = {g["name"]: g for g in reference_groups}
    by_name["head"]["params"] = by_name["embedding"]["params"]
    by_name["embedding"]["params"] = []
    opt_shared = MuonAdamW(reference_groups, lr)
    tie = TiedUntil(untied.transformer.wte.weight, untied.lm_head.weight, opt_untied, split=2)
    data = batches(4)
    for step in range(3):  # steps 0, 1, 2: tied (2 is the split)
        train_step(untied, opt_untied, lr, data[step], tie, step)
        train_step(shared, opt_shared, lr, data[step])
        assert torch.equal(untied.transformer.wte.weight, untied.lm_head.weight)
        for name, p in shared.named_parameters():
            torch.testing.assert_close(dict(untied.named_parameters())[name], p, rtol=0, atol=1e-7)
    head_state, embedding_state = opt_untied.state[untied.lm_head.weight], opt_untied.state[untied.transformer.wte.weight]
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(embedding_state[key], head_state[key]) and embedding_state[key] is not head_state[key]
    # step 3: apart. The embedding's update is AdamW's, by hand in fp64, from the copied state and its own gradient
    state = {k: v.double().clone() for k, v in embedding_state.items()}
    before = untied.transformer.wte.weight.detach().double().clone()
    loss = ModelWithLoss(untied, CrossEntropyLoss(50257, 50304))(*data[3])
    loss.backward()
    grad = untied.transformer.wte.weight.grad.double().clone()
    tie.merge_gradients(3)
    assert torch.equal(untied.transformer.wte.weight.grad.double(), grad)  # not merged any more
    masked_step(opt_untied, torch.zeros((), dtype=torch.bool))
    tie.after_update(3)
    (beta1, beta2), eps, rate = (0.8, 0.95), 1e-10, 0.02 * 0.16
    t = state["step"].item() + 1
    m = beta1 * state["exp_avg"] + (1 - beta1) * grad
    v = beta2 * state["exp_avg_sq"] + (1 - beta2) * grad * grad
    expected = before - rate * (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + eps)
    torch.testing.assert_close(untied.transformer.wte.weight.double(), expected, rtol=1e-5, atol=1e-7)
    assert not torch.equal(untied.transformer.wte.weight, untied.lm_head.weight)


def test_a_run_whose_weights_already_differ_stays_untied():
    m = model()
    optimizer = MuonAdamW(muon_param_groups(m, 0.0), torch.tensor(0.02))
    with torch.no_grad():
        m.transformer.wte.weight.add_(1.0)  # as a checkpoint from after the split would load
    tie = TiedUntil(m.transformer.wte.weight, m.lm_head.weight, optimizer, split=10)
    assert not tie.tied_at(0) and not tie.tied_at(10)
    assert TiedUntil.for_model(model("value_embeds=0"), optimizer, 10) is None
    assert TiedUntil.for_model(model(), optimizer, 10).split == 4
