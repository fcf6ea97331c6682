"""The first cell of every chapter: install diffbook in Colab without breaking the accelerator.

A Colab runtime comes with its own JAX, built for its hardware: ``libtpu`` on a TPU, the
CUDA plugin on an NVIDIA GPU.  diffbook and Flax 0.12.8 need a newer JAX than some runtimes
have, and ``pip install flax`` alone would upgrade ``jax`` and ``jaxlib`` but leave the TPU
or CUDA plugin at its old version; JAX then cannot start the accelerator and quietly runs
on the CPU.  So when JAX must change, the cell installs it as JAX's install guide does for
that hardware (``jax[tpu]==PIN``, ``jax[cuda12]==PIN`` or ``jax[cuda13]==PIN``, plain
``jax==PIN`` on a CPU); when the installed JAX is recent enough it is left alone.

The code between the ``cell:`` markers below runs *before* diffbook is installed, so it
imports nothing but the standard library.  ``python tools/notebooks.py install-cell``
copies it into each chapter's first cell, followed by a call of :func:`main` with the pins
of ``requirements.txt`` and the repository of ``_config.yml``; ``python tools/notebooks.py
check`` fails when a chapter's cell differs from that.  Edit this file, not the cells.

Set ``DIFFBOOK_INSTALL_SOURCE`` to a folder (a local checkout) or to a pip URL
(``git+https://…@branch``) to install diffbook from there instead of the repository.
"""

# cell: begin
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys

HARDWARE = ("tpu", "gpu", "cpu")
ALWAYS_PINNED = ("flax", "optax", "diffrax")


def version_tuple(version):
    """The numeric release of a version string: ``"0.4.26+cuda12"`` -> ``(0, 4, 26)``.

    Args:
      version: a version as pip or ``importlib.metadata`` writes it.

    Returns:
      A tuple of ints, to compare releases with ``<``.

    Raises:
      TypeError: if ``version`` is not a string.
      ValueError: if it does not start with a number.
    """
    if not isinstance(version, str):
        raise TypeError(f"version must be a string, got {version!r}")
    match = re.match(r"\d+(\.\d+)*", version.strip())
    if match is None:
        raise ValueError(f"version must start with a number, got {version!r}")
    return tuple(int(part) for part in match.group(0).split("."))


def jax_requirement(hardware, version, cuda_major=None):
    """The pip requirement that installs JAX ``version`` for ``hardware``, as JAX's guide does.

    Args:
      hardware: ``"tpu"``, ``"gpu"`` (NVIDIA) or ``"cpu"``.
      version: the JAX version to install, e.g. ``"0.10.2"``.
      cuda_major: on a GPU, the newest CUDA major version its driver supports
        (``nvidia-smi`` says it); 13 or more picks the CUDA 13 wheels, anything else
        (``None`` included) the CUDA 12 ones.

    Returns:
      ``"jax[tpu]==V"``, ``"jax[cuda12]==V"``, ``"jax[cuda13]==V"`` or ``"jax==V"``.

    Raises:
      ValueError: if ``hardware`` is not one of :data:`HARDWARE`.
    """
    if hardware not in HARDWARE:
        raise ValueError(f"hardware must be one of {HARDWARE}, got {hardware!r}")
    if hardware == "tpu":
        return f"jax[tpu]=={version}"
    if hardware == "gpu":
        return f"jax[cuda{13 if (cuda_major or 0) >= 13 else 12}]=={version}"
    return f"jax=={version}"


def plan(
    hardware,
    jax_version,
    pins,
    *,
    jax_minimum=None,
    packages=(),
    diffbook="diffbook",
    diffbook_installed=False,
    cuda_major=None,
):
    """What the install cell does: the arguments of one ``pip`` call, and a line saying so.

    Args:
      hardware: what the runtime has: ``"tpu"``, ``"gpu"`` (NVIDIA) or ``"cpu"``.
      jax_version: the installed JAX's version, or ``None`` when JAX is not installed.
      pins: package name -> tested version; needs ``jax`` and every name in
        :data:`ALWAYS_PINNED` and ``packages`` (``jaxlib`` is pinned too on a CPU if given).
      jax_minimum: the oldest JAX that diffbook works with (default: the pin's
        ``major.minor``); an installed JAX at least this recent is left alone.
      packages: names of further pinned packages that the chapter needs.
      diffbook: the pip requirement that installs diffbook (a ``diffbook @ git+…`` URL or a
        folder).
      diffbook_installed: whether ``diffbook`` is already importable; then nothing is done.
      cuda_major: on a GPU, the newest CUDA major version its driver supports.

    Returns:
      ``(pip_args, message)``: ``pip_args`` is the list to pass after ``python -m pip``, or
      ``None`` when nothing needs installing; ``message`` is one line saying what was done.

    Raises:
      ValueError: if ``hardware`` is unknown, ``pins`` lacks a needed package, or a
        version does not parse.
      TypeError: if ``pins`` is not a dict or ``packages`` is a string.
    """
    if diffbook_installed:
        return None, "diffbook is already importable: nothing to install."
    if hardware not in HARDWARE:
        raise ValueError(f"hardware must be one of {HARDWARE}, got {hardware!r}")
    if not isinstance(pins, dict):
        raise TypeError(f"pins must be a dict of package -> version, got {type(pins).__name__}")
    if isinstance(packages, str):
        raise TypeError(f"packages must be a list of names, not the string {packages!r}")
    missing = [name for name in ("jax", *ALWAYS_PINNED, *packages) if name not in pins]
    if missing:
        raise ValueError(f"pins has no version for {missing}")
    pin = pins["jax"]
    minimum = jax_minimum or ".".join(str(n) for n in version_tuple(pin)[:2])
    others = [f"{name}=={pins[name]}" for name in (*ALWAYS_PINNED, *packages)]
    where = {"tpu": "TPU", "gpu": "NVIDIA GPU", "cpu": "CPU-only"}[hardware] + " runtime"
    if jax_version is not None and version_tuple(jax_version) >= version_tuple(minimum):
        return (
            ["install", "-q", *others, diffbook],
            f"Installed diffbook, {', '.join(others)}; left jax {jax_version} alone "
            f"(this {where} has it and diffbook needs jax>={minimum}).",
        )
    jax = [jax_requirement(hardware, pin, cuda_major)]
    if hardware == "cpu" and "jaxlib" in pins:
        jax.append(f"jaxlib=={pins['jaxlib']}")
    why = (
        "no JAX was installed"
        if jax_version is None
        else f"jax {jax_version} was older than the jax>={minimum} diffbook needs"
    )
    return (
        ["install", "-q", *jax, *others, diffbook],
        f"Installed {' '.join(jax)} for this {where} ({why}), then diffbook, {', '.join(others)}.",
    )


def detect_hardware(*, environ=None, dev="/dev", path=None):
    """Which accelerator this machine has, from its device files, environment and drivers.

    Args:
      environ: the environment to read (default: ``os.environ``).
      dev: the folder of device files (default ``/dev``).
      path: the ``PATH`` to look for ``nvidia-smi`` in (default: the process's).

    Returns:
      ``"tpu"`` (a TPU device file, a TPU variable such as ``COLAB_TPU_ADDR`` or
      ``TPU_NAME``, or ``libtpu`` installed), ``"gpu"`` (``nvidia-smi`` or an
      ``nvidia0`` device), else ``"cpu"``.
    """
    environ = os.environ if environ is None else environ

    try:
        devices = os.listdir(dev)
    except OSError:
        devices = []
    if any(environ.get(k) for k in ("COLAB_TPU_ADDR", "TPU_NAME", "TPU_ACCELERATOR_TYPE")) or any(
        re.fullmatch(r"accel\d+", name) for name in devices
    ):
        return "tpu"
    if shutil.which("nvidia-smi", path=path) or "nvidia0" in devices:
        return "gpu"
    if importlib.util.find_spec("libtpu") is not None:
        return "tpu"
    return "cpu"


def driver_cuda_major(*, path=None):
    """The newest CUDA major version that the NVIDIA driver supports, or ``None``.

    Args:
      path: the ``PATH`` to look for ``nvidia-smi`` in (default: the process's).

    Returns:
      The major number of the "CUDA Version" that ``nvidia-smi`` prints, or ``None`` when
      there is no ``nvidia-smi`` or it says nothing readable.
    """
    exe = shutil.which("nvidia-smi", path=path)
    if exe is None:
        return None
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"CUDA Version:\s*(\d+)", out)
    return int(match.group(1)) if match else None


def main(pins, *, repository, jax_minimum=None, packages=(), run=subprocess.run):
    """Install diffbook and what it needs, unless it is importable; print one line.

    Args:
      pins: package name -> tested version (see :func:`plan`).
      repository: the diffbook repository, e.g. ``https://github.com/diffbook/diffbook``;
        ``$DIFFBOOK_INSTALL_SOURCE`` (a folder or a pip URL) overrides it.
      jax_minimum: the oldest JAX that diffbook works with (see :func:`plan`).
      packages: further pinned packages that the chapter needs.
      run: runs the pip command (``subprocess.run``; tests pass a fake).

    Raises:
      ValueError: if ``repository`` is not an ``https://`` URL.
      subprocess.CalledProcessError: if pip fails.
    """
    if not isinstance(repository, str) or not repository.startswith("https://"):
        raise ValueError(f"repository must be an https:// URL, got {repository!r}")
    installed = importlib.util.find_spec("diffbook") is not None
    hardware = "cpu" if installed else detect_hardware()
    source = os.environ.get("DIFFBOOK_INSTALL_SOURCE") or f"git+{repository}"
    try:
        jax_version = importlib.metadata.version("jax")
    except importlib.metadata.PackageNotFoundError:
        jax_version = None
    args, message = plan(
        hardware,
        jax_version,
        pins,
        jax_minimum=jax_minimum,
        packages=packages,
        diffbook_installed=installed,
        diffbook=source if os.path.isdir(source) else f"diffbook @ {source}",
        cuda_major=driver_cuda_major() if hardware == "gpu" else None,
    )
    if args is not None:
        run([sys.executable, "-m", "pip", *args], check=True)
        if any(a.startswith("jax") for a in args) and "jax" in sys.modules:
            message += (
                " JAX was imported before this cell: restart the runtime "
                "(Runtime > Restart session) and run the chapter again."
            )
    print(message)


# cell: end


def cell_code() -> str:
    """The code between this file's ``cell:`` markers: the body of every chapter's first cell.

    Returns:
      The source text, ending with a newline.
    """
    text = open(__file__, encoding="utf-8").read()
    code = text.split("# cell: begin\n", 1)[1].split("# cell: end\n", 1)[0]
    return code.rstrip("\n") + "\n"  # the formatter leaves blank lines before the marker
