//! Shunt's test tooling: the network-namespace testbed and the WAN emulator.
