import numpy as np

from fedleak.config import CandidatesConfig
from fedleak.signals.candidates import build_candidates, gather, redraw_nonmembers


def _clients():
    rng = np.random.default_rng(0)
    perm = rng.permutation(100)
    return [perm[i * 25 : (i + 1) * 25] for i in range(4)]


def test_aligned_candidates_structure():
    clients = _clients()
    cfg = CandidatesConfig(target_client=1, n_test=7, n_other=5)
    ids, owner = build_candidates(cfg, clients, 100, 30, np.random.default_rng(1))
    assert set(ids[owner == 1]) == set(clients[1])  # all the target's samples
    for c in (0, 2, 3):
        sel = ids[owner == c]
        assert len(sel) == 5 and set(sel) <= set(clients[c])
    test = ids[owner == -1]
    assert len(test) == 7 and test.min() >= 100 and test.max() < 130
    assert len(np.unique(ids)) == len(ids)


def test_caps_and_rotating_target():
    clients = _clients()
    cfg = CandidatesConfig(max_members=10, n_test=0, n_other=3, rotating_target=True)
    ids, owner = build_candidates(cfg, clients, 100, 30, np.random.default_rng(1))
    assert all((owner == c).sum() == 10 for c in range(4)) and (owner == -1).sum() == 0


def test_official_compat_redraw_keeps_owner_and_members():
    clients = _clients()
    cfg = CandidatesConfig(target_client=0, n_test=10, n_other=5)
    ids, owner = build_candidates(cfg, clients, 100, 30, np.random.default_rng(1))
    new = redraw_nonmembers(ids, owner, 0, clients, 100, 30, np.random.default_rng(2))
    assert np.array_equal(new[owner == 0], ids[owner == 0])
    assert not np.array_equal(new[owner != 0], ids[owner != 0])
    for c in (1, 2, 3):
        assert set(new[owner == c]) <= set(clients[c])
    assert ((new[owner == -1] >= 100) & (new[owner == -1] < 130)).all()


def test_gather_maps_train_and_test_ids():
    import torch

    trx, tr_y = torch.arange(5.0).view(5, 1, 1, 1), torch.arange(5)
    tex, te_y = 10 + torch.arange(3.0).view(3, 1, 1, 1), 10 + torch.arange(3)
    x, y = gather(np.array([4, 6, 0, 5]), 5, trx, tr_y, tex, te_y)
    assert x.flatten().tolist() == [4.0, 11.0, 0.0, 10.0] and y.tolist() == [4, 11, 0, 10]
