//! What each projection of this replica reads: the decoder of its topics.

use customers::events::CustomerEvent;
use customers::projection::CustomerFeed;
use futures::future::LocalBoxFuture;
use orders::events::OrderEvent;
use projection_engine::projection::Decoder;
use shared_events::{EventCodec, WireError};

/// Decodes each topic's records with that topic's codec.
#[derive(Debug)]
pub struct FeedDecoder {
    pub customers_topic: String,
    pub customers: EventCodec<CustomerEvent>,
    pub orders: EventCodec<OrderEvent>,
}

impl Decoder<CustomerFeed> for FeedDecoder {
    fn decode<'a>(
        &'a self,
        topic: &'a str,
        bytes: &'a [u8],
    ) -> LocalBoxFuture<'a, Result<CustomerFeed, WireError>> {
        Box::pin(async move {
            if topic == self.customers_topic {
                self.customers
                    .decode(bytes)
                    .await
                    .map(CustomerFeed::Customer)
            } else {
                self.orders.decode(bytes).await.map(CustomerFeed::Order)
            }
        })
    }
}
