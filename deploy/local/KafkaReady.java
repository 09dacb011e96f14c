// Waits until a Kafka broker really serves what txflow needs: cluster metadata, and a
// transactional producer's init and commit (the first InitProducerId creates
// __transaction_state, which is the slowest part of a fresh broker's start).
// Run by deploy/local/stack with the broker's own jars:
//   java -cp 'jars/*' KafkaReady.java BOOTSTRAP SECONDS [BROKERS]
// With BROKERS, also waits until the cluster has that many brokers.
import java.time.Instant;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class KafkaReady {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        Instant deadline = Instant.now().plusSeconds(Long.parseLong(args[1]));
        int brokers = args.length > 2 ? Integer.parseInt(args[2]) : 1;
        String last = "not tried";
        while (Instant.now().isBefore(deadline)) {
            try {
                check(bootstrap, brokers);
                System.out.println("kafka ready at " + bootstrap);
                return;
            } catch (Exception e) {
                last = e.toString();
                Thread.sleep(500);
            }
        }
        System.err.println("kafka at " + bootstrap + " not ready: " + last);
        System.exit(1);
    }

    static void check(String bootstrap, int brokers) throws Exception {
        Properties admin = new Properties();
        admin.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        admin.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, 5000);
        admin.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, 5000);
        try (Admin client = Admin.create(admin)) {
            int found = client.describeCluster().nodes().get().size();
            if (found < brokers) {
                throw new IllegalStateException(found + " of " + brokers + " brokers registered");
            }
        }
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, "txflow-stack-ready");
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, 10000);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p)) {
            producer.initTransactions();
            producer.beginTransaction();
            producer.commitTransaction();
        }
    }
}
