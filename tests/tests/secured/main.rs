//! txflow on secured services, as every production cluster runs: Kafka's SASL_SSL listener
//! (SCRAM-SHA-512 over TLS, a client certificate, ACLs) and a Cassandra that requires TLS
//! and a password, all from `deploy/local/stack up --secure`; the gateway over HTTPS. Every
//! stage settles events end to end; a wrong password, an untrusted certificate and a missing
//! ACL each end a process at once with what to fix; a plaintext client is refused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use txflow::stages::gateway::keys::hash;
use txflow_tests::eventually;
use txflow_tests::process::{Pipeline, Secured};

const KEY: &str = "txf_test_key_for_the_secured_suite";
const SECRET: &str = "secured-signing-secret-0123456789";

/// An HTTPS client that trusts the stack's CA only.
fn https_client(secured: &Secured) -> reqwest::Client {
    let ca = std::fs::read(&secured.ca_file).expect("the stack's CA");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("a PEM CA"))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTPS client")
}

#[test]
fn every_stage_settles_events_over_sasl_ssl_cql_tls_and_https() {
    let secured = Secured::from_env();
    let pipeline = Pipeline::secured(2, &secured, "txflow");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    // The HTTPS client's timers and connections live on it.
    let _inside = runtime.enter();
    let webhooks = Arc::new(AtomicUsize::new(0));
    let hook_url = {
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("a port for the receiver");
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let counted = webhooks.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { "ok" }
            }),
        );
        runtime.spawn(async move { axum::serve(listener, app).await });
        url
    };
    let rules = std::env::temp_dir().join(format!("{}-rules.yaml", pipeline.keyspace));
    std::fs::write(
        &rules,
        format!(
            "rules:\n  - name: large-deposits\n    pattern: {{event_type: [DEPOSIT], amount_minor: [{{numeric: ['>=', 1000]}}]}}\n    targets:\n      - {{topic: {notifications}, webhook: ops}}\n      - {{topic: {ledger}}}\n",
            notifications = pipeline.notifications_topic,
            ledger = pipeline.ledger_topic
        ),
    )
    .expect("a rules file");
    let _router = pipeline.spawn_router_with(
        "r1",
        &[("TXFLOW_ROUTER__RULES_FILE", rules.to_str().unwrap())],
    );
    let ledger = pipeline.spawn_ledger("l1");
    let _notifier = pipeline.spawn_notifier_with(
        "n1",
        &[
            ("TXFLOW_NOTIFIER__ENDPOINTS__OPS__URL", hook_url.as_str()),
            ("TXFLOW_NOTIFIER__ENDPOINTS__OPS__SECRET", SECRET),
        ],
    );
    let hashed: String = hash(KEY).iter().map(|b| format!("{b:02x}")).collect();
    let gateway = pipeline.spawn_gateway_with(&[
        ("TXFLOW_GATEWAY__API_KEYS__TESTER", hashed.as_str()),
        ("TXFLOW_GATEWAY__TLS_CERT_FILE", secured.cert_file.as_str()),
        ("TXFLOW_GATEWAY__TLS_KEY_FILE", secured.key_file.as_str()),
    ]);
    let address = gateway.logged_address("gateway listening");
    let base = format!("https://{address}");
    let client = https_client(&secured);
    let now = txflow::pipeline::now_ms();
    let event = |id: &str, kind: &str, account: &str, to: Option<&str>, amount: i64| {
        json!({
            "event_id": id, "event_type": kind, "account_id": account,
            "counterparty_account_id": to, "amount_minor": amount, "currency": "EUR",
            "occurred_at": now, "source": "secured-test"
        })
    };
    let batch = json!([
        event("s-1", "DEPOSIT", "A", None, 5000),
        event("s-2", "DEPOSIT", "B", None, 300),
    ]);
    let posted: reqwest::Response = runtime
        .block_on(
            client
                .post(format!("{base}/v1/events/batch"))
                .bearer_auth(KEY)
                .json(&batch)
                .send(),
        )
        .expect("the gateway answers over HTTPS");
    assert_eq!(posted.status(), 202);
    let balance = |account: &str| -> Option<i64> {
        let answer = runtime
            .block_on(
                client
                    .get(format!("{base}/v1/accounts/{account}"))
                    .bearer_auth(KEY)
                    .send(),
            )
            .ok()?;
        let body: Value = runtime.block_on(answer.json()).ok()?;
        body["balance_minor"].as_i64()
    };
    eventually(
        Duration::from_secs(90),
        Duration::from_millis(300),
        || (balance("A") == Some(5000) && balance("B") == Some(300)).then_some(()),
        || format!("the deposits were never applied:\n{}", ledger.log_text()),
    );
    let transfer = runtime
        .block_on(
            client
                .post(format!("{base}/v1/events"))
                .bearer_auth(KEY)
                .json(&event("s-3", "TRANSFER", "A", Some("B"), 1200))
                .send(),
        )
        .expect("the gateway answers over HTTPS");
    assert_eq!(transfer.status(), 202);
    eventually(
        Duration::from_secs(90),
        Duration::from_millis(300),
        || (balance("A") == Some(3800) && balance("B") == Some(1500)).then_some(()),
        || format!("the transfer was never settled:\n{}", ledger.log_text()),
    );
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(300),
        || (webhooks.load(Ordering::SeqCst) == 1).then_some(()),
        || "the large deposit's webhook never arrived".to_owned(),
    );
}

/// A process of `pipeline` started with `env` that must end on its own: its log.
fn fails_at_start(pipeline: &Pipeline, stage: &str, env: &[(&str, &str)]) -> String {
    let mut process = match stage {
        "ledger" => pipeline.spawn_ledger_with("bad", env),
        "router" => pipeline.spawn_router_with("bad", env),
        other => panic!("no such stage here: {other}"),
    };
    process.wait_for_failure(Duration::from_secs(60))
}

#[test]
fn wrong_secrets_and_missing_acls_end_a_stage_at_start_with_what_to_fix() {
    let secured = Secured::from_env();
    let pipeline = Pipeline::secured(1, &secured, "txflow");
    let wrong = std::env::temp_dir().join(format!("{}-wrong", pipeline.keyspace));
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let wrong = wrong.to_str().unwrap();

    let log = fails_at_start(
        &pipeline,
        "ledger",
        &[("TXFLOW_KAFKA__PROPERTY_FILES__SASL.PASSWORD", wrong)],
    );
    assert!(
        log.contains("refused txflow") && log.contains("Authentication failed"),
        "a wrong Kafka password: {log}"
    );
    let log = fails_at_start(
        &pipeline,
        "router",
        &[(
            "TXFLOW_KAFKA__PROPERTIES__SSL.CA.LOCATION",
            "/etc/ssl/certs/ca-certificates.crt",
        )],
    );
    assert!(
        log.contains("refused txflow") && log.contains("certificate verify failed"),
        "a CA that did not sign the broker's certificate: {log}"
    );
    let log = fails_at_start(
        &pipeline,
        "ledger",
        &[("TXFLOW_STORE__PASSWORD_FILE", wrong)],
    );
    assert!(
        log.contains("the store refused txflow") && log.contains("store.password"),
        "a wrong CQL password: {log}"
    );

    // A principal without Write on transactional ids: the ledger names the ACL.
    let limited = Pipeline::secured(1, &secured, "txflow-no-txn");
    let mut ledger = limited.spawn_ledger("l1");
    let log = ledger.wait_for_failure(Duration::from_secs(60));
    assert!(
        log.contains("Transactional Id authorization failed")
            && log.contains("lacks Write and Describe on the stage's transactional id"),
        "a missing ACL: {log}"
    );
}

#[test]
fn the_secured_listener_refuses_a_plaintext_client() {
    let secured = Secured::from_env();
    let plaintext: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &secured.kafka_bootstrap)
        .set("security.protocol", "plaintext")
        .create()
        .expect("a client");
    assert!(
        plaintext
            .fetch_metadata(None, Duration::from_secs(5))
            .is_err(),
        "a plaintext client read the secured listener's metadata"
    );
    let no_certificate: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &secured.kafka_bootstrap)
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanisms", "SCRAM-SHA-512")
        .set("sasl.username", "txflow")
        .set("sasl.password", secured.kafka_password("txflow"))
        .set("ssl.ca.location", &secured.ca_file)
        .create()
        .expect("a client");
    assert!(
        no_certificate
            .fetch_metadata(None, Duration::from_secs(5))
            .is_err(),
        "a client without a certificate read the secured listener's metadata"
    );
}
