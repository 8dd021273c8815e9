"""Local infrastructure Esper runs for itself."""

from esper_runtime.infra.local_kafka import BrokerError, BrokerStatus, LocalKafka

__all__ = ["BrokerError", "BrokerStatus", "LocalKafka"]
