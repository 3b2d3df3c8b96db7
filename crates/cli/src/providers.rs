//! Building the model router from settings: `[[providers]]` tables in `sluice.toml`, the
//! `--provider` flag (`local`, `scripted`; the scripted one's knobs in `[scripted]` keys or
//! `SLUICE_SCRIPTED_*` variables), and the built-in local model when nothing else is
//! configured.
//!
//! With no provider configured at all, the local model is the one provider (and when its file
//! is missing, the hub is served with no chat model and a warning). Naming any
//! provider (a table or the flag) replaces that default, so `--provider scripted` gives a
//! server with the scripted model only (what tests and benchmarks want: no 100 MB model to
//! load), and `--provider local,scripted` gives both.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;

use sluice_llm::{
    Anthropic, AnthropicConfig, Attempts, LocalConfig, LocalModel, OpenAi, OpenAiConfig, Provider,
    Router, Script, Scripted,
};

/// One `[[providers]]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProviderConfig {
    /// What `/v1/models` lists as the owner.
    name: String,
    /// `openai`, `anthropic`, `scripted` or `local`.
    kind: String,
    /// The API base URL (openai, anthropic).
    #[serde(default)]
    base_url: Option<String>,
    /// The GGUF file (local).
    #[serde(default)]
    path: Option<std::path::PathBuf>,
    /// The environment variable holding the API key.
    #[serde(default)]
    api_key_env: Option<String>,
    /// Model names routed here, in fallback order across providers.
    models: Vec<String>,
    /// The longest wait for the upstream to answer and for its first token, in seconds.
    #[serde(default)]
    timeout_secs: Option<u64>,
    /// Extra attempts on this provider before falling over.
    #[serde(default)]
    retries: Option<u32>,
}

/// The scripted provider's knobs (`[scripted]`, or `SLUICE_SCRIPTED_*`; variables win).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScriptedConfig {
    text: Option<String>,
    tokens_per_second: Option<f64>,
    time_to_first_token_ms: Option<u64>,
    fail_after: Option<usize>,
    /// Tool calls the answer ends with (after its text): `[{"name", "arguments"}]`, the
    /// arguments a JSON text.
    tool_calls: Option<Vec<ScriptedCall>>,
}

/// One tool call of the scripted answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptedCall {
    name: String,
    arguments: String,
}

impl ScriptedConfig {
    fn script(&self) -> anyhow::Result<Script> {
        let env = |name: &str| std::env::var(format!("SLUICE_SCRIPTED_{name}")).ok();
        let parse = |name: &str| -> anyhow::Result<Option<f64>> {
            env(name)
                .map(|v| v.parse().with_context(|| format!("SLUICE_SCRIPTED_{name}={v}")))
                .transpose()
        };
        let defaults = Script::default();
        Ok(Script {
            text: env("TEXT").or_else(|| self.text.clone()).unwrap_or(defaults.text),
            tokens_per_second: parse("TOKENS_PER_SECOND")?
                .or(self.tokens_per_second)
                .unwrap_or(defaults.tokens_per_second),
            time_to_first_token: parse("TTFT_MS")?
                .map(|ms| ms as u64)
                .or(self.time_to_first_token_ms)
                .map_or(defaults.time_to_first_token, Duration::from_millis),
            fail_after: parse("FAIL_AFTER")?.map(|n| n as usize).or(self.fail_after),
            tool_calls: match env("TOOL_CALLS") {
                Some(json) => serde_json::from_str(&json)
                    .with_context(|| format!("SLUICE_SCRIPTED_TOOL_CALLS={json}"))?,
                None => self.tool_calls.clone().unwrap_or_default(),
            }
            .into_iter()
            .map(|call: ScriptedCall| (call.name, call.arguments))
            .collect(),
        })
    }
}

/// The bounds on waiting for upstreams (each provider's `timeout_secs` overrides the first
/// token's).
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpstreamTimeouts {
    pub(crate) connect: Duration,
    pub(crate) first_token: Duration,
    pub(crate) gap: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        let attempts = Attempts::default();
        UpstreamTimeouts {
            connect: Duration::from_secs(10),
            first_token: attempts.first_token_timeout,
            gap: attempts.gap_timeout,
        }
    }
}

impl UpstreamTimeouts {
    /// The attempts of a provider with these bounds.
    fn attempts(&self) -> Attempts {
        Attempts {
            first_token_timeout: self.first_token,
            gap_timeout: self.gap,
            ..Attempts::default()
        }
    }
}

/// Everything the router is built from.
#[derive(Debug)]
pub(crate) struct ModelSettings<'a> {
    pub(crate) providers: &'a [ProviderConfig],
    pub(crate) extra: &'a [String],
    pub(crate) scripted: &'a ScriptedConfig,
    /// The local model's GGUF file.
    pub(crate) model: &'a Path,
    pub(crate) timeouts: UpstreamTimeouts,
    /// Where traces of the answers go, if anywhere.
    pub(crate) traces: Option<sluice_otlp::OtlpConfig>,
}

/// Loads the local model (a llama-family GGUF).
fn local(path: &Path) -> anyhow::Result<Arc<dyn Provider>> {
    if !path.exists() {
        bail!(
            "the local model {} is missing: run scripts/fetch-model.sh (make run does), \
             or give --model PATH, or configure another provider",
            path.display()
        );
    }
    let model = LocalModel::load(LocalConfig::new(path))?;
    tracing::info!(
        model = model.model_name(),
        seconds = model.load_time().as_secs_f64(),
        "loaded the local model"
    );
    Ok(Arc::new(model))
}

fn attempts(config: &ProviderConfig, timeouts: &UpstreamTimeouts) -> Attempts {
    let defaults = timeouts.attempts();
    Attempts {
        retries: config.retries.unwrap_or(defaults.retries),
        first_token_timeout: config
            .timeout_secs
            .map_or(defaults.first_token_timeout, Duration::from_secs),
        ..defaults
    }
}

fn build(
    config: &ProviderConfig,
    scripted: &ScriptedConfig,
    timeouts: &UpstreamTimeouts,
) -> anyhow::Result<Arc<dyn Provider>> {
    let api_key = match &config.api_key_env {
        Some(var) => Some(std::env::var(var).with_context(|| {
            format!("provider {:?} reads its key from ${var}, which is not set", config.name)
        })?),
        None => None,
    };
    // The wait for the upstream's response head: the provider's own bound, else the first
    // token's (which the router applies to the whole wait before the first token anyway).
    let timeout = config.timeout_secs.map_or(timeouts.first_token, Duration::from_secs);
    let base_url = || {
        config
            .base_url
            .clone()
            .with_context(|| format!("provider {:?} needs a base_url", config.name))
    };
    Ok(match config.kind.as_str() {
        "openai" => Arc::new(OpenAi::new(OpenAiConfig {
            name: config.name.clone(),
            base_url: base_url()?,
            api_key,
            timeout,
            connect_timeout: timeouts.connect,
        })),
        "anthropic" => Arc::new(Anthropic::new(AnthropicConfig {
            name: config.name.clone(),
            base_url: config
                .base_url
                .clone()
                .unwrap_or_else(|| "https://api.anthropic.com/v1".to_owned()),
            api_key,
            timeout,
            connect_timeout: timeouts.connect,
        })),
        "scripted" => Arc::new(Scripted::new(config.name.clone(), scripted.script()?)),
        "local" => local(
            config.path.as_deref().unwrap_or(Path::new(sluice_llm::local::DEFAULT_MODEL_PATH)),
        )?,
        other => bail!(
            "provider {:?}: unknown kind {other:?} (openai, anthropic, local, scripted)",
            config.name
        ),
    })
}

/// The router for these settings.
pub(crate) fn router(settings: &ModelSettings<'_>) -> anyhow::Result<Router> {
    let mut router = Router::new();
    if let Some(traces) = &settings.traces {
        router.observe(sluice_otlp::start(traces.clone()));
    }
    for config in settings.providers {
        let provider = build(config, settings.scripted, &settings.timeouts)?;
        router.add(provider, config.models.clone(), attempts(config, &settings.timeouts));
    }
    let default = [String::from("local")];
    let defaulted = settings.providers.is_empty() && settings.extra.is_empty();
    if defaulted && !settings.model.exists() {
        // The hub is useful without a model: serve it, and say how to get the model.
        tracing::warn!(
            model = %settings.model.display(),
            "no provider is configured and the local model is missing: serving the hub with \
             no chat model (run scripts/fetch-model.sh, or give --model PATH or --provider)"
        );
        return Ok(router);
    }
    let extra = if defaulted { &default[..] } else { settings.extra };
    for name in extra {
        match name.as_str() {
            "scripted" => {
                let provider = Scripted::new("scripted", settings.scripted.script()?);
                router.add(
                    Arc::new(provider),
                    vec!["scripted".to_owned()],
                    settings.timeouts.attempts(),
                );
            }
            "local" => {
                let model = sluice_llm::local::DEFAULT_MODEL_NAME.to_owned();
                router.add(local(settings.model)?, vec![model], settings.timeouts.attempts());
            }
            other => bail!("--provider {other:?}: the flag adds `local` or `scripted`"),
        }
    }
    Ok(router)
}
