"""The machines Colab lends, the rates the estimates assume for them, and the report.

:data:`DEVICES` gives each machine's sustained rate and memory (the reasons for each
rate are in its comment), :data:`BUDGET_MINUTES` and :data:`MEMORY_SHARE` the limits a
chapter's accelerator recipe is held to, and :func:`summarise` turns a chapter's
:class:`~diffbook.cost.stages.Stage` list into the figures that ``python -m
diffbook.bench CHAPTER --cost`` prints: FLOPs, minutes and memory per machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from .stages import Stage


@dataclass(frozen=True)
class Device:
    """A machine that Colab lends, as the estimates see it.

    Attributes:
      name: what Colab calls it.
      rate: the sustained rate assumed for the chapters' networks, FLOP/s, over all
        its devices together.
      devices: the JAX devices it has; the batch is split among them.
      memory: bytes of accelerator memory per device.
    """

    name: str
    rate: float
    devices: int
    memory: float


#: The machines that Colab offers, with the sustained rates the estimates assume.
#:
#: * ``t4``: NVIDIA T4, 8.1 TFLOP/s fp32 peak at its 1.59 GHz boost clock.  JAX
#:   computes these float32 networks in fp32: Turing's tensor cores do fp16 and int8
#:   only (no TF32), so the 65 TFLOP/s fp16 figure does not apply.  We assume 2.0
#:   TFLOP/s, a quarter of the peak: the 70 W card does not hold its boost clock
#:   under sustained load; the convolutions have 32 to 256 channels on 8×8 to 64×64
#:   maps, shapes on which cuDNN reaches well under its peak; and the group norms,
#:   activations, softmaxes and optimiser updates are bound by the 320 GB/s memory
#:   and add their time to the convolutions'.  A third of the peak would be a fair
#:   guess too; a quarter keeps the budget safe.  16 GB of memory (about 15 GB usable).
#: * ``tpu_v2_8``: a TPU v2-8, four chips of two cores, 22.5 TFLOP/s bf16 peak and
#:   8 GB of memory per core, 180 TFLOP/s in all.  JAX's default precision runs the
#:   float32 matmuls and convolutions as one bfloat16 pass, so the bf16 peak is the
#:   one that applies.  We assume 15 TFLOP/s (a twelfth of the peak): the batch is
#:   split eight ways (8 to 64 examples per core), layers of 32 to 128 channels
#:   fill a fraction of each core's 128×128 matrix unit, and the gradients are summed
#:   across the cores at every step.
#: * ``tpu_v5e_1``: one TPU v5e chip, 197 TFLOP/s bf16 peak, 16 GB.  We assume 25
#:   TFLOP/s (an eighth): the whole batch on one chip, the same narrow layers.
#: * ``tpu_v6e_1``: one TPU v6e (Trillium) chip, 918 TFLOP/s bf16 peak, 32 GB and
#:   1.64 TB/s.  We assume 50 TFLOP/s (a twentieth): its 256×256 matrix units are
#:   mostly idle on layers this narrow, and at the 30 or so FLOP per byte that these
#:   steps may reach after fusion, its memory bandwidth allows about 50 TFLOP/s.
#:
#: Nothing here has been timed on these machines yet: ``book/teaching.md`` keeps the
#: estimates and will keep the measurements.
DEVICES = {
    "t4": Device("Colab T4", 2.0e12, 1, 16e9),
    "tpu_v2_8": Device("Colab TPU v2-8", 15e12, 8, 8e9),
    "tpu_v5e_1": Device("Colab TPU v5e-1", 25e12, 1, 16e9),
    "tpu_v6e_1": Device("Colab TPU v6e-1", 50e12, 1, 32e9),
}

#: What a chapter's accelerator recipe may take on a T4, minutes of training and sampling.
BUDGET_MINUTES = 10.0

#: The share of a device's memory that a training step may fill, by
#: :meth:`~diffbook.cost.stages.Stage.memory_bytes` (the rest for XLA's temporaries
#: and workspace, the data, the runtime).
MEMORY_SHARE = 0.8


def summarise(chapter: str, choice: str, stages: list[Stage]) -> dict:
    """The figures of :func:`~diffbook.cost.chapters.estimate` from a chapter's stages.

    Args:
      chapter: the chapter's name (copied into the result).
      choice: the configuration's name (copied into the result).
      stages: the chapter's :class:`~diffbook.cost.stages.Stage` list.

    Returns:
      A dict ready for JSON: ``stages`` (name, kind, batch, calls, FLOPs per call
      and in all), ``train_flops``, ``sample_flops``, ``total_flops``, for each
      machine ``minutes_<machine>`` (all FLOPs at its sustained rate) and
      ``memory_gb_<machine>`` (the largest training step's memory per device),
      ``rates_tflops`` and ``budget_minutes``.

    Raises:
      ValueError: if ``stages`` is empty.
    """
    if not stages:
        raise ValueError("stages must not be empty")
    train = sum(s.flops for s in stages if s.kind == "train")
    sample = sum(s.flops for s in stages if s.kind == "sample")
    result = {
        "chapter": chapter,
        "config": choice,
        "stages": [
            {
                "name": s.name,
                "kind": s.kind,
                "batch": s.batch,
                "calls": s.calls,
                "flops_per_call": s.flops_per_call,
                "flops": s.flops,
            }
            for s in stages
        ],
        "train_flops": train,
        "sample_flops": sample,
        "total_flops": train + sample,
    }
    for key, device in DEVICES.items():
        result[f"minutes_{key}"] = round((train + sample) / device.rate / 60, 2)
    for key, device in DEVICES.items():
        memory = max(s.memory_bytes(device.devices) for s in stages)
        result[f"memory_gb_{key}"] = round(memory / 1e9, 2)
    result["rates_tflops"] = {key: device.rate / 1e12 for key, device in DEVICES.items()}
    result["budget_minutes"] = BUDGET_MINUTES
    return result
