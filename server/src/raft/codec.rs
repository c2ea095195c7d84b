//! Byte encodings of Raft state: control-batch payloads in the partition log, and the values
//! kept in the sled `raft` tree. Hand-written, little-endian like the rest of the log format,
//! versioned by a leading byte; openraft's serde derives are not a stable format (STACK.md).
//!
//! ```text
//! control payload  = kind u8 (1 blank | 2 membership | 3 outcome) [membership | outcome]
//! outcome          = 1 u8 duplicate | base offset u64 | record count u32 | append time i64
//!                  | 2 u8 rejected  | error code i32 | u32 n | n bytes UTF-8 message
//! membership       = u32 config count, per config: u32 n, n × u64 voter id;
//!                    u32 n, n × u64 node id (voters and learners)
//! vote             = 1 u8 | term u64 | voted-for u64 | committed u8
//! log id           = 1 u8 | term u64 | index u64
//! applied          = 1 u8 | option<log id> | high watermark u64 | option<log id> | membership
//! snapshot meta    = 1 u8 | option<log id> | option<log id> | membership
//! option<log id>   = 0 u8 | 1 u8 term u64 index u64
//! ```
//!
//! Decoders never panic on bad bytes: they return [`CodecError`], which callers surface as an
//! I/O error of kind `InvalidData`.

use std::collections::BTreeSet;

use bytes::{Buf, BufMut};

use super::types::{log_id, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership, Vote};

const CONTROL_BLANK: u8 = 1;
const CONTROL_MEMBERSHIP: u8 = 2;
/// The leader's verdict on a proposed idempotent batch it did not store as data (see
/// [`ProduceOutcome`]); replicated like any entry so every replica answers the same.
const CONTROL_OUTCOME: u8 = 3;
const OUTCOME_DUPLICATE: u8 = 1;
const OUTCOME_REJECTED: u8 = 2;
/// Version byte of every sled value.
const VALUE_V1: u8 = 1;

#[derive(Debug, thiserror::Error)]
#[error("corrupt raft record ({0})")]
pub struct CodecError(pub &'static str);

impl From<CodecError> for std::io::Error {
    fn from(e: CodecError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// The payload of the control batch that stores a blank or membership entry; `None` for a
/// normal (record batch) entry.
pub fn encode_control(payload: &EntryPayload) -> Option<Vec<u8>> {
    match payload {
        EntryPayload::Blank => Some(vec![CONTROL_BLANK]),
        EntryPayload::Membership(m) => {
            let mut out = vec![CONTROL_MEMBERSHIP];
            put_membership(&mut out, m);
            Some(out)
        }
        EntryPayload::Normal(_) => None,
    }
}

/// Whether a control batch's payload is an outcome (a normal entry for openraft), not a blank
/// or membership entry.
pub fn is_outcome(payload: &[u8]) -> bool {
    payload.first() == Some(&CONTROL_OUTCOME)
}

/// What the leader decided for a proposed batch of an idempotent producer, when it did not
/// append it as data: a resend of a batch already in the log (answer with the original's
/// position), or a sequence/epoch error. Stored as a control batch (no offset) so the proposer
/// is answered at apply, in log order, like any other entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProduceVerdict {
    Duplicate { base_offset: u64, record_count: u32, append_time_ms: i64 },
    Rejected { code: i32, message: String },
}

pub fn encode_outcome(v: &ProduceVerdict) -> Vec<u8> {
    let mut out = vec![CONTROL_OUTCOME];
    match v {
        ProduceVerdict::Duplicate { base_offset, record_count, append_time_ms } => {
            out.put_u8(OUTCOME_DUPLICATE);
            out.put_u64_le(*base_offset);
            out.put_u32_le(*record_count);
            out.put_i64_le(*append_time_ms);
        }
        ProduceVerdict::Rejected { code, message } => {
            out.put_u8(OUTCOME_REJECTED);
            out.put_i32_le(*code);
            out.put_u32_le(message.len() as u32);
            out.put_slice(message.as_bytes());
        }
    }
    out
}

pub fn decode_outcome(mut b: &[u8]) -> Result<ProduceVerdict, CodecError> {
    if take_u8(&mut b)? != CONTROL_OUTCOME {
        return Err(CodecError("not an outcome control batch"));
    }
    match take_u8(&mut b)? {
        OUTCOME_DUPLICATE => Ok(ProduceVerdict::Duplicate {
            base_offset: take_u64(&mut b)?,
            record_count: take_u32(&mut b)?,
            append_time_ms: take_u64(&mut b)? as i64,
        }),
        OUTCOME_REJECTED => {
            let code = take_u32(&mut b)? as i32;
            let n = take_u32(&mut b)? as usize;
            if b.len() < n {
                return Err(CodecError("truncated"));
            }
            let message = String::from_utf8_lossy(&b[..n]).into_owned();
            Ok(ProduceVerdict::Rejected { code, message })
        }
        _ => Err(CodecError("unknown outcome kind")),
    }
}

pub fn decode_control(mut bytes: &[u8]) -> Result<EntryPayload, CodecError> {
    match take_u8(&mut bytes)? {
        CONTROL_BLANK => Ok(EntryPayload::Blank),
        CONTROL_MEMBERSHIP => Ok(EntryPayload::Membership(take_membership(&mut bytes)?)),
        _ => Err(CodecError("unknown control batch kind")),
    }
}

pub fn encode_vote(v: &Vote) -> Vec<u8> {
    let mut out = vec![VALUE_V1];
    out.put_u64_le(v.leader_id.term);
    out.put_u64_le(v.leader_id.voted_for);
    out.put_u8(u8::from(v.committed));
    out
}

pub fn decode_vote(mut b: &[u8]) -> Result<Vote, CodecError> {
    version(&mut b)?;
    let (term, node) = (take_u64(&mut b)?, take_u64(&mut b)?);
    let committed = take_u8(&mut b)? == 1;
    Ok(if committed { Vote::new_committed(term, node) } else { Vote::new(term, node) })
}

pub fn encode_log_id(id: &LogId) -> Vec<u8> {
    let mut out = vec![VALUE_V1];
    put_log_id(&mut out, Some(id));
    out
}

pub fn decode_log_id(mut b: &[u8]) -> Result<Option<LogId>, CodecError> {
    version(&mut b)?;
    take_log_id(&mut b)
}

/// The state machine's checkpoint: last applied, high watermark, membership.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub high_watermark: u64,
    pub membership: StoredMembership,
}

pub fn encode_applied(a: &Applied) -> Vec<u8> {
    let mut out = vec![VALUE_V1];
    put_log_id(&mut out, a.last_applied.as_ref());
    out.put_u64_le(a.high_watermark);
    put_stored_membership(&mut out, &a.membership);
    out
}

pub fn decode_applied(mut b: &[u8]) -> Result<Applied, CodecError> {
    version(&mut b)?;
    let last_applied = take_log_id(&mut b)?;
    let high_watermark = take_u64(&mut b)?;
    let membership = take_stored_membership(&mut b)?;
    Ok(Applied { last_applied, high_watermark, membership })
}

pub fn encode_snapshot_meta(m: &SnapshotMeta) -> Vec<u8> {
    let mut out = vec![VALUE_V1];
    put_log_id(&mut out, m.last_log_id.as_ref());
    put_stored_membership(&mut out, &m.last_membership);
    out
}

pub fn decode_snapshot_meta(mut b: &[u8]) -> Result<SnapshotMeta, CodecError> {
    version(&mut b)?;
    let last_log_id = take_log_id(&mut b)?;
    let last_membership = take_stored_membership(&mut b)?;
    Ok(SnapshotMeta { last_log_id, last_membership })
}

fn version(b: &mut &[u8]) -> Result<(), CodecError> {
    match take_u8(b)? {
        VALUE_V1 => Ok(()),
        _ => Err(CodecError("unknown version")),
    }
}

pub(super) fn take_u8(b: &mut impl Buf) -> Result<u8, CodecError> {
    b.try_get_u8().map_err(|_| CodecError("truncated"))
}

pub(super) fn take_u32(b: &mut impl Buf) -> Result<u32, CodecError> {
    b.try_get_u32_le().map_err(|_| CodecError("truncated"))
}

pub(super) fn take_u64(b: &mut impl Buf) -> Result<u64, CodecError> {
    b.try_get_u64_le().map_err(|_| CodecError("truncated"))
}

pub(super) fn put_log_id(out: &mut impl BufMut, id: Option<&LogId>) {
    match id {
        None => out.put_u8(0),
        Some(id) => {
            out.put_u8(1);
            out.put_u64_le(id.leader_id.term);
            out.put_u64_le(id.index);
        }
    }
}

pub(super) fn take_log_id(b: &mut impl Buf) -> Result<Option<LogId>, CodecError> {
    match take_u8(b)? {
        0 => Ok(None),
        1 => Ok(Some(log_id(take_u64(b)?, take_u64(b)?))),
        _ => Err(CodecError("bad log id tag")),
    }
}

fn put_ids(out: &mut Vec<u8>, ids: impl ExactSizeIterator<Item = u64>) {
    out.put_u32_le(ids.len() as u32);
    ids.for_each(|id| out.put_u64_le(id));
}

fn take_ids(b: &mut &[u8]) -> Result<BTreeSet<u64>, CodecError> {
    let n = take_u32(b)? as usize;
    if n > b.len() / 8 {
        return Err(CodecError("node count exceeds the record"));
    }
    (0..n).map(|_| take_u64(b)).collect()
}

fn put_membership(out: &mut Vec<u8>, m: &Membership) {
    let configs = m.get_joint_config();
    out.put_u32_le(configs.len() as u32);
    for c in configs {
        put_ids(out, c.iter().copied());
    }
    let nodes: Vec<u64> = m.nodes().map(|(id, _)| *id).collect();
    put_ids(out, nodes.into_iter());
}

fn take_membership(b: &mut &[u8]) -> Result<Membership, CodecError> {
    let n = take_u32(b)? as usize;
    if n > b.len() / 4 {
        return Err(CodecError("config count exceeds the record"));
    }
    let configs = (0..n).map(|_| take_ids(b)).collect::<Result<Vec<_>, _>>()?;
    let nodes = take_ids(b)?;
    Membership::new(configs, nodes).map_err(|_| CodecError("invalid membership"))
}

fn put_stored_membership(out: &mut Vec<u8>, m: &StoredMembership) {
    put_log_id(out, m.log_id().as_ref());
    put_membership(out, m.membership());
}

fn take_stored_membership(b: &mut &[u8]) -> Result<StoredMembership, CodecError> {
    let id = take_log_id(b)?;
    Ok(StoredMembership::new(id, take_membership(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership() -> Membership {
        let voters: BTreeSet<u64> = [1, 2, 3].into();
        Membership::new(vec![voters.clone(), [2, 3, 4].into()], [1, 2, 3, 4, 9].into_iter().collect::<BTreeSet<u64>>())
            .unwrap()
    }

    #[test]
    fn every_value_round_trips() {
        let m = EntryPayload::Membership(membership());
        assert_eq!(decode_control(&encode_control(&m).unwrap()).unwrap(), m);
        assert_eq!(decode_control(&encode_control(&EntryPayload::Blank).unwrap()).unwrap(), EntryPayload::Blank);
        for v in [Vote::new(7, 3), Vote::new_committed(8, 2)] {
            assert_eq!(decode_vote(&encode_vote(&v)).unwrap(), v);
        }
        assert_eq!(decode_log_id(&encode_log_id(&log_id(3, 99))).unwrap(), Some(log_id(3, 99)));
        let a = Applied {
            last_applied: Some(log_id(4, 10)),
            high_watermark: 1234,
            membership: StoredMembership::new(Some(log_id(2, 5)), membership()),
        };
        assert_eq!(decode_applied(&encode_applied(&a)).unwrap(), a);
        let s = SnapshotMeta { last_log_id: None, last_membership: StoredMembership::default() };
        assert_eq!(decode_snapshot_meta(&encode_snapshot_meta(&s)).unwrap(), s);
        for v in [
            ProduceVerdict::Duplicate { base_offset: 42, record_count: 7, append_time_ms: -1 },
            ProduceVerdict::Rejected { code: 11, message: "expected sequence 5".into() },
        ] {
            let bytes = encode_outcome(&v);
            assert!(is_outcome(&bytes));
            assert_eq!(decode_outcome(&bytes).unwrap(), v);
            for cut in 0..bytes.len() {
                assert!(decode_outcome(&bytes[..cut]).is_err(), "prefix of {cut} bytes decoded");
            }
        }
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let good = encode_applied(&Applied {
            last_applied: Some(log_id(1, 1)),
            high_watermark: 1,
            membership: StoredMembership::new(None, membership()),
        });
        for cut in 0..good.len() {
            assert!(decode_applied(&good[..cut]).is_err(), "prefix of {cut} bytes decoded");
        }
        assert!(decode_control(&[9]).is_err());
        assert!(decode_vote(&[2, 0, 0]).is_err());
        // A count that claims more ids than bytes follow is refused before allocating.
        assert!(decode_control(&[CONTROL_MEMBERSHIP, 255, 255, 255, 255]).is_err());
    }
}
