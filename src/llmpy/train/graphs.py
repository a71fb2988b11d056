"""CUDA graphs over the micro-step (`--cuda-graphs 1`): one micro-batch's forward pass, backward pass and loss
accumulation captured once and replayed for every later micro-batch of the same shape.

The graph is captured by hand (torch.cuda.CUDAGraph), not by torch.compile's reduce-overhead mode, whose graphs are
known to overwrite or lose gradients accumulated over micro-steps. What makes a replay correct:
- Inputs live in static device buffers (`x`, `y`); each micro-batch is copied into them before the replay.
- The gradients are never set to None (the step zeroes them in place), so every captured backward pass adds into
  the same standing `.grad` tensors, and the clipping and the optimizer, which run uncaptured after the last
  micro-step, read them there.
- The loss is added into a static `loss_sum`, zeroed at the start of each step.
- Warm-up, capture and replays all run on one side stream (`on_stream`), ordered after the work queued before the
  step and before the work queued after it, as CUDA graph capture requires.
Only the steady-state micro-step is captured: steps of --batch-ramp (other accumulation) and --seq-len-warmup (other
row lengths) run eagerly, with the same math. `check_graph_gradients` (`llmpy bench --check --cuda-graphs 1`)
proves on a GPU that replays give the eager gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from llmpy.errors import LlmpyError

WARMUP_MICRO_STEPS = 3  # eager micro-steps on the side stream before the capture (lazy initialisation, autotuning)
GRAPH_GRAD_RTOL = 1e-3  # the graph's gradients against eager ones, unless the kernels' own run-to-run noise is larger


def forward_backward(run: Callable, autocast, x: torch.Tensor, y: torch.Tensor, accum: int,
                     loss_sum: torch.Tensor) -> None:
    """One micro-step: the loss of (x, y) through `run` under `autocast`, divided by `accum` (the gradients are
    those of the mean over the whole -d batch), added into `loss_sum`, and its gradients into the parameters'."""
    with autocast():
        loss = run(x, y) / accum
    loss_sum += loss.detach()
    loss.backward()


def cuda_capture(fn: Callable[[], None], stream: torch.cuda.Stream) -> Callable[[], None]:
    """Capture the kernels `fn` queues (capture runs nothing) on `stream`; returns the graph's replay."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):  # synchronises and empties the allocator's cache first
        fn()
    return graph.replay


class MicroStepGraph:
    """The captured micro-step of one training run. `micro_step(x, y, loss_sum)` is the step's own forward and
    backward pass (`forward_backward` with the run's module, autocast and accumulation); `capture(fn, stream)`
    records `fn` and returns its replay (`cuda_capture`; tests give a stand-in that replays by calling `fn`)."""

    def __init__(self, micro_step: Callable, device: torch.device, shape: tuple[int, int],
                 warmup: int = WARMUP_MICRO_STEPS, capture: Callable = cuda_capture):
        self.micro_step, self.device, self.shape = micro_step, device, tuple(shape)
        self.capture, self.eager_left = capture, warmup
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.x = torch.zeros(shape, dtype=torch.long, device=device)
        self.y = torch.zeros(shape, dtype=torch.long, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.replay: Callable[[], None] | None = None

    def covers(self, shape: tuple[int, ...]) -> bool:
        """Whether micro-batches of `shape` are replayed (the steady-state shape) rather than run eagerly."""
        return tuple(shape) == self.shape

    @contextlib.contextmanager
    def on_stream(self):
        """Run a step's work on the graph's stream, after what is already queued and before what comes next."""
        if self.stream is None:
            yield
            return
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            yield
        current.wait_stream(self.stream)

    def begin_step(self) -> torch.Tensor:
        """The static loss sum, zeroed for a new step's micro-batches (queued: nothing waits)."""
        return self.loss_sum.zero_()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One micro-step on (x, y) (host or device tensors of the covered shape): copied into the static buffers,
        then run eagerly while warming up, captured once, replayed from then on."""
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        if self.replay is None and self.eager_left > 0:
            self.eager_left -= 1
            self.micro_step(self.x, self.y, self.loss_sum)
            return
        if self.replay is None:
            self.replay = self.capture(lambda: self.micro_step(self.x, self.y, self.loss_sum), self.stream)
        self.replay()


def graph_refusal(device: torch.device, world_size: int, model) -> str | None:
    """Why --cuda-graphs 1 cannot run for this job, or None."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if world_size > 1:
        return ("CUDA graphs run single-process for now: DDP's and FSDP's collectives are not captured; give "
                "--cuda-graphs 0 under torchrun")
    if getattr(model, "schedule_window", None) is not None and getattr(model.config, "window", 0):
        return "the sliding-window schedule changes the attention mask between steps, which a captured graph cannot"
    return None


def use_cuda_graphs(flag: int, device: torch.device, world_size: int, model) -> bool:
    """--cuda-graphs as this job runs it: 1 on (or a one-line error saying why it cannot), 0 off."""
    if flag not in (0, 1):
        raise LlmpyError(f"--cuda-graphs must be 0 or 1, got {flag}")
    if not flag:
        return False
    reason = graph_refusal(device, world_size, model)
    if reason:
        raise LlmpyError(f"--cuda-graphs 1: {reason}")
    return True


def _gradients(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().float().clone() for name, p in module.named_parameters() if p.grad is not None}


def _rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if a.keys() != b.keys():
        return float("inf")
    diff = sum(((a[n] - b[n]) ** 2).sum() for n in a)
    norm = sum((g ** 2).sum() for g in b.values())
    return (diff.sqrt() / norm.sqrt().clamp_min(1e-30)).item()


def check_graph_gradients(module: torch.nn.Module, run: Callable, autocast, batches: list[tuple], device,
                          capture: Callable = cuda_capture) -> dict:
    """The gradients and loss of `len(batches)` accumulated micro-steps of `run` (parameters of `module`) computed
    four ways from the same weights: eagerly twice (their difference is the kernels' own run-to-run noise), then as
    two steps through a MicroStepGraph that warms up on the first micro-step, captures on the second and replays
    the rest (the second step is replays only, after the gradients were zeroed in place)."""
    accum = len(batches)

    def eager() -> tuple[float, dict]:
        loss_sum = torch.zeros((), device=device)
        for x, y in batches:
            forward_backward(run, autocast, x.to(device), y.to(device), accum, loss_sum)
        return loss_sum.item(), _gradients(module)

    module.zero_grad(set_to_none=True)
    ref_loss, ref = eager()
    module.zero_grad(set_to_none=False)
    again_loss, again = eager()
    graph = MicroStepGraph(lambda x, y, s: forward_backward(run, autocast, x, y, accum, s), torch.device(device),
                           batches[0][0].shape, warmup=1, capture=capture)
    results = []
    for _ in range(2):
        module.zero_grad(set_to_none=False)
        with graph.on_stream():
            loss_sum = graph.begin_step()
            for x, y in batches:
                graph(x, y)
        results.append((loss_sum.item(), _gradients(module)))
    noise = _rel_diff(again, ref)
    limit = max(GRAPH_GRAD_RTOL, 4 * noise)
    diffs = [_rel_diff(grads, ref) for _, grads in results]
    loss_diffs = [abs(loss - ref_loss) / abs(ref_loss) for loss, _ in results]
    loss_noise = abs(again_loss - ref_loss) / abs(ref_loss)
    return {"graph_micro_steps": accum, "graph_grad_rel_diff": diffs, "graph_grad_noise": noise,
            "graph_grad_limit": limit, "graph_loss_rel_diff": loss_diffs, "graph_loss_noise": loss_noise,
            "graph_passed": bool(max(diffs) <= limit and max(loss_diffs) <= max(1e-5, 4 * loss_noise))}
