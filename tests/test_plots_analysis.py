"""Plots of the posterior-analysis notebooks: each writes a PNG from representative and edge-case inputs."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from pyro_mfm import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _written(fig, tmp_path, name="plot.png", min_bytes=2000):
    assert isinstance(fig, Figure)
    data = plots.save(fig, tmp_path / name).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > min_bytes


def test_coverage_curve(tmp_path):
    lv = np.array([0.5, 0.7, 0.9, 0.95])
    _written(plots.coverage_curve(lv, lv - 0.03), tmp_path, "plain.png")
    _written(
        plots.coverage_curve(lv, lv + 0.02, expected=lv + 0.04, n=400, size=[1.2, 1.6, 2.5, 3.1], size_label="classes"),
        tmp_path,
        "full.png",
    )


def test_posterior_ellipses(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    covs = np.stack([a @ a.T / s for s in (1, 4, 16)])
    means = rng.normal(size=(3, 4))
    back = rng.normal(size=(200, 4))
    _written(
        plots.posterior_ellipses(
            means, covs, ["one", "two", "all"], background=back, background_labels=rng.integers(0, 10, 200)
        ),
        tmp_path,
        "bg.png",
    )
    _written(plots.posterior_ellipses(means[:, :2], covs[:, :2, :2], ["a", "b", "c"]), tmp_path, "2d.png")


def test_factor_plots(tmp_path):
    rng = np.random.default_rng(1)
    fr = {m: rng.uniform(size=d) for m, d in [("fou", 76), ("pix", 240), ("mor", 6)]}
    fr["mor"][0] = np.nan
    _written(plots.factor_fractions(fr, {m: float(np.nanmean(v)) for m, v in fr.items()}), tmp_path, "f.png")
    _written(plots.factor_fractions(fr), tmp_path, "f2.png")
    _written(
        plots.contributions_over_time(
            rng.uniform(size=8), truth=rng.uniform(size=8), per_feature=rng.uniform(size=(8, 3))
        ),
        tmp_path,
        "t.png",
    )
    _written(plots.contributions_over_time(rng.uniform(size=5)), tmp_path, "t2.png")


def test_image_grid_and_metric_vs_rate(tmp_path):
    rng = np.random.default_rng(2)
    _written(
        plots.image_grid(
            rng.uniform(size=(3, 4, 16, 15)), [f"r{i}" for i in range(3)], [f"c{j}" for j in range(4)], title="grid"
        ),
        tmp_path,
        "g.png",
    )
    _written(plots.image_grid(rng.uniform(size=(1, 1, 5, 5)), same_scale=False), tmp_path, "g1.png", 500)
    _written(
        plots.metric_vs_rate(
            [0, 0.3, 0.6],
            {"fou": [0.5, 0.6, 0.8], "pix": [0.2, 0.3, 0.5]},
            reference=1.0,
            reference_label="training mean",
        ),
        tmp_path,
        "r.png",
    )
    _written(plots.metric_vs_rate([0, 0.5], {"accuracy": [0.9, 0.8]}, metric="accuracy"), tmp_path, "r2.png")
