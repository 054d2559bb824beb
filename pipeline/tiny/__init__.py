"""The tiny offline ExPO model: built, trained and evaluated on this CPU, deterministically.

Tests and the quickstart need a real model that never touches the network and shows the ExPO
situation: shown the answer, it writes a short reasoning ending in ``\\boxed{<answer>}``; without it,
it is mostly wrong. A 2-layer Qwen2 trained briefly on synthetic problems does exactly that: copying
an answer from the prompt is within reach of two attention layers, multi-digit arithmetic is not.
Half the training examples use the CoT prompt, half the self-explanation prompt (both through the
shipped chat template), so both prompts are in-distribution, as they are for a real instruct model.

:mod:`.synthetic` makes the problems, :mod:`.tokenizer` the tokenizer, :mod:`.build` the model.
"""

from pipeline.tiny.build import BUILD_RECIPE_VERSION, DEFAULT_TINY_MODEL_DIR, TinyRecipe, build_tiny_model
from pipeline.tiny.synthetic import synth_examples, synth_problem

__all__ = [
    "BUILD_RECIPE_VERSION",
    "DEFAULT_TINY_MODEL_DIR",
    "TinyRecipe",
    "build_tiny_model",
    "synth_examples",
    "synth_problem",
]
