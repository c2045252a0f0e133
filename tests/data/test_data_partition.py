"""Client partitions: IID shards and Dirichlet label skew."""

from __future__ import annotations

import numpy as np
import pytest

from fedleak.data import DataError, dirichlet_partition, iid_partition


def _check_disjoint(parts: list[np.ndarray], n: int) -> np.ndarray:
    allidx = np.concatenate(parts)
    assert all(p.dtype == np.int64 for p in parts)
    assert np.unique(allidx).size == allidx.size  # no index twice
    assert allidx.size == 0 or (allidx.min() >= 0 and allidx.max() < n)
    return allidx


def test_iid_sizes_disjoint_coverage_and_determinism():
    parts = iid_partition(1000, 10, np.random.default_rng(0))
    assert [p.size for p in parts] == [100] * 10
    assert np.array_equal(np.sort(_check_disjoint(parts, 1000)), np.arange(1000))
    again = iid_partition(1000, 10, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = iid_partition(1000, 10, np.random.default_rng(1))
    assert not np.array_equal(parts[0], other[0])
    assert not np.array_equal(parts[0], np.sort(parts[0]))  # the drawn order is kept, not sorted
    small = iid_partition(1003, 4, np.random.default_rng(0), samples_per_client=50)
    assert [p.size for p in small] == [50] * 4
    _check_disjoint(small, 1003)
    assert [p.size for p in iid_partition(1003, 4, np.random.default_rng(0))] == [250] * 4  # 3 left over
    with pytest.raises(DataError, match="samples_per_client"):
        iid_partition(100, 10, np.random.default_rng(0), samples_per_client=11)
    with pytest.raises(DataError):
        iid_partition(5, 10, np.random.default_rng(0))


def _labels(n_per_class: int = 300, k: int = 10) -> np.ndarray:
    return np.random.default_rng(123).permutation(np.repeat(np.arange(k), n_per_class))


def _mean_entropy(parts: list[np.ndarray], labels: np.ndarray, k: int) -> float:
    ents = []
    for p in parts:
        q = np.bincount(labels[p], minlength=k) / p.size
        q = q[q > 0]
        ents.append(float(-(q * np.log(q)).sum()))
    return float(np.mean(ents))


def test_dirichlet_disjoint_coverage_min_size_and_determinism():
    labels = _labels()
    parts = dirichlet_partition(labels, 8, 0.5, np.random.default_rng(7), min_size=20)
    assert len(parts) == 8 and min(p.size for p in parts) >= 20
    assert np.array_equal(np.sort(_check_disjoint(parts, labels.size)), np.arange(labels.size))
    again = dirichlet_partition(labels, 8, 0.5, np.random.default_rng(7), min_size=20)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = dirichlet_partition(labels, 8, 0.5, np.random.default_rng(8), min_size=20)
    assert any(a.size != b.size or not np.array_equal(a, b) for a, b in zip(parts, other))


def test_dirichlet_skew_decreases_with_beta():
    labels, k = _labels(), 10
    skewed = dirichlet_partition(labels, 10, 0.1, np.random.default_rng(0))
    even = dirichlet_partition(labels, 10, 100.0, np.random.default_rng(0))
    h_skewed, h_even = _mean_entropy(skewed, labels, k), _mean_entropy(even, labels, k)
    assert h_skewed < 0.6 * np.log(k)  # each client sees few classes
    assert h_even > 0.97 * np.log(k)  # nearly uniform label mix
    assert h_skewed < h_even


def test_dirichlet_floor_sizes_and_remainder_to_last_client():
    # with beta huge every share is ~1/K: clients 0..K-2 get floor(n_y/K) or one less, the last the rest
    labels = _labels(n_per_class=103, k=3)
    parts = dirichlet_partition(labels, 5, 1e7, np.random.default_rng(0))
    counts = np.stack([np.bincount(labels[p], minlength=3) for p in parts])  # [client, class]
    assert np.all((counts[:-1] == 20) | (counts[:-1] == 19))
    assert np.array_equal(counts.sum(axis=0), [103, 103, 103])
    assert np.all(counts[-1] >= 23)


def test_dirichlet_gives_up_with_advice():
    labels = np.zeros(10, dtype=np.int64)
    with pytest.raises(DataError) as e:
        dirichlet_partition(labels, 5, 0.001, np.random.default_rng(0), min_size=2)
    msg = str(e.value)
    assert "100" in msg and "beta" in msg and "\n" not in msg
    with pytest.raises(DataError, match="min_size"):
        dirichlet_partition(labels, 5, 1.0, np.random.default_rng(0), min_size=3)
