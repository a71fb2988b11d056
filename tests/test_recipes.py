"""Recipes: `--recipe modern` sets the modern family and Muon with its schedule, flags given explicitly win, the
run records and resumes it; the modern recipe trains a tiny model with falling loss and resumes bitwise on CPU."""

import json
import shlex
import shutil

import torch

from conftest import write_random_shards
from llmpy.checkpoint import load_model
from llmpy.cli import build_parser, main, train_config_from_args
from llmpy.modern import ModernGPT
from llmpy.recipes import RECIPES


def parse(command: str):
    return train_config_from_args(build_parser().parse_args(shlex.split(command)))


def test_a_recipe_sets_its_defaults_and_explicit_flags_win(tmp_path):
    classic = parse("train -i x.bin")
    assert (classic.recipe, classic.family, classic.optimizer, classic.learning_rate) == ("classic", "gpt2", "adamw", 3e-4)
    modern = parse("train -i x.bin --recipe modern")
    for name, value in RECIPES["modern"].items():
        assert getattr(modern, name) == value, name
    assert (modern.family, modern.optimizer, modern.grad_clip) == ("modern", "muon", 0.0)
    mixed = parse("train -i x.bin --recipe modern -l 0.02 --optimizer adamw --grad-clip 1")
    assert (mixed.learning_rate, mixed.optimizer, mixed.grad_clip, mixed.family) == (0.02, "adamw", 1.0, "modern")
    (tmp_path / "run.toml").write_text('recipe = "modern"\nlearning-rate = 0.03\n')
    from_file = parse(f"train -i x.bin --config {tmp_path / 'run.toml'} -u 5")
    assert (from_file.family, from_file.learning_rate, from_file.warmup_steps) == ("modern", 0.03, 5)


def test_an_unknown_recipe_family_or_switch_is_one_line(tmp_path, capsys):
    data = write_random_shards(tmp_path, "r", {"train_000001": 2000}, seed=0)
    base = ["train", "-i", str(data / "r_train_*.bin"), "-e", "d2w64", "-t", "16", "-b", "2", "-x", "1",
            "--device", "cpu", "--compile", "0", "-v", "0", "-s", "0"]
    for extra, message in ((["--recipe", "fast"], "--recipe must be one of classic, modern, frontier, got 'fast'"),
                           (["--family", "llama"], "unknown model family 'llama'"),
                           (["--recipe", "modern", "--arch", "rotary=2"], "--arch rotary must be 0 or 1"),
                           (["--arch", "softcap=3"], "the gpt2 family has no architecture switches"),
                           (["--recipe", "modern", "--fused-loss", "1"], "the fused loss needs a plain linear head")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def write_patterned_shards(root, seed=0):
    """Shards of documents (an EOT, then a 40-token phrase and a few random tokens): text a model learns quickly."""
    import numpy as np

    from llmpy.data.shards import write_shard

    rng = np.random.default_rng(seed)
    phrase = rng.integers(0, 50257, 40)
    def text(count):
        pieces = []
        while sum(map(len, pieces)) < count:
            pieces += [[50256], phrase, rng.integers(0, 50257, 3)]
        return np.concatenate(pieces)[:count]
    write_shard(root / "p_val_000000.bin", text(2000))
    write_shard(root / "p_train_000001.bin", text(20000))
    return root


def modern_args(data, run, steps, extra=(), arch=""):
    return ["train", "-i", str(data / "p_train_*.bin"), "-j", str(data / "p_val_*.bin"), "-o", str(run),
            "-e", "d2w64", "-b", "2", "-t", "32", "-d", "128", "-x", str(steps), "-n", "4", "-v", "4", "-m", "2",
            "-s", "0", "--device", "cpu", "--compile", "0", "--log-every", "0", "--recipe", "modern",
            "-l", "0.02", *extra, *(["--arch", arch] if arch else [])]


def records(run, kind):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if r["kind"] == kind}


def test_the_modern_recipe_trains_a_tiny_model_and_resumes_bitwise(tmp_path):
    arch = "doc_mask=1,window=8"  # with the document mask and the window schedule (a function of the step) on
    data = write_patterned_shards(tmp_path)
    straight = tmp_path / "straight"
    def args(data, run, steps, extra=()):
        return modern_args(data, run, steps, extra, arch)
    assert main(args(data, straight, 8)) == 0
    val = {step: r["loss"] for step, r in records(straight, "val").items()}
    assert val[8] < val[4] < val[0] and val[8] < val[0] - 1.5, val  # falling from ln(50257) = 10.82
    config = json.loads((straight / "config.json").read_text())
    assert (config["recipe"], config["family"], config["train"]["optimizer"]) == ("modern", "modern", "muon")
    model, payload = load_model(straight)
    assert isinstance(model, ModernGPT) and payload["family"] == "modern"
    # stopped after the step-4 checkpoint (as a kill would leave it: nothing after it), then the same command -y 1
    resumed = tmp_path / "resumed"
    assert main(args(data, resumed, 8, ["-n", "4"])) == 0
    for name in [p.name for p in resumed.iterdir() if p.name.endswith("00000008") or "_00000008_" in p.name]:
        (resumed / name).unlink()
    lines = [line for line in (resumed / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 4]
    (resumed / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    assert main(args(data, resumed, 8, ["-y", "1"])) == 0
    for kind in ("train", "val"):
        assert {s: r["loss"] for s, r in records(resumed, kind).items()} == \
               {s: r["loss"] for s, r in records(straight, kind).items()}, kind
    final, reference = load_model(resumed)[0].state_dict(), model.state_dict()
    assert all(torch.equal(final[k], reference[k]) for k in reference)


def test_resuming_a_modern_run_with_another_recipe_is_refused(tmp_path, capsys):
    data = write_patterned_shards(tmp_path)
    run = tmp_path / "run"
    assert main(modern_args(data, run, 4)) == 0
    args = modern_args(data, run, 8, ["-y", "1"])
    args[args.index("--recipe") + 1] = "classic"
    assert main(args) == 2
    assert "--recipe was 'modern' in the saved run, now 'classic'" in capsys.readouterr().err


def test_resuming_with_other_architecture_switches_is_refused(tmp_path, capsys):
    data = write_patterned_shards(tmp_path)
    run = tmp_path / "run"
    assert main(modern_args(data, run, 4)) == 0
    assert main(modern_args(data, run, 8, ["-y", "1", "--arch", "softcap=30"])) == 2
    assert "--arch was '' in the saved run, now 'softcap=30'" in capsys.readouterr().err


def test_plot_overlays_a_classic_and_a_modern_run_against_tokens(tmp_path, capsys):
    from llmpy import plot
    from llmpy.metrics.rundata import load_run

    data = write_patterned_shards(tmp_path)
    modern, classic = tmp_path / "modern", tmp_path / "classic"
    assert main(modern_args(data, modern, 4)) == 0
    classic_args = modern_args(data, classic, 4)
    classic_args[classic_args.index("--recipe") + 1] = "classic"
    classic_args[classic_args.index("-l") + 1] = "0.001"
    assert main(classic_args) == 0
    for run in (modern, classic):  # a d2w64 of either family is no GPT-2 size: no baseline, but no error either
        assert plot.reference_of(load_run(run)) is None
    out = tmp_path / "both.png"
    assert main(["plot", str(modern), str(classic), "--x", "tokens", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = capsys.readouterr().out
    assert "modern" in summary and "classic" in summary
    lines = []  # a modern run of GPT-2 124M's size gets GPT-2 124M's baselines
    for record in map(json.loads, (modern / "metrics.jsonl").read_text().splitlines()):
        if record["kind"] == "config":
            record["model_config"].update(n_layer=12, n_embd=768)
        lines.append(json.dumps(record) + "\n")
    (modern / "metrics.jsonl").write_text("".join(lines))
    assert plot.reference_of(load_run(modern))[0] == "124M"


def test_bad_muon_settings_are_one_line_before_training(tmp_path, capsys):
    data = write_patterned_shards(tmp_path)
    cases = {"head=abc": "head must be a finite number > 0", "embedding=-1": "embedding must be a finite number > 0",
             "momentum=nan": "momentum must be a number in [0, 1)", "momentum_start=inf": "momentum_start must be",
             "ns_steps=1e9": "ns_steps must be a whole number in [1, 20]", "ns_steps=0": "ns_steps must be",
             "normuon=abc": "normuon must be 0 or 1", "nesterov=2": "nesterov must be 0 or 1",
             "orthogonalizer=bogus": "orthogonalizer must be polar_express or jordan",
             "momentum_warmup=-1": "momentum_warmup must be a whole number >= 0",
             "nonsense=1": "muon has no setting 'nonsense'; its settings are embedding, head, scalar"}
    for setting, message in cases.items():
        assert main(modern_args(data, tmp_path / "run", 2, ["--optimizer-args", setting])) == 2, setting
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (setting, err)
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or "train" not in (tmp_path / "run" / "metrics.jsonl").read_text()


FRONTIER_ARCH = "bigram=0.05,rope_dims=32,key_offset=1,backout=1,untie_at=0.75"
FRONTIER_OPTIMIZER = "cautious_wd=1,wd_schedule=lr2,normuon=1,normuon_axis=auto,qk_pairs=1,embedding_wd=0.5,head_wd=0.5"


def frontier_args(data, run, bpe_file, extra=()):
    """The frontier recipe with every switch on (the recipe's own and the ones it leaves off), the auxiliary losses
    and the optimizer's frontier settings: 8 steps, checkpoints every 4; the update of step 5 is the last tied one
    and the auxiliary losses' weights reach 0 at step 5.3."""
    args = modern_args(data, run, 8, ["-c", "1.2", "--optimizer-args", FRONTIER_OPTIMIZER, "--mtp-weights", "0.5",
                                      "--prefix-loss", "0.25", "--tokenizer", str(bpe_file), *extra], FRONTIER_ARCH)
    args[args.index("--recipe") + 1] = "frontier"
    return args


def test_the_frontier_recipe_with_every_switch_trains_and_resumes_bitwise_across_the_untie(tmp_path, bpe_file):
    data = write_patterned_shards(tmp_path)
    straight = tmp_path / "straight"
    assert main(frontier_args(data, straight, bpe_file)) == 0
    val = {step: r["loss"] for step, r in records(straight, "val").items()}
    assert val[8] < val[4] < val[0], val
    config = json.loads((straight / "config.json").read_text())
    assert config["recipe"] == "frontier" and "sigmoid_cap=23" in config["train"]["arch"]
    model, _ = load_model(straight)
    assert model.config.bigram == 0.05 and model.config.smear == 1 and model.config.untie_at == 0.75
    assert not torch.equal(model.transformer.wte.weight, model.lm_head.weight)  # untied after step 5
    # the run as a kill after its step-4 checkpoint (tied) leaves it, then the same command -y 1: through the split
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    for name in [p.name for p in resumed.iterdir() if p.name.endswith("00000008") or "_00000008" in p.name]:
        (resumed / name).unlink()
    lines = [line for line in (resumed / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 4]
    (resumed / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    checkpoint_four = load_model(resumed)[0]
    assert torch.equal(checkpoint_four.transformer.wte.weight, checkpoint_four.lm_head.weight)  # still tied
    assert main(frontier_args(data, resumed, bpe_file, ["-y", "1"])) == 0
    for kind in ("train", "val"):
        assert {s: r["loss"] for s, r in records(resumed, kind).items()} == \
               {s: r["loss"] for s, r in records(straight, kind).items()}, kind
    final, reference = load_model(resumed)[0].state_dict(), model.state_dict()
    assert all(torch.equal(final[k], reference[k]) for k in reference)
