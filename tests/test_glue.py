"""GLUE loaders and metrics, sharding manifests, the text trainer and the one-shot merge of peft adapters."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedpeft.core.config import load_raw
from fedpeft.core.seeding import seeded_generator
from fedpeft.data import glue
from fedpeft.federated import lora_aggregation as lora
from fedpeft.federated.partition import load_shard_manifests, partition, save_shard_manifests
from fedpeft.training.text import TextClassifierTrainer, length_grouped_batches

DATA_ROOT = (Path(__file__).resolve().parents[1] / load_raw("local")["common"]["data_root"]).resolve()


def test_metrics_match_hand_computed_values():
    preds, labels = np.array([1, 0, 1, 1, 0, 1]), np.array([1, 0, 0, 1, 1, 1])
    # tp 3, tn 1, fp 1, fn 1
    m = glue.compute_metrics("mrpc", preds, labels)
    assert m["accuracy"] == pytest.approx(4 / 6) and m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    mcc = (3 * 1 - 1 * 1) / math.sqrt((3 + 1) * (3 + 1) * (1 + 1) * (1 + 1))
    assert glue.compute_metrics("cola", preds, labels) == {"matthews": pytest.approx(mcc)}
    scores = np.array([0.0, 1.0, 2.0, 3.0])
    stsb = glue.compute_metrics("stsb", 2 * scores + 1, scores)
    assert stsb["pearson"] == pytest.approx(1.0) and stsb["spearman"] == pytest.approx(1.0)
    assert glue.compute_metrics("stsb", np.array([3.0, 1.0, 0.0, 2.0]), scores)["spearman"] == pytest.approx(-0.4)


def test_unknown_task_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"task = 'sst5' is not a GLUE task; allowed: \['cola'"):
        glue.get_task("sst5")
    with pytest.raises(ValueError, match="shape"):
        glue.compute_metrics("sst2", np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="task = 'cola' has no files in the data root"):
        glue.load_glue_tsv(DATA_ROOT, "cola", "train")


def test_missing_data_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="glue/SST-2/dev.tsv"):
        glue.load_glue_tsv(tmp_path, "sst2", "validation")


@pytest.mark.skipif(not (DATA_ROOT / "glue").is_dir(), reason="real GLUE files not present")
@pytest.mark.parametrize("task,rows,label_kind", [("sst2", 872, "class"), ("mrpc", 408, "class"), ("stsb", 1500, "score")])
def test_real_glue_validation_files(task, rows, label_kind):
    table = glue.load_glue_tsv(DATA_ROOT, task, "validation")
    assert len(table) == rows
    assert ("text_b" in table) == (task != "sst2")
    if label_kind == "class":
        assert set(table["label"].unique()) == {0, 1}
    else:
        assert table["label"].between(0, 5).all() and table["label"].dtype == np.float32


def test_generated_sentences_are_reproducible_and_balanced():
    a, b = glue.generate_sentiment_sentences(400, 7), glue.generate_sentiment_sentences(400, 7)
    assert a.equals(b)
    assert 0.4 < a["label"].mean() < 0.6


def _labels():
    return np.repeat(np.arange(3), [30, 20, 10])


def test_iid_and_category_shards_are_disjoint_and_cover_everything(tmp_path):
    labels = _labels()
    for scheme, opts in (("stratified", {}), ("by_label", {"classes_per_client": 1})):
        parts = partition(labels, scheme, 3, seed=1, **opts)
        joined = np.concatenate(parts)
        assert len(joined) == len(set(joined.tolist())) == 60
    category = partition(labels, "by_label", 3, seed=1, classes_per_client=1)
    assert all(len(np.unique(labels[p])) == 1 for p in category)
    summary = save_shard_manifests(tmp_path, category, labels, {"mode": "category", "seed": 1})
    assert summary["size_per_client"] == [len(p) for p in category] and summary["shared_examples"] == 0
    assert all(np.array_equal(x, y) for x, y in zip(load_shard_manifests(tmp_path), category, strict=True))


def test_overlap_shards_share_the_stated_fraction(tmp_path):
    labels = _labels()
    parts = partition(labels, "overlap", 3, seed=2, overlap_fraction=0.2)
    shared = set.intersection(*[set(p.tolist()) for p in parts])
    assert len(shared) == 12  # 20 % of 60, held by every client
    rest = [set(p.tolist()) - shared for p in parts]
    assert sum(len(r) for r in rest) == 48 and not (rest[0] & rest[1])
    summary = save_shard_manifests(tmp_path, parts, labels, {"mode": "overlap"})
    assert summary["shared_examples"] == 12
    assert json.loads((tmp_path / "client_1.json").read_text())["indices"] == parts[0].tolist()


def test_length_grouped_batches_visit_every_example_once():
    lengths = torch.randint(1, 50, (103,))
    batches = list(length_grouped_batches(lengths, 8, torch.Generator().manual_seed(0), chunk_batches=4))
    assert sorted(torch.cat(batches).tolist()) == list(range(103))
    assert max(len(b) for b in batches) == 8


@pytest.fixture(scope="module")
def tiny_task():
    from fedpeft.models.text import load_text_model

    table = glue.generate_sentiment_sentences(48, 0)
    model, tokenizer = load_text_model("tiny-roberta", 2, seed=0, tokenizer_texts=table["text_a"].tolist())
    return model, glue.tokenize(tokenizer, table, 32)


def test_fractional_epochs_take_the_stated_number_of_steps(tiny_task):
    model, data = tiny_task
    import copy

    trainer = TextClassifierTrainer("sst2", lr=1e-3, batch_size=8, epochs=0.5)
    stats = trainer.train(copy.deepcopy(model), data, seeded_generator(0))
    assert stats.examples == 24  # ceil(0.5 * 48 / 8) = 3 steps of 8
    with pytest.raises(ValueError, match="epochs = 0"):
        TextClassifierTrainer("sst2", lr=1e-3, batch_size=8, epochs=0)


def test_lora_rank_larger_than_the_layer_is_refused(tiny_task):
    import copy

    from fedpeft.models.text import attach_lora

    model, _ = tiny_task
    with pytest.raises(ValueError, match=r"lora rank = 65 is not allowed; it must be an integer in \[1, 64\]"):
        attach_lora(copy.deepcopy(model), 65, 65, 0.0, ["query", "value"])
    with pytest.raises(ValueError, match="name no linear layer"):
        attach_lora(copy.deepcopy(model), 4, 4, 0.0, ["q_proj"])


def test_merged_peft_adapters_load_back_with_the_mean_delta(tiny_task, tmp_path):
    import copy

    from peft import PeftModel
    from peft.utils import load_peft_weights

    from fedpeft.models.text import attach_lora

    model, data = tiny_task
    dirs = []
    for c in range(3):
        peft_model = attach_lora(copy.deepcopy(model), 4, 8, 0.0, ["query", "value"], seed=c)
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.normal_(generator=torch.Generator().manual_seed(c))
        dirs.append(tmp_path / f"client_{c}")
        peft_model.save_pretrained(dirs[-1])
    parts = [np.arange(10), np.arange(10, 40), np.arange(40, 50)]
    save_shard_manifests(tmp_path / "shards", parts, np.zeros(50, dtype=int), {"mode": "test"})
    manifests = [tmp_path / "shards" / f"client_{i}.json" for i in (1, 2, 3)]
    manifest = lora.merge_adapter_dirs(dirs, tmp_path / "merged", method="svd", svd_rank=12, manifests=manifests)
    assert manifest["weights"] == pytest.approx([0.2, 0.6, 0.2]) and manifest["rank"] == 12
    assert manifest["max_relative_error"] < 1e-5  # 12 = 3 clients x rank 4: exact
    assert json.loads((tmp_path / "merged" / "fuse_manifest.json").read_text())["weighting"] == "manifest sample counts"
    merged = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "merged"))
    states = [load_peft_weights(str(d)) for d in dirs]
    key_a = next(k for k in states[0] if "lora_A" in k)
    key_b = key_a.replace("lora_A", "lora_B")
    target = sum(w * 2.0 * s[key_b].double() @ s[key_a].double() for w, s in zip([0.2, 0.6, 0.2], states, strict=True))
    layer = merged.get_submodule(key_a.removeprefix("base_model.model.").removesuffix(".lora_A.weight"))
    got = layer.scaling["default"] * layer.lora_B["default"].weight.double() @ layer.lora_A["default"].weight.double()
    assert relative_error_ok(target, got)
    with pytest.raises(ValueError, match="weights has 2 values but there are 3 states"):
        lora.merge_adapter_dirs(dirs, tmp_path / "bad", method="naive", weights=[1, 2])


def relative_error_ok(target, got, tol=1e-5):
    return lora.relative_error(target, got) < tol


def test_training_on_no_examples_is_refused(tiny_task):
    import copy

    model, data = tiny_task
    with pytest.raises(ValueError, match="empty data set"):
        TextClassifierTrainer("sst2", lr=1e-3, batch_size=8, epochs=1).train(copy.deepcopy(model), data.subset([]), seeded_generator(0))


def test_regression_target_scale_is_training_on_scaled_targets():
    """Predicting ``target_scale`` x output with MSE on raw scores takes the same Adam steps as predicting the output on
    scores divided by the scale (the loss only gains a constant factor), and predictions come back on the raw scale."""
    import copy

    from fedpeft.models.text import load_text_model

    table = glue.generate_sentiment_sentences(32, 0)
    table["label"] = (table["label"] * 4.0 + np.linspace(0.0, 1.0, len(table))).astype(np.float32)  # scores in [0, 5]
    model, tokenizer = load_text_model("tiny-roberta", 1, seed=0, tokenizer_texts=table["text_a"].tolist())
    model.roberta.requires_grad_(False)  # the head alone: encoder weights whose gradients are near Adam's eps would differ
    raw = glue.tokenize(tokenizer, table, 32)
    scaled = glue.tokenize(tokenizer, table.assign(label=table["label"] / 5.0), 32)
    on_raw, on_scaled = copy.deepcopy(model), copy.deepcopy(model)
    by_five = TextClassifierTrainer("stsb", lr=1e-2, batch_size=8, epochs=2, target_scale=5.0)
    plain = TextClassifierTrainer("stsb", lr=1e-2, batch_size=8, epochs=2)
    torch.manual_seed(0)  # the same dropout masks in both
    by_five.train(on_raw, raw, seeded_generator(0))
    torch.manual_seed(0)
    plain.train(on_scaled, scaled, seeded_generator(0))
    for (name, a), b in zip(on_raw.named_parameters(), on_scaled.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-3), name  # equal up to Adam's eps, which weighs on the smallest gradients
    assert (on_raw.classifier.out_proj.weight - model.classifier.out_proj.weight).abs().max() > 0.01  # it trained
    preds, loss = by_five.predict(on_raw, raw)
    plain_preds, plain_loss = plain.predict(on_raw, scaled)
    np.testing.assert_allclose(plain.predict(on_scaled, scaled)[0], plain_preds, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(preds, 5.0 * plain_preds, rtol=1e-6)
    assert loss == pytest.approx(25.0 * plain_loss, rel=1e-5)  # MSE on the 0-5 scale


def test_target_scale_is_refused_for_classification_and_non_positive_values():
    with pytest.raises(ValueError, match="target_scale = 5.0 is not allowed for sst2, a classification task"):
        TextClassifierTrainer("sst2", lr=1e-3, batch_size=8, epochs=1, target_scale=5.0)
    with pytest.raises(ValueError, match="target_scale = 0 is not allowed; it must be a finite number > 0"):
        TextClassifierTrainer("stsb", lr=1e-3, batch_size=8, epochs=1, target_scale=0)
