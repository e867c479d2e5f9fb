"""Local training: one contract (``contract``: ``Trainer``, ``TrainStats``, ``EvalResult``) and its trainers,
each device-aware (``device: auto`` uses CUDA when present). Imports :mod:`fedpeft.core`, :mod:`fedpeft.data`,
:mod:`fedpeft.quantization` and :mod:`fedpeft.models`.

Federated trainers: ``image`` (image classifiers), ``text`` (sequence classifiers, length-grouped batches),
``causal_lm`` (causal LMs on packed blocks, tokens/s), ``head`` (the weeds head on cached features, per-farmer
optimizer state). Centralized ones: ``sft`` (supervised fine-tuning with gradient accumulation) and
``diffusion`` (latent-diffusion LoRA with diffusers).
"""
