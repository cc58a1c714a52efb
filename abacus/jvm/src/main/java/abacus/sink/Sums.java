package abacus.sink;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.zip.CRC32;
import org.apache.flink.table.data.RowData;

/**
 * The pure part of {@link CounterSink}: the increments summed per counter key, the key index
 * entries not written yet, and the rules that turn them into statement values and batches.
 * No I/O, so {@code CounterSinkTest} checks each rule against the golden vectors that {@code
 * abacus.golden} generates from Python ({@code storage.counters}: {@code shard_of}, {@code
 * batches}, the values a count store binds).
 *
 * <p>Rows in: {@code keys} key fields (STRING), {@code measures} increments (BIGINT), then
 * the index date (STRING, null when the row needs no index entry). Values out: a count
 * update's are its measures then its key fields (the UPDATE's order); an index entry's are
 * (date, shard, the key fields at {@code indexFields}), its shard the CRC-32 of the UTF-8 of
 * its fields at {@code shardFields} (positions among the index fields) joined by U+001F, mod
 * {@code shards}.
 */
final class Sums {
    static final int INDEX_CACHE_MAX = 200_000;
    static final char SHARD_SEPARATOR = '\u001f';

    private final int keys, measures, shards;
    private final int[] indexFields, shardFields;
    private HashMap<Key, long[]> sums = new HashMap<>();
    private final LinkedHashMap<Key, Boolean> newIndex = new LinkedHashMap<>();
    private final Set<Key> indexed = new HashSet<>();

    Sums(int keys, int measures, int[] indexFields, int[] shardFields, int shards) {
        this.keys = keys;
        this.measures = measures;
        this.indexFields = indexFields;
        this.shardFields = shardFields;
        this.shards = shards;
    }

    /** Adds one row's increments to its key's sums, and its index entry if it is new. */
    void add(RowData row) {
        String[] fields = new String[keys];
        for (int i = 0; i < keys; i++) {
            fields[i] = row.getString(i).toString();
        }
        Key key = new Key(fields);
        long[] sum = sums.get(key);
        if (sum == null) {
            sums.put(key, sum = new long[measures]);
        }
        for (int i = 0; i < measures; i++) {
            sum[i] += row.getLong(keys + i);
        }
        if (!row.isNullAt(keys + measures)) {
            String[] entry = new String[indexFields.length + 1];
            entry[0] = row.getString(keys + measures).toString();
            for (int i = 0; i < indexFields.length; i++) {
                entry[i + 1] = fields[indexFields[i]];
            }
            Key indexKey = new Key(entry);
            if (!indexed.contains(indexKey)) {
                newIndex.put(indexKey, Boolean.TRUE);
            }
        }
    }

    /** The distinct keys summed since the last {@link #takeCounts}. */
    int size() {
        return sums.size();
    }

    /** The count updates' values (measures, then key fields), and the sums start again. */
    List<Object[]> takeCounts() {
        List<Object[]> counts = new ArrayList<>(sums.size());
        for (Map.Entry<Key, long[]> e : sums.entrySet()) {
            Object[] values = new Object[measures + keys];
            for (int i = 0; i < measures; i++) {
                values[i] = e.getValue()[i];
            }
            System.arraycopy(e.getKey().fields, 0, values, measures, keys);
            counts.add(values);
        }
        sums = new HashMap<>();
        return counts;
    }

    /**
     * The new index entries' values (date, shard, fields), in the order first seen; they are
     * then taken as written (a failed index write fails the job).
     */
    List<Object[]> takeIndex() {
        List<Object[]> entries = new ArrayList<>(newIndex.size());
        for (Key entry : newIndex.keySet()) {
            Object[] values = new Object[entry.fields.length + 1];
            values[0] = entry.fields[0];
            values[1] = shard(Arrays.copyOfRange(entry.fields, 1, entry.fields.length));
            System.arraycopy(entry.fields, 1, values, 2, entry.fields.length - 1);
            entries.add(values);
        }
        if (indexed.size() > INDEX_CACHE_MAX) {
            indexed.clear();
        }
        indexed.addAll(newIndex.keySet());
        newIndex.clear();
        return entries;
    }

    /** The shard of an index entry's fields (storage.counters.shard_of of those at
     * {@code shardFields}). */
    int shard(String[] fields) {
        StringBuilder text = new StringBuilder();
        for (int i = 0; i < shardFields.length; i++) {
            if (i > 0) {
                text.append(SHARD_SEPARATOR);
            }
            text.append(fields[shardFields[i]]);
        }
        CRC32 crc = new CRC32();
        crc.update(text.toString().getBytes(StandardCharsets.UTF_8));
        return (int) (crc.getValue() % shards);
    }

    /**
     * Rows grouped into batches (storage.counters.batches): by partition (the values from
     * {@code partitionStart} to {@code partitionEnd}), partitions in the order first seen;
     * a batch holds up to {@code batchRows} rows spanning up to {@code batchPartitions}
     * partitions, a partition's rows staying together when they fit.
     */
    static List<List<Object[]>> batches(List<Object[]> rows, int partitionStart,
            int partitionEnd, int batchRows, int batchPartitions) {
        LinkedHashMap<List<Object>, List<Object[]>> partitions = new LinkedHashMap<>();
        for (Object[] row : rows) {
            partitions.computeIfAbsent(Arrays.asList(row).subList(partitionStart, partitionEnd),
                    k -> new ArrayList<>()).add(row);
        }
        List<List<Object[]>> out = new ArrayList<>();
        List<Object[]> pending = new ArrayList<>();
        int spanned = 0;
        for (List<Object[]> partition : partitions.values()) {
            for (int i = 0; i < partition.size(); i += batchRows) {
                List<Object[]> chunk = partition.subList(i, Math.min(partition.size(), i + batchRows));
                if (pending.size() + chunk.size() > batchRows || spanned >= batchPartitions) {
                    if (!pending.isEmpty()) {
                        out.add(pending);
                    }
                    pending = new ArrayList<>();
                    spanned = 0;
                }
                pending.addAll(chunk);
                spanned++;
            }
        }
        if (!pending.isEmpty()) {
            out.add(pending);
        }
        return out;
    }

    /**
     * A key: its fields, compared by value. The hash mixes each field's (a polynomial hash of
     * fields that are themselves polynomial hashes of similar strings, like Arrays.hashCode,
     * collides often enough here to turn HashMap bins into trees).
     */
    private static final class Key {
        final String[] fields;
        final int hash;

        Key(String[] fields) {
            this.fields = fields;
            int h = fields.length;
            for (String field : fields) {
                h = mix(h + field.hashCode());
            }
            this.hash = h;
        }

        private static int mix(int h) {  // MurmurHash3's finalizer
            h ^= h >>> 16;
            h *= 0x85ebca6b;
            h ^= h >>> 13;
            h *= 0xc2b2ae35;
            return h ^ (h >>> 16);
        }

        @Override
        public int hashCode() {
            return hash;
        }

        @Override
        public boolean equals(Object other) {
            return other instanceof Key && Arrays.equals(fields, ((Key) other).fields);
        }
    }
}
