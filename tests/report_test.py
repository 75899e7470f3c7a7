"""The report's statistics, against scipy and values worked out by hand."""
import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from nin_jax import report


def test_welch_t_test_by_hand_and_against_scipy():
  # a = 1, 2, 3 (var 1), b = 2, 4, 6 (var 4): se^2 = 1/3 + 4/3 = 5/3, t = -2 / sqrt(5/3)
  t, dof, p = report.welch_t_test([1, 2, 3], [2, 4, 6])
  assert t == pytest.approx(-2 / math.sqrt(5 / 3))
  assert dof == pytest.approx((5 / 3) ** 2 / ((1 / 3) ** 2 / 2 + (4 / 3) ** 2 / 2))  # 2.941
  assert dof == pytest.approx(2.9412, abs=1e-4)
  rng = np.random.default_rng(0)
  for _ in range(5):
    a, b = rng.normal(10, 1, 4), rng.normal(10.5, 2, 6)
    expected = stats.ttest_ind(a, b, equal_var=False)
    t, _, p = report.welch_t_test(a, b)
    assert (t, p) == pytest.approx((expected.statistic, expected.pvalue))


def test_paired_t_test_against_scipy():
  rng = np.random.default_rng(1)
  for _ in range(5):
    a = rng.normal(2, 0.3, 5)
    b = a + rng.normal(0.2, 0.1, 5)
    expected = stats.ttest_rel(a, b)
    t, dof, p = report.paired_t_test(a, b)
    assert (t, p) == pytest.approx((expected.statistic, expected.pvalue)) and dof == 4


def test_identical_differences_on_every_seed_are_not_certainty():
  # 3 seeds, each 2 of 359 test images apart: no spread, but not p = 0 (sign test: 2 / 2^3)
  a, b = [100 * k / 359 for k in (6, 5, 4)], [100 * k / 359 for k in (4, 3, 2)]
  t, dof, p = report.paired_t_test(a, b)
  assert math.isinf(t) and dof == 2 and p == pytest.approx(0.25)
  assert report.paired_t_test([1.0, 2.0], [1.0, 2.0])[2] == 1.0


def test_welch_without_spread_in_both_arms_is_an_exact_permutation_test_not_certainty():
  # every seed of a gives 1, every seed of b 2: t = -inf, but p = 0 would claim certainty; the
  # exact permutation test: of the C(6, 3) = 20 splits of 1,1,1,2,2,2 only this one and its
  # mirror image are as extreme, so p = 2 / 20
  t, dof, p = report.welch_t_test([1, 1, 1], [2, 2, 2])
  assert t == -math.inf and math.isnan(dof) and p == pytest.approx(0.1)
  t, _, p = report.welch_t_test([2.0, 2.0, 2.0], [1.0, 1.0, 1.0])
  assert t == math.inf and p == pytest.approx(0.1)
  # errors as multiples of 1/num_test, whose mean is off by float rounding: mean([0.1] * 3) != 0.1
  assert report.welch_t_test([0.1] * 3, [0.2] * 3)[2] == pytest.approx(0.1)
  # 2 seeds against 3: the one split of 10 as extreme on its side, doubled (scipy's two-sided)
  assert report.welch_t_test([0, 0], [1, 1, 1])[2] == pytest.approx(0.2)
  t, dof, p = report.welch_t_test([1.5, 1.5, 1.5], [1.5, 1.5])
  assert t == 0 and math.isnan(dof) and p == 1
  # one arm without spread is an ordinary Welch test (var 0 and 1: se^2 = 1/3, dof 2), silently
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    t, dof, p = report.welch_t_test([1, 1, 1], [2, 3, 4])
  assert (t, dof) == pytest.approx((-2 / math.sqrt(1 / 3), 2))
  assert p == pytest.approx(2 * stats.t.sf(2 / math.sqrt(1 / 3), 2))


def test_the_same_difference_of_a_tenth_on_every_seed_is_not_certainty():
  # d = [0.1] * 3: its std is 1.7e-17, not 0, from float rounding of the mean; still no spread
  t, dof, p = report.paired_t_test([0.1, 0.1, 0.1], [0.0, 0.0, 0.0])
  assert t == math.inf and dof == 2 and p == pytest.approx(0.25)


def test_too_few_values_raise_a_clear_error():
  with pytest.raises(ValueError, match="at least 2 values"):
    report.welch_t_test([1.0], [1.0, 2.0])
  with pytest.raises(ValueError, match="at least 2 values"):
    report.paired_t_test([1.0], [2.0])
  with pytest.raises(ValueError, match="same length"):
    report.paired_t_test([1.0, 2.0, 3.0], [2.0, 3.0])
  with pytest.raises(ValueError, match="at least 1 value"):
    report.bootstrap_interval([])


def test_holm_adjustment_by_hand():
  # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, 2 x 0.03, max(0.06, 1 x 0.04)
  assert report.holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_bootstrap_interval():
  assert report.bootstrap_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
  d = np.random.default_rng(2).normal(1.0, 1.0, 50)
  low, high = report.bootstrap_interval(d)
  assert low < d.mean() < high
  assert report.bootstrap_interval(d) == (low, high)  # seeded: reproducible
  half_width = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
  assert high - low == pytest.approx(2 * half_width, rel=0.15)
  expected = stats.bootstrap((d,), np.mean, n_resamples=10_000, confidence_level=0.95,
                            method="percentile", rng=np.random.default_rng(0))
  assert (low, high) == pytest.approx(tuple(expected.confidence_interval))
  low_90, high_90 = report.bootstrap_interval(d, level=0.9)
  assert low < low_90 < high_90 < high


def test_bootstrap_without_spread_is_exact_and_silent():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert report.bootstrap_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert report.bootstrap_interval([0.1, 0.1, 0.1]) == (0.1, 0.1)  # not 0.10000000000000002
    assert report.bootstrap_interval([0.3]) == (0.3, 0.3)


def write_fake_sweep(workdir, errors_by_arm, paper=None, dataset="digits"):
  arms = list(errors_by_arm)
  num_seeds = max(len(e) for e in errors_by_arm.values())
  (workdir / "sweep.json").write_text(json.dumps({
      "field": "model.head", "swept": ["model.head"], "arms": arms, "num_seeds": num_seeds,
      "seeds": list(range(num_seeds)),
      "paper_test_error": paper or {}, "dataset": dataset}))
  for arm, errors in errors_by_arm.items():
    for seed, error in enumerate(errors):
      run = workdir / arm / f"seed_{seed}"
      run.mkdir(parents=True)
      if error is None:  # a run that has not finished
        (run / "summary.json").write_text(json.dumps({"finished": False}))
        continue
      (run / "summary.json").write_text(json.dumps({
          "finished": True, "test_error_percent": error, "test_accuracy": 1 - error / 100,
          "num_params": 100, "flops_per_image": 2e6, "train_images_per_s": 1000.0,
          "wall_time_s": 10.0, "platform": "cpu", "devices": 1}))
      (run / "metrics.jsonl").write_text(
          json.dumps({"step": 10, "epoch": 1.0, "test_accuracy": 1 - 2 * error / 100}) + "\n" +
          json.dumps({"step": 20, "epoch": 2.0, "test_accuracy": 1 - error / 100}) + "\n")


def test_a_sweep_with_no_evaluation_yet_says_so_in_its_curve_figure(tmp_path):
  # Runs that have not evaluated (or diverged first): the figure is written, with no empty
  # legend for matplotlib to warn about.
  write_fake_sweep(tmp_path, {"gap": [10.0, 10.2], "fc": [12.0, 12.3]})
  for metrics in tmp_path.glob("*/seed_*/metrics.jsonl"):
    metrics.write_text(json.dumps({"step": 10, "epoch": 1.0, "loss": 2.3}) + "\n")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    report.write_report(tmp_path)
  assert (tmp_path / "test_error_vs_epoch.png").stat().st_size > 0


def test_the_bar_figure_names_the_papers_figure_whichever_arm_has_it(tmp_path, monkeypatch):
  # ablate_head_depth gives the paper's errors for its depth-2 arms only, none for the first arm.
  write_fake_sweep(tmp_path, {"gap-num_1x1_0": [10.0, 10.2], "gap-num_1x1_2": [12.0, 12.3]},
                   paper={"gap-num_1x1_2": 10.41}, dataset="cifar10")
  legends = {}

  def keep_legend(figure, path, **kwargs):
    legends[path.name] = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
  monkeypatch.setattr(report.files, "save_figure", keep_legend)
  report.write_report(tmp_path)
  assert sorted(legends["test_error_bars.png"]) == ["mean ± std over seeds", "one seed", "paper"]
  assert legends["test_error_vs_epoch.png"] == ["gap-num_1x1_0", "gap-num_1x1_2"]


def test_report_tells_a_real_difference_from_noise(tmp_path):
  write_fake_sweep(tmp_path, {"gap": [10.0, 10.2, 10.1], "fc": [12.0, 12.3, 12.1],
                              "fc_dropout": [10.3, 9.9, 10.4]}, paper={"gap": 10.41},
                   dataset="cifar10")
  report.write_report(tmp_path)
  summary = json.loads((tmp_path / "report.json").read_text())
  gap = summary["arms"][0]
  assert gap["test_error_mean"] == pytest.approx(10.1)
  assert gap["test_error_std"] == pytest.approx(0.1)
  assert (gap["test_error_best"], gap["test_error_worst"]) == (10.0, 10.2)
  assert gap["paper_test_error"] == 10.41
  verdicts = {(c["a"], c["b"]): c["verdict"] for c in summary["comparisons"]}
  assert verdicts[("gap", "fc")] == "gap has lower test error than fc"
  assert verdicts[("gap", "fc_dropout")].startswith(
      "not established on the test split with 3 seeds")
  pair = summary["comparisons"][0]
  assert pair["mean_difference"] == pytest.approx(-2.0333, abs=1e-4)
  assert pair["paired_p"] == pytest.approx(stats.ttest_rel([10.0, 10.2, 10.1],
                                                           [12.0, 12.3, 12.1]).pvalue)
  text = (tmp_path / "report.md").read_text()
  # an old sweep: no overrides
  assert "| gap | – | 3/3 | 10.10 ± 0.10 | 10.00 | 10.20 |" in text
  assert "10.41" in text


def test_the_papers_cifar10_figures_stand_beside_no_other_data(tmp_path):
  # ablate_head.py's config, run with --config.dataset=npz: its sweep.json holds them still
  write_fake_sweep(tmp_path, {"gap": [70.0, 71.0], "fc": [86.0, 87.0]},
                   paper={"gap": 10.41, "fc": 11.59}, dataset="npz")
  report.write_report(tmp_path)
  summary = json.loads((tmp_path / "report.json").read_text())
  assert [arm["paper_test_error"] for arm in summary["arms"]] == [None, None]
  text = (tmp_path / "report.md").read_text()
  assert "10.41" not in text and "11.59" not in text


def test_report_when_no_arm_varies_over_the_seeds(tmp_path):
  # every seed gives the same error: Welch p from the permutation test, paired p from the sign test
  write_fake_sweep(tmp_path, {"gap": [10.0, 10.0, 10.0], "fc": [12.0, 12.0, 12.0]})
  report.write_report(tmp_path)
  pair = json.loads((tmp_path / "report.json").read_text())["comparisons"][0]
  assert pair["welch_p"] == pytest.approx(0.1)
  assert pair["paired_p"] == pair["paired_p_holm"] == pytest.approx(0.25)
  assert pair["interval"] == [-2.0, -2.0]
  assert pair["verdict"].startswith("not established on the test split with 3 seeds")
  text = (tmp_path / "report.md").read_text()
  assert "| test | gap − fc | 3 | -2.00 | [-2.00, -2.00] | 0.250 | 0.100 | not established" in text
  # the sign test: 2 * 0.5^n < 0.05 from n = 6 (one pair: no Holm adjustment)
  assert pair["seeds_to_settle"] == 6 and text.rstrip().count("| 6 |") == 1
  assert "exact permutation test" in text


def test_report_with_unfinished_runs_says_so(tmp_path):
  write_fake_sweep(tmp_path, {"gap": [10.0, None], "fc": [12.0, 11.0]})
  report.write_report(tmp_path)
  summary = json.loads((tmp_path / "report.json").read_text())
  assert summary["arms"][0]["seeds_finished"] == [0]
  assert summary["arms"][0]["test_error_std"] is None
  assert summary["comparisons"][0]["verdict"].startswith("too few seeds finished in both (1)")
  assert "| gap | – | 1/2 | 10.00 ± – |" in (tmp_path / "report.md").read_text()


def test_seeds_to_settle_matches_power_tables():
  # G*Power / Cohen's tables, paired two-sided t-test, alpha 0.05, power 0.8: d_z 0.2 -> 199
  # pairs, 0.5 -> 34, 0.8 -> 15, 1.0 -> 10.
  for effect, seeds in ((0.2, 199), (0.5, 34), (0.8, 15), (1.0, 10)):
    d = np.array([1.0, -1.0, 1.0, -1.0])
    d = d / d.std(ddof=1) + effect  # sample std 1, mean `effect`
    assert report.seeds_to_settle(d, 0.05) == seeds, effect
  # the level is what Holm asks of the smallest of m p-values: 3 pairs -> 0.05 / 3 needs more
  assert report.seeds_to_settle(np.array([1.5, -0.5, 1.5, -0.5]), 0.05 / 3) > 34
  assert report.seeds_to_settle([0.5, -0.5, 0.5, -0.5], 0.05) is None  # no difference seen
  tiny = np.array([1.0, -1.0, 1.0, -1.0]) + 0.01  # d_z ~ 0.009: ~100,000 seeds
  assert report.seeds_to_settle(tiny, 0.05) == report.MAX_SEEDS + 1


def test_paired_power_agrees_with_simulated_t_tests():
  rng = np.random.default_rng(0)
  differences = rng.normal(0.5, 1.0, size=(20_000, 34))  # d_z = 0.5 with 34 seeds
  simulated = np.mean(stats.ttest_1samp(differences, 0.0, axis=1).pvalue < 0.05)
  assert report.paired_power(0.5, 34, 0.05) == pytest.approx(simulated, abs=0.01)
  assert report.paired_power(0.5, 34, 0.05) >= 0.8 > report.paired_power(0.5, 33, 0.05)


def test_report_compares_on_validation_and_test_and_names_the_split(tmp_path):
  write_fake_sweep(tmp_path, {"gap": [10.0, 10.2, 10.1, 10.4], "fc": [12.0, 12.3, 12.1, 12.2],
                              "fc_dropout": [10.3, 9.9, 10.4, 10.0]})
  validation = {"gap": [8.0, 8.1, 8.3, 8.2], "fc": [8.2, 7.9, 8.4, 8.3],
                "fc_dropout": [9.0, 9.2, 9.1, 9.4]}
  for arm, errors in validation.items():
    for seed, error in enumerate(errors):
      path = tmp_path / arm / f"seed_{seed}" / "summary.json"
      summary = json.loads(path.read_text())
      summary["validation_error_percent"] = error
      path.write_text(json.dumps(summary))
  report.write_report(tmp_path)
  summary = json.loads((tmp_path / "report.json").read_text())
  assert summary["splits"] == ["test", "validation"]
  assert summary["arms"][0]["validation_error_mean"] == pytest.approx(8.15)
  rows = {(c["split"], c["a"], c["b"]): c for c in summary["comparisons"]}
  assert len(rows) == 6
  # Holm within each split's three pairs, from scipy's paired t-tests
  p = [stats.ttest_rel(validation[a], validation[b]).pvalue
       for a, b in (("gap", "fc"), ("gap", "fc_dropout"), ("fc", "fc_dropout"))]
  order = np.argsort(p)
  expected = np.maximum.accumulate([min(1, (3 - rank) * p[i]) for rank, i in enumerate(order)])
  for rank, i in enumerate(order):
    a, b = (("gap", "fc"), ("gap", "fc_dropout"), ("fc", "fc_dropout"))[i]
    assert rows[("validation", a, b)]["paired_p_holm"] == pytest.approx(expected[rank])
  assert rows[("validation", "gap", "fc_dropout")]["verdict"] == (
      "gap has lower validation error than fc_dropout")
  assert rows[("test", "gap", "fc")]["verdict"] == "gap has lower test error than fc"
  open_pair = rows[("validation", "gap", "fc")]
  assert open_pair["verdict"].startswith("not established on the validation split")
  diffs = np.subtract(validation["gap"], validation["fc"])
  assert open_pair["seeds_to_settle"] == report.seeds_to_settle(diffs, 0.05 / 3)
  assert open_pair["seeds_to_settle"] > 4
  text = (tmp_path / "report.md").read_text()
  assert "| validation error | best | worst |" in text
  assert f"| {open_pair['seeds_to_settle']:,} |" in text


def test_report_warns_when_runs_came_from_different_code(tmp_path):
  write_fake_sweep(tmp_path, {"gap": [10.0, 10.2], "fc": [12.0, 12.3]})
  def record(commit, jax_version="0.10.2"):
    return {"versions": {"jax": jax_version, "flax": "0.12.8"}, "platform": "cpu",
            "device_kind": "cpu", "git": {"commit": commit, "dirty": False}, "config": {}}
  for arm, seed, provenance in (("gap", 0, record("a" * 40)), ("gap", 1, record("a" * 40)),
                                ("fc", 0, record("b" * 40)), ("fc", 1, record("a" * 40, "0.9"))):
    path = tmp_path / arm / f"seed_{seed}" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "provenance": provenance}))
  report.write_report(tmp_path)
  text = (tmp_path / "report.md").read_text()
  summary = json.loads((tmp_path / "report.json").read_text())
  assert len(summary["provenance_warnings"]) == 2
  assert "runs came from 2 commits: aaaaaaa (fc/seed_1, gap/seed_0, gap/seed_1), bbbbbbb " \
         "(fc/seed_0)" in text
  assert "jax versions differ" in text and text.index("**Warnings") < text.index("| arm |")
  # runs that agree: no warning, the code named once
  for arm, seed in (("fc", 0), ("fc", 1)):
    path = tmp_path / arm / f"seed_{seed}" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "provenance": record("a" * 40)}))
  report.write_report(tmp_path)
  text = (tmp_path / "report.md").read_text()
  assert "Warnings" not in text and "Code: commit aaaaaaaaaaaa; jax 0.10.2, flax 0.12.8" in text


def test_power_is_right_far_in_the_tails_where_scipy_nct_is_not():
  # A 3-seed pair of a grid (36 pairs) that differed by 6.1 +- 0.5 points: scipy's nct gave nan
  # here, and 2 seeds came out as "enough" although 3 had not established it.
  assert report.seeds_to_settle([6.60, 6.25, 5.56], 0.05 / 36) == 4
  rng = np.random.default_rng(0)
  differences = rng.normal(11.6, 1.0, size=(200_000, 3))
  simulated = np.mean(stats.ttest_1samp(differences, 0.0, axis=1).pvalue < 0.05 / 36)
  assert report.paired_power(11.6, 3, 0.05 / 36) == pytest.approx(simulated, abs=0.005)
  # and power never falls as seeds are added (nct's fell to 9e-49 at 1,000 seeds)
  powers = [report.paired_power(0.433, n, 0.05) for n in (10, 44, 100, 1000, 10_000)]
  assert powers == sorted(powers) and powers[-1] == pytest.approx(1.0)
