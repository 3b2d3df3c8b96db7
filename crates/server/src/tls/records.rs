//! A TLS connection's records sealed here, once rustls has made its handshake.
//!
//! Why: rustls keeps, for every connection, a 4 KiB read buffer once it has read a record, a
//! record layer each way and what is left of the handshake: about 8 KiB, more than an idle
//! subscriber costs in the clear. A subscription only writes once its request is read (what
//! the client sends after it is read and dropped, as over a plain socket), so its connection
//! takes the key for writing out of rustls, drops the rest, and seals each record here with
//! the same AEAD from ring: a key, an IV and a sequence number.
//!
//! The record formats, all of them application data:
//! - TLS 1.3 (RFC 8446, 5.2): the plaintext followed by its content type, sealed under the
//!   record's header, with the IV XORed with the sequence number as nonce.
//! - TLS 1.2 with AES-GCM (RFC 5288): the nonce's last 8 bytes in front of the ciphertext,
//!   the sequence number, type, version and plaintext length as associated data. The nonce is
//!   the IV XORed with the sequence number, as rustls makes it, so it never repeats.
//! - TLS 1.2 with ChaCha20-Poly1305 (RFC 7905): the nonce as in TLS 1.3, the associated data
//!   as in TLS 1.2.
//!
//! A key seals at most its suite's confidentiality limit of records (2^24 for AES-GCM in TLS
//! 1.3; rustls would update the key there, which needs the traffic secret rustls does not
//! give out). Past it sealing fails and the connection ends: the subscriber reconnects with
//! `Last-Event-ID`.

use std::io::{self, IoSlice};

use ring::aead;
use rustls::{ConnectionTrafficSecrets, ProtocolVersion, ServerConnection, SupportedCipherSuite};

/// The most plaintext one record carries (2^14 bytes).
const MAX_PLAINTEXT: usize = 16 * 1024;
/// The most plaintext one call seals: four full records.
const MAX_SEALED: usize = 4 * MAX_PLAINTEXT;
/// A record's header: type, version, length.
const HEADER: usize = 5;
/// The explicit part of a TLS 1.2 AES-GCM nonce, sent in front of the ciphertext.
const EXPLICIT_NONCE: usize = 8;
const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
/// A warning-level `close_notify` alert (RFC 8446, 6.1).
const CLOSE_NOTIFY: [u8; 2] = [1, 0];
/// Every record's version field (TLS 1.3 keeps TLS 1.2's).
const RECORD_VERSION: [u8; 2] = [3, 3];

/// How records are laid out and authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Tls13,
    Tls12Gcm,
    Tls12ChaCha,
}

/// Seals a connection's outgoing records.
pub(crate) struct Sealer {
    key: aead::LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    /// The next record's sequence number.
    seq: u64,
    /// The first sequence number this key may not seal.
    limit: u64,
    format: Format,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("format", &self.format).field("seq", &self.seq).finish()
    }
}

impl Sealer {
    /// Whether `connection`'s records can be sealed here: its handshake done, nothing of its
    /// own left to write, and one of the formats above. [`Sealer::take`] then succeeds.
    pub(crate) fn can_take(connection: &ServerConnection) -> bool {
        !connection.is_handshaking()
            && !connection.wants_write()
            && connection.negotiated_cipher_suite().is_some()
            && matches!(
                connection.protocol_version(),
                Some(ProtocolVersion::TLSv1_2 | ProtocolVersion::TLSv1_3)
            )
    }

    /// Takes `connection`'s key for writing (dropping everything else of it).
    pub(crate) fn take(connection: ServerConnection) -> Result<Sealer, rustls::Error> {
        let suite =
            connection.negotiated_cipher_suite().ok_or(rustls::Error::HandshakeNotComplete)?;
        let (limit, tls13) = match suite {
            SupportedCipherSuite::Tls12(suite) => (suite.common.confidentiality_limit, false),
            SupportedCipherSuite::Tls13(suite) => (suite.common.confidentiality_limit, true),
        };
        let (seq, secrets) = connection.dangerous_extract_secrets()?.tx;
        let (algorithm, key, iv, format) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                (&aead::AES_128_GCM, key, iv, if tls13 { Format::Tls13 } else { Format::Tls12Gcm })
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                (&aead::AES_256_GCM, key, iv, if tls13 { Format::Tls13 } else { Format::Tls12Gcm })
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (
                &aead::CHACHA20_POLY1305,
                key,
                iv,
                if tls13 { Format::Tls13 } else { Format::Tls12ChaCha },
            ),
            _ => return Err(rustls::Error::General("an AEAD this server cannot seal".into())),
        };
        let unbound = aead::UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| rustls::Error::General("a key of the wrong length".into()))?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| rustls::Error::General("an IV of the wrong length".into()))?;
        Ok(Sealer { key: aead::LessSafeKey::new(unbound), iv, seq, limit, format })
    }

    /// Whether the key may seal another record (its suite's confidentiality limit).
    fn may_seal(&self) -> io::Result<()> {
        if self.seq >= self.limit {
            return Err(io::Error::other("the connection's key may seal no more records"));
        }
        Ok(())
    }

    /// Seals what it can of `slices` (up to four full records) as records appended to `out`:
    /// how many bytes of plaintext. Fails once the key may seal no more records.
    pub(crate) fn seal(&mut self, slices: &[IoSlice<'_>], out: &mut Vec<u8>) -> io::Result<usize> {
        let total = slices.iter().map(|slice| slice.len()).sum::<usize>().min(MAX_SEALED);
        let mut plaintext = Plaintext { slices, index: 0, offset: 0 };
        let mut sealed = 0;
        while sealed < total {
            if let Err(exhausted) = self.may_seal() {
                return if sealed > 0 { Ok(sealed) } else { Err(exhausted) };
            }
            let length = (total - sealed).min(MAX_PLAINTEXT);
            self.seal_record(APPLICATION_DATA, &mut plaintext, length, out);
            sealed += length;
        }
        Ok(sealed)
    }

    /// Seals a `close_notify` alert at the end of `out`: the stream ended here, not cut short
    /// on the way. Fails once the key may seal no more records.
    pub(crate) fn seal_close_notify(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        self.may_seal()?;
        let alert = [IoSlice::new(&CLOSE_NOTIFY)];
        let mut plaintext = Plaintext { slices: &alert, index: 0, offset: 0 };
        self.seal_record(ALERT, &mut plaintext, CLOSE_NOTIFY.len(), out);
        Ok(())
    }

    /// Seals the next `length` bytes of `plaintext` as one record of `content_type` at the
    /// end of `out` (in TLS 1.3 the type is sealed inside, and the record says application
    /// data).
    fn seal_record(
        &mut self,
        content_type: u8,
        plaintext: &mut Plaintext<'_, '_>,
        length: usize,
        out: &mut Vec<u8>,
    ) {
        let explicit = if self.format == Format::Tls12Gcm { EXPLICIT_NONCE } else { 0 };
        let inner = if self.format == Format::Tls13 { length + 1 } else { length };
        let record_length = explicit + inner + aead::MAX_TAG_LEN;
        let start = out.len();
        out.reserve(HEADER + record_length);
        out.push(if self.format == Format::Tls13 { APPLICATION_DATA } else { content_type });
        out.extend_from_slice(&RECORD_VERSION);
        out.extend_from_slice(&u16::try_from(record_length).unwrap_or(u16::MAX).to_be_bytes());

        let mut nonce = self.iv;
        for (byte, seq) in nonce[aead::NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *byte ^= seq;
        }
        out.extend_from_slice(&nonce[aead::NONCE_LEN - explicit..]);
        let payload = out.len();
        plaintext.copy_into(length, out);
        // TLS 1.3 authenticates the record's header; TLS 1.2 the sequence number, then a
        // header with the plaintext's length.
        let mut aad = [0; 13];
        let aad = match self.format {
            Format::Tls13 => {
                out.push(content_type);
                aad[..HEADER].copy_from_slice(&out[start..start + HEADER]);
                &aad[..HEADER]
            }
            Format::Tls12Gcm | Format::Tls12ChaCha => {
                aad[..8].copy_from_slice(&self.seq.to_be_bytes());
                aad[8] = content_type;
                aad[9..11].copy_from_slice(&RECORD_VERSION);
                aad[11..].copy_from_slice(&u16::try_from(length).unwrap_or(u16::MAX).to_be_bytes());
                &aad[..]
            }
        };
        let nonce = aead::Nonce::assume_unique_for_key(nonce);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, aead::Aad::from(aad), &mut out[payload..])
            .expect("a record within the AEAD's bounds");
        out.extend_from_slice(tag.as_ref());
        self.seq += 1;
    }
}

/// A read position in a list of slices.
struct Plaintext<'s, 'a> {
    slices: &'s [IoSlice<'a>],
    index: usize,
    offset: usize,
}

impl Plaintext<'_, '_> {
    /// Appends the next `length` bytes to `out` (fewer if the slices end first).
    fn copy_into(&mut self, mut length: usize, out: &mut Vec<u8>) {
        while length > 0 {
            let Some(slice) = self.slices.get(self.index) else { return };
            let taken = (slice.len() - self.offset).min(length);
            out.extend_from_slice(&slice[self.offset..self.offset + taken]);
            length -= taken;
            self.offset += taken;
            if self.offset == slice.len() {
                self.index += 1;
                self.offset = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::Arc;

    use rustls::crypto::{CryptoProvider, ring as provider};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConnection, SupportedProtocolVersion};

    use super::*;

    /// A client and a server in memory, handshaken with `suite` only.
    fn handshaken(
        suite: SupportedCipherSuite,
        version: &'static SupportedProtocolVersion,
    ) -> (ClientConnection, ServerConnection) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = CertificateDer::from(made.cert.der().to_vec());
        let key = PrivateKeyDer::try_from(made.signing_key.serialize_der()).unwrap();
        let provider =
            Arc::new(CryptoProvider { cipher_suites: vec![suite], ..provider::default_provider() });
        let mut server_config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        server_config.enable_secret_extraction = true;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = ClientConnection::new(Arc::new(client_config), name).unwrap();
        let mut server = ServerConnection::new(Arc::new(server_config)).unwrap();
        while client.is_handshaking() || server.is_handshaking() || server.wants_write() {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            let mut wire = &wire[..];
            while !wire.is_empty() {
                server.read_tls(&mut wire).unwrap();
                server.process_new_packets().unwrap();
            }
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            deliver(&mut client, &wire);
        }
        assert_eq!(server.negotiated_cipher_suite(), Some(suite));
        (client, server)
    }

    /// Hands `wire` to `client` and reads what it decrypts (rustls checks every record).
    fn deliver(client: &mut ClientConnection, mut wire: &[u8]) -> Vec<u8> {
        let mut plaintext = Vec::new();
        while !wire.is_empty() {
            client.read_tls(&mut wire).unwrap();
            client.process_new_packets().expect("records rustls accepts");
            match client.reader().read_to_end(&mut plaintext) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                outcome => panic!("the stream ended: {outcome:?}"),
            }
        }
        plaintext
    }

    /// Every suite rustls offers here, in both versions: what is sealed here is what the
    /// client reads, across records, calls and slices, with no record over 2^14 bytes.
    #[test]
    fn a_client_reads_what_is_sealed_here_in_every_suite() {
        use provider::cipher_suite as s;
        let suites = [
            (s::TLS13_AES_128_GCM_SHA256, &rustls::version::TLS13),
            (s::TLS13_AES_256_GCM_SHA384, &rustls::version::TLS13),
            (s::TLS13_CHACHA20_POLY1305_SHA256, &rustls::version::TLS13),
            (s::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, &rustls::version::TLS12),
            (s::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, &rustls::version::TLS12),
            (s::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, &rustls::version::TLS12),
        ];
        for (suite, version) in suites {
            let (mut client, server) = handshaken(suite, version);
            assert!(Sealer::can_take(&server));
            let mut sealer = Sealer::take(server).unwrap();
            let frames = [b"data: one\n\n".to_vec(), vec![b'x'; 40_000], b"data: end\n\n".to_vec()];
            let slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
            let mut wire = Vec::new();
            let sealed = sealer.seal(&slices, &mut wire).unwrap();
            assert_eq!(sealed, frames.iter().map(Vec::len).sum::<usize>(), "{suite:?}");
            assert_eq!(deliver(&mut client, &wire), frames.concat(), "{suite:?}");
            let mut lengths = Vec::new();
            let mut rest = &wire[..];
            while let [_, _, _, high, low, ..] = *rest {
                let length = usize::from(u16::from_be_bytes([high, low]));
                lengths.push(length);
                rest = &rest[HEADER + length..];
            }
            assert_eq!(lengths.len(), 3, "{suite:?}: 40,022 bytes in 3 records: {lengths:?}");
            assert!(lengths.iter().all(|&l| l <= MAX_PLAINTEXT + 256), "{lengths:?}");
            // Later calls go on from the sequence number the last one reached.
            for n in 0..3 {
                let frame = format!("data: {n}\n\n");
                let mut wire = Vec::new();
                sealer.seal(&[IoSlice::new(frame.as_bytes())], &mut wire).unwrap();
                assert_eq!(deliver(&mut client, &wire), frame.as_bytes(), "{suite:?}");
            }
        }
    }

    /// After a `close_notify` sealed here, the client reads a clean end of the stream, in
    /// both versions.
    #[test]
    fn a_close_notify_sealed_here_ends_the_stream_cleanly() {
        for (suite, version) in [
            (provider::cipher_suite::TLS13_AES_128_GCM_SHA256, &rustls::version::TLS13),
            (
                provider::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                &rustls::version::TLS12,
            ),
        ] {
            let (mut client, server) = handshaken(suite, version);
            let mut sealer = Sealer::take(server).unwrap();
            let mut wire = Vec::new();
            sealer.seal(&[IoSlice::new(b"data: last\n\n")], &mut wire).unwrap();
            sealer.seal_close_notify(&mut wire).unwrap();
            let mut wire = &wire[..];
            while !wire.is_empty() {
                client.read_tls(&mut wire).unwrap();
                client.process_new_packets().expect("records rustls accepts");
            }
            let mut plaintext = Vec::new();
            client.reader().read_to_end(&mut plaintext).expect("a clean end, not an error");
            assert_eq!(plaintext, b"data: last\n\n", "{suite:?}");
        }
    }

    #[test]
    fn one_call_seals_at_most_four_records_and_a_key_past_its_limit_seals_none() {
        let (mut client, server) =
            handshaken(provider::cipher_suite::TLS13_AES_128_GCM_SHA256, &rustls::version::TLS13);
        let mut sealer = Sealer::take(server).unwrap();
        let big = vec![b'y'; MAX_SEALED + 10];
        let mut wire = Vec::new();
        assert_eq!(sealer.seal(&[IoSlice::new(&big)], &mut wire).unwrap(), MAX_SEALED);
        assert_eq!(deliver(&mut client, &wire), &big[..MAX_SEALED]);

        sealer.limit = sealer.seq + 1;
        let mut wire = Vec::new();
        assert_eq!(sealer.seal(&[IoSlice::new(&big)], &mut wire).unwrap(), MAX_PLAINTEXT);
        assert_eq!(deliver(&mut client, &wire), &big[..MAX_PLAINTEXT]);
        let mut wire = Vec::new();
        assert!(sealer.seal(&[IoSlice::new(b"more")], &mut wire).is_err());
        assert!(wire.is_empty());
    }
}
