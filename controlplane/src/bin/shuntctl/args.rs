//! The command line: global flags live in main.rs, subcommands here.

use clap::{Subcommand, ValueEnum};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Is the server up? (needs no login)
    Health,
    /// Log in and cache the token.
    Login {
        #[arg(long, default_value = "admin")]
        account: String,
    },
    /// Revoke the cached token.
    Logout,
    /// Version, uptime, licence, keystore, peering, data plane.
    Status,
    /// Change the password of the logged-in account.
    Password,
    #[command(subcommand)]
    Accounts(AccountsCmd),
    #[command(subcommand)]
    Keystore(KeystoreCmd),
    #[command(subcommand)]
    Partners(PartnersCmd),
    #[command(subcommand)]
    Rules(RulesCmd),
    #[command(subcommand)]
    Stats(StatsCmd),
    #[command(subcommand, name = "datastore")]
    DataStore(DataStoreCmd),
    #[command(subcommand)]
    Licence(LicenceCmd),
    #[command(subcommand)]
    Peering(PeeringCmd),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Admin,
    KeystoreAdmin,
}

#[derive(Debug, Subcommand)]
pub enum AccountsCmd {
    List,
    /// Create an account (the password is prompted).
    Add {
        name: String,
        #[arg(long = "role", required = true)]
        roles: Vec<RoleArg>,
    },
    Remove {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeystoreCmd {
    Status,
    /// Create the keystore with its first password.
    Init,
    /// Open the keystore with its password.
    Open,
    Seal,
    ChangePassword,
    /// Destroy every private key and all encrypted data, then start afresh.
    Reset {
        /// Confirms the destruction without asking.
        #[arg(long)]
        yes_destroy_all_keys: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PartnersCmd {
    List,
    Add {
        name: String,
        /// Partner's signaling address, host:port.
        #[arg(long)]
        address: String,
        /// LAN prefix behind the partner (repeatable).
        #[arg(long = "prefix")]
        prefixes: Vec<String>,
    },
    Remove {
        name: String,
    },
    /// Print the list now and on every change.
    Watch {
        /// Stop after this many updates.
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ActionArg {
    Accelerate,
    PassThrough,
}

#[derive(Debug, Subcommand)]
pub enum RulesCmd {
    List,
    Add {
        name: String,
        #[arg(long, default_value_t = 100)]
        priority: u32,
        #[arg(long, default_value = "0.0.0.0/0")]
        source: String,
        #[arg(long, default_value = "0.0.0.0/0")]
        destination: String,
        #[arg(long, default_value = "tcp")]
        protocol: String,
        /// Destination ports, "443" or "8000-8100"; every port when omitted.
        #[arg(long)]
        ports: Option<String>,
        #[arg(long, value_enum, default_value = "accelerate")]
        action: ActionArg,
    },
    Remove {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum StatsCmd {
    Show,
    Watch {
        #[arg(long, default_value_t = 1000)]
        interval_ms: u32,
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
pub enum DataStoreCmd {
    Show,
    Set {
        #[arg(long, value_enum)]
        encryption: Option<OnOff>,
        /// History store size in bytes.
        #[arg(long)]
        size: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LicenceCmd {
    Show,
    /// Install a signed licence file.
    Install {
        file: std::path::PathBuf,
    },
    /// Take licences from a licence server ("" to stop).
    Server {
        address: String,
        #[arg(long, default_value = "")]
        server_fingerprint: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Own,
    PrivateCa,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum VerificationArg {
    Full,
    ChainOnly,
}

#[derive(Debug, Subcommand)]
pub enum PeeringCmd {
    Show,
    Enable,
    Disable,
    Mode {
        mode: ModeArg,
    },
    Verification {
        verification: VerificationArg,
    },
    /// Cipher suites, colon-separated (e.g. TLS13_AES_256_GCM_SHA384).
    Ciphers {
        spec: String,
    },
    /// Import own certificate chain and key (PEM); prompts for a key password if --encrypted-key.
    ImportPem {
        #[arg(long)]
        cert: std::path::PathBuf,
        #[arg(long)]
        key: std::path::PathBuf,
        #[arg(long)]
        encrypted_key: bool,
    },
    /// Import a PKCS#12 bundle (prompts for its file password).
    ImportPkcs12 {
        file: std::path::PathBuf,
    },
    /// Import CA certificates (PEM) into a named store.
    ImportCa {
        store: String,
        file: std::path::PathBuf,
    },
    /// Create this appliance's private CA.
    CreateCa {
        #[arg(long, default_value = "Shunt private CA")]
        common_name: String,
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Enroll a remote appliance into the private CA (prompts for its admin password).
    Connect {
        name: String,
        #[arg(long)]
        address: String,
        #[arg(long)]
        remote_fingerprint: String,
        #[arg(long, default_value = "admin")]
        account: String,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Renew a connected peer's certificate: enrolls it again at its recorded
    /// address (prompts for its admin password).
    Renew {
        name: String,
        #[arg(long)]
        remote_fingerprint: String,
        #[arg(long, default_value = "admin")]
        account: String,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Appliances enrolled into this appliance's private CA.
    Peers,
    RemovePeer {
        name: String,
    },
}
