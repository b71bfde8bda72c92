"""Published subsets in the Hugging Face parquet layout: ParquetSource and export_parquet.

No network: `datasets` runs offline with its cache under tmp_path; the gs:// case uses the local
GCS emulator (tests/gcs_emulator.py).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pca_jax.data import parquet
from pca_jax.data.parquet import ParquetSource, export_parquet, is_parquet_dir
from pca_jax.data.sources import DataError
from pca_jax.data.store import write_compressed
from tests.helpers import gcs_emulator

# class ids in this order; not alphabetical, so a sorted-names bug changes the labels
NAMES = ["zebra", "apple tree", "Äpfel/ü \"quoted\""]
MANIFEST = {"method": "pca", "ipc": 3, "grid": [2, 2], "seed": 0,
            "source": {"name": "demo_digits/train", "split": "train", "num_examples": 1347}}


@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
  """`datasets` with no network and its caches under tmp_path; returns (datasets, cache_dir)."""
  cache = tmp_path / "hf_cache"
  for k, v in {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(cache),
               "HF_DATASETS_CACHE": str(cache / "datasets"), "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}.items():
    monkeypatch.setenv(k, v)
  datasets = pytest.importorskip("datasets")
  return datasets, str(cache / "datasets")


def _compressed(tmp_path, h=6, w=5, per_class=3):
  """A small compressed set: random uint8 [9, h, w, 3] (non-square), labels 0,1,2,0,1,2,..."""
  rng = np.random.default_rng(0)
  labels = np.tile(np.arange(len(NAMES)), per_class)
  images = rng.integers(0, 256, (len(labels), h, w, 3), dtype=np.uint8)
  path = write_compressed(tmp_path / "compressed", images, labels, MANIFEST, NAMES)
  return path, images, labels


def test_export_round_trip(tmp_path, hf_offline):
  datasets, cache = hf_offline
  src, images, labels = _compressed(tmp_path)
  out = export_parquet(src, tmp_path / "hub", rows_per_file=4)
  assert sorted(os.listdir(out)) == ["README.md", "data"]
  files = sorted(os.listdir(out / "data"))
  assert files == [f"train-{i:05d}-of-00003.parquet" for i in range(3)]
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".hub")]  # no temporary left

  # pyarrow: the layout the hub uses
  table = pq.read_table([str(out / "data" / f) for f in files])
  assert table.column_names == ["image", "class_id"] and table.num_rows == len(labels)
  assert table.schema.field("image").type == pa.struct([("bytes", pa.binary()),
                                                        ("path", pa.string())])
  assert table.schema.field("class_id").type == pa.int64()
  assert table.column("class_id").to_pylist() == labels.tolist()
  assert table.column("image").combine_chunks().field("path").to_pylist()[:2] == ["0.png", "1.png"]
  meta = pq.read_schema(out / "data" / files[0]).metadata[b"huggingface"]
  assert json.loads(meta) == {"info": {"features": {
      "image": {"_type": "Image"}, "class_id": {"names": NAMES, "_type": "ClassLabel"}}}}
  # byte-identical to what `datasets` itself writes for these features
  features = datasets.Features({"image": datasets.Image(),
                                "class_id": datasets.ClassLabel(names=NAMES)})
  assert meta == features.arrow_schema.metadata[b"huggingface"]
  assert datasets.Features.from_arrow_schema(pq.read_schema(out / "data" / files[0])) == features

  # ParquetSource: pixels, labels and class names back exactly
  s = ParquetSource(out)
  assert is_parquet_dir(out) and not is_parquet_dir(src)
  assert len(s) == len(labels) and s.labels.dtype == np.int64
  np.testing.assert_array_equal(s.labels, labels)
  assert s.class_names == NAMES and s.num_classes == 3 and s.has_class_names and s.class_ids_named
  for i in range(len(s)):
    img, label = s[i]
    assert img.dtype == np.uint8 and label == labels[i]
    np.testing.assert_array_equal(img, images[i])
  with pytest.raises(IndexError):
    s[len(s)]

  # `datasets`, as the reference CLI's adapter reads it: the files, and the directory (README)
  by_files = datasets.load_dataset("parquet", data_files=[str(out / "data" / f) for f in files],
                                   split="train", cache_dir=cache)
  by_dir = datasets.load_dataset(str(out), split="train", cache_dir=cache)
  for ds in (by_files, by_dir):
    assert ds.features == features and ds.features["class_id"].names == NAMES
    assert len(ds) == len(labels) and list(ds["class_id"]) == labels.tolist()
    for i in (0, len(ds) - 1):
      assert isinstance(ds[i]["image"], Image.Image)
      np.testing.assert_array_equal(np.asarray(ds[i]["image"].convert("RGB")), images[i])
  card = (out / "README.md").read_text()
  assert "pca" in card and "ipc" in card and "demo_digits/train" in card
  assert by_dir.info.splits["train"].num_examples == len(labels)


def test_export_is_atomic(tmp_path, monkeypatch):
  src, _, _ = _compressed(tmp_path)
  out = tmp_path / "hub"
  calls = []

  def failing_png(img):
    calls.append(1)
    if len(calls) > 5:
      raise KeyboardInterrupt  # an interrupted export, mid-way through the second file
    return b"png"

  monkeypatch.setattr(parquet, "_png", failing_png)
  with pytest.raises(KeyboardInterrupt):
    export_parquet(src, out, rows_per_file=4, num_threads=1)
  assert sorted(os.listdir(tmp_path)) == ["compressed"]  # nothing under the final name, no temp
  monkeypatch.undo()
  export_parquet(src, out, rows_per_file=100)
  assert os.listdir(out / "data") == ["train-00000-of-00001.parquet"]


def _jpeg(img: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


def _smooth(h, w, seed):
  """A smooth colour gradient (JPEG keeps it to within a few levels)."""
  y, x = np.mgrid[0:h, 0:w]
  rng = np.random.default_rng(seed)
  a, b, c = rng.uniform(20, 200, 3)
  return np.stack([a + 40 * y / h, b + 40 * x / w, c + 20 * (x + y) / (h + w)],
                  -1).astype(np.uint8)


def _write_hub_file(path, images, ids, *, image_col="image", label_col="class_id",
                    struct=True, metadata=True):
  """A parquet file as the reference publishes it (pyarrow, not `datasets`)."""
  data = [_jpeg(im) for im in images]
  if struct:
    col = pa.StructArray.from_arrays(
        [pa.array(data, pa.binary()), pa.array([f"{i}.JPEG" for i in range(len(data))])],
        names=["bytes", "path"])
  else:
    col = pa.StructArray.from_arrays([pa.array([f"{i}.JPEG" for i in range(len(data))])],
                                     names=["path"])
  table = pa.table({image_col: col, label_col: pa.array(ids, pa.int64()),
                    "extra": pa.array(["x"] * len(ids))})
  if metadata:
    features = {"image": {"_type": "Image"}, "class_id": {"dtype": "int64", "_type": "Value"},
                "extra": {"dtype": "string", "_type": "Value"}}
    table = table.replace_schema_metadata(
        {b"huggingface": json.dumps({"info": {"features": features}}).encode()})
  path.parent.mkdir(parents=True, exist_ok=True)
  pq.write_table(table, path)


def test_reads_a_downloaded_hub_dataset(tmp_path):
  """data/train-0000{0,1}-of-00002.parquet with JPEGs and ImageNet-style integer class ids."""
  sizes = [(20, 30), (24, 16), (32, 32), (16, 40), (28, 20)]
  images = [_smooth(h, w, i) for i, (h, w) in enumerate(sizes)]
  ids = [7, 3, 0, 9, 3]
  root = tmp_path / "rethinkdc_subset"
  _write_hub_file(root / "data" / "train-00000-of-00002.parquet", images[:3], ids[:3])
  _write_hub_file(root / "data" / "train-00001-of-00002.parquet", images[3:], ids[3:])
  _write_hub_file(root / "data" / "validation-00000-of-00001.parquet", images[:1], [1])
  (root / "README.md").write_text("---\nlicense: other\n---\n")
  assert is_parquet_dir(root) and not is_parquet_dir(tmp_path)

  s = ParquetSource(root)
  assert len(s) == 5 and s.labels.tolist() == ids and s.labels.dtype == np.int64
  assert not s.has_class_names and s.class_names == [str(i) for i in range(10)]
  assert s.num_classes == 10 and str(root) in s.name
  for i, ref in enumerate(images):
    img, label = s[i]
    assert img.dtype == np.uint8 and img.shape == ref.shape and label == ids[i]
    assert np.abs(img.astype(int) - ref).mean() < 3, i
  assert ParquetSource(root, split="validation").labels.tolist() == [1]
  with pytest.raises(DataError, match="only the splits train, validation"):
    ParquetSource(root, split="test")

  # no split prefix (the hub's refs/convert/parquet layout): every file, directly under root
  flat = tmp_path / "flat"
  _write_hub_file(flat / "0000.parquet", images[:2], ids[:2])
  _write_hub_file(flat / "0001.parquet", images[2:], ids[2:])
  assert ParquetSource(flat).labels.tolist() == ids


def test_bad_input_names_the_problem(tmp_path):
  img = [_smooth(8, 8, 0)]
  (tmp_path / "empty" / "data").mkdir(parents=True)
  with pytest.raises(DataError, match=r"empty has no parquet files under data/; expected the "
                     r"layout huggingface-cli download leaves: data/train-\*\.parquet"):
    ParquetSource(tmp_path / "empty")
  _write_hub_file(tmp_path / "label" / "data" / "train-00000-of-00001.parquet", img, [0],
                  label_col="label")
  assert ParquetSource(tmp_path / "label").labels.tolist() == [0]  # "label" is recognised too
  _write_hub_file(tmp_path / "target" / "data" / "train-00000-of-00001.parquet", img, [0],
                  label_col="target")
  with pytest.raises(DataError, match=r"has columns \['image', 'target', 'extra'\], expected "
                     r"'image' .* and 'label' \(int\); label missing"):
    ParquetSource(tmp_path / "target")
  assert ParquetSource(tmp_path / "target", label_column="target").labels.tolist() == [0]
  _write_hub_file(tmp_path / "img" / "data" / "train-00000-of-00001.parquet", img, [0],
                  image_col="img")
  with pytest.raises(DataError, match=r"has columns \['img', 'class_id', 'extra'\], .*; image "
                     "missing"):
    ParquetSource(tmp_path / "img")
  _write_hub_file(tmp_path / "paths" / "data" / "train-00000-of-00001.parquet", img, [0],
                  struct=False)
  with pytest.raises(DataError, match=r"column 'image' is struct<path: string>, expected a "
                     "struct with a 'bytes' field"):
    ParquetSource(tmp_path / "paths")
  _write_hub_file(tmp_path / "neg" / "data" / "train-00000-of-00001.parquet", img * 2, [0, -1])
  with pytest.raises(DataError, match=r"row 1 has class_id -1; class ids must be >= 0"):
    ParquetSource(tmp_path / "neg")
  for bad in ("train-x", ""):
    with pytest.raises(DataError, match="not a valid split name"):
      export_parquet(tmp_path / "nowhere", tmp_path / "out", split=bad)


@pytest.fixture
def gcs_bucket():
  """The GCS emulator on a free port, this process pointed at it; yields the bucket URL."""
  with gcs_emulator("pca-jax-parquet"):
    yield "gs://pca-jax-parquet"


def test_export_and_read_in_a_bucket(tmp_path, gcs_bucket):
  from pca_jax import fs
  src, images, labels = _compressed(tmp_path)
  out = export_parquet(src, f"{gcs_bucket}/hub", rows_per_file=5)
  names = sorted(os.fspath(p)[len(gcs_bucket) + 5:] for p in fs.files_under(out))
  assert names == ["README.md", "data/train-00000-of-00002.parquet",
                   "data/train-00001-of-00002.parquet"]
  assert is_parquet_dir(out)
  s = ParquetSource(f"{gcs_bucket}/hub")
  assert s.class_names == NAMES and s.labels.tolist() == labels.tolist()
  np.testing.assert_array_equal(np.stack([s[i][0] for i in range(len(s))]), images)


def _png_bytes(img: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG")
  return buf.getvalue()


def _write_dataset(root, split: str, images, labels, names, shards: int = 1,
                   label_col: str = "label") -> None:
  """A Hugging Face image-classification dataset as `datasets` pushes it: data/<split>-*.parquet
  with an Image column and a ClassLabel column named in the schema metadata."""
  meta = json.dumps({"info": {"features": {
      "image": {"_type": "Image"}, label_col: {"names": names, "_type": "ClassLabel"}}}}).encode()
  parts = np.array_split(np.arange(len(labels)), shards)
  for k, idx in enumerate(parts):
    col = pa.StructArray.from_arrays([pa.array([_png_bytes(images[i]) for i in idx], pa.binary()),
                                      pa.array([f"{i}.png" for i in idx])], names=["bytes", "path"])
    table = pa.table({"image": col, label_col: pa.array(np.asarray(labels)[idx], pa.int64())})
    path = root / "data" / f"{split}-{k:05d}-of-{shards:05d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata({b"huggingface": meta}), path)


def _digits_dataset(root):
  """The demo's digits (train / test) as a parquet dataset in 3 train shards."""
  from pca_jax.data.sources import demo_source
  names = [f"digit {i}" for i in range(10)]
  for split, shards in (("train", 3), ("test", 1)):
    src = demo_source(split)
    _write_dataset(root, split, src.images, src.labels, names, shards)
  return names


@pytest.mark.long
def test_a_parquet_dataset_runs_the_pipeline_and_the_benchmark(tmp_path):
  from pca_jax import main as pca_main
  from tests.test_main import tiny_config
  names = _digits_dataset(tmp_path / "digits")
  c = tiny_config(**{"data.source": "parquet", "data.data_dir": str(tmp_path / "digits"),
                     "data.eval_split": "test",
                     "stages": "score,select,combine,store,train,eval,report,benchmark",
                     "benchmark.methods": "random,el2n_easy,pca", "benchmark.ipcs": (1,),
                     "benchmark.label_modes": ("hard",), "benchmark.grids": ((1, 1),),
                     "train.epochs": 20})
  summaries = pca_main.run_pipeline(c, tmp_path / "run")
  res = json.loads((tmp_path / "run" / "results.json").read_text())
  assert res["test_images"] == 450 and res["top1"] > 20.0  # chance 10 %
  assert res["dataset"].startswith("parquet:")
  manifest = json.loads((tmp_path / "run" / "compressed" / "manifest.json").read_text())
  assert manifest["class_names"] == names and manifest["source"]["num_examples"] == 1347
  assert summaries["benchmark"]["cells"] == 3
  rows = json.loads((tmp_path / "run" / "benchmark.json").read_text())["rows"]
  assert {r["method"] for r in rows} == {"random", "el2n_easy", "pca"}


def test_parquet_source_bad_input_is_one_line(tmp_path):
  """Through the CLI: a missing label column, an unknown split, no data_dir: exit 2, one line."""
  import subprocess
  import sys
  from tests.test_main import ROOT
  images = [_smooth(8, 8, i) for i in range(4)]
  _write_dataset(tmp_path / "ok", "train", images, [0, 1, 0, 1], ["a", "b"], shards=2)
  _write_dataset(tmp_path / "ok", "test", images[:2], [0, 1], ["a", "b"])
  _write_dataset(tmp_path / "nolabel", "train", images, [0, 1, 0, 1], ["a", "b"],
                 label_col="target")
  _write_dataset(tmp_path / "nolabel", "test", images[:2], [0, 1], ["a", "b"],
                 label_col="target")

  def cli(*args):
    return subprocess.run([sys.executable, "-m", "pca_jax.main", "--config=configs/demo.py",
                           f"--workdir={tmp_path / 'run'}", "--config.data.source=parquet",
                           "--config.data.eval_split=test", *args], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                          timeout=300)
  for args, message in (
      ([f"--config.data.data_dir={tmp_path / 'nolabel'}"],
       "has columns ['image', 'target'], expected 'image' (struct {bytes, path}) and 'label'"),
      ([f"--config.data.data_dir={tmp_path / 'ok'}", "--config.data.eval_split=validation"],
       "has no validation-*.parquet files, only the splits test, train"),
      ([], "data.source='parquet' needs --config.data.data_dir=")):
    out = cli(*args)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().count("\n") == 0 and message in out.stderr, out.stderr
    assert not (tmp_path / "run").exists()
  # the label column named explicitly
  from pca_jax.data.load import load_source
  from pca_jax.config import base_config
  data = base_config().data
  data.update(dict(source="parquet", data_dir=str(tmp_path / "nolabel"), label_column="target"))
  src = load_source(data, "train")
  assert src.labels.tolist() == [0, 1, 0, 1] and src.class_names == ["a", "b"]
  assert len(src.files) == 1
  assert len(load_source(data, "test")) == 2
  data.data_dir = str(tmp_path / "ok")
  data.label_column = ""
  assert len(load_source(data, "train").files) == 2  # both shards of the split
