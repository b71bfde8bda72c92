"""Atomic file and directory writes: write to a temporary path in the same folder, then rename.

An exception or a kill in the middle never leaves a half-written output under the final name, and
the previous good output stays in place until the new one is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np


def _tmp_name(path: Path) -> Path:
  return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def check_writable(directory: str | os.PathLike) -> Path:
  """Creates `directory` if needed and checks that files can be written there (clear error if not)."""
  d = Path(directory)
  try:
    d.mkdir(parents=True, exist_ok=True)
    probe = d / f".write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise ValueError(f"cannot write to {d} ({e.strerror or e}); choose a writable --workdir") from None
  return d


def write_file(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
  """Calls writer(tmp_path), then renames tmp_path to path (atomic on POSIX)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = _tmp_name(path)
  try:
    writer(tmp)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
  return path


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
  def w(tmp):
    with open(tmp, "wb") as f:
      np.save(f, np.asarray(array))
  return write_file(path, w)


def save_json(path: str | os.PathLike, obj: Any) -> Path:
  return write_file(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True,
                                                                default=_json_default) + "\n"))


def save_text(path: str | os.PathLike, text: str) -> Path:
  return write_file(path, lambda tmp: tmp.write_text(text))


def _json_default(o):
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  if isinstance(o, Path):
    return str(o)
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
  """Yields a temporary directory; on success it replaces `path`, on error it is deleted."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = _tmp_name(path)
  tmp.mkdir()
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  old = None
  if path.exists():
    old = _tmp_name(path)
    os.replace(path, old)
  os.replace(tmp, path)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)
