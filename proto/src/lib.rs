//! Generated gRPC code for Tidelog, from `proto/` (one source of truth for broker and SDKs).
//!
//! - [`v1`]: the public contract, what grpcurl and generic clients see.
//! - [`wire`]: the byte-level view of `RecordService`. Its messages have the same field numbers
//!   as their namesakes in [`v1`], but a `RecordBatch` is `bytes` and enums are `i32`, so a batch
//!   is encoded once by the producer and then moved as bytes by the broker and the consumer.
//!   The test below proves the two views agree field by field; it must never be relaxed.
//!
//! `bytes` fields are [`bytes::Bytes`], so decoding a frame slices it instead of copying.
//! [`frames`] decodes streamed messages from the HTTP/2 frames they came in, without tonic's copy.
//!
//! Besides the generated code, the few rules broker and SDKs must apply identically:
//! [`sequence`] (idempotent-produce sequence numbers), [`inflate`] (compressed payloads) and
//! [`checksum`] (the CRC-32C of every batch payload).

#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/public/tidelog.v1.rs"));
}

#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/wire/tidelog.v1.rs"));
}

/// Broker-to-broker Raft transport (internal; not part of the public contract).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod internal {
    include!(concat!(env!("OUT_DIR"), "/internal/tidelog.internal.v1.rs"));
}

pub mod checksum;
pub mod frames;
pub mod inflate;
pub mod sequence;

/// Encoded `FileDescriptorSet` of the public contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tidelog_v1_descriptor.bin"));

/// Encoded `FileDescriptorSet` of the wire view (tests only; never served).
pub const WIRE_FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tidelog_v1_wire_descriptor.bin"));

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prost::Message;
    use prost_types::field_descriptor_proto::Type;
    use prost_types::{DescriptorProto, FileDescriptorSet};

    use super::*;

    fn messages(fds: &[u8]) -> HashMap<String, DescriptorProto> {
        let set = FileDescriptorSet::decode(fds).unwrap();
        set.file.into_iter().flat_map(|f| f.message_type).map(|m| (m.name().to_string(), m)).collect()
    }

    #[test]
    fn wire_view_matches_public_contract() {
        let public = messages(FILE_DESCRIPTOR_SET);
        let wire = messages(WIRE_FILE_DESCRIPTOR_SET);
        assert!(wire.len() >= 7, "wire view lost messages: {:?}", wire.keys());
        for (name, w) in &wire {
            let p = public.get(name).unwrap_or_else(|| panic!("wire message {name} not in public contract"));
            assert_eq!(w.field.len(), p.field.len(), "{name}: field count differs");
            for wf in &w.field {
                let pf = p
                    .field
                    .iter()
                    .find(|f| f.number() == wf.number())
                    .unwrap_or_else(|| panic!("{name}.{} (#{}) missing in public", wf.name(), wf.number()));
                assert_eq!(wf.name(), pf.name(), "{name} #{}: names differ", wf.number());
                assert_eq!(wf.label(), pf.label(), "{name}.{}: label differs", wf.name());
                assert_eq!(wf.oneof_index, pf.oneof_index, "{name}.{}: oneof differs", wf.name());
                let compatible = match (wf.r#type(), pf.r#type()) {
                    (a, b) if a == b => a != Type::Message || wf.type_name() == pf.type_name(),
                    (Type::Bytes, Type::Message) => true,
                    (Type::Int32, Type::Enum) => true,
                    _ => false,
                };
                assert!(compatible, "{name}.{}: {:?} vs {:?}", wf.name(), wf.r#type(), pf.r#type());
            }
        }
    }

    #[test]
    fn wire_service_has_every_public_record_method() {
        let methods = |fds: &[u8]| -> Vec<(String, String, String, bool, bool)> {
            let set = FileDescriptorSet::decode(fds).unwrap();
            let mut m: Vec<_> = set
                .file
                .iter()
                .flat_map(|f| f.service.iter())
                .filter(|s| s.name() == "RecordService")
                .flat_map(|s| s.method.iter())
                .map(|m| {
                    (
                        m.name().to_string(),
                        m.input_type().to_string(),
                        m.output_type().to_string(),
                        m.client_streaming(),
                        m.server_streaming(),
                    )
                })
                .collect();
            m.sort();
            m
        };
        let public = methods(FILE_DESCRIPTOR_SET);
        assert!(!public.is_empty());
        assert_eq!(methods(WIRE_FILE_DESCRIPTOR_SET), public, "wire RecordService must serve every public method");
    }

    #[test]
    fn produce_request_round_trips_between_views() {
        let batch = v1::RecordBatch {
            records: vec![v1::Record {
                key: Some(bytes::Bytes::from_static(b"k")),
                value: bytes::Bytes::from_static(b"hello"),
                headers: vec![v1::Header { key: "traceparent".into(), value: bytes::Bytes::from_static(b"00-ab") }],
                timestamp_ms: 42,
                null_value: false,
            }],
        };
        let public = v1::ProduceRequest {
            request_id: 7,
            topic: "t".into(),
            partition: 2,
            acks: v1::Acks::All as i32,
            payload: Some(v1::produce_request::Payload::Records(batch.clone())),
            compression: 0,
            record_count: 1,
            crc32c: Some(9),
            producer_id: 3,
            producer_epoch: 1,
            base_sequence: 40,
            transactional: true,
        };
        let bytes = public.encode_to_vec();
        let w = wire::ProduceRequest::decode(bytes.as_slice()).unwrap();
        let Some(wire::produce_request::Payload::Records(raw)) = &w.payload else { panic!("payload lost") };
        assert_eq!(raw.as_ref(), batch.encode_to_vec().as_slice());
        assert_eq!(w.encode_to_vec(), bytes, "wire re-encoding must be byte-identical");
    }
}
