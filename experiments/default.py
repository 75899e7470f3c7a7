r"""The paper's CIFAR-10 NIN recipe, the modern one beside it, and a quick variant on the digits.

Paper-scale run (needs CIFAR-10 prepared in TFDS's data_dir, see README.md):

  python launch.py --config=experiments/default.py --workdir=/tmp/nin_cifar10 \
      --config.data_dir=gs://YOUR_BUCKET/tensorflow_datasets

  Hardware: a Cloud TPU VM or one GPU. Time: not measured yet (260 epochs of 50,000 images at
  ~1.3 GFLOP per image for forward and backward). Expected (the paper, NIN_REFERENCE.md):
  10.41% test error without augmentation; 8.81% with `experiments/default.py:augment`.
  Public reproductions land between 8.4% and 12% (NIN_REFERENCE.md, "Reproductions").

The modern recipe (`modern`, modern_recipe below), the same network trained as it is today:

  python launch.py --config=experiments/default.py:modern --workdir=/tmp/nin_modern \
      --config.data_dir=gs://YOUR_BUCKET/tensorflow_datasets

  Hardware: a Cloud TPU VM or one GPU. Time: not measured yet (200 epochs). Expected, from the
  reproductions it follows (NIN_REFERENCE.md, "Reproductions"): 92% accuracy with BatchNorm
  (Torch; 300 epochs in szagoruyko/cifar.torch's train.lua), 91.63% (Keras, 200 epochs); 92.57%
  for imgclsmob's pretrained nin_cifar10. Measured on 12,000 real CIFAR-10 images
  (../shared/data/cifar10_train12k.npz: 10,000 to train, 2,000 to score, both from CIFAR-10's
  training split, so not a CIFAR-10 test error), 2 epochs, seed 0, 2 cores of an Intel Xeon with
  AVX-512 (no bfloat16 instructions), 2026-12-03, with --config.dataset=npz --config.npz_path=...
  --config.num_epochs=2 --config.eval_every_steps=78 (and optimizer.warmup_epochs=0.5 for
  `modern`; no flips: the npz dataset is not known to be mirror-symmetric): accuracy on the 2,000
  after epochs 1 and 2, the paper recipe 10.20% and 14.55% (its loss still at ln 10, 2.30; 6 min
  42 s), the modern one 28.00% and 41.45% (9 min 42 s; BatchNorm makes a CPU step 1.5x slower).

Quick variant, no network needed:

  python launch.py --config=experiments/default.py:digits --workdir=/tmp/nin_digits

  Hardware: 2 CPU cores. Time: ~1 minute including start-up. Expected: >= 97% test accuracy
  on the 359 held-out digits (98.33% with seed 0: 25-30 s of training, 29-35 s in all, on 2 cores of
  an AMD EPYC with AVX-512 on 2026-12-04).

The config string after the colon is a comma-separated list, as in big_vision
(nin_jax/config_string.py): named variants (augment, digits, holdout, imagenet, imagenette,
modern; the dataset first, whatever the order), and key=value fields, set after every variant:

  python launch.py --workdir=/tmp/nin_fc \
      '--config=experiments/default.py:digits,num_epochs=5,model.head=fc,model.fc_hidden=(64,)'

A value is parsed to the field's type: 5 for an int, 0.01 for a float, true/false for a bool,
(64,) or (100,150) for a tuple (commas inside parentheses do not split; quote them for the shell).
`augment` is the paper's shifts and flips as they apply to the dataset: 4 pixels of 32, 1 of
the digits' 8, and no flips of digits or house numbers (a mirrored 2 is no 2); change them with
augment.crop_padding=2 or augment.flip=true. An unknown variant or field, a bad value, an empty
item or a field given twice is one line of error. --config.x=v flags are applied after all of this:
--config.model.head=fc, --config.optimizer.learning_rate=0.01.
"""
import ml_collections
from ml_collections import config_dict

from nin_jax import models
from nin_jax.config_string import apply_overrides, parse_variant, section_of
from nin_jax.errors import ConfigError

# The named variants of the config string; combine them with commas (module docstring).
VARIANTS = {
    "augment": "the paper's random shifts and flips, for its 8.81% on CIFAR-10",
    "digits": "the embedded 8x8 digits, about 1 minute on 2 CPU cores",
    "holdout": "hold out a validation split: the paper's 10,000 of CIFAR-10's training images",
    "imagenet": "the 224-pixel NiN on ImageNet (imagenet2012, streamed), the Caffe-zoo recipe",
    "imagenette": "the imagenet recipe on imagenette, ImageNet's 10-class subset of ~13k images",
    "modern": "NIN trained as it is trained today: BatchNorm, He init, Nesterov, warm-up + cosine, "
              "label smoothing, shifts and flips",
}
DATASET_VARIANTS = ("digits", "imagenet", "imagenette")  # at most one of them
# Datasets whose mirrored images are still images of their class: `augment` flips only these.
MIRROR_SYMMETRIC = ("cifar10", "cifar100")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # --- Data (nin_jax/data.py) -------------------------------------------------------------------
  # cifar10 | cifar100 | svhn_cropped | mnist | digits | npz | synthetic, loaded into memory;
  # imagenet2012 | imagenette | imagenet_resized/32x32 | imagenet_resized/64x64, streamed
  config.dataset = "cifar10"
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
  # The streamed datasets (imagenet2012, imagenette, imagenet_resized/*: nin_jax/streaming.py),
  # decoded and cropped on the host to image_size x image_size; augment.flip flips them.
  # crop: "random_resized" (Inception's: min_area..100% of the image, aspect 3/4..4/3) or
  # "resize_crop" (the Caffe recipe: the image warped to image_size / eval_crop_fraction square,
  # then a random image_size crop). Evaluation: the centre image_size of the image resized to
  # image_size / eval_crop_fraction (224 of 256): warped to a square for resize_crop, on its
  # shorter side for random_resized. shuffle_buffer: undecoded records per data part (~110 KB
  # each for ImageNet: 0.45 GB of host memory at 4,096, twice that near an epoch's end).
  config.streaming = ml_collections.ConfigDict(dict(
      image_size=224, crop="random_resized", min_area=0.08, eval_crop_fraction=0.875,
      shuffle_buffer=4096))
  # Training examples held out for validation (stratified by class, the same for every run), before
  # any preprocessing is fitted; evaluated beside the test set. The paper tuned its settings on
  # 10,000 of CIFAR-10's 50,000 training images (section 4.2, as the maxout paper did; not in
  # NIN_REFERENCE.md): the `holdout` variant. 0: none.
  config.validation_examples = 0

  # --- Model (nin_jax/models.py) ----------------------------------------------------------------
  # Every field of models.NIN but num_classes and the device axis, at NIN's defaults (the paper's
  # network: nin_cifar, GAP head, 2 1x1 layers per block, dropout 0.5, float32 at full precision
  # on every platform, no normalisation). models.CHOICES lists the values of the named fields.
  config.model = section_of(models.NIN, skip=("axis_name",))

  # --- Optimisation: the authors' recipe in SGD terms (NIN_REFERENCE.md) --------------------------
  config.seed = 0
  config.batch_size = 128              # global, over all devices and hosts
  config.eval_batch_size = 512
  # Per device, compute the gradient in micro-batches of this many examples and average: the same
  # update, less memory traffic. 0: the whole per-device batch at once. On CPU, 16 makes the
  # CIFAR step ~25% faster (docs/speed.md); on TPU and GPU keep 0, big batches suit them.
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
  config.optimizer.label_smoothing = 0.0           # of the training targets; 0: the paper's one-hot

  # --- Bookkeeping ------------------------------------------------------------------------------
  config.log_every_steps = 100
  config.eval_every_steps = 3900       # ~10 epochs; 0: only at the end
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.stuck_loss_steps = 2000       # stop when the loss sits at ln(classes) this long; 0: off
  config.stuck_loss_tolerance = 1e-3

  # --- Variants and key=value fields of the config string (nin_jax/config_string.py) ------------
  names, overrides = parse_variant(variant)
  unknown = [name for name in names if name not in VARIANTS]
  if unknown:
    raise ConfigError(
        f"unknown variant {unknown[0]!r}; known: " +
        ", ".join(f"{name} ({what})" for name, what in VARIANTS.items()) +
        "; combine them with commas and set fields with key=value, for example "
        "experiments/default.py:digits,num_epochs=5")
  chosen = [name for name in names if name in DATASET_VARIANTS]
  if len(chosen) > 1:
    raise ConfigError(f"the variants {' and '.join(chosen)} each choose a dataset; give one")
  if "dataset" in overrides:  # first: what `augment` and `holdout` do depends on the dataset
    apply_overrides(config, {"dataset": overrides["dataset"]})
  if "digits" in names:
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
  if "imagenet" in names or "imagenette" in names:
    imagenet_recipe(config, "imagenette" if "imagenette" in names else "imagenet2012")
  if "modern" in names:
    modern_recipe(config)
  # After the dataset, whatever the order given: both depend on it.
  if "augment" in names or "modern" in names:
    # The paper's 8.81%: translations and horizontal flips. It gives no shift; 4 pixels of 32 is
    # common, so 1/8 of the image side here (1 pixel on the 8x8 digits). Flips only where a
    # mirrored image is still an image of its class (not digits, MNIST or SVHN's house numbers).
    size = {"digits": 8, "mnist": 28}.get(config.dataset, 32)
    config.augment.crop_padding = max(1, size // 8)
    config.augment.flip = config.dataset in MIRROR_SYMMETRIC
  if "holdout" in names:
    # The paper's tuning split: 10,000 of CIFAR-10's 50,000 training images held out (section
    # 4.2); on the digits, 20% of the 1,438.
    config.validation_examples = 288 if config.dataset == "digits" else 10_000
  return apply_overrides(config, overrides)


def modern_recipe(config):
  """The same NIN trained the way it is trained today, on the dataset `config` holds; every piece
  is a config field whose default is the paper's, so without `modern` nothing changes.

  What the reproductions that train it well did: the Torch NIN with BatchNorm reached 92% on
  CIFAR-10 (NIN_REFERENCE.md; its recipe, the defaults of szagoruyko/cifar.torch's train.lua:
  batch 128, SGD momentum 0.9, weight decay 5e-4, flips, 300 epochs with the rate halved every
  25); a Keras reproduction 91.63% (NIN_REFERENCE.md: per-channel mean/std, flips and shifts, 200
  epochs, Nesterov momentum); imgclsmob's pretrained nin_cifar10 92.57% (recipe not published).
  The pieces none of them used, from the papers that introduced them: He init (He et al. 2015,
  for ReLU networks; NIN_REFERENCE.md lists it among the fixes of the ln 10 plateau), the linear
  warm-up over 5 epochs (Goyal et al. 2017), cosine decay to 0 (Loshchilov & Hutter 2017, SGDR
  without restarts; the flax ImageNet example's and big_vision's schedule), label smoothing 0.1
  (Szegedy et al. 2016).
  Chosen here: BatchNorm before every ReLU (the Torch one's layout, model.norm), He init,
  per-channel mean/std, SGD with Nesterov momentum 0.9 at 0.1 for every layer (BatchNorm keeps
  the class maps alive, which the authors' 0.1x rate on them guarded against), a linear warm-up
  (5 epochs; 3 of the digits' 60) then cosine decay to 0, label smoothing 0.1, weight decay 5e-4
  on the kernels only (train.is_weight; the Torch one decayed every parameter, BN's scale and
  offset too) and batch 128 (the Torch one's), 200 epochs (the Keras one's), the paper's shifts
  and flips (`augment`), and mixed precision where the platform computes bfloat16 natively
  (model.dtype=native: bfloat16 convolutions on TPU, GPU and CPUs with bfloat16 instructions,
  float32 elsewhere, docs/mixed_precision.md). The digits keep their own batch and epochs.
  """
  config.preprocess = "mean_std"
  config.model.norm = "batch"
  config.model.initializer = "he"
  config.model.dtype = models.NATIVE  # bfloat16 where the platform computes it natively
  config.optimizer.nesterov = True
  config.optimizer.momentum = 0.9
  config.optimizer.learning_rate = 0.1
  config.optimizer.bias_lr_multiplier = 1.0
  config.optimizer.classifier_lr_multiplier = 1.0
  config.optimizer.schedule = "cosine"
  config.optimizer.label_smoothing = 0.1
  config.optimizer.weight_decay = 5e-4
  if config.dataset == "digits":
    config.optimizer.warmup_epochs = 3.0
  else:
    config.batch_size = 128
    config.num_epochs = 200.0
    config.optimizer.warmup_epochs = 5.0


def imagenet_recipe(config, dataset: str):
  """The Caffe-zoo ImageNet NiN (NIN_REFERENCE.md, "ImageNet NIN (Caffe zoo)": 11x11/4 96-96-96,
  5x5 256-256-256, 3x3 384-384-384, dropout, 3x3 1024-1024-classes, average 6x6; 59.36% top-1;
  lr 0.01, weight decay 5e-4, batch 64) on `dataset`, streamed (nin_jax/streaming.py).

  What NIN_REFERENCE.md does not give, and what is chosen here instead: the schedule (here /10
  every 30 epochs for 90 epochs, the ImageNet convention of the era's Caffe reference models and
  of torchvision's recipe); the crop (here Caffe's: the image warped to 256 x 256, a random
  224 x 224 crop and a mirror; centre 224 of 256 to evaluate); normalisation (Caffe subtracted a
  mean image; here per-channel mean and std); the init and per-layer rates (here the authors'
  CIFAR-10 ones: N(0, 0.05^2), biases 2x, the class-map layer 0.1x, whose ReLU dies at the full
  rate on ImageNet too: ln(1000), NIN_REFERENCE.md).
  """
  config.dataset = dataset
  config.preprocess = "mean_std"  # ImageNet's per-channel mean and std (streaming.py)
  config.streaming.image_size = 224
  config.streaming.crop = "resize_crop"
  config.streaming.eval_crop_fraction = 224 / 256
  config.augment.crop_padding = 0
  config.augment.flip = True
  config.model.preset = "nin_imagenet"
  config.batch_size = 64
  config.eval_batch_size = 256
  config.optimizer.learning_rate = 0.01
  config.optimizer.weight_decay = 5e-4
  config.optimizer.schedule = "step"
  config.optimizer.decay_factor = 0.1
  if dataset == "imagenet2012":  # 1,281,167 training images: 20,018 steps an epoch
    config.num_epochs = 90.0
    config.optimizer.decay_epochs = (30, 60)
    config.log_every_steps = 500
    config.eval_every_steps = 100_000  # ~5 epochs (50,000 validation images take a while)
    config.checkpoint_every_steps = 5000
  else:  # imagenette, 9,469 training images: 147 steps an epoch
    config.num_epochs = 40.0
    config.optimizer.decay_epochs = (25, 35)
    config.log_every_steps = 50
    config.eval_every_steps = 735  # 5 epochs
    config.checkpoint_every_steps = 500


def ablation(arms: dict, num_seeds: int, paper_test_error=None) -> ml_collections.ConfigDict:
  """The `ablation` section of a sweep config (nin_jax/sweep.py): every arm with num_seeds
  seeds from `config.seed` (0 .. num_seeds - 1 by default).

  `arms`: {arm name: {dotted field: value}}; an arm may set several fields. One field, one
  value an arm: `sweep.arm_set("model.num_1x1", (0, 1, 2))`; a grid (every combination of
  several axes): `sweep.grid(axis_a, axis_b)`. `paper_test_error`: {arm: the paper's CIFAR-10
  test error in %}, shown beside the results of a sweep on cifar10 (the dataset a sweep ran on,
  after every flag) and of no other.
  """
  return ml_collections.ConfigDict(dict(
      # ((name, ((dotted field, value), ...)), ...): in order, and names may hold dots (lr_0.05),
      # which a ConfigDict's keys may not
      arms=tuple((name, tuple(overrides.items())) for name, overrides in arms.items()),
      num_seeds=num_seeds,
      paper_test_error=tuple((paper_test_error or {}).items()),  # pairs too: arm names
      # Where runs train (docs/scale.md); 0 is
      # automatic: one device per run, one run per device (on CPU: 3, or one per device).
      devices_per_run=0, runs_at_once=0))
