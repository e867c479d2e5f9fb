"""Splitting a labelled data set among federated clients.

Every scheme returns one sorted array of example indices per client and is reproducible from ``seed``. IID,
Dirichlet label skew and "by label" use flwr-datasets' partitioners (the library the seeds ran on); stratified
IID and overlapping shards, which it lacks, are written here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

SCHEMES = ("iid", "stratified", "dirichlet", "by_label", "overlap")


def _hf_labels(labels: np.ndarray):
    import datasets

    return datasets.Dataset.from_dict({"idx": np.arange(len(labels)), "label": labels.astype(np.int64)})


def _indices(partitioner, num_clients: int) -> list[np.ndarray]:
    return [np.sort(np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64)) for i in range(num_clients)]


def _check(labels: np.ndarray, num_clients: int) -> None:
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ValueError(f"num_clients = {num_clients!r} is not allowed; it must be an integer >= 1")
    if num_clients > len(labels):
        raise ValueError(f"num_clients = {num_clients} is more than the {len(labels)} examples to share out")


def iid(labels: Sequence[int], num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle, then cut into equal contiguous shards (flwr-datasets' ``IidPartitioner`` after a seeded shuffle,
    which is what the seed's ``FederatedDataset`` does)."""
    from flwr_datasets.partitioner import IidPartitioner

    labels = np.asarray(labels)
    _check(labels, num_clients)
    partitioner = IidPartitioner(num_partitions=num_clients)
    partitioner.dataset = _hf_labels(labels).shuffle(seed=seed)
    return _indices(partitioner, num_clients)


def stratified(labels: Sequence[int], num_clients: int, seed: int) -> list[np.ndarray]:
    """IID that keeps each client's label distribution equal to the whole's: each class is shuffled and dealt
    round-robin, continuing where the previous class stopped so client sizes differ by at most one."""
    labels = np.asarray(labels)
    _check(labels, num_clients)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    offset = 0
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        for j, idx in enumerate(members):
            parts[(offset + j) % num_clients].append(int(idx))
        offset += len(members)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def dirichlet(labels: Sequence[int], num_clients: int, seed: int, alpha: float, min_partition_size: int = 1) -> list[np.ndarray]:
    """Label skew: each class is split among clients by proportions drawn from Dirichlet(alpha); smaller alpha
    means more skew (flwr-datasets' ``DirichletPartitioner``)."""
    from flwr_datasets.partitioner import DirichletPartitioner

    labels = np.asarray(labels)
    _check(labels, num_clients)
    if not alpha > 0:
        raise ValueError(f"dirichlet alpha = {alpha!r} is not allowed; it must be > 0")
    partitioner = DirichletPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        alpha=float(alpha),
        min_partition_size=min_partition_size,
        self_balancing=False,
        shuffle=True,
        seed=seed,
    )
    partitioner.dataset = _hf_labels(labels)
    return _indices(partitioner, num_clients)


def by_label(labels: Sequence[int], num_clients: int, seed: int, classes_per_client: int) -> list[np.ndarray]:
    """Pathological non-IID: each client holds only ``classes_per_client`` whole classes, shared with the other
    clients that hold them (flwr-datasets' ``PathologicalPartitioner``, deterministic class assignment)."""
    from flwr_datasets.partitioner import PathologicalPartitioner

    labels = np.asarray(labels)
    _check(labels, num_clients)
    num_classes = len(np.unique(labels))
    if not 1 <= classes_per_client <= num_classes:
        raise ValueError(f"classes_per_client = {classes_per_client!r} is not allowed; it must be in [1, {num_classes}]")
    partitioner = PathologicalPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        num_classes_per_partition=classes_per_client,
        class_assignment_mode="deterministic",
        shuffle=True,
        seed=seed,
    )
    partitioner.dataset = _hf_labels(labels)
    return _indices(partitioner, num_clients)


def overlapping(labels: Sequence[int], num_clients: int, seed: int, overlap_fraction: float) -> list[np.ndarray]:
    """A shared pool of ``overlap_fraction`` of the examples goes to every client; the rest is split IID."""
    labels = np.asarray(labels)
    _check(labels, num_clients)
    if not 0 <= overlap_fraction < 1:
        raise ValueError(f"overlap_fraction = {overlap_fraction!r} is not allowed; it must be in [0, 1)")
    perm = np.random.default_rng(seed).permutation(len(labels))
    n_shared = int(round(overlap_fraction * len(labels)))
    shared, rest = perm[:n_shared], perm[n_shared:]
    return [np.sort(np.concatenate([shared, part])) for part in np.array_split(rest, num_clients)]


def partition(labels: Sequence[int], scheme: str, num_clients: int, seed: int, **options) -> list[np.ndarray]:
    """Dispatch by scheme name; ``options`` carry ``alpha``, ``classes_per_client`` or ``overlap_fraction``."""
    functions = {"iid": iid, "stratified": stratified, "dirichlet": dirichlet, "by_label": by_label, "overlap": overlapping}
    if scheme not in functions:
        raise ValueError(f"partition scheme = {scheme!r} is not known; allowed: {list(SCHEMES)}")
    return functions[scheme](labels, num_clients, seed, **options)


def label_skew(parts: Sequence[np.ndarray], labels: Sequence[int]) -> float:
    """Mean total-variation distance between each client's label distribution and the global one (0 = IID)."""
    labels = np.asarray(labels)
    k = labels.max() + 1
    global_p = np.bincount(labels, minlength=k) / len(labels)
    dists = []
    for p in parts:
        if len(p) == 0:
            continue
        local = np.bincount(labels[p], minlength=k) / len(p)
        dists.append(0.5 * np.abs(local - global_p).sum())
    return float(np.mean(dists))


def save_shard_manifests(out_dir, parts: Sequence[np.ndarray], labels: Sequence[int], info: dict) -> dict:
    """Write ``client_<i>.json`` (1-based, as the GLUE report) with each client's example indices, and
    ``summary.json`` with ``info`` (scheme, seed, options), client sizes, label counts and the label skew.

    Indices refer to the rows of the training table the partition was made from. Returns the summary.
    """
    import json
    from pathlib import Path

    from fedpeft.core.files import atomic_write_text

    labels = np.asarray(labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("client_*.json"):
        old.unlink()
    for i, p in enumerate(parts, start=1):
        atomic_write_text(out / f"client_{i}.json", json.dumps({"client": i, "indices": [int(x) for x in p]}))
    summary = dict(info) | {
        "num_clients": len(parts),
        "size_per_client": [int(len(p)) for p in parts],
        "labels_per_client": [{str(k): int(v) for k, v in zip(*np.unique(labels[p], return_counts=True), strict=True)} for p in parts],
        "label_skew": label_skew(parts, labels),
        "shared_examples": int(len(set.intersection(*[set(p.tolist()) for p in parts]))) if len(parts) > 1 else 0,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def load_shard_manifests(out_dir) -> list[np.ndarray]:
    """Read back the clients' index arrays written by :func:`save_shard_manifests`, in client order."""
    import json
    from pathlib import Path

    files = sorted(Path(out_dir).glob("client_*.json"), key=lambda p: int(p.stem.split("_")[1]))
    if not files:
        raise FileNotFoundError(f"no client_<i>.json shard manifests in {out_dir}")
    return [np.asarray(json.loads(f.read_text())["indices"], dtype=np.int64) for f in files]
