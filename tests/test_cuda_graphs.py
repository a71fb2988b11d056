"""--cuda-graphs: the captured micro-step's plumbing (static inputs, gradients added where they stand, the static
loss sum, eager steps where the shape or accumulation differs), on the CPU through a stand-in for capture that keeps
a real graph's contract, against the eager trainer; the gradient check that `bench --check` runs on a GPU, shown
able to fail; and the one-line refusals."""

import dataclasses

import pytest
import torch

from conftest import write_random_shards
from llmpy.config import TrainConfig
from llmpy.errors import LlmpyError
from llmpy.loss import CrossEntropyLoss, ModelWithLoss
from llmpy.train import graphs
from llmpy.train.build import build_model, build_trainer


class StandInCapture:
    """Capture on the CPU with a CUDA graph's contract: capturing runs nothing, a replay runs the recorded work
    again on the same tensors. A real replay writes each gradient into the memory it had at capture, so every
    parameter's gradient must exist before each replay, at the address it had at the first one."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.captures, self.replays = module, 0, 0

    def __call__(self, fn, stream):
        self.captures += 1
        addresses = {}

        def replay():
            grads = {name: p.grad for name, p in self.module.named_parameters()}
            assert all(g is not None for g in grads.values()), "a replay found gradients set to None"
            now = {name: g.data_ptr() for name, g in grads.items()}
            addresses.setdefault("captured", now)
            assert now == addresses["captured"], "a replay's gradients moved since the capture"
            fn()
            self.replays += 1

        return replay


class DoubledCapture(StandInCapture):
    """A broken graph for the check to catch: each replay adds the micro-step's gradient twice."""

    def __call__(self, fn, stream):
        replay = super().__call__(fn, stream)
        return lambda: (replay(), fn())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_random_shards(tmp_path_factory.mktemp("data"), "g", {"train_000001": 8000}, seed=11)


def config(data, **overrides) -> TrainConfig:
    values = dict(train_data=str(data / "g_train_*.bin"), model="d2w64", batch_size=2, seq_len=32,
                  total_batch_size=192, learning_rate=1e-3, warmup_steps=2, max_steps=7, val_every=0,
                  sample_every=0, log_every=0, device="cpu", compile=0, seed=5)
    values.update(overrides)
    return TrainConfig(**values)


def run_steps(cfg: TrainConfig, steps: int, monkeypatch, graphed: bool):
    """The step records' (loss, norm) and the final weights of `steps` steps, eager or through the stand-in."""
    if graphed:
        monkeypatch.setattr(graphs, "graph_refusal", lambda *a: None)  # the CPU stands in for a GPU here
    trainer = build_trainer(dataclasses.replace(cfg, cuda_graphs=int(graphed)), print_fn=lambda *a: None)
    capture = None
    if graphed:
        capture = trainer.train_step.graph.capture = StandInCapture(trainer.model.module)
    records = [trainer.train_step(step).values()[:2].clone() for step in range(steps)]
    weights = {n: p.detach().clone() for n, p in trainer.model.module.named_parameters()}
    return torch.stack(records), weights, capture, trainer


@pytest.mark.parametrize("schedule", [{}, {"batch_ramp": 3, "seq_len_warmup": 1}])
def test_graphed_steps_train_exactly_as_the_eager_steps(data, monkeypatch, schedule):
    cfg = config(data, **schedule)
    eager, eager_weights, _, _ = run_steps(cfg, 6, monkeypatch, graphed=False)
    replayed, replayed_weights, capture, trainer = run_steps(cfg, 6, monkeypatch, graphed=True)
    assert torch.equal(replayed, eager), (replayed, eager)
    for name, weight in eager_weights.items():
        assert torch.equal(replayed_weights[name], weight), name
    layout = trainer.train_step.layout
    full = [layout.micro_steps_at(s) for s in range(6)
            if layout.micro_steps_at(s) == layout.grad_accum_steps and layout.row_length_at(s) == layout.seq_len]
    assert capture.captures == 1
    assert capture.replays == sum(full) - graphs.WARMUP_MICRO_STEPS  # warm-up is eager, every later one replayed
    assert all(p.grad is not None for p in trainer.model.module.parameters())  # zeroed in place, never dropped


def tiny_run():
    torch.manual_seed(0)
    model = build_model("d2w64", 32)
    return model, ModelWithLoss(model, CrossEntropyLoss(model.config.vocab_size, model.config.padded_vocab_size))


def batches(count: int):
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 50257, (count, 2, 33), generator=generator)
    return [(t[:, :-1], t[:, 1:]) for t in tokens]


def test_the_gradient_check_passes_a_faithful_graph_and_fails_a_broken_one():
    import contextlib

    model, run = tiny_run()
    good = graphs.check_graph_gradients(model, run, contextlib.nullcontext, batches(4), "cpu",
                                        capture=StandInCapture(model))
    assert good["graph_passed"], good
    assert max(good["graph_grad_rel_diff"]) <= 1e-6 and good["graph_micro_steps"] == 4
    model, run = tiny_run()
    bad = graphs.check_graph_gradients(model, run, contextlib.nullcontext, batches(4), "cpu",
                                       capture=DoubledCapture(model))
    assert not bad["graph_passed"]
    # micro-steps 2-4 of 4 counted twice: the sum is (1 + 2 * 3) / 4 of the true mean gradient's size, about
    assert 0.5 < min(bad["graph_grad_rel_diff"]) < 1.0 and min(bad["graph_loss_rel_diff"]) > 0.5


def test_cuda_graphs_refusals_are_one_line(data):
    model, _ = tiny_run()
    assert graphs.use_cuda_graphs(0, torch.device("cpu"), 1, model) is False
    with pytest.raises(LlmpyError, match=r"^--cuda-graphs 1: CUDA graphs need a CUDA device$"):
        graphs.use_cuda_graphs(1, torch.device("cpu"), 1, model)
    with pytest.raises(LlmpyError, match=r"--cuda-graphs 1: CUDA graphs run single-process for now"):
        graphs.use_cuda_graphs(1, torch.device("cuda"), 2, model)
    windowed = build_model("d2w64", 32, family="modern", arch="window=16")
    with pytest.raises(LlmpyError, match=r"sliding-window schedule changes the attention mask"):
        graphs.use_cuda_graphs(1, torch.device("cuda"), 1, windowed)
    with pytest.raises(LlmpyError, match=r"--cuda-graphs must be one of 0, 1, got 2"):
        config(data, cuda_graphs=2).validate()
    with pytest.raises(LlmpyError, match=r"^--cuda-graphs 1: CUDA graphs need a CUDA device$"):
        build_trainer(config(data, cuda_graphs=1), print_fn=lambda *a: None)
