package abacus.sink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import com.fasterxml.jackson.databind.JsonNode;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.apache.flink.table.data.RowData;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.junit.jupiter.api.Test;

/**
 * The Java operators against counting: the first deliveries of the golden corpus through
 * {@link Uniques} (with a map for Flink's keyed state) and {@link CustomerRows} give, summed
 * per counter key, exactly the counts and uniques of {@code counting.Recount}, with each
 * key's period and index date as storage defines them; and with seed records absorbed first,
 * the counts of {@code Recount} with the same seeds absorbed.
 */
class UniquesTest {

    /** Rows (plain values of the output columns) summed per key (every column but the
     * measures): key -> measures. */
    static Map<List<Object>, List<Long>> sums(List<List<Object>> rows, List<String> output,
            List<String> measures) {
        Map<List<Object>, List<Long>> sums = new LinkedHashMap<>();
        for (List<Object> fields : rows) {
            List<Object> key = new ArrayList<>();
            List<Long> values = new ArrayList<>();
            for (int i = 0; i < output.size(); i++) {
                if (measures.contains(output.get(i))) {
                    values.add((Long) fields.get(i));
                } else {
                    key.add(fields.get(i));
                }
            }
            List<Long> sum = sums.computeIfAbsent(key, k -> new ArrayList<>(values.size()));
            for (int i = 0; i < values.size(); i++) {
                if (sum.size() <= i) {
                    sum.add(0L);
                }
                sum.set(i, sum.get(i) + values.get(i));
            }
        }
        return sums;
    }

    /** The operator's output rows summed per key. */
    static Map<List<Object>, List<Long>> got(List<RowData> rows, JsonNode vectors) {
        List<List<Object>> plain = new ArrayList<>();
        rows.forEach(row -> plain.add(Golden.plain(row)));
        return sums(plain, output(vectors), measures(vectors));
    }

    /** The expected rows (one per key) the same way. */
    static Map<List<Object>, List<Long>> expected(JsonNode vectors) {
        List<List<Object>> plain = new ArrayList<>();
        vectors.get("expected").forEach(row -> plain.add(Golden.plain(row)));
        return sums(plain, output(vectors), measures(vectors));
    }

    static List<String> output(JsonNode vectors) {
        return List.of(vectors.get("conf").get("output").asText().split(","));
    }

    static List<String> measures(JsonNode vectors) {
        List<String> out = new ArrayList<>();
        vectors.get("measures").forEach(m -> out.add(m.asText()));
        return out;
    }

    /** Every input row through Uniques, each customer's state in its own maps. */
    static List<RowData> uniques(Map<String, String> conf, JsonNode rows) throws Exception {
        return uniques(conf, null, rows);
    }

    /** The seed rows (none when null) absorbed by Uniques, then every input row through it,
     * each customer's state in its own maps. */
    static List<RowData> uniques(Map<String, String> conf, JsonNode seeds, JsonNode rows)
            throws Exception {
        RowSpec spec = RowSpec.of(conf);
        Uniques.Check check = new Uniques.Check(spec);
        Uniques.ByCustomer by = new Uniques.ByCustomer(spec);
        Uniques.SeedByCustomer seedBy = new Uniques.SeedByCustomer(spec);
        Map<Object, Map<String, List<String>>> state = new HashMap<>();
        if (seeds != null) {
            for (JsonNode values : seeds) {
                Row seed = seedRow(values);
                check.absorb(seed, seen(state, seedBy.getKey(seed)));
            }
        }
        List<RowData> out = new ArrayList<>();
        Collector<RowData> collector = collector(out);
        for (JsonNode values : rows) {
            RowData in = Golden.row(values);
            int before = out.size();
            int fanned = check.process(in, seen(state, by.getKey(in)), collector);
            // what its incrementsFanned metric adds: the rows it emitted
            assertEquals(out.size() - before, fanned, "increment rows emitted vs counted");
        }
        return out;
    }

    /** One customer's state, in `state`. */
    static Uniques.Seen seen(Map<Object, Map<String, List<String>>> state, Object customer) {
        return new Uniques.Seen() {
            @Override
            public List<String> get(int resolution, String bucket) {
                return state.computeIfAbsent(customer, k -> new HashMap<>())
                        .get(resolution + "/" + bucket);
            }

            @Override
            public void put(int resolution, String bucket, List<String> pairs) {
                state.computeIfAbsent(customer, k -> new HashMap<>())
                        .put(resolution + "/" + bucket, pairs);
            }
        };
    }

    /** A seed row as the job's Python operator hands it over: strings and string arrays. */
    static Row seedRow(JsonNode values) {
        Object[] fields = new Object[values.size()];
        for (int i = 0; i < fields.length; i++) {
            JsonNode value = values.get(i);
            if (value.isArray()) {
                String[] items = new String[value.size()];
                for (int j = 0; j < items.length; j++) {
                    items[j] = value.get(j).asText();
                }
                fields[i] = items;
            } else {
                fields[i] = value.asText();
            }
        }
        return Row.of(fields);
    }

    static Collector<RowData> collector(List<RowData> out) {
        return new Collector<>() {
            @Override
            public void collect(RowData record) {
                out.add(record);
            }

            @Override
            public void close() {
            }
        };
    }

    @Test
    void uniquesCountsAsRecount() throws Exception {
        JsonNode vectors = Golden.load("operators.json").get("statistic");
        Map<String, String> conf = Golden.conf(vectors.get("conf"));
        List<RowData> out = uniques(conf, vectors.get("rows"));
        Golden.assertSameMap(expected(vectors), got(out, vectors),
                "account counters (count, uniques)");
    }

    @Test
    void customerRowsCountAsRecount() throws Exception {
        JsonNode vectors = Golden.load("operators.json").get("customer");
        Map<String, String> conf = Golden.conf(vectors.get("conf"));
        CustomerRows rows = new CustomerRows(RowSpec.of(conf));
        List<RowData> out = new ArrayList<>();
        Collector<RowData> collector = collector(out);
        for (JsonNode values : vectors.get("rows")) {
            rows.flatMap(Golden.row(values), collector);
        }
        Golden.assertSameMap(expected(vectors), got(out, vectors), "customer counters (count)");
    }

    /** Seeds absorbed first: the counts of Recount with the same seeds absorbed (which
     * differ from the counts without: abacus.golden checks that). */
    @Test
    void uniquesAbsorbsSeedsAsRecount() throws Exception {
        JsonNode vectors = Golden.load("operators.json").get("statistic_seeded");
        Map<String, String> conf = Golden.conf(vectors.get("conf"));
        List<RowData> out = uniques(conf, vectors.get("seeds"), vectors.get("rows"));
        Golden.assertSameMap(expected(vectors), got(out, vectors),
                "account counters with seeds absorbed (count, uniques)");
    }

    /** Columns are found by name: the input's in another order count the same. */
    @Test
    void columnsAreTakenByName() throws Exception {
        JsonNode vectors = Golden.load("operators.json").get("statistic");
        Map<String, String> conf = Golden.conf(vectors.get("conf"));
        List<String> input = new ArrayList<>(List.of(conf.get("input").split(",")));
        int n = input.size();
        List<String> reversed = new ArrayList<>(input);
        java.util.Collections.reverse(reversed);
        Map<String, String> turned = new HashMap<>(conf);
        turned.put("input", String.join(",", reversed));
        com.fasterxml.jackson.databind.node.ArrayNode rows =
                com.fasterxml.jackson.databind.node.JsonNodeFactory.instance.arrayNode();
        for (JsonNode row : vectors.get("rows")) {
            com.fasterxml.jackson.databind.node.ArrayNode back = rows.addArray();
            for (int i = n - 1; i >= 0; i--) {
                back.add(row.get(i));
            }
        }
        Golden.assertSameMap(expected(vectors), got(uniques(turned, rows), vectors),
                "account counters, input columns reversed");
    }

    @Test
    void anOutputColumnItCannotFillIsRefused() throws Exception {
        JsonNode vectors = Golden.load("operators.json").get("customer");
        Map<String, String> conf = Golden.conf(vectors.get("conf"));
        conf.put("output", conf.get("output") + ",uniques");
        assertThrows(IllegalArgumentException.class, () -> new CustomerRows(RowSpec.of(conf)));
        conf.put("indexed", "week");
        assertThrows(IllegalArgumentException.class, () -> RowSpec.of(conf));
    }
}
