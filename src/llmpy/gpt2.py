"""Facts about OpenAI's GPT-2: its vocabulary and context, the four released checkpoints, and their scores."""

from __future__ import annotations

VOCAB_SIZE = 50257  # 50,000 BPE merges + 256 byte tokens + <|endoftext|>
# llm.c pads the vocab to a multiple of 128 so the head matmul tiles evenly; the padded rows are never predicted
PADDED_VOCAB_SIZE = 50304
BLOCK_SIZE = 1024  # positions (HF's n_positions)
EOT_TOKEN = 50256  # the id of <|endoftext|>, which also starts every document in pretraining
EOT_TEXT = "<|endoftext|>"
HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # Hugging Face names of the 124M ... 1558M checkpoints

# OpenAI's checkpoints by size: their shape, FineWeb val loss (llm.c's val split) and HellaSwag acc_norm, and the
# GPT-3 paper's HellaSwag for the same size.
REFERENCE = {
    "124M": {"n_layer": 12, "n_embd": 768, "gpt2_val_loss": 3.4250, "gpt2_hellaswag": 0.2945, "gpt3_hellaswag": 0.337},
    "350M": {"n_layer": 24, "n_embd": 1024, "gpt2_val_loss": 3.0831, "gpt2_hellaswag": 0.3752, "gpt3_hellaswag": 0.436},
    "774M": {"n_layer": 36, "n_embd": 1280, "gpt2_val_loss": 3.0006, "gpt2_hellaswag": 0.4320, "gpt3_hellaswag": 0.510},
    "1558M": {"n_layer": 48, "n_embd": 1600, "gpt2_val_loss": 2.8313, "gpt2_hellaswag": 0.4889,
              "gpt3_hellaswag": 0.547},
}


def reference_for(n_layer: int, n_embd: int) -> tuple[str, dict] | None:
    """(size, REFERENCE row) of the GPT-2 checkpoint with this depth and width, or None."""
    for size, ref in REFERENCE.items():
        if (ref["n_layer"], ref["n_embd"]) == (n_layer, n_embd):
            return size, ref
    return None
