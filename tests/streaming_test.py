"""The streamed datasets (nin_jax/streaming.py) on a stand-in imagenette that the tests write in
TFDS's on-disk format: JPEGs of varying sizes, grayscale and CMYK ones among them, read through
tfds.builder as a user's real data would be."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, final_params, flatten, launch_here, set_fields, xla_flags

from experiments import default
from nin_jax import cam, data, local_tfds, streaming, train
from nin_jax.errors import ConfigError, DataError
from nin_jax.placement import Placement

NUM_TRAIN, NUM_TEST = 48, 21


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  local_tfds.write(path, "imagenette", num_train=NUM_TRAIN, num_test=NUM_TEST)
  return path


def imagenette_config(data_dir, **fields):
  """A short run on the stand-in: 16 x 16 crops, the small digits network, batch 8."""
  config = default.get_config("")
  config.dataset, config.data_dir, config.preprocess = "imagenette", str(data_dir), "mean_std"
  config.streaming.image_size = 16
  config.augment.flip = True
  config.model.preset = "nin_digits"
  config.model.init_stddev = 0.1
  config.batch_size = config.eval_batch_size = 8
  config.num_epochs = 2.0  # 6 steps an epoch
  config.log_every_steps = config.checkpoint_every_steps = 4
  config.eval_every_steps = 0
  return set_fields(config, fields)


def split_labels(data_dir, split):
  import tensorflow_datasets as tfds
  builder = tfds.builder("imagenette", data_dir=str(data_dir))
  return sorted(int(r["label"]) for r in tfds.as_numpy(builder.as_dataset(
      split=split, decoders={"image": tfds.decode.SkipDecoding()})))


def test_training_batches_shapes_labels_and_crops(data_dir):
  dataset = data.load_dataset(imagenette_config(data_dir))
  assert (dataset.num_train_examples, dataset.num_test_examples, dataset.num_classes) == (
      NUM_TRAIN, NUM_TEST, 10)
  batches = list(dataset.train_batches(0, 12, parts=2))  # two epochs of 6 steps
  for batch in batches:
    assert batch["image"].shape == (4, 2, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4, 2) and batch["label"].dtype == np.int32
    assert np.all(np.isfinite(batch["image"]))
  # An epoch visits every training example once (48 = 6 steps of 8): its labels are the split's.
  for epoch in (0, 1):
    labels = np.concatenate([b["label"].ravel() for b in batches[6 * epoch:6 * epoch + 6]])
    assert sorted(labels.tolist()) == split_labels(data_dir, "train")
  # Epochs differ in order and crops; pixels stay the 0..255 of a JPEG, normalised.
  assert not np.array_equal(batches[0]["image"], batches[6]["image"])
  pixels = np.concatenate([b["image"] for b in batches]).reshape(-1, 3)
  raw = pixels * np.array([0.229, 0.224, 0.225]) * 255 + np.array([0.485, 0.456, 0.406]) * 255
  assert raw.min() >= -1e-3 and raw.max() <= 255 + 1e-3


def test_a_step_is_a_function_of_seed_and_step(data_dir):
  dataset = data.load_dataset(imagenette_config(data_dir))
  straight = list(dataset.train_batches(0, 14, parts=2))
  resumed = list(dataset.train_batches(7, 14, parts=2))  # mid-epoch 1, as after a restart
  for a, b in zip(straight[7:], resumed, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  other_seed = data.load_dataset(imagenette_config(data_dir, seed=1))
  assert not np.array_equal(next(other_seed.train_batches(0, 1, 2))["label"],
                            straight[0]["label"])


def test_tensorflows_global_seed_does_not_change_the_order(data_dir):
  import tensorflow as tf
  dataset = data.load_dataset(imagenette_config(data_dir))
  before = next(dataset.train_batches(0, 1, parts=2))
  tf.random.set_seed(123)  # as a notebook or another library might
  try:
    after = next(dataset.train_batches(0, 1, parts=2))
  finally:
    tf.random.set_seed(None)
  np.testing.assert_array_equal(before["label"], after["label"])
  np.testing.assert_array_equal(before["image"], after["image"])


def test_shuffle_buffers_larger_than_memory_are_one_line(data_dir, monkeypatch):
  dataset = data.load_dataset(imagenette_config(data_dir, **{"streaming.shuffle_buffer": 10**10}))
  next(dataset.train_batches(0, 1, parts=2))  # a buffer never holds more than its part
  monkeypatch.setattr(streaming, "host_available_bytes", lambda: 100_000)  # a 100 KB host
  with pytest.raises(DataError, match=r"shuffle buffers need .* 24 records .*lower "
                                      r"--config.streaming.shuffle_buffer"):
    next(dataset.train_batches(0, 1, parts=2))


def test_two_hosts_feed_what_one_host_feeds_with_the_same_parts(data_dir):
  config = imagenette_config(data_dir)
  def host_batches(process_index, process_count):
    dataset = data.load_dataset(config, Placement(None, process_index, process_count))
    return [{k: v.reshape(-1, *v.shape[2:]) for k, v in b.items()}
            for b in dataset.train_batches(0, 8, parts=2)]
  one = host_batches(0, 1)
  hosts = [host_batches(0, 2), host_batches(1, 2)]
  for step, batch in enumerate(one):
    for key in ("image", "label"):  # host h's share is the global batch's h-th half
      np.testing.assert_array_equal(batch[key][:8], np.concatenate(
          [hosts[0][step][key][:4], hosts[1][step][key][:4]]), err_msg=f"{key}, step {step}")


@pytest.mark.parametrize("hosts", [1, 2])
def test_evaluation_counts_every_example_once(data_dir, hosts):
  config = imagenette_config(data_dir)
  labels, counts = [], []
  for host in range(hosts):
    placement = Placement(None, host, hosts)
    batches = list(data.load_dataset(config, placement).eval_batches("test", 8, placement))
    counts.append(len(batches))
    for batch in batches:
      assert batch["image"].shape == (4, 8 // hosts // 4, 16, 16, 3)
      labels += batch["label"].ravel()[batch["mask"].ravel() > 0].tolist()
  assert len(set(counts)) == 1  # every host the same number of batches
  assert sorted(labels) == split_labels(data_dir, "validation")


def test_grayscale_and_cmyk_jpegs_decode_to_rgb(data_dir):
  config = imagenette_config(data_dir)
  placement = Placement.everywhere()
  images = np.concatenate([b["image"].reshape(-1, 16, 16, 3)[b["mask"].ravel() > 0]
                           for b in data.load_dataset(config).eval_batches("test", 8, placement)])
  raw = images * np.array([0.229, 0.224, 0.225]) * 255 + np.array([0.485, 0.456, 0.406]) * 255
  gray = np.all(np.abs(raw - raw[..., :1]) < 1e-2, axis=(1, 2, 3))
  # local_tfds cycles RGB, L, CMYK: 7 of the 21 are grayscale; CMYK ones decode to colour
  assert gray.sum() == 7, gray
  assert len(images) == NUM_TEST


def test_resumed_run_equals_uninterrupted_run(data_dir, tmp_path):
  # Over 20 s: three streamed runs through tf.data.
  config = imagenette_config(data_dir)
  straight = train.train_and_evaluate(config, tmp_path / "straight", progress_bar=False)
  first = train.train_and_evaluate(config, tmp_path / "resumed", stop_at_step=5,
                                   progress_bar=False)
  assert first["step"] == 5
  second = train.train_and_evaluate(config, tmp_path / "resumed", progress_bar=False)
  assert second["step"] == straight["step"] == 12 and second["finished"]
  a, b = flatten(final_params(tmp_path / "straight")), flatten(final_params(tmp_path / "resumed"))
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
  assert second["test_accuracy"] == straight["test_accuracy"]
  assert second["test_loss"] == straight["test_loss"]
  # the class activation maps of a streamed run: its first test images, decoded and cropped
  cam.write_figure(tmp_path / "straight", 4, tmp_path / "maps.png")
  assert (tmp_path / "maps.png").stat().st_size > 0


def test_held_out_validation_is_the_tail_of_the_training_split(data_dir, tmp_path):
  config = imagenette_config(data_dir, validation_examples=8)
  dataset = data.load_dataset(config)
  assert dataset.num_train_examples == 40 and dataset.num_validation_examples == 8
  placement = Placement.everywhere()
  held_out = [l for b in dataset.eval_batches("validation", 8, placement)
              for l, m in zip(b["label"].ravel(), b["mask"].ravel()) if m]
  assert sorted(held_out) == split_labels(data_dir, "train[40:48]")
  summary = train.train_and_evaluate(config, tmp_path, progress_bar=False)
  assert summary["validation_examples"] == 8 and summary["validation_accuracy"] is not None


def test_missing_data_is_one_line_with_the_fixes(tmp_path):
  config = imagenette_config(tmp_path)
  config.dataset = "imagenet2012"
  with pytest.raises(DataError) as error:
    train.train_and_evaluate(config, tmp_path / "run")
  message = str(error.value)
  assert "imagenet2012" in message and str(tmp_path) in message and "\n" not in message
  assert "--config.data_dir" in message
  assert "ILSVRC2012_img_train.tar" in message  # TFDS cannot download ImageNet itself
  assert not (tmp_path / "run").exists()  # nothing written
  config.dataset = "imagenette/999px"  # a TFDS config that does not exist
  with pytest.raises(DataError, match=r"TFDS has no dataset 'imagenette/999px' .*check "
                                      r"--config.dataset"):
    train.train_and_evaluate(config, tmp_path / "run")


def test_a_tfds_config_name_is_streamed_too(data_dir):
  dataset = data.load_dataset(imagenette_config(data_dir, dataset="imagenette/full-size-v2"))
  assert dataset.num_train_examples == NUM_TRAIN


def test_a_cut_validation_file_keeps_the_training_and_a_relaunch_may_change_config(
    data_dir, tmp_path):
  copy = tmp_path / "tfds"
  shutil.copytree(data_dir, copy)
  [record] = copy.glob("imagenette/*/*/imagenette-validation.tfrecord-*")
  whole = record.read_bytes()
  record.write_bytes(whole[:len(whole) // 2])
  config = imagenette_config(copy)
  with pytest.raises(DataError, match=r"cannot be read \(DataLossError: [^{]"):
    train.train_and_evaluate(config, tmp_path / "run", progress_bar=False)
  # the training of all 12 steps is kept: only the evaluation failed
  assert (tmp_path / "run" / "checkpoints" / "12").is_dir()
  record.write_bytes(whole)
  summary = train.train_and_evaluate(config, tmp_path / "run", progress_bar=False)
  assert summary["finished"] and summary["step"] == 12


def test_a_launch_that_failed_before_training_does_not_hold_its_config(data_dir, tmp_path):
  copy = tmp_path / "tfds"
  shutil.copytree(data_dir, copy)
  [record] = copy.glob("imagenette/*/*/imagenette-train.tfrecord-*")
  whole = record.read_bytes()
  record.write_bytes(whole[:len(whole) // 2])
  with pytest.raises(DataError):
    train.train_and_evaluate(imagenette_config(copy), tmp_path / "run", progress_bar=False)
  record.write_bytes(whole)  # fixed, and the user changes the batch size too
  summary = train.train_and_evaluate(imagenette_config(copy, batch_size=16), tmp_path / "run",
                                     progress_bar=False)
  assert summary["finished"]


def test_resuming_on_other_data_under_the_same_name_is_one_line(data_dir, tmp_path):
  config = imagenette_config(data_dir)
  train.train_and_evaluate(config, tmp_path / "run", progress_bar=False, stop_at_step=4)
  smaller = tmp_path / "smaller"
  local_tfds.write(smaller, "imagenette", num_train=40, num_test=10)
  with pytest.raises(ConfigError, match=r"trained on other data .*num_train_examples 48 there, "
                                        r"40 now"):
    train.train_and_evaluate(imagenette_config(smaller), tmp_path / "run", progress_bar=False)
  with pytest.raises(ValueError, match="already holds a prepared imagenette"):
    local_tfds.write(smaller, "imagenette")  # TFDS would keep the old one and write nothing


def test_imagenet_download_without_its_archives_is_one_line(tmp_path):
  config = imagenette_config(tmp_path, dataset="imagenet2012", download=True)
  with pytest.raises(DataError, match=r"TFDS cannot download 'imagenet2012' itself"):
    train.train_and_evaluate(config, tmp_path / "run")
  assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_a_cut_file_is_one_line(data_dir, tmp_path):
  copy = tmp_path / "tfds"
  shutil.copytree(data_dir, copy)
  [record] = copy.glob("imagenette/*/*/imagenette-train.tfrecord-*")
  record.write_bytes(record.read_bytes()[:len(record.read_bytes()) // 2])
  with pytest.raises(DataError, match=r"cannot be read .*prepare it again") as error:
    train.train_and_evaluate(imagenette_config(copy), tmp_path / "run", progress_bar=False)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("field, value, message", [
    ("preprocess", "gcn_zca", "use --config.preprocess=mean_std"),
    ("augment.crop_padding", 4, "set --config.augment.crop_padding=0"),
    ("streaming.crop", "centre", "is not one of"),
    ("streaming.min_area", 0.0, "must be in \\(0, 1\\]"),
    ("streaming.image_size", 8, "too small|smallest"),
    ("data_shards", -1, "must be >= 0"),
])
def test_configs_that_cannot_stream_are_one_line(data_dir, tmp_path, field, value, message):
  config = imagenette_config(data_dir, **{field: value})
  if field == "streaming.image_size":
    config.model.preset = "nin_imagenet"
  with pytest.raises(ConfigError, match=message):
    train.train_and_evaluate(config, tmp_path)


def test_launch_trains_and_resumes_on_two_hosts_like_one(data_dir, tmp_path):
  # Over 20 s: 2 processes on loopback, each importing TensorFlow for the stream, and the same
  # launch in this 4-device process.
  from multihost_test import launch_two_processes
  args = ["--config=experiments/imagenet.py:imagenette", f"--config.data_dir={data_dir}",
          "--config.streaming.image_size=16", "--config.model.preset=nin_digits",
          "--config.batch_size=8", "--config.eval_batch_size=8", "--config.num_epochs=1",
          "--config.model.dropout=0.0", "--config.data_shards=2", "--config.log_every_steps=2",
          "--config.checkpoint_every_steps=4", "--config.optimizer.warmup_epochs=0"]
  launch_two_processes(tmp_path / "two", args)
  one = launch_here(*args, f"--workdir={tmp_path / 'one'}")
  assert one.returncode == 0, one.stderr[-3000:]
  a, b = flatten(final_params(tmp_path / "two")), flatten(final_params(tmp_path / "one"))
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=2e-5, err_msg=name)
  summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("two", "one")]
  assert summaries[0]["test_accuracy"] == summaries[1]["test_accuracy"]
  assert summaries[0]["step"] == summaries[1]["step"] == 6


def test_kill_9_then_relaunch_is_bit_identical(data_dir, tmp_path):
  # Over 20 s: a launch.py process with TensorFlow, killed (a kill needs a real process); the
  # reference and the relaunch run launch.py in this process, on the same 4 devices.
  args = ["--config=experiments/imagenet.py:imagenette", f"--config.data_dir={data_dir}",
          "--config.streaming.image_size=16", "--config.model.preset=nin_digits",
          "--config.batch_size=8", "--config.eval_batch_size=8", "--config.num_epochs=3",
          "--config.log_every_steps=1", "--config.checkpoint_every_steps=5",
          "--config.eval_every_steps=0", "--config.model.init_stddev=0.1"]
  reference = launch_here(*args, f"--workdir={tmp_path / 'reference'}")
  assert reference.returncode == 0, reference.stderr[-2000:]
  env = dict(os.environ, XLA_FLAGS=xla_flags(4))
  workdir = tmp_path / "killed"
  process = subprocess.Popen([sys.executable, "launch.py", *args, f"--workdir={workdir}"],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  def saved():  # checkpoints written to the end (Orbax writes them in the background)
    folder = workdir / "checkpoints"
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())
  while not saved() and process.poll() is None:
    assert time.time() < deadline
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
  resumed = launch_here(*args, f"--workdir={workdir}")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  # every checkpoint (5, 10, 15) is mid-epoch (6 steps an epoch): the records before it are skipped
  assert re.search(r"Resuming at step (5|10|15), \d steps into epoch", resumed.stderr), [
      line for line in resumed.stderr.splitlines() if "esum" in line]
  expected, actual = flatten(final_params(tmp_path / "reference")), flatten(final_params(workdir))
  for name in expected:
    assert actual[name].tobytes() == expected[name].tobytes(), name
