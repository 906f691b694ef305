use super::Cursor;
use crate::error::FormatError;

#[test]
fn reads_little_endian_scalars_in_order() {
    let mut bytes = vec![0xfe];
    bytes.extend_from_slice(&0x1234u16.to_le_bytes());
    bytes.extend_from_slice(&(-5i32).to_le_bytes());
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    bytes.extend_from_slice(&1.5f32.to_le_bytes());
    bytes.extend_from_slice(&(-2.25f64).to_le_bytes());
    let mut cur = Cursor::new(&bytes);
    assert_eq!(cur.i8().unwrap(), -2);
    assert_eq!(cur.u16().unwrap(), 0x1234);
    assert_eq!(cur.i32().unwrap(), -5);
    assert_eq!(cur.u64().unwrap(), u64::MAX);
    assert_eq!(cur.f32().unwrap(), 1.5);
    assert_eq!(cur.f64().unwrap(), -2.25);
    assert_eq!(cur.remaining(), 0);
}

#[test]
fn short_read_reports_offset_and_need() {
    let bytes = [1u8, 2, 3];
    let mut cur = Cursor::new(&bytes);
    assert_eq!(cur.u8().unwrap(), 1);
    assert_eq!(
        cur.u32(),
        Err(FormatError::Truncated {
            offset: 1,
            need: 4,
            size: 3
        })
    );
    // A failed read consumes nothing.
    assert_eq!(cur.offset(), 1);
}

#[test]
fn string_length_is_checked_before_use() {
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"abc");
    let err = Cursor::new(&bytes).string().unwrap_err();
    assert!(matches!(err, FormatError::Truncated { need: u64::MAX, .. }), "{err}");
}

#[test]
fn string_must_be_utf8() {
    let mut bytes = 2u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    assert_eq!(
        Cursor::new(&bytes).string(),
        Err(FormatError::InvalidUtf8 { offset: 8 })
    );
}

#[test]
fn bool_accepts_only_zero_and_one() {
    let bytes = [0u8, 1, 2];
    let mut cur = Cursor::new(&bytes);
    assert_eq!(cur.bool(), Ok(false));
    assert_eq!(cur.bool(), Ok(true));
    assert_eq!(cur.bool(), Err(FormatError::InvalidBool { byte: 2, offset: 2 }));
}

#[test]
fn count_is_bounded_by_bytes_left() {
    let mut bytes = 3u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0; 12]);
    assert_eq!(Cursor::new(&bytes).count("item", 4), Ok(3));
    let err = Cursor::new(&bytes).count("item", 5).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::CountTooLarge {
                count: 3,
                remaining: 12,
                ..
            }
        ),
        "{err}"
    );
    // A count whose byte size overflows u64 is refused, not wrapped.
    let huge = u64::MAX.to_le_bytes();
    assert!(Cursor::new(&huge).count("item", 2).is_err());
}
