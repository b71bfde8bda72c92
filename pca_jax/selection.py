"""Class-balanced selection of a fixed number of examples per class (the "Prune" of PCA).

`select_per_class` takes the easiest, the hardest or random examples of every class, or runs
Coverage-centric Coreset Selection (`ccs_per_class`, Zheng et al. 2023) inside every class; in
mode "easy" a difficulty window (`window_mask`) restricts it to a band of the easiest-first
ranking, taken easiest first or at random. `validation_split` holds out a class-stratified part of
a split (the tune stage's validation examples) and `select_from_pool` selects among the rest.
"""

from __future__ import annotations

import jax
import numpy as np

MODES = ("easy", "hard", "random", "ccs")
ORDERS = ("easy", "random")      # inside a difficulty window: easiest first, or uniformly at random
FULL_WINDOW = (0.0, 1.0)
TIE_TAG = 0x7469  # folded into the selection key for the draw that breaks ties in score


def tie_breaks(key: jax.Array | None, n: int) -> np.ndarray:
  """[n] float64: the secondary sort key of a ranking by score. With a key, a seeded uniform
  draw (integer scores such as forgetting counts tie massively; ranking ties by dataset index
  would pick by file order); without one, the index itself (deterministic, for callers that
  pass no key)."""
  if key is None:
    return np.arange(n, dtype=np.float64)
  return np.asarray(jax.random.uniform(jax.random.fold_in(key, TIE_TAG), (n,)), np.float64)


def check_window(window, field: str = "window") -> tuple[float, float]:
  """(lo, hi) as floats with 0 <= lo < hi <= 1, else a one-line ValueError naming `field`."""
  try:
    lo, hi = (float(w) for w in window)
    ok = not any(isinstance(w, bool) for w in window) and 0.0 <= lo < hi <= 1.0
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(f"{field}={tuple(window) if isinstance(window, (list, tuple)) else window!r} "
                     "is not a window of the easiest-first ranking; use (lo, hi) with "
                     "0 <= lo < hi <= 1, e.g. (0.0, 0.5) for the easiest half")
  return lo, hi


def check_ccs_fields(block: str, beta, strata) -> None:
  """CCS parameters of a config block: the hard cutoff beta in [0, 1) and the number of strata
  (an int >= 1)."""
  from pca_jax.config import is_int, is_number
  if not is_number(beta) or not 0 <= beta < 1:
    raise ValueError(f"{block}.ccs_beta must be a fraction in [0, 1) (the hardest part of each "
                     f"class dropped before stratifying), got {beta!r}")
  if not is_int(strata) or strata < 1:
    raise ValueError(f"{block}.ccs_strata must be a positive integer, got {strata!r}")


def check_select_block(config) -> None:
  """The select block: mode, budget, the score it ranks by, CCS, window and order."""
  from pca_jax.config import check_choice, check_positive_int
  from pca_jax.scoring import check_score_name
  select = config.select
  check_choice("select.mode", select.mode, MODES)
  check_positive_int("select.ipc", select.ipc)
  if select.score:
    check_score_name("select.score", select.score, config.score)
    if config.score.scores_path and select.mode != "random":
      raise ValueError(f"select.score={select.score!r} reads the score stage's own scores, but "
                       "score.scores_path is set; leave select.score empty to select by the "
                       "precomputed scores")
  check_ccs_fields("select", select.ccs_beta, select.ccs_strata)
  window = check_window(select.window, "select.window")
  check_choice("select.order", select.order, ORDERS)
  if select.mode != "easy" and (window != FULL_WINDOW or select.order != "easy"):
    raise ValueError(f"select.window={window} / select.order={select.order!r} refine "
                     f"select.mode='easy' (the easiest-first ranking); with "
                     f"select.mode={select.mode!r} leave them at (0.0, 1.0) and 'easy'")


def window_mask(n: int, window) -> np.ndarray:
  """Which ranks 0..n-1 of an easiest-first ranking of n examples the window (lo, hi) holds.

  Rank r (0 = easiest) is held when the middle of its quantile cell lies in [lo, hi):
  lo <= (r + 0.5) / n < hi. So (0, 1) holds every rank, adjacent windows (a, b) and (b, c)
  split a ranking with no overlap and no gap, and a window holds about (hi - lo) * n ranks
  (round((hi - lo) * n) up to one). The division is correctly rounded, so a decimal bound that
  is exactly a cell middle (0.25 with n = 10: rank 2) is compared exactly. Returns [n] bool.
  """
  lo, hi = check_window(window)
  middle = (np.arange(n) + 0.5) / n
  return (middle >= lo) & (middle < hi)


def window_count(n: int, window) -> int:
  """How many of a class's n ranked examples the window holds (see window_mask)."""
  return int(window_mask(n, window).sum())


def _check_labels(labels: np.ndarray, ipc: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D [N], got shape {labels.shape}")
  if not isinstance(ipc, (int, np.integer)) or ipc < 1:
    raise ValueError(f"ipc must be a positive integer, got {ipc!r}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
  return labels


def _check_scores(scores: np.ndarray | None, labels: np.ndarray, mode: str) -> np.ndarray:
  if scores is None:
    raise ValueError(f"mode={mode!r} needs scores; pass scores or use mode='random'")
  scores = np.asarray(scores, np.float64)
  if scores.shape != labels.shape:
    raise ValueError(f"scores shape {scores.shape} does not match labels shape {labels.shape}")
  bad = ~np.isfinite(scores)
  if bad.any():
    raise ValueError(f"scores contain {int(bad.sum())} NaN/inf values (first at index "
                     f"{int(np.flatnonzero(bad)[0])}); recompute or clean the scores")
  return scores


def _classes(labels: np.ndarray, ipc: int, num_classes: int | None) -> np.ndarray:
  """The class ids to select from, each with >= ipc examples (else a ValueError naming it)."""
  classes, counts = np.unique(labels, return_counts=True)
  if num_classes is not None:
    missing = sorted(set(range(num_classes)) - set(classes.tolist()))
    if missing:
      raise ValueError(f"class {missing[0]} has 0 examples but ipc={ipc} were requested "
                       f"({len(missing)} classes empty); lower ipc or fix the dataset")
    in_range = (classes >= 0) & (classes < num_classes)  # others are not selected from
    classes, counts = classes[in_range], counts[in_range]
  small = np.flatnonzero(counts < ipc)
  if small.size:
    c, count = int(classes[small[0]]), int(counts[small[0]])
    raise ValueError(f"class {c} has only {count} examples but ipc={ipc} were requested; "
                     f"lower ipc to <= {count}")
  return classes


def select_per_class(scores: np.ndarray | None,
                     labels: np.ndarray,
                     ipc: int,
                     mode: str = "easy",
                     key: jax.Array | None = None,
                     num_classes: int | None = None,
                     *,
                     ccs_beta: float = 0.1,
                     ccs_strata: int = 50,
                     window=FULL_WINDOW,
                     order: str = "easy") -> np.ndarray:
  """Picks exactly `ipc` example indices from every class.

  Args:
    scores: [N] float, lower = easier (EL2N, entropy, forgetting count, negated AUM). Ignored for
      "random".
    labels: [N] int class ids.
    ipc: examples to keep per class (for PCA: IPC x cells of the mosaic grid).
    mode: "easy" = lowest scores first (reversed EL2N, the PCA default); "hard" = highest first
      (classic EL2N pruning); "random" = uniform without replacement using `key`; "ccs" =
      coverage-centric coreset selection within each class (`ccs_per_class`, using `key`).
    key: jax PRNG key, required for "random" and "ccs"; in "easy" / "hard" it breaks ties in
      score (tie_breaks; without a key ties go to the smaller index).
    num_classes: if given, every class 0..num_classes-1 must be present.
    ccs_beta, ccs_strata: "ccs" only, see `ccs_per_class` (beta, strata).
    window: "easy" only: (lo, hi), the band of every class's easiest-first ranking to select
      from (`window_mask`: rank r is held when lo <= (r + 0.5) / n_c < hi); (0, 1) = all,
      (0, 0.5) = the easiest half, (0.25, 0.75) = the middle half.
    order: "easy" only: "easy" = the easiest `ipc` of the window; "random" = `ipc` of the window
      uniformly at random (without replacement, using `key`). With the default window and order,
      "easy" is the classic easiest-first selection. The other modes take neither: their window
      must stay (0, 1) and their order "easy" (a ValueError otherwise).

  Returns:
    [num_classes * ipc] int64 indices into the dataset, ordered by (class, rank): the first ipc
    belong to the smallest class id, easiest (or hardest / random order) first. Ties in score are
    broken by a seeded draw from `key` (by the smaller index without one). order="random" keeps
    the order of the random draw.
  """
  window = _check_mode(mode, window, order)
  if mode == "ccs":
    return ccs_per_class(scores, labels, ipc, key, beta=ccs_beta, strata=ccs_strata,
                         num_classes=num_classes)
  labels = _check_labels(labels, ipc)
  if (mode == "random" or order == "random") and key is None:
    raise ValueError(f"{'mode' if mode == 'random' else 'order'}='random' needs a PRNG key: pass "
                     "key=jax.random.key(seed)")
  if mode == "random":
    scores = np.asarray(jax.random.uniform(key, (labels.shape[0],)))
  else:
    scores = _check_scores(scores, labels, mode)
  draw = np.asarray(jax.random.uniform(key, (labels.shape[0],))) if order == "random" else None
  key_scores = -scores if mode == "hard" else scores
  ties = tie_breaks(key, labels.shape[0])
  return np.concatenate([_rank_class(int(c), np.flatnonzero(labels == c), key_scores, ties, ipc,
                                     window, draw)
                         for c in _classes(labels, ipc, num_classes)]).astype(np.int64)


def _check_mode(mode: str, window, order: str) -> tuple[float, float]:
  """The mode, window and order of select_per_class, checked; returns the window as floats."""
  if mode not in MODES:
    raise ValueError(f"unknown selection mode {mode!r}; choose one of {MODES}")
  window = check_window(window)
  if order not in ORDERS:
    raise ValueError(f"unknown selection order {order!r}; choose one of {ORDERS}")
  if mode != "easy" and (window != FULL_WINDOW or order != "easy"):
    raise ValueError(f"select window {window} / order {order!r} refine mode 'easy' (the "
                     f"easiest-first ranking); mode={mode!r} takes neither: leave window=(0.0, "
                     "1.0) and order='easy', or use mode='easy'")
  return window


def _rank_class(c: int, idx: np.ndarray, key_scores: np.ndarray, ties: np.ndarray, ipc: int,
                window, draw: np.ndarray | None) -> np.ndarray:
  """The ipc examples of class c (dataset indices idx) that select_per_class keeps: ranked by
  key_scores (ties by `ties`), cut to the window, in the random order of `draw` if given."""
  ranked = idx[np.lexsort((ties[idx], key_scores[idx]))]  # primary: score, secondary: ties
  if window != FULL_WINDOW:
    ranked = ranked[window_mask(len(ranked), window)]
    if len(ranked) < ipc:
      raise ValueError(f"class {c} has only {len(ranked)} of its {len(idx)} examples in the "
                       f"window {window} but ipc={ipc} were requested; widen the window or lower "
                       "ipc")
  if draw is not None:
    ranked = ranked[np.argsort(draw[ranked], kind="stable")]
  return ranked[:ipc]


def held_out_counts(counts: np.ndarray, fraction: float) -> np.ndarray:
  """Examples `validation_split` holds out of classes of `counts` examples: floor(fraction * n),
  at least 1 (0 for an empty class). counts [C] int -> [C] int64."""
  counts = np.asarray(counts, np.int64)
  return np.where(counts > 0, np.maximum(1, np.floor(fraction * counts).astype(np.int64)), 0)


def validation_split(labels: np.ndarray, fraction: float, key: jax.Array) -> np.ndarray:
  """A class-stratified validation split: `held_out_counts` examples of every class (the same
  fraction of each), uniformly at random with `key`.

  labels: [N] int. Returns the held-out indices, sorted, int64 [sum of held_out_counts]. Used by
  the tune stage to choose settings without reading the test split.
  """
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or \
      not 0 < fraction < 1:
    raise ValueError(f"validation fraction must be in (0, 1), got {fraction!r}")
  labels = np.asarray(labels)
  draw = np.asarray(jax.random.uniform(key, (labels.shape[0],)))
  classes, counts = np.unique(labels, return_counts=True)
  out = []
  for c, k in zip(classes, held_out_counts(counts, fraction)):
    idx = np.flatnonzero(labels == c)
    out.append(idx[np.argsort(draw[idx], kind="stable")[:k]])
  return np.sort(np.concatenate(out)).astype(np.int64) if out else np.zeros(0, np.int64)


def select_from_pool(pool: np.ndarray | None, scores: np.ndarray | None, labels: np.ndarray,
                     ipc: int, mode: str = "easy", key: jax.Array | None = None,
                     num_classes: int | None = None, **kwargs) -> np.ndarray:
  """`select_per_class` over the examples `pool` only (e.g. a train split minus its validation
  split): the ranking, windows and random draws see only those examples. pool: [P] int dataset
  indices or None (every example); scores, labels: [N] over the whole dataset. Returns dataset
  indices, ordered as select_per_class orders them."""
  if pool is None:
    return select_per_class(scores, labels, ipc, mode, key, num_classes, **kwargs)
  pool = np.asarray(pool, np.int64)
  sub = select_per_class(None if scores is None else np.asarray(scores)[pool],
                         np.asarray(labels)[pool], ipc, mode, key, num_classes, **kwargs)
  return pool[sub]


def select_by_block(select, scores: np.ndarray | None, labels: np.ndarray, per_class: int,
                    key: jax.Array, num_classes: int, pool: np.ndarray | None = None) -> np.ndarray:
  """The select stage's selection under a config's select block (mode, window, order, CCS
  settings) among the examples `pool` (None: all): [num_classes * per_class] source indices by
  class. The tune stage's candidates call it too, so the chosen candidate's set is the select
  stage's."""
  return select_from_pool(pool, scores, labels, per_class, select.mode, key=key,
                          num_classes=num_classes, ccs_beta=select.ccs_beta,
                          ccs_strata=select.ccs_strata,
                          window=tuple(float(w) for w in select.window), order=select.order)


# ------------------------------------------------------------------------------------------- CCS
def ccs_strata(scores: np.ndarray, strata: int) -> np.ndarray:
  """The stratum of every score: `strata` equal-width bins from the minimum to the maximum.

  scores: [N] float. Returns [N] int64 in [0, strata). As in the original `stratified_sampling`,
  bin k = [min + k*step, min + (k+1)*step) with step = (hi - min) / strata and hi slightly above
  the maximum, so that the maximum falls in the last bin: hi = max * 1.0001 for a positive maximum
  (the original rule), max + 1e-4 * |max| for a negative one (where the original's max * 1.0001
  would fall below the maximum and drop it), and max + 1e-4 * (max - min) for a maximum of 0. All
  scores equal: every example in bin 0.
  """
  s = np.asarray(scores, np.float64)
  if s.size == 0:
    return np.zeros(0, np.int64)
  lo, top = float(s.min()), float(s.max())
  if lo == top:
    return np.zeros(s.shape, np.int64)
  hi = top * 1.0001 if top > 0 else top - 1e-4 * top  # the original rule, mirrored below 0
  if hi <= top:  # a maximum of 0
    hi = top + 1e-4 * (top - lo)
  edges = lo + np.arange(strata + 1) * ((hi - lo) / strata)
  # edges[k] <= s < edges[k + 1]; clipped against rounding at the two ends
  return np.clip(np.searchsorted(edges, s, side="right") - 1, 0, strata - 1).astype(np.int64)


def ccs_budgets(counts: np.ndarray, budget: int) -> np.ndarray:
  """The original `bin_allocate`: how many examples to take from each stratum.

  counts: [S] int, examples per stratum; budget: examples to take in all. The strata are visited
  from the smallest to the largest (a stable sort: equal counts in stratum order); the i-th visited
  takes min(its count, rest // (S - i)) and rest shrinks by that, so small strata are taken whole
  and the rest is spread evenly. Returns [S] int64, each <= its count, summing to
  min(budget, counts.sum()).
  """
  counts = np.asarray(counts, np.int64)
  out = np.zeros_like(counts)
  rest = int(budget)
  order = np.argsort(counts, kind="stable")
  for i, k in enumerate(order):
    take = min(int(counts[k]), rest // (len(counts) - i))
    out[k] = take
    rest -= take
  return out


def ccs_per_class(scores: np.ndarray,
                  labels: np.ndarray,
                  per_class: int,
                  key: jax.Array,
                  *,
                  beta: float = 0.1,
                  strata: int = 50,
                  num_classes: int | None = None) -> np.ndarray:
  """Coverage-centric Coreset Selection (Zheng et al. 2023), run inside every class.

  CCS keeps examples of every difficulty instead of only the easiest or the hardest: in each class
  it drops the hardest floor(beta * n_c) examples (the highest scores: likely mislabeled), splits
  the score range of the rest into `strata` equal-width bins (`ccs_strata`), gives each bin a
  budget with `ccs_budgets` (small bins whole, the rest evenly) and draws each bin's budget
  uniformly at random. Class-balanced, unlike the original (which samples the whole dataset at
  once), because pca_jax compares methods at a fixed number of images per class. The hard cutoff
  drops by the same `scores` the strata are drawn from; the original always drops by AUM
  (its `mis_key`, accumulated margin) whatever score it stratifies. The two agree at the
  benchmark's default (benchmark.ccs_score = "aum"); with another score this cutoff follows that
  score.

  Exact counts: when the kept part of a class has fewer than per_class examples, all of it is
  taken and the rest comes from the dropped part, easiest first; if the budgets ever left room
  (they do not when the kept part is large enough), it is filled at random from the kept examples
  not yet chosen.

  Args:
    scores: [N] float, lower = easier (e.g. the negated AUM, EL2N, forgetting count).
    labels: [N] int class ids.
    per_class: examples per class.
    key: jax PRNG key; class c draws with jax.random.fold_in(key, c) (classes are independent).
    beta: the hard cutoff, a fraction in [0, 1).
    strata: number of score bins per class, >= 1.
    num_classes: if given, every class 0..num_classes-1 must be present.

  Returns:
    [num_classes * per_class] int64 dataset indices ordered by class, and within a class by score
    (easiest first, ties by a seeded draw: `tie_breaks`), like `select_per_class`.
  """
  labels = _check_labels(labels, per_class)
  scores = _check_scores(scores, labels, "ccs")
  if key is None:
    raise ValueError("mode='ccs' needs a PRNG key: pass key=jax.random.key(seed)")
  if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 1:
    raise ValueError(f"ccs beta must be a fraction in [0, 1), got {beta!r}")
  if isinstance(strata, bool) or not isinstance(strata, (int, np.integer)) or strata < 1:
    raise ValueError(f"ccs strata must be a positive integer, got {strata!r}")
  ties = tie_breaks(key, labels.shape[0])
  chosen = [_ccs_class(np.flatnonzero(labels == c), scores, ties, per_class,
                       jax.random.fold_in(key, int(c)), beta, strata)
            for c in _classes(labels, per_class, num_classes)]
  return np.concatenate(chosen).astype(np.int64)


def _ccs_class(idx: np.ndarray, scores: np.ndarray, ties: np.ndarray, per_class: int,
               key: jax.Array, beta: float, strata: int) -> np.ndarray:
  """CCS inside one class (dataset indices idx): see ccs_per_class. Returns per_class indices,
  easiest first."""
  idx = idx[np.lexsort((ties[idx], scores[idx]))]  # easiest first, ties by the seeded draw
  keep = idx[:idx.size - int(beta * idx.size)]  # the hard cutoff
  if keep.size <= per_class:
    return idx[:per_class]  # all kept, then the dropped ones easiest first
  # drawn at the next power of two: one compiled shape for many class sizes (ImageNet)
  draw = 1 << (keep.size - 1).bit_length()
  u = np.asarray(jax.random.uniform(key, (draw,)))[:keep.size]
  bins = ccs_strata(scores[keep], strata)
  budgets = ccs_budgets(np.bincount(bins, minlength=strata), per_class)
  take = np.zeros(keep.size, bool)
  for k in np.flatnonzero(budgets):
    members = np.flatnonzero(bins == k)
    take[members[np.argsort(u[members], kind="stable")[:budgets[k]]]] = True
  short = per_class - int(take.sum())
  if short > 0:  # budgets that left room: the kept examples not chosen, at random
    rest = np.flatnonzero(~take)
    take[rest[np.argsort(u[rest], kind="stable")[:short]]] = True
  return keep[take]  # keep is in score order, so the chosen ones are too
