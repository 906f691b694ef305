use super::frame::{self, FRAME_HEADER_LEN, FrameKind};
use super::*;

fn header() -> KvTransferHeader {
    KvTransferHeader {
        transfer_id: "req-7".to_owned(),
        layout: KvLayout {
            model_id: "llama".to_owned(),
            dtype: KvDtype::F32,
            block_size: 16,
            n_layers: 4,
            kv_heads: 2..6,
            head_dim: 8,
        },
        dest_blocks: vec![9, 3, 12],
        mode: TransferMode::Payload,
        link: String::new(),
    }
}

#[test]
fn hello_round_trips() {
    let encoded = frame::encode_hello(&header());
    assert_eq!(encoded[0], FrameKind::Hello as u8);
    let len = u32::from_le_bytes([encoded[1], encoded[2], encoded[3], encoded[4]]) as usize;
    assert_eq!(len, encoded.len() - FRAME_HEADER_LEN);
    assert!(len <= frame::hello_max_len(3));
    assert_eq!(frame::decode_hello(&encoded[FRAME_HEADER_LEN..]).unwrap(), header());
}

#[test]
fn a_direct_hello_names_its_nccl_link() {
    let mut linked = header();
    linked.mode = TransferMode::Direct;
    linked.layout.dtype = KvDtype::Bf16;
    linked.link = "kvlink-1f-2a-0+new".to_owned();
    let encoded = frame::encode_hello(&linked);
    assert!(encoded.len() - FRAME_HEADER_LEN <= frame::hello_max_len(3));
    assert_eq!(frame::decode_hello(&encoded[FRAME_HEADER_LEN..]).unwrap(), linked);
    assert!(linked.validate(None).is_ok());

    // A link is for direct transfers only, and an id-sized name at most.
    let mut payload = linked.clone();
    payload.mode = TransferMode::Payload;
    let err = payload.validate(None).unwrap_err();
    assert!(
        matches!(err, KvTransferError::InvalidHeader { field: "link", .. }),
        "{err}"
    );
    linked.link = "x".repeat(257);
    assert!(linked.validate(None).is_err());
}

#[test]
fn every_truncated_hello_is_an_error() {
    let encoded = frame::encode_hello(&header());
    let body = &encoded[FRAME_HEADER_LEN..];
    for cut in 0..body.len() {
        assert!(frame::decode_hello(&body[..cut]).is_err(), "cut at {cut} decoded");
    }
}

#[test]
fn bad_magic_and_version_are_named() {
    let mut encoded = frame::encode_hello(&header());
    encoded[FRAME_HEADER_LEN] = b'X';
    let err = frame::decode_hello(&encoded[FRAME_HEADER_LEN..]).unwrap_err();
    assert!(matches!(err, KvTransferError::BadMagic { .. }), "{err}");

    let mut encoded = frame::encode_hello(&header());
    encoded[FRAME_HEADER_LEN + 4] = 9;
    let err = frame::decode_hello(&encoded[FRAME_HEADER_LEN..]).unwrap_err();
    assert!(
        matches!(err, KvTransferError::UnsupportedVersion { got: 9, .. }),
        "{err}"
    );
}

#[test]
fn layout_mismatch_names_the_field() {
    let ours = header().layout;
    let mut theirs = ours.clone();
    theirs.block_size = 32;
    let err = ours.check_matches(&theirs).unwrap_err();
    assert_eq!(
        err.to_string(),
        "kv transfer: block_size 32 does not match this worker's 16"
    );

    let mut theirs = ours.clone();
    theirs.kv_heads = 0..4;
    let err = ours.check_matches(&theirs).unwrap_err();
    assert!(
        err.to_string()
            .contains("kv_heads 0..4 does not match this worker's 2..6"),
        "{err}"
    );
}

#[test]
fn header_validation_rejects_bad_blocks() {
    let mut h = header();
    h.dest_blocks = vec![1, 2, 1];
    assert!(
        h.validate(None)
            .unwrap_err()
            .to_string()
            .contains("block 1 is listed twice")
    );
    let h = header();
    assert!(
        h.validate(Some(12))
            .unwrap_err()
            .to_string()
            .contains("block 12 is outside")
    );
    assert!(h.validate(Some(13)).is_ok());
}

#[test]
fn abort_reason_is_cut_at_a_char_boundary() {
    let reason = "é".repeat(frame::MAX_REASON_LEN);
    let encoded = frame::encode_abort(&reason);
    let body = &encoded[FRAME_HEADER_LEN..];
    assert!(body.len() <= frame::MAX_REASON_LEN);
    assert!(std::str::from_utf8(body).is_ok());
}
