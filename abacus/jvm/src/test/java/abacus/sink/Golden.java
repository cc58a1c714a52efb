package abacus.sink;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import org.apache.flink.table.data.ArrayData;
import org.apache.flink.table.data.GenericArrayData;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;

/**
 * The golden vectors {@code abacus.golden} generates from Python (counting, storage,
 * abacus.progress) into the directory the system property {@code golden.dir} names ({@code
 * make test} writes them, then runs {@code mvn test}), and conversions between their JSON and
 * Flink's rows.
 */
final class Golden {
    private static final ObjectMapper JSON = new ObjectMapper();

    private Golden() {
    }

    static Path dir() {
        return Path.of(System.getProperty("golden.dir", "target/golden"));
    }

    static JsonNode load(String name) throws IOException {
        Path path = dir().resolve(name);
        if (!Files.isRegularFile(path)) {
            throw new IllegalStateException("no golden vectors at " + path
                    + ": `python -m abacus.golden " + dir() + "` writes them (make test does)");
        }
        return JSON.readTree(path.toFile());
    }

    static Map<String, String> conf(JsonNode node) {
        Map<String, String> conf = new HashMap<>();
        for (Iterator<Map.Entry<String, JsonNode>> it = node.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            conf.put(e.getKey(), e.getValue().asText());
        }
        return conf;
    }

    /** A row of strings, longs, arrays of strings and nulls, as Flink's internal RowData. */
    static GenericRowData row(JsonNode values) {
        GenericRowData row = new GenericRowData(values.size());
        for (int i = 0; i < values.size(); i++) {
            row.setField(i, internal(values.get(i)));
        }
        return row;
    }

    private static Object internal(JsonNode value) {
        if (value.isNull()) {
            return null;
        }
        if (value.isTextual()) {
            return StringData.fromString(value.asText());
        }
        if (value.isIntegralNumber()) {
            return value.asLong();
        }
        if (value.isArray()) {
            Object[] items = new Object[value.size()];
            for (int i = 0; i < items.length; i++) {
                items[i] = internal(value.get(i));
            }
            return new GenericArrayData(items);
        }
        throw new IllegalArgumentException("no row value for " + value);
    }

    /** A JSON array of strings, numbers and nulls as plain Java values (Long, String). */
    static List<Object> plain(JsonNode values) {
        List<Object> out = new ArrayList<>(values.size());
        for (JsonNode value : values) {
            out.add(value.isNull() ? null : value.isIntegralNumber() ? (Object) value.asLong()
                    : value.asText());
        }
        return out;
    }

    /** An output row's fields as plain Java values (Long, String). */
    static List<Object> plain(RowData row) {
        GenericRowData generic = (GenericRowData) row;
        List<Object> out = new ArrayList<>(generic.getArity());
        for (int i = 0; i < generic.getArity(); i++) {
            Object field = generic.getField(i);
            if (field instanceof StringData || field instanceof ArrayData) {
                out.add(field.toString());
            } else if (field instanceof Number n) {
                out.add(n.longValue());
            } else {
                out.add(field);
            }
        }
        return out;
    }

    /** Values (Object[] of Long and String) as plain Java values, for comparisons. */
    static List<Object> plain(Object[] values) {
        List<Object> out = new ArrayList<>(values.length);
        for (Object value : values) {
            out.add(value instanceof Number n ? (Object) n.longValue() : value);
        }
        return out;
    }

    /**
     * Fails unless the maps are equal, naming how many keys differ and the first few (a
     * whole map of thousands of counters is no message).
     */
    static <K, V> void assertSameMap(Map<K, V> expected, Map<K, V> actual, String what) {
        List<String> differ = new ArrayList<>();
        int n = 0;
        for (Map.Entry<K, V> e : expected.entrySet()) {
            if (!java.util.Objects.equals(e.getValue(), actual.get(e.getKey()))) {
                n++;
                if (differ.size() < 5) {
                    differ.add(e.getKey() + ": expected " + e.getValue() + ", got "
                            + actual.get(e.getKey()));
                }
            }
        }
        for (Map.Entry<K, V> e : actual.entrySet()) {
            if (!expected.containsKey(e.getKey())) {
                n++;
                if (differ.size() < 5) {
                    differ.add(e.getKey() + ": not expected, got " + e.getValue());
                }
            }
        }
        if (n > 0) {
            org.junit.jupiter.api.Assertions.fail(what + ": " + n + " of " + expected.size()
                    + " differ from Python's, e.g.\n  " + String.join("\n  ", differ));
        }
    }

    /** Fails unless the lists are equal, naming the first position where they differ. */
    static <T> void assertSameList(List<T> expected, List<T> actual, String what) {
        for (int i = 0; i < Math.min(expected.size(), actual.size()); i++) {
            if (!java.util.Objects.equals(expected.get(i), actual.get(i))) {
                org.junit.jupiter.api.Assertions.fail(what + ": at " + i + " expected "
                        + expected.get(i) + ", got " + actual.get(i));
            }
        }
        org.junit.jupiter.api.Assertions.assertEquals(expected.size(), actual.size(),
                what + ": length");
    }

    static List<Object[]> arrays(JsonNode rows) {
        List<Object[]> out = new ArrayList<>(rows.size());
        for (JsonNode row : rows) {
            out.add(plain(row).toArray());
        }
        return out;
    }
}
