"""FlexAttention with the document mask on CUDA, alone (no model): compiled, B=64, T=1024, 12 heads of 64, bf16, the
documents of the first B*T tokens of a real shard. For each block-mask builder (`tiles`: llmpy's attention.block_mask
from tile bounds; `pairs`: create_block_mask over every pair) and each mode (`infer`: no_grad forward, `train`:
forward + backward), one process (CUDA_LAUNCH_BLOCKING=1, so a fault names its kernel) prints the largest error
against dense SDPA in fp32 and the ms per call.

    python benchmarks/gpu_flex_check.py SHARD.bin            # every builder x mode, each in its own process
    python benchmarks/gpu_flex_check.py SHARD.bin tiles train  # one
"""

import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

B, H, T, D = 64, 12, 1024, 64


def one(shard: str, builder: str, mode: str) -> None:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from llmpy.attention import attention_mask, document_index
    from llmpy.gpt2 import EOT_TOKEN

    tokens = np.memmap(shard, dtype=np.uint16, mode="r", offset=1024)[: B * T].astype(np.int64)
    idx = torch.from_numpy(tokens).view(B, T).cuda()
    window = torch.tensor(384, device="cuda")

    def attend(q, k, v, idx):
        documents = document_index(idx, EOT_TOKEN)
        if builder == "tiles":
            mask = attention_mask(T, T, documents, window, idx.device, flex=True).block
        else:
            def mask_mod(b, h, q_idx, kv_idx):
                return (q_idx >= kv_idx) & (documents[b, q_idx] == documents[b, kv_idx]) & (q_idx - kv_idx < window)
            mask = create_block_mask(mask_mod, B, None, T, T, device=idx.device)
        return flex_attention(q, k, v, block_mask=mask)

    compiled = torch.compile(attend)
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=mode == "train")
               for _ in range(3))
    documents = document_index(idx, EOT_TOKEN)
    pos = torch.arange(T, device="cuda")
    dense = ((pos[:, None] >= pos[None, :]) & (pos[:, None] - pos[None, :] < 384))[None, None] \
        & (documents[:, None, :, None] == documents[:, None, None, :])
    ref_in = [t.detach().float().requires_grad_(mode == "train") for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_in, attn_mask=dense)
    grad = torch.randn_like(ref)
    context = torch.no_grad() if mode == "infer" else torch.enable_grad()
    with context:
        for _ in range(3):
            out = compiled(q, k, v, idx)
            if mode == "train":
                grads = torch.autograd.grad(out, (q, k, v), grad.to(out.dtype))
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            out = compiled(q, k, v, idx)
            if mode == "train":
                grads = torch.autograd.grad(out, (q, k, v), grad.to(out.dtype))
        torch.cuda.synchronize()
    ms = (time.perf_counter() - start) * 100
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
        for builder in ("tiles", "pairs"):
            for mode in ("infer", "train"):
                run = subprocess.run([sys.executable, __file__, sys.argv[1], builder, mode], env=env,
                                     capture_output=True, text=True, timeout=100)
                tail = (run.stdout + run.stderr).strip().splitlines()
                print(f"[{builder} {mode} rc={run.returncode}]", *(tail[-1:] if run.returncode == 0 else tail[-6:]),
                      sep="\n  ", flush=True)
