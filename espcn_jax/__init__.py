"""espcn_jax: exact sub-pixel operators and compute-matched super-resolution studies in JAX."""

__version__ = "0.1.0"
