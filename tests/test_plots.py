"""Every figure is a readable PNG of the expected pixel size, NaNs included."""
from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from starlabels import plots

rng = np.random.default_rng(0)


def read_png(path) -> tuple[int, int]:
    assert path.exists() and path.stat().st_size > 2000
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()                        # decodes the whole image: a truncated file fails
        pixels = np.asarray(image)
    assert pixels.std() > 0                 # something was drawn
    return image.size


@pytest.fixture(autouse=True)
def no_figure_left_open():
    yield
    assert plots.plt.get_fignums() == [], "a plot function left a figure open"


def stars(n: int = 400, nan_fraction: float = 0.1) -> pd.DataFrame:
    df = pd.DataFrame({
        "spectrum_id": [f"s{i}" for i in range(n)],
        "teff": rng.uniform(4000, 7000, n), "logg": rng.uniform(1, 5, n),
        "fe_h": rng.uniform(-1.5, 0.5, n), "mg_fe": rng.uniform(-0.1, 0.4, n),
        "al_fe": rng.uniform(-0.2, 0.5, n),
    })
    for col in ["teff", "logg", "fe_h", "mg_fe", "al_fe"]:
        df.loc[rng.random(n) < nan_fraction, col] = np.nan
    return df


def test_backend_is_agg():
    assert matplotlib.get_backend().lower() == "agg"


def test_one_to_one(tmp_path):
    ref = stars()
    pred = ref.copy()
    pred["teff"] += rng.normal(0, 40, len(pred))
    pred["logg"] += rng.normal(0, 0.06, len(pred))
    out = plots.one_to_one(pred.sample(frac=1.0, random_state=1), ref, ["teff", "logg", "vsini"],
                           tmp_path / "o2o.png", ref_name="GES iDR6")
    assert out == tmp_path / "o2o.png"
    assert read_png(out) == (864, 530)      # 2 present labels x 3.6 in, 4.42 in, at 120 dpi
    # positional pairing and an all-NaN label do not crash
    empty = pred.drop(columns="spectrum_id").assign(fe_h=np.nan)
    plots.one_to_one(empty, ref.drop(columns="spectrum_id"), ["fe_h"], tmp_path / "nan.png")
    assert read_png(tmp_path / "nan.png") == (432, 530)
    with pytest.raises(ValueError, match="rows"):
        plots.one_to_one(empty.iloc[:10], ref.drop(columns="spectrum_id"), ["teff"],
                         tmp_path / "x.png")


def test_one_to_one_statistics_in_panel(tmp_path, monkeypatch):
    # the numbers printed in the panel are the bias and scatter of pred - ref over finite pairs
    texts = []
    original = matplotlib.axes.Axes.text

    def spy(self, x, y, s, *args, **kwargs):
        texts.append(s)
        return original(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "text", spy)
    ref = pd.DataFrame({"teff": [5000.0, 5100.0, 5200.0, np.nan, 5400.0]})
    pred = pd.DataFrame({"teff": [5010.0, 5130.0, 5190.0, 5300.0, np.nan]})
    plots.one_to_one(pred, ref, ["teff"], tmp_path / "stats.png")
    assert texts == ["bias 10\nσ 20\nN 3"]   # diffs 10, 30, -10: mean 10, std (N-1) 20


def test_kiel_diagram(tmp_path):
    df = stars(6000)                         # more than the density threshold of the others
    assert read_png(plots.kiel_diagram(df, tmp_path / "kiel.png")) == (604, 489)
    plots.kiel_diagram(df.drop(columns="fe_h"), tmp_path / "kiel_plain.png")
    assert read_png(tmp_path / "kiel_plain.png") == (604, 489)
    plots.kiel_diagram(df.assign(teff=np.nan), tmp_path / "kiel_empty.png")
    read_png(tmp_path / "kiel_empty.png")


def test_abundance_trends(tmp_path):
    assert read_png(plots.abundance_trends(stars(), tmp_path / "ab.png")) == (864, 408)
    dense = stars(5000)
    assert read_png(plots.abundance_trends(dense.drop(columns="al_fe"),
                                           tmp_path / "mg.png")) == (432, 408)
    with pytest.raises(ValueError):
        plots.abundance_trends(dense[["fe_h"]], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_tsne_map(tmp_path):
    n = 500
    clean = pd.DataFrame({
        "spectrum_id": [f"s{i}" for i in range(n)], "row": np.arange(n),
        "cleaned": np.arange(n) < 450, "keep": True, "reason": "",
        "tsne_x": rng.normal(size=n), "tsne_y": rng.normal(size=n),
    })
    clean.loc[~clean["cleaned"], ["tsne_x", "tsne_y"]] = np.nan
    clean.loc[~clean["cleaned"], "reason"] = "not cleaned (split target)"
    reasons = ["pca_residual", "embedding_outlier", "label_disagreement:teff",
               "pca_residual;embedding_outlier", "label_disagreement:fe_h;label_disagreement:teff"]
    for i, reason in zip(range(0, 40, 4), reasons * 2):
        clean.loc[i, ["keep", "reason"]] = [False, reason]
    assert read_png(plots.tsne_map(clean, tmp_path / "tsne.png")) == (777, 612)
    clean["teff"] = rng.uniform(4000, 7000, n)
    clean.loc[5, "teff"] = np.nan
    plots.tsne_map(clean, tmp_path / "tsne_teff.png", color_by="teff")
    plots.tsne_map(clean, tmp_path / "tsne_array.png", color_by=clean["teff"].to_numpy())
    plots.tsne_map(clean.assign(cleaned=False), tmp_path / "tsne_none.png")
    for name in ["tsne_teff", "tsne_array", "tsne_none"]:
        assert read_png(tmp_path / f"{name}.png") == (777, 612)


def test_gradient_spectrum(tmp_path):
    hr10 = np.arange(5339.0, 5619.0, 0.05)
    hr21 = np.arange(8484.0, 9001.0, 0.05)
    wavelength = np.r_[hr10, hr21]
    labels = ["teff", "mg_fe", "al_fe"]
    grad = np.abs(rng.normal(size=(3, wavelength.size))) * 1e-3
    grad[1, 100:200] = np.nan
    grad[2] = np.nan                         # a label whose gradients failed
    lines = pd.DataFrame({"wavelength_air": [5528.41, 8717.83, 8772.87, 8806.76, 7000.0],
                          "species": ["Mg I", "Mg I", "Al I", "Mg I", "outside"]})
    slices = {"HR10": slice(0, hr10.size), "HR21": slice(hr10.size, wavelength.size)}
    out = plots.gradient_spectrum(wavelength, grad, labels, tmp_path / "grad.png", lines, slices)
    assert read_png(out) == (1152, 756)      # 2 x 4.8 in, 3 x 1.9 + 0.6 in
    plots.gradient_spectrum(wavelength, grad[:1], ["teff"], tmp_path / "grad1.png")
    assert read_png(tmp_path / "grad1.png") == (576, 300)
    with pytest.raises(ValueError, match="shape"):
        plots.gradient_spectrum(wavelength, grad[:2], labels, tmp_path / "bad.png")


def test_precision_vs_snr(tmp_path):
    edges = [10, 20, 40, 80, 160]
    rows = []
    for label, base in [("teff", 300.0), ("mg_fe", 0.3)]:
        for lo, hi in zip(edges[:-1], edges[1:]):
            scale = base / np.sqrt(lo * hi)
            rows.append({"label": label, "snr_lo": lo, "snr_hi": hi,
                         "sigma": 10 * scale, "crlb": 7 * scale})
    summary = pd.DataFrame(rows)
    summary.loc[2, "sigma"] = np.nan
    assert read_png(plots.precision_vs_snr(summary, tmp_path / "p.png")) == (864, 408)
    plots.precision_vs_snr(summary.drop(columns="crlb"), tmp_path / "p2.png")
    assert read_png(tmp_path / "p2.png") == (864, 408)
    with pytest.raises(ValueError, match="columns"):
        plots.precision_vs_snr(summary.drop(columns="sigma"), tmp_path / "p3.png")


def test_failed_plot_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "kiel.png"
    target.write_bytes(b"old")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    with pytest.raises(RuntimeError):
        plots.kiel_diagram(stars(50), target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kiel.png"]


def test_metallicity_distribution_by_group(tmp_path):
    from starlabels.plots import metallicity_distribution

    rng = np.random.default_rng(3)
    df = pd.DataFrame({"fe_h": np.r_[rng.normal(0, 0.2, 200), [np.nan]],
                       "split": ["target"] * 150 + ["calibration"] * 51})
    out = metallicity_distribution(df, tmp_path / "feh.png", group="split")
    assert out.stat().st_size > 1000
    with pytest.raises(ValueError):
        metallicity_distribution(df.drop(columns="fe_h"), tmp_path / "x.png")


#: the width the Snakemake report shows an image at (its content column on a 1 440-px screen)
REPORT_WIDTH_PX = 1000
#: the smallest text the figures use (panel statistics, legends) and what stays readable
SMALLEST_FONT_PT, READABLE_PX = 7, 8


def shown_text_px(width_px: int) -> float:
    """Height on screen of the smallest text once the report scales the image to its column."""
    scale = min(1.0, REPORT_WIDTH_PX / width_px)
    return SMALLEST_FONT_PT / 72 * plots.DPI * scale


def test_five_label_figures_stay_readable_in_the_report(tmp_path):
    labels = ["teff", "logg", "fe_h", "mg_fe", "al_fe"]
    ref = stars()
    summary = pd.DataFrame([{"label": lab, "snr_lo": lo, "snr_hi": hi, "sigma": 1.0 / lo,
                             "crlb": 0.1 / lo}
                            for lab in labels for lo, hi in ((10, 30), (30, 100))])
    written = [
        plots.one_to_one(ref, ref, labels, tmp_path / "o2o.png"),
        plots.precision_vs_snr(summary, tmp_path / "snr.png"),
        plots.embedding_map(rng.normal(size=(len(ref), 2)), ref.fillna(0.0), labels,
                            tmp_path / "emb.png", group=None),
    ]
    for path in written:
        width, height = read_png(path)
        # five panels on one row were 2 160 px wide: 8-pt text shrank to 5 px on screen
        assert shown_text_px(width) >= READABLE_PX, (path.name, width)
        assert width / height < 2.5, (path.name, width, height)
