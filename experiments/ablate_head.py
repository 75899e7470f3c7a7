r"""Head ablation (paper section 4.6): GAP vs FC vs FC + dropout on the same mlpconv body.

Paper scale, CIFAR-10 with the authors' recipe (experiments/default.py), 3 arms x 3 seeds:

  python launch.py --config=experiments/ablate_head.py --workdir=/tmp/ablate_head \
      --config.data_dir=gs://YOUR_BUCKET/tensorflow_datasets

  Hardware: a Cloud TPU VM or a GPU; 9 runs of 260 epochs. Time: not measured yet. Expected, the
  paper's single runs (NIN_REFERENCE.md, head ablation): FC 11.59%, FC + dropout 10.88%,
  GAP 10.41% test error; the paper gives no spread.

Quick, on the embedded digits (no network), 3 arms x 3 seeds of 60 epochs:

  python launch.py --config=experiments/ablate_head.py:digits --workdir=/tmp/ah

  Hardware: 2 CPU cores. Time: 4 min 54 s measured by an earlier version, one run at a time
  (its figures differ from today's for some seeds). Result measured there (seeds 0-2, test
  error mean +- std): gap 1.30 +- 0.32%, fc 1.02 +- 0.16%, fc_dropout 1.58 +- 0.16%; with 3 seeds
  no difference is established (README.md has the report).

Ten seeds (the runs train 3 at a time on CPU, see README.md "Sweeps on one machine"):

  python launch.py --config=experiments/ablate_head.py:digits --workdir=/tmp/ah10 \
      --config.ablation.num_seeds=10

  Hardware: 2 CPU cores. Time: 12 min 38 s measured (30 runs). Result: gap 2.20 +- 2.96% (one
  seed at 10.58%), fc 1.23 +- 0.30%, fc_dropout 1.70 +- 0.48%; fc beats fc_dropout (adjusted
  paired p = 0.049), nothing else established.

One arm only (to share a sweep between machines by hand): add --arm=fc. Rebuild the report from disk:
python -m nin_jax.report /tmp/ah.
"""

import ml_collections

from experiments import default


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = default.get_config(variant)
  config.ablation = default.ablation(
      field="model.head", arm_values=("gap", "fc", "fc_dropout"), num_seeds=3,
      # CIFAR-10 test error (%) of the paper's head ablation; nothing to compare with elsewhere.
      paper_test_error=({"gap": 10.41, "fc": 11.59, "fc_dropout": 10.88}
                        if config.dataset == "cifar10" else {}))
  if variant == "digits":
    config.eval_every_steps = 110  # every 5 epochs: the test-error-by-epoch curves
  return config
