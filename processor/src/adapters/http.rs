//! Webhook deliveries over HTTP(S) with `reqwest` (rustls, the Mozilla root certificates
//! built in, so that a container needs no CA bundle).

use std::time::Duration;

use crate::domain::Cause;

use crate::ports::{DeliveryError, WebhookRequest, Webhooks};

/// How much of a refusing endpoint's answer a dead letter keeps.
const KEPT_ANSWER: usize = 512;

/// An HTTP client for webhook deliveries: connections kept alive per endpoint, redirects not
/// followed (a delivery goes where it was configured to go, or fails).
#[derive(Clone)]
pub struct HttpWebhooks {
    client: reqwest::Client,
}

impl HttpWebhooks {
    pub fn new(connect_timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("txflow/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(connect_timeout)
            .build()?;
        Ok(HttpWebhooks { client })
    }
}

impl Webhooks for HttpWebhooks {
    async fn post(&self, request: &WebhookRequest) -> Result<(), DeliveryError> {
        let mut call = self
            .client
            .post(&request.url)
            .timeout(request.timeout)
            .body(request.body.clone());
        for (name, value) in &request.headers {
            call = call.header(name, value);
        }
        let response = call
            .send()
            .await
            .map_err(|e| DeliveryError::Unavailable(Cause::context(request.url.clone(), e)))?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Ok(());
        }
        let answer = response.text().await.unwrap_or_default();
        let answer: String = answer.chars().take(KEPT_ANSWER).collect();
        DeliveryError::from_status(status, &answer)
    }
}
