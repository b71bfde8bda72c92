"""The DC benchmark: every compression method at the same image budget, one training protocol,
hard and soft labels, accuracy next to storage.

  plan.py     which cells run (method x grid x IPC x label mode x seed x resolution)
  methods.py  the one registry of methods and how each builds its set
  rded.py     RDED (real crops scored by the teacher, stitched)
  synthesis.py  SRe2L / CDA recovery from the teacher's BatchNorm statistics
  stages.py   the teacher and benchmark stages, the fingerprinted set and cell caches
  tables.py   aggregation over seeds, Markdown / CSV tables, the plot

STAGES declares the two stages for the stage runner; the benchmark stage owns only its tables:
its sets and cells are caches under benchmark/ that each carry their own fingerprint.
"""

from __future__ import annotations

from pca_jax.dc import stages
from pca_jax.dc.plan import needs_teacher
from pca_jax.config import EVAL_DATA, TRAIN_DATA
from pca_jax.runner import Stage

STAGES = (
    Stage("teacher", stages.stage_teacher,
          fields=("seed", *TRAIN_DATA, *EVAL_DATA, "model", "benchmark.teacher",
                  "benchmark.teacher_workdir", "benchmark.teacher_weights"),
          derived=stages.teacher_derived, active=lambda config: needs_teacher(config.benchmark),
          owns=("teacher",), check=stages.check_teacher),
    Stage("benchmark", stages.stage_benchmark,
          fields=("seed", *TRAIN_DATA, *EVAL_DATA, "model", "combine", "train", "benchmark"),
          needs=stages.benchmark_needs, derived=stages.benchmark_derived, owns=stages.TABLES,
          check=stages.check_benchmark),
)
