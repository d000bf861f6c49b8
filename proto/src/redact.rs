//! Hand-written `Debug` for messages that carry passwords or keys: field
//! names and non-secret fields only, never the secret bytes.

use std::fmt;

use crate::{agent, management as m};

const HIDDEN: &str = "<redacted>";

macro_rules! redacted_debug {
    ($ty:ty, [$($shown:ident),*], [$($hidden:ident),*]) => {
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($shown), &self.$shown))*
                    $(.field(stringify!($hidden), &HIDDEN))*
                    .finish()
            }
        }
    };
}

redacted_debug!(m::LoginRequest, [account], [password]);
redacted_debug!(m::LoginReply, [expires_at_unix, roles], [token]);
redacted_debug!(
    m::ChangeAdminPasswordRequest,
    [],
    [current_password, new_password]
);
redacted_debug!(m::CreateAccountRequest, [name, roles], [password]);
redacted_debug!(m::InitializeKeystoreRequest, [], [password]);
redacted_debug!(m::OpenKeystoreRequest, [], [password]);
redacted_debug!(
    m::ChangeKeystorePasswordRequest,
    [],
    [current_password, new_password]
);
redacted_debug!(m::ResetKeystoreRequest, [confirm], [new_password]);
redacted_debug!(
    m::PemPair,
    [certificate_chain_pem],
    [private_key_pem, key_password]
);
redacted_debug!(m::Pkcs12Bundle, [], [der, file_password]);
redacted_debug!(
    m::ConnectApplianceRequest,
    [name, address, fingerprint, account, validity_days],
    [password]
);
redacted_debug!(agent::SessionKey, [direction], [key]);
redacted_debug!(
    agent::SetHistoryStoreRequest,
    [dir, size_mib, encrypt],
    [key]
);
