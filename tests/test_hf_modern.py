"""The modern family as a Hugging Face model (`convert --to hf`, issue 29): transformers alone (trust_remote_code)
computes llmpy's logits, greedy and left-padded generations and loss; llmpy loads the directory back exactly; HellaSwag
predictions agree."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_random_shards

transformers = pytest.importorskip("transformers")

from llmpy.checkpoint import export_model, load_model  # noqa: E402
from llmpy.errors import LlmpyError  # noqa: E402
from llmpy.gpt2 import EOT_TOKEN, VOCAB_SIZE  # noqa: E402
from llmpy.infer import generate  # noqa: E402
from llmpy.modern import ModernConfig, ModernGPT  # noqa: E402

SHAPE = dict(n_layer=4, n_head=2, n_embd=64, block_size=64)
FRONTIER = dict(bigram=0.01, bigram_dim=32, smear=1, sigmoid_cap=30.0, attn_gate=1, ve_gate=1, skip_gate=1,
                rope_dims=16, key_offset=1, backout=1, untie_at=0.5, doc_mask=1)
# switch combinations that change the math; together they turn every switch away from its default
COMBOS = {
    "modern": {},
    "gpt2-like": dict(rotary=0, qk_norm=0, relu2=0, rmsnorm=0, bias=1, tie=1, softcap=0.0, value_embeds=0, unet=0),
    "one-value-embed": dict(value_embeds=1, window=8, doc_mask=1, zero_init=0, fp8_head=1, rope_base=500),
    "bigram-smear": dict(bigram=0.01, bigram_dim=32, smear=1, softcap=0.0),
    "gates-sigmoid-cap": dict(sigmoid_cap=30.0, attn_gate=1, ve_gate=1, skip_gate=1),
    "partial-rotary": dict(rope_dims=16, key_offset=1, backout=1),
    "untied-later": dict(untie_at=0.5, bigram=0.01),
    "frontier": FRONTIER,
    "frontier-d2": dict(FRONTIER, n_layer=2, value_embeds=1),
    "no-rotary-frontier": dict(rotary=0, rmsnorm=0, bias=1, smear=1, bigram=0.01, attn_gate=1, backout=1),
}
GENERATE_COMBOS = ["gpt2-like", "frontier", "no-rotary-frontier"]


@pytest.fixture(autouse=True)
def _quiet_transformers():
    logging.getLogger("transformers").setLevel(logging.ERROR)


def modern_model(seed: int = 0, **switches) -> ModernGPT:
    """A tiny ModernGPT with every parameter random (zero-initialised gates and projections would hide a switch)."""
    torch.manual_seed(seed)
    model = ModernGPT(ModernConfig(**{**SHAPE, **switches})).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 1.0 if "wte" in name or "value_embeds" in name else 0.2
            parameter.copy_(torch.randn_like(parameter) * scale)
    return model


def token_rows(batch: int = 2, length: int = 48, seed: int = 1) -> torch.Tensor:
    """Random GPT-2 tokens with a few <|endoftext|> (document starts, for doc_mask)."""
    tokens = torch.randint(0, VOCAB_SIZE, (batch, length), generator=torch.Generator().manual_seed(seed))
    tokens[:, [i for i in (5, 20) if i < length]] = EOT_TOKEN
    tokens[0, [i for i in (3, 33) if i < length]] = EOT_TOKEN
    return tokens


def llmpy_logits(model: ModernGPT, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens, output=model.logits).float()


def export(model: ModernGPT, directory: Path, bpe_file: Path | None = None) -> Path:
    from llmpy.convert.hf_modern import save_hf_modern

    save_hf_modern(model, directory, bpe_file=bpe_file)
    return directory


def load_hf(directory: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).eval()


def greedy_llmpy(model: ModernGPT, prompt: torch.Tensor, new: int) -> torch.Tensor:
    return generate(model, prompt, new, temperature=0)


def greedy_hf(model, prompt: torch.Tensor, new: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    mask = torch.ones_like(prompt) if attention_mask is None else attention_mask
    with torch.no_grad():
        return model.generate(prompt, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False)


# --- transformers computes what llmpy computes ---


@pytest.mark.parametrize("combo", COMBOS)
def test_exported_logits_equal_llmpy(combo, tmp_path):
    model = modern_model(**COMBOS[combo])
    hf = load_hf(export(model, tmp_path / "hf"))
    assert type(hf).__name__ == "LlmpyForCausalLM"
    tokens = token_rows()
    with torch.no_grad():
        theirs = hf(tokens).logits
    ours = llmpy_logits(model, tokens)
    assert theirs.shape == ours.shape == (2, 48, VOCAB_SIZE)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("combo", GENERATE_COMBOS)
def test_greedy_generate_equals_llmpy_token_for_token(combo, tmp_path):
    model = modern_model(**COMBOS[combo])
    hf = load_hf(export(model, tmp_path / "hf"))
    prompt = token_rows(batch=1, length=16, seed=3)
    ours = greedy_llmpy(model, prompt, 32)
    theirs = greedy_hf(hf, prompt, 32)
    assert theirs.shape == (1, 48)
    assert theirs.tolist() == ours.tolist()


def test_left_padded_batch_generates_as_each_prompt_alone(tmp_path):
    model = modern_model(**COMBOS["frontier"])  # rotary, and the switches that read the previous token
    hf = load_hf(export(model, tmp_path / "hf"))
    prompts = [token_rows(batch=1, length=n, seed=n)[0] for n in (16, 7, 11)]
    width = max(len(p) for p in prompts)
    batch = torch.full((len(prompts), width), EOT_TOKEN)  # the pad token: <|endoftext|>, as the tokenizer's
    mask = torch.zeros_like(batch)
    for row, prompt in enumerate(prompts):
        batch[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    generated = greedy_hf(hf, batch, 16, attention_mask=mask)[:, width:]
    for row, prompt in enumerate(prompts):
        alone = greedy_llmpy(model, prompt[None], 16)[0, len(prompt):]
        assert generated[row].tolist() == alone.tolist(), f"prompt {row}"


def test_labels_give_llmpy_loss(tmp_path):
    from llmpy.loss import CrossEntropyLoss

    model = modern_model(**COMBOS["frontier"])
    hf = load_hf(export(model, tmp_path / "hf"))
    tokens = token_rows()
    targets = torch.cat([tokens[:, 1:], torch.full((2, 1), -1)], dim=1)  # position t predicts t + 1
    with torch.no_grad():
        ours = CrossEntropyLoss(VOCAB_SIZE, model.config.padded_vocab_size)(model(tokens), targets, model.lm_head)
        theirs = hf(tokens, labels=tokens).loss
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_exported_files(tmp_path, bpe_file):
    from llmpy.convert.hf import HF_FILES
    from llmpy.convert.hf_modern import HF_MODERN_FILES

    model = modern_model(**COMBOS["frontier"])
    export(model, tmp_path / "hf", bpe_file)
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == sorted({*HF_FILES, *HF_MODERN_FILES})
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "llmpy" and config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_")
    assert {k: config[k] for k in FRONTIER} == FRONTIER and config["n_layer"] == 4
    # trust_remote_code: AutoTokenizer reads config.json first, and would ask whether to run its code
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", trust_remote_code=True)
    assert tokenizer.encode("Hello world") == [15496, 995] and tokenizer.eos_token_id == EOT_TOKEN


# --- transformers alone: no llmpy in the process ---

NO_LLMPY = """
import sys, json
sys.modules["llmpy"] = None  # `import llmpy` fails from here on, as where llmpy is not installed
try:
    import llmpy
    raise SystemExit("llmpy is importable")
except ImportError:
    pass
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
directory, tokens_file, out_file = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=True)
tokenizer.padding_side = "left"
tokenizer.pad_token = tokenizer.eos_token
prompts = ["Hello world, this is", "The"]
batch = tokenizer(prompts, return_tensors="pt", padding=True)
with torch.no_grad():
    logits = model(torch.load(tokens_file)).logits
    out = model.generate(**batch, max_new_tokens=12, min_new_tokens=12, do_sample=False)
ids = [tokenizer(p)["input_ids"] for p in prompts]
new = [row[batch["input_ids"].size(1):].tolist() for row in out]
torch.save({"logits": logits, "prompt_ids": ids, "generated": new, "modules": sorted(n for n, m in sys.modules.items() if m is not None)}, out_file)
"""


def test_loads_and_generates_without_llmpy(tmp_path, bpe_file):
    model = modern_model(**COMBOS["frontier"])
    export(model, tmp_path / "hf", bpe_file)
    tokens = token_rows()
    torch.save(tokens, tmp_path / "tokens.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", NO_LLMPY, str(tmp_path / "hf"), str(tmp_path / "tokens.pt"),
                           str(tmp_path / "out.pt")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = torch.load(tmp_path / "out.pt")
    assert not any(name == "llmpy" or name.startswith("llmpy.") for name in result["modules"])
    torch.testing.assert_close(result["logits"], llmpy_logits(model, tokens), atol=1e-5, rtol=0)
    from llmpy.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(str(bpe_file))
    prompts = ["Hello world, this is", "The"]
    assert result["prompt_ids"] == [tokenizer.encode(p) for p in prompts]
    for prompt, generated in zip(result["prompt_ids"], result["generated"]):
        alone = greedy_llmpy(model, torch.tensor([prompt]), 12)[0, len(prompt):]
        assert generated == alone.tolist()


# --- the CLI: convert both ways, sample, eval, train -e ---


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    from llmpy.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(err: str) -> str:
    """The one error line of a refused command (after the line saying which checkpoint of a run was read)."""
    lines = err.splitlines()
    assert lines and lines[-1].startswith("llmpy: error: ") and "Traceback" not in err, err
    assert all(line.startswith("using ") for line in lines[:-1]), err
    return lines[-1]


@pytest.fixture()
def modern_run(tmp_path, bpe_env, monkeypatch) -> tuple[ModernGPT, Path]:
    monkeypatch.chdir(tmp_path)
    model = modern_model(**COMBOS["frontier"])
    return model, export_model(tmp_path / "run", model, {}).parent


def test_cli_round_trip_is_exact(modern_run, tmp_path, capsys):
    model, run = modern_run
    assert cli(capsys, "convert", "--model", str(run), "--to", "hf", "--out", str(tmp_path / "hf"))[0] == 0
    assert (tmp_path / "hf" / "modeling_llmpy.py").is_file() and (tmp_path / "hf" / "vocab.json").is_file()
    from llmpy.convert.load import describe_source

    assert describe_source(str(tmp_path / "hf")) == "hf"
    assert cli(capsys, "convert", "--model", str(tmp_path / "hf"), "--to", "llmpy", "--out", str(tmp_path / "back"))[0] == 0
    back, _ = load_model(tmp_path / "back", say=lambda line: None)
    original, _ = load_model(run, say=lambda line: None)
    assert type(back) is ModernGPT and back.config == original.config == model.config
    theirs, ours = back.state_dict(), original.state_dict()
    assert theirs.keys() == ours.keys()
    for key in ours:
        assert torch.equal(theirs[key], ours[key]), key
    # and again: an earlier export is replaced, never refused
    code, out, _ = cli(capsys, "convert", "--model", str(run), "--to", "hf", "--out", str(tmp_path / "hf"))
    assert code == 0 and "replacing the earlier conversion there" in out


def test_cli_bf16_export(modern_run, tmp_path, capsys):
    model, run = modern_run
    assert cli(capsys, "convert", "--model", str(run), "--to", "hf", "--out", str(tmp_path / "hf"),
               "--dtype", "bf16")[0] == 0
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "hf" / "model.safetensors")
    assert {tensor.dtype for tensor in weights.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    expected = model.transformer.h[0].attn.c_q.weight.to(torch.bfloat16)
    assert torch.equal(weights["transformer.h.0.attn.c_q.weight"], expected)
    assert cli(capsys, "convert", "--model", str(tmp_path / "hf"), "--to", "llmpy", "--out", str(tmp_path / "back"))[0] == 0
    back, _ = load_model(tmp_path / "back", say=lambda line: None)  # fp32 again, holding the bf16 values
    assert torch.equal(back.transformer.h[0].attn.c_q.weight, expected.float())
    hf = load_hf(tmp_path / "hf")  # computes in bf16 (torch_dtype): close to llmpy's fp32 on the same weights
    assert next(hf.parameters()).dtype == torch.bfloat16
    tokens = token_rows()
    with torch.no_grad():
        theirs = hf(tokens).logits
    ours = llmpy_logits(back, tokens)
    assert (theirs.float() - ours).abs().max() < 0.03 * ours.abs().max()


def test_cli_dtype_where_it_is_not_honoured_is_refused(modern_run, tmp_path, capsys):
    _, run = modern_run
    code, _, err = cli(capsys, "convert", "--model", str(run), "--to", "llmpy", "--out", str(tmp_path / "copy"),
                       "--dtype", "bf16")
    assert code == 2 and "--dtype bf16" in error_line(err) and not (tmp_path / "copy").exists()


def test_cli_llmc_still_refuses_the_modern_family(modern_run, tmp_path, capsys):
    _, run = modern_run
    code, _, err = cli(capsys, "convert", "--model", str(run), "--to", "llmc", "--out", str(tmp_path / "m.bin"))
    assert code == 2 and "holds only GPT-2's architecture" in error_line(err)
    assert not (tmp_path / "m.bin").exists()


def test_convert_never_overwrites_other_files_beside_an_export(modern_run, tmp_path, capsys):
    _, run = modern_run
    out = tmp_path / "hf"
    assert cli(capsys, "convert", "--model", str(run), "--to", "hf", "--out", str(out))[0] == 0
    (out / "my_notes.txt").write_text("mine")
    code, _, err = cli(capsys, "convert", "--model", str(run), "--to", "hf", "--out", str(out))
    assert code == 2 and "my_notes.txt" in error_line(err)
    assert (out / "my_notes.txt").read_text() == "mine"


def test_sample_and_train_e_from_the_export(modern_run, tmp_path, capsys):
    model, run = modern_run
    assert cli(capsys, "convert", "--model", str(run), "--to", "hf", "--out", str(tmp_path / "hf"))[0] == 0
    samples = [cli(capsys, "sample", "--model", str(source), "--prompt", "Hello", "--temperature", "0",
                   "--max-new-tokens", "12", "--device", "cpu")[1] for source in (run, tmp_path / "hf")]
    assert samples[0] == samples[1] and samples[0].startswith("Hello") and len(samples[0]) > len("Hello")
    from llmpy.train.build import build_model

    started = build_model(str(tmp_path / "hf"), seq_len=32, family="modern")  # what `train -e DIR` starts from
    assert started.config == model.config
    for key, tensor in model.state_dict().items():
        assert torch.equal(started.state_dict()[key], tensor), key
    with pytest.raises(LlmpyError, match="is a modern model"):
        build_model(str(tmp_path / "hf"), seq_len=32)  # the gpt2 family by default: refused in one line
    data = write_random_shards(tmp_path / "data", "i", {"train_000001": 4096}, seed=0)
    code, out, _ = cli(capsys, "train", "-e", str(tmp_path / "hf"), "--family", "modern", "-i",
                       str(data / "i_train_*.bin"), "-b", "1", "-t", "8", "-x", "1", "-v", "0", "-s", "0",
                       "--device", "cpu", "-o", str(tmp_path / "trained"))
    assert code == 0 and "hf (modern): 4 layers" in out and (tmp_path / "trained" / "model_00000001.pt").is_file()


@pytest.fixture(scope="module")
def good_export(tmp_path_factory) -> Path:
    """One export of the frontier combination, copied by each test that damages it."""
    return export(modern_model(**COMBOS["frontier"]), tmp_path_factory.mktemp("good") / "hf")


@pytest.mark.parametrize("damage, message", [
    (lambda c: c.update(n_layer=2), "weights do not match config.json"),
    (lambda c: c.update(n_embd=128, n_head=2), "has shape"),
    (lambda c: c.update(moe_experts=8), "settings this llmpy does not know: moe_experts"),
    (lambda c: c.update(smear="yes"), "smear is 'yes', expected a whole number"),
    (lambda c: c.update(rope_dims=7), "rope_dims must be an even number"),
])
def test_bad_export_directory_is_one_line(good_export, tmp_path, capsys, monkeypatch, damage, message):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(good_export, tmp_path / "hf")
    config_file = tmp_path / "hf" / "config.json"
    config = json.loads(config_file.read_text())
    damage(config)
    config_file.write_text(json.dumps(config))
    for argv in (["sample", "--model", str(tmp_path / "hf"), "--device", "cpu"],
                 ["convert", "--model", str(tmp_path / "hf"), "--to", "llmpy", "--out", str(tmp_path / "back")]):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and message in error_line(err)


# --- HellaSwag: llmpy eval on both, and transformers' own scoring ---


def transformers_predictions(directory: Path, items: list[dict]) -> list[tuple[int, int]]:
    """(by summed, by mean log-probability of the ending) per HellaSwag item, with transformers alone."""
    model = load_hf(directory)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, trust_remote_code=True)
    predictions = []
    for item in items:
        context = tokenizer.encode(item["ctx"])
        sums, means = [], []
        for ending in item["endings"]:
            ending_ids = tokenizer.encode(" " + ending)
            ids = torch.tensor([context + ending_ids])
            with torch.no_grad():
                log_probs = F.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
            picked = log_probs[torch.arange(len(context) - 1, ids.size(1) - 1), torch.tensor(ending_ids)]
            sums.append(float(picked.sum()))
            means.append(float(picked.mean()))
        predictions.append((max(range(4), key=sums.__getitem__), max(range(4), key=means.__getitem__)))
    return predictions


def llmpy_agrees(model: ModernGPT, items: list[dict], tokenizer, predictions: list[tuple[int, int]]) -> bool:
    """Whether llmpy.eval.hellaswag predicts the same endings (by summed, by mean loss): each item scored with the
    given predictions as its labels is right."""
    from llmpy.eval.hellaswag import Example, evaluate_hellaswag

    def score(item: dict, label: int) -> dict:
        endings = tuple(tokenizer.encode(" " + ending) for ending in item["endings"])
        example = Example(tokenizer.encode(item["ctx"]), endings, label)
        return evaluate_hellaswag(model, [example], torch.device("cpu"), contextlib.nullcontext)

    return all(score(item, by_sum)["acc"] == 1 and score(item, by_mean)["acc_norm"] == 1
               for item, (by_sum, by_mean) in zip(items, predictions))


def test_hellaswag_predictions_agree(tmp_path, bpe_env, shared_data, capsys, monkeypatch):
    from llmpy.tokenizer import get_tokenizer

    monkeypatch.chdir(tmp_path)
    examples = shared_data / "hellaswag" / "hellaswag_val.jsonl"
    limit = 5
    items = [json.loads(line) for line in examples.read_text().splitlines()[:limit]]
    model = modern_model(**dict(COMBOS["frontier"], n_layer=2, value_embeds=1), block_size=256)
    tokenizer = get_tokenizer()
    longest = max(len(tokenizer.encode(i["ctx"])) + max(len(tokenizer.encode(" " + e)) for e in i["endings"])
                  for i in items)
    assert longest <= 256  # no context trimmed: transformers' scoring above does not trim
    run = export_model(tmp_path / "run", model, {}).parent
    assert cli(capsys, "convert", "--model", str(run), "--to", "hf", "--out", str(tmp_path / "hf"))[0] == 0
    theirs = transformers_predictions(tmp_path / "hf", items)
    assert llmpy_agrees(model, items, tokenizer, theirs)
    results = []
    for source in (run, tmp_path / "hf"):
        code, out, _ = cli(capsys, "eval", "--model", str(source), "--hellaswag-file", str(examples), "--limit",
                           str(limit), "--device", "cpu", "--json")
        assert code == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    labels = [int(item["label"]) for item in items]
    for result in results:
        assert result["hellaswag_examples"] == limit
        assert result["hellaswag_acc"] == pytest.approx(sum(p[0] == y for p, y in zip(theirs, labels)) / limit)
        assert result["hellaswag_acc_norm"] == pytest.approx(sum(p[1] == y for p, y in zip(theirs, labels)) / limit)
