//! The generated types encode and decode losslessly, and the descriptor set names every service (reflection
//! depends on it).

use cleave_proto::v1::{ChatMessage, FinishReason, GenerateRequest, GenerateResponse, Usage};
use prost::Message;

#[test]
fn messages_round_trip_and_optional_fields_stay_absent() {
    let req = GenerateRequest {
        model: "smollm2-135m".into(),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: "hi".into(),
        }],
        max_tokens: Some(16),
        temperature: Some(0.0),
        stop: vec!["\n".into()],
        ..Default::default()
    };
    let decoded = GenerateRequest::decode(req.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded, req);
    assert_eq!(
        decoded.top_p, None,
        "unset optional fields are distinguishable from zero"
    );

    let resp = GenerateResponse {
        token_ids: vec![1, 2],
        finish_reason: FinishReason::Length as i32,
        usage: Some(Usage {
            prompt_tokens: 5,
            cached_tokens: 0,
            completion_tokens: 2,
        }),
        ..Default::default()
    };
    assert_eq!(GenerateResponse::decode(resp.encode_to_vec().as_slice()).unwrap(), resp);
}

#[test]
fn descriptor_set_describes_both_services() {
    let set = cleave_proto::v1::FILE_DESCRIPTOR_SET;
    let text = String::from_utf8_lossy(set);
    for name in ["Generation", "Worker", "SubscribeKvEvents", "cleave/v1/worker.proto"] {
        assert!(text.contains(name), "descriptor set lacks {name}");
    }
}
