"""Models: from a spec to a folder (resolve), to a tokenizer and weights (load), and trainable LoRA adapters (lora)."""
