//! Keys as an operator sets them up: `[[keys]]` in `sluice.toml` beside the flat `api_keys`,
//! keys made with `sluice keys create`, and a budget that holds across a restart (the
//! default SQLite store keeps what each key used).

mod common;

use std::process::Command;
use std::time::Duration;

use common::Server;
use serde_json::{Value, json};

const ADMIN: &str = "admin-for-tests";

const SETTINGS: &str = r#"
admin_key = "admin-for-tests"
api_keys = ["sk-old"]

[[keys]]
name = "team"
key = "sk-team"
token_budget = 1
budget_period = "day"
"#;

async fn ask(server: &Server, key: &str) -> reqwest::Response {
    let body = json!({"model": "scripted", "messages": [{"role": "user", "content": "hi"}]});
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", server.url());
    client.post(url).bearer_auth(key).json(&body).send().await.unwrap()
}

fn keys_cli(server: &Server, args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["keys", "--url", &server.url(), "--admin-key", ADMIN])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_and_the_keys_made_at_run_time_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sluice.toml"), SETTINGS).unwrap();
    let env = [("SLUICE_SCRIPTED_TOKENS_PER_SECOND", "0")];
    let mut server = Server::start_with_env(dir.path(), &["--provider", "scripted"], &env);

    let made = keys_cli(&server, &["create", "made", "--rpm", "100"]);
    let made = made["key"].as_str().unwrap().to_owned();
    assert_eq!(ask(&server, "sk-team").await.status(), 200);
    let spent = async {
        loop {
            let usage = keys_cli(&server, &["usage"]);
            let team = usage["keys"].as_array().unwrap().iter().find(|k| k["name"] == "team");
            if team.is_some_and(|t| t["period_tokens"].as_u64() > Some(0)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), spent).await.expect("the answer was spent");

    server.stop();
    server.restart();
    let refused = ask(&server, "sk-team").await;
    assert_eq!(refused.status(), 429, "the budget was spent before the restart");
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(ask(&server, "sk-old").await.status(), 200, "the flat list's key has no limit");
    assert_eq!(ask(&server, &made).await.status(), 200, "a key made at run time is kept");
    let listed = keys_cli(&server, &["list"]);
    let names: Vec<_> = listed["keys"].as_array().unwrap().iter().map(|k| &k["name"]).collect();
    assert_eq!(names, ["api_keys[0]", "team", "made"]);
}
