r"""Head ablation (paper section 4.6): GAP vs FC vs FC + dropout on the same mlpconv body.

Paper scale, CIFAR-10 with the authors' recipe (experiments/default.py), 3 arms x 3 seeds:

  python launch.py --config=experiments/ablate_head.py --workdir=/tmp/ablate_head \
      --config.data_dir=gs://YOUR_BUCKET/tensorflow_datasets

  Hardware: a Cloud TPU VM or a GPU; 9 runs of 260 epochs. Time: not measured yet. Expected, the
  paper's single runs (NIN_REFERENCE.md, head ablation): FC 11.59%, FC + dropout 10.88%,
  GAP 10.41% test error; the paper gives no spread.

Each arm's learning rates are explicit (HEAD_ARMS below): GAP's class-map layer at the authors'
0.1x (its ReLU dies at the full rate), the FC heads' dense classifier, which has no ReLU after it,
at 1x like every other layer. The paper gives no FC rates; `:both_fc_rates` adds FC arms at 0.1x.

Quick, on the embedded digits (no network), 3 arms x 3 seeds of 60 epochs, 288 of the 1,438
training digits held out for validation:

  python launch.py --config=experiments/ablate_head.py:digits --workdir=/tmp/ah

Ten seeds (the runs train 3 at a time on CPU, see docs/scale.md):

  python launch.py --config=experiments/ablate_head.py:digits,ablation.num_seeds=10 \
      --workdir=/tmp/ah10

  Hardware: 2 CPU cores. Time: 11 min 19 s measured (30 runs). Result (test error mean +- std, seeds
  0-9): gap 2.48 +- 2.97% (seed 7 at 10.86%, the other nine 1.11-2.23%), fc 1.23 +- 0.38%,
  fc_dropout 1.59 +- 0.32%; nothing established on either split (fc - fc_dropout: -0.36 points,
  adjusted p = 0.067; 17 seeds would settle it). docs/ablations.md has the report.

One arm only (to share a sweep between machines by hand): add --arm=fc. Rebuild the report from disk:
python -m nin_jax.report /tmp/ah.
"""

import ml_collections

from experiments import default
from nin_jax import config_string

# Each arm's learning rates, explicit. `optimizer.classifier_lr_multiplier` scales the layer named
# `classifier`: in the GAP model that is the class-map 1x1 convolution, whose ReLU dies at the
# full rate (the authors' 0.1x, NIN_REFERENCE.md); in the FC heads it is the dense output layer,
# which has no ReLU after it. The paper gives no rates for its FC heads, so the default arms train
# that layer at the rate of every other layer (1x, "fair"), and the `both_fc_rates` variant adds
# FC arms at the GAP model's 0.1x as well (one reading of "the same recipe for every head").
HEAD_ARMS = {
    "gap": {"model.head": "gap", "optimizer.classifier_lr_multiplier": 0.1},
    "fc": {"model.head": "fc", "optimizer.classifier_lr_multiplier": 1.0},
    "fc_dropout": {"model.head": "fc_dropout", "optimizer.classifier_lr_multiplier": 1.0},
}
SLOW_FC_ARMS = {
    "fc_slow_classifier": {"model.head": "fc", "optimizer.classifier_lr_multiplier": 0.1},
    "fc_dropout_slow_classifier": {"model.head": "fc_dropout",
                                   "optimizer.classifier_lr_multiplier": 0.1},
}
# Digits: training examples held out for validation (stratified, fixed): 20% of the 1,438.
DIGITS_VALIDATION_EXAMPLES = 288


def head_arms(names) -> dict:
  """The head arms for the named variants `names`: HEAD_ARMS, and SLOW_FC_ARMS with
  `both_fc_rates`; with `modern`, every arm trains every layer at one rate, as that recipe does
  (experiments/default.py, modern_recipe)."""
  arms = {**HEAD_ARMS, **(SLOW_FC_ARMS if "both_fc_rates" in names else {})}
  if "modern" in names:
    arms = {name: {**fields, "optimizer.classifier_lr_multiplier": 1.0}
            for name, fields in arms.items()}
  return arms


@config_string.with_overrides  # key=value fields of the config string apply after this function
def get_config(variant: str = "") -> ml_collections.ConfigDict:
  names = config_string.variant_names(variant)
  config = default.get_config(config_string.without(variant, "both_fc_rates"))
  config.ablation = default.ablation(
      head_arms(names), num_seeds=3,
      # CIFAR-10 test error (%) of the paper's head ablation; nothing to compare with elsewhere.
      paper_test_error={"gap": 10.41, "fc": 11.59, "fc_dropout": 10.88})
  if "digits" in names:
    config.validation_examples = DIGITS_VALIDATION_EXAMPLES
    config.eval_every_steps = 85  # every 5 epochs: the error-by-epoch curves
  return config
