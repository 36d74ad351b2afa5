"""ImageNet-C arithmetic (Hendrycks & Dietterich, ICLR 2019): corruption error, mCE, relative mCE.

Errors are fractions in [0, 1]. `errors[c][s - 1]` is the top-1 error on corruption `c` at severity `s`.
A baseline is either a number per corruption (its error averaged over the severities, as the paper's
AlexNet table gives it) or the per-severity list; both give the same sums.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# The 15 benchmark corruptions in the order of the ImageNet-C paper (noise, blur, weather, digital).
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# AlexNet's ImageNet-C error per corruption, averaged over severities 1-5 (reference/paper.md section 6).
ALEXNET_ERRORS: dict[str, float] = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360,
    "snow": 0.866816, "frost": 0.826572, "fog": 0.819324, "brightness": 0.564592,
    "contrast": 0.853204, "elastic_transform": 0.646056, "pixelate": 0.717840, "jpeg_compression": 0.606500,
}

Baseline = Mapping[str, float | Sequence[float]]


def alexnet_clean_error() -> float:
    """AlexNet's clean ImageNet top-1 error (for relative mCE), read from torchvision's weight metadata."""
    from torchvision.models import AlexNet_Weights

    return 1.0 - AlexNet_Weights.IMAGENET1K_V1.meta["_metrics"]["ImageNet-1K"]["acc@1"] / 100.0


def _baseline_sum(baseline: Baseline, corruption: str, n: int) -> float:
    if corruption not in baseline:
        raise KeyError(f"the baseline has no error for corruption {corruption!r}; it covers {sorted(baseline)}")
    b = baseline[corruption]
    if isinstance(b, (int, float)):
        return float(b) * n
    if len(b) != n:
        raise ValueError(f"baseline {corruption!r} has {len(b)} severities, the model's errors have {n}")
    return float(sum(b))


def corruption_errors(errors: Mapping[str, Sequence[float]], baseline: Baseline = ALEXNET_ERRORS) -> dict[str, float]:
    """CE_c = sum_s E_{s,c} / sum_s E^baseline_{s,c}, per corruption in `errors`."""
    return {c: float(sum(e)) / _baseline_sum(baseline, c, len(e)) for c, e in errors.items()}


def mce(errors: Mapping[str, Sequence[float]], baseline: Baseline = ALEXNET_ERRORS) -> float:
    """Mean corruption error: the CE averaged over corruptions (Table 8 reports it x100)."""
    ce = corruption_errors(errors, baseline)
    return sum(ce.values()) / len(ce)


def unnormalized_mce(errors: Mapping[str, Sequence[float]]) -> float:
    """The plain mean top-1 error over every corruption and severity (no baseline)."""
    values = [float(v) for e in errors.values() for v in e]
    return sum(values) / len(values)


def relative_corruption_errors(
    errors: Mapping[str, Sequence[float]], clean_error: float, baseline: Baseline, baseline_clean_error: float,
) -> dict[str, float]:
    """Relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^baseline_{s,c} - E^baseline_clean): how much of
    the accuracy is lost to the corruption, relative to how much the baseline loses."""
    out = {}
    for c, e in errors.items():
        n = len(e)
        denominator = _baseline_sum(baseline, c, n) - n * baseline_clean_error
        if denominator <= 0:
            raise ValueError(f"the baseline loses no accuracy on {c!r}; relative CE is undefined")
        out[c] = (float(sum(e)) - n * clean_error) / denominator
    return out


def relative_mce(
    errors: Mapping[str, Sequence[float]], clean_error: float, baseline: Baseline, baseline_clean_error: float,
) -> float:
    """Relative mCE: the relative CE averaged over corruptions."""
    rce = relative_corruption_errors(errors, clean_error, baseline, baseline_clean_error)
    return sum(rce.values()) / len(rce)


def severity_errors(errors: Mapping[str, Sequence[float]]) -> list[float]:
    """Error at each severity, averaged over the corruptions."""
    n = len(next(iter(errors.values())))
    return [sum(float(e[s]) for e in errors.values()) / len(errors) for s in range(n)]


def summarize(
    errors: Mapping[str, Sequence[float]],
    clean_error: float | None = None,
    baseline: Baseline | None = ALEXNET_ERRORS,
    baseline_clean_error: float | None = None,
) -> dict:
    """Everything the robustness report lists: per-corruption and per-severity errors, CE, mCE, unnormalised
    mCE and, when clean errors are known, relative mCE. Values are fractions (x100 for the paper's table).
    Without a baseline only the unnormalised figures are given."""
    out: dict = {
        "errors": {c: [float(v) for v in e] for c, e in errors.items()},
        "corruption_mean_errors": {c: sum(e) / len(e) for c, e in errors.items()},
        "severity_errors": severity_errors(errors),
        "unnormalized_mce": unnormalized_mce(errors),
        "clean_error": clean_error,
    }
    if baseline is not None:
        out["ce"] = corruption_errors(errors, baseline)
        out["mce"] = mce(errors, baseline)
        if clean_error is not None and baseline_clean_error is not None:
            try:
                rce = relative_corruption_errors(errors, clean_error, baseline, baseline_clean_error)
            except ValueError as e:  # a corruption the baseline is not hurt by: report why instead of a number
                out["relative_mce_undefined"] = str(e)
            else:
                out["relative_ce"] = rce
                out["relative_mce"] = sum(rce.values()) / len(rce)
    return out
