package abacus.sink;

import java.io.Serializable;
import org.apache.flink.table.data.StringData;

/**
 * The resolutions the jobs count at, finest first, each with the width of its label's prefix
 * that is the storage key's period: given by the job ({@code counting.RESOLUTIONS},
 * {@code storage.counters.PERIOD_WIDTH}) as {@code "hour:7,day:7,month:4"}.
 */
public final class Resolutions implements Serializable {
    private static final long serialVersionUID = 1L;

    private final String[] names;
    private final int[] widths;
    private transient StringData[] texts;

    private Resolutions(String[] names, int[] widths) {
        this.names = names;
        this.widths = widths;
    }

    public static Resolutions parse(String spec) {
        String[] parts = spec.split(",");
        String[] names = new String[parts.length];
        int[] widths = new int[parts.length];
        for (int i = 0; i < parts.length; i++) {
            int colon = parts[i].lastIndexOf(':');
            names[i] = parts[i].substring(0, colon);
            widths[i] = Integer.parseInt(parts[i].substring(colon + 1));
        }
        return new Resolutions(names, widths);
    }

    public int size() {
        return names.length;
    }

    public String name(int r) {
        return names[r];
    }

    /** The resolution's name, as the key's {@code resolution} field. */
    public StringData text(int r) {
        if (texts == null) {
            StringData[] t = new StringData[names.length];
            for (int i = 0; i < names.length; i++) {
                t[i] = StringData.fromString(names[i]);
            }
            texts = t;
        }
        return texts[r];
    }

    /** The key's period: the bucket label's prefix. */
    public StringData period(int r, String bucket) {
        return StringData.fromString(bucket.substring(0, widths[r]));
    }
}
