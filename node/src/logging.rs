//! Logging of `vigil agent`: tracing to stderr (text or JSON), filtered with
//! `RUST_LOG`-style directives that can be replaced while the node runs
//! (`PUT /v1/config {"log_filter": ...}`), and with the `otel` cargo feature an
//! OpenTelemetry trace export over OTLP.

use std::sync::Arc;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::LogFormat;

/// The filter used when `RUST_LOG` is unset or empty.
pub const DEFAULT_FILTER: &str = "info";
/// Longest filter accepted (a filter is a short list of directives).
pub const MAX_FILTER_LEN: usize = 1024;

/// Parses a filter strictly: every directive must be valid. (`EnvFilter::new` would
/// drop the invalid ones, so a typo would silently log less than asked for.)
pub fn parse_filter(text: &str) -> Result<EnvFilter, String> {
    if text.len() > MAX_FILTER_LEN {
        return Err(format!("longer than {MAX_FILTER_LEN} bytes"));
    }
    if text.trim().is_empty() {
        return Err("is empty".into());
    }
    EnvFilter::builder()
        // Field values match literally, never as regular expressions: the filter comes
        // from the API (`PUT /v1/config`) and runtime.toml, and tracing-subscriber
        // compiles a field regex into a DFA whose size can explode. A 174-byte
        // runtime.toml (tests/fuzz/regressions/runtime_file) took over 6 minutes and
        // 2 GiB before this; its docs advise exactly this for untrusted input.
        .with_regex(false)
        .parse(text)
        .map_err(|e| format!("not a valid filter ({e})"))
}

/// The filter the node starts with: `RUST_LOG`, else [`DEFAULT_FILTER`].
pub fn startup_filter() -> String {
    // A RUST_LOG that does not parse is refused at start (with a warning) and the
    // default installed, so the default is what `GET /v1/config` must show and what
    // undoing a live change must go back to.
    std::env::var("RUST_LOG")
        .ok()
        .filter(|f| !f.trim().is_empty() && parse_filter(f).is_ok())
        .unwrap_or_else(|| DEFAULT_FILTER.to_string())
}

type SetFilter = dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync;

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogControl {
    set: Option<Arc<SetFilter>>,
}

impl LogControl {
    /// A control that changes nothing (tests, or when another subscriber was
    /// installed first).
    pub fn detached() -> Self {
        Self { set: None }
    }

    /// Replaces the filter; `text` must have passed [`parse_filter`].
    pub fn set_filter(&self, text: &str) -> Result<(), String> {
        let filter = parse_filter(text)?;
        match &self.set {
            Some(set) => set(filter),
            None => Ok(()),
        }
    }
}

/// What `init` installed, to be kept until the process ends.
pub struct Logging {
    pub control: LogControl,
    /// Set when `filter` was refused and the default used instead.
    pub filter_problem: Option<String>,
    #[cfg(feature = "otel")]
    otel: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Logging {
    /// Flushes what the trace exporter still holds (with the `otel` feature).
    pub fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.otel
            && let Err(e) = provider.shutdown()
        {
            eprintln!("vigil: OpenTelemetry export: {e}");
        }
    }
}

/// Installs the global subscriber: `filter` (falling back to [`DEFAULT_FILTER`] if it
/// does not parse), then the stderr formatter, then the OTLP exporter if enabled.
pub fn init(format: LogFormat, filter: &str) -> Logging {
    let (initial, filter_problem) = match parse_filter(filter) {
        Ok(f) => (f, None),
        Err(problem) => (
            EnvFilter::new(DEFAULT_FILTER),
            Some(format!(
                "log filter {filter:?} {problem}; using {DEFAULT_FILTER:?}"
            )),
        ),
    };
    let (filter_layer, handle) = reload::Layer::new(initial);
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    #[cfg(feature = "otel")]
    let (otel_layer, otel) = match otel::layer() {
        Ok(Some((layer, provider))) => (Some(layer), Some(provider)),
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("vigil: OpenTelemetry export disabled: {e}");
            (None, None)
        }
    };
    let registry = Registry::default().with(filter_layer).with(fmt);
    #[cfg(feature = "otel")]
    let registry = registry.with(otel_layer);
    let control = match registry.try_init() {
        Ok(()) => LogControl {
            set: Some(Arc::new(move |f: EnvFilter| {
                handle.reload(f).map_err(|e| e.to_string())
            })),
        },
        // Another subscriber is installed (only in tests that call this twice).
        Err(_) => LogControl::detached(),
    };
    Logging {
        control,
        filter_problem,
        #[cfg(feature = "otel")]
        otel,
    }
}

#[cfg(feature = "otel")]
mod otel {
    //! Spans (and the events inside them) exported with OTLP over HTTP to
    //! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); the
    //! other standard `OTEL_*` variables (headers, timeout, service name, resource
    //! attributes) apply as the OpenTelemetry SDK reads them. Without an endpoint
    //! nothing is exported.

    use opentelemetry::trace::TracerProvider;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;

    type Boxed = Box<dyn Layer<super::Layered> + Send + Sync>;

    pub(super) fn layer() -> Result<Option<(Boxed, SdkTracerProvider)>, String> {
        let configured = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()));
        if !configured {
            return Ok(None);
        }
        // The exporter reads the endpoint and the other OTEL_* variables itself.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()
            .map_err(|e| e.to_string())?;
        let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "vigil".into());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        let tracer = provider.tracer("vigil");
        let layer = tracing_opentelemetry::layer().with_tracer(tracer).boxed();
        Ok(Some((layer, provider)))
    }
}

/// The subscriber stack the OTLP layer sits on.
#[cfg(feature = "otel")]
type Layered = tracing_subscriber::layer::Layered<
    Box<
        dyn Layer<tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>>
            + Send
            + Sync,
    >,
    tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>,
>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_parsed_strictly() {
        assert!(parse_filter("info").is_ok());
        assert!(parse_filter("warn,vigil::node=debug").is_ok());
        let err = parse_filter("vigil=loud").unwrap_err();
        assert!(err.contains("not a valid filter"), "{err}");
        assert!(parse_filter("  ").is_err());
        assert!(parse_filter(&"a".repeat(MAX_FILTER_LEN + 1)).is_err());
    }
}
