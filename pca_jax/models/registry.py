"""The model registry: every student by its torchvision name, one constructor signature.

  create_model(name, num_classes, width=64, stem="imagenet", dtype="float32") -> flax Module

Every model takes images [B, H, W, 3] (normalised, NHWC) and returns float32 logits, is called as
`model.apply(variables, x, train=..., weights=...)` (weights: per-example weights that keep padding
filler out of BatchNorm statistics), draws dropout / stochastic depth from the "dropout" rng stream
in train mode only, and loads torchvision's state_dict of its layout (pca_jax.models.torch_weights).
`width` is the ResNets' base channel count (64 = torchvision); the other families scale their
channels by width / 64. `stem="small"` is each family's variant for images of <= 64 px (see each
model's docstring).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax.numpy as jnp

from pca_jax.models import efficientnet, mobilenet, shufflenet, vit
from pca_jax.models.resnet import PADDINGS, RESNETS

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
STEMS = ("imagenet", "small")


@dataclasses.dataclass(frozen=True)
class Student:
  """One registered model: its family, constructor, whether it has BatchNorm (sre2l / cda match a
  teacher's BatchNorm statistics; a student without any trains the same way otherwise), and why it
  cannot take a given image size (None if it can)."""
  family: str
  build: Callable[..., Any]
  batch_norm: bool = True
  image_size_problem: Callable[[Any, int], str | None] = lambda model, size: None


def _resnet(cls, num_classes, width=64, stem="imagenet", dtype=jnp.float32,
            zero_init_residual=False, padding="torch"):
  return cls(num_classes=num_classes, width=width, stem=stem, dtype=dtype,
             zero_init_residual=zero_init_residual, padding=padding)


STUDENTS: dict[str, Student] = {
    **{name: Student("resnet", functools.partial(_resnet, cls)) for name, cls in RESNETS.items()},
    "mobilenet_v2": Student("mobilenet_v2", mobilenet.mobilenet_v2,
                            image_size_problem=mobilenet.check_image_size),
    "efficientnet_b0": Student("efficientnet", efficientnet.efficientnet_b0,
                               image_size_problem=efficientnet.check_image_size),
    "shufflenet_v2_x1_0": Student("shufflenet", shufflenet.shufflenet_v2_x1_0,
                                  image_size_problem=shufflenet.check_image_size),
    "vit_s_16": Student("vit", vit.vit_s_16, batch_norm=False,
                        image_size_problem=vit.check_image_size),
}
MODELS: dict[str, Callable[..., Any]] = {name: s.build for name, s in STUDENTS.items()}


def create_model(name: str, num_classes: int, width: int = 64, stem: str = "imagenet",
                 dtype: str = "float32", zero_init_residual: bool = False,
                 padding: str = "torch", image_size: int = 0) -> Any:
  """Builds a registered model by name, with a clear error for unknown names / dtypes / stems.

  zero_init_residual and padding="same" are ResNet options: the other families ignore the first
  (a benchmark's students share config.model's block) and refuse the second. image_size sizes a
  ViT's position embedding up front (0: from the first input; needed only to load torchvision
  weights)."""
  if name not in STUDENTS:
    raise ValueError(f"unknown model {name!r}; choose one of {sorted(STUDENTS)}")
  if dtype not in DTYPES:
    raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
  if stem not in STEMS:
    raise ValueError(f"unknown stem {stem!r}; use 'imagenet' (224px) or 'small' (<=64px)")
  if width < 1:
    raise ValueError(f"model width must be >= 1, got {width}")
  if padding not in PADDINGS:
    raise ValueError(f"unknown model padding {padding!r}; choose one of {PADDINGS}")
  student = STUDENTS[name]
  if student.family == "resnet":
    return student.build(num_classes, width, stem, DTYPES[dtype], zero_init_residual, padding)
  if padding != "torch":
    raise ValueError(f"model.padding='same' is a ResNet option (checkpoints made before the "
                     f"torchvision padding); {name} has only torchvision's: leave it at 'torch'")
  if student.family == "vit":
    return student.build(num_classes, width, stem, DTYPES[dtype], image_size=image_size)
  return student.build(num_classes, width, stem, DTYPES[dtype])


def has_batch_norm(name: str) -> bool:
  return STUDENTS[name].batch_norm


def image_size_problem(name: str, size: int, width: int = 64, stem: str = "imagenet") -> str | None:
  """Why model `name` (at this width and stem) cannot take square images of `size` px, or None."""
  model = create_model(name, 10, width, stem)
  return STUDENTS[name].image_size_problem(model, int(size))


def check_model_block(model) -> None:
  """The model block: a registered model, dtype, padding and stem, a positive width."""
  from pca_jax.config import check_choice, check_positive_int
  check_choice("model.name", model.name, sorted(STUDENTS))
  check_choice("model.dtype", model.dtype, sorted(DTYPES))
  check_choice("model.padding", model.get("padding", "torch"), PADDINGS,
               " (torch: torchvision's layout; same: checkpoints made before it)")
  check_choice("model.stem", model.stem, STEMS)
  check_positive_int("model.width", model.width)
  if STUDENTS[model.name].family != "resnet" and model.get("padding", "torch") != "torch":
    raise ValueError(f"model.padding='same' is a ResNet option (checkpoints made before the "
                     f"torchvision padding); {model.name} has only torchvision's: leave it at "
                     "'torch'")


def check_model_views(config) -> None:
  """config.model can take the images it will see: the stored size (scoring, the teacher) and the
  student's training / eval views (train.grid, train.resolution); e.g. a ViT's patch size must
  divide each of them."""
  import copy
  from pca_jax.training.views import view_sizes
  tc = copy.deepcopy(config.train)
  tc.image_size = config.data.image_size
  model = config.model
  for size in sorted({int(config.data.image_size), *view_sizes(tc)[:2]}):
    problem = image_size_problem(model.name, size, model.width, model.stem)
    if problem:
      raise ValueError(f"model.name={model.name} cannot take the {size} px images of this run: "
                       f"{problem}")


def model_from_config(model_config: Any, num_classes: int, image_size: int = 0) -> Any:
  """create_model from a config's `model` block (name, width, stem, dtype, zero_init_residual,
  padding); image_size: the size a ViT's torchvision weights were made for (see create_model)."""
  return create_model(model_config.name, num_classes, model_config.width, model_config.stem,
                      model_config.dtype, model_config.get("zero_init_residual", False),
                      model_config.get("padding", "torch"), image_size)
