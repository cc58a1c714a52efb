package abacus.sink;

import io.prometheus.client.CollectorRegistry;
import io.prometheus.client.exporter.HTTPServer;
import java.io.IOException;
import java.lang.reflect.Field;
import java.net.InetSocketAddress;
import java.util.Properties;
import org.apache.flink.metrics.MetricConfig;
import org.apache.flink.metrics.prometheus.AbstractPrometheusReporter;
import org.apache.flink.metrics.reporter.MetricReporter;
import org.apache.flink.metrics.reporter.MetricReporterFactory;

/**
 * Flink's Prometheus reporter, serving on one address: Flink's own ({@code
 * PrometheusReporterFactory}) binds every interface, with no option to choose one. A local
 * job's runner configures it ({@code abacus.environment.reporter_configuration}):
 * {@code metrics.reporter.prom.factory.class: abacus.sink.BoundPrometheusReporterFactory},
 * {@code .host} (127.0.0.1 unless given) and {@code .port}. The metrics, their names and
 * labels are Flink's reporter's ({@code AbstractPrometheusReporter}); only the HTTP server
 * differs.
 *
 * <p>Found by Flink's ServiceLoader lookup of reporter factories, which a MiniCluster does in
 * the thread that starts it, whose context class loader holds the job's pipeline.jars: this
 * jar and the reporter's (the PyFlink wheel's plugins/metrics-prometheus).
 */
public final class BoundPrometheusReporterFactory implements MetricReporterFactory {
    @Override
    public MetricReporter createMetricReporter(Properties properties) {
        String port = properties.getProperty("port");
        if (port == null) {
            throw new IllegalArgumentException("the bound Prometheus reporter needs a port");
        }
        return new Reporter(properties.getProperty("host", "127.0.0.1"),
                Integer.parseInt(port.trim()));
    }

    /** The reporter: Flink's collectors, served by a server on host:port. */
    static final class Reporter extends AbstractPrometheusReporter {
        private final String host;
        private final int port;
        private HTTPServer server;

        Reporter(String host, int port) {
            this.host = host;
            this.port = port;
        }

        @Override
        public void open(MetricConfig config) {
            super.open(config);
            try {
                server = new HTTPServer(new InetSocketAddress(host, port), registry());
            } catch (IOException e) {
                throw new RuntimeException("cannot serve metrics on " + host + ":" + port, e);
            }
            log.info("Prometheus metrics served on {}:{}", host, port);
        }

        @Override
        public void close() {
            if (server != null) {
                server.stop();
            }
            super.close();
        }

        /** The registry of Flink's reporter (package-private there). */
        private CollectorRegistry registry() {
            try {
                Field field = AbstractPrometheusReporter.class.getDeclaredField("registry");
                field.setAccessible(true);
                return (CollectorRegistry) field.get(this);
            } catch (ReflectiveOperationException e) {
                throw new IllegalStateException("Flink's Prometheus reporter changed: " + e, e);
            }
        }
    }
}
