//! Client assertions (RFC 7523 §2.2): a JWT that authenticates the client at the token
//! endpoint instead of a secret. [`PrivateKeyJwt`] signs one with a PEM key (Entra
//! certificate credentials); federated sources hand over a token minted elsewhere.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::inputs::{read_bounded, read_config_file, warn_if_shared, MAX_SECRET_FILE};
use super::Fingerprint;
use crate::error::{Error, Result};
use crate::secret::Secret;

/// The `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Lifetime of a signed client assertion (5 min): long enough for clock skew, short enough
/// that a captured assertion is useless soon; a new one is signed for every token request.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// Something that produces a `client_assertion` for a token request.
#[async_trait]
pub trait ClientAssertion: Send + Sync + fmt::Debug + 'static {
    /// A fresh assertion for a request to `token_url` (its `aud`, for signed assertions).
    ///
    /// # Errors
    /// When the assertion cannot be made (unreadable file, failed GitHub call, signing error).
    async fn assertion(&self, token_url: &str) -> Result<Secret>;

    /// A short description (`private key /etc/key.pem`, `federated token file …`).
    fn describe(&self) -> String;

    /// Feeds what identifies the assertion's origin into `fp` (key bytes hashed, file paths).
    ///
    /// # Errors
    /// When a key cannot be read.
    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        fp.add("assertion", self.describe().as_bytes());
        Ok(())
    }
}

/// Which certificate thumbprint header to put on a signed assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum Thumbprint {
    /// `x5t#S256`: base64url SHA-256 of the certificate's DER (Entra's recommendation).
    #[default]
    #[serde(rename = "x5t#S256")]
    Sha256,
    /// `x5t`: base64url SHA-1 of the certificate's DER (older Entra/ADFS setups).
    #[serde(rename = "x5t")]
    Sha1,
    /// Both headers.
    #[serde(rename = "both")]
    Both,
}

/// Signs RFC 7523 client assertions with a private key: `iss` = `sub` = client id, `aud` =
/// token endpoint, a random `jti`, `iat`/`nbf` now, `exp` = now + [`ASSERTION_LIFETIME`].
pub struct PrivateKeyJwt {
    client_id: String,
    key: EncodingKey,
    alg: Algorithm,
    key_file: PathBuf,
    x5t: Option<String>,
    x5t_s256: Option<String>,
}

impl fmt::Debug for PrivateKeyJwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKeyJwt")
            .field("client_id", &self.client_id)
            .field("alg", &self.alg)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl PrivateKeyJwt {
    /// Loads the PEM key in `key_file` (PKCS#8 or PKCS#1 RSA, PKCS#8 EC P-256) and, when given,
    /// the certificate in `cert_file` for the thumbprint header. `alg` defaults to RS256 for
    /// RSA keys and ES256 for EC keys; PS256 must be asked for.
    ///
    /// # Errors
    /// A config error naming the file and what is wrong (never key bytes).
    pub fn from_pem_files(
        origin: &str,
        client_id: &str,
        key_file: &Path,
        cert_file: Option<&Path>,
        alg: Option<Algorithm>,
        thumbprint: Thumbprint,
    ) -> Result<Self> {
        warn_if_shared(key_file);
        let pem = read_config_file(origin, key_file)?;
        let bad = |what: &str| Error::config(origin, format!("{}: {what}", key_file.display()));
        let (key, alg) = match (EncodingKey::from_rsa_pem(&pem), alg) {
            (Ok(k), None | Some(Algorithm::RS256)) => (k, Algorithm::RS256),
            (Ok(k), Some(Algorithm::PS256)) => (k, Algorithm::PS256),
            (Err(_), None | Some(Algorithm::ES256)) => (
                EncodingKey::from_ec_pem(&pem)
                    .map_err(|_| bad("not a PEM RSA or P-256 EC private key (PKCS#8 or PKCS#1)"))?,
                Algorithm::ES256,
            ),
            (_, Some(a)) => {
                return Err(bad(&format!(
                    "algorithm {a:?} does not match the key (RS256/PS256 need RSA, ES256 needs EC)"
                )))
            }
        };
        let (mut x5t, mut x5t_s256) = (None, None);
        if let Some(cert_file) = cert_file {
            let der = certificate_der(origin, cert_file)?;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            if matches!(thumbprint, Thumbprint::Sha1 | Thumbprint::Both) {
                x5t = Some(b64.encode(Sha1::digest(&der)));
            }
            if matches!(thumbprint, Thumbprint::Sha256 | Thumbprint::Both) {
                x5t_s256 = Some(b64.encode(Sha256::digest(&der)));
            }
        }
        let signer = PrivateKeyJwt {
            client_id: client_id.to_owned(),
            key,
            alg,
            key_file: key_file.to_owned(),
            x5t,
            x5t_s256,
        };
        // Sign once now so a key that ring rejects is a start-up error, not a runtime one.
        signer
            .sign("urn:tokenrelay:self-check", SystemTime::now())
            .map_err(|_| bad("the key cannot sign (is it a supported RSA or P-256 key?)"))?;
        Ok(signer)
    }

    /// Signs an assertion for `aud` at `now`.
    ///
    /// # Errors
    /// When signing fails (never quoting the key).
    pub fn sign(&self, aud: &str, now: SystemTime) -> std::result::Result<Secret, String> {
        let iat = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "the clock is before 1970".to_owned())?
            .as_secs();
        let mut jti = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut jti);
        let claims = serde_json::json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": aud,
            "jti": hex::encode(jti),
            "iat": iat,
            "nbf": iat,
            "exp": iat + ASSERTION_LIFETIME.as_secs(),
        });
        let mut header = Header::new(self.alg);
        header.typ = Some("JWT".into());
        header.x5t = self.x5t.clone();
        header.x5t_s256 = self.x5t_s256.clone();
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(Secret::new)
            .map_err(|e| format!("cannot sign the client assertion: {e}"))
    }
}

#[async_trait]
impl ClientAssertion for PrivateKeyJwt {
    async fn assertion(&self, token_url: &str) -> Result<Secret> {
        self.sign(token_url, SystemTime::now())
            .map_err(|m| Error::new(self.describe(), crate::ErrorKind::InvalidResponse(m)))
    }
    fn describe(&self) -> String {
        format!("private key {}", self.key_file.display())
    }
    fn fingerprint(&self, fp: &mut Fingerprint) -> Result<()> {
        fp.add(
            "private_key_file",
            self.key_file.as_os_str().as_encoded_bytes(),
        );
        let bytes = read_bounded(&self.key_file, MAX_SECRET_FILE)
            .map_err(|e| Error::new(self.describe(), e.kind("")))?;
        fp.add("private_key", &bytes);
        fp.add("alg", format!("{:?}", self.alg).as_bytes());
        Ok(())
    }
}

/// The DER of the first `CERTIFICATE` block in a PEM file (which may also hold the key).
fn certificate_der(origin: &str, path: &Path) -> Result<Vec<u8>> {
    let text = read_config_file(origin, path)?;
    let blocks = pem::parse_many(&text)
        .map_err(|e| Error::config(origin, format!("{}: not PEM: {e}", path.display())))?;
    blocks
        .into_iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
        .ok_or_else(|| {
            Error::config(
                origin,
                format!("{} holds no CERTIFICATE block", path.display()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn verify(token: &str, pub_pem: &str, alg: Algorithm) -> serde_json::Value {
        let pem = std::fs::read(fixture(pub_pem)).unwrap();
        let key = match alg {
            Algorithm::ES256 => DecodingKey::from_ec_pem(&pem).unwrap(),
            _ => DecodingKey::from_rsa_pem(&pem).unwrap(),
        };
        let mut v = Validation::new(alg);
        v.set_audience(&["https://idp/token"]);
        v.set_issuer(&["cid"]);
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
            .unwrap()
            .claims
    }

    #[test]
    fn rsa_and_ec_assertions_verify() {
        for (key, public, alg, want) in [
            (
                "test-rsa-key.pem",
                "test-rsa-pub.pem",
                None,
                Algorithm::RS256,
            ),
            (
                "test-rsa-key.pem",
                "test-rsa-pub.pem",
                Some(Algorithm::PS256),
                Algorithm::PS256,
            ),
            ("test-ec-key.pem", "test-ec-pub.pem", None, Algorithm::ES256),
        ] {
            let s = PrivateKeyJwt::from_pem_files(
                "o",
                "cid",
                &fixture(key),
                None,
                alg,
                Thumbprint::default(),
            )
            .unwrap();
            let t = s.sign("https://idp/token", SystemTime::now()).unwrap();
            let claims = verify(t.expose(), public, want);
            assert_eq!(claims["sub"], "cid");
            let exp = claims["exp"].as_u64().unwrap();
            let iat = claims["iat"].as_u64().unwrap();
            assert_eq!(exp - iat, 300);
            let t2 = s.sign("https://idp/token", SystemTime::now()).unwrap();
            assert_ne!(t.expose(), t2.expose(), "jti must differ");
        }
    }

    #[test]
    fn thumbprints_from_certificate() {
        let s = PrivateKeyJwt::from_pem_files(
            "o",
            "cid",
            &fixture("test-rsa-key.pem"),
            Some(&fixture("test-rsa-cert.pem")),
            None,
            Thumbprint::Both,
        )
        .unwrap();
        let t = s.sign("https://idp/token", SystemTime::now()).unwrap();
        let h = jsonwebtoken::decode_header(t.expose()).unwrap();
        assert_eq!(h.x5t.unwrap().len(), 27); // 20 bytes base64url
        assert_eq!(h.x5t_s256.unwrap().len(), 43); // 32 bytes base64url
    }

    #[test]
    fn bad_keys_are_config_errors() {
        let err = PrivateKeyJwt::from_pem_files(
            "o",
            "cid",
            &fixture("test-rsa-cert.pem"),
            None,
            None,
            Thumbprint::default(),
        )
        .unwrap_err();
        assert!(err.is_config());
        // A certificate holds a public key only: refused at start-up, naming the file.
        assert!(
            err.to_string()
                .contains("test-rsa-cert.pem: the key cannot sign"),
            "{err}"
        );
        let err = PrivateKeyJwt::from_pem_files(
            "o",
            "cid",
            &fixture("test-ec-key.pem"),
            None,
            Some(Algorithm::RS256),
            Thumbprint::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not match the key"), "{err}");
        let err = PrivateKeyJwt::from_pem_files(
            "o",
            "cid",
            &fixture("test-rsa-key.pem"),
            Some(&fixture("test-rsa-key.pem")),
            None,
            Thumbprint::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
    }
}
