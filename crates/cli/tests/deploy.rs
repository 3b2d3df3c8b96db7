//! The files in `deploy/` are what an operator installs as they are: the hardened systemd
//! unit must pass `systemd-analyze verify` with no warning (an unknown or misspelt key is only
//! a warning to systemd, which then ignores the line: a hardening setting lost in silence).

use std::process::Command;

#[test]
fn the_systemd_unit_verifies_without_a_warning() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/sluice.service"
    ))
    .expect("deploy/sluice.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/sluice serve"), "the unit runs sluice serve");
    // systemd checks that the command exists: point it at the binary under test.
    let unit = unit.replace("/usr/local/bin/sluice", env!("CARGO_BIN_EXE_sluice"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.service");
    std::fs::write(&path, unit).unwrap();
    let verified = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd; scripts/setup.sh installs it)");
    let said = String::from_utf8_lossy(&verified.stderr);
    let said: Vec<&str> = said
        .lines()
        // Complaints about the machine's own units, not about this one.
        .filter(|line| line.contains("sluice.service"))
        .collect();
    assert!(verified.status.success(), "systemd-analyze failed: {said:?}");
    assert!(said.is_empty(), "systemd-analyze warned about the unit: {said:#?}");
}
