"""The stage runner: fingerprints, skip / resume / rerun, invalidation, and the run-directory lock.

A run directory holds the outputs of stages. Each stage declares
  * fields:  the config fields its output depends on (dotted paths; groups expand to their leaves),
  * needs:   the stages whose outputs it reads (their output ids enter its fingerprint),
  * uses:    stages it reads only when their output exists and is current (the report),
  * owns:    the paths it writes, relative to the run directory.
Its fingerprint hashes those field values and the ids of the outputs it reads; the marker
stages/<name>.json records the fingerprint, a fresh id per finished execution, the field values
and the stage's summary. On a run:
  * done and the fingerprint unchanged: skipped;
  * started under the same fingerprint but not finished (killed, preempted): resumed, its outputs
    kept (checkpoints carry the same fingerprint, see training.checkpoint);
  * otherwise, or with force: everything it owns is removed first, and so is everything owned by
    the stages that read it, directly or not (their markers too); then it runs.
Because a finished stage gets a new id, every stage that reads it has a new fingerprint and reruns
the same way. A stage whose inputs are missing or were made under another config is refused before
anything runs, naming the fields that changed.

The runner knows no stage: the CLI composes the list of Stage declarations and hands it over.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable, Sequence

from pca_jax import fs
from pca_jax.config import changed_fields, config_values, fingerprint


@dataclasses.dataclass(frozen=True)
class Stage:
  """A declaration: what a stage reads, writes and depends on, and the function that runs it."""
  name: str
  run: Callable[[Any, "StageRun"], dict]    # (context, StageRun) -> JSON-able summary
  fields: tuple[str, ...] = ()
  needs: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = ()
  uses: tuple[str, ...] = ()
  owns: tuple[str, ...] = ()
  derived: Callable[[Any], dict] | None = None   # values computed from the config that matter
  check: Callable[[Any], None] | None = None     # up-front validation, before any stage runs
  active: Callable[[Any], bool] | None = None    # False: this config does not use the stage
  # True: host-side work (no device collectives) that only the writer process runs; the others
  # wait at the barrier and take its summary from the marker.
  writer_only: bool = False

  def needed(self, config) -> tuple[str, ...]:
    return tuple(self.needs(config) if callable(self.needs) else self.needs)

  def is_active(self, config) -> bool:
    return self.active is None or bool(self.active(config))


@dataclasses.dataclass(frozen=True)
class StageRun:
  """What the runner hands a stage: its fingerprint, and the markers of the stages it reads."""
  name: str
  fingerprint: str
  upstream: dict[str, dict]
  resumed: bool = False


def _holder() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _in_use(path, holder: dict) -> ValueError:
  who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
         if holder else "another process")
  return ValueError(f"run directory {path.parent} is in use by {who}; wait for that run to finish "
                    "or choose another --workdir")


class RunLock:
  """One run at a time per run directory, held by process 0.

  Local disks: an exclusive flock on <workdir>/run.lock, whose content names the holder (pid,
  host, start time); the kernel drops it when the holder dies, so a dead holder's lock is taken
  over. Object stores have no locks: run.lock is a lease, the holder's JSON with a heartbeat
  refreshed every `heartbeat_s` by a thread; a lease is taken over once its heartbeat is older
  than `stale_s` (a killed run blocks the directory for at most that long). Two runs starting
  within the same second can both write the lease; each re-reads it after a pause and the one
  that does not find its own token leaves.
  """

  def __init__(self, workdir: fs.PathLike, log: Callable[[str], None] = print,
               heartbeat_s: float = 30.0, stale_s: float = 120.0):
    self.path = fs.join(workdir, "run.lock")
    self.log = log
    self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
    self._fd: int | None = None
    self._lease: dict | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def acquire(self) -> "RunLock":
    if fs.is_remote(self.path):
      return self._acquire_lease()
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = _read_fd(fd)
      os.close(fd)
      raise _in_use(self.path, holder) from None
    left = _read_fd(fd)
    if left:  # a holder that ended cleanly empties the file: this one died
      self.log(f"[run] took over the lock of pid {left.get('pid')} on {left.get('host')} "
               f"(started {left.get('started')}, no longer running)")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_holder()).encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def _read_lease(self) -> dict:
    try:
      return json.loads(self.path.read_text())
    except (OSError, ValueError):
      return {}

  def _acquire_lease(self) -> "RunLock":
    old = self._read_lease()
    if old and time.time() - float(old.get("heartbeat", 0)) < self.stale_s:
      raise _in_use(self.path, old)
    if old:
      self.log(f"[run] took over the lease of pid {old.get('pid')} on {old.get('host')} "
               f"(no heartbeat for {time.time() - float(old.get('heartbeat', 0)):.0f}s)")
    self._lease = {**_holder(), "token": uuid.uuid4().hex, "heartbeat": time.time()}
    self.path.write_text(json.dumps(self._lease))
    time.sleep(1.0)
    now = self._read_lease()
    if now.get("token") != self._lease["token"]:
      self._lease = None
      raise _in_use(self.path, now)
    self._thread = threading.Thread(target=self._beat, name="pca_jax-lease", daemon=True)
    self._thread.start()
    return self

  def _beat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      if self._read_lease().get("token") not in (None, self._lease["token"]):
        self.log(f"[run] the lease {self.path} was taken over by another run (no heartbeat for "
                 f"over {self.stale_s:.0f}s); this run no longer holds the directory")
        return
      self._lease["heartbeat"] = time.time()
      try:
        self.path.write_text(json.dumps(self._lease))
      except Exception as e:  # noqa: BLE001 - a missed heartbeat is retried, never fatal
        self.log(f"[run] could not refresh the lease {self.path}: {e}")

  def release(self) -> None:
    if self._lease is not None:
      self._stop.set()
      self._thread.join()
      if self._read_lease().get("token") == self._lease["token"]:
        fs.remove(self.path)
      self._lease = None
    if self._fd is not None:
      os.ftruncate(self._fd, 0)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "RunLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _read_fd(fd: int) -> dict:
  try:
    text = os.pread(fd, 4096, 0).decode()
    return json.loads(text) if text.strip() else {}
  except (OSError, ValueError):
    return {"pid": "?", "host": "?", "started": "?"}


class Runner:
  """Runs the scheduled stages of one run directory (see the module docstring)."""

  def __init__(self, stages: Sequence[Stage], config: Any, workdir: fs.PathLike, context: Any,
               log: Callable[[str], None] = print, is_writer: bool = True,
               barrier: Callable[[str], None] | None = None,
               on_writer: Callable[[Callable[[], Any], str], Any] | None = None):
    self.stages = {s.name: s for s in stages}
    self.order = [s.name for s in stages]
    self.config, self.workdir, self.context, self.log = config, fs.path(workdir), context, log
    self.is_writer = is_writer                # process 0 writes markers and removes outputs
    self.barrier = barrier or (lambda tag: None)
    # runs host-only work on the writer and tells every process whether it worked
    self.on_writer = on_writer or (lambda fn, what: fn() if is_writer else None)
    self._current: dict[str, dict | None] = {}
    self._field_values: dict[str, dict] = {}

  # ------------------------------------------------------------------------------ markers
  def marker_path(self, name: str) -> fs.Path:
    return self.workdir / "stages" / f"{name}.json"

  def marker(self, name: str) -> dict | None:
    try:
      return json.loads(self.marker_path(name).read_text())
    except (OSError, ValueError):
      return None

  def _write_marker(self, name: str, content: dict) -> None:
    if self.is_writer:
      fs.save_json(self.marker_path(name), content)

  # ------------------------------------------------------------------------- fingerprints
  def _fields(self, stage: Stage) -> dict:
    """The stage's field values (and derived values), computed once per runner: derived values
    can hash files (precomputed scores) or walk folders (external sets)."""
    if stage.name not in self._field_values:
      values = config_values(self.config, stage.fields)
      if stage.derived is not None:
        values.update({f"derived.{k}": v for k, v in stage.derived(self.config).items()})
      self._field_values[stage.name] = values
    return self._field_values[stage.name]

  def _upstream(self, stage: Stage) -> tuple[dict[str, dict], list[str]]:
    """(markers of the current outputs it reads, names of needed stages that are not current)."""
    found, missing = {}, []
    for u in stage.needed(self.config):
      m = self.current(u)
      if m is None:
        missing.append(u)
      else:
        found[u] = m
    for u in stage.uses:
      m = self.current(u)
      if m is not None:
        found[u] = m
    return found, missing

  def fingerprint(self, name: str) -> tuple[str, dict[str, dict], list[str]]:
    """(fingerprint, upstream markers, missing needs) of a stage under the current config."""
    stage = self.stages[name]
    upstream, missing = self._upstream(stage)
    fp = fingerprint(name, self._fields(stage), {u: m["id"] for u, m in sorted(upstream.items())})
    return fp, upstream, missing

  def current(self, name: str) -> dict | None:
    """The stage's marker if it finished under the fingerprint the current config gives it."""
    if name not in self._current:
      m = self.marker(name)
      ok = False
      if m is not None and m.get("status") == "done":
        fp, _, missing = self.fingerprint(name)
        ok = not missing and m.get("fingerprint") == fp
      self._current[name] = m if ok else None
    return self._current[name]

  def why_not_current(self, name: str) -> str:
    m = self.marker(name)
    if m is None:
      return "which this run directory does not have"
    if m.get("status") != "done":
      return "which did not finish"
    changed = changed_fields(m.get("fields", {}), self._fields(self.stages[name]))
    if changed:
      shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
      return f"which was made under another config (changed: {shown})"
    return "whose own inputs have changed since it was made"

  # -------------------------------------------------------------------------- invalidation
  def dependents(self, name: str) -> list[str]:
    """Every stage that reads `name`'s output, directly or through others, in pipeline order."""
    out: list[str] = []
    frontier = [name]
    while frontier:
      n = frontier.pop()
      for s in self.stages.values():
        if s.name not in out and (n in s.needed(self.config) or n in s.uses):
          out.append(s.name)
          frontier.append(s.name)
    return [s for s in self.order if s in out]

  def remove(self, name: str) -> None:
    """Deletes a stage's marker, then everything it owns."""
    if not self.is_writer:
      return
    fs.remove(self.marker_path(name))
    for rel in self.stages[name].owns:
      fs.remove(self.workdir / rel)

  # ---------------------------------------------------------------------------------- run
  def scheduled(self, names: Sequence[str]) -> list[str]:
    """The asked-for stages that this config uses, in pipeline order (others are left alone:
    e.g. the teacher while no method needs one keeps its model for later)."""
    out = []
    for name in self.order:
      if name in set(names):
        if self.stages[name].is_active(self.config):
          out.append(name)
        else:
          self.log(f"[{name}] not used by this config; skipped, its outputs kept")
    return out

  def plan(self, names: Sequence[str]) -> None:
    """Refuses (ValueError) a schedule whose stages need outputs that are missing or stale, then
    runs every scheduled stage's up-front check; nothing is written."""
    names = [n for n in names if self.stages[n].is_active(self.config)]
    scheduled = set(names)
    for name in names:
      for u in self.stages[name].needed(self.config):
        if u not in scheduled and self.current(u) is None:
          raise ValueError(f"stage {name} needs the output of stage {u}, "
                           f"{self.why_not_current(u)}; add {u} to --config.stages")
    for name in names:
      if self.stages[name].check is not None:
        self.stages[name].check(self.context)

  def run(self, names: Sequence[str], force: bool = False) -> dict[str, dict]:
    """Runs the scheduled stages in pipeline order; returns {stage: summary}."""
    names = self.scheduled(names)
    self.plan(names)
    self.barrier("pca_jax_planned")  # nobody removes an output another process is still judging
    summaries = {}
    for name in names:
      self._current.clear()
      fp, upstream, missing = self.fingerprint(name)
      if missing:  # plan() guarantees the needs; this is a bug guard
        raise RuntimeError(f"stage {name}: upstream {missing} not available")
      old = self.marker(name) or {}
      if not force and old.get("status") == "done" and old.get("fingerprint") == fp:
        self.log(f"[{name}] already done ({old.get('wall_s', 0):.1f}s); skipped "
                 "(--config.force=True reruns)")
        summaries[name] = old.get("summary", {})
        continue
      resumed = not force and old.get("status") == "running" and old.get("fingerprint") == fp
      if resumed:
        self.log(f"[{name}] resuming an unfinished run with the same config")
      else:
        if old.get("status") == "done":
          changed = changed_fields(old.get("fields", {}), self._fields(self.stages[name]))
          why = ("--config.force=True" if force else
                 f"config changed ({', '.join(changed[:6])})" if changed else "its inputs were remade")
          self.log(f"[{name}] rerunning: {why}; its old outputs are removed")
        for stale in [name, *self.dependents(name)]:
          self.remove(stale)
        self.barrier(f"pca_jax_remove_{name}")
        self._write_marker(name, {"stage": name, "status": "running", "fingerprint": fp,
                                  "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self.log(f"[{name}] running")
      t0 = time.time()
      stage_run = StageRun(name, fp, upstream, resumed)
      if self.stages[name].writer_only:
        summary = self.on_writer(lambda: self.stages[name].run(self.context, stage_run),
                                 f"stage {name}")
      else:
        summary = self.stages[name].run(self.context, stage_run)
      wall = time.time() - t0
      self.barrier(f"pca_jax_{name}")  # every process finished the stage's work
      self._write_marker(name, {
          "stage": name, "status": "done", "fingerprint": fp,
          "id": fingerprint(fp, uuid.uuid4().hex), "fields": self._fields(self.stages[name]),
          "upstream": {u: m["id"] for u, m in upstream.items()}, "wall_s": wall,
          "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "summary": summary})
      self.barrier(f"pca_jax_{name}_marker")  # every process sees the new output id
      if summary is None:
        summary = (self.marker(name) or {}).get("summary", {})
      self.log(f"[{name}] done in {wall:.1f}s")
      summaries[name] = summary
    return summaries
