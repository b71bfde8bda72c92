"""The soft-label half of the DC benchmark on the bundled demo data, in the paper's regime: 300
epochs (the paper's schedule; configs/benchmark_demo.py trains 100 for the CPU budget, too few
for soft labels to pay off, docs/soft_labels.md).

random, EL2N easiest, SRe2L and noise (SRe2L's starting images, no recovery: the paper's control),
IPC 1 and 10, hard and soft labels (the teacher's KL at T = 20 on every CutMix view), 2 seeds:
32 cells. ResNet-18 (small stem, width 16), the demo benchmark's teacher (15 epochs on the full
train split), scores and SRe2L recovery (200 iterations). On a 2-core CPU in about 40 minutes (the
benchmark stage: about 30 of them); results and their reading: docs/soft_labels.md.

  python -m pca_jax.main --config=configs/benchmark_soft_demo.py --workdir=runs/benchmark_soft_demo
"""

from pca_jax.config import sibling_config

benchmark_demo_config = sibling_config(__file__, "benchmark_demo")


def get_config():
  c = benchmark_demo_config()
  c.score.forgetting = False         # only EL2N is read (el2n_easy)
  c.score.aum = False
  c.train.epochs = 300
  c.benchmark.methods = "random,el2n_easy,sre2l,noise"
  c.benchmark.ipcs = (1, 10)
  c.benchmark.eval_every_epochs = 50
  return c
