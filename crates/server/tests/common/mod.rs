//! What the in-process HTTP tests share: a server on a loopback port, as an application runs
//! it, stopped when the test drops its handle.

pub(crate) mod events;
pub(crate) mod usage;

use std::sync::Arc;

use sluice_hub::{Fanout, Hub, HubConfig, MemoryStore};
use sluice_server::{AppState, Config};
use tokio::sync::oneshot;

/// A running server; it stops when this is dropped (or by [`Running::stop`]).
pub(crate) struct Running {
    pub(crate) url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Running {
    /// Stops the server and waits until it has.
    #[allow(dead_code)] // not every test binary stops its servers by hand
    pub(crate) async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A router whose one scripted provider answers `script` as the models `scripted` and
/// `other`: two models, so that a grant of one can be refused the other.
#[allow(dead_code)] // for the tests of keys and end users
pub(crate) fn scripted_models(script: sluice_llm::Script) -> Arc<sluice_llm::Router> {
    let mut router = sluice_llm::Router::new();
    let models = vec!["scripted".into(), "other".into()];
    let provider = Arc::new(sluice_llm::Scripted::new("scripted", script));
    router.add(provider, models, sluice_llm::Attempts::default());
    Arc::new(router)
}

/// Serves `config` over a memory store (history of 100,000) with `hub_config`.
pub(crate) async fn serve(config: Config, hub_config: HubConfig) -> Running {
    let fanout = Fanout::new();
    let store = Arc::new(MemoryStore::new(100_000, fanout.listener()));
    let state = AppState::new(Hub::new(store, fanout, hub_config), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(sluice_server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    Running { url, stop: Some(stop), task: Some(task) }
}
