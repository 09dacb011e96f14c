//! One trace per event. The W3C trace context a record's headers carry (from the gateway,
//! an outside producer, or the stage before) is the parent of the span that works on the
//! record, and that span's context goes into every record it sends on: routed events,
//! transfer legs, results, retries, dead letters, webhooks. Spans are exported over OTLP
//! (HTTP) when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; otherwise they are not made at all, and
//! records carry the context they came with.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The target of every span that is exported.
pub const TARGET: &str = "txflow::trace";

/// The filter directive that lets the spans of [`TARGET`] through, added to the log filter
/// while exporting: the exported spans are made whatever the log level.
pub static EXPORTED: std::sync::LazyLock<tracing_subscriber::filter::Directive> =
    std::sync::LazyLock::new(|| {
        format!("{TARGET}=debug")
            .parse()
            .expect("a valid filter directive")
    });

/// The span of `work` (`ledger.settle`, `router.route`, …) on one record: a child of the
/// context its `headers` carry, or the root of a new trace. Disabled, at no cost, when
/// nothing exports. It names its trace and span ids, so that a log line written in it
/// leads to the trace in the tracing backend.
pub fn record_span(work: &'static str, headers: &[(String, Vec<u8>)]) -> Span {
    let span = tracing::debug_span!(
        target: TARGET,
        "record",
        otel.name = work,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        event_id = tracing::field::Empty,
        account_id = tracing::field::Empty,
    );
    if !span.is_disabled() {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
        let context = span.context();
        let ids = context.span().span_context().clone();
        if ids.is_valid() {
            span.record("trace_id", tracing::field::display(ids.trace_id()));
            span.record("span_id", tracing::field::display(ids.span_id()));
        }
    }
    span
}

/// A span of `work` within the current one (`store.conditional_write`, `kafka.commit`),
/// saying which `operation`.
pub fn work_span(work: &'static str, operation: &'static str) -> Span {
    tracing::debug_span!(target: TARGET, "work", otel.name = work, operation)
}

/// Names the event and account a span works on.
pub fn identify(span: &Span, event_id: &str, account_id: &str) {
    span.record("event_id", event_id);
    span.record("account_id", account_id);
}

/// Writes `span`'s context into `headers`, in place of the context they carried; leaves
/// them as they are when the span is not exported.
pub fn carry(span: &Span, headers: &mut Vec<(String, Vec<u8>)>) {
    if span.is_disabled() {
        return;
    }
    let context = span.context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut HeadersMut(headers));
    }
}

struct Headers<'a>(&'a [(String, Vec<u8>)]);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }
}

struct HeadersMut<'a>(&'a mut Vec<(String, Vec<u8>)>);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.retain(|(name, _)| !name.eq_ignore_ascii_case(key));
        self.0.push((key.to_owned(), value.into_bytes()));
    }
}

/// Spans being exported; the last ones are sent when this is dropped.
pub struct Exporting(SdkTracerProvider);

impl Drop for Exporting {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("txflow: the last spans were not exported: {e}");
        }
    }
}

/// The layer that exports txflow's spans over OTLP/HTTP, when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) says where; the service is `service` unless
/// `OTEL_SERVICE_NAME` names it.
pub fn exporter<S>(service: &str) -> Result<Option<(impl Layer<S>, Exporting)>, String>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()));
    if !configured {
        return Ok(None);
    }
    crate::tls::install_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("the OTLP span exporter: {e}"))?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    // No filter of its own: with the log filter made per-layer beside it, some log events
    // were lost (with TXFLOW_LOG=info,txflow=debug). The one filter is global, with
    // [`EXPORTED`] added; the log layer sees the spans too and does not print them.
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("txflow"));
    Ok(Some((layer, Exporting(provider))))
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    fn traceparent(headers: &[(String, Vec<u8>)]) -> String {
        let found = headers.iter().find(|(name, _)| name == "traceparent");
        String::from_utf8(found.expect("a traceparent").1.clone()).unwrap()
    }

    /// A producer's context is continued; one that is not W3C, or names no trace, starts a
    /// new trace instead of being passed on.
    #[test]
    fn a_records_context_is_continued_only_when_it_is_valid_w3c() {
        let provider = SdkTracerProvider::builder().build();
        let exporting = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(exporting, || {
            let header = |value: &str| vec![("traceparent".to_owned(), value.as_bytes().to_vec())];
            let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
            let mut continued = header(parent);
            carry(
                &record_span("router.route", &header(parent)),
                &mut continued,
            );
            let ours = traceparent(&continued);
            assert!(
                ours.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
                "{ours}"
            );
            assert_ne!(ours, parent, "a span of its own under the producer's");
            for hostile in [
                "00-00000000000000000000000000000000-b7ad6b7169203331-01",
                "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
                "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
                "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\u{202e}",
                "",
            ] {
                let mut headers = header(hostile);
                carry(&record_span("router.route", &header(hostile)), &mut headers);
                let ours = traceparent(&headers);
                assert!(
                    !ours.contains("0af7651916cd43dd8448eb211c80319c"),
                    "{hostile:?}: {ours}"
                );
                let parents = headers.iter().filter(|(n, _)| n == "traceparent").count();
                assert_eq!(parents, 1, "one traceparent, in place of {hostile:?}");
                assert_eq!(ours.len(), 55, "{ours}");
            }
        });
    }

    /// A log line written while a record is worked on names the trace and span it belongs
    /// to, the ones the record's next stage continues.
    #[test]
    fn a_log_line_in_a_records_span_names_its_trace_and_span() {
        #[derive(Clone, Default)]
        struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let written = lines.clone();
        let provider = SdkTracerProvider::builder().build();
        let logging = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(move || written.clone()),
            );
        let mut onward = Vec::new();
        tracing::subscriber::with_default(logging, || {
            let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
            let span = record_span(
                "ledger.settle",
                &[("traceparent".to_owned(), parent.as_bytes().to_vec())],
            );
            span.in_scope(|| tracing::warn!("sent to the dead letters"));
            carry(&span, &mut onward);
        });
        let line: serde_json::Value =
            serde_json::from_slice(&lines.0.lock().unwrap()).expect("one JSON log line");
        let ids = &line["span"];
        assert_eq!(
            ids["trace_id"], "0af7651916cd43dd8448eb211c80319c",
            "{line}"
        );
        let span_id = ids["span_id"].as_str().expect("a span id");
        assert_eq!(
            traceparent(&onward),
            format!("00-0af7651916cd43dd8448eb211c80319c-{span_id}-01"),
            "the span the log names is the one the next stage continues"
        );
    }
}
