package abacus.sink;

import java.io.Serializable;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.StringData;

/**
 * The rows of a job's Java operator ({@link Uniques}, {@link CustomerRows}), as the job gives
 * them ({@code abacus.pipeline.operator_conf}): every column by name, every rule of the
 * contract the operator applies as data. Nothing here is known by position.
 *
 * <ul>
 *   <li>{@code input}, {@code output}: the column names of the rows in and out, in order;
 *   <li>{@code resolutions}: the resolutions counted, finest first ({@code
 *       counting.RESOLUTIONS}), each with its label's input column ({@code labels}) and the
 *       width of the label's prefix that is the storage key's period ({@code period_widths},
 *       {@code storage.counters.PERIOD_WIDTH});
 *   <li>{@code indexed}: the resolution whose rows carry an index date, and {@code
 *       date_width}: that date is its label's prefix of this width (the label's local date,
 *       {@code counting}).
 * </ul>
 */
public final class RowSpec implements Serializable {
    private static final long serialVersionUID = 1L;

    private final String[] input, output, names, labels, seedInput;
    private final int[] widths;
    private final int indexed, dateWidth;
    private transient StringData[] texts;

    private RowSpec(Map<String, String> conf) {
        input = list(conf, "input");
        // the seed rows' columns (abacus.pipeline._SEED_FIELDS): only Uniques has them
        String seeds = conf.getOrDefault("seed_input", "");
        seedInput = seeds.isEmpty() ? new String[0] : seeds.split(",", -1);
        output = list(conf, "output");
        names = list(conf, "resolutions");
        labels = list(conf, "labels");
        widths = Arrays.stream(list(conf, "period_widths")).mapToInt(Integer::parseInt).toArray();
        if (labels.length != names.length || widths.length != names.length) {
            throw new IllegalArgumentException("one label column and one period width per "
                    + "resolution: " + conf);
        }
        indexed = List.of(names).indexOf(required(conf, "indexed"));
        if (indexed < 0) {
            throw new IllegalArgumentException("indexed resolution not counted: " + conf);
        }
        dateWidth = Integer.parseInt(required(conf, "date_width"));
    }

    public static RowSpec of(Map<String, String> conf) {
        return new RowSpec(conf);
    }

    private static String required(Map<String, String> conf, String name) {
        String value = conf.get(name);
        if (value == null) {
            throw new IllegalArgumentException("operator conf without " + name + ": " + conf);
        }
        return value;
    }

    private static String[] list(Map<String, String> conf, String name) {
        String value = required(conf, name);
        return value.isEmpty() ? new String[0] : value.split(",", -1);
    }

    /** The position of an input column. */
    int in(String name) {
        int i = List.of(input).indexOf(name);
        if (i < 0) {
            throw new IllegalArgumentException("no input column " + name + " in "
                    + String.join(",", input));
        }
        return i;
    }

    /** The position of a seed row's column. */
    int seedIn(String name) {
        int i = List.of(seedInput).indexOf(name);
        if (i < 0) {
            throw new IllegalArgumentException("no seed column " + name + " in "
                    + String.join(",", seedInput));
        }
        return i;
    }

    /** The index of a resolution given by name. */
    int resolution(String name) {
        int r = List.of(names).indexOf(name);
        if (r < 0) {
            throw new IllegalArgumentException("unknown resolution " + name + ": not one of "
                    + String.join(",", names));
        }
        return r;
    }

    /**
     * The output positions of {@code columns}, which must be exactly the output's columns
     * (in any order): an operator fills every column, and only those.
     */
    int[] out(String... columns) {
        Set<String> given = new HashSet<>(List.of(output));
        if (!given.equals(new HashSet<>(List.of(columns))) || given.size() != output.length) {
            throw new IllegalArgumentException("output columns " + String.join(",", output)
                    + " are not " + String.join(",", columns));
        }
        int[] positions = new int[columns.length];
        for (int i = 0; i < columns.length; i++) {
            positions[i] = List.of(output).indexOf(columns[i]);
        }
        return positions;
    }

    /** An output row: {@code values[i]} at the position {@code positions[i]}. */
    GenericRowData row(int[] positions, Object... values) {
        GenericRowData row = new GenericRowData(output.length);
        for (int i = 0; i < positions.length; i++) {
            row.setField(positions[i], values[i]);
        }
        return row;
    }

    int resolutions() {
        return names.length;
    }

    String name(int r) {
        return names[r];
    }

    /** The resolution's name, as the key's {@code resolution} field. */
    StringData text(int r) {
        if (texts == null) {
            StringData[] t = new StringData[names.length];
            for (int i = 0; i < names.length; i++) {
                t[i] = StringData.fromString(names[i]);
            }
            texts = t;
        }
        return texts[r];
    }

    /** The input positions of the resolutions' labels. */
    int[] labelColumns() {
        int[] positions = new int[labels.length];
        for (int r = 0; r < labels.length; r++) {
            positions[r] = in(labels[r]);
        }
        return positions;
    }

    /** The key's period: the bucket label's prefix. */
    StringData period(int r, String bucket) {
        return StringData.fromString(bucket.substring(0, widths[r]));
    }

    /** The index date of a row of resolution {@code r} with this label, or null. */
    StringData indexDate(int r, String bucket) {
        return r == indexed ? StringData.fromString(bucket.substring(0, dateWidth)) : null;
    }
}
