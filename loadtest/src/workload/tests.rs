use super::*;

fn spec(kind: WorkloadKind) -> WorkloadSpec {
    WorkloadSpec { name: "w".into(), kind }
}

#[test]
fn sessions_grow_a_shared_prefix() {
    let w = spec(WorkloadKind::Sessions {
        sessions: 2,
        turns: 3,
        input: LengthDist::Fixed { value: 5 },
        output: LengthDist::Fixed { value: 4 },
    });
    let r = w.build(8, 1).unwrap();
    // Session 0: requests 0, 2, 4 are its turns 0..3; request 6 starts a new chat.
    assert!(r[2].prompt.starts_with(&r[0].prompt));
    assert!(r[4].prompt.starts_with(&r[2].prompt));
    assert!(r[4].input_words > r[2].input_words);
    assert!(!r[6].prompt.starts_with(&r[0].prompt));
    assert_ne!(r[1].prompt, r[0].prompt);
    assert_eq!(r[0].max_tokens, 4);
}

#[test]
fn shared_prefix_users_share_system_prompts() {
    let w = spec(WorkloadKind::SharedPrefix {
        system_prompts: 2,
        system_len: 50,
        input: LengthDist::Uniform { min: 3, max: 9 },
        output: LengthDist::Fixed { value: 1 },
    });
    let r = w.build(20, 3).unwrap();
    let prefixes: std::collections::BTreeSet<&str> = r.iter().map(|q| q.prompt.split('\n').next().unwrap()).collect();
    assert_eq!(prefixes.len(), 2);
    assert!(r.iter().all(|q| (54..=60).contains(&q.input_words)));
}

#[test]
fn trace_lines_share_hash_blocks_and_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jsonl");
    std::fs::write(
        &path,
        "{\"timestamp\": 0, \"input_length\": 20, \"output_length\": 3, \"hash_ids\": [1, 2]}\n\
         {\"timestamp\": 500, \"input_length\": 15, \"output_length\": 2, \"hash_ids\": [1, 3]}\n\
         {\"timestamp\": 900, \"input_length\": 6, \"output_length\": 2, \"session_id\": 7}\n\
         \n{\"timestamp\": 1000, \"input_length\": 9, \"output_length\": 2, \"session_id\": 7}\n",
    )
    .unwrap();
    let w = spec(WorkloadKind::Trace {
        path: path.clone(),
        block_tokens: 10,
    });
    let r = w.build(100, 0).unwrap();
    assert_eq!(r.len(), 4);
    let first_block = words(mix(0, &[8, 1]), 10);
    assert!(r[0].prompt.starts_with(&first_block) && r[1].prompt.starts_with(&first_block));
    assert_ne!(r[0].prompt, r[1].prompt);
    assert_eq!(r[1].prompt.split_whitespace().count(), 15);
    assert!(r[3].prompt.starts_with(&r[2].prompt));
    assert_eq!(r[3].input_words, 9);
    assert_eq!(r[1].at_s, Some(0.5));
    std::fs::write(&path, "{\"timestamp\": 0}\n").unwrap();
    assert!(matches!(w.build(1, 0), Err(LoadError::Trace { line: 1, .. })));
}

#[test]
fn synthetic_lengths_follow_the_distribution() {
    let w = spec(WorkloadKind::Synthetic {
        input: LengthDist::LogNormal {
            median: 100.0,
            sigma: 0.5,
        },
        output: LengthDist::Histogram {
            buckets: vec![(10, 1.0), (20, 0.0)],
        },
    });
    let r = w.build(500, 9).unwrap();
    assert!(r.iter().all(|q| q.max_tokens == 10));
    let mut lens: Vec<u32> = r.iter().map(|q| q.input_words).collect();
    lens.sort_unstable();
    assert!((80..=120).contains(&lens[250]), "median {}", lens[250]);
    assert_eq!(r[7].prompt.split_whitespace().count() as u32, r[7].input_words);
}
