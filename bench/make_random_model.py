"""A randomly initialised Qwen2 model, larger than the tiny one, with the tiny model's tokenizer.

For throughput checks on a GPU without downloading anything: the weights are random, so the texts
are noise that runs to max_tokens, which is what a throughput measurement wants.

    python bench/make_random_model.py --out /tmp/random-model [--hidden 1024] [--layers 12]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "data" / "tiny-model"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--max-position", type=int, default=4096)
    args = ap.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(TINY)
    config.hidden_size = args.hidden
    config.num_hidden_layers = args.layers
    config.num_attention_heads = args.heads
    config.num_key_value_heads = args.kv_heads
    config.head_dim = args.hidden // args.heads
    config.intermediate_size = int(args.hidden * 2.75)
    config.max_position_embeddings = args.max_position
    config.layer_types = ["full_attention"] * args.layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    for f in TINY.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens", "generation_config")):
            shutil.copy(f, out / f.name)
    params = sum(p.numel() for p in model.parameters())
    print(f"random Qwen2: {params / 1e6:.0f}M parameters, hidden {args.hidden}, {args.layers} layers -> {out}")


if __name__ == "__main__":
    main()
