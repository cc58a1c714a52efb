package abacus.sink;

import com.datastax.oss.driver.api.core.CqlSession;
import com.datastax.oss.driver.api.core.CqlSessionBuilder;
import com.datastax.oss.driver.api.core.config.DefaultDriverOption;
import com.datastax.oss.driver.api.core.config.DriverConfigLoader;
import com.datastax.oss.driver.api.core.cql.BatchStatement;
import com.datastax.oss.driver.api.core.cql.BoundStatement;
import com.datastax.oss.driver.api.core.cql.DefaultBatchType;
import com.datastax.oss.driver.api.core.cql.PreparedStatement;
import com.datastax.oss.driver.api.core.cql.Statement;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.time.Duration;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletionException;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;
import org.apache.flink.api.common.TaskInfo;
import org.apache.flink.api.common.operators.ProcessingTimeService;
import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.SinkWriter;
import org.apache.flink.api.connector.sink2.StatefulSinkWriter;
import org.apache.flink.api.connector.sink2.SupportsWriterState;
import org.apache.flink.api.connector.sink2.WriterInitContext;
import org.apache.flink.core.io.SimpleVersionedSerializer;
import org.apache.flink.metrics.Counter;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.apache.flink.table.data.RowData;

/**
 * Adds increments to Cassandra counter tables: the jobs' sink, in the JVM.
 *
 * <p>Each input row is a counter key (STRING fields, in the order the UPDATE binds them after
 * its measures), its measures (BIGINT increments, in the order of the UPDATE's SET) and an
 * index date (STRING, null when the row needs no index entry). The writer sums rows per key
 * in memory and, every {@code interval_ms}, queues the sums as writes: first the key index rows
 * it has not written yet, then, once those are in (an index entry is in Cassandra before its
 * counts), the counter updates, grouped by partition into COUNTER batches, {@code
 * concurrency} requests in flight, each retried with exponential backoff. The writes proceed
 * while the next rows are summed; a tick that finds the last writes still in flight skips,
 * so under load fewer, larger writes, at no cost to freshness when idle.
 *
 * <p>{@link #flush} (Flink calls it before a checkpoint barrier passes the sink) writes what
 * is summed and waits for every write in flight, so a completed checkpoint never covers an
 * increment that is not in Cassandra: at-least-once. A write that still fails after its last
 * attempt fails the job, which restarts from its latest checkpoint.
 *
 * <p>Everything about the schema (statements, which key fields form the partition, the index
 * row and which of its fields the shard hashes, the number of shards) is given by the Python
 * side ({@code storage.counters.sink_layout}); this class only sums, batches and writes.
 * Two of storage's rules are written again here, in {@link Sums}: the shard hash ({@code
 * storage.counters.shard_of}) and the batching ({@code storage.counters.batches}); {@code
 * SumsTest} checks both, and the values bound, against golden vectors Python generates. The
 * drain counter ({@code progress_dir}) is the file {@code abacus.progress} reads ({@link
 * Progress}): the count increments written.
 *
 * <p>Across a restart ({@link Progress}): the drain counters are per attempt, and the writer's
 * state (checkpointed) is its total written, across attempts, at the checkpoint. A restarted
 * writer compares it with the total the failed attempt had written, and records the
 * difference as {@code reapplied}: the count increments written after the restore point,
 * which the new attempt writes again (milestone 1's at-least-once excess, measured).
 *
 * <p>A counter write is not idempotent. A write that fails in a way that leaves it unknown
 * whether Cassandra applied it (a timeout, a connection closed while it was in flight, a
 * write in flight when the writer is closed) adds its increments to {@code uncertain}: the
 * store may hold up to that many more than {@code reapplied} says. A write refused before it
 * was applied (no node available, unavailable, overloaded, busy connection) adds nothing.
 * The sink retries both kinds the same way.
 *
 * <p>Metric (the writer's operator group, exported by the job's reporter): {@code
 * incrementsWritten}, the count increments Cassandra acknowledged (the sums of the count
 * measure of each acknowledged write): once a window is written, the fan-out's {@code
 * incrementsFanned} (a retried write that Cassandra had applied, unknowingly, is not counted
 * twice: only the acknowledged attempt counts).
 */
public final class CounterSink implements Sink<RowData>, SupportsWriterState<RowData, Long> {
    private static final long serialVersionUID = 1L;
    private static final Logger LOG = LoggerFactory.getLogger(CounterSink.class);
    private static final long MAX_BACKOFF_MS = 8_000;

    private final Map<String, String> conf;

    public CounterSink(Map<String, String> conf) {
        this.conf = new HashMap<>(conf);
    }

    @Override
    public StatefulSinkWriter<RowData, Long> createWriter(WriterInitContext context)
            throws IOException {
        return new Writer(new HashMap<>(conf), context.getProcessingTimeService(),
                context.getTaskInfo(), 0L, writtenMetric(context));
    }

    @Override
    public StatefulSinkWriter<RowData, Long> restoreWriter(WriterInitContext context,
            Collection<Long> recoveredState) throws IOException {
        long base = 0;
        for (Long total : recoveredState) {
            base += total;
        }
        return new Writer(new HashMap<>(conf), context.getProcessingTimeService(),
                context.getTaskInfo(), base, writtenMetric(context));
    }

    private static Counter writtenMetric(WriterInitContext context) {
        return context.metricGroup().counter(Metrics.INCREMENTS_WRITTEN);
    }

    @Override
    public SimpleVersionedSerializer<Long> getWriterStateSerializer() {
        return new TotalSerializer();
    }

    /** The writer's state: its total of count increments written, across attempts. */
    static final class TotalSerializer implements SimpleVersionedSerializer<Long> {
        @Override
        public int getVersion() {
            return 1;
        }

        @Override
        public byte[] serialize(Long total) {
            return java.nio.ByteBuffer.allocate(8).putLong(total).array();
        }

        @Override
        public Long deserialize(int version, byte[] data) throws IOException {
            if (version != 1 || data.length != 8) {
                throw new IOException("unknown counter-sink state: version " + version
                        + ", " + data.length + " bytes");
            }
            return java.nio.ByteBuffer.wrap(data).getLong();
        }
    }

    /**
     * False when {@code error} says the write was refused before Cassandra applied it; true
     * when it may have been applied (a timeout, a lost connection, anything unknown).
     */
    static boolean mayHaveApplied(Throwable error) {
        Throwable e = error;
        while ((e instanceof CompletionException || e instanceof ExecutionException)
                && e.getCause() != null) {
            e = e.getCause();
        }
        if (e instanceof com.datastax.oss.driver.api.core.NoNodeAvailableException
                || e instanceof com.datastax.oss.driver.api.core.servererrors.UnavailableException
                || e instanceof com.datastax.oss.driver.api.core.servererrors.OverloadedException
                || e instanceof com.datastax.oss.driver.api.core.connection.BusyConnectionException
                || e instanceof com.datastax.oss.driver.api.core.servererrors.QueryValidationException
                || e instanceof com.datastax.oss.driver.api.core.servererrors.BootstrappingException) {
            return false;
        }
        if (e instanceof com.datastax.oss.driver.api.core.AllNodesFailedException all) {
            for (List<Throwable> errors : all.getAllErrors().values()) {
                for (Throwable each : errors) {
                    if (mayHaveApplied(each)) {
                        return true;
                    }
                }
            }
            return false;
        }
        return true;
    }

    /** The sums of a writer configured by {@code conf} (the layout's keys, measures,
     * index and shard fields, shards). */
    static Sums sums(Map<String, String> conf) {
        return new Sums(Integer.parseInt(conf.get("keys")),
                Integer.parseInt(conf.get("measures")), ints(conf.get("index_fields")),
                ints(conf.get("shard_fields")), Integer.parseInt(conf.get("shards")));
    }

    private static int[] ints(String csv) {
        return csv.isEmpty() ? new int[0] : Arrays.stream(csv.split(",")).mapToInt(Integer::parseInt).toArray();
    }

    static final class Writer implements StatefulSinkWriter<RowData, Long> {
        private final int measures, partitionKeys, concurrency, batchPartitions, batchRows,
                attempts;
        private final long intervalMs, backoffMs, maxKeys, retryWindowNs;
        private final CqlSession session;
        private final PreparedStatement update, index;
        private final ProcessingTimeService time;
        private final ScheduledExecutorService retries;
        private final Requests requests = new Requests();
        private final AtomicReference<Throwable> failure = new AtomicReference<>();
        private final Progress written, uncertain;
        private long total;  // count increments written across attempts; guarded by requests
        private long sentCount;  // count increments of the writes in flight; guarded by requests
        private boolean closed;  // guarded by requests
        private final Sums sums;
        private final Counter writtenMetric;  // count increments acknowledged; guarded by requests

        Writer(Map<String, String> conf, ProcessingTimeService time, TaskInfo task, long base,
                Counter writtenMetric) throws IOException {
            this.writtenMetric = writtenMetric;
            measures = Integer.parseInt(conf.get("measures"));
            partitionKeys = Integer.parseInt(conf.get("partition_keys"));
            sums = sums(conf);
            intervalMs = Long.parseLong(conf.get("interval_ms"));
            concurrency = Integer.parseInt(conf.get("concurrency"));
            batchPartitions = Integer.parseInt(conf.get("batch_partitions"));
            batchRows = Integer.parseInt(conf.get("batch_rows"));
            attempts = Integer.parseInt(conf.get("attempts"));
            backoffMs = Long.parseLong(conf.get("backoff_ms"));
            maxKeys = Long.parseLong(conf.getOrDefault("max_keys", "200000"));
            retryWindowNs = TimeUnit.MILLISECONDS.toNanos(
                    Long.parseLong(conf.getOrDefault("retry_window_ms", "60000")));
            CqlSession connected = null;
            PreparedStatement prepared = null, preparedIndex = null;
            long since = System.nanoTime();
            for (int attemptNo = 1; ; attemptNo++) {  // Cassandra may be restarting
                try {
                    connected = connect(conf);
                    prepared = connected.prepare(conf.get("update"));
                    preparedIndex = connected.prepare(conf.get("index"));
                    break;
                } catch (RuntimeException e) {
                    if (connected != null) {
                        connected.close();
                        connected = null;
                    }
                    if (System.nanoTime() - since >= retryWindowNs) {
                        throw new IOException("Cassandra unreachable for "
                                + TimeUnit.NANOSECONDS.toSeconds(System.nanoTime() - since)
                                + " s: " + e, e);
                    }
                    LOG.warn("counter sink: Cassandra unreachable (attempt {}), retrying: {}",
                            attemptNo, e.toString());
                    try {
                        Thread.sleep(delay(attemptNo));
                    } catch (InterruptedException interrupted) {
                        Thread.currentThread().interrupt();
                        throw new IOException("interrupted while connecting", interrupted);
                    }
                }
            }
            session = connected;
            update = prepared;
            index = preparedIndex;
            String progressDir = conf.getOrDefault("progress_dir", "");
            total = base;
            if (progressDir.isEmpty()) {
                written = uncertain = null;
            } else {
                Path dir = Path.of(progressDir);
                int attempt = task.getAttemptNumber(), subtask = task.getIndexOfThisSubtask();
                long before = Progress.previousTotal(dir, "written", attempt, subtask);
                if (before >= 0) {  // an earlier attempt of this run wrote `before` in total
                    long again = Math.max(0, before - base);
                    Progress reapplied = new Progress(dir, "reapplied", attempt, subtask);
                    reapplied.set(again);
                    reapplied.close();
                    LOG.warn("counter sink {} attempt {}: restored at {} count increments "
                            + "written, the failed attempt had written {}: {} re-applied",
                            subtask, attempt, base, before, again);
                }
                written = new Progress(dir, "written", attempt, subtask);
                written.add(0, total);
                uncertain = new Progress(dir, "uncertain", attempt, subtask);
            }
            retries = Executors.newSingleThreadScheduledExecutor(r -> {
                Thread t = new Thread(r, "counter-sink-retries");
                t.setDaemon(true);
                return t;
            });
            this.time = time;
            schedule();
        }

        private static CqlSession connect(Map<String, String> conf) throws IOException {
            ClassLoader loader = CounterSink.class.getClassLoader();
            Thread thread = Thread.currentThread();
            ClassLoader previous = thread.getContextClassLoader();
            thread.setContextClassLoader(loader);  // the driver's reference.conf is in this jar
            try {
                DriverConfigLoader config = DriverConfigLoader.programmaticBuilder()
                        .withDuration(DefaultDriverOption.REQUEST_TIMEOUT,
                                Duration.ofMillis(Long.parseLong(conf.get("request_timeout_ms"))))
                        .withString(DefaultDriverOption.LOAD_BALANCING_POLICY_CLASS,
                                "DcInferringLoadBalancingPolicy")
                        // a restarted Cassandra is seen within 2 s (the default backs off
                        // to 60 s, past the writes' retry window)
                        .withDuration(DefaultDriverOption.RECONNECTION_BASE_DELAY,
                                Duration.ofMillis(500))
                        .withDuration(DefaultDriverOption.RECONNECTION_MAX_DELAY,
                                Duration.ofSeconds(2))
                        .build();
                CqlSessionBuilder builder = CqlSession.builder().withClassLoader(loader)
                        .withConfigLoader(config);
                int port = Integer.parseInt(conf.get("port"));
                for (String host : conf.get("hosts").split(",")) {
                    builder.addContactPoint(new InetSocketAddress(host, port));
                }
                String dc = conf.getOrDefault("local_dc", "");
                if (!dc.isEmpty()) {
                    builder.withLocalDatacenter(dc);
                }
                String user = conf.getOrDefault("username", "");
                if (!user.isEmpty()) {
                    builder.withAuthCredentials(user, conf.getOrDefault("password", ""));
                }
                if (Boolean.parseBoolean(conf.getOrDefault("ssl", "false"))) {
                    builder.withSslContext(sslContext(conf.getOrDefault("ssl_cafile", "")));
                }
                return builder.build();
            } finally {
                thread.setContextClassLoader(previous);
            }
        }

        private static SSLContext sslContext(String caFile) throws IOException {
            try {
                if (caFile.isEmpty()) {
                    return SSLContext.getDefault();
                }
                KeyStore trust = KeyStore.getInstance(KeyStore.getDefaultType());
                trust.load(null, null);
                try (InputStream in = new FileInputStream(caFile)) {
                    int i = 0;
                    for (Certificate cert : CertificateFactory.getInstance("X.509").generateCertificates(in)) {
                        trust.setCertificateEntry("ca" + i++, cert);
                    }
                }
                TrustManagerFactory factory = TrustManagerFactory.getInstance(
                        TrustManagerFactory.getDefaultAlgorithm());
                factory.init(trust);
                SSLContext context = SSLContext.getInstance("TLS");
                context.init(null, factory.getTrustManagers(), null);
                return context;
            } catch (IOException e) {
                throw e;
            } catch (Exception e) {
                throw new IOException("TLS setup failed for " + caFile + ": " + e, e);
            }
        }

        /** The delay before retry `attemptNo` + 1: exponential from backoffMs, at most 8 s. */
        private long delay(int attemptNo) {
            return Math.min(backoffMs << Math.min(attemptNo - 1, 20), MAX_BACKOFF_MS);
        }

        private void schedule() {
            time.registerTimer(time.getCurrentProcessingTime() + intervalMs, now -> onTimer());
        }

        private void onTimer() throws IOException {
            rethrow();
            if (requests.idle()) {  // the last writes are done
                send();
            }  // else keep summing: the next tick writes more per request
            schedule();
        }

        @Override
        public void write(RowData row, Context context) throws IOException, InterruptedException {
            sums.add(row);
            if (sums.size() >= maxKeys) {  // bounds memory: wait for the writes, then write
                requests.awaitIdle();
                rethrow();
                send();
            }
        }

        /**
         * Queues what is summed: the new index entries, then (once those are written) the
         * counts. Returns at once: the writes proceed while the next rows are summed.
         */
        private void send() {
            if (sums.size() == 0) {
                return;
            }
            List<Request> countRequests = requests(update, sums.takeCounts(), measures,
                    measures + partitionKeys, DefaultBatchType.COUNTER, true);
            List<Object[]> entries = sums.takeIndex();
            if (entries.isEmpty()) {
                requests.add(countRequests);
                return;
            }
            List<Request> indexRequests = requests(index, entries, 0, 2,
                    DefaultBatchType.UNLOGGED, false);
            AtomicInteger remaining = new AtomicInteger(indexRequests.size());
            Runnable thenCounts = () -> {
                if (remaining.decrementAndGet() == 0) {
                    requests.add(countRequests);  // an index entry is in before its counts
                }
            };
            List<Request> gated = new ArrayList<>(indexRequests.size());
            for (Request r : indexRequests) {
                gated.add(new Request(r.statement, r.count, thenCounts));
            }
            requests.add(gated);
        }

        /**
         * Binds every row into requests, batched by {@link Sums#batches} (a partition is the
         * values from {@code partitionStart} to {@code partitionEnd}). With {@code drained},
         * a row's first value (its count increment) goes to the drain counter once written.
         */
        private List<Request> requests(PreparedStatement statement, List<Object[]> rows,
                                       int partitionStart, int partitionEnd,
                                       DefaultBatchType type, boolean drained) {
            List<Request> out = new ArrayList<>();
            for (List<Object[]> batch : Sums.batches(rows, partitionStart, partitionEnd,
                    batchRows, batchPartitions)) {
                List<BoundStatement> bound = new ArrayList<>(batch.size());
                long count = 0;
                for (Object[] row : batch) {
                    bound.add(statement.bind(row));
                    if (drained) {
                        count += (Long) row[0];
                    }
                }
                out.add(request(bound, type, count));
            }
            return out;
        }

        private static Request request(List<BoundStatement> statements, DefaultBatchType type, long count) {
            Statement<?> statement = statements.size() == 1 ? statements.get(0)
                    : BatchStatement.newInstance(type, statements.toArray(new BoundStatement[0]));
            return new Request(statement, count, null);
        }

        private void rethrow() throws IOException {
            Throwable error = failure.get();
            if (error != null) {
                throw new IOException("counter write failed after " + attempts + " attempts: " + error, error);
            }
        }

        @Override
        public List<Long> snapshotState(long checkpointId) {
            synchronized (requests) {  // after flush: nothing in flight
                return List.of(total);
            }
        }

        @Override
        public void flush(boolean endOfInput) throws IOException, InterruptedException {
            rethrow();
            send();
            requests.awaitIdle();
            rethrow();
        }

        /** One request: a statement or batch, its count increments, what follows its success. */
        private record Request(Statement<?> statement, long count, Runnable then) {
        }

        /**
         * The requests queued and in flight (at most {@code concurrency}); each is retried with
         * exponential backoff, and after its last attempt fails the writer ({@link #rethrow}).
         */
        private final class Requests {
            private final ArrayDeque<Request> queued = new ArrayDeque<>();
            private int inFlight, outstanding;  // guarded by this

            synchronized void add(List<Request> batch) {
                queued.addAll(batch);
                outstanding += batch.size();
                pump();
            }

            synchronized boolean idle() {
                return outstanding == 0;
            }

            synchronized void awaitIdle() throws InterruptedException {
                while (outstanding > 0 && failure.get() == null) {
                    wait();
                }
            }

            private void pump() {  // holding the lock
                while (inFlight < concurrency && !queued.isEmpty()) {
                    inFlight++;
                    attempt(queued.poll(), 1, 0L);
                }
            }

            private synchronized void done(Request request, Throwable error) {
                if (closed) {
                    return;
                }
                if (error == null) {
                    writtenMetric.inc(request.count);
                    if (written != null && request.count > 0) {
                        total += request.count;
                        written.add(request.count, total);
                    }
                    if (request.then != null) {
                        request.then.run();  // may queue more before this one is off the books
                    }
                } else {
                    failure.compareAndSet(null, error);
                }
                inFlight--;
                outstanding--;
                pump();
                notifyAll();
            }

            /** Attempt `attemptNo` of a request failing since `since` (System.nanoTime(); 0:
             * it has not failed yet). */
            private void attempt(Request request, int attemptNo, long since) {
                CompletionStage<?> done;
                synchronized (this) {
                    if (closed) {
                        return;
                    }
                    sentCount += request.count;
                }
                try {
                    done = session.executeAsync(request.statement);
                } catch (RuntimeException e) {
                    synchronized (this) {
                        sentCount -= request.count;
                    }
                    retryOrFail(request, attemptNo, since, e);
                    return;
                }
                done.whenComplete((result, error) -> {
                    synchronized (this) {
                        if (closed) {
                            return;  // counted as uncertain by close()
                        }
                        sentCount -= request.count;
                        if (error != null && request.count > 0 && uncertain != null
                                && mayHaveApplied(error)) {
                            uncertain.add(request.count);
                        }
                    }
                    if (error == null) {
                        done(request, null);
                    } else {
                        retryOrFail(request, attemptNo, since, error);
                    }
                });
            }

            /**
             * A failed request is retried (backoff doubling up to 8 s) until it has had
             * {@code attempts} attempts and has been failing for the retry window (60 s
             * unless {@code retry_window_ms} says otherwise): a Cassandra restart costs
             * the job no restart, hence no increment re-applied.
             */
            private void retryOrFail(Request request, int attemptNo, long since,
                                     Throwable error) {
                long first = since != 0 ? since : System.nanoTime();
                if (attemptNo >= attempts && System.nanoTime() - first >= retryWindowNs) {
                    done(request, error);
                    return;
                }
                try {
                    retries.schedule(() -> attempt(request, attemptNo + 1, first),
                            delay(attemptNo), TimeUnit.MILLISECONDS);
                } catch (java.util.concurrent.RejectedExecutionException closing) {
                    // the writer is closing: the request is abandoned with the attempt
                }
            }

            /** Stops counting: what is still in flight may or may not be applied. */
            synchronized void close() {
                if (!closed && uncertain != null && sentCount > 0) {
                    uncertain.add(sentCount);
                }
                closed = true;
                notifyAll();
            }
        }

        @Override
        public void close() throws Exception {
            requests.close();
            retries.shutdownNow();
            session.close();
            if (written != null) {
                written.close();
                uncertain.close();
            }
        }
    }
}
