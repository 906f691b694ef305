use super::*;

#[test]
fn chunks_cover_any_length_and_differ_by_at_most_one() {
    for n in 1..=5 {
        for len in 0..40 {
            let ranges = chunk_ranges(len, n);
            assert_eq!(ranges.len(), n);
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[n - 1].end, len);
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
            let sizes: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
            assert!(
                sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                "{len} over {n}: {sizes:?}"
            );
        }
    }
}

#[test]
fn count_ranges_must_cover_the_buffer() {
    assert_eq!(ranges_of(&[2, 0, 3], 5, "counts").unwrap(), vec![0..2, 2..2, 2..5]);
    assert!(ranges_of(&[2, 0, 3], 6, "counts").unwrap_err().contains("add up to 5"));
}

#[test]
fn segments_cut_a_chunk_into_bounded_pieces() {
    assert_eq!(segments(3..3, 4), vec![3..3]);
    assert_eq!(segments(0..10, 4), vec![0..4, 4..8, 8..10]);
    assert_eq!(segments(5..9, 4), vec![5..9]);
}
