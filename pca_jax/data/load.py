"""Which source a config's data block names, opened for a split, and the checks around it.

`load_source(data_config, split)` builds the source of `data.source` (pca_jax.data.sources: demo,
TFDS, ImageFolder, synthetic; pca_jax.data.parquet: a Hugging Face dataset directory);
`check_data_block` checks the block before anything runs, and `check_same_classes` that the eval
split numbers its classes like the train split.
"""

from __future__ import annotations

from typing import Any, Sequence

from pca_jax import fs
from pca_jax.data.sources import (DataError, ImageFolderSource, SyntheticSource, TfdsSource,
                                  demo_source)

SOURCES = ("demo", "tfds", "imagefolder", "parquet", "synthetic")


def check_data_block(data) -> None:
  """The data block: a known source with what it needs, sizes and fractions in range."""
  from pca_jax.config import check_choice, check_number, check_positive_int, check_prefetch_mb
  check_choice("data.source", data.source, SOURCES)
  check_positive_int("data.image_size", data.image_size)
  check_prefetch_mb("data", data.get("prefetch_mb", 1024))
  check_number("data.eval_crop_fraction", data.eval_crop_fraction, lambda v: 0 < v <= 1,
               "in (0, 1]")
  if data.source == "imagefolder" and not data.data_dir:
    raise ValueError("data.source='imagefolder' needs --config.data.data_dir=<root with "
                     f"{data.train_split}/ and {data.eval_split}/ class folders>")
  if data.source == "parquet" and not data.data_dir:
    raise ValueError("data.source='parquet' needs --config.data.data_dir=<a Hugging Face "
                     f"dataset directory with data/{data.train_split}-*.parquet and "
                     f"data/{data.eval_split}-*.parquet>")


def split_class_names(data_config: Any, split: str) -> list[str]:
  """The class names of a split, cheaply: an ImageFolder's sorted class folders (no file
  listing), any other source's own names."""
  if data_config.source == "imagefolder":
    root = fs.join(data_config.data_dir, split)
    if root.is_dir():
      return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
  if data_config.source == "parquet":
    from pca_jax.data.parquet import class_names_of
    return class_names_of(data_config.data_dir, split, data_config.get("label_column", ""))
  return list(load_source(data_config, split).class_names)


def match_eval_classes(source: Any, train_names: Sequence[str]) -> None:
  """A split numbered by bare class ids (a parquet label column without ClassLabel names) knows
  only its largest id: it takes the train split's class count when its ids fit in it."""
  if getattr(source, "has_class_names", True) or len(source.class_names) > len(train_names):
    return
  if list(train_names[:len(source.class_names)]) == list(source.class_names):
    source.class_names = list(train_names)


def check_same_classes(train_names: Sequence[str], eval_names: Sequence[str], train_split: str,
                       eval_split: str) -> None:
  """The eval split numbers its labels like the train split: the same class names in the same
  order, else DataError naming the first difference (an ImageFolder split missing one class
  folder would shift every later label by one, and every accuracy would be against wrong
  labels)."""
  train_names, eval_names = list(train_names), list(eval_names)
  if train_names == eval_names:
    return
  missing = [n for n in train_names if n not in set(eval_names)]
  extra = [n for n in eval_names if n not in set(train_names)]
  if missing or extra:
    what = (f"class {missing[0]!r} of the {train_split} split is missing from it" if missing else
            f"it has class {extra[0]!r}, which the {train_split} split has not")
    raise DataError(f"the {eval_split} split has {len(eval_names)} classes and the {train_split} "
                    f"split {len(train_names)}: {what} ({len(missing)} missing, {len(extra)} "
                    "extra); both splits need the same classes, or every label after the first "
                    "difference is shifted")
  i = next(k for k, (a, b) in enumerate(zip(train_names, eval_names)) if a != b)
  raise DataError(f"class {i} is {train_names[i]!r} in the {train_split} split but "
                  f"{eval_names[i]!r} in the {eval_split} split; both splits must number their "
                  "classes in the same order")


def load_source(data_config: Any, split: str | None = None):
  """Builds the source named by `data_config.source` for `split` (default: the train split).

  Fields used: source (SOURCES), train_split, tfds_name, data_dir (ImageFolder: root holding one
  folder per split; parquet: a Hugging Face dataset directory, data/<split>-*.parquet),
  image_column / label_column (parquet), skip_corrupt, demo_image_size, synthetic.
  """
  kind = data_config.source
  split = split or data_config.train_split
  if kind == "demo":
    return demo_source(split, image_size=data_config.get("demo_image_size", 16))
  if kind == "tfds":
    return TfdsSource(data_config.tfds_name, split, data_config.get("data_dir") or None)
  if kind == "imagefolder":
    if not data_config.get("data_dir"):
      raise DataError("data.source='imagefolder' needs --config.data.data_dir=<root with "
                      f"{split}/<class>/<image> folders>")
    return ImageFolderSource(fs.join(data_config.data_dir, split),
                             skip_corrupt=data_config.get("skip_corrupt", False))
  if kind == "parquet":
    from pca_jax.data.parquet import ParquetSource
    return ParquetSource(data_config.data_dir, split, data_config.get("image_column", "image"),
                         data_config.get("label_column", ""))
  if kind == "synthetic":  # the rehearsal's stand-in for the real data (pca_jax.rehearsal)
    syn = data_config.synthetic
    counts = syn.counts if split == data_config.train_split else syn.eval_counts
    return SyntheticSource(counts, data_config.image_size, seed=int(split == data_config.eval_split),
                           name=f"synthetic({syn.of})/{split}")
  raise DataError(f"unknown data.source {kind!r}; choose one of {SOURCES}")
