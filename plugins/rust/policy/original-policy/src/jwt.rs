//! HS256 JSON Web Tokens, as the original signs its session cookies: verification only.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use busbar_plugin_sdk::{Refusal, RefusalKind};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// The claims the policy uses, checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Claims {
    /// The user id; never empty.
    pub sub: String,
    /// When the token expires, in seconds since the Unix epoch, if it says.
    pub exp: Option<u64>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// The registered claims as sent; JSON numbers may carry a fraction (RFC 7519 NumericDate).
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
}

/// Verifies `token` against `secret` at `now` (seconds since the Unix epoch). The algorithm is
/// pinned to HS256 whatever the header says it would like; the signature is compared in
/// constant time.
pub fn verify(token: &str, secret: &[u8], now: u64) -> Result<Claims, Refusal> {
    let invalid = || Refusal::new(RefusalKind::InvalidToken, "invalid token");
    let mut parts = token.split('.');
    let (Some(header_part), Some(claims_part), Some(signature_part), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let header: Header = decode_json(header_part).ok_or_else(invalid)?;
    if header.alg != "HS256" {
        return Err(invalid());
    }
    let signature = URL_SAFE_NO_PAD.decode(signature_part).map_err(|_| invalid())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| invalid())?;
    mac.update(&token.as_bytes()[..header_part.len() + 1 + claims_part.len()]);
    mac.verify_slice(&signature).map_err(|_| invalid())?;

    let claims: RawClaims = decode_json(claims_part).ok_or_else(|| Refusal::new(RefusalKind::InvalidToken, "invalid claims"))?;
    let sub = claims.sub.filter(|s| !s.is_empty()).ok_or_else(|| Refusal::new(RefusalKind::InvalidToken, "invalid claims"))?;
    let exp = claims.exp.map(|e| e.max(0.0) as u64);
    if exp.is_some_and(|exp| exp <= now) {
        return Err(Refusal::new(RefusalKind::Expired, "token expired"));
    }
    if claims.nbf.is_some_and(|nbf| nbf > now as f64) {
        return Err(invalid());
    }
    Ok(Claims { sub, exp })
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    busbar_plugin_sdk::serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"s3cret";
    const NOW: u64 = 1_700_000_000;

    fn sign(header: &str, claims: &str, secret: &[u8]) -> String {
        let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    fn hs256(claims: &str) -> String {
        sign(r#"{"alg":"HS256","typ":"JWT"}"#, claims, SECRET)
    }

    fn refusal(token: &str) -> (RefusalKind, String) {
        let r = verify(token, SECRET, NOW).unwrap_err();
        (r.kind, r.message)
    }

    #[test]
    fn a_good_token_gives_its_subject_and_expiry() {
        let claims = verify(&hs256(r#"{"sub":"u1","exp":1700000100,"nbf":1699999999,"email":"a@b"}"#), SECRET, NOW).unwrap();
        assert_eq!(claims, Claims { sub: "u1".into(), exp: Some(1_700_000_100) });
        assert_eq!(verify(&hs256(r#"{"sub":"u1"}"#), SECRET, NOW).unwrap().exp, None);
    }

    #[test]
    fn a_forged_or_malformed_token_is_invalid() {
        let invalid = (RefusalKind::InvalidToken, "invalid token".to_string());
        assert_eq!(refusal(&sign(r#"{"alg":"HS256"}"#, r#"{"sub":"u1"}"#, b"other")), invalid);
        assert_eq!(refusal(&sign(r#"{"alg":"none"}"#, r#"{"sub":"u1"}"#, SECRET)), invalid);
        assert_eq!(refusal(&sign(r#"{"alg":"HS512"}"#, r#"{"sub":"u1"}"#, SECRET)), invalid);
        let unsigned = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#), URL_SAFE_NO_PAD.encode(r#"{"sub":"u1"}"#));
        assert_eq!(refusal(&unsigned), invalid);
        let mut tampered = hs256(r#"{"sub":"u1"}"#);
        tampered.insert_str(tampered.find('.').unwrap() + 1, "e30");
        assert_eq!(refusal(&tampered), invalid);
        for garbage in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert_eq!(refusal(garbage), invalid, "{garbage}");
        }
        assert_eq!(refusal(&hs256(r#"{"sub":"u1","nbf":1700000001}"#)), invalid);
    }

    #[test]
    fn claims_must_name_a_subject_and_not_be_expired() {
        let claims = (RefusalKind::InvalidToken, "invalid claims".to_string());
        assert_eq!(refusal(&hs256(r#"{"exp":1700000100}"#)), claims);
        assert_eq!(refusal(&hs256(r#"{"sub":""}"#)), claims);
        assert_eq!(refusal(&hs256(r#"{"sub":"u1","exp":"soon"}"#)), claims);
        assert_eq!(refusal(&hs256(r#"{"sub":"u1","exp":1700000000}"#)), (RefusalKind::Expired, "token expired".to_string()));
    }
}
