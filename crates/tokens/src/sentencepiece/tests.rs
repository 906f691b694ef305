use super::recover_merges;

/// Expected output from transformers' `generate_merges(vocab, dict(zip(tokens, scores)))` on the same
/// vocabulary: a duplicated "b" (last id and score win, first position), a -0.0 score equal to 0.0, and
/// ties broken by the halves' lengths, then by order.
#[test]
fn merges_are_recovered_in_transformers_order() {
    let tokens: Vec<String> = [
        "<unk>", "▁", "a", "b", "ab", "▁a", "▁ab", "ba", "aba", "b", "abab", "bab",
    ]
    .map(String::from)
    .to_vec();
    let scores = [0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -4.0, -7.0, -8.0, -4.0, -0.0];
    let expected = [
        ("ba", "b"),
        ("b", "ab"),
        ("aba", "b"),
        ("ab", "ab"),
        ("a", "bab"),
        ("a", "b"),
        ("b", "a"),
        ("▁", "a"),
        ("▁a", "b"),
        ("▁", "ab"),
        ("ab", "a"),
        ("a", "ba"),
    ];
    let merges = recover_merges(&tokens, &scores);
    let merges: Vec<(&str, &str)> = merges.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
    assert_eq!(merges, expected);
}

#[test]
fn nan_scores_do_not_break_the_sort() {
    let tokens: Vec<String> = ["a", "b", "ab", "ba"].map(String::from).to_vec();
    let merges = recover_merges(&tokens, &[0.0, 0.0, f32::NAN, -1.0]);
    assert_eq!(
        merges,
        vec![("b".to_owned(), "a".to_owned()), ("a".to_owned(), "b".to_owned())]
    );
}
