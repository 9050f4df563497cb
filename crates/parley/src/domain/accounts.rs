//! Credentials: argon2 password hashes, HS256 JWTs, and the parsing of the `Authorization`
//! header. Verified HTTP Basic credentials are remembered briefly under a keyed hash of the
//! header (never the password) so Basic does not cost an argon2 verification per request.

use super::{DomainError, User};
use crate::blocking::Pool;
use anyhow::Context;
use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
use argon2::{Argon2, PasswordHasher as _, PasswordVerifier as _};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// What an `Authorization` header carries.
pub enum Credentials {
    Bearer(String),
    Basic {
        email: String,
        password: String,
        header_key: [u8; 32],
    },
}

impl Credentials {
    /// Parses an `Authorization` header. `hash_key` keys the hash that identifies the header
    /// in the verified-credentials cache.
    pub fn parse(header: &str, hash_key: &[u8]) -> Result<Self, DomainError> {
        let bad = || DomainError::Unauthorized("malformed Authorization header".into());
        let (scheme, rest) = header.trim().split_once(' ').ok_or_else(bad)?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return Ok(Self::Bearer(rest.to_owned()));
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(DomainError::Unauthorized(
                "unsupported authorization scheme: use Bearer or Basic".into(),
            ));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (email, password) = decoded.split_once(':').ok_or_else(bad)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(hash_key).expect("HMAC takes any key");
        mac.update(rest.as_bytes());
        Ok(Self::Basic {
            email: email.trim().to_lowercase(),
            password: password.to_owned(),
            header_key: mac.finalize().into_bytes().into(),
        })
    }
}

/// argon2id with the crate's default (OWASP) parameters, on threads of its own (two per
/// core), and at most that many at once: each takes 19 MiB and tens of milliseconds, so
/// unbounded, a burst of bogus credentials would exhaust memory.
#[derive(Clone)]
pub struct PasswordHasher {
    threads: Arc<Pool>,
    permits: Arc<Semaphore>,
}

/// How long a password check waits for a free slot before the server says it is busy.
const HASH_QUEUE_WAIT: Duration = Duration::from_secs(5);

impl Default for PasswordHasher {
    fn default() -> Self {
        let threads = Pool::per_core("password", 2).expect("starting the password threads");
        Self {
            permits: Arc::new(Semaphore::new(threads.threads())),
            threads: Arc::new(threads),
        }
    }
}

impl PasswordHasher {
    async fn on_own_thread<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, DomainError> {
        let busy =
            || DomainError::Unavailable("too many password checks at once; retry shortly".into());
        let permit = tokio::time::timeout(HASH_QUEUE_WAIT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())?;
        self.threads
            .run(move || {
                let _permit = permit;
                work()
            })
            .await
            .map_err(DomainError::Internal)
    }

    pub async fn hash(&self, password: String) -> Result<String, DomainError> {
        self.on_own_thread(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
        })
        .await?
        .map_err(DomainError::Internal)
    }

    pub async fn verify(&self, password: String, hash: String) -> Result<bool, DomainError> {
        self.on_own_thread(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The user's e-mail address: the only user key clients know.
    sub: String,
    /// When the account was created (ms): an address can be reused after a deletion, and
    /// a token names one account, not whoever holds the address now.
    uct: i64,
    iat: i64,
    exp: i64,
}

/// Issues and checks HS256 tokens.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

/// Seconds a token is still accepted after its `exp` (clock skew between servers).
const TOKEN_LEEWAY_SECS: u64 = 5;

/// A verified token: whose (e-mail address and account creation time), and until when.
#[derive(Clone)]
pub struct TokenSubject {
    pub email: String,
    pub user_created_at: i64,
    /// The token's `exp` (seconds since the epoch).
    pub expires_at: i64,
}

impl TokenSubject {
    /// Whether the token is still accepted at `now` (seconds since the epoch), by the rule
    /// `verify` applies: so a remembered verification never outlives the token.
    pub fn valid_at(&self, now: u64) -> bool {
        u64::try_from(self.expires_at).is_ok_and(|exp| now <= exp + TOKEN_LEEWAY_SECS)
    }
}

impl JwtKeys {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl,
        }
    }

    /// A token for the user and its expiry (seconds since the epoch).
    pub fn issue(&self, user: &User) -> anyhow::Result<(String, i64)> {
        let iat = chrono::Utc::now().timestamp();
        let exp = iat + self.ttl.as_secs() as i64;
        let claims = Claims {
            sub: user.email.clone(),
            uct: user.created_at,
            iat,
            exp,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .context("signing a token")?;
        Ok((token, exp))
    }

    pub fn verify(&self, token: &str) -> Result<TokenSubject, DomainError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = TOKEN_LEEWAY_SECS;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|data| TokenSubject {
                email: data.claims.sub,
                user_created_at: data.claims.uct,
                expires_at: data.claims.exp,
            })
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => DomainError::Unauthorized(
                    "the token has expired: get a new one from POST /auth/token".into(),
                ),
                _ => DomainError::Unauthorized(format!("invalid token: {e}")),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            id: 1,
            name: "a".into(),
            email: "a@b.io".into(),
            password_hash: String::new(),
            created_at: 0,
        }
    }

    #[test]
    fn tokens_round_trip_and_reject_other_keys() {
        let keys = JwtKeys::new(b"secret", Duration::from_secs(60));
        let (token, _) = keys.issue(&user()).unwrap();
        assert_eq!(keys.verify(&token).unwrap().email, "a@b.io");
        let other = JwtKeys::new(b"other", Duration::from_secs(60));
        assert!(other.verify(&token).is_err());
    }

    /// A token signed with `secret` that expired `ago` seconds before now.
    fn expired_token(secret: &[u8], ago: i64) -> String {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let claims = Claims {
            sub: "a@b.io".into(),
            uct: 0,
            iat: now - 3600,
            exp: now - ago,
        };
        let key = EncodingKey::from_secret(secret);
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    #[test]
    fn a_remembered_verification_expires_with_its_token() {
        let keys = JwtKeys::new(b"secret", Duration::from_secs(60));
        let now = jsonwebtoken::get_current_timestamp();
        let (token, exp) = keys.issue(&user()).unwrap();
        let subject = keys.verify(&token).unwrap();
        assert_eq!(subject.expires_at, exp);
        assert!(subject.valid_at(now));
        // The rule the cache applies is the one `verify` applies, on both sides of the leeway
        // (2 s of margin each way, so the clock moving on during the test cannot flip it).
        let within = keys
            .verify(&expired_token(b"secret", 3))
            .expect("within the leeway");
        assert!(within.valid_at(jsonwebtoken::get_current_timestamp()));
        assert!(keys.verify(&expired_token(b"secret", 7)).is_err());
        assert!(!within.valid_at(within.expires_at as u64 + TOKEN_LEEWAY_SECS + 1));
        assert!(within.valid_at(within.expires_at as u64 + TOKEN_LEEWAY_SECS));
    }

    #[test]
    fn basic_headers_parse() {
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("A@b.io:pw:with:colons")
        );
        match Credentials::parse(&header, b"k").unwrap() {
            Credentials::Basic {
                email, password, ..
            } => {
                assert_eq!(email, "a@b.io");
                assert_eq!(password, "pw:with:colons");
            }
            Credentials::Bearer(_) => panic!("expected Basic"),
        }
        assert!(Credentials::parse("Basic !!!", b"k").is_err());
        assert!(Credentials::parse("Digest x", b"k").is_err());
    }

    #[tokio::test]
    async fn passwords_verify() {
        let h = PasswordHasher::default();
        let hash = h.hash("correct horse".into()).await.unwrap();
        assert!(h
            .verify("correct horse".into(), hash.clone())
            .await
            .unwrap());
        assert!(!h.verify("wrong horse".into(), hash).await.unwrap());
    }
}
