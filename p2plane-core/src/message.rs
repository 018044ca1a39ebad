use std::fmt::Debug;

use serde::{Serialize, de::DeserializeOwned};

/// What every value that travels on the wire must be: serializable, cheap enough to clone,
/// shareable between tasks.
///
/// It is implemented for every type that meets the bounds; you never implement it yourself.
pub trait Payload: Serialize + DeserializeOwned + Clone + Send + Sync + Debug + 'static {}

impl<T> Payload for T where T: Serialize + DeserializeOwned + Clone + Send + Sync + Debug + 'static {}

/// A message type that names the protocol it travels on. The same type is the request and the
/// response.
///
/// The node needs the protocol's name before any value exists (to accept inbound streams), so
/// the name is the associated constant [`Message::PROTOCOL`]. The method
/// [`Message::protocol_id`] returns it for a value.
///
/// The name must start with `/` (libp2p's rule for protocol names), for example
/// `"/my-app/1.0.0"`; see [`is_valid_protocol_name`].
///
/// ```
/// use p2plane_core::Message;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct MyMessage(String);
///
/// impl Message for MyMessage {
///     const PROTOCOL: &'static str = "/my-app/1.0.0";
/// }
///
/// assert_eq!(MyMessage("hi".into()).protocol_id(), "/my-app/1.0.0");
/// ```
pub trait Message: Payload {
    /// The protocol name this message travels on, such as `"/my-app/1.0.0"`.
    const PROTOCOL: &'static str;

    /// The protocol name of this value: [`Message::PROTOCOL`].
    fn protocol_id(&self) -> &'static str {
        Self::PROTOCOL
    }

    /// Checks the value before it is sent or handled, when a validation layer is in the
    /// stack. The default accepts everything; override it to refuse bad values with a
    /// reason.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A value that can check itself: what a validation layer runs on a request body.
///
/// Every [`Message`] is `Validate` through [`Message::validate`]; implement it directly for
/// the request types of a [`Protocol`].
pub trait Validate {
    /// `Ok` when the value may be sent or handled, otherwise the reason it may not.
    fn validate(&self) -> Result<(), String>;
}

impl<M: Message> Validate for M {
    fn validate(&self) -> Result<(), String> {
        Message::validate(self)
    }
}

/// A request/response protocol whose request and response types differ.
///
/// Every [`Message`] is a `Protocol` whose request and response are the message type itself.
///
/// ```
/// use p2plane_core::Protocol;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct GetBlock { height: u64 }
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct Block { height: u64, data: Vec<u8> }
///
/// struct BlockSync;
/// impl Protocol for BlockSync {
///     const NAME: &'static str = "/chain/blocks/1.0.0";
///     type Request = GetBlock;
///     type Response = Block;
/// }
/// ```
pub trait Protocol: Send + Sync + 'static {
    /// The protocol name, such as `"/chain/blocks/1.0.0"`. It must start with `/`.
    const NAME: &'static str;
    /// What a client sends.
    type Request: Payload;
    /// What a server answers.
    type Response: Payload;
}

impl<M: Message> Protocol for M {
    const NAME: &'static str = M::PROTOCOL;
    type Request = M;
    type Response = M;
}

/// A protocol whose answer is a stream of items, and whose caller may send a stream of its
/// own (uploads): server streaming, client streaming and bidirectional channels are all this
/// trait.
///
/// A call opens one stream: the caller sends a [`Streaming::Request`], then any number of
/// [`Streaming::Upload`]s; the handler answers with any number of [`Streaming::Item`]s. A
/// protocol without uploads says `type Upload = ();` (its callers send none).
///
/// ```
/// use p2plane_core::Streaming;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct Range { from: u64, to: u64 }
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct Block { height: u64, data: Vec<u8> }
///
/// /// Streams the blocks of a range.
/// struct SyncBlocks;
/// impl Streaming for SyncBlocks {
///     const NAME: &'static str = "/chain/sync/1.0.0";
///     type Request = Range;
///     type Upload = ();
///     type Item = Block;
///     fn validate_item(block: &Block) -> Result<(), String> {
///         if block.data.is_empty() { Err("empty block".into()) } else { Ok(()) }
///     }
/// }
/// ```
pub trait Streaming: Send + Sync + 'static {
    /// The protocol name, such as `"/chain/sync/1.0.0"`. It must start with `/`.
    const NAME: &'static str;
    /// What opens the stream.
    type Request: Payload;
    /// What the caller streams to the handler after the request; `()` for none.
    type Upload: Payload;
    /// What the handler streams back.
    type Item: Payload;

    /// Checks an item the caller receives, when a validation layer is in the caller's
    /// stack: an item refused ends the stream with [`Error::Protocol`](crate::Error::Protocol)
    /// naming the reason. The default accepts everything.
    fn validate_item(item: &Self::Item) -> Result<(), String> {
        let _ = item;
        Ok(())
    }

    /// Checks an upload the handler receives, when a validation layer is in the handler's
    /// stack: an upload refused ends the stream with
    /// [`Error::Rejected`](crate::Error::Rejected) for the caller. The default accepts
    /// everything.
    fn validate_upload(upload: &Self::Upload) -> Result<(), String> {
        let _ = upload;
        Ok(())
    }
}

/// Whether `name` is a valid protocol name: libp2p requires it to start with `/`.
///
/// It is a `const fn`, so P2PLane checks every protocol's name when the program is compiled:
/// a node or client for a protocol named `"my-app"` does not build.
///
/// ```
/// assert!(p2plane_core::is_valid_protocol_name("/my-app/1.0.0"));
/// assert!(!p2plane_core::is_valid_protocol_name("my-app"));
/// ```
pub const fn is_valid_protocol_name(name: &str) -> bool {
    !name.is_empty() && name.as_bytes()[0] == b'/'
}
