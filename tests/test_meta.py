"""The meta-network bag: members differ by seed, their mean is one model that saves, loads and exports."""
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from ensemble.meta import fit_bag  # noqa: E402


def _data(n=160, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = (rng.normal(size=(n, 4)) + y[:, None] * [1.5, 0.5, 0.0, -1.0]).astype(np.float32)
    half = np.arange(n) % 2 == 0
    folds = [(np.flatnonzero(~half), np.flatnonzero(half)), (np.flatnonzero(half), np.flatnonzero(~half))]
    return x, y, folds


def test_bag_is_the_mean_of_its_members_and_exports(tmp_path):
    from ensemble.runtime import OnnxModel, export_onnx, load_keras

    x, y, folds = _data()
    bag = fit_bag(x, y, folds, members=3, seed=4, max_epochs=6, patience=2)
    assert len(bag.members) == 3
    each = np.stack([m.model.predict(x, verbose=0)[:, 0] for m in bag.members])
    assert not np.allclose(each[0], each[1])  # different seeds, different networks
    mean = bag.model.predict(x, verbose=0)[:, 0]
    np.testing.assert_allclose(mean, each.mean(0), atol=1e-5)
    np.testing.assert_allclose(bag.oof_probability, np.mean([m.oof_probability for m in bag.members], 0), atol=1e-6)
    assert np.all((bag.oof_probability >= 0) & (bag.oof_probability <= 1))

    bag.model.save(tmp_path / "meta.keras")
    np.testing.assert_allclose(load_keras(tmp_path / "meta.keras").predict(x, verbose=0)[:, 0], mean, atol=1e-5)
    onnx = OnnxModel(export_onnx(bag.model, tmp_path / "meta.onnx"))
    np.testing.assert_allclose(onnx(x), mean, atol=1e-4)


def test_a_bag_of_one_is_the_plain_network_and_zero_is_refused():
    x, y, folds = _data(80)
    one = fit_bag(x, y, folds, members=1, max_epochs=3, patience=1)
    assert one.model is one.members[0].model
    with pytest.raises(ValueError, match="members"):
        fit_bag(x, y, folds, members=0)
