use super::*;

const LIMITS: ModelLimits = ModelLimits {
    max_context: 100,
    vocab_size: 50,
};

fn field_of(spec: SamplingSpec, prompt_len: usize) -> &'static str {
    match spec.validate(prompt_len, LIMITS) {
        Err(InvalidArgument { field, .. }) => field,
        other => panic!("expected an invalid argument, got {other:?}"),
    }
}

#[test]
fn defaults_fill_the_context() {
    let v = SamplingSpec::default().validate(10, LIMITS).unwrap();
    assert_eq!(v.stop.max_tokens, 90);
    assert_eq!(v.params.temperature, 1.0);
    assert_eq!(v.n, 1);
}

#[test]
fn each_bad_field_is_named() {
    let cases: Vec<(SamplingSpec, usize, &str)> = vec![
        (SamplingSpec::default(), 0, "prompt"),
        (SamplingSpec::default(), 100, "prompt"),
        (
            SamplingSpec {
                max_tokens: Some(0),
                ..Default::default()
            },
            5,
            "max_tokens",
        ),
        (
            SamplingSpec {
                max_tokens: Some(u32::MAX),
                ..Default::default()
            },
            5,
            "max_tokens",
        ),
        (
            SamplingSpec {
                max_tokens: Some(96),
                ..Default::default()
            },
            5,
            "max_tokens",
        ),
        (
            SamplingSpec {
                temperature: Some(-0.1),
                ..Default::default()
            },
            5,
            "temperature",
        ),
        (
            SamplingSpec {
                temperature: Some(f32::NAN),
                ..Default::default()
            },
            5,
            "temperature",
        ),
        (
            SamplingSpec {
                top_p: Some(0.0),
                ..Default::default()
            },
            5,
            "top_p",
        ),
        (
            SamplingSpec {
                top_p: Some(1.5),
                ..Default::default()
            },
            5,
            "top_p",
        ),
        (
            SamplingSpec {
                min_p: Some(-1.0),
                ..Default::default()
            },
            5,
            "min_p",
        ),
        (
            SamplingSpec {
                repetition_penalty: Some(0.0),
                ..Default::default()
            },
            5,
            "repetition_penalty",
        ),
        (
            SamplingSpec {
                presence_penalty: Some(3.0),
                ..Default::default()
            },
            5,
            "presence_penalty",
        ),
        (
            SamplingSpec {
                frequency_penalty: Some(-3.0),
                ..Default::default()
            },
            5,
            "frequency_penalty",
        ),
        (
            SamplingSpec {
                logprobs: Some(21),
                ..Default::default()
            },
            5,
            "logprobs",
        ),
        (
            SamplingSpec {
                n: Some(0),
                ..Default::default()
            },
            5,
            "n",
        ),
        (
            SamplingSpec {
                n: Some(17),
                ..Default::default()
            },
            5,
            "n",
        ),
        (
            SamplingSpec {
                stop_token_ids: vec![50],
                ..Default::default()
            },
            5,
            "stop_token_ids",
        ),
        (
            SamplingSpec {
                stop: vec![String::new()],
                ..Default::default()
            },
            5,
            "stop",
        ),
    ];
    for (spec, prompt_len, field) in cases {
        assert_eq!(field_of(spec.clone(), prompt_len), field, "{spec:?}");
    }
}

#[test]
fn max_tokens_up_to_the_context_is_accepted() {
    let v = SamplingSpec {
        max_tokens: Some(95),
        ..Default::default()
    }
    .validate(5, LIMITS)
    .unwrap();
    assert_eq!(v.stop.max_tokens, 95);
}
