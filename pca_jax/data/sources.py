"""Full datasets as random-access sources: TFDS (ArrayRecord), ImageFolder trees, bundled demo data.

Every source has `name`, `num_classes`, `class_names`, `labels` ([N] int64, no image decoding),
`__len__`, `read(i, min_side=0) -> (image uint8 [H, W, 3], label int)` and `__getitem__(i)` =
`read(i)`. min_side > 0 lets a source decode a JPEG at a reduced size in the DCT domain
(`decode_image`) when its shorter side stays >= min_side, for callers that resize to that side
anyway. Grain reads them directly; `read_example` also serves plain objects with `__getitem__`.
"""

from __future__ import annotations

import io
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from pca_jax import fs

try:  # libjpeg-turbo through TurboJPEG: ~1.7x PIL's JPEG decoding here, and it releases the GIL
  import simplejpeg
except ImportError:  # decode_image then decodes every format with PIL
  simplejpeg = None

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class DataError(ValueError):
  """A dataset problem the user can fix; the message says how."""


def to_rgb_uint8(img: Any) -> np.ndarray:
  """PIL image or array (grey [H,W], [H,W,1], RGB, RGBA) -> uint8 [H, W, 3]."""
  if isinstance(img, Image.Image):
    if img.mode != "RGB":
      img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "LA") else img.convert("RGB")
    return np.asarray(img, np.uint8)
  a = np.asarray(img)
  if a.dtype != np.uint8:
    a = np.clip(a, 0, 255).astype(np.uint8)
  if a.ndim == 2:
    a = a[..., None]
  if a.shape[-1] == 1:
    a = np.repeat(a, 3, axis=-1)
  elif a.shape[-1] == 4:
    a = a[..., :3]
  if a.ndim != 3 or a.shape[-1] != 3:
    raise DataError(f"expected an image [H, W, C] with C in (1, 3, 4), got shape {a.shape}")
  return a


JPEG_SCALES = (8, 4, 2)  # libjpeg's DCT-domain reductions 1/8, 1/4, 1/2 (whole IDCT blocks)


def dct_scale(height: int, width: int, min_side: int) -> int:
  """The largest s in JPEG_SCALES with min(height, width) >= s * min_side, else 1.

  A JPEG decoded at scale 1/s is ceil(height / s) x ceil(width / s), so its shorter side stays
  >= min_side; s = 1 (full size) when min_side <= 0 or the shorter side is below 2 x min_side.
  This is the rule of PIL's `Image.draft`, which `decode_image` falls back to.
  """
  if min_side > 0:
    for s in JPEG_SCALES:
      if min(height, width) >= s * min_side:
        return s
  return 1


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
  """(height, width) of an image resized so that its shorter side is `short`, aspect kept
  (rounded, the longer side at least `short`): the resize of pipeline.fit_image."""
  if height <= width:
    return short, max(short, int(round(width * short / height)))
  return max(short, int(round(height * short / width))), short


Decoded = tuple[np.ndarray, int, tuple[int, int]]  # (uint8 RGB image, scale s, full (H, W))


def _decode_jpeg_turbo(data: bytes, min_side: int) -> Decoded | None:
  """(uint8 RGB [ceil(H/s), ceil(W/s), 3], s, (H, W)): a YCbCr or greyscale JPEG decoded by
  simplejpeg at scale 1/s, s = dct_scale; None for anything it should not decode (no simplejpeg,
  other colour spaces such as CMYK, decompression-bomb sizes, data libjpeg flags as corrupt),
  which PIL then handles as before. Pixels equal PIL's decoding at the same scale (same
  libjpeg-turbo, IDCT and upsampling)."""
  if simplejpeg is None:
    return None
  try:
    h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    if colorspace not in ("YCbCr", "Gray") or h * w > (Image.MAX_IMAGE_PIXELS or float("inf")):
      return None
    s = dct_scale(h, w, min_side)
    # the exact size of scale 1/s: simplejpeg picks the smallest of libjpeg's M/8 scales that
    # reaches it, which is 1/s itself (not e.g. 3/8)
    return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=-(-h // s),
                                  min_width=-(-w // s)), s, (h, w)
  except ValueError:
    return None


def _decode_pil(data: bytes, min_side: int) -> Decoded:
  """(uint8 RGB [H', W', 3], s, (H, W)): any format PIL reads; JPEGs at scale 1/s by
  `Image.draft` (dct_scale's rule), everything else at full size (s = 1)."""
  with Image.open(io.BytesIO(data)) as im:
    s, (width, height) = 1, im.size
    if min_side > 0 and im.format == "JPEG":
      drafted = im.draft(im.mode, (min_side, min_side))  # (mode, (0, 0, W / s, H / s)) or None
      if drafted is not None:
        s = int(round(width / drafted[1][2]))
    im.load()
    return to_rgb_uint8(im), s, (height, width)


def _resize_reduced(image: np.ndarray, scale: int, height: int, width: int,
                    short: int) -> np.ndarray:
  """A JPEG decoded at scale 1/scale of its height x width, resized to short_side_size(height,
  width, short), bilinear with antialiasing (as fit_image). libjpeg's reduced image covers
  ceil(H / s) * s original rows (its last block row may be partial), so the resize reads the box
  (0, 0, W / s, H / s): the original's exact extent, which lines the result up pixel for pixel
  with decoding at full size + the same resize."""
  nh, nw = short_side_size(height, width, short)
  return np.asarray(Image.fromarray(image).resize(
      (nw, nh), Image.BILINEAR, box=(0.0, 0.0, width / scale, height / scale), reducing_gap=None))


def decode_image(data: bytes | str | os.PathLike, name: str = "", min_side: int = 0) -> np.ndarray:
  """Decodes JPEG/PNG/... bytes or a local file path to uint8 RGB [H, W, 3]; raises DataError
  naming the file.

  min_side > 0 says the caller resizes the shorter side to min_side next (pipeline.fit_image).
  A JPEG whose shorter side is >= 2 x min_side is then decoded at 1/2, 1/4 or 1/8 size in the DCT
  domain (`dct_scale`: the largest reduction that keeps the shorter side >= min_side), which skips
  most of the IDCT, upsampling and colour-conversion work, and resized here to shorter side min_side
  (`_resize_reduced`; fit_image then only crops). The result is within a few levels of full
  decoding + the same resize (tests/test_decode.py states how near); smaller JPEGs and other
  formats come back at full size. JPEGs go through simplejpeg (libjpeg-turbo); other formats,
  and JPEGs it declines (CMYK, corrupt data), through PIL (`Image.draft` for the same scale).
  """
  try:
    encoded = data
    if not isinstance(data, (bytes, bytearray, memoryview)):
      with open(data, "rb") as f:
        encoded = f.read()
    decoded = None
    if bytes(encoded[:3]) == b"\xff\xd8\xff":  # the JPEG SOI marker
      decoded = _decode_jpeg_turbo(encoded, min_side)
    image, scale, (height, width) = decoded or _decode_pil(encoded, min_side)
    return image if scale == 1 else _resize_reduced(image, scale, height, width, min_side)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise DataError(f"cannot decode image {name or data!s}: {e}; delete or replace the file, or "
                    "set --config.data.skip_corrupt=True to skip unreadable files") from None


def read_example(source: Any, i: int, min_side: int = 0) -> tuple[np.ndarray, int]:
  """source.read(i, min_side) for the sources here; source[i] for any other object with
  __getitem__ (test doubles, user sources), which then decodes at full size."""
  read = getattr(source, "read", None)
  return read(i, min_side) if read is not None else source[i]


class ArraySource:
  """In-memory images [N, H, W, 3] uint8 + labels [N] (demo data, tests, compressed sets)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
               name: str = "arrays"):
    images, labels = np.asarray(images), np.asarray(labels, np.int64)
    if images.ndim != 4 or images.dtype != np.uint8:
      raise DataError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if len(images) != len(labels):
      raise DataError(f"{len(images)} images but {len(labels)} labels")
    _check_labels(labels, len(class_names), name)
    self.images, self._labels = images, labels
    self.class_names, self.name = list(class_names), name

  num_classes = property(lambda self: len(self.class_names))
  labels = property(lambda self: self._labels)

  def __len__(self):
    return len(self._labels)

  def read(self, i, min_side: int = 0):
    del min_side  # already decoded
    return self.images[i], int(self._labels[i])

  def __getitem__(self, i):
    return self.read(i)


class IndexSubset:
  """The examples `indices` of another source, in that order, with its classes (e.g. the tune
  stage's validation split, held out of the train split). Reads go through to the source."""

  def __init__(self, source: Any, indices: np.ndarray, name: str | None = None):
    self.source = source
    self.indices = np.asarray(indices, np.int64)
    self._labels = np.asarray(source.labels, np.int64)[self.indices]
    self.class_names = list(source.class_names)
    self.name = name or f"{source.name}[{len(self.indices)} examples]"

  num_classes = property(lambda self: len(self.class_names))
  labels = property(lambda self: self._labels)

  def __len__(self):
    return len(self.indices)

  def read(self, i, min_side: int = 0):
    return read_example(self.source, int(self.indices[i]), min_side)

  def __getitem__(self, i):
    return self.read(i)


def _check_labels(labels: np.ndarray, num_classes: int, name: str) -> None:
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    bad = labels[(labels < 0) | (labels >= num_classes)][0]
    raise DataError(f"{name}: label {int(bad)} is out of range [0, {num_classes}); "
                    "check the dataset's label field / class folders")


def demo_source(split: str = "train", image_size: int = 16, test_fraction: float = 0.25,
                seed: int = 0) -> ArraySource:
  """scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes), shipped on disk.

  Upsampled (bilinear) to image_size and replicated to RGB; a deterministic stratified split puts
  `test_fraction` of each class in "test". Needs no network.
  """
  from sklearn.datasets import load_digits

  if split not in ("train", "test"):
    raise DataError(f"demo split must be 'train' or 'test', got {split!r}")
  digits = load_digits()
  raw = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)  # [1797, 8, 8] in 0..255
  labels = digits.target.astype(np.int64)
  rng = np.random.default_rng(seed)
  is_test = np.zeros(len(labels), bool)
  for c in range(10):
    idx = rng.permutation(np.flatnonzero(labels == c))
    is_test[idx[:int(round(len(idx) * test_fraction))]] = True
  keep = is_test if split == "test" else ~is_test
  imgs = np.stack([np.asarray(Image.fromarray(x).resize((image_size, image_size),
                                                        Image.BILINEAR)) for x in raw[keep]])
  return ArraySource(np.repeat(imgs[..., None], 3, axis=-1), labels[keep],
                     [str(i) for i in range(10)], name=f"demo_digits/{split}")


class SyntheticSource:
  """Generated images of a dataset's shape: counts[c] examples of class c (in class order), each
  image drawn on read from (seed, index): a per-class colour and stripe pattern plus noise, so a
  model can learn it in a few steps. The rehearsal (pca_jax.rehearsal) runs a config on it with
  the real dataset's class count and class sizes; nothing is held in memory but the labels."""

  def __init__(self, counts, image_size: int, seed: int = 0, name: str = "synthetic",
               class_names: Sequence[str] | None = None):
    counts = np.asarray(counts, np.int64)
    if counts.ndim != 1 or counts.size == 0 or counts.min() < 1:
      raise DataError(f"synthetic data needs >= 1 example in every class, got counts {counts}")
    self._labels = np.repeat(np.arange(len(counts)), counts)
    self.image_size, self.seed, self.name = int(image_size), int(seed), name
    self.class_names = list(class_names) if class_names is not None else \
        [f"class_{c:04d}" for c in range(len(counts))]
    palette = np.random.default_rng(1_000_003 + len(counts))
    self._colours = palette.integers(40, 216, (len(counts), 3))
    self._periods = palette.integers(2, max(3, self.image_size // 2) + 1, len(counts))

  num_classes = property(lambda self: len(self.class_names))
  labels = property(lambda self: self._labels)

  def __len__(self):
    return len(self._labels)

  def read(self, i, min_side: int = 0):
    del min_side
    i = int(i)
    c = int(self._labels[i])
    rng = np.random.default_rng((self.seed, i))
    s = self.image_size
    stripes = (np.arange(s) // self._periods[c]) % 2
    image = self._colours[c] * (0.6 + 0.4 * stripes[:, None, None]) + rng.normal(0, 24, (s, s, 3))
    return np.clip(image, 0, 255).astype(np.uint8), c

  def __getitem__(self, i):
    return self.read(i)


class ImageFolderSource:
  """root/<class>/<image> trees (torchvision ImageFolder order: sorted class names, sorted files)."""

  def __init__(self, root: str | os.PathLike, skip_corrupt: bool = False):
    self.root = fs.path(root)
    self._remote = fs.is_remote(self.root)
    if not self.root.is_dir():
      raise DataError(f"image folder {self.root} does not exist; pass --config.data.data_dir=<dir "
                      "with one sub-folder per class>")
    classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
      raise DataError(f"image folder {self.root} has no class sub-folders; expected "
                      f"{self.root}/<class_name>/<image>.jpg")
    files, labels = [], []
    for c, name in enumerate(classes):
      found = [p for p in fs.files_under(self.root / name) if p.suffix.lower() in IMAGE_EXTENSIONS]
      if not found:
        raise DataError(f"class folder {self.root / name} has no images ({', '.join(IMAGE_EXTENSIONS)})")
      files += found
      labels += [c] * len(found)
    self.skipped: list[str] = []
    if skip_corrupt:
      ok = []
      for f in files:
        try:
          self._decode(f)
          ok.append(True)
        except DataError:
          ok.append(False)
          self.skipped.append(str(f))
      files = [f for f, k in zip(files, ok) if k]
      labels = [l for l, k in zip(labels, ok) if k]
      counts = np.bincount(labels, minlength=len(classes))
      if (counts == 0).any():
        raise DataError(f"class {classes[int(np.argmin(counts))]!r} has no readable images")
    self.files, self._labels = files, np.asarray(labels, np.int64)
    self.class_names, self.name = classes, f"imagefolder:{self.root}"

  num_classes = property(lambda self: len(self.class_names))
  labels = property(lambda self: self._labels)

  def __len__(self):
    return len(self.files)

  def _decode(self, f, min_side: int = 0) -> np.ndarray:
    """Local files are opened by path; objects in a store are read whole, then decoded."""
    return decode_image(f.read_bytes() if self._remote else os.fspath(f), str(f), min_side)

  def read(self, i, min_side: int = 0):
    return self._decode(self.files[i], min_side), int(self._labels[i])

  def __getitem__(self, i):
    return self.read(i)


TFDS_HELP = ("prepare it once with `tfds build {name} --data_dir={data_dir} "
             "--file_format=array_record` (ImageNet: first put ILSVRC2012_img_train.tar and "
             "ILSVRC2012_img_val.tar in {data_dir}/downloads/manual/), then pass "
             "--config.data.data_dir={data_dir}")


class TfdsSource:
  """A TFDS dataset prepared in ArrayRecord format, read with `tfds.data_source` (no TensorFlow)."""

  def __init__(self, name: str, split: str, data_dir: str | None = None,
               image_key: str = "image", label_key: str = "label"):
    import tensorflow_datasets as tfds

    if data_dir and not fs.path(data_dir).is_dir():
      raise DataError(f"TFDS data_dir {data_dir} does not exist; " +
                      TFDS_HELP.format(name=name, data_dir=data_dir))
    try:
      self._ds = tfds.data_source(name, split=split, data_dir=data_dir)
    except Exception as e:  # tfds raises several types (AssertionError, DatasetNotFoundError, ...)
      msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise DataError(f"TFDS dataset {name!r} split {split!r} is not available ({msg}); " +
                      TFDS_HELP.format(name=name, data_dir=data_dir or "~/tensorflow_datasets")) from None
    self._tfds, self._data_dir = tfds, data_dir
    self.name, self.split = f"tfds:{name}/{split}", split
    self._tfds_name = name
    self.image_key, self.label_key = image_key, label_key
    feature = self._ds.dataset_info.features[label_key]
    self.class_names = list(feature.names)
    self._labels = None
    self._skip_decoding: tuple[Any, bool] | None = None  # (source or None, gives bytes), made once

  num_classes = property(lambda self: len(self.class_names))

  def _encoded(self) -> tuple[Any, bool]:
    """(the data source with image SkipDecoding, whether its images are encoded bytes), or (None,
    False) where tfds cannot give one (mock data must encode images). Labels read through it
    decode no image; `read` decodes its bytes itself (simplejpeg, DCT scaling with min_side).
    Made on first use (reader threads may each make one: same result)."""
    if self._skip_decoding is None:
      found: tuple[Any, bool] = (None, False)
      try:
        fast = self._tfds.data_source(self._tfds_name, split=self.split, data_dir=self._data_dir,
                                      decoders={self.image_key: self._tfds.decode.SkipDecoding()})
        first = fast[0] if len(fast) else None
        if first is not None and first[self.label_key] is not None:
          found = (fast, isinstance(first[self.image_key], bytes))
      except Exception:  # e.g. mock data, which must encode images; fall back to full decoding
        pass
      self._skip_decoding = found
    return self._skip_decoding

  @property
  def labels(self) -> np.ndarray:
    """All labels, read once. Uses image SkipDecoding when available (no JPEG decoding)."""
    if self._labels is None:
      fast = self._encoded()[0]
      ds = self._ds if fast is None else fast
      labels = np.fromiter((int(ds[i][self.label_key]) for i in range(len(ds))), np.int64,
                           count=len(ds))
      _check_labels(labels, self.num_classes, self.name)
      self._labels = labels
    return self._labels

  def __len__(self):
    return len(self._ds)

  def read(self, i, min_side: int = 0):
    fast, gives_bytes = self._encoded()
    ex = (fast if gives_bytes else self._ds)[i]
    img = ex[self.image_key]
    img = (decode_image(img, f"{self.name}[{i}]", min_side) if isinstance(img, bytes)
           else to_rgb_uint8(img))
    label = int(ex[self.label_key])
    if not 0 <= label < self.num_classes:
      raise DataError(f"{self.name}[{i}]: label {label} out of range [0, {self.num_classes})")
    return img, label

  def __getitem__(self, i):
    return self.read(i)
