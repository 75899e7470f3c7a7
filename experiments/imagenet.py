r"""The 224-pixel NiN on ImageNet, the Caffe-zoo recipe (experiments/default.py, imagenet_recipe:
what NIN_REFERENCE.md gives and what it does not), with the data streamed from TFDS's files.

  python launch.py --config=experiments/imagenet.py --workdir=gs://YOUR_BUCKET/nin_imagenet \
      --config.data_dir=gs://YOUR_BUCKET/tensorflow_datasets

  Needs imagenet2012 prepared by TFDS in data_dir (docs/imagenet.md). Hardware: a
  Cloud TPU VM (v4-8 or larger) or a GPU host with >= 8 CPU cores a device to decode JPEGs.
  Time: not measured (90 epochs of 1.28 M images at 2.04 GFLOP per image forward by XLA's
  count, ~6 forward and backward; docs/imagenet.md has the host decode rate this needs). Expected:
  59.36% top-1 on the 50,000 validation images, the Caffe-zoo model's (NIN_REFERENCE.md); not
  reproduced by nin-jax yet.

On imagenette (ImageNet's 10 easy classes, 9,469 training and 3,925 validation photographs;
tfds.builder("imagenette").download_and_prepare() fetches 1.5 GB):

  python launch.py --config=experiments/imagenet.py:imagenette --workdir=/tmp/nin_imagenette \
      --config.data_dir=~/tensorflow_datasets

  Hardware: one GPU. Time and accuracy: not measured (no GPU and no internet in the machines that
  built this); on 2 CPU cores a 224-pixel step of 64 took 17 s (docs/imagenet.md: 10 steps on a
  stand-in in 176 s).

The ablations run on it through the same variants: --config=experiments/ablate_head.py:imagenette,
experiments/ablate_depth.py:imagenet. Fields after the colon as everywhere:
experiments/imagenet.py:imagenette,num_epochs=10.
"""
import ml_collections

from experiments import default
from nin_jax import config_string


@config_string.with_overrides  # key=value fields of the config string apply after this function
def get_config(variant: str = "") -> ml_collections.ConfigDict:
  names = config_string.variant_names(variant)
  dataset = [] if {"imagenet", "imagenette"} & set(names) else ["imagenet"]
  return default.get_config(",".join(dataset + [item for item in variant.split(",") if item]))
