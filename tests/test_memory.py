"""--auto-batch: halve -b until a step fits, keeping -d; and the probe's out-of-memory detection."""

import pytest
import torch

from llmpy.errors import LlmpyError
from llmpy.train.memory import find_micro_batch, step_fits
from llmpy.train.parallel import compiled


def test_halves_until_it_fits_and_keeps_the_total_batch():
    tried, said = [], []

    def fits(batch):
        tried.append(batch)
        return batch <= 8

    assert find_micro_batch(fits, 64, 1024, 524288, said.append) == 8
    assert tried == [64, 32, 16, 8]
    assert said[-1] == "out of memory with -b 16: using -b 8 with grad accumulation 64 (same -d 524,288 tokens per step)"


def test_halving_an_odd_batch_and_sizes_that_do_not_divide_the_total():
    assert find_micro_batch(lambda b: b <= 4, 12, 10, 120, lambda _: None) == 3  # 12 -> 6 -> 3
    assert find_micro_batch(lambda b: b <= 4, 10, 10, 100, lambda _: None) == 2  # 10 -> 5 -> 2
    # -d of 9 samples: halving 9 gives 4, which does not divide 9, so the next size down that does: 3
    assert find_micro_batch(lambda b: b <= 3, 9, 10, 90, lambda _: None) == 3


def test_nothing_fits_is_a_clear_error():
    with pytest.raises(LlmpyError, match="-b 1 does not fit in memory.*-r 3"):
        find_micro_batch(lambda b: False, 4, 8, 32, lambda _: None)


class _Greedy(torch.nn.Module):
    """Raises the allocator's out-of-memory error above a batch size, like a GPU would."""

    def __init__(self, limit):
        super().__init__()
        self.limit, self.weight = limit, torch.nn.Parameter(torch.ones(()))

    def forward(self, tokens, targets):  # a train module: (idx, targets) -> mean loss
        if tokens.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return (tokens.float() * self.weight).mean()


def test_step_fits_catches_out_of_memory_and_leaves_no_gradients():
    import contextlib

    model = _Greedy(limit=4)
    assert step_fits(model, contextlib.nullcontext, torch.device("cpu"), 4, 8, reserve_bytes=1024)
    assert model.weight.grad is None  # the probe's gradient is gone: the first real step starts clean
    assert not step_fits(model, contextlib.nullcontext, torch.device("cpu"), 8, 8, reserve_bytes=1024)


class _Doubler(torch.nn.Module):
    def forward(self, x):
        return (x * 2).sum()


@pytest.mark.parametrize("mode", ["default", "tuned"])
def test_probed_batch_sizes_compile_static_graphs_that_training_reuses(mode, monkeypatch):
    graphs = []

    def backend(graph_module, inputs):
        graphs.append([tuple(t.shape) for t in inputs if isinstance(t, torch.Tensor)] +
                      [x for x in inputs if not isinstance(x, torch.Tensor)])  # SymInts show up as extra inputs
        return graph_module.forward

    real_compile = torch.compile

    def compile_with_recording_backend(model, **kwargs):
        # llmpy's compile settings (dynamic=...), with a backend that records each graph instead of Inductor's
        kwargs.pop("mode", None), kwargs.pop("options", None)
        return real_compile(model, backend=backend, **kwargs)

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", compile_with_recording_backend)
    step = compiled(_Doubler(), mode)  # what the trainer (and so auto-batch's probes) runs
    monkeypatch.setattr(torch, "compile", real_compile)
    for batch in (16, 8, 4):  # three probes, as when -b 16 and 8 do not fit
        step(torch.ones(batch, 3))
    step(torch.ones(4, 3))  # training at the chosen -b: no new compilation
    assert graphs == [[(16, 3)], [(8, 3)], [(4, 3)]]
    # without static shapes, the second size makes the batch dimension symbolic (what training would then run)
    torch._dynamo.reset()
    graphs.clear()
    step = torch.compile(lambda x: (x * 2).sum(), backend=backend)
    step(torch.ones(16, 3))
    step(torch.ones(8, 3))
    assert len(graphs) == 2 and len(graphs[1]) > 1
    torch._dynamo.reset()
