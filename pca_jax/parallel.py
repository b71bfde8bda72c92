"""Data-parallel sharding helpers: one ("data",) mesh over all devices of all processes.

Params are replicated, batches are split on the leading axis. Each process passes only its local
slice of the batch; `shard_batch` assembles the global array with
`jax.make_array_from_process_local_data`, which works unchanged on 1 CPU, 8 fake CPU devices, a
multi-GPU host and a multi-host TPU slice.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXES = ("vmap", "loop")   # how models trained together share a step (map_models)


def maybe_initialize_distributed() -> None:
  """Calls jax.distributed.initialize() when a multi-process launch is detected.

  Detected from the usual variables: JAX_COORDINATOR_ADDRESS (explicit GPU clusters, with
  JAX_NUM_PROCESSES / JAX_PROCESS_ID), or TPU pod metadata (TPU_WORKER_HOSTNAMES with >1 host).
  Single-process runs are left alone.
  """
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    jax.distributed.initialize()


def barrier(tag: str) -> None:
  """Every process waits here until all arrive (a no-op in a single-process run)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(tag)


def check_shared_directory(workdir: Any) -> None:
  """Multi-process runs: every process must see the files process 0 writes in the run directory
  (an object store or a shared filesystem). Process 0 writes a token named by a nonce it
  broadcasts; every process looks for it; all raise the same ValueError if any cannot see it."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  from pca_jax import fs
  nonce = int(multihost_utils.broadcast_one_to_all(
      np.asarray(np.random.default_rng().integers(1 << 30), np.int32)))
  token = fs.join(workdir, f".shared-check-{nonce}")
  if jax.process_index() == 0:
    token.write_text("ok")
  barrier("pca_jax_shared_check_written")
  seen = np.asarray(multihost_utils.process_allgather(np.asarray(token.exists(), np.int32)))
  barrier("pca_jax_shared_check_read")
  if jax.process_index() == 0:
    fs.remove(token)
  if not seen.all():
    blind = [int(i) for i in np.flatnonzero(seen == 0)]
    raise ValueError(f"processes {blind} cannot see {workdir}, which process 0 writes; use a "
                     "directory all processes share (gs://bucket/path or a shared filesystem)")


def on_writer(fn: Callable[[], Any], what: str) -> Any:
  """fn() on process 0 only; every process then learns whether it succeeded, so a failure there
  ends all processes with an error instead of leaving the others at the next collective. Returns
  fn()'s result on process 0 and None elsewhere; process 0 re-raises its own exception, the others
  raise ValueError naming `what`."""
  result, error = None, None
  if jax.process_index() == 0:
    try:
      result = fn()
    except Exception as e:  # noqa: BLE001 - re-raised below, after the others are told
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    ok = np.asarray(multihost_utils.process_allgather(np.asarray(error is None, np.int32)))
    if error is None and not ok.all():
      raise ValueError(f"{what} failed on process 0; its log has the reason")
  if error is not None:
    raise error
  return result


def should_log() -> bool:
  """Process 0 prints progress and messages; the others stay quiet unless
  PCA_JAX_LOG_ALL_PROCESSES=1 (the CLI's --log_all_processes)."""
  return jax.process_index() == 0 or os.environ.get("PCA_JAX_LOG_ALL_PROCESSES") == "1"


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every process, axis name "data"."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh, what: str = "batch_size") -> int:
  """Returns the per-process batch size; raises if the global batch does not split evenly."""
  n_dev, n_proc = mesh.devices.size, jax.process_count()
  if global_batch % n_dev:
    raise ValueError(f"{what}={global_batch} is not divisible by the {n_dev} devices; "
                     f"use a multiple of {n_dev}")
  return global_batch // n_proc


def forward_batch_size(global_batch: int, mesh: Mesh) -> int:
  """The per-process batch of a forward pass over a whole split (evaluation, scoring): the global
  batch rounded up to a multiple of the device count. Its batches are padded and masked, so the
  rounding changes no result (eval batch 500, ImageNet's 100 batches of 50,000, runs on 8 GPUs
  as 504); a training batch, whose size is part of the recipe, is checked instead
  (check_batch_size)."""
  n_dev = mesh.devices.size
  return -(-int(global_batch) // n_dev) * n_dev // jax.process_count()


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Host-local numpy batch (pytree, leading axis = local batch) -> global sharded jax arrays."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree of arrays replicated on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def replicate_key(key: jax.Array, mesh: Mesh) -> jax.Array:
  """A PRNG key array (typed) replicated on every device of the mesh, e.g. to pass a seed's key
  into a jitted step as an argument. Goes through the key's raw uint32 data, which device_put
  places on a multi-process mesh (a typed key committed to a local device it does not)."""
  data = replicate(np.asarray(jax.random.key_data(key)), mesh)
  return jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))


def stack_trees(trees: Sequence[Any]) -> Any:
  """K pytrees of one structure -> one pytree whose leaves have a leading model axis of size K."""
  return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *trees)


def unstack_tree(tree: Any, k: int) -> Any:
  """Model k of a pytree stacked by stack_trees (or returned by a map_models function)."""
  return jax.tree.map(lambda x: x[k], tree)


def map_models(fn: Callable, how: str, in_axes: Sequence[int | None]) -> Callable:
  """fn(*args) for K models at once, inside one jitted call: the arguments whose in_axes entry is 0
  are pytrees stacked over a leading model axis (stack_trees), the others (None) are shared, e.g.
  one decoded batch; every output gets the model axis first.

  how="vmap": jax.vmap, one batched program (convolutions with K kernels become grouped ones);
  how="loop": K copies of fn in the same program, model k reading slice k. Same values either way
  (to float rounding); which is faster depends on the device and the layer sizes (docs/speed.md).
  """
  if how not in MODEL_AXES:
    raise ValueError(f"unknown model axis {how!r}; choose one of {MODEL_AXES}")
  in_axes = tuple(in_axes)
  if how == "vmap":
    return jax.vmap(fn, in_axes=in_axes)

  def looped(*args):
    mapped = [a for a, axis in zip(args, in_axes) if axis == 0]
    count = jax.tree.leaves(mapped[0])[0].shape[0]
    outs = [fn(*(unstack_tree(a, k) if axis == 0 else a for a, axis in zip(args, in_axes)))
            for k in range(count)]
    return jax.tree.map(lambda *leaves: jax.numpy.stack(leaves), *outs)
  return looped


def to_host(x: jax.Array) -> np.ndarray:
  """A (possibly multi-process sharded) global array -> full numpy array on every host."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def gather_host_local(x: np.ndarray) -> np.ndarray:
  """Concatenates a host-local numpy array across processes in process order (identity for one)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))


class _Raised:
  def __init__(self, exc: BaseException):
    self.exc = exc


_END = object()


def prefetch_to_device(batches: Iterable[dict], mesh: Mesh, keys: Sequence[str],
                       size: int = 2) -> Iterator[tuple[dict, tuple]]:
  """Yields (host batch, shard_batch(batch[k] for k in keys)) while a background thread reads
  and transfers the next `size` batches, so host-side decoding, resizing and the host-to-device
  copy overlap the running step. Errors in the reader surface here, at the batch they hit;
  leaving the loop early (break, exception) stops the thread."""
  if size < 1:
    raise ValueError(f"prefetch size must be >= 1, got {size}")
  buffer: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        buffer.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def reader():
    try:
      for batch in batches:
        if not put((batch, shard_batch(tuple(batch[k] for k in keys), mesh))):
          return
      put(_END)
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
      put(_Raised(exc))

  thread = threading.Thread(target=reader, name="pca_jax-prefetch", daemon=True)
  thread.start()
  try:
    while True:
      item = buffer.get()
      if item is _END:
        return
      if isinstance(item, _Raised):
        raise item.exc
      yield item
  finally:
    stop.set()
