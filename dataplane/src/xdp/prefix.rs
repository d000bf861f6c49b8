//! IP prefixes as acceleration rules name them (`10.1.0.0/16`, `2001:db8::/32`).
#![forbid(unsafe_code)]

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::XdpError;

/// An IPv4 or IPv6 prefix with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// A prefix of `len` bits of `addr`; host bits must be zero.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, XdpError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let invalid = |reason| XdpError::InvalidPrefix {
            prefix: format!("{addr}/{len}"),
            reason,
        };
        if len > max {
            return Err(invalid("the length exceeds the address size"));
        }
        let host_bits_set = match addr {
            IpAddr::V4(a) => len < 32 && u32::from(a) & (u32::MAX >> len) != 0,
            IpAddr::V6(a) => len < 128 && u128::from(a) & (u128::MAX >> len) != 0,
        };
        if host_bits_set {
            return Err(invalid("bits beyond the prefix length are set"));
        }
        Ok(Self { addr, len })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn bits(&self) -> u8 {
        self.len
    }

    /// Whether this is the zero-length prefix (matches every address of its family).
    pub fn is_default(&self) -> bool {
        self.len == 0
    }
}

impl FromStr for Prefix {
    type Err = XdpError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| XdpError::InvalidPrefix {
            prefix: s.to_owned(),
            reason,
        };
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| invalid("not an IP address"))?;
        let len = match len {
            Some(l) => l
                .parse()
                .map_err(|_| invalid("the length is not a number"))?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Self::new(addr, len)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_and_v6() {
        let p: Prefix = "10.1.0.0/16".parse().unwrap();
        assert_eq!(p.bits(), 16);
        assert_eq!(p.to_string(), "10.1.0.0/16");
        let p: Prefix = "2001:db8::/32".parse().unwrap();
        assert_eq!(p.bits(), 32);
        let host: Prefix = "192.0.2.7".parse().unwrap();
        assert_eq!(host.bits(), 32);
    }

    #[test]
    fn rejects_host_bits_and_bad_lengths() {
        assert!("10.1.0.1/16".parse::<Prefix>().is_err());
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
        assert!("2001:db8::1/64".parse::<Prefix>().is_err());
        assert!("nonsense/8".parse::<Prefix>().is_err());
        assert!("0.0.0.0/0".parse::<Prefix>().unwrap().is_default());
    }
}
