// Waits until a CQL node answers a query, and reports its version. Run by deploy/local/stack
// with Cassandra's own jars (they carry the DataStax 3.x driver):
//   java -cp 'jars/*' CqlReady.java HOST PORT SECONDS [USER PASSWORD [STATEMENT...]]
// With a user, it logs in over TLS (the trust store from -Djavax.net.ssl.trustStore) and then
// runs each STATEMENT once the node answers (making roles, granting).
import com.datastax.driver.core.Cluster;
import com.datastax.driver.core.Session;
import java.time.Instant;

public class CqlReady {
    public static void main(String[] args) throws Exception {
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        Instant deadline = Instant.now().plusSeconds(Long.parseLong(args[2]));
        boolean secured = args.length > 4;
        String last = "not tried";
        while (Instant.now().isBefore(deadline)) {
            Cluster.Builder builder = Cluster.builder().addContactPoint(host).withPort(port)
                    .withoutJMXReporting().withoutMetrics();
            if (secured) {
                builder = builder.withCredentials(args[3], args[4]).withSSL();
            }
            try (Cluster cluster = builder.build(); Session session = cluster.connect()) {
                String version = session.execute("SELECT release_version FROM system.local")
                        .one().getString(0);
                for (int i = 5; i < args.length; i++) {
                    session.execute(args[i]);
                }
                System.out.println("cassandra " + version + " ready at " + host + ":" + port
                        + (secured ? " (TLS, password)" : ""));
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
