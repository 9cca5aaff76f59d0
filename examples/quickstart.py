"""SMoA through the standard PEFT API on a small Llama-style model built here (no download needed)."""

import tempfile
import warnings

import torch
from peft import PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import smoa  # registers SMoA with PEFT

warnings.filterwarnings("ignore", category=FutureWarning)

config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
torch.manual_seed(0)
base = LlamaForCausalLM(config)
tokens = torch.randint(0, 256, (4, 32))

targets = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
model = get_peft_model(base, smoa.SMoAConfig(r=32, num_blocks=2, lora_alpha=32, target_modules=targets))
model.print_trainable_parameters()

optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
for _ in range(20):
    loss = model(tokens, labels=tokens).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
print(f"loss after 20 steps: {loss.item():.4f}")

layer = model.base_model.model.model.layers[0].self_attn.q_proj
delta = layer.get_delta_weight("default")
print(f"rank of ΔW in layer 0 q_proj: {torch.linalg.matrix_rank(delta).item()} (total branch rank r = 32)")

model.eval()
with torch.no_grad():
    expected = model(tokens).logits
with tempfile.TemporaryDirectory() as directory:
    model.save_pretrained(directory)
    torch.manual_seed(0)
    reloaded = PeftModel.from_pretrained(LlamaForCausalLM(config), directory)
    with torch.no_grad():
        print("reloaded outputs identical:", torch.equal(reloaded(tokens).logits, expected))
    merged = reloaded.merge_and_unload()
    with torch.no_grad():
        print(f"merged max |Δlogits|: {(merged(tokens).logits - expected).abs().max().item():.2e}")
