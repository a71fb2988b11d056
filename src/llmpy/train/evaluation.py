"""What a run does besides training, at -v/-s steps: val loss, HellaSwag (-h 1) and samples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from llmpy.data.loader import TokenLoader
from llmpy.distributed import Distributed
from llmpy.eval.hellaswag import evaluate_hellaswag
from llmpy.eval.val_loss import evaluate_loss
from llmpy.infer import generate
from llmpy.metrics.logger import RunLogger
from llmpy.runtime import Runtime
from llmpy.train.parallel import ParallelModel


@dataclass
class Evaluator:
    """The evals of one run; each logs its result and returns it."""

    model: ParallelModel
    runtime: Runtime
    job: Distributed
    logger: RunLogger
    print_fn: Callable[..., None]
    val_loader: TokenLoader | None = None
    val_max_steps: int = 20
    hellaswag_examples: list | None = None  # tokenized examples when -h 1
    tokenizer: object | None = None  # decodes samples; None: no sampling
    gen_tokens: int = 64
    sample_prompt: str = ""
    sample_top_k: int = 40
    seed: int = 42

    def val_loss(self, step: int) -> float | None:
        """Mean loss over -m val batches, through the training module (compiled, wrapped) under no_grad."""
        if self.val_loader is None:
            return None
        loss = evaluate_loss(self.model.train_module, self.val_loader, self.val_max_steps, self.runtime, self.job,
                             progress=True)
        self.logger.log_val(step, loss)
        self.print_fn(f"val loss {loss:.4f}")
        return loss

    def hellaswag(self, step: int) -> float | None:
        """HellaSwag acc_norm, logged as llm.c's `eval` line (the uncompiled model: shapes vary per batch)."""
        if not self.hellaswag_examples:
            return None
        scores = evaluate_hellaswag(self.model.module, self.hellaswag_examples, self.runtime.device,
                                    self.runtime.autocast, rank=self.job.rank, world_size=self.job.world_size,
                                    lockstep=self.model.sharded, progress=self.job.is_main)
        self.logger.log_eval(step, scores["acc_norm"], acc=scores["acc"], examples=scores["examples"])
        self.print_fn(f"HellaSwag: {scores['acc_norm']:.4f} acc_norm ({scores['examples']} examples)")
        return scores["acc_norm"]

    def sample(self, step: int) -> None:
        """Generate -g tokens from <|endoftext|> (or --sample-prompt) and print/log them. Under FSDP every rank
        takes part in each forward; the others generate the same text and stay silent."""
        if self.tokenizer is None or not (self.job.is_main or self.model.sharded):
            return
        prompt_ids = self.tokenizer.encode(self.sample_prompt) if self.sample_prompt else [self.tokenizer.eot_token]
        prompt = torch.tensor([prompt_ids], dtype=torch.long, device=self.runtime.device)
        # a private generator: sampling must not disturb the training RNG stream
        generator = torch.Generator(device=self.runtime.device).manual_seed(self.seed + step)
        module = self.model.module
        module.eval()
        out = generate(module, prompt, self.gen_tokens, top_k=self.sample_top_k, generator=generator,
                       autocast=self.runtime.autocast)
        module.train()
        text = self.tokenizer.decode(out[0, len(prompt_ids):].tolist())
        self.print_fn(f"generating:\n---\n{self.sample_prompt}{text}\n---")
        self.logger.log_event(step, "sample", text=self.sample_prompt + text)
