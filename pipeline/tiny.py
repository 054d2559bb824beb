"""The tiny offline ExPO model: built, trained and evaluated on this CPU, deterministically.

Tests and the quickstart need a real model that never touches the network and shows the ExPO
situation: shown the answer, it writes a short reasoning ending in ``\\boxed{<answer>}``; without it,
it is mostly wrong. A 2-layer Qwen2 trained briefly on synthetic problems does exactly that: copying
an answer from the prompt is within reach of two attention layers, multi-digit arithmetic is not.
Half the training examples use the CoT prompt, half the self-explanation prompt (both through the
shipped chat template), so both prompts are in-distribution, as they are for a real instruct model.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from pipeline.prompts import EXPO_V1, PromptTemplate
from pipeline.store import file_sha256

BUILD_RECIPE_VERSION = "tiny-expo-6"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2's own split rule: transformers 5 rebuilds any qwen2 tokenizer with it, so training with
# anything else would make tokenizer.json and AutoTokenizer disagree.
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


@dataclass(frozen=True)
class TinyRecipe:
    """Everything that determines the built bytes. Changing a field changes the model."""

    seed: int = 1234
    n_train: int = 64000
    vocab_size: int = 640
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 1
    intermediate_size: int = 512
    max_positions: int = 2048
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 50
    max_len: int = 320
    threads: int = 2
    n_eval: int = 60
    template: str = EXPO_V1.version


# ----------------------------------------------------------------------------------------------
# Synthetic problems. Each generator returns (question, answer, reasoning lines); the last
# reasoning line ends in "= answer", which makes copying the hinted answer far more reliable.

NAMES = ["Ava", "Ben", "Carla", "Dev", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kemal", "Lena"]
ITEMS = ["apples", "marbles", "books", "stamps", "coins", "cards", "shells", "pencils", "tickets", "beads"]
WORDS = [
    "Let",
    "Find",
    "Compute",
    "Suppose",
    "Determine",
    "the",
    "value",
    "of",
    "a",
    "real",
    "number",
    "function",
    "such",
    "that",
    "for",
    "all",
    "integers",
    "points",
    "triangle",
    "circle",
    "radius",
    "area",
    "sum",
    "product",
    "probability",
    "sequence",
    "polynomial",
    "roots",
    "equation",
    "line",
    "angle",
    "positive",
    "least",
    "greatest",
    "common",
    "divisor",
    "digits",
    "remainder",
    "when",
    "divided",
    "by",
    "is",
    "and",
    "if",
    "in",
    "with",
    "what",
    "how",
    "many",
    "ways",
    "can",
    "be",
]
LATEX_BITS = [
    "$x^2 + {a}x + {b} = 0$",
    "$f(x) = {a}x - {b}$",
    "$\\frac{{{a}}}{{{b}}}$",
    "$\\sqrt{{{a}}}$",
    "$\\triangle ABC$",
    "$AB = {a}$",
    "${a} \\cdot {b}$",
    "$n \\geq {a}$",
    "$\\log_{{{a}}} {b}$",
    "$\\pi r^2$",
    "$\\binom{{{a}}}{{{b}}}$",
    "$y = {a}x + {b}$",
    "$\\angle A = {a}^\\circ$",
    "$\\{{1, 2, \\ldots, {a}\\}}$",
    "$|x - {a}| < {b}$",
    "$\\dfrac{{{a}}}{{{b}}}$",
    "$x_{{{a}}}$",
]


def _frac_latex(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _num(rng: random.Random) -> int:
    # Wide ranges: a tiny model can then neither memorise results nor compute them.
    return rng.choice([rng.randint(2, 99), rng.randint(10, 999), rng.randint(100, 9999)])


def _gen_add(rng: random.Random) -> tuple[str, str, list[str]]:
    a, b = _num(rng), _num(rng)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    q = rng.choice(
        [
            f"What is ${a}+{b}$?",
            f"Compute ${a} + {b}$.",
            f"Find the sum of ${a}$ and ${b}$.",
            f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?",
        ]
    )
    return q, str(a + b), [f"We add {a} and {b}.", f"{a} + {b} = {a + b}"]


def _gen_sub(rng: random.Random) -> tuple[str, str, list[str]]:
    a, b = _num(rng), _num(rng)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    q = rng.choice(
        [
            f"What is ${a}-{b}$?",
            f"Compute ${a} - {b}$.",
            f"{name} had {max(a, b)} {item} and gave away {min(a, b)}. How many {item} are left?",
        ]
    )
    if "gave away" in q:
        a, b = max(a, b), min(a, b)
    return q, str(a - b), [f"We subtract {b} from {a}.", f"{a} - {b} = {a - b}"]


def _gen_mul(rng: random.Random) -> tuple[str, str, list[str]]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    item = rng.choice(ITEMS)
    q = rng.choice(
        [
            f"What is ${a} \\times {b}$?",
            f"Compute ${a} \\cdot {b}$.",
            f"There are {a} boxes with {b} {item} in each box. How many {item} are there in total?",
        ]
    )
    return q, str(a * b), [f"We multiply {a} by {b}.", f"{a} \\times {b} = {a * b}"]


def _gen_div(rng: random.Random) -> tuple[str, str, list[str]]:
    b, c = rng.randint(2, 40), rng.randint(2, 99)
    a = b * c
    item = rng.choice(ITEMS)
    q = rng.choice(
        [
            f"What is ${a} \\div {b}$?",
            f"Compute $\\frac{{{a}}}{{{b}}}$.",
            f"{a} {item} are shared equally among {b} children. How many {item} does each child get?",
        ]
    )
    return q, str(c), [f"We divide {a} by {b}.", f"{a} \\div {b} = {c}"]


def _gen_two_step(rng: random.Random) -> tuple[str, str, list[str]]:
    a, b, c = rng.randint(2, 60), rng.randint(2, 60), rng.randint(2, 500)
    if rng.random() < 0.5:
        q = rng.choice([f"What is ${a} \\cdot {b} + {c}$?", f"Evaluate ${a} \\times {b} + {c}$."])
        ans = a * b + c
        steps = [f"First {a} \\times {b} = {a * b}.", f"Then {a * b} + {c} = {ans}"]
    else:
        q = rng.choice([f"What is $({a} + {b}) \\cdot {c}$?", f"Evaluate $({a}+{b}) \\times {c}$."])
        ans = (a + b) * c
        steps = [f"First {a} + {b} = {a + b}.", f"Then {a + b} \\times {c} = {ans}"]
    return q, str(ans), steps


def _gen_fraction(rng: random.Random) -> tuple[str, str, list[str]]:
    x = Fraction(rng.randint(1, 19), rng.randint(2, 20))
    y = Fraction(rng.randint(1, 19), rng.randint(2, 20))
    op = rng.choice(["+", "-", "\\cdot"])
    value = x + y if op == "+" else x - y if op == "-" else x * y
    q = rng.choice(
        [
            f"Compute ${_frac_latex(x)} {op} {_frac_latex(y)}$. Express your answer as a common fraction.",
            f"What is ${_frac_latex(x)} {op} {_frac_latex(y)}$?",
        ]
    )
    ans = _frac_latex(value)
    return q, ans, ["We combine the fractions and simplify.", f"{_frac_latex(x)} {op} {_frac_latex(y)} = {ans}"]


def _gen_linear(rng: random.Random) -> tuple[str, str, list[str]]:
    a, b, c = rng.randint(2, 30), rng.randint(-99, 99), rng.randint(-200, 200)
    x = Fraction(c - b, a)
    bs = f"+ {b}" if b >= 0 else f"- {-b}"
    q = rng.choice([f"Solve for $x$: ${a}x {bs} = {c}$.", f"If ${a}x {bs} = {c}$, what is $x$?"])
    ans = _frac_latex(x)
    return q, ans, [f"We get {a}x = {c - b}.", f"x = {c - b} / {a} = {ans}"]


def _random_answer(rng: random.Random) -> str:
    """Answer strings in the formats MATH uses, so the copy skill covers them."""
    a, b = rng.randint(1, 99), rng.randint(2, 30)
    if rng.random() < 0.4:  # most MATH answers are plain integers
        return str(rng.choice([rng.randint(0, 20), rng.randint(1, 999)]))
    kind = rng.randrange(16)
    if kind == 0:
        return f"\\frac{{{a}}}{{{b}}}"
    if kind == 1:
        return f"{rng.randint(2, 9)}\\sqrt{{{b}}}"
    if kind == 2:
        return f"\\frac{{\\sqrt{{{b}}}}}{{{rng.randint(2, 9)}}}"
    if kind == 3:
        return f"{a}\\pi"
    if kind == 4:
        return f"({rng.randint(-20, 20)},{rng.randint(-20, 20)})"
    if kind == 5:
        lo, hi = sorted(rng.sample(range(-30, 30), 2))
        return rng.choice("[(") + f"{lo},{hi}" + rng.choice("])")
    if kind == 6:
        return rng.choice([f"(-\\infty, {a}]", f"[{a}, \\infty)", f"(-\\infty,{-a})"])
    if kind == 7:
        vals = sorted(rng.sample(range(-20, 40), rng.randint(2, 4)))
        return rng.choice(["\\{" + ",".join(map(str, vals)) + "\\}", ", ".join(map(str, vals))])
    if kind == 8:
        return f"{a}^\\circ"
    if kind == 9:
        return f"\\text{{{rng.choice(NAMES)}}}"
    if kind == 10:
        return f"\\text{{({rng.choice('ABCDE')})}}"
    if kind == 11:
        return f"{a}.{rng.randint(1, 99)}"
    if kind == 12:
        return f"x^2{rng.choice('+-')}{a}x{rng.choice('+-')}{b}"
    if kind == 13:
        return rng.choice([f"{a}\\%", f"\\${a}", f"{a}.{rng.randint(10, 99)}\\%"])
    if kind == 14:
        return str(-rng.randint(1, 999))
    return f"{rng.randint(1, 9)},{rng.randint(100, 999)}"


def _gen_generic(rng: random.Random) -> tuple[str, str, list[str]]:
    """A MATH-looking question the model cannot solve; only the hint makes it answerable."""
    sentences = []
    for _ in range(rng.randint(1, 3)):
        words = rng.sample(WORDS, rng.randint(4, 12))
        bits = [
            rng.choice(LATEX_BITS).format(a=rng.randint(1, 99), b=rng.randint(1, 99)) for _ in range(rng.randint(1, 2))
        ]
        parts = words + bits
        rng.shuffle(parts)
        sentences.append(" ".join(parts).capitalize() + rng.choice([".", "?", "."]))
    q = " ".join(sentences)
    ans = _random_answer(rng)
    steps = [
        rng.choice(["We set up the problem.", "We use the given conditions.", "We simplify step by step."]),
        f"Working it out, the result is = {ans}",
    ]
    return q, ans, steps


def _gen_fact(rng: random.Random) -> tuple[str, str, list[str]]:
    """Single-digit facts (81 per operation): few enough to memorise, so the plain CoT is right on the
    easiest problems, as a real model is on easy MATH, and GRPO groups get mixed rewards."""
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    op = rng.randrange(4)
    if op == 0:
        return f"What is ${a}+{b}$?", str(a + b), [f"We add {a} and {b}.", f"{a} + {b} = {a + b}"]
    if op == 1:
        return f"Compute ${a} \\times {b}$.", str(a * b), [f"We multiply {a} by {b}.", f"{a} \\times {b} = {a * b}"]
    if op == 2:
        return f"What is ${a * b} \\div {b}$?", str(a), [f"We divide {a * b} by {b}.", f"{a * b} \\div {b} = {a}"]
    return f"What is ${a + b}-{b}$?", str(a), [f"We subtract {b} from {a + b}.", f"{a + b} - {b} = {a}"]


GENERATORS: list[Callable[[random.Random], tuple[str, str, list[str]]]] = [
    _gen_add,
    _gen_sub,
    _gen_mul,
    _gen_div,
    _gen_two_step,
    _gen_fraction,
    _gen_linear,
    _gen_fact,
    _gen_fact,
    _gen_fact,
    _gen_generic,
    _gen_generic,
    _gen_generic,
]


def synth_problem(rng: random.Random) -> tuple[str, str, str]:
    """(question, answer, response); the response ends with the boxed answer."""
    question, answer, steps = rng.choice(GENERATORS)(rng)
    response = "\n".join(steps) + f"\nThe final answer is \\boxed{{{answer}}}."
    return question, answer, response


def synth_examples(n: int, seed: int, template: PromptTemplate) -> list[tuple[list[dict[str, str]], str, str]]:
    """(prompt messages, response, answer), alternating CoT and self-explanation prompts."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        question, answer, response = synth_problem(rng)
        kind = "cot" if i % 2 == 0 else "explanation"
        out.append((template.messages(kind, question, answer), response, answer))
    return out


# ----------------------------------------------------------------------------------------------
# Build


def _train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _tokenize_example(
    tokenizer: Any, messages: list[dict[str, str]], response: str, max_len: int
) -> tuple[list[int], int]:
    from pipeline.prompts import render_chat

    prompt_ids = tokenizer.encode(render_chat(tokenizer, messages), add_special_tokens=False)
    response_ids = [*tokenizer.encode(response, add_special_tokens=False), tokenizer.eos_token_id]
    ids = (prompt_ids + response_ids)[:max_len]
    return ids, len(prompt_ids)


def build_tiny_model(
    out_dir: str | Path,
    recipe: TinyRecipe | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the tiny model from scratch and write it to ``out_dir`` (replaced atomically).

    Deterministic: same recipe, same thread count, same library versions give the same bytes.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    recipe = recipe or TinyRecipe()
    template = EXPO_V1 if recipe.template == EXPO_V1.version else None
    if template is None:
        raise ValueError(f"the tiny model recipe supports template {EXPO_V1.version!r} only")
    t0 = time.time()
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(recipe.threads)
    torch.use_deterministic_algorithms(True)
    try:
        examples = synth_examples(recipe.n_train, recipe.seed, template)
        eval_examples = synth_examples(recipe.n_eval * 2, recipe.seed + 1, template)
        corpus = [_chatml_text(m) + r + "<|im_end|>" for m, r, _ in examples[: min(len(examples), 8000)]]
        tokenizer = _train_tokenizer(corpus, recipe.vocab_size)
        log(f"tokenizer: {len(tokenizer)} tokens ({time.time() - t0:.1f}s)")

        encoded = [_tokenize_example(tokenizer, m, r, recipe.max_len) for m, r, _ in examples]
        torch.manual_seed(recipe.seed)
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=recipe.hidden_size,
            intermediate_size=recipe.intermediate_size,
            num_hidden_layers=recipe.layers,
            num_attention_heads=recipe.heads,
            num_key_value_heads=recipe.kv_heads,
            head_dim=recipe.hidden_size // recipe.heads,
            max_position_embeddings=recipe.max_positions,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            torch_dtype="float32",
        )
        model = Qwen2ForCausalLM(config)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"model: {n_params / 1e6:.2f} M parameters")
        _train(model, encoded, tokenizer.pad_token_id, recipe, log)
        metrics = evaluate_tiny(model, tokenizer, eval_examples, seed=recipe.seed)
        log(
            f"held-out ({recipe.n_eval} problems x 4 samples, T=1.0): "
            f"explanation accuracy {metrics['explanation_accuracy']:.1%}, "
            f"CoT accuracy {metrics['cot_accuracy']:.1%}"
        )
        model.generation_config.do_sample = True
        model.generation_config.temperature = 1.0
        model.generation_config.top_p = 1.0
        model.generation_config.max_new_tokens = 256
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id

        out_dir = Path(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out_dir.parent))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {
            "recipe_version": BUILD_RECIPE_VERSION,
            "recipe": asdict(recipe),
            "parameters": n_params,
            "metrics": metrics,
            "versions": {
                "torch": torch.__version__,
                "transformers": _version("transformers"),
                "tokenizers": _version("tokenizers"),
            },
        }
        (tmp / "build_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        _check_tokenizer_roundtrip(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        info["seconds"] = round(time.time() - t0, 1)
        info["files"] = {p.name: file_sha256(p) for p in sorted(out_dir.iterdir()) if p.is_file()}
        log(f"wrote {out_dir} in {info['seconds']}s")
        return info
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def _chatml_text(messages: list[dict[str, str]]) -> str:
    """The chat template rendered in plain Python, for the tokenizer corpus (no tokenizer exists yet)."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + "<|im_start|>assistant\n"


def _train(
    model: Any, encoded: list[tuple[list[int], int]], pad_id: int, recipe: TinyRecipe, log: Callable[[str], None]
) -> None:
    import torch

    rng = random.Random(recipe.seed + 2)
    order = list(range(len(encoded)))
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.98), weight_decay=0.01)

    def lr_at(step: int) -> float:
        if step < recipe.warmup:
            return recipe.lr * (step + 1) / recipe.warmup
        progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * progress))

    model.train()
    pos = len(order)
    t0 = time.time()
    for step in range(recipe.steps):
        if pos + recipe.batch_size > len(order):
            rng.shuffle(order)
            pos = 0
        batch = [encoded[i] for i in order[pos : pos + recipe.batch_size]]
        pos += recipe.batch_size
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, n_prompt) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
            mask[row, : len(ids)] = 1
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == recipe.steps - 1:
            log(f"step {step:4d}/{recipe.steps}  loss {loss.item():.3f}  ({time.time() - t0:.0f}s)")
    model.eval()


def evaluate_tiny(
    model: Any, tokenizer: Any, examples: list[tuple[list[dict[str, str]], str, str]], seed: int, samples: int = 4
) -> dict[str, float]:
    """Exact-match accuracy of the last boxed answer, per prompt kind (synthetic held-out set)."""
    import torch

    from pipeline.answers import last_boxed
    from pipeline.prompts import render_chat

    hits = {"cot": [0, 0], "explanation": [0, 0]}
    torch.manual_seed(seed)
    for messages, _, answer in examples:
        kind = "explanation" if "The correct final answer is" in messages[0]["content"] else "cot"
        ids = tokenizer.encode(render_chat(tokenizer, messages), add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                max_new_tokens=160,
                num_return_sequences=samples,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        for seq in out:
            text = tokenizer.decode(seq[ids.shape[1] :], skip_special_tokens=True)
            hits[kind][0] += int(last_boxed(text) == answer)
            hits[kind][1] += 1
    return {
        "cot_accuracy": round(hits["cot"][0] / max(1, hits["cot"][1]), 4),
        "explanation_accuracy": round(hits["explanation"][0] / max(1, hits["explanation"][1]), 4),
    }


def _check_tokenizer_roundtrip(model_dir: Path) -> None:
    """AutoTokenizer must give the ids tokenizer.json gives, or every engine sees other prompts."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(model_dir)
    sample = "What is $\\frac{3}{4}+12$?\nThe correct final answer is (-\\infty, 2]. Ünïcode 1,200 \\boxed{x}"
    if raw.encode(sample, add_special_tokens=False).ids != auto.encode(sample, add_special_tokens=False):
        raise RuntimeError("tokenizer.json and AutoTokenizer disagree; the tiny model would be inconsistent")


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


DEFAULT_TINY_MODEL_DIR = Path(__file__).resolve().parent.parent / "data" / "tiny-model"
