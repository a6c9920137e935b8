"""cluster.yaml: valid for Ray's own cluster launcher, offline, and safe by construction.

``validate_config(prepare_config(...))`` is what ``ray up`` runs before it touches the
cloud (it merges Ray's AWS defaults, then checks the result against Ray's JSON schema).
The other tests pin what the schema cannot see: a GPU worker type, pinned installs,
token authentication and a dashboard that stays on the head's loopback. Broken copies
prove that the validation rejects what it should. No Ray cluster is started.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
RAY_EXTRAS = {"default", "data", "train", "tune", "serve"}  # serve: jobs/serve.py


def raw() -> dict:
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


def prepared(config: dict | None = None) -> dict:
    return prepare_config(copy.deepcopy(config if config is not None else raw()))


def project_requirements() -> dict[str, Requirement]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    reqs["alray"] = Requirement(f"alray=={project['version']}")
    return reqs


def commands(config: dict, *keys: str) -> list[str]:
    return [c for key in keys for c in config.get(key) or []]


WHEEL = re.compile(r"(?:^|/)([A-Za-z0-9_]+)-([0-9][^-/\s]*)-py3-none-any\.whl"
                   r"(\[[a-z,]+\])?\"?$")


def pins(command_lines: list[str]) -> dict[str, Requirement]:
    """What ``pip install`` lines pin: quoted ``name==version`` requirements, and wheel
    files (``name-version-py3-none-any.whl``) as ``name==version``."""
    found = {}
    for line in command_lines:
        if "pip install" not in line:
            continue
        for text in re.findall(r'"([^"]+)"', line):
            if "==" in text and "@" not in text:
                req = Requirement(text)
                found[req.name] = req
        for word in line.split():
            match = WHEEL.search(word)
            if match:
                found[match[1]] = Requirement(f"{match[1]}=={match[2]}")
    return found


def wheel_path(word: str) -> str:
    """A wheel argument as the path file_mounts names: no quotes, extras or $HOME."""
    path = WHEEL.search(word)
    return word[:path.end(2)].strip('"').replace("$HOME/", "~/") + "-py3-none-any.whl"


def exact_version(req: Requirement) -> Version:
    (spec,) = req.specifier
    assert spec.operator == "==", req
    return Version(spec.version)


def test_rays_launcher_validation_accepts_it():
    config = prepared()
    validate_config(config)
    assert config["provider"]["type"] == "aws"
    assert config["available_node_types"][config["head_node_type"]]


def test_resources_are_integers_and_one_worker_type_has_a_gpu():
    config = raw()
    types = config["available_node_types"]
    for name, node_type in types.items():
        for resource, amount in node_type["resources"].items():
            assert type(amount) is int and amount >= 0, (name, resource, amount)
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    gpu_types = [n for n, t in types.items()
                 if n != config["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "a worker node type must declare a GPU resource"
    for name in gpu_types:
        assert types[name]["resources"].get("CPU", 0) >= 2, (
            f"{name}: a GPU node needs CPUs for Ray Data's read tasks beside the actor")


def test_autoscaling_bounds():
    config = raw()
    assert config["idle_timeout_minutes"] > 0
    workers = {n: t for n, t in config["available_node_types"].items()
               if n != config["head_node_type"]}
    assert workers
    for name, node_type in workers.items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
        assert node_type["max_workers"] <= config["max_workers"], name
    assert sum(t["min_workers"] for t in workers.values()) <= config["max_workers"]


@pytest.mark.parametrize("which", ["head_setup_commands", "worker_setup_commands"])
def test_every_node_installs_pinned_ray_torch_and_alray(which):
    config = prepared()
    lines = commands(config, which)
    found = pins(lines)
    wanted = project_requirements()
    for name in ("ray", "torch", "alray"):
        assert name in found, f"{which}: no pinned {name} install"
        assert exact_version(found[name]) in wanted[name].specifier, (
            f"{which}: {found[name]} is outside pyproject's {wanted[name]}")
    assert exact_version(found["ray"]) == Version("2.60.0")
    assert RAY_EXTRAS <= set(found["ray"].extras), found["ray"]
    torch_line = next(line for line in lines if f'"{found["torch"]}"' in line)
    assert re.search(r"--index-url https://download\.pytorch\.org/whl/cu12\d+", torch_line), (
        "torch must come from a CUDA 12 index")
    # Ray's AWS defaults install a nightly wheel when setup_commands are left out
    assert not any("ray-wheels" in c or "dev0" in c or "nightly" in c for c in lines)


def test_dashboard_stays_on_the_head_and_token_auth_stays_on():
    config = prepared()
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    everything = yaml.safe_dump(config)
    assert "0.0.0.0" not in everything
    assert "RAY_AUTH_MODE=disabled" not in everything
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    # the token reaches every node (file_mounts go to the head, then to each worker)
    assert "~/.ray/auth_token" in config["file_mounts"]


def test_alray_pin_follows_pyproject_and_its_wheel_reaches_every_node():
    config = prepared()
    found = pins(commands(config, "worker_setup_commands"))
    assert found["alray"] == project_requirements()["alray"], (
        "cluster.yaml pins another alray version than pyproject.toml")
    words = [w for c in commands(config, "setup_commands") for w in c.split()
             if WHEEL.search(w) and WHEEL.search(w)[1] == "alray"]
    # `alray serve` needs the serve extra's packages on every node
    assert any(WHEEL.search(w)[3] and "serve" in WHEEL.search(w)[3] for w in words), words
    installed = {wheel_path(w) for w in words}
    assert len(installed) == 1, installed
    (remote,) = installed
    # file_mounts copy the wheel built in the git-ignored build/ folder to that path
    assert remote in config["file_mounts"], f"{remote} is not a file mount"
    local = config["file_mounts"][remote]
    assert Path(local).name == Path(remote).name
    assert local.startswith("build/"), "build the wheel where git ignores it"


def _unknown_top_level_key(c):
    c["max_worker"] = 3                                   # typo of max_workers


def _fractional_gpu(c):
    c["available_node_types"]["worker.gpu"]["resources"]["GPU"] = 0.5


def _string_cpu(c):
    c["available_node_types"]["worker.gpu"]["resources"]["CPU"] = "8"


def _unknown_node_type_key(c):
    c["available_node_types"]["worker.gpu"]["min_worker"] = 1


def _missing_head_type(c):
    c["head_node_type"] = "head.gpu"


def _min_above_global_max(c):
    c["available_node_types"]["worker.gpu"]["min_workers"] = c["max_workers"] + 1
    c["available_node_types"]["worker.gpu"]["max_workers"] = c["max_workers"] + 1


@pytest.mark.parametrize("breakage", [_unknown_top_level_key, _fractional_gpu, _string_cpu,
                                      _unknown_node_type_key, _missing_head_type,
                                      _min_above_global_max],
                         ids=lambda f: f.__name__.strip("_"))
def test_launcher_validation_rejects_a_broken_copy(breakage):
    import jsonschema

    config = raw()
    assert "worker.gpu" in config["available_node_types"]
    breakage(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_config(prepared(config))
