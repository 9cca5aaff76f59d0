"""Real training steps on the packaged data: the LM head at labelled positions, length-grouped batches
(``run.py data``)."""

from __future__ import annotations

import torch
from harness import interleaved_medians


def bench_data(repeats: int, steps: int = 6) -> dict:
    """Real training steps on the packaged SmolLM2 and commonsense data (an 800-example slice, batch 8): the LM head
    at every position vs at labelled positions only, and random vs length-grouped batches; SMoA and LoRA at the same
    budget. ``steps`` batches spread evenly over the epoch are timed; the padding counts cover the whole epoch."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from smoa.lm_head import causal_lm_loss
    from smoa.tasks.prompts import collate_for_training
    from smoa.training.data import load_training_records, tokenize_records
    from smoa.training.recipe import load_recipe
    from smoa.training.trainer import build_model

    batch_size = 8
    recipe = load_recipe(
        None, train_limit=800, val_size=120, budget="matched", seed=0, method_args={"lora_dropout": 0.0}
    )
    models = {}
    for method in ("smoa", "lora"):
        models[method], tokenizer, _ = build_model(load_recipe(None, **{**recipe.to_dict(), "method": method}))
    train, _ = load_training_records(recipe)
    data = tokenize_records(train, tokenizer, recipe)
    lengths = [len(d["input_ids"]) for d in data]
    orders = {
        "random": torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist(),
        "grouped": list(LengthGroupedSampler(batch_size, lengths=lengths, generator=torch.Generator().manual_seed(0))),
    }
    pad = tokenizer.pad_token_id
    batches, padding = {}, {}
    for name, order in orders.items():
        all_batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        padding[name] = {
            "padded_tokens": sum(max(lengths[i] for i in b) * len(b) for b in all_batches),
            "real_tokens": sum(lengths),
        }
        picked = [all_batches[round(k * (len(all_batches) - 1) / (steps - 1))] for k in range(steps)]
        batches[name] = [collate_for_training([data[i] for i in b], pad) for b in picked]

    def runner(model, head: str, order: str):
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        model.train()

        def step() -> None:
            for b in batches[order]:
                optimizer.zero_grad(set_to_none=True)
                if head == "full":
                    loss = model(**b).loss
                else:
                    loss = causal_lm_loss(model, b["input_ids"], b["attention_mask"], b["labels"])
                loss.backward()
                optimizer.step()

        return step

    configs = [("full", "random"), ("labelled", "random"), ("labelled", "grouped")]
    runs = {f"{m}/{h}/{o}": runner(models[m], h, o) for m in models for h, o in configs}
    medians = interleaved_medians(runs, repeats)
    with torch.no_grad():
        b = batches["random"][0]
        model = models["smoa"].eval()
        loss_gap = abs(
            model(**b).loss.item() - causal_lm_loss(model, b["input_ids"], b["attention_mask"], b["labels"]).item()
        )
    rows = []
    for name, seconds in medians.items():
        method, head, order = name.split("/")
        rows.append(
            {
                "method": method,
                "head": head,
                "order": order,
                "seconds_per_step": seconds / steps,
                "steps_per_s": steps / seconds,
            }
        )
        print(f"  {name:24s} {seconds / steps:6.2f} s/step")
    return {
        "rows": rows,
        "padding": padding,
        "steps": steps,
        "batch": batch_size,
        "loss_gap": loss_gap,
        "repeats": repeats,
    }
