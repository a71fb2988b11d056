"""Checkpoints: the model file format, and the one manager that saves and restores a run's state in `-o`.

A run directory has llm.c's layout: `model_%08d.pt` (weights + config: what sample, eval, convert and `-e` read),
`state_%08d_%05d.pt` (everything else the next step depends on: optimizer, loader position, LR schedule, RNG,
outlier windows) and last the `DONE_%08d` marker listing every file with its size. Each file is written to a
temporary name and renamed, and the marker comes after all of them, so a kill or a full disk mid-write leaves no
checkpoint that looks complete; a checkpoint whose files are missing or of another size than its marker records is
never used. A checkpoint that does not fit on the disk is refused before it is written when its size can be told,
and otherwise removed with whatever it had written; either way one line says so, and no earlier checkpoint is
touched. Loading uses `weights_only=True`, so no pickled code ever runs.

Every model and state file also carries the SHA-256 of its own contents (`payload_digest`), recomputed at every
load, so a file is verified without its marker (copied out of its run, or its marker deleted); files of an earlier
llmpy carry none and load with a note. Loading a run directory takes its newest usable checkpoint and says which,
and why each newer one was skipped (a damaged marker is an incomplete checkpoint, never an error).

`CheckpointManager` saves a dict of Stateful pieces (anything with `state_dict()`/`load_state_dict()`) and, on
`-y 1`, restores every one of them from the newest readable checkpoint, after comparing the saved run's flags
with the new ones (`llmpy.resume_rules.run_changes`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Callable, Protocol, TypeVar

import torch
import torch.nn as nn

import llmpy
from llmpy.atomic import atomic_open, atomic_write_bytes, check_free_space, disk_full_error, sha256_of
from llmpy.config import ModelConfig, TrainConfig
from llmpy.distributed import Distributed, broadcast_object
from llmpy.errors import DiskFullError, LlmpyError
from llmpy.families import DEFAULT_FAMILY, build_model, config_from_dict, family_of, is_tied
from llmpy.resume_rules import describe_model, run_changes
from llmpy.runlock import process_running
from llmpy.runtime import rng_state, set_rng_state

# "-v2": the file carries its digest (DIGEST_KEY); files of an earlier llmpy have the plain format name and none
MODEL_FORMAT, STATE_FORMAT = "llmpy-model-v2", "llmpy-state-v2"
_FORMATS = {"model": (MODEL_FORMAT, "llmpy-model"), "state": (STATE_FORMAT, "llmpy-state")}
_KIND_NAMES = {"model": "model file", "state": "training state"}
DIGEST_KEY = "sha256"
_DONE_RE = re.compile(r"DONE_(\d{8})$")
_FILE_RE = re.compile(r"(?:model|state)_(\d{8})(?:_\d{5})?\.pt$")
# a checkpoint file's temporary name while atomic_open writes it (see llmpy.atomic): the writer's pid at the end
_TEMP_RE = re.compile(r"\.(?:(?:model|state)_\d{8}(?:_\d{5})?\.pt|DONE_\d{8})\.tmp(\d+)$")
# torch.save's zip records and pickled non-tensor values, beyond the tensors' own bytes (measured: ~360 B a tensor)
_BYTES_PER_TENSOR, _BYTES_PER_FILE = 1024, 64 << 10


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def model_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"model_{step:08d}.pt"


def done_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"DONE_{step:08d}"


def state_path(run_dir: str | Path, step: int, rank: int = 0) -> Path:
    return Path(run_dir) / f"state_{step:08d}_{rank:05d}.pt"


# ---------------------------------------------------------------------------------------------- the model file


def saved_size(state) -> int:
    """About the bytes torch.save writes for a (nested) state dict: its tensors' bytes and the zip records around them."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size() + _BYTES_PER_TENSOR
    items = state.values() if isinstance(state, dict) else state if isinstance(state, (list, tuple)) else ()
    return sum(saved_size(value) for value in items)


def _model_payload(step: int, config: ModelConfig, weights: dict, family: str, metadata: dict | None) -> dict:
    """What a model file holds (a tied `lm_head.weight` is not stored: it is `transformer.wte.weight`)."""
    return {
        "format": MODEL_FORMAT, "step": step, "family": family, "model_config": config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in weights.items() if k != "lm_head.weight" or not is_tied(config)},
        "llmpy_version": llmpy.__version__, "torch_version": str(torch.__version__), "metadata": metadata or {},
    }


def _save(payload: dict, path: Path) -> None:
    """torch.save to `path` atomically, with the digest of its contents, refused first if the disk cannot hold it."""
    payload = {**payload, DIGEST_KEY: payload_digest(payload)}
    with atomic_open(path, size=saved_size(payload) + _BYTES_PER_FILE) as handle:
        torch.save(payload, handle)


def payload_digest(payload: dict) -> str:
    """The SHA-256 a checkpoint file carries of its own contents (its DIGEST_KEY entry left out). It covers every
    leaf of the payload, in sorted order of its path (dict keys as repr, list indices as [i], tuple indices as (i),
    joined by '/'): a tensor as "path<TAB>tensor<TAB>dtype shape<LF>" followed by its raw bytes (C order), any
    other value as "path<TAB>type<TAB>repr<LF>". So it does not depend on the device or the pickle's layout."""
    digest = hashlib.sha256()
    body = {key: value for key, value in payload.items() if key != DIGEST_KEY}
    for path, value in sorted(_leaves(body, ()), key=lambda leaf: leaf[0]):
        if isinstance(value, torch.Tensor):
            digest.update(f"{path}\ttensor\t{value.dtype} {list(value.shape)}\n".encode())
            flat = value.detach().cpu().contiguous().reshape(-1)  # a CUDA tensor (optimizer state): one at a time
            digest.update(memoryview(flat.view(torch.uint8).numpy()))
        else:
            digest.update(f"{path}\t{type(value).__name__}\t{value!r}\n".encode())
    return digest.hexdigest()


def _leaves(value, path: tuple[str, ...]):
    """(path, value) of every leaf of a nested state dict (an empty dict, list or tuple is a leaf)."""
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _leaves(item, (*path, repr(key)))
    elif isinstance(value, (list, tuple)) and value:
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, f"[{index}]" if isinstance(value, list) else f"({index})"))
    else:
        yield "/".join(path), value


def save_model_file(path: str | Path, step: int, config: ModelConfig, weights: dict, family: str = DEFAULT_FAMILY,
                    metadata: dict | None = None) -> Path:
    """Write one model file (weights + config: what sample, eval, convert and `-e` read)."""
    _save(_model_payload(step, config, weights, family, metadata), Path(path))
    return Path(path)


def write_marker(run_dir: str | Path, step: int, files: list[Path]) -> None:
    """The DONE marker, last: it vouches for `files` with their sizes and SHA-256s (read back from the disk, so a
    write the disk garbled is caught at the next load, not trusted)."""
    marker = {f.name: {"size": f.stat().st_size, "sha256": sha256_of(f)} for f in files}
    atomic_write_bytes(done_path(run_dir, step), (json.dumps(marker) + "\n").encode())


def verify_file(file: Path) -> str:
    """Check `file` against the SHA-256 its DONE marker records; returns what the marker vouches for, in words (the
    note for a file of an earlier llmpy, which carries no digest of its own)."""
    match = _FILE_RE.match(file.name)
    if not match:
        return "trusted as is"  # a file outside a run directory: nothing vouches for it
    marker = done_path(file.parent, int(match.group(1))).name
    try:
        recorded = (_marker_files(file.parent, int(match.group(1))) or {}).get(file.name)
    except DamagedMarker:
        return f"trusted as is (its {marker} marker is damaged)"
    if recorded is None:
        return "trusted as is"
    if recorded[1] is None:
        return f"trusted as is (its {marker} marker records its size only)"
    if sha256_of(file) != recorded[1]:
        raise LlmpyError(f"{file}: its contents do not match the SHA-256 in {marker} (changed or damaged after it "
                         "was written)")
    return f"the SHA-256 in its {marker} marker vouches for it"


def _non_finite(state, prefix: str = "") -> str | None:
    """The name of the first floating-point tensor in a (nested) state dict holding NaN or inf, or None."""
    if isinstance(state, torch.Tensor):
        return prefix if state.is_floating_point() and not bool(torch.isfinite(state).all()) else None
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    for key, value in items:
        found = _non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def export_model(run_dir: str | Path, model: nn.Module, metadata: dict, step: int = 0) -> Path:
    """A run directory holding only `model` (weights, no training state): what `convert --to llmpy` writes."""
    target = save_model_file(model_path(run_dir, step), step, model.config, model.state_dict(), family_of(model),
                             metadata)
    write_marker(run_dir, step, [target])
    return target


Say = Callable[[str], None]


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _read(file: Path, kind: str, say: Say) -> dict:
    """The payload of a "model" or "state" file, checked against the digest it carries; a file of an earlier llmpy,
    which carries none, against the SHA-256 its DONE marker records (if one does), and trusted with a note. (The
    digest covers everything the file holds: a second pass over the file for its marker's SHA-256 adds nothing.)"""
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # a flipped byte, a truncated or foreign file: say which and why, not a pickle traceback
        verify_file(file)  # a file its marker vouched for is said to be damaged since
        detail = str(exc).split(". ")[0].splitlines()[0][:160] if str(exc) else ""
        raise LlmpyError(f"{file} is damaged, or not an llmpy checkpoint: torch.load cannot read it "
                         f"({type(exc).__name__}{': ' + detail if detail else ''})") from None
    found = payload.get("format") if isinstance(payload, dict) else None
    current, earlier = _FORMATS[kind]
    if found == current:
        if payload.get(DIGEST_KEY) != payload_digest(payload):
            raise LlmpyError(f"{file} is damaged: its contents do not match the digest it was written with")
    elif found == earlier:
        say(f"note: {file} carries no digest (written by an earlier llmpy): {verify_file(file)}")
    else:
        other = next((name for name, formats in _FORMATS.items() if found in formats), None)
        raise LlmpyError(f"{file}: not an llmpy {_KIND_NAMES[kind]}" + (f" but an llmpy {_KIND_NAMES[other]}"
                         if other else " (a torch file without llmpy's format entry)"))
    return payload


def load_model(path: str | Path, say: Say | None = None) -> tuple[nn.Module, dict]:
    """The model in an llmpy model file or run directory, on the CPU; returns (model, payload without weights). For a
    run directory: its newest usable checkpoint, with one line saying which, and why each newer one was skipped.
    Lines go to `say` (default: stderr)."""
    say, path = say or _to_stderr, Path(path)
    if not path.is_dir():
        if not path.is_file():
            raise LlmpyError(f"{path}: no such checkpoint file or run directory")
        return _load_model_file(path, say)
    step, loaded, skipped = newest_usable(path, lambda step: _load_model_file(model_path(path, step), say))
    if step is None and not skipped:
        raise LlmpyError(f"{path}: no complete checkpoint (a model_%08d.pt file with its DONE_%08d marker)")
    if step is None:
        raise LlmpyError(f"{path}: no usable checkpoint: {skipped_reasons(skipped)}")
    say(f"warning: using {model_path(path, step)} (step {step}); skipped the newer {skipped_reasons(skipped)}"
        if skipped else f"using {model_path(path, step)} (step {step}, the newest complete checkpoint in {path})")
    return loaded


def _load_model_file(file: Path, say: Say) -> tuple[nn.Module, dict]:
    """load_model of one model file."""
    payload = _read(file, "model", say)
    if not isinstance(payload.get("model"), dict) or not isinstance(payload.get("model_config"), dict):
        raise LlmpyError(f"{file}: the checkpoint holds no weights or no model config")
    family = payload.get("family", DEFAULT_FAMILY)
    model = build_model(config_from_dict(family, payload["model_config"]), family)
    bad = _non_finite(payload["model"])
    if bad is not None:
        raise LlmpyError(f"{file}: the weights hold NaN or inf (first in {bad}); this model cannot be used")
    load_weights(model, payload.pop("model"), origin=file)
    return model, payload


def load_weights(model: nn.Module, weights: dict, origin: str | Path) -> None:
    """Load stored weights (without a tied head) into `model`; a mismatch is one line naming `origin`."""
    state = dict(weights)
    if is_tied(model.config):
        state["lm_head.weight"] = state.get("transformer.wte.weight")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise LlmpyError(f"{origin}: weights do not match the stored config ({str(exc).splitlines()[-1].strip()})") from None
    if missing or unexpected:
        raise LlmpyError(f"{origin}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")


# ------------------------------------------------------------------------------------------ markers and rotation


class DamagedMarker(LlmpyError):
    """A DONE marker that cannot be read, or holds something other than a marker's table (the message says what)."""


def _marker_files(run_dir: Path, step: int) -> dict[str, tuple[int, str | None]] | None:
    """{file name: (size, sha256 or None)} that the DONE marker of `step` vouches for; None when there is no marker.
    llmpy 0.1's markers hold sizes only, the first ones just the model file's name (size -1: unknown). Anything else
    (a flipped byte, a value of the wrong type) raises DamagedMarker."""
    marker = done_path(run_dir, step)
    try:
        data = marker.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DamagedMarker(f"{marker.name} cannot be read ({exc.strerror or exc})") from None
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise DamagedMarker(f"{marker.name} is damaged: not UTF-8 text (at byte {exc.start})") from None
    try:
        entries = json.loads(text)
    except json.JSONDecodeError:
        if text.strip() == model_path(run_dir, step).name:
            return {text.strip(): (-1, None)}
        if not text.strip():
            raise DamagedMarker(f"{marker.name} is damaged: empty") from None
        raise DamagedMarker(f"{marker.name} is damaged: not JSON, nor the model file's name (llmpy 0.1's first "
                            "markers)") from None
    if not isinstance(entries, dict) or not entries:
        raise DamagedMarker(f"{marker.name} is damaged: {_described(entries)}, not a table of files")
    return {name: _marker_entry(marker.name, step, name, entry) for name, entry in entries.items()}


def _marker_entry(marker: str, step: int, name: str, entry) -> tuple[int, str | None]:
    """(size, sha256 or None) of one file a marker lists: {"size": ..., "sha256": ...}, or llmpy 0.1's size alone."""
    match = _FILE_RE.match(name)
    if not match or int(match.group(1)) != step:
        raise DamagedMarker(f"{marker} is damaged: it lists {name!r}, not a file of checkpoint {step}")
    if isinstance(entry, dict) and set(entry) != {"size", "sha256"}:
        raise DamagedMarker(f"{marker} is damaged: the entry of {name} holds {sorted(entry)}, not size and sha256")
    size, sha256 = (entry["size"], entry["sha256"]) if isinstance(entry, dict) else (entry, None)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise DamagedMarker(f"{marker} is damaged: the size of {name} is {_described(size)}, not a number of bytes")
    if isinstance(entry, dict) and not (isinstance(sha256, str) and re.fullmatch(r"[0-9a-f]{64}", sha256)):
        raise DamagedMarker(f"{marker} is damaged: the SHA-256 of {name} is {_described(sha256)}, not a SHA-256")
    return size, sha256


def _described(value) -> str:
    """A JSON value in a few words, for a damaged marker's message."""
    if isinstance(value, (list, dict)):
        return f"{'a list' if isinstance(value, list) else 'a table'} of {len(value)}"
    return f"the text {value[:70]!r}" if isinstance(value, str) else json.dumps(value)


def checkpoint_problem(run_dir: Path, step: int, with_state: bool = False) -> str | None:
    """Why the checkpoint of `step` is incomplete (None: it is complete): no marker or a damaged one, or a file it
    must list (the model file; the state file too when `with_state`) missing or of another size than recorded."""
    marker = done_path(run_dir, step).name
    try:
        files = _marker_files(Path(run_dir), step)
    except DamagedMarker as exc:
        return str(exc)
    if files is None:
        return f"no {marker} marker"
    needed = [model_path(run_dir, step).name] + ([state_path(run_dir, step).name] if with_state else [])
    for name in needed:
        if name not in files:
            return f"{marker} does not list {name}"
    for name, (size, _) in files.items():
        path = Path(run_dir) / name
        if not path.is_file():
            return f"{name} is missing"
        actual = path.stat().st_size
        if size >= 0 and actual != size:
            return (f"{name} is {'truncated: ' if actual < size else 'of another size: '}{actual} bytes, its {marker} "
                    f"marker records {size}")
    return None


def checkpoint_is_complete(run_dir: Path, step: int, with_state: bool = False) -> bool:
    """The DONE marker is readable and every file it lists is there with the recorded size."""
    return checkpoint_problem(run_dir, step, with_state) is None


def _marked_steps(run_dir: str | Path) -> list[int]:
    """Steps with a DONE marker in `run_dir` (complete or not), newest first."""
    matches = (_DONE_RE.match(entry.name) for entry in Path(run_dir).iterdir())
    return sorted((int(match.group(1)) for match in matches if match), reverse=True)


def completed_steps(run_dir: str | Path, with_state: bool = False) -> list[int]:
    """Steps in `run_dir` with a complete checkpoint (and the training state, if asked), oldest first."""
    return [step for step in _marked_steps(run_dir)[::-1] if checkpoint_is_complete(Path(run_dir), step, with_state)]


Loaded = TypeVar("Loaded")


def newest_usable(run_dir: Path, read: Callable[[int], Loaded],
                  with_state: bool = False) -> tuple[int | None, Loaded | None, list[tuple[int, str]]]:
    """The newest checkpoint in `run_dir` that is complete and that `read(step)` reads without an LlmpyError:
    (its step, what `read` returned, (step, why) of each newer one skipped); (None, None, all of them) if none is."""
    skipped = []
    for step in _marked_steps(run_dir):
        problem = checkpoint_problem(run_dir, step, with_state)
        if problem is None:
            try:
                return step, read(step), skipped
            except LlmpyError as exc:
                problem = str(exc)
        skipped.append((step, problem))
    return None, None, skipped


def skipped_reasons(skipped: list[tuple[int, str]]) -> str:
    """'checkpoint 6 (why); checkpoint 4 (why)' for the checkpoints `newest_usable` skipped."""
    return "; ".join(f"checkpoint {step} ({why})" for step, why in skipped)


def prune_checkpoints(run_dir: str | Path, keep: int, keep_every: int = 0) -> list[int]:
    """Delete all but the newest `keep` checkpoints (-nk), sparing multiples of `keep_every` (-nm); returns steps removed."""
    if keep <= 0:
        return []
    run_dir = Path(run_dir)
    steps = completed_steps(run_dir)
    removable = [s for s in steps[:-keep] if not (keep_every > 0 and s % keep_every == 0)]
    for step in removable:
        remove_checkpoint(run_dir, step)
    return removable


def remove_checkpoint(run_dir: Path, step: int) -> None:
    """Delete the checkpoint of `step`: its marker first, so that a half-deleted checkpoint is never "complete"."""
    done_path(run_dir, step).unlink(missing_ok=True)
    model_path(run_dir, step).unlink(missing_ok=True)
    for state in run_dir.glob(f"state_{step:08d}_*.pt"):
        state.unlink(missing_ok=True)


def remove_unfinished(run_dir: Path) -> list[str]:
    """Delete what unfinished checkpoint writes left (a kill, a full disk): model and state files of a step with
    no DONE marker, and temporary files of writers no longer running. They would only take disk space, and a
    marker written later must never vouch for them. Returns the names removed."""
    removed = []
    for entry in run_dir.iterdir():
        file, temp = _FILE_RE.match(entry.name), _TEMP_RE.match(entry.name)
        if (file and not done_path(run_dir, int(file.group(1))).exists()) or (temp and not process_running(int(temp.group(1)))):
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return sorted(removed)


# ----------------------------------------------------------------------------------------------- the manager


class RngState:
    """Every RNG a run touches, as a Stateful piece."""

    def state_dict(self) -> dict:
        return rng_state()

    def load_state_dict(self, state: dict) -> None:
        set_rng_state(state)


@dataclasses.dataclass
class Restored:
    """What `CheckpointManager.restore` found: the step the run continues at, and where."""

    step: int
    path: Path
    saved_world_size: int
    skipped: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # newer checkpoints, and why
    complete: bool = True  # written by the end of the run (after its last evaluation), not by a stop or -n

    @property
    def skipped_note(self) -> str:
        """'; skipped the newer checkpoint 6 (why)', or '' when the newest was used."""
        return f"; skipped the newer {skipped_reasons(self.skipped)}" if self.skipped else ""


class CheckpointManager:
    """Saves and restores a run's Stateful pieces in a run directory, llm.c's layout (see the module docstring).

    `model` and `optimizer` are Stateful adapters whose `state_dict()` is a collective under FSDP (every rank calls
    it; rank 0 gets whole state dicts, the others None) and whose `load_state_dict()` takes the whole state on
    rank 0 (None elsewhere when `sharded`, where the shards are broadcast from rank 0)."""

    def __init__(self, run_dir: str | Path, job: Distributed, *, keep: int = 0, keep_every: int = 0,
                 sharded: bool = False, print_fn: Callable[..., None] = print):
        self.run_dir = Path(run_dir)
        self.job, self.keep, self.keep_every, self.sharded = job, keep, keep_every, sharded
        self.print_fn = print_fn
        self.last_saved: Path | None = None

    def save(self, step: int, model_config: ModelConfig, family: str, model: Stateful, optimizer: Stateful,
             pieces: dict[str, Stateful], metadata: dict) -> Path | None:
        """Write the checkpoint for `step` (model file, state file, DONE marker), then rotate (-nk, -nm). Weights or
        optimizer state holding NaN/inf are not written (None)."""
        weights, optimizer_state = model.state_dict(), optimizer.state_dict()  # collectives under FSDP
        target = model_path(self.run_dir, step)
        failure = None
        if self.job.is_main:
            bad = _non_finite(weights) or _non_finite({"optimizer": optimizer_state})
        outcome = broadcast_object(bad if self.job.is_main else None)
        if outcome is not None:  # a NaN model must never become "the last good checkpoint", nor push one out
            self.print_fn(f"warning: checkpoint {step} not written: NaN or inf in {outcome}; the last good one is "
                          f"{self.last_saved or 'none yet'}")
            return None
        if self.job.is_main:
            try:
                self._write(step, _model_payload(step, model_config, weights, family, metadata),
                            {"format": STATE_FORMAT, "step": step, "optimizer": optimizer_state,
                             **{name: piece.state_dict() for name, piece in pieces.items()}, **metadata})
                prune_checkpoints(self.run_dir, self.keep, self.keep_every)  # only after a complete checkpoint
            except Exception as exc:  # the other ranks wait below: tell them, rather than leave them hanging
                failure = exc
        # no rank moves on (or exits) before the checkpoint is complete, and all of them learn if it failed
        outcome = broadcast_object(None if failure is None else f"writing checkpoint {step} in {self.run_dir}: "
                                   f"{type(failure).__name__}: {failure}")
        if failure is not None:
            raise failure
        if outcome is not None:
            raise LlmpyError(f"rank 0 failed {outcome}")
        self.last_saved = target
        return target

    def _write(self, step: int, model_payload: dict, state: dict) -> None:
        """Rank 0: the model file, the state file, then the marker. A checkpoint that does not fit is refused before
        anything is written; one that fails anyway leaves none of its files. (A step rewritten over its own complete
        checkpoint, as a resume at the last step does, keeps that one's files: its marker's checksums then decide.)"""
        files = [model_path(self.run_dir, step), state_path(self.run_dir, step)]
        what = f"checkpoint {step}: {files[0]} and {files[1].name}"
        needed = saved_size(model_payload) + saved_size(state) + 2 * _BYTES_PER_FILE
        self.run_dir.mkdir(parents=True, exist_ok=True)
        check_free_space(what, needed, self.run_dir)  # both files are on disk at once, so both must fit
        rewrite = done_path(self.run_dir, step).exists()
        try:
            _save(model_payload, files[0])
            _save(state, files[1])
            write_marker(self.run_dir, step, files)
        except Exception as exc:
            if not rewrite:
                remove_checkpoint(self.run_dir, step)
            if isinstance(exc, DiskFullError):  # said for the whole checkpoint, with the space its removal freed
                raise disk_full_error(what, needed, self.run_dir) from exc
            raise

    def _read_newest(self, model_config: ModelConfig, config: TrainConfig, tokens_per_step: int
                     ) -> tuple[int | None, dict | None, dict | None, list[tuple[int, str]]]:
        """Rank 0: (step, weights, state, skipped newer checkpoints) of the newest usable checkpoint, which this run
        may continue (an error if it may not)."""
        def read(step: int) -> tuple[nn.Module, dict]:
            return (load_model(model_path(self.run_dir, step), say=self.print_fn)[0],
                    _read(state_path(self.run_dir, step), "state", self.print_fn))

        step, found, skipped = newest_usable(self.run_dir, read, with_state=True)
        if step is not None:
            saved, state = found
            saved_config = state.get("train_config") or {}
            saved_tokens = (state.get("loader") or {}).get("chunk_tokens", tokens_per_step)
            refused, allowed = run_changes(saved_config, saved_tokens, config, tokens_per_step)
            if refused:  # first: a changed --recipe/--family/--arch is named as such, not as a model mismatch
                raise LlmpyError(f"-y 1: {'; '.join(refused)}: {'that changes' if len(refused) == 1 else 'these change'} "
                                 f"the math of the run in {self.run_dir}, so it cannot be continued: use the saved "
                                 "value, or a new -o for a new run")
            if saved.config != model_config:
                raise LlmpyError(f"-y 1: the checkpoint at step {step} in {self.run_dir} is "
                                 f"{describe_model(saved.config)} but -e asks for {describe_model(model_config)}")
            for change in allowed:
                self.print_fn(f"resume: {change} (allowed: it does not change the math)")
            return step, saved.state_dict(), state, skipped
        return None, None, None, skipped

    def restore(self, model_config: ModelConfig, config: TrainConfig, tokens_per_step: int, model: Stateful,
                optimizer: Stateful, pieces: dict[str, Stateful]) -> Restored | None:
        """-y 1: load every piece from the newest readable checkpoint; None (and a warning) when there is none.
        Rank 0 reads and decides; the other ranks follow its choice (and its error, if it refuses)."""
        step, weights, state, skipped = None, None, None, []
        outcome: tuple = ("none", [])
        if self.job.is_main and self.run_dir.is_dir():
            removed = remove_unfinished(self.run_dir)
            if removed:
                self.print_fn(f"resume: removed {len(removed)} file(s) of unfinished checkpoint writes in "
                              f"{self.run_dir}: {', '.join(removed[:4])}{', ...' if len(removed) > 4 else ''}")
        if not (self.run_dir.is_dir() and any(self.run_dir.glob("DONE_*"))):
            return None  # a new run: -y 1 in a first launch (llm.c's scripts, --auto-restart) just starts
        if self.job.is_main:
            try:
                step, weights, state, skipped = self._read_newest(model_config, config, tokens_per_step)
                outcome = ("step", step, skipped) if step is not None else ("none", skipped)
            except LlmpyError as exc:
                outcome = ("error", str(exc))
            except Exception as exc:  # never leave the other ranks waiting in the broadcast below
                outcome = ("error", f"-y 1: cannot read the checkpoints in {self.run_dir} ({type(exc).__name__}: {exc})")
        outcome = broadcast_object(outcome)
        if outcome[0] == "error":
            raise LlmpyError(outcome[1])
        if outcome[0] == "none":
            why = f" ({skipped_reasons(outcome[1])})" if outcome[1] else ""
            self.print_fn(f"warning: no usable checkpoint in {self.run_dir}{why}; starting from step 0")
            return None
        step, skipped = outcome[1], outcome[2]
        if not self.sharded and not self.job.is_main:  # DDP: every rank reads the same files itself
            weights = load_model(model_path(self.run_dir, step), say=self.print_fn)[0].state_dict()
            state = _read(state_path(self.run_dir, step), "state", self.print_fn)
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"] if state is not None else None)
        if self.sharded:  # the other ranks read nothing: rank 0 sends the rest
            state = broadcast_object(None if state is None else {k: v for k, v in state.items() if k != "optimizer"})
        missing = [name for name in pieces if name not in state]
        if missing:
            raise LlmpyError(f"{state_path(self.run_dir, step)}: no saved {', '.join(missing)}; this checkpoint cannot "
                             "be continued exactly (use a new -o, or -e with its model file to start from its weights)")
        for name, piece in pieces.items():
            piece.load_state_dict(state[name])
        self.last_saved = model_path(self.run_dir, step)
        return Restored(step, self.last_saved, state.get("world_size", 1), skipped,
                        complete=state.get("run_complete", True))  # earlier checkpoints do not say: taken as done
