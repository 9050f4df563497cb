//! In-process, write-through bus for the embedded stack. A publish waits until the consumer
//! settles the delivery: an ack (the batch committed) lets the api answer 201; a dead letter
//! comes back to the publisher as an error; a retry is queued again after its delay. Bounded
//! queues push back on publishers instead of growing without limit.

use super::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

const CAPACITY: usize = 65_536;

type Outcome = Result<(), PublishError>;

struct Item {
    payload: Vec<u8>,
    attempt: u32,
    reply: oneshot::Sender<Outcome>,
}

struct Channel {
    sender: Mutex<Option<mpsc::Sender<Item>>>,
    receiver: Mutex<Option<mpsc::Receiver<Item>>>,
}

pub struct MemoryBus {
    channels: HashMap<Queue, Arc<Channel>>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        let channels = Queue::ALL
            .into_iter()
            .map(|q| {
                let (tx, rx) = mpsc::channel(CAPACITY);
                let channel = Channel {
                    sender: Mutex::new(Some(tx)),
                    receiver: Mutex::new(Some(rx)),
                };
                (q, Arc::new(channel))
            })
            .collect();
        Self { channels }
    }
}

impl MemoryBus {
    fn sender(&self, queue: Queue) -> Option<mpsc::Sender<Item>> {
        self.channels[&queue].sender.lock().unwrap().clone()
    }
}

fn closed() -> PublishError {
    PublishError::Unavailable("the server is shutting down".into())
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, queue: Queue, payload: Vec<u8>) -> Result<(), PublishError> {
        let sender = self.sender(queue).ok_or_else(closed)?;
        let (reply, outcome) = oneshot::channel();
        sender
            .send(Item {
                payload,
                attempt: 1,
                reply,
            })
            .await
            .map_err(|_| closed())?;
        drop(sender);
        // The consumer dropping the item unsettled (it stopped) is a failure, not a success.
        outcome.await.unwrap_or_else(|_| Err(closed()))
    }

    async fn subscribe(
        &self,
        queue: Queue,
        _prefetch: usize,
    ) -> anyhow::Result<Box<dyn Subscription>> {
        let channel = self.channels[&queue].clone();
        let receiver = channel
            .receiver
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| anyhow::anyhow!("the in-process bus has one consumer per queue"))?;
        Ok(Box::new(MemorySubscription { receiver, channel }))
    }

    fn depth(&self, queue: Queue) -> Option<usize> {
        self.sender(queue).map(|s| CAPACITY - s.capacity())
    }

    async fn ping(&self) -> anyhow::Result<()> {
        Ok(())
    }

    fn close(&self) {
        for channel in self.channels.values() {
            channel.sender.lock().unwrap().take();
        }
    }
}

struct MemorySubscription {
    receiver: mpsc::Receiver<Item>,
    channel: Arc<Channel>,
}

impl MemorySubscription {
    fn delivery(&self, item: Item) -> Delivery {
        Delivery {
            payload: item.payload.clone(),
            attempt: item.attempt,
            settle: Box::new(MemorySettle {
                item,
                channel: self.channel.clone(),
            }),
        }
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Option<Delivery> {
        let item = self.receiver.recv().await?;
        Some(self.delivery(item))
    }

    fn try_next(&mut self) -> Option<Delivery> {
        let item = self.receiver.try_recv().ok()?;
        Some(self.delivery(item))
    }
}

struct MemorySettle {
    item: Item,
    channel: Arc<Channel>,
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(self: Box<Self>) {
        let _ = self.item.reply.send(Ok(()));
    }

    async fn retry(self: Box<Self>, delay: Duration, reason: String) {
        let Self { mut item, channel } = *self;
        tracing::debug!(%reason, attempt = item.attempt, "in-process redelivery scheduled");
        item.attempt += 1;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let sender = channel.sender.lock().unwrap().clone();
            match sender {
                Some(sender) => {
                    if let Err(mpsc::error::SendError(item)) = sender.send(item).await {
                        let _ = item.reply.send(Err(closed()));
                    }
                }
                None => {
                    let _ = item.reply.send(Err(closed()));
                }
            }
        });
    }

    async fn dead_letter(self: Box<Self>, reason: String) {
        tracing::warn!(%reason, "in-process item dead-lettered; its publisher gets the error");
        let _ = self.item.reply.send(Err(PublishError::Rejected(reason)));
    }
}
