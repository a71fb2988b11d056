"""Auxiliary losses (llmpy.frontier.aux_loss): multi-token and prefix-token prediction. The terms are checked against
an explicit loop of per-position F.cross_entropy in fp64, the prefix table against hand-written maps (a toy vocabulary
and GPT-2 tokens decoded by tiktoken), the schedule by hand; the loss's value is the next-token CE alone while its
gradient is that of the weighted sum; a run trains with them, resumes bitwise across --aux-loss-until, and a bad value
is one line."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import write_random_shards
from llmpy.checkpoint import load_model
from llmpy.cli import main
from llmpy.config import TrainConfig
from llmpy.frontier.aux_loss import AuxiliaryLoss, gpt2_prefix_table, prefix_table, weight_scale
from llmpy.loss import CrossEntropyLoss
from llmpy.tokenizer import get_tokenizer
from llmpy.train.build import build_trainer
from llmpy.train.trainer import Trainer

V, PADDED, C = 11, 16, 6


def reference(logits, targets, mtp_weights, prefix_weight=0.0, prefix_of=None):
    """(main CE, main + weighted terms) by a loop over positions and offsets, one F.cross_entropy per position."""
    B, T, _ = logits.shape

    def mean_ce(pairs):  # [(b, i, target)] -> mean of CE(z_{b,i}, target), 0 for none
        ces = [F.cross_entropy(logits[b, i], torch.tensor(t)) for b, i, t in pairs]
        return sum(ces) / len(ces) if ces else logits.new_zeros(())

    y = targets.tolist()
    main = mean_ce([(b, i, y[b][i]) for b in range(B) for i in range(T) if y[b][i] != -1])
    total = main
    for k, w in enumerate(mtp_weights, start=1):
        total = total + w * mean_ce([(b, i, y[b][i + k]) for b in range(B) for i in range(T - k) if y[b][i + k] != -1])
    if prefix_weight:
        pairs = [(b, i, int(prefix_of[y[b][i]])) for b in range(B) for i in range(T)
                 if y[b][i] != -1 and prefix_of[y[b][i]] != -1]
        total = total + prefix_weight * mean_ce(pairs)
    return main, total


def problem(seed=0, B=2, T=5):
    torch.manual_seed(seed)
    head = nn.Linear(C, PADDED, bias=False)
    hidden = torch.randn(B, T, C, requires_grad=True)
    targets = torch.randint(0, V, (B, T))
    targets[0, 1] = targets[1, 4] = -1
    return head, hidden, targets


def grads(loss, hidden, head):
    return torch.autograd.grad(loss, (hidden, head.weight))


def fp64_reference(head, hidden, targets, *args):
    hidden64 = hidden.detach().double().requires_grad_()
    head64 = nn.Linear(C, PADDED, bias=False).double()
    head64.weight.data.copy_(head.weight.detach())
    main, total = reference(head64(hidden64)[..., :V], targets, *args)
    return main, total, grads(total, hidden64, head64)


def close(ours, want):
    return torch.allclose(ours.double(), want, rtol=1e-5, atol=1e-7)


def test_the_value_is_the_next_token_loss_and_the_gradient_that_of_the_weighted_sum():
    head, hidden, targets = problem()
    prefix_of = torch.tensor([-1, -1, 0, 1, 3, -1, 2, 4, 6, 0, -1])
    mtp = (0.5, 0.25, 0.125, 0.3, 0.2, 0.7)  # offsets 5 and 6 reach past every row of T = 5: no terms
    loss = AuxiliaryLoss(V, PADDED, mtp, 0.4, prefix_of, until=0.5)
    value = loss(hidden, targets, head)
    main, _, want = fp64_reference(head, hidden, targets, mtp, 0.4, prefix_of)
    assert close(value.detach(), main.detach())
    assert all(close(g, w) for g, w in zip(grads(value, hidden, head), want))
    plain_grads = grads(CrossEntropyLoss(V, PADDED)(hidden, targets, head), hidden, head)
    assert not torch.allclose(plain_grads[0], want[0].float(), rtol=1e-3)  # the terms do change the gradient


def test_each_term_is_the_mean_over_its_own_positions():
    head, hidden, targets = problem(seed=1, T=7)
    prefix_of = torch.tensor([-1, 0, -1, 2, 2, 4, -1, 6, 1, -1, 9])
    loss = AuxiliaryLoss(V, PADDED, (1.0, 1.0, 1.0), 1.0, prefix_of)
    logits = head(hidden)[..., :V].detach().double()
    log_probs = F.log_softmax((head(hidden).float() + loss.vocab_mask), dim=-1)
    terms = loss.aux_terms(log_probs, targets)
    main = reference(logits, targets, ())[0]
    for j, weights in enumerate([(1.0,), (0.0, 1.0), (0.0, 0.0, 1.0)]):  # one offset at a time
        assert close(terms[j].detach(), reference(logits, targets, weights)[1] - main)
    assert close(terms[3].detach(), reference(logits, targets, (), 1.0, prefix_of)[1] - main)


def test_only_the_next_token_loss_without_gradients():
    head, hidden, targets = problem(seed=2)
    loss = AuxiliaryLoss(V, PADDED, (0.5,), 0.25, torch.zeros(V, dtype=torch.long))
    with torch.no_grad():
        assert torch.equal(loss(hidden, targets, head), CrossEntropyLoss(V, PADDED)(hidden, targets, head))


def test_the_schedule_by_hand():
    assert [weight_scale(p, 0.5) for p in (0.0, 0.25, 0.5, 0.75, 1.0)] == [1.0, 0.5, 0.0, 0.0, 0.0]
    assert weight_scale(0.1, 0.4) == pytest.approx(0.75)
    loss = AuxiliaryLoss(V, PADDED, (0.5, 0.25), 0.2, torch.zeros(V, dtype=torch.long), until=0.8)
    assert loss.weights.tolist() == pytest.approx([0.5, 0.25, 0.2])
    loss.schedule_weights(0.2)  # 1 - 0.2 / 0.8 = 0.75
    assert loss.weights.tolist() == pytest.approx([0.375, 0.1875, 0.15])
    loss.schedule_weights(0.8)
    assert loss.weights.tolist() == [0.0, 0.0, 0.0]
    head, hidden, targets = problem(seed=3)  # weights 0: the gradient is the plain loss's
    plain = grads(CrossEntropyLoss(V, PADDED)(hidden, targets, head), hidden, head)
    faded = grads(loss(hidden, targets, head), hidden, head)
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-8) for a, b in zip(faded, plain))


def test_the_prefix_table_of_a_toy_vocabulary_by_hand():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"abc": 4, b"abca": 5, b"bc": 6, b"cab": 7, b"abcab": 8, b"cc": 9}
    # single bytes: none; cab: "ca" is no token, "c" is; abcab: "abca"; id 10 (EOT-like) and 11 (padding): none
    want = [-1, -1, -1, 0, 3, 4, 1, 2, 5, 2, -1, -1]
    assert prefix_table(ranks, 12).tolist() == want


def test_the_gpt2_prefix_table(bpe_file):
    table = gpt2_prefix_table(bpe_file.resolve(), 50304)
    encoding = get_tokenizer(bpe_file)._encoding
    for word, prefix in ((" hello", " hell"), (" world", " wor"), ("ing", "in"), (" the", " th")):
        [token] = encoding.encode_ordinary(word)
        assert encoding.decode_single_token_bytes(int(table[token])) == prefix.encode()
    assert table[encoding.encode_ordinary("a")[0]] == -1  # a single byte
    assert table[50256] == -1 and (table[50257:] == -1).all()  # EOT and padding
    assert int((table >= 0).sum()) == 50256 - 256  # every multi-byte token has at least its first byte


@pytest.fixture
def data(tmp_path):
    return write_random_shards(tmp_path, "a", {"val_000000.bin": 2000, "train_000001.bin": 30000}, seed=5)


def train(data, run, *flags, code=0):
    args = ["train", "-i", str(data / "a_train_*.bin"), "-o", str(run), "-e", "d2w64", "-b", "2", "-t", "32",
            "-l", "1e-3", "-u", "0", "-v", "0", "-s", "0", "--device", "cpu", "--compile", "0", "--log-every", "0",
            "--shuffle", "0", *flags]
    assert main(args) == code
    if code:
        return None
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}, load_model(run)[0].state_dict()


def test_a_run_trains_with_them_and_resumes_bitwise_across_the_end_of_their_schedule(data, tmp_path, bpe_file,
                                                                                       monkeypatch):
    aux = ["--mtp-weights", "0.5,0.25", "--prefix-loss", "0.25", "--aux-loss-until", "0.5", "--tokenizer",
           str(bpe_file), "-x", "4"]  # weights: 1, 0.5, 0, 0 of their values
    straight, weights = train(data, tmp_path / "straight", *aux)
    plain, _ = train(data, tmp_path / "plain", "-x", "2")
    assert straight[0] == pytest.approx(plain[0], rel=1e-6)  # the value logged is the next-token loss...
    assert straight[1] != pytest.approx(plain[1], rel=1e-6)  # ...and the terms trained the model
    resumed = tmp_path / "resumed"
    scheduled = Trainer.schedule_model

    def ctrl_c_at_step_2(trainer, step):  # called as each step begins, after the step before was checkpointed
        if step == 2:
            raise KeyboardInterrupt
        scheduled(trainer, step)

    monkeypatch.setattr(Trainer, "schedule_model", ctrl_c_at_step_2)
    train(data, resumed, *aux, "-n", "1", code=130)  # stopped before step 2, where the weights reach 0
    monkeypatch.setattr(Trainer, "schedule_model", scheduled)
    again, again_weights = train(data, resumed, *aux, "-y", "1")  # from the checkpoint at step 1
    assert again == straight
    assert all(torch.equal(again_weights[k], weights[k]) for k in weights)
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert config["aux_losses"] == {"mtp_weights": [0.5, 0.25], "prefix_loss": 0.25, "aux_loss_until": 0.5}


def test_the_trainer_sets_the_weights_each_step_and_the_header_says_so(data, bpe_file):
    config = TrainConfig(train_data=str(data / "a_train_*.bin"), model="d2w64", family="modern", batch_size=2,
                         seq_len=32, max_steps=10, val_every=0, sample_every=0, device="cpu", compile=0,
                         mtp_weights="0.5", prefix_loss=0.2, aux_loss_until=0.4, tokenizer=str(bpe_file))
    lines = []
    trainer = build_trainer(config, print_fn=lines.append)
    assert isinstance(trainer.loss, AuxiliaryLoss)
    trainer.schedule_model(2)  # progress 0.2: half of 0.4
    assert trainer.loss.weights.tolist() == pytest.approx([0.25, 0.1])
    trainer.schedule_model(4)
    assert trainer.loss.weights.tolist() == [0.0, 0.0]
    assert any("auxiliary losses: multi-token prediction 0.5 (the tokens 2 ahead), prefix-token prediction 0.2; "
               "weights falling linearly to 0 at step 4 of 10" in line for line in lines)


@pytest.mark.parametrize("flags, message", [
    (["--mtp-weights", "0.5,x"],
     "--mtp-weights takes comma-separated finite numbers >= 0 (e.g. 0.5,0.25), got '0.5,x'"),
    (["--mtp-weights", "0.5,-1"], "--mtp-weights takes comma-separated finite numbers >= 0"),
    (["--mtp-weights", "inf"], "--mtp-weights takes comma-separated finite numbers >= 0"),
    (["--prefix-loss=-0.5"], "--prefix-loss must be >= 0, got -0.5"),
    (["--aux-loss-until", "0"], "--aux-loss-until must be in (0, 1], got 0.0"),
    (["--mtp-weights", "0.5", "--fused-loss", "1"], "--fused-loss 1: the fused loss computes the next-token loss only"),
])
def test_a_bad_value_is_one_line(data, tmp_path, capsys, flags, message):
    args = ["train", "-i", str(data / "a_train_*.bin"), "-e", "d2w64", "-b", "2", "-t", "32", "--device", "cpu",
            "--compile", "0", "-x", "1", *flags]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
