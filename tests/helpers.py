"""Tiny configs and datasets shared by the tests, and the local GCS emulator."""

import contextlib
import os
import socket
import subprocess
import sys
import time

import ml_collections
import numpy as np

from pca_jax.config import default_train_config
from pca_jax.data.sources import ArraySource


def cache_arg() -> str:
  """--config.jax_cache_dir for a CLI process a test starts: the session's persistent compile
  cache (tests/conftest.py), shared by every process of the test session."""
  return f"--config.jax_cache_dir={os.environ['PCA_JAX_TEST_CACHE']}"


def get_field(config: ml_collections.ConfigDict, key: str):
  """The value of a dotted config field, e.g. "score.train.epochs"."""
  for part in key.split("."):
    config = config[part]
  return config


def set_fields(config: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
  """Sets dotted config fields in place, {"train.lr": 0.1, ...}; returns the config."""
  for key, value in values.items():
    parent, _, last = key.rpartition(".")
    (get_field(config, parent) if parent else config)[last] = value
  return config


def tiny_config(**train_overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(name="resnet10", width=4, stem="small", dtype="float32"))
  c.data = ml_collections.ConfigDict(dict(eval_crop_fraction=1.0))
  c.train = default_train_config()
  c.train.update(dict(epochs=4, batch_size=16, image_size=8, crop="none", flip=False,
                      eval_batch_size=16, log_every_steps=1, num_threads=1, lr=1e-2,
                      checkpoint_every_steps=1000, eval_every_epochs=0))
  c.train.update(train_overrides)
  return c


def colour_dataset(n=64, num_classes=4, size=8, seed=0, noise=20):
  """Class k = mostly colour channel pattern k: linearly separable, learnable in a few steps."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % num_classes
  palette = rng.integers(0, 256, (num_classes, 3))
  images = palette[labels][:, None, None, :] + rng.normal(0, noise, (n, size, size, 3))
  images = np.clip(images, 0, 255).astype(np.uint8)
  return images, labels


def colour_source(n=64, num_classes=4, size=8, seed=0):
  images, labels = colour_dataset(n, num_classes, size, seed)
  return ArraySource(images, labels, [f"c{i}" for i in range(num_classes)], name="colours")


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on (for servers the tests start)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def gcs_emulator(bucket: str):
  """Starts tests/gcs_emulator.py (a real GCS JSON API server on 127.0.0.1) with `bucket`, points
  this process's clients at it (their standard environment variables; child processes inherit
  them), and yields those variables; restores the environment and stops the server on exit."""
  port = free_port()
  server = subprocess.Popen(
      [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gcs_emulator.py"),
       str(port), bucket], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 30
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      if time.time() > deadline or server.poll() is not None:
        server.kill()
        raise RuntimeError("the GCS emulator did not start")
      time.sleep(0.2)
  url = f"http://127.0.0.1:{port}"
  env = {
      "STORAGE_EMULATOR_HOST": url,          # gcsfs / google-cloud-storage
      "FSSPEC_GCS_TOKEN": "anon",            # no credential lookup (no metadata server here)
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no bucket-type RPCs the emulator lacks
      "TENSORSTORE_GCS_HTTP_URL": url,       # Orbax's tensorstore
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
  }
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  import fsspec.config  # read its environment at import: read it again
  fsspec.config.set_conf_env(fsspec.config.conf)
  try:
    yield env
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    server.terminate()
    server.wait(timeout=10)


def import_torchvision():
  """torchvision, imported next to the CPU torch wheel.

  PyPI's torchvision 0.28 is linked against CUDA torch: its `_C.so` (detection operators) does not
  load, and its import then fails registering fake kernels for `torchvision::nms` / `qnms`, whose
  schemas only `_C.so` defines. Defining the two schemas first lets the import finish; the models
  (all the tests need) do not use those operators."""
  import torch
  try:
    import torchvision
    return torchvision
  except RuntimeError as e:
    if "torchvision::nms" not in str(e):
      raise
  import sys
  for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
    del sys.modules[name]
  lib = torch.library.Library("torchvision", "FRAGMENT")
  lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
  lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
  import_torchvision.lib = lib  # keep the definitions alive
  import torchvision
  return torchvision
