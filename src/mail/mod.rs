//! Security emails: the seven kinds, their templates (files under `templates/`, each with an
//! HTML and a plain-text part), and the outbox they are queued in with the change that
//! causes them. `outbox` sends them.

pub mod notices;
pub mod outbox;

use std::sync::LazyLock;

use minijinja::Environment;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::clock::Millis;
use crate::error::AppError;
use crate::store::Connection;
use crate::users::User;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailKind {
    Welcome,
    PasswordReset,
    PasswordChanged,
    VerifyEmail,
    EmailChanged,
    AccountLocked,
    NewLogin,
    SecurityAlert,
    FactorAdded,
    FactorRemoved,
    RecoveryCodeUsed,
    VerificationCode,
    RiskySignIn,
    SignInBlocked,
    RiskAlert,
    LabInvitation,
}

impl EmailKind {
    pub const ALL: [EmailKind; 16] = [
        EmailKind::Welcome,
        EmailKind::PasswordReset,
        EmailKind::PasswordChanged,
        EmailKind::VerifyEmail,
        EmailKind::EmailChanged,
        EmailKind::AccountLocked,
        EmailKind::NewLogin,
        EmailKind::SecurityAlert,
        EmailKind::FactorAdded,
        EmailKind::FactorRemoved,
        EmailKind::RecoveryCodeUsed,
        EmailKind::VerificationCode,
        EmailKind::RiskySignIn,
        EmailKind::SignInBlocked,
        EmailKind::RiskAlert,
        EmailKind::LabInvitation,
    ];

    /// The template name, also stored as the outbox row's `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            EmailKind::Welcome => "welcome",
            EmailKind::PasswordReset => "password_reset",
            EmailKind::PasswordChanged => "password_changed",
            EmailKind::VerifyEmail => "verify_email",
            EmailKind::EmailChanged => "email_changed",
            EmailKind::AccountLocked => "account_locked",
            EmailKind::NewLogin => "new_login",
            EmailKind::SecurityAlert => "security_alert",
            EmailKind::FactorAdded => "factor_added",
            EmailKind::FactorRemoved => "factor_removed",
            EmailKind::RecoveryCodeUsed => "recovery_code_used",
            EmailKind::VerificationCode => "verification_code",
            EmailKind::RiskySignIn => "risky_sign_in",
            EmailKind::SignInBlocked => "sign_in_blocked",
            EmailKind::RiskAlert => "risk_alert",
            EmailKind::LabInvitation => "lab_invitation",
        }
    }

    /// The contract's subjects: each names its kind.
    pub fn subject(self) -> &'static str {
        match self {
            EmailKind::Welcome => "Welcome to UMS",
            EmailKind::PasswordReset => "Reset your password",
            EmailKind::PasswordChanged => "Your password was changed",
            EmailKind::VerifyEmail => "Verify your email address",
            EmailKind::EmailChanged => "Your email address was changed",
            EmailKind::AccountLocked => "Your account was locked",
            EmailKind::NewLogin => "New sign-in to your account",
            EmailKind::SecurityAlert => "Security alert: credential stuffing suspected",
            EmailKind::FactorAdded => "A second factor was added to your account",
            EmailKind::FactorRemoved => "A second factor was removed from your account",
            EmailKind::RecoveryCodeUsed => "A recovery code was used to sign in",
            EmailKind::VerificationCode => "Your sign-in code",
            EmailKind::RiskySignIn => "Unusual sign-in to your account",
            EmailKind::SignInBlocked => "A risky sign-in to your account was blocked",
            EmailKind::RiskAlert => "Security alert: a risky sign-in was refused",
            EmailKind::LabInvitation => "You are invited to a lab",
        }
    }
}

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut environment = Environment::new();
    environment.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let sources: [(&str, &str); 33] = [
        ("layout.html", include_str!("templates/layout.html")),
        ("welcome.txt", include_str!("templates/welcome.txt")),
        ("welcome.html", include_str!("templates/welcome.html")),
        (
            "password_reset.txt",
            include_str!("templates/password_reset.txt"),
        ),
        (
            "password_reset.html",
            include_str!("templates/password_reset.html"),
        ),
        (
            "password_changed.txt",
            include_str!("templates/password_changed.txt"),
        ),
        (
            "password_changed.html",
            include_str!("templates/password_changed.html"),
        ),
        (
            "verify_email.txt",
            include_str!("templates/verify_email.txt"),
        ),
        (
            "verify_email.html",
            include_str!("templates/verify_email.html"),
        ),
        (
            "email_changed.txt",
            include_str!("templates/email_changed.txt"),
        ),
        (
            "email_changed.html",
            include_str!("templates/email_changed.html"),
        ),
        (
            "account_locked.txt",
            include_str!("templates/account_locked.txt"),
        ),
        (
            "account_locked.html",
            include_str!("templates/account_locked.html"),
        ),
        ("new_login.txt", include_str!("templates/new_login.txt")),
        ("new_login.html", include_str!("templates/new_login.html")),
        (
            "security_alert.txt",
            include_str!("templates/security_alert.txt"),
        ),
        (
            "security_alert.html",
            include_str!("templates/security_alert.html"),
        ),
        (
            "factor_added.txt",
            include_str!("templates/factor_added.txt"),
        ),
        (
            "factor_added.html",
            include_str!("templates/factor_added.html"),
        ),
        (
            "factor_removed.txt",
            include_str!("templates/factor_removed.txt"),
        ),
        (
            "factor_removed.html",
            include_str!("templates/factor_removed.html"),
        ),
        (
            "recovery_code_used.txt",
            include_str!("templates/recovery_code_used.txt"),
        ),
        (
            "recovery_code_used.html",
            include_str!("templates/recovery_code_used.html"),
        ),
        (
            "verification_code.txt",
            include_str!("templates/verification_code.txt"),
        ),
        (
            "verification_code.html",
            include_str!("templates/verification_code.html"),
        ),
        (
            "risky_sign_in.txt",
            include_str!("templates/risky_sign_in.txt"),
        ),
        (
            "risky_sign_in.html",
            include_str!("templates/risky_sign_in.html"),
        ),
        (
            "sign_in_blocked.txt",
            include_str!("templates/sign_in_blocked.txt"),
        ),
        (
            "sign_in_blocked.html",
            include_str!("templates/sign_in_blocked.html"),
        ),
        ("risk_alert.txt", include_str!("templates/risk_alert.txt")),
        ("risk_alert.html", include_str!("templates/risk_alert.html")),
        (
            "lab_invitation.txt",
            include_str!("templates/lab_invitation.txt"),
        ),
        (
            "lab_invitation.html",
            include_str!("templates/lab_invitation.html"),
        ),
    ];
    for (name, source) in sources {
        // A template that does not parse is a build defect: the unit tests render every kind.
        let _ = environment.add_template(name, source);
    }
    environment
});

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RenderedEmail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

pub fn render(kind: EmailKind, context: &Value) -> anyhow::Result<RenderedEmail> {
    let render = |extension: &str| -> anyhow::Result<String> {
        let name = format!("{}.{extension}", kind.as_str());
        Ok(TEMPLATES.get_template(&name)?.render(context)?)
    };
    Ok(RenderedEmail {
        subject: kind.subject().to_string(),
        text: render("txt")?,
        html: render("html")?,
    })
}

/// What the outbox needs from the configuration.
#[derive(Clone)]
pub struct Outbox {
    public_url: String,
    secret_key: Option<SecretString>,
}

/// How a sign-in alert names the device: its user agent, which the signing-in client
/// chose, so without anything a reader could follow (web addresses, email addresses) or
/// that hides (control and direction characters), and at most 120 characters.
pub fn describe_device(user_agent: Option<&str>) -> String {
    let Some(user_agent) = user_agent else {
        return "unknown".into();
    };
    let words: Vec<&str> = user_agent
        .split_whitespace()
        .filter(|word| {
            let lower = word.to_lowercase();
            !(lower.contains("://") || lower.contains("www.") || lower.contains('@'))
        })
        .collect();
    let clean: String = words
        .join(" ")
        .chars()
        .filter(|c| !c.is_control() && !crate::users::is_invisible_format_character(*c))
        .take(120)
        .collect();
    if clean.trim().is_empty() {
        "unknown".into()
    } else {
        clean
    }
}

impl Outbox {
    pub fn new(public_url: String, secret_key: Option<SecretString>) -> Self {
        Outbox {
            public_url,
            secret_key,
        }
    }

    /// `{UMS_PUBLIC_URL}/{page}?token=...`
    pub fn link(&self, page: &str, token: &str) -> String {
        format!("{}/{page}?token={token}", self.public_url)
    }

    pub fn forgot_password_link(&self) -> String {
        format!("{}/forgot-password", self.public_url)
    }

    /// Renders an email for `user` at `recipient` and queues it in the caller's transaction.
    pub async fn enqueue(
        &self,
        connection: &mut Connection,
        user: &User,
        recipient: &str,
        kind: EmailKind,
        extra: Value,
        now: Millis,
    ) -> Result<(), AppError> {
        // Mail to an address nobody has proven theirs (a registration, a new address) carries
        // no text its requester chose: whoever typed the address could be writing to a
        // stranger, and a name like "URGENT: sign in at https://…" would arrive under our
        // name.
        let proven = user.email_verified && user.email.eq_ignore_ascii_case(recipient);
        let (name, username) = if proven {
            let name = if user.first_name.is_empty() {
                &user.username
            } else {
                &user.first_name
            };
            (name.clone(), user.username.clone())
        } else {
            (String::new(), String::new())
        };
        self.queue(connection, recipient, kind, (name, username), extra, now)
            .await
    }

    /// Queues an email to an address that may belong to no account (an invitation): it
    /// greets nobody by name, as mail to an unproven address does.
    pub async fn enqueue_to_address(
        &self,
        connection: &mut Connection,
        recipient: &str,
        kind: EmailKind,
        extra: Value,
        now: Millis,
    ) -> Result<(), AppError> {
        self.queue(
            connection,
            recipient,
            kind,
            (String::new(), String::new()),
            extra,
            now,
        )
        .await
    }

    async fn queue(
        &self,
        connection: &mut Connection,
        recipient: &str,
        kind: EmailKind,
        (name, username): (String, String),
        extra: Value,
        now: Millis,
    ) -> Result<(), AppError> {
        let mut context = json!({
            "service": "UMS",
            "name": name,
            "username": username,
            "recipient": recipient,
            "forgot_link": self.forgot_password_link(),
            "when": crate::clock::to_rfc3339(now),
        });
        if let (Some(context), Some(extra)) = (context.as_object_mut(), extra.as_object()) {
            context.extend(extra.clone());
        }
        let email = render(kind, &context)?;
        let body = crate::security::sealing::seal(
            &serde_json::to_vec(&email).map_err(anyhow::Error::from)?,
            self.secret_key.as_ref(),
        )?;
        crate::execute!(connection, sqlx::query(
            "INSERT INTO email_outbox (kind, recipient, subject, body, status, attempts, next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $4, 'queued', 0, $5, $5)",
        )
        .bind(kind.as_str())
        .bind(recipient)
        .bind(&email.subject)
        .bind(body)
        .bind(crate::clock::Timestamp::from(now))
        )?;
        Ok(())
    }

    pub fn open(&self, sealed: &str) -> anyhow::Result<RenderedEmail> {
        let bytes = crate::security::sealing::unseal(sealed, self.secret_key.as_ref())?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_name_carries_no_link_and_no_hidden_text() {
        assert_eq!(
            describe_device(Some(
                "URGENT: sign in again at https://evil.example/login now"
            )),
            "URGENT: sign in again at now"
        );
        assert_eq!(
            describe_device(Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0")),
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
        );
        assert_eq!(describe_device(Some("a\u{202E}b www.evil.example")), "ab");
        assert_eq!(describe_device(Some("https://x")), "unknown");
        assert_eq!(describe_device(None), "unknown");
        assert_eq!(describe_device(Some(&"x".repeat(500))).len(), 120);
    }

    #[test]
    fn every_kind_renders_both_parts_with_its_details() {
        let context = json!({
            "service": "UMS", "name": "Alice", "username": "alice", "recipient": "alice@lab.org",
            "forgot_link": "https://ums.test/forgot-password", "when": "2026-01-01T00:00:00.000Z",
            "link": "https://ums.test/x?token=abc&y=1", "valid_hours": 24, "sessions_note": "Other sessions were signed out.",
            "new_email": "new@lab.org", "failures": 5, "unlocks_at": "2026-01-01T00:30:00.000Z",
            "ip": "10.0.0.1", "device": "Firefox", "usernames": 40, "window_minutes": 5,
            "method": "an authenticator app (TOTP)", "by_admin": false, "remaining": 9,
            "code": "123456", "place": "Tokyo, Japan", "score": 60, "account": "alice",
            "explanation": "- new country: Japan (+30)", "not_me_link": "https://ums.test/not-me?token=abc",
            "lab_name": "Genomics", "role": "member", "has_account": true,
            "decline_link": "https://ums.test/invitations/decline?token=abc",
        });
        for kind in EmailKind::ALL {
            let email = render(kind, &context).unwrap();
            assert!(
                email.text.contains("Alice"),
                "{kind:?} text greets the user"
            );
            assert!(email.html.contains("<html"), "{kind:?} html is a document");
            assert!(!email.subject.is_empty());
        }
        let reset = render(EmailKind::PasswordReset, &context).unwrap();
        assert!(reset.text.contains("https://ums.test/x?token=abc&y=1"));
        assert!(reset.html.contains("token=abc&amp;y=1"), "HTML is escaped");
        let hostile = json!({"name": "<script>x</script>"});
        let mut hostile_context = context.clone();
        hostile_context
            .as_object_mut()
            .unwrap()
            .extend(hostile.as_object().unwrap().clone());
        let welcome = render(EmailKind::Welcome, &hostile_context).unwrap();
        assert!(!welcome.html.contains("<script>") && welcome.html.contains("&lt;script&gt;"));
        let locked = render(EmailKind::AccountLocked, &context).unwrap();
        assert!(
            locked.text.contains("2026-01-01T00:30:00.000Z")
                && locked.text.contains("forgot-password")
        );
    }

    #[test]
    fn a_missing_detail_is_an_error_not_a_blank() {
        assert!(render(EmailKind::PasswordReset, &json!({"name": "A"})).is_err());
    }
}
