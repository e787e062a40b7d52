//! What the client and the server feed to tracing and metrics. Each part compiles to nothing
//! without its feature, so the call sites need no `cfg`.
//!
//! - Trace propagation (feature `opentelemetry`): [`capture`] turns the OpenTelemetry context of
//!   the current span into the JSON stored with a job (`{"traceparent": "..", "tracestate":
//!   ".."}`, the W3C Trace Context headers); [`link_parent`] makes a job's span a child of it.
//! - Metrics (feature `metrics`): [`ClientMetrics`] and [`JobMetricsCache`] keep one set of
//!   `metrics` handles per (job name, queue), so that a job's run builds no labels.

/// The trace context of the current span, as stored in `NewJob::trace_context`; `None` when
/// there is no valid OpenTelemetry span (no `tracing-opentelemetry` layer, no span, or the
/// feature is off).
#[cfg(feature = "opentelemetry")]
pub(crate) fn capture() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let mut cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        // An application that uses the OpenTelemetry API without tracing spans.
        cx = opentelemetry::Context::current();
    }
    let span = cx.span();
    w3c::encode(span.span_context())
}

#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn capture() -> Option<String> {
    None
}

/// Makes `span` (a job's span, not yet entered) a child of the context stored with the job. A
/// context that does not parse is ignored with a debug log: it never fails the job.
#[cfg(feature = "opentelemetry")]
pub(crate) fn link_parent(span: &tracing::Span, trace_context: Option<&str>) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let Some(raw) = trace_context else { return };
    match w3c::decode(raw) {
        Some(parent) => {
            let cx = opentelemetry::Context::new().with_remote_span_context(parent);
            // Fails only when no OpenTelemetry layer is installed (or the span is disabled):
            // then there is no trace to join.
            let _ = span.set_parent(cx);
        }
        None => tracing::debug!(
            trace_context = raw,
            "ignoring a job's trace context that is not W3C Trace Context JSON"
        ),
    }
}

#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn link_parent(_span: &tracing::Span, _trace_context: Option<&str>) {}

/// The W3C Trace Context headers (`traceparent`, `tracestate`), carried as a JSON object.
#[cfg(feature = "opentelemetry")]
pub(crate) mod w3c {
    use std::str::FromStr;

    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Carrier {
        traceparent: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tracestate: Option<String>,
    }

    /// The JSON for a span context; `None` for an invalid one (or one too long to store).
    pub(crate) fn encode(sc: &SpanContext) -> Option<String> {
        if !sc.is_valid() {
            return None;
        }
        let flags = sc.trace_flags() & TraceFlags::SAMPLED;
        let tracestate = sc.trace_state().header();
        let carrier = Carrier {
            traceparent: format!(
                "00-{:032x}-{:016x}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                flags
            ),
            tracestate: (!tracestate.is_empty()).then_some(tracestate),
        };
        serde_json::to_string(&carrier)
            .ok()
            .filter(|json| json.len() <= firelane_core::MAX_TRACE_CONTEXT)
    }

    /// The remote span context a stored JSON describes; `None` unless it is a valid W3C
    /// `traceparent` (version 00, or a later version with the same first four fields).
    pub(crate) fn decode(json: &str) -> Option<SpanContext> {
        let carrier: Carrier = serde_json::from_str(json).ok()?;
        let parts: Vec<&str> = carrier.traceparent.trim().split('-').collect();
        let [version, trace_id, span_id, flags, rest @ ..] = parts.as_slice() else {
            return None;
        };
        let version = parse_hex_u8(version)?;
        if version == 0xff || (version == 0 && !rest.is_empty()) {
            return None;
        }
        if !is_lower_hex(trace_id, 32) || !is_lower_hex(span_id, 16) {
            return None;
        }
        let trace_id = TraceId::from_hex(trace_id).ok()?;
        let span_id = SpanId::from_hex(span_id).ok()?;
        let flags = TraceFlags::new(parse_hex_u8(flags)?) & TraceFlags::SAMPLED;
        let state = carrier
            .tracestate
            .as_deref()
            .and_then(|s| TraceState::from_str(s).ok())
            .unwrap_or_default();
        let sc = SpanContext::new(trace_id, span_id, flags, true, state);
        sc.is_valid().then_some(sc)
    }

    fn parse_hex_u8(s: &str) -> Option<u8> {
        if !is_lower_hex(s, 2) {
            return None;
        }
        u8::from_str_radix(s, 16).ok()
    }

    fn is_lower_hex(s: &str, len: usize) -> bool {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_a_sampled_context_with_state() {
            let state = TraceState::from_str("vendor=abc,other=1").unwrap_or_default();
            let sc = SpanContext::new(
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap_or(TraceId::INVALID),
                SpanId::from_hex("00f067aa0ba902b7").unwrap_or(SpanId::INVALID),
                TraceFlags::SAMPLED,
                false,
                state,
            );
            let json = encode(&sc).expect("a valid context encodes");
            assert_eq!(
                json,
                r#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"vendor=abc,other=1"}"#
            );
            let back = decode(&json).expect("decodes");
            assert_eq!(back.trace_id(), sc.trace_id());
            assert_eq!(back.span_id(), sc.span_id());
            assert!(back.is_sampled());
            assert!(back.is_remote());
            assert_eq!(back.trace_state().header(), "vendor=abc,other=1");
        }

        #[test]
        fn agrees_with_the_sdk_trace_context_propagator() {
            use opentelemetry::propagation::TextMapPropagator;
            use opentelemetry::trace::TraceContextExt;
            use opentelemetry_sdk::propagation::TraceContextPropagator;
            use std::collections::HashMap;

            let sc = SpanContext::new(
                TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap_or(TraceId::INVALID),
                SpanId::from_hex("b7ad6b7169203331").unwrap_or(SpanId::INVALID),
                TraceFlags::SAMPLED,
                true,
                TraceState::from_str("congo=t61rcWkgMzE").unwrap_or_default(),
            );
            let cx = opentelemetry::Context::new().with_remote_span_context(sc.clone());
            let mut headers: HashMap<String, String> = HashMap::new();
            TraceContextPropagator::new().inject_context(&cx, &mut headers);
            let ours: HashMap<String, String> =
                serde_json::from_str(&encode(&sc).expect("encodes")).expect("a JSON object");
            assert_eq!(ours, headers);

            let back = TraceContextPropagator::new().extract(&ours);
            assert_eq!(back.span().span_context(), &sc);
            assert_eq!(
                decode(&serde_json::to_string(&headers).expect("json")),
                Some(sc)
            );
        }

        #[test]
        fn an_invalid_context_is_not_stored() {
            assert_eq!(encode(&SpanContext::empty_context()), None);
        }

        #[test]
        fn malformed_contexts_are_refused() {
            for bad in [
                "",
                "not json",
                "{}",
                r#"{"traceparent":5}"#,
                r#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"}"#,
                r#"{"traceparent":"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"}"#,
                r#"{"traceparent":"00-00000000000000000000000000000000-00f067aa0ba902b7-01"}"#,
                r#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"}"#,
                r#"{"traceparent":"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#,
                r#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"}"#,
                r#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"}"#,
                r#"{"traceparent":"00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#,
            ] {
                assert!(decode(bad).is_none(), "{bad:?} should not decode");
            }
        }

        #[test]
        fn a_later_version_with_more_fields_is_read_and_bad_state_dropped() {
            let sc = decode(
                r#"{"traceparent":"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-extra","tracestate":"=,="}"#,
            )
            .expect("decodes");
            assert!(sc.is_sampled());
            assert_eq!(sc.trace_flags(), TraceFlags::SAMPLED);
        }
    }
}

#[cfg(feature = "metrics")]
pub(crate) use metrics_impl::{ClientMetrics, JobMetricsCache};

#[cfg(not(feature = "metrics"))]
pub(crate) use no_metrics::{ClientMetrics, JobMetricsCache};

/// How an attempt ended, for the outcome counters and the duration histogram's label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttemptOutcome {
    Succeeded = 0,
    Retried = 1,
    Failed = 2,
    Snoozed = 3,
    Cancelled = 4,
    HandedBack = 5,
}

impl AttemptOutcome {
    #[cfg(feature = "metrics")]
    pub(crate) const ALL: [AttemptOutcome; 6] = [
        AttemptOutcome::Succeeded,
        AttemptOutcome::Retried,
        AttemptOutcome::Failed,
        AttemptOutcome::Snoozed,
        AttemptOutcome::Cancelled,
        AttemptOutcome::HandedBack,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Retried => "retried",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Snoozed => "snoozed",
            AttemptOutcome::Cancelled => "cancelled",
            AttemptOutcome::HandedBack => "handed_back",
        }
    }

    pub(crate) fn of(outcome: &crate::Outcome) -> Option<Self> {
        Some(match outcome {
            crate::Outcome::Succeeded => AttemptOutcome::Succeeded,
            crate::Outcome::Retry { .. } => AttemptOutcome::Retried,
            crate::Outcome::Failed { .. } => AttemptOutcome::Failed,
            crate::Outcome::Snoozed { .. } => AttemptOutcome::Snoozed,
            crate::Outcome::Cancelled { .. } => AttemptOutcome::Cancelled,
            crate::Outcome::HandedBack { .. } => AttemptOutcome::HandedBack,
            #[allow(unreachable_patterns)]
            _ => return None,
        })
    }
}

#[cfg(not(feature = "metrics"))]
mod no_metrics {
    use std::time::Duration;

    use super::AttemptOutcome as Outcome;

    #[derive(Clone, Debug)]
    pub(crate) struct ClientMetrics;

    impl ClientMetrics {
        pub(crate) fn new() -> Self {
            ClientMetrics
        }

        pub(crate) fn prepare(&self, _jobs: &[crate::NewJob]) -> Pending {
            Pending
        }
    }

    pub(crate) struct Pending;

    impl Pending {
        pub(crate) fn accepted(self) {}
    }

    #[derive(Debug)]
    pub(crate) struct JobMetricsCache;

    impl JobMetricsCache {
        pub(crate) fn new() -> Self {
            JobMetricsCache
        }

        pub(crate) fn start(&self, _job: &crate::FetchedJob) -> RunMetrics {
            RunMetrics
        }
    }

    pub(crate) struct RunMetrics;

    impl RunMetrics {
        pub(crate) fn finish(&self, _outcome: Outcome, _duration: Duration) {}
    }
}

#[cfg(feature = "metrics")]
mod metrics_impl {
    use std::collections::HashMap;
    use std::sync::{Arc, OnceLock, RwLock};
    use std::time::Duration;

    use chrono::Utc;
    use metrics::{Counter, Histogram};

    use super::AttemptOutcome as Outcome;
    use crate::metrics::names;

    /// Handles per job name, then per queue: looked up with `&str`, built once.
    #[derive(Debug)]
    struct Cache<T> {
        map: RwLock<HashMap<String, HashMap<String, Arc<T>>>>,
    }

    impl<T> Default for Cache<T> {
        fn default() -> Self {
            Self {
                map: RwLock::new(HashMap::new()),
            }
        }
    }

    impl<T> Cache<T> {
        fn get(&self, job: &str, queue: &str, make: impl FnOnce() -> T) -> Arc<T> {
            {
                let map = self
                    .map
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(handles) = map.get(job).and_then(|q| q.get(queue)) {
                    return Arc::clone(handles);
                }
            }
            let mut map = self
                .map
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let by_queue = map.entry(job.to_owned()).or_default();
            Arc::clone(
                by_queue
                    .entry(queue.to_owned())
                    .or_insert_with(|| Arc::new(make())),
            )
        }
    }

    /// The client's enqueue counters.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct ClientMetrics {
        enqueued: Arc<Cache<Counter>>,
    }

    impl ClientMetrics {
        pub(crate) fn new() -> Self {
            Self::default()
        }

        /// The counters of jobs about to be submitted; [`Pending::accepted`] counts them
        /// once the store took them (the jobs themselves are moved into the store call).
        pub(crate) fn prepare(&self, jobs: &[crate::NewJob]) -> Pending {
            Pending(
                jobs.iter()
                    .map(|job| {
                        self.enqueued.get(&job.name, &job.queue, || {
                            metrics::counter!(names::JOBS_ENQUEUED, "job" => job.name.clone(), "queue" => job.queue.clone())
                        })
                    })
                    .collect(),
            )
        }
    }

    /// Enqueue counters waiting for the store's answer.
    pub(crate) struct Pending(Vec<Arc<Counter>>);

    impl Pending {
        pub(crate) fn accepted(self) {
            for counter in self.0 {
                counter.increment(1);
            }
        }
    }

    /// The server's handles for one (job, queue).
    #[derive(Debug)]
    struct JobMetrics {
        job: String,
        queue: String,
        started: Counter,
        pickup: Histogram,
        /// Per outcome, in [`Outcome::ALL`]'s order.
        ended: [Counter; 6],
        /// Built at an outcome's first use, so that a histogram appears only for outcomes
        /// that happen.
        duration: [OnceLock<Histogram>; 6],
    }

    impl JobMetrics {
        fn new(job: &str, queue: &str) -> Self {
            let (job, queue) = (job.to_owned(), queue.to_owned());
            let counter = |name: &'static str| metrics::counter!(name, "job" => job.clone(), "queue" => queue.clone());
            JobMetrics {
                started: counter(names::JOBS_STARTED),
                pickup: metrics::histogram!(names::JOB_PICKUP_LATENCY, "job" => job.clone(), "queue" => queue.clone()),
                ended: Outcome::ALL.map(|o| counter(counter_of(o))),
                duration: Default::default(),
                job,
                queue,
            }
        }
    }

    fn counter_of(outcome: Outcome) -> &'static str {
        match outcome {
            Outcome::Succeeded => names::JOBS_SUCCEEDED,
            Outcome::Retried => names::JOBS_RETRIED,
            Outcome::Failed => names::JOBS_FAILED,
            Outcome::Snoozed => names::JOBS_SNOOZED,
            Outcome::Cancelled => names::JOBS_CANCELLED,
            Outcome::HandedBack => names::JOBS_HANDED_BACK,
        }
    }

    /// The server's handles, per (job, queue).
    #[derive(Debug, Default)]
    pub(crate) struct JobMetricsCache {
        cache: Cache<JobMetrics>,
    }

    impl JobMetricsCache {
        pub(crate) fn new() -> Self {
            Self::default()
        }

        /// Counts a started attempt and its pickup latency.
        pub(crate) fn start(&self, job: &crate::FetchedJob) -> RunMetrics {
            let handles = self.cache.get(&job.name, &job.queue, || {
                JobMetrics::new(&job.name, &job.queue)
            });
            handles.started.increment(1);
            let waited = (Utc::now() - job.enqueued_at)
                .to_std()
                .unwrap_or(Duration::ZERO);
            handles.pickup.record(waited.as_secs_f64());
            RunMetrics(handles)
        }
    }

    /// One attempt's handles, from its start to its outcome.
    pub(crate) struct RunMetrics(Arc<JobMetrics>);

    impl RunMetrics {
        /// Counts the attempt's outcome and records its duration.
        pub(crate) fn finish(&self, outcome: Outcome, duration: Duration) {
            let i = outcome as usize;
            let h = &self.0;
            h.ended[i].increment(1);
            h.duration[i]
                .get_or_init(|| {
                    metrics::histogram!(
                        names::JOB_DURATION,
                        "job" => h.job.clone(),
                        "queue" => h.queue.clone(),
                        "outcome" => outcome.as_str()
                    )
                })
                .record(duration.as_secs_f64());
        }
    }
}
