"""What several test files share: the built book (tests/book/test_book.py,
tests/book/test_browser.py), :func:`assert_every_param_gets_a_gradient` and small models.

It also starts this process's JAX with quick compilation (see :data:`FAST_COMPILE`).

Test modules import the helpers with ``from conftest import ...``: pytest puts this
folder first on ``sys.path`` and imports this file as the module ``conftest`` before it
collects the tests here (also in each pytest-xdist worker).  The repository's root
``conftest.py`` is imported first, so by the time a test module here is imported,
``conftest`` is this file.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Unit tests compile many small programs and run each for milliseconds, so XLA's backend
# optimisation (LLVM at -O3 on a CPU) costs them more time than it saves: with level 0,
# the network tests (now tests/unit/nets) took 78 s instead of 139 s on two cores.  The flag
# is in the environment only while this process starts its JAX backend (XLA reads it once, then);
# the chapters' kernels, which copy os.environ when they start, compile as a reader's
# run does.  Subprocesses of tests ask for it with fast_compile_env().
FAST_COMPILE = "--xla_backend_optimization_level=0"


def fast_compile_env(**overrides: str) -> dict:
    """``os.environ`` with ``overrides``, and :data:`FAST_COMPILE` added to ``XLA_FLAGS``."""
    env = dict(os.environ, **overrides)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
    return env


def _start_jax_with_fast_compiles() -> None:
    saved = os.environ.get("XLA_FLAGS")
    os.environ["XLA_FLAGS"] = fast_compile_env()["XLA_FLAGS"]
    try:
        import jax

        jax.devices()  # starts the backend, which reads XLA_FLAGS
    finally:
        if saved is None:
            del os.environ["XLA_FLAGS"]
        else:
            os.environ["XLA_FLAGS"] = saved


_start_jax_with_fast_compiles()


@dataclass
class BookBuild:
    returncode: int
    log: str  # the tail of the build's stdout and stderr
    html: Path  # the HTML output folder


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> BookBuild:
    """The book built once per test run, with warnings as errors, into a temporary folder.

    The build goes to a copy so the tests never touch the reader's own _build/. Under
    pytest-xdist every worker has its own session, so a session fixture alone would build
    once per worker; the run's base folder (the parent of a worker's) is shared by all
    workers, so the first one to take the lock builds and the others read its result.
    """
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    out = shared / "book"
    record = shared / "book-build.json"
    with open(shared / "book-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not record.exists():
            exe = shutil.which(
                "jupyter-book", path=str(Path(sys.executable).parent)
            ) or shutil.which("jupyter-book")
            if exe is None:
                pytest.fail("jupyter-book is not installed: pip install -r requirements.txt")
            # --keep-going: with a warning the HTML is still written, so the browser test
            # can look at the pages even when tests/book/test_book.py fails on the warning.
            result = subprocess.run(
                [exe, "build", str(ROOT), "--path-output", str(out), "-W", "-n", "--keep-going"],
                capture_output=True,
                text=True,
                timeout=900,
            )
            record.write_text(
                json.dumps(
                    {
                        "returncode": result.returncode,
                        "log": result.stdout[-5000:] + result.stderr[-5000:],
                    }
                )
            )
        built = json.loads(record.read_text())
    return BookBuild(built["returncode"], built["log"], out / "_build" / "html")


# ---------------------------------------------------------------------------
# Exact "networks" for testing samplers and losses: Gaussian data N(m, s^2) per
# coordinate.  With a = alpha_bar, x_t = sqrt(a) x0 + sqrt(1 - a) eps is Gaussian,
# and the ideal prediction of eps, x0 or v given x_t is known in closed form.
# ---------------------------------------------------------------------------


def gaussian_oracle(schedule, m: float, s: float, prediction: str = "epsilon"):
    """``model_fn(x, u)``: the exact prediction for data N(m, s^2) under ``schedule``.

    It reads the noise level through ``schedule.alpha_bar_at(u)``, which equals
    ``alpha_bars[t]`` at ``u = t / T``, so discrete and continuous samplers alike call it.
    """

    import jax.numpy as jnp

    def model_fn(x, u):
        a = schedule.alpha_bar_at(u).reshape((-1,) + (1,) * (x.ndim - 1))
        d = a * s**2 + 1 - a
        eps = jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * m) / d
        x0 = m + jnp.sqrt(a) * s**2 * (x - jnp.sqrt(a) * m) / d
        return {"epsilon": eps, "x0": x0, "v": jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x0}[prediction]

    return model_fn


class CallCounter:
    """Wraps a ``model_fn`` and counts the calls that really run (inside jit and scan too)."""

    def __init__(self, model_fn):
        self.model_fn, self.calls = model_fn, 0

    def _tick(self):
        self.calls += 1

    def __call__(self, x, u):
        import jax

        jax.debug.callback(self._tick)
        return self.model_fn(x, u)

    def count(self) -> int:
        import jax

        jax.effects_barrier()
        return self.calls


@pytest.fixture
def oracle():
    """The factory :func:`gaussian_oracle`: ``oracle(schedule, m, s, prediction)``."""
    return gaussian_oracle


@pytest.fixture
def counted():
    """``counted(model_fn)`` -> a :class:`CallCounter`; ``.count()`` the real calls."""
    return CallCounter


def assert_every_param_gets_a_gradient(model, loss_fn, *, jit: bool = False):
    """Fail, naming them, if some parameters of ``model`` get an all-zero gradient.

    A parameter that NNX cannot see (kept in a plain list or a closure) or that the
    forward pass skips is never trained; this is the check that catches it.

    Args:
      model: the NNX model.
      loss_fn: ``loss_fn(model) -> scalar``; make it depend on every output (for
        example the sum of squares), with inputs that exercise every branch.
      jit: compile the gradient (much faster for large models than op by op).

    Returns:
      The gradients, an ``nnx.State`` of ``model``'s ``nnx.Param`` variables, for
      further checks.
    """
    # Imported here: the book's tests use this file too and need no JAX.
    import jax
    import numpy as np
    from flax import nnx

    grad_fn = nnx.grad(loss_fn)
    grads = nnx.jit(grad_fn)(model) if jit else grad_fn(model)
    grads = nnx.state(grads, nnx.Param)
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    assert len(flat) == len(jax.tree.leaves(nnx.state(model, nnx.Param))), (
        "the gradient does not cover every parameter"
    )
    dead = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g))]
    assert not dead, f"parameters without gradient: {dead}"
    return grads


# ---------------------------------------------------------------------------
# A tiny text-to-image model and three prompts, for the tests of nets and guidance.
# ---------------------------------------------------------------------------
TINY_VOCAB = 12


def tiny_text_to_image(seed: int = 0):
    """A small :class:`diffbook.nets.TextToImage` whose output depends on its inputs.

    The output convolution starts at zero (an untrained model predicts zeros); it
    gets random weights here so that the inputs' influence can be seen.
    """
    import jax
    from flax import nnx

    from diffbook import nets

    model = nets.TextToImage(
        TINY_VOCAB,
        max_len=4,
        text_dim=16,
        text_layers=1,
        channels=(8, 16),
        emb_dim=16,
        rngs=nnx.Rngs(seed),
    )
    kernel = model.unet.out.kernel
    kernel[...] = 0.1 * jax.random.normal(jax.random.key(seed + 1), kernel.shape)
    return model


def tiny_prompts():
    """Word ids (3, 4) of three prompts of 2, 3 and 1 words, and their padding mask."""
    import jax.numpy as jnp

    tokens = jnp.array([[2, 3, 0, 0], [4, 5, 6, 0], [7, 0, 0, 0]], jnp.int32)
    return tokens, tokens > 0


def tiny_class_unet(seed: int = 0):
    """A small class-conditional :class:`diffbook.nets.UNet` (10 classes, 8x8 digits)
    whose output depends on its inputs (its zero-initialised output layer is randomised)."""
    import jax
    from flax import nnx

    from diffbook import nets

    model = nets.UNet(1, (8, 16), emb_dim=16, num_classes=10, rngs=nnx.Rngs(seed))
    # The output layer starts at zero; give it weights so that inputs matter.
    model.out.kernel[...] = 0.1 * jax.random.normal(jax.random.key(1), model.out.kernel.shape)
    return model


def prompt_oracle(prediction: str, steps: int = 1000):
    """A known text-conditioned network and the clean images it aims at.

    Returns ``(schedule, oracle, x0_cond, x0_uncond)``: a cosine schedule of ``steps``
    timesteps and a network (called as ``oracle(x, u, tokens, mask)``, with a
    ``null_condition``) that outputs the exact ``prediction`` target (``"epsilon"`` or
    ``"v"``) of a fixed clean image: ``x0_cond`` when the prompt has a word and
    ``x0_uncond`` when it has none.  Both are ``(3, 16, 16, 3)``; row ``i`` of a batch is
    prompt ``i % 3`` of :func:`tiny_prompts`.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from diffbook.schedules import NoiseSchedule

    class Oracle(nnx.Module):
        def __init__(self, schedule, x0_cond, x0_uncond, prediction):
            self.alpha_bars = nnx.Variable(jnp.asarray(schedule.alpha_bars))
            self.x0_cond, self.x0_uncond = nnx.Variable(x0_cond), nnx.Variable(x0_uncond)
            self.num_timesteps, self.prediction = schedule.num_timesteps, prediction

        def null_condition(self, tokens, mask):
            return tokens, jnp.zeros_like(mask)

        def __call__(self, x, u, tokens, mask):
            t = jnp.round(u * self.num_timesteps).astype(jnp.int32)
            ab = self.alpha_bars[...][t][:, None, None, None]
            # Row i of a batch is prompt i % 3 (guidance stacks the prompts twice).
            reps = (x.shape[0] // self.x0_cond.shape[0], 1, 1, 1)
            x0 = jnp.where(
                mask.any(1)[:, None, None, None],
                jnp.tile(self.x0_cond[...], reps),
                jnp.tile(self.x0_uncond[...], reps),
            )
            eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1.0 - ab)
            if self.prediction == "epsilon":
                return eps
            return jnp.sqrt(ab) * eps - jnp.sqrt(1.0 - ab) * x0  # v

    schedule = NoiseSchedule.cosine(steps)
    x0_cond = jax.random.uniform(jax.random.key(1), (3, 16, 16, 3), minval=-0.9, maxval=0.9)
    x0_uncond = jax.random.uniform(jax.random.key(2), (3, 16, 16, 3), minval=-0.9, maxval=0.9)
    return schedule, Oracle(schedule, x0_cond, x0_uncond, prediction), x0_cond, x0_uncond


def rectangles(n: int, seed: int = 0, size: int = 8):
    """``n`` RGB images of ``size`` x ``size`` pixels in [-1, 1]: one rectangle of a
    random colour each, on white (+1); a float32 array (n, size, size, 3)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = np.ones((n, size, size, 3), np.float32)
    for image in images:
        top, left = rng.integers(0, size // 2, size=2)
        height, width = rng.integers(2, size // 2 + 1, size=2)
        image[top : top + height, left : left + width] = rng.uniform(-1, 1, size=3)
    return images
