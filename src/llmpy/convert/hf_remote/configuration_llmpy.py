"""The configuration of an llmpy modern-family model (GPT-2's sizes and vocabulary, with the architecture switches of
llmpy's `modern` and `frontier` recipes), for Hugging Face transformers. Written by `llmpy convert --to hf`; loaded
with `AutoConfig.from_pretrained(dir, trust_remote_code=True)`. Each switch is described in modeling_llmpy.py."""

try:  # transformers >= 5 renamed the base class; the old name stayed for a while
    from transformers import PreTrainedConfig as _BaseConfig
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import PretrainedConfig as _BaseConfig

# name -> default: llmpy's ModernConfig fields (the model's shape, then the switches)
SWITCHES = {
    "n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "padded_vocab_size": 50304,
    "rotary": 1, "rope_base": 10000, "qk_norm": 1, "relu2": 1, "rmsnorm": 1, "bias": 0, "zero_init": 1, "tie": 0,
    "softcap": 15.0, "value_embeds": 3, "unet": 1, "doc_mask": 0, "window": 0, "fp8_head": 0,
    "bigram": 0.0, "bigram_dim": 0, "smear": 0, "sigmoid_cap": 0.0, "attn_gate": 0, "ve_gate": 0, "skip_gate": 0,
    "rope_dims": 0, "key_offset": 0, "backout": 0, "untie_at": 0.0,
}
EOT_TOKEN = 50256  # GPT-2's <|endoftext|>: documents start at it (doc_mask); also bos, eos and padding


class LlmpyConfig(_BaseConfig):
    model_type = "llmpy"
    attribute_map = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
                     "max_position_embeddings": "block_size"}

    def __init__(self, vocab_size: int = 50257, **kwargs):
        self.vocab_size = vocab_size
        for name, default in SWITCHES.items():
            setattr(self, name, kwargs.pop(name, default))
        for token in ("bos_token_id", "eos_token_id", "pad_token_id"):
            kwargs.setdefault(token, EOT_TOKEN)
        kwargs["tie_word_embeddings"] = bool(self.tie)
        super().__init__(**kwargs)
