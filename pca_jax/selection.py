"""Class-balanced selection of a fixed number of examples per class (the "Prune" of PCA)."""

from __future__ import annotations

import jax
import numpy as np

MODES = ("easy", "hard", "random")


def select_per_class(scores: np.ndarray | None,
                     labels: np.ndarray,
                     ipc: int,
                     mode: str = "easy",
                     key: jax.Array | None = None,
                     num_classes: int | None = None) -> np.ndarray:
  """Picks exactly `ipc` example indices from every class.

  Args:
    scores: [N] float, lower = easier (EL2N, entropy, forgetting count). Ignored for "random".
    labels: [N] int class ids.
    ipc: examples to keep per class (for PCA: IPC x cells of the mosaic grid).
    mode: "easy" = lowest scores first (reversed EL2N, the PCA default); "hard" = highest first
      (classic EL2N pruning); "random" = uniform without replacement using `key`.
    key: jax PRNG key, required for "random".
    num_classes: if given, every class 0..num_classes-1 must be present.

  Returns:
    [num_classes * ipc] int64 indices into the dataset, ordered by (class, rank): the first ipc
    belong to the smallest class id, easiest (or hardest / random order) first. Ties in score are
    broken by the smaller index.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D [N], got shape {labels.shape}")
  if mode not in MODES:
    raise ValueError(f"unknown selection mode {mode!r}; choose one of {MODES}")
  if not isinstance(ipc, (int, np.integer)) or ipc < 1:
    raise ValueError(f"ipc must be a positive integer, got {ipc!r}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
  if mode == "random":
    if key is None:
      raise ValueError("mode='random' needs a PRNG key: pass key=jax.random.key(seed)")
    scores = np.asarray(jax.random.uniform(key, (labels.shape[0],)))
  else:
    if scores is None:
      raise ValueError(f"mode={mode!r} needs scores; pass scores or use mode='random'")
    scores = np.asarray(scores, np.float64)
    if scores.shape != labels.shape:
      raise ValueError(f"scores shape {scores.shape} does not match labels shape {labels.shape}")
    bad = ~np.isfinite(scores)
    if bad.any():
      raise ValueError(f"scores contain {int(bad.sum())} NaN/inf values (first at index "
                       f"{int(np.flatnonzero(bad)[0])}); recompute or clean the scores")
  classes = np.unique(labels)
  if num_classes is not None:
    missing = sorted(set(range(num_classes)) - set(classes.tolist()))
    if missing:
      raise ValueError(f"class {missing[0]} has 0 examples but ipc={ipc} were requested "
                       f"({len(missing)} classes empty); lower ipc or fix the dataset")
    classes = np.arange(num_classes)
  key_scores = -scores if mode == "hard" else scores
  chosen = []
  for c in classes:
    idx = np.flatnonzero(labels == c)
    if idx.size < ipc:
      raise ValueError(f"class {int(c)} has only {idx.size} examples but ipc={ipc} were requested; "
                       f"lower ipc to <= {idx.size}")
    order = np.lexsort((idx, key_scores[idx]))  # primary: score, secondary: index
    chosen.append(idx[order[:ipc]])
  return np.concatenate(chosen).astype(np.int64)
