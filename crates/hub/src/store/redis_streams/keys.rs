//! The names of one hub's keys in Redis (see "Layout" in the parent module's docs).

/// The keys of one hub.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    pub(super) updates: String,
    pub(super) ids: String,
    pub(super) seq: String,
    pub(super) last_ms: String,
    pub(super) epoch: String,
    pub(super) streams: String,
    pub(super) streams_age: String,
    pub(super) streams_latest: String,
    pub(super) leases: String,
    pub(super) cancels: String,
    pub(super) readers: String,
    pub(super) cancel_channel: String,
    pub(super) api_keys: String,
    pub(super) key_names: String,
    pub(super) revoked_keys: String,
    pub(super) usage: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        let key = |name: &str| format!("{{{prefix}}}:{name}");
        Keys {
            updates: key("updates"),
            ids: key("ids"),
            seq: key("seq"),
            last_ms: key("last-ms"),
            epoch: key("epoch"),
            streams: key("streams"),
            streams_age: key("streams:age"),
            streams_latest: key("streams:latest"),
            leases: key("leases"),
            cancels: key("cancels"),
            readers: key("readers"),
            cancel_channel: key("cancel"),
            api_keys: key("apikeys"),
            key_names: key("apikeys:names"),
            revoked_keys: key("apikeys:revoked"),
            usage: key("usage"),
        }
    }
}
