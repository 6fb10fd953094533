"""cluster.yaml against the Ray cluster launcher's own schema (offline: no cloud calls)."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _prepared():
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()))


def test_cluster_yaml_is_valid_for_the_installed_ray():
    from ray.autoscaler._private.util import validate_config

    config = _prepared()
    validate_config(config)  # raises jsonschema.ValidationError when invalid
    nodes = config["available_node_types"]
    assert config["head_node_type"] in nodes
    gpu = [n for n, spec in nodes.items() if n != config["head_node_type"]]
    assert gpu and all(nodes[n]["max_workers"] >= 1 for n in gpu)


def test_the_schema_check_does_reject_a_broken_config():
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    config = _prepared()
    config["max_workers"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(config)


def test_mlflow_binds_to_loopback_and_the_file_holds_no_secrets():
    text = (ROOT / "cluster.yaml").read_text()
    server = [ln for ln in text.splitlines() if "mlflow server" in ln and "nohup" in ln]
    assert server and all("--host 127.0.0.1" in ln for ln in server)
    assert "--dashboard-host=127.0.0.1" in text
    for secret in ("aws_secret_access_key", "AKIA", "ssh_private_key", "password"):
        assert secret not in text
