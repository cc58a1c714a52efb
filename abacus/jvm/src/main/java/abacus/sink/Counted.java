package abacus.sink;

import java.io.IOException;
import java.nio.file.Path;
import org.apache.flink.table.functions.FunctionContext;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * {@code counted(n)}: adds the n count increments of a first delivery to the {@code fanned}
 * drain counter ({@code abacus.progress}) and returns TRUE. The jobs' SQL filters on it right
 * after the keep-first by event_id, so each event counts once. In the JVM, so that the SQL
 * part of a job calls no Python (a Python call per event, and the embedded interpreter's lock
 * shared with the job's parsing).
 *
 * <p>The counter is per attempt ({@link Progress}): a job restored from a checkpoint fans out
 * again what came after it, and the drain compares only the latest attempt's counters.
 */
public final class Counted extends ScalarFunction {
    private static final long serialVersionUID = 1L;

    private final String progressDir;
    private transient Progress fanned;

    public Counted(String progressDir) {
        this.progressDir = progressDir;
    }

    @Override
    public void open(FunctionContext context) throws IOException {
        int attempt = 0, subtask = 0;
        try {
            attempt = context.getTaskInfo().getAttemptNumber();
            subtask = context.getTaskInfo().getIndexOfThisSubtask();
        } catch (RuntimeException e) {  // no task (the planner's constant folding): unused
        }
        fanned = new Progress(Path.of(progressDir), "fanned", attempt, subtask);
    }

    public boolean eval(Integer n) {  // nullable: SQL's CARDINALITY(...) is
        fanned.add(n == null ? 0 : n);
        return true;
    }

    @Override
    public boolean isDeterministic() {
        return false;  // never folded away or moved: it must run once per first delivery
    }

    @Override
    public void close() throws IOException {
        if (fanned != null) {
            fanned.close();
        }
    }
}
