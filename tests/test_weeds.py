"""Weeds experiment: dominant-class labels, loaders, the NF4 head, adapters, farmers, the network model."""

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from fedpeft.core.integrity import DataFileError
from fedpeft.data import weeds
from fedpeft.federated.ledger import serialize_state
from fedpeft.federated.loop import Client, RoundConfig, exchanged_keys, run_federated
from fedpeft.federated.network import NetworkModel
from fedpeft.federated.strategies import build_strategy
from fedpeft.models.head import adapted_head, base_head, effective_update_rank, frozen_weight_state, lora_parameter_count
from fedpeft.training.head import FeatureSet, FeatureViews, HeadTrainer, inverse_frequency_weights

bnb = pytest.importorskip("bitsandbytes")


# --- labelling --------------------------------------------------------------------------------------------------

def test_dominant_class_on_hand_made_masks():
    m = np.zeros((4, 4), np.uint8)
    assert weeds.dominant_class(m, weeds.SEED_CLASS_MAP) is None  # soil only
    m[0, :3] = 2
    m[1, :2] = 1
    assert weeds.dominant_class(m, weeds.SEED_CLASS_MAP) == 1  # class 2 (3 px) beats class 1 (2 px) -> label 1
    m[2, :2] = 1  # now 4 px of class 1: label 0
    assert weeds.dominant_class(m, weeds.SEED_CLASS_MAP) == 0
    tie = np.array([[1, 2], [0, 0]])
    assert weeds.dominant_class(tie, weeds.SEED_CLASS_MAP) == 0  # ties go to the lower class id
    five = np.array([[5, 5], [4, 1]])
    assert weeds.dominant_class(five, weeds.SEED_CLASS_MAP) == 2  # the seed's 3+ -> 2
    sparse = np.zeros((10, 10), np.uint8)
    sparse[0, 0] = 2
    assert weeds.dominant_class(sparse, weeds.SEED_CLASS_MAP, min_plant_fraction=0.02) is None
    assert weeds.dominant_class(sparse, weeds.SEED_CLASS_MAP, min_plant_fraction=0.01) == 1


def test_tiles_take_the_label_of_their_own_mask():
    image = np.zeros((4, 6, 3), np.uint8)
    image[:, 3:] = 200
    mask = np.zeros((4, 6), np.uint8)
    mask[:, :3] = 1  # left half: class 1
    mask[:2, 3:] = 2  # right top: class 2; right bottom: soil (dropped)
    s = weeds.samples_from_masks([image], [mask], ["f"], weeds.CWFID_CLASS_MAP, weeds.CWFID_CLASSES, size=8, grid=(2, 2))
    assert s.labels.tolist() == [0, 1, 0]  # tiles (0,0), (0,1), (1,0); (1,1) has no plants
    assert s.images.shape == (3, 3, 8, 8) and s.images.dtype == torch.uint8
    assert s.images[1].float().mean() == pytest.approx(200, abs=1)
    assert list(s.groups) == ["f", "f", "f"]


def test_cwfid_colours():
    ann = np.zeros((1, 3, 3), np.uint8)
    ann[0, 1] = (0, 255, 0)
    ann[0, 2] = (255, 0, 0)
    assert weeds.cwfid_mask(ann).tolist() == [[0, 1, 2]]


def test_generated_fields_are_labelled_by_the_rule():
    s = weeds.load_generated(12, 32, seed=0)
    images, masks = weeds.generated_fields(12, 32, seed=0)
    expected = [weeds.dominant_class(m, weeds.SEED_CLASS_MAP) for m in masks]
    assert s.labels.tolist() == [e for e in expected if e is not None]
    assert s.class_counts().sum() == len(s)


def _write_weedsgalore(root, ids_by_split, size=8):
    (root / "splits").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, ids in ids_by_split.items():
        (root / "splits" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i, image_id in enumerate(ids):
            date = image_id.split("_")[0]
            (root / date / "images").mkdir(parents=True, exist_ok=True)
            (root / date / "semantics").mkdir(parents=True, exist_ok=True)
            for band, value in zip("RGB", (10, 20, 30), strict=True):
                Image.fromarray(np.full((size, size), value, np.uint8)).save(root / date / "images" / f"{image_id}_{band}.png")
            for band in ("NIR", "RE"):
                Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / date / "images" / f"{image_id}_{band}.png")
            mask = np.zeros((size, size), np.uint8)
            mask[: 2 + i] = 3 + i  # classes 3, 4, ... -> label 2
            mask[-1] = 1
            Image.fromarray(mask).save(root / date / "semantics" / f"{image_id}.png")
    lines = [f"{hashlib.sha256(f.read_bytes()).hexdigest()}  ./{f.relative_to(root.parent).as_posix()}"
             for f in sorted(root.rglob("*")) if f.is_file()]
    (root.parent / "MANIFEST.sha256").write_text("\n".join(lines) + "\n")  # every data-root file goes through it


def test_weedsgalore_loader_on_a_fixture_in_the_release_layout(tmp_path):
    root = tmp_path / "weedsgalore-dataset"
    _write_weedsgalore(root, {"train": ["2023-05-25_0000", "2023-05-30_0001"], "test": ["2023-05-25_0002"]})
    train = weeds.load_weedsgalore(root, "train", size=8)
    assert len(train) == 2 and train.labels.tolist() == [2, 2]
    assert train.images[0, :, 0, 0].tolist() == [10, 20, 30]  # R, G, B bands in that order
    assert list(train.groups) == ["2023-05-25_0000", "2023-05-30_0001"]
    with pytest.raises(FileNotFoundError, match="val.txt"):
        weeds.load_weedsgalore(root, "val", size=8)
    (root / "2023-05-25" / "semantics" / "2023-05-25_0000.png").write_bytes(b"swapped")
    with pytest.raises(DataFileError, match=r"2023-05-25_0000.png has sha256 .* but .*MANIFEST.sha256 records"):
        weeds.load_weedsgalore(root, "train", size=8)


def test_cwfid_split_keeps_the_doubly_listed_image_in_test_only(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDPEFT_VERIFY_DATA", "0")  # a hand-made file, not in any manifest
    (tmp_path / "train_test_split.yaml").write_text("train: [1, 2, 28]\ntest: [3, 28]\n")
    assert weeds.cwfid_split(tmp_path) == {"train": [1, 2], "test": [3, 28]}
    with pytest.raises(FileNotFoundError, match="train_test_split.yaml"):
        weeds.cwfid_split(tmp_path / "missing")


# --- the head and its adapters -----------------------------------------------------------------------------------

def _head(classes=3, features=1280):
    torch.manual_seed(0)
    return base_head(nn.Linear(features, classes), dropout=0.2)


def test_qlora_head_is_4bit_and_only_adapters_train():
    model = adapted_head(_head(), "qlora", rank=4, alpha=32, dropout=0.05)
    layer = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert layer.weight.dtype == torch.uint8
    weight_bytes = layer.weight.numel() * layer.weight.element_size()
    assert weight_bytes == 1280 * 3 * 4 // 8  # an eighth of fp32
    state = layer.weight.quant_state
    stats = state.absmax.numel() * state.absmax.element_size()
    assert 0 < stats < weight_bytes  # plus its (double-quantized) block statistics
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 and all(".lora_A." in k or ".lora_B." in k for k in trainable)
    assert sum(trainable.values()) == lora_parameter_count(1280, 3, 4) == 5_132
    assert set(exchanged_keys(model, "trainable")) == set(trainable)


@pytest.mark.parametrize("rank, expected", [(4, 5_132), (8, 10_264), (16, 20_528)])
def test_exact_adapter_counts_for_the_seed_head(rank, expected):
    model = adapted_head(_head(), "lora", rank=rank, alpha=32, dropout=0.05)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_seed_architecture_counts_on_yolo11s_cls():
    from fedpeft.models.backbones import build_backbone
    from fedpeft.models.counting import count_parameters

    bb = build_backbone("yolo11s-cls", 3)
    # 6,724,008 with the 1000-class head (ultralytics' yaml) - 1,281,000 + 3,843 for Linear(1280, 3)
    assert count_parameters(bb.full_model) == 5_446_851
    assert (bb.head.in_features, bb.head.out_features) == (1280, 3)
    x = bb.normalize(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    with torch.no_grad():
        assert bb.features(x).shape == (2, 1280)


def test_many_farmers_from_one_base_head():
    base = _head()
    before = base.linear.weight.clone()
    farmers = [adapted_head(base, "qlora", 4, 32, 0.05, seed=i) for i in range(3)]
    assert isinstance(base.linear, nn.Linear) and not isinstance(base.linear, bnb.nn.Linear4bit)
    assert torch.equal(base.linear.weight, before)  # the base is never quantized in place
    frozen = [frozen_weight_state(f) for f in farmers]
    for other in frozen[1:]:
        assert other.keys() == frozen[0].keys()
        assert all(torch.equal(other[k], frozen[0][k]) for k in frozen[0])
    w = [next(m for m in f.modules() if isinstance(m, bnb.nn.Linear4bit)).weight for f in farmers]
    assert len({t.data_ptr() for t in w}) == 3  # independent copies


def test_rank_above_the_class_count_does_not_raise_the_update_rank():
    model = adapted_head(_head(), "lora", rank=8, alpha=32, dropout=0.0)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            nn.init.normal_(p)
    assert effective_update_rank(model) == 3


@pytest.mark.parametrize("kwargs, match", [
    (dict(rank=0), "lora rank = 0"),
    (dict(alpha=-1.0), "lora alpha = -1.0"),
    (dict(target="classifier"), r"target_modules \['classifier'\] name no linear layer"),
    (dict(arm="full"), "arm = 'full'"),
    (dict(dropout=1.5), "lora dropout = 1.5"),
])
def test_bad_adapter_settings(kwargs, match):
    args = dict(arm="qlora", rank=4, alpha=32.0, dropout=0.05) | kwargs
    target = args.pop("target", "linear")
    with pytest.raises(ValueError, match=match):
        adapted_head(_head(), args["arm"], args["rank"], args["alpha"], args["dropout"], target=target)


def test_inverse_frequency_weights():
    w = inverse_frequency_weights(torch.tensor([0, 0, 0, 1]), 3)
    assert torch.allclose(w, torch.tensor([4 / 9, 4 / 3, 0.0]))


# --- training and the round loop ----------------------------------------------------------------------------------

def _views(n=24, views=3, dim=16, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=g) * 3
    feats = centres[labels][:, None, :] + torch.randn(n, views, dim, generator=g)
    return FeatureViews(feats, labels)


def test_one_client_over_rounds_is_centralized_training():
    data = _views()
    a, b = (adapted_head(_head(3, 16), "lora", 4, 8, 0.0, seed=0) for _ in range(2))
    two_rounds = HeadTrainer(local_steps=3, rounds=2, batch_size=8, lr=0.01)
    one_round = HeadTrainer(local_steps=6, rounds=1, batch_size=8, lr=0.01)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    two_rounds.train(a, data, g1)
    two_rounds.train(a, data, g1)
    torch.manual_seed(0)
    one_round.train(b, data, g2)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), n


def test_trainer_learns_separable_features():
    data = _views(n=60)
    model = adapted_head(_head(3, 16), "qlora", 4, 8, 0.0)
    trainer = HeadTrainer(local_steps=150, rounds=1, batch_size=16, lr=0.02)
    trainer.train(model, data, torch.Generator().manual_seed(0))
    stats = trainer.evaluate(model, FeatureSet(data.features[:, 0], data.labels))
    assert stats["accuracy"] > 0.9 and 0.9 < stats["macro_f1"] <= 1.0


def test_network_dropout_keeps_rounds_valid():
    clients = [Client(f"f{i}", _views(seed=i)) for i in range(3)]
    model = adapted_head(_head(3, 16), "lora", 2, 4, 0.0)
    net = NetworkModel([1.0, 10.0], latency_s=0.1, dropout_prob=0.5, seed=3)
    trainer = HeadTrainer(local_steps=2, rounds=6, batch_size=4, lr=0.01)
    res = run_federated(model, clients, build_strategy("fedavg"), trainer, RoundConfig(num_rounds=6, exchange="trainable", evaluate_clients=False),
                        progress=False, network=net)
    ch = res.client_history
    expected = [[net.reports(r, i) for i in range(3)] for r in range(1, 7)]
    assert ch["reported"].tolist() == [x for row in expected for x in row]
    reporting = [sum(row) for row in expected]
    assert res.history["num_clients"].tolist()[1:] == reporting
    assert 0 in reporting or sum(reporting) < 18  # the draw really drops farmers
    ledger = res.ledger.frame()
    assert (ledger["direction"] == "down").sum() == 18 and (ledger["direction"] == "up").sum() == sum(reporting)
    for r, n in enumerate(reporting, start=1):  # a round nobody reports keeps the loss missing, not an error
        assert np.isnan(res.history.loc[res.history["round"] == r, "train_loss"].iloc[0]) == (n == 0)
    times = net.round_seconds(ch, ledger, [c.cid for c in clients])
    assert times["reported"].tolist() == reporting and (times["simulated_s"] > 0.1).all()


def test_round_seconds_on_known_messages():
    net = NetworkModel([8.0], latency_s=0.5)  # 8 Mbit/s = 1e6 bytes/s
    ch = pd.DataFrame([{"round": 1, "client": "a", "train_s": 2.0, "reported": True},
                       {"round": 1, "client": "b", "train_s": 1.0, "reported": False}])
    ledger = pd.DataFrame([{"round": 1, "client": "a", "direction": "down", "bytes": 1_000_000},
                           {"round": 1, "client": "a", "direction": "up", "bytes": 2_000_000},
                           {"round": 1, "client": "b", "direction": "down", "bytes": 1_000_000}])
    t = net.round_seconds(ch, ledger, ["a", "b"])
    assert t["simulated_s"].iloc[0] == pytest.approx(0.5 + 1 + 2 + 0.5 + 2)
    assert t["reported"].iloc[0] == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(bandwidth_mbps=[0.0]), "bandwidth_mbps"),
    (dict(bandwidth_mbps=[1.0], dropout_prob=1.0), "dropout_prob = 1.0"),
    (dict(bandwidth_mbps=[1.0], latency_s=-1), "latency_s = -1"),
])
def test_bad_network_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NetworkModel(**kwargs)


def test_ledger_carries_only_the_adapter():
    clients = [Client(f"f{i}", _views(seed=i)) for i in range(2)]
    model = adapted_head(_head(3, 16), "qlora", 4, 8, 0.0)
    res = run_federated(model, clients, build_strategy("fedavg"), HeadTrainer(2, 1, 4, 0.01),
                        RoundConfig(num_rounds=1, exchange="trainable", evaluate_clients=False), progress=False)
    adapter = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert set(res.final_state) == set(adapter)
    assert res.ledger.frame()["bytes"].tolist() == [len(serialize_state(adapter))] * 4


def test_more_farmers_than_fields_is_refused():
    from fedpeft.experiments.weeds_qlora_federated.runs import Features, make_farmers

    feats = Features(torch.zeros(4, 2, 8), torch.tensor([0, 1, 0, 1]), np.array([0, 0, 1, 1]),
                     FeatureSet(torch.zeros(1, 8), torch.tensor([0])), FeatureSet(torch.zeros(1, 8), torch.tensor([0])), 2, [])
    assert [len(c.train) for c in make_farmers(feats, 2, seed=0, local_steps=3)] == [2, 2]
    with pytest.raises(ValueError, match="num_farmers = 3 is more than the 2 training fields"):
        make_farmers(feats, 3, seed=0, local_steps=3)


def test_batchnorm_calibration_gives_a_random_yolo_usable_features():
    from fedpeft.models.backbones import build_backbone, calibrate_batchnorm

    bb = build_backbone("yolo11n-cls", 3)
    images = weeds.load_generated(8, 64, seed=0).images
    with torch.no_grad():
        before = bb.features(bb.normalize(images))
    assert before.abs().max() < 1e-6  # initial BatchNorm statistics collapse the activations
    assert calibrate_batchnorm(bb, images) > 0 and not bb.full_model.training
    with torch.no_grad():
        after = bb.features(bb.normalize(images))
    assert after.std(0).mean() > 1e-2  # features now differ between images


def test_resumed_run_equals_an_uninterrupted_one_with_per_farmer_optimizers(tmp_path):
    clients = [Client(f"f{i}", _views(seed=i)) for i in range(2)]

    def run(**kwargs):  # a new head and trainer each time, as after a restart
        model = adapted_head(_head(3, 16), "lora", 4, 8, 0.0, seed=0)
        trainer = HeadTrainer(local_steps=3, rounds=4, batch_size=4, lr=0.05)
        return run_federated(model, clients, build_strategy("fedavg"), trainer,
                             RoundConfig(num_rounds=4, exchange="trainable", evaluate_clients=False), progress=False, **kwargs)

    whole = run()
    ckpt = tmp_path / "weeds.pt"
    run(checkpoint_path=ckpt, stop_after_round=2)
    saved = torch.load(ckpt, weights_only=True)
    assert set(saved["trainer_state"]) == {"f0", "f1"}  # each farmer's AdamW moments and schedule
    resumed = run(checkpoint_path=ckpt)
    assert resumed.resumed_from_round == 2
    for k, v in whole.final_state.items():
        assert torch.equal(resumed.final_state[k], v), k

    saved["trainer_state"] = {}  # without the optimizer state the resumed run would differ
    torch.save(saved, ckpt)
    amnesic = run(checkpoint_path=ckpt)
    assert any(not torch.equal(amnesic.final_state[k], v) for k, v in whole.final_state.items())


def test_k_fold_tests_every_field_once_and_never_trains_on_it():
    from fedpeft.experiments.weeds_qlora_federated import runs as wr
    from fedpeft.experiments.weeds_qlora_federated.settings import load

    groups = np.repeat(np.arange(10), 3)  # 10 fields of 3 samples
    folds = wr.field_folds(groups, 3)
    assert sorted(f for fold in folds for f in fold) == list(range(10))
    assert [len(f) for f in folds] == [4, 3, 3]
    with pytest.raises(ValueError, match="folds = 11 is more than the 10 fields"):
        wr.field_folds(groups, 11)
    s = load("embedded", {"folds": 3})
    samples = wr.load_samples(s)
    tested = []
    for fold in range(3):
        split = wr.split_samples(s, samples, fold)
        test, train, val = (set(part.groups.tolist()) for part in (split.test, split.train, split.val))
        assert not (test & train) and not (test & val) and not (train & val)
        assert len(split.test) + len(split.train) + len(split.val) == len(samples)
        tested += split.test.groups.tolist()
    assert sorted(tested) == sorted(samples.groups.tolist())  # every sample is tested exactly once over the folds
    assert [wr.fold_of(s, seed) for seed in (0, 1, 2, 3)] == [0, 1, 2, 0]


@pytest.mark.parametrize("overrides, message", [
    ({"folds": 1}, "folds = 1 is not allowed"),
    ({"folds": 3, "source": "weedsgalore"}, "WeedsGalore has its own split"),
])
def test_folds_are_validated(overrides, message):
    from fedpeft.experiments.weeds_qlora_federated.settings import load

    with pytest.raises(ValueError, match=message):
        load("embedded", overrides)


def test_simulated_farmers_hold_their_own_samples_and_are_reproducible():
    from fedpeft.experiments.weeds_qlora_federated.runs import Features, simulated_farmers

    feats = Features(torch.arange(10.0)[:, None, None].expand(10, 2, 3).clone(), torch.arange(10) % 2, np.arange(10),
                     FeatureSet(torch.zeros(1, 3), torch.tensor([0])), FeatureSet(torch.zeros(1, 3), torch.tensor([0])), 2, [])
    farmers = simulated_farmers(feats, 25, 4, seed=0)  # more farmers than samples: they may share samples
    assert len(farmers) == 25 and all(len(f.train) == 4 for f in farmers)
    for f in farmers:
        ids = f.train.features[:, 0, 0].long()
        assert len(set(ids.tolist())) == 4  # drawn without replacement within a farmer
        assert torch.equal(f.train.labels, ids % 2)  # each sample keeps its own label
        assert f.train.features.untyped_storage().data_ptr() != feats.train.untyped_storage().data_ptr()
    again = simulated_farmers(feats, 25, 4, seed=0)
    assert all(torch.equal(a.train.features, b.train.features) for a, b in zip(farmers, again, strict=True))
    with pytest.raises(ValueError, match=r"samples_per_farmer = 11 is not allowed; it must be in \[1, 10\]"):
        simulated_farmers(feats, 2, 11, seed=0)


def test_deployment_scenarios_are_planned_beside_the_in_process_runs():
    from fedpeft.experiments.weeds_qlora_federated.runs import run_specs
    from fedpeft.experiments.weeds_qlora_federated.settings import load

    s = load("embedded", {"deployment_scenarios": ["diloco"], "seeds": [0, 1], "deployment_seeds": [0, 1]})
    ids = [spec.run_id for spec in run_specs(s)]
    assert [i for i in ids if "deployment" in i] == ["diloco-qlora-r4-fp32-uneven-deployment-s0",
                                                     "diloco-qlora-r4-fp32-uneven-deployment-s1",
                                                     "diloco-qlora-r4-fp32-uneven-deployment-resident-s0",
                                                     "diloco-qlora-r4-fp32-uneven-deployment-resident-s1"]
    # a run's spec names its ClientApps only where they are resident: the records made before the setting keep their identity
    args = {spec.run_id: spec.args for spec in run_specs(s)}
    assert "clientapps" not in args["diloco-qlora-r4-fp32-uneven-deployment-s0"]
    assert args["diloco-qlora-r4-fp32-uneven-deployment-resident-s0"]["clientapps"] == "resident"
    per_message = [spec.run_id for spec in run_specs(load("embedded", {"deployment_clientapps": ["per-message"]}))]
    assert not [i for i in per_message if "resident" in i]
    with pytest.raises(ValueError, match="deployment_clientapps"):
        load("embedded", {"deployment_clientapps": ["threads"]})
    assert "diloco-qlora-r4-fp32-uneven-s0" in ids  # the same scenario in-process, for the comparison
    only_one = [spec.run_id for spec in run_specs(load("embedded", {"seeds": [0, 1], "deployment_seeds": [1]}))]
    assert [i for i in only_one if "deployment" in i] == ["diloco-qlora-r4-fp32-uneven-deployment-s1",
                                                          "diloco-qlora-r4-fp32-uneven-deployment-resident-s1"]
    assert {"diloco-qlora-r4-fp32-uneven-s0", "diloco-qlora-r4-fp32-uneven-s1"} <= set(only_one)
    with pytest.raises(ValueError, match=r"deployment_seeds = \[5\] is not allowed: each must be one of seeds = \[0, 1\]"):
        load("embedded", {"seeds": [0, 1], "deployment_seeds": [5]})
    on_deployment = run_specs(load("embedded", {"engine": "deployment", "fp16_transport": False, "seeds": [0],
                                                "deployment_seeds": [0]}))
    assert all(spec.args["engine"] == "deployment" for spec in on_deployment[1:])
    with pytest.raises(ValueError, match="fp16_transport = true is not allowed with engine = 'flower'"):
        load("embedded", {"engine": "flower"})


def test_clientapps_comparison_pairs_seeds_and_counts_runs_near_the_model():
    """Per seed, the per-message run against the resident one of the same scenario: speed-up and each against its
    own model; the words count the seeds within 2x of the model (here one of two)."""
    from fedpeft.experiments.weeds_qlora_federated.report import clientapps_comparison, clientapps_text

    base = "diloco qlora r4 fp32 uneven deployment"
    rows = []
    for seed, (slow, fast, model) in enumerate([(100.0, 10.0, 4.0), (120.0, 8.0, 5.0)]):
        for rnd in (1, 2):
            rows.append({"label": base, "seed": seed, "round": rnd, "measured_s": slow, "modelled_no_latency_s": model,
                         "clientapps": "per-message"})
            rows.append({"label": base + " resident", "seed": seed, "round": rnd, "measured_s": fast,
                         "modelled_no_latency_s": model, "clientapps": "resident"})
    c = clientapps_comparison(pd.DataFrame(rows))
    assert c["label"].tolist() == [base, base] and c["seed"].tolist() == [0, 1]
    assert c["speedup"].tolist() == pytest.approx([10.0, 15.0])
    assert c["resident_vs_model"].tolist() == pytest.approx([2.5, 1.6])
    text = clientapps_text(c)
    assert "12.5x faster (per seed 10.0x to 15.0x)" in text and "within 2x of it in 1 of 2 seeds" in text
    only_one_way = pd.DataFrame([r for r in rows if r["clientapps"] == "per-message"])
    assert clientapps_comparison(only_one_way).empty
    assert "No scenario was run both" in clientapps_text(clientapps_comparison(only_one_way))
