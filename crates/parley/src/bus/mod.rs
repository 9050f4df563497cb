//! Port: the queues between the api and the background roles. Payloads are opaque bytes
//! (JSON events from `domain::events`), so the same port carries the write path
//! (`create_chats`, `create_messages`, `update_messages`) and the account events
//! (`email.send`; DESIGN.md's `user.delete` is one more variant when a role consumes it).
//!
//! `publish` returns only once the bus has taken responsibility for the payload: a broker has
//! confirmed a persistent message, or — on the in-process bus — the consumer has acked it
//! after committing (write-through). That is what lets the api answer 201 (invariant 2).

mod envelope;
mod memory;
mod nats;
mod rabbitmq;

pub use memory::MemoryBus;
pub use nats::NatsBus;
pub use rabbitmq::RabbitBus;

use async_trait::async_trait;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queue {
    CreateChats,
    CreateMessages,
    UpdateMessages,
    EmailSend,
}

impl Queue {
    pub const ALL: [Queue; 4] = [
        Queue::CreateChats,
        Queue::CreateMessages,
        Queue::UpdateMessages,
        Queue::EmailSend,
    ];

    /// The queue's (or subject's) name on a broker.
    pub fn name(self) -> &'static str {
        match self {
            Queue::CreateChats => "create_chats",
            Queue::CreateMessages => "create_messages",
            Queue::UpdateMessages => "update_messages",
            Queue::EmailSend => "email.send",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The bus is down or shutting down: nothing was accepted.
    #[error("the message bus is unavailable: {0}")]
    Unavailable(String),
    /// The consumer refused the payload for good (dead-lettered); only the in-process bus
    /// can tell the publisher this.
    #[error("the item was rejected: {0}")]
    Rejected(String),
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn publish(&self, queue: Queue, payload: Vec<u8>) -> Result<(), PublishError>;
    /// Starts consuming a queue. Brokers deliver at most `prefetch` unsettled items at once;
    /// the in-process bus hands over what its bounded queue holds.
    async fn subscribe(
        &self,
        queue: Queue,
        prefetch: usize,
    ) -> anyhow::Result<Box<dyn Subscription>>;
    /// Items waiting in a queue (for metrics and readiness), when the bus can tell.
    fn depth(&self, queue: Queue) -> Option<usize>;
    async fn ping(&self) -> anyhow::Result<()>;
    /// Stops accepting publishes; subscriptions end once drained.
    fn close(&self);
}

#[async_trait]
pub trait Subscription: Send {
    /// Waits for the next delivery; `None` once the bus is closed and drained.
    async fn next(&mut self) -> Option<Delivery>;
    /// A delivery that is already here, without waiting (to fill a batch).
    fn try_next(&mut self) -> Option<Delivery>;
}

/// One delivered payload; it must be settled exactly once.
pub struct Delivery {
    pub payload: Vec<u8>,
    /// 1 on first delivery, then one more per redelivery.
    pub attempt: u32,
    pub settle: Box<dyn Settle>,
}

#[async_trait]
pub trait Settle: Send + Sync {
    /// Done: its effect is committed.
    async fn ack(self: Box<Self>);
    /// Failed for now: deliver again after `delay`.
    async fn retry(self: Box<Self>, delay: Duration, reason: String);
    /// Failed for good: to the dead-letter queue, with the reason.
    async fn dead_letter(self: Box<Self>, reason: String);
}

/// How a consumer handles a failed delivery: retry with exponential backoff, then
/// dead-letter after `max_attempts` deliveries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(16);
        (self.base_backoff * 2u32.pow(exponent)).min(self.max_backoff)
    }

    /// Settles a failed delivery: retried later, or dead-lettered when out of attempts.
    pub async fn fail(&self, delivery: Delivery, reason: String) {
        if delivery.attempt >= self.max_attempts {
            tracing::error!(%reason, attempt = delivery.attempt, "dead-lettering an item");
            metrics::counter!("parley_dead_letters_total").increment(1);
            delivery.settle.dead_letter(reason).await;
        } else {
            let delay = self.delay(delivery.attempt);
            tracing::warn!(%reason, attempt = delivery.attempt, ?delay, "retrying an item");
            metrics::counter!("parley_retries_total").increment(1);
            delivery.settle.retry(delay, reason).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
        };
        let delays: Vec<u128> = (1..=5).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
    }
}
