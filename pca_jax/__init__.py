"""pca_jax: Prune, Combine, Augment dataset compression and the DC benchmark in JAX/Flax."""

__version__ = "0.1.0"
