"""``flashsim train jets|muons``: train the conditional spline flow on a prepared store."""

from __future__ import annotations

import logging
import sys

import click

from flashsim.cli.options import (
    count_option,
    device_option,
    layout_argument,
    naming_layouts,
    progress_option,
    resumable_data_option,
    spline_option,
)
from flashsim.flow_config import ACTIVATIONS
from flashsim.presets import DEFAULT_PRESET, PRESETS
from flashsim.store import LOADER_KINDS
from flashsim.train.config import BEST_BY, TrainConfig


@naming_layouts
@click.command("train")
@layout_argument
@resumable_data_option
@click.option(
    "--out", type=click.Path(), default=None, help="Run directory.  [default: runs/OBJECT]"
)
@click.option(
    "--preset",
    type=PRESETS.click_choice(),
    default=None,
    help=f"'paper': the original FlashSim model and schedule; 'small': a few minutes on a CPU.  [default: {DEFAULT_PRESET}]",
)
@count_option("--epochs", help="Epochs (= cosine annealing period).")
@count_option("--batch-size", help="Rows per step and per process.")
@click.option("--lr", type=float, help="Adam learning rate at the start of the cosine schedule.")
@click.option("--seed", type=int, help="Seed of weights, shuffling and dropout.  [default: 0]")
@count_option("--flow-steps", help="Coupling steps of the flow.")
@count_option("--hidden", help="Hidden units of the conditioner nets.")
@click.option("--blocks", type=int, help="Residual blocks per conditioner net.")
@count_option("--bins", help="Spline bins.")
@click.option("--tail-bound", type=float, help="Spline interval [-B, B]; linear outside.")
@click.option("--dropout", type=float, help="Dropout probability in the residual blocks.")
@click.option("--activation", type=click.Choice(tuple(ACTIVATIONS)), help="Conditioner activation.")
@click.option(
    "--batch-norm/--no-batch-norm", default=None, help="Batch norm in the residual blocks."
)
@click.option(
    "--standardize/--no-standardize",
    default=None,
    help="Standardise targets and conditioning with the training split's mean/std inside the "
    "flow (not in the original model).  [default: on for small, off for paper]",
)
@spline_option(
    "Spline engine of the coupling transforms.  [default: fused; on --resume the checkpoint's]"
)
@click.option(
    "--loader",
    type=LOADER_KINDS.click_choice(),
    default="auto",
    show_default=True,
    help="How batches are read: chunked zarr, webdataset, device-resident, or the original per-row datasets.",
)
@device_option
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from checkpoints/last.pt, with the options it was started "
    "with (those left out are restored; changed ones are refused, except a larger --epochs, "
    "which extends the run with a new cosine cycle).",
)
@click.option(
    "--checkpoint-every",
    type=int,
    default=None,
    help="Also keep checkpoints/epoch-NNNN.pt every N epochs (0: only last.pt and best.pt).  "
    "[default: 0]",
)
@count_option("--max-steps-per-epoch", help="Cap steps per epoch (quick runs).")
@count_option(
    "--stop-after-epochs",
    help="Stop, resumably, after N epochs in this invocation (e.g. batch-system time limits).",
)
@count_option(
    "--nproc",
    default=1,
    help="Launch N local processes (DDP: gloo on CPU, NCCL with one GPU each). Under torchrun leave at 1.",
)
@click.option(
    "--tf32/--no-tf32", default=None, help="TF32 matmuls on CUDA (unmeasured).  [default: off]"
)
@click.option(
    "--compile/--no-compile",
    "compile_",
    default=None,
    help="torch.compile the loss and its backward (fullgraph with --spline fused). The first "
    "step compiles (minutes: 9 for the paper model on a CPU core, 3.5 with a warm cache); on a "
    "CPU the paper model then steps no faster than eager (benchmarks/spline.md).  [default: off]",
)
@click.option(
    "--cuda-graphs/--no-cuda-graphs",
    default=None,
    help="Capture the whole step (forward, backward, Adam) in a CUDA graph and replay it "
    "(CUDA, --spline fused, one process).  [default: off]",
)
@click.option(
    "--deterministic/--no-deterministic",
    default=None,
    help="torch.use_deterministic_algorithms.  [default: on for CPU, off for CUDA]",
)
@click.option(
    "--num-workers", type=int, default=None, help="Loader worker processes.  [default: 0]"
)
@count_option(
    "--threads",
    help="CPU threads for torch (small flows on a busy CPU: try 1).  [default: torch's]",
)
@count_option(
    "--monitor-every",
    minimum=0,
    help="Run the conditioning monitor (ΔNLL, PIT KS, ΔAUC, profile χ² on a fixed val subset) "
    "every K epochs and after the last; 0: off.  [default: 1 for small, 5 for paper]",
)
@count_option(
    "--monitor-rows", help="Rows of the monitor's fixed validation subset.  [default: 20000]"
)
@click.option(
    "--best-by",
    type=BEST_BY.click_choice(),
    default=None,
    help="What best.pt is: lowest validation loss (nll) or lowest conditioning score of the "
    "monitor (docs/training.md).  [default: nll]",
)
@progress_option("Progress bar.")
@click.option(
    "--tensorboard/--no-tensorboard", default=None, help="TensorBoard event files.  [default: on]"
)
def train(obj: str, **opts) -> None:
    """Train the conditional spline flow of OBJECT (a layout: LAYOUT_LIST).

    Reads the `train` and `val` splits of the OBJECT store in --data, fits the
    neural spline flow p(targets | conditioning) by maximum likelihood (Adam, cosine
    annealing), validates every epoch and writes to --out: checkpoints/last.pt,
    best.pt (lowest validation loss), metrics.jsonl, loss.png, tensorboard/, train.log.

    Ctrl-C stops at the next step and writes a resumable checkpoint; --resume then
    continues exactly where it stopped, with the options the run was started with.
    --resume --epochs N (more than the run's) extends a finished or interrupted run:
    a new cosine cycle (warm restart) over the added epochs. Several processes (DDP): --nproc N on one
    machine, or torchrun for several GPUs/nodes, e.g. `torchrun --nproc-per-node 4
    --no-python flashsim train jets --device cuda`.

    \b
    Examples:
      flashsim train jets                              # small preset, shards/ -> runs/jets/
      flashsim train muons --preset paper --device cuda --out runs/muons-paper
      flashsim train jets --out runs/jets --resume     # continue runs/jets
      flashsim train jets --resume --epochs 900        # extend a 600-epoch run
    """
    from flashsim.train import train as run_training

    flow = {
        "num_flow_steps": opts.pop("flow_steps"),
        "hidden_features": opts.pop("hidden"),
        "num_blocks": opts.pop("blocks"),
        "num_bins": opts.pop("bins"),
        "tail_bound": opts.pop("tail_bound"),
        "dropout": opts.pop("dropout"),
        "activation": opts.pop("activation"),
        "batch_norm": opts.pop("batch_norm"),
        "standardize": opts.pop("standardize"),
        "spline": opts.pop("spline"),
    }
    config = TrainConfig(
        object=obj,
        flow={k: v for k, v in flow.items() if v is not None},
        compile=opts.pop("compile_"),
        **opts,
    )
    if not logging.getLogger("flashsim.train").handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger("flashsim.train").addHandler(handler)
        logging.getLogger("flashsim.train").setLevel(logging.INFO)
    result = run_training(config)
    if result.rank != 0:  # under torchrun every rank returns here; rank 0 reports
        sys.exit(130 if result.status == "interrupted" else 0)
    if result.status == "completed":
        click.echo(
            f"Done: {result.epochs_done} epochs, best validation loss {result.best_val_loss:.4f}; "
            f"best.pt by {result.best_by}: {result.best_checkpoint}; metrics in {result.out}."
        )
    elif result.status == "paused":
        click.echo(
            f"Paused after epoch {result.epochs_done}; continue with: {result.resume_command}"
        )
    else:
        click.secho(
            f"Interrupted; a resumable checkpoint is in {result.last_checkpoint}. "
            f"Continue with: {result.resume_command}",
            fg="yellow",
            err=True,
        )
        sys.exit(130)
