"""diffbook: the small library behind the diffusion and flow-matching book."""

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "0.1.0"
