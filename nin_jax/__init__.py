"""nin-jax: Network In Network (Lin, Chen & Yan, ICLR 2014) in JAX/Flax."""
