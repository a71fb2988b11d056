"""Training recipes: named sets of TrainConfig defaults. A recipe picks the model family, the optimizer, the
schedule and the batch policy; any flag given on the command line or in --config still wins over it.

- `classic` (the default): GPT-2 as OpenAI released it, trained with GPT-3's AdamW hyperparameters, as llm.c does.
  TrainConfig's own defaults are this recipe, so it sets nothing.
- `modern`: the speedrun line of work (modded-nanogpt, nanochat): the modern architecture (llmpy.modern: rotary,
  QK-norm, ReLU^2, RMSNorm, no biases, zero-init projections, untied soft-capped head, value embeddings, U-net
  skips) trained by Muon on the hidden matrices and Adam on embeddings, head and scalars (llmpy.train.muon), at
  a constant LR that decays linearly to zero over the last part of the run, without warmup or gradient clipping.
  `-l` is Muon's learning rate; the Adam groups run at fixed multiples of it. Values measured on one H200: see
  benchmarks/RESULTS.md ("The modern recipe").
- `frontier`: the modern recipe plus the speedrun's 2025-2026 architecture techniques (llmpy.frontier: the bigram
  hash embedding, smear, the sigmoid logit cap, attention/value-embedding/skip gates). Its `--arch` switches are
  merged with the user's: `--recipe frontier --arch smear=0` turns one off and keeps the others. Provisional: chosen
  from the speedrun's published results, not yet measured by llmpy on a GPU (docs/recipes.md says what is).
"""

from __future__ import annotations

from llmpy.config import RECIPE_NAMES
from llmpy.errors import LlmpyError
from llmpy.suggest import did_you_mean

RECIPES: dict[str, dict] = {
    "classic": {},
    "modern": {
        "family": "modern",
        "optimizer": "muon",
        "learning_rate": 0.05,
        "warmup_steps": 0,
        "lr_schedule": "wsd",
        "wsd_cooldown_frac": 0.5,
        "final_lr_frac": 0.0,
        "weight_decay": 0.0,
        "grad_clip": 0.0,
    },
}
RECIPES["frontier"] = {
    **RECIPES["modern"],
    "arch": "bigram=5,smear=1,softcap=0,sigmoid_cap=23,attn_gate=1,ve_gate=1,skip_gate=1",
}
# settings strings ("name=value,...") that a recipe and the user's flags merge, the user's value winning per name
MERGED_SETTINGS = ("arch", "optimizer_args")
assert tuple(RECIPES) == RECIPE_NAMES


def with_recipe(values: dict) -> dict:
    """TrainConfig field values (from a file and the command line) over their recipe's defaults."""
    name = values.get("recipe", "classic")
    if name not in RECIPES:
        raise LlmpyError(f"--recipe must be one of {', '.join(RECIPES)}, got {name!r}{did_you_mean(str(name), RECIPES)}")
    merged = {**RECIPES[name], **values}
    for field in MERGED_SETTINGS:
        if field in RECIPES[name] and field in values:
            merged[field] = merge_settings(RECIPES[name][field], values[field])
    return merged


def merge_settings(base: str, override: str) -> str:
    """"name=value,..." of `base` with each name that `override` gives set to its value there (names compared with
    "-" as "_"); `override`'s items that are not name=value are kept as they are, for their parser to refuse."""
    def items(text: str) -> list[tuple[str, str]]:
        parts = [part.strip() for part in str(text).split(",") if part.strip()]
        return [(part.partition("=")[0].strip().replace("-", "_") if "=" in part else part, part) for part in parts]

    chosen = dict(items(base))
    chosen.update(items(override))
    return ",".join(chosen.values())
