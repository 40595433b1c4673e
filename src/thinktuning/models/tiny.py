"""A tiny Llama (the paper student's architecture family) built from a config, with no download: for dry runs of
whole pipelines on a CPU (``scripts/reproduce_paper.sh --dry-run``) and for tests.

Random weights alone would make end-of-turn a 1-in-49,152 event, so no rollout would ever finish and be eligible for
guidance. So the model's next-token distribution is made (almost) independent of context and chosen: near-zero
attention and MLP output projections keep the residual stream close to the token embedding; one embedding dimension
is constant 1 and the final norm keeps only it, so the logits are (almost) a fixed vector. ``favourites`` gives the
logits of the tokens that should stand out; every other token gets a small random logit.
"""

from __future__ import annotations

from pathlib import Path


def tiny_llama(tokenizer, favourites: dict[int, float], *, seed: int = 0, hidden: int = 32, context: int = 2048):
    """A 2-layer ``LlamaForCausalLM`` over ``tokenizer``'s vocabulary. ``favourites`` maps token ids to logits (for
    example ``{eos: 9.0}``: with 49k other tokens at ~0, p(eos) ~ e^9 / (e^9 + 49k) ~ 0.14). Its ``context``
    positions hold a teacher's ~1,000-token instructions plus a case."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    eos = tokenizer.eos_token_id
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(0.01)
            layer.mlp.down_proj.weight.mul_(0.01)
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        # the final norm's input has rms ~ 1/sqrt(hidden) (the constant 1 dominates), so h_0 ~ sqrt(hidden)
        scale = 1 / hidden**0.5
        model.lm_head.weight[:, 0] = torch.randn(len(tokenizer)) * 0.1 * scale
        for token, logit in favourites.items():
            model.lm_head.weight[token, 0] = logit * scale
    return model


def save_tiny_llama(folder: str | Path, tokenizer, favourites: dict[int, float], **kwargs) -> Path:
    """:func:`tiny_llama` written with its tokenizer as a Hugging Face folder any ``model.student`` can name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tiny_llama(tokenizer, favourites, **kwargs).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
