//! Signing a user in at `/token`: the throttle, then the password check.
//!
//! * **Throttle** ([`wharf_core::signin`]): one failure record per client
//!   address (`CF-Connecting-IP`) and one per user name, kept in this
//!   location's Cache API under [`CACHE_ORIGIN`] for the policy's window.
//!   While either record says wait, the attempt is refused with `429` and
//!   `Retry-After` before the password is looked at. The Cache API is per
//!   location and not transactional, so the count is approximate under
//!   concurrent guesses and a client spread over locations has a record in
//!   each; it needs no binding and costs no subrequest, and a client's
//!   address mostly stays on one location. Keys are sha256 of the address
//!   or name, so neither appears in a URL.
//! * **Password** ([`wharf_core::password`]): PBKDF2-SHA256 derived with
//!   WebCrypto (`crypto.subtle.deriveBits`, native code in workerd) and
//!   compared in constant time. An unknown user name is derived against a
//!   dummy entry of the same cost, so the answer's timing does not tell
//!   which names exist.

use std::sync::OnceLock;

use sha2::{Digest as _, Sha256};
use wharf_core::password::{DEFAULT_ITERATIONS, StoredPassword};
use wharf_core::signin::{Failures, ThrottlePolicy, Verdict, check};
use worker::Cache;

use crate::config::User;
use crate::ctx::Ctx;
use crate::error::Error;
use crate::http::response;
use crate::store::CACHE_ORIGIN;

/// The throttle's policy: 5 free failures, then 1 s doubling to 5 min,
/// forgotten after 15 min without a failure.
pub fn policy() -> ThrottlePolicy {
    ThrottlePolicy::default()
}

/// Signs `name` in with `password`, or says why not.
pub async fn sign_in<'c>(ctx: &'c Ctx<'_>, name: &str, password: &str) -> Result<&'c User, Error> {
    let policy = policy();
    let client = ctx
        .header("CF-Connecting-IP")
        .unwrap_or_else(|| "unknown".to_owned());
    let keys = [record_url("ip", &client), record_url("user", name)];
    let mut records = Vec::with_capacity(keys.len());
    for key in &keys {
        records.push(load(key).await);
    }
    if let Verdict::Delay { retry_after_secs } = check(&policy, &records, ctx.now_ms) {
        tracing::warn!(user = %name, %client, retry_after_secs, "sign-in refused: too many failures");
        return Err(Error::SignInThrottled { retry_after_secs });
    }
    let user = ctx.config.users.get(name);
    let stored: &StoredPassword = match user {
        Some(u) => &u.password,
        None => dummy(),
    };
    let derived = derive(password.as_bytes(), &stored.salt, stored.iterations).await?;
    if let Some(user) = user.filter(|_| stored.matches_derived(&derived)) {
        // Only the name's record: see `wharf_core::signin` on why not the
        // address's.
        forget(&keys[1]).await;
        return Ok(user);
    }
    let keep = Failures::keep_secs(&policy);
    for (key, record) in keys.iter().zip(records) {
        save(key, &Failures::record(record, &policy, ctx.now_ms), keep).await;
    }
    tracing::info!(user = %name, %client, "sign-in failed");
    Err(Error::BadCredentials {
        user: name.to_owned(),
    })
}

/// A stored password nobody knows, with the default cost.
fn dummy() -> &'static StoredPassword {
    static DUMMY: OnceLock<StoredPassword> = OnceLock::new();
    DUMMY.get_or_init(|| StoredPassword {
        iterations: DEFAULT_ITERATIONS,
        salt: b"wharf-no-such-user".to_vec(),
        hash: [0; 32],
    })
}

fn record_url(kind: &str, value: &str) -> String {
    format!(
        "{CACHE_ORIGIN}/signin/{kind}/{}",
        hex::encode(Sha256::digest(value.as_bytes()))
    )
}

async fn load(url: &str) -> Option<Failures> {
    let mut r = Cache::default().get(url, false).await.ok()??;
    r.json().await.ok()
}

async fn save(url: &str, record: &Failures, keep_secs: u64) {
    let Ok(body) = serde_json::to_vec(record) else {
        return;
    };
    let cache_control = format!("public, max-age={keep_secs}");
    let r = response(
        200,
        &[
            ("Content-Type", "application/json"),
            ("Cache-Control", &cache_control),
        ],
        body,
    );
    if let Err(e) = Cache::default().put(url, r).await {
        tracing::warn!(error = %e, "sign-in throttle: Cache API write failed");
    }
}

async fn forget(url: &str) {
    let _ = Cache::default().delete(url, false).await;
}

/// PBKDF2-HMAC-SHA256 through WebCrypto.
#[cfg(target_arch = "wasm32")]
async fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Result<[u8; 32], Error> {
    use worker::js_sys::{Array, Reflect, Uint8Array, global};
    use worker::wasm_bindgen::{JsCast, JsValue};
    use worker::wasm_bindgen_futures::JsFuture;

    let js = |e: JsValue| Error::Runtime(format!("WebCrypto PBKDF2: {e:?}"));
    let crypto = Reflect::get(&global(), &"crypto".into()).map_err(js)?;
    let subtle: web_sys::SubtleCrypto = Reflect::get(&crypto, &"subtle".into())
        .map_err(js)?
        .unchecked_into();
    let usages = Array::of1(&"deriveBits".into());
    let key = JsFuture::from(
        subtle
            .import_key_with_str("raw", &Uint8Array::from(password), "PBKDF2", false, &usages)
            .map_err(js)?,
    )
    .await
    .map_err(js)?;
    let params = web_sys::Pbkdf2Params::new_with_str(
        "PBKDF2",
        "SHA-256",
        iterations,
        &Uint8Array::from(salt),
    );
    let bits = JsFuture::from(
        subtle
            .derive_bits_with_object(&params, &key.unchecked_into(), 256)
            .map_err(js)?,
    )
    .await
    .map_err(js)?;
    Uint8Array::new(&bits)
        .to_vec()
        .try_into()
        .map_err(|_| Error::Runtime("WebCrypto PBKDF2 returned other than 32 bytes".into()))
}

/// Natively (unit tests): the core's derivation.
#[cfg(not(target_arch = "wasm32"))]
async fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Result<[u8; 32], Error> {
    Ok(wharf_core::password::derive(password, salt, iterations))
}
