//! Who is signed in on the dashboard, and which forwarded actions were already used.
//!
//! The dashboard's cookie holds a random session id, never the admin token: a stolen cookie expires
//! ([`SESSION_TTL`]) and signing out revokes it here. Admin actions forwarded to another member carry an HMAC of the
//! request under the admin token ([`sign`]), never the token itself, so a member that gossips a hostile `api_url`
//! learns nothing it could use elsewhere; each signature names its target and time and is accepted once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long a dashboard session lasts.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most live sessions; signing in past it drops the oldest.
const MAX_SESSIONS: usize = 256;
/// How far a forwarded action's time may be from ours (clock skew plus the forward's own timeout).
pub(crate) const SIGNATURE_WINDOW: Duration = Duration::from_secs(30);

/// Live sessions and recently used signatures.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<String, Instant>>,
    used_signatures: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    /// A new session id (32 random bytes, hex), valid for [`SESSION_TTL`].
    pub(crate) fn create(&self) -> String {
        use rand_core::RngCore;
        let mut bytes = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut bytes);
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut live = self.live.lock().expect("not poisoned");
        live.retain(|_, expires| *expires > now);
        if live.len() >= MAX_SESSIONS {
            if let Some(oldest) = live.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) {
                live.remove(&oldest);
            }
        }
        live.insert(id.clone(), now + SESSION_TTL);
        id
    }

    /// Whether `id` is a live session.
    pub(crate) fn valid(&self, id: &str) -> bool {
        let live = self.live.lock().expect("not poisoned");
        // Compared by map lookup on a 256-bit random id: timing reveals nothing usable.
        live.get(id).is_some_and(|expires| *expires > Instant::now())
    }

    /// Ends a session (sign-out).
    pub(crate) fn revoke(&self, id: &str) {
        self.live.lock().expect("not poisoned").remove(id);
    }

    /// Records a signature as used; `false` if it was used before (a replay).
    fn first_use(&self, signature: &str) -> bool {
        let now = Instant::now();
        let mut used = self.used_signatures.lock().expect("not poisoned");
        used.retain(|_, expires| *expires > now);
        used.insert(signature.to_string(), now + 2 * SIGNATURE_WINDOW).is_none()
    }

    /// Checks a forwarded action's `X-Xnode-Signature` (`t=SECS,sig=HEX`) against what this node would sign.
    pub(crate) fn verify(&self, token: &str, header: &str, request: &Signed<'_>) -> Result<(), &'static str> {
        let mut t = None;
        let mut sig = None;
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", v)) => t = v.parse::<u64>().ok(),
                Some(("sig", v)) => sig = Some(v),
                _ => {}
            }
        }
        let (Some(t), Some(sig)) = (t, sig) else { return Err("malformed X-Xnode-Signature") };
        let now = unix_now();
        if now.abs_diff(t) > SIGNATURE_WINDOW.as_secs() {
            return Err("the signed action is too old or from the future (check the clocks)");
        }
        let expected = sign(token, request, t);
        if !crate::constant_time_eq(expected.as_bytes(), sig.as_bytes()) {
            return Err("the signature does not match (members must share one admin token)");
        }
        if !self.first_use(sig) {
            return Err("this signed action was already used");
        }
        Ok(())
    }
}

/// What a forwarded action's signature covers.
pub(crate) struct Signed<'a> {
    /// `POST`, `PUT`.
    pub(crate) method: &'a str,
    /// The path, e.g. `/api/v1/kill`.
    pub(crate) path: &'a str,
    /// The member it is meant for: another member cannot replay it.
    pub(crate) target: &'a str,
    /// The request body.
    pub(crate) body: &'a [u8],
}

/// HMAC-SHA256 under the admin token of the action at time `t` (seconds since the epoch), hex.
pub(crate) fn sign(token: &str, request: &Signed<'_>, t: u64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes any key length");
    for part in [b"xnode-forward-v1".as_slice(), request.method.as_bytes(), request.path.as_bytes()] {
        mac.update(part);
        mac.update(b"\n");
    }
    mac.update(request.target.as_bytes());
    mac.update(format!("\n{t}\n").as_bytes());
    mac.update(request.body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// The header value for a forwarded action signed now.
pub(crate) fn signature_header(token: &str, request: &Signed<'_>) -> String {
    let t = unix_now();
    format!("t={t},sig={}", sign(token, request, t))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KILL: Signed<'static> = Signed { method: "POST", path: "/api/v1/kill", target: "b", body: b"" };

    #[test]
    fn sessions_are_random_revocable_and_not_the_token() {
        let s = Sessions::default();
        let (a, b) = (s.create(), s.create());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(s.valid(&a) && s.valid(&b) && !s.valid("s3cret"));
        s.revoke(&a);
        assert!(!s.valid(&a) && s.valid(&b));
    }

    #[test]
    fn a_signature_is_bound_to_token_action_target_and_used_once() {
        let s = Sessions::default();
        let header = signature_header("tok", &KILL);
        assert!(!header.contains("tok"));
        assert_eq!(
            s.verify("other", &header, &KILL),
            Err("the signature does not match (members must share one admin token)")
        );
        let elsewhere = Signed { target: "c", ..KILL };
        assert!(s.verify("tok", &header, &elsewhere).is_err(), "another member cannot replay it");
        let resize = Signed { method: "PUT", path: "/api/v1/storage", target: "b", body: b"{}" };
        assert!(s.verify("tok", &header, &resize).is_err(), "nor use it for another action");
        assert_eq!(s.verify("tok", &header, &KILL), Ok(()));
        assert_eq!(s.verify("tok", &header, &KILL), Err("this signed action was already used"));
        let old = format!("t=1,sig={}", sign("tok", &KILL, 1));
        assert!(s.verify("tok", &old, &KILL).unwrap_err().contains("too old"));
        assert!(s.verify("tok", "garbage", &KILL).is_err());
    }
}
