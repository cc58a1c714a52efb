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
    private static final String[] RESOLUTIONS = {"hour", "day", "month"};

    private final int[] periodWidth;  // per resolution: the label's prefix that is the period
    private transient StringData[] resolutionText;

    public CustomerRows(int[] periodWidth) {
        this.periodWidth = periodWidth.clone();
    }

    /** The increments of {@code firsts} (rows as described above). */
    public static DataStream<RowData> apply(DataStream<RowData> firsts, int hourWidth,
            int dayWidth, int monthWidth, TypeInformation<RowData> outType) {
        return firsts
                .flatMap(new CustomerRows(new int[] {hourWidth, dayWidth, monthWidth}), outType)
                .name("customer-rows")
                .uid("customer-rows");
    }

    @Override
    public void flatMap(RowData in, Collector<RowData> out) {
        if (resolutionText == null) {
            resolutionText = new StringData[RESOLUTIONS.length];
            for (int r = 0; r < RESOLUTIONS.length; r++) {
                resolutionText[r] = StringData.fromString(RESOLUTIONS[r]);
            }
        }
        StringData day = in.getString(4);
        for (int r = 0; r < RESOLUTIONS.length; r++) {
            StringData label = in.getString(3 + r);
            StringData period =
                    StringData.fromString(label.toString().substring(0, periodWidth[r]));
            out.collect(GenericRowData.of(in.getString(0), in.getString(1), period,
                    in.getString(2), label, resolutionText[r], 1L, r == 0 ? day : null));
        }
    }
}
