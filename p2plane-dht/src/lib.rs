//! Kademlia discovery, records and providers for P2PLane.
//!
//! This crate is reserved in the workspace so the crate map is stable; its issue ("DHT:
//! Kademlia peer discovery, records and providers") fills it. It exports nothing yet.
