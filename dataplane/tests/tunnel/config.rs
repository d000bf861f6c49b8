//! Validation of the manual-keying file.

use shunt_dataplane::tunnel::Mode;
use shunt_dataplane::tunnel::config::{ConfigError, ManualConfig, PortIo};

const EXAMPLE: &str = include_str!("../../../docs/examples/manual-keying.toml");

fn known(name: &str) -> bool {
    matches!(name, "eth0" | "eth1")
}

fn parse(text: &str) -> Result<ManualConfig, ConfigError> {
    ManualConfig::parse(text, &known)
}

fn edit(from: &str, to: &str) -> String {
    assert!(EXAMPLE.contains(from), "example lacks {from:?}");
    EXAMPLE.replacen(from, to, 1)
}

fn error_of(text: &str) -> String {
    parse(text)
        .expect_err("configuration should be refused")
        .to_string()
}

#[test]
fn example_file_is_valid() {
    let c = parse(EXAMPLE).unwrap();
    assert_eq!(
        (
            c.lan_interface.as_str(),
            c.wan_interface.as_str(),
            c.tunnel_port
        ),
        ("eth1", "eth0", 4790)
    );
    assert_eq!(c.partners.len(), 3);
    assert_eq!(c.partners[0].mode, Mode::Encrypted);
    assert_eq!(c.partners[0].address, "203.0.113.2:4790".parse().unwrap());
    assert_eq!(c.partners[0].prefixes[1].to_string(), "fd00:20::/48");
    assert_eq!(c.partners[1].mode, Mode::CompressOnly);
    assert_eq!(c.partners[2].mode, Mode::PassThrough);
    let debug = format!("{c:?}");
    assert!(!debug.contains("6c1f0b5e"), "key printed: {debug}");
}

#[test]
fn unknown_interface_is_named() {
    let e = error_of(&edit("\"eth1\"", "\"eth9\""));
    assert!(e.contains("lan interface \"eth9\" does not exist"), "{e}");
    assert!(error_of(&edit("\"eth1\"", "\"eth0\"")).contains("must differ"));
}

#[test]
fn port_io_is_af_xdp_unless_tun_is_chosen() {
    assert_eq!(parse(EXAMPLE).unwrap().io, PortIo::AfXdp);
    let without = edit("io = \"af-xdp\"", "");
    assert_eq!(parse(&without).unwrap().io, PortIo::AfXdp);
    let tun = edit("io = \"af-xdp\"", "io = \"tun\"");
    assert_eq!(parse(&tun).unwrap().io, PortIo::Tun);
    let e = error_of(&edit("io = \"af-xdp\"", "io = \"dpdk\""));
    assert!(
        e.contains("unknown variant `dpdk`") && e.contains("`tun`"),
        "{e}"
    );
    // A missing TUN device comes with the commands that create and route it.
    let e = error_of(&tun.replacen("\"eth1\"", "\"shunt0\"", 1));
    assert!(
        e.contains("lan interface \"shunt0\" does not exist")
            && e.contains("ip tuntap add dev NAME mode tun"),
        "{e}"
    );
}

#[test]
fn bad_keys_are_explained() {
    let e = error_of(&edit("6c1f0b5e2a7d94c3", "6c1f0b5e2a7d94"));
    assert!(
        e.contains("site-b: send_key") && e.contains("31 bytes, expected 32"),
        "{e}"
    );
    let e = error_of(&edit("9d8c7b6a", "9d8c7bXY"));
    assert!(
        e.contains("receive_key") && e.contains("not hexadecimal"),
        "{e}"
    );
    let e = error_of(&edit(
        "9d8c7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa998877665544",
        "6c1f0b5e2a7d94c3e8f1a0b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6",
    ));
    assert!(e.contains("are equal"), "{e}");
    let e = error_of(&edit("receive_key = \"9d8c", "# receive_key = \"9d8c"));
    assert!(e.contains("needs send_key and receive_key"), "{e}");
}

#[test]
fn overlapping_prefixes_are_refused() {
    // Across partners: lab's 10.30.0.0/24 inside a new 10.0.0.0/8 of site-b.
    let e = error_of(&edit("\"10.20.0.0/16\"", "\"10.0.0.0/8\""));
    assert!(
        e.contains("10.0.0.0/8 (partner site-b) overlaps 10.30.0.0/24 (partner lab)"),
        "{e}"
    );
    // Within one partner, IPv6.
    let e = error_of(&edit(
        "\"fd00:20::/48\"",
        "\"fd00:20::/48\", \"fd00:20:0:5::/64\"",
    ));
    assert!(
        e.contains("overlaps") && e.contains("fd00:20:0:5::/64"),
        "{e}"
    );
    // Not an overlap: same numbers, different families; adjacent prefixes.
    assert!(
        parse(&edit(
            "\"10.30.0.0/24\"",
            "\"10.21.0.0/16\", \"::a14:0/112\""
        ))
        .is_ok()
    );
}

#[test]
fn bad_prefixes_and_addresses_are_explained() {
    for (bad, why) in [
        ("10.20.0.1/16", "host bits"),
        ("10.20.0.0/33", "exceeds"),
        ("10.20.0.0", "missing /length"),
        ("10.20.0.x/16", "not an IPv4"),
    ] {
        let e = error_of(&edit("10.20.0.0/16", bad));
        assert!(e.contains(why), "{bad}: {e}");
    }
    let e = error_of(&edit("\"203.0.113.2\"", "\"site-b.example\""));
    assert!(e.contains("not an IP address"), "{e}");
}

#[test]
fn duplicates_and_mode_fields_are_refused() {
    let e = error_of(&edit("name = \"lab\"", "name = \"site-b\""));
    assert!(e.contains("\"site-b\" is defined twice"), "{e}");
    let e = error_of(&edit("\"198.51.100.7:4790\"", "\"203.0.113.2\""));
    assert!(e.contains("defined twice"), "{e}");
    let e = error_of(&edit("local_index = 301", ""));
    assert!(e.contains("needs local_index and remote_index"), "{e}");
    let e = error_of(&edit(
        "mode = \"pass-through\"",
        "mode = \"pass-through\"\nlocal_index = 5",
    ));
    assert!(e.contains("uses no session indices"), "{e}");
    let key_line = format!(
        "mode = \"compress-only\"\nsend_key = \"{}\"",
        "11".repeat(32)
    );
    let e = error_of(&edit("mode = \"compress-only\"", &key_line));
    assert!(e.contains("only used in mode"), "{e}");
    let e = error_of(&edit("lanes = 16", "lanes = 16\nlane = 3"));
    assert!(e.contains("unknown field"), "{e}");
    let e = error_of(&edit("mode = \"encrypted\"", "mode = \"secure\""));
    assert!(e.contains("unknown variant"), "{e}");
    let e = error_of(&edit("tunnel_port = 4790", "tunnel_port = 0"));
    assert!(e.contains("tunnel_port must be"), "{e}");
    let e = error_of(&edit("receive_grace_secs = 30", "receive_grace_secs = 900"));
    assert!(e.contains("receive_grace_secs"), "{e}");
}

#[test]
fn load_reads_a_file_and_reports_a_missing_one() {
    let e = ManualConfig::load(std::path::Path::new("/nonexistent/shunt.toml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot read /nonexistent/shunt.toml"),
        "{e}"
    );
    // `lo` always exists; a random name does not.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(
        &path,
        EXAMPLE
            .replace("\"eth1\"", "\"lo\"")
            .replace("\"eth0\"", "\"shunt-nx0\""),
    )
    .unwrap();
    let e = ManualConfig::load(&path).unwrap_err();
    assert!(
        e.to_string()
            .contains("wan interface \"shunt-nx0\" does not exist"),
        "{e}"
    );
}

#[test]
fn compression_is_on_unless_turned_off() {
    let c = parse(EXAMPLE).unwrap();
    assert!(c.partners.iter().all(|p| p.compression));
    let off = edit(
        "mode = \"encrypted\" ",
        "compression = false\nmode = \"encrypted\" ",
    );
    let c = parse(&off).unwrap();
    assert!(!c.partners[0].compression);
    assert!(c.partners[1].compression);
    let e = error_of(&edit(
        "mode = \"encrypted\" ",
        "compression = \"no\"\nmode = \"encrypted\" ",
    ));
    assert!(e.contains("compression"), "{e}");
}

#[test]
fn history_store_settings_are_validated() {
    assert!(
        parse(EXAMPLE).unwrap().history.is_none(),
        "in memory by default"
    );
    let key = "ab".repeat(64);
    let with = |lines: &str| {
        edit(
            "receive_grace_secs = 30",
            &format!("receive_grace_secs = 30\n{lines}"),
        )
    };
    let c = parse(&with(&format!(
        "history_dir = \"/var/lib/shunt/history\"\nhistory_key = \"{key}\""
    )))
    .unwrap();
    let h = c.history.as_ref().expect("history configured");
    assert_eq!(h.dir, std::path::Path::new("/var/lib/shunt/history"));
    assert!(h.key.is_some());
    assert!(!format!("{c:?}").contains("abab"), "key printed");
    assert!(
        parse(&with("history_dir = \"/h\""))
            .unwrap()
            .history
            .unwrap()
            .key
            .is_none()
    );

    let spaced = with("history_dir = \"/h\"").replacen("name = \"site-b\"", "name = \"site b\"", 1);
    let e = error_of(&spaced);
    assert!(e.contains("\"site b\"") && e.contains("directory"), "{e}");
    let e = error_of(&with("history_dir = \"relative/dir\""));
    assert!(e.contains("history_dir") && e.contains("absolute"), "{e}");
    let e = error_of(&with(&format!("history_key = \"{key}\"")));
    assert!(e.contains("needs history_dir"), "{e}");
    let e = error_of(&with("history_dir = \"/h\"\nhistory_key = \"abcd\""));
    assert!(e.contains("history_key") && e.contains("128"), "{e}");
    let e = error_of(&with(&format!(
        "history_dir = \"/h\"\nhistory_key = \"{}\"",
        "zz".repeat(64)
    )));
    assert!(e.contains("not hexadecimal"), "{e}");
    let e = error_of(&with(&format!(
        "history_dir = \"/h\"\nhistory_key = \"{key}\"\nhistory_key_file = \"/k\""
    )));
    assert!(e.contains("not both"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let hex_file = dir.path().join("hex.key");
    std::fs::write(&hex_file, format!("{key}\n")).unwrap();
    let raw_file = dir.path().join("raw.key");
    std::fs::write(&raw_file, [0xC3u8; 64]).unwrap();
    for file in [&hex_file, &raw_file] {
        let text = with(&format!(
            "history_dir = \"/h\"\nhistory_key_file = \"{}\"",
            file.display()
        ));
        assert!(parse(&text).unwrap().history.unwrap().key.is_some());
    }
    let e = error_of(&with(
        "history_dir = \"/h\"\nhistory_key_file = \"/nonexistent/k\"",
    ));
    assert!(
        e.contains("history_key_file") && e.contains("cannot read"),
        "{e}"
    );
}

#[test]
fn history_size_per_partner_is_a_power_of_two() {
    assert_eq!(parse(EXAMPLE).unwrap().partners[0].history_mib, None);
    let with = |mib: &str| {
        edit(
            "mode = \"encrypted\"",
            &format!("mode = \"encrypted\"\nhistory_mib = {mib}"),
        )
    };
    assert_eq!(
        parse(&with("256")).unwrap().partners[0].history_mib,
        Some(256)
    );
    for bad in ["0", "3", "8192"] {
        let e = error_of(&with(bad));
        assert!(e.contains("history_mib") && e.contains("site-b"), "{e}");
    }
}

#[test]
fn zstd_dictionary_is_loaded_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let with = |path: &std::path::Path, extra: &str| {
        edit(
            "mode = \"encrypted\"",
            &format!(
                "mode = \"encrypted\"\nzstd_dictionary = \"{}\"{extra}",
                path.display()
            ),
        )
    };
    let good = dir.path().join("good.dict");
    let content = b"a raw content dictionary of typical payload text ".repeat(16);
    std::fs::write(&good, &content).unwrap();
    let c = parse(&with(&good, "")).unwrap();
    let d = c.partners[0].zstd_dictionary.as_ref().expect("loaded");
    assert_eq!(d.bytes(), &content[..]);
    assert!(c.partners[1].zstd_dictionary.is_none());

    let missing = dir.path().join("missing.dict");
    let e = error_of(&with(&missing, ""));
    assert!(
        e.contains("zstd_dictionary") && e.contains("missing.dict") && e.contains("site-b"),
        "{e}"
    );
    let tiny = dir.path().join("tiny.dict");
    std::fs::write(&tiny, b"too small").unwrap();
    let e = error_of(&with(&tiny, ""));
    assert!(e.contains("zstd --train"), "{e}");
    let e = error_of(&with(&good, "\ncompression = false"));
    assert!(e.contains("compression = false"), "{e}");
}
