//! IP reputation: the denylists at `UMS_IP_DENYLIST` (comma-separated files of addresses and
//! CIDR ranges, one a line, in FireHOL's `.netset` or Spamhaus DROP's `net ; SBL…` format,
//! `#` and `;` starting comments), read again when a file changes. A listed address is
//! refused before its password is checked.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use ipnet::IpNet;

/// One list: its ranges merged and sorted, for a binary search.
#[derive(Debug, Default)]
struct Ranges {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

fn merge<T: Ord + Copy>(mut ranges: Vec<(T, T)>, next: impl Fn(T) -> Option<T>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some((_, last_end)) if next(*last_end).is_none_or(|after| start <= after) => {
                if end > *last_end {
                    *last_end = end;
                }
            }
            _ => merged.push((start, end)),
        }
    }
    merged
}

fn contains<T: Ord + Copy>(ranges: &[(T, T)], value: T) -> bool {
    let index = ranges.partition_point(|(start, _)| *start <= value);
    index > 0 && ranges[index - 1].1 >= value
}

impl Ranges {
    fn parse(text: &str) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for line in text.lines() {
            let entry = line
                .split(['#', ';'])
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .next()
                .unwrap_or_default();
            let network = entry
                .parse::<IpNet>()
                .ok()
                .or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from));
            match network {
                Some(IpNet::V4(net)) => {
                    v4.push((u32::from(net.network()), u32::from(net.broadcast())));
                }
                Some(IpNet::V6(net)) => {
                    v6.push((u128::from(net.network()), u128::from(net.broadcast())));
                }
                None => {}
            }
        }
        Ranges {
            v4: merge(v4, |end: u32| end.checked_add(1)),
            v6: merge(v6, |end: u128| end.checked_add(1)),
        }
    }

    fn contains(&self, address: IpAddr) -> bool {
        match address {
            IpAddr::V4(v4) => contains(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => contains(&self.v4, u32::from(v4)),
                None => contains(&self.v6, u128::from(v6)),
            },
        }
    }

    fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

struct List {
    path: PathBuf,
    name: String,
    state: RwLock<(Option<SystemTime>, Arc<Ranges>)>,
}

/// The denylists; cheap to clone.
#[derive(Clone, Default)]
pub struct Denylist {
    lists: Arc<Vec<List>>,
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

impl Denylist {
    /// Reads every list; a file that cannot be read stops the start.
    pub fn open(paths: &[PathBuf]) -> anyhow::Result<Self> {
        let mut lists = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(path)
                .map_err(|error| anyhow::anyhow!("UMS_IP_DENYLIST: {}: {error}", path.display()))?;
            let ranges = Ranges::parse(&text);
            let name = path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string());
            tracing::info!(list = %name, ranges = ranges.len(), "IP denylist loaded");
            lists.push(List {
                path: path.clone(),
                name,
                state: RwLock::new((modified(path), Arc::new(ranges))),
            });
        }
        Ok(Denylist {
            lists: Arc::new(lists),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    /// The name of the first list naming `address` (read again where its file changed).
    pub fn listing(&self, address: IpAddr) -> Option<String> {
        self.lists.iter().find_map(|list| {
            let ranges = list.current();
            ranges.contains(address).then(|| list.name.clone())
        })
    }
}

impl List {
    fn current(&self) -> Arc<Ranges> {
        let on_disk = modified(&self.path);
        let (seen, ranges) = self.state.read().unwrap_or_else(|e| e.into_inner()).clone();
        if seen == on_disk {
            return ranges;
        }
        match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                let fresh = Arc::new(Ranges::parse(&text));
                tracing::info!(list = %self.name, ranges = fresh.len(), "IP denylist reloaded");
                *self.state.write().unwrap_or_else(|e| e.into_inner()) = (on_disk, fresh.clone());
                fresh
            }
            Err(error) => {
                tracing::warn!(list = %self.name, error = %error, "IP denylist unreadable; keeping the last one");
                ranges
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firehol_and_spamhaus_lines_parse_and_ranges_merge() {
        let ranges = Ranges::parse(
            "# FireHOL level 1\n1.2.3.0/24\n1.2.4.0/24\n9.9.9.9\n\n\
             ; Spamhaus DROP\n5.6.0.0/16 ; SBL123\n2001:db8::/32\nnot an address\n",
        );
        assert_eq!(ranges.v4.len(), 3, "1.2.3.0/24 and 1.2.4.0/24 merge");
        for listed in [
            "1.2.3.4",
            "1.2.4.255",
            "9.9.9.9",
            "5.6.7.8",
            "2001:db8::1",
            "::ffff:1.2.3.9",
        ] {
            assert!(ranges.contains(listed.parse().unwrap()), "{listed}");
        }
        for clean in ["1.2.5.0", "9.9.9.8", "5.7.0.0", "2001:db9::1", "10.0.0.1"] {
            assert!(!ranges.contains(clean.parse().unwrap()), "{clean}");
        }
    }

    #[test]
    fn a_changed_file_is_read_again() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("drop.txt");
        std::fs::write(&path, "10.0.0.0/8\n").unwrap();
        let denylist = Denylist::open(std::slice::from_ref(&path)).unwrap();
        assert_eq!(
            denylist.listing("10.1.2.3".parse().unwrap()).as_deref(),
            Some("drop")
        );
        assert_eq!(denylist.listing("11.0.0.1".parse().unwrap()), None);
        let next = directory.path().join("next.txt");
        std::fs::write(&next, "11.0.0.0/8\n").unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&next)
            .unwrap()
            .set_modified(later)
            .unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(denylist.listing("10.1.2.3".parse().unwrap()), None);
        assert_eq!(
            denylist.listing("11.0.0.1".parse().unwrap()).as_deref(),
            Some("drop")
        );
    }
}
