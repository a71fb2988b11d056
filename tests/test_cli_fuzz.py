"""Property-based fuzz of the command line (issue 26): every flag of every subcommand, and every key of a --config
file, gets generated values of its neighbouring types and ranges (0, negatives, huge and 5,000-digit integers,
floats, 'nan', 'inf', '', random text, booleans as text, paths that do not exist, files, directories); whatever the
values, `llmpy` exits 0, or exits 2 with exactly one line on stderr and no traceback.

This is a PARSER fuzz: the entry points that would start real work (build_trainer, the bench, eval, loading a model
for sample and convert, quickstart, the prepare functions) are stubs. Each stub checks what reached it, so a value
that got through parsing but cannot work is caught even where the real work would only fail later: a TrainConfig
whose fields are not of their declared types or that validate refuses, a count that is not positive, a seed out of
range. Then it raises StubReached, which counts as exit 0. Nothing trains, downloads or loads a model; --auto-restart
(a supervisor of real processes) and --debug (tracebacks on purpose) are left out. Examples are bounded and
derandomized: the same ones every run, in seconds."""

import argparse
import dataclasses
import datetime
import functools
import json
import math
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmpy.cli import build_parser, main
from llmpy.config import TrainConfig
from llmpy.errors import LlmpyError
from llmpy.flags import TRAIN_FLAGS, config_file_values

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])
LEFT_OUT = {"--auto-restart", "--debug", "--config"}  # --config has its own fuzz below


class StubReached(Exception):
    """A heavy entry point was called with values it can use: the command's arguments were accepted."""


def reached(**counts) -> None:
    """The stubs' end: every count given is a positive int (or None: not given), then StubReached."""
    for name, value in counts.items():
        assert value is None or (type(value) is int and value >= 1), f"{name}={value!r} reached the work"
    raise StubReached


def trainer_stub(config: TrainConfig, *args, **kwargs):
    """build_trainer: the config is validated and each field of its declared type (a float finite)."""
    for field in dataclasses.fields(TrainConfig):
        value = getattr(config, field.name)
        assert type(value).__name__ == field.type, f"{field.name}={value!r} reached the trainer"
        assert not isinstance(value, float) or math.isfinite(value), f"{field.name}={value!r} reached the trainer"
    try:
        config.validate()
    except LlmpyError as exc:
        raise AssertionError(f"a config that validate refuses reached the trainer: {exc}") from None
    reached()


def bench_stub(args, *more, **kwargs):
    """run_bench / check_fast_path: a step the trainer can take, and counts of steps it can count."""
    from llmpy.bench import bench_config

    try:
        trainer_stub(bench_config(args, "-"))
    except StubReached:
        reached(steps=args.steps, warmup=args.warmup + 1, profile_steps=args.profile_steps)


STUBS = {
    "llmpy.train.build.build_trainer": trainer_stub,
    "llmpy.bench.run_bench": bench_stub,
    "llmpy.bench.check_fast_path": bench_stub,
    "llmpy.eval.report.run_eval": lambda model, **kw: reached(val_tokens=kw["val_tokens"],
                                                              batch_size=kw["batch_size"], seq_len=kw["seq_len"]),
    "llmpy.sample.load_any_model": lambda *args, **kwargs: reached(),  # after run_sample's checks of its flags
    "llmpy.convert.load.load_any_model": lambda *args, **kwargs: reached(),
    "llmpy.quickstart.run_quickstart": lambda **kw: reached(steps=kw["steps"]),
    "llmpy.data.prepare.prepare_tinyshakespeare": lambda *args, **kwargs: reached(),
    "llmpy.data.prepare.prepare_text": lambda *args, **kw: reached(shard_size=kw["shard_size"],
                                                                   val_tokens=kw["val_tokens"]),
    "llmpy.data.prepare.prepare_stream": lambda *args, **kw: reached(
        shard_size=kw["shard_size"], workers=kw["workers"], max_tokens=kw["max_tokens"]),
    "llmpy.data.hellaswag.prepare_hellaswag": lambda *args, **kwargs: reached(),
}


@pytest.fixture()
def sandbox(tmp_path, monkeypatch):
    """A working directory holding a file and a directory to name as paths, downloads off, heavy work stubbed."""
    import llmpy.sample

    run_sample = llmpy.sample.run_sample

    def sample_stub(model, prompt, **kwargs):  # the seed, then sample's own checks up to loading the model
        assert 0 <= kwargs["seed"] < 2**32, f"seed={kwargs['seed']} reached the work"
        return run_sample(model, prompt, **kwargs)

    for target, stub in {**STUBS, "llmpy.sample.run_sample": sample_stub}.items():
        monkeypatch.setattr(target, stub)
    monkeypatch.setattr("llmpy.cli.build_parser", parser)  # one parser for every example: it keeps no state
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLMPY_OFFLINE", "1")
    monkeypatch.setenv("LLMPY_CACHE", str(tmp_path / "cache"))
    (tmp_path / "file.txt").write_text("not a model, not a run, not shards\n")
    (tmp_path / "dir").mkdir()
    return tmp_path


def exits_0_or_one_line(argv: list[str], capsys) -> None:
    """The property: exit 0, or exit 2 with exactly one line on stderr; never a traceback (nor a NaN or an
    infinity printed as a result)."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as stopped:  # argparse's errors and --help, as the console script sees them
        code = stopped.code
    except StubReached:
        code = 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err, (argv, err)
    assert code == 0 or (code == 2 and err.count("\n") == 1 and err.startswith("llmpy: error: ")), (argv, code, err)
    assert code != 0 or not re.search(r"\b(nan|inf)\b", out, re.IGNORECASE), (argv, out)


# ------------------------------------------------------------------------------------------- values of a flag

PATHS = ["", "file.txt", "dir", "dir/", "missing", "missing/deeper/x", "file.txt/below", "x_*.bin", "/proc/llmpy/x"]
WORDS = ["", " ", "nan", "NaN", "inf", "-inf", "+inf", "1e999", "-1e999", "true", "false", "True", "None", "null",
         "0x10", "1_000", "1,000", "1.0", "-0", "-0.0", "0.5", "\u0663", "\u00bd", "-", "--", "-1", "=", "d12", "d0",
         "gpt2", "auto", "cpu", "cuda", "cuda:0", "cuda:x", "bf16", "fp32", "classic", "modern"]
# random text: no '/' (it would make absolute paths), no NUL (no argv holds one), no lone surrogates
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"), max_size=10)
INTEGERS = st.one_of(st.integers(-3, 3), st.integers(-2**70, 2**70),
                     st.sampled_from([2**31, 2**32, 2**63 - 1, 2**63, -2**63 - 1, 10**30, 10**400]))
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
EDGES = st.sampled_from(["0", "-1", "1", "-0.5", "2.5", "nan", "inf", "-inf", "1e999", str(2**63), str(2**64)])


def is_number(action: argparse.Action) -> bool:
    """An option that takes a number."""
    default = action.default if action.default is not argparse.SUPPRESS else getattr(TrainConfig(), action.dest, None)
    return (isinstance(default, (int, float)) and not isinstance(default, bool) or action.type in (int, float)
            or getattr(action.type, "__module__", "") == "llmpy.argtypes")


def values_for(action: argparse.Action) -> st.SearchStrategy[str]:
    """Text for one option: its neighbours of every type (and its default and choices, so that some pass)."""
    default = action.default
    if default is argparse.SUPPRESS:  # train's flags: TrainConfig's default
        default = getattr(TrainConfig(), action.dest, None)
    near = [str(default)] if default not in (None, "", False) else []
    if isinstance(default, int) and not isinstance(default, bool):
        near += [str(default + 1), str(default - 1), str(-default), str(default * 2**40)]
    pool = [INTEGERS.map(str), FLOATS.map(repr), st.sampled_from(WORDS), st.sampled_from(PATHS), TEXT]
    if is_number(action):  # its edges more often
        pool += [EDGES, EDGES]
    if near:
        pool.append(st.sampled_from(near))
    if action.choices:
        pool.append(st.sampled_from([str(choice) for choice in action.choices]))
    return st.one_of(pool).filter(lambda text: text.split("=", 1)[0] != "--auto-restart")


@functools.lru_cache(maxsize=1)
def parser() -> argparse.ArgumentParser:
    return build_parser()


def commands() -> dict[str, argparse.ArgumentParser]:
    """The subcommands' parsers."""
    return next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def fuzzed_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options of a subcommand, but --help and LEFT_OUT."""
    return [action for action in parser._actions if action.option_strings
            and not isinstance(action, argparse._HelpAction) and not set(action.option_strings) & LEFT_OUT]


@st.composite
def option(draw, parser: argparse.ArgumentParser, action: argparse.Action | None = None) -> list[str]:
    """An option of `parser` (`action`, else any) as argv words: `--flag value`, `--flag=value`, or a switch."""
    action = action or draw(st.sampled_from(fuzzed_actions(parser)))
    name = draw(st.sampled_from(action.option_strings))
    if action.nargs == 0:
        return [name]
    value = draw(values_for(action))
    if name.startswith("--") and draw(st.booleans()):
        return [f"{name}={value}"]
    return [name, value]


# what each command needs to get to its checks (drawn too: sometimes left out)
BASES = {
    "train": st.just(["-i", "x_*.bin"]),
    "bench": st.just(["-e", "d2w64", "-t", "32", "-b", "2", "--device", "cpu"]),
    "eval": st.sampled_from(PATHS).map(lambda path: ["--model", path]),
    "sample": st.sampled_from(PATHS).map(lambda path: ["--model", path]),
    "convert": st.tuples(st.sampled_from(PATHS), st.sampled_from(["hf", "llmc", "llmpy", "x"]),
                         st.sampled_from(PATHS)).map(lambda t: ["--model", t[0], "--to", t[1], "--out", t[2]]),
    "plot": st.lists(st.sampled_from(PATHS), min_size=1, max_size=2),
    "plan": st.just([]),
    "prepare": st.sampled_from([["text", "--input", "file.txt"], ["fineweb"], ["tinyshakespeare"], ["hellaswag"],
                                ["tinystories"], ["x"], []]),
    "quickstart": st.just([]),
}


# the same, that get furthest: to the stubs, which check the values that reach them
WORKING_BASES = {"train": ["-i", "x_*.bin"], "bench": ["-e", "d2w64", "-t", "32", "-b", "2", "--device", "cpu"],
                 "eval": ["--model", "m"], "sample": ["--model", "m", "--device", "cpu"],
                 "convert": ["--model", "m", "--to", "llmpy", "--out", "out"], "plot": ["dir"], "plan": [],
                 "prepare": ["text", "--input", "file.txt"], "quickstart": []}


def test_every_subcommand_is_fuzzed():
    assert set(commands()) == set(BASES) == set(WORKING_BASES)


EVERY_FLAG = [(command, action.option_strings[-1]) for command, parser in sorted(commands().items())
              for action in fuzzed_actions(parser)]


@pytest.mark.parametrize("command, flag", EVERY_FLAG)
@settings(FUZZ, max_examples=4)
@given(data=st.data())
def test_every_flag_with_any_value_exits_0_or_one_line(command, flag, data, sandbox, capsys):
    parser = commands()[command]
    words = data.draw(option(parser, parser._option_string_actions[flag]))
    exits_0_or_one_line([command, *data.draw(BASES[command]), *words], capsys)


@pytest.mark.parametrize("command", sorted(BASES))
def test_every_number_at_its_edges_exits_0_or_one_line(command, sandbox, capsys):
    """Not drawn: each numeric option of the command with each of 0, -1, NaN, a float's overflow, 2**64."""
    parser = commands()[command]
    for action in filter(is_number, fuzzed_actions(parser)):
        flag = max(action.option_strings, key=len)
        for value in ("0", "-1", "nan", "1e999", str(2**64)):
            exits_0_or_one_line([command, *WORKING_BASES[command], f"{flag}={value}"], capsys)


@pytest.mark.parametrize("command", sorted(BASES))
@settings(FUZZ, max_examples=15)
@given(data=st.data())
def test_any_values_of_any_flags_exit_0_or_one_line(command, data, sandbox, capsys):
    parser = commands()[command]
    base = data.draw(BASES[command]) if data.draw(st.integers(0, 4)) else []  # mostly there
    options = data.draw(st.lists(option(parser), min_size=1, max_size=4))
    exits_0_or_one_line([command, *base, *[word for words in options for word in words]], capsys)


# ------------------------------------------------------------------------------------------- --config values

CONFIG_VALUES = st.one_of(
    INTEGERS, FLOATS, st.booleans(), TEXT, st.none(), st.dates(),
    st.lists(st.one_of(st.integers(-3, 3), TEXT, st.booleans()), max_size=3),
    st.dictionaries(st.sampled_from(["a", "x"]), st.integers(-3, 3), max_size=2),
)
FIELDS = [field for _, _, field, _, _ in TRAIN_FLAGS]


def toml_value(value) -> str:
    """`value` in TOML (JSON's string escapes are TOML's; TOML has no null: the caller leaves None out)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)  # repr spells TOML's inf, -inf, 1e+300
    if isinstance(value, (int, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + "}"
    return value.isoformat()  # a date


def write_config(path, entries: dict) -> None:
    """`entries` as a TOML or YAML file, by `path`'s suffix."""
    if path.suffix == ".toml":
        lines = (f"{key} = {toml_value(value)}\n" for key, value in entries.items() if value is not None)
        path.write_text("".join(lines))
    else:
        path.write_text(yaml.safe_dump(entries, allow_unicode=True))


@settings(FUZZ, max_examples=80)
@given(fields=st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True),
       values=st.lists(CONFIG_VALUES, min_size=3, max_size=3), dashes=st.booleans(),
       suffix=st.sampled_from([".toml", ".yaml"]), with_data=st.booleans())
def test_any_config_values_exit_0_or_one_line(fields, values, dashes, suffix, with_data, sandbox, capsys):
    path = sandbox / f"run{suffix}"
    write_config(path, {(field.replace("_", "-") if dashes else field): value for field, value in zip(fields, values)})
    exits_0_or_one_line(["train", "--config", str(path)] + (["-i", "x_*.bin"] if with_data else []), capsys)


WRONG_TYPES = {int: [4.5, 512.0, True, "4", [1], {"a": 1}, None, datetime.date(2024, 1, 1), 1.0e300],
               float: [True, "0.1", [0.1], {"a": 1}, None, 10**400],
               str: [12, 1.5, False, ["a"], {"a": "b"}, None, datetime.date(2024, 1, 1)]}


def test_every_key_refuses_the_wrong_types_in_one_line_naming_it(tmp_path):
    """Each key in TOML and in YAML, the wrong values of its type taken in turn: over all keys, every one is tried."""
    kinds = {field: kind for _, _, field, kind, _ in TRAIN_FLAGS}
    assert set(kinds) == {f.name for f in dataclasses.fields(TrainConfig)}  # every key of TrainConfig
    for index, (field, kind) in enumerate(kinds.items()):
        key = field.replace("_", "-")
        wrong = WRONG_TYPES[kind]
        for path, value in ((tmp_path / "run.toml", wrong[index % len(wrong)]),
                            (tmp_path / "run.yaml", wrong[(index + 1) % len(wrong)])):
            if value is None and path.suffix == ".toml":
                value = wrong[0]  # TOML has no null
            write_config(path, {key: value})
            with pytest.raises(LlmpyError) as refused:
                config_file_values(str(path))
            message = str(refused.value)
            assert "\n" not in message and f"--config {path}: {key} = " in message, message
            assert "takes" in message or "beyond a float's range" in message, message
