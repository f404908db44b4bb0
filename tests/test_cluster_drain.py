"""Drain and the fleet-wide limits between real daemon processes on one real
redis-server (docs/cluster.md): `wactl drain` hands every session of a host to the
others (never one session on two hosts in any sampling round), `drain_on_stop` does
it on SIGTERM before the lease could expire, the connect rate limit, the per-uid
limit and uid ownership hold across hosts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import trio

from wa_daemon import Client, NotFound, RateLimited, Unavailable
from wa_daemon.errors import LimitExceeded, PermissionDenied

from .test_auth import ClientEnv, User, Users, as_user, client_env, users  # noqa: F401  (fixtures)
from .test_cluster_failover import (
    SESSIONS,
    TTL,
    Host,
    Sampler,
    a_holds_every_session,
    connect_all,
    fleet,
    metric,
    wait_for,
)

pytestmark = pytest.mark.slow

WACTL = [sys.executable, "-m", "wactl"]


def wactl(host: Host, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WACTL, "--socket", str(host.sock), *args], capture_output=True, text=True, timeout=timeout, check=False,
        stdin=subprocess.DEVNULL,
    )


def draining(host: Host, of: str) -> tuple[bool, int] | None:
    with Client(host.sock, timeout=5) as wa:
        found = [h for h in wa.hosts().hosts if h.host == of]
    return (found[0].draining, found[0].sessions) if found else None


def test_drain_moves_every_session_to_the_others_and_cancel_takes_them_again() -> None:
    with fleet() as (redis, root, hosts):
        a_holds_every_session(root, redis, hosts)

        with Client(hosts["b"].sock, timeout=5) as wa:
            with pytest.raises(NotFound, match="no live host 'nowhere'") as info:
                wa.drain("nowhere")
            assert info.value.details == {"host": "nowhere"}

        with Sampler(hosts) as sampler:
            started = time.monotonic()
            done = wactl(hosts["b"], "drain", "a", "--wait", "--timeout", "45")  # asked on another host
            took = time.monotonic() - started
            assert done.returncode == 0, done.stderr
            assert "a: drained" in done.stdout
            wait_for(
                "b and c run every session",
                lambda: hosts["b"].connected() | hosts["c"].connected() == set(SESSIONS),
                30,
            )
            print(f"drain of {len(SESSIONS)} sessions: the host held none {took:.2f} s after `wactl drain`")
            assert hosts["a"].running() == {}
            assert draining(hosts["c"], "a") == (True, 0)
            # a draining host takes nothing over and places a new session asked of it elsewhere
            with Client(hosts["a"].sock, timeout=5) as wa:
                assert wa.connect("asked-of-a").host in ("b", "c")
            time.sleep(TTL)
            assert hosts["a"].running() == {}
            assert sampler.rounds > 20
        assert sampler.overlaps == [], sampler.overlaps
        assert metric(hosts["a"], "wa_cluster_drained_sessions_total") == len(SESSIONS)
        listed = wactl(hosts["a"], "hosts")
        assert listed.returncode == 0 and "DRAINING" in listed.stdout

        cancelled = wactl(hosts["c"], "--json", "drain", "a", "--cancel")
        assert cancelled.returncode == 0, cancelled.stderr
        assert json.loads(cancelled.stdout) == {"host": "a", "draining": False}
        wait_for("a takes sessions again", lambda: draining(hosts["b"], "a") == (False, 0), 15)
        with Client(hosts["a"].sock, timeout=5) as wa:
            assert wa.connect("new-on-a").host == "a"

        # the rolling upgrade: drained again, then restarted, a takes sessions again by itself
        assert wactl(hosts["b"], "drain", "a", "--wait", "--timeout", "30").returncode == 0
        hosts["a"].proc.stop()
        del hosts["a"]
        hosts["a"] = Host(root, redis, "a", capacity=6)
        wait_for("the restarted a is not draining", lambda: draining(hosts["b"], "a") == (False, 0), 15)


def test_drain_on_stop_hands_the_sessions_over_before_the_lease_would_expire() -> None:
    ttl = 8.0  # a failover by expiry would take longer than this; a hand-over does not
    with fleet() as (redis, root, hosts):
        a_holds_every_session(root, redis, hosts, "--set", "drain_on_stop=true", "--set", "shutdown_timeout=20", ttl=ttl)
        with Sampler(hosts) as sampler:
            started = time.monotonic()
            hosts["a"].signal(signal.SIGTERM)
            took = wait_for(
                "b and c run every session",
                lambda: hosts["b"].connected() | hosts["c"].connected() == set(SESSIONS),
                ttl + 15,
            )
            assert hosts["a"].proc.proc.wait(20) == 0
            exited = time.monotonic() - started
        print(f"drain_on_stop: all {len(SESSIONS)} sessions connected elsewhere {took:.2f} s after SIGTERM; "
              f"the daemon exited after {exited:.2f} s")
        assert took < ttl  # handed over, not waited out
        assert sampler.overlaps == [], sampler.overlaps
        events = [json.loads(line) for line in hosts["a"].proc.output().splitlines() if line.startswith("{")]
        assert [(e["complete"], e["left"]) for e in events if e["event"] == "drained_on_stop"] == [(True, 0)]
        assert sum(e["event"] == "cluster_session_handed_over" for e in events) == len(SESSIONS)


def test_the_rate_limit_per_uid_limit_and_ownership_hold_across_hosts(
    users: Users, client_env: ClientEnv,  # noqa: F811  (the fixtures imported above)
) -> None:
    with fleet() as (redis, root, hosts):
        root.chmod(0o755)
        for name in "abc":
            hosts[name] = Host(root, redis, name, 8, "--set", "max_sessions_per_uid=2")
            hosts[name].dir.chmod(0o755)
            hosts[name].sock.chmod(0o666)  # every uid may connect: only ownership separates them
        a, b, c = hosts["a"], hosts["b"], hosts["c"]

        # the rate limit: an attempt on a holds on b, across a delete
        connect_all(a)
        with Client(a.sock, timeout=5) as wa:
            wa.delete("s0")
        with Client(b.sock, timeout=5) as wb, pytest.raises(RateLimited) as limited:
            while True:  # until a's writer has sent the delete (it gives the lease back)
                try:
                    wb.connect("s0")
                    break  # not refused at all: pytest.raises fails the test
                except Unavailable as exc:
                    assert exc.details.get("host") == "a", exc
                    time.sleep(0.02)
        assert 0 < limited.value.details["retry_after"] <= 5.0 and limited.value.details["session"] == "s0"
        # counted where it was refused: a (which still held the lease while its delete was
        # on its way, so b's call went there) by its own check, or a host by the fleet's
        assert sum(
            metric(h, "wa_cluster_limit_refusals_total", limit="rate") + metric(h, "wa_rate_limited_total")
            for h in (a, b, c)
        ) >= 1

        async def as_(user: User, host: Host, *ops: list[object]) -> list[dict[str, object]]:
            with trio.fail_after(60):
                return await as_user(client_env, user, host.sock, list(ops))

        def connect(session: str) -> list[object]:
            return ["call", "connect", {"session": session}]

        # max_sessions_per_uid = 2 across the fleet: one on a, one on b, the third on c is refused
        ua, ub = users.a, users.b
        res = trio.run(as_, ua, a, connect("ua-1"))
        assert res[0].get("error") is None, res
        res = trio.run(as_, ua, b, connect("ua-2"))
        assert res[0].get("error") is None, res
        res = trio.run(as_, ua, c, connect("ua-3"))
        assert res[0]["error"] == LimitExceeded.code and res[0]["details"] == {"limit": 2, "uid": ua.uid}, res
        res = trio.run(as_, ub, c, connect("ub-1"))  # another uid is not counted with it
        assert res[0].get("error") is None, res
        res = trio.run(as_, ub, c, ["call", "drain", {"host": "a"}])  # draining is for admins
        assert res[0]["error"] == PermissionDenied.code and res[0]["details"] == {"host": "a"}, res

        # ownership: ua-1 is ua's on every host; with its host gone, ub cannot take it on b
        wait_for("ua-1's row", lambda: metric(a, "wa_cluster_pending_writes") == 0, 10)
        a.proc.proc.kill()
        a.proc.proc.wait(10)
        deadline = time.monotonic() + TTL + 15
        while True:  # a's lease holds until it expires; then b or c takes it (or b's connect does)
            res = [trio.run(as_, ub, host, connect("ua-1"))[0] for host in (b, c)]
            errors = {r.get("error") for r in res}
            if errors != {Unavailable.code}:
                break
            assert time.monotonic() < deadline, res
            time.sleep(0.2)
        assert errors <= {PermissionDenied.code, Unavailable.code}, res
        owners = set()
        for host in (b, c):
            with Client(host.sock, timeout=5) as wa:
                owners |= {s.owner_uid for s in wa.list() if s.session == "ua-1"}
        assert owners <= {ua.uid}  # taken over for its owner (or not yet): never ub's
