"""GLUE tasks: their columns, labels and official metrics, loaders, tokenization, and generated sentences.

Three sources of examples, one table layout (``text_a``, optional ``text_b``, ``label``):

* :func:`load_glue_tsv`: the GLUE TSV files in the data root (SST-2, MRPC and the 3-column STS-B of
  ``../shared/data/glue``), checked against its manifest;
* :func:`load_glue_hub`: any of the nine tasks from the Hugging Face hub (``nyu-mll/glue``; needs internet);
* :func:`generate_sentiment_sentences`: labelled template sentences for the offline ``embedded`` profile.

Metrics follow GLUE: Matthews correlation for CoLA, accuracy and F1 for MRPC and QQP, Pearson and Spearman
correlation for STS-B, accuracy for the rest. Each is computed with scikit-learn or SciPy.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from fedpeft.core.integrity import CorruptDataError, decoding, require_data_file


@dataclass(frozen=True)
class GlueTask:
    name: str
    text_columns: tuple[str, ...]  # column names on the hub
    num_labels: int  # 1 = regression
    metrics: tuple[str, ...]  # the first is the task's headline metric
    eval_split: str = "validation"

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("cola", ("sentence",), 2, ("matthews",)),
    "sst2": GlueTask("sst2", ("sentence",), 2, ("accuracy",)),
    "mrpc": GlueTask("mrpc", ("sentence1", "sentence2"), 2, ("f1", "accuracy")),
    "stsb": GlueTask("stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearman")),
    "qqp": GlueTask("qqp", ("question1", "question2"), 2, ("f1", "accuracy")),
    "mnli": GlueTask("mnli", ("premise", "hypothesis"), 3, ("accuracy",), eval_split="validation_matched"),
    "qnli": GlueTask("qnli", ("question", "sentence"), 2, ("accuracy",)),
    "rte": GlueTask("rte", ("sentence1", "sentence2"), 2, ("accuracy",)),
    "wnli": GlueTask("wnli", ("sentence1", "sentence2"), 2, ("accuracy",)),
}

#: Files of the tasks that ship in the data root, and how to read their columns.
TSV_FILES = {
    "sst2": ("glue/SST-2", {"text_a": "sentence", "label": "label"}),
    "mrpc": ("glue/MRPC", {"text_a": "#1 String", "text_b": "#2 String", "label": "Quality"}),
    "stsb": ("glue/STS-B", {"text_a": "sentence1", "text_b": "sentence2", "label": "label"}),
}
SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv"}


def get_task(name: str) -> GlueTask:
    if name not in TASKS:
        raise ValueError(f"task = {name!r} is not a GLUE task; allowed: {sorted(TASKS)}")
    return TASKS[name]


STSB_RANGE = (0.0, 5.0)  # STS-B's similarity scores


def check_labels(labels: Sequence, task: GlueTask, where: str, first_row: int = 0) -> np.ndarray:
    """The labels as an array (int64 class ids, or float32 scores for a regression task), each checked: a class id
    must be an integer in ``[0, num_labels)``, a score a finite number (STS-B's in [0, 5]). A bad one is a
    :class:`~fedpeft.core.integrity.CorruptDataError` naming ``where`` and its row (``first_row`` + position: a file's
    line number)."""
    out = np.empty(len(labels), dtype=np.float32 if task.is_regression else np.int64)
    for i, raw in enumerate(labels):
        text = str(raw).strip()
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if task.is_regression:
            lo, hi = STSB_RANGE if task.name == "stsb" else (-np.inf, np.inf)
            ok = np.isfinite(value) and lo <= value <= hi
            allowed = f"a finite score in [{lo:g}, {hi:g}]" if task.name == "stsb" else "a finite number"
        else:
            ok = np.isfinite(value) and value == int(value) and 0 <= value < task.num_labels
            allowed = f"an integer class id in [0, {task.num_labels - 1}]"
        if not ok:
            raise CorruptDataError(f"{where}, row {first_row + i}: label {text!r} is not allowed for GLUE {task.name}; it "
                                   f"must be {allowed}. Fix or remove that row.")
        out[i] = value
    return out


def _table(text_a: Sequence[str], text_b: Sequence[str] | None, labels: Sequence, task: GlueTask, where: str = "the labels",
           first_row: int = 0) -> pd.DataFrame:
    df = pd.DataFrame({"text_a": list(text_a)})
    if text_b is not None:
        df["text_b"] = list(text_b)
    df["label"] = check_labels(list(labels), task, where, first_row)
    return df


def load_glue_tsv(data_root: Path, task: str, split: str, verify: bool = True) -> pd.DataFrame:
    """Read a labelled split (``train`` or ``validation``) of SST-2, MRPC or STS-B from the data root."""
    spec = get_task(task)
    if task not in TSV_FILES:
        raise ValueError(f"task = {task!r} has no files in the data root; the ones there are {sorted(TSV_FILES)}")
    if split not in SPLIT_FILES:
        raise ValueError(f"split = {split!r} is not allowed; it must be one of {sorted(SPLIT_FILES)} (test has no labels)")
    folder, columns = TSV_FILES[task]
    path = require_data_file(Path(data_root), f"{folder}/{SPLIT_FILES[split]}", verify=verify)
    with decoding(path, f"a tab-separated GLUE {task} table"):
        raw = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, encoding="utf-8-sig", keep_default_na=False)
    missing = [c for c in columns.values() if c not in raw.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}; it has {list(raw.columns)}")
    text_b = raw[columns["text_b"]].str.strip() if "text_b" in columns else None
    return _table(raw[columns["text_a"]].str.strip(), text_b, raw[columns["label"]], spec, str(path), first_row=2)  # line 1: header


def load_glue_hub(task: str, split: str, dataset: str = "nyu-mll/glue") -> pd.DataFrame:
    """Any GLUE task from the hub (``split``: ``train`` or ``validation``; MNLI's is validation_matched)."""
    import datasets

    spec = get_task(task)
    hub_split = spec.eval_split if split == "validation" else split
    ds = datasets.load_dataset(dataset, task, split=hub_split)
    cols = spec.text_columns
    return _table(ds[cols[0]], ds[cols[1]] if len(cols) > 1 else None, ds["label"], spec, f"{dataset} {task} {hub_split}")


_SUBJECTS = ["the film", "this movie", "the plot", "the acting", "the story", "the script", "the cast", "the ending"]
_POSITIVE = ["wonderful", "moving", "brilliant", "charming", "funny", "gripping", "beautiful", "clever"]
_NEGATIVE = ["boring", "clumsy", "dull", "awful", "tedious", "messy", "flat", "predictable"]
_ADVERBS = ["", "truly ", "really ", "quite ", "rather ", "simply "]
_TAILS = ["", " from start to finish", " , as expected", " at times", " in the end", " for most of its length"]


def generate_sentiment_sentences(num_examples: int, seed: int) -> pd.DataFrame:
    """SST-2-like labelled sentences from templates (label 1 = positive); ``seed`` makes them reproducible.

    One word in ten is swapped for a word of the other polarity, so the task is not trivially separable.
    """
    if num_examples < 2:
        raise ValueError(f"num_examples = {num_examples!r} is not allowed; it must be >= 2")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=num_examples)
    sentences = []
    for y in labels:
        words = _POSITIVE if y == 1 else _NEGATIVE
        if rng.random() < 0.1:
            words = _NEGATIVE if y == 1 else _POSITIVE
        sentences.append(
            f"{rng.choice(_SUBJECTS)} is {rng.choice(_ADVERBS)}{rng.choice(words)}{rng.choice(_TAILS)} ."
        )
    return _table(sentences, None, labels, TASKS["sst2"])


def compute_metrics(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """GLUE metrics of ``predictions`` (class ids, or scores for STS-B) against ``labels``; values in [-1, 1]."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    spec = get_task(task)
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions have shape {predictions.shape} but labels {labels.shape}")
    out: dict[str, float] = {}
    for name in spec.metrics:
        if name == "accuracy":
            out[name] = float(accuracy_score(labels, predictions))
        elif name == "f1":
            out[name] = float(f1_score(labels, predictions))
        elif name == "matthews":
            out[name] = float(matthews_corrcoef(labels, predictions))
        elif name == "pearson":
            out[name] = float(pearsonr(predictions, labels)[0])
        elif name == "spearman":
            out[name] = float(spearmanr(predictions, labels)[0])
    return out


def chance_metrics(task: str, labels: np.ndarray) -> dict[str, float]:
    """The metrics a model must beat: those of always predicting the most frequent label of ``labels`` (MRPC's F1
    of always "paraphrase" is about 0.81), or, for a regression task, correlations of 0 (a constant score has none)."""
    spec = get_task(task)
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError(f"task {task}: no labels to compute a chance baseline from")
    if spec.is_regression:
        return {name: 0.0 for name in spec.metrics}
    values, counts = np.unique(labels, return_counts=True)
    return compute_metrics(task, np.full_like(labels, values[np.argmax(counts)]), labels)


def train_word_tokenizer(texts: Sequence[str], vocab_size: int = 512):
    """A word-level tokenizer whose vocabulary is the ``vocab_size`` most frequent words of ``texts`` (ties by
    spelling, so it is the same in every process), wrapped as a transformers fast tokenizer with RoBERTa's
    special tokens (the ``embedded`` profile's tokenizer: nothing is downloaded).

    Not the ``tokenizers`` trainers: their vocabulary order varies between processes when counts tie.
    """
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.Whitespace()
    counts = Counter(w for t in texts for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(t)))
    words = sorted(counts, key=lambda w: (-counts[w], w))[: max(vocab_size - len(special), 0)]
    vocab = {tok: i for i, tok in enumerate(special + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", cls_token="<s>",
        sep_token="</s>", unk_token="<unk>", mask_token="<mask>",
    )


@dataclass
class TokenizedText:
    """Token ids padded to a common length (``N x L`` int64), their attention mask, and labels.

    Batches are trimmed to their longest member (:meth:`batch`), so the padding costs no compute.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor  # int64 class ids, or float32 scores for regression

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(dim=1)

    def subset(self, indices) -> "TokenizedText":
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return TokenizedText(self.input_ids[idx], self.attention_mask[idx], self.labels[idx])

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = self.attention_mask[indices]
        width = max(int(mask.sum(dim=1).max()), 1)
        return {"input_ids": self.input_ids[indices, :width], "attention_mask": mask[:, :width]}


def tokenize(tokenizer, table: pd.DataFrame, max_length: int) -> TokenizedText:
    """Tokenize a GLUE table (sentence pairs when it has ``text_b``), truncating to ``max_length`` tokens."""
    if max_length < 8:
        raise ValueError(f"max_length = {max_length!r} is not allowed; it must be >= 8 tokens")
    pair = table["text_b"].tolist() if "text_b" in table else None
    enc = tokenizer(table["text_a"].tolist(), pair, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    labels = torch.tensor(table["label"].to_numpy(copy=True))
    return TokenizedText(enc["input_ids"].to(torch.long), enc["attention_mask"].to(torch.long), labels)
