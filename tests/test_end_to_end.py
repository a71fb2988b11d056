"""The commands a user runs: quickstart, prepare + train through the CLI, sample; checkpoint safety."""

import shutil

import pytest
import torch

from llmpy.cli import main
from llmpy.errors import LlmpyError
from llmpy.infer import filter_logits
from llmpy.tokenizer import get_tokenizer
from llmpy.checkpoint import completed_steps, export_model, load_model, prune_checkpoints


@pytest.fixture()
def cached_shakespeare(bpe_env, shakespeare_file, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    shutil.copy(shakespeare_file, cache / "tinyshakespeare.txt")
    return cache


def test_quickstart_runs_offline_and_learns(cached_shakespeare, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["quickstart", "--steps", "8", "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "val loss: 10.8" in text and "First Citizen:" in text
    assert (cached_shakespeare / "data" / "tinyshakespeare" / "manifest.json").is_file()
    assert completed_steps(out) == [8]
    lines = (out / "main.log").read_text().splitlines()
    first_val = float(lines[0].split("tel:")[1])
    last_val = float([l for l in lines if "tel:" in l][-1].split("tel:")[1])
    assert last_val < first_val - 0.5


def test_prepare_train_sample_through_the_cli(cached_shakespeare, shared_data, tmp_path, capsys):
    shakespeare_hellaswag = shared_data / "hellaswag" / "hellaswag_val.jsonl"
    data = tmp_path / "data"
    assert main(["prepare", "tinyshakespeare", "--out", str(data)]) == 0
    run = tmp_path / "run"
    code = main(["train", "-i", str(data / "tinyshakespeare_train_*.bin"), "-j", str(data / "tinyshakespeare_val_*.bin"),
                 "-o", str(run), "-e", "d2w64", "-b", "4", "-t", "32", "-x", "4", "-v", "2", "-m", "2", "-s", "4",
                 "-g", "8", "-n", "2", "-nk", "1", "--device", "cpu", "--compile", "0", "-h", "1",
                 "--hellaswag-file", str(shakespeare_hellaswag), "--hellaswag-limit", "6"])
    assert code == 0
    out = capsys.readouterr().out
    assert "num_parameters" in out and "generating:" in out and "HellaSwag: " in out
    evals = [l for l in (run / "main.log").read_text().splitlines() if " eval:" in l]
    assert [l.split()[0] for l in evals] == ["s:0", "s:2", "s:4"]
    assert completed_steps(run) == [4]  # -n 2 wrote step 2, -nk 1 kept only the newest
    # greedy sampling equals an argmax loop over the model's own forward pass
    model, _ = load_model(run)
    tokenizer = get_tokenizer()
    ids = tokenizer.encode("ROMEO:")
    with torch.no_grad():
        for _ in range(5):
            logits = model.logits(model(torch.tensor([ids])))
            ids.append(int(logits[0, -1].argmax()))
    assert main(["sample", "--model", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "5", "--temperature", "0",
                 "--device", "cpu"]) == 0
    assert tokenizer.decode(ids) in capsys.readouterr().out


def test_checkpoint_rules(tmp_path):
    from llmpy.config import ModelConfig
    from llmpy.model import GPT

    model = GPT(ModelConfig(n_layer=1, n_head=1, n_embd=64, block_size=16))
    for step in (10, 20, 30, 40):
        export_model(tmp_path, model, {}, step=step)
    (tmp_path / "DONE_00000040").unlink()  # a write that never finished
    assert completed_steps(tmp_path) == [10, 20, 30]
    assert prune_checkpoints(tmp_path, keep=1, keep_every=20) == [10]
    assert completed_steps(tmp_path) == [20, 30]
    loaded, payload = load_model(tmp_path)
    assert payload["step"] == 30
    torch.testing.assert_close(loaded.state_dict()["lm_head.weight"], model.state_dict()["lm_head.weight"])
    broken = tmp_path / "model_00000030.pt"
    broken.write_bytes(broken.read_bytes()[:1000])
    assert completed_steps(tmp_path) == [20]  # its size no longer matches the DONE marker: never used
    assert load_model(tmp_path)[1]["step"] == 20
    with pytest.raises(LlmpyError, match="model_00000030.pt: its contents do not match the SHA-256 in DONE_00000030"):
        load_model(broken)  # named directly: the marker's checksum catches it before torch.load
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(LlmpyError, match="empty_run: no complete checkpoint"):
        load_model(empty)


def test_top_k_and_top_p_filtering_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # top_p 0.7: 0.5 alone < 0.7, 0.5 + 0.25 reaches it -> keep two
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.4)).tolist() == [[False, True, True, True]]


def test_convert_and_eval_every_format_through_the_cli(cached_shakespeare, shared_data, tmp_path, capsys):
    import json

    data = tmp_path / "data"
    assert main(["prepare", "tinyshakespeare", "--out", str(data)]) == 0
    run = tmp_path / "run"
    assert main(["train", "-i", str(data / "tinyshakespeare_train_*.bin"), "-o", str(run), "-e", "d2w64", "-b", "4",
                 "-t", "32", "-x", "3", "-v", "0", "-s", "0", "--device", "cpu", "--compile", "0"]) == 0
    assert main(["convert", "--model", str(run), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert main(["convert", "--model", str(tmp_path / "hf"), "--to", "llmc", "--out", str(tmp_path / "m.bin")]) == 0
    assert (tmp_path / "gpt2_tokenizer.bin").is_file()
    assert main(["convert", "--model", str(tmp_path / "m.bin"), "--to", "llmpy", "--out", str(tmp_path / "back")]) == 0
    capsys.readouterr()
    losses = []
    for spec in (run, tmp_path / "hf", tmp_path / "m.bin", tmp_path / "back"):
        assert main(["eval", "--model", str(spec), "-j", str(data / "tinyshakespeare_val_*.bin"), "-b", "4", "-t", "32",
                     "--val-tokens", "1024", "--hellaswag-file", str(shared_data / "hellaswag" / "hellaswag_val.jsonl"),
                     "--limit", "8", "--device", "cpu", "--json"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["val_tokens"] == 1024 and result["hellaswag_examples"] == 8
        losses.append((result["val_loss"], result["hellaswag_acc_norm"]))
    assert all(loss == pytest.approx(losses[0], abs=1e-5) for loss in losses)
    assert main(["eval", "--model", str(tmp_path / "m.bin"), "--no-hellaswag", "--device", "cpu"]) == 2
    assert "nothing to compute" in capsys.readouterr().err
    assert main(["sample", "--model", str(tmp_path / "m.bin"), "--prompt", "ROMEO:", "--max-new-tokens", "4",
                 "--device", "cpu"]) == 0
    assert "ROMEO:" in capsys.readouterr().out
