"""Progress lines, compile-free throughput and the metrics.jsonl of a training run."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import Iterator

import jax

from pca_jax import fs


class Progress:
  """tqdm bar on a terminal; plain one-line messages (every log interval) otherwise."""

  def __init__(self, total: int, initial: int, desc: str):
    from pca_jax.parallel import should_log
    self.quiet = not should_log()
    self.tty = sys.stderr.isatty() and not self.quiet
    self.total, self.desc, self.t0, self.start = total, desc, time.time(), initial
    self.bar = None
    if self.tty:
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

  def update(self, step: int, n: int, info: dict, log: bool):
    if self.bar is not None:
      self.bar.update(n)
      if log:
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in info.items()}, refresh=False)
    elif log and not self.quiet:
      done = step - self.start
      rate = done / max(time.time() - self.t0, 1e-9)
      eta = (self.total - step) / rate if rate > 0 else float("nan")
      vals = " ".join(f"{k}={v:.4g}" for k, v in info.items())
      print(f"[{self.desc}] step {step}/{self.total} {vals} eta {eta:.0f}s", flush=True)

  def close(self):
    if self.bar is not None:
      self.bar.close()


class Throughput:
  """Images per second of the train step alone.

  `add(n)` after each step, `lap()` at each log point (where the metrics were fetched, so the device
  has caught up): the rate of that interval. The first interval of a call holds the compilation and
  is left out of `rate`; time inside `paused()` (evaluation, checkpoints) is left out of all.
  """

  def __init__(self):
    self._t = time.perf_counter()
    self._images = 0
    self._paused = 0.0
    self._laps = 0
    self.images = 0
    self.seconds = 0.0

  def add(self, n: int) -> None:
    self._images += n

  @contextlib.contextmanager
  def paused(self, block_on=None) -> Iterator[None]:
    if block_on is not None:
      jax.block_until_ready(block_on)  # the steps already queued belong to the interval
    t = time.perf_counter()
    try:
      yield
    finally:
      self._paused += time.perf_counter() - t

  def lap(self) -> float:
    now = time.perf_counter()
    seconds = max(now - self._t - self._paused, 1e-9)
    rate = self._images / seconds
    if self._laps > 0:
      self.images += self._images
      self.seconds += seconds
    self._laps += 1
    self._t, self._images, self._paused = now, 0, 0.0
    return rate

  @property
  def rate(self) -> float | None:
    """Compile-free img/s over the laps after the first; None when there was only one."""
    return self.images / self.seconds if self.seconds > 0 else None


class MetricsLog:
  """metrics.jsonl: one JSON row per log interval or evaluation, written by process 0.

  A fresh run starts it empty; a resumed run drops the rows after the step it resumes from (they
  are redone), so the file always describes exactly one run. Object stores cannot append: there
  the whole (small) file is rewritten at each row.
  """

  def __init__(self, path: fs.PathLike, resume_step: int):
    self.path = fs.path(path)
    self._rows: list[str] = []
    if not fs.is_writer():
      return
    if resume_step and self.path.exists():
      rows = [line for line in self.path.read_text().splitlines() if line.strip()]
      self._rows = [line for line in rows if json.loads(line).get("step", 0) <= resume_step]
    if self._rows:
      fs.save_text(self.path, "".join(line + "\n" for line in self._rows))
    else:
      fs.remove(self.path)

  def last_train_row(self) -> dict:
    """The last logged {"loss", "acc", "lr", "img_per_s"} and, for models trained together,
    {"loss_per_model", "acc_per_model"} (after a resume: from the rows kept;
    {} on processes other than 0, which neither write nor read the file)."""
    for line in reversed(self._rows):
      row = json.loads(line) if line.strip() else {}
      if "loss" in row:
        return {k: row[k] for k in ("loss", "acc", "lr", "img_per_s", "loss_per_model",
                                    "acc_per_model") if k in row}
    return {}

  def append(self, row: dict) -> None:
    if not fs.is_writer():
      return
    line = json.dumps(row)
    self._rows.append(line)
    fs.audit(self.path)
    if fs.is_remote(self.path):
      fs.save_text(self.path, "".join(r + "\n" for r in self._rows))
    else:
      with open(self.path, "a") as f:
        f.write(line + "\n")
