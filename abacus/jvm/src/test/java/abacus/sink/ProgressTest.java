package abacus.sink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HexFormat;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The drain files against {@code abacus.progress}: a counter's file has the name its reader
 * parses (kind, attempt, subtask) and the bytes it defines; the written total of an earlier
 * attempt is found in files written as it defines them.
 */
class ProgressTest {

    @Test
    void filesAsAbacusProgressReadsThem(@TempDir Path tmp) throws Exception {
        JsonNode vectors = Golden.load("progress.json");
        // Python's named groups (?P<name>...) are Java's (?<name>...); re.match is lookingAt
        Pattern name = Pattern.compile(vectors.get("name").asText().replace("(?P<", "(?<"));
        int n = 0;
        for (JsonNode c : vectors.get("counters")) {
            Path dir = tmp.resolve("c" + n++);
            Progress counter = new Progress(dir, c.get("kind").asText(),
                    c.get("attempt").asInt(), c.get("subtask").asInt());
            for (JsonNode call : c.get("calls")) {
                if (call.get(0).isTextual()) {
                    counter.set(call.get(1).asLong());
                } else if (call.size() == 2) {
                    counter.add(call.get(0).asLong(), call.get(1).asLong());
                } else {
                    counter.add(call.get(0).asLong());
                }
            }
            counter.close();
            List<Path> files;
            try (Stream<Path> listed = Files.list(dir)) {
                files = listed.toList();
            }
            assertEquals(1, files.size());
            String file = files.get(0).getFileName().toString();
            Matcher m = name.matcher(file);
            assertTrue(m.lookingAt(), file + " is not a name abacus.progress reads");
            assertEquals(c.get("kind").asText(), m.group("kind"), file);
            assertEquals(c.get("attempt").asInt(), Integer.parseInt(m.group("attempt")), file);
            assertEquals(c.get("subtask").asInt(), Integer.parseInt(m.group("subtask")), file);
            assertEquals(c.get("bytes").asText(),
                    HexFormat.of().formatHex(Files.readAllBytes(files.get(0))), file);
        }
    }

    @Test
    void previousTotalAsWrittenByEarlierAttempts() throws Exception {
        JsonNode vectors = Golden.load("progress.json");
        Path left = Golden.dir().resolve(vectors.get("left").asText());
        for (JsonNode q : vectors.get("previous")) {
            assertEquals(q.get("total").asLong(), Progress.previousTotal(left, "written",
                    q.get("attempt").asInt(), q.get("subtask").asInt()), q.toString());
        }
    }
}
