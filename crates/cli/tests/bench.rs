//! `sluice bench hub` end to end: it starts a server and two worker processes, connects the
//! subscribers, publishes one step, and every update reaches every subscriber.

use std::process::Command;

#[test]
fn bench_hub_delivers_every_update_to_every_subscriber() {
    let results = bench_hub(&[
        "--subscribers",
        "40",
        "--processes",
        "2",
        "--rate",
        "20",
        "--duration",
        "1",
        "--message-size",
        "64",
    ]);
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

/// Runs `sluice bench ARGS --json FILE` and returns what it wrote.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let json = tempfile::NamedTempFile::new().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(json.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    serde_json::from_slice(&std::fs::read(json.path()).unwrap()).unwrap()
}

/// `sluice bench hub` against a server it starts, unpinned, without progress or settling.
fn bench_hub(args: &[&str]) -> serde_json::Value {
    let common = ["hub", "--spawn-server", "--no-pin", "--quiet", "--settle", "0"];
    bench_json(&[&common[..], args].concat())
}

#[test]
fn bench_hub_storm_replays_what_everyone_missed_and_topics_get_their_own_updates() {
    let results = bench_hub(&[
        "--subscribers",
        "30",
        "--topics",
        "30",
        "--storm",
        "2",
        "--rate",
        "30",
        "--duration",
        "1",
    ]);
    let storm = &results["storm"];
    assert_eq!(storm["all_reconnected"], true, "{storm}");
    assert_eq!(storm["reconnected"], 30, "{storm}");
    // 2 updates on each of the 30 topics while everyone was away, each to its one subscriber.
    assert_eq!(storm["missed_published"], 60, "{storm}");
    assert_eq!(storm["replayed"], 60, "{storm}");
    let step = &results["steps"][0];
    // One subscriber per topic: every update is delivered once.
    assert_eq!(step["expected"], step["published"], "{step}");
    assert_eq!(step["delivered"], step["expected"], "{step}");
    assert_eq!(results["topics"], 30);
}

/// `sluice bench gateway` with 2 streams × 2 answers of 5 tokens, unpinned, and `args`.
fn bench_streams(args: &[&str]) -> serde_json::Value {
    let common = [
        "gateway",
        "--no-pin",
        "--quiet",
        "--streams",
        "2",
        "--rounds",
        "2",
        "--tokens",
        "5",
        "--tokens-per-second",
        "500",
        "--ttft-ms",
        "0",
        "--cancels",
        "1",
    ];
    bench_json(&[&common[..], args].concat())
}

#[test]
fn bench_gateway_measures_a_peer_gateway_the_same_way() {
    // The peer here is a second Sluice gateway, started by the shell command as LiteLLM is in
    // bench/peers.sh: told its port and its upstream in the environment.
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("peer.toml");
    let peer = format!(
        "printf '[[providers]]\\nname = \"up\"\\nkind = \"openai\"\\nbase_url = \"%s\"\\n\
         models = [\"scripted\"]\\n' \"$SLUICE_BENCH_UPSTREAM\" > '{settings}' && \
         exec '{sluice}' serve --store memory --listen \"127.0.0.1:$SLUICE_BENCH_PORT\" \
         --config '{settings}'",
        settings = settings.display(),
        sluice = env!("CARGO_BIN_EXE_sluice")
    );
    let results = bench_streams(&[
        "--peer-command",
        &peer,
        "--peer-name",
        "other",
        "--peer-ready-path",
        "/readyz",
    ]);
    assert_eq!(results["direct"]["answers"], 4, "{results}");
    let gateways = results["gateways"].as_array().unwrap();
    let names: Vec<_> = gateways.iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["sluice", "other"]);
    for gateway in gateways {
        assert_eq!(gateway["path"]["answers"], 4, "{gateway}");
        assert_eq!(gateway["path"]["errors"], 0, "{gateway}");
        assert!(gateway["path"]["ttft"]["count"].as_u64().unwrap() == 4, "{gateway}");
        assert!(gateway["rss_idle_kib"].as_u64().unwrap() > 0, "{gateway}");
        // Both are Sluice, which cancels the upstream when its client goes.
        assert_eq!(gateway["cancel"]["count"], 1, "{gateway}");
    }
}

#[test]
fn bench_gateway_checks_callers_with_a_key_and_an_end_user_token() {
    let results = bench_streams(&["--callers", "--gateway-store", "sqlite"]);
    let gateways = results["gateways"].as_array().unwrap();
    let names: Vec<_> = gateways.iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["sluice", "sluice/api-key", "sluice/end-user"]);
    // A credential the checking gateway refused would fail every answer.
    for gateway in gateways {
        assert_eq!(gateway["path"]["answers"], 4, "{gateway}");
        assert_eq!(gateway["path"]["errors"], 0, "{gateway}");
    }
}

/// The protocols through one gateway read in turns: each path gets every answer it was asked
/// for, its first tokens and disconnects timed.
#[test]
fn bench_gateway_reads_the_protocols_in_turns() {
    let results = bench_streams(&["--surfaces", "responses,ui", "--turns", "2"]);
    let gateways = results["gateways"].as_array().unwrap();
    let names: Vec<_> = gateways.iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["sluice", "sluice/responses", "sluice/ui-message-stream"]);
    for gateway in gateways {
        assert_eq!(gateway["path"]["answers"], 4, "{gateway}");
        assert_eq!(gateway["path"]["errors"], 0, "{gateway}");
        assert_eq!(gateway["path"]["ttft"]["count"], 4, "{gateway}");
        assert!(gateway["rss_open_kib"].as_u64().unwrap() > 0, "{gateway}");
    }
    assert_eq!(gateways[1]["cancel"]["count"], 1, "a Responses disconnect cancels");
}

#[test]
fn bench_gateway_rates_steps_up_whole_and_streamed_answers() {
    // A bound no run on a debug build can pass, so that both rates are run.
    let runs = bench_json(&[
        "gateway",
        "--no-pin",
        "--quiet",
        "--tokens",
        "5",
        "--rates",
        "40,20",
        "--step-seconds",
        "1",
        "--bound-ms",
        "5000",
    ]);
    let runs = runs.as_array().unwrap();
    assert_eq!(
        runs.iter().map(|r| r["streamed"].as_bool().unwrap()).collect::<Vec<_>>(),
        [false, true]
    );
    for run in runs {
        let rates: Vec<_> =
            run["direct"].as_array().unwrap().iter().map(|s| s["rate"].as_u64().unwrap()).collect();
        assert_eq!(rates, [20, 40], "rising, whatever the order asked: {run}");
        let sluice = &run["gateways"][0];
        assert_eq!(sluice["name"], "sluice");
        assert_eq!(sluice["capacity"], 40, "{run}");
        for step in sluice["steps"].as_array().unwrap() {
            // One second at each rate: every request sent and answered.
            assert_eq!(step["answered"], step["rate"], "{step}");
            assert_eq!(step["errors"], 0, "{step}");
            // The gateway's CPU is sampled (in 10 ms ticks: a light second may read 0).
            assert!(step["cpu_percent"].as_f64().is_some_and(|c| c >= 0.0), "{step}");
        }
    }
}

#[test]
fn bench_durable_runs_every_part_against_a_streams_server() {
    // As bench/peers/durable/serve.sh starts it: told its port in the environment.
    let server = format!(
        "exec '{}' serve --store memory --open-streams --provider scripted \
         --listen \"127.0.0.1:$SLUICE_BENCH_PORT\"",
        env!("CARGO_BIN_EXE_sluice")
    );
    let results = bench_json(&[
        "durable",
        "--spawn-command",
        &server,
        "--no-pin",
        "--quiet",
        "--writers",
        "2",
        "--append-seconds",
        "1",
        "--readers",
        "20",
        "--rate",
        "20",
        "--duration",
        "1",
        "--idle",
        "10",
        "--settle",
        "0",
    ]);
    let appends = results["appends"].as_array().unwrap();
    let producers: Vec<_> = appends.iter().map(|a| a["producers"].as_bool().unwrap()).collect();
    assert_eq!(producers, [false, true], "{results}");
    for run in appends {
        assert!(run["appends"].as_u64().unwrap() > 0, "{run}");
        assert_eq!(run["errors"], 0, "{run}");
        assert_eq!(run["duplicates"], 0, "{run}");
    }
    let live = &results["live"];
    assert_eq!(live["connect"]["connected"], 20, "{live}");
    let step = &live["steps"][0];
    assert!(step["published"].as_u64().unwrap() > 0, "{step}");
    // Every reader got every message appended while it read.
    assert_eq!(step["delivered"], step["expected"], "{step}");
    let idle = &results["idle"][0]["idle"];
    assert_eq!(idle["subscribers"], 10, "{idle}");
    assert!(idle["server_rss_idle_kib"].as_u64().unwrap() > 0, "{idle}");
}
