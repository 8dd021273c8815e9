"""The local broker manager's refusals, which need no running broker."""

import socket

import pytest

from esper_runtime.infra import BrokerError, LocalKafka
from streams import load_settings


def test_missing_java_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java, no mvn
    broker = LocalKafka(load_settings(home=tmp_path, kafka_port=19692, kafka_controller_port=19693))
    with pytest.raises(BrokerError, match="java is not installed"):
        broker.up(timeout=5)


def test_a_taken_port_is_named(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        broker = LocalKafka(load_settings(home=tmp_path, kafka_port=port, kafka_controller_port=port + 1))
        with pytest.raises(BrokerError, match=f"127.0.0.1:{port} is already in use"):
            broker.up(timeout=5)
    assert not (tmp_path / "kafka" / "broker.pid").exists()


def test_down_without_a_broker_stops_nothing(tmp_path):
    broker = LocalKafka(load_settings(home=tmp_path, kafka_port=19694, kafka_controller_port=19695))
    assert broker.down() is False
    assert broker.status().running is False


def test_a_stale_pid_file_never_targets_another_process(tmp_path):
    import os

    broker = LocalKafka(load_settings(home=tmp_path, kafka_port=19696, kafka_controller_port=19697))
    broker.pid_file.parent.mkdir(parents=True)
    broker.pid_file.write_text(str(os.getpid()))  # a live process that is not our broker
    assert broker.pid() is None
    assert broker.down() is False  # and this process is still alive to assert it


def test_an_external_cluster_is_never_managed(tmp_path):
    broker = LocalKafka(load_settings(home=tmp_path, kafka_bootstrap="127.0.0.1:1"))
    assert broker.down() is False
    with pytest.raises(BrokerError, match="does not answer"):
        broker.up(timeout=1)


def test_cluster_ids_never_look_like_options():
    from esper_runtime.infra.local_kafka import _kafka_uuid

    ids = [_kafka_uuid() for _ in range(2000)]  # about 1 in 64 random ids would start with '-'
    assert not any(i.startswith("-") for i in ids) and all(len(i) == 22 for i in ids)


def test_a_cluster_of_three_has_its_ports_dirs_and_replication(tmp_path):
    settings = load_settings(home=tmp_path, kafka_port=20000, kafka_controller_port=20001, kafka_brokers=3)
    kafka = LocalKafka(settings)
    assert [(n.node_id, n.port, n.controller_port) for n in kafka.nodes] == [(1, 20000, 20001), (2, 20002, 20003),
                                                                            (3, 20004, 20005)]
    assert [n.base for n in kafka.nodes] == [tmp_path / "kafka" / f"node-{i}" for i in (1, 2, 3)]
    assert settings.bootstrap_servers == "127.0.0.1:20000,127.0.0.1:20002,127.0.0.1:20004"
    assert (settings.topic_replication, settings.topic_min_insync) == (3, 2)
    one = load_settings(home=tmp_path / "one", kafka_port=20010, kafka_controller_port=20011)
    assert LocalKafka(one).nodes[0].base == tmp_path / "one" / "kafka"  # one node: the layout it always had
    assert (one.topic_replication, one.topic_min_insync) == (1, 1)
    assert load_settings(kafka_bootstrap="h:9092").topic_replication == -1  # an external cluster's own default


def test_overlapping_cluster_ports_are_refused(tmp_path):
    kafka = LocalKafka(load_settings(home=tmp_path, kafka_port=20020, kafka_controller_port=20022, kafka_brokers=3))
    with pytest.raises(BrokerError, match="overlap"):
        kafka.up(timeout=1)


def test_the_cluster_size_is_remembered_in_its_home(tmp_path):
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "brokers").write_text("3\n")  # what `esper infra up --brokers 3` leaves
    assert load_settings(home=tmp_path).kafka_brokers == 3
    assert load_settings(home=tmp_path, kafka_brokers=1).kafka_brokers == 1  # said explicitly: that wins
    assert load_settings(home=tmp_path, kafka_bootstrap="h:9092").kafka_brokers == 1  # not ours to size
