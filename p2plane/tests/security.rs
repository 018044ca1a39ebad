//! Who may talk to a node: an allow-list refuses other peers both ways, a dial expecting
//! another `PeerId` fails, and a dialer offering no encryption is refused. (A key file other
//! users can read is refused by `p2plane-transport`'s identity tests.)

mod common;

use std::time::Duration;

use common::{TCP, config, echo, echo_node, first_addr, within};
use libp2p::multiaddr::Protocol;
use p2plane::{Error, Identity, PeerId, Request, tower::ServiceExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_list_refuses_every_other_peer_both_ways() {
    let member_key = p2plane::transport::identity::generate();
    let closed =
        echo_node(config(TCP).with_allowed_peers([member_key.public().to_peer_id()])).await;
    let closed_addr = first_addr(&closed).await;
    let mut member_config = config(TCP);
    member_config.identity = Identity::Keypair(member_key);
    let member = echo_node(member_config).await;
    let stranger = echo_node(config(TCP).with_request_timeout(Duration::from_secs(5))).await;

    // The member connects and is answered.
    let peer = within("the member's dial", member.dial(closed_addr.clone()))
        .await
        .unwrap();
    assert_eq!(peer, closed.local_peer_id());
    let reply = within(
        "the member's answer",
        member.client().oneshot(Request::new(peer, echo(1))),
    )
    .await
    .unwrap();
    assert_eq!(reply, common::answer(&echo(1), peer));

    // The stranger completes the handshake, and is then refused before any protocol runs.
    let refused = within("the stranger's refusal", async {
        let peer = stranger.dial(closed_addr.clone()).await?;
        stranger.client().oneshot(Request::new(peer, echo(2))).await
    })
    .await;
    assert!(refused.is_err(), "the stranger was answered: {refused:?}");
    let connected = closed.connected_peers().await.unwrap();
    assert!(connected.contains(&member.local_peer_id()));
    assert!(!connected.contains(&stranger.local_peer_id()));

    // Outbound as well: the closed node does not connect to the stranger.
    let stranger_addr = first_addr(&stranger).await;
    let error = within("the outbound refusal", closed.dial(stranger_addr))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("allow-list"),
        "unexpected error: {error}"
    );
}

#[tokio::test]
async fn a_dial_expecting_another_peer_id_fails() {
    let dialer = echo_node(config(TCP)).await;
    let target = echo_node(config(TCP)).await;
    let impostor = PeerId::random();
    let addr = first_addr(&target).await.with(Protocol::P2p(impostor));
    let error = within("the dial", dialer.dial(addr)).await.unwrap_err();
    assert!(matches!(error, Error::Dial { .. }), "{error:?}");
    assert!(
        !dialer
            .connected_peers()
            .await
            .unwrap()
            .contains(&target.local_peer_id()),
        "no connection stays open to the peer that answered"
    );
}

/// Writes a multistream-select message: its length as an unsigned varint, then the line.
fn multistream(line: &str) -> Vec<u8> {
    let mut message = vec![u8::try_from(line.len()).expect("a short line")];
    message.extend_from_slice(line.as_bytes());
    message
}

/// Offers `protocol` as the connection's security and returns what the node answers.
async fn offer_security(port: u16, protocol: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut hello = multistream("/multistream/1.0.0\n");
    hello.extend(multistream(&format!("{protocol}\n")));
    stream.write_all(&hello).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    // The node answers with its own header, then accepts (echoes) or refuses ("na").
    while !answer.ends_with(b"na\n") && !answer.ends_with(format!("{protocol}\n").as_bytes()) {
        match within("the node's answer", stream.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_dialer_offering_no_encryption_is_refused() {
    let node = echo_node(config(TCP)).await;
    let port = first_addr(&node)
        .await
        .iter()
        .find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .expect("a TCP port");
    let plaintext = offer_security(port, "/plaintext/2.0.0").await;
    assert!(
        plaintext.ends_with("na\n"),
        "plaintext was not refused: {plaintext:?}"
    );
    // The same exchange offering Noise is accepted, so the refusal is about plaintext.
    let noise = offer_security(port, "/noise").await;
    assert!(
        noise.ends_with("/noise\n"),
        "noise was not accepted: {noise:?}"
    );
}
