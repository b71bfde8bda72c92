"""pca_jax.agreement: the variants, the two agreement measures, and one real measurement."""

import json

import numpy as np
import pytest

from pca_jax import agreement
from tests.test_main import tiny_config


def test_spearman_by_hand():
  assert agreement.spearman(np.array([1., 2, 3, 4]), np.array([10., 30, 20, 40])) == \
      pytest.approx(1 - 6 * 2 / (4 * 15))  # one swapped pair: d^2 = 1 + 1
  x = np.random.default_rng(0).normal(size=50)
  assert agreement.spearman(x, np.exp(x)) == pytest.approx(1.0)  # ranks only
  assert agreement.spearman(x, -x) == pytest.approx(-1.0)


def test_easiest_overlap_by_hand():
  labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
  a = np.array([0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3, 0.4])  # easiest 2: {0, 1} and {4, 5}
  b = np.array([0.1, 0.9, 0.2, 0.8, 0.4, 0.3, 0.2, 0.1])  # easiest 2: {0, 2} and {6, 7}
  assert agreement.easiest_overlap(a, b, labels, 2) == pytest.approx(1 / 4)
  assert agreement.easiest_overlap(a, a, labels, 2) == 1.0


def test_variants_are_independent_runs_with_one_change():
  c = tiny_config()
  ref = agreement.variant_overrides(c, "reference")
  assert ref == agreement.REFERENCE and "seed" not in ref
  assert agreement.variant_overrides(c, "seed", seed_offset=2) == {**ref, "seed": c.seed + 2}
  assert agreement.variant_overrides(c, "together")["score.together"] is True
  assert agreement.variant_overrides(c, "lowres")["score.image_size"] == c.data.image_size // 2
  assert agreement.variant_overrides(c, "early", 4)["score.train.schedule_epochs"] == \
      4 * c.score.train.epochs
  with pytest.raises(ValueError, match="not an independent run"):
    agreement.variant_overrides(c, "together", seed_offset=0)
  with pytest.raises(ValueError, match="unknown agreement variant 'fast'"):
    agreement.variant_overrides(c, "fast")


@pytest.mark.long
def test_measure_the_reference_against_itself_and_another_seed(tmp_path):
  out = agreement.measure(tiny_config(), str(tmp_path), ["seed", "together"], ipc=10,
                          early_factor=4)
  rows = {r["name"]: r for r in out["rows"]}
  assert rows["reference"]["spearman_el2n"] == pytest.approx(1.0)
  assert rows["reference"]["overlap_easiest"] == 1.0
  for name in ("seed", "together"):  # independent runs: agree, but not perfectly
    assert 0.3 < rows[name]["spearman_el2n"] < 0.999
    assert rows[name]["overlap_easiest"] > out["chance_overlap"]
  assert rows["together"]["change"] == {"score.together": True, "seed": 1}
  # one epoch, 21 batches of 64: decoded once for both models when together, twice when not
  assert rows["seed"]["images_decoded"] == 2 * 21 * 64 + 1347
  assert rows["together"]["images_decoded"] == 21 * 64 + 1347
  saved = json.loads((tmp_path / "agreement.json").read_text())
  assert [r["name"] for r in saved["rows"]] == ["reference", "seed", "together"]
  assert "| together | score.together=True, seed=1 |" in (tmp_path / "agreement.md").read_text()


def test_write_photo_digits_writes_once_and_never_into_an_existing_folder(tmp_path):
  from pca_jax.data.sources import ImageFolderSource
  root = str(tmp_path / "train")
  assert agreement.write_photo_digits(root, 100, size=24) == root
  src = ImageFolderSource(root)
  assert len(src) == 100 and src.class_names == [str(c) for c in range(10)]
  image, label = src[0]
  assert image.shape == (24, 24, 3) and 0 <= label < 10
  assert not (tmp_path / "train.writing").exists()
  agreement.write_photo_digits(root, 150, size=24)  # exists: read as it is
  assert len(ImageFolderSource(root)) == 100


def test_the_command_line_modules_import_together():
  """Their absl flags live in one registry: no name may be defined twice."""
  import subprocess
  import sys
  from tests.test_main import ROOT
  r = subprocess.run([sys.executable, "-c", "import pca_jax.agreement, pca_jax.speedbench, "
                      "pca_jax.main"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]


def test_bad_variant_is_one_line_and_exit_2(tmp_path):
  import subprocess
  import sys
  from tests.test_main import ROOT
  r = subprocess.run([sys.executable, "-m", "pca_jax.agreement", "--config=configs/demo.py",
                      f"--workdir={tmp_path / 'a'}", "--variants=fast"], cwd=ROOT,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [
      "error: unknown agreement variant 'fast'; choose from ('seed', 'together', 'lowres', "
      "'early', 'config')"]
  assert not (tmp_path / "a").exists()
