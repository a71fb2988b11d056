"""GELU inside the MLP's matmuls, as llm.c does it: cuBLASLt's epilogues, called through ctypes.

GPT-2's MLP is y = GELU(x @ W_fc^T + b_fc) @ W_proj^T + b_proj. Compiled PyTorch runs GELU as its own pass over the
(B*T, 4C) activations, forward and backward (about 7% of a d12 step on an H200). cuBLASLt can do that work while the
matmul's results are still on chip:
- forward, epilogue GELU_AUX_BIAS: the first matmul writes GELU(h) and, as its auxiliary output, h = x W_fc^T + b_fc
  (the GELU input the backward pass needs);
- backward, epilogue DGELU: the matmul dy @ W_proj is multiplied by GELU'(h) as it is written, giving dh; the bias
  gradient sum(dh) over rows is its own reduction (cuBLASLt's DGELU_BGRAD, which forms it in the epilogue, made the
  backward matmul 2.4x slower on an H200, and BGRADB in the weight-gradient matmul cost more than the sum it saves:
  benchmarks/RESULTS.md).

Two custom ops, `llmpy::linear_gelu` and `llmpy::matmul_dgelu`, hold those calls, so torch.compile treats them as
opaque kernels; on a CPU (and as the reference) they are the same math in PyTorch ops. `MLPFunction` is the MLP's
autograd function over them; `gelu_fusion_supported` says where the cuBLASLt path runs (bf16 on CUDA, compute
capability 8.0+, libcublasLt found in the process, and both ops agreeing with PyTorch's on a small probe). Operands
cuBLASLt cannot take as planned (not contiguous, misaligned) take the PyTorch ops, with a warning; a failure of
cuBLASLt itself is an LlmpyError that says to give -ge 0.

Layout: PyTorch's row-major (M, N) matrix is cuBLASLt's column-major (N, M) one, so x (M, K) @ W^T with W (N, K) is
D (N, M) = op_T(W as K x N) @ (x as K x M), and the bias (length N) runs along D's rows, as cuBLASLt's epilogues want.
"""

from __future__ import annotations

import ctypes
import functools
import os
import warnings

import torch
import torch.nn.functional as F

from llmpy.errors import LlmpyError

# cuBLASLt's constants (cublasLt.h / cublas_api.h / library_types.h of CUDA 12-13)
_CUDA_R_16BF, _CUDA_R_32F = 14, 0
_COMPUTE_32F = 68
_OP_N, _OP_T = 0, 1
_DESC_TRANSA, _DESC_TRANSB, _DESC_EPILOGUE, _DESC_BIAS_POINTER = 3, 4, 7, 8
_DESC_AUX_POINTER, _DESC_AUX_LD = 11, 12
_EPILOGUE_GELU_AUX_BIAS = 32 | 128 | 4
_EPILOGUE_DGELU = 64 | 128
_PREF_MAX_WORKSPACE_BYTES = 1
_WORKSPACE_BYTES = 32 * 1024 * 1024  # llm.c's choice for Hopper
_MAX_PLANS = 256  # shapes planned per device before the plans are dropped (evaluation and sampling vary the rows)
# LLMPY_CUBLASLT_TUNE=N (read by tune_candidates; default 8): take cuBLASLt's N best heuristic candidates for each
# shape and time them at first use, keeping the fastest; 1 takes the heuristic's first choice untimed. On an H200
# (2026-12-02) the first choice was 4.5% slower than the fastest candidate for both d12 GELU epilogues (0.559 ms
# against 0.535 ms); benchmarks/gpu_gelu_fusion_check.py prints the candidates' times.
DEFAULT_TUNE_CANDIDATES = 8


def tune_candidates() -> int:
    """LLMPY_CUBLASLT_TUNE's value: how many heuristic candidates each shape times (1: the first choice, no timing)."""
    text = os.environ.get("LLMPY_CUBLASLT_TUNE", "").strip() or str(DEFAULT_TUNE_CANDIDATES)
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise LlmpyError(f"LLMPY_CUBLASLT_TUNE={text!r}: expected a number of candidates from 1 to 64")
    return int(text)


class _HeuristicResult(ctypes.Structure):
    _fields_ = [("algo", ctypes.c_uint64 * 8), ("workspace_size", ctypes.c_size_t), ("state", ctypes.c_int),
                ("waves_count", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


def fastest_candidate(count: int, time_candidate) -> tuple[int, list]:
    """The index of the fastest of `count` candidates and every (index, ms) timing; `time_candidate(i)` gives one
    candidate's milliseconds, or None where it failed (skipped). The first candidate wins ties and is the answer
    when none could be timed."""
    timings = [(i, ms) for i in range(count) if (ms := time_candidate(i)) is not None]
    return (min(timings, key=lambda t: t[1])[0] if timings else 0), timings


class CublasLtError(LlmpyError):
    """cuBLASLt refused a call; the message says how to train without it (-ge 0)."""

    def __init__(self, what: str):
        super().__init__(f"GELU fusion: {what} (give -ge 0 to train without the cuBLASLt epilogues)")


def _library_path() -> str | None:
    """libcublasLt as this process already has it loaded (torch's CUDA build links it), else the loader's search."""
    torch.ones(64, 64, device="cuda") @ torch.ones(64, 64, device="cuda")  # cuBLAS(Lt) is loaded by its first use
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "libcublasLt.so" in os.path.basename(path):
                    return path
    except OSError:
        pass
    import ctypes.util

    return ctypes.util.find_library("cublasLt")


class _CublasLt:
    """One cuBLASLt handle, a workspace, and a matmul plan per (epilogue, shape), for one CUDA device."""

    def __init__(self, device: torch.device):
        path = _library_path()
        if path is None:
            raise CublasLtError("libcublasLt was not found")
        self.lib = ctypes.CDLL(path)
        self.device = device
        self.handle = ctypes.c_void_p()
        self._check(self.lib.cublasLtCreate(ctypes.byref(self.handle)), "cublasLtCreate")
        self.workspace = torch.empty(_WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self.preference = ctypes.c_void_p()
        self._check(self.lib.cublasLtMatmulPreferenceCreate(ctypes.byref(self.preference)), "PreferenceCreate")
        size = ctypes.c_uint64(_WORKSPACE_BYTES)
        self._check(self.lib.cublasLtMatmulPreferenceSetAttribute(
            self.preference, _PREF_MAX_WORKSPACE_BYTES, ctypes.byref(size), ctypes.c_size_t(ctypes.sizeof(size))),
            "PreferenceSet")
        self.candidates = tune_candidates()
        self.plans: dict[tuple, list] = {}  # key -> [desc, A, B, D layouts, candidates, chosen index or None]
        self.timings: dict[tuple, list] = {}  # key -> [(candidate, ms)] where candidates were timed
        self.alpha, self.beta = ctypes.c_float(1.0), ctypes.c_float(0.0)

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise CublasLtError(f"cuBLASLt {what} failed with status {status}")

    def _layout(self, rows: int, cols: int, ld: int) -> ctypes.c_void_p:
        layout = ctypes.c_void_p()
        self._check(self.lib.cublasLtMatrixLayoutCreate(ctypes.byref(layout), _CUDA_R_16BF, ctypes.c_uint64(rows),
                                                        ctypes.c_uint64(cols), ctypes.c_int64(ld)), "LayoutCreate")
        return layout

    def _set(self, desc: ctypes.c_void_p, attribute: int, value) -> None:
        self._check(self.lib.cublasLtMatmulDescSetAttribute(desc, attribute, ctypes.byref(value),
                                                            ctypes.c_size_t(ctypes.sizeof(value))),
                    f"DescSetAttribute({attribute})")

    def _drop_plans(self) -> None:
        for desc, *layouts, _, _ in self.plans.values():
            self.lib.cublasLtMatmulDescDestroy(desc)
            for layout in dict.fromkeys(layouts):  # D's layout serves as C's too: destroyed once
                self.lib.cublasLtMatrixLayoutDestroy(layout)
        self.plans.clear()
        self.timings.clear()

    def _plan(self, epilogue: int, trans_a: int, a_shape: tuple, b_shape: tuple, d_shape: tuple) -> list:
        """Descriptor, layouts and the heuristic's candidate algorithms for D = op(A) @ B (column-major shapes),
        best first, and which one runs (None: not chosen yet)."""
        key = (epilogue, trans_a, a_shape, b_shape, d_shape)
        plan = self.plans.get(key)
        if plan is None:
            if len(self.plans) >= _MAX_PLANS:
                self._drop_plans()
            desc = ctypes.c_void_p()
            self._check(self.lib.cublasLtMatmulDescCreate(ctypes.byref(desc), _COMPUTE_32F, _CUDA_R_32F),
                        "DescCreate")
            self._set(desc, _DESC_TRANSA, ctypes.c_int32(trans_a))
            self._set(desc, _DESC_TRANSB, ctypes.c_int32(_OP_N))
            self._set(desc, _DESC_EPILOGUE, ctypes.c_int32(epilogue))
            self._set(desc, _DESC_AUX_LD, ctypes.c_int64(d_shape[0]))
            a, b, d = self._layout(*a_shape, a_shape[0]), self._layout(*b_shape, b_shape[0]), self._layout(*d_shape, d_shape[0])
            # the heuristic reads the pointers' alignment: 256-byte aligned, as PyTorch's allocator gives them
            self._set(desc, _DESC_BIAS_POINTER, ctypes.c_void_p(self.workspace.data_ptr()))
            self._set(desc, _DESC_AUX_POINTER, ctypes.c_void_p(self.workspace.data_ptr()))
            results, found = (_HeuristicResult * self.candidates)(), ctypes.c_int(0)
            self._check(self.lib.cublasLtMatmulAlgoGetHeuristic(self.handle, desc, a, b, d, d, self.preference,
                                                                self.candidates, results, ctypes.byref(found)),
                        f"AlgoGetHeuristic(epilogue {epilogue}, D {d_shape})")
            if found.value == 0:
                raise CublasLtError(f"cuBLASLt has no algorithm for epilogue {epilogue} with D {d_shape}")
            candidates = [results[i] for i in range(found.value)]
            plan = self.plans[key] = [desc, a, b, d, candidates, 0 if len(candidates) == 1 else None]
        return plan

    def _run(self, plan: list, algo: _HeuristicResult, a: torch.Tensor, b: torch.Tensor, d: torch.Tensor,
             stream: ctypes.c_void_p) -> int:
        desc, a_layout, b_layout, d_layout = plan[:4]
        return self.lib.cublasLtMatmul(
            self.handle, desc, ctypes.byref(self.alpha), ctypes.c_void_p(a.data_ptr()), a_layout,
            ctypes.c_void_p(b.data_ptr()), b_layout, ctypes.byref(self.beta), ctypes.c_void_p(d.data_ptr()), d_layout,
            ctypes.c_void_p(d.data_ptr()), d_layout, ctypes.byref(algo.algo),
            ctypes.c_void_p(self.workspace.data_ptr()), ctypes.c_size_t(_WORKSPACE_BYTES), stream)

    def _choose(self, key: tuple, plan: list, a, b, d, stream) -> int:
        """Time each candidate on these operands (a warm-up, then 3 runs; the outputs are rewritten by the final
        call) and keep the fastest."""
        torch_stream = torch.cuda.current_stream(self.device)

        def time_candidate(i: int) -> float | None:
            if self._run(plan, plan[4][i], a, b, d, stream) != 0:
                return None
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(torch_stream)
            statuses = [self._run(plan, plan[4][i], a, b, d, stream) for _ in range(3)]
            end.record(torch_stream)
            end.synchronize()
            return start.elapsed_time(end) / 3 if not any(statuses) else None

        chosen, self.timings[key] = fastest_candidate(len(plan[4]), time_candidate)
        return chosen

    def matmul(self, epilogue: int, trans_a: int, a: torch.Tensor, a_shape: tuple, b: torch.Tensor, b_shape: tuple,
               d: torch.Tensor, d_shape: tuple, bias: torch.Tensor | None, aux: torch.Tensor) -> None:
        """D = op(A) @ B with `epilogue`; shapes are the column-major (rows, cols) of A, B and D as stored."""
        key = (epilogue, trans_a, a_shape, b_shape, d_shape)
        plan = self._plan(*key)
        self._set(plan[0], _DESC_BIAS_POINTER, ctypes.c_void_p(bias.data_ptr() if bias is not None else 0))
        self._set(plan[0], _DESC_AUX_POINTER, ctypes.c_void_p(aux.data_ptr()))
        stream = ctypes.c_void_p(torch.cuda.current_stream(self.device).cuda_stream)
        chosen = plan[5]
        if chosen is None:  # not timed yet; under CUDA-graph capture nothing can be: the first choice, this once
            chosen = 0 if torch.cuda.is_current_stream_capturing() else self._choose(key, plan, a, b, d, stream)
            plan[5] = None if torch.cuda.is_current_stream_capturing() else chosen
        self._check(self._run(plan, plan[4][chosen], a, b, d, stream), "Matmul")


@functools.cache
def _cublaslt(device_index: int) -> _CublasLt:
    return _CublasLt(torch.device("cuda", device_index))


_UNSUPPORTED: dict[int, str] = {}  # device index -> why the epilogues do not run there


@functools.cache
def gelu_fusion_supported(device_index: int = 0) -> bool:
    """Whether the cuBLASLt epilogues run on CUDA device `device_index` (bf16, compute capability 8.0+): the library
    loads and both ops, run once on small operands, agree with the PyTorch ops. Why not: `unsupported_reason`."""
    if not torch.cuda.is_available():
        _UNSUPPORTED[device_index] = "no CUDA device"
        return False
    if torch.cuda.get_device_capability(device_index) < (8, 0):
        _UNSUPPORTED[device_index] = "compute capability below 8.0"
        return False
    try:
        _probe(torch.device("cuda", device_index))
    except Exception as exc:  # whatever fails here (library, driver, a wrong result) leaves the fusion off
        _UNSUPPORTED[device_index] = str(exc) or type(exc).__name__
        return False
    return True


def unsupported_reason(device_index: int = 0) -> str:
    return _UNSUPPORTED.get(device_index, "")


def epilogue_errors(x: torch.Tensor, w_fc: torch.Tensor, b_fc: torch.Tensor, w_proj: torch.Tensor,
                    dy: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Both ops on these bf16 operands against fp32 PyTorch math from the same inputs: {output: (max error, max
    |reference|)} for GELU_AUX_BIAS's GELU(h) (the tanh GELU; `gelu_erf` for comparison), its h, and DGELU's dh and
    bias gradient."""
    out, pre = linear_gelu(x, w_fc, b_fc)
    dh, dbias = matmul_dgelu(dy, w_proj, pre)
    pre_ref = torch.addmm(b_fc.float(), x.float(), w_fc.float().t())
    dh_ref = torch.ops.aten.gelu_backward(dy.float() @ w_proj.float(), pre.float(), approximate="tanh")
    pairs = {"gelu": (out, F.gelu(pre_ref, approximate="tanh")), "gelu_erf": (out, F.gelu(pre_ref)),
             "pre": (pre, pre_ref), "dh": (dh, dh_ref), "dbias": (dbias, dh_ref.sum(0))}
    return {name: ((value.float() - ref).abs().max().item(), ref.abs().max().item())
            for name, (value, ref) in pairs.items()}


def disagreeing_outputs(errors: dict[str, tuple[float, float]], tolerance: float = 2e-2) -> list[str]:
    """The outputs of `epilogue_errors` off by more than `tolerance` of their scale (at least 1); `gelu_erf` is only
    shown, not judged. [] when all agree."""
    return [name for name, (error, scale) in errors.items()
            if name != "gelu_erf" and not error <= tolerance * max(1.0, scale)]


def _probe(device: torch.device, rows: int = 64, channels: int = 64) -> None:
    """Both epilogue ops through cuBLASLt on small bf16 operands, against the same math in PyTorch ops."""
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, device=device, generator=generator).to(torch.bfloat16)

    errors = epilogue_errors(randn(rows, channels), randn(4 * channels, channels), randn(4 * channels),
                             randn(channels, 4 * channels), randn(rows, channels))
    wrong = disagreeing_outputs(errors)
    if wrong:
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
        raise CublasLtError(f"cuBLASLt's epilogues gave wrong values on {where}: "
                            + ", ".join(f"{w} (max error {errors[w][0]:.3g})" for w in wrong))


def _column_sums(x: torch.Tensor) -> torch.Tensor:
    """x (M, N) -> its column sums (N), accumulated in fp32 at least, returned in x's dtype."""
    return x.sum(0, dtype=torch.promote_types(x.dtype, torch.float32)).to(x.dtype)


def _dgelu_in_pytorch(grad: torch.Tensor, weight: torch.Tensor, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """matmul_dgelu's math as PyTorch ops: (grad @ weight) * GELU_tanh'(pre), and its column sums."""
    dh = torch.ops.aten.gelu_backward(grad @ weight, pre, approximate="tanh")
    return dh, _column_sums(dh)


_warned_fallback = False


def _lt_usable(*tensors: torch.Tensor) -> bool:
    """Whether cuBLASLt takes these operands as planned: contiguous bf16 on one CUDA device, 256-byte aligned as the
    plans' heuristics assumed (a view into a larger buffer, e.g. FSDP's gathered parameters, may not be: the PyTorch
    ops run then, with a warning the first time on a GPU)."""
    global _warned_fallback
    device = tensors[0].device
    usable = all(t.is_cuda and t.device == device and t.dtype == torch.bfloat16 and t.is_contiguous()
                 and t.data_ptr() % 256 == 0 for t in tensors)
    if not usable and device.type == "cuda" and not _warned_fallback:
        _warned_fallback = True
        warnings.warn("GELU fusion: operands cuBLASLt cannot take as planned (not contiguous, 256-byte aligned bf16 "
                      "on one GPU); the MLP runs as PyTorch ops there", stacklevel=2)
    return usable


def _check_shapes(op: str, checks: tuple) -> None:
    for ok, what in checks:
        if not ok:
            raise ValueError(f"{op}: {what}")


@torch.library.custom_op("llmpy::linear_gelu", mutates_args=())
def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K), weight (N, K), bias (N) -> (GELU_tanh(h), h) with h = x @ weight^T + bias, both (M, N)."""
    M, K = x.shape
    N = weight.shape[0]
    _check_shapes("linear_gelu", ((weight.shape == (N, K), f"weight {tuple(weight.shape)} for x {tuple(x.shape)}"),
                                  (bias.shape == (N,), f"bias {tuple(bias.shape)} for weight {tuple(weight.shape)}")))
    if _lt_usable(x, weight, bias) and N % 8 == 0 and K % 8 == 0:
        out, pre = x.new_empty(M, N), x.new_empty(M, N)
        _cublaslt(x.device.index or 0).matmul(_EPILOGUE_GELU_AUX_BIAS, _OP_T, weight, (K, N), x, (K, M), out, (N, M),
                                              bias, pre)
        return out, pre
    pre = torch.addmm(bias, x, weight.t())
    return F.gelu(pre, approximate="tanh"), pre


@linear_gelu.register_fake
def _(x, weight, bias):
    shape = (x.shape[0], weight.shape[0])
    return x.new_empty(shape), x.new_empty(shape)


@torch.library.custom_op("llmpy::matmul_dgelu", mutates_args=())
def matmul_dgelu(grad: torch.Tensor, weight: torch.Tensor, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward pass from y = GELU_tanh(pre) @ weight^T (+ bias) to pre: grad = dL/dy (M, C), weight (C, N),
    pre (M, N) -> (dh, dbias): dh = (grad @ weight) * GELU_tanh'(pre) (M, N) and its column sums (N, the first
    layer's bias gradient), both in grad's dtype."""
    M, C = grad.shape
    N = weight.shape[1]
    _check_shapes("matmul_dgelu", ((weight.shape == (C, N), f"weight {tuple(weight.shape)} for grad {tuple(grad.shape)}"),
                                   (pre.shape == (M, N), f"pre {tuple(pre.shape)} for grad {tuple(grad.shape)}")))
    if _lt_usable(grad, weight, pre) and N % 8 == 0 and C % 8 == 0:
        dh = grad.new_empty(M, N)
        _cublaslt(grad.device.index or 0).matmul(_EPILOGUE_DGELU, _OP_N, weight, (N, C), grad, (C, M), dh, (N, M),
                                                 None, pre)
        return dh, _column_sums(dh)
    return _dgelu_in_pytorch(grad, weight, pre)


@matmul_dgelu.register_fake
def _(grad, weight, pre):
    return grad.new_empty(grad.shape[0], weight.shape[1]), grad.new_empty(weight.shape[1])


class MLPFunction(torch.autograd.Function):
    """y = GELU_tanh(x @ w_fc^T + b_fc) @ w_proj^T + b_proj over (M, C) rows, with GELU in the matmul epilogues.

    `level` is llm.c's -ge: 1 fuses the forward only (the backward runs GELU' as its own op), 2 both passes.
    `keep_gelu`: keep GELU(h) for the backward pass (-r 0) or recompute it from h there (-r 1's memory)."""

    @staticmethod
    def forward(ctx, x, w_fc, b_fc, w_proj, b_proj, level: int, keep_gelu: bool):
        g, h = linear_gelu(x, w_fc, b_fc)
        y = torch.addmm(b_proj, g, w_proj.t())
        ctx.level, ctx.keep_gelu = level, keep_gelu
        ctx.save_for_backward(x, w_fc, w_proj, h, g if keep_gelu else None)
        return y

    @staticmethod
    def backward(ctx, dy):
        dy = dy.contiguous()
        x, w_fc, w_proj, h, g = ctx.saved_tensors
        if g is None:
            g = F.gelu(h, approximate="tanh")
        dw_proj = dy.t() @ g
        db_proj = _column_sums(dy)
        if ctx.level >= 2:
            dh, db_fc = matmul_dgelu(dy, w_proj, h)
        else:
            dh, db_fc = _dgelu_in_pytorch(dy, w_proj, h)
        return dh @ w_fc, dh.t() @ x, db_fc, dw_proj, db_proj, None, None


def fused_mlp(x: torch.Tensor, fc: torch.nn.Linear, proj: torch.nn.Linear, level: int, keep_gelu: bool,
              dtype: torch.dtype) -> torch.Tensor:
    """The MLP over x (..., C) in `dtype` (the autocast dtype: the weights' copies are made here, as autocast would)."""
    shape = x.shape
    rows = x.reshape(-1, shape[-1]).to(dtype)
    y = MLPFunction.apply(rows, fc.weight.to(dtype), fc.bias.to(dtype), proj.weight.to(dtype), proj.bias.to(dtype),
                          level, keep_gelu)
    return y.view(*shape[:-1], y.shape[-1])
