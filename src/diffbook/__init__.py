"""diffbook: the small library behind the diffusion and flow-matching book.

The entry points a reader needs to train and sample a model on their own data are
importable from the package itself (``from diffbook import NoiseSchedule, sample``);
everything else lives in the modules named by concept (``diffbook.samplers``,
``diffbook.guidance``, ...), documented on the book's API page.  The names are
loaded on first use, so ``import diffbook`` does not import JAX.
"""

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "0.1.0"

#: Entry point -> the module that defines it.
_EXPORTS = {
    "pick": "config",
    "load_digits": "data",
    "NoiseSchedule": "schedules",
    "diffusion_loss": "ddpm",
    "SAMPLERS": "samplers",
    "sample": "samplers",
    "cfg_loss": "guidance",
    "guided_sample": "guidance",
    "GuidedSampler": "guidance",
    "UNet": "nets",
    "TextToImage": "nets",
    "fit": "train",
    "adamw_with_ema": "train",
    "digit_quality": "metrics",
    "prompt_fidelity": "metrics",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'diffbook' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
