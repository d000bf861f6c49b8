//! Shunt's protobuf messages and gRPC services.
#![forbid(unsafe_code)]
