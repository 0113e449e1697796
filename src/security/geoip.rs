//! Where an address is: a MaxMind-format city database (GeoLite2-City, DB-IP City Lite) at
//! `UMS_GEOIP_DB`, supplied by the operator (none is bundled), read with `maxminddb` and read
//! again when the file changes (replace it by renaming a new file over it). Without one, the
//! geographic signals are off and `/ready` says so.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::Deserialize;

use crate::security::risk::Place;

#[derive(Deserialize)]
struct Names {
    #[serde(default)]
    names: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Country {
    iso_code: Option<String>,
    #[serde(default)]
    names: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Location {
    latitude: Option<Number>,
    longitude: Option<Number>,
    accuracy_radius: Option<Number>,
}

/// A number of whatever width the database stored it in (MaxMind's `uint16` radius, a
/// `double` coordinate; other writers choose otherwise), as `f64`.
struct Number(f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Number;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a number")
            }
            fn visit_u64<E>(self, value: u64) -> Result<Number, E> {
                Ok(Number(value as f64))
            }
            fn visit_i64<E>(self, value: i64) -> Result<Number, E> {
                Ok(Number(value as f64))
            }
            fn visit_u128<E>(self, value: u128) -> Result<Number, E> {
                Ok(Number(value as f64))
            }
            fn visit_f64<E>(self, value: f64) -> Result<Number, E> {
                Ok(Number(value))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
struct CityRecord {
    country: Option<Country>,
    city: Option<Names>,
    location: Option<Location>,
}

struct Loaded {
    reader: maxminddb::Reader<Vec<u8>>,
    modified: Option<SystemTime>,
}

/// The database, or its absence; cheap to clone.
#[derive(Clone, Default)]
pub struct GeoIp {
    path: Option<PathBuf>,
    loaded: Arc<RwLock<Option<Arc<Loaded>>>>,
}

/// What `/ready` reports of the database.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GeoIpStatus {
    /// `UMS_GEOIP_DB` is not set: the geographic signals are off.
    Off,
    Loaded,
    /// Set, but the file cannot be read: the geographic signals are off until it can.
    Unreadable,
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

impl GeoIp {
    /// Opens the database at `path`; a file that cannot be read stops the start.
    pub fn open(path: Option<PathBuf>) -> anyhow::Result<Self> {
        let geoip = GeoIp {
            path,
            loaded: Arc::default(),
        };
        if let Some(path) = &geoip.path {
            let loaded = Self::load(path)
                .map_err(|error| anyhow::anyhow!("UMS_GEOIP_DB={}: {error}", path.display()))?;
            *geoip.loaded.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(loaded));
        }
        Ok(geoip)
    }

    fn load(path: &PathBuf) -> anyhow::Result<Loaded> {
        let modified = modified(path);
        let bytes = std::fs::read(path)?;
        Ok(Loaded {
            reader: maxminddb::Reader::from_source(bytes)?,
            modified,
        })
    }

    /// The database as of now: read again if the file changed since (one `stat` a call; a
    /// new file that does not parse keeps the old one, with a warning).
    fn current(&self) -> Option<Arc<Loaded>> {
        let path = self.path.as_ref()?;
        let current = self
            .loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let on_disk = modified(path);
        if current
            .as_ref()
            .is_some_and(|loaded| loaded.modified == on_disk)
        {
            return current;
        }
        match Self::load(path) {
            Ok(loaded) => {
                let loaded = Arc::new(loaded);
                *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Some(loaded.clone());
                tracing::info!(path = %path.display(), "GeoIP database loaded");
                Some(loaded)
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), error = %error, "GeoIP database unreadable; keeping the last one");
                current
            }
        }
    }

    pub fn status(&self) -> GeoIpStatus {
        match (&self.path, self.current()) {
            (None, _) => GeoIpStatus::Off,
            (Some(_), Some(_)) => GeoIpStatus::Loaded,
            (Some(_), None) => GeoIpStatus::Unreadable,
        }
    }

    /// Where `address` is, if the database knows it with a position.
    pub fn locate(&self, address: IpAddr) -> Option<Place> {
        let loaded = self.current()?;
        let record: CityRecord = loaded.reader.lookup(address).ok()?.decode().ok()??;
        let country = record.country?;
        let location = record.location?;
        let country_code = country.iso_code?;
        Some(Place {
            country: country
                .names
                .get("en")
                .cloned()
                .unwrap_or_else(|| country_code.clone()),
            country_code,
            city: record.city.and_then(|city| city.names.get("en").cloned()),
            latitude: location.latitude?.0,
            longitude: location.longitude?.0,
            accuracy_km: location.accuracy_radius.map_or(100.0, |radius| radius.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_city_database_locates_an_address() {
        #[derive(serde::Serialize)]
        struct Record {
            country: serde_json::Value,
            location: serde_json::Value,
        }
        let mut writer = mmdb_writer::Writer::new("GeoLite2-City");
        writer
            .insert(
                "81.0.0.0/8".parse::<ipnet::IpNet>().unwrap(),
                &Record {
                    country: serde_json::json!({"iso_code": "FR", "names": {"en": "France"}}),
                    location: serde_json::json!({"latitude": 48.85, "longitude": 2.35, "accuracy_radius": 20}),
                },
            )
            .unwrap();
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("city.mmdb");
        std::fs::write(&path, writer.to_bytes().unwrap()).unwrap();
        let geoip = GeoIp::open(Some(path)).unwrap();
        let place = geoip.locate("81.1.2.3".parse().unwrap()).unwrap();
        assert_eq!(place.country_code, "FR");
        assert_eq!(place.country, "France");
        assert_eq!(place.accuracy_km, 20.0);
        assert!(geoip.locate("10.0.0.1".parse().unwrap()).is_none());
    }
}
