package abacus.sink;

import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.util.Collector;

/**
 * The customer job's increments: for each first delivery, one row per resolution with count
 * 1. Stateless, chained to the sink.
 *
 * <p>Input rows: company_id, customer_id, statistic_id, hour, day and month labels (the
 * contract's, computed in Python by counting). Output rows: the customer store's key fields
 * (company_id, customer_id, period, statistic_id, bucket, resolution), count, then the index
 * date (the day label on hour rows, null on others): the columns {@link CounterSink} is
 * configured for.
 */
public final class CustomerRows implements FlatMapFunction<RowData, RowData> {
    private static final long serialVersionUID = 1L;

    private final Resolutions resolutions;

    public CustomerRows(Resolutions resolutions) {
        this.resolutions = resolutions;
    }

    /** The increments of {@code firsts} (rows as described above); {@code resolutions} as
     * {@link Resolutions#parse} reads them. */
    public static DataStream<RowData> apply(DataStream<RowData> firsts, String resolutions,
            TypeInformation<RowData> outType) {
        return firsts
                .flatMap(new CustomerRows(Resolutions.parse(resolutions)), outType)
                .name("customer-rows")
                .uid("customer-rows");
    }

    @Override
    public void flatMap(RowData in, Collector<RowData> out) {
        StringData day = in.getString(4);  // the index date: the day label
        for (int r = 0; r < resolutions.size(); r++) {
            StringData label = in.getString(3 + r);
            out.collect(GenericRowData.of(in.getString(0), in.getString(1),
                    resolutions.period(r, label.toString()), in.getString(2), label,
                    resolutions.text(r), 1L, r == 0 ? day : null));
        }
    }
}
