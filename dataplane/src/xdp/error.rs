//! The loader's error type: what failed and what the operator can do about it.

use std::io;

use aya::programs::ProgramError;

/// Everything that can go wrong loading, attaching or configuring the XDP program.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XdpError {
    /// The process lacks the capabilities to load BPF programs or change interfaces.
    #[error(
        "missing privileges: {missing} not in the effective capability set; run \
         shunt-dataplane as root or grant it CAP_BPF and CAP_NET_ADMIN \
         (e.g. `setcap cap_bpf,cap_net_admin,cap_perfmon+ep <binary>`)"
    )]
    NotPermitted {
        /// The missing capabilities, comma separated.
        missing: String,
    },

    /// The kernel refused a BPF operation for lack of permission despite the
    /// capabilities (a LSM, `kernel.unprivileged_bpf_disabled`, a user namespace).
    #[error(
        "the kernel refused {operation} (permission denied); run shunt-dataplane as root \
         in the initial user namespace, and check that no security module blocks bpf()"
    )]
    Refused {
        /// The refused operation.
        operation: &'static str,
    },

    /// The kernel has no usable BPF (no `bpf()` syscall, or no XDP support).
    #[error(
        "BPF is unavailable on this kernel ({reason}); shunt-dataplane needs a kernel \
         built with CONFIG_BPF_SYSCALL and XDP support (5.15 or later)"
    )]
    BpfUnavailable {
        /// What the kernel said.
        reason: String,
    },

    /// A named interface does not exist.
    #[error(
        "interface `{interface}` does not exist; check the name with `ip link show` \
         (inside the right network namespace)"
    )]
    NoSuchInterface {
        /// The name given.
        interface: String,
    },

    /// Another XDP program is already attached to the interface.
    #[error(
        "interface `{interface}` already has an XDP program attached; remove it with \
         `ip link set dev {interface} xdp off` or stop the process that owns it"
    )]
    Busy {
        /// The interface.
        interface: String,
    },

    /// The embedded object could not be loaded (maps, relocations, the verifier).
    #[error("cannot load the XDP object: {0}")]
    Load(#[source] Box<aya::EbpfError>),

    /// The kernel's verifier or loader rejected a program.
    #[error("the kernel rejected XDP program `{program}`: {source}")]
    Program {
        /// The entry point.
        program: &'static str,
        /// What aya reported (the verifier log included).
        #[source]
        source: Box<ProgramError>,
    },

    /// Attaching to an interface failed.
    #[error("cannot attach `{program}` to `{interface}` in {mode} mode: {source}")]
    Attach {
        /// The entry point.
        program: &'static str,
        /// The interface.
        interface: String,
        /// The mode tried last.
        mode: &'static str,
        /// The cause.
        #[source]
        source: Box<ProgramError>,
    },

    /// A map of the object is missing or has the wrong shape (a build mismatch).
    #[error("map `{map}` of the XDP object is unusable: {source}")]
    MapShape {
        /// The map.
        map: &'static str,
        /// The cause.
        #[source]
        source: Box<aya::maps::MapError>,
    },

    /// Reading or updating a map failed.
    #[error("cannot {operation} in map `{map}`: {source}")]
    Map {
        /// What was attempted.
        operation: &'static str,
        /// The map.
        map: &'static str,
        /// The cause.
        #[source]
        source: Box<aya::maps::MapError>,
    },

    /// An AF_XDP socket was registered for a port the program is not attached to.
    #[error(
        "interface `{interface}` has no steering program attached; attach it before registering sockets"
    )]
    NotAttached {
        /// The interface.
        interface: String,
    },

    /// A value is outside what the program supports.
    #[error("{what} {value} is out of range (limit {limit})")]
    OutOfRange {
        /// What the value is (partner index, queue).
        what: &'static str,
        /// The value given.
        value: u32,
        /// The exclusive upper bound.
        limit: u32,
    },

    /// A prefix could not be parsed or has host bits set beyond its length.
    #[error("invalid prefix `{prefix}`: {reason}; write it as ADDRESS/LENGTH, e.g. 10.1.0.0/16")]
    InvalidPrefix {
        /// The text given.
        prefix: String,
        /// Why it is invalid.
        reason: &'static str,
    },

    /// The rule asks for an action the program does not implement yet.
    #[error("rule action {action} is not implemented by this XDP program")]
    UnsupportedAction {
        /// The action.
        action: &'static str,
    },
}

/// The first OS error code found along an error's source chain.
pub(crate) fn os_error(error: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return Some(code);
        }
        current = e.source();
    }
    None
}

impl XdpError {
    /// Classifies a failure to load the object by the OS error behind it.
    pub(crate) fn from_load(error: aya::EbpfError) -> Self {
        match os_error(&error) {
            Some(libc::EPERM) | Some(libc::EACCES) => Self::Refused {
                operation: "creating BPF maps",
            },
            Some(libc::ENOSYS) => Self::BpfUnavailable {
                reason: "the bpf() syscall is not implemented".into(),
            },
            _ => Self::Load(Box::new(error)),
        }
    }

    /// Classifies a failure to load one program.
    pub(crate) fn from_program(program: &'static str, source: ProgramError) -> Self {
        match os_error(&source) {
            Some(libc::EPERM) | Some(libc::EACCES)
                if !matches!(source, ProgramError::LoadError { .. }) =>
            {
                Self::Refused {
                    operation: "loading the XDP program",
                }
            }
            Some(libc::ENOSYS) => Self::BpfUnavailable {
                reason: "the bpf() syscall is not implemented".into(),
            },
            _ => Self::Program {
                program,
                source: Box::new(source),
            },
        }
    }
}
