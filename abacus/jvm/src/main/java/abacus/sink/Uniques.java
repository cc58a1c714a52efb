package abacus.sink;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.MapState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.StateTtlConfig;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.api.java.tuple.Tuple3;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.table.data.ArrayData;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.util.Collector;

/**
 * The statistic job's fan-out and uniqueness check, one keyed operator: for each first
 * delivery of an event it emits one increment row per account key (every resolution's label
 * with every facet pair) with {@code count} 1 and {@code uniques} 1 when the customer is
 * counted for that key for the first time.
 *
 * <p>Input rows: company_id, statistic_id, customer_id, hour, day and month labels, facet
 * names, facet values (the contract's labels and pairs, computed in Python by counting).
 * Output rows: the account store's key fields (company_id, statistic_id, period, bucket,
 * resolution, facet, value), count, uniques, then the index date (the day label on hour
 * rows, null on others): the columns {@link CounterSink} is configured for.
 *
 * <p>State, keyed by (company, statistic, customer): per resolution, a map from bucket label
 * to the facet pairs the customer has been counted under in that bucket. One state read per
 * resolution per event, instead of one per key. The day is checked only for the pairs that
 * were first in their hour (a customer first in a day is first in that hour too: the hour
 * lies in the day), the month only for those first in their day. Entries expire after the
 * configured time-to-live (from their last update).
 */
public final class Uniques
        extends KeyedProcessFunction<Tuple3<String, String, String>, RowData, RowData> {
    private static final long serialVersionUID = 1L;
    private final long ttlMs;
    private final Resolutions resolutions;
    private transient List<MapState<String, List<String>>> seen;

    public Uniques(long ttlMs, Resolutions resolutions) {
        this.ttlMs = ttlMs;
        this.resolutions = resolutions;
    }

    /** The increments of {@code firsts} (rows as described above), keyed and checked;
     * {@code resolutions} as {@link Resolutions#parse} reads them. */
    public static DataStream<RowData> apply(DataStream<RowData> firsts, long ttlMs,
            String resolutions, TypeInformation<RowData> outType) {
        return firsts
                .keyBy(new ByCustomer(), Types.TUPLE(Types.STRING, Types.STRING, Types.STRING))
                .process(new Uniques(ttlMs, Resolutions.parse(resolutions)), outType)
                .name("uniques")
                .uid("uniques");
    }

    /** The key: (company_id, statistic_id, customer_id). */
    public static final class ByCustomer
            implements KeySelector<RowData, Tuple3<String, String, String>> {
        private static final long serialVersionUID = 1L;

        @Override
        public Tuple3<String, String, String> getKey(RowData row) {
            return Tuple3.of(row.getString(0).toString(), row.getString(1).toString(),
                    row.getString(2).toString());
        }
    }

    @Override
    public void open(OpenContext context) {
        StateTtlConfig ttl = StateTtlConfig.newBuilder(Duration.ofMillis(ttlMs))
                .setUpdateType(StateTtlConfig.UpdateType.OnCreateAndWrite)
                .setStateVisibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
                .build();
        seen = new ArrayList<>();
        for (int r = 0; r < resolutions.size(); r++) {
            MapStateDescriptor<String, List<String>> descriptor = new MapStateDescriptor<>(
                    "seen-" + resolutions.name(r), Types.STRING, Types.LIST(Types.STRING));
            descriptor.enableTimeToLive(ttl);
            seen.add(getRuntimeContext().getMapState(descriptor));
        }
    }

    @Override
    public void processElement(RowData in, Context context, Collector<RowData> out)
            throws Exception {
        ArrayData facets = in.getArray(6);
        ArrayData values = in.getArray(7);
        int n = facets.size();
        String[] pairs = new String[n];
        for (int i = 0; i < n; i++) {
            String facet = facets.getString(i).toString();
            // length-prefixed, so that no two (facet, value) pairs give the same string
            pairs[i] = facet.length() + ":" + facet + values.getString(i).toString();
        }
        boolean[] first = new boolean[n];
        java.util.Arrays.fill(first, true);  // hour: every pair is a candidate
        StringData company = in.getString(0);
        StringData statistic = in.getString(1);
        StringData day = in.getString(4);  // the index date: the day label
        for (int r = 0; r < resolutions.size(); r++) {
            StringData label = in.getString(3 + r);
            String bucket = label.toString();
            markFirsts(seen.get(r), bucket, pairs, first);
            StringData period = resolutions.period(r, bucket);
            StringData indexDate = r == 0 ? day : null;
            for (int i = 0; i < n; i++) {
                out.collect(GenericRowData.of(company, statistic, period, label,
                        resolutions.text(r), facets.getString(i), values.getString(i), 1L,
                        first[i] ? 1L : 0L, indexDate));
            }
        }
    }

    /** Clears first[i] for each candidate pair the customer already has in the bucket, and
     * records the others. */
    private static void markFirsts(MapState<String, List<String>> state, String bucket,
            String[] pairs, boolean[] first) throws Exception {
        boolean any = false;
        for (boolean f : first) {
            any |= f;
        }
        if (!any) {
            return;  // first nowhere at a finer resolution: first nowhere here
        }
        List<String> had = state.get(bucket);
        List<String> now = had == null ? new ArrayList<>() : new ArrayList<>(had);
        boolean added = false;
        for (int i = 0; i < pairs.length; i++) {
            if (!first[i]) {
                continue;
            }
            if (now.contains(pairs[i])) {
                first[i] = false;
            } else {
                now.add(pairs[i]);
                added = true;
            }
        }
        if (added) {
            state.put(bucket, now);
        }
    }
}
