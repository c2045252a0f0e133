"""Seeded train/test splits for datasets without an official test split."""

from __future__ import annotations

import numpy as np


def stratified_split(
    labels: np.ndarray,
    test_fraction: float,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (train, test), class by class.

    For every class (the label of a group's first row) the groups are shuffled and the shortest
    prefix whose row count is closest to ``round(test_fraction * rows_of_class)`` goes to test.
    Without ``groups`` every row is its own group, so each class contributes exactly
    ``round(test_fraction * n_class)`` test rows. With groups (e.g. HAM10000's ``lesion_id``)
    no group is split across train and test. Both index arrays are returned in shuffled order.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if groups is None:
        group_ids = np.arange(n)
    else:
        _, group_ids = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(group_ids.max()) + 1 if n else 0
    first_row = np.full(n_groups, n, dtype=np.int64)
    np.minimum.at(first_row, group_ids, np.arange(n))
    group_label = labels[first_row]
    group_size = np.bincount(group_ids, minlength=n_groups)
    test_groups = []
    for c in np.unique(group_label):
        gs = np.flatnonzero(group_label == c)
        gs = gs[rng.permutation(gs.size)]
        sizes = group_size[gs]
        target = round(test_fraction * int(sizes.sum()))
        cum = np.concatenate([[0], np.cumsum(sizes)])
        k = int(np.argmin(np.abs(cum - target)))
        test_groups.append(gs[:k])
    is_test_group = np.zeros(n_groups, dtype=bool)
    if test_groups:
        is_test_group[np.concatenate(test_groups)] = True
    is_test = is_test_group[group_ids]
    train = np.flatnonzero(~is_test)
    test = np.flatnonzero(is_test)
    return train[rng.permutation(train.size)], test[rng.permutation(test.size)]
