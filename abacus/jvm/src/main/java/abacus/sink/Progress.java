package abacus.sink;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.UUID;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * One operator instance's drain counter: a file of 8-byte little-endian longs, the first the
 * counter ({@code abacus.progress} reads and sums them), the second, when used, the sink's
 * written total across attempts.
 *
 * <p>The file is named {@code <kind>-a<attempt>-s<subtask>-<pid>-<random>}: Flink's attempt
 * number (every task of the job's one pipelined region restarts together after a failure,
 * each with the next attempt number) and the subtask index. A restarted job starts from its
 * latest checkpoint, where every increment fanned had been written (the sink writes all it
 * holds before a barrier passes it), so the drain compares the counters of the latest
 * attempt only: the ones of a failed attempt stay behind, unbalanced, and no longer count.
 */
final class Progress {
    static final Pattern NAME = Pattern.compile("([a-z]+)-a(\\d+)-s(\\d+)-.*");

    private final RandomAccessFile file;
    private final MappedByteBuffer map;
    private long value, extra;

    Progress(Path directory, String kind, int attempt, int subtask) throws IOException {
        Files.createDirectories(directory);
        Path path = directory.resolve(kind + "-a" + attempt + "-s" + subtask + "-"
                + ProcessHandle.current().pid() + "-" + UUID.randomUUID().toString().substring(0, 8));
        file = new RandomAccessFile(path.toFile(), "rw");
        file.setLength(16);
        map = file.getChannel().map(FileChannel.MapMode.READ_WRITE, 0, 16);
        map.order(ByteOrder.LITTLE_ENDIAN);
    }

    synchronized void add(long n) {
        value += n;
        map.putLong(0, value);
    }

    /** Adds to the counter and to the second long (the sink's total across attempts). */
    synchronized void add(long n, long total) {
        value += n;
        extra = total;
        map.putLong(8, extra);
        map.putLong(0, value);
    }

    synchronized void set(long n) {
        value = n;
        map.putLong(0, value);
    }

    synchronized long value() {
        return value;
    }

    synchronized void close() throws IOException {
        file.close();
    }

    /**
     * The second long of the {@code kind} file of {@code subtask} from the latest attempt
     * before {@code attempt} that left one, or -1 when there is none.
     */
    static long previousTotal(Path directory, String kind, int attempt, int subtask)
            throws IOException {
        if (!Files.isDirectory(directory)) {
            return -1;
        }
        int best = -1;
        long total = -1;
        try (DirectoryStream<Path> files = Files.newDirectoryStream(directory, kind + "-a*")) {
            for (Path path : files) {
                Matcher m = NAME.matcher(path.getFileName().toString());
                if (!m.matches() || !m.group(1).equals(kind)
                        || Integer.parseInt(m.group(3)) != subtask) {
                    continue;
                }
                int a = Integer.parseInt(m.group(2));
                byte[] data = Files.readAllBytes(path);
                if (a < attempt && a > best && data.length >= 16) {
                    best = a;
                    total = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN).getLong(8);
                }
            }
        }
        return total;
    }
}
