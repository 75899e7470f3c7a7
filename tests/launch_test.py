"""launch.py as a user runs it: the quick digits job, and one-line errors for bad input."""
import json

from conftest import launch_here, run_launch


def test_digits_quick_run_reaches_97_percent(tmp_path):
  # Over 20 s: README's first command as a user runs it, to the end (1,320 steps): the accuracy it
  # promises.
  result = run_launch("--config=experiments/default.py:digits", f"--workdir={tmp_path}", devices=1)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["finished"] and summary["num_params"] == 112_906
  assert summary["test_accuracy"] >= 0.97, summary
  assert "Summary: test accuracy" in result.stderr
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert json.loads(lines[-1])["step"] == summary["step"]


def last_line(result):
  return result.stderr.strip().splitlines()[-1]


def test_missing_tfds_dataset_fails_fast_with_one_clear_line(tmp_path):
  result = launch_here("--config=experiments/default.py", f"--workdir={tmp_path / 'w'}",
                       f"--config.data_dir={tmp_path}")
  assert result.returncode != 0
  line = last_line(result)
  assert line.startswith("error: TFDS dataset 'cifar10' is not prepared"), line
  assert "--config.dataset=digits" in line and str(tmp_path) in line
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "w").exists()  # nothing written


def test_misspelled_config_key_is_an_error(tmp_path):
  result = launch_here("--config=experiments/default.py:digits", f"--workdir={tmp_path}",
                       "--config.model.haed=fc")
  assert result.returncode != 0
  assert "haed" in result.stderr


def test_unknown_head_is_one_line(tmp_path):
  result = launch_here("--config=experiments/default.py:digits", f"--workdir={tmp_path}",
                       "--config.model.head=gpa")
  assert result.returncode != 0
  assert last_line(result) == ("error: --config.model.head='gpa' is not one of "
                               "['gap', 'fc', 'fc_dropout']")
