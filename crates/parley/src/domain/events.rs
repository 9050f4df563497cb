//! What travels on the bus: the payloads of the seeds' queues, as JSON (camelCase, so a
//! message on `create_messages` reads as DESIGN.md writes it).

use super::AppToken;
use crate::bus::{Bus, Queue};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// `create_chats`: chat `chat_number` of application `token` was handed out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatCreated {
    pub token: AppToken,
    pub chat_number: i64,
    pub creator_id: i64,
    pub created_at: i64,
}

/// `create_messages`: message `message_number` of a chat was handed out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageCreated {
    pub token: AppToken,
    pub chat_number: i64,
    pub message_number: i64,
    pub sender_id: i64,
    pub body: String,
    pub created_at: i64,
}

/// `update_messages`: a new body for a message; the highest `version` wins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageEdited {
    pub token: AppToken,
    pub chat_number: i64,
    pub message_number: i64,
    pub sender_id: i64,
    pub body: String,
    pub version: i64,
    pub updated_at: i64,
}

/// `email.send`: one e-mail to render (when `template_name` is set) and send.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmailRequested {
    pub recipient: String,
    pub subject: String,
    pub body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_name: Option<String>,
    /// Values the template may use (`name`, `recovery_token`, …).
    #[serde(default)]
    pub context: serde_json::Map<String, serde_json::Value>,
}

/// Queues a templated e-mail in the background: mails are best effort for the request or job
/// that causes them (the account change stands), and a slow or failing mailer must not hold
/// either up. Failures are logged.
pub fn queue_email(
    bus: &Arc<dyn Bus>,
    recipient: &str,
    template: &str,
    context: serde_json::Map<String, serde_json::Value>,
) {
    let request = EmailRequested {
        recipient: recipient.to_owned(),
        subject: String::new(),
        body: String::new(),
        template_name: Some(template.to_owned()),
        context,
    };
    let payload = serde_json::to_vec(&request).expect("events serialize");
    let bus = bus.clone();
    let template = template.to_owned();
    tokio::spawn(async move {
        if let Err(e) = bus.publish(Queue::EmailSend, payload).await {
            tracing::error!(template, error = %e, "could not queue an e-mail");
        }
    });
}
