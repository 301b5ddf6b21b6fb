"""The ``solver`` section of an experiment, one for both settings: SGD with momentum, weight
decay and a step schedule (``lr * lr_gamma^(steps passed)``), logging, validation and checkpoints.

The defaults are the frozen-feature setting's (paper Sec. 3, a NoC on cached RoI features); an
end-to-end experiment (paper Sec. 4) starts from the Faster R-CNN schedule on MS COCO instead
(``nocdet.experiment.E2E_DEFAULTS``: lr 0.003 for 240k iterations, then 0.0003 for 80k, 8 images per batch,
weight decay 1e-4, with a linear warm-up as in Detectron, since a randomly initialised NoC on a
pre-trained trunk easily diverges at the start with larger batches). Fields declared
``only_in(...)`` are read by one setting and refused in the other.

In the end-to-end setting ``images_per_batch`` and ``lr`` describe the *global* batch: under
``torchrun`` each of the W processes gets ``images_per_batch / W`` images of every batch, and
gradients are averaged, so a run on W processes follows the trajectory of one process with the
whole batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from nocdet.config import bounded, only_in
from nocdet.devices import has_native_bf16
from nocdet.errors import ConfigError

if TYPE_CHECKING:
    import torch

@dataclass
class SolverConfig:
    iterations: int = bounded(4000, ge=0)
    """SGD iterations (global batches); 0, frozen setting only: no SGD (SVMs on the RoI features, Table 1)."""
    lr: float = bounded(0.01, gt=0)
    """Base learning rate (end to end: for the global batch; scale it linearly with ``images_per_batch``)."""
    lr_steps: list[int] = bounded(default_factory=lambda: [3000], gt=0)
    """Iterations at which the learning rate is multiplied by ``lr_gamma``. Steps at or beyond
    ``iterations`` are allowed (never reached), so a run can be stopped early and extended later."""
    lr_gamma: float = bounded(0.1, gt=0, le=1)
    momentum: float = bounded(0.9, ge=0, lt=1)
    weight_decay: float = bounded(5e-4, ge=0)
    """L2 weight decay (end to end: of conv / fc kernels only, see ``weight_decay_norm``)."""
    checkpoint_every: int = bounded(1000, ge=1)
    log_every: int = bounded(50, ge=1)
    val_every: int = bounded(500, ge=0)
    """Validation every this many iterations (0, end to end only: only at the end)."""
    val_batches: int = only_in("frozen", 20, ge=1)
    """Mini-batches of the held-out validation loss."""
    images_per_batch: int = only_in("e2e", 8, ge=1)
    """Global batch size in images, split evenly over the processes (frozen: ``sampling.images_per_batch``)."""
    weight_decay_norm: float = only_in("e2e", 0.0, ge=0)
    """Weight decay of biases and normalisation-layer parameters (BN/GN/LN scales and shifts).
    0 as in Detectron2 and the torchvision references: decaying them only shrinks the scale of
    activations and fights the normalisation; frozen BN (torchvision's default) has none anyway."""
    warmup_iterations: int = only_in("e2e", 500, ge=0)
    """Iterations of linear warm-up from ``lr * warmup_factor`` to ``lr`` (0 = none)."""
    warmup_factor: float = only_in("e2e", 1.0 / 3.0, gt=0, le=1)
    clip_grad_norm: float | None = only_in("e2e", None, gt=0)
    """Clip the global gradient norm to this value (None = no clipping)."""
    amp: Literal["none", "auto", "bfloat16", "float16"] = "none"
    """Mixed precision: the training forward pass autocast to this type, weights and SGD in fp32
    (:func:`autocast_dtype`); float16 (CUDA only) also uses a gradient scaler. ``auto``: bfloat16
    where the device computes in it natively (a CUDA GPU that supports it, a CPU with AVX512-BF16
    or AMX: 0.6x the demo NoC's fp32 step), else fp32; bfloat16 forced on a CPU without them is
    slower than fp32. Validation and test stay fp32."""
    flip: bool = only_in("e2e", True)
    """Random horizontal flips (probability 0.5, seeded per epoch and image); frozen: ``pyramid.flip``."""
    aspect_ratio_grouping: bool = only_in("e2e", True)
    """Batch wide (W >= H) and tall images separately, so padding to a common size wastes little."""
    val_images: int = only_in("e2e", 500, ge=0)
    """Validate on at most this many images of the validation set (its first ones; 0 = all)."""
    workers: int = only_in("e2e", 2, ge=0)
    """DataLoader worker processes per training process (0 = load in the main process)."""
    ddp_find_unused_parameters: bool = only_in("e2e", False)
    """Passed to DistributedDataParallel; set it when some parameters get no gradient."""



def autocast_dtype(amp: str, device: str) -> torch.dtype | None:
    """The autocast type of ``solver.amp`` on ``device`` ("cpu", "cuda", "cuda:N"; None: fp32);
    float16 needs CUDA."""
    if amp == "float16" and not device.startswith("cuda"):
        raise ConfigError(f"solver.amp=float16 needs a CUDA device (device is {device}); "
                          "on the CPU use solver.amp=bfloat16 or auto")
    if amp == "auto":
        amp = "bfloat16" if has_native_bf16(device) else "none"
    if amp == "none":
        return None
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16}[amp]
