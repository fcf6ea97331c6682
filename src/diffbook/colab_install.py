"""The first cell of every chapter: install diffbook in Colab without breaking the accelerator.

A Colab runtime comes with its own JAX, built for its hardware: ``libtpu`` on a TPU, a CUDA
plugin on an NVIDIA GPU.  diffbook and Flax 0.12.8 need a newer JAX than some runtimes have,
and ``pip install flax`` alone would upgrade ``jax`` and ``jaxlib`` but leave the TPU or CUDA
plugin at its old version; JAX then cannot start the accelerator and quietly runs on the CPU.
So when JAX must change, the cell installs it as JAX's install guide does for that hardware
(``jax[tpu]==PIN``, ``jax[cuda12]==PIN`` or ``jax[cuda13]==PIN``, plain ``jax==PIN`` on a CPU)
and first uninstalls the plugins of any other build (the CUDA 12 plugin when it installs the
CUDA 13 one, say), so that one plugin is left.  The CUDA 13 wheels need a driver for CUDA 13
*and* a GPU of compute capability 7.5 or more; a P100 or V100 gets the CUDA 12 wheels whatever
its driver.  When the installed JAX is recent enough it is left alone, and every pip call of
the cell names the installed ``jax``, ``jaxlib`` and plugins at their versions, so that no
dependency (orbax-checkpoint, lineax, equinox, ...) can move them.

diffbook itself comes from the tag ``v<version>`` of the repository, the version the notebook
was generated with; while that tag does not exist (an unreleased version), from the branch of
``_config.yml``; the cell prints which.

The code between the ``cell:`` markers below runs *before* diffbook is installed, so it
imports nothing but the standard library.  ``python tools/notebooks.py install-cell``
copies it into each chapter's first cell, followed by a call of :func:`main` with the pins
of ``requirements.txt`` (the one file that pins versions), diffbook's version and the
repository and branch of ``_config.yml``; ``python tools/notebooks.py check`` fails when a
chapter's cell differs from that.  Edit this file, not the cells.

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
ALWAYS_PINNED = ("flax", "optax", "orbax-checkpoint", "diffrax", "lineax", "equinox")
PLUGINS = {
    "tpu": ("libtpu",),
    "cuda12": ("jax-cuda12-plugin", "jax-cuda12-pjrt"),
    "cuda13": ("jax-cuda13-plugin", "jax-cuda13-pjrt"),
}
JAX_PACKAGES = ("jax", "jaxlib", *(name for names in PLUGINS.values() for name in names))
CUDA13_MIN_CAPABILITY = (7, 5)


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


def jax_requirement(hardware, version, cuda_major=None, compute_capability=None):
    """The pip requirement that installs JAX ``version`` for ``hardware``, as JAX's guide does.

    Args:
      hardware: ``"tpu"``, ``"gpu"`` (NVIDIA) or ``"cpu"``.
      version: the JAX version to install, e.g. ``"0.10.2"``.
      cuda_major: on a GPU, the newest CUDA major version its driver supports
        (``nvidia-smi`` says it), or ``None`` when unknown.
      compute_capability: on a GPU, the smallest compute capability of its devices as
        ``(major, minor)``, or ``None`` when unknown.

    Returns:
      ``"jax[tpu]==V"``, ``"jax[cuda13]==V"`` (only for a driver of CUDA 13 or more and a
      known compute capability of at least :data:`CUDA13_MIN_CAPABILITY`),
      ``"jax[cuda12]==V"`` (any other GPU) or ``"jax==V"``.

    Raises:
      ValueError: if ``hardware`` is not one of :data:`HARDWARE`.
      TypeError: if ``compute_capability`` is neither ``None`` nor a pair of ints.
    """
    if hardware not in HARDWARE:
        raise ValueError(f"hardware must be one of {HARDWARE}, got {hardware!r}")
    if compute_capability is not None and (
        not isinstance(compute_capability, tuple)
        or len(compute_capability) != 2
        or not all(isinstance(n, int) for n in compute_capability)
    ):
        raise TypeError(
            f"compute_capability must be None or (major, minor) ints, got {compute_capability!r}"
        )
    if hardware == "tpu":
        return f"jax[tpu]=={version}"
    if hardware == "gpu":
        cuda13 = (cuda_major or 0) >= 13 and (compute_capability or (0, 0)) >= CUDA13_MIN_CAPABILITY
        return f"jax[cuda{13 if cuda13 else 12}]=={version}"
    return f"jax=={version}"


def foreign_plugins(requirement, installed):
    """The installed TPU or CUDA plugins that the JAX build of ``requirement`` does not use.

    Args:
      requirement: what :func:`jax_requirement` returned, e.g. ``"jax[cuda13]==0.10.2"``.
      installed: the names (or a dict name -> version) of the installed packages.

    Returns:
      The names in :data:`PLUGINS` that are installed and belong to another build (on a
      CPU, every installed plugin), in :data:`JAX_PACKAGES` order.

    Raises:
      ValueError: if ``requirement`` is not a JAX requirement.
    """
    match = re.fullmatch(r"jax(?:\[(\w+)\])?==\S+", str(requirement))
    if match is None:
        raise ValueError(f"requirement must be jax[...]==VERSION, got {requirement!r}")
    keep = PLUGINS.get(match.group(1) or "cpu", ())
    return [name for name in JAX_PACKAGES[2:] if name in installed and name not in keep]


def jax_is_compatible(jax_version, pin, jax_minimum=None):
    """Whether the installed JAX is recent enough for diffbook, so the cell leaves it alone.

    Args:
      jax_version: the installed JAX's version, or ``None`` when JAX is not installed.
      pin: the tested JAX version of ``requirements.txt``.
      jax_minimum: the oldest JAX that diffbook works with (default: the pin's
        ``major.minor``).

    Returns:
      ``True`` when ``jax_version`` is at least ``jax_minimum``.

    Raises:
      ValueError: if a version does not parse.
      TypeError: if a version is not a string.
    """
    minimum = jax_minimum or ".".join(str(n) for n in version_tuple(pin)[:2])
    return jax_version is not None and version_tuple(jax_version) >= version_tuple(minimum)


def plan(
    hardware,
    installed,
    pins,
    *,
    jax_minimum=None,
    packages=(),
    diffbook="diffbook",
    cuda_major=None,
    compute_capability=None,
):
    """What the install cell does where diffbook is missing: its pip calls, and a line saying so.

    Every ``pip install`` of the plan names JAX at an exact version: the pinned build for the
    hardware when JAX must change, else the installed ``jax``, ``jaxlib`` and plugins at
    their installed versions, so that no other package can upgrade them.

    Args:
      hardware: what the runtime has: ``"tpu"``, ``"gpu"`` (NVIDIA) or ``"cpu"``.
      installed: name -> version of the installed packages among :data:`JAX_PACKAGES`
        (no ``"jax"`` key when JAX is not installed).
      pins: package name -> tested version; needs ``jax`` and every name in
        :data:`ALWAYS_PINNED` and ``packages`` (``jaxlib`` is pinned too on a CPU if given).
      jax_minimum: the oldest JAX that diffbook works with (default: the pin's
        ``major.minor``); an installed JAX at least this recent is left alone.
      packages: names of further pinned packages that the chapter needs.
      diffbook: the pip requirement that installs diffbook (a ``diffbook @ git+…`` URL or a
        folder).
      cuda_major: on a GPU, the newest CUDA major version its driver supports.
      compute_capability: on a GPU, the smallest compute capability of its devices.

    Returns:
      ``(commands, message)``: ``commands`` is the list of argument lists to pass, in turn,
      after ``python -m pip`` (a ``pip uninstall`` of other builds' plugins when JAX is
      replaced, then one ``pip install``); ``message`` is one line saying what was done.

    Raises:
      ValueError: if ``hardware`` is unknown, ``pins`` lacks a needed package, or a
        version does not parse.
      TypeError: if ``installed`` or ``pins`` is not a dict or ``packages`` is a string.
    """
    if hardware not in HARDWARE:
        raise ValueError(f"hardware must be one of {HARDWARE}, got {hardware!r}")
    if not isinstance(installed, dict):
        raise TypeError(f"installed must be a dict of package -> version, got {installed!r}")
    if not isinstance(pins, dict):
        raise TypeError(f"pins must be a dict of package -> version, got {type(pins).__name__}")
    if isinstance(packages, str):
        raise TypeError(f"packages must be a list of names, not the string {packages!r}")
    missing = [name for name in ("jax", *ALWAYS_PINNED, *packages) if name not in pins]
    if missing:
        raise ValueError(f"pins has no version for {missing}")
    pin, jax_version = pins["jax"], installed.get("jax")
    minimum = jax_minimum or ".".join(str(n) for n in version_tuple(pin)[:2])
    others = [f"{name}=={pins[name]}" for name in (*ALWAYS_PINNED, *packages)]
    where = {"tpu": "TPU", "gpu": "NVIDIA GPU", "cpu": "CPU-only"}[hardware] + " runtime"
    if jax_is_compatible(jax_version, pin, minimum):
        kept = [f"{name}=={installed[name]}" for name in JAX_PACKAGES if name in installed]
        return (
            [["install", "-q", *kept, *others, diffbook]],
            f"Installed {', '.join(others)} and diffbook; kept jax {jax_version} "
            f"(this {where} has it, diffbook needs jax>={minimum}) by pinning "
            f"{', '.join(name.split('==')[0] for name in kept)} in the pip call.",
        )
    jax = [jax_requirement(hardware, pin, cuda_major, compute_capability)]
    if hardware == "cpu" and "jaxlib" in pins:
        jax.append(f"jaxlib=={pins['jaxlib']}")
    why = (
        "no JAX was installed"
        if jax_version is None
        else f"jax {jax_version} was older than the jax>={minimum} diffbook needs"
    )
    if hardware == "gpu" and jax[0].startswith("jax[cuda12]") and (cuda_major or 0) >= 13:
        why += (
            "; the CUDA 12 build, as the GPU's compute capability "
            + (
                "is unknown"
                if compute_capability is None
                else f"{compute_capability[0]}.{compute_capability[1]} is below"
            )
            + " the 7.5 that the CUDA 13 wheels need"
        )
    commands, removed = [], foreign_plugins(jax[0], installed)
    if removed:
        commands.append(["uninstall", "-y", "-q", *removed])
        why += f"; uninstalled {', '.join(removed)} first"
    commands.append(["install", "-q", *jax, *others, diffbook])
    return (
        commands,
        f"Installed {' '.join(jax)} for this {where} ({why}), then {', '.join(others)} "
        "and diffbook.",
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


def _nvidia_smi(args, path):
    """What ``nvidia-smi ARGS`` prints, or ``None`` when it is missing or fails."""
    exe = shutil.which("nvidia-smi", path=path)
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def driver_cuda_major(*, path=None):
    """The newest CUDA major version that the NVIDIA driver supports, or ``None``.

    Args:
      path: the ``PATH`` to look for ``nvidia-smi`` in (default: the process's).

    Returns:
      The major number of the "CUDA Version" that ``nvidia-smi`` prints, or ``None`` when
      there is no ``nvidia-smi`` or it says nothing readable.
    """
    match = re.search(r"CUDA Version:\s*(\d+)", _nvidia_smi([], path) or "")
    return int(match.group(1)) if match else None


def gpu_compute_capability(*, path=None):
    """The smallest compute capability of the machine's NVIDIA GPUs, or ``None``.

    Asks ``nvidia-smi --query-gpu=compute_cap``, which drivers older than about 510 do not
    know (they answer with an error: then the capability is unknown).

    Args:
      path: the ``PATH`` to look for ``nvidia-smi`` in (default: the process's).

    Returns:
      ``(major, minor)``, e.g. ``(7, 0)`` for a V100, or ``None`` when there is no
      ``nvidia-smi``, it fails or it prints no capability.
    """
    out = _nvidia_smi(["--query-gpu=compute_cap", "--format=csv,noheader"], path) or ""
    found = [(int(a), int(b)) for a, b in re.findall(r"^\s*(\d+)\.(\d+)\s*$", out, re.M)]
    return min(found) if found else None


def installed_jax_packages():
    """The installed packages among :data:`JAX_PACKAGES`.

    Returns:
      A dict name -> installed version (empty when JAX is not installed).
    """
    found = {}
    for name in JAX_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def _check_origin(repository, version, branch):
    """Raise ValueError unless these name a repository (https://), a version and a branch."""
    if not isinstance(repository, str) or not repository.startswith("https://"):
        raise ValueError(f"repository must be an https:// URL, got {repository!r}")
    for name, value in (("version", version), ("branch", branch)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def diffbook_source(repository, version, branch, *, environ=None, run=subprocess.run):
    """Where to install diffbook from: the tag of the notebook's version, if there is one.

    Args:
      repository: the diffbook repository, e.g. ``https://github.com/diffbook/diffbook``.
      version: the diffbook version the notebook was generated with; its tag is
        ``v<version>``.
      branch: the branch to install from while that tag does not exist.
      environ: the environment (default ``os.environ``); a non-empty
        ``DIFFBOOK_INSTALL_SOURCE`` (a folder or a pip URL) overrides the repository.
      run: runs ``git ls-remote`` (``subprocess.run``; tests pass a fake).

    Returns:
      ``(requirement, where)``: the pip requirement (a folder, or ``diffbook @ URL``), and
      words saying where it points, for the cell's message.

    Raises:
      ValueError: if ``repository`` is not an ``https://`` URL, or ``version`` or ``branch``
        is not a non-empty string.
    """
    environ = os.environ if environ is None else environ
    _check_origin(repository, version, branch)
    source = environ.get("DIFFBOOK_INSTALL_SOURCE")
    if source:
        requirement = source if os.path.isdir(source) else f"diffbook @ {source}"
        return requirement, f"{source} (DIFFBOOK_INSTALL_SOURCE)"
    tag = f"v{version}"
    try:
        # --exit-code: 0 when the tag exists, 2 when the repository has no such ref.
        answer = run(
            ["git", "ls-remote", "--exit-code", "--tags", repository, f"refs/tags/{tag}"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        ).returncode
    except (OSError, subprocess.SubprocessError):
        answer = None
    if answer == 2:
        return (
            f"diffbook @ git+{repository}@{branch}",
            f"{repository} at branch {branch}, as it has no tag {tag} (this notebook's "
            f"version) yet: the code may be newer than the notebook",
        )
    return f"diffbook @ git+{repository}@{tag}", f"{repository} at tag {tag}"


def main(pins, *, repository, version, branch="main", jax_minimum=None, packages=(), run=None):
    """Install diffbook and what it needs, unless it is importable; print one line.

    Args:
      pins: package name -> tested version (see :func:`plan`).
      repository: the diffbook repository, e.g. ``https://github.com/diffbook/diffbook``;
        ``$DIFFBOOK_INSTALL_SOURCE`` (a folder or a pip URL) overrides it.
      version: the diffbook version the notebook was generated with (see
        :func:`diffbook_source`).
      branch: the repository's branch, installed while the version has no tag.
      jax_minimum: the oldest JAX that diffbook works with (see :func:`plan`).
      packages: further pinned packages that the chapter needs.
      run: runs ``git`` and ``pip`` (default ``subprocess.run``; tests pass a fake).

    Raises:
      ValueError: if ``repository`` is not an ``https://`` URL, or ``version`` or ``branch``
        is empty.
      subprocess.CalledProcessError: if pip fails.
    """
    run = run or subprocess.run
    _check_origin(repository, version, branch)
    if importlib.util.find_spec("diffbook") is not None:
        print("diffbook is already importable: nothing to install.")
        return
    requirement, where = diffbook_source(repository, version, branch, run=run)
    hardware = detect_hardware()
    installed = installed_jax_packages()
    gpu = hardware == "gpu"
    commands, message = plan(
        hardware,
        installed,
        pins,
        jax_minimum=jax_minimum,
        packages=packages,
        diffbook=requirement,
        cuda_major=driver_cuda_major() if gpu else None,
        compute_capability=gpu_compute_capability() if gpu else None,
    )
    for args in commands:
        run([sys.executable, "-m", "pip", *args], check=True)
    message += f" diffbook came from {where}."
    if "jax" in sys.modules and not jax_is_compatible(
        installed.get("jax"), pins["jax"], jax_minimum
    ):
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
