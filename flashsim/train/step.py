"""One optimiser step of the flow, eager, compiled or replayed from a CUDA graph.

:func:`make_train_step` returns the callable the training loop runs per batch,
``step(x, y) -> nll`` (per-row negative log-likelihood ``(B,)``, detached), which zeroes
the gradients, computes the loss ``nll.mean()``, back-propagates and steps the optimiser:

* eager: plain PyTorch;
* ``compile``: the loss is ``torch.compile``-d with ``fullgraph=True`` (any graph break is
  an error, not a silent slowdown); AOTAutograd compiles its backward too. This needs
  the fused spline engine (``FlowConfig.spline="fused"``): nflows' own selects elements
  with boolean masks, a data-dependent shape;
* ``cuda_graphs`` (CUDA only): the whole step, forward, backward and Adam, is captured in
  one CUDA graph after a few eager warm-up steps and replayed for every batch of the same
  shape: one launch per step, no host in the loop. Adam runs with ``capturable=True``. A
  new batch shape or learning rate (the cosine schedule changes it once per epoch)
  triggers a new capture. Every call, warm-up included, is one real training step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from flashsim.errors import FlashSimError

TrainStep = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``step(x, y) -> nll``: one optimiser step on a batch; ``nll`` is ``(B,)``, detached."""

CPU_INDUCTOR_OPTIONS: dict[str, Any] = {"cpp.enable_loop_tail_vec": False}
"""Inductor settings for a compiled step on a CPU. torch 2.13's vectorised loop tails
miscompile the fused spline's backward: the small preset's step corrupts the heap and
aborts, at any batch size (no crash was seen with the tests' tiny flows or the paper
architecture). Scalar tails compile it correctly, and a tail is a few elements a loop."""

CUDA_GRAPH_WARMUP_STEPS = 3
"""Eager steps (on a side stream) before a capture: the optimiser state, cuBLAS
workspaces and compiled kernels must exist before the graph records them."""


def set_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Switch an Adam-like optimiser's ``capturable`` flag and move its ``step`` counters
    where that mode needs them (on the parameters' device when capturable, else on the
    CPU, so that a checkpoint written either way resumes in the other)."""
    for group in optimizer.param_groups:
        if "capturable" not in group:
            raise FlashSimError(
                f"{type(optimizer).__name__} has no capturable mode; CUDA graphs need Adam."
            )
        group["capturable"] = capturable
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            step = state.get("step")
            if torch.is_tensor(step):
                where = p.device if capturable else torch.device("cpu")
                state["step"] = step.to(device=where, dtype=torch.float32)


def eager_step(loss_fn: Callable, optimizer: torch.optim.Optimizer) -> TrainStep:
    """The plain step: zero the gradients, ``loss_fn(x, y).mean().backward()``, step."""

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        nll = loss_fn(x, y)
        nll.mean().backward()
        optimizer.step()
        return nll.detach()

    return step


class CudaGraphStep:
    """The whole training step captured in a CUDA graph and replayed (see the module doc).

    The returned ``nll`` is the graph's static output buffer: read it before the next call.
    """

    def __init__(
        self,
        loss_fn: Callable,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        warmup: int = CUDA_GRAPH_WARMUP_STEPS,
    ) -> None:
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.device = device
        self.warmup = warmup
        self._eager = eager_step(loss_fn, optimizer)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._key: tuple | None = None
        self._eager_left = warmup
        self._static: tuple[torch.Tensor, ...] = ()
        self.captures = 0
        set_capturable(optimizer, True)

    def _lrs(self) -> tuple:
        return tuple(float(g["lr"]) for g in self.optimizer.param_groups)

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        static_x, static_y = x.detach().clone(), y.detach().clone()
        self._graph = None  # free the previous graph's memory pool first
        graph = torch.cuda.CUDAGraph()
        # fresh gradient buffers allocated inside the graph: replays overwrite them
        self.optimizer.zero_grad(set_to_none=True)
        # thread_local: a loader's prefetch thread may use CUDA while this thread captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            nll = self.loss_fn(static_x, static_y)
            nll.mean().backward()
            self.optimizer.step()
            static_nll = nll.detach()
        self._graph, self._static = graph, (static_x, static_y, static_nll)
        self.captures += 1

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), tuple(y.shape), x.dtype, y.dtype, self._lrs())
        if key != self._key:
            if self._key is None or key[:4] != self._key[:4]:
                self._eager_left = self.warmup  # new shapes: warm up (and compile) again
            self._key, self._graph = key, None
        if self._eager_left > 0:
            self._eager_left -= 1
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                nll = self._eager(x, y)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return nll
        if self._graph is None:
            self._capture(x, y)  # records, does not run: replayed below on this batch
        graph = self._graph
        assert graph is not None
        static_x, static_y, static_nll = self._static
        static_x.copy_(x, non_blocking=True)
        static_y.copy_(y, non_blocking=True)
        graph.replay()
        return static_nll


def make_train_step(
    model: nn.Module | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    spline: str = "fused",
    compile: bool = False,
    cuda_graphs: bool = False,
    distributed: bool = False,
) -> TrainStep:
    """The training step for ``model`` (``model(x, y)`` -> per-row NLL ``(B,)``).

    Args:
        model: the loss, a module (the trainer's ``NegLogLikelihood``, maybe DDP-wrapped)
            or a function ``(x, y) -> nll``.
        optimizer: its optimiser (Adam for ``cuda_graphs``).
        device: where the model runs.
        spline: the flow's spline engine (``FlowConfig.spline``).
        compile: ``torch.compile`` the loss, with ``fullgraph=True`` for the fused engine
            in one process (nflows' masks and DDP's hooks break the graph by design; they
            are compiled piecewise).
        cuda_graphs: capture and replay the whole step (CUDA, fused engine, one process).
        distributed: the model is wrapped in DDP.

    Raises:
        FlashSimError: ``cuda_graphs`` on a CPU, under DDP or with the nflows engine.
    """
    if cuda_graphs and device.type != "cuda":
        raise FlashSimError(
            f"--cuda-graphs captures the training step on a GPU, but this run is on {device}; "
            "drop --cuda-graphs or run with --device cuda."
        )
    if cuda_graphs and distributed:
        raise FlashSimError(
            "--cuda-graphs is not supported with several processes (DDP's gradient "
            "all-reduce would have to be captured too); drop it or run one process."
        )
    if cuda_graphs and spline != "fused":
        raise FlashSimError(
            f"--cuda-graphs needs --spline fused: the {spline} engine synchronises with the "
            "host inside every step, which a CUDA graph cannot record."
        )
    loss_fn: Callable = model
    if compile:
        fullgraph = spline == "fused" and not distributed
        loss_fn = torch.compile(
            model,
            fullgraph=fullgraph,
            dynamic=False,
            options=CPU_INDUCTOR_OPTIONS if device.type == "cpu" else None,
        )
    if cuda_graphs:
        return CudaGraphStep(loss_fn, optimizer, device)
    if any(g.get("capturable") for g in optimizer.param_groups):
        set_capturable(optimizer, False)  # resumed from a CUDA-graph run
    return eager_step(loss_fn, optimizer)
