"""Weeds with a QLoRA head across federated farmers: the experiment's name, settings and plan/report keys.

Seed: ``../shared/seeds/000_9acb0cb5a4275956.txt``. Notebook: ``notebooks/01_weeds_qlora_federated.ipynb``. Runs are in
:mod:`.runs` (one DVC stage each), tables, claims and the conclusion in :mod:`.report`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fedpeft.core.config import Settings, Spec, load_settings, seeds_spec, threads_spec
from fedpeft.models.backbones import BACKBONES
from fedpeft.models.head import ARMS, COMPUTE_DTYPES

EXPERIMENT = "weeds_qlora_federated"
SOURCES = ("generated", "cwfid", "weedsgalore")
SCENARIOS = ("centralized", "fedavg", "diloco", "diloco_nesterov")
ENGINES = ("inprocess", "flower", "deployment")
SCHEMA: dict[str, Spec] = {
    "source": Spec(str, choices=SOURCES, doc="generated fields, CWFID tiles (local) or WeedsGalore (paper)"),
    "generated_fields": Spec(int, low=6, high=10_000, doc="fields generated for source=generated"),
    "weedsgalore_dir": Spec(str, doc="WeedsGalore release folder, relative to the data root"),
    "image_size": Spec(int, low=32, high=1024, doc="pixels; samples are resized to image_size x image_size"),
    "tile_grid": Spec(list, item=int, low=1, high=64, min_items=2, doc="[rows, cols] tiles per CWFID image"),
    "min_plant_fraction": Spec(float, low=0.0, high=1.0, doc="tiles with less plant area have no dominant plant"),
    "val_fraction": Spec(float, low=0.05, high=0.5, doc="share of training fields held out for validation"),
    "test_fraction": Spec(float, low=0.05, high=0.5, doc="share of fields for the test set (source=generated, folds=0)"),
    "folds": Spec(int, low=0, high=100, doc="0: one fixed test split; k >= 2: k-fold over fields, the run of seed s tests on "
                                            "fold s mod k, so k seeds test every sample once (not for weedsgalore)"),
    "backbone": Spec(str, choices=BACKBONES),
    "backbone_checkpoint": Spec(str, nullable=True, doc="a YOLO .pt file under the data root (paper: yolo11s-cls.pt); null: yaml weights"),
    "views": Spec(int, low=1, high=256, doc="augmented views cached per training image"),
    "num_farmers": Spec(int, low=2, high=10_000),
    "arm": Spec(str, choices=ARMS, doc="the main adapter: qlora (NF4 head + LoRA) or lora"),
    "compare_arms": Spec(list, item=str, choices=ARMS, doc="other adapters run on the FedAvg scenario"),
    "lora_rank": Spec(int, low=1, high=4096),
    "lora_alpha": Spec(float, low=1e-6, high=10_000),
    "lora_dropout": Spec(float, low=0.0, high=0.99),
    "target_module": Spec(str, doc="the head's linear layer"),
    "compute_dtype": Spec(str, choices=tuple(COMPUTE_DTYPES), doc="NF4 compute dtype (the seed: fp16 on its GPU)"),
    "double_quant": Spec(bool),
    "batch_size": Spec(int, low=1, high=65_536),
    "learning_rate": Spec(float, low=1e-8, high=10.0),
    "weight_decay": Spec(float, low=0.0, high=1.0),
    "centralized_rounds": Spec(int, low=1, high=10_000, doc="evaluations of the centralized run (its steps = rounds x local steps)"),
    "centralized_local_steps": Spec(int, low=1, high=100_000),
    "fedavg_rounds": Spec(int, low=1, high=10_000),
    "fedavg_local_steps": Spec(int, low=1, high=100_000),
    "diloco_rounds": Spec(int, low=1, high=10_000),
    "diloco_local_steps": Spec(int, low=1, high=100_000),
    "diloco_outer_lr": Spec(float, low=1e-6, high=10.0, doc="the real DiLoCo's outer SGD learning rate"),
    "diloco_momentum": Spec(float, low=0.0, high=0.999, doc="its Nesterov momentum"),
    "seeds": seeds_spec(),
    "rank_sweep": Spec(list, item=int, low=1, high=1024, doc="extra LoRA ranks on the FedAvg scenario"),
    "fp16_transport": Spec(bool, doc="also run FedAvg with adapters sent in fp16"),
    "heterogeneous_scenarios": Spec(list, item=str, choices=SCENARIOS, doc="scenarios rerun with uneven farmers"),
    "engine": Spec(str, choices=ENGINES, doc="engine of the planned runs: the in-process loop, Flower's simulation, or "
                                             "Flower's Deployment Engine (a SuperLink and one SuperNode per farmer)"),
    "deployment_scenarios": Spec(list, item=str, choices=SCENARIOS[1:], doc="scenarios rerun with uneven farmers on the "
                                 "deployment engine, each farmer behind a link shaped to its bandwidth (measured, not modelled)"),
    "deployment_seeds": seeds_spec(doc="the seeds (some or all of seeds) those "
                             "scenarios are rerun with on the deployment engine: each run starts some twenty Flower processes"),
    "deployment_clientapps": Spec(list, item=str, choices=("per-message", "resident"), min_items=1, doc="how those runs' "
                                  "SuperNodes run their ClientApps, each a run of its own: per-message (Flower's way, a "
                                  "process per message that imports torch and loads the job) and resident (that process "
                                  "imports Flower only and hands the message to the farmer's long-lived client); with "
                                  "engine: deployment, every planned run uses the first"),
    "step_fractions": Spec(list, item=float, low=0.01, high=1.0, min_items=1, doc="each farmer's share of the step budget, cycled"),
    "bandwidth_mbps": Spec(list, item=float, low=0.001, high=1e6, min_items=1, doc="farmers' links in Mbit/s, cycled"),
    "latency_s": Spec(float, low=0.0, high=3600),
    "dropout_prob": Spec(float, low=0.0, high=0.99, doc="chance a farmer drops out of a round (heterogeneous runs)"),
    "price_idr_per_mb": Spec(float, low=0.0, high=1e12, doc="mobile data price per MB (the seed's MB = MiB)"),
    "usd_per_idr": Spec(float, low=0.0, high=1e6),
    "economics_farmers": Spec(int, low=1, high=1_000_000_000),
    "cycles_per_year": Spec(int, low=1, high=365),
    "torch_threads": threads_spec(),
}

#: The seed's reported figures, quoted, not measured.
SEED = {
    "adapter_params": 8_460, "total_params": 9_400_000, "saving_per_sync_pct": 99.91, "per_sync_kb": 33.0,
    "fedavg_total_mb": 128.9, "diloco_total_mb": 12.9, "full_model_mb": 35.9, "peak_vram_mb": 479.3,
    "val_acc": {"centralized": 0.750, "fedavg": 0.854, "diloco": 0.875},
    "val_f1": {"centralized": 0.447, "fedavg": 0.682, "diloco": 0.779},
    "fedavg_syncs": 200, "diloco_syncs": 20, "farmers": 10, "rank": 4, "classes": 3,
}


#: Keys that decide which runs exist (a run's scenario, seed, adapter arm, rank and transport are in its spec).
PLAN_KEYS = frozenset({"seeds", "arm", "lora_rank", "compare_arms", "rank_sweep", "fp16_transport", "heterogeneous_scenarios",
                       "engine", "deployment_scenarios", "deployment_seeds", "deployment_clientapps"})
#: Keys only the report reads (the seed's economics).
REPORT_KEYS = frozenset({"price_idr_per_mb", "usd_per_idr", "economics_farmers", "cycles_per_year"})


def load(profile: str, overrides: dict[str, Any] | None = None) -> Settings:
    s = load_settings(profile, EXPERIMENT, SCHEMA, overrides)
    if s["folds"] == 1 or (s["folds"] and s["source"] == "weedsgalore"):
        raise ValueError(f"{EXPERIMENT}.folds = {s['folds']} is not allowed with source = {s['source']!r}: use 0 (one fixed "
                         "split) or k >= 2 folds over fields of source generated or cwfid (WeedsGalore has its own split)")
    if s["engine"] != "inprocess" and s["fp16_transport"]:
        raise ValueError(f"{EXPERIMENT}.fp16_transport = true is not allowed with engine = {s['engine']!r}: the Flower engines "
                         "carry fp32 only; set fp16_transport: false or engine: inprocess")
    if not set(s["deployment_seeds"]) <= set(s["seeds"]):
        raise ValueError(f"{EXPERIMENT}.deployment_seeds = {s['deployment_seeds']!r} is not allowed: each must be one of "
                         f"seeds = {s['seeds']!r} (a deployment run reruns an in-process run of the same seed)")
    for key in ("fedavg_local_steps", "diloco_local_steps"):
        starved = [f for f in s["step_fractions"] if round(f * s[key]) < 1]
        if starved:
            raise ValueError(f"{EXPERIMENT}.step_fractions = {s['step_fractions']!r} is not allowed with {key} = {s[key]}: a "
                             f"farmer with fraction {starved[0]} would get {starved[0]} x {s[key]} < 1 step, which the "
                             f"report would misstate; use fractions of at least {1 / s[key]:.3g}")
    if len(s["tile_grid"]) != 2:
        raise ValueError(f"{EXPERIMENT}.tile_grid = {s['tile_grid']!r} is not allowed; it must be [rows, cols]")
    return s


@dataclass
class ScenarioRun:
    scenario: str
    seed: int
    arm: str
    rank: int
    transport: str = "fp32"
    heterogeneous: bool = False
    engine: str = "inprocess"
    clientapps: str = "per-message"  # deployment engine only: how the SuperNodes run their ClientApps

    @property
    def label(self) -> str:
        extra = ([] if not self.heterogeneous else ["uneven"]) + ([] if self.engine == "inprocess" else [self.engine])
        extra += [] if self.clientapps == "per-message" else [self.clientapps]
        return " ".join([self.scenario, self.arm, f"r{self.rank}", self.transport, *extra])

    def args(self) -> dict[str, Any]:
        """The run's spec as its record holds it (``clientapps`` only where it is not the default, so the records of
        runs made before the setting existed keep their identity)."""
        args = asdict(self)
        if self.clientapps == "per-message":
            del args["clientapps"]
        return args


def main_label(s: Settings, scenario: str) -> str:
    return ScenarioRun(scenario, 0, s["arm"], s["lora_rank"]).label


def planned_runs(s: Settings) -> list[ScenarioRun]:
    """Every run of the notebook: the main scenarios, the adapter, rank and transport comparisons on FedAvg, the
    heterogeneous farmers, each for every seed, and those rerun on the deployment engine over shaped links for each
    of ``deployment_seeds``."""
    arm, rank, engine = s["arm"], s["lora_rank"], s["engine"]
    apps = s["deployment_clientapps"][0] if engine == "deployment" else "per-message"  # engine: deployment runs all that way
    specs = [ScenarioRun(sc, seed, arm, rank, engine=engine, clientapps=apps) for sc in SCENARIOS for seed in s["seeds"]]
    specs += [ScenarioRun("fedavg", seed, a, rank, engine=engine, clientapps=apps) for a in s["compare_arms"] if a != arm for seed in s["seeds"]]
    specs += [ScenarioRun("fedavg", seed, arm, r, engine=engine, clientapps=apps) for r in s["rank_sweep"] if r != rank for seed in s["seeds"]]
    if s["fp16_transport"]:
        specs += [ScenarioRun("fedavg", seed, arm, rank, "fp16", engine=engine, clientapps=apps) for seed in s["seeds"]]
    specs += [ScenarioRun(sc, seed, arm, rank, heterogeneous=True, engine=engine, clientapps=apps) for sc in s["heterogeneous_scenarios"]
              for seed in s["seeds"]]
    if engine != "deployment":
        specs += [ScenarioRun(sc, seed, arm, rank, heterogeneous=True, engine="deployment", clientapps=mode)
                  for mode in s["deployment_clientapps"] for sc in s["deployment_scenarios"] for seed in s["deployment_seeds"]]
    return specs


def data_files(s: Settings) -> list[str]:
    """The data-root files (manifest paths; a trailing ``/``: a whole folder) this profile's runs read."""
    files = {"generated": [], "cwfid": ["cwfid/"], "weedsgalore": [f"{s['weedsgalore_dir']}/"]}[s["source"]]
    return files + ([s["backbone_checkpoint"]] if s["backbone_checkpoint"] else [])
