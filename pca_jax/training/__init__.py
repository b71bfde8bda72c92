"""Training and evaluation: one loop for every model pca_jax trains.

  steps.py       TrainState, optimizer + schedule, the loss (hard or soft labels), the jitted step
  feeds.py       where batches come from: the compressed set on device, or a full dataset (Grain)
  loop.py        train(): model, checkpoints, metrics, periodic evaluation, preemption
  checkpoint.py  Orbax checkpoints guarded by the fingerprint of the run that wrote them
  metrics.py     progress lines, compile-free throughput, metrics.jsonl
  evaluate.py    evaluate(variables, source, ...) on saved params, without the trainer
  views.py       training / evaluation image sizes per resolution mode
"""

from pca_jax.training.checkpoint import load_variables
from pca_jax.training.evaluate import evaluate
from pca_jax.training.feeds import InMemoryData
from pca_jax.training.loop import Preempted, train
from pca_jax.training.steps import variables_of

__all__ = ["InMemoryData", "Preempted", "evaluate", "load_variables", "train", "variables_of"]
