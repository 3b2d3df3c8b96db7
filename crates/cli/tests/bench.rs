//! `sluice bench hub` end to end: it starts a server and two worker processes, connects the
//! subscribers, publishes one step, and every update reaches every subscriber.

use std::process::Command;

#[test]
fn bench_hub_delivers_every_update_to_every_subscriber() {
    let json = std::env::temp_dir().join(format!("sluice-bench-test-{}.json", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["bench", "hub", "--spawn-server", "--no-pin", "--quiet"])
        .args(["--subscribers", "40", "--processes", "2", "--rate", "20", "--duration", "1"])
        .args(["--settle", "0", "--message-size", "64", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("| publish/s |"), "{stdout}");

    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(results["processes"], 2);
    assert_eq!(results["connect"]["connected"], 40);
    assert_eq!(results["connect"]["gave_up"], 0);
    let step = &results["steps"][0];
    assert!(step["published"].as_u64().unwrap() >= 15, "{step}");
    assert_eq!(step["publish_errors"], 0, "{step}");
    assert_eq!(step["delivered"], step["expected"], "{step}");
    assert!(step["p99_ms"].as_f64().unwrap() > 0.0, "{step}");
    assert!(results["idle"]["server_rss_idle_kib"].as_u64().unwrap() > 0);
    assert_eq!(results["disconnects"], 0);
}
