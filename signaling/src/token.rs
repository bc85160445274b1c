//! Access tokens: HS256 JWTs signed with the API secret, bound to one room and one role.

use consult_protocol::{CompanionKind, ErrorCode, Role, TokenClaims};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use std::time::{SystemTime, UNIX_EPOCH};

/// Default server-side maximum lifetime of a token, whatever its `exp` says (12 h: a join
/// link is for one day's consultation).
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 12 * 3600;

#[derive(Clone)]
pub struct TokenService {
    api_key: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    max_lifetime_secs: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Expired,
    Invalid,
}

impl TokenError {
    pub fn code(self) -> ErrorCode {
        match self {
            TokenError::Expired => ErrorCode::TokenExpired,
            TokenError::Invalid => ErrorCode::BadToken,
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a new token says about its holder.
pub struct Grant<'a> {
    pub room: &'a str,
    pub identity: &'a str,
    pub name: &'a str,
    pub role: Role,
    pub companion_kind: Option<CompanionKind>,
}

impl TokenService {
    pub fn new(api_key: &str, api_secret: &str) -> TokenService {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_issuer(&[api_key]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        TokenService {
            api_key: api_key.to_owned(),
            encoding: EncodingKey::from_secret(api_secret.as_bytes()),
            decoding: DecodingKey::from_secret(api_secret.as_bytes()),
            validation,
            max_lifetime_secs: DEFAULT_MAX_LIFETIME_SECS,
        }
    }

    /// Refuse tokens issued longer ago than this, whatever their `exp`.
    pub fn with_max_lifetime(mut self, secs: u64) -> TokenService {
        self.max_lifetime_secs = secs;
        self
    }

    pub fn max_lifetime_secs(&self) -> u64 {
        self.max_lifetime_secs
    }

    /// Mint a token valid for `ttl_secs` from `now` (seconds since the epoch).
    pub fn mint(&self, grant: &Grant<'_>, now: u64, ttl_secs: u64) -> (String, u64) {
        let claims = TokenClaims {
            iss: self.api_key.clone(),
            sub: grant.identity.to_owned(),
            name: grant.name.to_owned(),
            room: grant.room.to_owned(),
            role: grant.role,
            companion_kind: grant.companion_kind,
            iat: now,
            exp: now + ttl_secs,
            jti: Some(format!("{:032x}", rand::random::<u128>())),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 encoding of plain claims cannot fail");
        (token, claims.exp)
    }

    pub fn verify(&self, token: &str) -> Result<TokenClaims, TokenError> {
        let claims = jsonwebtoken::decode::<TokenClaims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        // The server's own bound on a token's life, whatever `exp` says.
        if unix_now() > claims.iat.saturating_add(self.max_lifetime_secs) {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant<'static> {
        Grant {
            room: "r1",
            identity: "rpps-1",
            name: "Dr A",
            role: Role::Physician,
            companion_kind: None,
        }
    }

    #[test]
    fn round_trip() {
        let s = TokenService::new("key", "secret");
        let (t, exp) = s.mint(&grant(), unix_now(), 60);
        let c = s.verify(&t).unwrap();
        assert_eq!(c.room, "r1");
        assert_eq!(c.role, Role::Physician);
        assert_eq!(c.exp, exp);
    }

    #[test]
    fn expired_and_forged_tokens_are_refused() {
        let s = TokenService::new("key", "secret");
        let (t, _) = s.mint(&grant(), unix_now() - 3600, 60);
        assert_eq!(s.verify(&t), Err(TokenError::Expired));
        let other = TokenService::new("key", "another secret");
        let (t, _) = other.mint(&grant(), unix_now(), 60);
        assert_eq!(s.verify(&t), Err(TokenError::Invalid));
        let wrong_issuer = TokenService::new("other-key", "secret");
        let (t, _) = wrong_issuer.mint(&grant(), unix_now(), 60);
        assert_eq!(s.verify(&t), Err(TokenError::Invalid));
        assert_eq!(s.verify("not.a.jwt"), Err(TokenError::Invalid));
    }
}
