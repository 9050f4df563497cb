//! Port: sends a rendered e-mail.

mod outbox;

pub use outbox::OutboxMailer;

use anyhow::Result;
use async_trait::async_trait;

#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
}

#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    async fn send(&self, mail: &Mail) -> Result<()>;
}
