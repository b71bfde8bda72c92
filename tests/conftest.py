"""Test setup: 8 fake CPU devices (sharding tests) and a small persistent compile cache."""

import os
import sys

# 8 fake CPU devices (sharding tests); XLA:CPU's backend (LLVM) optimisation off: the tests' tiny
# models spend their time compiling, not running (test_bf16_compute_keeps_float32_params alone:
# 27 s -> 7 s); the CLI processes the tests start inherit both.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

import pca_jax  # noqa: E402,F401  (sets its XLA:CPU flags before any JAX backend starts)

import jax  # noqa: E402

# Identical programs (same model, shapes, shardings) compile once per test session, in this
# process and in the CLI processes the tests start (tests.helpers.cache_arg passes the same
# directory to them as --config.jax_cache_dir). The process that made the directory removes it
# when the session ends. Each pytest-xdist worker (-n) has a folder of its own in it: JAX writes
# a cache entry in place, so a worker could read an entry the other is still writing (a warning
# on the stderr of a CLI process whose one-line error a test checks).
_OWN_CACHE = "PCA_JAX_TEST_CACHE" not in os.environ
if _OWN_CACHE:
  os.environ["PCA_JAX_TEST_CACHE"] = tempfile.mkdtemp(prefix="pca_jax_jit_")
if os.environ.get("PYTEST_XDIST_WORKER"):
  os.environ["PCA_JAX_TEST_CACHE"] = os.path.join(os.environ["PCA_JAX_TEST_CACHE"],
                                                  os.environ["PYTEST_XDIST_WORKER"])
  os.makedirs(os.environ["PCA_JAX_TEST_CACHE"], exist_ok=True)
jax.config.update("jax_compilation_cache_dir", os.environ["PCA_JAX_TEST_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_sessionfinish(session, exitstatus):
  if _OWN_CACHE:
    shutil.rmtree(os.environ["PCA_JAX_TEST_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
  """One tiny demo pipeline run (tests.test_main.tiny_config), finished. Tests that only read its
  outputs share it; tests that change it copy it first (shutil.copytree)."""
  from pca_jax import main as pca_main
  from tests.test_main import tiny_config
  wd = tmp_path_factory.mktemp("finished") / "run"
  pca_main.run_pipeline(tiny_config(), wd)
  return wd


@pytest.fixture(autouse=True)
def one_torch_thread():
  """PyTorch's reference models (torchvision parity tests) on one thread: with its default two
  OpenMP threads on this 2-core host, next to JAX's own, a small conv took ~30 ms instead of ~1
  (an EfficientNet-B0 forward 2.7 s instead of 0.03 s). Only where a test module imported torch."""
  torch = sys.modules.get("torch")
  if torch is None:
    yield
    return
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)
