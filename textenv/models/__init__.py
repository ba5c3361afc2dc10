"""The models layer: loading the policy, tokenizer, reference and LoRA adapters with ``from_pretrained``
(:mod:`~textenv.models.loading`, :mod:`~textenv.models.lora`), and setting them up for an env in one call
(:func:`textenv.models.setup.load_models`)."""
