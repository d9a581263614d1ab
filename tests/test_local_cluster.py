"""The local Redis Cluster launcher (giftrelay.embedded.LocalCluster), checked against
what the nodes themselves answer (CLUSTER SLOTS, INFO, a redis-py cluster client)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError

from giftrelay.embedded import CLUSTER_SLOTS, EmbeddedRedisError, LocalCluster

from .cluster_helpers import flush_cluster

SlotTable = list[tuple[int, int, int, tuple[int, ...]]]


def slot_table(port: int) -> SlotTable:
    """CLUSTER SLOTS as one node answers it: (first, last, primary, replicas) per range."""
    with redis.Redis("127.0.0.1", port) as node:
        rows = node.execute_command("CLUSTER", "SLOTS")
    return sorted(
        (first, last, primary[1], tuple(sorted(r[1] for r in replicas)))
        for first, last, primary, *replicas in rows
    )


def cluster_client(cluster: LocalCluster) -> RedisCluster:
    """A redis-py cluster client started from the URL's nodes, as an application's is."""
    nodes = [item.split(":") for item in urlsplit(cluster.url).netloc.split(",")]
    startup = [ClusterNode(host, int(port)) for host, port in nodes]
    return RedisCluster(startup_nodes=startup, decode_responses=True)


def test_the_cluster_forms_with_three_primaries_each_with_a_replica(
    redis_cluster: LocalCluster,
) -> None:
    ports = redis_cluster.ports
    assert len(set(ports)) == 6
    assert all(port + 10_000 <= 65_535 for port in ports), "each cluster bus port is a port"
    url = urlsplit(redis_cluster.url)
    assert url.scheme == "redis+cluster"
    primaries = sorted(int(item.rpartition(":")[2]) for item in url.netloc.split(","))
    assert redis_cluster.primary_ports() == primaries

    table = slot_table(primaries[0])
    assert [(first, last) for first, last, *_ in table] == [
        (0, 5460),
        (5461, 10922),
        (10923, 16383),
    ]
    assert sum(last - first + 1 for first, last, *_ in table) == CLUSTER_SLOTS
    assert sorted(primary for _, _, primary, _ in table) == primaries
    replicas = [replica for *_, (replica,) in table]  # exactly one each
    assert sorted(primaries + replicas) == sorted(ports)
    for port in ports:
        assert slot_table(port) == table, f"127.0.0.1:{port} sees the slots otherwise"
        with redis.Redis("127.0.0.1", port, decode_responses=True) as node:
            info = node.execute_command("CLUSTER", "INFO")
            assert "cluster_state:ok" in info
            assert "cluster_slots_assigned:16384" in info
    for first, last, primary, (replica,) in table:
        assert redis_cluster.owner_of_slot(first) == redis_cluster.owner_of_slot(last) == primary
        assert redis_cluster.replica_of(primary) == replica
        with redis.Redis("127.0.0.1", replica, decode_responses=True) as node:
            info = node.info("replication")
        assert (info["role"], info["master_port"], info["master_link_status"]) == (
            "slave",
            primary,
            "up",
        )

    with cluster_client(redis_cluster) as client:
        keys = {f"{{s{i}}}k": str(i) for i in range(30)}  # spread over the three shards
        assert {redis_cluster.owner_of_slot(key_slot(k.encode())) for k in keys} == set(primaries)
        for key, value in keys.items():
            client.set(key, value)
        assert [client.get(key) for key in keys] == list(keys.values())


async def test_flush_cluster_empties_primaries_and_replicas(redis_cluster: LocalCluster) -> None:
    with cluster_client(redis_cluster) as client:
        for i in range(30):
            client.set(f"{{f{i}}}k", "x")
    await flush_cluster(redis_cluster)
    for port in redis_cluster.ports:
        with redis.Redis("127.0.0.1", port) as node:
            assert node.dbsize() == 0, f"127.0.0.1:{port} still has keys"


def test_a_killed_primary_fails_over_to_its_replica_and_comes_back_as_a_replica(
    own_cluster: LocalCluster,
) -> None:
    key = "{gift}acked"
    slot = key_slot(key.encode())
    primary = own_cluster.owner_of_slot(slot)
    replica = own_cluster.replica_of(primary)
    with redis.Redis("127.0.0.1", primary) as node:
        node.set(key, "1")
        assert node.wait(1, 2000) == 1, "the replica holds the write before the kill"

    own_cluster.kill(primary)
    assert own_cluster.wait_failover(primary, timeout=10) == replica
    assert own_cluster.owner_of_slot(slot) == replica
    assert replica in own_cluster.primary_ports()
    assert primary not in own_cluster.primary_ports()
    assert all(primary not in (p, *r) for *_, p, r in slot_table(replica))
    with redis.Redis("127.0.0.1", replica) as node:
        assert node.get(key) == b"1"
    with cluster_client(own_cluster) as client:
        assert client.get(key) == "1"

    own_cluster.restart(primary)
    assert own_cluster.replica_of(replica) == primary
    with redis.Redis("127.0.0.1", primary, single_connection_client=True) as old:
        info = old.info("replication")
        assert (info["role"], info["master_port"], info["master_link_status"]) == (
            "slave",
            replica,
            "up",
        )
        old.execute_command("READONLY")  # reads of its primary's slots, on this connection
        assert old.get(key) == b"1"


def test_migrate_slot_moves_a_slot_and_its_keys_online(own_cluster: LocalCluster) -> None:
    tag = "{stream-7}"
    slot = key_slot(tag.encode())
    source = own_cluster.owner_of_slot(slot)
    target = next(port for port in own_cluster.primary_ports() if port != source)
    keys = {f"{tag}:k{i}": str(i) for i in range(250)}
    with redis.Redis("127.0.0.1", source, decode_responses=True) as node:
        node.mset(keys)

    counts: list[tuple[int, int]] = []

    def half_moved() -> None:
        """Mid-resharding: the source answers ASK for a moved key, the target serves it
        only to a client that says ASKING."""
        with redis.Redis("127.0.0.1", target, single_connection_client=True) as t:
            moved = t.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1)[0]
            with pytest.raises(MovedError, match=f"{slot} 127.0.0.1:{source}"):
                t.get(moved)
            t.execute_command("ASKING")
            assert t.get(moved) == keys[moved.decode()].encode()
            in_target = t.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
        with redis.Redis("127.0.0.1", source) as s:
            with pytest.raises(AskError, match=f"{slot} 127.0.0.1:{target}"):
                s.get(moved)
            counts.append((s.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot), in_target))

    own_cluster.migrate_slot(slot, target, batch=100, pause=half_moved)

    assert counts == [(150, 100), (50, 200), (0, 250)]
    assert own_cluster.owner_of_slot(slot) == target
    with redis.Redis("127.0.0.1", target, decode_responses=True) as node:
        assert node.mget(list(keys)) == list(keys.values())
    with (
        redis.Redis("127.0.0.1", source) as node,
        pytest.raises(MovedError, match=f"{slot} 127.0.0.1:{target}"),
    ):
        node.get(next(iter(keys)))
    for port in own_cluster.ports:
        owner = next(p for first, last, p, _ in slot_table(port) if first <= slot <= last)
        assert owner == target, f"127.0.0.1:{port} still sends slot {slot} to {owner}"
    with cluster_client(own_cluster) as client:
        assert client.mget_nonatomic(list(keys)) == list(keys.values())


def test_a_node_that_cannot_start_is_named_with_its_log(tmp_path: Path) -> None:
    bad = tmp_path / "cluster" / "node-3"
    bad.mkdir(parents=True)
    (bad / "nodes.conf").write_text("not a cluster config\n")
    cluster = LocalCluster(tmp_path / "cluster")
    with pytest.raises(EmbeddedRedisError, match=r"(?s)node-3: .*exited at start:.*cluster config"):
        cluster.start()
    assert len(cluster.nodes) == 3
    assert not any(node.running for node in cluster.nodes.values()), "the others are stopped"
