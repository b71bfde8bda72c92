"""Per-example difficulty scores: EL2N, predictive entropy, forgetting counts, AUM.

`el2n` and `entropy` are jitted array functions. `score_dataset` streams a dataset (an iterable of
batches, so a 1.28M-image ImageNet never sits in memory) through a jitted eval-mode forward pass of
each of K models and returns per-model scores; `el2n_scores` averages EL2N over the K models, as
data_diet / the PCA paper do with several early-trained models.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pca_jax import parallel


@jax.jit
def el2n(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """EL2N = ||softmax(logits) - onehot(labels)||_2. logits [N, C], labels [N] int -> [N] float32."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  return jnp.linalg.norm(probs - onehot, axis=-1)


@jax.jit
def entropy(logits: jax.Array) -> jax.Array:
  """Predictive entropy -sum p log p in nats. logits [N, C] -> [N] float32."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Whether the top-1 prediction is right. [N, C], [N] -> [N] bool."""
  return jnp.argmax(logits, axis=-1) == labels


@jax.jit
def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The AUM margin (Pleiss et al. 2020): logit of the label - the largest other logit.

  logits [N, C] (C >= 2), labels [N] int -> [N] float32; > 0 iff the label wins top-1. Logits,
  not probabilities, as in the paper: the margin of an example the model gets wrong is negative.
  """
  logits = logits.astype(jnp.float32)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  assigned = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
  largest_other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
  return assigned - largest_other


@dataclasses.dataclass(frozen=True)
class Score:
  """A per-example difficulty score (lower = easier). `fn` computes it from one eval-mode forward
  pass, (logits [N, C], labels [N]) -> [N]; None means it is derived from the scoring models'
  training history instead (forgetting events, AUM margins: recorded after every epoch);
  `requires` names the score config flag that must be on for the score stage to compute it."""
  fn: Callable[[jax.Array, jax.Array], jax.Array] | None
  doc: str
  requires: str | None = None


# The one registry of scores. The score stage writes scores_<name>.npy for every entry (forward
# scores always, history scores when asked for), `score.kind` selects by any forward score, and the
# DC benchmark offers <name>_easy / <name>_hard for every entry: add a score here and nowhere else.
SCORES: Mapping[str, Score] = {
    "el2n": Score(lambda logits, labels: el2n(logits, labels),
                  "||softmax - onehot||_2 (Paul et al., data_diet)"),
    "entropy": Score(lambda logits, labels: entropy(logits), "predictive entropy"),
    "forgetting": Score(None, "forgetting events between epochs (Toneva et al.)",
                        requires="forgetting"),
    # NEGATED area under the margin, so that lower = easier as for every score here (the paper's
    # AUM is high for easy and low for hard / mislabeled examples): see aum_from_margins.
    "aum": Score(None, "negated area under the margin, -mean over epochs of (label logit - "
                 "largest other logit) (Pleiss et al.)", requires="aum"),
}
SELECTION_SCORES = tuple(name for name, s in SCORES.items() if s.fn is not None)

SCORE_FNS: Mapping[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    **{name: s.fn for name, s in SCORES.items() if s.fn is not None},
    "correct": lambda logits, labels: correct(logits, labels).astype(jnp.float32),
    "margin": lambda logits, labels: margin(logits, labels),
}


def check_score_name(field: str, name: str, score_config) -> None:
  """A score some stage reads (select.score, benchmark.ccs_score): a SCORES name whose config
  flag (if any) is on in the score block."""
  if name not in SCORES:
    raise ValueError(f"unknown {field} {name!r}; choose one of {tuple(SCORES)}")
  flag = SCORES[name].requires
  if flag and not score_config[flag]:
    raise ValueError(f"{field}={name!r} needs --config.score.{flag}=True (the score stage "
                     f"computes {name} only then)")


def forgetting_counts(correct_history: np.ndarray) -> np.ndarray:
  """Forgetting events per example (Toneva et al.): transitions correct -> incorrect.

  correct_history: [T, N] bool, whether example n was classified correctly at presentation t.
  Examples never learned (never correct) get T (the maximum), as in the original paper.
  Returns [N] float32.
  """
  h = np.asarray(correct_history, bool)
  if h.ndim != 2:
    raise ValueError(f"correct_history must be [T, N], got shape {h.shape}")
  forgets = np.sum(h[:-1] & ~h[1:], axis=0).astype(np.float32)
  never = ~h.any(axis=0)
  forgets[never] = float(h.shape[0])
  return forgets


def aum_from_margins(margins: np.ndarray) -> np.ndarray:
  """The score `aum`: minus the area under the margin (Pleiss et al. 2020), from one model.

  margins: [T, N] float, margin(logits, labels) of example n after epoch t. Returns [N] float32
  = -mean over the T epochs, NEGATED so that lower = easier like every pca_jax score (a high AUM
  = an easy example, a low or negative one = hard or mislabeled). The score stage averages it over
  the K scoring models. Unlike the paper, which records each example's margin on its training-mode
  (augmented, dropout/BatchNorm-batch-statistics) forward pass when the example is seen during the
  epoch, the margins here come from one eval-mode pass over the full train set after every epoch
  (the pass that also gives the forgetting counts' correctness): the model of the end of the epoch,
  without augmentation, the same for every example.
  """
  m = np.asarray(margins, np.float32)
  if m.ndim != 2 or m.shape[0] < 1:
    raise ValueError(f"margins must be [T, N] with T >= 1 epochs, got shape {m.shape}")
  return -m.mean(axis=0)


def _as_batches(data: Any, labels: Any, batch_size: int) -> Iterable[dict]:
  """Turns in-memory arrays into padded, masked, indexed batches; passes iterables through."""
  if labels is None:
    return data
  images = np.asarray(data)
  labels = np.asarray(labels)
  if len(images) != len(labels):
    raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) differ in length")

  def gen():
    n = len(images)
    for start in range(0, n, batch_size):
      idx = np.arange(start, start + batch_size)
      mask = idx < n
      idx = np.where(mask, idx, n - 1)
      yield {"image": images[idx], "label": labels[idx], "index": np.where(mask, idx, -1),
             "mask": mask}
  return gen()


def score_dataset(apply_fn: Callable[[Any, jax.Array], jax.Array],
                  variables_list: Sequence[Any],
                  data: Any,
                  labels: np.ndarray | None = None,
                  *,
                  num_examples: int | None = None,
                  scores: Sequence[str] = ("el2n", "entropy"),
                  batch_size: int = 256,
                  mesh: jax.sharding.Mesh | None = None,
                  progress: Callable[[int], None] | None = None,
                  model_axis: str = "vmap") -> dict[str, np.ndarray]:
  """Scores every example with each of K models, in one pass over the data.

  Every batch goes through the K models in ONE jitted call (their variables stacked on a model
  axis, parallel.map_models by model_axis), and its scores are copied to the host while the next
  batch runs: the results of batch i are read only after batch i + 1 has been dispatched.

  Args:
    apply_fn: (variables, images) -> logits [B, C], eval mode (e.g. BatchNorm running averages).
    variables_list: K model variable trees of one structure (K early-trained models / seeds).
    data: either images [N, H, W, C] (then `labels` [N] is required) or an iterable of batches,
      each a dict with "image" [B, ...], "label" [B], "index" [B] (global example index, -1 for
      padding) and optionally "mask" [B] bool. Batches are host-local; with several processes each
      passes its own shard and the global batch is assembled on the mesh.
    num_examples: N, required for an iterable (the output size).
    scores: names from SCORE_FNS.
    mesh: device mesh (default: all devices on a "data" axis).
    progress: called with the number of real examples of each processed batch.
    model_axis: "vmap" or "loop", how the K models share the call (parallel.map_models).

  Returns:
    {name: [K, N] float32} per-model scores, plus "seen": [N] bool (every example scored once).
  """
  for name in scores:
    if name not in SCORE_FNS:
      raise ValueError(f"unknown score {name!r}; choose from {sorted(SCORE_FNS)}")
  if not variables_list:
    raise ValueError("variables_list is empty: pass at least one model's variables")
  if labels is not None:
    num_examples = len(labels)
  if num_examples is None:
    raise ValueError("num_examples is required when data is an iterable of batches")
  mesh = mesh or parallel.make_mesh()

  def one_model(variables, images, labels):
    logits = apply_fn(variables, images)
    return jnp.stack([SCORE_FNS[name](logits, labels) for name in scores])
  step = jax.jit(parallel.map_models(one_model, model_axis, (0, None, None)))  # [K, S, B]
  stacked = parallel.replicate(parallel.stack_trees(variables_list), mesh)
  out = np.full((len(scores), len(variables_list), num_examples), np.nan, np.float32)
  seen = _stream_scores(lambda x, y: step(stacked, x, y), _as_batches(data, labels, batch_size),
                        out, mesh, progress)
  result = {name: out[i] for i, name in enumerate(scores)}
  result["seen"] = seen
  return result


def _stream_scores(step: Callable, batches: Iterable[dict], out: np.ndarray, mesh,
                   progress: Callable[[int], None] | None) -> np.ndarray:
  """Runs step(images, labels) -> [K, S, B] over the batches and writes out[:, :, index]
  ([S, K, N]); a batch's results are read only after the next batch has been dispatched.
  Returns seen [N] bool. Raises if a batch repeats an example (the data is not a partition)."""
  seen = np.zeros(out.shape[-1], bool)

  def store(vals, index, mask, count):
    vals = parallel.to_host(vals)  # [K, S, B]; waits for this batch only
    out[:, :, index[mask]] = np.moveaxis(vals, 1, 0)[:, :, mask]
    if progress is not None:
      progress(count)

  pending = None
  for batch, (g_images, g_labels) in parallel.prefetch_to_device(batches, mesh,
                                                                 ("image", "label")):
    mask = np.asarray(batch.get("mask", np.ones(len(batch["label"]), bool)))
    all_index = parallel.gather_host_local(np.asarray(batch["index"]))
    all_mask = parallel.gather_host_local(mask)
    if np.any(seen[all_index[all_mask]]):
      raise ValueError("a batch repeated an example index: the data iterator is not a partition")
    seen[all_index[all_mask]] = True
    vals = step(g_images, g_labels)
    if jax.process_count() == 1:
      vals.copy_to_host_async()
    if pending is not None:
      store(*pending)
    pending = (vals, all_index, all_mask, int(mask.sum()))
  if pending is not None:
    store(*pending)
  return seen


def el2n_scores(apply_fn: Callable[[Any, jax.Array], jax.Array],
                variables_list: Sequence[Any],
                data: Any,
                labels: np.ndarray | None = None,
                **kwargs) -> np.ndarray:
  """EL2N of every example averaged over the K models in `variables_list`. Returns [N] float32.

  Same arguments as `score_dataset`. Raises if some example was never scored.
  """
  result = score_dataset(apply_fn, variables_list, data, labels, scores=("el2n",), **kwargs)
  if not result["seen"].all():
    missing = np.flatnonzero(~result["seen"])
    raise ValueError(f"{missing.size} examples were never scored (first: {missing[:5].tolist()}); "
                     "the batch iterator must cover every index")
  return result["el2n"].mean(axis=0)
