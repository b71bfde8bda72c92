"""Compressed subsets in the Hugging Face parquet layout: read the reference's, publish ours.

The reference benchmark (rethinkdc, PyTorch) publishes its compressed ImageNet subsets on the
Hugging Face hub; `huggingface-cli download <repo> --repo-type dataset --local-dir D` leaves

  D/data/train-00000-of-00003.parquet, ...   columns image = struct {bytes: binary, path: string}
                                             (JPEG/PNG bytes) and class_id (int, the class index)

with the `datasets` features as JSON in the parquet schema metadata under b"huggingface":
  {"info": {"features": {"image": {"_type": "Image"},
                         "class_id": {"names": [...], "_type": "ClassLabel"}}}}
(class_id may also be a plain {"dtype": "int64", "_type": "Value"}, i.e. ids without names).

`ParquetSource` reads such a directory as a random-access source (the interface of
`sources.ImageFolderSource`); `export_parquet` writes a compressed set (pca_jax.data.store) in the
same layout, so that `datasets.load_dataset(<dir>)` (what the reference CLI's adapter calls) yields
PIL images and ClassLabel labels. Local paths and object stores (gs://) both go through pca_jax.fs.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import math
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pca_jax import fs
from pca_jax.data.sources import DataError, decode_image
from pca_jax.data.store import load_compressed

IMAGE_COLUMN, LABEL_COLUMN = "image", "class_id"   # what export_parquet writes
LABEL_COLUMNS = ("label", "class_id")   # recognised label columns, in order, when none is named
METADATA_KEY = b"huggingface"
# a Hugging Face Image feature's storage type (datasets.Image.pa_type)
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
# names the hub recognises as splits (datasets.data_files), to tell "other split" from "no split"
_SPLIT_WORDS = ("train", "training", "validation", "valid", "val", "dev", "test", "testing",
                "eval", "evaluation")
_LAYOUT = "expected the layout huggingface-cli download leaves: data/train-*.parquet"


def _parquet_files(d: fs.Path) -> list[fs.Path]:
  """The *.parquet files directly in `d`, sorted by name ([] when `d` is not a directory)."""
  if not d.is_dir():
    return []
  return sorted((p for p in d.iterdir() if p.name.endswith(".parquet") and not
                 p.name.startswith(".")), key=lambda p: p.name)


def is_parquet_dir(path: fs.PathLike) -> bool:
  """True when `path` holds *.parquet files under data/ or directly (a downloaded hub dataset)."""
  root = fs.path(path)
  try:
    return bool(_parquet_files(root / "data") or _parquet_files(root))
  except OSError:
    return False


def _split_of(name: str) -> str | None:
  """The split a hub file name declares ("train-00000-of-00003.parquet" -> "train"), or None."""
  m = re.match(r"^([A-Za-z]+)(?:[-_.]|$)", name[:-len(".parquet")])
  return m.group(1).lower() if m and m.group(1).lower() in _SPLIT_WORDS else None


def split_files(root: fs.PathLike, split: str = "train") -> list[fs.Path]:
  """The parquet files of `split` under root/data (else root), in row order (sorted names).

  Files named "{split}-*.parquet" or "{split}.parquet"; when no file name declares any split,
  every *.parquet file. Raises DataError when there are none, or only other splits' files.
  """
  root = fs.path(root)
  files = _parquet_files(root / "data") or _parquet_files(root)
  if not files:
    raise DataError(f"{root} has no parquet files under data/; {_LAYOUT}")
  mine = [f for f in files if f.name == f"{split}.parquet" or f.name.startswith(f"{split}-")]
  if mine:
    return mine
  splits = sorted({s for s in (_split_of(f.name) for f in files) if s is not None})
  if splits:
    raise DataError(f"{files[0].parent} has no {split}-*.parquet files, only the splits "
                    f"{', '.join(splits)}; pass one of those as the split")
  return files


def _open(f: fs.Path) -> pq.ParquetFile:
  """A ParquetFile for a local path, or for an object-store file read whole into memory."""
  try:
    if fs.is_remote(f):
      return pq.ParquetFile(pa.BufferReader(f.read_bytes()))
    return pq.ParquetFile(os.fspath(f))
  except pa.ArrowException as e:
    raise DataError(f"cannot read {f} as parquet ({e}); delete it or download it again") from None


def _class_label_names(schema: pa.Schema, column: str = LABEL_COLUMN) -> list[str] | None:
  """The ClassLabel names of the label column from the `datasets` features in the schema
  metadata, or None when it is a plain integer."""
  raw = (schema.metadata or {}).get(METADATA_KEY)
  if not raw:
    return None
  try:
    feature = json.loads(raw.decode())["info"]["features"][column]
  except (ValueError, KeyError, TypeError, AttributeError):
    return None
  if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and \
      isinstance(feature.get("names"), list):
    return [str(n) for n in feature["names"]]
  return None


def _label_ids(f: fs.Path, ids: pa.ChunkedArray, column: str) -> np.ndarray:
  """A file's class ids, int64 [rows]: none missing, none negative."""
  if ids.null_count:
    row = int(np.flatnonzero(np.asarray(ids.is_null()))[0])
    raise DataError(f"{f}: row {row} has no {column}; every image needs a class id")
  ids = ids.to_numpy().astype(np.int64)
  if ids.size and ids.min() < 0:
    row = int(np.argmax(ids < 0))
    raise DataError(f"{f}: row {row} has {column} {int(ids[row])}; class ids must be >= 0 (the "
                    "class index), fix the file or use the published one")
  return ids


def _image_bytes(f: fs.Path, chunk: pa.Array, first_row: int) -> pa.Array:
  """The encoded image bytes of one chunk of an image column (a struct {bytes, path} or plain
  binary), every row with bytes."""
  data = chunk.field("bytes") if pa.types.is_struct(chunk.type) else chunk
  if data.null_count:
    j = int(np.flatnonzero(np.asarray(data.is_null()))[0])
    path = chunk.field("path")[j].as_py() if pa.types.is_struct(chunk.type) else None
    raise DataError(f"{f}: row {first_row + j} has no image bytes (path {path!r}); the images "
                    "must be embedded in the parquet file: download the hub dataset again")
  return data


def class_names_of(root: fs.PathLike, split: str = "train", label_column: str = "") -> list[str]:
  """A split's class names without reading its images: the ClassLabel names of its first file,
  else "0" .. the largest id of the label column (read alone)."""
  files = split_files(root, split)
  schema = _open(files[0]).schema_arrow
  column = label_column or next((c for c in LABEL_COLUMNS if c in schema.names), LABEL_COLUMNS[0])
  names = _class_label_names(schema, column)
  if names is not None:
    return names
  top = -1
  for f in files:
    ids = _open(f).read(columns=[column]).column(column).drop_null().to_numpy()
    top = max(top, int(ids.max()) if ids.size else -1)
  return [str(i) for i in range(top + 1)]


class ParquetSource:
  """A Hugging Face parquet dataset (image + class_id columns) as a random-access source.

  Same interface as `sources.ImageFolderSource`: `name`, `class_names`, `num_classes`, `labels`
  (int64 [N], no decoding), `__len__`, `read(i, min_side=0)` and `__getitem__(i) -> (uint8
  [H, W, 3], int)`. Rows are in file order (sorted names), then row order within each file.

  Only the `image` and `class_id` columns are read, once, and the *encoded* image bytes stay in
  memory as Arrow binary arrays (no per-image Python objects); each `read` decodes one image
  (`sources.decode_image`). Why: a published subset is small next to its source and is read
  many times in training, so one read of the files beats re-reading parquet row groups per item.
  What it costs: the files' image bytes in RAM, e.g. IPC10 x 1000 classes of ~100 KB JPEGs is
  ~1 GB, IPC100 ~10 GB (decoded uint8 224 x 224 x 3 would be 15 GB for IPC100).

  Class names: from a ClassLabel feature in the b"huggingface" schema metadata when there is one
  (`has_class_names` True); otherwise the reference's plain integer class_id is taken as the
  class index of the source dataset, `class_names` = ["0", ..., str(max id)] and
  `has_class_names` False (the caller checks ids against the source dataset's classes).
  """

  def __init__(self, root: fs.PathLike, split: str = "train", image_column: str = IMAGE_COLUMN,
               label_column: str = ""):
    self.root, self.split = fs.path(root), split
    self.files = split_files(self.root, split)
    self.image_column, self._label_column = image_column, label_column
    chunks: list[pa.Array] = []   # binary image bytes, one array per file row group chunk
    chunk_file: list[int] = []    # index into self.files of each chunk
    chunk_row: list[int] = []     # row of the chunk's first element within its file
    labels: list[np.ndarray] = []
    names: list[str] | None = None
    for k, f in enumerate(self.files):
      pf = _open(f)
      label_column = self._check_schema(f, pf.schema_arrow)
      file_names = _class_label_names(pf.schema_arrow, label_column)
      if k == 0:
        names = file_names
      elif file_names != names:
        raise DataError(f"{f} has other ClassLabel names in its metadata than {self.files[0]}; "
                        "all files of a split must come from one dataset, download it again")
      table = pf.read(columns=[self.image_column, label_column])
      labels.append(_label_ids(f, table.column(label_column), label_column))
      row = 0
      for chunk in table.column(self.image_column).chunks:
        chunks.append(_image_bytes(f, chunk, row))
        chunk_file.append(k)
        chunk_row.append(row)
        row += len(chunk)
    self._chunks, self._chunk_file, self._chunk_row = chunks, chunk_file, chunk_row
    self._starts = np.cumsum([0] + [len(c) for c in chunks], dtype=np.int64)
    self._labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    self._set_class_names(names)
    self.name = f"parquet:{self.root}/{split}"

  def _check_schema(self, f: fs.Path, schema: pa.Schema) -> str:
    """The label column of file f (label_column, else "label", else "class_id"), after checking
    that the image and label columns are there and of the right types."""
    label_column = self._label_column or next(
        (c for c in LABEL_COLUMNS if c in schema.names), LABEL_COLUMNS[0])
    missing = [c for c in (self.image_column, label_column) if c not in schema.names]
    if missing:
      raise DataError(f"{f} has columns {schema.names}, expected {self.image_column!r} (struct "
                      f"{{bytes, path}}) and {label_column!r} (int); {', '.join(missing)} "
                      "missing: name the columns with --config.data.image_column / "
                      "--config.data.label_column")
    image_type = schema.field(self.image_column).type
    label_type = schema.field(label_column).type
    if not (pa.types.is_struct(image_type) and image_type.get_field_index("bytes") >= 0) and \
        not (pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type)):
      raise DataError(f"{f}: column {self.image_column!r} is {image_type}, expected a struct with "
                      "a 'bytes' field (a Hugging Face Image feature with embedded images)")
    if not pa.types.is_integer(label_type):
      raise DataError(f"{f}: column {label_column!r} is {label_type}, expected integer class "
                      "ids; write the class index of each image there")
    return label_column

  def _set_class_names(self, names: list[str] | None) -> None:
    max_id = int(self._labels.max()) if self._labels.size else -1
    if names is not None:
      if max_id >= len(names):
        raise DataError(f"{self.root}: class id {max_id} is out of range for the "
                        f"{len(names)} ClassLabel names in the metadata; download it again")
      self.class_names, self.has_class_names = names, True
    else:
      self.class_names, self.has_class_names = [str(i) for i in range(max_id + 1)], False

  num_classes = property(lambda self: len(self.class_names))
  labels = property(lambda self: self._labels)
  # the same flag under the name the DC stages read
  class_ids_named = property(lambda self: self.has_class_names)

  @property
  def nbytes(self) -> int:
    """Bytes of encoded images held in memory."""
    return int(sum(c.nbytes for c in self._chunks))

  def __len__(self) -> int:
    return len(self._labels)

  def encoded(self, i: int) -> bytes:
    """The stored (encoded) bytes of image i."""
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f"index {i} out of range for {self.name} with {len(self)} images")
    c = int(np.searchsorted(self._starts, i, side="right")) - 1
    return self._chunks[c][i - int(self._starts[c])].as_py()

  def read(self, i: int, min_side: int = 0) -> tuple[np.ndarray, int]:
    """(image uint8 [H, W, 3], label); min_side > 0 allows a DCT-scaled JPEG decoding whose
    shorter side stays >= min_side (`sources.decode_image`)."""
    i = int(i)
    data = self.encoded(i)
    c = int(np.searchsorted(self._starts, i, side="right")) - 1
    row = self._chunk_row[c] + i - int(self._starts[c])
    return (decode_image(data, f"{self.files[self._chunk_file[c]]} row {row}", min_side),
            int(self._labels[i]))

  def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
    return self.read(i)


def _png(img: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.asarray(img)).save(buf, format="PNG")
  return buf.getvalue()


def hf_metadata(class_names: list[str]) -> bytes:
  """The b"huggingface" schema metadata `datasets` writes for {image: Image, class_id:
  ClassLabel(names)}: byte-identical to `datasets.Features(...).arrow_schema.metadata`."""
  features = {IMAGE_COLUMN: {"_type": "Image"},
              LABEL_COLUMN: {"names": list(class_names), "_type": "ClassLabel"}}
  return json.dumps({"info": {"features": features}}).encode()


def _dataset_card(manifest: dict, split: str) -> str:
  """README.md: YAML front matter as the hub writes it (configs, features), then a short card."""
  import yaml  # PyYAML: a dependency of flax, ml_collections and orbax

  names = manifest["class_names"]
  front = {
      "configs": [{"config_name": "default",
                   "data_files": [{"split": split, "path": f"data/{split}-*"}]}],
      "dataset_info": {
          "features": [{"name": IMAGE_COLUMN, "dtype": "image"},
                       {"name": LABEL_COLUMN, "dtype": {"class_label": {
                           "names": {str(i): str(n) for i, n in enumerate(names)}}}}],
          "splits": [{"name": split, "num_examples": int(manifest["num_images"])}],
      },
  }
  src = manifest.get("source") or {}
  h, w = manifest["image_shape"][:2]
  grid = manifest.get("grid")
  rows = [("method", manifest.get("method")), ("images per class (ipc)", manifest.get("ipc")),
          ("mosaic grid", "x".join(str(g) for g in grid) if grid else None),
          ("seed", manifest.get("seed")),
          ("source dataset", f"{src.get('name')} (split {src.get('split')}, "
                             f"{src.get('num_examples')} images)" if src else None),
          ("images", f"{manifest['num_images']} of {h}x{w} pixels, {len(names)} classes")]
  table = "\n".join(f"| {k} | {v} |" for k, v in rows if v is not None)
  return (f"---\n{yaml.safe_dump(front, sort_keys=False, allow_unicode=True)}---\n\n"
          f"# {manifest.get('method', 'compressed')} subset, ipc {manifest.get('ipc')}\n\n"
          "A compressed training set made by pca_jax (a JAX reimplementation of PCA dataset "
          "compression): the `store` stage wrote it, `pca_jax.data.parquet.export_parquet` "
          f"converted it to this layout; images are lossless PNG, exactly the stored uint8 "
          f"pixels.\n\n| | |\n|---|---|\n{table}\n\n"
          f"Columns: `{IMAGE_COLUMN}` (Image), `{LABEL_COLUMN}` (ClassLabel, ids in the source "
          "dataset's class order). Load with `datasets.load_dataset(\"<this dir>\")`.\n")


def export_parquet(compressed_dir: fs.PathLike, out_dir: fs.PathLike, *, split: str = "train",
                   rows_per_file: int = 1000, num_threads: int = 8) -> fs.Path:
  """Writes a compressed set (pca_jax.data.store) as a Hugging Face parquet dataset; returns out.

  out_dir/data/{split}-{i:05d}-of-{n:05d}.parquet: columns image = struct {bytes: PNG of the
  stored uint8 [H, W, 3] pixels (lossless), path: "{row}.png"} and class_id int64, up to
  `rows_per_file` rows per file (row groups of 100 rows), in the set's order; schema metadata
  b"huggingface" = the `datasets` features {image: Image, class_id: ClassLabel(names = the
  manifest's class names, in class-id order)}. Plus out_dir/README.md, a dataset card with the
  hub's YAML (configs, features) and the manifest's method, ipc and source.

  Atomic (fs.atomic_dir): an interrupted export leaves nothing under out_dir, an existing out_dir
  is replaced only once the new one is complete; object stores (gs://) get the tree built locally
  and uploaded. PNG encoding runs on `num_threads` threads.
  """
  if not re.fullmatch(r"\w+(\.\w+)*", split):
    raise DataError(f"split {split!r} is not a valid split name; use letters, digits and _ "
                    "(e.g. train)")
  if rows_per_file < 1:
    raise DataError(f"rows_per_file must be >= 1, got {rows_per_file}")
  cs = load_compressed(compressed_dir, mmap=not fs.is_remote(compressed_dir))
  names = [str(n) for n in cs.manifest["class_names"]]
  if not fs.is_writer():  # one process writes (see pca_jax.fs); the others skip the encoding
    return fs.path(out_dir)
  m = len(cs.labels)
  n = max(1, math.ceil(m / rows_per_file))
  schema = pa.schema([(IMAGE_COLUMN, IMAGE_TYPE), (LABEL_COLUMN, pa.int64())],
                     metadata={METADATA_KEY: hf_metadata(names)})
  with fs.atomic_dir(out_dir) as tmp, \
      concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    (tmp / "data").mkdir()
    for k in range(n):
      lo, hi = k * rows_per_file, min(m, (k + 1) * rows_per_file)
      pngs = list(pool.map(_png, (cs.images[i] for i in range(lo, hi))))
      image = pa.StructArray.from_arrays(
          [pa.array(pngs, pa.binary()), pa.array([f"{i}.png" for i in range(lo, hi)],
                                                 pa.string())], fields=list(IMAGE_TYPE))
      table = pa.Table.from_arrays(
          [image, pa.array(np.asarray(cs.labels[lo:hi], np.int64), pa.int64())], schema=schema)
      pq.write_table(table, os.fspath(tmp / "data" / f"{split}-{k:05d}-of-{n:05d}.parquet"),
                     row_group_size=100)
    (tmp / "README.md").write_text(_dataset_card(cs.manifest, split))
  return fs.path(out_dir)

