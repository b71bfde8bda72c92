"""JPEG decoding at reduced size (sources.decode_image with min_side) and the sources' read()."""

import io

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from pca_jax.data import pipeline, sources
from pca_jax.data.sources import (ArraySource, DataError, ImageFolderSource, IndexSubset,
                                  decode_image, dct_scale, read_example)

# Tolerance of DCT-scaled decoding + resize against full decoding + the same resize (fit_image),
# per image, in levels of 255. Measured on the photo variants below at 24-112px: mean |diff| <=
# 1.42, 99th percentile <= 8, max <= 17; on the speed benchmark's upsampled photo crops up to
# 2.23 / 11 / 21. The difference is libjpeg's reduced IDCT filtering (not geometry: the resize
# reads the original's exact extent, see sources._resize_reduced).
MEAN_TOL, P99_TOL, MAX_TOL = 2.5, 16, 32


def _jpeg(image: np.ndarray, quality: int = 90, **save) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=quality, **save)
  return buf.getvalue()


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


@pytest.fixture(scope="module")
def photos():
  """The two photographs scikit-learn ships (427 x 640 RGB) and variants: portrait, odd offsets
  (sizes not multiples of the DCT block), a 500 x 375 downscale and an upsampled crop."""
  out = []
  for p in load_sample_images().images:
    out += [p, np.ascontiguousarray(p.transpose(1, 0, 2)), p[3:, 5:],
            np.asarray(Image.fromarray(p).resize((500, 375), Image.BICUBIC)),
            np.asarray(Image.fromarray(p[60:310, 150:483]).resize((500, 375), Image.BICUBIC))]
  return out


def test_dct_scale_is_the_largest_that_keeps_the_shorter_side():
  assert dct_scale(427, 640, 0) == 1  # no min_side: full size
  assert dct_scale(375, 500, 256) == 1  # 375 < 2 x 256
  assert dct_scale(375, 500, 128) == 2  # 188 x 250
  assert dct_scale(427, 640, 213) == 2 and dct_scale(427, 640, 214) == 1  # 427 >= 426, < 428
  assert dct_scale(640, 427, 64) == 4 and dct_scale(427, 640, 53) == 8
  assert dct_scale(4000, 3000, 224) == 8  # at most 1/8
  assert dct_scale(100, 7, 2) == 2  # the shorter side decides, portrait or landscape


@pytest.mark.parametrize("size,crop_fraction", [(112, 0.875), (56, 0.875), (32, 1.0), (24, 0.875)])
def test_scaled_decoding_is_close_to_full_decoding(photos, size, crop_fraction):
  min_side = pipeline.resize_side(size, crop_fraction)
  for photo in photos:
    data = _jpeg(photo)
    full = pipeline.fit_image(decode_image(data), size, crop_fraction).astype(int)
    reduced = decode_image(data, min_side=min_side)
    assert min(reduced.shape[:2]) == min_side  # already resized to the shorter side
    diff = np.abs(full - pipeline.fit_image(reduced, size, crop_fraction))
    assert diff.mean() <= MEAN_TOL and np.percentile(diff, 99) <= P99_TOL
    assert diff.max() <= MAX_TOL, (photo.shape, size, diff.mean(), diff.max())


def test_scaled_decoding_is_used_and_equals_pil(photos, monkeypatch):
  """simplejpeg decodes at 1/s (its output is the reduced size), with PIL's pixels: full-size
  decoding equals PIL's exactly, and so does the scaled one with PIL's Image.draft."""
  photo = photos[0]  # 427 x 640
  data = _jpeg(photo)
  shapes = []
  real = sources.simplejpeg.decode_jpeg

  def spy(*args, **kwargs):
    out = real(*args, **kwargs)
    shapes.append(out.shape)
    return out
  monkeypatch.setattr(sources.simplejpeg, "decode_jpeg", spy)
  with Image.open(io.BytesIO(data)) as im:
    pil_full = np.asarray(im.convert("RGB"))
  np.testing.assert_array_equal(decode_image(data), pil_full)
  assert shapes == [(427, 640, 3)]
  for min_side, scale, reduced in ((128, 2, (214, 320)), (64, 4, (107, 160)), (53, 8, (54, 80))):
    out = decode_image(data, min_side=min_side)
    assert shapes[-1] == reduced + (3,)  # decoded at 1/scale
    assert out.shape == sources.short_side_size(427, 640, min_side) + (3,) and out.dtype == np.uint8
    image, got_scale, full_hw = sources._decode_jpeg_turbo(data, min_side)
    pil_image, pil_scale, pil_full_hw = sources._decode_pil(data, min_side)  # Image.draft
    assert got_scale == pil_scale == scale and full_hw == pil_full_hw == (427, 640)
    np.testing.assert_array_equal(image, pil_image)
  assert decode_image(data, min_side=214).shape == (427, 640, 3)  # 427 < 2 x 214: full size
  # without simplejpeg, PIL's Image.draft gives the same result
  expected = decode_image(data, min_side=128)
  monkeypatch.setattr(sources, "simplejpeg", None)
  np.testing.assert_array_equal(decode_image(data, min_side=128), expected)


def test_other_formats_and_colour_spaces(photos):
  photo = photos[0]
  png = _png(photo)  # not a JPEG: full size, exact, whatever min_side
  np.testing.assert_array_equal(decode_image(png, min_side=64), photo)
  grey = photo[..., 1]
  for data in (_jpeg(grey), _png(grey)):  # greyscale: RGB with three equal channels
    out = decode_image(data, min_side=64)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
  assert decode_image(_jpeg(grey), min_side=64).shape == (64, 96, 3)  # scaled 1/4, resized
  np.testing.assert_array_equal(decode_image(_png(grey)), np.repeat(grey[..., None], 3, -1))
  cmyk = io.BytesIO()  # CMYK: simplejpeg declines, PIL decodes (and drafts) it
  Image.fromarray(photo).convert("CMYK").save(cmyk, format="JPEG", quality=90)
  with Image.open(io.BytesIO(cmyk.getvalue())) as im:
    expected = np.asarray(im.convert("RGB"))
  full = decode_image(cmyk.getvalue())
  np.testing.assert_array_equal(full, expected)
  reduced = decode_image(cmyk.getvalue(), min_side=100)
  assert reduced.shape == (100, 150, 3) and reduced.dtype == np.uint8
  diff = np.abs(pipeline.fit_image(full, 80, 0.8).astype(int) -
                pipeline.fit_image(reduced, 80, 0.8))
  assert diff.mean() <= MEAN_TOL


def test_corrupt_data_raises_data_error(photos, tmp_path):
  data = _jpeg(photos[0])
  for bad in (b"", b"not an image", data[:len(data) // 2], b"\xff\xd8\xff" + b"\0" * 64):
    for min_side in (0, 64):
      with pytest.raises(DataError, match="cannot decode image x.jpg.*skip_corrupt"):
        decode_image(bad, "x.jpg", min_side)
  (tmp_path / "t.jpg").write_bytes(data[:len(data) // 2])
  with pytest.raises(DataError, match="t.jpg"):
    decode_image(str(tmp_path / "t.jpg"), min_side=64)
  with pytest.raises(DataError, match="missing.jpg"):
    decode_image(str(tmp_path / "missing.jpg"))


def test_sources_read_with_min_side(photos, tmp_path):
  root = tmp_path / "train"
  for c in range(2):
    (root / f"c{c}").mkdir(parents=True)
    (root / f"c{c}" / "a.jpg").write_bytes(_jpeg(photos[c * 5]))
    (root / f"c{c}" / "b.png").write_bytes(_png(photos[c * 5 + 2]))
  src = ImageFolderSource(root)
  image, label = src.read(0, 64)
  assert image.shape == (64, 96, 3) and label == 0
  full, label = src.read(0)
  assert full.shape == (427, 640, 3) and label == 0
  np.testing.assert_array_equal(src[0][0], full)  # __getitem__ is read(i)
  np.testing.assert_array_equal(src.read(1, 64)[0], photos[2])  # PNG: full size, exact
  sub = IndexSubset(src, np.array([2, 0]))
  np.testing.assert_array_equal(sub.read(1, 64)[0], image)  # passes min_side through
  np.testing.assert_array_equal(sub[1][0], full)
  arrays = ArraySource(np.zeros((2, 300, 300, 3), np.uint8), np.array([0, 1]), ["a", "b"])
  assert arrays.read(1, 64)[0].shape == (300, 300, 3)  # decoded already: min_side ignored

  class Plain:  # any object with __getitem__ works with read_example, at full size
    def __getitem__(self, i):
      return src[i]
  np.testing.assert_array_equal(read_example(Plain(), 0, 64)[0], full)
  np.testing.assert_array_equal(read_example(src, 0, 64)[0], image)


def test_parquet_source_reads_with_min_side(photos, tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  from pca_jax.data.parquet import IMAGE_TYPE, ParquetSource
  (tmp_path / "data").mkdir()
  images = pa.StructArray.from_arrays([pa.array([_jpeg(photos[0]), _png(photos[2])], pa.binary()),
                                       pa.array(["0.jpg", "1.png"])], fields=list(IMAGE_TYPE))
  pq.write_table(pa.Table.from_arrays([images, pa.array([1, 0], pa.int64())],
                                      names=["image", "class_id"]),
                 tmp_path / "data" / "train-00000-of-00001.parquet")
  src = ParquetSource(tmp_path)
  assert src.read(0, 64)[0].shape == (64, 96, 3) and src.read(0, 64)[1] == 1
  assert src.read(0)[0].shape == (427, 640, 3) and src[0][0].shape == (427, 640, 3)
  np.testing.assert_array_equal(src.read(1, 64)[0], photos[2])
