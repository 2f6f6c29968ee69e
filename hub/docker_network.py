"""The Docker network of users' servers: one bridge medhub creates, with traffic between its
containers turned off.

On it a user's container reaches the host only at the network's gateway address, where the hub
binds what servers need (the hub's API, and the proxy's public port when ``hub.public_url`` is
that address); everything else of the hub (the proxy's REST API, the audit and batch services)
listens on 127.0.0.1, which inside a container is the container's own. Another user's
container, and whatever listens in it (kernels, Dask schedulers), is out of reach: the engine
drops traffic between containers of the network (``enable_icc=false``, with the engine's
iptables rules, dockerd's default).

The subnet is a setting (``docker.subnet``), so the gateway, where the hub listens, is known
before the hub starts; :func:`ensure` makes the network, or checks the one that is there.
"""

from __future__ import annotations

import ipaddress

from .errors import HubConfigError

ICC = "com.docker.network.bridge.enable_icc"


def gateway(subnet: str) -> str:
    """The network's gateway: the first address of ``subnet`` (the host's end of the bridge)."""
    return str(ipaddress.ip_network(subnet)[1])


def ensure(name: str, subnet: str, client=None) -> str:
    """Create the users' network ``name`` on ``subnet`` with inter-container traffic off, or
    check that the existing one is such; returns its gateway.

    Raises:
        HubConfigError: no engine answers, or a network of that name exists with other settings.
    """
    import docker

    try:
        client = client or docker.from_env()
        found = client.networks.list(names=[name])
    except docker.errors.DockerException as e:
        raise HubConfigError(f"docker.network {name!r}: the Docker engine does not answer ({e}); start it") from None
    if not found:
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet, gateway=gateway(subnet))])
        try:
            client.networks.create(name, driver="bridge", ipam=ipam, options={ICC: "false"},
                                   labels={"org.medhub.role": "users"})
        except docker.errors.APIError as e:
            raise HubConfigError(f"cannot create docker.network {name!r} on {subnet}: {e.explanation}; choose a free "
                                 "docker.subnet") from None
        return gateway(subnet)
    attrs = client.networks.get(found[0].id).attrs
    subnets = [c.get("Subnet") for c in (attrs.get("IPAM") or {}).get("Config") or []]
    if attrs.get("Driver") != "bridge" or (attrs.get("Options") or {}).get(ICC) != "false":
        raise HubConfigError(f"docker network {name!r} exists but lets its containers reach each other (it needs "
                             f"driver bridge and {ICC}=false): remove it (docker network rm {name}) and medhub makes it")
    if subnet not in subnets:
        raise HubConfigError(f"docker network {name!r} has subnet {', '.join(map(str, subnets))}, not docker.subnet "
                             f"{subnet}: set docker.subnet to it, or remove the network (docker network rm {name})")
    return gateway(subnet)
