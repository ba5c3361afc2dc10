"""Memory of RLHF training per GPU, computed from published model shapes (arithmetic, no model is loaded).

For each model (0.5 B, 7 B, 70 B) and each mode it prints one row of a markdown table, in GiB per GPU:

* **policy**: the trained model's weights in the training dtype (bf16, 2 bytes per parameter); with LoRA the
  frozen base in bf16 plus the adapters in fp32.
* **reference**: a frozen bf16 copy of the policy for the KL penalty; 0 with LoRA (the reference is the policy
  with its adapters off, as textenv's ``lora=`` does).
* **reward model**: a bf16 model of the same shape with a scalar head instead of the LM head (the usual
  RLHF set-up: the reward model is fine-tuned from the same base).
* **gradients**: one per trainable parameter, in the dtype of that parameter (bf16 for full fine-tuning, fp32
  for LoRA adapters).
* **optimizer**: Adam's two fp32 moments, plus an fp32 master copy of each bf16 trainable weight (mixed
  precision: 12 bytes per parameter; LoRA adapters are fp32 already, so 8 bytes).
* **KV cache**: the policy's cache for ``--batch`` rows × ``--sequence`` tokens (prompt + completion) on each
  GPU, bf16: 2 (K and V) × layers × KV heads × head dim × 2 bytes per token. textenv's reference is lazy by
  default (no cache); an eager reference (``kl_penalty="dense"``) adds a second cache of the same size.

Modes: ``full`` (one GPU holds everything), ``lora`` (r = 16 on every attention and MLP projection),
``fsdp×8`` (full fine-tuning with policy, reference, reward model, gradients and optimizer sharded over 8 GPUs
by FSDP; each GPU generates its own rows, so its KV cache is not sharded) and ``lora+fsdp×8``.

Not counted: activations of the update (they depend on the micro-batch size and on gradient checkpointing),
FSDP's gathered layer buffers (one or two layers' full weights at a time), the CUDA context and allocator
fragmentation (budget 1–3 GiB per GPU for these).

    python benchmarks/memory_table.py [--batch 32] [--sequence 1024] [--lora-rank 16] [--gpus 8]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

GIB = 2**30
BF16, FP32 = 2, 4
DEVICE_GIB = 80  # an 80 GB accelerator (A100 80GB / H100), for the "fits" column


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer's shape, as its ``config.json`` gives it."""

    name: str
    source: str  # where the numbers come from
    hidden: int  # hidden_size
    intermediate: int  # intermediate_size (gated MLP: gate, up and down projections)
    layers: int  # num_hidden_layers
    heads: int  # num_attention_heads
    kv_heads: int  # num_key_value_heads (grouped-query attention when < heads)
    vocab: int  # vocab_size
    tied_embeddings: bool  # tie_word_embeddings: the LM head shares the input embedding
    qkv_bias: bool  # Qwen2 has biases on q, k, v

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def projections(self) -> list[tuple[int, int]]:
        """``(in, out)`` of every linear projection of one layer: q, k, v, o, gate, up, down."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return [(h, h), (h, kv), (h, kv), (h, h), (h, self.intermediate), (h, self.intermediate),
                (self.intermediate, self.hidden)]

    def layer_parameters(self) -> int:
        """One decoder layer: the projections, the q/k/v biases if any and two RMSNorm weights."""
        weights = sum(i * o for i, o in self.projections())
        bias = (self.hidden + 2 * self.kv_heads * self.head_dim) if self.qkv_bias else 0
        return weights + bias + 2 * self.hidden

    def parameters(self) -> int:
        """The causal LM: embedding, layers, final norm and the LM head unless tied."""
        embedding = self.vocab * self.hidden
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return embedding + self.layers * self.layer_parameters() + self.hidden + head

    def reward_parameters(self) -> int:
        """The same trunk with a scalar head (hidden → 1) instead of the LM head."""
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return self.parameters() - head + self.hidden

    def lora_parameters(self, rank: int) -> int:
        """LoRA adapters A (r × in) and B (out × r) on every projection of every layer."""
        return self.layers * sum(rank * (i + o) for i, o in self.projections())

    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * BF16


SHAPES = [
    Shape("Qwen2.5-0.5B", "huggingface.co/Qwen/Qwen2.5-0.5B config.json", hidden=896, intermediate=4864, layers=24,
          heads=14, kv_heads=2, vocab=151936, tied_embeddings=True, qkv_bias=True),
    Shape("Llama-2-7B", "huggingface.co/meta-llama/Llama-2-7b-hf config.json", hidden=4096, intermediate=11008,
          layers=32, heads=32, kv_heads=32, vocab=32000, tied_embeddings=False, qkv_bias=False),
    Shape("Llama-2-70B", "huggingface.co/meta-llama/Llama-2-70b-hf config.json", hidden=8192, intermediate=28672,
          layers=80, heads=64, kv_heads=8, vocab=32000, tied_embeddings=False, qkv_bias=False),
]


def memory_row(shape: Shape, mode: str, batch: int, sequence: int, rank: int, gpus: int) -> dict[str, float]:
    """Bytes per GPU of each part for ``shape`` trained in ``mode``."""
    params, adapters = shape.parameters(), shape.lora_parameters(rank)
    lora = mode.startswith("lora")
    shards = gpus if "fsdp" in mode else 1
    if lora:
        policy = params * BF16 + adapters * FP32
        reference, gradients, optimizer = 0, adapters * FP32, adapters * 2 * FP32
    else:
        policy = params * BF16
        reference, gradients, optimizer = params * BF16, params * BF16, params * 3 * FP32
    row = {
        "policy": policy / shards,
        "reference": reference / shards,
        "reward model": shape.reward_parameters() * BF16 / shards,
        "gradients": gradients / shards,
        "optimizer": optimizer / shards,
        "KV cache": shape.kv_bytes_per_token() * batch * sequence,
    }
    row["total"] = sum(row.values())
    return row


def table(batch: int, sequence: int, rank: int, gpus: int) -> str:
    """The markdown table of every shape × mode, GiB per GPU."""
    modes = ["full", "lora", f"fsdp×{gpus}", f"lora+fsdp×{gpus}"]
    columns = ["policy", "reference", "reward model", "gradients", "optimizer", "KV cache", "total"]
    lines = [
        "| model (params) | mode | " + " | ".join(columns) + f" | fits {DEVICE_GIB} GB? |",
        "|---|---|" + "---:|" * len(columns) + "---|",
    ]
    for shape in SHAPES:
        for mode in modes:
            row = memory_row(shape, mode, batch, sequence, rank, gpus)
            cells = " | ".join(f"{row[c] / GIB:.1f}" for c in columns)
            fits = "yes" if row["total"] <= 0.9 * DEVICE_GIB * 1e9 else "no"  # 10 % left for activations
            lines.append(f"| {shape.name} ({shape.parameters() / 1e9:.2f} B) | {mode} | {cells} | {fits} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="rows generated at once on each GPU")
    parser.add_argument("--sequence", type=int, default=1024, help="prompt + completion tokens per row")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs FSDP shards over")
    args = parser.parse_args()
    print(f"GiB per GPU; bf16 weights, fp32 Adam moments and master weights; KV cache for {args.batch} rows × "
          f"{args.sequence} tokens per GPU; LoRA r = {args.lora_rank}; 'fits' leaves 10 % of {DEVICE_GIB} GB "
          "for activations. Shapes:")
    for shape in SHAPES:
        print(f"- {shape.name}: hidden {shape.hidden}, {shape.layers} layers, {shape.heads} heads, {shape.kv_heads} KV "
              f"heads, vocab {shape.vocab}, {shape.parameters() / 1e9:.3f} B parameters "
              f"(LoRA {shape.lora_parameters(args.lora_rank) / 1e6:.1f} M), KV cache "
              f"{shape.kv_bytes_per_token() / 2**10:.0f} KiB/token; {shape.source}")
    print()
    print(table(args.batch, args.sequence, args.lora_rank, args.gpus))


if __name__ == "__main__":
    main()
