"""``streams.retry``: what a node's failover makes a request fail with is asked again; nothing else is."""

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.retry import retrying, transient


def failing(times: int, code: int):
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= times:
            raise KafkaException(KafkaError(code))
        return "answer"
    return call, calls


@pytest.mark.parametrize("code", [KafkaError._DESTROY_BROKER, KafkaError._TRANSPORT, KafkaError.LEADER_NOT_AVAILABLE,
                                  KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError._ALL_BROKERS_DOWN])
def test_a_failover_error_is_asked_again(code):
    call, calls = failing(3, code)
    assert transient(KafkaError(code))
    assert retrying(call, timeout=10, delay=0.001) == "answer" and len(calls) == 4


def test_another_error_is_raised_at_once():
    call, calls = failing(3, KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):
        retrying(call, timeout=10, delay=0.001)
    assert len(calls) == 1


def test_the_last_error_is_raised_when_time_is_up():
    call, calls = failing(10**9, KafkaError._TRANSPORT)
    with pytest.raises(KafkaException) as info:
        retrying(call, timeout=0.05, delay=0.001)
    assert info.value.args[0].code() == KafkaError._TRANSPORT and 3 < len(calls) < 200
