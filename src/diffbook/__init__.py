"""diffbook: the small library behind the diffusion and flow-matching book."""

__version__ = "0.1.0"
