package abacus.sink;

/**
 * The names of the jobs' own metrics in Flink's metric groups (each operator's group; a
 * reporter exports them with the job's and the operator's labels: {@code
 * flink_taskmanager_job_task_operator_<name>} for Prometheus). The Python operators register
 * theirs under the same kind of names ({@code abacus.operators}): {@code eventsParsed},
 * {@code deadLettered} in a {@code reason} group. The recording rules that give them stable
 * names are services/rules/records.yml.
 */
final class Metrics {
    /** Increment rows emitted by the fan-out ({@link Uniques}, {@link CustomerRows}). */
    static final String INCREMENTS_FANNED = "incrementsFanned";
    /** Seed rows taken into the uniqueness state ({@link Uniques}). */
    static final String SEED_ROWS_ABSORBED = "seedRowsAbsorbed";
    /** Count increments Cassandra acknowledged ({@link CounterSink}). */
    static final String INCREMENTS_WRITTEN = "incrementsWritten";

    private Metrics() {
    }
}
