"""Agreement of the scoring modes on an ImageFolder of 20,000 JPEGs (pca_jax.agreement).

  python -m pca_jax.agreement --config=configs/agreement_folder.py --workdir=runs/agreement_folder

Data: 20,000 synthetic photographs of 40x40 px (scikit-learn's handwritten digits drawn at random
scales, angles, positions and colours over crops of the two photos scikit-learn ships; 10
classes), written by pca_jax.agreement.write_photo_digits into data.data_dir/train when missing.
Scoring: 2 ResNet-18 (small stem, width 8) at 32 px, 3 epochs, batch 128, as the demo's recipe.
Only the score stage runs (there is no test split).
"""

import os
import tempfile

from pca_jax.config import sibling_config


def get_config():
  c = sibling_config(__file__, "demo")()
  c.data.source = "imagefolder"
  c.data.data_dir = os.path.join(tempfile.gettempdir(), "pca_jax_photo_digits_20000")
  c.data.image_size = 32
  c.model.width = 8
  c.score.model_axis = "loop"        # vmap's grouped convolutions are ~2x slower at 32px on CPU
  c.score.batch_size = 512
  c.score.train.batch_size = 128
  c.score.train.log_every_steps = 50
  c.stages = "score"
  return c
