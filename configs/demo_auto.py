"""The demo (configs/demo.py) with its settings chosen on a validation split: the tune stage.

Stages score, tune, select, combine, store, train, eval, report. The tune stage holds out 20 % of
every class of the TRAIN split (the test split is not read before the eval stage), builds 9
candidate sets at the demo's budget (IPC 10: 100 stored 16x16 images) from the rest:

  easiest-first EL2N in the window (0, 1) or (0, 0.5), or random images (the ablation's C + A)
  x grid 1x1, 2x2 at full resolution, 2x2 at the patch (cell) resolution
  patch-constrained crops

trains each for 80 epochs (one seed) and keeps the best validation top-1 (ties: the cheaper set).
The final set and student then use the chosen settings (300 epochs, as configs/demo.py).

  python -m pca_jax.main --config=configs/demo_auto.py --workdir=runs/demo_auto
"""

from pca_jax.config import sibling_config

demo_config = sibling_config(__file__, "demo")


def get_config():
  c = demo_config()
  c.stages = "score,tune,select,combine,store,train,eval,report"
  c.tune.val_fraction = 0.2
  c.tune.grids = ((1, 1), (2, 2))
  c.tune.resolutions = ("full", "patch")
  c.tune.windows = ((0.0, 1.0), (0.0, 0.5))
  c.tune.prune = (True, False)
  c.tune.crops = ("patch",)
  c.tune.epochs = 80
  c.tune.seeds = (0,)
  return c
