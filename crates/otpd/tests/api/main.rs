//! API tests that drive the real router in-process (no sockets), for the error paths an SDK
//! cannot produce: clock skew, tampered bodies, size limits, health.

mod helpers;
mod pinpoint;
