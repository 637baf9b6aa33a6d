"""The fused spline engine against nflows' own: same numbers, same weights, compilable.

Every comparison runs both engines on the same weights and inputs; inputs reach well
beyond the tail bound (the linear tails) and sit exactly on knots and bounds.
"""

from __future__ import annotations

import pytest
import torch
from nflows.transforms.splines.rational_quadratic import (
    unconstrained_rational_quadratic_spline as nflows_spline,
)

from flashsim import spline
from flashsim.checkpoint import save_checkpoint
from flashsim.errors import FlashSimError
from flashsim.flow_config import FlowConfig
from flashsim.model import build_flow, load_model
from flashsim.presets import get_preset
from flashsim.spline import FusedRQCouplingTransform, rational_quadratic_spline
from flashsim.train.step import make_train_step


@pytest.fixture(autouse=True)
def one_thread():
    # the paper architecture is 50 M parameters: on a CPU shared with other work two
    # threads waiting for each other run ~10x slower than one
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


LOG_PROB_ATOL = 1e-4
GRAD_RTOL = 1e-4
TINY = FlowConfig(
    n_targets=5,
    n_conditioning=3,
    num_flow_steps=2,
    hidden_features=16,
    num_blocks=1,
    num_bins=6,
    tail_bound=2.0,
)


# ------------------------------------------------------------------ the kernel


def _spline_inputs(n: int = 500, d: int = 3, k: int = 8, bound: float = 2.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * 1.5 * bound  # a third outside [-B, B]
    x[:4, 0] = torch.tensor([-bound, bound, 0.0, -0.0])  # the bounds themselves
    w = torch.randn(n, d, k, generator=g)
    h = torch.randn(n, d, k, generator=g)
    u = torch.randn(n, d, k - 1, generator=g)
    return x, w, h, u


# nflows' default floors, and different ones for widths and heights (computed apart)
MINIMA = [(1e-3, 1e-3, 1e-3), (2e-2, 5e-3, 1e-2)]


@pytest.mark.parametrize("minima", MINIMA, ids=["default-floors", "other-floors"])
@pytest.mark.parametrize("inverse", [False, True])
def test_kernel_matches_nflows_values_and_gradients(inverse, minima):
    bound = 2.0
    x, w, h, u = _spline_inputs(bound=bound)
    ours_in = [t.clone().requires_grad_() for t in (x, w, h, u)]
    ref_in = [t.clone().requires_grad_() for t in (x, w, h, u)]
    floors = dict(zip(("min_bin_width", "min_bin_height", "min_derivative"), minima, strict=True))
    y, lad = rational_quadratic_spline(*ours_in, inverse=inverse, tail_bound=bound, **floors)
    y_ref, lad_ref = nflows_spline(
        *ref_in, inverse=inverse, tails="linear", tail_bound=bound, **floors
    )
    # float32 tolerances (bins with slopes near the 1e-3 floor amplify any rounding)
    assert torch.allclose(y, y_ref, atol=1e-5, rtol=0)
    assert torch.allclose(lad, lad_ref, atol=1e-4, rtol=0)
    outside = x.abs() > bound
    assert outside.any() and torch.equal(y[outside], x[outside])
    (y.sum() + lad.sum()).backward()
    (y_ref.sum() + lad_ref.sum()).backward()
    for ours, ref in zip(ours_in, ref_in, strict=True):
        assert ((ours.grad - ref.grad).norm() / ref.grad.norm()).item() <= GRAD_RTOL


def test_kernel_values_on_knots_belong_to_the_bin_on_their_right():
    # a value exactly on an inner knot: nflows' count puts it in the bin to the right
    bound, k = 1.0, 4
    w = torch.zeros(1, 1, k)  # equal bins: knots at -1, -0.5, 0, 0.5, 1
    h = torch.randn(1, 1, k, generator=torch.Generator().manual_seed(3))
    u = torch.randn(1, 1, k - 1, generator=torch.Generator().manual_seed(4))
    knots = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
    for inverse in (False, True):
        x = knots.view(5, 1)
        args = (w.expand(5, 1, k), h.expand(5, 1, k), u.expand(5, 1, k - 1))
        ours = rational_quadratic_spline(x, *args, inverse=inverse, tail_bound=bound)
        ref = nflows_spline(x, *args, inverse=inverse, tails="linear", tail_bound=bound)
        assert torch.allclose(ours[0], ref[0], atol=1e-5)
        assert torch.allclose(ours[1], ref[1], atol=1e-4)


def test_kernel_inverse_undoes_forward_everywhere():
    x, w, h, u = _spline_inputs(seed=5)
    y, lad = rational_quadratic_spline(x, w, h, u, tail_bound=2.0)
    x_back, lad_inv = rational_quadratic_spline(y, w, h, u, inverse=True, tail_bound=2.0)
    assert torch.allclose(x_back, x, atol=1e-4)
    # bins with slopes down to 1e-3 here: log-dets near -7 round to ~1e-4 (nflows alike)
    assert torch.allclose(lad + lad_inv, torch.zeros_like(lad), atol=1e-3)


def test_kernel_large_calls_without_gradients_run_in_row_passes_with_the_same_values(
    monkeypatch,
):
    # 1024 rows x 3 x 2K = 786 k table entries: 3 passes of 384 rows at 2^18 per pass
    x, w, h, u = _spline_inputs(n=1024, d=3, k=128, seed=6)
    monkeypatch.setattr(spline, "CPU_PASS_TABLE_ELEMENTS", 2**18)
    assert spline._pass_rows(x, torch.cat([w, h, u], -1)) == 384
    with torch.no_grad():
        passes = [rational_quadratic_spline(x, w, h, u, inverse=i, tail_bound=2.0) for i in (0, 1)]
    monkeypatch.setattr(spline, "CPU_PASS_TABLE_ELEMENTS", 2**62)
    with torch.no_grad():
        whole = [rational_quadratic_spline(x, w, h, u, inverse=i, tail_bound=2.0) for i in (0, 1)]
    for ours, ref in zip(passes, whole, strict=True):
        assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])


# ------------------------------------------------------------------ whole flows


def _flow_pair(config: FlowConfig, seed: int = 0):
    """The two engines' flows with the same random (non-initial) weights."""
    fused = build_flow(config.replace(spline="fused"), seed=seed)
    stock = build_flow(config.replace(spline="nflows"), seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    state = fused.state_dict()
    for name, value in state.items():
        if value.is_floating_point():  # weights, LU factors, batch-norm statistics
            noise = 0.05 * torch.randn(value.shape, generator=g)
            state[name] = value + (noise.abs() if "running_var" in name else noise)
    fused.load_state_dict(state)
    stock.load_state_dict(state)
    return fused, stock


def _batch(config: FlowConfig, n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, config.n_targets, generator=g) * 1.5 * config.tail_bound
    y = torch.randn(n, config.n_conditioning, generator=g)
    return x, y


def _gradient_errors(fused, stock) -> dict[str, float]:
    """Relative difference of every parameter's gradient, ``|g_f - g_s| / |g_s|``.

    The biases of the linear layers just before a batch norm have a zero gradient in
    exact arithmetic (the normalisation removes any shift): their computed gradients are
    rounding noise, compared against the gradient's overall size instead.
    """
    grads_f = {n: p.grad for n, p in fused.named_parameters()}
    grads_s = {n: p.grad for n, p in stock.named_parameters()}
    scale = max(g.norm().item() for g in grads_s.values())
    errors = {}
    for name, gs in grads_s.items():
        diff = (grads_f[name] - gs).norm().item()
        errors[name] = diff / max(gs.norm().item(), 1e-3 * scale)
    return errors


@torch.no_grad()
def _round_trip_error(flow, x: torch.Tensor, y: torch.Tensor) -> float:
    context = flow._embedding_net(y)
    z, _ = flow._transform(x, context=context)
    x_back, _ = flow._transform.inverse(z, context=context)
    return (x_back - x).abs().max().item()


ARCHITECTURES = {
    "tiny": (TINY, 256),
    "small-jets": (get_preset("small", "jets").flow, 256),
    "small-muons": (get_preset("small", "muons").flow, 128),
    # 50 M parameters: a small batch keeps it a few seconds
    "paper-jets": (get_preset("paper", "jets").flow, 24),
}
MARKS = {"paper-jets": pytest.mark.multiprocess}  # the project's mark for 50 M models


@pytest.mark.parametrize("name", [pytest.param(n, marks=MARKS.get(n, ())) for n in ARCHITECTURES])
def test_engines_agree_on_log_prob_gradients_and_samples(name):
    config, n = ARCHITECTURES[name]
    fused, stock = _flow_pair(config)
    assert fused.state_dict().keys() == stock.state_dict().keys()
    x, y = _batch(config, n)
    assert (x.abs() > config.tail_bound).float().mean() > 0.2  # the tails are exercised

    lp_f = fused.log_prob(x, context=y)  # training mode: batch statistics
    lp_s = stock.log_prob(x, context=y)
    diff = (lp_f - lp_s).abs().max().item()
    print(f"{name}: max |log_prob fused - nflows| = {diff:.3g}")
    assert diff <= LOG_PROB_ATOL

    lp_f.mean().backward()
    lp_s.mean().backward()
    errors = _gradient_errors(fused, stock)
    worst = max(errors, key=errors.get)
    print(f"{name}: worst relative gradient difference {errors[worst]:.3g} ({worst})")
    assert errors[worst] <= GRAD_RTOL

    fused.eval()
    stock.eval()
    with torch.no_grad():
        noise = torch.randn(n, config.n_targets, generator=torch.Generator().manual_seed(7))
        noise[:3] *= 4.0  # base noise far out: the tails of the inverse too
        x_f, _ = fused._transform.inverse(noise, context=fused._embedding_net(y))
        x_s, _ = stock._transform.inverse(noise, context=stock._embedding_net(y))
        sample_diff = (x_f - x_s).abs().max().item()
    print(f"{name}: max |sample fused - nflows| = {sample_diff:.3g}")
    assert sample_diff <= 1e-4
    # float32 round trips through these random (badly conditioned) weights lose ~1e-4 in
    # either engine; the fused one must lose no more than nflows, and be exact in float64
    trip = {key: _round_trip_error(flow, x, y) for key, flow in (("f", fused), ("s", stock))}
    assert trip["f"] <= trip["s"] + 1e-5
    assert _round_trip_error(fused.double(), x.double(), y.double()) <= 1e-4


def test_checkpoints_cross_load_between_engines(tmp_path):
    fused, stock = _flow_pair(TINY, seed=3)
    x, y = _batch(TINY, 64)
    fused.eval()
    with torch.no_grad():
        reference = fused.log_prob(x, context=y)
    for engine, flow in (("fused", fused), ("nflows", stock)):
        path = tmp_path / f"{engine}.pt"
        config = TINY.replace(spline=engine).to_dict()
        save_checkpoint(path, {"flow_config": config, "model": flow.state_dict()})
        for rebuilt_as in ("fused", "nflows"):
            loaded, loaded_config, _ = load_model(path, spline=rebuilt_as)
            assert loaded_config.spline == rebuilt_as
            is_fused = isinstance(
                loaded._transform._transforms[0]._transforms[1], FusedRQCouplingTransform
            )
            assert is_fused == (rebuilt_as == "fused")
            with torch.no_grad():
                assert (loaded.log_prob(x, context=y) - reference).abs().max() <= LOG_PROB_ATOL
        assert load_model(path)[1].spline == engine  # without override: the saved engine


def test_checkpoints_without_the_spline_key_load_as_fused(tmp_path):
    flow = build_flow(TINY.replace(spline="nflows"), seed=0)
    old_config = TINY.to_dict()
    del old_config["spline"]  # a checkpoint from before the field existed
    save_checkpoint(tmp_path / "old.pt", {"flow_config": old_config, "model": flow.state_dict()})
    loaded, config, _ = load_model(tmp_path / "old.pt")
    assert config.spline == "fused"
    assert isinstance(loaded._transform._transforms[0]._transforms[1], FusedRQCouplingTransform)


def test_unknown_engine_and_unsupported_tails_are_refused():
    with pytest.raises(FlashSimError, match="spline must be one of fused, nflows"):
        TINY.replace(spline="cuda")
    with pytest.raises(ValueError, match="tails='linear'"):
        FusedRQCouplingTransform(
            mask=torch.tensor([1, 0]), transform_net_create_fn=torch.nn.Linear, tails=None
        )


# ------------------------------------------------------------------ compilation


def test_fused_log_prob_and_backward_compile_as_one_graph():
    # aot_eager traces with dynamo (fullgraph: any graph break or data-dependent shape is
    # an error) and AOTAutograd (the backward graph) without inductor's slow C++ build;
    # the slow test below runs inductor itself.
    fused, _ = _flow_pair(TINY)
    x, y = _batch(TINY, 64)

    def nll(x, y):
        return -fused.log_prob(x, context=y)

    expected = nll(x, y)
    expected.mean().backward()
    want = {n: p.grad.clone() for n, p in fused.named_parameters()}
    fused.zero_grad(set_to_none=True)
    compiled = torch.compile(nll, fullgraph=True, backend="aot_eager")
    got = compiled(x, y)
    got.mean().backward()
    assert torch.allclose(got, expected, atol=1e-5)
    for n, p in fused.named_parameters():
        assert torch.allclose(p.grad, want[n], atol=1e-6, rtol=1e-4), n


@pytest.mark.slow
def test_compiled_training_step_matches_eager_with_inductor():
    eager_flow, _ = _flow_pair(TINY)
    compiled_flow, _ = _flow_pair(TINY)
    x, y = _batch(TINY, 128)
    steps = {}
    for key, flow, compile in (("eager", eager_flow, False), ("compiled", compiled_flow, True)):
        opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
        step = make_train_step(
            lambda a, b, flow=flow: -flow.log_prob(a, context=b),
            opt,
            torch.device("cpu"),
            compile=compile,
        )
        steps[key] = [step(x, y).mean().item() for _ in range(3)]
    assert steps["compiled"] == pytest.approx(steps["eager"], abs=1e-4)


def test_cuda_graphs_are_refused_clearly_where_they_cannot_work():
    flow = build_flow(TINY, seed=0)
    opt = torch.optim.Adam(flow.parameters())
    with pytest.raises(FlashSimError, match=r"--cuda-graphs .* on cpu"):
        make_train_step(flow, opt, torch.device("cpu"), cuda_graphs=True)
    with pytest.raises(FlashSimError, match="needs --spline fused"):
        make_train_step(flow, opt, torch.device("cuda"), spline="nflows", cuda_graphs=True)
    with pytest.raises(FlashSimError, match="several processes"):
        make_train_step(flow, opt, torch.device("cuda"), cuda_graphs=True, distributed=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_step_matches_eager_steps_on_cuda():
    device = torch.device("cuda")
    flows = [build_flow(TINY, seed=0).to(device) for _ in range(2)]
    x, y = (t.to(device) for t in _batch(TINY, 256))
    losses = {}
    for key, flow in zip(("eager", "graph"), flows, strict=True):
        opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
        step = make_train_step(
            lambda a, b, flow=flow: -flow.log_prob(a, context=b),
            opt,
            device,
            cuda_graphs=key == "graph",
        )
        losses[key] = [step(x, y).mean().item() for _ in range(8)]
        if key == "graph":
            assert step.captures == 1
    assert losses["graph"] == pytest.approx(losses["eager"], abs=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_engines_agree_on_cuda():
    fused, stock = _flow_pair(get_preset("paper", "jets").flow)
    fused, stock = fused.cuda(), stock.cuda()
    x, y = (t.cuda() for t in _batch(get_preset("paper", "jets").flow, 512))
    diff = (fused.log_prob(x, context=y) - stock.log_prob(x, context=y)).abs().max().item()
    print(f"cuda paper-jets: max |log_prob fused - nflows| = {diff:.3g}")
    assert diff <= LOG_PROB_ATOL


def _bench_spline_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_spline.py"
    spec = importlib.util.spec_from_file_location("bench_spline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmarks_zero_cost_spline_skips_only_the_spline():
    # bench_spline.py --bound: the spline is the identity with log-det 0, the conditioner
    # still runs forward and backward, and the real spline is back after the block
    bench = _bench_spline_module()
    config = FlowConfig(n_targets=4, n_conditioning=2, num_flow_steps=2, hidden_features=8,
                        num_blocks=1, num_bins=4, tail_bound=5.0)  # fmt: skip
    flow = build_flow(config, seed=0)
    x, y = _batch(config, 64)
    coupling = next(m for m in flow.modules() if isinstance(m, FusedRQCouplingTransform))
    real = flow.log_prob(x, context=y)
    with bench.zero_cost_spline():
        out, logdet = coupling(x, context=y)
        assert torch.equal(out, x) and torch.equal(logdet, torch.zeros(64))
        flow.log_prob(x, context=y).sum().backward()
    final_layer = coupling.transform_net.final_layer.weight
    assert final_layer.grad is not None and final_layer.grad.abs().sum() == 0
    assert torch.equal(flow.log_prob(x, context=y), real)
    with bench.zero_cost_spline(active=False):
        assert torch.equal(flow.log_prob(x, context=y), real)


_COMPILED_SMALL_STEPS = """
import torch
from flashsim.model import build_flow
from flashsim.presets import get_preset
from flashsim.train.step import make_train_step

torch.manual_seed(0)
config = get_preset("small", "jets").flow.replace(num_flow_steps=2)  # both couplings (9|8, 8|9)
x, y = torch.randn(64, config.n_targets), torch.randn(64, config.n_conditioning)
losses = {}
for compile in (False, True):
    flow = build_flow(config, seed=0)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    step = make_train_step(lambda a, b: -flow.log_prob(a, context=b), opt,
                           torch.device("cpu"), compile=compile)
    losses[compile] = [step(x, y).mean().item() for _ in range(2)]
print(losses[False], losses[True])
assert max(abs(a - b) for a, b in zip(losses[False], losses[True])) < 1e-3, losses
"""


@pytest.mark.multiprocess  # in its own process: a miscompiled step aborts the interpreter
def test_compiled_small_preset_step_runs_and_matches_eager():
    # torch 2.13's inductor miscompiles the fused backward's vectorised loop tails for the
    # small preset (heap corruption, then abort); make_train_step compiles without them
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _COMPILED_SMALL_STEPS],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.returncode, done.stdout[-1500:], done.stderr[-1500:])
