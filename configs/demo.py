"""The embedded default: PCA end to end on real bundled data, on a 2-core CPU in a few minutes.

Data: scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes, shipped inside the
scikit-learn wheel), upsampled to 16x16 RGB; 1,347 train / 450 test (stratified, fixed).
Model: ResNet-18 with the small-image stem at width 16 (a quarter of 64) so that CPU steps are fast,
with the last BatchNorm of every residual block zero-initialised (model.zero_init_residual): on 100
stored 16px images that trains to 66 % top-1 against 45 % with torchvision's plain initialisation
(3 seeds each, README); the ImageNet configs keep torchvision's, the reference student's.
Prune: EL2N averaged over 2 models trained together (one vmapped step per batch) 3 epochs on the
full train set; keep the 40 easiest images per class. Combine: 2x2 mosaics at 16x16 (cells are
8x8, the digits' native resolution), 10 mosaics per class (IPC 10). Augment: RRC inside one cell
+ flip, 300 epochs, hard labels.

  python -m pca_jax.main --config=configs/demo.py --workdir=runs/demo
"""

from pca_jax.config import base_config


def get_config():
  c = base_config()
  c.data.source = "demo"
  c.data.eval_split = "test"
  c.data.image_size = 16
  c.data.demo_image_size = 16
  c.data.eval_crop_fraction = 1.0
  c.data.num_threads = 2
  c.model.stem = "small"
  c.model.width = 16
  c.model.zero_init_residual = True
  c.score.num_models = 2
  c.score.batch_size = 256
  c.score.model_axis = "vmap"        # the two tiny models in one batched step: faster on CPU here
  c.score.train.update(dict(epochs=3, batch_size=64, optimizer="adamw", lr=2e-3,
                            scale_lr_by_batch=False, weight_decay=0.01, warmup_epochs=0,
                            crop_scale=(0.35, 1.0), log_every_steps=10, num_threads=2))
  c.select.ipc = 10
  c.train.update(dict(epochs=300, batch_size=128, crop_scale=(0.35, 1.0), eval_every_epochs=100,
                      log_every_steps=25, eval_batch_size=256, num_threads=2))
  return c
