"""KV-cache generation against a plain recompute-everything loop."""

import pytest
import torch

from llmpy.config import ModelConfig
from llmpy.infer import KVCache, filter_logits, generate
from llmpy.model import GPT


def greedy_without_cache(model, prompt, steps):
    """Reference: feed the whole (cropped) context every step and take the argmax."""
    idx = prompt
    for _ in range(steps):
        logits = model.logits(model(idx[:, -model.config.block_size:]))
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def test_kv_cache_greedy_equals_recompute_token_for_token():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=32)).eval()
    with torch.no_grad():  # a sharper model than random init, so argmax ties are unlikely
        model.transformer.wte.weight.mul_(20)
    prompt = torch.randint(0, 50257, (3, 5))
    with torch.no_grad():
        expected = greedy_without_cache(model, prompt, 40)  # runs past the 32-token window
    assert torch.equal(generate(model, prompt, 40, temperature=0), expected)


def test_cached_logits_equal_full_forward():
    torch.manual_seed(1)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=16)).eval()
    tokens = torch.randint(0, 50257, (2, 12))
    with torch.no_grad():
        full = model.logits(model(tokens))
        cache = KVCache(model.config.n_layer, 16)
        prefix = model.logits(model(tokens[:, :7], kv_cache=cache))
        steps = [model.logits(model(tokens[:, t:t + 1], kv_cache=cache)) for t in range(7, 12)]
    torch.testing.assert_close(torch.cat([prefix, *steps], dim=1), full, atol=1e-5, rtol=1e-4)
    assert cache.length == 12


def test_seeded_sampling_is_repeatable():
    torch.manual_seed(2)
    model = GPT(ModelConfig(n_layer=1, n_head=1, n_embd=64, block_size=16)).eval()
    prompt = torch.zeros(2, 1, dtype=torch.long)
    runs = [generate(model, prompt, 10, top_k=50, top_p=0.9, generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_a_sample_ends_at_end_of_text(bpe_env, tmp_path):
    """A model that puts all its mass on <|endoftext|> after "A": the printed sample stops there, without the marker."""
    import io

    from llmpy.checkpoint import export_model
    from llmpy.config import ModelConfig
    from llmpy.gpt2 import EOT_TOKEN
    from llmpy.sample import run_sample

    model = GPT(ModelConfig(n_layer=1, n_head=1, n_embd=64, block_size=16))
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)  # every hidden state is all ones...
        model.lm_head.weight[EOT_TOKEN] = 10.0  # ...so <|endoftext|> wins every position
    export_model(tmp_path / "run", model, {})
    for samples in (1, 2):
        out = io.StringIO()
        run_sample(str(tmp_path / "run"), "A", num_samples=samples, max_new_tokens=5, temperature=0, device="cpu",
                   out=out)
        assert "<|endoftext|>" not in out.getvalue()
        assert out.getvalue().rstrip("\n").endswith("A")


def test_top_p_zero_keeps_the_most_likely_token_and_bad_settings_are_named():
    """D3: top_p 0 once masked every token, and torch.multinomial failed on the all -inf row."""
    logits = torch.log(torch.tensor([[0.1, 0.5, 0.25, 0.15]]))
    assert torch.isinf(filter_logits(logits, top_p=0.0)).tolist() == [[True, False, True, True]]
    torch.manual_seed(3)
    model = GPT(ModelConfig(n_layer=1, n_head=1, n_embd=64, block_size=16)).eval()
    prompt = torch.zeros(2, 1, dtype=torch.long)
    sampled = generate(model, prompt, 4, top_p=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampled, generate(model, prompt, 4, temperature=0))  # only the top token left: greedy
    for options, named in (({"top_p": float("nan")}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k"),
                           ({"temperature": float("nan")}, "temperature"), ({"temperature": -1.0}, "temperature")):
        with pytest.raises(ValueError, match=named):
            generate(model, prompt, 1, **options)
