//! The one-line run (`cleave load --target … --rate … --requests …`) as a one-stage campaign, so it goes through
//! exactly the same code as a campaign file. Invariant: the campaign it builds is validated. Cost: none.

use crate::arrival::Arrival;
use crate::campaign::{Campaign, Slo, StageSpec, TargetSpec};
use crate::error::LoadError;
use crate::lengths::LengthDist;
use crate::workload::{WorkloadKind, WorkloadSpec};

#[derive(Debug, Clone)]
pub struct QuickRun {
    pub target: String,
    /// Poisson arrivals at this rate; with `concurrency` too, at most that many in flight.
    pub rate: Option<f64>,
    /// Closed loop with this many clients (when `rate` is not set).
    pub concurrency: Option<usize>,
    pub requests: usize,
    pub duration_s: f64,
    pub input_len: u32,
    pub output_len: u32,
    pub slo: Slo,
    pub seed: u64,
    pub connections: usize,
}

impl QuickRun {
    /// 100 requests of 128 → 64 tokens, closed loop with one client.
    pub fn new(target: &str) -> QuickRun {
        QuickRun {
            target: target.into(),
            rate: None,
            concurrency: None,
            requests: 100,
            duration_s: 600.0,
            input_len: 128,
            output_len: 64,
            slo: Slo::default(),
            seed: 0,
            connections: 4,
        }
    }
}

pub fn quick_campaign(q: &QuickRun) -> Result<Campaign, LoadError> {
    let arrival = match (q.rate, q.concurrency) {
        (Some(rate), _) => Arrival::Poisson { rate },
        (None, c) => Arrival::Concurrency {
            concurrency: c.unwrap_or(1),
        },
    };
    let campaign = Campaign {
        name: "quick".into(),
        seed: q.seed,
        slo: q.slo,
        targets: vec![TargetSpec {
            name: "target".into(),
            url: q.target.clone(),
            model: String::new(),
            connections: q.connections,
            ready_timeout_s: 30.0,
        }],
        workloads: vec![WorkloadSpec {
            name: "fixed".into(),
            kind: WorkloadKind::Synthetic {
                input: LengthDist::Fixed { value: q.input_len },
                output: LengthDist::Fixed { value: q.output_len },
            },
        }],
        stages: vec![StageSpec {
            name: "quick".into(),
            target: None,
            workload: "fixed".into(),
            arrival,
            requests: q.requests,
            duration_s: q.duration_s,
            drain_s: 60.0,
            timeout_s: 300.0,
            max_in_flight: q.rate.and(q.concurrency),
            sweep: None,
        }],
        processes: Vec::new(),
        faults: Vec::new(),
    };
    campaign.validate()?;
    Ok(campaign)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_one_stage() {
        let mut q = QuickRun::new("grpc://127.0.0.1:1");
        let closed = quick_campaign(&q).unwrap();
        assert_eq!(closed.stages[0].arrival, Arrival::Concurrency { concurrency: 1 });
        q.rate = Some(3.0);
        q.concurrency = Some(5);
        let open = quick_campaign(&q).unwrap();
        assert_eq!(open.stages[0].arrival, Arrival::Poisson { rate: 3.0 });
        assert_eq!(open.stages[0].max_in_flight, Some(5));
        q.rate = Some(0.0);
        assert!(matches!(quick_campaign(&q), Err(LoadError::Invalid { .. })));
        q.rate = None;
        q.input_len = 0;
        assert!(quick_campaign(&q).is_err());
        q.input_len = 1;
        let mut c = quick_campaign(&q).unwrap();
        c.stages[0].arrival = Arrival::Trace { speedup: 1.0 };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("needs a trace workload"), "{err}");
    }
}
