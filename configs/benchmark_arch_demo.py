"""Cross-architecture evaluation on the bundled demo data (the paper's Table 8 at demo scale).

The same compressed sets (random, EL2N easiest, PCA 2x2 and pca_auto, IPC 10, hard labels, 2
seeds) trained by three students: ResNet-18 (the sets' own scoring architecture), MobileNetV2 and
ViT-S/16 (no BatchNorm), each with the small-image stem at width 16 (ViT: patch 4, hidden 96).
The sets are built once and shared across the students; pca_auto's choice (grid, resolution,
window) is made with ResNet-18 and kept for every student. Student: 100 epochs (the demo
benchmark's schedule), the ViT with its benchmark.student_overrides (5 warmup epochs, lr 5e-4,
wd 0.05). On a 2-core CPU in about 35 minutes (the benchmark stage took 34 min on the development
host while other jobs shared its cores); results and their reading: docs/students.md.

  python -m pca_jax.main --config=configs/benchmark_arch_demo.py --workdir=runs/benchmark_arch_demo
"""

from pca_jax.config import sibling_config

benchmark_demo_config = sibling_config(__file__, "benchmark_demo")


def get_config():
  c = benchmark_demo_config()
  c.stages = "score,benchmark"       # hard labels only and no method reads a teacher
  c.score.forgetting = False
  c.score.aum = False
  c.benchmark.methods = "random,el2n_easy,pca,pca_auto"
  c.benchmark.ipcs = (10,)
  c.benchmark.grids = ((2, 2),)       # pca at the demo's grid only (no grid sweep)
  c.benchmark.label_modes = ("hard",)
  c.benchmark.seeds = (0, 1)
  c.benchmark.students = ("resnet18", "mobilenet_v2", "vit_s_16")
  return c
