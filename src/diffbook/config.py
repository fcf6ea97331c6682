"""Device-aware configurations: a small recipe on a CPU, a larger one on a GPU or TPU.

Each chapter writes its two configurations side by side and lets :func:`pick`
choose.  ``DIFFBOOK_CONFIG=cpu`` or ``DIFFBOOK_CONFIG=accelerator`` (or the
``choice`` argument) overrides the automatic choice.
"""

from __future__ import annotations

import os

import jax

from . import checks

#: The two configurations every chapter's recipe holds.
CHOICES = ("cpu", "accelerator")


class Config(dict):
    """A dict whose keys also read as attributes, plus the ``name`` of the choice.

    ``cfg.steps`` is ``cfg["steps"]``; a missing setting raises ``AttributeError``
    (or ``KeyError`` with ``[]``), naming the configuration.

    Args:
      name: which configuration this is, ``"cpu"`` or ``"accelerator"``.
      values: the settings, name -> value.
    """

    def __init__(self, name: str, values: dict):
        super().__init__(values)
        self.name = name

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config {self.name!r} has no setting {key!r}") from None

    def replace(self, **changes) -> Config:
        """A copy with some settings changed, e.g. ``cfg.replace(steps=100)``.

        Args:
          **changes: new values of existing settings.

        Returns:
          A new :class:`Config` with the same ``name``; this one is unchanged.

        Raises:
          KeyError: if a name in ``changes`` is not one of the settings.
        """
        unknown = set(changes) - set(self)
        if unknown:
            raise KeyError(f"config {self.name!r} has no settings {sorted(unknown)}")
        return Config(self.name, {**self, **changes})


def default_choice() -> str:
    """The configuration that suits the machine JAX runs on.

    Returns:
      ``"accelerator"`` when JAX's default backend is a GPU or TPU, else ``"cpu"``.
    """
    return "cpu" if jax.default_backend() == "cpu" else "accelerator"


def pick(recipe: dict, choice: str | None = None) -> Config:
    """Choose one of a chapter's two configurations, e.g. ``pick(ddpm.RECIPE)``.

    Args:
      recipe: ``{"cpu": {...}, "accelerator": {...}}``: settings for a laptop or CI
        CPU (minutes), and for a GPU or TPU, with the same keys.
      choice: ``"cpu"`` or ``"accelerator"``; default: ``$DIFFBOOK_CONFIG`` if set,
        otherwise :func:`default_choice`.

    Returns:
      The chosen settings as a :class:`Config` named after the choice.

    Raises:
      TypeError: if ``recipe`` is not a dict.
      ValueError: if ``recipe`` lacks one of the two configurations, if they have
        different keys, or if ``choice`` is not one of :data:`CHOICES`.
    """
    if not isinstance(recipe, dict):
        raise TypeError(f"recipe must be a dict of {CHOICES}, got {type(recipe).__name__}")
    if set(recipe) != set(CHOICES):
        raise ValueError(f"recipe must have exactly the keys {CHOICES}, got {sorted(recipe)}")
    cpu, accelerator = recipe["cpu"], recipe["accelerator"]
    if set(cpu) != set(accelerator):
        raise ValueError(
            f"recipe's cpu and accelerator configs need the same keys; "
            f"differing: {sorted(set(cpu) ^ set(accelerator))}"
        )
    choice = choice or os.environ.get("DIFFBOOK_CONFIG") or default_choice()
    checks.one_of(choice, "choice", CHOICES)
    return Config(choice, recipe[choice])


def accelerator_warning() -> str | None:
    """A one-line warning when a TPU or NVIDIA GPU is attached but JAX runs on the CPU.

    That happens in Colab when JAX was upgraded without its TPU or CUDA plugin, or
    after the running Python had already imported the old JAX.  The hardware, and the
    JAX build to install for it, are found as the chapters' install cell finds them
    (:func:`diffbook.colab_install.detect_hardware`,
    :func:`~diffbook.colab_install.jax_requirement` with the driver's CUDA version and
    the GPU's compute capability); the plugins of another build that are installed are
    named for uninstalling (:func:`~diffbook.colab_install.foreign_plugins`).

    Returns:
      The warning, naming the likely cause and the fix, or ``None`` when JAX uses the
      accelerator or there is none.
    """
    from . import colab_install

    backend = jax.default_backend()
    hardware = colab_install.detect_hardware()
    if hardware == "cpu" or backend != "cpu":
        return None
    name = {"tpu": "a TPU", "gpu": "an NVIDIA GPU"}[hardware]
    gpu = hardware == "gpu"
    fix = colab_install.jax_requirement(
        hardware,
        jax.__version__,
        colab_install.driver_cuda_major() if gpu else None,
        colab_install.gpu_compute_capability() if gpu else None,
    )
    command = f'pip install "{fix}"'
    foreign = colab_install.foreign_plugins(fix, colab_install.installed_jax_packages())
    if foreign:
        command = f"pip uninstall -y {' '.join(foreign)}, then {command},"
    return (
        f"WARNING: {name} is attached but JAX runs on the CPU, probably because JAX was "
        f"upgraded after this Python had imported it, or without its {hardware.upper()} "
        f"plugin. Fix: restart the runtime (Colab: Runtime > Restart session) and run the "
        f"chapter from the top; if JAX still runs on the CPU, {command} "
        f"and restart again."
    )


def describe(config: Config) -> str:
    """Which configuration runs on what, e.g. for a chapter's first output.

    Args:
      config: the chosen configuration (from :func:`pick`).

    Returns:
      One line, e.g. ``configuration 'cpu' on 1 cpu device (CPU)``; preceded by the line
      of :func:`accelerator_warning` when an accelerator is attached but unused.

    Raises:
      TypeError: if ``config`` is not a :class:`Config`.
    """
    if not isinstance(config, Config):
        raise TypeError(f"config must be a Config from config.pick, got {type(config).__name__}")
    devices = jax.devices()
    kind = devices[0].device_kind if devices[0].platform != "cpu" else "CPU"
    line = (
        f"configuration {config.name!r} on {len(devices)} {jax.default_backend()} "
        f"device{'s' if len(devices) > 1 else ''} ({kind})"
    )
    warning = accelerator_warning()
    return line if warning is None else f"{warning}\n{line}"


def checkpoint_dir(run: str, config: Config):
    """Where a chapter's training run keeps its Orbax checkpoints, or ``None``.

    Set ``DIFFBOOK_CHECKPOINTS`` to a folder to turn checkpoints on: each run then
    saves into ``$DIFFBOOK_CHECKPOINTS/<run>-<config name>`` and, when started
    again, resumes from what is there (a finished run is loaded, not retrained).
    That is how a teacher pre-trains the chapters once and hands the folder to a
    class.  Unset (the default, and in the tests), nothing is saved.

    Args:
      run: the run's name, e.g. ``"ddpm"``; no ``/``.
      config: the chosen configuration (from :func:`pick`); its ``name`` is part of
        the folder's name, so the two configurations never share checkpoints.

    Returns:
      A :class:`pathlib.Path` (not created here), or ``None`` when
      ``DIFFBOOK_CHECKPOINTS`` is unset or empty.

    Raises:
      ValueError: if ``run`` is not a non-empty string without ``/``.
    """
    if not isinstance(run, str) or not run or "/" in run:
        raise ValueError(f"run must be a non-empty name without '/', got {run!r}")
    root = os.environ.get("DIFFBOOK_CHECKPOINTS")
    if not root:
        return None
    from pathlib import Path

    return Path(root).expanduser() / f"{run}-{config.name}"
