//! The gateway against hostile clients (docs/GATEWAY.md, docs/SECURITY.md): input that looks
//! valid but is not, answers in the one JSON error form whatever refused them, trace headers
//! that are not W3C, and clients that hold connections open, send half a request or call
//! without a key. Each refusal writes nothing; a normal client is still served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};
use txflow_tests::process::{http, try_raw_http};
use txflow_tests::{eventually, read_topic};

use super::{assert_error, bearer, event, gateway, get, post};
use txflow_tests::process::Pipeline;

#[test]
fn valid_looking_input_is_refused_by_field_and_writes_nothing() {
    let pipeline = Pipeline::new(2);
    let (_gateway, address) = gateway(
        &pipeline,
        &[
            ("TXFLOW_GATEWAY__MAX_HEADER_BYTES", "4096"),
            ("TXFLOW_GATEWAY__BURST", "1000"),
        ],
    );
    let with = |change: &dyn Fn(&mut Value)| {
        let mut value = event("h-1", "DEPOSIT", "acct-1", 100);
        change(&mut value);
        value.to_string()
    };
    let refused_event = |what: &str, change: &dyn Fn(&mut Value), fields: &[&str]| {
        let answer = post(&address, "/v1/events", &with(change));
        assert_error(what, &answer, 400, "invalid_event", fields);
    };
    refused_event(
        "an id with surrounding spaces",
        &|v| v["account_id"] = json!(" acct-1 "),
        &["account_id"],
    );
    refused_event(
        "an id with NUL",
        &|v| v["account_id"] = json!("acct\u{0}1"),
        &["account_id"],
    );
    refused_event(
        "an id with CR LF",
        &|v| v["event_id"] = json!("h-1\r\nx-injected: 1"),
        &["event_id"],
    );
    refused_event(
        "an id with a right-to-left override",
        &|v| v["event_id"] = json!("h-\u{202E}1"),
        &["event_id"],
    );
    refused_event(
        "three letters that are no currency",
        &|v| v["currency"] = json!("ABC"),
        &["currency"],
    );
    refused_event(
        "occurred_at before the epoch",
        &|v| v["occurred_at"] = json!(-1),
        &["occurred_at"],
    );
    refused_event(
        "occurred_at in the year 10000",
        &|v| v["occurred_at"] = json!(253_402_300_800_000_i64),
        &["occurred_at"],
    );
    refused_event(
        "occurred_at a year ago",
        &|v| v["occurred_at"] = json!(txflow::pipeline::now_ms() - 366 * 86_400_000),
        &["occurred_at"],
    );
    let twice = r#"{"event_id": "h-2", "event_type": "DEPOSIT", "account_id": "acct-1",
        "amount_minor": 1, "amount_minor": 999999, "currency": "EUR",
        "occurred_at": 1, "source": "hostile"}"#;
    let answer = post(&address, "/v1/events", twice);
    assert_error("a key twice", &answer, 400, "malformed_json", &[]);
    assert!(
        answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("amount_minor"),
        "the message names the key: {}",
        answer.body
    );
    let utf16 = http(
        &address,
        "POST",
        "/v1/events",
        &[
            ("authorization", &bearer()),
            ("content-type", "application/json; charset=utf-16"),
        ],
        with(&|_| {}).as_bytes(),
    );
    assert_error("a UTF-16 body", &utf16, 415, "unsupported_charset", &[]);

    // Answers the HTTP stack would give in its own form.
    let bad_path = get(&address, "/v1/accounts/%FF%FE");
    assert_error(
        "a path that is not UTF-8",
        &bad_path,
        400,
        "bad_request",
        &[],
    );
    let control = get(&address, "/v1/accounts/acct%01");
    assert_error(
        "a path id with a control character",
        &control,
        400,
        "invalid_request",
        &["account_id"],
    );
    let long = get(&address, &format!("/v1/accounts/{}", "a".repeat(3000)));
    assert_error("a long target", &long, 414, "uri_too_long", &[]);
    let big_header = http(
        &address,
        "GET",
        "/v1/accounts/acct-1",
        &[
            ("authorization", &bearer()),
            ("x-padding", &"p".repeat(5000)),
        ],
        b"",
    );
    assert_error("a large head", &big_header, 431, "headers_too_large", &[]);
    let huge_traceparent = http(
        &address,
        "POST",
        "/v1/events",
        &[
            ("authorization", &bearer()),
            ("content-type", "application/json"),
            ("traceparent", &"0".repeat(200_000)),
        ],
        with(&|_| {}).as_bytes(),
    );
    assert_error(
        "a 200 KB traceparent",
        &huge_traceparent,
        431,
        "headers_too_large",
        &[],
    );
    // Requests hyper refuses before the gateway sees them: still the JSON form.
    let body = with(&|_| {});
    let conflicting = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nContent-Length: 5\r\n\r\n{body}",
        bearer(),
        body.len()
    );
    let conflicting = try_raw_http(&address, conflicting.as_bytes()).expect("an answer");
    assert_error(
        "two different Content-Lengths",
        &conflicting,
        400,
        "bad_request",
        &[],
    );
    let many: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many = format!("GET /v1/accounts/acct-1 HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let many = try_raw_http(&address, many.as_bytes()).expect("an answer");
    assert_error("120 headers", &many, 431, "headers_too_large", &[]);
    let garbage = try_raw_http(&address, b"\x16\x03\x01 not http\r\n\r\n").expect("an answer");
    assert_error("not HTTP at all", &garbage, 400, "bad_request", &[]);

    // The scheme of Authorization is case-insensitive.
    let lower = http(
        &address,
        "GET",
        "/v1/accounts/nobody",
        &[("authorization", &bearer().replace("Bearer", "bearer"))],
        b"",
    );
    assert_error("lower-case bearer", &lower, 404, "account_not_found", &[]);

    assert!(
        read_topic(&pipeline.events_topic, "read_uncommitted").is_empty(),
        "a refused request wrote to {}",
        pipeline.events_topic
    );
}

#[test]
fn only_w3c_trace_context_reaches_the_log() {
    let pipeline = Pipeline::new(1);
    let (gateway_process, address) = gateway(&pipeline, &[]);
    let send = |id: &str, trace: &[(&str, &str)]| {
        let auth = bearer();
        let mut headers = vec![
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        headers.extend_from_slice(trace);
        let body = event(id, "DEPOSIT", "acct-t", 1).to_string();
        let answer = http(&address, "POST", "/v1/events", &headers, body.as_bytes());
        assert_eq!(answer.status, 202, "{id}: {}", answer.body);
    };
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    send(
        "t-valid",
        &[("traceparent", valid), ("tracestate", "congo=t61rcWkgMzE")],
    );
    send(
        "t-garbage",
        &[
            ("traceparent", &"z".repeat(2000)),
            ("tracestate", "congo=x"),
        ],
    );
    send("t-upper", &[("traceparent", &valid.to_uppercase())]);
    send(
        "t-bad-state",
        &[("traceparent", valid), ("tracestate", "Not A Member")],
    );
    let records = read_topic(&pipeline.events_topic, "read_uncommitted");
    assert_eq!(records.len(), 4);
    let trace_of = |record: &txflow_tests::ReadRecord| -> Vec<(String, String)> {
        record
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    };
    let by_offset: Vec<Vec<(String, String)>> = records.iter().map(trace_of).collect();
    assert_eq!(
        by_offset,
        vec![
            vec![
                ("traceparent".to_owned(), valid.to_owned()),
                ("tracestate".to_owned(), "congo=t61rcWkgMzE".to_owned()),
            ],
            vec![],
            vec![],
            vec![("traceparent".to_owned(), valid.to_owned())],
        ],
        "records in the order posted (one partition)"
    );
    let (_, metrics) = gateway_process.admin_get("/metrics");
    for (header, count) in [("traceparent", 2), ("tracestate", 2)] {
        let line = format!("txflow_gateway_headers_dropped_total{{header=\"{header}\"}} {count}");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
}

/// Opens a connection and sends `bytes` without finishing the request.
fn half_request(address: &str, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(address).expect("a connection");
    stream.write_all(bytes).expect("the first bytes");
    stream
}

/// Whether the server closed `stream` (read returns end of file, or the connection was
/// reset), with what it sent before.
fn closed_by_server(stream: &mut TcpStream) -> Option<String> {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("a read timeout");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(String::from_utf8_lossy(&answer).into_owned()),
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&answer).into_owned())
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn slow_and_idle_clients_are_cut_while_a_normal_client_is_served() {
    let pipeline = Pipeline::new(1);
    let (_gateway, address) = gateway(
        &pipeline,
        &[
            ("TXFLOW_GATEWAY__HEADER_READ_TIMEOUT_MS", "1000"),
            ("TXFLOW_GATEWAY__BODY_TIMEOUT_MS", "1000"),
            ("TXFLOW_GATEWAY__MAX_CONNECTIONS", "40"),
        ],
    );
    // Half a head on each of 30 connections, one byte more now and then (slowloris).
    let mut slow: Vec<TcpStream> = (0..30)
        .map(|_| half_request(&address, b"GET /v1/accounts/acct-1 HTTP/1.1\r\nHost: x\r\n"))
        .collect();
    // A body shorter than its Content-Length.
    let short_body = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 400\r\n\r\n{{\"event_id\": ",
        bearer()
    );
    let mut short = half_request(&address, short_body.as_bytes());
    // Ten more that open and send nothing: the cap is 40, so one more is refused at once.
    let idle: Vec<TcpStream> = (0..9)
        .map(|_| TcpStream::connect(&address).expect("a connection"))
        .collect();
    let mut over = TcpStream::connect(&address).expect("a connection");
    let refused = eventually(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || closed_by_server(&mut over),
        || "the connection over the cap was never answered".to_owned(),
    );
    assert!(
        refused.starts_with("HTTP/1.1 503") && refused.contains("\"too_many_connections\""),
        "{refused}"
    );
    for stream in &mut slow {
        let _ = stream.write_all(b"X");
    }

    let answer = eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || closed_by_server(&mut short),
        || "a body shorter than its Content-Length held its connection".to_owned(),
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body: Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).expect("a JSON error body");
    assert_eq!(body["error"]["code"], "body_timeout");
    for (i, stream) in slow.iter_mut().enumerate() {
        eventually(
            Duration::from_secs(30),
            Duration::from_millis(100),
            || closed_by_server(stream),
            || format!("slow connection {i} was never cut"),
        );
    }
    drop(idle);
    // With the hostile connections cut, a normal client is served.
    let served = eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || Some(get(&address, "/v1/accounts/nobody")).filter(|a| a.status == 404),
        || "a normal client was not served after the hostile ones were cut".to_owned(),
    );
    assert_error("a normal client", &served, 404, "account_not_found", &[]);
    assert!(
        read_topic(&pipeline.events_topic, "read_uncommitted").is_empty(),
        "a cut request wrote to {}",
        pipeline.events_topic
    );
}

#[test]
fn callers_without_a_key_are_rate_limited_by_address() {
    let pipeline = Pipeline::new(1);
    let (_gateway, address) = gateway(
        &pipeline,
        &[
            ("TXFLOW_GATEWAY__UNAUTHENTICATED_REQUESTS_PER_SECOND", "1"),
            ("TXFLOW_GATEWAY__UNAUTHENTICATED_BURST", "5"),
        ],
    );
    let guesses: Vec<u16> = (0..20)
        .map(|i| {
            let guess = format!("Bearer txf_guess_{i}");
            http(
                &address,
                "GET",
                "/v1/accounts/acct-1",
                &[("authorization", &guess)],
                b"",
            )
            .status
        })
        .collect();
    assert!(
        guesses.iter().filter(|s| **s == 401).count() >= 5,
        "the burst is answered: {guesses:?}"
    );
    assert!(
        guesses.contains(&429),
        "guessing keys is never slowed: {guesses:?}"
    );
    let limited = http(&address, "GET", "/v1/accounts/acct-1", &[], b"");
    assert_error("no key, over the rate", &limited, 429, "rate_limited", &[]);
    assert!(limited.header("retry-after").is_some());
    // A caller with a key has its own budget.
    let keyed = get(&address, "/v1/accounts/nobody");
    assert_error(
        "a key, while guessers wait",
        &keyed,
        404,
        "account_not_found",
        &[],
    );
}
