//! The wire schema: boxo's `bitswap/message/pb/message.proto` (proto3), written out as prost structs so the
//! build needs no `protoc`. Field numbers are the contract with Kubo; names follow the `.proto`.

/// One Bitswap message, as framed on a stream.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Message {
    #[prost(message, optional, tag = "1")]
    pub(crate) wantlist: Option<Wantlist>,
    /// Bitswap 1.0.0 blocks: raw bytes, implicitly CIDv0 (dag-pb, sha2-256).
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub(crate) blocks: Vec<bytes::Bytes>,
    /// Bitswap 1.1.0+ blocks: a CID prefix and the bytes.
    #[prost(message, repeated, tag = "3")]
    pub(crate) payload: Vec<Block>,
    #[prost(message, repeated, tag = "4")]
    pub(crate) block_presences: Vec<BlockPresence>,
    #[prost(int32, tag = "5")]
    pub(crate) pending_bytes: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Wantlist {
    #[prost(message, repeated, tag = "1")]
    pub(crate) entries: Vec<Entry>,
    /// Whether this wantlist replaces the receiver's whole copy of ours.
    #[prost(bool, tag = "2")]
    pub(crate) full: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Entry {
    /// The CID's binary form.
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) block: Vec<u8>,
    #[prost(int32, tag = "2")]
    pub(crate) priority: i32,
    #[prost(bool, tag = "3")]
    pub(crate) cancel: bool,
    /// 0 = Block, 1 = Have.
    #[prost(int32, tag = "4")]
    pub(crate) want_type: i32,
    #[prost(bool, tag = "5")]
    pub(crate) send_dont_have: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Block {
    /// CID version, codec, multihash code and length, each an unsigned varint.
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) prefix: Vec<u8>,
    #[prost(bytes = "bytes", tag = "2")]
    pub(crate) data: bytes::Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct BlockPresence {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) cid: Vec<u8>,
    /// 0 = Have, 1 = DontHave.
    #[prost(int32, tag = "2")]
    pub(crate) r#type: i32,
}
