//! Outbox mailer for the embedded stack: each e-mail becomes an RFC 5322 file in
//! `<data dir>/outbox/`, written to a temporary name and renamed so readers never see half.

use super::{Mail, Mailer};
use anyhow::{Context, Result};
use async_trait::async_trait;
use std::path::PathBuf;

pub struct OutboxMailer {
    dir: PathBuf,
    from: String,
}

impl OutboxMailer {
    pub fn new(dir: PathBuf, from: String) -> Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir, from })
    }
}

#[async_trait]
impl Mailer for OutboxMailer {
    async fn send(&self, mail: &Mail) -> Result<()> {
        let now = chrono::Utc::now();
        let name = format!(
            "{}-{}.eml",
            now.format("%Y%m%dT%H%M%S%.3fZ"),
            uuid::Uuid::new_v4()
        );
        let text = format!(
            "From: {}\r\nTo: {}\r\nSubject: {}\r\nDate: {}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n",
            header(&self.from),
            header(&mail.to),
            header(&mail.subject),
            now.to_rfc2822(),
            mail.body.replace('\n', "\r\n"),
        );
        let tmp = self.dir.join(format!(".{name}.tmp"));
        tokio::fs::write(&tmp, text)
            .await
            .with_context(|| format!("writing {}", tmp.display()))?;
        tokio::fs::rename(&tmp, self.dir.join(&name)).await?;
        Ok(())
    }
}

/// A header value on one line: line breaks would start new headers.
fn header(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
