use super::*;

fn record(id: u64, sent_s: f64, ttft: f64, e2e: f64, tokens: u32) -> RequestRecord {
    let spec = RequestSpec {
        prompt: String::new(),
        max_tokens: tokens,
        input_words: 10,
        session: None,
        at_s: None,
    };
    let mut r = RequestRecord::new(id, &spec, sent_s);
    r.ttft_ms = Some(ttft);
    r.e2e_ms = e2e;
    r.output_tokens = tokens;
    r.prompt_tokens = Some(12);
    r.cached_tokens = Some(6);
    r.finish();
    r
}

#[test]
fn percentiles_are_nearest_rank() {
    let p = Percentiles::of((1..=100).map(f64::from).collect());
    assert_eq!((p.p50, p.p90, p.p99, p.max, p.count), (50.0, 90.0, 99.0, 100.0, 100));
    assert_eq!(Percentiles::of(vec![]), Percentiles::default());
}

#[test]
fn goodput_counts_requests_meeting_both_slos() {
    let slo = Slo {
        ttft_ms: 100.0,
        tpot_ms: 10.0,
    };
    // TPOT = (e2e - ttft) / 9.
    let records = vec![
        record(0, 0.0, 50.0, 140.0, 10),  // TPOT 10: meets
        record(1, 0.5, 150.0, 200.0, 10), // TTFT too slow
        record(2, 1.0, 50.0, 500.0, 10),  // TPOT 50: too slow
        {
            let mut r = record(3, 1.5, 10.0, 500.0, 10);
            r.fail("Unavailable", "gone");
            r
        },
    ];
    assert!((records[0].tpot_ms.unwrap() - 10.0).abs() < 1e-9);
    let mut s = StageSummary::default();
    s.measure(&records, &slo);
    assert_eq!((s.requests, s.succeeded), (4, 3));
    assert_eq!(s.errors.get("Unavailable"), Some(&1));
    // Span: first send at 0, last completion at 1.5 + 0.5 = 2.0 s.
    assert!((s.span_s - 2.0).abs() < 1e-9);
    assert!((s.goodput - 0.5).abs() < 1e-9);
    assert!((s.request_rate - 1.5).abs() < 1e-9);
    assert!((s.output_tokens_per_s - 15.0).abs() < 1e-9);
    assert!((s.cache_hit_ratio - 0.5).abs() < 1e-9);
    assert_eq!(s.ttft_ms.max, 150.0);
}

#[test]
fn recovery_is_measured_to_the_first_success_after_the_last_failure() {
    let mut records: Vec<RequestRecord> = (0..10)
        .map(|i| record(i, f64::from(i as u32) * 0.5, 5.0, 20.0, 2))
        .collect();
    for r in &mut records[4..6] {
        r.fail("Unavailable", "worker gone");
    }
    // Fault at 1.9 s; failures sent at 2.0 and 2.5; the first success after is sent at 3.0 and done at 3.02.
    let f = fault_outcome(&records, "decode-0", "kill", 1.9);
    assert_eq!(f.errors.get("Unavailable"), Some(&2));
    assert!((f.recovery_s.unwrap() - 1.12).abs() < 1e-9);
    assert_eq!(f.ttft_before_ms.count, 4);
    let none = fault_outcome(&records[..4], "x", "kill", 10.0);
    assert_eq!(none.recovery_s, Some(0.0));
}
