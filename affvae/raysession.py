"""Connecting to Ray: a cluster at an address, or a new local instance bound to 127.0.0.1.

Kept below everything that uses Ray (the sharded affinity matrix, the stream,
Ray Train and Ray Tune), so that connecting is one idea in one place.
"""

from __future__ import annotations

import os

#: Environment of every Ray worker.  Ray Train gives a worker group 60 s to start by
#: default; on a small machine busy with other trials, starting torch workers can take
#: longer, and a group that times out is retried while its reservation may linger.
RAY_ENV = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "900"}


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to Ray once per process: ``address`` (or $RAY_ADDRESS), else start a local one.

    A local Ray binds to 127.0.0.1 (its dashboard too).  ``num_cpus`` declares the
    local node's logical CPUs (default: the machine's), e.g. more than the cores so
    that Ray Data tasks can run beside training workers that hold one CPU each.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": dict(RAY_ENV)}
    if address:
        ray.init(address=address, log_to_driver=False, runtime_env=env)
    else:
        # The dashboard serves Ray's state API, which Ray Train needs to release the
        # resources of a run whose trial Ray Tune stopped early; it listens on 127.0.0.1,
        # on a port of its own that every worker is told (RAY_API_SERVER_ADDRESS), so the
        # state API never reaches another Ray instance running on the same machine.
        # address="local": always a new instance, never another local cluster found on disk.
        port = _free_port()
        env["env_vars"]["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 dashboard_port=port, _node_ip_address="127.0.0.1", log_to_driver=False, runtime_env=env)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
