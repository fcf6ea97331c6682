"""Device-aware configurations: a small recipe on a CPU, a larger one on a GPU or TPU.

Each chapter writes its two configurations side by side and lets :func:`pick`
choose.  ``DIFFBOOK_CONFIG=cpu`` or ``DIFFBOOK_CONFIG=accelerator`` (or the
``choice`` argument) overrides the automatic choice.

A recipe may also say how to make a *smoke run* of the chapter: with
``DIFFBOOK_SMOKE=1`` the settings listed under the recipe's ``"smoke"`` key replace
those of the chosen configuration.  A smoke run executes every cell of a chapter on
the data, resolution and networks of the chosen configuration, with far fewer
training steps and samples, so that CI can prove in minutes that the accelerator
recipe runs (``python tools/notebooks.py smoke``); its figures mean nothing.  Only
counts may be cut (see :data:`SMOKE_SETTINGS`), never raised.
"""

from __future__ import annotations

import os

import jax

from . import checks

#: The two configurations every chapter's recipe holds.
CHOICES = ("cpu", "accelerator")

#: The endings of the names of the settings that a smoke run may cut (counts of optimiser
#: steps, sampler steps and samples, and the number of examples in a training batch).  The
#: data, the resolution and the networks stay those of the chosen configuration.
SMOKE_SETTINGS = ("steps", "warmup", "samples", "batch_size")


def smoke_run() -> bool:
    """Whether ``$DIFFBOOK_SMOKE`` asks for a smoke run (set, and not ``0`` or empty)."""
    return os.environ.get("DIFFBOOK_SMOKE", "").strip() not in ("", "0")


def _check_smoke(smoke, configs: dict) -> None:
    if not isinstance(smoke, dict):
        raise TypeError(f"recipe's 'smoke' must be a dict of settings, got {type(smoke).__name__}")
    for key, value in smoke.items():
        if key not in configs["cpu"]:
            raise ValueError(f"recipe's 'smoke' names {key!r}, which is not one of its settings")
        if not key.endswith(SMOKE_SETTINGS):
            raise ValueError(
                f"recipe's 'smoke' may cut only counts (names ending in {SMOKE_SETTINGS}), "
                f"not {key!r}"
            )
        checks.positive_int(value, f"smoke setting {key!r}", minimum=0)
        for name, values in configs.items():
            if not isinstance(values[key], int) or value > values[key]:
                raise ValueError(
                    f"recipe's 'smoke' must cut counts: {key}={value} against "
                    f"{values[key]!r} in {name!r}"
                )


class Config(dict):
    """A dict whose keys also read as attributes, plus the ``name`` of the choice.

    ``cfg.steps`` is ``cfg["steps"]``; a missing setting raises ``AttributeError``
    (or ``KeyError`` with ``[]``), naming the configuration.

    Args:
      name: which configuration this is, ``"cpu"`` or ``"accelerator"``.
      values: the settings, name -> value.
      smoke: whether the counts were cut for a smoke run (see :func:`pick`).
    """

    def __init__(self, name: str, values: dict, *, smoke: bool = False):
        super().__init__(values)
        self.name = name
        self.smoke = smoke

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
        return Config(self.name, {**self, **changes}, smoke=self.smoke)


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
        CPU (minutes), and for a GPU or TPU, with the same keys; optionally also
        ``"smoke": {...}``, the smaller counts of a smoke run (names ending in one of
        :data:`SMOKE_SETTINGS`, each an int no larger than in either configuration).
      choice: ``"cpu"`` or ``"accelerator"``; default: ``$DIFFBOOK_CONFIG`` if set,
        otherwise :func:`default_choice`.

    Returns:
      The chosen settings as a :class:`Config` named after the choice; with
      ``$DIFFBOOK_SMOKE`` set (see :func:`smoke_run`), with the ``"smoke"`` counts in
      place and ``smoke`` true.

    Raises:
      TypeError: if ``recipe`` or its ``"smoke"`` entry is not a dict.
      ValueError: if ``recipe`` lacks one of the two configurations, if they have
        different keys, if ``"smoke"`` names anything but a count or raises one, or
        if ``choice`` is not one of :data:`CHOICES`.
    """
    if not isinstance(recipe, dict):
        raise TypeError(f"recipe must be a dict of {CHOICES}, got {type(recipe).__name__}")
    if set(recipe) - {"smoke"} != set(CHOICES):
        raise ValueError(
            f"recipe must have the keys {CHOICES} (and optionally 'smoke'), got {sorted(recipe)}"
        )
    cpu, accelerator = recipe["cpu"], recipe["accelerator"]
    if set(cpu) != set(accelerator):
        raise ValueError(
            f"recipe's cpu and accelerator configs need the same keys; "
            f"differing: {sorted(set(cpu) ^ set(accelerator))}"
        )
    smoke = recipe.get("smoke", {})
    _check_smoke(smoke, {"cpu": cpu, "accelerator": accelerator})
    choice = choice or os.environ.get("DIFFBOOK_CONFIG") or default_choice()
    checks.one_of(choice, "choice", CHOICES)
    if smoke_run():
        return Config(choice, {**recipe[choice], **smoke}, smoke=True)
    return Config(choice, recipe[choice])


def expect(config: Config, condition, claim: str) -> None:
    """A chapter's check of a result that its CPU recipe was measured to reach.

    Under the CPU recipe, the one the chapter's figures were measured with, an unmet
    check stops the chapter, as ``assert`` would.  Under any other recipe (a GPU or
    TPU, a smoke run) the figures differ, so an unmet check prints one line saying so
    and the chapter goes on.  A met check prints nothing, and nothing is returned, so a
    check on a cell's last line shows nothing in the notebook either.

    Args:
      config: the chapter's configuration (from :func:`pick`).
      condition: the result of the check; anything ``bool`` accepts, such as a JAX or
        NumPy boolean scalar.
      claim: what the check says, in words and figures, e.g.
        ``f"held-out ELBO {elbo:.1f} above -105 nats"``.

    Raises:
      TypeError: if ``config`` is not a :class:`Config` or ``claim`` not a string.
      AssertionError: if the check is unmet under the CPU recipe (not a smoke run).
    """
    if not isinstance(config, Config):
        raise TypeError(f"config must be a Config from config.pick, got {type(config).__name__}")
    if not isinstance(claim, str):
        raise TypeError(f"claim must be a string, got {type(claim).__name__}")
    if not bool(condition):
        if config.name == "cpu" and not config.smoke:
            raise AssertionError(claim)
        run = "smoke run" if config.smoke else f"configuration {config.name!r}"
        print(f"not met in this {run} (the CPU recipe meets it): {claim}")


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
    if config.smoke:
        line += "; SMOKE RUN: step and sample counts cut, so the figures mean nothing"
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
