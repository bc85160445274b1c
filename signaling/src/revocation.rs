//! Revoked tokens: per identity (every token of that identity issued up to the revocation:
//! a lost device, a professional who left) or per token id (one link sent to the wrong
//! person). Durable: each revocation is an audit record (`token_revoked`) that a restarted
//! server reads back (see `restore`).

use consult_protocol::{AuditRecord, TokenClaims};
use std::collections::{HashMap, HashSet};

#[derive(Debug, Default)]
pub struct Revocations {
    /// identity → revoked at (seconds since the epoch): tokens issued then or before.
    identities: HashMap<String, u64>,
    token_ids: HashSet<String>,
}

/// What to revoke.
#[derive(Debug, Clone, PartialEq)]
pub enum Revoke {
    Identity { identity: String, at: u64 },
    Token { token_id: String },
}

impl Revocations {
    pub fn apply(&mut self, r: Revoke) {
        match r {
            Revoke::Identity { identity, at } => {
                let t = self.identities.entry(identity).or_insert(at);
                *t = (*t).max(at);
            }
            Revoke::Token { token_id } => {
                self.token_ids.insert(token_id);
            }
        }
    }

    /// Whether a token with these claims is revoked. Issued in the same second as its
    /// identity's revocation counts as before it (a stolen token minted just before must not
    /// slip through).
    pub fn is_revoked(&self, c: &TokenClaims) -> bool {
        self.identities.get(&c.sub).is_some_and(|at| c.iat <= *at)
            || c.jti.as_ref().is_some_and(|j| self.token_ids.contains(j))
    }

    /// The revocation an audit record says, if it is one.
    pub fn from_record(r: &AuditRecord) -> Option<Revoke> {
        if r.action != "token_revoked" {
            return None;
        }
        if let Some(token_id) = r.detail["token_id"].as_str() {
            return Some(Revoke::Token {
                token_id: token_id.to_owned(),
            });
        }
        Some(Revoke::Identity {
            identity: r.detail["identity"].as_str()?.to_owned(),
            at: r.detail["revoked_at"].as_u64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consult_protocol::Role;

    fn claims(sub: &str, iat: u64, jti: &str) -> TokenClaims {
        TokenClaims {
            iss: "k".into(),
            sub: sub.into(),
            name: sub.into(),
            room: "r".into(),
            role: Role::Physician,
            companion_kind: None,
            iat,
            exp: iat + 3600,
            jti: Some(jti.into()),
        }
    }

    #[test]
    fn identities_up_to_their_revocation_and_single_tokens() {
        let mut r = Revocations::default();
        r.apply(Revoke::Identity {
            identity: "dr-a".into(),
            at: 1000,
        });
        r.apply(Revoke::Token {
            token_id: "t2".into(),
        });
        assert!(r.is_revoked(&claims("dr-a", 999, "t1")));
        assert!(
            r.is_revoked(&claims("dr-a", 1000, "t1")),
            "the same second counts"
        );
        assert!(
            !r.is_revoked(&claims("dr-a", 1001, "t1")),
            "re-issued after"
        );
        assert!(r.is_revoked(&claims("dr-b", 5000, "t2")));
        assert!(!r.is_revoked(&claims("dr-b", 5000, "t3")));
    }
}
