"""A sweep's HParams event files, read back as TensorBoard's own loader and HParams backend do."""
import os

import numpy as np
import pytest

from nin_jax import metrics
from nin_jax.errors import StorageError

RUNS = {"gap/seed_0": ({"arm": "gap", "seed": 0, "model.head": "gap", "lr": 0.1,
                        "model.widths": (192, 160), "augment": True}, 1.67, 2.5),
        "fc/seed_0": ({"arm": "fc", "seed": 0, "model.head": "fc", "lr": np.float32(0.05),
                       "model.widths": None, "augment": False}, 3.25, 4.0)}
DOMAINS = {"arm": ["gap", "fc"], "seed": [0], "model.head": ["gap", "fc"], "lr": [0.1, 0.05],
           "model.widths": [(192, 160), None], "augment": [True, False]}
TAGS = [metrics.VALIDATION_ERROR_TAG, metrics.TEST_ERROR_TAG]


def _write_sweep(sweep):
  metrics.write_hparams_config(sweep, DOMAINS, TAGS)
  for name, (hparams, validation, test) in RUNS.items():
    metrics.write_hparams(sweep / name, hparams, {metrics.VALIDATION_ERROR_TAG: validation,
                                                  metrics.TEST_ERROR_TAG: test},
                          trial_id=name, step=1320)


def _events(folder):
  """[(step, tag, summary value)] of the event files directly in `folder`."""
  from tensorboard.backend.event_processing import event_file_loader
  values = []
  for name in sorted(os.listdir(folder)):
    if "tfevents" in name:
      for event in event_file_loader.EventFileLoader(str(folder / name)).Load():
        values += [(event.step, v.tag, v) for v in event.summary.value]
  return values


def _plugin_data(value):
  from tensorboard.plugins.hparams import plugin_data_pb2
  assert value.metadata.plugin_data.plugin_name == "hparams"
  return plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)


def test_hparams_read_back_from_the_event_files(tmp_path):
  from tensorboard.plugins.hparams import api_pb2
  from tensorboard.util import tensor_util
  _write_sweep(tmp_path)
  expected = {"gap/seed_0": {"arm": "gap", "seed": 0, "model.head": "gap", "lr": 0.1,
                             "model.widths": "(192, 160)", "augment": True},
              "fc/seed_0": {"arm": "fc", "seed": 0, "model.head": "fc",
                            "lr": pytest.approx(0.05), "model.widths": "None", "augment": False}}
  for name, (_, validation, test) in RUNS.items():
    values = {tag: (step, v) for step, tag, v in _events(tmp_path / name)}
    assert set(values) == {"_hparams_/session_start_info", "_hparams_/session_end_info", *TAGS}
    start = _plugin_data(values["_hparams_/session_start_info"][1]).session_start_info
    assert start.group_name == name
    hparams = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert hparams == expected[name]
    for tag, value in zip(TAGS, (validation, test)):
      step, summary = values[tag]
      assert summary.metadata.plugin_data.plugin_name == "scalars"
      assert (step, tensor_util.make_ndarray(summary.tensor).item()) == (1320,
                                                                         pytest.approx(value))
    end = _plugin_data(values["_hparams_/session_end_info"][1]).session_end_info
    assert end.status == api_pb2.STATUS_SUCCESS
  ((_, tag, value),) = _events(tmp_path)
  experiment = _plugin_data(value).experiment
  domains = {info.name: [getattr(v, v.WhichOneof("kind")) for v in info.domain_discrete.values]
             for info in experiment.hparam_infos}
  assert domains == {"arm": ["fc", "gap"], "seed": [0], "model.head": ["fc", "gap"],  # sorted
                     "lr": [0.05, 0.1], "model.widths": ["(192, 160)", "None"],
                     "augment": [False, True]}
  assert [(m.name.tag, m.name.group, m.display_name) for m in experiment.metric_infos] == [
      (metrics.VALIDATION_ERROR_TAG, "", "validation error (%)"),
      (metrics.TEST_ERROR_TAG, "", "test error (%)")]


def _session_groups(logdir):
  """What the HParams dashboard lists for `logdir`, through TensorBoard's own backend."""
  from tensorboard import context
  from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
  from tensorboard.plugins import base_plugin
  from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups
  multiplexer = plugin_event_multiplexer.EventMultiplexer()
  multiplexer.AddRunsFromDirectory(str(logdir))
  multiplexer.Reload()
  provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
  backend = backend_context.Context(base_plugin.TBContext(data_provider=provider))
  request = api_pb2.ListSessionGroupsRequest(allowed_statuses=[api_pb2.STATUS_SUCCESS],
                                             slice_size=100)
  response = list_session_groups.Handler(context.RequestContext(), backend, "", request).run()
  return {group.name: ([s.name for s in group.sessions],
                       {m.name.tag: m.value for m in group.metric_values})
          for group in response.session_groups}


def test_the_dashboard_lists_both_sessions_with_their_metrics(tmp_path):
  _write_sweep(tmp_path)
  # the training curves' own event file beside the session's, as a run writes it
  from tensorboard.plugins.scalar import summary_v2
  metrics._write_events(tmp_path / "gap/seed_0/events.out.tfevents.1700000000.host",
                        [summary_v2.scalar_pb("test_accuracy", 0.98)], 1320, "curves")
  assert _session_groups(tmp_path) == {
      "gap/seed_0": (["gap/seed_0"], {metrics.VALIDATION_ERROR_TAG: pytest.approx(1.67),
                                      metrics.TEST_ERROR_TAG: pytest.approx(2.5)}),
      "fc/seed_0": (["fc/seed_0"], {metrics.VALIDATION_ERROR_TAG: pytest.approx(3.25),
                                    metrics.TEST_ERROR_TAG: pytest.approx(4.0)})}


def test_writing_again_replaces_the_session(tmp_path):
  _write_sweep(tmp_path)
  hparams = dict(RUNS["gap/seed_0"][0], lr=0.2)
  metrics.write_hparams(tmp_path / "gap/seed_0", hparams, {metrics.TEST_ERROR_TAG: 1.0,
                                                           metrics.VALIDATION_ERROR_TAG: None},
                        trial_id="gap/seed_0", step=1400)
  assert sorted(os.listdir(tmp_path / "gap/seed_0")) == [metrics.HPARAMS_FILE]
  values = {tag: (step, v) for step, tag, v in _events(tmp_path / "gap/seed_0")}
  assert metrics.VALIDATION_ERROR_TAG not in values
  start = _plugin_data(values["_hparams_/session_start_info"][1]).session_start_info
  assert start.hparams["lr"].number_value == pytest.approx(0.2)
  assert _session_groups(tmp_path)["gap/seed_0"][1] == {metrics.TEST_ERROR_TAG: 1.0}


def test_writing_needs_no_tensorflow(tmp_path):
  import subprocess
  import sys
  code = ("import sys, pathlib; from nin_jax import metrics; "
          "metrics.write_hparams_config(pathlib.Path(sys.argv[1]), {'arm': ['gap']}, "
          "[metrics.TEST_ERROR_TAG]); "
          "metrics.write_hparams(pathlib.Path(sys.argv[1]) / 'gap', {'arm': 'gap'}, "
          "{metrics.TEST_ERROR_TAG: 1.5}, 'gap', 3); "
          "w = metrics.MetricsWriter(pathlib.Path(sys.argv[1]) / 'gap'); "
          "w.write({'step': 5, 'loss': 0.25}); w.close(); "
          "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))")
  done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                        text=True, timeout=120, check=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(metrics.__file__))))
  assert done.stdout.strip() == "[]"
  assert (tmp_path / "gap" / metrics.HPARAMS_FILE).exists()
  # the training curve, read back as TensorBoard reads a run's event files
  from tensorboard.util import tensor_util
  (curves,) = [p for p in (tmp_path / "gap").iterdir() if p.name.endswith(".v2")]
  assert [(step, tag, tensor_util.make_ndarray(v.tensor).item(), v.metadata.plugin_data.plugin_name)
          for step, tag, v in _events(tmp_path / "gap") if tag == "loss"] == [
              (5, "loss", 0.25, "scalars")]


def test_a_failed_write_is_one_storage_error(tmp_path):
  (tmp_path / "run").write_text("a file where the run folder should be")
  with pytest.raises(StorageError, match="writing the TensorBoard hparams to .*run"):
    metrics.write_hparams(tmp_path / "run" / "sub", {"arm": "gap"}, {}, "gap", 0)
