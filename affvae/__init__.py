"""affvae: affinity-VAE for 2D images and 3D volumes, fast and distributed.

A beta-VAE whose latent space is shaped by a class-affinity matrix, with a pose
head that absorbs orientation.  See README.md for the commands and the formats.
"""

__version__ = "0.1.0"

from affvae.errors import AffinityError, AffvaeError, ConfigError, DataError  # noqa: E402

__all__ = ["__version__", "AffvaeError", "DataError", "AffinityError", "ConfigError"]
