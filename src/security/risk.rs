//! The risk of a sign-in: a small rule engine whose every decision is explained. Signals are
//! weighed (weights in configuration), summed into a score, and the score picks an action.
//! Pure functions over the evidence the login gathers; tested without a server.

use serde::{Deserialize, Serialize};

use crate::clock::Millis;

/// Each signal's weight (`UMS_RISK_WEIGHT_*`; defaults from the seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    pub new_ip_failure: u32,
    pub new_country: u32,
    pub unusual_hour: u32,
    pub rapid_requests: u32,
    pub malicious_ip: u32,
    pub impossible_travel: u32,
    pub new_device: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            new_ip_failure: 20,
            new_country: 30,
            unusual_hour: 15,
            rapid_requests: 25,
            malicious_ip: 100,
            impossible_travel: 60,
            new_device: 10,
        }
    }
}

/// The scores above which each action starts (`UMS_RISK_*_ABOVE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub notify_above: u32,
    pub verify_above: u32,
    pub second_factor_above: u32,
    pub refuse_above: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            notify_above: 30,
            verify_above: 50,
            second_factor_above: 70,
            refuse_above: 90,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RiskPolicy {
    pub weights: Weights,
    pub thresholds: Thresholds,
}

/// Where an address is, as the GeoIP database says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Place {
    pub country_code: String,
    pub country: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    pub latitude: f64,
    pub longitude: f64,
    /// How far off the point may be (the database's accuracy radius).
    pub accuracy_km: f64,
}

impl Place {
    pub fn label(&self) -> String {
        match &self.city {
            Some(city) => format!("{city}, {}", self.country),
            None => self.country.clone(),
        }
    }
}

/// What the login knows when it weighs a sign-in.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub now: Millis,
    /// The password was wrong.
    pub password_failed: bool,
    /// The address signed this account in before.
    pub address_known: bool,
    pub place: Option<Place>,
    /// Countries (ISO codes) of the account's earlier successful sign-ins.
    pub known_countries: Vec<String>,
    /// The account's last successful sign-in: where and when.
    pub previous: Option<(Place, Millis)>,
    /// UTC hours (0–23) of the account's earlier successful sign-ins.
    pub sign_in_hours: Vec<u8>,
    /// Attempts on this account in the last minute, this one included.
    pub recent_attempts: u32,
    /// The denylist that names the address.
    pub listed_in: Option<String>,
    /// The device was seen signing in to this account before.
    pub device_known: bool,
    /// The account signed in successfully before (the first sign-in of an account has no
    /// habits to differ from).
    pub has_history: bool,
}

/// Sign-ins needed before the usual hours are learned.
pub const HABIT_MINIMUM: usize = 10;
/// Attempts on one account within a minute that count as rapid.
pub const RAPID_ATTEMPTS: u32 = 5;
/// Faster than an airliner, allowing for the two places' accuracy.
pub const TRAVEL_KMH: f64 = 1000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    NewIpFailure,
    NewCountry,
    UnusualHour,
    RapidRequests,
    MaliciousIp,
    ImpossibleTravel,
    NewDevice,
}

/// A signal that fired, its weight and why, in words a user can read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    pub kind: SignalKind,
    pub weight: u32,
    pub explanation: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    pub score: u32,
    pub signals: Vec<Signal>,
    pub action: Action,
}

/// What a score does, in increasing order of friction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    /// Sign in, and tell the user (email) and the audit trail.
    Notify,
    /// Confirm with a one-time code emailed to the verified address.
    VerifyByEmail,
    /// The second factor if the account has one (else the emailed code).
    SecondFactor,
    /// Refuse, and alert the system admins.
    Refuse,
}

/// A sign-in's risk as it travels from the password step to the session it opens: the
/// assessment and the place it was made for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignInRisk {
    #[serde(flatten)]
    pub assessment: Assessment,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub place: Option<Place>,
}

impl SignInRisk {
    /// The explanations, one a line, for an email.
    pub fn explanation(&self) -> String {
        self.assessment
            .signals
            .iter()
            .map(|signal| format!("- {} (+{})", signal.explanation, signal.weight))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The great-circle distance in kilometres (haversine).
pub fn distance_km(a: &Place, b: &Place) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0;
    let (lat1, lat2) = (a.latitude.to_radians(), b.latitude.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.longitude - a.longitude).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().asin()
}

fn hour_of(millis: Millis) -> u8 {
    (millis.rem_euclid(86_400_000) / 3_600_000) as u8
}

/// Whether `hour` is within an hour of one the account signs in at.
fn usual_hour(hour: u8, hours: &[u8]) -> bool {
    hours.iter().any(|&usual| {
        let apart = (i16::from(hour) - i16::from(usual)).rem_euclid(24);
        apart <= 1 || apart >= 23
    })
}

fn minutes(millis: Millis) -> i64 {
    (millis / 60_000).max(0)
}

/// Weighs the evidence: the signals that fired, their sum, and the action it calls for.
pub fn assess(policy: &RiskPolicy, evidence: &Evidence) -> Assessment {
    let weights = &policy.weights;
    let mut signals = Vec::new();
    let mut add = |kind, weight: u32, explanation: String| {
        if weight > 0 {
            signals.push(Signal {
                kind,
                weight,
                explanation,
            });
        }
    };
    if let Some(list) = &evidence.listed_in {
        add(
            SignalKind::MaliciousIp,
            weights.malicious_ip,
            format!("the address is on the denylist {list}"),
        );
    }
    if evidence.password_failed && evidence.has_history && !evidence.address_known {
        add(
            SignalKind::NewIpFailure,
            weights.new_ip_failure,
            "a failed sign-in from an address never used by this account".into(),
        );
    }
    let mut new_country = false;
    if let Some(place) = &evidence.place
        && evidence.has_history
        && !evidence
            .known_countries
            .iter()
            .any(|code| code.eq_ignore_ascii_case(&place.country_code))
    {
        new_country = true;
        add(
            SignalKind::NewCountry,
            weights.new_country,
            format!("new country: {}", place.country),
        );
    }
    if let (Some(place), Some((before, at))) = (&evidence.place, &evidence.previous) {
        let distance = distance_km(before, place);
        let slack = before.accuracy_km + place.accuracy_km;
        let elapsed = (evidence.now - at).max(0);
        let hours = elapsed as f64 / 3_600_000.0;
        let reachable = TRAVEL_KMH * hours + slack;
        if distance > reachable {
            add(
                SignalKind::ImpossibleTravel,
                weights.impossible_travel,
                format!(
                    "{} is {:.0} km from the sign-in {} minutes earlier in {}",
                    place.label(),
                    distance,
                    minutes(elapsed),
                    before.label()
                ),
            );
        }
    }
    let hour = hour_of(evidence.now);
    if !evidence.password_failed
        && evidence.sign_in_hours.len() >= HABIT_MINIMUM
        && !usual_hour(hour, &evidence.sign_in_hours)
    {
        add(
            SignalKind::UnusualHour,
            weights.unusual_hour,
            format!("{hour:02}:00 UTC is outside this account's usual hours"),
        );
    }
    if evidence.recent_attempts >= RAPID_ATTEMPTS {
        add(
            SignalKind::RapidRequests,
            weights.rapid_requests,
            format!(
                "{} attempts on this account within a minute",
                evidence.recent_attempts
            ),
        );
    }
    if !evidence.password_failed && evidence.has_history && !evidence.device_known {
        add(
            SignalKind::NewDevice,
            weights.new_device,
            "a device this account has not signed in from".into(),
        );
    }
    let score = signals.iter().map(|signal| signal.weight).sum::<u32>();
    let mut action = decide(&policy.thresholds, score);
    // A first sign-in from a new country always asks for the emailed code.
    if new_country && action < Action::VerifyByEmail {
        action = Action::VerifyByEmail;
    }
    Assessment {
        score,
        signals,
        action,
    }
}

pub fn decide(thresholds: &Thresholds, score: u32) -> Action {
    if score > thresholds.refuse_above {
        Action::Refuse
    } else if score > thresholds.second_factor_above {
        Action::SecondFactor
    } else if score > thresholds.verify_above {
        Action::VerifyByEmail
    } else if score > thresholds.notify_above {
        Action::Notify
    } else {
        Action::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(code: &str, country: &str, latitude: f64, longitude: f64) -> Place {
        Place {
            country_code: code.into(),
            country: country.into(),
            city: None,
            latitude,
            longitude,
            accuracy_km: 20.0,
        }
    }

    fn paris() -> Place {
        Place {
            city: Some("Paris".into()),
            ..place("FR", "France", 48.8566, 2.3522)
        }
    }

    fn tokyo() -> Place {
        Place {
            city: Some("Tokyo".into()),
            ..place("JP", "Japan", 35.6762, 139.6503)
        }
    }

    const NOON: Millis = 1_800_000_000_000 - 1_800_000_000_000 % 86_400_000 + 12 * 3_600_000;

    fn usual() -> Evidence {
        Evidence {
            now: NOON,
            address_known: true,
            place: Some(paris()),
            known_countries: vec!["FR".into()],
            previous: Some((paris(), NOON - 86_400_000)),
            sign_in_hours: vec![11, 12, 13, 12, 12, 11, 13, 12, 12, 12],
            recent_attempts: 1,
            device_known: true,
            has_history: true,
            ..Evidence::default()
        }
    }

    fn kinds(assessment: &Assessment) -> Vec<SignalKind> {
        assessment
            .signals
            .iter()
            .map(|signal| signal.kind)
            .collect()
    }

    #[test]
    fn a_usual_sign_in_scores_nothing() {
        let assessment = assess(&RiskPolicy::default(), &usual());
        assert_eq!(assessment.score, 0);
        assert!(assessment.signals.is_empty());
        assert_eq!(assessment.action, Action::Allow);
    }

    #[test]
    fn each_signal_fires_alone_with_its_weight() {
        let policy = RiskPolicy::default();
        let cases: Vec<(Evidence, SignalKind, u32)> = vec![
            (
                Evidence {
                    password_failed: true,
                    address_known: false,
                    ..usual()
                },
                SignalKind::NewIpFailure,
                20,
            ),
            (
                Evidence {
                    now: NOON + 6 * 3_600_000,
                    previous: None,
                    ..usual()
                },
                SignalKind::UnusualHour,
                15,
            ),
            (
                Evidence {
                    recent_attempts: 6,
                    ..usual()
                },
                SignalKind::RapidRequests,
                25,
            ),
            (
                Evidence {
                    listed_in: Some("firehol_level1".into()),
                    ..usual()
                },
                SignalKind::MaliciousIp,
                100,
            ),
            (
                Evidence {
                    device_known: false,
                    ..usual()
                },
                SignalKind::NewDevice,
                10,
            ),
        ];
        for (evidence, kind, weight) in cases {
            let assessment = assess(&policy, &evidence);
            assert_eq!(kinds(&assessment), [kind], "{kind:?}");
            assert_eq!(assessment.score, weight, "{kind:?}");
        }
    }

    #[test]
    fn a_new_country_far_away_too_soon_is_impossible_travel_and_explained() {
        let evidence = Evidence {
            place: Some(tokyo()),
            previous: Some((paris(), NOON - 40 * 60_000)),
            ..usual()
        };
        let assessment = assess(&RiskPolicy::default(), &evidence);
        assert_eq!(
            kinds(&assessment),
            [SignalKind::NewCountry, SignalKind::ImpossibleTravel]
        );
        assert_eq!(assessment.score, 90);
        assert_eq!(assessment.action, Action::SecondFactor);
        let travel = &assessment.signals[1].explanation;
        assert!(
            travel.starts_with("Tokyo, Japan is 97")
                && travel.ends_with("km from the sign-in 40 minutes earlier in Paris, France"),
            "{travel}"
        );
        // Fourteen hours later the same trip is possible; the new country alone still asks
        // for the emailed code.
        let later = Evidence {
            previous: Some((paris(), NOON - 14 * 3_600_000)),
            ..evidence
        };
        let assessment = assess(&RiskPolicy::default(), &later);
        assert_eq!(kinds(&assessment), [SignalKind::NewCountry]);
        assert_eq!(assessment.action, Action::VerifyByEmail);
    }

    #[test]
    fn accuracy_radii_forgive_a_short_hop() {
        let nearby = Place {
            accuracy_km: 100.0,
            ..place("FR", "France", 49.5, 2.35)
        };
        let evidence = Evidence {
            place: Some(nearby),
            previous: Some((paris(), NOON - 60_000)),
            ..usual()
        };
        assert!(assess(&RiskPolicy::default(), &evidence).signals.is_empty());
    }

    #[test]
    fn habits_are_learned_only_from_enough_sign_ins_and_wrap_around_midnight() {
        let few = Evidence {
            now: NOON + 6 * 3_600_000,
            sign_in_hours: vec![12; HABIT_MINIMUM - 1],
            ..usual()
        };
        assert!(assess(&RiskPolicy::default(), &few).signals.is_empty());
        assert!(usual_hour(0, &[23]));
        assert!(usual_hour(23, &[0]));
        assert!(!usual_hour(2, &[0]));
    }

    #[test]
    fn scores_pick_actions_by_threshold() {
        let thresholds = Thresholds::default();
        for (score, action) in [
            (0, Action::Allow),
            (30, Action::Allow),
            (31, Action::Notify),
            (50, Action::Notify),
            (51, Action::VerifyByEmail),
            (71, Action::SecondFactor),
            (90, Action::SecondFactor),
            (91, Action::Refuse),
        ] {
            assert_eq!(decide(&thresholds, score), action, "{score}");
        }
        assert_eq!(
            assess(
                &RiskPolicy::default(),
                &Evidence {
                    listed_in: Some("drop".into()),
                    ..usual()
                }
            )
            .action,
            Action::Refuse
        );
    }

    #[test]
    fn a_first_sign_in_has_no_habits_to_break() {
        let first = Evidence {
            now: NOON,
            place: Some(tokyo()),
            ..Evidence::default()
        };
        let assessment = assess(&RiskPolicy::default(), &first);
        assert_eq!(assessment.score, 0);
        assert_eq!(assessment.action, Action::Allow);
    }

    #[test]
    fn distances_are_great_circles() {
        let distance = distance_km(&paris(), &tokyo());
        assert!((9700.0..9750.0).contains(&distance), "{distance}");
        assert!(distance_km(&paris(), &paris()) < 0.001);
    }
}
