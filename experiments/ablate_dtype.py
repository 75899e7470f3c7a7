r"""Mixed precision: does bfloat16 compute train as well as float32? Two arms, `float32` and
`bfloat16` (`model.dtype`), everything else equal: in both, the parameters (master weights),
the biases, ReLUs, pools, the optimizer, the logits and the loss are float32; `bfloat16` runs
the convolutions and the 1x1 (cccp) layers, forward and backward, in bfloat16
(nin_jax/models.py, layer_options).

Quick, on the embedded digits (no network): the quick start of README.md, 5 seeds an arm:

  python launch.py --config=experiments/ablate_dtype.py:digits --workdir=/tmp/ablate_dtype
  python -m nin_jax.report /tmp/ablate_dtype

  Hardware: 2 CPU cores. Time and result: docs/mixed_precision.md (measured with this
  config; on a CPU without bfloat16 arithmetic the bfloat16 arm is the slower one, see there).

Paper scale, CIFAR-10 with the authors' recipe (experiments/default.py), 2 arms x 3 seeds:

  python launch.py --config=experiments/ablate_dtype.py --workdir=/tmp/ablate_dtype_cifar \
      --config.data_dir=gs://YOUR_BUCKET/tensorflow_datasets

  Hardware: a Cloud TPU VM or a GPU, where bfloat16 is native. Time: not measured yet.
  Expected: both arms near the paper's 10.41% (NIN_REFERENCE.md), with no difference that the
  paired test establishes; the paper trained in float32 and reports no bfloat16 figure.
"""
import ml_collections

from experiments import default
from nin_jax import config_string, sweep


@config_string.with_overrides  # key=value fields of the config string apply after this function
def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default.get_config(variant)
  digits = "digits" in config_string.variant_names(variant)
  config.ablation = default.ablation(
      sweep.arm_set("model.dtype", ("float32", "bfloat16")), num_seeds=5 if digits else 3,
      paper_test_error={"float32": 10.41})
  return config
