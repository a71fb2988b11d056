"""HellaSwag scoring: hand-computed predictions with a bigram model, batched == unbatched, real-file loading."""

import contextlib
import math

import pytest
import torch

from llmpy.config import ModelConfig
from llmpy.errors import LlmpyError
from llmpy.eval.hellaswag import Example, evaluate_hellaswag, load_examples
from llmpy.model import GPT


class Bigram(torch.nn.Module):
    """logits[b, t] = table[idx[b, t]]: every loss is a log-probability we can write down by hand.

    The model API: forward gives the hidden states (here the table's rows themselves), `logits` the head over them."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, idx, kv_cache=None, output=None):
        hidden = self.table[idx]
        return hidden if output is None else output(hidden)

    def logits(self, hidden):
        return hidden


def probabilities_table():
    """log p(next | previous) over 10 tokens; rows not set here are uniform (p = 0.1, loss ln 10 = 2.303)."""
    p = torch.full((10, 10), 0.1)
    p[2] = torch.tensor([0.01, 0.01, 0.01, 0.30, 0.50, 0.01, 0.06, 0.08, 0.01, 0.01])  # after token 2
    p[4] = torch.tensor([0.01, 0.01, 0.01, 0.01, 0.01, 0.10, 0.01, 0.01, 0.01, 0.82])  # after token 4
    p[8] = torch.tensor([0.91, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01])  # after token 8
    return torch.log(p)


# Losses by hand, -ln p:  after 2: [3] 1.204, [4] 0.693, [6] 2.813, [7] 2.526;  after 4: [5] 2.303, [9] 0.198;
# after 9: [8] 2.303;  after 8: [0] 0.094.
EXAMPLES = [
    # sums 1.204 | 0.693+2.303=2.996 (mean 1.498) | 2.813 | 2.526 -> sum picks 0, mean picks 0; label 0: both right
    Example([1, 2], ([3], [4, 5], [6], [7]), label=0),
    # sums 1.204 | 0.693+0.198=0.891 (mean 0.446) | 2.813 | 2.526 -> both pick 1; label 1: both right
    Example([1, 2], ([3], [4, 9], [6], [7]), label=1),
    # sums 2.526 | 0.693+0.198+2.303+0.094=3.288 (mean 0.822) | 2.813 | 1.204
    # -> sum picks 3 (wrong), mean picks 1 (right); label 1
    Example([8, 2], ([7], [4, 9, 8, 0], [6], [3]), label=1),
]


def test_hand_computed_predictions():
    model = Bigram(probabilities_table())
    result = evaluate_hellaswag(model, EXAMPLES, torch.device("cpu"), contextlib.nullcontext)
    assert result == {"examples": 3, "acc": pytest.approx(2 / 3), "acc_norm": pytest.approx(1.0)}
    assert math.isclose(-math.log(0.5) - math.log(0.82) - math.log(0.1) - math.log(0.91), 3.288, abs_tol=1e-3)


def test_batched_equals_unbatched_and_ranks_sum(bpe_env, shared_data):
    from llmpy.tokenizer import get_tokenizer

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=128))
    examples = load_examples(shared_data / "hellaswag" / "hellaswag_val.jsonl", get_tokenizer(), limit=24)
    assert len(examples) == 24 and examples[0].label == 3
    device = torch.device("cpu")
    one_by_one = evaluate_hellaswag(model, examples, device, contextlib.nullcontext, batch_examples=1)
    batched = evaluate_hellaswag(model, examples, device, contextlib.nullcontext, batch_examples=10)
    assert one_by_one == batched and one_by_one["examples"] == 24
    halves = [evaluate_hellaswag(model, examples, device, contextlib.nullcontext, rank=r, world_size=2)
              for r in range(2)]
    assert sum(h["examples"] for h in halves) == 24
    assert sum(h["acc_norm"] * h["examples"] for h in halves) == pytest.approx(batched["acc_norm"] * 24)


def test_a_file_without_examples_is_an_error_not_an_accuracy_of_zero(tmp_path):
    """D10: an empty file loaded as no examples, and `eval` printed "HellaSwag acc_norm 0.0000"."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(LlmpyError, match=f"{empty}: no HellaSwag examples in this file"):
        load_examples(empty, tokenizer=None)
    assert load_examples(empty, tokenizer=None, limit=0) == []  # a caller that asks for none gets none
