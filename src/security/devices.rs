//! Devices: what an account signs in from. A device is known by a fingerprint, the SHA-256
//! of the portal's device id (`X-UMS-Device-Id`, when it forwards one) or else of the user
//! agent, `Accept-Language` and the client hints; it becomes known after a sign-in that
//! passed unchallenged or was verified. Users list theirs and forget them (`devices`).

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::audit::{DeviceHints, Origin};
use crate::clock::{Millis, Timestamp};
use crate::store::{Connection, Inet, StoreError};

/// The fingerprint of the device a request came from.
pub fn fingerprint(origin: &Origin) -> String {
    let hints = &origin.device;
    let material = match &hints.device_id {
        Some(id) => format!("id\n{id}"),
        None => format!(
            "agent\n{}\n{}\n{}",
            origin.user_agent.as_deref().unwrap_or_default(),
            hints.accept_language.as_deref().unwrap_or_default(),
            hints.client_hints.as_deref().unwrap_or_default()
        ),
    };
    hex::encode(Sha256::digest(material.as_bytes()))
}

/// The browser and the operating system a user agent names, in a word each.
pub fn describe(user_agent: Option<&str>, hints: &DeviceHints) -> (String, String) {
    let agent = user_agent.unwrap_or_default();
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("Chromium/", "Chromium"),
        ("Safari/", "Safari"),
        ("python-requests", "Python requests"),
        ("python-httpx", "Python httpx"),
        ("curl/", "curl"),
    ]
    .iter()
    .find(|(marker, _)| agent.contains(marker))
    .map_or("unknown", |(_, name)| name);
    let os = [
        ("Windows", "Windows"),
        ("Android", "Android"),
        ("iPhone", "iOS"),
        ("iPad", "iPadOS"),
        ("Mac OS X", "macOS"),
        ("CrOS", "ChromeOS"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(marker, _)| agent.contains(marker))
    .map(|(_, name)| (*name).to_string())
    .or_else(|| {
        // `Sec-CH-UA-Platform: "macOS"` when the browser sends client hints.
        hints
            .platform
            .as_deref()
            .map(|platform| platform.trim_matches('"').chars().take(32).collect())
    })
    .unwrap_or_else(|| "unknown".into());
    (browser.to_string(), os)
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceView {
    pub id: i64,
    pub browser: String,
    pub os: String,
    #[schema(value_type = String, format = DateTime)]
    pub first_seen_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub last_seen_at: Timestamp,
    /// Where it last signed in from ("Paris, France"), when GeoIP knows.
    pub last_place: Option<String>,
    pub last_ip: Option<String>,
    /// The device of the caller's request.
    pub current: bool,
}

/// Records a sign-in from the device: it is known from now on. Returns its id.
pub async fn remember(
    connection: &mut Connection,
    user_id: i64,
    origin: &Origin,
    place: Option<&str>,
    now: Millis,
) -> Result<i64, StoreError> {
    let (browser, os) = describe(origin.user_agent.as_deref(), &origin.device);
    Ok(crate::with_db!(connection, |db| sqlx::query_scalar(
        "INSERT INTO devices (user_id, fingerprint, browser, os, first_seen_at, last_seen_at, \
         last_ip, last_place) VALUES ($1, $2, $3, $4, $5, $5, $6, $7) \
         ON CONFLICT (user_id, fingerprint) DO UPDATE SET last_seen_at = $5, last_ip = $6, \
         last_place = COALESCE($7, devices.last_place) RETURNING id",
    )
    .bind(user_id)
    .bind(fingerprint(origin))
    .bind(browser)
    .bind(os)
    .bind(Timestamp::from(now))
    .bind(origin.ip.as_deref().and_then(Inet::parse))
    .bind(place)
    .fetch_one(db)
    .await)?)
}

pub async fn list(
    connection: &mut Connection,
    user_id: i64,
    current_fingerprint: &str,
) -> Result<Vec<DeviceView>, StoreError> {
    let rows: Vec<(DeviceView, String)> = crate::with_db!(connection, |db| sqlx::query_as::<
        _,
        (
            i64,
            String,
            String,
            Timestamp,
            Timestamp,
            Option<String>,
            Option<Inet>,
            String
        ),
    >(
        "SELECT id, browser, os, first_seen_at, last_seen_at, last_place, last_ip, fingerprint \
         FROM devices WHERE user_id = $1 ORDER BY last_seen_at DESC, id DESC",
    )
    .bind(user_id)
    .fetch_all(db)
    .await)?
    .into_iter()
    .map(
        |(id, browser, os, first_seen_at, last_seen_at, last_place, last_ip, fingerprint)| {
            (
                DeviceView {
                    id,
                    browser,
                    os,
                    first_seen_at,
                    last_seen_at,
                    last_place,
                    last_ip: last_ip.map(|ip| ip.to_string()),
                    current: false,
                },
                fingerprint,
            )
        },
    )
    .collect();
    Ok(rows
        .into_iter()
        .map(|(mut device, fingerprint)| {
            device.current = fingerprint == current_fingerprint;
            device
        })
        .collect())
}

/// Forgets a device of `user_id`: its next sign-in counts as from a new device.
pub async fn forget(
    connection: &mut Connection,
    user_id: i64,
    device_id: i64,
) -> Result<bool, StoreError> {
    let affected = crate::execute!(
        connection,
        sqlx::query("DELETE FROM devices WHERE id = $1 AND user_id = $2")
            .bind(device_id)
            .bind(user_id)
    )?;
    Ok(affected == 1)
}

/// How long a device unseen is remembered: after a year away it counts as new again.
pub const KEPT_UNSEEN: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// Deletes the devices not seen for `KEPT_UNSEEN`; returns how many.
pub async fn expire(connection: &mut Connection, now: Millis) -> Result<u64, StoreError> {
    let before = Timestamp::from(now - KEPT_UNSEEN.as_millis() as i64);
    Ok(crate::execute!(
        connection,
        sqlx::query("DELETE FROM devices WHERE last_seen_at < $1").bind(before)
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(agent: &str, language: &str, device_id: Option<&str>) -> Origin {
        Origin {
            user_agent: Some(agent.into()),
            device: DeviceHints {
                accept_language: Some(language.into()),
                device_id: device_id.map(String::from),
                ..DeviceHints::default()
            },
            ..Origin::default()
        }
    }

    #[test]
    fn the_portals_device_id_outranks_the_browsers_traits() {
        let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
        let a = fingerprint(&origin(firefox, "fr-FR", None));
        assert_eq!(a.len(), 64);
        assert_eq!(a, fingerprint(&origin(firefox, "fr-FR", None)));
        assert_ne!(a, fingerprint(&origin(firefox, "en-GB", None)));
        assert_eq!(
            fingerprint(&origin(firefox, "fr-FR", Some("d-1"))),
            fingerprint(&origin("curl/8", "de", Some("d-1")))
        );
        assert_eq!(
            describe(Some(firefox), &DeviceHints::default()),
            ("Firefox".into(), "Linux".into())
        );
        let edge = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36 Edg/131.0";
        assert_eq!(
            describe(Some(edge), &DeviceHints::default()),
            ("Edge".into(), "Windows".into())
        );
    }
}
