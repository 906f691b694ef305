use super::*;

fn round_trip(op: Op) {
    let (kind, words) = op.encode();
    assert_eq!(Op::decode(kind, &words).ok(), Some(op));
}

#[test]
fn every_operation_survives_encoding() {
    round_trip(Op::Init {
        n_blocks: 300,
        block_size: 16,
    });
    round_trip(Op::Forward {
        gather: true,
        chunks: vec![
            OwnedChunk {
                tokens: vec![1, 2, 3],
                start_pos: 0,
                blocks: vec![7],
                want_logits: true,
            },
            OwnedChunk {
                tokens: vec![9],
                start_pos: 40,
                blocks: vec![1, 2, 3],
                want_logits: false,
            },
        ],
    });
    round_trip(Op::CopyBlock { src: 4, dst: 5 });
    round_trip(Op::WriteBlockLayer {
        layer: 3,
        block: 2,
        keys: vec![1.5, -0.0, f32::MAX],
        values: vec![0.25, 2.0, -7.0],
    });
    round_trip(Op::JoinDevice {
        id: (0..=255).collect(),
    });
    round_trip(Op::Heartbeat);
    round_trip(Op::Shutdown);
    let error = Op::decode(7, &[1, 256]).unwrap_err().to_string();
    assert!(error.contains("above 255"), "{error}");
}

#[test]
fn truncated_or_padded_messages_are_errors_not_panics() {
    let (kind, words) = Op::Forward {
        gather: false,
        chunks: vec![OwnedChunk {
            tokens: vec![1, 2],
            start_pos: 0,
            blocks: vec![0],
            want_logits: true,
        }],
    }
    .encode();
    for cut in 0..words.len() {
        let error = Op::decode(kind, &words[..cut]).err().map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("malformed")), "cut at {cut}");
    }
    let mut padded = words.clone();
    padded.push(0);
    assert!(Op::decode(kind, &padded).is_err());
    // A huge length claim fails on the bounds check instead of allocating.
    assert!(Op::decode(kind, &[0, 1, 0, 1, u32::MAX, 0]).is_err());
    assert!(Op::decode(99, &[]).is_err());
}
