//! Reaching a running `txflow dev` from the command line. redb lets one process open a data
//! directory, so `txflow accounts`, `dlq` and `produce` given `--dev-dir DIR` ask the dev
//! process instead, over routes of its admin endpoint under `/dev/`; the dev process writes
//! that endpoint's address to `DIR/dev-admin` when it starts, and the routes take the dev
//! API key of `DIR/dev-api-key`, as the gateway does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::TryStreamExt;

use txflow::adapters::embedded::{Embedded, EmbeddedLedgerStore};
use txflow::codec::Codec;
use txflow::failures::redrive::{self, RedriveRequest, Redriven};
use txflow::ports::{LedgerStore, Published, Publisher};
use txflow::stages::gateway::account_json;
use txflow::stages::gateway::keys::hash;
use txflow::wire::{InputRecord, OutputRecord};

/// The file in a data directory that holds the running dev process's admin address.
pub const ADDRESS_FILE: &str = "dev-admin";
/// The file in a data directory that holds the dev API key.
pub const KEY_FILE: &str = "dev-api-key";
/// Records a command sends a running dev in one write, at most.
pub const WRITE_RECORDS: usize = 500;

#[derive(Clone)]
struct Served {
    embedded: Embedded,
    store: Arc<EmbeddedLedgerStore>,
    codec: Arc<Codec>,
}

/// The `/dev/` routes of a dev process's admin endpoint, for callers with `key`.
pub fn routes(embedded: Embedded, codec: Arc<Codec>, key: &str) -> Router {
    let store = Arc::new(embedded.store());
    let expected = hash(key);
    Router::new()
        .route("/dev/accounts", get(accounts))
        .route("/dev/accounts/{account_id}", get(account))
        .route("/dev/topics/{topic}/records", get(records).post(publish))
        .route("/dev/dlq/redrive", post(redrive))
        .route_layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| async move {
                let given = request
                    .headers()
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                if given.is_some_and(|key| hash(key) == expected) {
                    next.run(request).await
                } else {
                    failed(
                        StatusCode::UNAUTHORIZED,
                        "the /dev/ routes take the dev API key (Authorization: Bearer, from <data-dir>/dev-api-key)",
                    )
                }
            },
        ))
        .with_state(Served {
            embedded,
            store,
            codec,
        })
}

fn failed(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, format!("{message}\n")).into_response()
}

async fn accounts(State(served): State<Served>) -> Response {
    let mut lines = String::new();
    let mut all = served.store.accounts();
    loop {
        match all.try_next().await {
            Ok(Some((id, account))) => {
                lines.push_str(&account_json(&id, &account).to_string());
                lines.push('\n');
            }
            Ok(None) => return lines.into_response(),
            Err(e) => return failed(StatusCode::SERVICE_UNAVAILABLE, e),
        }
    }
}

async fn account(State(served): State<Served>, UrlPath(account_id): UrlPath<String>) -> Response {
    match served.store.account(&account_id).await {
        Ok(Some(account)) => Json(account_json(&account_id, &account)).into_response(),
        Ok(None) => failed(
            StatusCode::NOT_FOUND,
            format!("account {account_id:?} has no recorded event"),
        ),
        Err(e) => failed(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// Every committed record of a topic, oldest first.
async fn records(State(served): State<Served>, UrlPath(topic): UrlPath<String>) -> Response {
    let read = tokio::task::spawn_blocking(move || served.embedded.read_to_end(&topic)).await;
    match read {
        Ok(Ok(records)) => Json(records).into_response(),
        Ok(Err(e)) => failed(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => failed(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Appends records to a topic, durably, all or none.
async fn publish(
    State(served): State<Served>,
    UrlPath(topic): UrlPath<String>,
    Json(records): Json<Vec<OutputRecord>>,
) -> Response {
    if let Some(other) = records.iter().find(|r| r.topic != topic) {
        return failed(
            StatusCode::BAD_REQUEST,
            format!("a record for {} posted to {topic}", other.topic),
        );
    }
    let published: Result<Vec<Published>, _> = served
        .embedded
        .publisher()
        .publish(records)
        .await
        .into_iter()
        .collect();
    match published {
        Ok(published) => Json(published).into_response(),
        Err(e) => failed(StatusCode::SERVICE_UNAVAILABLE, e.message),
    }
}

/// Runs a redrive on the dev process's own log, in the group the request names, until the
/// dead letters run out; answers what it did.
async fn redrive(State(served): State<Served>, Json(request): Json<RedriveRequest>) -> Response {
    let plan = match request.plan() {
        Ok(plan) => plan,
        Err(e) => return failed(StatusCode::BAD_REQUEST, e),
    };
    let log = served
        .embedded
        .log(&request.group(), &[request.topic.as_str()], &[]);
    match redrive::redrive(log, &served.codec, &plan).await {
        Ok(done) => Json(done).into_response(),
        Err(e) => failed(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// A client of the dev process running on a data directory.
pub struct DevClient {
    http: reqwest::Client,
    base: String,
    key: String,
    dir: PathBuf,
}

impl DevClient {
    /// The dev process on `dir`, from the address it left there.
    pub fn connect(dir: &Path) -> anyhow::Result<DevClient> {
        let file = dir.join(ADDRESS_FILE);
        let address = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "no running txflow dev found on {} (reading {}): start one with `txflow dev --data-dir {}`",
                dir.display(),
                file.display(),
                dir.display()
            )
        })?;
        let key_file = dir.join(KEY_FILE);
        let key = std::fs::read_to_string(&key_file)
            .with_context(|| format!("reading the dev API key in {}", key_file.display()))?;
        Ok(DevClient {
            http: reqwest::Client::new(),
            base: format!("http://{}", address.trim()),
            key: key.trim().to_owned(),
            dir: dir.to_owned(),
        })
    }

    async fn get(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// Sends `request` with the dev API key.
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        request
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| self.unreachable())
    }

    fn unreachable(&self) -> String {
        format!(
            "the txflow dev on {} does not answer at {}: is it still running?",
            self.dir.display(),
            self.base
        )
    }

    /// An account as `txflow accounts get` prints it, or `None` if it has no recorded event.
    pub async fn account(&self, account_id: &str) -> anyhow::Result<Option<serde_json::Value>> {
        let path = format!("/dev/accounts/{}", segment(account_id));
        let response = self.get(&path).await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(ok(response).await?.json().await?))
    }

    /// Every account, one JSON object a line.
    pub async fn accounts(&self) -> anyhow::Result<String> {
        Ok(ok(self.get("/dev/accounts").await?).await?.text().await?)
    }

    /// Every committed record of `topic`.
    pub async fn records(&self, topic: &str) -> anyhow::Result<Vec<InputRecord>> {
        let path = format!("/dev/topics/{}/records", segment(topic));
        Ok(ok(self.get(&path).await?).await?.json().await?)
    }

    /// Appends `records`, all to `topic`, durably: all or none.
    pub async fn publish(
        &self,
        topic: &str,
        records: &[OutputRecord],
    ) -> anyhow::Result<Vec<Published>> {
        let url = format!("{}/dev/topics/{}/records", self.base, segment(topic));
        let response = self.send(self.http.post(url).json(records)).await?;
        Ok(ok(response).await?.json().await?)
    }
}

impl DevClient {
    /// Runs `request` in the dev process; what it redrove.
    pub async fn redrive(&self, request: &RedriveRequest) -> anyhow::Result<Redriven> {
        let url = format!("{}/dev/dlq/redrive", self.base);
        let response = self.send(self.http.post(url).json(request)).await?;
        Ok(ok(response).await?.json().await?)
    }
}

/// A response that succeeded, or an error with what the dev process said.
async fn ok(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let said = response.text().await.unwrap_or_default();
    bail!("txflow dev answered {status}: {}", said.trim())
}

/// `text` as one URL path segment.
fn segment(text: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("a base URL");
    url.path_segments_mut()
        .expect("an http URL has segments")
        .push(text);
    url.path().trim_start_matches('/').to_owned()
}
