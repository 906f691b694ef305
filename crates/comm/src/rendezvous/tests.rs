use super::*;

#[test]
fn unique_ids_round_trip_through_hex() {
    let id: Vec<u8> = (0..=255u8).collect();
    let text = hex_encode(&id);
    assert_eq!(text.len(), 512);
    assert_eq!(hex_decode(&text), Some(id));
    assert_eq!(hex_decode("abc"), None);
    assert_eq!(hex_decode("zz"), None);
}

#[test]
fn specs_that_cannot_form_a_group_are_refused() {
    for spec in [
        GroupSpec::new("g", 0, 0),
        GroupSpec::new("g", 2, 2),
        GroupSpec::new("", 2, 0),
        GroupSpec::new("a/b", 2, 0),
        GroupSpec::new("g", 2, 0).with_prefix("no-slash"),
    ] {
        assert!(
            matches!(validate(&spec), Err(RendezvousError::InvalidSpec { .. })),
            "{spec:?}"
        );
    }
    assert!(validate(&GroupSpec::new("g", 1, 0)).is_ok());
}

#[test]
fn keys_follow_the_documented_layout() {
    let spec = GroupSpec::new("tp-7", 4, 3);
    assert_eq!(spec.member_key(3), "/cleave/v1/groups/tp-7/members/3");
    assert_eq!(spec.unique_id_key(), "/cleave/v1/groups/tp-7/unique_id");
}
