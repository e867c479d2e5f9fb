"""EuroSAT FedAvg + PTQ: the experiment's name, settings schema and which keys are plan or report keys.

Seed: ``../shared/seeds/003_4ffed47dd2e2f732.txt``. Notebook: ``notebooks/04_eurosat_fedavg_ptq.ipynb``. Runs are in
:mod:`.runs` (one DVC stage each), tables, claims and the conclusion in :mod:`.report`.
"""

from __future__ import annotations

from typing import Any

from fedpeft.core.config import SEED_HIGH, SEED_LOW, Settings, Spec, load_settings, seeds_spec, threads_spec
from fedpeft.federated.partition import SCHEMES
from fedpeft.quantization.ptq import PTQ_METHODS

EXPERIMENT = "eurosat_fedavg_ptq"
ENGINES = ("inprocess", "flower")

SCHEMA: dict[str, Spec] = {
    "source": Spec(str, choices=("generated", "eurosat_zip", "hub"), doc="where the images come from"),
    "hub_dataset": Spec(str, doc="hub name (or save_to_disk folder) for source=hub"),
    "generated_images_per_class": Spec(int, low=4, high=10_000, doc="images per class for source=generated"),
    "verify_checksum": Spec(bool, doc="check the zip against the data root's MANIFEST.sha256"),
    "global_test_fraction": Spec(float, low=0.05, high=0.5, doc="share held out as the server's test set (not for hub)"),
    "num_clients": Spec(int, low=1, high=10_000),
    "client_test_fraction": Spec(float, low=0.0, high=0.9, doc="each client's local test split"),
    "partition": Spec(str, choices=SCHEMES, doc="the main partition scheme (the seed: iid)"),
    "seeds": seeds_spec(doc="seeds of the main runs"),
    "compare_partitions": Spec(list, item=str, choices=SCHEMES, doc="extra partition schemes"),
    "compare_seeds": Spec(list, item=int, unique=True, low=SEED_LOW, high=SEED_HIGH, doc="seeds of the extra partition runs"),
    "dirichlet_alpha": Spec(float, low=1e-3, high=1e6, doc="Dirichlet concentration; smaller = more label skew"),
    "num_rounds": Spec(int, low=1, high=10_000),
    "local_epochs": Spec(int, low=1, high=1000),
    "batch_size": Spec(int, low=1, high=65_536),
    "learning_rate": Spec(float, low=1e-8, high=10.0),
    "fraction_train": Spec(float, low=0.01, high=1.0),
    "time_limit_s": Spec(float, low=1.0, high=1e7, nullable=True, doc="stop between rounds after this many seconds"),
    "train_precision": Spec(str, choices=("auto", "fp32", "bf16"), doc="auto: bf16 only on CPUs with native bf16"),
    "channels_last": Spec(bool),
    "eval_batch_size": Spec(int, low=1, high=65_536),
    "ptq_methods": Spec(list, item=str, choices=PTQ_METHODS, min_items=1),
    "calibration_images": Spec(int, low=1, high=1_000_000, doc="training images that calibrate int8_static"),
    "price_usd_per_mib": Spec(float, low=0.0, high=1e12, doc="link price; the seed's satellite link: $5 per MB (= MiB)"),
    "extra_rounds": Spec(int, low=0, high=10_000, doc="an extra run with this many rounds (0: none), to show what more rounds give"),
    "qat_rounds": Spec(int, low=0, high=10_000, doc="a quantization-aware arm over every main seed: its last this many of the "
                       "num_rounds rounds train with int8 fake quantization (0: no QAT arm; num_rounds: QAT from the start)"),
    "engine": Spec(str, choices=ENGINES),
    "torch_threads": threads_spec(),
}

#: Keys that decide which runs exist (a run's own partition, seed and rounds are in its spec).
PLAN_KEYS = frozenset({"partition", "seeds", "compare_partitions", "compare_seeds", "num_rounds", "extra_rounds", "qat_rounds"})
#: Keys only the report reads: changing them reruns the report stage alone.
REPORT_KEYS = frozenset({"price_usd_per_mib"})


def load(profile: str, overrides: dict[str, Any] | None = None) -> Settings:
    return load_settings(profile, EXPERIMENT, SCHEMA, overrides)


def data_files(s: Settings) -> list[str]:
    """The data-root files (manifest paths; a trailing ``/``: a whole folder) this profile's runs read."""
    return ["eurosat/EuroSAT_RGB.zip"] if s["source"] == "eurosat_zip" else []  # fedpeft.data.eurosat.EUROSAT_ZIP
