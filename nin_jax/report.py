"""The ablation report: `python -m nin_jax.report <workdir>` (also run at the end of a sweep).

Reads what is on disk -- `sweep.json` and every `<arm>/seed_<n>/summary.json` and
`metrics.jsonl` -- so it can be rebuilt at any time, also from run folders that several machines
wrote. Writes `report.md`, `report.csv`, `report.json`, `test_error_vs_epoch.png` and
`test_error_bars.png` into the workdir.

Statistics. Seed n gives every arm the same data order and augmentation, so two arms are compared
on the seeds both finished: the mean paired difference in test error, a 95% bootstrap interval
for it, and a paired t-test; Welch's t-test (unpaired) is shown beside it. p-values are adjusted
for the number of pairs (Holm). A difference counts as a finding only when the adjusted paired
p-value is below 0.05; otherwise the report says the seeds do not establish it, and how many
seeds would (`seeds_to_settle`: 80% power for the observed effect at 0.05 / pairs).

Splits. Runs that held training examples out (`config.validation_examples`) are compared on the
validation split as well as the test split; each verdict names the split it rests on. A sweep
should pick settings on validation error and quote test error.
"""
import csv
import io
import itertools
import math
import sys
import warnings

import numpy as np
from etils import epath
from scipy import stats

from nin_jax import files, metrics, provenance
from nin_jax.errors import ConfigError, NinError

ALPHA = 0.05


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------

# Test errors are multiples of 1/num_test, so values that should be equal can differ by float
# rounding (100 * 6/359 - 100 * 4/359 vs 100 * 5/359 - 100 * 3/359); the checks for "no spread"
# compare values rounded to this many decimals. 4, not more: summaries written before accuracy
# was computed in float64 carry float32 noise of ~1e-6 points (-2.785515785 vs -2.785514295 for
# the same 10 digits), and 1e-4 percentage points is still 20x finer than the resolution of a
# 50,000-image test set (0.002 points).
_DECIMALS = 4


def _sample(values, name, minimum=2):
  """`values` as a 1-D float array; ValueError if it is not 1-D or has fewer than `minimum`."""
  x = np.asarray(values, float)
  if x.ndim != 1:
    raise ValueError(f"{name} must be a 1-D sequence of numbers, got shape {x.shape}")
  if len(x) < minimum:
    raise ValueError(f"{name} needs at least {minimum} values, got {len(x)}")
  return x


def _difference_of_means(x, y, axis=-1):
  return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def welch_t_test(a, b):
  """Welch's unequal-variance t-test of mean(a) == mean(b), two-sided: (t, dof, p).

  `a` and `b` are 1-D sequences of at least 2 values each (one test error per seed); they need
  not be the same length. Returns the t statistic, the Welch-Satterthwaite degrees of freedom and
  the two-sided p-value, from `scipy.stats.ttest_ind(a, b, equal_var=False)`.

  When neither arm has any spread (every seed of `a` gives one error, every seed of `b` another:
  test errors are multiples of 1/num_test, so with few seeds this happens) the t statistic is
  infinite and its p of 0 would claim a certainty that a handful of equal numbers do not give.
  Then p is the exact two-sided permutation test's of the difference of means instead
  (`scipy.stats.permutation_test`, permutation_type="independent", over all C(n_a + n_b, n_a)
  splits of the pooled values): 2 / C(6, 3) = 0.1 for 3 seeds against 3. In that case t is
  +-inf (0 and p = 1 when the two values are equal) and dof is nan. One arm without spread is an
  ordinary Welch test (its variance is 0); scipy's precision-loss warning about it is silenced.
  """
  a, b = _sample(a, "a"), _sample(b, "b")
  # rounded: equal errors like 2/359 must not differ by float rounding; max - min rather than the
  # std, which is not 0 for [0.1] * 3 (their float mean is not 0.1)
  a_rounded, b_rounded = np.round(a, _DECIMALS), np.round(b, _DECIMALS)
  a_flat, b_flat = np.ptp(a_rounded) == 0, np.ptp(b_rounded) == 0
  if a_flat and b_flat:
    diff = a_rounded[0] - b_rounded[0]
    if diff == 0:
      return 0.0, math.nan, 1.0
    p = stats.permutation_test((a_rounded, b_rounded), _difference_of_means,
                               permutation_type="independent", vectorized=True,
                               n_resamples=math.inf, alternative="two-sided").pvalue
    return math.copysign(math.inf, diff), math.nan, float(p)
  with warnings.catch_warnings():
    if a_flat or b_flat:  # one arm without spread is fine (its variance is 0), but scipy warns
      warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
    result = stats.ttest_ind(a, b, equal_var=False)
  return float(result.statistic), float(result.df), float(result.pvalue)


def paired_t_test(a, b):
  """Paired t-test of mean(a - b) == 0 over matched seeds, two-sided: (t, dof, p).

  `a` and `b` are 1-D sequences of the same length, at least 2: a[i] and b[i] come from the same
  seed. Returns the t statistic, the degrees of freedom (n - 1) and the two-sided p-value, from
  `scipy.stats.ttest_rel(a, b)`.

  When every seed gives the same difference (test errors are multiples of 1/num_test, so with
  few seeds this happens) the t statistic is infinite and its p of 0 would claim certainty that
  three equal numbers do not give. Then p is the exact two-sided sign test's instead: the chance
  that n fair coin flips all land the same way, 2 * 0.5^n (0.25 for 3 seeds); t is +-inf (0 and
  p = 1 when the difference is 0).
  """
  a, b = _sample(a, "a"), _sample(b, "b")
  if len(a) != len(b):
    raise ValueError(f"a paired test needs a and b of the same length, got {len(a)} and {len(b)}")
  # rounded: equal differences of errors like 2/359 must not differ by float rounding
  d = np.round(a - b, _DECIMALS)
  if np.ptp(d) == 0:  # not std: its mean of [0.1] * 3 is not 0.1, leaving a spread of 1e-17
    if d[0] == 0:
      return 0.0, len(d) - 1, 1.0
    return math.copysign(math.inf, d[0]), len(d) - 1, min(1.0, 2 * 0.5 ** len(d))
  result = stats.ttest_rel(a, b)
  return float(result.statistic), int(result.df), float(result.pvalue)


def bootstrap_interval(differences, level=0.95, resamples=10_000, seed=0):
  """Percentile bootstrap interval for the mean of `differences`: (low, high).

  `differences` is a 1-D sequence of at least 1 value (the paired differences, one per seed);
  `level` the confidence level, `resamples` the number of bootstrap resamples. Computed by
  `scipy.stats.bootstrap(method="percentile")` with a numpy Generator seeded with `seed`, so the
  same input gives the same interval.

  Data without spread (a single value, or all values equal to 9 decimals) has no uncertainty to
  resample: the interval is then exactly (value, value). scipy would resample means that are off
  by float rounding (0.1 becomes 0.10000000000000002) or, for a single value, refuse.
  """
  d = _sample(differences, "differences", minimum=1)
  if np.ptp(np.round(d, _DECIMALS)) == 0:
    return float(d[0]), float(d[0])
  result = stats.bootstrap((d,), np.mean, n_resamples=resamples, vectorized=True,
                           confidence_level=level, method="percentile",
                           rng=np.random.default_rng(seed))
  return float(result.confidence_interval.low), float(result.confidence_interval.high)


def holm_adjust(p_values):
  """Holm-Bonferroni adjusted p-values, in the order given."""
  p = np.asarray(p_values, float)
  order = np.argsort(p)
  adjusted = np.empty_like(p)
  running = 0.0
  for rank, index in enumerate(order):
    running = max(running, min(1.0, (len(p) - rank) * p[index]))
    adjusted[index] = running
  return adjusted.tolist()


POWER = 0.8
MAX_SEEDS = 10_000


def paired_power(effect_size, num_seeds, alpha):
  """Power of the two-sided paired t-test at level `alpha` with `num_seeds` pairs when the true
  mean difference is `effect_size` standard deviations of the differences (Cohen's d_z): the
  chance that |t| exceeds the critical value, where t = (z + d_z sqrt(n)) / sqrt(w / df) with z
  standard normal and w chi-square with df = n - 1 (the noncentral t), integrated over w's
  quantiles (`scipy.integrate.quad` on [0, 1]: a bounded integrand at every df). Why not `scipy.stats.nct`: its tails came out nan or near 0 where
  the power is near 1 (effect 11.6 at 3 seeds; effect 0.43 at 1,000 seeds: 9e-49), measured."""
  from scipy import integrate
  df = num_seeds - 1
  critical = stats.t.ppf(1 - alpha / 2, df)
  noncentrality = effect_size * math.sqrt(num_seeds)

  def given(quantile):  # P(|t| > critical) for the chi-square draw at this quantile
    scale = critical * math.sqrt(stats.chi2.ppf(quantile, df) / df)
    return stats.norm.sf(scale - noncentrality) + stats.norm.cdf(-scale - noncentrality)
  return float(min(1.0, integrate.quad(given, 0, 1, limit=200)[0]))


def seeds_to_settle(differences, alpha, power=POWER, max_seeds=MAX_SEEDS):
  """Seeds the paired t-test needs to establish a difference like the one observed: the smallest
  n >= 2 whose `paired_power` reaches `power` at level `alpha`, for the effect size
  |mean| / sample std of `differences` (1-D, >= 2 paired differences, one per seed).

  Returns an int, None when the observed mean difference is 0 (no number of seeds would settle
  it), or `max_seeds + 1` when even `max_seeds` would not. Differences without spread (every seed
  the same) are what `paired_t_test` decides by the sign test (p = 2 * 0.5^n): then the answer
  is the smallest n with 2 * 0.5^n < alpha. The effect size is the observed one, so with few
  seeds this is an estimate as uncertain as the difference itself (a planning figure, not a
  promise).
  """
  d = _sample(differences, "differences")
  mean = float(np.mean(d))
  if round(mean, _DECIMALS) == 0:
    return None
  if np.ptp(np.round(d, _DECIMALS)) == 0:
    return max(2, math.floor(math.log2(2 / alpha)) + 1)
  effect = abs(mean) / float(np.std(d, ddof=1))
  if paired_power(effect, max_seeds, alpha) < power:
    return max_seeds + 1
  low, high = 2, max_seeds  # power grows with n: the smallest n that reaches it, by bisection
  while low < high:
    middle = (low + high) // 2
    low, high = (middle + 1, high) if paired_power(effect, middle, alpha) < power else (low,
                                                                                      middle)
  return low


# ----------------------------------------------------------------------------------------------
# Reading a sweep
# ----------------------------------------------------------------------------------------------

def load_sweep(workdir):
  """sweep.json plus, per arm, the finished runs {seed: summary} and their metrics records."""
  workdir = epath.Path(workdir)
  sweep_file = workdir / "sweep.json"
  if not sweep_file.exists():
    raise ConfigError(f"{sweep_file} not found: is {workdir} the --workdir of a sweep?")
  sweep = files.read_json(sweep_file, "sweep description")
  needed = {"arms", "num_seeds", "field", "swept", "seeds", "paper_test_error"}
  if not isinstance(sweep, dict) or not needed <= sweep.keys():
    raise ConfigError(f"{sweep_file} is unreadable; relaunch the sweep's command (it rewrites "
                      "that file and skips the finished runs) to rebuild the report")
  sweep["runs"], sweep["diverged"] = {}, {}
  for arm in sweep["arms"]:
    finished, diverged = {}, {}
    for seed in sweep["seeds"]:
      run_dir = workdir / arm / f"seed_{seed}"
      summary = files.read_json(run_dir / "summary.json", "run summary")
      if isinstance(summary, dict) and summary.get("finished"):
        summary["records"] = metrics.read(run_dir)
        finished[seed] = summary
      elif (record := metrics.diverged(run_dir)) is not None:
        diverged[seed] = record
    sweep["runs"][arm], sweep["diverged"][arm] = finished, diverged
  return sweep


def _seed_range(sweep):
  chosen = sweep["seeds"]
  return f"seed {chosen[0]}" if len(chosen) == 1 else f"seeds {chosen[0]}–{chosen[-1]}"


SPLITS = ("test", "validation")


def _errors(runs, split):
  """{seed: error % on `split`} of the finished runs that have it (validation: runs that held
  examples out)."""
  key = f"{split}_error_percent"
  return {seed: run[key] for seed, run in runs.items() if run.get(key) is not None}


def summarize(sweep):
  """Per-arm figures and, per split (test; validation where the runs held one out), pairwise
  comparisons with their verdicts and the seeds that would settle the open ones, as plain data.
  """
  arms = []
  for arm in sweep["arms"]:
    runs = sweep["runs"][arm]
    first = runs[min(runs)] if runs else {}
    row = {
        "arm": arm, "overrides": sweep.get("overrides", {}).get(arm, {}),
        "seeds_finished": sorted(runs), "seeds_planned": sweep["num_seeds"],
        "seeds_diverged": [
            {"seed": seed, **{k: record.get(k) for k in ("step", "loss", "reason")}}
            for seed, record in sorted(sweep.get("diverged", {}).get(arm, {}).items())],
        "num_params": first.get("num_params"),
        "flops_per_image": first.get("flops_per_image"),
        "train_images_per_s": (float(np.mean([r["train_images_per_s"] for r in runs.values()]))
                               if runs else None),
        "wall_time_s": (float(np.mean([r["wall_time_s"] for r in runs.values()]))
                        if runs else None),
        # the paper's figures are CIFAR-10 test errors: beside no other data (a config's
        # get_config sees the dataset before --config.dataset=... flags change it)
        "paper_test_error": (sweep["paper_test_error"].get(arm)
                             if sweep.get("dataset") == "cifar10" else None),
        "platform": first.get("platform"), "devices": first.get("devices"),
    }
    for split in SPLITS:
      errors = list(_errors(runs, split).values())
      row.update({
          f"{split}_errors": errors,
          f"{split}_error_mean": float(np.mean(errors)) if errors else None,
          f"{split}_error_std": float(np.std(errors, ddof=1)) if len(errors) > 1 else None,
          f"{split}_error_best": min(errors) if errors else None,
          f"{split}_error_worst": max(errors) if errors else None})
    arms.append(row)

  splits = [split for split in SPLITS if any(a[f"{split}_errors"] for a in arms)] or ["test"]
  comparisons = []
  for split in splits:
    rows = []
    for a, b in itertools.combinations(sweep["arms"], 2):
      errors_a, errors_b = _errors(sweep["runs"][a], split), _errors(sweep["runs"][b], split)
      seeds = sorted(set(errors_a) & set(errors_b))
      err_a, err_b = [errors_a[s] for s in seeds], [errors_b[s] for s in seeds]
      row = {"split": split, "a": a, "b": b, "seeds": seeds, "mean_difference": None,
             "interval": None, "paired_p": None, "welch_p": None, "seeds_to_settle": None}
      if len(seeds) >= 2:
        diffs = np.subtract(err_a, err_b)
        row.update(mean_difference=float(diffs.mean()), interval=bootstrap_interval(diffs),
                   paired_p=float(paired_t_test(err_a, err_b)[2]),
                   welch_p=float(welch_t_test(err_a, err_b)[2]))
      elif len(seeds) == 1:
        row["mean_difference"] = err_a[0] - err_b[0]
      rows.append(row)
    tested = [c for c in rows if c["paired_p"] is not None]
    for row, adjusted in zip(tested, holm_adjust([c["paired_p"] for c in tested])):
      row["paired_p_holm"] = adjusted
    for row in rows:
      row["verdict"] = _verdict(row)
      if row.get("paired_p_holm") is not None and row["paired_p_holm"] >= ALPHA:
        # alpha / m: the level Holm asks of the smallest of m p-values, so the count suffices
        # whatever the other pairs show
        diffs = np.subtract([_errors(sweep["runs"][row["a"]], split)[s] for s in row["seeds"]],
                            [_errors(sweep["runs"][row["b"]], split)[s] for s in row["seeds"]])
        row["seeds_to_settle"] = seeds_to_settle(diffs, ALPHA / len(tested))
    comparisons += rows
  return {"field": sweep["field"], "swept": sweep["swept"],
          "dataset": sweep.get("dataset"), "splits": splits, "arms": arms,
          "comparisons": comparisons}


def _verdict(row):
  n = len(row["seeds"])
  if n < 2:
    return f"too few seeds finished in both ({n}): cannot tell"
  if row["paired_p_holm"] < ALPHA:
    lower, higher = (row["a"], row["b"]) if row["mean_difference"] < 0 else (row["b"], row["a"])
    return f"{lower} has lower {row['split']} error than {higher}"
  return (f"not established on the {row['split']} split with {n} seeds (adjusted p = "
          f"{row['paired_p_holm']:.2f})")


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

def _fmt(value, pattern="{:.2f}"):
  return "–" if value is None else pattern.format(value)


def _loss(value):
  """A diverged run's loss: a float, or "nan" / "inf" as diverged.json keeps them."""
  return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def _settle(count):
  if count is None:
    return "– (no difference seen)"
  return f"> {MAX_SEEDS:,}" if count > MAX_SEEDS else f"{count:,}"


def markdown(summary, sweep, warnings_=()):
  arms = summary["arms"]
  splits = summary["splits"]
  hardware = {(a["platform"], a["devices"]) for a in arms if a["platform"]}
  title = ", ".join(f"`{field}`" for field in summary["swept"])
  lines = [f"# Ablation of {title} on {summary['dataset']}", ""]
  if warnings_:
    lines += ["**Warnings: the runs compared here may differ in more than their arms.**", ""]
    lines += [f"- {w}" for w in warnings_] + [""]
  lines += [
      f"Seeds per arm: {sweep['num_seeds']}, {_seed_range(sweep)} (`config.seed` and the ones "
      "after it, one run each; seed n gives every arm the same data order and "
      f"augmentation). Hardware: {', '.join(f'{p} x {d}' for p, d in sorted(hardware)) or '–'}. "
      "Errors in %; mean ± sample std over the finished seeds."
      + (" Validation: training examples held out (stratified, the same for every run), "
         "never trained on." if "validation" in splits else ""), "",
      "| arm | sets | seeds | " + " | ".join(f"{s} error | best | worst" for s in splits)
      + " | params | MFLOPs/image | train images/s | wall time/run (s) | paper |",
      "|---|---|---|" + "---|---|---|" * len(splits) + "---|---|---|---|---|"]
  for a in arms:
    sets = ", ".join(f"{k}={v}" for k, v in a["overrides"].items()) or "–"
    cells = []
    for split in splits:
      mean = a[f"{split}_error_mean"]
      cells.append(f"{mean:.2f} ± {_fmt(a[f'{split}_error_std'])}" if mean is not None else "–")
      cells += [_fmt(a[f"{split}_error_best"]), _fmt(a[f"{split}_error_worst"])]
    gone = f" ({len(a['seeds_diverged'])} diverged)" if a.get("seeds_diverged") else ""
    lines.append(
        f"| {a['arm']} | {sets} | {len(a['seeds_finished'])}/{a['seeds_planned']}{gone} "
        f"| {' | '.join(cells)} | {_fmt(a['num_params'], '{:,}')} "
        f"| {_fmt(a['flops_per_image'] and a['flops_per_image'] / 1e6, '{:.1f}')} "
        f"| {_fmt(a['train_images_per_s'], '{:.0f}')} | {_fmt(a['wall_time_s'], '{:.1f}')} "
        f"| {_fmt(a['paper_test_error'])} |")
  first = summary.get("provenance")
  if first:
    versions = ", ".join(f"{k} {v}" for k, v in first["versions"].items() if v)
    commit = (first["git"]["commit"] or "unknown")[:12]
    dirty = " (with uncommitted changes)" if first["git"]["dirty"] else ""
    lines += ["", f"Code: commit {commit}{dirty}; {versions}; {first['platform']} "
                  f"({first['device_kind']})" + ("" if warnings_ else "; the same for every run")
              + ". Each run's resolved config: its summary.json."]
  if summary.get("precision"):
    by_value = {}
    for arm, value in summary["precision"].items():
      by_value.setdefault(value, []).append(arm)
    lines += ["", "Convolutions and matmuls computed in: " + "; ".join(
        f"{value} ({', '.join(arms)})" for value, arms in by_value.items()) + "."]
  diverged = [(a["arm"], record["seed"], record) for a in arms
              for record in a.get("seeds_diverged", [])]
  if diverged:
    lines += ["", f"Diverged: {len(diverged)} run(s), a result of their setting; their arms are "
                  "compared on the seeds that finished."]
    lines += [f"- {arm} seed {seed}: {record['reason']} at step {record['step']} "
              f"(loss {_loss(record['loss'])})" for arm, seed, record in diverged]
  lines += [
      "", "## Differences between arms", "",
      "Difference = error(a) − error(b) in percentage points over the seeds both finished; "
      "95% bootstrap interval of the mean; paired t-test p, Holm-adjusted over the pairs of the "
      "same split; Welch's t-test p for reference (an exact permutation test's when neither arm "
      f"varies). A verdict rests on the split named in its row; a difference is established "
      f"when the adjusted paired p is below {ALPHA}.", "",
      f"Seeds to settle (open pairs only): the seeds per arm with which a paired t-test would "
      f"establish the observed mean difference with {POWER:.0%} power, given the observed "
      f"spread of the paired differences (effect size d = |mean| / std), at level {ALPHA} / "
      "(pairs of that split) -- the strictest level Holm's adjustment applies, so the count "
      "holds whatever the other pairs show. It is an estimate from the seeds run so far.", "",
      "| split | a − b | seeds | difference | 95% interval | paired p (Holm) | Welch p "
      "| verdict | seeds to settle |",
      "|---|---|---|---|---|---|---|---|---|"]
  for c in summary["comparisons"]:
    interval = f"[{c['interval'][0]:+.2f}, {c['interval'][1]:+.2f}]" if c["interval"] else "–"
    settle = (_settle(c["seeds_to_settle"]) if c.get("paired_p_holm") is not None
              and c["paired_p_holm"] >= ALPHA else "")
    lines.append(
        f"| {c['split']} | {c['a']} − {c['b']} | {len(c['seeds'])} "
        f"| {_fmt(c['mean_difference'], '{:+.2f}')} "
        f"| {interval} | {_fmt(c.get('paired_p_holm'), '{:.3f}')} "
        f"| {_fmt(c['welch_p'], '{:.3f}')} | {c['verdict']} | {settle} |")
  lines += ["", "![test error against epoch](test_error_vs_epoch.png)", "",
            "![test error per arm](test_error_bars.png)", ""]
  return "\n".join(lines)


def plot(summary, sweep, workdir):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  figure, axes = plt.subplots(figsize=(7, 4.5))
  for arm in sweep["arms"]:
    curves = {}
    for run in sweep["runs"][arm].values():
      for r in run["records"]:
        if "test_accuracy" in r:
          curves.setdefault(round(r["epoch"], 3), []).append(100 * (1 - r["test_accuracy"]))
    if curves:
      epochs = sorted(curves)
      mean = [np.mean(curves[e]) for e in epochs]
      line, = axes.plot(epochs, mean, marker="o", markersize=3, label=arm)
      axes.fill_between(epochs, [min(curves[e]) for e in epochs],
                        [max(curves[e]) for e in epochs], color=line.get_color(), alpha=0.2)
  axes.set(xlabel="epoch", ylabel="test error (%)", yscale="log",
           title=f"{summary['field']}: mean over seeds, band = best..worst seed")
  axes.grid(True, which="both", alpha=0.3)
  if axes.lines:
    axes.legend()
  else:  # no run has evaluated yet (or every one diverged before its first evaluation)
    axes.text(0.5, 0.5, "no test evaluation recorded yet", transform=axes.transAxes,
              ha="center", va="center")
  figure.tight_layout()
  files.save_figure(figure, epath.Path(workdir) / "test_error_vs_epoch.png", dpi=120)
  plt.close(figure)

  figure, axes = plt.subplots(figsize=(7, 4.5))
  arms = summary["arms"]
  positions = np.arange(len(arms))
  means = [a["test_error_mean"] or 0 for a in arms]
  axes.bar(positions, means, yerr=[a["test_error_std"] or 0 for a in arms], capsize=6,
           color="#9ecae1", edgecolor="#3182bd", label="mean ± std over seeds")
  labelled = set()  # each legend entry once, on the first arm that has it

  def label(name):
    if name in labelled:
      return None
    labelled.add(name)
    return name

  for x, a in zip(positions, arms):
    if a["test_errors"]:
      axes.scatter([x] * len(a["test_errors"]), a["test_errors"], color="black", s=12, zorder=3,
                   label=label("one seed"))
    if a["paper_test_error"] is not None:
      axes.scatter([x], [a["paper_test_error"]], marker="*", s=120, color="#e6550d", zorder=4,
                   label=label("paper"))
  axes.set_xticks(positions, [a["arm"] for a in arms], rotation=30 if len(arms) > 4 else 0,
                  ha="right" if len(arms) > 4 else "center")
  axes.set(ylabel="test error (%)", title=f"{summary['field']} on {summary['dataset']}")
  axes.legend()
  figure.tight_layout()
  files.save_figure(figure, epath.Path(workdir) / "test_error_bars.png", dpi=120)
  plt.close(figure)


def write_report(workdir):
  """Builds the report from the runs on disk; returns the path of report.md."""
  workdir = epath.Path(files.resolve(workdir))
  sweep = load_sweep(workdir)
  summary = summarize(sweep)
  # Runs compared must differ in their arms only: not in their code, versions or hardware.
  summary["provenance_warnings"] = provenance.mismatches({
      f"{arm}/seed_{seed}": run.get("provenance")
      for arm in sweep["arms"] for seed, run in sorted(sweep["runs"][arm].items())})
  summary["provenance"] = next((run["provenance"] for arm in sweep["arms"]
                                for run in sweep["runs"][arm].values() if run.get("provenance")),
                               None)
  # {arm: what its convolutions and matmuls computed in}, from its runs' provenance (values
  # joined with " / " where its runs differ); arms whose runs carry none are left out
  summary["precision"] = {}
  for arm in sweep["arms"]:
    values = {(run.get("provenance") or {}).get("precision", {}).get("computed_in")
              for run in sweep["runs"][arm].values()} - {None}
    if values:
      summary["precision"][arm] = " / ".join(sorted(values))
  files.write_json(workdir / "report.json", summary)
  table = io.StringIO()
  columns = ["arm", "seeds_finished", "test_error_mean", "test_error_std", "test_error_best",
             "test_error_worst", "validation_error_mean", "validation_error_std",
             "validation_error_best", "validation_error_worst", "num_params", "flops_per_image",
             "train_images_per_s", "wall_time_s", "paper_test_error"]
  writer = csv.DictWriter(table, columns, extrasaction="ignore")
  writer.writeheader()
  for arm in summary["arms"]:
    writer.writerow({**arm, "seeds_finished": len(arm["seeds_finished"])})
  files.write_text(workdir / "report.csv", table.getvalue())
  files.write_text(workdir / "report.md", markdown(summary, sweep,
                                                   summary["provenance_warnings"]))
  plot(summary, sweep, workdir)
  return workdir / "report.md"


def main(argv):
  if len(argv) != 2:
    sys.exit("usage: python -m nin_jax.report WORKDIR   (the --workdir of a sweep)")
  try:
    files.check_reachable(argv[1], "WORKDIR")
    path = write_report(argv[1])
  except NinError as e:
    sys.exit(f"error: {e}")
  print(path.read_text())


if __name__ == "__main__":
  main(sys.argv)
