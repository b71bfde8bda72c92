"""The DC benchmark on ImageNet-1K (accelerators): every method at IPC 10/50/100, hard and soft
labels, 3 seeds, the PCA grid sweep 1x1 / 2x2 / 4x4 at 224px, the reference training recipe.

Precision: float32, as the reference benchmark trains. `--config=configs/benchmark_imagenet.py:bf16`
computes in bfloat16 instead (parameters and BatchNorm statistics stay float32): about twice the
throughput on an accelerator with bf16 units, numbers not directly comparable with the reference's.

Bring a teacher: torchvision's pretrained ResNet-18 (the reference benchmark's, downloaded by you)
with --config.benchmark.teacher_weights=/path/resnet18-f37072fd.pth, or a ResNet-18 trained on full
ImageNet with pca_jax with --config.benchmark.teacher_workdir=/path/to/run, or let the teacher stage
train one (90 epochs; the soft-label rows are then not the reference's: the run says so at plan
time and in benchmark.md). Published subsets (ImageFolder or Hugging Face parquet directories):
--config.benchmark.external=sre2l_ipc10=/data/sre2l/ipc10,rded_ipc10=/data/rded/ipc10

RDED draws benchmark.rded_mipc = 400 candidate images per class (LINs-lab/RDED's ImageNet script
uses 300 at IPC 10): IPC 100 stitches ipc x factor^2 = 400 crops per class from distinct images.
"""

from pca_jax.config import base_config

PRECISIONS = {"": "float32", "fp32": "float32", "bf16": "bfloat16"}


def get_config(precision: str = ""):
  if precision not in PRECISIONS:
    raise ValueError(f"unknown precision {precision!r} after configs/benchmark_imagenet.py:; use "
                     "fp32 (the default, the reference's) or bf16")
  c = base_config()
  c.stages = "score,teacher,benchmark"
  c.score.forgetting = True
  c.score.aum = True
  c.benchmark.synthesis.iterations = 4000   # SRe2L / CDA ImageNet recovery (recover.sh)
  c.model.dtype = PRECISIONS[precision]
  c.benchmark.ipcs = (10, 50, 100)
  c.benchmark.seeds = (0, 1, 2)
  c.benchmark.grids = ((1, 1), (2, 2), (4, 4))
  c.benchmark.rded_mipc = 400
  return c
