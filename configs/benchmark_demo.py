"""The DC benchmark on the bundled demo data (digits, 16x16), on a 2-core CPU in tens of minutes.

Methods x IPC {1, 5, 10} x {hard, soft} labels, plus the PCA grid sweep 1x1 / 2x2 / 4x4 at equal
bytes, and for mosaics training/testing at the patch (cell) resolution next to full resolution. Student: ResNet-18 (small stem, width 16), 100 epochs (not the paper's 300: CPU budget; the
same for every method). Teacher: the same architecture trained 15 epochs on the full train split.
Scores: EL2N / entropy / forgetting from 2 models x 3 epochs.

  python -m pca_jax.main --config=configs/benchmark_demo.py --workdir=runs/benchmark_demo
"""

from pca_jax.config import sibling_config

demo_config = sibling_config(__file__, "demo")


def get_config():
  c = demo_config()
  c.stages = "score,teacher,benchmark"
  c.score.forgetting = True
  c.train.epochs = 100
  c.train.eval_every_epochs = 0
  c.train.log_every_steps = 50
  c.benchmark.ipcs = (1, 5, 10)
  c.benchmark.seeds = (0,)
  c.benchmark.grids = ((1, 1), (2, 2), (4, 4))
  c.benchmark.resolutions = ("full", "patch")  # issue: train/test at the cell size too
  c.benchmark.rded_pool = 100
  c.benchmark.teacher.update(dict(
      epochs=15, batch_size=64, optimizer="adamw", lr=2e-3, scale_lr_by_batch=False,
      weight_decay=0.01, warmup_epochs=0, crop_scale=(0.35, 1.0), eval_every_epochs=5,
      log_every_steps=50, num_threads=2))
  return c
