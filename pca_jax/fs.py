"""One path layer for local disks and object stores (gs://, s3://, ... through etils.epath).

Every path pca_jax reads or writes (run directory, data_dir, score files, teacher workdir,
external sets) goes through `path()`, which returns an `epath.Path`: a pathlib-like object that
is a plain local path for local names and an fsspec object (gcsfs for gs://) for URLs; where
TensorFlow is installed, etils serves gs:// through tf.io.gfile instead (same semantics here).
Orbax and the JAX compilation cache take the same objects.

Atomic writes, and what they mean on each kind of store:
  * single files (`write_file`, `save_npy`, `save_json`, `save_text`): locally a temporary file in
    the same folder renamed over the target (POSIX rename); on object stores the content is
    written to a local temporary file and uploaded as one object, which the store makes visible
    only once complete (a reader sees the old object or the new one, never half of one);
  * directories (`atomic_dir`): locally a temporary directory renamed over the target; object
    stores have no directory rename, so the tree is built on local disk, the old prefix deleted and
    the files uploaded with manifest.json last. A reader can see a partial directory while it is
    copied, so directories on object stores are trusted only through what is written after them:
    the stage marker (stages/<name>.json), or a manifest.json whose fingerprint matches.

Multi-process runs: exactly one process writes each file. The writers here (and `remove`) do
nothing on processes other than process 0 (`is_writer()`); `atomic_dir` hands those a scratch directory that
is discarded. A process that reads what another wrote waits at a barrier first (the stage runner
has one after every stage).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from typing import Any, Callable, Iterator

import numpy as np
from etils import epath

Path = epath.Path
PathLike = str | os.PathLike


def _fresh_listings() -> None:
  """Object stores: list directories anew every time. fsspec caches listings per process by
  default, and pca_jax's processes read what another process (or run) has just written."""
  import fsspec.config
  for protocol in ("gs", "gcs", "s3"):
    fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)


_fresh_listings()


def is_remote(p: PathLike) -> bool:
  """True for URLs (gs://bucket/x, s3://...), False for local paths."""
  return "://" in os.fspath(p)


def path(p: PathLike) -> epath.Path:
  """An epath.Path for a local path (~ expanded) or an object-store URL."""
  s = os.fspath(p)
  return epath.Path(s if is_remote(s) else os.path.expanduser(s))


def join(p: PathLike, *parts: str) -> epath.Path:
  return path(p).joinpath(*parts)


def absolute(p: PathLike) -> epath.Path:
  """`path(p)`, made absolute when local (URLs already are)."""
  q = path(p)
  return q if is_remote(q) else epath.Path(os.path.abspath(os.fspath(q)))


def is_writer() -> bool:
  """True on the one process that writes shared files (process 0; always True without JAX
  distributed)."""
  import jax
  return jax.process_index() == 0


def audit(target: PathLike) -> None:
  """Appends "<process index>\t<path>" to the file named by PCA_JAX_WRITE_AUDIT, if set: a record
  of which process wrote what (the multi-process tests check that each file has one writer)."""
  log = os.environ.get("PCA_JAX_WRITE_AUDIT")
  if log:
    import jax
    with open(log, "a") as f:
      f.write(f"{jax.process_index()}\t{os.fspath(target)}\n")


def _tmp_name(p: epath.Path) -> epath.Path:
  return p.with_name(f".{p.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


# What a local GCS emulator (STORAGE_EMULATOR_HOST) needs besides its address, per client.
EMULATOR_VARIABLES = {
    "FSSPEC_GCS_TOKEN": "anon (gcsfs: no credential lookup, there is no metadata server)",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false (gcsfs: no bucket-type requests the emulator "
                                         "does not answer)",
    "TENSORSTORE_GCS_HTTP_URL": "the emulator's URL (Orbax's tensorstore writes checkpoints "
                                "there, else to storage.googleapis.com)",
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "any value (tensorstore: no credential lookup)",
}
STORE_TIMEOUT_S = float(os.environ.get("PCA_JAX_STORE_TIMEOUT_S", "60"))


def check_store_settings(p: PathLike) -> None:
  """For a gs:// path with STORAGE_EMULATOR_HOST set: every variable the clients need to talk to
  the emulator is set, else one ValueError naming the missing ones (without them a client looks
  for credentials or for the real service and waits, silently, for minutes)."""
  if not os.fspath(p).startswith(("gs://", "gcs://")) or not os.environ.get("STORAGE_EMULATOR_HOST"):
    return
  missing = [k for k in EMULATOR_VARIABLES if not os.environ.get(k)]
  if os.environ.get("FSSPEC_GCS_TOKEN", "anon") != "anon":
    missing.insert(0, "FSSPEC_GCS_TOKEN")
  if missing:
    need = "; ".join(f"{k}={EMULATOR_VARIABLES[k]}" for k in missing)
    raise ValueError(f"{p}: STORAGE_EMULATOR_HOST={os.environ['STORAGE_EMULATOR_HOST']} points at "
                     f"a local GCS emulator, but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                     f"not set as it needs: {need} (docs/scale.md, object stores)")


def within(timeout_s: float, fn: Callable[[], Any], what: str) -> Any:
  """fn() on a daemon thread, waited for at most timeout_s: its result or its exception, or a
  ValueError saying that `what` did not answer in time (a client stuck in a network call, e.g.
  looking for credentials, cannot be interrupted; the thread is left to die with the process)."""
  import threading
  box: dict = {}

  def target():
    try:
      box["result"] = fn()
    except BaseException as e:  # noqa: BLE001 - handed to the caller
      box["error"] = e
  thread = threading.Thread(target=target, name="pca_jax-store-probe", daemon=True)
  thread.start()
  thread.join(timeout_s)
  if thread.is_alive():
    raise ValueError(f"{what} did not answer within {timeout_s:.0f} s: check the bucket name, the "
                     "credentials (gcloud auth application-default login, or "
                     "GOOGLE_APPLICATION_CREDENTIALS) and the network; for a local emulator set "
                     f"STORAGE_EMULATOR_HOST and {', '.join(EMULATOR_VARIABLES)} "
                     "(PCA_JAX_STORE_TIMEOUT_S sets the wait)")
  if "error" in box:
    raise box["error"]
  return box.get("result")


def check_reachable(p: PathLike, timeout_s: float | None = None) -> None:
  """Object stores: the settings (check_store_settings), then one bounded existence check of p;
  nothing for local paths."""
  if is_remote(p):
    _probe(p, lambda: path(p).exists(), timeout_s)


def check_writable(directory: PathLike, timeout_s: float | None = None) -> epath.Path:
  """Creates `directory` if needed and checks that files can be written there (clear error if
  not). Object stores: the settings are checked (check_store_settings) and the probe, one small
  object written and deleted, must answer within timeout_s (default PCA_JAX_STORE_TIMEOUT_S,
  60 s)."""
  d = path(directory)
  return _probe(d, lambda: _check_writable(d), timeout_s) if is_remote(d) else _check_writable(d)


def _probe(p: PathLike, fn: Callable[[], Any], timeout_s: float | None) -> Any:
  """An object store's settings checked (check_store_settings), then fn() bounded by timeout_s
  (default PCA_JAX_STORE_TIMEOUT_S)."""
  check_store_settings(p)
  return within(STORE_TIMEOUT_S if timeout_s is None else timeout_s, fn,
                f"the object store holding {p}")


def _check_writable(d: epath.Path) -> epath.Path:
  try:
    d.mkdir(parents=True, exist_ok=True)
    probe = d / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise ValueError(f"cannot write to {d} ({e.strerror or e}); choose a writable --workdir") \
        from None
  except Exception as e:  # noqa: BLE001 - object-store clients raise their own error types
    first = " ".join(str(e).split())[:200]
    raise ValueError(f"cannot write to {d} ({type(e).__name__}: {first}); check the bucket name "
                     "and credentials, or choose another --workdir") from None
  return d


def write_file(target: PathLike, writer: Callable[[Any], None]) -> epath.Path:
  """Calls writer(tmp) with a local temporary path, then publishes it atomically as `target`
  (local rename; on object stores a single-object upload). No-op except on the writer process."""
  target = path(target)
  if not is_writer():
    return target
  audit(target)
  if is_remote(target):
    fd, local = tempfile.mkstemp(prefix="pca_jax-", suffix=f"-{target.name}")
    os.close(fd)
    try:
      writer(epath.Path(local))
      upload(local, target)
    finally:
      os.unlink(local)
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = _tmp_name(target)
  try:
    writer(tmp)
    os.replace(tmp, target)
  finally:
    if tmp.exists():
      tmp.unlink()
  return target


def upload(local: PathLike, target: PathLike) -> None:
  """Copies one local file to `target` (any store) in one write."""
  target = path(target)
  with open(local, "rb") as src, target.open("wb") as dst:
    shutil.copyfileobj(src, dst, length=16 << 20)


def save_npy(target: PathLike, array: np.ndarray) -> epath.Path:
  def w(tmp):
    with open(tmp, "wb") as f:
      np.save(f, np.asarray(array))
  return write_file(target, w)


def save_json(target: PathLike, obj: Any) -> epath.Path:
  return save_text(target, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def save_text(target: PathLike, text: str) -> epath.Path:
  def w(tmp):
    with open(tmp, "w") as f:
      f.write(text)
  return write_file(target, w)


def _json_default(o):
  if isinstance(o, np.integer):
    return int(o)
  if isinstance(o, np.floating):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  if isinstance(o, os.PathLike):
    return os.fspath(o)
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def load_npy(source: PathLike, mmap: bool = False) -> np.ndarray:
  """np.load of a local or remote .npy (memory-mapped only where asked and local)."""
  p = path(source)
  if not is_remote(p):
    return np.load(os.fspath(p), mmap_mode="r" if mmap else None, allow_pickle=False)
  with p.open("rb") as f:  # straight into the array, no second in-memory copy
    return np.load(f, allow_pickle=False)


def read_json(source: PathLike) -> Any:
  return json.loads(path(source).read_text())


def remove(target: PathLike) -> None:
  """Deletes a file or a directory tree (missing is fine). Like the writers, only on the writer
  process: the others never change the run directory."""
  if not is_writer():
    return
  p = path(target)
  if is_remote(p):
    if p.is_dir():
      p.rmtree()
    elif p.exists():
      p.unlink()
    return
  if p.is_dir() and not os.path.islink(os.fspath(p)):
    shutil.rmtree(os.fspath(p))
  else:
    p.unlink(missing_ok=True)


def files_under(root: PathLike) -> list[epath.Path]:
  """Every file below `root` (recursive), sorted."""
  root = path(root)
  if not is_remote(root):
    return sorted(epath.Path(d) / f for d, _, files in os.walk(os.fspath(root)) for f in files)
  # one paginated listing of every object under the prefix (an ImageNet folder: ~1,300 requests,
  # not one per file); epath's walk() would drop the gs:// scheme
  import fsspec
  url = os.fspath(root)
  store, prefix = fsspec.core.url_to_fs(url)
  scheme = url.split("://", 1)[0]
  return sorted(epath.Path(f"{scheme}://{name}") for name in store.find(prefix))


def file_stats(p: PathLike) -> tuple[int, float]:
  """(size in bytes, modification time in seconds) of a local or remote file."""
  q = path(p)
  if not is_remote(q):
    st = os.stat(os.fspath(q))
    return st.st_size, st.st_mtime_ns / 1e9
  st = q.stat()
  return int(st.length), float(st.mtime or 0)


def upload_tree(local: str, target: epath.Path) -> None:
  """Uploads a local tree file by file, every manifest.json after the other files."""
  files = [os.path.join(d, f) for d, _, names in os.walk(local) for f in names]
  files.sort(key=lambda f: (os.path.basename(f) == "manifest.json", f))
  for f in files:
    dst = target.joinpath(*os.path.relpath(f, local).split(os.sep))
    upload(f, dst)


@contextlib.contextmanager
def atomic_dir(target: PathLike) -> Iterator[epath.Path]:
  """Yields a local temporary directory; on success it replaces `target` (see the module
  docstring for what that means on object stores), on error it is deleted. Processes other than
  the writer get a scratch directory that is always discarded."""
  target = path(target)
  if not is_writer() or is_remote(target):
    local = epath.Path(tempfile.mkdtemp(prefix="pca_jax-dir-"))
    try:
      yield local
      if is_writer():
        audit(target)
        remove(target)
        upload_tree(os.fspath(local), target)
    finally:
      shutil.rmtree(os.fspath(local), ignore_errors=True)
    return
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = _tmp_name(target)
  tmp.mkdir()
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(os.fspath(tmp), ignore_errors=True)
    raise
  audit(target)
  old = None
  if target.exists():
    old = _tmp_name(target)
    os.replace(target, old)
  os.replace(tmp, target)
  if old is not None:
    shutil.rmtree(os.fspath(old), ignore_errors=True)
