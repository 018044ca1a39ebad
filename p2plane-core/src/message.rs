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
