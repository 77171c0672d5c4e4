//! The embedded, single-node broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

use super::{BoxFuture, Broker, BrokerError, Delivery, DeliverySink, Publication, PublishAck};
use crate::topic::Pattern;

/// The embedded, single-node broker: a publication is delivered straight to
/// the local hub, in the publisher's task, with no copy and no hop.
#[derive(Default)]
pub struct MemoryBroker {
    sink: RwLock<Option<Arc<dyn DeliverySink>>>,
    closed: AtomicBool,
}

impl MemoryBroker {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn attach(&self, sink: Arc<dyn DeliverySink>) {
        *self.sink.write() = Some(sink);
    }

    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<PublishAck, BrokerError>> {
        let result = if self.closed.load(Ordering::Acquire) {
            Err(BrokerError::Closed)
        } else {
            let sink = self.sink.read().clone();
            match sink {
                Some(sink) => {
                    sink.deliver(Delivery {
                        target: publication.target,
                        data: publication.data,
                        position: None,
                    });
                    Ok(PublishAck::default())
                }
                None => Err(BrokerError::Unavailable(
                    "memory broker not attached".into(),
                )),
            }
        };
        Box::pin(std::future::ready(result))
    }

    fn subscribe<'a>(&'a self, _patterns: &'a [Pattern]) -> BoxFuture<'a, Result<(), BrokerError>> {
        // Every publication already reaches the local hub.
        Box::pin(std::future::ready(Ok(())))
    }

    fn unsubscribe<'a>(
        &'a self,
        _patterns: &'a [Pattern],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn is_ready(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && self.sink.read().is_some()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.closed.store(true, Ordering::Release);
        Box::pin(std::future::ready(()))
    }
}
