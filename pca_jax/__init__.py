"""pca_jax: Prune, Combine, Augment dataset compression and the DC benchmark in JAX/Flax."""

import os as _os

__version__ = "0.2.0"

# XLA:CPU's YNNPACK convolutions train ResNet-18 ~1.4x slower than XLA's Eigen convolutions on
# the 2-core x86 machines this project is tested on (python -m pca_jax.speedbench; docs/scale.md, "Speed").
# YNNPACK stays on for everything else (its reductions are the fast ones). The flag only touches
# the CPU backend, must be set before JAX starts a backend, and is skipped when the user already
# chose a YNN setting or sets PCA_JAX_XLA_CPU_DEFAULTS=0.
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)


def _set_cpu_xla_flags() -> None:
  if _os.environ.get("PCA_JAX_XLA_CPU_DEFAULTS", "1") == "0":
    return
  try:
    from importlib.metadata import version
    if not version("jaxlib").startswith("0.10."):
      return  # flag verified on jaxlib 0.10.x only; unknown flags abort XLA
  except Exception:  # pragma: no cover - jaxlib not installed as a distribution
    return
  flags = _os.environ.get("XLA_FLAGS", "")
  extra = [f for f in CPU_XLA_FLAGS if f.split("=")[0] not in flags]
  if extra:
    _os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


_set_cpu_xla_flags()
