"""What a chapter's recipe costs to run: FLOPs from XLA's cost analysis, minutes on Colab.

:func:`~diffbook.cost.chapters.estimate` lowers (``jax.jit(f).lower(...)``: no
compiling, no training) every training step and every network call that a chapter makes,
at the batch the chapter makes it on, reads the FLOPs from XLA's cost analysis of each,
multiplies them by the recipe's counts and divides the total by the sustained rate
assumed for each machine of :data:`~diffbook.cost.machines.DEVICES`. The networks are
built with ``nnx.eval_shape``: shapes only, no weights.  ``python -m diffbook.bench
CHAPTER --config accelerator --cost`` prints the result as one line of JSON.

What is counted, for each chapter (the stages of
:func:`~diffbook.cost.chapters.chapter_stages`):

* every training run the chapter's cells make, the whole optimiser step (forward,
  backward, AdamW or Adam, the moving average) at the recipe's batch, times its
  steps: chapter 1 trains two VAEs, chapter 4 the recipe's network and six shorter
  runs for its ablation (10,000 steps more), chapter 6 a U-Net, a noise-aware and a
  clean classifier and a DiT, chapter 7 the autoencoder and the latent network;
* the sampling that the chapter's cells do with the trained networks: for each
  sampler, its network calls times the cost of one call at the batch it is made on.
  A classifier-free guided call is one call on twice the batch (the prompts and
  the empty prompt), a classifier-guided call includes the classifier's gradient.
  The counts follow the chapters' cells: chapter 5 samples every prompt at six
  guidance scales, chapter 7 at three and decodes every sample, chapter 2 runs the
  1,000-step ancestral sampler ten times on 64 digits.  Where a sampler chooses its
  own steps (the adaptive ODE solvers of chapters 3 and 4) the count is an
  assumption, stated where it is made; a few small batches (a grid of ten images)
  are counted as one more full batch.

Not counted: compiling, the measures of quality (NumPy and scikit-learn on the
host), probes of a handful of images, and the fixed overhead of launching each
training step and sampler step, a millisecond or two, which adds about a minute at
most (chapter 4 makes the most steps, about 37,000, chapter 2 about 20,000).
Chapter 7's pixel-space comparison is timed by ``python -m diffbook.bench emoji``,
not in the chapter, so it is not counted either.

The estimate of memory (:meth:`~diffbook.cost.stages.Stage.memory_bytes`) is what a
training step holds on one device: the activations that the backward pass reads (the
residuals of the loss's ``jax.vjp``, which the lowered step returns for their shapes),
divided among the devices that share the batch, plus the parameters, one set of
gradients, AdamW's two moments and the moving average, which every device holds.  XLA
may fuse some residuals away or keep temporaries besides, and the data (under 0.1 GB) is
left out, hence :data:`~diffbook.cost.machines.MEMORY_SHARE`.  The cost analysis's
"bytes accessed" is no measure of memory: it counts every read and write of every
operation before fusion, about 100 GB for one step of chapter 5's former accelerator
recipe, whose residuals are 6.4 GB.

These are estimates until the recipes are timed on the machines themselves.

The package has three modules, one idea each:

* :mod:`diffbook.cost.stages`: the measuring, independent of the chapters -- a model
  as shapes only, one training step or network call lowered and its FLOPs and memory
  read, as a :class:`~diffbook.cost.stages.Stage`;
* :mod:`diffbook.cost.machines`: the machines Colab lends and the rates assumed for
  them, the limits the recipes are held to, and the report of a chapter's stages on
  each machine;
* :mod:`diffbook.cost.chapters`: what each chapter's cells train and sample, as
  stages, and :func:`~diffbook.cost.chapters.estimate`.

Every public name of the three is also a name of this package (``cost.estimate``,
``cost.DEVICES``, ``cost.train_stage``).
"""

from .chapters import (
    ADAPTIVE_STEPS,
    CHAPTERS,
    chapter_stages,
    estimate,
    mixture_sampler_calls,
    recipes,
)
from .machines import BUDGET_MINUTES, DEVICES, MEMORY_SHARE, Device, summarise
from .stages import Stage, abstract, call_stage, lowered_flops, train_stage

__all__ = [
    "ADAPTIVE_STEPS",
    "BUDGET_MINUTES",
    "CHAPTERS",
    "DEVICES",
    "MEMORY_SHARE",
    "Device",
    "Stage",
    "abstract",
    "call_stage",
    "chapter_stages",
    "estimate",
    "lowered_flops",
    "mixture_sampler_calls",
    "recipes",
    "summarise",
    "train_stage",
]
