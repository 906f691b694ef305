//! What one request contributes to the router's metrics: its latencies, tokens and outcome.
//!
//! Invariant: a [`RequestObserver`] records its request's outcome exactly once — when the stream ends, fails or
//! times out, or, if the client stops reading first, when it is dropped (`cancelled`, unless every choice had
//! already finished). Cost: a few atomic adds per response.

use cleave_proto::v1;
use cleave_telemetry::{Outcome, RouterMetrics, RoutingReason};
use tokio::time::Instant;
use tonic::Code;

use crate::policy::PrefillReason;

/// The outcome label for a gRPC status code (the HTTP API answers the same categories).
pub(crate) fn outcome(code: Code) -> Outcome {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The routing-decision label for a prefill reason.
pub(crate) fn routing_reason(reason: PrefillReason) -> RoutingReason {
    match reason {
        PrefillReason::ShortPrompt => "local_short_prompt",
        PrefillReason::NoPrefillHeadroom => "local_no_prefill_headroom",
        PrefillReason::Remote => "remote",
    }
}

/// A started request's metrics, carried with its response stream.
#[derive(Debug)]
pub(crate) struct RequestObserver {
    metrics: RouterMetrics,
    arrived: Instant,
    admitted: Instant,
    /// When the last token-carrying response came; `None` before the first token.
    last_token: Option<Instant>,
    /// Choices still to finish (the request's `n`).
    unfinished: u32,
    cached_counted: bool,
    in_queue: bool,
    outcome: Option<Outcome>,
    /// The request's trace span (`router.generate`), ended when the observer drops.
    span: tracing::Span,
    generated: u64,
}

/// The span one request is traced under; its fields are filled as the request is routed and answered.
pub(crate) fn request_span() -> tracing::Span {
    tracing::info_span!(
        "router.generate",
        otel.kind = "server",
        request_id = tracing::field::Empty,
        model = tracing::field::Empty,
        prompt_tokens = tracing::field::Empty,
        cached_tokens = tracing::field::Empty,
        generated_tokens = tracing::field::Empty,
        decode_worker = tracing::field::Empty,
        prefill_worker = tracing::field::Empty,
        routing_cost = tracing::field::Empty,
        routing_reason = tracing::field::Empty,
        outcome = tracing::field::Empty,
    )
}

impl RequestObserver {
    /// A request arriving now; it expects one choice until [`RequestObserver::admitted`] says otherwise.
    pub(crate) fn new(metrics: RouterMetrics, span: tracing::Span) -> Self {
        let arrived = Instant::now();
        RequestObserver {
            metrics,
            arrived,
            admitted: arrived,
            last_token: None,
            unfinished: 1,
            cached_counted: false,
            in_queue: false,
            outcome: None,
            span,
            generated: 0,
        }
    }

    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The request took a queue slot; it expects `choices` finishes.
    pub(crate) fn admitted(&mut self, choices: u32) {
        self.admitted = Instant::now();
        self.unfinished = choices.max(1);
        if !self.in_queue {
            self.in_queue = true;
            self.metrics.enter_queue();
        }
    }

    /// The router decided where the prompt is prefilled.
    pub(crate) fn routed(&self, reason: PrefillReason, prompt_tokens: usize) {
        self.metrics.count_routed(routing_reason(reason), prompt_tokens);
        self.span.record("prompt_tokens", prompt_tokens);
        self.span.record("routing_reason", routing_reason(reason));
    }

    /// The first response leaves the router's queue, whether or not it carries a token.
    fn leave_queue(&mut self, now: Instant) {
        if self.in_queue {
            self.in_queue = false;
            self.metrics.leave_queue();
            self.metrics.observe_queue_wait(now - self.admitted);
        }
    }

    pub(crate) fn response(&mut self, response: &v1::GenerateResponse) {
        let now = Instant::now();
        self.leave_queue(now);
        let tokens = response.token_ids.len();
        if tokens > 0 {
            match self.last_token {
                None => self.metrics.observe_time_to_first_token(now - self.arrived),
                Some(last) => self.metrics.observe_inter_token(now - last, tokens),
            }
            if self.last_token.is_none() {
                tracing::info!(parent: &self.span, "first token");
            }
            self.last_token = Some(now);
            self.metrics.count_generated_tokens(tokens as u64);
            self.generated += tokens as u64;
        }
        if let Some(usage) = &response.usage
            && !self.cached_counted
        {
            self.cached_counted = true;
            self.metrics.count_cached_tokens(u64::from(usage.cached_tokens));
            self.span.record("cached_tokens", usage.cached_tokens);
        }
        if response.finish_reason != v1::FinishReason::Unspecified as i32 {
            self.unfinished = self.unfinished.saturating_sub(1);
        }
    }

    /// The request ended with `code` (`Code::Ok` when the worker closed its stream cleanly).
    pub(crate) fn end(&mut self, code: Code) {
        self.outcome.get_or_insert(outcome(code));
    }
}

impl Drop for RequestObserver {
    fn drop(&mut self) {
        let now = Instant::now();
        if self.in_queue {
            self.in_queue = false;
            self.metrics.leave_queue();
        }
        let outcome = self
            .outcome
            .unwrap_or(if self.unfinished == 0 { "ok" } else { "cancelled" });
        self.metrics.count_request(outcome);
        self.metrics.observe_request_duration(now - self.arrived);
        self.span.record("outcome", outcome);
        self.span.record("generated_tokens", self.generated);
    }
}
