"""Local infrastructure Esper runs for itself."""

from esper_runtime.infra.local_kafka import BrokerError, BrokerStatus, LocalKafka
from esper_runtime.infra.local_processors import LocalProcessors, stop_recorded

__all__ = ["BrokerError", "BrokerStatus", "LocalKafka", "LocalProcessors", "stop_recorded"]
