"""A randomly initialised Qwen2 model, larger than the tiny one, with the tiny model's tokenizer or
Qwen2.5's real vocabulary.

For throughput checks on a GPU without downloading anything: the weights are random, so the texts
are noise that runs to max_tokens, which is what a throughput measurement wants.

    python bench/make_random_model.py --out /tmp/random-model [--hidden 1024] [--layers 12]
    python bench/make_random_model.py --out /tmp/qwen-vocab --tokenizer qwen2.5 --hidden 128 --layers 2 --check

``--tokenizer qwen2.5`` (needs ``pip install 'expo-data[bench]'``, see ``bench/real_vocab.py``) gives
the model Qwen2.5's 151,936-row vocabulary, a ChatML template with a default system prompt and a
generation_config.json with Qwen2.5-Instruct's sampling defaults (repetition_penalty 1.05): what a
real model costs per token in logits, and what it brings besides its weights. ``--check`` compares
the saved tokenizer with tiktoken on the package's ranks.
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
    ap.add_argument("--tokenizer", choices=["tiny", "qwen2.5"], default="tiny")
    ap.add_argument("--check", action="store_true", help="qwen2.5: compare the tokenizer with tiktoken")
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
    if args.tokenizer == "qwen2.5":
        import real_vocab

        config.vocab_size = real_vocab.VOCAB_SIZE
        config.bos_token_id = real_vocab.GENERATION_CONFIG["bos_token_id"]
        config.eos_token_id = real_vocab.GENERATION_CONFIG["eos_token_id"][0]
        config.pad_token_id = real_vocab.GENERATION_CONFIG["pad_token_id"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    if args.tokenizer == "qwen2.5":
        real_vocab.write_tokenizer(out)  # after save_pretrained: its generation_config.json is replaced
    else:
        for f in TINY.iterdir():
            if f.name.startswith(("tokenizer", "chat_template", "special_tokens", "generation_config")):
                shutil.copy(f, out / f.name)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"random Qwen2: {params / 1e6:.1f}M parameters, hidden {args.hidden}, {args.layers} layers, "
        f"vocabulary {config.vocab_size} ({args.tokenizer}) -> {out}"
    )
    if args.check and args.tokenizer == "qwen2.5":
        agree, total = real_vocab.check_against_tiktoken(out, _check_texts())
        print(f"tokenizer vs tiktoken: {agree}/{total} tokens agree")
        if agree != total:
            raise SystemExit("the saved tokenizer does not give tiktoken's ids")


def _check_texts() -> list[str]:
    """Text of the kinds the pipeline feeds a model: problems, solutions with LaTeX, chat markup."""
    texts = [p.read_text(encoding="utf-8") for p in (ROOT / "data" / "problems").glob("*.jsonl")]
    texts += [(ROOT / "README.md").read_text(encoding="utf-8"), (ROOT / "pipeline" / "answers.py").read_text()]
    texts += ["<|im_start|>user\nWhat is $\\frac{1}{2}+\\sqrt{3}$?<|im_end|>\n", "数学 ∑ café 1234567 \t\n\n  x"]
    return texts


if __name__ == "__main__":
    main()
