//! Fuzzes the tunnel header parser: never panics, and whatever parses re-encodes to
//! the same bytes (the parser is strict, so there is one encoding per header).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shunt_dataplane::tunnel::header::{HEADER_LEN, Header, QUIC_BITS};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::parse(data) {
        assert_eq!(&h.to_bytes()[..], &data[..HEADER_LEN]);
        assert_eq!(data[0] & QUIC_BITS, 0);
    }
});
