package abacus.sink;

import java.io.IOException;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * The jobs' Kafka records as (value, seed): the value's bytes exactly as written (an empty
 * array for a record without a value), and whether the record carries the seed header
 * ({@code counting.seeds.SEED_HEADER}, given by Python). Only the header makes a record a
 * seed: the bridge copies a publisher's bytes into the value, but writes only its own
 * headers, so no publisher can make an event a seed.
 *
 * <p>Compiled against the Flink Kafka SQL connector the jobs load (its Kafka classes are
 * relocated under {@code org.apache.flink.kafka.shaded}).
 */
public final class SeedMarking implements KafkaRecordDeserializationSchema<Row> {
    private static final long serialVersionUID = 1L;
    private static final byte[] EMPTY = new byte[0];
    private final String header;

    public SeedMarking(String header) {
        this.header = header;
    }

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Row> out)
            throws IOException {
        byte[] value = record.value();
        boolean seed = record.headers().lastHeader(header) != null;
        out.collect(Row.of(value == null ? EMPTY : value, seed));
    }

    @Override
    public TypeInformation<Row> getProducedType() {
        return Types.ROW(Types.PRIMITIVE_ARRAY(Types.BYTE), Types.BOOLEAN);
    }
}
