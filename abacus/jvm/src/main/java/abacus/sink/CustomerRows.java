package abacus.sink;

import java.util.Map;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichFlatMapFunction;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.SimpleCounter;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.util.Collector;

/**
 * The customer job's increments: for each first delivery, one row per resolution with count
 * 1. Stateless, chained to the sink.
 *
 * <p>Rows as the job describes them ({@link RowSpec}). Input: company_id, customer_id,
 * statistic_id, each resolution's label (the contract's, computed in Python by counting).
 * Output: the customer store's key fields (company_id, customer_id, period, statistic_id,
 * bucket, resolution), count, then index_date (the label's date on rows of the indexed
 * resolution, null on others): the columns {@link CounterSink} is configured for.
 *
 * <p>Metric (its operator's group): {@code incrementsFanned}, the increment rows emitted.
 */
public final class CustomerRows extends RichFlatMapFunction<RowData, RowData> {
    private static final long serialVersionUID = 1L;

    private final RowSpec spec;
    private final int company, customer, statistic;
    private final int[] labels, out;
    private transient Counter fanned = new SimpleCounter();  // the operator's, once open

    public CustomerRows(RowSpec spec) {
        this.spec = spec;
        company = spec.in("company_id");
        customer = spec.in("customer_id");
        statistic = spec.in("statistic_id");
        labels = spec.labelColumns();
        out = spec.out("company_id", "customer_id", "period", "statistic_id", "bucket",
                "resolution", "count", "index_date");
    }

    /** The increments of {@code firsts} (rows as described above); {@code conf} as
     * {@link RowSpec#of} reads it. */
    public static DataStream<RowData> apply(DataStream<RowData> firsts,
            Map<String, String> conf, TypeInformation<RowData> outType) {
        return firsts
                .flatMap(new CustomerRows(RowSpec.of(conf)), outType)
                .name("customer-rows")
                .uid("customer-rows");
    }

    @Override
    public void open(OpenContext context) {
        fanned = getRuntimeContext().getMetricGroup()
                .counter(Metrics.INCREMENTS_FANNED);
    }

    @Override
    public void flatMap(RowData in, Collector<RowData> collector) {
        for (int r = 0; r < spec.resolutions(); r++) {
            StringData label = in.getString(labels[r]);
            String bucket = label.toString();
            collector.collect(spec.row(out, in.getString(company), in.getString(customer),
                    spec.period(r, bucket), in.getString(statistic), label, spec.text(r), 1L,
                    spec.indexDate(r, bucket)));
        }
        fanned.inc(spec.resolutions());
    }
}
