"""The models layer: loading the policy, tokenizer, reference and LoRA adapters with ``from_pretrained``."""
