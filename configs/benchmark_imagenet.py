"""The DC benchmark on ImageNet-1K (accelerators): every method at IPC 10/50/100, hard and soft
labels, 3 seeds, the PCA grid sweep 1x1 / 2x2 / 4x4 at 224px, the reference training recipe.

Bring a teacher: torchvision's pretrained ResNet-18 (the reference benchmark's, downloaded by you)
with --config.benchmark.teacher_weights=/path/resnet18-f37072fd.pth, or a ResNet-18 trained on full
ImageNet with pca_jax with --config.benchmark.teacher_workdir=/path/to/run, or let the teacher stage
train one (90 epochs). Published subsets (ImageFolder or Hugging Face parquet directories):
--config.benchmark.external=sre2l_ipc10=/data/sre2l/ipc10,rded_ipc10=/data/rded/ipc10
"""

from pca_jax.config import base_config


def get_config():
  c = base_config()
  c.stages = "score,teacher,benchmark"
  c.score.forgetting = True
  c.score.aum = True
  c.benchmark.synthesis.iterations = 4000   # SRe2L / CDA ImageNet recovery (recover.sh)
  c.model.dtype = "bfloat16"
  c.benchmark.ipcs = (10, 50, 100)
  c.benchmark.seeds = (0, 1, 2)
  c.benchmark.grids = ((1, 1), (2, 2), (4, 4))
  return c
