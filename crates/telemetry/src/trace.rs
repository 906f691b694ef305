//! Logging and OpenTelemetry traces: one `tracing` subscriber per process that logs to stderr (at `RUST_LOG`'s
//! levels, `warn` by default) and, when the standard `OTEL_*` environment says so, exports spans over OTLP/gRPC;
//! plus W3C trace-context propagation through gRPC metadata, so one request is one trace across the router, the
//! decode worker and the prefill worker.
//!
//! Export is on when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, unless
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. The exporter reads the other standard variables itself
//! (`OTEL_EXPORTER_OTLP_TIMEOUT`, `_HEADERS`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`).
//! Only the gRPC protocol is built in (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`, the default of most collectors' 4317).
//!
//! Invariant: exported spans are cleave's own (`info` and up; h2, hyper, tower and tonic internals filtered out),
//! so a trace shows phases, not transport plumbing. With export off, propagation injects nothing and extraction
//! yields an empty context: no cost beyond a branch. Cost: spans are batched and exported off the request path by
//! the SDK's batch processor (its own thread, the gRPC channel on a one-thread runtime owned by [`TraceGuard`]).

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// What the exporter sees: cleave's spans, none of the transport crates'.
const EXPORT_FILTER: &str = "info,h2=off,hyper=off,hyper_util=off,tower=off,tonic=off,opentelemetry=off";

/// Keeps the exporter alive; dropping it flushes the spans still buffered (bounded by the exporter's timeout).
#[must_use = "dropping the guard stops trace export"]
pub struct TraceGuard {
    provider: Option<SdkTracerProvider>,
    // The runtime the exporter's gRPC channel lives on; dropped after the provider is shut down.
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for TraceGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceGuard")
            .field("exporting", &self.provider.is_some())
            .finish()
    }
}

impl TraceGuard {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("cleave: flushing traces failed: {e}");
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Whether the environment asks for trace export.
fn export_requested() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let is = |name: &str, value: &str| std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value));
    (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && !is("OTEL_SDK_DISABLED", "true")
        && !is("OTEL_TRACES_EXPORTER", "none")
}

/// Installs the process's subscriber: stderr logs, and OTLP export when the environment asks for it, with
/// `service` as the service name unless `OTEL_SERVICE_NAME` gives one. Call once, first thing in `main`.
/// A failure to build the exporter is reported on stderr and leaves logging on (tracing is never fatal).
pub fn init(service: &str) -> TraceGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let mut guard = TraceGuard {
        provider: None,
        runtime: None,
    };
    let exporter = if export_requested() {
        match build_provider(service) {
            Ok((provider, runtime)) => {
                guard.runtime = Some(runtime);
                Some(provider)
            }
            Err(e) => {
                eprintln!("cleave: trace export is off: {e}");
                None
            }
        }
    } else {
        None
    };
    let otel = exporter.as_ref().map(|provider| {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("cleave"))
            .with_filter(EnvFilter::new(EXPORT_FILTER))
    });
    guard.provider = exporter;
    // Another subscriber (a test harness's) may already be installed: keep it.
    let _ = tracing_subscriber::registry().with(logs).with(otel).try_init();
    guard
}

fn build_provider(service: &str) -> Result<(SdkTracerProvider, tokio::runtime::Runtime), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the exporter's runtime: {e}"))?;
    // The gRPC channel spawns its connection tasks on the runtime current at build time.
    let entered = runtime.enter();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service.to_owned());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    drop(entered);
    Ok((provider, runtime))
}

/// Writes the current span's trace context into outgoing gRPC metadata (`traceparent`, `tracestate`).
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
}

/// Makes `span`'s parent the trace context in incoming gRPC metadata, when there is one.
pub fn set_parent(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let context = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    use opentelemetry::trace::TraceContextExt;
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}
