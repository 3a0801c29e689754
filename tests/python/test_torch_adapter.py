"""xentkit.torch: the losses as autograd operations, against torch.nn.functional on fresh random
inputs (float64: loss and input.grad to 1e-12 relative), plus gradcheck, opcheck, torch.compile,
a training loop, 16-bit dtypes, the modules, errors and the import guard."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
xt = pytest.importorskip("xentkit.torch")
import xentkit  # noqa: E402

REDUCTIONS = ("none", "mean", "sum")


def _close(a, b, rtol=1e-12, atol=1e-14):
    a = a.detach().to(torch.float64)
    b = b.detach().to(torch.float64)
    assert a.shape == b.shape
    scale = b.abs().max().item() if b.numel() else 0.0
    err = (a - b).abs().max().item() if b.numel() else 0.0
    assert err <= rtol * scale + atol or (torch.isnan(a).equal(torch.isnan(b)) and
                                          torch.allclose(a, b, rtol, atol, equal_nan=True)), \
        f"max error {err} (scale {scale})"


def _both(fn_xt, fn_torch, x, *, upstream=None):
    """Loss and input.grad of both functions on copies of `x` (a random upstream gradient when
    given, else loss.backward())."""
    out = []
    for fn in (fn_xt, fn_torch):
        xi = x.detach().clone().requires_grad_(True)
        loss = fn(xi)
        loss.backward(upstream if upstream is not None else None) if loss.ndim == 0 and \
            upstream is None else loss.backward(upstream)
        out.append((loss.detach(), xi.grad))
    return out


def _upstream(loss_shape, gen, dtype=torch.float64):
    return torch.randn(loss_shape, generator=gen, dtype=dtype) if loss_shape else None


def _check_pair(fn_xt, fn_torch, x, gen):
    loss_shape = fn_torch(x.detach()).shape
    up = _upstream(loss_shape, gen) if len(loss_shape) else None
    (l1, g1), (l2, g2) = _both(fn_xt, fn_torch, x, upstream=up)
    _close(l1, l2)
    _close(g1, g2)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(int(np.random.SeedSequence().entropy % 2**63))


CLASS_SHAPES = [(9, 7), (7,), (4, 5, 3), (2, 6, 3, 4)]


def _targets(shape, gen, ignore=None):
    channels = shape[0] if len(shape) == 1 else shape[1]
    pos = () if len(shape) == 1 else shape[:1] + shape[2:]
    t = torch.randint(0, channels, pos, generator=gen)
    if ignore is not None and t.numel() > 1:
        mask = torch.rand(pos, generator=gen) < 0.3
        t[mask] = ignore
    return t, channels


@pytest.mark.parametrize("shape", CLASS_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_cross_entropy_indices_matches_torch(shape, reduction, weighted, smoothing, ignore_index,
                                             gen):
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    t, c = _targets(shape, gen, ignore=ignore_index if ignore_index >= 0 else -100)
    w = torch.rand(c, generator=gen, dtype=torch.float64) + 0.1 if weighted else None
    kw = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)
    _check_pair(lambda v: xt.cross_entropy(v, t, w, **kw),
                lambda v: F.cross_entropy(v, t, w, **kw), x, gen)


@pytest.mark.parametrize("shape", CLASS_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_probabilities_matches_torch(shape, reduction, weighted, smoothing, gen):
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    dim = 0 if len(shape) == 1 else 1
    q = torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64), dim)
    w = torch.rand(shape[dim], generator=gen, dtype=torch.float64) + 0.1 if weighted else None
    kw = dict(reduction=reduction, label_smoothing=smoothing)
    _check_pair(lambda v: xt.cross_entropy(v, q, w, **kw),
                lambda v: F.cross_entropy(v, q, w, **kw), x, gen)


@pytest.mark.parametrize("shape", CLASS_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_nll_loss_matches_torch(shape, reduction, weighted, gen):
    dim = 0 if len(shape) == 1 else 1
    x = torch.log_softmax(torch.randn(shape, generator=gen, dtype=torch.float64), dim)
    t, c = _targets(shape, gen, ignore=1)
    w = torch.rand(c, generator=gen, dtype=torch.float64) + 0.1 if weighted else None
    kw = dict(ignore_index=1, reduction=reduction)
    _check_pair(lambda v: xt.nll_loss(v, t, w, **kw), lambda v: F.nll_loss(v, t, w, **kw), x, gen)


BINARY_SHAPES = [(11,), (6, 5), (3, 4, 2)]


def _weights(shape, kind, gen):
    if kind is None:
        return None
    if kind == "last":
        return torch.rand(shape[-1:], generator=gen, dtype=torch.float64) + 0.2
    if kind == "full":
        return torch.rand(shape, generator=gen, dtype=torch.float64) + 0.2
    return torch.rand((shape[0],) + (1,) * (len(shape) - 1), generator=gen,
                      dtype=torch.float64) + 0.2  # "rows"


@pytest.mark.parametrize("shape", BINARY_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight", [None, "last", "rows", "full"])
def test_binary_cross_entropy_matches_torch(shape, reduction, weight, gen):
    x = torch.rand(shape, generator=gen, dtype=torch.float64) * 0.98 + 0.01
    t = torch.rand(shape, generator=gen, dtype=torch.float64)
    w = _weights(shape, weight, gen)
    _check_pair(lambda v: xt.binary_cross_entropy(v, t, w, reduction=reduction),
                lambda v: F.binary_cross_entropy(v, t, w, reduction=reduction), x, gen)


@pytest.mark.parametrize("shape", BINARY_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight", [None, "last", "rows"])
@pytest.mark.parametrize("pos_weight", [None, "last", "full"])
def test_binary_cross_entropy_with_logits_matches_torch(shape, reduction, weight, pos_weight,
                                                        gen):
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 4
    t = torch.rand(shape, generator=gen, dtype=torch.float64)
    w = _weights(shape, weight, gen)
    pw = _weights(shape, pos_weight, gen)
    kw = dict(reduction=reduction, pos_weight=pw)
    _check_pair(lambda v: xt.binary_cross_entropy_with_logits(v, t, w, **kw),
                lambda v: F.binary_cross_entropy_with_logits(v, t, w, **kw), x, gen)


@pytest.mark.parametrize("shape,dim", [((6, 9), -1), ((6, 9), 0), ((3, 4, 5), 1), ((7,), 0)])
@pytest.mark.parametrize("name", ["log_softmax", "softmax"])
def test_softmax_functions_match_torch(shape, dim, name, gen):
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    up = torch.randn(shape, generator=gen, dtype=torch.float64)
    (o1, g1), (o2, g2) = _both(lambda v: getattr(xt, name)(v, dim),
                               lambda v: getattr(F, name)(v, dim), x, upstream=up)
    _close(o1, o2)
    _close(g1, g2)


@pytest.mark.parametrize("name", ["log_softmax", "softmax"])
def test_softmax_functions_have_second_derivatives(name, gen):
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda v: getattr(xt, name)(v, 1), (x,))


@pytest.mark.parametrize("normalization", ["valid", "full", "batch_size", "none"])
@pytest.mark.parametrize("shape", [(8, 5), (2, 4, 3, 3)])
def test_softmax_with_loss_is_caffe_diff_times_upstream(normalization, shape, gen):
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=gen)
    labels[0] = 255
    scale = float(torch.rand((), generator=gen)) * 3
    xi = x.clone().requires_grad_(True)
    loss = xt.softmax_with_loss(xi, labels, ignore_label=255, normalization=normalization)
    (loss * scale).backward()
    ref_loss, ref_diff = xentkit.softmax_with_loss(x.numpy(), labels.numpy(), ignore_label=255,
                                                   normalization=normalization)
    assert loss.ndim == 0 and loss.dtype == torch.float64
    assert loss.item() == pytest.approx(ref_loss, rel=1e-13)
    _close(xi.grad, torch.from_numpy(ref_diff) * scale)
    # independent: SoftmaxWithLoss "valid" is torch's mean over the non-ignored positions
    if normalization == "valid":
        expect = F.cross_entropy(x, labels, ignore_index=255)
        assert loss.item() == pytest.approx(expect.item(), rel=1e-12)


@pytest.mark.parametrize("normalization", [None, "full", "valid"])
def test_sigmoid_cross_entropy_loss_is_caffe_diff_times_upstream(normalization, gen):
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64) * 3
    t = torch.rand(6, 4, generator=gen, dtype=torch.float64)
    xi = x.clone().requires_grad_(True)
    loss = xt.sigmoid_cross_entropy_loss(xi, t, normalization=normalization)
    (loss * 0.5).backward()
    # independent: Caffe's default normalization divides the summed loss by the batch size
    if normalization is None:
        x2 = x.clone().requires_grad_(True)
        expect = F.binary_cross_entropy_with_logits(x2, t, reduction="sum") / 6
        (expect * 0.5).backward()
        assert loss.item() == pytest.approx(expect.item(), rel=1e-12)
        _close(xi.grad, x2.grad)
    ref_loss, ref_diff = xentkit.sigmoid_cross_entropy_loss(x.numpy(), t.numpy(),
                                                            normalization=normalization)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-13)
    _close(xi.grad, torch.from_numpy(ref_diff) * 0.5)


# --- gradcheck and opcheck ----------------------------------------------------------------------

def _cases(gen):
    """(name, op, args) for every op: float64, several option sets."""
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    x3 = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 4, (5,), generator=gen)
    t3 = torch.randint(0, 4, (2, 3), generator=gen)
    q = torch.softmax(torch.randn(5, 4, generator=gen, dtype=torch.float64), 1)
    w = torch.rand(4, generator=gen, dtype=torch.float64) + 0.5
    p = (torch.rand(5, 4, generator=gen, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    tb = torch.rand(5, 4, generator=gen, dtype=torch.float64)
    ops = torch.ops.xentkit
    out = []
    for red in REDUCTIONS:
        out += [
            ("ce", ops.cross_entropy.default, (x, t, w, -100, red, 0.1, 0.0, None)),
            ("ce3", ops.cross_entropy.default, (x3, t3, None, 1, red, 0.0, 0.0, None)),
            ("ce_prob", ops.cross_entropy.default, (x, q, None, -100, red, 0.0, 0.0, None)),
            ("nll", ops.nll_loss.default, (x, t, w, 2, red)),
            ("bce", ops.binary_cross_entropy.default, (p, tb, w, red)),
            ("bcel", ops.binary_cross_entropy_with_logits.default, (x, tb, None, w, red)),
        ]
    out += [
        ("swl", ops.softmax_with_loss.default, (x3, t3, 1, 2, "valid", None)),
        ("scel", ops.sigmoid_cross_entropy_loss.default, (x, tb, None, None, None)),
        ("log_softmax", ops.log_softmax.default, (x, 1)),
        ("softmax", ops.softmax.default, (x3, -1)),
    ]
    return out


def _linear_cases(gen):
    """The fused linear cross-entropy's two ops (their own tests: test_linear_cross_entropy.py)."""
    x = torch.randn(7, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3, 4, -100, 1])
    cw = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5
    ops = torch.ops.xentkit
    out = [("lce", ops.linear_cross_entropy.default,
            (x, w, t, b, cw, -100, red, 0.1, 1e-3, 4.0, 3)) for red in REDUCTIONS]
    out.append(("lce_backward", ops.linear_cross_entropy_backward.default,
                (torch.rand(7, generator=gen, dtype=torch.float64), x.detach(), w.detach(), t, None,
                 None, -100, 0.0, 0.0, None, 3)))
    return out


def test_opcheck_every_op(gen):
    import xentkit.torch  # noqa: F401  (registers every op, the linear ones included)

    names = set()
    for name, op, args in _cases(gen) + _linear_cases(gen):
        torch.library.opcheck(op, args)
        names.add(op._schema.name)
    registered = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("xentkit::")}
    assert registered <= names, f"ops without an opcheck case: {registered - names}"


def test_gradcheck_every_op(gen):
    for name, op, args in _cases(gen):
        x = args[0]

        def fn(v, op=op, args=args):
            out = op(v, *args[1:])
            return out[0] if isinstance(out, tuple) else out

        assert torch.autograd.gradcheck(fn, (x,)), name


@pytest.mark.parametrize("fn", ["cross_entropy", "binary_cross_entropy_with_logits"])
def test_second_derivative_raises(fn, gen):
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    target = (torch.randint(0, 3, (4,), generator=gen) if fn == "cross_entropy"
              else torch.rand(4, 3, generator=gen, dtype=torch.float64))
    for call in (lambda: getattr(xt, fn)(x, target),
                 lambda: getattr(torch.ops.xentkit, fn)(x, target, *(
                     (None, -100, "mean", 0.0, 0.0, None) if fn == "cross_entropy"
                     else (None, None, "mean")))[0]):
        with pytest.raises(RuntimeError, match="second derivative"):
            torch.autograd.grad(call(), x, create_graph=True)


# --- torch.compile, export ---------------------------------------------------------------------

class _Head(torch.nn.Module):
    def __init__(self, loss):
        super().__init__()
        self.linear = torch.nn.Linear(6, 5)
        self.loss = loss

    def forward(self, h, target):
        return self.loss(self.linear(h), target)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_equals_eager(backend, gen):
    torch.manual_seed(0)
    h = torch.randn(12, 6, generator=gen)
    t = torch.randint(0, 5, (12,), generator=gen)
    tb = torch.rand(12, 5, generator=gen)
    for loss in (xt.CrossEntropyLoss(label_smoothing=0.1), xt.BCEWithLogitsLoss(),
                 xt.CrossEntropyLoss(reduction="none")):
        model = _Head(loss)
        target = tb if isinstance(loss, xt.BCEWithLogitsLoss) else t
        compiled = torch.compile(model, fullgraph=True, backend=backend)
        grads = []
        for m in (model, compiled):
            m.zero_grad()
            out = m(h, target)
            out.sum().backward() if out.ndim else out.backward()
            grads.append((out.detach(), model.linear.weight.grad.clone()))
        torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-6, atol=1e-6)


def test_compile_counts_no_graph_break(gen):
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    x = torch.randn(8, 4, generator=gen, requires_grad=True)
    t = torch.randint(0, 4, (8,), generator=gen)

    @torch.compile(backend=counter, fullgraph=True)
    def step(x, t):
        return (xt.cross_entropy(x, t) + xt.nll_loss(xt.log_softmax(x, 1), t)
                + xt.softmax(x, 1).sum())

    step(x, t).backward()
    assert counter.frame_count == 1


def test_export(gen):
    model = _Head(xt.CrossEntropyLoss())
    h = torch.randn(4, 6, generator=gen)
    t = torch.randint(0, 5, (4,), generator=gen)
    exported = torch.export.export(model, (h, t))
    assert any("xentkit" in str(n.target) for n in exported.graph.nodes)
    torch.testing.assert_close(exported.module()(h, t), model(h, t))


# --- training loop ------------------------------------------------------------------------------

@pytest.mark.parametrize("pair", [(xt.CrossEntropyLoss, torch.nn.CrossEntropyLoss),
                                  (xt.BCEWithLogitsLoss, torch.nn.BCEWithLogitsLoss)])
def test_training_loop_matches_torch(pair, gen):
    data = torch.randn(64, 10, generator=gen, dtype=torch.float64)
    if pair[0] is xt.CrossEntropyLoss:
        target = torch.randint(0, 4, (64,), generator=gen)
    else:
        target = torch.rand(64, 4, generator=gen, dtype=torch.float64)
    init = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    init = init.double()
    finals = []
    for loss_cls in pair:
        model = type(init)(*[type(m)(m.in_features, m.out_features).double()
                             if isinstance(m, torch.nn.Linear) else torch.nn.Tanh()
                             for m in init])
        model.load_state_dict(init.state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=0.3)
        criterion = loss_cls()
        for _ in range(30):
            opt.zero_grad()
            criterion(model(data), target).backward()
            opt.step()
        finals.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    _close(finals[0], finals[1], rtol=1e-10)
    assert not torch.equal(finals[0], torch.cat([p.detach().reshape(-1)
                                                 for p in init.parameters()]))


# --- 16-bit dtypes ------------------------------------------------------------------------------

SIXTEEN = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", SIXTEEN)
@pytest.mark.parametrize("fn", ["cross_entropy", "nll_loss", "binary_cross_entropy_with_logits",
                                "binary_cross_entropy", "log_softmax", "softmax",
                                "softmax_with_loss", "sigmoid_cross_entropy_loss"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_sixteen_bit_against_float32(dtype, fn, reduction, gen):
    shape = (16, 12)
    x32 = torch.randn(shape, generator=gen) * 3
    if fn == "binary_cross_entropy":
        x32 = torch.rand(shape, generator=gen) * 0.9 + 0.05
    if fn == "nll_loss":
        x32 = torch.log_softmax(x32, 1)
    x16 = x32.to(dtype)
    x32 = x16.float()  # the same values
    if fn in ("cross_entropy", "nll_loss", "softmax_with_loss"):
        target32 = target16 = torch.randint(0, 12, (16,), generator=gen)
    else:
        target32 = torch.rand(shape, generator=gen).to(dtype).float()
        target16 = target32.to(dtype)

    def call(x, target):
        f = getattr(xt, fn)
        if fn in ("log_softmax", "softmax"):
            return f(x, 1)
        if fn in ("softmax_with_loss", "sigmoid_cross_entropy_loss"):
            return f(x, target)
        return f(x, target, reduction=reduction)

    softmaxes = fn in ("log_softmax", "softmax")
    upstream = torch.randn(shape, generator=gen).to(dtype).float() if softmaxes else None
    results = []
    for x, target in ((x16, target16), (x32, target32)):
        xi = x.clone().requires_grad_(True)
        out = call(xi, target)
        out.backward(upstream.to(x.dtype) if softmaxes else torch.ones_like(out))
        results.append((out, xi.grad))
    (o16, g16), (o32, g32) = results
    assert o16.dtype == dtype and g16.dtype == dtype
    eps = torch.finfo(dtype).eps
    # the losses are computed in float32 and rounded once: within one rounding of the float32
    # result; the softmax functions' backward reads their rounded output, so a few roundings of
    # the gradient's scale
    torch.testing.assert_close(o16.float(), o32.to(dtype).float(), rtol=eps, atol=eps * 1e-3)
    atol = 4 * eps * g32.abs().max().item() if softmaxes else eps * 1e-2
    torch.testing.assert_close(g16.float(), g32.to(dtype).float(), rtol=eps, atol=atol)


# --- modules ------------------------------------------------------------------------------------

MODULE_PAIRS = [
    (xt.CrossEntropyLoss, torch.nn.CrossEntropyLoss,
     [dict(), dict(label_smoothing=0.2, reduction="sum"), dict(ignore_index=1), "weight"]),
    (xt.NLLLoss, torch.nn.NLLLoss, [dict(), dict(reduction="none"), "weight"]),
    (xt.BCELoss, torch.nn.BCELoss, [dict(), dict(reduction="sum"), "weight"]),
    (xt.BCEWithLogitsLoss, torch.nn.BCEWithLogitsLoss,
     [dict(), dict(reduction="none"), "weight", "pos_weight"]),
]


@pytest.mark.parametrize("ours,theirs,configs", MODULE_PAIRS,
                         ids=lambda v: getattr(v, "__name__", ""))
def test_modules_match_torch_modules(ours, theirs, configs, gen):
    for config in configs:
        if config in ("weight", "pos_weight"):
            config = {config: torch.rand(5, generator=gen, dtype=torch.float64) + 0.1}
        a, b = ours(**config), theirs(**config)
        assert isinstance(a, torch.nn.Module)
        assert a.state_dict().keys() == b.state_dict().keys()
        x = torch.randn(7, 5, generator=gen, dtype=torch.float64)
        if ours is xt.NLLLoss:
            x = torch.log_softmax(x, 1)
        if ours is xt.BCELoss:
            x = torch.sigmoid(x)
        if ours in (xt.CrossEntropyLoss, xt.NLLLoss):
            t = torch.randint(0, 5, (7,), generator=gen)
        else:
            t = torch.rand(7, 5, generator=gen, dtype=torch.float64)
        _check_pair(lambda v: a(v, t), lambda v: b(v, t), x, gen)


def test_module_legacy_reduction_arguments():
    assert xt.CrossEntropyLoss(size_average=False).reduction == "sum"
    assert xt.NLLLoss(reduce=False).reduction == "none"
    assert xt.BCEWithLogitsLoss().reduction == torch.nn.BCEWithLogitsLoss().reduction


# --- layouts, in-place gradient ----------------------------------------------------------------

def test_non_contiguous_input(gen):
    base = torch.randn(7, 10, generator=gen, dtype=torch.float64)
    x = base[:, ::2]
    t = torch.randint(0, 5, (7,), generator=gen)
    _check_pair(lambda v: xt.cross_entropy(v.t().contiguous().t(), t),
                lambda v: F.cross_entropy(v, t), x, gen)
    xi = base.clone().requires_grad_(True)
    xt.cross_entropy(xi[:, 1::2], t).backward()
    xr = base.clone().requires_grad_(True)
    F.cross_entropy(xr[:, 1::2], t).backward()
    _close(xi.grad, xr.grad)


def test_cpu_tensors_are_read_in_place(gen, monkeypatch):
    from xentkit import _core

    x = torch.randn(6, 4, generator=gen, requires_grad=True)
    t = torch.randint(0, 4, (6,), generator=gen)
    seen = []

    def spy(module, name):
        real = getattr(module, name)

        def call(input, *args, **kwargs):
            seen.append(input)
            return real(input, *args, **kwargs)
        monkeypatch.setattr(module, name, call)

    spy(xentkit, "cross_entropy")
    spy(_core, "cross_entropy_small")
    xt.cross_entropy(x, t).backward()  # the short path
    xt.cross_entropy(x, t, torch.ones(4)).backward()  # the general one
    assert len(seen) == 2
    assert all(np.shares_memory(a, x.detach().numpy()) for a in seen)


@pytest.mark.parametrize("fn", ["cross_entropy", "binary_cross_entropy_with_logits"])
def test_inplace_grad_matches_and_reuses_the_logits(fn, gen):
    h = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    target = (torch.randint(0, 4, (9,), generator=gen) if fn == "cross_entropy"
              else torch.rand(9, 4, generator=gen, dtype=torch.float64))
    grads = []
    for inplace in (False, True):
        lin = torch.nn.Linear(6, 4).double()
        torch.nn.init.constant_(lin.weight, 0.1)
        torch.nn.init.constant_(lin.bias, -0.2)
        with torch.no_grad():
            lin.weight.add_(torch.arange(24, dtype=torch.float64).reshape(4, 6) / 50)
        logits = lin(h)
        loss = getattr(xt, fn)(logits, target, inplace_grad=inplace)
        ptr = logits.data_ptr()
        loss.backward()
        grads.append((loss.detach(), lin.weight.grad.clone(), logits.detach().clone(), ptr))
    _close(grads[0][0], grads[1][0])
    _close(grads[0][1], grads[1][1])
    # the logits now hold the gradient of the loss with respect to them
    ref = grads[0][2].clone().requires_grad_(True)
    getattr(F, fn)(ref, target).backward()
    _close(grads[1][2], ref.grad)


def test_inplace_grad_misuse_raises(gen):
    t = torch.randint(0, 4, (5,), generator=gen)
    leaf = torch.randn(5, 4, generator=gen, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf"):
        xt.cross_entropy(leaf, t, inplace_grad=True)
    w = torch.randn(4, 4, generator=gen, requires_grad=True)
    logits = torch.randn(5, 4, generator=gen) @ w
    squared = logits.pow(2)  # pow saves its input: the logits
    loss = xt.cross_entropy(logits, t, inplace_grad=True) + squared.sum()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    logits = torch.randn(5, 4, generator=gen) @ w
    loss = xt.cross_entropy(logits, t, inplace_grad=True)
    logits.mul_(2)  # changed after the call: the saved gradient is gone
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_no_grad_computes_the_loss_only(gen):
    x = torch.randn(6, 5, generator=gen)
    t = torch.randint(0, 5, (6,), generator=gen)
    with torch.no_grad():
        loss = xt.cross_entropy(x, t)
    assert loss.grad_fn is None
    assert loss.item() == pytest.approx(F.cross_entropy(x, t).item(), rel=1e-6)


# --- errors -------------------------------------------------------------------------------------

def test_label_out_of_range_raises_label_error():
    x = torch.randn(4, 3, requires_grad=True)
    t = torch.tensor([0, 1, 3, 2])
    with pytest.raises(xentkit.LabelError) as info:
        xt.cross_entropy(x, t)
    assert info.value.value == 3 and info.value.index == 2
    with pytest.raises(IndexError):
        xt.nll_loss(x, torch.tensor([0, -1, 1, 1]))
    with pytest.raises(xentkit.LabelError):
        torch.compile(lambda v: xt.cross_entropy(v, t), fullgraph=True, backend="aot_eager")(x)


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(4, 3, requires_grad=True)
    t = torch.randint(0, 3, (4,))
    with pytest.raises(ValueError, match="reduction"):
        xt.cross_entropy(x, t, reduction="avg")
    with pytest.raises(ValueError, match="target"):
        xt.cross_entropy(x, torch.randint(0, 3, (5,)))
    with pytest.raises(ValueError, match=r"shape"):
        xt.binary_cross_entropy_with_logits(x, torch.rand(4, 4))
    with pytest.raises(ValueError, match="weight"):
        xt.cross_entropy(x, t, torch.rand(4))
    with pytest.raises(TypeError, match="input"):
        xt.cross_entropy(np.zeros((4, 3)), t)
    with pytest.raises(TypeError, match="floating"):
        xt.cross_entropy(torch.zeros(4, 3, dtype=torch.int64), t)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        xt.binary_cross_entropy(torch.full((3,), 1.5), torch.rand(3))
    with pytest.raises(ValueError, match="label_smoothing"):
        xt.cross_entropy(x, t, label_smoothing=1.5)
    with pytest.raises(RuntimeError, match="target requires grad"):
        xt.binary_cross_entropy_with_logits(x, torch.rand(4, 3, requires_grad=True))
    with pytest.raises(RuntimeError, match="weight requires grad"):
        xt.cross_entropy(x, t, torch.rand(3, requires_grad=True))
    with pytest.raises(TypeError, match="inplace_grad"):
        xt.cross_entropy(x, t, inplace_grad=1)
    assert x.grad is None


def test_import_without_torch_says_how_to_install():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "import xentkit\n"
        "assert xentkit.cross_entropy is not None\n"
        "try:\n"
        "    import xentkit.torch\n"
        "except ImportError as e:\n"
        "    assert 'pip install \"xentkit[torch]\"' in str(e), str(e)\n"
        "    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    plain = subprocess.run([sys.executable, "-c",
                            "import sys, xentkit; print('torch' in sys.modules)"],
                           capture_output=True, text=True)
    assert plain.stdout.strip() == "False", plain.stderr


# --- CUDA ---------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs PyTorch with CUDA")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", ["cross_entropy", "binary_cross_entropy_with_logits", "nll_loss"])
def test_cuda_tensors_match_cpu(dtype, fn):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(64, 1000, generator=gen).to(dtype)
    if fn == "nll_loss":
        x = torch.log_softmax(x.float(), 1).to(dtype)
    target = (torch.rand(64, 1000, generator=gen).to(dtype)
              if fn == "binary_cross_entropy_with_logits"
              else torch.randint(0, 1000, (64,), generator=gen))
    out = []
    for device in ("cpu", "cuda"):
        xi = x.to(device).requires_grad_(True)
        stream = torch.cuda.Stream() if device == "cuda" else None
        with torch.cuda.stream(stream) if stream is not None else torch.no_grad().__class__():
            loss = getattr(xt, fn)(xi, target.to(device))
            loss.backward()
        if stream is not None:
            torch.cuda.current_stream().wait_stream(stream)
        assert loss.device.type == device and xi.grad.device.type == device
        out.append((loss.float().cpu(), xi.grad.float().cpu()))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-2, atol=1e-5)


@pytest.mark.gpu
@cuda
def test_cuda_compile_and_training_step():
    model = _Head(xt.CrossEntropyLoss()).cuda()
    h = torch.randn(32, 6, device="cuda")
    t = torch.randint(0, 5, (32,), device="cuda")
    compiled = torch.compile(model, fullgraph=True)
    loss = compiled(h, t)
    loss.backward()
    ref = F.cross_entropy(model.linear(h), t)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)


# --- z-loss -------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_z_loss_matches_torch_written_out(reduction, weighted, gen):
    x = torch.randn(8, 6, generator=gen, dtype=torch.float64) * 2
    t = torch.randint(0, 6, (8,), generator=gen)
    t[1] = -100
    w = torch.rand(6, generator=gen, dtype=torch.float64) + 0.2 if weighted else None
    z = 1e-2

    def reference(v):
        nll = F.cross_entropy(v, t, w, reduction="none", label_smoothing=0.1)
        keep = t != -100
        wy = (w[t.clamp(min=0)] if w is not None else torch.ones_like(nll)) * keep
        total = nll + z * wy * torch.logsumexp(v, 1) ** 2
        if reduction == "none":
            return total
        return total.sum() / wy.sum() if reduction == "mean" else total.sum()

    _check_pair(lambda v: xt.cross_entropy(v, t, w, reduction=reduction, label_smoothing=0.1,
                                           z_loss=z), reference, x, gen)


# --- softcap ------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("z", [0.0, 1e-2])
def test_softcap_matches_torch_written_out(reduction, weighted, z, gen):
    x = torch.randn(8, 6, generator=gen, dtype=torch.float64) * 6
    t = torch.randint(0, 6, (8,), generator=gen)
    t[1] = -100
    w = torch.rand(6, generator=gen, dtype=torch.float64) + 0.2 if weighted else None
    s = 4.0

    def reference(v):
        c = s * torch.tanh(v / s)
        nll = F.cross_entropy(c, t, w, reduction="none", label_smoothing=0.1)
        keep = t != -100
        wy = (w[t.clamp(min=0)] if w is not None else torch.ones_like(nll)) * keep
        total = nll + z * wy * torch.logsumexp(c, 1) ** 2
        if reduction == "none":
            return total
        return total.sum() / wy.sum() if reduction == "mean" else total.sum()

    _check_pair(lambda v: xt.cross_entropy(v, t, w, reduction=reduction, label_smoothing=0.1,
                                           z_loss=z, softcap=s), reference, x, gen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_softcap_module_and_low_precision(dtype, gen):
    x = (torch.randn(16, 40, 3, generator=gen) * 10).to(dtype).requires_grad_(True)
    t = torch.randint(0, 40, (16, 3), generator=gen)
    loss = xt.CrossEntropyLoss(softcap=30.0, z_loss=1e-4)(x, t)
    loss.backward()
    x64 = x.detach().double().requires_grad_(True)
    c = 30.0 * torch.tanh(x64 / 30.0)
    ref = F.cross_entropy(c, t) + 1e-4 * (torch.logsumexp(c, 1) ** 2).mean()
    ref.backward()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=0,
                               atol=tol * x64.grad.abs().max().item())


def test_softcap_opcheck_and_gradcheck(gen):
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 4, (5,), generator=gen)
    w = torch.rand(4, generator=gen, dtype=torch.float64) + 0.5
    for red in REDUCTIONS:
        args = (x, t, w, -100, red, 0.1, 1e-2, 2.5)
        torch.library.opcheck(torch.ops.xentkit.cross_entropy.default, args)
    torch.autograd.gradcheck(lambda v: xt.cross_entropy(v, t, w, softcap=2.5, z_loss=1e-2), (x,))


def test_softcap_bad_values():
    x = torch.randn(3, 4, requires_grad=True)
    t = torch.randint(0, 4, (3,))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="softcap"):
            xt.cross_entropy(x, t, softcap=bad)
