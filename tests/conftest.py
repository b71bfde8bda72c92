"""Test setup: 8 fake CPU devices (sharding tests) and a small persistent compile cache."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tempfile  # noqa: E402

import pca_jax  # noqa: E402,F401  (sets its XLA:CPU flags before any JAX backend starts)

import jax  # noqa: E402

# Identical programs (same model, shapes, shardings) compile once per test session, in this
# process and in the CLI processes the tests start (tests.helpers.cache_arg passes the same
# directory to them as --config.jax_cache_dir).
os.environ.setdefault("PCA_JAX_TEST_CACHE", tempfile.mkdtemp(prefix="pca_jax_jit_"))
jax.config.update("jax_compilation_cache_dir", os.environ["PCA_JAX_TEST_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
