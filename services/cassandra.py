"""Cassandra 5.0, one node, from the Maven Central jars (`cassandra-all` and its runtime deps)."""

from __future__ import annotations

from pathlib import Path

from services import jvm
from services.base import Service
from services.paths import lib_dir

# Not in CassandraSettings: only the local node uses it. 17000 for the default CQL port 19042,
# and 2042 below any other CQL port, so a second local node (e.g. the fault suite's) fits.
STORAGE_OFFSET = 2042


def storage_port(cql_port: int) -> int:
    return cql_port - STORAGE_OFFSET if cql_port - STORAGE_OFFSET >= 1024 else cql_port + 1


# conf/jvm-server.options + conf/jvm17-server.options + cassandra-env.sh (5.0), minus
# -XX:+AlwaysPreTouch (slow start, full heap resident at once).
JVM_FLAGS = [
    "-ea",
    "-da:net.openhft...",
    "-XX:+UseThreadPriorities",
    "-XX:+HeapDumpOnOutOfMemoryError",
    "-Xss256k",
    "-XX:+UseTLAB",
    "-XX:+ResizeTLAB",
    "-XX:+PerfDisableSharedMem",
    "-Djava.net.preferIPv4Stack=true",
    "-XX:+UseG1GC",
    "-XX:+ParallelRefProcEnabled",
    "-XX:MaxTenuringThreshold=1",
    "-XX:G1RSetUpdatingPauseTimePercent=5",
    "-XX:MaxGCPauseMillis=300",
    "-XX:InitiatingHeapOccupancyPercent=70",
    "-Djdk.attach.allowAttachSelf=true",
    *(
        f"--add-exports={m}=ALL-UNNAMED"
        for m in (
            "java.base/jdk.internal.misc",
            "java.management.rmi/com.sun.jmx.remote.internal.rmi",
            "java.rmi/sun.rmi.registry",
            "java.rmi/sun.rmi.server",
            "java.sql/java.sql",
            "java.base/java.lang.ref",
            "jdk.unsupported/sun.misc",
            "jdk.compiler/com.sun.tools.javac.file",
            "jdk.attach/sun.tools.attach",
        )
    ),
    *(
        f"--add-opens={m}=ALL-UNNAMED"
        for m in (
            "java.base/java.lang.module",
            "java.base/jdk.internal.loader",
            "java.base/jdk.internal.ref",
            "java.base/jdk.internal.reflect",
            "java.base/jdk.internal.math",
            "java.base/jdk.internal.module",
            "java.base/jdk.internal.util.jar",
            "jdk.management/com.sun.management.internal",
            "java.base/sun.nio.ch",
            "java.base/java.io",
            "java.base/java.lang.reflect",
            "jdk.compiler/com.sun.tools.javac",
            "java.base/java.lang",
            "java.base/java.util",
            "java.base/java.nio",
        )
    ),
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
    "-XX:OnOutOfMemoryError=kill -9 %p",
    "-Dcassandra-foreground=yes",  # else the daemon closes stdout/stderr after startup
    # fast single-node start
    "-Dcassandra.skip_wait_for_gossip_to_settle=0",
    "-Dcassandra.superuser_setup_delay_ms=0",
    "-Dcassandra.ring_delay_ms=1000",
]

LOGBACK = """\
<configuration>
  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="OUT"/></root>
</configuration>
"""


class CassandraService(Service):
    name = "cassandra"
    stop_grace_s = 60.0

    @property
    def host(self) -> str:
        return self.settings.cassandra.hosts[0]

    def ports(self) -> dict[str, int]:
        port = self.settings.cassandra.port
        return {"cql": port, "storage": storage_port(port)}

    @property
    def lib(self) -> Path:
        return lib_dir(self.settings, "cassandra")

    def missing(self) -> str | None:
        jar = self.lib / f"cassandra-all-{self.settings.services.cassandra_version}.jar"
        return None if jar.is_file() else str(jar)

    def configure(self) -> None:
        data = self.dir / "data"
        yaml = f"""\
cluster_name: abacus
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{self.host}:{storage_port(self.settings.cassandra.port)}"
listen_address: {self.host}
rpc_address: {self.host}
storage_port: {storage_port(self.settings.cassandra.port)}
native_transport_port: {self.settings.cassandra.port}
start_native_transport: true
commitlog_sync: group
commitlog_sync_group_window: 15ms
commitlog_segment_size: 8MiB
data_file_directories: ["{data}/data"]
commitlog_directory: "{data}/commitlog"
saved_caches_directory: "{data}/saved_caches"
hints_directory: "{data}/hints"
cdc_raw_directory: "{data}/cdc_raw"
memtable_allocation_type: heap_buffers
memtable_heap_space: 64MiB
memtable_offheap_space: 64MiB
key_cache_size: 16MiB
file_cache_size: 64MiB
networking_cache_size: 16MiB
concurrent_compactors: 1
concurrent_reads: 8
concurrent_writes: 8
# counter writes lock and read before they write: on two shared cores, 32 of them (the
# default) and up to 128 request threads only contend (abacus bench abacus: Cassandra's
# CPU per event 94-162 us with these, 153-216 us with the defaults)
concurrent_counter_writes: 4
native_transport_max_threads: 8
auto_snapshot: false
# count writers pack small partitions into one batch (storage.counters): not a defect here
batch_size_warn_threshold: 16KiB
unlogged_batch_across_partitions_warn_threshold: 64
"""
        (self.dir / "cassandra.yaml").write_text(yaml)
        (self.dir / "logback.xml").write_text(LOGBACK)
        (self.dir / "triggers").mkdir(exist_ok=True)

    def command(self) -> list[str]:
        heap = self.settings.services.cassandra_heap_mb
        jamm = jvm.jar(self.lib, "jamm-")
        return [
            jvm.java(),
            f"-Xms{heap}m",
            f"-Xmx{heap}m",
            *JVM_FLAGS,
            *([f"-javaagent:{jamm}"] if jamm else []),
            f"-Dcassandra.config={(self.dir / 'cassandra.yaml').as_uri()}",
            f"-Dlogback.configurationFile={self.dir / 'logback.xml'}",
            f"-Dcassandra.logdir={self.dir / 'logs'}",
            f"-Dcassandra.storagedir={self.dir / 'data'}",
            f"-Dcassandra.triggers_dir={self.dir / 'triggers'}",
            "-cp",
            jvm.classpath(self.lib),
            "org.apache.cassandra.service.CassandraDaemon",
        ]

    def probe(self) -> str:
        from cassandra.cluster import Cluster

        cluster = Cluster(
            [self.host],
            port=self.settings.cassandra.port,
            connect_timeout=5,
            control_connection_timeout=5,
        )
        try:
            session = cluster.connect()
            row = session.execute("SELECT release_version FROM system.local", timeout=10).one()
            return str(row.release_version)
        finally:
            cluster.shutdown()
