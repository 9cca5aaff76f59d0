"""Logits only where they are needed: the language-model head applied to selected positions.

A causal LM computes ``logits = lm_head(h)`` at every position, ``h (B, L, H)`` from the decoder. With a
response-only loss (≤ 16 labelled tokens of ~100–250) or a multiple-choice score (a few positions per row), nearly
all of that product is thrown away; on SmolLM2 the head (49,152 × 576) is ≈ 21 % of the forward multiply-adds.
:func:`selected_logits` runs the decoder once and the head on the selected rows of ``h`` only:

    logits_sel = lm_head(h[mask])                                   (T, V), T = mask.sum()

which is exactly ``lm_head(h)[mask]`` (the head acts on each position independently). It applies to models whose
forward is that plain product (:data:`PLAIN_HEAD_MODELS`); for any other model (logit scaling or soft-capping,
prompt-learning PEFT methods that prepend virtual tokens, a model wrapped by DDP/FSDP/DeepSpeed whose forward must be
called through the wrapper) it falls back to the full forward and indexes the result, so the answer is the same.
"""

from __future__ import annotations

import torch

# model_type values whose CausalLM forward is `lm_head(decoder(...).last_hidden_state)`, nothing else
PLAIN_HEAD_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2"})


def _causal_lm(model):
    """The transformers CausalLM inside ``model`` (a PeftModel or the model itself), or None when the decoder and
    head cannot be called separately without changing the result."""
    peft_config = getattr(model, "peft_config", None)
    if peft_config is not None:
        active = getattr(model, "active_adapter", None)
        config = peft_config.get(active) if isinstance(peft_config, dict) else None
        if config is None or getattr(config, "is_prompt_learning", False):
            return None
        model = model.get_base_model()
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODELS:
        return None
    if getattr(model, "get_output_embeddings", lambda: None)() is None:
        return None
    decoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return model if isinstance(decoder, torch.nn.Module) else None


def supports_selected_logits(model) -> bool:
    """Whether :func:`selected_logits` can skip the head on unselected positions for ``model``."""
    return _causal_lm(model) is not None


def selected_logits(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, positions: torch.Tensor
) -> torch.Tensor:
    """Logits at the selected positions.

    Args:
        model: a causal LM or a PeftModel around one.
        input_ids: (B, L) token ids.
        attention_mask: (B, L) or None.
        positions: (B, L) bool, the positions whose next-token logits are wanted.

    Returns:
        (T, V) logits in the head's dtype, rows in row-major order of ``positions`` (T = positions.sum()); equal to
        ``model(input_ids, attention_mask).logits[positions]``.
    """
    lm = _causal_lm(model)
    if lm is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        # prompt tuning / P-tuning put their virtual tokens first: the last L positions are the input's
        return logits[:, -input_ids.shape[1] :][positions]
    decoder = getattr(lm, lm.base_model_prefix)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return lm.get_output_embeddings()(hidden[positions])


def causal_lm_loss(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
) -> torch.Tensor:
    """Next-token cross-entropy with the head applied only at labelled positions; the same value and gradients as
    transformers' causal-LM loss.

    With ``shifted[b, t] = labels[b, t + 1]`` (``ignore_index`` past the end) and ``S = {(b, t): shifted[b, t] !=
    ignore_index}``::

        loss = Σ_{(b,t) ∈ S} −log softmax(logits[b, t])[shifted[b, t]] / n

    with ``n = num_items_in_batch`` when given (transformers' gradient-accumulation normalisation), else ``|S|``.
    Logits are upcast to float32 first, as transformers does.
    """
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=ignore_index)
    selected = shifted != ignore_index
    logits = selected_logits(model, input_ids, attention_mask, selected).float()
    targets = shifted[selected].to(logits.device)
    if num_items_in_batch is None:
        return torch.nn.functional.cross_entropy(logits, targets, reduction="mean")
    loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch
