// Waits until a CQL node answers a query, and reports its version. Run by deploy/local/stack
// with Cassandra's own jars (they carry the DataStax 3.x driver): java -cp 'jars/*' CqlReady.java
import com.datastax.driver.core.Cluster;
import com.datastax.driver.core.Session;
import java.time.Instant;

public class CqlReady {
    public static void main(String[] args) throws Exception {
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        Instant deadline = Instant.now().plusSeconds(Long.parseLong(args[2]));
        String last = "not tried";
        while (Instant.now().isBefore(deadline)) {
            try (Cluster cluster = Cluster.builder().addContactPoint(host).withPort(port)
                    .withoutJMXReporting().withoutMetrics().build();
                 Session session = cluster.connect()) {
                String version = session.execute("SELECT release_version FROM system.local")
                        .one().getString(0);
                System.out.println("cassandra " + version + " ready at " + host + ":" + port);
                return;
            } catch (Exception e) {
                last = e.toString();
                Thread.sleep(1000);
            }
        }
        System.err.println("cassandra at " + host + ":" + port + " not ready: " + last);
        System.exit(1);
    }
}
