use super::*;

fn stored(v: u64) -> KvEvent {
    KvEvent::Stored { hash: BlockHash(v) }
}

#[test]
fn records_are_numbered_and_resumable() {
    let mut log = KvEventLog::new(8);
    for v in 0..5 {
        log.push(stored(v));
    }
    let tail = log.since(4).unwrap();
    assert_eq!(tail.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 5]);
    assert!(log.since(6).unwrap().is_empty(), "caught up");
    assert_eq!(
        log.since(7),
        Err(Gap { oldest: 1, next: 6 }),
        "a future sequence number is a gap"
    );
}

#[test]
fn falling_behind_the_capacity_is_a_gap() {
    let mut log = KvEventLog::new(3);
    for v in 0..5 {
        log.push(stored(v));
    }
    assert_eq!(log.since(2), Err(Gap { oldest: 3, next: 6 }));
    assert_eq!(log.since(3).unwrap().len(), 3);
}
