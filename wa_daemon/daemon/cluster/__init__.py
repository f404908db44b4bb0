"""Several hosts, one fleet, on Redis (docs/cluster.md).

``lease`` decides (sans I/O) when to renew and when to self-fence; ``scripts``
holds the server-side Lua that applies every write only under a current lease;
``store`` is the coredis I/O; ``registry`` puts the sessions' desired state behind
the manager's Registry interface; ``node`` runs one host's part of the fleet.
The manager knows none of this: it sees a Placement (sessions/placement.py).
"""
