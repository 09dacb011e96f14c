// Makes the SCRAM users and ACLs of the local stack's secured Kafka listener, through the
// plaintext listener (whose anonymous principal is a super user of the local stack only).
// Run by deploy/local/stack with Kafka's own jars: java -cp 'jars/*' SecureKafka.java
// BOOTSTRAP USER=PASSWORD...
//
// Every user gets what docs/SECURITY.md lists for all of txflow's stages, on resources named
// `secure.*` (topics, consumer groups, transactional ids), but the user `txflow-no-txn`, which
// lacks Write on transactional ids: a stage started as it must fail at once, naming the ACL.
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialAlteration;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class SecureKafka {
    static final String PREFIX = "secure.";

    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        try (Admin admin = Admin.create(props)) {
            List<UserScramCredentialAlteration> users = new ArrayList<>();
            List<AclBinding> acls = new ArrayList<>();
            for (int i = 1; i < args.length; i++) {
                String[] pair = args[i].split("=", 2);
                String user = pair[0];
                users.add(new UserScramCredentialUpsertion(user,
                        new ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), pair[1]));
                acls.addAll(stageAcls("User:" + user, !user.equals("txflow-no-txn")));
            }
            admin.alterUserScramCredentials(users).all().get();
            admin.createAcls(acls).all().get();
            System.out.println("kafka: " + users.size() + " SCRAM users, " + acls.size() + " ACLs on " + PREFIX + "*");
        }
    }

    static List<AclBinding> stageAcls(String principal, boolean transactions) {
        List<AclBinding> acls = new ArrayList<>();
        Map<ResourceType, List<AclOperation>> grants = new java.util.LinkedHashMap<>();
        grants.put(ResourceType.TOPIC, List.of(AclOperation.DESCRIBE, AclOperation.READ,
                AclOperation.WRITE, AclOperation.CREATE, AclOperation.DESCRIBE_CONFIGS));
        grants.put(ResourceType.GROUP, List.of(AclOperation.DESCRIBE, AclOperation.READ));
        if (transactions) {
            grants.put(ResourceType.TRANSACTIONAL_ID, List.of(AclOperation.DESCRIBE, AclOperation.WRITE));
        } else {
            grants.put(ResourceType.TRANSACTIONAL_ID, List.of(AclOperation.DESCRIBE));
        }
        grants.forEach((type, operations) -> {
            for (AclOperation operation : operations) {
                acls.add(new AclBinding(new ResourcePattern(type, PREFIX, PatternType.PREFIXED),
                        new AccessControlEntry(principal, "*", operation, AclPermissionType.ALLOW)));
            }
        });
        return acls;
    }
}
