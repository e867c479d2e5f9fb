import numpy as np
import pytest

from fedpeft.federated.partition import label_skew, partition

LABELS = np.repeat(np.arange(10), 100)  # 1,000 examples, 10 balanced classes


def assert_disjoint_and_complete(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)) == n


@pytest.mark.parametrize("scheme, options", [("iid", {}), ("stratified", {}), ("dirichlet", {"alpha": 0.5}), ("by_label", {"classes_per_client": 2})])
def test_disjoint_complete_and_reproducible(scheme, options):
    parts = partition(LABELS, scheme, 5, seed=3, **options)
    assert len(parts) == 5
    if scheme != "by_label":
        assert_disjoint_and_complete(parts, len(LABELS))
    else:
        joined = np.concatenate(parts)
        assert len(joined) == len(np.unique(joined))  # disjoint (classes held by nobody are left out)
    again = partition(LABELS, scheme, 5, seed=3, **options)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_iid_equal_sizes_and_low_skew():
    parts = partition(LABELS, "iid", 10, seed=0)
    assert [len(p) for p in parts] == [100] * 10
    assert label_skew(parts, LABELS) < 0.15


def test_stratified_keeps_label_distribution_exactly():
    parts = partition(LABELS, "stratified", 10, seed=0)
    for p in parts:
        assert np.array_equal(np.bincount(LABELS[p], minlength=10), np.full(10, 10))
    assert label_skew(parts, LABELS) == 0.0


def test_dirichlet_skew_grows_as_alpha_shrinks():
    skew = {a: np.mean([label_skew(partition(LABELS, "dirichlet", 10, seed=s, alpha=a), LABELS) for s in range(3)])
            for a in (100.0, 1.0, 0.1)}
    assert skew[100.0] < skew[1.0] < skew[0.1]


def test_by_label_holds_only_given_classes():
    parts = partition(LABELS, "by_label", 5, seed=0, classes_per_client=2)
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)


def test_overlap_shares_the_stated_fraction():
    parts = partition(LABELS, "overlap", 4, seed=0, overlap_fraction=0.2)
    shared = set(parts[0]).intersection(*map(set, parts[1:]))
    assert len(shared) == 200
    assert len(set(np.concatenate(parts))) == len(LABELS)


@pytest.mark.parametrize(
    "scheme, n, options, match",
    [
        ("random", 2, {}, "partition scheme = 'random' is not known"),
        ("iid", 0, {}, "num_clients = 0 is not allowed"),
        ("iid", 2000, {}, "num_clients = 2000 is more than the 1000 examples"),
        ("dirichlet", 2, {"alpha": 0}, "alpha = 0 is not allowed"),
        ("overlap", 2, {"overlap_fraction": 1.5}, "overlap_fraction = 1.5"),
    ],
)
def test_bad_partition_settings(scheme, n, options, match):
    with pytest.raises(ValueError, match=match):
        partition(LABELS, scheme, n, seed=0, **options)
