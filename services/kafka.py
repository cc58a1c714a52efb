"""Kafka 4 in KRaft mode, one combined broker+controller, from the Maven Central jars."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from services import jvm
from services.base import Service, StartError
from services.paths import lib_dir

CLUSTER_ID = "4L6g3nShT-eMCtK--X86sw"  # any 22-char base64url UUID; fixed so re-runs agree
HEALTH_TOPIC = "__abacus_health"
JVM_FLAGS = [
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
]

LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.req.name = kafka.request.logger
logger.req.level = WARN
"""


class KafkaService(Service):
    name = "kafka"
    stop_grace_s = 60.0

    @property
    def host(self) -> str:
        first = self.settings.kafka.bootstrap_servers.split(",")[0]
        return first.rsplit(":", 1)[0]

    def ports(self) -> dict[str, int]:
        port = int(self.settings.kafka.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])
        return {"client": port, "controller": port + 1}

    @property
    def lib(self) -> Path:
        return lib_dir(self.settings, "kafka")

    def missing(self) -> str | None:
        jar = f"kafka_2.13-{self.settings.services.kafka_version}.jar"
        return None if (self.lib / jar).is_file() else f"{self.lib / jar}"

    def _java(self, heap: str) -> list[str]:
        log4j = self.dir / "log4j2.properties"
        return [
            jvm.java(),
            *heap.split(),
            *JVM_FLAGS,
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={self.dir}",
            "-cp",
            jvm.classpath(self.lib),
        ]

    def configure(self) -> None:
        ports = self.ports()
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{ports['controller']}",
            "listeners": f"PLAINTEXT://{self.host}:{ports['client']},"
            f"CONTROLLER://{self.host}:{ports['controller']}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{ports['client']}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.dir / "data"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
        }
        (self.dir / "server.properties").write_text(
            "".join(f"{key}={value}\n" for key, value in props.items())
        )
        (self.dir / "log4j2.properties").write_text(LOG4J2)
        if (self.dir / "data" / "meta.properties").is_file():
            return
        fmt = subprocess.run(
            [
                *self._java("-Xmx256m"),
                "kafka.tools.StorageTool",
                "format",
                "-t",
                CLUSTER_ID,
                "-c",
                str(self.dir / "server.properties"),
                "--ignore-formatted",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if fmt.returncode != 0:
            raise StartError(f"kafka storage format failed:\n{fmt.stdout}{fmt.stderr}")

    def command(self) -> list[str]:
        heap = self.settings.services.kafka_heap_mb
        return [
            *self._java(f"-Xms{min(heap, 256)}m -Xmx{heap}m"),
            "kafka.Kafka",
            str(self.dir / "server.properties"),
        ]

    def probe(self) -> str:
        from confluent_kafka import Consumer, Producer, TopicPartition

        conf = {"bootstrap.servers": self.address, "socket.timeout.ms": 5000}
        token = uuid.uuid4().hex.encode()
        delivered: list[tuple[object, object]] = []
        producer = Producer({**conf, "message.timeout.ms": 10_000})
        producer.produce(
            HEALTH_TOPIC, value=token, on_delivery=lambda err, msg: delivered.append((err, msg))
        )
        producer.flush(12)
        if not delivered:
            raise RuntimeError("produce not acknowledged")
        err, msg = delivered[0]
        if err is not None:
            raise RuntimeError(f"produce failed: {err}")
        consumer = Consumer({**conf, "group.id": "abacus-health", "enable.auto.commit": False})
        try:
            consumer.assign([TopicPartition(HEALTH_TOPIC, msg.partition(), msg.offset())])  # type: ignore[attr-defined]
            for _ in range(20):
                record = consumer.poll(0.5)
                if record is not None and record.error() is None and record.value() == token:
                    return jvm.jar_version(self.lib, "kafka_2.13-")
        finally:
            consumer.close()
        raise RuntimeError(f"the record produced to {HEALTH_TOPIC} was not consumed back")
