//! One connection's Bitswap streams: reads every frame of every inbound stream until the peer closes it, and
//! writes our messages over one reused outbound stream, reopening it if it breaks.
//!
//! The handler knows framing and versions, not the protocol rules: frames are decoded here, on the connection's
//! task (decoding re-hashes every block, which would otherwise hold up the swarm's task), go up to the behaviour
//! as typed messages, and typed messages come down to be encoded for whatever version the outbound stream
//! negotiated.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use cid::Cid;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use libp2p::core::upgrade::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p::swarm::handler::{ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound};
use libp2p::swarm::{
    ConnectionHandler, ConnectionHandlerEvent, Stream, StreamProtocol, StreamUpgradeError, SubstreamProtocol,
};

use crate::message::{read_frame, write_frame, FrameError, Message, Version};
use crate::{PROTOCOL_1_0_0, PROTOCOL_1_1_0, PROTOCOL_1_2_0};

/// What the behaviour tells a connection (opaque outside this crate).
#[derive(Debug)]
pub struct HandlerIn(pub(crate) FromBehaviour);

/// What a connection tells the behaviour (opaque outside this crate).
#[derive(Debug)]
pub struct HandlerOut(pub(crate) ToBehaviour);

/// A message to send, from the behaviour.
#[derive(Debug)]
pub(crate) enum FromBehaviour {
    Send(Message),
    /// Whether we are waiting on this peer for anything (keeps an otherwise idle connection open).
    Expecting(bool),
}

/// What a connection reports.
#[derive(Debug)]
pub(crate) enum ToBehaviour {
    /// One inbound message, decoded: its blocks' CIDs are what their bytes hash to.
    Message(Message),
    /// An inbound stream broke mid-frame or sent a frame over the limit (the stream is dropped), or a frame was
    /// not a Bitswap message (skipped).
    InboundError(String),
    /// These blocks were written to the peer: (CID, bytes).
    Sent(Vec<(Cid, usize)>),
    /// The peer does not speak Bitswap (or stopped accepting streams); queued messages were dropped.
    OutboundFailed(String),
}

/// The protocols we accept and offer, newest first.
#[derive(Clone, Debug)]
pub struct Protocols;

impl UpgradeInfo for Protocols {
    type Info = StreamProtocol;
    type InfoIter = [StreamProtocol; 3];

    fn protocol_info(&self) -> Self::InfoIter {
        [StreamProtocol::new(PROTOCOL_1_2_0), StreamProtocol::new(PROTOCOL_1_1_0), StreamProtocol::new(PROTOCOL_1_0_0)]
    }
}

impl InboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = std::convert::Infallible;
    type Future = futures::future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, stream: Stream, info: StreamProtocol) -> Self::Future {
        futures::future::ready(Ok((stream, info)))
    }
}

impl OutboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = std::convert::Infallible;
    type Future = futures::future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, stream: Stream, info: StreamProtocol) -> Self::Future {
        futures::future::ready(Ok((stream, info)))
    }
}

type SendResult = Result<(Stream, Version, Vec<(Cid, usize)>), (std::io::Error, Vec<Message>)>;

enum Outbound {
    /// No stream and none requested.
    None,
    /// A stream was requested from the swarm.
    Opening,
    /// A negotiated stream with nothing to write.
    Idle(Stream, Version),
    /// Writing a batch; the future hands the stream back.
    Sending(BoxFuture<'static, SendResult>),
    /// The peer refused every Bitswap version: stop trying on this connection.
    Unsupported,
}

/// The per-connection half of [`crate::Behaviour`].
pub struct Handler {
    max_message_size: usize,
    max_inbound_streams: usize,
    readers: SelectAll<BoxStream<'static, Result<Message, FrameError>>>,
    outbound: Outbound,
    queue: VecDeque<Message>,
    /// A batch that failed to write is retried once on a fresh stream, then dropped.
    retried: bool,
    expecting: bool,
    events: VecDeque<ToBehaviour>,
    waker: Option<Waker>,
}

impl Handler {
    pub(crate) fn new(max_message_size: usize, max_inbound_streams: usize, expecting: bool) -> Self {
        Self {
            max_message_size,
            max_inbound_streams,
            readers: SelectAll::new(),
            outbound: Outbound::None,
            queue: VecDeque::new(),
            retried: false,
            expecting,
            events: VecDeque::new(),
            waker: None,
        }
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn add_reader(&mut self, mut stream: Stream) {
        if self.readers.len() >= self.max_inbound_streams {
            tracing::debug!("too many inbound Bitswap streams on one connection; dropping a new one");
            return;
        }
        // Whether the connection stays open is decided by who is waiting on whom, not by an idle stream the
        // peer keeps for reuse.
        stream.ignore_for_keep_alive();
        let max = self.max_message_size;
        // Kubo may send many messages on one stream: read until it is closed, ending the reader on the first error.
        let reader = futures::stream::unfold(Some(stream), move |state| async move {
            let mut stream = state?;
            match read_frame(&mut stream, max).await {
                // An undecodable message is skipped; the stream goes on.
                Ok(Some(frame)) => {
                    Some((Message::decode(bytes::Bytes::from(frame)).map_err(FrameError::from), Some(stream)))
                }
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        });
        self.readers.push(reader.boxed());
        self.wake();
    }

    fn start_sending(&mut self, mut stream: Stream, version: Version) {
        let batch: Vec<Message> = self.queue.drain(..).collect();
        let max = self.max_message_size;
        self.outbound = Outbound::Sending(
            async move {
                let mut sent = Vec::new();
                for (i, msg) in batch.iter().enumerate() {
                    let frame = msg.encode(version);
                    if frame.len() > max {
                        // The behaviour splits messages under the limit; this is a bug guard, not a path.
                        tracing::error!(len = frame.len(), max, "refusing to send an oversized Bitswap message");
                        continue;
                    }
                    if let Err(e) = write_frame(&mut stream, &frame).await {
                        return Err((e, batch[i..].to_vec()));
                    }
                    sent.extend(msg.blocks.iter().map(|b| (b.cid, b.data.len())));
                }
                Ok((stream, version, sent))
            }
            .boxed(),
        );
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = HandlerIn;
    type ToBehaviour = HandlerOut;
    type InboundProtocol = Protocols;
    type OutboundProtocol = Protocols;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Protocols, ()> {
        SubstreamProtocol::new(Protocols, ())
    }

    fn connection_keep_alive(&self) -> bool {
        self.expecting || !self.queue.is_empty() || matches!(self.outbound, Outbound::Sending(_) | Outbound::Opening)
    }

    fn on_behaviour_event(&mut self, HandlerIn(event): HandlerIn) {
        match event {
            FromBehaviour::Send(msg) => {
                if matches!(self.outbound, Outbound::Unsupported) {
                    tracing::debug!("dropping a Bitswap message for a peer that does not speak Bitswap");
                    return;
                }
                self.queue.push_back(msg);
            }
            FromBehaviour::Expecting(e) => self.expecting = e,
        }
        self.wake();
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<Protocols, Protocols, (), ()>) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol: (stream, _), .. }) => {
                self.add_reader(stream);
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (mut stream, proto), ..
            }) => {
                stream.ignore_for_keep_alive();
                let version = Version::from_protocol(proto.as_ref()).unwrap_or(Version::V120);
                self.outbound = Outbound::Idle(stream, version);
                self.wake();
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                let lost = self.queue.len();
                self.queue.clear();
                let reason = match error {
                    StreamUpgradeError::NegotiationFailed => {
                        self.outbound = Outbound::Unsupported;
                        "peer does not support any Bitswap version".to_string()
                    }
                    other => {
                        self.outbound = Outbound::None;
                        format!("opening a Bitswap stream failed: {other}")
                    }
                };
                tracing::debug!(lost, %reason, "Bitswap outbound stream failed");
                self.events.push_back(ToBehaviour::OutboundFailed(reason));
                self.wake();
            }
            _ => {}
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ConnectionHandlerEvent<Protocols, (), HandlerOut>> {
        loop {
            if let Some(ev) = self.events.pop_front() {
                return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(HandlerOut(ev)));
            }
            match self.readers.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(msg))) => {
                    return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(HandlerOut(ToBehaviour::Message(msg))))
                }
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(HandlerOut(ToBehaviour::InboundError(
                        e.to_string(),
                    ))))
                }
                Poll::Ready(None) | Poll::Pending => {}
            }
            match std::mem::replace(&mut self.outbound, Outbound::None) {
                Outbound::None if !self.queue.is_empty() => {
                    self.outbound = Outbound::Opening;
                    return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                        protocol: SubstreamProtocol::new(Protocols, ()),
                    });
                }
                Outbound::Idle(stream, version) if !self.queue.is_empty() => {
                    self.start_sending(stream, version);
                    continue;
                }
                Outbound::Sending(mut fut) => match fut.poll_unpin(cx) {
                    Poll::Ready(Ok((stream, version, sent))) => {
                        self.retried = false;
                        self.outbound = Outbound::Idle(stream, version);
                        if !sent.is_empty() {
                            self.events.push_back(ToBehaviour::Sent(sent));
                        }
                        continue;
                    }
                    Poll::Ready(Err((e, unsent))) => {
                        // Streams die (the peer reset an idle one, say): try once more on a new stream.
                        tracing::debug!(error = %e, unsent = unsent.len(), "writing to the Bitswap stream failed");
                        if !self.retried {
                            self.retried = true;
                            for m in unsent.into_iter().rev() {
                                self.queue.push_front(m);
                            }
                        } else {
                            self.retried = false;
                            self.events.push_back(ToBehaviour::OutboundFailed(format!("write failed twice: {e}")));
                        }
                        continue;
                    }
                    Poll::Pending => self.outbound = Outbound::Sending(fut),
                },
                other => self.outbound = other,
            }
            self.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
    }
}
