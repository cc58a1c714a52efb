package abacus.sink;

import static org.junit.jupiter.api.Assertions.assertEquals;

import com.fasterxml.jackson.databind.JsonNode;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/**
 * The counter sink's pure part ({@link Sums}) against storage: the values its writes bind
 * (count updates, index entries and their shard) are those a count store binds for the same
 * counters, the shard is {@code storage.counters.shard_of}, and the batches are {@code
 * storage.counters.batches}.
 */
class SumsTest {

    private static Map<List<Object>, Integer> counted(List<Object[]> rows) {
        Map<List<Object>, Integer> out = new HashMap<>();
        for (Object[] row : rows) {
            out.merge(Golden.plain(row), 1, Integer::sum);
        }
        return out;
    }

    private static void sumsAsStorage(String kind) throws Exception {
        JsonNode vectors = Golden.load("sink.json").get(kind);
        Sums sums = CounterSink.sums(Golden.conf(vectors.get("conf")));
        for (JsonNode row : vectors.get("rows")) {
            sums.add(Golden.row(row));
        }
        Golden.assertSameMap(counted(Golden.arrays(vectors.get("counts"))),
                counted(sums.takeCounts()), kind + " count updates");
        List<List<Object>> index = new ArrayList<>();
        for (Object[] entry : sums.takeIndex()) {
            index.add(Golden.plain(entry));
        }
        List<List<Object>> expected = new ArrayList<>();
        for (Object[] entry : Golden.arrays(vectors.get("index"))) {
            expected.add(Golden.plain(entry));
        }
        Golden.assertSameList(expected, index, kind + " index entries (date, shard, fields)");
        // written once: the same rows again sum anew, and need no index entry
        for (JsonNode row : vectors.get("rows")) {
            sums.add(Golden.row(row));
        }
        Golden.assertSameMap(counted(Golden.arrays(vectors.get("counts"))),
                counted(sums.takeCounts()), kind + " count updates, summed again");
        assertEquals(List.of(), sums.takeIndex());
    }

    @Test
    void accountSumsAsStorage() throws Exception {
        sumsAsStorage("statistic");
    }

    @Test
    void customerSumsAsStorage() throws Exception {
        sumsAsStorage("customer");
    }

    @Test
    void shardIsStoragesShardOf() throws Exception {
        JsonNode vectors = Golden.load("sink.json").get("shards");
        int shards = vectors.get("shards").asInt();
        for (JsonNode c : vectors.get("cases")) {
            List<Object> fields = Golden.plain(c.get("fields"));
            int[] all = new int[fields.size()];
            for (int i = 0; i < all.length; i++) {
                all[i] = i;
            }
            Sums sums = new Sums(1, 1, new int[0], all, shards);
            assertEquals(c.get("shard").asInt(), sums.shard(fields.toArray(new String[0])),
                    "shard of " + fields);
        }
    }

    @Test
    void batchesAsStorage() throws Exception {
        JsonNode sink = Golden.load("sink.json");
        for (JsonNode c : sink.get("batches")) {
            JsonNode source = c.get("rows");
            List<Object[]> rows = Golden.arrays(sink.get(source.get(0).asText())
                    .get(source.get(1).asText()));
            Map<Object[], Integer> position = new IdentityHashMap<>();
            for (int i = 0; i < rows.size(); i++) {
                position.put(rows.get(i), i);
            }
            List<List<Integer>> got = new ArrayList<>();
            for (List<Object[]> batch : Sums.batches(rows, c.get("partition").get(0).asInt(),
                    c.get("partition").get(1).asInt(), c.get("batch_rows").asInt(),
                    c.get("batch_partitions").asInt())) {
                List<Integer> positions = new ArrayList<>();
                for (Object[] row : batch) {
                    positions.add(position.get(row));
                }
                got.add(positions);
            }
            List<List<Integer>> expected = new ArrayList<>();
            for (JsonNode batch : c.get("batches")) {
                List<Integer> positions = new ArrayList<>();
                batch.forEach(p -> positions.add(p.asInt()));
                expected.add(positions);
            }
            Golden.assertSameList(expected, got, "batches of " + source + " by "
                    + c.get("batch_rows") + " rows, " + c.get("batch_partitions")
                    + " partitions (row positions)");
        }
    }
}
