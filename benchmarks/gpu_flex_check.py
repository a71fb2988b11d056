"""FlexAttention with the document mask on CUDA, alone (no model): compiled, B=64, T=1024, 12 heads of 64, bf16, the
documents of the first B*T tokens of a real shard, window 384. For each way of building the mask and each mode
(`infer`: no_grad forward, `train`: forward + backward), one process (CUDA_LAUNCH_BLOCKING=1, so a fault names its
kernel) prints the largest error against dense SDPA in fp32 and the ms per call. Builders:
  `llmpy`: attention.flex_attention_mask, the model's path: the rows joined into one sequence, the mask built from
           tile bounds outside the compiled graph;
  `pairs`: create_block_mask over every (query, key) pair of each row, inside the compiled function (what failed
           with an illegal memory access on 2026-12-02);
  `pairs_eager`: the same mask built outside the compiled function.

    python benchmarks/gpu_flex_check.py SHARD.bin             # every builder x mode, each in its own process
    python benchmarks/gpu_flex_check.py SHARD.bin llmpy train  # one
"""

import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

B, H, T, D = (int(n) for n in os.environ.get("FLEX_CHECK_SHAPE", "64,12,1024,64").split(","))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU for a smoke test (no backward there)


def one(shard: str, builder: str, mode: str) -> None:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from llmpy.attention import causal_attention, document_index, flex_attention_mask
    from llmpy.gpt2 import EOT_TOKEN

    tokens = np.memmap(shard, dtype=np.uint16, mode="r", offset=1024)[: B * T].astype(np.int64)
    idx = torch.from_numpy(tokens).view(B, T).to(DEVICE)
    window = torch.tensor(384, device=DEVICE)

    def pairs(idx):
        documents = document_index(idx, EOT_TOKEN)

        def mask_mod(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (documents[b, q_idx] == documents[b, kv_idx]) & (q_idx - kv_idx < window)
        return create_block_mask(mask_mod, B, None, T, T, device=idx.device)

    eager_pairs = torch.compiler.disable(pairs)

    def attend(q, k, v, idx):  # q, k, v (B, T, H, D), the model's layout
        if builder == "llmpy":
            return causal_attention(q, k, v, mask=flex_attention_mask(idx, EOT_TOKEN, window))
        mask = pairs(idx) if builder == "pairs" else eager_pairs(idx)
        return flex_attention(*(t.transpose(1, 2) for t in (q, k, v)), block_mask=mask).transpose(1, 2)

    compiled = torch.compile(attend)
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, T, H, D, device=DEVICE, dtype=torch.bfloat16, requires_grad=mode == "train")
               for _ in range(3))
    documents = document_index(idx, EOT_TOKEN)
    pos = torch.arange(T, device=DEVICE)
    dense = ((pos[:, None] >= pos[None, :]) & (pos[:, None] - pos[None, :] < 384))[None, None] \
        & (documents[:, None, :, None] == documents[:, None, None, :])
    ref_in = [t.detach().float().requires_grad_(mode == "train") for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in ref_in), attn_mask=dense).transpose(1, 2)
    grad = torch.randn_like(ref)
    context = torch.no_grad() if mode == "infer" else torch.enable_grad()

    def calls(n: int) -> float:
        """n calls (with the backward in `train` mode); their seconds, the device drained before and after."""
        nonlocal out, grads
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            out = compiled(q, k, v, idx)
            if mode == "train":
                grads = torch.autograd.grad(out, (q, k, v), grad.to(out.dtype))
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    out = grads = None
    with context:
        calls(3)  # compilation and warm-up
        ms = calls(10) * 100
    err = (out.float() - ref).abs().max().item()
    line = f"{builder} {mode}: {ms:.2f} ms/call, max |out - dense fp32| {err:.2e}"
    if mode == "train":
        ref_grads = torch.autograd.grad(ref, ref_in, grad)
        line += ", grads " + " ".join(f"{(g.float() - r).abs().max().item():.2e}" for g, r in zip(grads, ref_grads))
    print(line, flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4:
        one(*sys.argv[1:])
    else:
        env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
        for builder in ("llmpy", "pairs_eager", "pairs"):
            for mode in ("infer", "train"):
                run = subprocess.run([sys.executable, __file__, sys.argv[1], builder, mode], env=env,
                                     capture_output=True, text=True, timeout=100)
                tail = (run.stdout + run.stderr).strip().splitlines()
                print(f"[{builder} {mode} rc={run.returncode}]", *(tail[-1:] if run.returncode == 0 else tail[-6:]),
                      sep="\n  ", flush=True)
