"""Option registries, the one device parser, and the checkpoint/hyperparameter records."""

from __future__ import annotations

import math
from typing import Literal, get_args

import pytest
import torch
from click.testing import CliRunner

from flashsim.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from flashsim.cli import main
from flashsim.devices import parse_device, resolve_device
from flashsim.errors import FlashSimError
from flashsim.model import build_flow
from flashsim.options import Choices
from flashsim.presets import PRESETS, HParams, get_preset
from flashsim.store import LOADER_KINDS
from loaders.sources import KIND_FORMATS


def test_registries_normalise_list_the_valid_values_and_build_the_click_choice():
    Shade = Literal["dark", "light"]
    shades = Choices.of("shade", Shade)
    assert shades.normalize("light") == "light" and list(shades) == list(get_args(Shade))
    with pytest.raises(FlashSimError, match=r"Unknown shade 'grey'; choose one of dark, light\."):
        shades.normalize("grey")
    assert list(PRESETS.click_choice("none").choices) == ["paper", "small", "none"]
    assert PRESETS.normalize("paper") == "paper"
    assert tuple(KIND_FORMATS) == LOADER_KINDS.values  # every kind says what it reads
    with pytest.raises(FlashSimError, match="Unknown loader kind 'fast'; choose one of auto, "):
        LOADER_KINDS.normalize("fast")


@pytest.mark.parametrize("text", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_parser_accepts_the_documented_forms(text):
    assert parse_device(text) == text


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", "mps", ""])
def test_device_parser_refuses_anything_else_and_lists_the_forms(text):
    with pytest.raises(FlashSimError, match="choose one of auto, cpu, cuda or cuda:N"):
        parse_device(text)


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        for device in ("cuda", "cuda:1", torch.device("cuda", 0)):
            with pytest.raises(FlashSimError, match="no CUDA GPU"):
                resolve_device(device)
    else:
        with pytest.raises(FlashSimError, match="CUDA GPU"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize(
    "args", [["train", "jets"], ["validate", "jets"], ["generate", "x.root"], ["bench-loader"]]
)
def test_every_command_parses_the_device_the_same_way(args):
    result = CliRunner().invoke(main, [*args, "--device", "gpu"])
    assert result.exit_code == 2
    assert "Invalid value for '--device': Unknown device 'gpu'" in result.output
    assert "cuda:N" in result.output


def test_hparams_come_from_the_preset_validate_and_round_trip():
    hp = HParams.of(get_preset("small", "jets"), seed=3, epochs=7, lr=None)
    assert (hp.preset, hp.epochs, hp.batch_size, hp.lr, hp.seed) == ("small", 7, 1024, 3e-3, 3)
    assert HParams.from_dict(hp.to_dict()) == hp
    with pytest.raises(FlashSimError, match=r"epochs must be >= 1.*learning rate must be > 0"):
        HParams("small", epochs=0, batch_size=8, lr=0.0)
    with pytest.raises(FlashSimError, match="Unknown hyperparameter keys"):
        HParams.from_dict({**hp.to_dict(), "momentum": 0.9})


def test_checkpoint_record_keeps_the_on_disk_keys_and_reads_the_old_form(tmp_path):
    flow_config = get_preset("small", "jets").flow.replace(num_flow_steps=2, hidden_features=8)
    model = build_flow(flow_config, seed=0).state_dict()
    hp = HParams("small", epochs=2, batch_size=64, lr=1e-3)
    ckpt = Checkpoint(object="jets", flow_config=flow_config, hparams=hp, model=model)
    assert list(ckpt.to_dict()) == [
        "object", "flow_config", "hparams", "model", "optimizer", "scheduler", "epochs_done",
        "mid_epoch", "epoch_progress", "loader", "rng", "history", "best_val_loss", "store",
        "store_metadata", "world_size", "threads", "tool_version", "saved_at", "run_options",
    ]  # fmt: skip
    # The form every earlier version wrote: plain dicts for the flow config and hparams.
    old = {"object": "jets", "flow_config": flow_config.to_dict(), "model": model}
    v1_hparams = {k: v for k, v in hp.to_dict().items() if k != "restarts"}  # before 2
    save_checkpoint(tmp_path / "old.pt", {**old, "hparams": v1_hparams, "epochs_done": 2})
    back = load_checkpoint(tmp_path / "old.pt")
    assert back.flow_config == flow_config and back.hparams == hp and back.epochs_done == 2
    assert back.best_val_loss == math.inf and back.history == [] and back.store_metadata == {}
    assert all(torch.equal(back.model[k], model[k]) for k in model)
    with pytest.raises(FlashSimError, match=r"unknown keys \['weights'\]"):
        Checkpoint.from_dict({**old, "weights": {}})
    with pytest.raises(FlashSimError, match="no model"):
        Checkpoint.from_dict({"flow_config": flow_config.to_dict()}, path="x.pt")
