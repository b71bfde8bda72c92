"""Orbax checkpoints that carry the fingerprint of the run that wrote them.

<workdir>/checkpoints/ holds the Orbax steps (params, batch stats, optimizer state, step) and
<workdir>/fingerprint.json the fingerprint they were written under. A checkpoint is resumed only
when that fingerprint equals the caller's; otherwise the old steps are deleted and training starts
at step 0, so a changed config can never continue (or report) another config's model.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from pca_jax import fs, parallel

FINGERPRINT_FILE = "fingerprint.json"


class Checkpointer:
  """Save / restore of a TrainState under <workdir>/checkpoints, guarded by a fingerprint."""

  def __init__(self, workdir: fs.PathLike, fingerprint: str, keep: int,
               log: Callable[[str], None] = print, desc: str = "train"):
    self.workdir = fs.path(workdir)
    self.dir = fs.absolute(self.workdir / "checkpoints")
    self.fingerprint, self.keep, self.log, self.desc = fingerprint, keep, log, desc
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(self.dir, options=ocp.CheckpointManagerOptions(
        max_to_keep=self.keep, enable_async_checkpointing=False))

  def stored_fingerprint(self) -> str | None:
    path = self.workdir / FINGERPRINT_FILE
    try:
      return json.loads(path.read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
      return None

  def restore(self, state: Any, mesh) -> tuple[Any, int]:
    """(state, start step): the latest checkpoint if it was written under this fingerprint,
    else the given fresh state at step 0 (stale checkpoints are deleted first). Every process
    reads what is there before the writer changes anything, so all take the same branch."""
    latest = self._manager.latest_step()
    stored = self.stored_fingerprint()
    parallel.barrier("pca_jax_checkpoint_inspected")
    if latest is not None and stored == self.fingerprint:
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
      restored = self._manager.restore(latest, args=ocp.args.StandardRestore(abstract))
      # models trained together have one step counter each, all equal
      step = int(np.asarray(jax.device_get(restored.step)).reshape(-1)[0])
      return parallel.replicate(restored, mesh), step
    if latest is not None:
      self.log(f"[{self.desc}] the checkpoints in {self.dir} were written under another config "
               f"(fingerprint {stored or 'unknown'}, now {self.fingerprint}): not resumed, "
               "training from step 0")
      self._manager.close()
      fs.remove(self.dir)  # process 0 only (fs)
      parallel.barrier("pca_jax_stale_checkpoints_removed")  # nobody reopens while process 0 empties it
      self._manager = self._open()
    fs.save_json(self.workdir / FINGERPRINT_FILE, {"fingerprint": self.fingerprint})
    return state, 0

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    if self._manager.latest_step() == step:  # already saved (SIGTERM right after a periodic save)
      return
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def load_variables(workdir: fs.PathLike, step: int | None = None) -> dict:
  """{"params", "batch_stats"} (numpy) of a checkpoint in <workdir>/checkpoints (default: the
  latest), whatever the device topology that saved it."""
  ckpt = fs.absolute(fs.join(workdir, "checkpoints"))
  if not ckpt.is_dir():
    raise ValueError(f"no checkpoints in {workdir}; train the model first or fix the path")
  manager = ocp.CheckpointManager(ckpt, item_handlers=ocp.StandardCheckpointHandler())
  try:
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
      raise ValueError(f"no finished checkpoint{'' if step is None else f' at step {step}'} in "
                       f"{ckpt}; train the model first")
    # onto this process's first device, whatever the topology that saved it (a pod, 2 processes)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            manager.item_metadata(step))
    tree = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  finally:
    manager.close()
  # host arrays: the caller places them on its own mesh (no device-to-device copy across hosts)
  # a model without BatchNorm (ViT) saved an empty batch_stats, which the restore may leave out
  return jax.device_get({"params": tree["params"], "batch_stats": tree.get("batch_stats", {})})
