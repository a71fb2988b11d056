"""Document-aware attention, the sliding-window schedule and the FP8 head, each against an independent computation:
attention by an explicit fp64 softmax over a hand-built mask, a packed row against its documents run one by one, a
window against the truncated sequence, FlexAttention's block mask against the dense one, and FP8 matmuls against
fp64 products of the same quantised operands."""

import itertools
import math
import warnings

import pytest
import torch

from llmpy.attention import attention_mask, block_mask, causal_attention, document_index, joined_block_mask
from llmpy.families import build_model, model_config
from llmpy.gpt2 import EOT_TOKEN
from llmpy.infer import KVCache
from llmpy.kernels.fp8 import FORWARD_FP8, GRADIENT_FP8, fp8_linear, fp8_shapes_fit, to_fp8
from llmpy.modern import ModernGPT


def tiny(arch: str, depth: int = 2) -> ModernGPT:
    torch.manual_seed(0)
    model = build_model(model_config("modern", f"d{depth}w64", arch), "modern").double()
    torch.manual_seed(1)
    with torch.no_grad():  # zero-initialised projections would hide the attention: random weights everywhere
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model


def reference_attention(q, k, v, allowed):
    """softmax(q k^T / sqrt(d)) v in fp64 with -inf where `allowed` (T, T) or (B, T, T) is False; (B, T, nh, hs)."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~(allowed if allowed.dim() == 3 else allowed[None])[:, None], float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def test_documents_start_at_each_eot():
    idx = torch.tensor([[EOT_TOKEN, 5, 6, EOT_TOKEN, 7], [3, 4, EOT_TOKEN, EOT_TOKEN, 9]])
    assert document_index(idx, EOT_TOKEN).tolist() == [[1, 1, 1, 2, 2], [0, 0, 1, 2, 2]]


def test_document_and_window_masks_match_an_fp64_softmax_over_a_hand_built_mask():
    torch.manual_seed(0)
    B, T, nh, hs = 2, 12, 2, 8
    q, k, v = (torch.randn(B, T, nh, hs, dtype=torch.float64) for _ in range(3))
    documents = torch.tensor([[0] * 5 + [1] * 4 + [2] * 3, [0] * 12])
    # by hand: row 0 query 6 (document 1, positions 5..8) with window 3 sees keys 5 and 6 only
    allowed = torch.zeros(B, T, T, dtype=torch.bool)
    for b in range(B):
        for i in range(T):
            for j in range(T):
                allowed[b, i, j] = j <= i and documents[b, i] == documents[b, j] and i - j < 3
    assert allowed[0, 6].nonzero().flatten().tolist() == [5, 6]
    def masked(documents, window):
        return causal_attention(q, k, v, mask=attention_mask(T, T, documents, window, q.device))

    torch.testing.assert_close(masked(documents, torch.tensor(3)), reference_attention(q, k, v, allowed),
                               rtol=1e-12, atol=1e-12)
    # each part alone
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    only_docs = reference_attention(q, k, v, (documents[:, :, None] == documents[:, None, :]) & causal)
    torch.testing.assert_close(masked(documents, None), only_docs)
    band = causal & ~torch.ones(T, T, dtype=torch.bool).tril(-3)
    torch.testing.assert_close(masked(None, torch.tensor(3)), reference_attention(q, k, v, band))
    # the last 4 queries of the sequence (a KV cache's view) are those rows of the whole mask
    tail = attention_mask(T, 4, documents, torch.tensor(3), q.device).dense
    assert torch.equal(tail[:, 0], allowed[:, -4:])


def test_flex_attention_over_the_joined_rows_equals_the_dense_mask_row_by_row():
    """The FlexAttention path lays the rows end to end as one sequence: each row's documents stay apart from the
    other rows' and the output equals an fp64 softmax over each row's own hand-built mask."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    torch.manual_seed(0)
    B, T, nh, hs = 3, 256, 2, 16  # two 128-tiles per row: some skipped, some partial, some full
    q, k, v = (torch.randn(B, T, nh, hs) for _ in range(3))
    documents = torch.cat([torch.zeros(B, 100, dtype=torch.long), torch.ones(B, 156, dtype=torch.long)], dim=1)
    documents[2] = 0  # one row of a single document: the rows around it must still not be seen
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for docs, window in ((documents, torch.tensor(64)), (documents, None), (None, torch.tensor(200))):
        mask = joined_block_mask(B, T, docs, window, q.device)
        assert mask.block.shape[-2:] == (B * T, B * T)
        with warnings.catch_warnings():  # eager FlexAttention on a CPU warns: the unfused reference path, the point
            warnings.simplefilter("ignore")
            got = causal_attention(q, k, v, mask=mask)
        allowed = causal.expand(B, T, T)
        if docs is not None:
            allowed = allowed & (docs[:, :, None] == docs[:, None, :])
        if window is not None:
            allowed = allowed & ~torch.ones(T, T, dtype=torch.bool).tril(-int(window))
        torch.testing.assert_close(got.double(), reference_attention(q, k, v, allowed), rtol=1e-5, atol=1e-5)


def test_compiled_flex_attention_with_the_mask_built_outside_the_graph_equals_the_dense_mask():
    """The model's FlexAttention path under torch.compile (forward; the CPU has no Flex backward): the mask is built
    eagerly at a graph break and enters the compiled attention as inputs; a second batch reuses the graph."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    from llmpy.attention import flex_attention_mask

    torch.manual_seed(0)
    B, T, nh, hs = 2, 256, 2, 16
    window = torch.tensor(100)
    attend = torch.compile(lambda q, k, v, idx: causal_attention(q, k, v, mask=flex_attention_mask(idx, EOT_TOKEN,
                                                                                                    window)))
    for trial in range(2):
        q, k, v = (torch.randn(B, T, nh, hs) for _ in range(3))
        idx = torch.randint(0, 1000, (B, T))
        idx[0, 60 + trial], idx[0, 190], idx[1, 129] = EOT_TOKEN, EOT_TOKEN, EOT_TOKEN  # tiles of each kind
        documents = document_index(idx, EOT_TOKEN)
        allowed = (torch.ones(T, T, dtype=torch.bool).tril() & ~torch.ones(T, T, dtype=torch.bool).tril(-100)
                   & (documents[:, :, None] == documents[:, None, :]))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = attend(q, k, v, idx)
        torch.testing.assert_close(got.double(), reference_attention(q, k, v, allowed), rtol=1e-5, atol=1e-5)


def tiles(mask, full: bool) -> torch.Tensor:
    """A BlockMask's (B, n, n) tile map: 1 where a (query tile, key tile) pair is listed as partial (or full)."""
    count, indices = (mask.full_kv_num_blocks, mask.full_kv_indices) if full else (mask.kv_num_blocks, mask.kv_indices)
    out = torch.zeros(count.size(0), count.size(-1), indices.size(-1), dtype=torch.int32)
    for b, i in itertools.product(range(count.size(0)), range(count.size(-1))):
        out[b, i, indices[b, 0, i, :count[b, 0, i]].long()] = 1
    return out


@pytest.mark.parametrize("T, window", [(256, None), (384, 1), (512, 100), (1024, 128), (1024, 300), (640, 1000),
                                       (1000, None), (200, 64)])
def test_the_block_mask_from_tile_bounds_equals_flex_attentions_own_from_every_pair(T, window):
    """attention.block_mask classifies tiles from document bounds; create_block_mask evaluates the mask on all
    T x T pairs (the independent reference): same skipped, partial and full tiles, with documents and without."""
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    torch.manual_seed(T)
    w = None if window is None else torch.tensor(window)
    for documents in ((torch.rand(3, T) < 3 / 256).cumsum(dim=1), None):
        def allowed(b, h, q, k):
            ok = q >= k
            if documents is not None:
                ok = ok & (documents[b, q] == documents[b, k])
            return ok if w is None else ok & (q - k < w)

        got = block_mask(T, documents, w, torch.device("cpu"), allowed)
        want = flex.create_block_mask(allowed, None if documents is None else 3, None, T, T, device="cpu")
        for full in (False, True):
            assert torch.equal(tiles(got, full), tiles(want, full)), (documents is None, full)
        assert got.shape == want.shape


def test_with_the_document_mask_a_packed_row_equals_its_documents_run_one_by_one():
    model = tiny("doc_mask=1")  # rotary: positions enter only as differences, so a document's offset in the row is moot
    first, second = [EOT_TOKEN, 11, 12, 13, 14], [EOT_TOKEN, 21, 22, 23]
    with torch.no_grad():
        packed = model(torch.tensor([first + second]))
        alone = [model(torch.tensor([doc])) for doc in (first, second)]
    torch.testing.assert_close(packed[0, :5], alone[0][0], rtol=1e-10, atol=1e-10)
    # the rotary tables are fp32, so angles at other absolute positions round differently: ~1e-7, not fp64's 1e-15
    torch.testing.assert_close(packed[0, 5:], alone[1][0], rtol=1e-5, atol=1e-6)
    plain = tiny("doc_mask=0")
    with torch.no_grad():  # without the mask the second document reads the first
        assert not torch.allclose(plain(torch.tensor([first + second]))[0, 5:], alone[1][0], atol=1e-3)


def test_a_one_layer_model_with_window_w_sees_exactly_the_last_w_tokens():
    model = tiny("window=3,unet=0,value_embeds=0", depth=1)
    assert model.schedule_window(0.0, context=10) == 3
    tokens = torch.randint(0, 50257, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        windowed = model(tokens)
        for t in (2, 5, 9):
            truncated = model(tokens[:, t - 2: t + 1])  # the window: positions t-2, t-1, t
            torch.testing.assert_close(windowed[0, t], truncated[0, -1], rtol=1e-4, atol=1e-6)  # fp32 rotary tables
        assert model.schedule_window(1.0, context=10) == 10  # the end of training: the whole sequence
        assert not torch.allclose(model(tokens)[0, 9], windowed[0, 9], atol=1e-3)


def test_cached_decoding_keeps_the_document_and_window_masks():
    model = tiny("doc_mask=1,window=3")
    model.schedule_window(0.0, context=16)
    tokens = torch.tensor([[EOT_TOKEN, 11, 12, 13, EOT_TOKEN, 21, 22, 23, 24]])
    cache = KVCache(model.config.n_layer, 16)
    with torch.no_grad():
        outputs = [model(tokens[:, :3], kv_cache=cache)[:, -1]]  # a prompt, then one token at a time
        outputs += [model(tokens[:, i:i + 1], kv_cache=cache)[:, -1] for i in range(3, tokens.size(1))]
        for i, cached in zip(range(2, tokens.size(1)), outputs):
            torch.testing.assert_close(cached, model(tokens[:, :i + 1])[:, -1], rtol=1e-10, atol=1e-10)


def test_the_window_grows_linearly_from_its_start_to_the_sequence_length():
    model = tiny("window=128")
    assert [model.schedule_window(p, 1024) for p in (0.0, 0.25, 0.5, 1.0, 2.0)] == [128, 352, 576, 1024, 1024]
    assert int(model.attention_window) == 1024
    assert tiny("window=0").schedule_window(0.3, 1024) == 1024  # off: the whole sequence
    assert model.schedule_window(0.0, 64) == 64  # a window longer than the sequence is the sequence


def quantised(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What an FP8 operand stands for, in fp64: round(x / s) to `dtype`, times s, with s = amax / the format's max."""
    scale = x.abs().max().double() / torch.finfo(dtype).max
    return (x.double() / scale).to(dtype).double() * scale


def test_fp8_matmuls_equal_fp64_products_of_the_quantised_operands():
    torch.manual_seed(0)
    x = torch.randn(64, 32, requires_grad=True)
    w = torch.randn(48, 32, requires_grad=True)
    out = fp8_linear(x, w)
    want = quantised(x, FORWARD_FP8) @ quantised(w, FORWARD_FP8).T
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    grad = torch.randn(64, 48)
    out.backward(grad)
    g = quantised(grad, GRADIENT_FP8)
    torch.testing.assert_close(x.grad.double(), g @ quantised(w, FORWARD_FP8), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad.double(), g.T @ quantised(x, FORWARD_FP8), rtol=1e-5, atol=1e-5)
    # and the whole is near the exact product: e4m3's 3 mantissa bits give ~2-3% relative error per matrix
    exact = x.detach().double() @ w.detach().double().T
    assert 0.003 < ((out.double() - exact).norm() / exact.norm()).item() < 0.06


def test_fp8_takes_only_shapes_its_kernel_takes():
    w = torch.zeros(48, 32)
    assert fp8_shapes_fit(torch.zeros(4, 16, 32), w)  # 64 rows
    assert not fp8_shapes_fit(torch.zeros(1, 32), w)  # sampling's one row: the ordinary matmul
    assert not fp8_shapes_fit(torch.zeros(64, 24), torch.zeros(48, 24))
    assert not fp8_shapes_fit(torch.zeros(64, 32), torch.zeros(40, 32))


def test_fp8_scales_map_the_largest_value_to_the_formats_largest():
    x = torch.tensor([[0.5, -3.0], [1.0, 2.0]])
    x8, scale = to_fp8(x, FORWARD_FP8)
    assert scale.item() == pytest.approx(3.0 / 448)
    assert x8.float().abs().max().item() == 448.0
    assert to_fp8(torch.zeros(2, 2), FORWARD_FP8)[0].float().abs().max().item() == 0.0  # no NaN from a zero amax


@pytest.mark.parametrize("backend", ["fa4", "cudnn+fa4"])
def test_fa4_attention_without_a_hopper_gpu_is_one_line(tmp_path, capsys, backend):
    from conftest import write_random_shards
    from llmpy.cli import main

    write_random_shards(tmp_path, "r", {"train_000001.bin": 5000}, seed=0)
    assert main(["train", "-i", str(tmp_path / "r_train_*.bin"), "-e", "d2w64", "-b", "2", "-t", "32", "-x", "1",
                 "--device", "cpu", "--attention", backend]) == 2
    assert capsys.readouterr().err.strip() == (f"llmpy: error: --attention {backend} needs a Hopper or Blackwell "
                                               "GPU (FlashAttention-4's kernels are sm_90/sm_100)")
