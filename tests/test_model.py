"""The flow model, its configuration, the presets, and checkpoint files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nflows import transforms

from flashsim.checkpoint import (
    capture_rng_state,
    copy_checkpoint,
    from_safe,
    read_checkpoint,
    restore_rng_state,
    save_checkpoint,
    to_safe,
)
from flashsim.errors import FlashSimError
from flashsim.layouts import JETS, MUONS
from flashsim.model import (
    FlowConfig,
    build_flow,
    count_parameters,
    load_model,
    set_standardization,
)
from flashsim.presets import PRESETS, get_preset
from flashsim.train.metrics import METRICS_FILE, MetricsLogger

from conftest import read_metrics

TINY = FlowConfig(
    n_targets=5, n_conditioning=3, num_flow_steps=3, hidden_features=16, num_blocks=1, num_bins=4
)


def _params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_flow_structure_matches_the_original_architecture():
    flow = build_flow(TINY, seed=0)
    steps = list(flow._transform._transforms)
    assert len(steps) == TINY.num_flow_steps + 1
    for i, step in enumerate(steps[:-1]):
        linear, coupling = step._transforms
        perm, lu = linear._transforms
        assert isinstance(perm, transforms.RandomPermutation)
        assert isinstance(lu, transforms.LULinear)
        assert isinstance(coupling, transforms.PiecewiseRationalQuadraticCouplingTransform)
        assert coupling.tails == "linear" and coupling.tail_bound == TINY.tail_bound
        assert coupling.num_bins == TINY.num_bins
        # alternating masks: even steps transform the even-indexed features, odd steps the odd
        assert coupling.transform_features.tolist() == list(range(i % 2, TINY.n_targets, 2))
    perm, lu = steps[-1]._transforms
    assert isinstance(perm, transforms.RandomPermutation) and isinstance(lu, transforms.LULinear)


def test_flow_is_invertible_and_log_prob_is_change_of_variables():
    flow = build_flow(TINY, seed=1)
    flow.eval()
    x = torch.randn(64, TINY.n_targets) * 2.0  # beyond the tail bound too: linear tails
    y = torch.randn(64, TINY.n_conditioning)
    with torch.no_grad():
        z, logabsdet = flow._transform(x, context=y)
        x_back, _ = flow._transform.inverse(z, context=y)
        logp = flow.log_prob(x, context=y)
    assert torch.allclose(x_back, x, atol=1e-4)
    base = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    assert torch.allclose(logp, base + logabsdet, atol=1e-5)
    with torch.no_grad():
        samples = flow.sample(7, context=y[:4])
    assert samples.shape == (4, 7, TINY.n_targets)
    assert torch.isfinite(samples).all()


def test_standardization_is_an_exact_change_of_variables(tmp_path):
    plain = build_flow(TINY, seed=2)
    std_cfg = TINY.replace(standardize=True)
    flow = build_flow(std_cfg, seed=2)  # same weights: the affine layers draw no randomness
    x_mean, x_std = torch.linspace(-3, 3, 5), torch.tensor([0.03, 1.0, 20.0, 0.5, 0.0])
    y_mean, y_std = torch.tensor([100.0, 0.0, -1.0]), torch.tensor([50.0, 2.0, 0.1])
    set_standardization(flow, x_mean, x_std, y_mean, y_std)
    plain.eval(), flow.eval()
    x = x_mean + torch.randn(32, 5) * torch.where(x_std > 0, x_std, 1.0)
    y = y_mean + torch.randn(32, 3) * y_std
    safe_std = torch.where(x_std > 0, x_std, 1.0)  # a constant column is left unscaled
    with torch.no_grad():
        expected = plain.log_prob((x - x_mean) / safe_std, context=(y - y_mean) / y_std)
        got = flow.log_prob(x, context=y)
    torch.testing.assert_close(got, expected - torch.log(safe_std).sum(), rtol=1e-5, atol=1e-4)
    # the statistics travel with the weights: a checkpoint rebuilds the same flow
    path = tmp_path / "c.pt"
    save_checkpoint(
        path, {"flow_config": std_cfg.to_dict(), "model": flow.state_dict(), "object": "x"}
    )
    loaded, config, _ = load_model(path)
    assert config.standardize
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(x, context=y), got)
    with pytest.raises(ValueError, match="standardize=True"):
        set_standardization(plain, x_mean, x_std, y_mean, y_std)


def test_build_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_flow(TINY, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = build_flow(TINY, seed=7)
    c = build_flow(TINY, seed=8)
    assert _params_equal(a, b)
    assert not _params_equal(a, c)


def test_flow_config_round_trip_and_validation():
    assert FlowConfig.from_dict(TINY.to_dict()) == TINY
    assert TINY.replace(num_bins=None, hidden_features=32).hidden_features == 32
    with pytest.raises(FlashSimError, match="num_bins"):
        FlowConfig(n_targets=4, n_conditioning=2, num_bins=1)
    with pytest.raises(FlashSimError, match="activation"):
        FlowConfig(n_targets=4, n_conditioning=2, activation="tanhh")
    with pytest.raises(FlashSimError, match="Unknown flow configuration keys"):
        FlowConfig.from_dict({**TINY.to_dict(), "bogus": 1})


@pytest.mark.parametrize("obj,layout,hidden", [("jets", JETS, 298), ("muons", MUONS, 256)])
def test_paper_preset_is_the_original_model(obj, layout, hidden):
    p = get_preset("paper", obj)
    assert (p.flow.n_targets, p.flow.n_conditioning) == (layout.n_targets, layout.n_conditioning)
    assert p.flow.num_flow_steps == layout.n_targets  # 17 / 22
    assert (p.flow.num_blocks, p.flow.hidden_features, p.flow.num_bins) == (10, hidden, 128)
    assert p.flow.batch_norm and p.flow.activation == "relu"
    assert (p.lr, p.epochs, p.batch_size) == (1e-5, 600, 2048)


@pytest.mark.multiprocess  # a 50 M-parameter model: heavy, grouped with the multiprocess tests
def test_paper_jets_has_the_papers_parameter_count():
    # "50+ million parameters" for the full model in the original write-up
    n = count_parameters(build_flow(get_preset("paper", "jets").flow, seed=0))
    assert 40e6 < n < 60e6


def test_presets_exist_for_both_objects_and_unknown_ones_are_refused():
    for name in PRESETS:
        for obj in ("jets", "muons"):
            assert get_preset(name, obj).name == name
    with pytest.raises(FlashSimError, match="Unknown preset"):
        get_preset("huge", "jets")
    with pytest.raises(FlashSimError, match="Unknown object"):
        get_preset("small", "taus")


def test_safe_conversion_round_trips_numpy_values():
    value = {
        "a": np.arange(5, dtype=np.int64),
        "b": (np.float32(1.5), [np.array([[1.0, 2.0]], dtype=np.float32)]),
        "c": np.uint32(7),
        "d": "text",
    }
    back = from_safe(to_safe(value))
    assert back["a"].dtype == np.int64 and np.array_equal(back["a"], value["a"])
    assert back["b"][0] == 1.5 and back["b"][1][0].dtype == np.float32
    assert back["c"] == 7 and back["d"] == "text"


def test_checkpoint_save_is_atomic_and_load_model_rebuilds_the_flow(tmp_path):
    flow = build_flow(TINY, seed=3)
    # move batch-norm statistics away from their defaults so that buffers matter
    flow.train()
    flow.log_prob(torch.randn(32, 5), context=torch.randn(32, 3))
    meta = {"object": "jets", "preprocessing": [{"column": "MJet_ptRatio", "kind": "clip"}]}
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(
        path,
        {
            "object": "jets",
            "flow_config": TINY.to_dict(),
            "model": flow.state_dict(),
            "store_metadata": meta,
            "rng": [capture_rng_state()],
        },
    )
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp files left
    loaded, config, metadata = load_model(path)
    assert config == TINY and metadata == meta
    assert not loaded.training
    assert _params_equal(loaded, flow)
    flow.eval()
    x, y = torch.randn(16, 5), torch.randn(16, 3)
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x, context=y), flow.log_prob(x, context=y))
    copy_checkpoint(path, path.with_name("best.pt"))
    assert read_checkpoint(path.with_name("best.pt"))["flow_config"] == TINY.to_dict()


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    import random

    # The legacy numpy global RNG is what the checkpoint must restore.
    torch.manual_seed(5)
    np.random.seed(5)  # noqa: NPY002
    random.seed(5)
    save_checkpoint(tmp_path / "r.pt", {"rng": capture_rng_state()})
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    torch.manual_seed(99)
    np.random.seed(99)  # noqa: NPY002
    random.seed(99)
    restore_rng_state(read_checkpoint(tmp_path / "r.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])  # noqa: NPY002
    assert random.random() == expected[2]


def test_bad_checkpoint_files_give_clear_errors(tmp_path):
    with pytest.raises(FlashSimError, match="No checkpoint"):
        load_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(FlashSimError, match="could not be read"):
        load_model(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(FlashSimError, match="not a flashsim checkpoint"):
        load_model(foreign)


def test_failed_checkpoint_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epochs_done": 1})
    before = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(path, {"epochs_done": 2, "bad": Unpicklable()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_metrics_logger_writes_jsonl_tensorboard_and_plot(tmp_path):
    old = [{"epoch": 1, "train_loss": 3.0, "val_loss": 2.9, "lr": 1e-3}]
    (tmp_path / METRICS_FILE).write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n')
    logger = MetricsLogger(tmp_path, history=old)
    assert read_metrics(tmp_path) == old  # rewritten from the checkpoint's history
    rec = {"epoch": 2, "train_loss": 2.5, "val_loss": math.inf, "lr": 5e-4}
    logger.log_epoch(rec, [*old, rec])
    logger.close()
    lines = read_metrics(tmp_path)
    assert [r["epoch"] for r in lines] == [1, 2] and lines[1]["val_loss"] is None
    png = tmp_path / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((tmp_path / "tensorboard").iterdir())


def test_disabled_metrics_logger_writes_nothing(tmp_path):
    logger = MetricsLogger(tmp_path / "run", enabled=False)
    logger.log_epoch({"epoch": 1, "train_loss": 1.0, "val_loss": 1.0}, [])
    logger.close()
    assert not (tmp_path / "run").exists()
