package abacus.sink;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteOrder;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.UUID;

/**
 * One operator instance's drain counter: an 8-byte little-endian file, the format of
 * {@code abacus.progress.Counter} (Python reads and sums them).
 */
final class Progress {
    private final RandomAccessFile file;
    private final MappedByteBuffer map;
    private long value;

    Progress(Path directory, String kind) throws IOException {
        Files.createDirectories(directory);
        Path path = directory.resolve(kind + "-" + ProcessHandle.current().pid() + "-"
                + UUID.randomUUID().toString().substring(0, 8));
        file = new RandomAccessFile(path.toFile(), "rw");
        file.setLength(8);
        map = file.getChannel().map(FileChannel.MapMode.READ_WRITE, 0, 8);
        map.order(ByteOrder.LITTLE_ENDIAN);
    }

    synchronized void add(long n) {
        value += n;
        map.putLong(0, value);
    }

    synchronized void close() throws IOException {
        file.close();
    }
}
