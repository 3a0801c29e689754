"""cross_entropy, nll_loss, log_softmax and softmax (the torch.nn.functional-compatible functions):
values and gradients against float64 references, finite differences, PyTorch and the published
reference numbers; options, label dtypes, outputs, edge values and errors."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

import xentkit
import ref_softmax_family as ref

ce = xentkit.cross_entropy
nll = xentkit.nll_loss

DTYPES = (np.float16, np.float32, np.float64)
REDUCTIONS = ("mean", "sum", "none")
SENTINEL = -12345.5


def _seed(*key):
    return zlib.crc32(repr(key).encode())


def _rng(*key):
    return np.random.default_rng(_seed(*key))


def _class_count(shape):
    return shape[ref.class_dim(len(shape))]


def _random_case(rng, shape, dtype=np.float64, scale=2.0):
    x = (rng.normal(size=shape) * scale).astype(dtype)
    c = _class_count(shape)
    y = rng.integers(0, max(c, 1), size=ref.loss_shape(shape)).astype(np.int64)
    return x, y


def _probabilities(rng, shape, dtype=np.float64):
    q = rng.uniform(0.0, 1.0, size=shape)
    cd = ref.class_dim(len(shape))
    if q.size:
        q = q / q.sum(axis=cd, keepdims=True)
    return q.astype(dtype)


# ----------------------------------------------------------------------------------------------
# Comparisons
# ----------------------------------------------------------------------------------------------

_LOSS_RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5, np.dtype(np.float16): 2e-3}
_GRAD_RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5, np.dtype(np.float16): 2e-3}
_GRAD_ATOL = {np.dtype(np.float64): 1e-13, np.dtype(np.float32): 2e-6, np.dtype(np.float16): 2e-3}


def _check_loss(actual, expected, dtype, reduction, shape=None):
    """Checks the type, dtype and value of a returned loss against the float64 reference."""
    dtype = np.dtype(dtype)
    rtol = _LOSS_RTOL[dtype]
    if reduction == "none":
        assert type(actual) is np.ndarray
        assert actual.dtype == dtype
        if shape is not None:
            assert actual.shape == tuple(shape)
        expected = np.asarray(expected, dtype=np.float64)
        scale = float(np.max(np.abs(expected[np.isfinite(expected)]), initial=0.0))
        np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=rtol,
                                   atol=rtol * scale * 1e-2)
    else:
        assert type(actual) is float
        if math.isfinite(actual):
            # The float64 result rounded to the input dtype.
            assert float(dtype.type(actual)) == actual
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0)


def _check_grad(actual, expected, dtype):
    dtype = np.dtype(dtype)
    assert type(actual) is np.ndarray
    assert actual.dtype == dtype
    assert actual.shape == expected.shape
    finite = expected[np.isfinite(expected)]
    scale = float(np.max(np.abs(finite), initial=0.0)) or 1.0
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=_GRAD_RTOL[dtype],
                               atol=_GRAD_ATOL[dtype] * scale)


def _shape_in(shape, message):
    shape = tuple(shape)
    forms = {str(shape), str(list(shape))}
    return any(form in message for form in forms)


# ----------------------------------------------------------------------------------------------
# Shape cases
# ----------------------------------------------------------------------------------------------

# (input shape, target shape)
INDEX_CASES = [
    ((5,), ()),
    ((6, 5), (6,)),
    ((3, 4, 7), (3, 7)),
    ((2, 3, 4, 3), (2, 4, 3)),
    ((0, 4), (0,)),
    ((0, 3, 2), (0, 2)),
    ((3, 4, 0), (3, 0)),
    ((5, 1), (5,)),
    ((2, 1, 3), (2, 3)),
    ((1,), ()),
]

PROB_SHAPES = [(5,), (6, 5), (3, 4, 7), (2, 3, 4, 3), (0, 4), (3, 4, 0), (5, 1), (1,)]


def _index_options(c, rng):
    w = rng.uniform(0.2, 3.0, size=c)
    real = int(rng.integers(0, c)) if c else 0
    return {
        "plain": {},
        "weight": {"weight": w},
        "ignore_default": {"_ignored": -100},
        "ignore_real_class": {"ignore_index": real, "_ignored": real},
        "smoothing": {"label_smoothing": 0.15},
        "smooth_weight_ignore": {"label_smoothing": 0.3, "weight": w, "_ignored": -100},
        "smooth_weight_ignore_real": {"label_smoothing": 0.2, "weight": w, "ignore_index": real,
                                      "_ignored": real},
        "smoothing_one": {"label_smoothing": 1.0, "weight": w},
    }


INDEX_OPTIONS = list(_index_options(3, np.random.default_rng(0)))


def _prepare_index_case(shape, tshape, option, dtype, key):
    rng = _rng("index", shape, tshape, option, np.dtype(dtype).name, key)
    c = _class_count(shape)
    x = (rng.normal(size=shape) * 2).astype(dtype)
    y = rng.integers(0, c, size=tshape).astype(np.int64)
    kw = dict(_index_options(c, rng)[option])
    ignored = kw.pop("_ignored", None)
    if ignored is not None and y.size:
        flat = y.reshape(-1)
        flat[rng.random(flat.size) < 0.3] = ignored
        if y.size > 1:
            flat[0] = ignored
    if "weight" in kw:
        kw["weight"] = kw["weight"].astype(dtype)
    return x, y, kw


# ----------------------------------------------------------------------------------------------
# cross_entropy with class indices against the reference
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("option", INDEX_OPTIONS)
@pytest.mark.parametrize("shape, tshape", INDEX_CASES, ids=str)
def test_cross_entropy_indices_matches_reference(shape, tshape, option, dtype):
    x, y, kw = _prepare_index_case(shape, tshape, option, dtype, 0)
    x_saved, y_saved = x.copy(), y.copy()
    w_saved = kw.get("weight", np.zeros(0)).copy()
    for reduction in REDUCTIONS:
        expected, expected_grad = ref.cross_entropy(x.astype(np.float64), y, reduction=reduction,
                                                    **kw)
        loss = ce(x, y, reduction=reduction, **kw)
        _check_loss(loss, expected, dtype, reduction, ref.loss_shape(shape))
        loss2, grad = ce(x, y, reduction=reduction, grad=True, **kw)
        _check_loss(loss2, expected, dtype, reduction, ref.loss_shape(shape))
        _check_grad(grad, expected_grad, dtype)
    # Nothing modified.
    np.testing.assert_array_equal(x, x_saved)
    np.testing.assert_array_equal(y, y_saved)
    np.testing.assert_array_equal(kw.get("weight", np.zeros(0)), w_saved)


@pytest.mark.parametrize("option", INDEX_OPTIONS)
@pytest.mark.parametrize("shape, tshape", [c for c in INDEX_CASES if math.prod(c[0]) > 0],
                         ids=str)
def test_cross_entropy_indices_finite_differences(shape, tshape, option):
    x, y, kw = _prepare_index_case(shape, tshape, option, np.float64, 1)
    for reduction in ("mean", "none"):
        loss, grad = ce(x, y, reduction=reduction, grad=True, **kw)
        if reduction == "mean" and math.isnan(loss):
            assert np.all(grad == 0)
            continue
        numeric = ref.central_difference(
            lambda a: float(np.sum(ce(a, y, reduction=reduction, **kw))), x.copy(), 1e-5)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=5e-8)


# ----------------------------------------------------------------------------------------------
# cross_entropy with probability targets against the reference
# ----------------------------------------------------------------------------------------------

def _prob_options(c, rng):
    w = rng.uniform(0.2, 3.0, size=c)
    return {
        "plain": {},
        "weight": {"weight": w},
        "smoothing": {"label_smoothing": 0.2},
        "weight_smoothing": {"weight": w, "label_smoothing": 0.35},
        "smoothing_one": {"label_smoothing": 1.0},
        "unnormalised": {"_scale": True},
        "unnormalised_weight": {"_scale": True, "weight": w, "label_smoothing": 0.1},
        "ignore_negative": {"ignore_index": -1},
    }


PROB_OPTIONS = list(_prob_options(3, np.random.default_rng(0)))


def _prepare_prob_case(shape, option, dtype, key):
    rng = _rng("prob", shape, option, np.dtype(dtype).name, key)
    c = _class_count(shape)
    x = (rng.normal(size=shape) * 2).astype(dtype)
    kw = dict(_prob_options(c, rng)[option])
    if kw.pop("_scale", False):
        q = rng.uniform(-0.5, 2.0, size=shape).astype(dtype)  # rows not summing to 1, negatives
    else:
        q = _probabilities(rng, shape, dtype)
    if "weight" in kw:
        kw["weight"] = kw["weight"].astype(dtype)
    return x, q, kw


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("option", PROB_OPTIONS)
@pytest.mark.parametrize("shape", PROB_SHAPES, ids=str)
def test_cross_entropy_probabilities_matches_reference(shape, option, dtype):
    x, q, kw = _prepare_prob_case(shape, option, dtype, 0)
    x_saved, q_saved = x.copy(), q.copy()
    for reduction in REDUCTIONS:
        ref_kw = {k: v for k, v in kw.items() if k != "ignore_index"}
        expected, expected_grad = ref.cross_entropy(x.astype(np.float64), q.astype(np.float64),
                                                    reduction=reduction, **ref_kw)
        loss, grad = ce(x, q, reduction=reduction, grad=True, **kw)
        _check_loss(loss, expected, dtype, reduction, ref.loss_shape(shape))
        _check_grad(grad, expected_grad, dtype)
        assert type(ce(x, q, reduction=reduction, **kw)) is type(loss)
    np.testing.assert_array_equal(x, x_saved)
    np.testing.assert_array_equal(q, q_saved)


@pytest.mark.parametrize("option", PROB_OPTIONS)
@pytest.mark.parametrize("shape", [s for s in PROB_SHAPES if math.prod(s) > 0], ids=str)
def test_cross_entropy_probabilities_finite_differences(shape, option):
    x, q, kw = _prepare_prob_case(shape, option, np.float64, 1)
    for reduction in ("mean", "sum"):
        _, grad = ce(x, q, reduction=reduction, grad=True, **kw)
        numeric = ref.central_difference(lambda a: ce(a, q, reduction=reduction, **kw),
                                         x.copy(), 1e-5)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=5e-8)


def test_probability_weighted_mean_divides_by_element_count():
    rng = _rng("prob-mean")
    x = rng.normal(size=(4, 3, 5))
    q = _probabilities(rng, x.shape)
    w = np.array([0.5, 3.0, 0.25])
    total = ce(x, q, w, reduction="sum")
    mean = ce(x, q, w, reduction="mean")
    assert mean == pytest.approx(total / 20, rel=1e-13)
    # One-hot probability targets: same sum as class indices, but a different weighted mean.
    y = rng.integers(0, 3, size=(4, 5))
    onehot = np.moveaxis(np.eye(3)[y], -1, 1)
    assert ce(x, onehot, w, reduction="sum") == pytest.approx(ce(x, y, w, reduction="sum"),
                                                              rel=1e-13)
    np.testing.assert_allclose(ce(x, onehot, w, reduction="none"), ce(x, y, w, reduction="none"),
                               rtol=1e-13)
    expected_index_mean = ce(x, y, w, reduction="sum") / w[y].sum()
    assert ce(x, y, w) == pytest.approx(expected_index_mean, rel=1e-13)
    assert ce(x, onehot, w) == pytest.approx(ce(x, y, w, reduction="sum") / 20, rel=1e-13)


def test_unnormalised_targets_true_derivative():
    rng = _rng("unnormalised")
    x = rng.normal(size=(5, 4))
    q = _probabilities(rng, x.shape)
    base_loss, base_grad = ce(x, q, reduction="sum", grad=True)
    loss2, grad2 = ce(x, 2.0 * q, reduction="sum", grad=True)
    assert loss2 == pytest.approx(2 * base_loss, rel=1e-13)
    np.testing.assert_allclose(grad2, 2 * base_grad, rtol=1e-12, atol=1e-15)
    lossn, gradn = ce(x, -q, reduction="sum", grad=True)
    assert lossn == pytest.approx(-base_loss, rel=1e-13)
    np.testing.assert_allclose(gradn, -base_grad, rtol=1e-12, atol=1e-15)
    # Row sums appear in the gradient: rowsum(q) * softmax - q, not softmax - q.
    s = ref.softmax(x, 1)
    np.testing.assert_allclose(grad2, 2 * s - 2 * q, rtol=1e-12, atol=1e-15)


def test_probability_target_dtype_promotion():
    rng = _rng("promotion")
    x = rng.normal(size=(4, 3)).astype(np.float32)
    q = _probabilities(rng, x.shape, np.float64)
    loss, grad = ce(x, q, reduction="none", grad=True)
    assert loss.dtype == np.float64
    assert grad.dtype == np.float32
    expected, expected_grad = ref.cross_entropy(x.astype(np.float64), q, reduction="none")
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)
    mean = ce(x, q)
    assert type(mean) is float
    assert mean == pytest.approx(float(np.mean(expected)), rel=1e-6)
    # float16 target with float32 input: float32 result.
    loss16 = ce(x, q.astype(np.float16), reduction="none")
    assert loss16.dtype == np.float32


# ----------------------------------------------------------------------------------------------
# nll_loss against the reference
# ----------------------------------------------------------------------------------------------

NLL_OPTIONS = ["plain", "weight", "ignore_default", "ignore_real_class"]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("option", NLL_OPTIONS)
@pytest.mark.parametrize("shape, tshape", INDEX_CASES, ids=str)
def test_nll_loss_matches_reference(shape, tshape, option, dtype):
    x, y, kw = _prepare_index_case(shape, tshape, option, dtype, 2)
    x_saved = x.copy()
    for reduction in REDUCTIONS:
        expected, expected_grad = ref.nll_loss(x.astype(np.float64), y, reduction=reduction, **kw)
        loss, grad = nll(x, y, reduction=reduction, grad=True, **kw)
        _check_loss(loss, expected, dtype, reduction, ref.loss_shape(shape))
        _check_grad(grad, expected_grad, dtype)
        assert type(nll(x, y, reduction=reduction, **kw)) is type(loss)
    np.testing.assert_array_equal(x, x_saved)


@pytest.mark.parametrize("option", NLL_OPTIONS)
def test_nll_loss_finite_differences(option):
    x, y, kw = _prepare_index_case((4, 3, 2), (4, 2), option, np.float64, 3)
    _, grad = nll(x, y, grad=True, **kw)
    numeric = ref.central_difference(lambda a: nll(a, y, **kw), x.copy(), 1e-3)
    np.testing.assert_allclose(grad, numeric, rtol=1e-9, atol=1e-12)


def test_nll_loss_of_log_softmax_is_cross_entropy():
    rng = _rng("nll-ce")
    x, y = _random_case(rng, (6, 4, 3))
    w = rng.uniform(0.5, 2, size=4)
    for reduction in REDUCTIONS:
        a = nll(xentkit.log_softmax(x, dim=1), y, w, reduction=reduction)
        b = ce(x, y, w, reduction=reduction)
        np.testing.assert_allclose(a, b, rtol=1e-13)


# ----------------------------------------------------------------------------------------------
# Reference numbers (PyTorch 2.13 CPU)
# ----------------------------------------------------------------------------------------------

X_CE = [[[1, 2], [3, 5]], [[4, 7], [4, 6]]]
Y_CE = [[0, 0], [1, 1]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_reference_numbers_cross_entropy_2x2x2(dtype):
    x = np.array(X_CE, dtype=dtype)
    y = np.array(Y_CE)
    f64 = dtype == np.float64
    rel = 1e-15 if f64 else 1e-6
    assert ce(x, y) == pytest.approx(1.7954810576737206 if f64 else 1.7954809665679932, rel=rel)
    assert ce(x, y, reduction="sum") == pytest.approx(
        7.181924230694882 if f64 else 7.181923866271973, rel=rel)
    np.testing.assert_allclose(
        ce(x, y, reduction="none"),
        [[2.1269280110429727, 3.048587351573742], [0.6931471805599453, 1.3132616875182228]],
        rtol=1e-15 if f64 else 1e-6)
    w = np.array([1, 9], dtype=dtype)
    assert ce(x, y, w) == pytest.approx(1.1616597587660116 if f64 else 1.1616597175598145,
                                        rel=2e-16 * 3 if f64 else 1e-6)
    assert ce(x, y, w, reduction="sum") == pytest.approx(
        23.23319517532023 if f64 else 23.23319435119629, rel=1e-15 if f64 else 1e-6)
    np.testing.assert_allclose(
        ce(x, y, w, reduction="none"),
        [[2.1269280110429727, 3.048587351573742], [6.238324625039508, 11.819355187664005]],
        rtol=1e-15 if f64 else 1e-6)
    _, grad = ce(x, y, grad=True)
    np.testing.assert_allclose(
        grad.ravel(),
        [-0.2201992694944706, -0.2381435317056083, 0.22019926949447058, 0.2381435317056083,
         0.125, 0.18276464465750122, -0.125, -0.18276464465750122],
        rtol=1e-14 if f64 else 1e-6)
    _, grad = ce(x, y, w, grad=True)
    np.testing.assert_allclose(
        grad.ravel(),
        [-0.04403985389889412, -0.047628706341121665, 0.044039853898894116,
         0.047628706341121665, 0.225, 0.3289763603835022, -0.225, -0.3289763603835022],
        rtol=1e-14 if f64 else 1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_reference_numbers_nll_loss(dtype):
    x = np.array([[2, 3, 1], [3, 7, 9]], dtype=dtype)
    y = np.array([1, 2])
    assert nll(x, y) == -6.0
    assert nll(x, y, reduction="sum") == -12.0
    np.testing.assert_array_equal(nll(x, y, reduction="none"), [-3.0, -9.0])
    x = np.array([[[2, 3], [1, 5]], [[3, 7], [1, 9]]], dtype=dtype)
    y = np.array([[1, 1], [0, 0]])
    assert nll(x, y) == -4.0
    assert nll(x, y, reduction="sum") == -16.0
    np.testing.assert_array_equal(nll(x, y, reduction="none"), [[-1.0, -5.0], [-3.0, -7.0]])
    _, grad = nll(x, y, grad=True)
    expected = np.zeros((2, 2, 2))
    expected[0, 1, 0] = expected[0, 1, 1] = expected[1, 0, 0] = expected[1, 0, 1] = -0.25
    np.testing.assert_array_equal(grad, expected)


X_LS = [[1, 2, 0.5], [0.1, -1, 3], [2, 2, 2], [0.3, 0.2, -0.4]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_reference_numbers_label_smoothing_ignore(dtype):
    x = np.array(X_LS, dtype=dtype)
    y = np.array([0, 2, -100, 1])
    f64 = dtype == np.float64
    rel = 1e-14 if f64 else 1e-6
    kw = {"label_smoothing": 0.1}
    assert ce(x, y, **kw) == pytest.approx(0.9137347885155924 if f64 else 0.9137347936630249,
                                           rel=rel)
    assert ce(x, y, reduction="sum", **kw) == pytest.approx(
        2.741204365546777 if f64 else 2.7412045001983643, rel=rel)
    np.testing.assert_allclose(
        ce(x, y, reduction="none", **kw),
        [1.447702117441278, 0.30077421896049134, 0.0, 0.9927280291450074], rtol=rel)
    w = np.array([1, 2, 0.5], dtype=dtype)
    assert ce(x, y, w, **kw) == pytest.approx(
        1.0603803617154786 if f64 else 1.0603803396224976, rel=rel)
    assert ce(x, y, w, reduction="sum", **kw) == pytest.approx(
        3.7113312660041755 if f64 else 3.711331367492676, rel=rel)
    np.testing.assert_allclose(
        ce(x, y, w, reduction="none", **kw),
        [1.4304415971764106, 0.4034387240776118, 0.0, 1.877450944750153], rtol=rel)
    _, grad = ce(x, y, grad=True, **kw)
    atol = 1e-16 if f64 else 1e-7
    np.testing.assert_allclose(grad, [
        [-0.23403647857039475, 0.1983994619594764, 0.035637016610918386],
        [0.005976757458336781, -0.005423053782308642, -0.0005537036760281561],
        [0, 0, 0],
        [0.12769549311710343, -0.18551370173491416, 0.05781820861781075]], rtol=rel, atol=atol)
    assert np.all(grad[2] == 0)
    _, grad = ce(x, y, w, grad=True, **kw)
    np.testing.assert_allclose(grad, [
        [-0.1995016297383282, 0.16352588034246435, 0.0359757493958638],
        [-0.0012239876472205445, -0.016284848345057844, 0.017508835992278406],
        [0, 0, 0],
        [0.2185156117082572, -0.32699473221529557, 0.1084791205070383]], rtol=rel, atol=atol)
    assert np.all(grad[2] == 0)
    # ignore_index equal to a real class id.
    assert ce(x, np.array([1, 1, 0, 2]), ignore_index=1) == pytest.approx(
        1.3373368255732254 if f64 else 1.3373368978500366, rel=rel)


def test_reference_numbers_all_ignored():
    x = np.array(X_LS)
    y = np.full(4, -100)
    loss, grad = ce(x, y, grad=True)
    assert math.isnan(loss)
    assert np.all(grad == 0)
    assert ce(x, y, reduction="sum") == 0.0
    np.testing.assert_array_equal(ce(x, y, reduction="none"), np.zeros(4))
    loss, grad = ce(x, y, np.array([1, 2, 0.5]), label_smoothing=0.1, grad=True)
    assert math.isnan(loss)
    assert np.all(grad == 0)
    loss, grad = nll(x, y, grad=True)
    assert math.isnan(loss) and np.all(grad == 0)
    assert nll(x, y, reduction="sum") == 0.0


def test_reference_numbers_soft_targets():
    x = np.array(X_LS)
    q = np.array([[.2, .3, .5], [1, 0, 0], [0, 0, 1], [.5, .5, 0]])
    assert ce(x, q) == pytest.approx(1.6024541636, abs=1e-10)
    assert ce(x, q, np.array([1, 2, .5])) == pytest.approx(1.4991899076, abs=1e-10)
    assert ce(x, q, label_smoothing=0.1) == pytest.approx(1.5899541636, abs=1e-10)


@pytest.mark.parametrize("target", [np.array(1), np.array([1]), np.array(1, dtype=np.int32)],
                         ids=["0d", "1elem", "int32"])
def test_seed_example_one_dimensional(target):
    x = np.array([1.2, 0.8])
    loss = ce(x, target)
    assert round(loss, 4) == 0.9130
    assert loss == pytest.approx(math.log1p(math.exp(0.4)), rel=1e-14)
    none = ce(x, target, reduction="none")
    assert isinstance(none, np.ndarray) and none.shape == ()
    assert float(none) == pytest.approx(loss, rel=1e-15)
    loss, grad = ce(x, target, grad=True)
    p = 1 / (1 + math.exp(-0.4))
    np.testing.assert_allclose(grad, [p, -p], rtol=1e-14)
    loss32 = ce(x.astype(np.float32), target)
    assert loss32 == pytest.approx(0.9130, abs=5e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("fn", ["ce", "nll"])
def test_one_dimensional_input_with_one_element_target(fn, dtype):
    """Input (C,) with target (1,) is the same problem as target (): the per-element loss of
    reduction="none" has the input's shape without the class dimension, ()."""
    rng = _rng("1d-1elem", fn, np.dtype(dtype).name)
    call = ce if fn == "ce" else nll
    reference = ref.cross_entropy if fn == "ce" else ref.nll_loss
    x = (rng.normal(size=4) * 2).astype(dtype)
    w = rng.uniform(0.5, 2, size=4).astype(dtype)
    for kw in ({}, {"weight": w}, {"ignore_index": 2}):
        for label in (0, 2, 3):
            for reduction in REDUCTIONS:
                expected, expected_grad = reference(x.astype(np.float64), np.array([label]),
                                                    reduction=reduction, **kw)
                loss, grad = call(x, np.array([label]), reduction=reduction, grad=True, **kw)
                _check_grad(grad, expected_grad, dtype)
                np.testing.assert_allclose(np.asarray(loss, dtype=np.float64), expected,
                                           rtol=_LOSS_RTOL[np.dtype(dtype)])
                scalar = call(x, np.array(label), reduction=reduction, **kw)
                np.testing.assert_array_equal(np.asarray(loss), np.asarray(scalar))
                _check_loss(loss, expected, dtype, reduction, ())


# ----------------------------------------------------------------------------------------------
# ignore_index
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", ["ce", "nll", "ce_smooth"])
@pytest.mark.parametrize("ignore", [-100, 0, 2, -1, 7])
def test_all_ignored(fn, ignore):
    rng = _rng("all-ignored", fn, ignore)
    x = rng.normal(size=(3, 4, 2))
    y = np.full((3, 2), ignore)
    kw = {} if ignore == -100 else {"ignore_index": ignore}
    call = {"ce": ce, "nll": nll}.get(fn, lambda *a, **k: ce(*a, label_smoothing=0.2, **k))
    w = rng.uniform(0.5, 2, size=4)
    for weight in (None, w):
        loss, grad = call(x, y, weight, grad=True, **kw)
        assert type(loss) is float and math.isnan(loss)
        assert grad.shape == x.shape and np.all(grad == 0)
        loss, grad = call(x, y, weight, reduction="sum", grad=True, **kw)
        assert loss == 0.0 and np.all(grad == 0)
        loss, grad = call(x, y, weight, reduction="none", grad=True, **kw)
        np.testing.assert_array_equal(loss, np.zeros((3, 2)))
        assert np.all(grad == 0)


def test_ignore_real_class_still_in_softmax():
    x = np.array([[1.0, 2.0, 3.0], [0.5, -0.5, 2.0]])
    y = np.array([2, 0])
    loss, grad = ce(x, y, ignore_index=2, reduction="sum", grad=True)
    expected = -ref.log_softmax(x[1], 0)[0]
    assert loss == pytest.approx(expected, rel=1e-14)
    assert np.all(grad[0] == 0)
    # The ignored class still sits in the denominator of the other row and gets gradient.
    assert grad[1, 2] == pytest.approx(ref.softmax(x[1], 0)[2], rel=1e-14)


def test_ignored_positions_are_not_range_checked():
    x = np.zeros((3, 4))
    for ignore in (-100, 4, 1000, -5):
        y = np.array([0, ignore, 3])
        loss = ce(x, y, ignore_index=ignore, reduction="sum")
        assert loss == pytest.approx(2 * math.log(4), rel=1e-15)


def test_zero_weight_sum_mean_is_nan():
    x = np.random.default_rng(5).normal(size=(4, 3))
    y = np.array([0, 0, 1, 1])
    w = np.array([0.0, 0.0, 2.0])
    assert math.isnan(ce(x, y, w))
    assert math.isnan(nll(x, y, w))
    assert ce(x, y, w, reduction="sum") == 0.0


# ----------------------------------------------------------------------------------------------
# Label smoothing options
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [-0.1, -1.0, -1e9, -math.inf])
def test_negative_label_smoothing_is_zero(value):
    rng = _rng("negative-ls", value)
    x, y = _random_case(rng, (5, 4, 2))
    q = _probabilities(rng, x.shape)
    w = rng.uniform(0.5, 2, size=4)
    for target in (y, q):
        for reduction in REDUCTIONS:
            a_loss, a_grad = ce(x, target, w, reduction=reduction, label_smoothing=value,
                                grad=True)
            b_loss, b_grad = ce(x, target, w, reduction=reduction, grad=True)
            np.testing.assert_array_equal(a_loss, b_loss)
            np.testing.assert_array_equal(a_grad, b_grad)


@pytest.mark.parametrize("value", [1.0000001, 1.5, 2.0, math.inf, math.nan])
def test_label_smoothing_above_one_or_nan_rejected(value):
    x = np.zeros((2, 3))
    out = np.full(x.shape, SENTINEL)
    with pytest.raises(ValueError, match="label_smoothing"):
        ce(x, np.array([0, 1]), label_smoothing=value, grad=out)
    with pytest.raises(ValueError, match="label_smoothing"):
        ce(x, np.full((2, 3), 1 / 3), label_smoothing=value, grad=out)
    assert np.all(out == SENTINEL)


def test_label_smoothing_one_is_uniform_target():
    rng = _rng("ls-one")
    x, y = _random_case(rng, (6, 5))
    loss, grad = ce(x, y, label_smoothing=1.0, grad=True)
    lp = ref.log_softmax(x, 1)
    assert loss == pytest.approx(float(np.mean(-lp.mean(axis=1))), rel=1e-13)
    np.testing.assert_allclose(grad, (np.exp(lp) - 1 / 5) / 6, rtol=1e-12, atol=1e-16)
    # The labels no longer matter.
    assert ce(x, (y + 1) % 5, label_smoothing=1.0) == pytest.approx(loss, rel=1e-14)


# ----------------------------------------------------------------------------------------------
# Label dtypes
# ----------------------------------------------------------------------------------------------

LABEL_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
                np.dtype(">i4"), np.dtype(">u8")]


@pytest.mark.parametrize("ldtype", LABEL_DTYPES, ids=lambda d: np.dtype(d).str)
@pytest.mark.parametrize("fn", ["ce", "nll"])
def test_label_dtypes(fn, ldtype):
    rng = _rng("label-dtype", fn, np.dtype(ldtype).str)
    call = ce if fn == "ce" else nll
    x, y = _random_case(rng, (6, 5, 3))
    w = rng.uniform(0.5, 2, size=5)
    typed = y.astype(ldtype)
    for reduction in REDUCTIONS:
        a_loss, a_grad = call(x, typed, w, reduction=reduction, grad=True)
        b_loss, b_grad = call(x, y, w, reduction=reduction, grad=True)
        np.testing.assert_array_equal(a_loss, b_loss)
        np.testing.assert_array_equal(a_grad, b_grad)
    expected, expected_grad = (ref.cross_entropy if fn == "ce" else ref.nll_loss)(x, y, w)
    loss, grad = call(x, typed, w, grad=True)
    assert loss == pytest.approx(expected, rel=1e-12)
    _check_grad(grad, expected_grad, np.float64)
    # ignore_index that the dtype can hold.
    ignore = 3 if np.dtype(ldtype).kind == "u" else -100
    masked = y.copy()
    masked[:2] = ignore
    a = call(x, masked.astype(ldtype), w, ignore_index=ignore, reduction="none")
    b, _ = (ref.cross_entropy if fn == "ce" else ref.nll_loss)(x, masked, w, ignore_index=ignore,
                                                               reduction="none")
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_unsigned_label_ignore_at_the_top_of_the_range():
    x = np.zeros((3, 4))
    y = np.array([0, 255, 3], dtype=np.uint8)
    loss = ce(x, y, ignore_index=255)
    assert loss == pytest.approx(math.log(4), rel=1e-15)
    # No wrap-around: 255 is not -1, and -1 (int8) is not 255.
    with pytest.raises(xentkit.LabelError):
        ce(x, y, ignore_index=-1)
    with pytest.raises(xentkit.LabelError):
        ce(x, np.array([0, -1, 3], dtype=np.int8), ignore_index=255)
    y64 = np.array([0, 2**64 - 1, 1], dtype=np.uint64)
    with pytest.raises(xentkit.LabelError) as info:
        ce(x, y64, ignore_index=-1)
    assert info.value.value == 2**64 - 1
    assert info.value.index == 1


@pytest.mark.parametrize("fn", ["ce", "nll"])
def test_bool_labels_rejected(fn):
    call = ce if fn == "ce" else nll
    with pytest.raises(TypeError):
        call(np.zeros((3, 2)), np.array([True, False, True]))


@pytest.mark.parametrize("fn", ["ce", "nll"])
@pytest.mark.parametrize("tdtype", [np.float32, np.float64, np.float16])
def test_floating_target_of_other_shape_rejected(fn, tdtype):
    call = ce if fn == "ce" else nll
    with pytest.raises(TypeError):
        call(np.zeros((3, 2)), np.array([0, 1, 1], dtype=tdtype))


@pytest.mark.parametrize("tdtype", [np.int64, np.int32, np.uint8, np.bool_])
def test_integer_probability_target_rejected(tdtype):
    with pytest.raises(TypeError):
        ce(np.zeros((3, 2)), np.zeros((3, 2), dtype=tdtype))


@pytest.mark.parametrize("ignore", [0, 1, 5])
def test_probability_targets_reject_nonnegative_ignore_index(ignore):
    x = np.zeros((3, 2))
    q = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="ignore_index"):
        ce(x, q, ignore_index=ignore)
    assert ce(x, q, ignore_index=-7) == pytest.approx(math.log(2), rel=1e-15)


# ----------------------------------------------------------------------------------------------
# Input dtypes, weights and outputs
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", ["ce", "nll", "ce_prob"])
def test_float16_inputs(fn):
    rng = _rng("f16", fn)
    x, y = _random_case(rng, (8, 5, 3), np.float16)
    w = rng.uniform(0.5, 2, size=5).astype(np.float16)
    if fn == "ce_prob":
        y = _probabilities(rng, x.shape, np.float16)
    call = nll if fn == "nll" else ce
    reference = ref.nll_loss if fn == "nll" else ref.cross_entropy
    for reduction in REDUCTIONS:
        loss, grad = call(x, y, w, reduction=reduction, grad=True)
        expected, expected_grad = reference(x.astype(np.float64),
                                            y.astype(np.float64) if fn == "ce_prob" else y,
                                            w.astype(np.float64), reduction=reduction)
        _check_loss(loss, expected, np.float16, reduction, (8, 3))
        _check_grad(grad, expected_grad, np.float16)
        if reduction != "none":
            assert float(np.float16(loss)) == loss


def test_weight_converted_to_compute_dtype():
    rng = _rng("weight-dtype")
    x, y = _random_case(rng, (6, 4))
    w_int = np.array([1, 2, 3, 4])
    assert ce(x, y, w_int) == ce(x, y, w_int.astype(np.float64))
    w32 = rng.uniform(0.5, 2, 4).astype(np.float32)
    assert ce(x, y, w32) == pytest.approx(ref.cross_entropy(x, y, w32.astype(np.float64))[0],
                                          rel=1e-13)
    x32 = x.astype(np.float32)
    w64 = rng.uniform(0.5, 2, 4)
    loss, grad = ce(x32, y, w64, grad=True)
    assert grad.dtype == np.float32
    assert loss == pytest.approx(ref.cross_entropy(x32, y, w64)[0], rel=1e-5)


@pytest.mark.parametrize("fn", ["ce", "nll", "ce_prob"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_grad_outputs(fn, dtype):
    rng = _rng("outputs", fn, np.dtype(dtype).name)
    x, y = _random_case(rng, (5, 4, 3), dtype)
    if fn == "ce_prob":
        y = _probabilities(rng, x.shape, dtype)
    call = nll if fn == "nll" else ce
    w = rng.uniform(0.5, 2, size=4).astype(dtype)
    ulps = 4 * float(np.finfo(dtype).eps)
    for reduction in REDUCTIONS:
        loss, grad = call(x, y, w, reduction=reduction, grad=True)
        assert grad.flags.c_contiguous and grad.flags.writeable
        # grad=False gives the loss alone.
        plain = call(x, y, w, reduction=reduction, grad=False)
        assert not isinstance(plain, tuple)
        np.testing.assert_array_equal(plain, loss)
        # A caller-provided array.
        out = np.full(x.shape, SENTINEL, dtype=dtype)
        loss2, grad2 = call(x, y, w, reduction=reduction, grad=out)
        assert grad2 is out
        np.testing.assert_allclose(out, grad, rtol=ulps, atol=0)
        np.testing.assert_allclose(loss2, loss, rtol=ulps, atol=0)
        # In place: the input is overwritten with the gradient, the loss is still right.
        xi = x.copy()
        loss3, grad3 = call(xi, y, w, reduction=reduction, grad=xi)
        assert grad3 is xi
        np.testing.assert_allclose(xi, grad, rtol=ulps, atol=0)
        np.testing.assert_allclose(loss3, loss, rtol=ulps, atol=0)


@pytest.mark.parametrize("fn", ["ce", "nll", "ce_prob"])
def test_bad_grad_outputs(fn):
    rng = _rng("bad-outputs", fn)
    x, y = _random_case(rng, (5, 4))
    if fn == "ce_prob":
        y = _probabilities(rng, x.shape)
    call = nll if fn == "nll" else ce
    with pytest.raises(ValueError):
        call(x, y, grad=np.zeros((4, 5)))
    with pytest.raises((ValueError, TypeError)):
        call(x, y, grad=np.zeros((5, 4), dtype=np.float32))
    ro = np.zeros((5, 4))
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        call(x, y, grad=ro)
    with pytest.raises(ValueError):
        call(x, y, grad=np.zeros((4, 5)).T)


@pytest.mark.parametrize("fn", ["ce", "nll", "ce_prob"])
def test_grad_overlapping_weight_rejected(fn):
    rng = _rng("overlap-weight", fn)
    x, y = _random_case(rng, (5, 4))
    if fn == "ce_prob":
        y = _probabilities(rng, x.shape)
    call = nll if fn == "nll" else ce
    buf = np.full(24, SENTINEL)
    out = buf[:20].reshape(5, 4)
    weight = buf[16:20]
    weight[:] = 1.0
    with pytest.raises(ValueError):
        call(x, y, weight, grad=out)
    assert np.all(buf[:16] == SENTINEL)


def test_grad_overlapping_probability_target_rejected():
    rng = _rng("overlap-target")
    x = rng.normal(size=(5, 4))
    q = _probabilities(rng, x.shape)
    saved = q.copy()
    with pytest.raises(ValueError):
        ce(x, q, grad=q)
    np.testing.assert_array_equal(q, saved)


@pytest.mark.parametrize("fn", ["ce", "nll", "ce_prob"])
def test_non_contiguous_inputs(fn):
    rng = _rng("strides", fn)
    base = rng.normal(size=(6, 8, 5))
    x = base[:, ::2, :]
    y = rng.integers(0, 4, size=(6, 10))[:, ::2]
    if fn == "ce_prob":
        y = _probabilities(rng, (6, 4, 10))[:, :, ::2]
    call = nll if fn == "nll" else ce
    w = rng.uniform(0.5, 2, size=8)[::2]
    loss, grad = call(x, y, w, grad=True, reduction="sum")
    loss_c, grad_c = call(np.ascontiguousarray(x), np.ascontiguousarray(y),
                          np.ascontiguousarray(w), grad=True, reduction="sum")
    assert loss == pytest.approx(loss_c, rel=1e-14)
    np.testing.assert_allclose(grad, grad_c, rtol=1e-14, atol=1e-17)
    assert grad.flags.c_contiguous


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, tshape", [
    ((4, 5), (3,)),
    ((4, 5, 2), (4, 3)),
    ((4, 5, 2), (3, 2)),
    ((2, 3, 4, 5), (2, 4)),
    ((2, 3, 4, 5), (2, 5, 4)),
    ((4, 5), (4, 2)),
    ((3,), (2,)),
    ((4, 5), ()),
], ids=str)
@pytest.mark.parametrize("fn", ["ce", "nll"])
def test_shape_mismatch(fn, shape, tshape):
    call = ce if fn == "ce" else nll
    x = np.zeros(shape)
    out = np.full(shape, SENTINEL)
    with pytest.raises(ValueError) as info:
        call(x, np.zeros(tshape, dtype=np.int64), grad=out)
    message = str(info.value)
    assert _shape_in(shape, message), message
    assert _shape_in(tshape, message), message
    assert np.all(out == SENTINEL)


@pytest.mark.parametrize("fn", ["ce", "nll", "ce_prob"])
@pytest.mark.parametrize("reduction", ["avg", "elementwise_mean", "", "batchmean", "none "])
def test_bad_reduction(fn, reduction):
    x = np.zeros((2, 3))
    y = np.full((2, 3), 1 / 3) if fn == "ce_prob" else np.array([0, 1])
    call = nll if fn == "nll" else ce
    with pytest.raises(ValueError, match="reduction"):
        call(x, y, reduction=reduction)


@pytest.mark.parametrize("fn", ["ce", "nll", "ce_prob"])
@pytest.mark.parametrize("wshape", [(2,), (4,), (0,), (3, 1), (1, 3), ()], ids=str)
def test_bad_weight_shape(fn, wshape):
    x = np.zeros((2, 3))
    y = np.full((2, 3), 1 / 3) if fn == "ce_prob" else np.array([0, 1])
    call = nll if fn == "nll" else ce
    out = np.full(x.shape, SENTINEL)
    with pytest.raises(ValueError, match="weight"):
        call(x, y, np.ones(wshape), grad=out)
    assert np.all(out == SENTINEL)


@pytest.mark.parametrize("fn", ["ce", "nll"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("bad, index", [(5, 4), (-1, 0), (-101, 5), (2**31, 2), (100, 1)])
def test_out_of_range_label(fn, reduction, bad, index):
    call = ce if fn == "ce" else nll
    x = np.zeros((2, 5, 3))
    y = np.array([[0, 1, 2], [3, 4, 0]])
    y.reshape(-1)[index] = bad
    out = np.full(x.shape, SENTINEL)
    with pytest.raises(xentkit.LabelError) as info:
        call(x, y, reduction=reduction, grad=out)
    err = info.value
    assert isinstance(err, IndexError) and isinstance(err, ValueError)
    assert err.value == bad
    assert err.index == index
    assert str(bad) in str(err)
    assert "target" in str(err)
    assert np.all(out == SENTINEL)
    # In place: the input is left as it was.
    xi = np.arange(30, dtype=np.float64).reshape(x.shape)
    saved = xi.copy()
    with pytest.raises(IndexError):
        call(xi, y, reduction=reduction, grad=xi)
    np.testing.assert_array_equal(xi, saved)


def test_out_of_range_label_one_dimensional_and_smoothing():
    with pytest.raises(xentkit.LabelError) as info:
        ce(np.zeros(3), np.array(3))
    assert info.value.value == 3 and info.value.index == 0
    with pytest.raises(xentkit.LabelError):
        ce(np.zeros((2, 3)), np.array([0, 3]), label_smoothing=0.2, weight=np.ones(3))
    with pytest.raises(xentkit.LabelError):
        ce(np.zeros((2, 3)), np.array([-100, 3]))


@pytest.mark.parametrize("shape, tshape", [((2, 0), (2,)), ((0,), ()), ((2, 0, 3), (2, 3))],
                         ids=str)
def test_no_classes_with_positions(shape, tshape):
    with pytest.raises(ValueError):
        ce(np.zeros(shape), np.zeros(tshape, dtype=np.int64))
    with pytest.raises(ValueError):
        nll(np.zeros(shape), np.zeros(tshape, dtype=np.int64))


def test_empty_batches():
    for shape, tshape in [((0, 4), (0,)), ((0, 0), (0,)), ((0, 3, 2), (0, 2)),
                          ((2, 3, 0), (2, 0)), ((2, 3, 0, 4), (2, 0, 4))]:
        for dtype in DTYPES:
            x = np.zeros(shape, dtype=dtype)
            y = np.zeros(tshape, dtype=np.int64)
            for call in (ce, nll):
                loss, grad = call(x, y, grad=True)
                assert type(loss) is float and math.isnan(loss)
                assert grad.shape == shape and grad.dtype == dtype
                assert call(x, y, reduction="sum") == 0.0
                none = call(x, y, reduction="none")
                assert none.shape == tshape and none.dtype == dtype
            q = np.zeros(shape, dtype=dtype)
            assert math.isnan(ce(x, q))
            assert ce(x, q, reduction="sum") == 0.0
            assert ce(x, q, reduction="none").shape == ref.loss_shape(shape)


@pytest.mark.parametrize("obj", [[[0.0, 1.0]], 1.0, "abc", None, (0.5, 0.2)],
                         ids=lambda o: type(o).__name__)
def test_non_array_arguments(obj):
    for call in (ce, nll):
        with pytest.raises(TypeError):
            call(obj, np.zeros(1, dtype=np.int64))
        with pytest.raises(TypeError):
            call(np.zeros((1, 2)), obj)
    with pytest.raises(TypeError):
        ce(np.zeros((1, 2)), np.zeros(1, dtype=np.int64), [1.0, 2.0])
    for fn in (xentkit.log_softmax, xentkit.softmax):
        with pytest.raises(TypeError):
            fn(obj)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex128, object,
                                   "U3"], ids=str)
def test_unsupported_input_dtype(dtype):
    x = np.zeros((3, 4), dtype=dtype)
    for call in (ce, nll):
        with pytest.raises(TypeError):
            call(x, np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError):
        xentkit.log_softmax(x)
    with pytest.raises(TypeError):
        xentkit.softmax(x, dim=0)


def test_zero_dimensional_input():
    with pytest.raises(ValueError):
        ce(np.zeros(()), np.zeros((), dtype=np.int64))
    with pytest.raises(ValueError):
        ce(np.zeros(()), np.zeros(()))
    with pytest.raises(ValueError):
        nll(np.zeros(()), np.zeros((), dtype=np.int64))


# ----------------------------------------------------------------------------------------------
# Edge values
# ----------------------------------------------------------------------------------------------

def test_confident_prediction_gradient_keeps_precision():
    x = np.array([[0.0, -40.0, -40.0]])
    for inp in (x, x[0]):
        target = np.array([0]) if inp.ndim == 2 else np.array(0)
        loss, grad = ce(inp, target, grad=True)
        g = grad.reshape(-1)
        assert g[0] != 0
        assert g[0] == pytest.approx(-2 * math.exp(-40), rel=1e-12)
        assert g[1] == pytest.approx(math.exp(-40), rel=1e-12)
        assert 0 <= loss <= 1e-16
        _, grad_sum = ce(inp, target, reduction="sum", grad=True)
        assert grad_sum.reshape(-1)[0] == pytest.approx(-2 * math.exp(-40), rel=1e-12)
    # float32: the label entry is not rounded to 0 either.
    x32 = np.array([[0.0, -20.0, -20.0]], dtype=np.float32)
    _, grad = ce(x32, np.array([0]), grad=True)
    assert grad[0, 0] == pytest.approx(-2 * math.exp(-20), rel=1e-5)


def test_positive_infinite_logits():
    inf = math.inf
    x = np.array([[inf, 0.0, 0.0]])
    loss, grad = ce(x, np.array([0]), grad=True)
    assert loss == 0.0
    assert np.all(grad == 0)
    assert ce(x, np.array([1])) == inf
    assert ce(x, np.array([1]), reduction="none")[0] == inf
    # Two +inf logits share the mass.
    x2 = np.array([[inf, 0.0, inf]])
    loss, grad = ce(x2, np.array([0]), grad=True)
    assert loss == pytest.approx(math.log(2), rel=1e-15)
    np.testing.assert_allclose(grad, [[-0.5, 0.0, 0.5]], rtol=1e-15, atol=0)
    for dtype in (np.float32, np.float16):
        loss, grad = ce(x.astype(dtype), np.array([0]), grad=True)
        assert loss == 0.0 and np.all(grad == 0)


def test_negative_infinite_logits():
    inf = math.inf
    x = np.array([[1.0, -inf, 2.0]])
    loss, grad = ce(x, np.array([0]), grad=True)
    assert loss == pytest.approx(math.log(math.e + math.e ** 2) - 1, rel=1e-14)
    assert grad[0, 1] == 0
    assert math.isfinite(grad[0, 0]) and math.isfinite(grad[0, 2])
    assert ce(x, np.array([1])) == inf
    # A zero-weight class adds nothing, even at -inf (0 * inf is 0), also in the smoothing term.
    w = np.array([1.0, 0.0, 1.0])
    assert ce(x, np.array([1]), w, reduction="sum") == 0.0
    loss, grad = ce(x, np.array([0]), w, label_smoothing=0.2, reduction="sum", grad=True)
    expected, expected_grad = ref.cross_entropy(x, np.array([0]), w, label_smoothing=0.2,
                                                reduction="sum")
    assert math.isfinite(loss)
    assert loss == pytest.approx(expected, rel=1e-14)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-14, atol=1e-16)
    # Without the zero weight, smoothing over a -inf logit is infinite.
    assert ce(x, np.array([0]), label_smoothing=0.2) == inf
    # Probability targets: a zero probability at a -inf logit adds nothing.
    xs = np.array([[-inf, 0.0, 1.0]])
    loss, grad = ce(xs, np.array([[0.0, 1.0, 0.0]]), reduction="sum", grad=True)
    assert loss == pytest.approx(1.3132616875182228, rel=1e-14)
    np.testing.assert_allclose(grad, [[0.0, -0.7310585786300049, 0.7310585786300049]],
                               rtol=1e-14)
    # nll_loss: a -inf entry that is not picked changes nothing.
    assert nll(np.array([[-inf, -1.0]]), np.array([1])) == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("gap", [100.0, 709.0, 709.8, 710.0, 1000.0, 1e6, 1e30])
def test_large_logit_gap_gives_finite_loss(gap, dtype):
    """-log softmax(x)[y] = lse(x) - x[y] stays finite however far the label logit lies below the
    largest one (exp(gap) overflowing must not turn the loss into inf)."""
    x = np.array([[gap, 0.0, -1.0]], dtype=dtype)
    exact = float(dtype(gap))  # lse(x) - 0 = gap + log1p(exp(-gap) + ...) rounds to gap here
    for reduction in ("mean", "sum"):
        loss, grad = ce(x, np.array([1]), reduction=reduction, grad=True)
        assert loss == pytest.approx(exact, rel=1e-6 if dtype == np.float32 else 1e-15)
        np.testing.assert_allclose(grad, [[1.0, -1.0, 0.0]], atol=1e-30)
    none = ce(x, np.array([1]), reduction="none")
    assert float(none[0]) == pytest.approx(exact, rel=1e-6 if dtype == np.float32 else 1e-15)
    # The same limit through the smoothing term and through nll_loss(log_softmax).
    expected, _ = ref.cross_entropy(x.astype(np.float64), np.array([1]), label_smoothing=0.3)
    assert ce(x, np.array([1]), label_smoothing=0.3) == pytest.approx(
        expected, rel=1e-6 if dtype == np.float32 else 1e-14)
    assert nll(xentkit.log_softmax(x, 1), np.array([1])) == pytest.approx(
        exact, rel=1e-6 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("shape", [(40, 6), (5, 4, 7), (7,)], ids=str)
def test_wide_logits_match_reference(shape):
    rng = _rng("wide", shape)
    x = rng.normal(size=shape) * 500
    y = rng.integers(0, _class_count(shape), size=ref.loss_shape(shape))
    w = rng.uniform(0.5, 2, size=_class_count(shape))
    for kw in ({}, {"weight": w, "label_smoothing": 0.1}):
        for reduction in REDUCTIONS:
            loss, grad = ce(x, y, reduction=reduction, grad=True, **kw)
            expected, expected_grad = ref.cross_entropy(x, y, reduction=reduction, **kw)
            _check_loss(loss, expected, np.float64, reduction, ref.loss_shape(shape))
            _check_grad(grad, expected_grad, np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape, tshape", [((3000, 17), (3000,)), ((8, 7, 500), (8, 500)),
                                           ((2, 50, 30, 20), (2, 30, 20))], ids=str)
def test_large_inputs_match_reference(shape, tshape, dtype):
    rng = _rng("large", shape, np.dtype(dtype).name)
    x = (rng.normal(size=shape) * 3).astype(dtype)
    y = rng.integers(0, shape[1], size=tshape)
    y.reshape(-1)[::7] = -100
    w = rng.uniform(0.5, 2, size=shape[1]).astype(dtype)
    q = ref.softmax(rng.normal(size=shape), 1).astype(dtype)
    for target, kw in ((y, {"label_smoothing": 0.1}), (q, {"label_smoothing": 0.05})):
        loss, grad = ce(x, target, w, grad=True, **kw)
        expected, expected_grad = ref.cross_entropy(x.astype(np.float64),
                                                    target.astype(np.float64)
                                                    if target.dtype.kind == "f" else target,
                                                    w.astype(np.float64), **kw)
        _check_loss(loss, expected, dtype, "mean")
        _check_grad(grad, expected_grad, dtype)
    loss, grad = nll(x, y, w, reduction="sum", grad=True)
    expected, expected_grad = ref.nll_loss(x.astype(np.float64), y, w.astype(np.float64),
                                           reduction="sum")
    _check_loss(loss, expected, dtype, "sum")
    _check_grad(grad, expected_grad, dtype)


def test_nan_propagates():
    x = np.array([[0.0, math.nan, 1.0], [0.0, 1.0, 2.0]])
    loss = ce(x, np.array([0, 1]))
    assert math.isnan(loss)
    none = ce(x, np.array([0, 1]), reduction="none")
    assert math.isnan(none[0]) and math.isfinite(none[1])


def test_single_class_is_free():
    rng = _rng("c1")
    x = rng.normal(size=(4, 1, 3)) * 10
    y = np.zeros((4, 3), dtype=np.int64)
    for kw in ({}, {"label_smoothing": 0.5}, {"weight": np.array([2.0])}):
        loss, grad = ce(x, y, grad=True, **kw)
        assert loss == 0.0
        assert np.all(grad == 0)


# ----------------------------------------------------------------------------------------------
# log_softmax / softmax
# ----------------------------------------------------------------------------------------------

SOFTMAX_SHAPES = [(5,), (3, 4), (2, 3, 4), (2, 3, 2, 2), (1, 1), (4, 1, 3)]


def _dims(shape):
    n = len(shape)
    return list(range(-n, n))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=str)
def test_log_softmax_and_softmax_every_dim(shape, dtype):
    rng = _rng("softmax", shape, np.dtype(dtype).name)
    x = (rng.normal(size=shape) * 3).astype(dtype)
    saved = x.copy()
    rtol = {np.dtype(np.float64): 1e-13, np.dtype(np.float32): 2e-6,
            np.dtype(np.float16): 2e-3}[np.dtype(dtype)]
    for dim in _dims(shape):
        lp = xentkit.log_softmax(x, dim)
        s = xentkit.softmax(x, dim=dim)
        for out in (lp, s):
            assert type(out) is np.ndarray and out.dtype == dtype and out.shape == shape
        expected = ref.log_softmax(x.astype(np.float64), dim)
        np.testing.assert_allclose(lp.astype(np.float64), expected, rtol=rtol,
                                   atol=rtol * 10 if dtype != np.float64 else 1e-15)
        np.testing.assert_allclose(s.astype(np.float64), np.exp(expected), rtol=rtol,
                                   atol=rtol * 1e-2)
        np.testing.assert_allclose(s.astype(np.float64).sum(axis=dim), 1.0,
                                   rtol=rtol * shape[dim] * 5)
    np.testing.assert_array_equal(x, saved)
    # Default dim is the last.
    np.testing.assert_array_equal(xentkit.log_softmax(x), xentkit.log_softmax(x, -1))
    np.testing.assert_array_equal(xentkit.softmax(x), xentkit.softmax(x, len(shape) - 1))


def test_log_softmax_zero_dimensional():
    for dtype in DTYPES:
        x = np.array(3.5, dtype=dtype)
        for dim in (0, -1):
            lp = xentkit.log_softmax(x, dim)
            s = xentkit.softmax(x, dim)
            assert lp.shape == () and s.shape == ()
            assert lp.dtype == dtype and s.dtype == dtype
            assert float(lp) == 0.0 and float(s) == 1.0
        for dim in (1, -2):
            with pytest.raises(ValueError):
                xentkit.log_softmax(x, dim)
            with pytest.raises(ValueError):
                xentkit.softmax(x, dim)


@pytest.mark.parametrize("shape, dim", [((3, 4), 2), ((3, 4), -3), ((5,), 1), ((5,), -2),
                                        ((2, 3, 4), 3), ((2, 3, 4), 100)], ids=str)
def test_log_softmax_dim_out_of_range(shape, dim):
    for fn in (xentkit.log_softmax, xentkit.softmax):
        with pytest.raises(ValueError):
            fn(np.zeros(shape), dim)


def test_log_softmax_limits_and_extremes():
    inf = math.inf
    np.testing.assert_array_equal(xentkit.log_softmax(np.array([inf, 0.0, 0.0])),
                                  [0.0, -inf, -inf])
    np.testing.assert_array_equal(xentkit.softmax(np.array([inf, 0.0, 0.0])), [1.0, 0.0, 0.0])
    lp = xentkit.log_softmax(np.array([inf, 1.0, inf]))
    np.testing.assert_allclose(lp, [-math.log(2), -inf, -math.log(2)], rtol=1e-15)
    np.testing.assert_allclose(xentkit.softmax(np.array([inf, 1.0, inf])), [0.5, 0.0, 0.5],
                               rtol=1e-15)
    lp = xentkit.log_softmax(np.array([1.0, -inf, 2.0]))
    assert lp[1] == -inf and np.all(np.isfinite(lp[[0, 2]]))
    # Huge finite logits do not overflow.
    x = np.array([1e300, 1e300 - 1e284, -1e300])
    np.testing.assert_allclose(xentkit.log_softmax(x), ref.log_softmax(x), rtol=1e-15)
    x = np.array([1000.0, 999.0], dtype=np.float32)
    np.testing.assert_allclose(xentkit.log_softmax(x), [-0.31326166, -1.3132616], rtol=1e-6)
    # Tiny probabilities keep their relative precision in softmax.
    s = xentkit.softmax(np.array([0.0, -700.0]))
    assert s[1] == pytest.approx(math.exp(-700), rel=1e-12)
    # The class dim of an (N, C, d) input, with float16 input.
    x16 = np.array([[[10.0], [0.0], [0.0]]], dtype=np.float16)
    lp16 = xentkit.log_softmax(x16, dim=1)
    assert lp16.dtype == np.float16
    np.testing.assert_allclose(lp16.astype(np.float64).ravel(),
                               ref.log_softmax(x16.astype(np.float64), 1).ravel(), rtol=2e-3)


def test_log_softmax_empty_and_non_contiguous():
    for shape in [(0, 3), (3, 0), (0,)]:
        for dim in _dims(shape):
            assert xentkit.log_softmax(np.zeros(shape), dim).shape == shape
            assert xentkit.softmax(np.zeros(shape), dim).shape == shape
    rng = _rng("ls-strides")
    base = rng.normal(size=(6, 8, 5))
    view = base[::2, 1::2, ::-1]
    for dim in range(3):
        np.testing.assert_allclose(xentkit.log_softmax(view, dim),
                                   xentkit.log_softmax(np.ascontiguousarray(view), dim),
                                   rtol=1e-15, atol=1e-15)
        np.testing.assert_allclose(xentkit.softmax(view, dim), ref.softmax(view, dim),
                                   rtol=1e-13, atol=1e-16)


# ----------------------------------------------------------------------------------------------
# PyTorch 2.13 as a second oracle
# ----------------------------------------------------------------------------------------------

TORCH_SHAPES = [(7,), (9, 6), (4, 5, 3), (3, 4, 2, 3), (2, 3, 1, 2, 2), (16, 11), (5, 1),
                (0, 3), (1, 7, 9)]


def _torch_config(seed):
    rng = _rng("torch-config", seed)
    shape = TORCH_SHAPES[seed % len(TORCH_SHAPES)]
    dtype = np.float64 if seed % 3 else np.float32
    reduction = REDUCTIONS[(seed // 3) % 3]
    kind = ("indices", "probs")[(seed // 2) % 2]
    c = _class_count(shape)
    x = (rng.normal(size=shape) * rng.choice([0.5, 2.0, 6.0])).astype(dtype)
    kw = {}
    if rng.random() < 0.5:
        kw["weight"] = rng.uniform(0.1, 3.0, size=c).astype(dtype)
    if rng.random() < 0.6:
        kw["label_smoothing"] = float(rng.choice([0.05, 0.3, 1.0, -0.2]))
    if kind == "indices":
        y = rng.integers(0, c, size=ref.loss_shape(shape)).astype(np.int64)
        if rng.random() < 0.6 and y.size:
            ignore = int(rng.choice([-100, rng.integers(0, c), -3]))
            if ignore != -100:
                kw["ignore_index"] = ignore
            y.reshape(-1)[rng.random(y.size) < 0.3] = ignore
    else:
        y = rng.uniform(-0.2, 1.5, size=shape) if rng.random() < 0.3 else \
            _probabilities(rng, shape)
        y = y.astype(dtype)
    return x, y, kw, reduction, dtype


def _torch_ce(torch, x, y, kw, reduction, fn="ce"):
    F = torch.nn.functional
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.tensor(y.astype(np.int64) if y.dtype.kind in "iu" else y)
    tkw = dict(kw)
    if "weight" in tkw:
        tkw["weight"] = torch.tensor(tkw["weight"])
    if fn == "ce":
        out = F.cross_entropy(tx, ty, reduction=reduction, **tkw)
    else:
        out = F.nll_loss(tx, ty, reduction=reduction, **tkw)
    out.sum().backward()
    return out.detach().numpy(), tx.grad.numpy()


def _compare_torch(loss, grad, t_loss, t_grad, dtype):
    f64 = np.dtype(dtype) == np.float64
    rtol = 1e-12 if f64 else 1e-5
    # PyTorch forms a loss as lse - x[y]: its absolute error is an ulp of the logits' scale, so a
    # loss far below that scale (a confident row) is compared in absolute terms; xentkit keeps
    # it to full relative precision (checked against the float64 reference elsewhere).
    loss_scale = max(1.0, np.abs(t_loss[np.isfinite(t_loss)]).max(initial=0))
    np.testing.assert_allclose(np.asarray(loss, dtype=np.float64), t_loss.astype(np.float64),
                               rtol=rtol, atol=(1e-15 if f64 else 1e-6) * loss_scale)
    scale = float(np.abs(t_grad).max(initial=0)) or 1.0
    np.testing.assert_allclose(grad.astype(np.float64), t_grad.astype(np.float64),
                               rtol=rtol, atol=(1e-13 if f64 else 2e-6) * scale)


@pytest.mark.parametrize("seed", range(48))
def test_cross_entropy_matches_torch(seed):
    torch = pytest.importorskip("torch")
    x, y, kw, reduction, dtype = _torch_config(seed)
    loss, grad = ce(x, y, reduction=reduction, grad=True, **kw)
    t_loss, t_grad = _torch_ce(torch, x, y, kw, reduction)
    _compare_torch(loss, grad, t_loss, t_grad, dtype)


@pytest.mark.parametrize("seed", range(18))
def test_nll_loss_matches_torch(seed):
    torch = pytest.importorskip("torch")
    x, y, kw, reduction, dtype = _torch_config(seed * 2)  # class-index configurations
    kw.pop("label_smoothing", None)
    if y.dtype.kind not in "iu":
        y = _rng("nll-torch", seed).integers(0, _class_count(x.shape),
                                            size=ref.loss_shape(x.shape))
    loss, grad = nll(x, y, reduction=reduction, grad=True, **kw)
    t_loss, t_grad = _torch_ce(torch, x, y, kw, reduction, fn="nll")
    _compare_torch(loss, grad, t_loss, t_grad, dtype)


@pytest.mark.parametrize("shape", [(12, 5), (3, 4, 6), (9,)], ids=str)
def test_wide_logits_match_torch(shape):
    torch = pytest.importorskip("torch")
    rng = _rng("torch-wide", shape)
    x = rng.normal(size=shape) * 800
    y = rng.integers(0, _class_count(shape), size=ref.loss_shape(shape))
    for reduction in REDUCTIONS:
        loss, grad = ce(x, y, reduction=reduction, grad=True)
        t_loss, t_grad = _torch_ce(torch, x, y, {}, reduction)
        _compare_torch(loss, grad, t_loss, t_grad, np.float64)


def test_torch_reference_examples_agree():
    torch = pytest.importorskip("torch")
    x = np.array(X_LS)
    q = np.array([[.2, .3, .5], [1, 0, 0], [0, 0, 1], [.5, .5, 0]])
    for kw in ({}, {"weight": np.array([1, 2, .5])}, {"label_smoothing": 0.1},
               {"weight": np.array([1, 2, .5]), "label_smoothing": 0.4}):
        for reduction in REDUCTIONS:
            loss, grad = ce(x, q, reduction=reduction, grad=True, **kw)
            t_loss, t_grad = _torch_ce(torch, x, q, kw, reduction)
            _compare_torch(loss, grad, t_loss, t_grad, np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=str)
def test_log_softmax_matches_torch(shape, dtype):
    torch = pytest.importorskip("torch")
    rng = _rng("torch-softmax", shape, np.dtype(dtype).name)
    x = (rng.normal(size=shape) * 4).astype(dtype)
    tx = torch.tensor(x)
    f64 = dtype == np.float64
    for dim in _dims(shape):
        expected = torch.log_softmax(tx, dim).numpy()
        np.testing.assert_allclose(xentkit.log_softmax(x, dim), expected,
                                   rtol=1e-13 if f64 else 2e-6, atol=1e-15 if f64 else 1e-6)
        expected = torch.softmax(tx, dim).numpy()
        np.testing.assert_allclose(xentkit.softmax(x, dim), expected,
                                   rtol=1e-13 if f64 else 2e-6, atol=1e-17 if f64 else 1e-8)
