r"""Depth ablation: the number of 1x1 layers in every mlpconv block -- 0 (a conventional CNN),
1, 2 (the paper's NIN) and 3 -- with the GAP head and everything else equal.

Paper scale, CIFAR-10 with the authors' recipe (experiments/default.py), 4 arms x 3 seeds:

  python launch.py --config=experiments/ablate_depth.py --workdir=/tmp/ablate_depth \
      --config.data_dir=gs://YOUR_BUCKET/tensorflow_datasets

  Hardware: a Cloud TPU VM or a GPU; 12 runs of 260 epochs. Time: not measured yet. Expected:
  2 layers is the paper's 10.41% (NIN_REFERENCE.md); the paper reports no other depth. With
  0 layers the class maps come straight from a 3x3 conv, a plain CNN with a GAP head (the paper's
  conventional-CNN + GAP figure, 16.46%, is for a different body).

Quick, on the embedded digits (no network):

  python launch.py --config=experiments/ablate_depth.py:digits --workdir=/tmp/ad

  Hardware: 2 CPU cores (Intel Xeon with AVX-512, no bfloat16 instructions), 2026-12-03.
  Time: 2 min 45 s (12 runs, 3 at a time). Result (seeds 0-2, test error mean +- std over the
  359 test digits; 288 training digits held out for validation): 0 layers 7.34 +- 2.11%,
  1 layer 1.49 +- 0.16%, 2 layers 1.49 +- 0.16%, 3 layers 1.76 +- 0.64%; no difference
  established by the Holm-adjusted paired test (0 vs 1 layer: +5.85 points, adjusted p = 0.21;
  5 seeds would settle it). docs/statistics.md says how the report compares arms.

The modern recipe (experiments/default.py, modern_recipe: BatchNorm, He init, Nesterov, warm-up
+ cosine, label smoothing, shifts and flips):

  python launch.py --config=experiments/ablate_depth.py:modern --workdir=/tmp/ablate_depth_modern \
      --config.data_dir=gs://YOUR_BUCKET/tensorflow_datasets

  Hardware: a Cloud TPU VM or a GPU; 12 runs of 200 epochs. Time: not measured yet. Expected:
  2 layers is the reproductions' NIN+BN, 92% (Torch; 300 epochs in szagoruyko/cifar.torch) and
  91.63% (Keras, 200 epochs) accuracy (NIN_REFERENCE.md); none published other depths under it.

  On the digits: python launch.py --config=experiments/ablate_depth.py:digits,modern --workdir=/tmp/adm
  Hardware: 2 CPU cores of an AMD EPYC (AVX2 only), 2026-12-03. Time: 3 min 43 s (12 runs, 3 at
  a time). Result (test error over the 359 test digits, seeds 0-2): 0 layers 1.95 +- 0.28%,
  1 layer 0.84 +- 0.28%, 2 layers 0.84 +- 0.00%, 3 layers 0.84 +- 0.28%; 0 layers is worse
  than every other depth in every seed (by 0.56-1.67 points), yet with 3 seeds not established
  by the Holm-adjusted paired test (against 2 layers: +1.11 points, adjusted p = 0.12; 4 seeds
  would settle it). Under the paper recipe (above, on the Xeon) 0 layers was 7.34%.
"""
import ml_collections

from experiments import default
from nin_jax import config_string, sweep


@config_string.with_overrides  # key=value fields of the config string apply after this function
def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default.get_config(variant)
  config.ablation = default.ablation(
      sweep.arm_set("model.num_1x1", (0, 1, 2, 3)), num_seeds=3,
      paper_test_error={"num_1x1_2": 10.41})
  if "digits" in config_string.variant_names(variant):
    config.validation_examples = 288  # as experiments/ablate_head.py: 20% of the training digits
    config.eval_every_steps = 85  # every 5 epochs (17 steps each): the error-by-epoch curves
  return config
