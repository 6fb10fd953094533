"""cluster.yaml: what this project decides in it (offline: no cloud calls, no Ray cluster).

The Ray cluster launcher checks the file's form; these tests check its choices: the
head serves MLflow on its loopback only, the workers are GPU machines that the
autoscaler may start, torch is installed before the package, at the version the
package is pinned to, and no credential is written in the file.
"""

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _command(lines, program):
    """The one command line that runs ``program``, split into words."""
    found = [shlex.split(ln.replace("$HOME", "/home/ubuntu")) for ln in lines if program in ln]
    assert len(found) == 1, (program, found)
    return found[0]


def _option(words, name):
    for i, w in enumerate(words):
        if w == name:
            return words[i + 1]
        if w.startswith(name + "="):
            return w.split("=", 1)[1]
    raise AssertionError(f"{name} not in {' '.join(words)}")


def test_the_head_serves_mlflow_on_its_loopback_with_a_sqlite_store(cluster):
    start = cluster["head_start_ray_commands"]
    server = _command(start, "bin/mlflow server")
    assert _option(server, "--host") == "127.0.0.1"  # reached through ray attach --port-forward only
    assert _option(server, "--port") == "5000"  # the port the README forwards and --tracking-uri names
    store = _option(server, "--backend-store-uri")
    assert store.startswith("sqlite:////home/ubuntu/mlflow/")  # an absolute path: sqlite:/// + /home/...
    assert _option(server, "--artifacts-destination").startswith("/home/ubuntu/mlflow/")
    # the store's folder exists before the server starts, and the server outlives the setup shell
    mkdir = [i for i, ln in enumerate(start) if ln.startswith("mkdir -p ~/mlflow")]
    at = next(i for i, ln in enumerate(start) if "bin/mlflow server" in ln)
    assert mkdir and mkdir[0] < at
    assert server[0] == "nohup" and start[at].endswith("&")
    ray_head = _command(start, "bin/ray start --head")
    assert _option(ray_head, "--dashboard-host") == "127.0.0.1"


def test_workers_are_autoscaled_gpu_machines_that_join_the_head(cluster):
    nodes = cluster["available_node_types"]
    head = cluster["head_node_type"]
    assert head in nodes and nodes[head]["max_workers"] == 0
    workers = {name: spec for name, spec in nodes.items() if name != head}
    assert workers
    for name, spec in workers.items():
        family = spec["node_config"]["InstanceType"].split(".")[0]
        assert re.fullmatch(r"(g4dn|g5|g6e?|p3|p4d|p5)", family), (name, family)  # an NVIDIA GPU instance
        assert spec["min_workers"] == 0 and 1 <= spec["max_workers"] <= cluster["max_workers"]
    port = _option(_command(cluster["head_start_ray_commands"], "bin/ray start --head"), "--port")
    worker_start = _command(cluster["worker_start_ray_commands"], "bin/ray start")
    assert _option(worker_start, "--address") == f"$RAY_HEAD_IP:{port}"


def test_setup_installs_the_pinned_torch_first_then_the_mounted_package(cluster):
    setup = cluster["setup_commands"]
    torch_at = [i for i, ln in enumerate(setup) if re.search(r"pip install .*\btorch==", ln)]
    package_at = [i for i, ln in enumerate(setup) if "pip install" in ln and "-e ~/affvae" in ln]
    assert len(torch_at) == 1 and len(package_at) == 1 and torch_at[0] < package_at[0]
    pin = re.search(r"torch==(\S+)", setup[torch_at[0]]).group(1)
    # the same torch as the README's install command, inside the package's range
    assert f"torch=={pin}" in (ROOT / "README.md").read_text()
    assert f'"torch>=2.2,<={pin}"' in (ROOT / "pyproject.toml").read_text()
    # the package is installed from where file_mounts puts this checkout, without its venv or runs
    assert cluster["file_mounts"] == {"~/affvae": "."}
    assert {"**/.venv", "runs/**", "**/.git"} <= set(cluster["rsync_exclude"])


def test_the_file_holds_no_credentials(cluster):
    text = (ROOT / "cluster.yaml").read_text()
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text)  # an AWS access key id
    assert not re.search(r"(?i)aws_secret_access_key|aws_session_token|password\s*[:=]|BEGIN [A-Z ]*PRIVATE KEY", text)
    assert set(cluster["auth"]) == {"ssh_user"}  # no ssh_private_key: the launcher makes its own key pair
    for spec in cluster["available_node_types"].values():  # Ray's default Deep Learning AMI
        assert "ImageId" not in spec["node_config"]  # for the region, with the CUDA drivers


def test_cluster_yaml_passes_the_installed_rays_launcher_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert set(prepared["available_node_types"]) == set(raw["available_node_types"])
    broken = copy.deepcopy(raw)
    broken["max_workers"] = "many"  # the same check refuses a value of the wrong type
    with pytest.raises(Exception, match="max_workers|many"):
        validate_config(prepare_config(broken))
