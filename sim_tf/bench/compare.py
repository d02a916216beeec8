"""Two benchmark results side by side: throughput ratios and *paired* AUC differences.

`sim-tf benchmark --modes auc` trains repeat r with ``--seed=first_seed + r`` (``--first_seed``, 0 by
default). Two configurations (or two checkouts) run with the same seed start from the same weights and
see the same batches, so their AUCs pair up by seed; the difference of a pair is what an optimisation
did to that seed. One pair says little when training is chaotic: a change that only reorders float sums
can move a seed's one-epoch AUC by more than the seed-to-seed spread. So each comparison reports the
per-seed differences *and* their mean with a confidence interval (Student's t over the pairs; 95% unless
``--confidence`` says otherwise), next to the base's seed-to-seed standard deviation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics

from sim_tf.bench.suite import dataset_label, text_table
from sim_tf.errors import UserError

_CASE_KEYS = ("model", "preset", "mode", "config")


def case_key(case: dict) -> tuple:
    """(model, preset, mode, config, gsu, long_history): reports written before the history axis have
    neither of the last two, which then read as "" and 0."""
    return tuple(case[k] for k in _CASE_KEYS) + (case.get("gsu", ""), int(case.get("long_history", 0)))


def variant(case_or_key) -> str:
    """A case's label beyond model, preset and mode: its config, and its search unit and history if any."""
    _, _, _, config, gsu, long_history = case_or_key if isinstance(case_or_key, tuple) else case_key(case_or_key)
    return f"{config} {gsu} {long_history:,}" if gsu else config


def _continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz), converging for
    x < (a + 1) / (a + b + 2)."""
    tiny = 1e-300

    def guard(v):
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1.0))
    result = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 / guard(1.0 + numerator * d)
            c = guard(1.0 + numerator / c)
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    # The fraction converges fast on one side of the mean only; the symmetry I_x(a, b) = 1 - I_{1-x}(b, a)
    # covers the other.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, degrees_of_freedom: float) -> float:
    """P(T <= t) for Student's t with the given degrees of freedom."""
    tail = 0.5 * regularized_beta(degrees_of_freedom / 2.0, 0.5, degrees_of_freedom / (degrees_of_freedom + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(probability: float, degrees_of_freedom: int) -> float:
    """The t with P(T <= t) = ``probability`` (0.5 <= probability < 1), by bisection on :func:`t_cdf`.
    Exact for any level and any number of pairs, so an interval at 99.7% (several looks at one claim,
    each at 5%/m) is as right as one at 95%."""
    if degrees_of_freedom < 1:
        raise ValueError("a confidence interval needs at least two pairs")
    if not 0.5 <= probability < 1.0:
        raise ValueError(f"probability must be in [0.5, 1), got {probability}")
    low, high = 0.0, 1.0
    while t_cdf(high, degrees_of_freedom) < probability:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        if t_cdf(middle, degrees_of_freedom) < probability:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * high:
            break
    return 0.5 * (low + high)


def load_report(path: str) -> dict:
    """A `sim-tf benchmark --json_output` file, checked enough to name what is wrong with a bad one."""
    try:
        with open(path) as f:
            report = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (give the --json_output of a `sim-tf benchmark` run)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable JSON file ({e})") from None
    results = report.get("results") if isinstance(report, dict) else None
    if not isinstance(results, list) or not all(
        isinstance(r, dict) and isinstance(r.get("case"), dict) and isinstance(r.get("runs"), list) for r in results
    ):
        raise UserError(f"{path}: not a `sim-tf benchmark` report (it needs a 'results' list of cases with runs)")
    for entry in results:
        missing = [k for k in _CASE_KEYS if k not in entry["case"]]
        if missing:
            raise UserError(f"{path}: a case lacks {missing}; not a `sim-tf benchmark` report")
    return report


def seed_of(run: dict, index: int) -> int:
    """The seed a run trained with: its command's ``--seed=N`` (ours) or ``--seed N`` (the recipe's), else its
    repeat index (a report from before runs kept their command, when repeat r trained with seed r)."""
    found = re.search(r"--seed[= ](\d+)", run.get("command", ""))
    return int(found.group(1)) if found else index


def _aucs_by_seed(runs: list[dict]) -> dict[int, float]:
    return {seed_of(r, i): r["test_auc"] for i, r in enumerate(runs) if "error" not in r and r.get("test_auc") is not None}


def _throughputs(runs: list[dict]) -> list[float]:
    return [r["throughput"] for r in runs if "error" not in r and r.get("throughput") is not None]


@dataclasses.dataclass
class Comparison:
    model: str
    preset: str
    mode: str
    base: str  # the base side's label: its config ("fp32"), or "base fp32" when two reports are compared
    new: str
    base_throughput: float | None = None
    new_throughput: float | None = None
    seeds: tuple[int, ...] = ()
    auc_differences: tuple[float, ...] = ()  # new - base, per seed, in the order of ``seeds``
    base_auc_sd: float | None = None  # the base's seed-to-seed standard deviation
    confidence: float = 0.95  # the two-sided level of ``interval``

    @property
    def throughput_ratio(self) -> float | None:
        if self.base_throughput and self.new_throughput is not None:
            return self.new_throughput / self.base_throughput
        return None

    @property
    def mean_difference(self) -> float | None:
        return statistics.fmean(self.auc_differences) if self.auc_differences else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """The ``confidence`` interval of the mean paired difference (needs two or more pairs)."""
        n = len(self.auc_differences)
        if n < 2:
            return None
        half = t_quantile(0.5 + self.confidence / 2.0, n - 1) * statistics.stdev(self.auc_differences) / math.sqrt(n)
        mean = statistics.fmean(self.auc_differences)
        return mean - half, mean + half

    def within(self, tolerance: float) -> int:
        """How many seeds moved by at most ``tolerance``."""
        return sum(abs(d) <= tolerance + 1e-12 for d in self.auc_differences)

    def verdict(self, tolerance: float) -> str:
        """Whether the mean AUC moved by less than ``tolerance``, as far as the pairs can tell."""
        interval = self.interval
        if interval is None:
            return "too few pairs"
        low, high = interval
        if -tolerance <= low and high <= tolerance:
            return f"mean within +-{tolerance:g}"
        if high < -tolerance or low > tolerance:
            return f"mean moved by more than {tolerance:g}"
        return "undecided: more seeds needed"


def _median_throughput(runs: list[dict]) -> float | None:
    speeds = _throughputs(runs)
    return statistics.median(speeds) if speeds else None


def _pair(model, preset, mode, base_label, new_label, base_runs, new_runs) -> Comparison:
    base_auc, new_auc = _aucs_by_seed(base_runs), _aucs_by_seed(new_runs)
    seeds = tuple(sorted(set(base_auc) & set(new_auc)))
    return Comparison(
        model, preset, mode, base_label, new_label,
        base_throughput=_median_throughput(base_runs),
        new_throughput=_median_throughput(new_runs),
        seeds=seeds,
        auc_differences=tuple(new_auc[s] - base_auc[s] for s in seeds),
        base_auc_sd=statistics.stdev(base_auc.values()) if len(base_auc) >= 2 else None,
    )


def compare_reports(base: dict, new: dict) -> list[Comparison]:
    """Every case present in both reports, matched by model, preset, mode, config and history."""
    base_cases = {case_key(r["case"]): r for r in base["results"]}
    out = []
    for entry in new["results"]:
        key = case_key(entry["case"])
        if key in base_cases:
            model, preset, mode = key[:3]
            out.append(_pair(model, preset, mode, f"base {variant(key)}", f"new {variant(key)}",
                             base_cases[key]["runs"], entry["runs"]))
    if not out:
        raise UserError("the two reports have no case in common (same model, preset, mode and config)")
    return out


def compare_configs(report: dict, baseline: str) -> list[Comparison]:
    """Within one report, every other config against ``baseline`` for the same model, preset, mode and history."""
    by_key = {case_key(r["case"]): r for r in report["results"]}
    out = []
    for key, entry in by_key.items():
        model, preset, mode, config, gsu, history = key
        reference = by_key.get((model, preset, mode, baseline, gsu, history))
        if config != baseline and reference is not None:
            out.append(_pair(model, preset, mode, variant(reference["case"]), variant(key), reference["runs"],
                             entry["runs"]))
    if not out:
        configs = sorted({r["case"]["config"] for r in report["results"]})
        raise UserError(f"nothing to compare: the report needs config {baseline!r} and another one for the same "
                        f"model, preset and mode (it has {configs}); or give a second report")
    return out


def compare_search_units(report: dict, baseline: str) -> list[Comparison]:
    """Within one report, every other search unit (--gsu) against ``baseline`` for the same model, preset,
    mode, config and long history: e.g. ETA, SDIM, TWIN and hard against soft, paired by seed."""
    by_key = {case_key(r["case"]): r for r in report["results"]}
    out = []
    for key, entry in by_key.items():
        model, preset, mode, config, gsu, history = key
        reference = by_key.get((model, preset, mode, config, baseline, history))
        if gsu and gsu != baseline and reference is not None:
            out.append(_pair(model, preset, mode, variant(reference["case"]), variant(key), reference["runs"],
                             entry["runs"]))
    if not out:
        units = sorted({r["case"].get("gsu", "") for r in report["results"]} - {""})
        raise UserError(f"nothing to compare: the report needs search unit {baseline!r} and another one for the same "
                        f"model, preset, mode, config and history (it has {units or 'none'})")
    return out


def confidence_label(confidence: float) -> str:
    """0.95 -> "95%", 0.997368 -> "99.7368%"."""
    return f"{100 * confidence:.6g}%"


def format_comparisons(comparisons: list[Comparison], tolerance: float) -> str:
    level = confidence_label(comparisons[0].confidence) if comparisons else "95%"
    header = ["model", "preset", "mode", "base -> new", "samples/s", "ratio", "AUC pairs",
              "new - base per seed", f"mean [{level} CI]", f"|diff| <= {tolerance:g}", "base seed sd", "verdict"]
    rows = []
    for c in comparisons:
        speed = (f"{c.base_throughput:,.0f} -> {c.new_throughput:,.0f}"
                 if c.base_throughput is not None and c.new_throughput is not None else "-")
        ratio = f"{c.throughput_ratio:.3f}" if c.throughput_ratio is not None else "-"
        if c.auc_differences:
            per_seed = " ".join(f"{d:+.4f}" for d in c.auc_differences)
            interval = c.interval
            mean = f"{c.mean_difference:+.4f}" + (f" [{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else "")
            within = f"{c.within(tolerance)}/{len(c.auc_differences)}"
            sd = f"{c.base_auc_sd:.4f}" if c.base_auc_sd is not None else "-"
            verdict = c.verdict(tolerance)
        else:
            per_seed = mean = within = sd = verdict = "-"
        rows.append([c.model, dataset_label(c.preset), c.mode, f"{c.base} -> {c.new}", speed, ratio, str(len(c.seeds)),
                     per_seed, mean, within, sd, verdict])
    return text_table(header, rows)
