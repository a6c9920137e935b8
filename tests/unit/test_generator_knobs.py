"""The generator's knobs for a harder study-like pool: each does what it says, and with
all of them off the pool is the one the generator always made."""
from __future__ import annotations

import numpy as np
import pytest

from alray.errors import ConfigError
from alray.pool.synthetic import (
    GeneratorConfig, confusability, generate_rows, make_world)

SMALL = dict(classes=8, image_dim=16, text_dim=8, latent_dim=8, shard_rows=4000)


def rows(**knobs):
    cfg = GeneratorConfig(rows=4000, val_rows=0, **{**SMALL, **knobs})
    return cfg, generate_rows(cfg, make_world(cfg), 0, 0, 4000, 0)


def test_world_seed_separates_the_world_from_the_posts():
    a = make_world(GeneratorConfig(seed=1, world_seed=5, **SMALL))
    b = make_world(GeneratorConfig(seed=2, world_seed=5, **SMALL))
    c = make_world(GeneratorConfig(seed=1, world_seed=6, **SMALL))
    assert np.array_equal(a.centres, b.centres) and not np.array_equal(a.centres, c.centres)
    # the default world seed is the seed: older pools keep their world
    assert np.array_equal(make_world(GeneratorConfig(seed=5, **SMALL)).centres, a.centres)
    _, one = rows(seed=1, world_seed=5)
    _, two = rows(seed=2, world_seed=5)
    assert not one.column("label").equals(two.column("label"))  # other posts


def test_junk_posts_get_near_uniform_labels():
    _, plain = rows(label_noise=0.0)
    _, junk = rows(label_noise=0.0, junk=1.0)
    share = np.bincount(junk.column("label").to_numpy(), minlength=8) / 4000
    assert share.max() < 0.2 and share.min() > 0.07      # about 1/8 each
    top = np.bincount(plain.column("label").to_numpy(), minlength=8) / 4000
    assert top.max() > 0.25                              # the long tail without junk


def test_confusion_noise_flips_posts_near_the_boundary_more():
    cfg = GeneratorConfig(**SMALL)
    world = make_world(cfg)
    c = 0
    own, other = world.centres[c], world.centres[world.neighbour[c]]
    classes = np.zeros(3, np.int64)
    points = np.stack([own + (own - other), own, (own + other) / 2])  # deep, centre, edge
    deep, centre, edge = confusability(world, classes, points)
    assert deep < centre < edge and abs(edge - 0.5) < 1e-9
    _, noisy = rows(label_noise=0.0, confusion_noise=0.3)
    _, clean = rows(label_noise=0.0)
    changed = (noisy.column("label").to_numpy() != clean.column("label").to_numpy()).mean()
    assert 0.0 < changed < 0.3


def test_missingness_can_depend_on_the_class():
    cfg, _ = rows(missing_by_class=1.5)
    rates = make_world(cfg).missing["image"]
    assert rates.max() > 2 * rates.min()
    priors = make_world(cfg).priors
    assert abs(priors @ rates - cfg.missing_image) < 0.03  # the share is kept on average
    flat = make_world(GeneratorConfig(**SMALL)).missing["image"]
    assert np.allclose(flat, GeneratorConfig().missing_image)


@pytest.mark.parametrize("bad", [dict(junk=1.5), dict(confusion_noise=-0.1),
                                 dict(missing_by_class=-1.0)])
def test_bad_knobs_are_refused(bad):
    with pytest.raises(ConfigError):
        GeneratorConfig(**bad)


def generate_cli(tmp_path, *args):
    from click.testing import CliRunner

    from alray.cli import main

    out = tmp_path / "pool"
    done = CliRunner().invoke(main, ["generate", str(out), "--rows", "600",
                                     "--val-rows", "100", *args])
    return done, out


def test_a_preset_sets_its_knobs_and_options_override_it(tmp_path):
    from alray.pool.synthetic import preset_options

    knobs = preset_options("study-like")
    assert knobs["rows"] == 100_000  # the study's pool size
    done, out = generate_cli(tmp_path, "--preset", "study-like", "--set", "label_noise=0.25")
    assert done.exit_code == 0, done.output
    cfg = GeneratorConfig.from_yaml(out / "generator.yaml")
    assert (cfg.rows, cfg.val_rows, cfg.label_noise) == (600, 100, 0.25)  # given wins
    for name, value in knobs.items():
        if name not in ("rows", "val_rows", "label_noise"):
            assert getattr(cfg, name) == value, name


def test_without_a_preset_the_pool_is_the_default_one(tmp_path):
    done, out = generate_cli(tmp_path)
    assert done.exit_code == 0, done.output
    cfg = GeneratorConfig.from_yaml(out / "generator.yaml")
    assert cfg == GeneratorConfig(rows=600, val_rows=100)


def test_unknown_presets_and_digits_presets_are_refused(tmp_path):
    from alray.pool.synthetic import preset_options

    with pytest.raises(ConfigError, match="study-like"):
        preset_options("nope")
    done, out = generate_cli(tmp_path, "--preset", "nope")
    assert done.exit_code != 0 and "study-like" in done.output and not out.exists()
    done, out = generate_cli(tmp_path, "--preset", "study-like", "--dataset", "digits")
    assert done.exit_code != 0 and "--dataset digits" in done.output and not out.exists()
