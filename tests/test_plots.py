"""Figures and pictures (``plots``, ``images``): distance histograms against numpy, pictures of
model inputs and model inputs of pictures, the retrieval grid."""
import io

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from PIL import Image

from conftest import config_of
from orthohash_jax import cli, images, plots, retrieval
from orthohash_jax import data as data_lib

from experiments import browser, plot_analysis

def test_distance_histograms_against_numpy():
  rng = np.random.default_rng(0)
  q, db = rng.normal(size=(300, 40)), rng.normal(size=(9, 40))  # two query blocks
  q_y, db_y = rng.integers(0, 3, 300), rng.integers(0, 3, 9)
  intra, inter = plots.distance_histograms(q, db, q_y, db_y)
  dist = ((q[:, None] > 0) != (db[None] > 0)).sum(-1)
  same = q_y[:, None] == db_y[None]
  np.testing.assert_array_equal(intra[:41], np.bincount(dist[same], minlength=41))
  np.testing.assert_array_equal(inter[:41], np.bincount(dist[~same], minlength=41))
  assert not intra[41:].any() and not inter[41:].any()
  assert plots.separability(intra, inter) == pytest.approx(dist[~same].mean()
                                                           - dist[same].mean())
  multi_q = np.eye(3, dtype=np.uint8)[q_y] | np.eye(3, dtype=np.uint8)[(q_y + 1) % 3]
  multi_db = np.eye(3, dtype=np.uint8)[db_y]
  intra, _ = plots.distance_histograms(q, db, multi_q, multi_db)
  shared = (multi_q @ multi_db.T) > 0
  np.testing.assert_array_equal(intra[:41], np.bincount(dist[shared], minlength=41))


def test_uint8_images_round_trip_through_png():
  rng = np.random.default_rng(0)
  for shape in ((5, 28, 28, 1), (3, 12, 9, 3)):
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    pictures = images.to_pictures(x)
    assert pictures.shape == (shape[:3] if shape[3] == 1 else shape)
    for row, picture in zip(x, pictures):
      with Image.open(io.BytesIO(images.png(picture))) as img:
        np.testing.assert_array_equal(images.from_image(img, shape[1:], np.uint8), row)


def test_flat_rows_are_square_grayscale():
  x = np.arange(17, dtype=np.float32)[np.random.default_rng(0).integers(0, 17, (2, 64))] / 16
  pictures = images.to_pictures(x)
  np.testing.assert_array_equal(pictures, np.round(x.reshape(2, 8, 8) * 255).astype(np.uint8))
  back = images.from_image(Image.fromarray(pictures[0]), (64,), np.float32)
  assert back.dtype == np.float32
  np.testing.assert_allclose(back, x[0], atol=0.5 / 255)


def test_other_images_are_cropped_and_resized():
  wide = Image.fromarray(np.full((10, 40, 3), 200, np.uint8))
  x = images.from_image(wide, (28, 28, 1), np.uint8)
  assert x.shape == (28, 28, 1) and x.dtype == np.uint8
  gray = round(200 * 0.299 + 200 * 0.587 + 200 * 0.114)  # Pillow's L conversion
  assert np.all(np.abs(x.astype(int) - gray) <= 1)


def test_non_pictures_are_refused():
  with pytest.raises(ValueError, match="not pictures"):
    images.check_pictures((2048,), np.float32)  # a descriptor
  with pytest.raises(ValueError, match="not pictures"):
    images.check_pictures((28, 28, 2), np.uint8)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    images.to_pictures(np.full((1, 64), -1.0, np.float32))


def test_retrieval_figure_draws_frames_and_distances():
  rng = np.random.default_rng(0)
  q = rng.integers(0, 256, (2, 8, 8), dtype=np.uint8)
  nb = rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
  relevant = np.array([[True, False, True], [False, False, True]])
  fig = plots.retrieval_figure(q, nb, np.array([[0, 1, 2], [3, 4, 5]]), relevant, [7, 9],
                               np.array([1, 2]), np.array([[1, 0, 1], [0, 1, 2]]), "test")
  axes = np.asarray(fig.axes).reshape(2, 4)
  assert [ax.get_title() for ax in axes[1]] == ["query 9", "d=3", "d=4", "d=5"]
  colours = [[ax.spines["top"].get_edgecolor() for ax in row[1:]] for row in axes]
  expected = np.where(relevant, plots.RELEVANT, plots.IRRELEVANT)
  assert [[to_hex(c) for c in row] for row in colours] == expected.tolist()
  assert "P@3 0.67" in axes[0, 0].get_xlabel()
  with Image.open(io.BytesIO(plots.png(fig))) as img:
    assert img.format == "PNG"


def test_label_text():
  assert cli.label_text(np.int32(3)) == "3"
  assert cli.label_text(np.array([0, 1, 0, 1], np.uint8)) == "1,3"
  assert cli.label_text(np.zeros(4, np.uint8)) == "-"


@pytest.mark.slow  # compiles the top-k kernel (~15 s at load 15 on 2 cores)
def test_retrieval_grid_of_list_file_images(tmp_path):
  """List-file images are read through the input interface (eval transform) for the grid."""
  rng = np.random.default_rng(1)
  (tmp_path / "img").mkdir()
  for name, n in (("train.txt", 4), ("test.txt", 3), ("database.txt", 12)):
    lines = []
    for i in range(n):
      path = f"img/{name[:-4]}_{i}.png"
      Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / path)
      labels = {i % 3, (i + 1) % 3} if i % 2 else {i % 3}  # multi-hot
      lines.append(f"{path} " + " ".join(str(int(c in labels)) for c in range(3)))
    (tmp_path / name).write_text("\n".join(lines) + "\n")
  config = config_of({"dataset": "listfile", "data_dir": str(tmp_path), "num_classes": 3,
                      "image_size": 32, "eval_resize": 36, "train_transform": "resize_center_crop",
                      "train_resize": 36})
  data = data_lib.load(config)
  try:
    codes = {"query_codes": retrieval.pack_codes(rng.normal(size=(3, 16))),
             "db_codes": retrieval.pack_codes(rng.normal(size=(12, 16))),
             "query_labels": data.labels("query"), "db_labels": data.labels("db"), "num_bits": 16}
    shown = plot_analysis.plot_retrieval(codes, data, str(tmp_path / "grid.png"), 8, 5)
    assert data.multilabel and list(shown["queries"]) == [0, 1, 2]  # evenly spaced rows
    relevant = (data.labels("query")[:, None] & data.labels("db")[shown["indices"]]).any(-1)
    assert relevant.any() and not relevant.all()
    np.testing.assert_array_equal(shown["relevant"], relevant)
  finally:
    data.close()
  with Image.open(tmp_path / "grid.png") as img:
    assert img.format == "PNG" and img.size[0] > 500


def separated_counts(num_bits=48):
  """(intra, inter) counts: intra near 0, inter near K (a method whose codes separate well)."""
  d = np.arange(num_bits + 1)
  intra = np.round(1000 * np.exp(-0.5 * ((d - 4) / 2.0) ** 2)).astype(np.int64)
  inter = np.round(3000 * np.exp(-0.5 * ((d - num_bits + 5) / 2.5) ** 2)).astype(np.int64)
  return intra, inter


def test_the_histogram_legend_and_label_cover_no_bar():
  """Issue 36 #9: with the inter-class bars at the right (as HashNet's), the legend of the
  3-run figure covered them; neither the legend nor the separability label may touch a bar."""
  intra, inter = separated_counts()
  fig = plots.histograms_figure([(f"run {i}", intra, inter, 48) for i in range(3)])
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  renderer = canvas.get_renderer()
  for ax in fig.axes:
    bars = [p.get_window_extent(renderer) for p in ax.patches if p.get_height() > 0]
    assert len(bars) > 20
    covers = [ax.get_legend().get_window_extent(renderer)] + [
        t.get_window_extent(renderer) for t in ax.texts]
    for box in covers:
      assert not any(box.overlaps(bar) for bar in bars)


def test_the_pr_curve_axes_fit_its_points():
  """Issue 36 #9: a curve in the top right (precision 0.9 to 1) fills the plot."""
  recall = np.linspace(0.02, 1.0, 17)
  pr = {"recall": recall, "precision": 1.0 - 0.1 * recall ** 2, "radius": np.arange(17)}
  ax = plot_analysis.pr_figure(pr, 16).axes[0]
  low, high = ax.get_ylim()
  assert 0.85 < low < 0.9 and 1.0 < high < 1.02
  assert ax.get_xlim()[0] < 0.02 and ax.get_xlim()[0] > -0.1


def test_browser_help_gives_the_whole_first_sentence(capsys):
  with pytest.raises(SystemExit):
    browser.main(["--help"])
  out = " ".join(capsys.readouterr().out.split())
  assert ("Headless Chromium driven over the W3C WebDriver protocol (standard library only), and "
          "a screenshot of the search page of a run.") in out
