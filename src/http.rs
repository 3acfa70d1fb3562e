//! HTTP-level pieces of the request path that know nothing of upstreams or scripts:
//! the body type, proxy errors and their status mapping, header hygiene, framing
//! checks, chunked bodies and their trailers, request ids, header names off the wire and lookups in small header maps,
//! upstream response heads passed through as received, request path normalisation,
//! percent-encoding of what modules put into a request target, query parameters
//! and cookies as modules read them (bytes),
//! and the built-in echo upstream.
//!
//! Must not touch: sockets, pools, the pipeline. Everything here is a pure function of
//! a request or response so it can be tested without a server.

pub mod body;
pub mod chunked;
pub mod echo;
pub mod error;
pub mod framing;
pub mod hygiene;
pub mod lookup;
pub mod names;
pub mod params;
pub mod path;
pub mod percent;
pub mod raw_head;
pub mod request_id;
pub mod trailers;

pub use body::ProxyBody;
pub use error::ProxyError;
pub use raw_head::RawHead;
pub use request_id::RequestId;
