//! Idempotent-produce sequence numbers: per producer and partition, from 0, wrapping from
//! `i32::MAX` back to 0 (Kafka's rule), so a long-lived producer never needs a negative
//! sequence. Broker and SDKs must use exactly these two functions.

/// The sequence after `count` records starting at `seq`.
pub fn increment(seq: i32, count: u32) -> i32 {
    let next = i64::from(seq) + i64::from(count);
    (next % (i64::from(i32::MAX) + 1)) as i32
}

/// The sequence `count` records before `seq` (the inverse of [`increment`]).
pub fn decrement(seq: i32, count: u32) -> i32 {
    let modulus = i64::from(i32::MAX) + 1;
    ((i64::from(seq) - i64::from(count)).rem_euclid(modulus)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_i32_max_and_inverts() {
        assert_eq!(increment(0, 5), 5);
        assert_eq!(increment(i32::MAX, 1), 0);
        assert_eq!(increment(i32::MAX - 2, 5), 2);
        for (s, n) in [(0, 1), (3, 10), (i32::MAX, 7), (2, 5)] {
            assert_eq!(decrement(increment(s, n), n), s);
        }
    }
}
