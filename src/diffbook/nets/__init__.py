"""Networks shared by the chapters, in Flax NNX, one architecture per module.

* :mod:`diffbook.nets.layers`: what the networks share -- the sinusoidal time
  embedding, class-label embeddings, residual blocks modulated by the time (FiLM),
  self- and cross-attention, cutting images into patches, and
  :func:`~diffbook.nets.layers.count_params`.
* :mod:`diffbook.nets.unet`: the U-Net of every pixel-space chapter, conditioned on a
  class label or on text tokens when asked.
* :mod:`diffbook.nets.text_encoder`: a small transformer text encoder and
  ``TextToImage``, which joins it to a cross-attending U-Net (chapters 5 and 7).
* :mod:`diffbook.nets.dit`: a Diffusion Transformer (chapter 6).
* :mod:`diffbook.nets.flow_map`: a U-Net of two times for flow maps (chapter 8).
* :mod:`diffbook.nets.classifier`: the noise-aware classifier of classifier guidance
  (chapter 6).

Every public name is also a name of this package (``nets.UNet``, ``nets.count_params``),
which is how the chapters use them. A new architecture is a new module here, and one
more import line below.
"""

from .classifier import NoisyClassifier
from .dit import DiT, DiTBlock
from .flow_map import FlowMapUNet
from .layers import (
    CrossAttention,
    LabelConditioned,
    LabelEmbedding,
    ResBlock,
    SelfAttention,
    TimeEmbedding,
    count_params,
    num_groups,
    patchify,
    sinusoidal_embedding,
    unpatchify,
)
from .text_encoder import TextEncoder, TextToImage
from .unet import UNet, unet_from_recipe

__all__ = [
    "CrossAttention",
    "DiT",
    "DiTBlock",
    "FlowMapUNet",
    "LabelConditioned",
    "LabelEmbedding",
    "NoisyClassifier",
    "ResBlock",
    "SelfAttention",
    "TextEncoder",
    "TextToImage",
    "TimeEmbedding",
    "UNet",
    "count_params",
    "num_groups",
    "patchify",
    "sinusoidal_embedding",
    "unet_from_recipe",
    "unpatchify",
]
