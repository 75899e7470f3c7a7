"""Data: the TFDS path on real TFDS files, the .npz and digits sources, batches, augmentation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import digits_config

from nin_jax import data, placement
from nin_jax.errors import ConfigError, DataError
from nin_jax.placement import Placement


class TinyMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A few MNIST-shaped examples, written in TFDS's on-disk format under the name 'mnist'.

  The loader then reads them with TFDS's real MNIST builder, exactly as it would read the full
  dataset prepared by `tfds.builder('mnist').download_and_prepare()`.
  """
  name = "mnist"
  VERSION = tfds.core.Version("3.0.1")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, supervised_keys=("image", "label"),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(40, seed=0), "test": self._generate_examples(13, 1)}

  def _generate_examples(self, num, seed):
    rng = np.random.default_rng(seed)
    for i in range(num):
      yield i, {"image": rng.integers(0, 256, (28, 28, 1), dtype=np.uint8), "label": i % 10}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  TinyMnist(data_dir=str(data_dir)).download_and_prepare()
  return data_dir


def test_tfds_source_reads_prepared_tfds_files(tfds_dir):
  dataset = data.load_dataset(digits_config(dataset="mnist", data_dir=str(tfds_dir)))
  assert dataset.x_train.shape == (40, 28, 28, 1) and dataset.x_train.dtype == np.float32
  assert dataset.x_test.shape == (13, 28, 28, 1)
  assert (dataset.num_classes, dataset.num_train_examples, dataset.num_test_examples) == (10, 40, 13)
  assert sorted(dataset.y_train) == sorted(i % 10 for i in range(40))
  # mean/std fitted on the training split: standardised there
  assert abs(dataset.x_train.mean()) < 1e-4 and abs(dataset.x_train.std() - 1) < 1e-3


def test_missing_tfds_dataset_is_one_clear_error_and_writes_nothing(tmp_path):
  with pytest.raises(DataError) as error:
    data.load_dataset(digits_config(dataset="cifar10", data_dir=str(tmp_path)))
  message = str(error.value)
  for hint in ("cifar10", str(tmp_path), "dataset=digits", "data_dir"):
    assert hint in message
  assert list(tmp_path.iterdir()) == []


def test_data_dir_that_does_not_exist(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    data.load_dataset(digits_config(dataset="cifar10", data_dir=str(tmp_path / "nope")))


def test_digits_are_the_real_embedded_digits_with_a_fixed_split():
  first = data.load_dataset(digits_config())
  again = data.load_digits()  # loaded anew, not the cached copy
  assert first.num_train_examples + first.num_test_examples == 1797
  assert first.x_train.shape == (1438, 8, 8, 1) and first.x_test.shape == (359, 8, 8, 1)
  np.testing.assert_array_equal(first.y_test, again.y_test)
  assert set(first.y_train) == set(range(10))
  # read from scikit-learn's own file (without importing it): what its loader returns
  from sklearn import datasets
  reference = datasets.load_digits()
  pixels, labels = data._sklearn_digits()
  np.testing.assert_array_equal(pixels, reference.data)
  np.testing.assert_array_equal(labels, reference.target)


def write_npz(path, **changes):
  rng = np.random.default_rng(0)
  arrays = {"x_train": rng.integers(0, 256, (20, 6, 6, 3), dtype=np.uint8),
            "y_train": np.arange(20) % 4, "x_test": rng.integers(0, 256, (7, 6, 6, 3), np.uint8),
            "y_test": np.arange(7) % 4}
  arrays.update(changes)
  np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
  return str(path)


def test_npz_source(tmp_path):
  dataset = data.load_dataset(digits_config(dataset="npz", npz_path=write_npz(tmp_path / "d.npz")))
  assert dataset.x_train.shape == (20, 6, 6, 3) and dataset.x_test.shape == (7, 6, 6, 3)
  assert dataset.num_classes == 4 and dataset.y_train.dtype == np.int32


@pytest.mark.parametrize("changes, message", [
    ({"y_test": None}, "lacks arrays"),
    ({"x_train": np.zeros((20, 6, 6, 3), np.float32)}, "must be uint8"),
    ({"y_train": np.arange(19)}, "20 images but y_train 19"),
])
def test_bad_npz_files_are_clear_errors(tmp_path, changes, message):
  path = write_npz(tmp_path / "bad.npz", **changes)
  with pytest.raises(DataError, match=message):
    data.load_dataset(digits_config(dataset="npz", npz_path=path))


_PIXELS = np.linspace(0, 1, 20 * 6 * 6 * 3).reshape(20, 6, 6, 3)  # floats 0..1


@pytest.mark.parametrize("changes, found, fix", [
    # channels-first: 8x8 digits would train as 3x8 images with 8 channels, 32x32 crash the model
    ({"x_train": np.zeros((20, 3, 8, 8), np.uint8), "x_test": np.zeros((7, 3, 8, 8), np.uint8)},
     "x_train has shape (20, 3, 8, 8): channels-first (NCHW)",
     "x_train = x_train.transpose(0, 2, 3, 1)"),
    ({"x_train": np.zeros((20, 3, 32, 32), np.uint8)},
     "x_train has shape (20, 3, 32, 32): channels-first (NCHW)",
     "x_train = x_train.transpose(0, 2, 3, 1)"),
    ({"x_test": np.zeros((7, 1, 28, 28), np.uint8)}, "x_test has shape (7, 1, 28, 28)",
     "x_test = x_test.transpose(0, 2, 3, 1)"),
    ({"x_train": np.zeros((20, 6, 6), np.uint8)}, "got uint8 (20, 6, 6): grayscale",
     "x_train = x_train[..., None]"),
    ({"x_train": _PIXELS.astype(np.float32)}, "got float32 (20, 6, 6, 3) with values in [0, 1]",
     "x_train = (x_train * 255).round().astype(np.uint8)"),
    ({"x_train": _PIXELS * 255}, "got float64 (20, 6, 6, 3) with values in [0, 255]",
     "x_train = x_train.round().astype(np.uint8)"),
    ({"x_train": _PIXELS - 0.5}, "got float64 (20, 6, 6, 3) with values in [-0.5, 0.5]: not raw",
     "normalises images itself (config.preprocess)"),
    ({"x_test": np.full((7, 6, 6, 3), 200, np.int64)},
     "got int64 (7, 6, 6, 3) with values in [200, 200]",
     "x_test = x_test.astype(np.uint8)"),
    ({"x_train": np.full((20, 6, 6, 3), 4095, np.uint16)}, "values in [4095, 4095], outside 0..255",
     "scale them to 0..255"),
    ({"y_train": np.eye(4)[np.arange(20) % 4]}, "got float64 (20, 4): one-hot labels",
     "y_train = y_train.argmax(1)"),
    ({"y_test": (np.arange(7) % 4)[:, None]}, "(7, 1): a column of labels",
     "y_test = y_test[:, 0]"),
    ({"y_train": (np.arange(20) % 4).astype(np.float32)}, "got float32 (20,): float labels",
     "y_train = y_train.astype(np.int64)"),
    ({"y_train": np.arange(20) % 4 + 1, "y_test": np.arange(7) % 4 + 1}, "labels start at 1",
     "y_train = y_train - 1; y_test = y_test - 1"),
    ({"y_test": np.arange(7) % 4 - 1}, "y_test holds negative labels (min -1)", "0..num_classes-1"),
    ({"x_test": np.zeros((7, 8, 8, 3), np.uint8)},
     "x_train has shape (20, 6, 6, 3) but x_test (7, 8, 8, 3)", "same height, width and channels"),
    # label conventions of other tools (issue 22, item 6): each went through or got wrong advice
    ({"y_train": (np.arange(20) % 4)[None, :]}, "(1, 20): a row of labels", "y_train = y_train[0]"),
    ({"y_train": np.eye(4)[np.arange(20) % 4] + np.eye(4)[(np.arange(20) + 1) % 4]},
     "20 rows hold several labels or none (multi-label)", "single-label classification"),
    ({"y_train": np.full((20, 4), 0.25)}, "scores or probabilities per class",
     "y_train = y_train.argmax(1)"),
    ({"y_test": np.array(["cat", "dog"] * 3 + ["cat"])}, "class names such as 'cat'",
     "np.searchsorted(classes, y_train)"),
    ({"y_train": np.where(np.arange(20) == 3, np.nan, np.arange(20) % 4)},
     "got float64 (20,): 1 NaN labels", "drop those examples"),
    ({"y_train": np.arange(20) % 2 * 9, "y_test": np.arange(7) % 2 * 9},
     "y_train uses 2 of labels 0..9: 8 classes (1, 2, 3, 4, 5...) have no example",
     "np.searchsorted(classes, y_test)"),
    ({"y_train": np.where(np.arange(20) == 0, 255, np.arange(20) % 4)},
     "uses 5 of labels 0..255 (255 or 65535 often marks 'ignore'): 251 classes", "np.unique"),
    ({"y_train": np.zeros(20, np.int64), "y_test": np.zeros(7, np.int64)},
     "y_train labels are all 0",
     "at least 2 classes"),
    ({"y_train": np.arange(20) % 10 + 1, "y_test": np.arange(7) % 10 + 1}, "labels start at 1",
     "10 for the digit 0: y_train[y_train == 10] = 0"),
    ({"y_train": np.arange(20) % 2 == 1}, "got bool (20,): true/false labels",
     "y_train = y_train.astype(np.int64)"),
    ({"y_train": np.arange(20) % 4 - 1}, "(min -1) (-1 often marks unlabelled examples",
     "np.searchsorted"),
    ({"x_test": np.zeros((0, 6, 6, 3), np.uint8), "y_test": np.zeros(0, np.int64)},
     "test split is empty (x_test (0, 6, 6, 3), y_test (0,))", "at least one example"),
])
def test_npz_in_another_convention_is_one_line_with_the_fix(tmp_path, changes, found, fix):
  path = write_npz(tmp_path / "other.npz", **changes)
  with pytest.raises(DataError) as error:
    data.load_npz(path)
  message = str(error.value)
  assert found in message and fix in message and "\n" not in message, message


def test_npz_edge_cases_that_are_fine_are_accepted(tmp_path):
  # NHWC whose height is 3 or 4 is not channels-first; a split without label 0 is not 1-based
  path = write_npz(tmp_path / "d.npz", x_train=np.zeros((20, 4, 6, 3), np.uint8),
                   x_test=np.zeros((7, 4, 6, 3), np.uint8), y_train=np.arange(20) % 5,
                   y_test=np.arange(7) % 4 + 1)
  dataset = data.load_npz(path)
  assert dataset.x_train.shape == (20, 4, 6, 3) and dataset.num_classes == 5


def test_an_npz_path_typed_without_the_extension_numpy_added_is_one_line(tmp_path):
  np.savez(tmp_path / "mydata", x=np.zeros(1))  # numpy writes mydata.npz
  with pytest.raises(DataError, match=r"does not exist, but .*mydata.npz does \(numpy.savez adds "
                                      r"'.npz'.*--config.npz_path=.*mydata.npz$"):
    data.load_npz(str(tmp_path / "mydata"))
  labels = np.array(["cat", "dog"], dtype=object)  # a list or a pandas column: pickled objects
  np.savez(tmp_path / "objects.npz", x_train=np.zeros((2, 6, 6, 3), np.uint8), y_train=labels,
           x_test=np.zeros((2, 6, 6, 3), np.uint8), y_test=labels)
  with pytest.raises(DataError, match=r"holds an array of Python objects \(class names"):
    data.load_npz(str(tmp_path / "objects.npz"))


@pytest.mark.parametrize("fields, message", [
    ({"preprocess": "gcn_zca"}, r"gcn_zca on 64x64x3 images needs a 12,288 x 12,288 covariance"),
    ({"augment.crop_padding": 64}, r"crop_padding=64 must be smaller than the images' side of 64"),
])
def test_npz_images_are_checked_like_known_ones_once_loaded(tmp_path, fields, message):
  # validate() knows no npz image shape: before, ZCA was fitted on these (a 1.2 GB covariance)
  path = write_npz(tmp_path / "big.npz", x_train=np.zeros((20, 64, 64, 3), np.uint8),
                   x_test=np.zeros((7, 64, 64, 3), np.uint8))
  with pytest.raises(ConfigError, match=message):
    data.load_dataset(digits_config(dataset="npz", npz_path=path, **fields))


def test_npy_instead_of_npz_is_one_line(tmp_path):
  np.save(tmp_path / "x.npy", np.zeros((20, 6, 6, 3), np.uint8))
  with pytest.raises(DataError, match=r"holds one array uint8 \(20, 6, 6, 3\).*numpy.savez"):
    data.load_npz(str(tmp_path / "x.npy"))


def test_synthetic_source_has_the_configured_shapes():
  config = digits_config(dataset="synthetic")
  config.synthetic.update(image_shape=(5, 5, 3), num_classes=7, num_train=30, num_test=9)
  dataset = data.load_dataset(config)
  assert dataset.x_train.shape == (30, 5, 5, 3) and dataset.x_test.shape == (9, 5, 5, 3)
  assert dataset.num_classes == 7 and dataset.y_train.max() < 7


def test_unknown_dataset_and_preprocess_are_clear_errors():
  with pytest.raises(DataError, match="unknown dataset 'cifar11'"):
    data.load_dataset(digits_config(dataset="cifar11"))
  with pytest.raises(DataError, match="unknown preprocess 'zca'"):
    data.load_dataset(digits_config(preprocess="zca"))


def test_gcn_zca_is_fitted_on_the_training_split():
  rng = np.random.default_rng(0)
  x_train = rng.integers(0, 256, (500, 4, 4, 3), dtype=np.uint8)
  whiten = data.fit_gcn_zca(x_train, filter_bias=0.1)
  white = whiten(x_train).reshape(500, -1)
  # ZCA with filter bias b maps covariance eigenvalue l to l / (l + b): all in (0, 1).
  gcn = data.global_contrast_normalize(x_train)
  eig_before = np.linalg.eigvalsh(np.cov(gcn, rowvar=False, bias=True))
  eig_after = np.linalg.eigvalsh(np.cov(white, rowvar=False, bias=True))
  np.testing.assert_allclose(np.sort(eig_after), np.sort(eig_before / (eig_before + 0.1)),
                             atol=1e-4)
  np.testing.assert_allclose(white.mean(axis=0), 0, atol=1e-4)


def test_train_batches_depend_on_seed_and_step_only_and_cover_each_epoch_once():
  dataset = data.load_dataset(digits_config())
  one_host = Placement.everywhere()

  def rows(data_set, step, batch, seed, parts=1):  # over the 4 devices
    return data.train_indices(data_set, step, batch, seed, parts, one_host)["index"]

  indices = [rows(dataset, step, 64, 3).reshape(-1) for step in range(22)]
  again = rows(dataset, 5, 64, 3)
  np.testing.assert_array_equal(indices[5], again.reshape(-1))
  assert again.shape == (4, 16) and again.dtype == np.int32
  assert not np.array_equal(indices[5], rows(dataset, 5, 64, 4).reshape(-1))  # other seed
  # Within an epoch no example comes twice.
  indexed = data.Dataset(np.zeros((100, 1, 1, 1), np.float32), np.zeros(100), None, None,
                         num_classes=1, num_train_examples=100, num_test_examples=0)
  for parts in (1, 2, 4):
    assert placement.steps_per_epoch(100, 16, parts) == 6  # 6 x 16 = 96 of 100
    epoch = np.concatenate([rows(indexed, s, 16, 3, parts).reshape(-1) for s in range(6)])
    assert len(np.unique(epoch)) == 96 and epoch.min() >= 0 and epoch.max() < 100
    next_epoch = rows(indexed, 6, 16, 3, parts).reshape(-1)
    assert not np.array_equal(next_epoch, epoch[:16])  # a fresh order each epoch
    # each part gives the same share of every batch, from its own contiguous range
    first = rows(indexed, 0, 16, 3, parts).reshape(parts, -1)
    for part, share in enumerate(first):
      assert np.all((share >= 100 * part // parts) & (share < 100 * (part + 1) // parts))


def test_eval_batches_count_every_example_once():
  two_devices = Placement.local(jax.local_devices()[:2])
  batches = list(data.eval_indices(10, batch_size=4, num_batches=3, placement=two_devices))
  assert len(batches) == 3 and batches[0]["index"].shape == (2, 2)
  mask = np.concatenate([b["mask"].reshape(-1) for b in batches])
  seen = np.concatenate([b["index"].reshape(-1) for b in batches])[mask == 1]
  np.testing.assert_array_equal(seen, np.arange(10))


def test_augmentation_does_not_depend_on_the_device_split():
  images = jax.random.normal(jax.random.PRNGKey(0), (8, 6, 6, 2))
  whole = data.augment(jax.random.PRNGKey(1), images, jnp.arange(8), crop_padding=2, flip=True)
  halves = [data.augment(jax.random.PRNGKey(1), images[i:i + 4], jnp.arange(i, i + 4), 2, True)
            for i in (0, 4)]
  np.testing.assert_array_equal(whole, jnp.concatenate(halves))
  assert not np.array_equal(whole, images)


def test_augmentation_crops_are_shifts_of_the_padded_image():
  image = jnp.arange(16.0).reshape(1, 4, 4, 1) + 1
  out = data.augment(jax.random.PRNGKey(2), image, jnp.arange(1), crop_padding=1, flip=False)
  padded = np.pad(np.asarray(image[0, :, :, 0]), 1)
  shifts = [padded[dy:dy + 4, dx:dx + 4] for dy in range(3) for dx in range(3)]
  assert any(np.array_equal(out[0, :, :, 0], s) for s in shifts)
  unchanged = data.augment(jax.random.PRNGKey(2), image, jnp.arange(1), crop_padding=0, flip=False)
  np.testing.assert_array_equal(unchanged, image)


# A validation split held out of the training set --------------------------------------------------

def _numbered(num_train, num_classes=10):
  """A raw Dataset whose training image i carries i in its first two pixels."""
  ids = np.arange(num_train)
  x = np.zeros((num_train, 4, 4, 1), np.uint8)
  x[:, 0, 0, 0], x[:, 0, 1, 0] = ids // 256, ids % 256
  y = np.random.default_rng(1).integers(0, num_classes, num_train).astype(np.int32)
  return data.Dataset(x, y, x[:5], y[:5], num_classes, num_train, 5)


def _ids(images):
  return images[:, 0, 0, 0].astype(int) * 256 + images[:, 0, 1, 0]


def test_validation_split_is_stratified_fixed_and_disjoint_from_training():
  raw = _numbered(1000)
  one_host = Placement(None, 0, 1)
  split = data.hold_out_validation(raw, 200, one_host)
  train, validation = _ids(split.x_train), _ids(split.x_validation)
  assert (len(train), len(validation), split.num_train_examples) == (800, 200, 800)
  assert sorted(np.concatenate([train, validation]).tolist()) == list(range(1000))
  np.testing.assert_array_equal(split.y_validation, raw.y_train[validation])
  np.testing.assert_array_equal(split.y_train, raw.y_train[train])
  # stratified: each class keeps its share, to within one example
  np.testing.assert_allclose(np.bincount(split.y_validation, minlength=10),
                             np.bincount(raw.y_train, minlength=10) * 0.2, atol=1)
  # fixed: the same examples on every call (so every seed and arm of a sweep shares them)
  np.testing.assert_array_equal(_ids(data.hold_out_validation(raw, 200, one_host).x_validation),
                                validation)
  # two hosts hold the two halves of exactly these splits
  hosts = [data.hold_out_validation(raw, 200, Placement(None, h, 2)) for h in (0, 1)]
  for name in ("x_train", "x_validation"):
    np.testing.assert_array_equal(np.concatenate([getattr(h, name) for h in hosts]),
                                  getattr(split, name))
  assert {h.num_validation_examples for h in hosts} == {200}


@pytest.mark.parametrize("count", [5, 996, 1000])
def test_a_validation_split_too_small_or_too_large_is_one_line(count):
  from nin_jax.errors import ConfigError
  with pytest.raises(ConfigError, match=rf"validation_examples={count} must leave one training "
                                        r"example of each of the 10 classes"):
    data.hold_out_validation(_numbered(1000), count, Placement(None, 0, 1))


def test_preprocessing_is_fitted_without_the_validation_examples():
  dataset = data.load_dataset(digits_config(validation_examples=288))
  sizes = len(dataset.x_train), len(dataset.x_validation), len(dataset.x_test)
  assert sizes == (1150, 288, 359)
  # mean/std fitted on the 1,150 kept images exactly: they have mean 0 and std 1, the held-out
  # ones (which did not shape the statistics) do not
  np.testing.assert_allclose([dataset.x_train.mean(), dataset.x_train.std()], [0, 1], atol=1e-5)
  assert abs(dataset.x_validation.mean()) > 1e-3
