//! The WebSocket wire layer, hand-written for the server side: framing
//! ([`frame`], pure) used by the session's reader and writer. The HTTP
//! upgrade handshake is hyper's; the accept key comes from tungstenite.
pub mod frame;
