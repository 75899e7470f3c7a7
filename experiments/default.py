r"""The paper's CIFAR-10 NIN recipe, and a quick variant on the embedded digits.

Paper-scale run (needs CIFAR-10 prepared in TFDS's data_dir, see README.md):

  python launch.py --config=experiments/default.py --workdir=/tmp/nin_cifar10 \
      --config.data_dir=gs://YOUR_BUCKET/tensorflow_datasets

  Hardware: a Cloud TPU VM or one GPU. Time: not measured yet (260 epochs of 50,000 images at
  ~1.3 GFLOP per image for forward and backward). Expected (the paper, NIN_REFERENCE.md):
  10.41% test error without augmentation; 8.81% with `experiments/default.py:augment`.
  Public reproductions land between 8.4% and 12% (NIN_REFERENCE.md, "Reproductions").

Quick variant, no network needed:

  python launch.py --config=experiments/default.py:digits --workdir=/tmp/nin_digits

  Hardware: 2 CPU cores. Time: ~1 minute including start-up. Expected: >= 97% test accuracy
  on the 359 held-out digits (README.md: 98.33% with seed 0, 28 s of training).

Every field can be overridden: --config.model.head=fc, --config.optimizer.learning_rate=0.01.
"""
import ml_collections
from ml_collections import config_dict


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # --- Data (nin_jax/data.py) -------------------------------------------------------------------
  config.dataset = "cifar10"  # cifar10 | cifar100 | svhn_cropped | mnist | digits | npz | synthetic
  config.data_dir = config_dict.placeholder(str)  # TFDS data_dir; gs://... works on Cloud TPU
  config.download = False     # let TFDS download when the data is missing (needs internet)
  config.npz_path = ""        # for dataset=npz: x_train, y_train, x_test, y_test
  # Contiguous parts of the training set that every batch draws from equally; 0: one per host.
  # Fix it (to a multiple of the host count) to train identically on different host counts.
  config.data_shards = 0
  config.synthetic = ml_collections.ConfigDict(
      dict(image_shape=(32, 32, 3), num_classes=10, num_train=50_000, num_test=10_000))
  # The authors' preprocessing: global contrast normalisation, then ZCA whitening fitted on the
  # training split (NIN_REFERENCE.md, CIFAR-10 recipe). 'mean_std' is per-channel standardising.
  config.preprocess = "gcn_zca"
  config.augment = ml_collections.ConfigDict(dict(crop_padding=0, flip=False))  # none: 10.41%

  # --- Model (nin_jax/models.py) ----------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  config.model.preset = "nin_cifar"    # nin_cifar | nin_imagenet | nin_digits
  config.model.head = "gap"            # gap | fc | fc_dropout
  config.model.num_1x1 = config_dict.placeholder(int)  # 1x1 layers per block; unset: preset's (2)
  config.model.dropout = config_dict.placeholder(float)  # between blocks; unset: preset's (0.5)
  config.model.fc_hidden = ()          # hidden dense widths of the FC heads
  config.model.relu_on_class_maps = True
  config.model.init_stddev = 0.05      # the authors' N(0, 0.05^2)
  config.model.dtype = "float32"       # "bfloat16": mixed precision on TPU/GPU (f32 weights)

  # --- Optimisation: the authors' recipe in SGD terms (NIN_REFERENCE.md) --------------------------
  config.seed = 0
  config.batch_size = 128              # global, over all devices and hosts
  config.eval_batch_size = 512
  # Per device, compute the gradient in micro-batches of this many examples and average: the same
  # update, less memory traffic. 0: the whole per-device batch at once. On CPU, 16 makes the
  # CIFAR step ~25% faster (README.md, "Speed"); on TPU and GPU keep 0, big batches suit them.
  config.microbatch_size = 0
  config.num_epochs = 260.0
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 1e-4  # weights only, not biases
  config.optimizer.bias_lr_multiplier = 2.0        # biases at 0.2
  config.optimizer.classifier_lr_multiplier = 0.1  # class maps at 0.01: their ReLU dies at 0.1
  config.optimizer.grad_clip_norm = 0.0            # 0: off
  config.optimizer.schedule = "step"   # step | cosine | constant
  config.optimizer.decay_epochs = (200, 230)       # /10 after 200 epochs, again after 230
  config.optimizer.decay_factor = 0.1
  config.optimizer.warmup_epochs = 0.0

  # --- Bookkeeping ------------------------------------------------------------------------------
  config.log_every_steps = 100
  config.eval_every_steps = 3900       # ~10 epochs; 0: only at the end
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.stuck_loss_steps = 2000       # stop when the loss sits at ln(classes) this long; 0: off
  config.stuck_loss_tolerance = 1e-3

  if variant == "augment":  # the paper's 8.81%: translations and horizontal flips
    config.augment.crop_padding = 4    # the paper does not give the shift; 4 pixels is common
    config.augment.flip = True
  elif variant == "digits":
    config.dataset = "digits"
    config.preprocess = "mean_std"
    config.augment.crop_padding = 1    # small shifts; no flips: digits are not mirror-symmetric
    config.model.preset = "nin_digits"
    # With N(0, 0.05^2) the 8x8 one-channel inputs give class maps so small that the loss stays
    # near ln(10) for hundreds of steps; 0.1 starts learning at once (measured, see README.md).
    config.model.init_stddev = 0.1
    config.batch_size = 64
    config.eval_batch_size = 128
    config.num_epochs = 60.0
    config.optimizer.schedule = "cosine"
    config.optimizer.learning_rate = 0.05
    config.optimizer.weight_decay = 5e-4
    config.log_every_steps = 20
    config.eval_every_steps = 440
    config.checkpoint_every_steps = 200
    config.stuck_loss_steps = 200
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of experiments/default.py; "
                     "use :digits, :augment or none")
  return config


def ablation(field, arm_values, num_seeds, paper_test_error) -> ml_collections.ConfigDict:
  """The `ablation` section of a sweep config: `field` takes each of `arm_values`, with seeds
  0 .. num_seeds - 1 (nin_jax/sweep.py); `paper_test_error`: {arm: the paper's CIFAR-10 %}."""
  return ml_collections.ConfigDict(dict(
      field=field, arm_values=arm_values, num_seeds=num_seeds, paper_test_error=paper_test_error,
      # Where runs train (README.md, "Sweeps on one machine, a TPU host and a pod slice"); 0 is
      # automatic: one device per run, one run per device (on CPU: 3, or one per device).
      devices_per_run=0, runs_at_once=0))
