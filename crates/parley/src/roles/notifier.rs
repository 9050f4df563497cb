//! The notifier role: consumes `email.send`, renders the named template, sends through the
//! mailer, logs every send; retries with backoff and dead-letters after the last attempt.

use crate::bus::{Bus, Delivery, Queue, RetryPolicy};
use crate::domain::EmailRequested;
use crate::mailer::{Mail, Mailer};
use anyhow::{Context, Result};
use minijinja::Environment;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Each template is a subject line, a blank line, then the body.
const TEMPLATES: [(&str, &str); 4] = [
    ("welcome", include_str!("../../templates/welcome.txt")),
    (
        "account_deletion_scheduled",
        include_str!("../../templates/account_deletion_scheduled.txt"),
    ),
    (
        "account_recovered",
        include_str!("../../templates/account_recovered.txt"),
    ),
    (
        "account_deleted",
        include_str!("../../templates/account_deleted.txt"),
    ),
];

pub struct Notifier {
    bus: Arc<dyn Bus>,
    mailer: Arc<dyn Mailer>,
    templates: Environment<'static>,
    retry: RetryPolicy,
}

impl Notifier {
    pub fn new(bus: Arc<dyn Bus>, mailer: Arc<dyn Mailer>, retry: RetryPolicy) -> Self {
        let mut templates = Environment::new();
        for (name, source) in TEMPLATES {
            templates
                .add_template(name, source)
                .expect("built-in templates parse");
        }
        Self {
            bus,
            mailer,
            templates,
            retry,
        }
    }

    /// `stopping` is cancelled before the bus closes: a subscription that ends without it has
    /// failed, which must stop the process rather than leave mail unsent unnoticed.
    pub async fn run(self, stopping: CancellationToken) -> Result<()> {
        let mut subscription = self.bus.subscribe(Queue::EmailSend, 16).await?;
        while let Some(delivery) = subscription.next().await {
            self.handle(delivery).await;
        }
        if !stopping.is_cancelled() {
            anyhow::bail!("the email.send subscription ended before shutdown");
        }
        tracing::info!("notifier drained");
        Ok(())
    }

    async fn handle(&self, delivery: Delivery) {
        let request: EmailRequested = match serde_json::from_slice(&delivery.payload) {
            Ok(r) => r,
            Err(e) => {
                return delivery
                    .settle
                    .dead_letter(format!("malformed email.send payload: {e}"))
                    .await
            }
        };
        let mail = match self.render(&request) {
            Ok(m) => m,
            Err(e) => return delivery.settle.dead_letter(format!("{e:#}")).await,
        };
        match self.mailer.send(&mail).await {
            Ok(()) => {
                tracing::info!(to = %masked(&mail.to), template = ?request.template_name, "e-mail sent");
                metrics::counter!("parley_emails_sent_total").increment(1);
                delivery.settle.ack().await;
            }
            Err(e) => {
                self.retry
                    .fail(delivery, format!("sending mail: {e:#}"))
                    .await
            }
        }
    }

    pub fn render(&self, request: &EmailRequested) -> Result<Mail> {
        let Some(name) = &request.template_name else {
            return Ok(Mail {
                to: request.recipient.clone(),
                subject: request.subject.clone(),
                body: request.body.clone(),
            });
        };
        let text = self
            .templates
            .get_template(name)
            .with_context(|| format!("unknown e-mail template {name:?}"))?
            .render(&request.context)
            .with_context(|| format!("rendering template {name:?}"))?;
        let (subject, body) = text.split_once("\n\n").unwrap_or((text.as_str(), ""));
        Ok(Mail {
            to: request.recipient.clone(),
            subject: subject.trim().to_owned(),
            body: body.to_owned(),
        })
    }
}

/// An address fit for logs: the domain and the first letter (`a***@example.com`).
fn masked(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => format!("{}***@{domain}", local.chars().next().unwrap_or('?')),
        None => "***".into(),
    }
}
