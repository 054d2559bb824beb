"""Thin training on the datasets we write: TRL does the optimisation; this package supplies the
data wiring, the ExPO term of ExP-GRPO, and the checkpoints the generation engines load next."""
