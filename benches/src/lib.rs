//! Shunt's benchmarks: criterion micro benchmarks (`benches/`) and the end-to-end driver.
#![forbid(unsafe_code)]
pub mod codec_data;
pub mod e2e;
