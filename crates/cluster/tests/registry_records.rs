//! The typed worker records and key layout: JSON shape, validation, and errors that name the key and field.

use cleave_cluster::registry::{
    DEFAULT_PREFIX, ErrorCategory, KeyLayout, ParallelLayout, RegistryError, WorkerRecord, WorkerRole,
};

fn record() -> WorkerRecord {
    WorkerRecord {
        id: "d0".to_owned(),
        role: WorkerRole::Both,
        model: "smollm2-135m".to_owned(),
        grpc_addr: "10.0.0.1:7001".to_owned(),
        kv_addr: "10.0.0.1:7002".to_owned(),
        kv_transports: vec!["tcp".to_owned()],
        block_size: 16,
        capacity_blocks: 4096,
        parallel: ParallelLayout::default(),
        metrics_addr: String::new(),
        group: String::new(),
    }
}

#[test]
fn default_layout_puts_workers_under_cleave_v1() {
    let layout = KeyLayout::default();
    assert_eq!(DEFAULT_PREFIX, "/cleave/v1/");
    assert_eq!(layout.workers(), "/cleave/v1/workers/");
    assert_eq!(layout.worker("d0"), "/cleave/v1/workers/d0");
    assert_eq!(KeyLayout::new("/other").unwrap().worker("x"), "/other/workers/x");
    assert!(KeyLayout::new("relative/").is_err());
}

#[test]
fn record_round_trips_through_json() {
    let key = "/cleave/v1/workers/d0";
    let json = record().to_json(key).unwrap();
    assert!(json.contains(r#""role":"both""#), "{json}");
    assert_eq!(WorkerRecord::from_json(key, &json).unwrap(), record());
}

#[test]
fn missing_parallel_layout_defaults_to_one_device() {
    let json = r#"{"id":"p1","role":"prefill","model":"m","grpc_addr":"a:1","kv_addr":"a:2",
        "kv_transports":["tcp"],"block_size":16,"capacity_blocks":10}"#;
    let parsed = WorkerRecord::from_json("/k/p1", json).unwrap();
    assert_eq!(parsed.role, WorkerRole::Prefill);
    assert_eq!(parsed.parallel, ParallelLayout::default());
    let older = json.replace(
        r#""capacity_blocks":10"#,
        r#""capacity_blocks":10,"parallel":{"tensor":3,"pipeline":1}"#,
    );
    let parsed = WorkerRecord::from_json("/k/p1", &older).unwrap();
    assert_eq!(
        parsed.parallel,
        ParallelLayout {
            tensor: 3,
            pipeline: 1,
            expert: 1,
            context: 1,
        }
    );
}

#[test]
fn invalid_json_names_the_key() {
    let error = WorkerRecord::from_json("/cleave/v1/workers/bad", "{").unwrap_err();
    assert!(matches!(error, RegistryError::InvalidRecord { .. }), "{error:?}");
    assert_eq!(error.category(), ErrorCategory::InvalidArgument);
    assert!(error.to_string().contains("/cleave/v1/workers/bad"), "{error}");
}

#[test]
fn unknown_role_is_rejected() {
    let json = record().to_json("k").unwrap().replace(r#""both""#, r#""router""#);
    assert!(WorkerRecord::from_json("/k", &json).is_err());
}

#[test]
fn validation_names_the_field() {
    type Breaker = fn(&mut WorkerRecord);
    let cases: [(&str, Breaker); 5] = [
        ("id", |r| r.id = "a/b".to_owned()),
        ("model", |r| r.model.clear()),
        ("kv_transports", |r| {
            r.role = WorkerRole::Decode;
            r.kv_transports.clear()
        }),
        ("block_size", |r| r.block_size = 0),
        ("parallel", |r| r.parallel.tensor = 0),
    ];
    for (field, break_it) in cases {
        let mut bad = record();
        break_it(&mut bad);
        let error = bad.validate("/k/d0").unwrap_err();
        assert!(
            matches!(&error, RegistryError::InvalidField { field: f, .. } if *f == field),
            "{error:?}"
        );
        assert!(error.to_string().contains(field), "{error}");
        assert!(!error.is_retryable());
    }
}
