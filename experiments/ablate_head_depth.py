r"""Head x depth grid: does GAP's standing against the FC heads depend on how deep the mlpconv
blocks are? Every head of experiments/ablate_head.py (its fair learning rates) with 0, 1 and 2
1x1 layers per block (experiments/ablate_depth.py's axis): 9 arms, each a combination, named
'<head>-num_1x1_<n>'. The FC heads do without the class-map layer, so their last block has one
1x1 layer fewer than GAP's (at depth 0 its 3x3 conv keeps the preset's width).

Paper scale, CIFAR-10 with the authors' recipe (experiments/default.py), 9 arms x 3 seeds:

  python launch.py --config=experiments/ablate_head_depth.py --workdir=/tmp/ahd \
      --config.data_dir=gs://YOUR_BUCKET/tensorflow_datasets

  Hardware: a Cloud TPU VM or a GPU; 27 runs of 260 epochs. Time: not measured. Expected: the
  paper reports only the 2-layer row (NIN_REFERENCE.md: GAP 10.41, FC 11.59, FC + dropout 10.88).

Quick, on the embedded digits (no network), 288 training examples held out for validation:

  python launch.py --config=experiments/ablate_head_depth.py:digits --workdir=/tmp/ahd

  Hardware: 2 CPU cores. Time: 8 min 35 s measured (27 runs, 3 at a time, seeds 0-2). Result
  (test error mean +- std): at depth 0, GAP 7.43 +- 2.05% against FC 1.67 +- 0.28% and
  FC + dropout 1.67 +- 0.48%; at depths 1 and 2 every head between 1.0 and 1.9%. With 36 pairs
  and 3 seeds nothing is established on the test split; on the validation split FC at depth 1
  and 2 beats GAP at depth 0. docs/ablations.md has the report and the seeds to settle.
"""
import ml_collections

from experiments import ablate_head, default
from nin_jax import config_string, sweep


@config_string.with_overrides  # key=value fields of the config string apply after this function
def get_config(variant: str = "") -> ml_collections.ConfigDict:
  names = config_string.variant_names(variant)
  config = default.get_config(variant)
  config.ablation = default.ablation(
      sweep.grid(ablate_head.head_arms(names), sweep.arm_set("model.num_1x1", (0, 1, 2))), num_seeds=3,
      paper_test_error={"gap-num_1x1_2": 10.41, "fc-num_1x1_2": 11.59,
                        "fc_dropout-num_1x1_2": 10.88})
  if "digits" in names:
    config.validation_examples = ablate_head.DIGITS_VALIDATION_EXAMPLES
    config.eval_every_steps = 85  # every 5 epochs: the error-by-epoch curves
  return config
