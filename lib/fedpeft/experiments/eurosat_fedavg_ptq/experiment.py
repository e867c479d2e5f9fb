"""EuroSAT: FedAvg of a small CNN, then post-training quantization: what the study needs to know of this experiment (see :mod:`fedpeft.core.registry`)."""

from fedpeft.core.registry import Experiment, MainScore

EXPERIMENT = Experiment(
    name="eurosat_fedavg_ptq",
    title="EuroSAT: FedAvg of a small CNN, then post-training quantization",
    seed_report="003_4ffed47dd2e2f732.txt",
    notebook="notebooks/04_eurosat_fedavg_ptq.ipynb",
    history=("round", "server_accuracy"),
    main_score=MainScore(where="scalar", key="server_accuracy", label="test accuracy (%)", scale=100.0),
)
