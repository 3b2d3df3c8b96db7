//! `sluice serve --dev`: the first five minutes. On a loopback address only, publishing is
//! turned on with a development secret kept in the data folder (made once, readable by its
//! owner only), a publisher token and a ready `sluice publish` line are printed, and the
//! console (served to that loopback address) is offered the token, so that publishing works
//! from the console with no reading. Without `--dev` nothing of this happens.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sluice_server::{Grant, mint_hs256};

/// The file in the data folder that holds the development secret.
const SECRET_FILE: &str = "dev-secret";

/// Development mode's secret, and where it is kept.
#[derive(Debug)]
pub(crate) struct Dev {
    /// The HS256 key the printed token is signed with.
    pub(crate) secret: String,
    file: PathBuf,
}

impl Dev {
    /// Refuses an address other than loopback, then reads (or makes) the development secret
    /// in the data folder: the folder of a SQLite store, else `./sluice-data`.
    pub(crate) fn prepare(listen: SocketAddr, store: &str) -> anyhow::Result<Dev> {
        if !listen.ip().is_loopback() {
            bail!(
                "--dev serves only on a loopback address (127.0.0.1 or [::1]), not {listen}: it \
                 hands a publisher token to anyone who opens the console"
            );
        }
        let folder = store
            .strip_prefix("sqlite:")
            .and_then(|path| Path::new(path).parent())
            .filter(|parent| !parent.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("sluice-data"), Path::to_path_buf);
        let file = folder.join(SECRET_FILE);
        let secret = match std::fs::read_to_string(&file) {
            Ok(secret) if !secret.trim().is_empty() => secret.trim().to_owned(),
            _ => make_secret(&folder, &file)?,
        };
        Ok(Dev { secret, file })
    }

    /// A draft-07 token that may publish and receive every topic.
    pub(crate) fn publisher_token(&self) -> String {
        let grant = Grant {
            publish: vec!["*".into()],
            subscribe: vec!["*".into()],
            exp: None,
            payload: None,
        };
        mint_hs256(self.secret.as_bytes(), &grant)
    }

    /// Says what development mode did and how to publish, on standard error.
    pub(crate) fn announce(&self, base: &str, token: &str) {
        let hub = format!("{base}/.well-known/mercure");
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "\nDevelopment mode: publishing is on, with the secret in {file} (keep it out of \
             production).\n  console:  {base}/console  (its publisher token is filled in)\n  \
             token:    {token}\n  publish:  sluice publish --hub {hub} --token {token} \
             --topic https://example.com/hello --data 'Hello from Sluice'\n",
            file = self.file.display(),
        );
    }
}

/// 256 random bits as hex, written to `file` (readable by its owner only).
fn make_secret(folder: &Path, file: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    let secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(file).with_context(|| format!("writing {}", file.display()))?;
    out.write_all(secret.as_bytes())?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_may_run_in_development_mode() {
        let refused = Dev::prepare("0.0.0.0:8080".parse().unwrap(), "memory").unwrap_err();
        assert!(refused.to_string().contains("loopback"), "{refused}");
    }

    #[test]
    fn the_secret_is_made_once_in_the_data_folder_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("sqlite:{}", dir.path().join("sluice.db").display());
        let listen = "127.0.0.1:8080".parse().unwrap();
        let first = Dev::prepare(listen, &store).unwrap();
        assert!(first.secret.len() >= 64);
        assert_eq!(Dev::prepare(listen, &store).unwrap().secret, first.secret, "kept");
        let file = dir.path().join(SECRET_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "readable by its owner only: {mode:o}");
        }
    }
}
