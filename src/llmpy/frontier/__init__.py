"""The frontier's architecture techniques (the NanoGPT speedrun, 2025-2026), one module each, used by the modern
family (llmpy.modern) behind its `--arch` switches. Each module holds one idea, its source and its math; the model
decides where it sits.

module       switch(es)                        idea
bigram       bigram, bigram_dim                a hashed table of (previous token, token) embeddings added to the
                                               residual stream, with a fixed random sign per bigram (the sign trick)
smear        smear                             a gated copy of the previous token's embedding added to each token's
gates        attn_gate, ve_gate, skip_gate     per-head sigmoid gates on attention outputs and value embeddings, and
                                               per-token gates on the U-net skips, each read from a few input dims
logit_cap    sigmoid_cap                       an asymmetric logit bound cap * sigmoid((logit + 5) / 7.5)
key_offset   rope_dims, key_offset             the keys' position-free dims taken from the previous position
untie        untie_at                          head and embedding trained as one tied weight, then apart
aux_loss     --mtp-weights, --prefix-loss      training-only losses on the same logits: tokens further ahead and
                                               the target's longest proper prefix token (any model family)

Gate matrices are small (heads x 12) and belong with the scalars in Adam, not in Muon: their modules say so with the
class attribute `optimizer_group = "scalar"` (read by llmpy.train.muon.muon_param_groups). Modules whose weights start
at a particular value re-initialise them in `reset_parameters`, which the model calls after its generic init.
"""
