"""The study-like generator: deterministic, long-tailed, rates within tolerance, atomic."""
from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

from alray.cli import main
from alray.pool.synthetic import GeneratorConfig
from alray.errors import ConfigError
from alray.pool import io
from alray.pool.synthetic import generate_pool
from alray.pool.validate import validate_pool

SMALL = dict(rows=6000, val_rows=1000, image_dim=32, text_dim=16, shard_rows=2500)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "demo"
    cfg = GeneratorConfig(**SMALL, missing_image=0.2, missing_text=0.1, label_noise=0.15)
    generate_pool(str(out), cfg)
    return str(out), cfg


def test_same_seed_same_table(generated, tmp_path):
    out, cfg = generated
    generate_pool(str(tmp_path / "again"), cfg)
    a = io.read_table(f"{out}/pool")
    b = io.read_table(str(tmp_path / "again" / "pool"))
    assert a.equals(b)
    generate_pool(str(tmp_path / "other"), cfg.replace(seed=1))
    assert not a.equals(io.read_table(str(tmp_path / "other" / "pool")))


def test_output_is_a_valid_sharded_pool(generated):
    out, cfg = generated
    report = validate_pool(f"{out}/pool", n_classes=cfg.classes)
    assert report.ok and report.summary.shards == 3 and report.summary.rows == cfg.rows
    val = validate_pool(f"{out}/val", n_classes=cfg.classes)
    assert val.ok and val.summary.rows == cfg.val_rows
    ids = io.read_table(f"{out}/pool", ["id"]).column("id").to_numpy()
    val_ids = io.read_table(f"{out}/val", ["id"]).column("id").to_numpy()
    assert not np.intersect1d(ids, val_ids).size


def test_class_histogram_is_long_tailed(generated):
    out, cfg = generated
    labels = io.read_table(f"{out}/pool", ["label"]).column("label").to_numpy()
    counts = np.sort(np.bincount(labels, minlength=cfg.classes))[::-1]
    assert counts[0] > 10 * max(counts[-1], 1)
    assert counts[:5].sum() > 0.3 * counts.sum()  # the head holds a large share


def test_missing_and_noise_rates_within_tolerance(generated):
    out, cfg = generated
    report = validate_pool(f"{out}/pool")
    coverage = report.summary.coverage()
    assert abs((1 - coverage["image"]) - cfg.missing_image) < 0.03
    assert abs((1 - coverage["text"]) - cfg.missing_text) < 0.03
    from alray.pool.synthetic import generate_rows, make_world
    clean = cfg.replace(label_noise=0.0)
    world = make_world(cfg)
    noisy = generate_rows(cfg, world, 0, 0, 4000, 0).column("label").to_numpy()
    truth = generate_rows(clean, world, 0, 0, 4000, 0).column("label").to_numpy()
    changed = (noisy != truth).mean()
    # a flip to a random class can land on the true class (1/classes of uniform flips)
    assert abs(changed - cfg.label_noise) < 0.03


def test_bad_knobs_are_reported_together():
    with pytest.raises(ConfigError) as err:
        GeneratorConfig(rows=0, missing_image=0.7, missing_text=0.5)
    text = str(err.value)
    assert "rows" in text and "missing_image + missing_text" in text


def test_cli_generate_refuses_existing_and_unknown_knob(tmp_path):
    runner = CliRunner()
    out = tmp_path / "g"
    args = ["generate", str(out), "--rows", "300", "--val-rows", "50",
            "--set", "image_dim=8", "--set", "text_dim=4"]
    assert runner.invoke(main, args).exit_code == 0
    again = runner.invoke(main, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    bad = runner.invoke(main, ["generate", str(tmp_path / "h"), "--set", "colour=3"])
    assert bad.exit_code == 2 and "colour" in bad.output and "Traceback" not in bad.output


def test_interrupted_generation_leaves_nothing(tmp_path):
    out = tmp_path / "g"
    calls = []

    def stop(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_pool(str(out), GeneratorConfig(**SMALL), progress=stop)
    assert not out.exists()
    assert os.listdir(tmp_path) == []
