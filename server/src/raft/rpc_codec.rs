//! Byte encodings of the Raft RPCs that travel between brokers (`raft/network.rs`,
//! `raft/transport.rs`). Entries travel as they are stored: a data entry is its 72-byte batch
//! header plus the producer's payload, exactly the bytes of the leader's segment (the follower
//! checks both CRCs and stores them verbatim); a blank or membership entry is its control
//! payload. Nothing is decoded or re-encoded in between.
//!
//! ```text
//! append request  = 1 u8 | vote | option<log id> prev | option<log id> commit | u32 n | n × entry
//! entry           = term u64 | index u64 | kind u8 (1 batch | 2 control) | u32 len | bytes
//! append response = 1 u8 | tag u8 (1 success | 2 partial + option<log id> | 3 conflict | 4 higher + vote)
//! stream result   = 1 u8 | tag u8 (1 matched + option<log id> | 3 conflict + log id | 4 higher + vote)
//! vote request    = 1 u8 | vote | option<log id> last | transfer u8
//! vote response   = 1 u8 | vote | granted u8 | option<log id> last
//! vote            = term u64 | voted-for u64 | committed u8
//! quiesce request   = 1 u8 | vote | option<log id> committed
//! quiesce response  = 1 u8 | accepted u8
//! transfer request  = 1 u8 | vote from | to u64 | option<log id> last
//! transfer response = 1 u8 | tag u8 (1 ok | 2 vote changed + vote expected + vote actual
//!                            | 3 log not flushed + option<log id> expected + option<log id> actual)
//! ```

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, StreamAppendError, StreamAppendResult, TransferLeaderError,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};

use super::codec::{decode_control, encode_control, put_log_id, take_log_id, take_u32, take_u64, take_u8, CodecError};
use super::types::{log_id, BatchData, Entry, EntryPayload, LogId, PartitionTc, Vote};
use crate::log::format::{BatchHeader, BATCH_HEADER_LEN};
use crate::log::StoredBatch;

const V1: u8 = 1;
const ENTRY_BATCH: u8 = 1;
const ENTRY_CONTROL: u8 = 2;

fn put_vote(out: &mut impl BufMut, v: &Vote) {
    out.put_u64_le(v.leader_id.term);
    out.put_u64_le(v.leader_id.voted_for);
    out.put_u8(u8::from(v.committed));
}

fn take_vote(b: &mut impl Buf) -> Result<Vote, CodecError> {
    let (term, node) = (take_u64(b)?, take_u64(b)?);
    Ok(if take_u8(b)? == 1 { Vote::new_committed(term, node) } else { Vote::new(term, node) })
}

fn version(b: &mut impl Buf) -> Result<(), CodecError> {
    if take_u8(b)? != V1 {
        return Err(CodecError("unknown rpc version"));
    }
    Ok(())
}

/// A batch payload at least this long travels as a chunk of its own ([`AppendBody`]); a
/// shorter one is copied into the framing around it (a DATA frame per tiny payload would cost
/// more than the copy; h2 copies payloads under 256 bytes anyway).
const OWN_CHUNK_MIN: usize = 4096;

/// An append request's encoding as chunks: framing (the request's fields, each entry's
/// header and batch header) and, between them, the stored payloads of
/// [`OWN_CHUNK_MIN`] bytes or more as the very `Bytes` the leader's log holds.
/// Concatenated, the chunks are the encoding `decode_append_request` reads.
#[derive(Debug, Default)]
pub struct AppendBody {
    pub chunks: VecDeque<Bytes>,
    /// Their total length.
    pub len: usize,
}

impl AppendBody {
    fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// The chunks joined into one buffer (a unary call, whose body tonic encodes).
    pub fn joined(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for chunk in &self.chunks {
            out.extend_from_slice(chunk);
        }
        out
    }
}

/// Fails for a proposed batch: only stored entries are replicated (read back from the log).
pub fn encode_append_body(r: &AppendEntriesRequest<PartitionTc>) -> Result<AppendBody, CodecError> {
    let mut out = AppendBody::default();
    let mut head = BytesMut::with_capacity(64 + (BATCH_HEADER_LEN + 21) * r.entries.len());
    head.put_u8(V1);
    put_vote(&mut head, &r.vote);
    put_log_id(&mut head, r.prev_log_id.as_ref());
    put_log_id(&mut head, r.leader_commit.as_ref());
    head.put_u32_le(r.entries.len() as u32);
    for e in &r.entries {
        head.put_u64_le(e.log_id.leader_id.term);
        head.put_u64_le(e.log_id.index);
        match &e.payload {
            EntryPayload::Normal(BatchData::Stored(b)) => {
                head.put_u8(ENTRY_BATCH);
                head.put_u32_le((BATCH_HEADER_LEN + b.payload.len()) as u32);
                head.extend_from_slice(&b.header.encode());
                if b.payload.len() >= OWN_CHUNK_MIN {
                    out.push(head.split().freeze());
                    out.push(b.payload.clone());
                } else {
                    head.extend_from_slice(&b.payload);
                }
            }
            EntryPayload::Normal(BatchData::Proposed(_)) => {
                return Err(CodecError("a proposed batch cannot be replicated before it is stored"))
            }
            control => {
                let payload = encode_control(control).unwrap_or_default();
                head.put_u8(ENTRY_CONTROL);
                head.put_u32_le(payload.len() as u32);
                head.extend_from_slice(&payload);
            }
        }
    }
    out.push(head.freeze());
    Ok(out)
}

/// [`encode_append_body`] in one buffer.
pub fn encode_append_request(r: &AppendEntriesRequest<PartitionTc>) -> Result<Vec<u8>, CodecError> {
    Ok(encode_append_body(r)?.joined())
}

/// Decodes into entries whose payloads are slices of `body` (no copy).
pub fn decode_append_request(body: &Bytes) -> Result<AppendEntriesRequest<PartitionTc>, CodecError> {
    decode_append_from(&mut body.clone())
}

/// Decodes an append request from the whole of `b`: each batch payload is taken with
/// `copy_to_bytes`, a slice (no copy) where `b` holds it in one piece (`Bytes`, or a received
/// DATA frame in `grpc::requests::FrameList`).
pub fn decode_append_from(b: &mut impl Buf) -> Result<AppendEntriesRequest<PartitionTc>, CodecError> {
    version(b)?;
    let vote = take_vote(b)?;
    let prev_log_id = take_log_id(b)?;
    let leader_commit = take_log_id(b)?;
    let n = take_u32(b)? as usize;
    if n > b.remaining() / 21 {
        return Err(CodecError("entry count exceeds the request"));
    }
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let id = log_id(take_u64(b)?, take_u64(b)?);
        let kind = take_u8(b)?;
        let len = take_u32(b)? as usize;
        if b.remaining() < len {
            return Err(CodecError("truncated"));
        }
        let payload = match kind {
            ENTRY_BATCH => {
                if len < BATCH_HEADER_LEN {
                    return Err(CodecError("bad batch header"));
                }
                let mut head = [0u8; BATCH_HEADER_LEN];
                b.copy_to_slice(&mut head);
                let header = BatchHeader::decode(&head).map_err(|_| CodecError("bad batch header"))?;
                if header.batch_len as usize != len {
                    return Err(CodecError("batch length does not match its header"));
                }
                let payload = b.copy_to_bytes(len - BATCH_HEADER_LEN);
                EntryPayload::Normal(BatchData::Stored(StoredBatch { header, payload }))
            }
            ENTRY_CONTROL => decode_control(&b.copy_to_bytes(len))?,
            _ => return Err(CodecError("unknown entry kind")),
        };
        entries.push(Entry { log_id: id, payload });
    }
    Ok(AppendEntriesRequest { vote, prev_log_id, entries, leader_commit })
}

pub fn encode_append_response(r: &AppendEntriesResponse<PartitionTc>) -> Vec<u8> {
    let mut out = vec![V1];
    match r {
        AppendEntriesResponse::Success => out.put_u8(1),
        AppendEntriesResponse::PartialSuccess(id) => {
            out.put_u8(2);
            put_log_id(&mut out, id.as_ref());
        }
        AppendEntriesResponse::Conflict => out.put_u8(3),
        AppendEntriesResponse::HigherVote(v) => {
            out.put_u8(4);
            put_vote(&mut out, v);
        }
    }
    out
}

pub fn decode_append_response(mut b: &[u8]) -> Result<AppendEntriesResponse<PartitionTc>, CodecError> {
    version(&mut b)?;
    Ok(match take_u8(&mut b)? {
        1 => AppendEntriesResponse::Success,
        2 => AppendEntriesResponse::PartialSuccess(take_log_id(&mut b)?),
        3 => AppendEntriesResponse::Conflict,
        4 => AppendEntriesResponse::HigherVote(take_vote(&mut b)?),
        _ => return Err(CodecError("unknown append response")),
    })
}

/// One answer of a pipelined `StreamAppend`: the follower's log matches the leader's up to the
/// log id, or it conflicts at one, or it has seen a higher vote.
pub fn encode_stream_result(r: &StreamAppendResult<PartitionTc>) -> Vec<u8> {
    let mut out = vec![V1];
    match r {
        Ok(matched) => {
            out.put_u8(1);
            put_log_id(&mut out, matched.as_ref());
        }
        Err(StreamAppendError::Conflict(id)) => {
            out.put_u8(3);
            put_log_id(&mut out, Some(id));
        }
        Err(StreamAppendError::HigherVote(v)) => {
            out.put_u8(4);
            put_vote(&mut out, v);
        }
    }
    out
}

pub fn decode_stream_result(mut b: &[u8]) -> Result<StreamAppendResult<PartitionTc>, CodecError> {
    version(&mut b)?;
    Ok(match take_u8(&mut b)? {
        1 => Ok(take_log_id(&mut b)?),
        3 => Err(StreamAppendError::Conflict(take_log_id(&mut b)?.ok_or(CodecError("conflict without a log id"))?)),
        4 => Err(StreamAppendError::HigherVote(take_vote(&mut b)?)),
        _ => return Err(CodecError("unknown stream append result")),
    })
}

pub fn encode_vote_request(r: &VoteRequest<PartitionTc>) -> Vec<u8> {
    let mut out = vec![V1];
    put_vote(&mut out, &r.vote);
    put_log_id(&mut out, r.last_log_id.as_ref());
    out.put_u8(u8::from(r.leadership_transfer));
    out
}

pub fn decode_vote_request(mut b: &[u8]) -> Result<VoteRequest<PartitionTc>, CodecError> {
    version(&mut b)?;
    let vote = take_vote(&mut b)?;
    let last_log_id = take_log_id(&mut b)?;
    let leadership_transfer = take_u8(&mut b)? == 1;
    Ok(VoteRequest { vote, last_log_id, leadership_transfer })
}

pub fn encode_vote_response(r: &VoteResponse<PartitionTc>) -> Vec<u8> {
    let mut out = vec![V1];
    put_vote(&mut out, &r.vote);
    out.put_u8(u8::from(r.vote_granted));
    put_log_id(&mut out, r.last_log_id.as_ref());
    out
}

pub fn decode_vote_response(mut b: &[u8]) -> Result<VoteResponse<PartitionTc>, CodecError> {
    version(&mut b)?;
    let vote = take_vote(&mut b)?;
    let vote_granted = take_u8(&mut b)? == 1;
    let last_log_id = take_log_id(&mut b)?;
    Ok(VoteResponse { vote, vote_granted, last_log_id })
}

pub fn encode_quiesce_request(vote: &Vote, committed: Option<&LogId>) -> Vec<u8> {
    let mut out = vec![V1];
    put_vote(&mut out, vote);
    put_log_id(&mut out, committed);
    out
}

pub fn decode_quiesce_request(mut b: &[u8]) -> Result<(Vote, Option<LogId>), CodecError> {
    version(&mut b)?;
    Ok((take_vote(&mut b)?, take_log_id(&mut b)?))
}

pub fn encode_quiesce_response(accepted: bool) -> Vec<u8> {
    vec![V1, u8::from(accepted)]
}

pub fn decode_quiesce_response(mut b: &[u8]) -> Result<bool, CodecError> {
    version(&mut b)?;
    Ok(take_u8(&mut b)? == 1)
}

pub fn encode_transfer_request(r: &TransferLeaderRequest<PartitionTc>) -> Vec<u8> {
    let mut out = vec![V1];
    put_vote(&mut out, r.from_leader());
    out.put_u64_le(*r.to_node_id());
    put_log_id(&mut out, r.last_log_id());
    out
}

pub fn decode_transfer_request(mut b: &[u8]) -> Result<TransferLeaderRequest<PartitionTc>, CodecError> {
    version(&mut b)?;
    let from = take_vote(&mut b)?;
    let to = take_u64(&mut b)?;
    let last = take_log_id(&mut b)?;
    Ok(TransferLeaderRequest::new(from, to, last))
}

pub fn encode_transfer_response(r: &TransferLeaderResponse<PartitionTc>) -> Vec<u8> {
    let mut out = vec![V1];
    match r {
        Ok(()) => out.put_u8(1),
        Err(TransferLeaderError::VoteChanged { expected, actual }) => {
            out.put_u8(2);
            put_vote(&mut out, expected);
            put_vote(&mut out, actual);
        }
        Err(TransferLeaderError::LogNotFlushed { expected, actual }) => {
            out.put_u8(3);
            put_log_id(&mut out, expected.as_ref());
            put_log_id(&mut out, actual.as_ref());
        }
    }
    out
}

pub fn decode_transfer_response(mut b: &[u8]) -> Result<TransferLeaderResponse<PartitionTc>, CodecError> {
    version(&mut b)?;
    Ok(match take_u8(&mut b)? {
        1 => Ok(()),
        2 => Err(TransferLeaderError::VoteChanged { expected: take_vote(&mut b)?, actual: take_vote(&mut b)? }),
        3 => Err(TransferLeaderError::LogNotFlushed { expected: take_log_id(&mut b)?, actual: take_log_id(&mut b)? }),
        _ => return Err(CodecError("unknown transfer response")),
    })
}

/// A vote alone (the snapshot response, the snapshot header's leader vote).
pub fn encode_vote(v: &Vote) -> Vec<u8> {
    let mut out = vec![V1];
    put_vote(&mut out, v);
    out
}

pub fn decode_vote(mut b: &[u8]) -> Result<Vote, CodecError> {
    version(&mut b)?;
    take_vote(&mut b)
}

/// A stored batch entry at Raft index `index` (term 2) holding `payload`, as a leader's log
/// would return it.
#[cfg(test)]
pub(crate) fn stored_entry(index: u64, payload: Bytes) -> Entry {
    let header = BatchHeader {
        batch_len: (BATCH_HEADER_LEN + payload.len()) as u32,
        compression: 0,
        flags: 0,
        record_count: 3,
        base_offset: index * 10,
        raft_term: 2,
        raft_index: index,
        append_time_ms: 1234,
        producer_id: 7,
        producer_epoch: 1,
        base_sequence: 12,
        payload_crc: tidelog_proto::checksum::crc32c(&payload),
        delete_horizon_s: 0,
    };
    Entry {
        log_id: log_id(2, index),
        payload: EntryPayload::Normal(BatchData::Stored(StoredBatch { header, payload })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::Membership;

    #[test]
    fn requests_and_responses_round_trip_and_batches_travel_as_stored_bytes() {
        let req = AppendEntriesRequest::<PartitionTc> {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id(2, 7)),
            leader_commit: Some(log_id(2, 6)),
            entries: vec![
                Entry { log_id: log_id(2, 8), payload: EntryPayload::Blank },
                stored_entry(9, Bytes::from_static(b"the producer's records")),
                Entry {
                    log_id: log_id(2, 10),
                    payload: EntryPayload::Membership(Membership::new_with_defaults(vec![[1, 2].into()], [])),
                },
            ],
        };
        let body = Bytes::from(encode_append_request(&req).unwrap());
        let got = decode_append_request(&body).unwrap();
        assert_eq!(
            (got.vote, got.prev_log_id, got.leader_commit, &got.entries),
            (req.vote, req.prev_log_id, req.leader_commit, &req.entries)
        );
        for cut in 0..body.len() {
            assert!(decode_append_request(&body.slice(..cut)).is_err(), "prefix of {cut} bytes decoded");
        }
        for r in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(Some(log_id(1, 2))),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(Vote::new(5, 3)),
        ] {
            assert_eq!(decode_append_response(&encode_append_response(&r)).unwrap(), r);
        }
        for r in [
            Ok(None),
            Ok(Some(log_id(2, 9))),
            Err(StreamAppendError::Conflict(log_id(1, 4))),
            Err(StreamAppendError::HigherVote(Vote::new_committed(6, 2))),
        ] {
            let body = encode_stream_result(&r);
            assert_eq!(decode_stream_result(&body).unwrap(), r);
            for cut in 0..body.len() {
                assert!(decode_stream_result(&body[..cut]).is_err(), "prefix of {cut} bytes decoded");
            }
        }
        let v = VoteRequest::<PartitionTc> { vote: Vote::new(3, 2), last_log_id: None, leadership_transfer: true };
        assert_eq!(decode_vote_request(&encode_vote_request(&v)).unwrap(), v);
        let v =
            VoteResponse::<PartitionTc> { vote: Vote::new(3, 2), vote_granted: true, last_log_id: Some(log_id(1, 1)) };
        assert_eq!(decode_vote_response(&encode_vote_response(&v)).unwrap(), v);
    }

    #[test]
    fn quiesce_round_trips() {
        let (vote, committed) = (Vote::new_committed(3, 2), Some(log_id(3, 40)));
        let body = encode_quiesce_request(&vote, committed.as_ref());
        assert_eq!(decode_quiesce_request(&body).unwrap(), (vote, committed));
        for cut in 0..body.len() {
            assert!(decode_quiesce_request(&body[..cut]).is_err(), "prefix of {cut} bytes decoded");
        }
        for accepted in [true, false] {
            assert_eq!(decode_quiesce_response(&encode_quiesce_response(accepted)).unwrap(), accepted);
        }
    }

    #[test]
    fn transfer_leader_round_trips() {
        let req = TransferLeaderRequest::<PartitionTc>::new(Vote::new_committed(4, 1), 3, Some(log_id(4, 17)));
        let body = encode_transfer_request(&req);
        let got = decode_transfer_request(&body).unwrap();
        assert_eq!(
            (got.from_leader(), got.to_node_id(), got.last_log_id()),
            (req.from_leader(), req.to_node_id(), req.last_log_id())
        );
        for cut in 0..body.len() {
            assert!(decode_transfer_request(&body[..cut]).is_err(), "prefix of {cut} bytes decoded");
        }
        for r in [
            Ok(()),
            Err(TransferLeaderError::VoteChanged { expected: Vote::new_committed(4, 1), actual: Vote::new(5, 2) }),
            Err(TransferLeaderError::LogNotFlushed { expected: Some(log_id(4, 17)), actual: None }),
        ] {
            assert_eq!(decode_transfer_response(&encode_transfer_response(&r)).unwrap(), r);
        }
    }
}
