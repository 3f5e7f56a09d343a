"""megabert's numpy metrics against scikit-learn and scipy on fixed inputs, ties and degenerate cases."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from megabert.tasks import metrics as M

RNG = np.random.default_rng(0)
BINARY = (RNG.integers(0, 2, 97), RNG.integers(0, 2, 97))
MULTI = (RNG.integers(0, 3, 101), RNG.integers(0, 3, 101))
SKEWED = (np.r_[np.ones(40, int), np.zeros(3, int)], np.r_[np.ones(35, int), np.zeros(8, int)])


@pytest.mark.parametrize("pred,ref", [BINARY, SKEWED])
def test_binary_metrics_match_sklearn(pred, ref):
    assert M.accuracy(pred, ref) == pytest.approx(skm.accuracy_score(ref, pred))
    assert M.f1(pred, ref) == pytest.approx(skm.f1_score(ref, pred))
    assert M.matthews_corrcoef(pred, ref) == pytest.approx(skm.matthews_corrcoef(ref, pred))


def test_multiclass_matthews_matches_sklearn():
    pred, ref = MULTI
    assert M.matthews_corrcoef(pred, ref) == pytest.approx(skm.matthews_corrcoef(ref, pred))
    assert M.accuracy(pred, ref) == pytest.approx(skm.accuracy_score(ref, pred))


def test_degenerate_classification_follows_sklearn():
    constant = np.zeros(10, int)
    ref = np.r_[np.zeros(5, int), np.ones(5, int)]
    assert M.matthews_corrcoef(constant, ref) == skm.matthews_corrcoef(ref, constant) == 0.0
    with np.errstate(all="ignore"):
        assert M.f1(constant, constant) == skm.f1_score(constant, constant, zero_division=0.0) == 0.0


def test_correlations_match_scipy_with_ties():
    x = np.round(RNG.normal(size=200), 1)  # rounding creates many ties
    y = x + RNG.normal(scale=0.7, size=200)
    y[::7] = y[3]
    assert M.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert M.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
    np.testing.assert_allclose(M.rankdata(y), stats.rankdata(y))


def test_constant_prediction_correlation_is_nan():
    assert np.isnan(M.pearson(np.ones(5), np.arange(5)))


def test_length_mismatch_and_unknown_metric_are_errors():
    with pytest.raises(ValueError, match="differ in length"):
        M.accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="unknown metric"):
        M.compute_metrics(["acuracy"], [1], [1])
