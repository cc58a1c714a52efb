package abacus.sink;

import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.MapState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.StateTtlConfig;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.api.java.tuple.Tuple3;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.functions.co.KeyedCoProcessFunction;
import org.apache.flink.table.data.ArrayData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * The statistic job's fan-out and uniqueness check, one keyed operator: for each first
 * delivery of an event it emits one increment row per account key (every resolution's label
 * with every facet pair) with {@code count} 1 and {@code uniques} 1 when the customer is
 * counted for that key for the first time.
 *
 * <p>Rows as the job describes them ({@link RowSpec}). Input: company_id, statistic_id,
 * customer_id, each resolution's label, facets, facet_values (the contract's labels and
 * pairs, computed in Python by counting). Output: the account store's key fields (company_id,
 * statistic_id, period, bucket, resolution, facet, value), count, uniques, then index_date
 * (the label's date on rows of the indexed resolution, null on others): the columns {@link
 * CounterSink} is configured for.
 *
 * <p>State, keyed by (company, statistic, customer): per resolution, a map from bucket label
 * to the facet pairs the customer has been counted under in that bucket. One state read per
 * resolution per event, instead of one per key. Resolutions are checked finest first: the
 * day is checked only for the pairs that were first in their hour (a customer first in a day
 * is first in that hour too: the hour lies in the day), the month only for those first in
 * their day. Entries expire after the configured time-to-live (from their last update).
 *
 * <p>Its second input are seed rows (issue 14's hand-over: {@code counting.seeds}, one row
 * per (company, statistic, customer, resolution, bucket) with the (facet, value) pairs a
 * seed marks there, the coarser resolutions' rows included, as Python computes them): each
 * pair is added to the customer's state as if counted, and nothing is emitted. Seeds are
 * absorbed before the events they cover (the hand-over waits for it); a seed cannot take
 * back a unique already counted.
 *
 * <p>This is the contract's uniqueness written again in Java (for speed: SEMANTICS.md §5 is
 * {@code counting.Recount} in Python, seeds {@code Recount.absorb}); {@code UniquesTest}
 * feeds it the golden vectors that {@code abacus.golden} generates from counting and
 * requires the same counts.
 *
 * <p>Metrics (its operator's group, exported by the job's reporter): {@code
 * incrementsFanned}, the increment rows emitted (one per account key of each first
 * delivery), and {@code seedRowsAbsorbed}, the seed rows taken into the state.
 */
public final class Uniques
        extends KeyedCoProcessFunction<Tuple3<String, String, String>, RowData, Row, RowData> {
    private static final long serialVersionUID = 1L;
    private final long ttlMs;
    private final Check check;
    private transient List<MapState<String, List<String>>> seen;
    private transient Seen state;  // the current key's, over `seen`
    private transient Counter fanned, absorbed;

    public Uniques(long ttlMs, RowSpec spec) {
        this.ttlMs = ttlMs;
        this.check = new Check(spec);
    }

    /** The increments of {@code firsts} (rows as described above), keyed and checked, with
     * the {@code seeds} absorbed; {@code conf} as {@link RowSpec#of} reads it. */
    public static DataStream<RowData> apply(DataStream<RowData> firsts, DataStream<Row> seeds,
            long ttlMs, Map<String, String> conf, TypeInformation<RowData> outType) {
        RowSpec spec = RowSpec.of(conf);
        TypeInformation<Tuple3<String, String, String>> key =
                Types.TUPLE(Types.STRING, Types.STRING, Types.STRING);
        return firsts
                .keyBy(new ByCustomer(spec), key)
                .connect(seeds.keyBy(new SeedByCustomer(spec), key))
                .process(new Uniques(ttlMs, spec), outType)
                .name("uniques")
                .uid("uniques");
    }

    /** A seed row's key: (company_id, statistic_id, customer_id). */
    public static final class SeedByCustomer
            implements KeySelector<Row, Tuple3<String, String, String>> {
        private static final long serialVersionUID = 1L;
        private final int company, statistic, customer;

        SeedByCustomer(RowSpec spec) {
            company = spec.seedIn("company_id");
            statistic = spec.seedIn("statistic_id");
            customer = spec.seedIn("customer_id");
        }

        @Override
        public Tuple3<String, String, String> getKey(Row row) {
            return Tuple3.of((String) row.getField(company), (String) row.getField(statistic),
                    (String) row.getField(customer));
        }
    }

    /** The key: (company_id, statistic_id, customer_id). */
    public static final class ByCustomer
            implements KeySelector<RowData, Tuple3<String, String, String>> {
        private static final long serialVersionUID = 1L;
        private final int company, statistic, customer;

        ByCustomer(RowSpec spec) {
            company = spec.in("company_id");
            statistic = spec.in("statistic_id");
            customer = spec.in("customer_id");
        }

        @Override
        public Tuple3<String, String, String> getKey(RowData row) {
            return Tuple3.of(row.getString(company).toString(),
                    row.getString(statistic).toString(), row.getString(customer).toString());
        }
    }

    @Override
    public void open(OpenContext context) {
        MetricGroup metrics = getRuntimeContext().getMetricGroup();
        fanned = metrics.counter(Metrics.INCREMENTS_FANNED);
        absorbed = metrics.counter(Metrics.SEED_ROWS_ABSORBED);
        StateTtlConfig ttl = StateTtlConfig.newBuilder(Duration.ofMillis(ttlMs))
                .setUpdateType(StateTtlConfig.UpdateType.OnCreateAndWrite)
                .setStateVisibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
                .build();
        seen = new ArrayList<>();
        for (int r = 0; r < check.spec.resolutions(); r++) {
            MapStateDescriptor<String, List<String>> descriptor = new MapStateDescriptor<>(
                    "seen-" + check.spec.name(r), Types.STRING, Types.LIST(Types.STRING));
            descriptor.enableTimeToLive(ttl);
            seen.add(getRuntimeContext().getMapState(descriptor));
        }
        state = new Seen() {
            @Override
            public List<String> get(int resolution, String bucket) throws Exception {
                return seen.get(resolution).get(bucket);
            }

            @Override
            public void put(int resolution, String bucket, List<String> pairs)
                    throws Exception {
                seen.get(resolution).put(bucket, pairs);
            }
        };
    }

    @Override
    public void processElement1(RowData in, Context context, Collector<RowData> out)
            throws Exception {
        fanned.inc(check.process(in, state, out));
    }

    @Override
    public void processElement2(Row seed, Context context, Collector<RowData> out)
            throws Exception {
        check.absorb(seed, state);
        absorbed.inc();
    }

    /** One customer's state: per resolution, bucket label -> the pairs counted there. */
    interface Seen {
        List<String> get(int resolution, String bucket) throws Exception;

        void put(int resolution, String bucket, List<String> pairs) throws Exception;
    }

    /** The fan-out and the check, on any {@link Seen} (Flink state, or a map in tests). */
    static final class Check implements java.io.Serializable {
        private static final long serialVersionUID = 1L;
        final RowSpec spec;
        private final int company, statistic, facetsColumn, valuesColumn;
        private final int[] labels, out;
        // the seed rows' columns, -1 without seeds
        private final int seedResolution, seedBucket, seedFacets, seedValues;

        Check(RowSpec spec) {
            this.spec = spec;
            company = spec.in("company_id");
            statistic = spec.in("statistic_id");
            spec.in("customer_id");  // the key: required
            facetsColumn = spec.in("facets");
            valuesColumn = spec.in("facet_values");
            labels = spec.labelColumns();
            out = spec.out("company_id", "statistic_id", "period", "bucket", "resolution",
                    "facet", "value", "count", "uniques", "index_date");
            seedResolution = spec.seedIn("resolution");
            seedBucket = spec.seedIn("bucket");
            seedFacets = spec.seedIn("facets");
            seedValues = spec.seedIn("facet_values");
        }

        /** A pair as the state holds it: length-prefixed, so that no two (facet, value)
         * pairs give the same string. */
        static String pair(String facet, String value) {
            return facet.length() + ":" + facet + value;
        }

        /** A seed row: its pairs added to the customer's state in its bucket, as counted. */
        void absorb(Row seed, Seen seen) throws Exception {
            int r = spec.resolution((String) seed.getField(seedResolution));
            String bucket = (String) seed.getField(seedBucket);
            Object[] facets = (Object[]) seed.getField(seedFacets);
            Object[] values = (Object[]) seed.getField(seedValues);
            if (facets.length != values.length) {
                throw new IllegalArgumentException("a seed row with " + facets.length
                        + " facets and " + values.length + " values");
            }
            List<String> had = seen.get(r, bucket);
            List<String> now = had == null ? new ArrayList<>() : new ArrayList<>(had);
            boolean added = false;
            for (int i = 0; i < facets.length; i++) {
                String p = pair((String) facets[i], (String) values[i]);
                if (!now.contains(p)) {
                    now.add(p);
                    added = true;
                }
            }
            if (added) {
                seen.put(r, bucket, now);
            }
        }

        /** Emits the increment rows of a first delivery; returns how many. */
        int process(RowData in, Seen seen, Collector<RowData> collector) throws Exception {
            ArrayData facets = in.getArray(facetsColumn);
            ArrayData values = in.getArray(valuesColumn);
            int n = facets.size();
            String[] pairs = new String[n];
            for (int i = 0; i < n; i++) {
                pairs[i] = pair(facets.getString(i).toString(), values.getString(i).toString());
            }
            boolean[] first = new boolean[n];
            Arrays.fill(first, true);  // finest resolution: every pair is a candidate
            StringData companyId = in.getString(company);
            StringData statisticId = in.getString(statistic);
            for (int r = 0; r < spec.resolutions(); r++) {
                StringData label = in.getString(labels[r]);
                String bucket = label.toString();
                markFirsts(seen, r, bucket, pairs, first);
                StringData period = spec.period(r, bucket);
                StringData indexDate = spec.indexDate(r, bucket);
                for (int i = 0; i < n; i++) {
                    collector.collect(spec.row(out, companyId, statisticId, period, label,
                            spec.text(r), facets.getString(i), values.getString(i), 1L,
                            first[i] ? 1L : 0L, indexDate));
                }
            }
            return n * spec.resolutions();
        }

        /** Clears first[i] for each candidate pair the customer already has in the bucket,
         * and records the others. */
        private static void markFirsts(Seen seen, int r, String bucket, String[] pairs,
                boolean[] first) throws Exception {
            boolean any = false;
            for (boolean f : first) {
                any |= f;
            }
            if (!any) {
                return;  // first nowhere at a finer resolution: first nowhere here
            }
            List<String> had = seen.get(r, bucket);
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
                seen.put(r, bucket, now);
            }
        }
    }
}
