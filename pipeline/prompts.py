"""Versioned CoT and self-explanation prompts, rendered through the model's own chat template.

ExPO's positives are only in-distribution if the self-explanation prompt is the plain CoT prompt
plus a few tokens carrying the answer. The template therefore has one ``{hint}`` slot: empty for the
CoT prompt, the answer sentence for the explanation prompt. Nothing else may differ, by construction.

Question and answer text is untrusted: it is substituted with plain string replacement (never
``str.format`` or a template engine), so braces and LaTeX in it are inert.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.errors import ConfigError, ModelError

Kind = Literal["cot", "explanation"]
Message = dict[str, str]

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class PromptTemplate:
    """A named, versioned pair of prompts sharing everything but the hint."""

    version: str
    user: str  # must contain {question} and {hint} exactly once each
    answer_sentence: str  # must contain {answer} exactly once

    def __post_init__(self) -> None:
        for slot in ("{question}", "{hint}"):
            if self.user.count(slot) != 1:
                raise ValueError(f"prompt template {self.version!r}: 'user' must contain {slot} exactly once")
        if self.answer_sentence.count("{answer}") != 1:
            raise ValueError(
                f"prompt template {self.version!r}: 'answer_sentence' must contain {{answer}} exactly once"
            )

    def hint(self, answer: str) -> str:
        return self.answer_sentence.replace("{answer}", answer)

    def user_with(self, question: str, insert: str) -> str:
        """The user turn with ``insert`` in the hint slot: every conditioned prompt is the plain one
        plus exactly this text (pipeline/conditionings.py)."""
        # Fill {hint} first: the question itself may contain the literal text "{hint}".
        head, tail = self.user.split("{hint}")
        return head.replace("{question}", question) + insert + tail.replace("{question}", question)

    def user_text(self, question: str, answer: str | None = None) -> str:
        return self.user_with(question, "" if answer is None else self.hint(answer))

    def conversation(self, question: str, insert: str, system: str | None = None) -> list[Message]:
        """``system`` None gives no system turn (the chat template's default applies, e.g.
        Qwen2.5's "You are Qwen, ..."); "" an empty one."""
        head: list[Message] = [] if system is None else [{"role": "system", "content": system}]
        return [*head, {"role": "user", "content": self.user_with(question, insert)}]

    def messages(
        self, kind: Kind, question: str, answer: str | None = None, system: str | None = None
    ) -> list[Message]:
        """The conversation of a CoT request, or of ExPO's explanation request (the gold answer in
        the slot)."""
        if kind == "cot":
            return self.conversation(question, "", system)
        if kind == "explanation":
            if answer is None:
                raise ValueError("an explanation prompt needs the gold answer")
            return self.conversation(question, self.hint(answer), system)
        raise ValueError(f"unknown prompt kind {kind!r}")

    def instruction_parts(self) -> list[str]:
        """The template's own sentences (around the slots) long enough to recognise elsewhere."""
        static = self.user.replace("{question}", "\n").replace("{hint}", "\n")
        sentences = re.split(r"(?<=[.!?])\s+|\n", static)
        return [x.strip() for x in sentences if len(x.strip()) >= 20]

    @property
    def digest(self) -> str:
        """Short content hash: two runs with the same version string but edited text differ here."""
        text = f"{self.version}\0{self.user}\0{self.answer_sentence}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, str]:
        return {
            "version": self.version,
            "user": self.user,
            "answer_sentence": self.answer_sentence,
            "digest": self.digest,
        }


EXPO_V1 = PromptTemplate(
    version="expo-v1",
    user="{question}\n{hint}" + INSTRUCTION,
    answer_sentence="The correct final answer is {answer}. ",
)

TEMPLATES: dict[str, PromptTemplate] = {EXPO_V1.version: EXPO_V1}
DEFAULT_TEMPLATE = EXPO_V1.version


def get_template(version: str) -> PromptTemplate:
    try:
        return TEMPLATES[version]
    except KeyError:
        known = ", ".join(sorted(TEMPLATES))
        raise ConfigError(f"unknown prompt template {version!r}; known: {known}") from None


def load_tokenizer(path: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer, for rendering prompts without loading an engine."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)


def render_chat(tokenizer: Any, messages: list[Message]) -> str:
    """The exact text the model is conditioned on, through the model's own chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            "the model's tokenizer has no chat template; ExPO prompts must go through the model's own "
            "template (set one in tokenizer_config.json or chat_template.jinja)"
        )
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_chat(tokenizer: Any, messages: list[Message]) -> list[int]:
    """The rendered prompt as token ids, tokenised once by us (no special tokens added on top of
    the template's), so every engine and trainer sees exactly the same input."""
    return list(tokenizer.encode(render_chat(tokenizer, messages), add_special_tokens=False))


def system_of(messages: list[Message]) -> str | None:
    """The system turn a stored conversation (a ``prompt`` column) was generated with, or None
    when it had none (the chat template's default then applies)."""
    first = messages[0] if messages else None
    return first["content"] if isinstance(first, dict) and first.get("role") == "system" else None


def repeated_instruction(tokenizer: Any, template: PromptTemplate, system: str | None) -> str | None:
    """A warning when the rendered CoT prompt says the template's instruction twice: a chat
    template's default system prompt may carry it already (Qwen2.5-Math-Instruct's is exactly
    "Please reason step by step, and put your final answer within \\boxed{}.")."""
    rendered = render_chat(tokenizer, template.messages("cot", "Q", system=system))
    repeated = [part for part in template.instruction_parts() if rendered.count(part) > 1]
    if not repeated:
        return None
    return (
        f'the rendered prompt holds the instruction "{repeated[0]}" {rendered.count(repeated[0])} times: the system '
        "prompt (the chat template's default, or prompts.system) repeats it. Set prompts.system to a text without "
        "it, or to '' for an empty system turn"
    )


def chat_template_digest(tokenizer: Any) -> str:
    return hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()[:12]
