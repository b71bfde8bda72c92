"""The compressed dataset on disk, and its export to a PyTorch-readable ImageFolder.

A compressed dataset is a directory:
  images.npy     uint8 [M, H, W, 3]  (mosaics for PCA, plain images for pruning baselines)
  labels.npy     int32 [M]
  manifest.json  method, ipc, grid, seed, source name/split, selected source indices, image size,
                 class names, bytes of images and labels, format version
  preview.png    the first images of the first classes, one row per class

Why .npy and not array_record: the compressed set is small (IPC100 x 1000 classes = 100k images) and
is loaded whole onto the accelerators for training, so a raw, memory-mappable uint8 array is the
fastest format (no decoding on any path) and is read by `np.load` from PyTorch or anything else.
Its size in bytes is exactly what the manifest reports (H*W*3 per image, plus the 128-byte header).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from pca_jax import fs
from pca_jax.fs import atomic_dir
from pca_jax.data.sources import DataError

MANIFEST_VERSION = 1
FILES = ("images.npy", "labels.npy", "manifest.json", "preview.png")


@dataclasses.dataclass
class CompressedSet:
  images: np.ndarray   # uint8 [M, H, W, 3]
  labels: np.ndarray   # int32 [M]
  manifest: dict


def save_preview(images: np.ndarray, labels: np.ndarray, path: str | os.PathLike,
                 max_classes: int = 10, per_class: int = 8, max_cell: int = 96) -> None:
  """A grid PNG: one row per class (first max_classes classes), its first per_class images."""
  images, labels = np.asarray(images), np.asarray(labels)
  classes = sorted(set(labels.tolist()))[:max_classes]
  h, w = images.shape[1:3]
  scale = max(1, min(max_cell // max(h, w), 8))  # upscale tiny images so they can be seen
  ch, cw = h * scale, w * scale
  pad = 2
  canvas = np.full((len(classes) * (ch + pad) + pad, per_class * (cw + pad) + pad, 3), 255,
                   np.uint8)
  for r, c in enumerate(classes):
    for k, i in enumerate(np.flatnonzero(labels == c)[:per_class]):
      tile = np.asarray(Image.fromarray(images[i]).resize((cw, ch), Image.NEAREST))
      y, x = pad + r * (ch + pad), pad + k * (cw + pad)
      canvas[y:y + ch, x:x + cw] = tile
  Image.fromarray(canvas).save(path)


def write_compressed(out_dir: str | os.PathLike, images: np.ndarray, labels: np.ndarray,
                     manifest: dict, class_names: Sequence[str] | None = None) -> fs.Path:
  """Writes a compressed dataset atomically (see pca_jax.fs.atomic_dir); returns its path.

  `manifest` carries method, ipc, grid, seed, source, source_indices, ...; sizes, shapes, bytes
  and the format version are added here. An existing directory is replaced only once the new one
  is complete.
  """
  images = np.asarray(images)
  labels = np.asarray(labels, np.int32)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise DataError(f"compressed images must be uint8 [M, H, W, 3], got {images.dtype} "
                    f"{images.shape}")
  if len(images) != len(labels):
    raise DataError(f"{len(images)} images but {len(labels)} labels")
  num_classes = len(class_names) if class_names is not None else int(labels.max()) + 1
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise DataError(f"label out of range [0, {num_classes}) in the compressed set")
  m = dict(manifest)
  m.update({
      "version": MANIFEST_VERSION,
      "num_images": int(len(images)),
      "image_shape": list(images.shape[1:]),
      "num_classes": num_classes,
      "class_names": list(class_names) if class_names is not None else [str(i) for i in range(num_classes)],
      "images_per_class": np.bincount(labels, minlength=num_classes).tolist(),
      "bytes": {"images": int(images.nbytes), "labels": int(labels.nbytes)},
  })
  if "source_indices" in m:
    m["source_indices"] = np.asarray(m["source_indices"]).tolist()
  if not fs.is_writer():  # one process writes (see pca_jax.fs); the others skip the encoding work
    return fs.path(out_dir)
  with atomic_dir(out_dir) as tmp:
    np.save(tmp / "images.npy", images)
    np.save(tmp / "labels.npy", labels)
    save_preview(images, labels, tmp / "preview.png")
    (tmp / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
  return fs.path(out_dir)


def load_compressed(path: str | os.PathLike, mmap: bool = False) -> CompressedSet:
  """Loads and validates a compressed dataset directory (clear errors for anything off)."""
  path = fs.path(path)
  if not path.is_dir():
    raise DataError(f"compressed dataset {path} does not exist; run the store stage first")
  for f in ("images.npy", "labels.npy", "manifest.json"):
    if not (path / f).is_file():
      raise DataError(f"compressed dataset {path} is missing {f}; rewrite it with the store stage")
  try:
    manifest = json.loads((path / "manifest.json").read_text())
  except json.JSONDecodeError as e:
    raise DataError(f"{path / 'manifest.json'} is not valid JSON ({e}); rewrite the dataset") from None
  if manifest.get("version") != MANIFEST_VERSION:
    raise DataError(f"{path} has manifest version {manifest.get('version')!r}, this pca_jax reads "
                    f"version {MANIFEST_VERSION}; rewrite it with this version's store stage")
  images = fs.load_npy(path / "images.npy", mmap=mmap)
  labels = fs.load_npy(path / "labels.npy")
  if images.dtype != np.uint8 or images.ndim != 4:
    raise DataError(f"{path}/images.npy must be uint8 [M,H,W,3], got {images.dtype} {images.shape}")
  if list(images.shape[1:]) != manifest["image_shape"] or len(images) != manifest["num_images"]:
    raise DataError(f"{path}/images.npy has shape {images.shape} but the manifest says "
                    f"{manifest['num_images']} x {manifest['image_shape']}")
  if labels.shape != (len(images),):
    raise DataError(f"{path}/labels.npy has shape {labels.shape}, expected ({len(images)},)")
  if labels.size and (labels.min() < 0 or labels.max() >= manifest["num_classes"]):
    raise DataError(f"{path}/labels.npy has labels outside [0, {manifest['num_classes']})")
  return CompressedSet(images, labels.astype(np.int32), manifest)


def export_imagefolder(path: str | os.PathLike, out: str | os.PathLike) -> dict:
  """Writes <out>/<class_name>/<00000>.png for torchvision.datasets.ImageFolder; returns stats.

  Class folders are named "<class id, zero-padded>_<class name>" so that their sorted order (which
  ImageFolder uses to assign labels) equals the label order. Atomic like every store write.
  """
  cs = load_compressed(path)
  names = cs.manifest["class_names"]
  width = len(str(len(names) - 1))
  total = 0
  with atomic_dir(out) as tmp:
    for i, (img, label) in enumerate(zip(cs.images, cs.labels)):
      safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(names[label]))
      d = tmp / f"{int(label):0{width}d}_{safe}"
      d.mkdir(exist_ok=True)
      f = d / f"{i:05d}.png"
      Image.fromarray(img).save(f)
      total += os.path.getsize(f)
  return {"num_images": int(len(cs.images)), "png_bytes": int(total), "out": str(out)}


def dataset_info(cs: CompressedSet) -> dict[str, Any]:
  """A short summary for logs and reports."""
  m = cs.manifest
  return {"method": m.get("method"), "ipc": m.get("ipc"), "grid": m.get("grid"),
          "num_images": m["num_images"], "image_shape": m["image_shape"], "bytes": m["bytes"]}
