//! Reaching a running `txflow dev` from another process: redb lets one process open a data
//! directory, so `txflow accounts`, `dlq` and `produce` given `--dev-dir DIR` ask the dev
//! process instead, over routes of its admin endpoint under `/dev/` (served by
//! `app::dev`); the dev process writes that endpoint's address to `DIR/dev-admin` when it
//! starts, and the routes take the dev API key of `DIR/dev-api-key`, as the gateway does.

use std::path::{Path, PathBuf};

use crate::failures::redrive::{RedriveRequest, Redriven};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};

use crate::domain::{Account, Cause, TransactionResult};
use crate::ports::{
    Balances, LogError, PublishError, Published, Publisher, StoreError, TopicReader,
};
use crate::wire::{InputRecord, OutputRecord};

/// The file in a data directory that holds the running dev process's admin address.
pub const ADDRESS_FILE: &str = "dev-admin";
/// The file in a data directory that holds the dev API key.
pub const KEY_FILE: &str = "dev-api-key";
/// Records a command sends a running dev in one write, at most.
pub const WRITE_RECORDS: usize = 500;

/// Why a running `txflow dev` could not be reached or asked.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("no running txflow dev found on {dir} (reading {file}: {source}): start one with `txflow dev --data-dir {dir}`")]
    NotRunning {
        dir: String,
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the dev API key in {file}: {source}")]
    Key {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the txflow dev on {dir} does not answer at {base}: is it still running? ({source})")]
    Unreachable {
        dir: String,
        base: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("txflow dev answered {status}: {said}")]
    Refused {
        status: reqwest::StatusCode,
        said: String,
    },
    #[error("txflow dev's answer cannot be read: {0}")]
    Answer(#[source] reqwest::Error),
}

/// A client of the dev process running on a data directory.
#[derive(Clone)]
pub struct DevClient {
    http: reqwest::Client,
    base: String,
    key: String,
    dir: PathBuf,
}

impl DevClient {
    /// The dev process on `dir`, from the address it left there.
    pub fn connect(dir: &Path) -> Result<DevClient, RemoteError> {
        let file = dir.join(ADDRESS_FILE);
        let address = std::fs::read_to_string(&file).map_err(|source| RemoteError::NotRunning {
            dir: dir.display().to_string(),
            file: file.display().to_string(),
            source,
        })?;
        let key_file = dir.join(KEY_FILE);
        let key = std::fs::read_to_string(&key_file).map_err(|source| RemoteError::Key {
            file: key_file.display().to_string(),
            source,
        })?;
        Ok(DevClient {
            http: reqwest::Client::new(),
            base: format!("http://{}", address.trim()),
            key: key.trim().to_owned(),
            dir: dir.to_owned(),
        })
    }

    async fn get(&self, path: &str) -> Result<reqwest::Response, RemoteError> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// Sends `request` with the dev API key.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RemoteError> {
        request
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|source| RemoteError::Unreachable {
                dir: self.dir.display().to_string(),
                base: self.base.clone(),
                source,
            })
    }

    /// An account as `txflow accounts get` prints it, or `None` if it does not exist.
    pub async fn account(
        &self,
        account_id: &str,
    ) -> Result<Option<serde_json::Value>, RemoteError> {
        let path = format!("/dev/accounts/{}", segment(account_id));
        let response = self.get(&path).await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        json(response).await.map(Some)
    }

    /// Every account, one JSON object a line.
    pub async fn accounts(&self) -> Result<String, RemoteError> {
        ok(self.get("/dev/accounts").await?)
            .await?
            .text()
            .await
            .map_err(RemoteError::Answer)
    }

    /// Every committed record of `topic`.
    pub async fn records(&self, topic: &str) -> Result<Vec<InputRecord>, RemoteError> {
        let path = format!("/dev/topics/{}/records", segment(topic));
        json(self.get(&path).await?).await
    }

    /// Appends `records`, all to `topic`, durably: all or none.
    pub async fn append(
        &self,
        topic: &str,
        records: &[OutputRecord],
    ) -> Result<Vec<Published>, RemoteError> {
        let url = format!("{}/dev/topics/{}/records", self.base, segment(topic));
        json(self.send(self.http.post(url).json(records)).await?).await
    }

    /// Runs `request` in the dev process; what it redrove.
    pub async fn redrive(&self, request: &RedriveRequest) -> Result<Redriven, RemoteError> {
        let url = format!("{}/dev/dlq/redrive", self.base);
        json(self.send(self.http.post(url).json(request)).await?).await
    }
}

/// A response that succeeded, or an error with what the dev process said.
async fn ok(response: reqwest::Response) -> Result<reqwest::Response, RemoteError> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let said = response.text().await.unwrap_or_default();
    Err(RemoteError::Refused {
        status,
        said: said.trim().to_owned(),
    })
}

/// The JSON body of a response that succeeded.
async fn json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, RemoteError> {
    ok(response)
        .await?
        .json()
        .await
        .map_err(RemoteError::Answer)
}

/// `text` as one URL path segment.
fn segment(text: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("a base URL");
    url.path_segments_mut()
        .expect("an http URL has segments")
        .push(text);
    url.path().trim_start_matches('/').to_owned()
}

impl TopicReader for DevClient {
    async fn read_to_end(&self, topic: &str) -> Result<Vec<InputRecord>, LogError> {
        self.records(topic)
            .await
            .map_err(|e| LogError::Fatal(Cause::new(e)))
    }
}

impl Publisher for DevClient {
    /// In writes of up to [`WRITE_RECORDS`] per topic, each all or none.
    async fn publish(&self, records: Vec<OutputRecord>) -> Vec<Result<Published, PublishError>> {
        let mut outcomes = Vec::with_capacity(records.len());
        for chunk in records.chunk_by(|a, b| a.topic == b.topic) {
            for write in chunk.chunks(WRITE_RECORDS) {
                match self.append(&write[0].topic, write).await {
                    Ok(published) => outcomes.extend(published.into_iter().map(Ok)),
                    Err(e) => {
                        let unreachable = matches!(e, RemoteError::Unreachable { .. });
                        let cause = Cause::new(e);
                        outcomes.extend(write.iter().map(|_| {
                            Err(match unreachable {
                                true => PublishError::Unavailable(cause.clone()),
                                false => PublishError::Refused(cause.clone()),
                            })
                        }))
                    }
                }
            }
        }
        outcomes
    }
}

impl Balances for DevClient {
    async fn account(&self, account_id: &str) -> Result<Option<Account>, StoreError> {
        match DevClient::account(self, account_id).await {
            Ok(Some(found)) => serde_json::from_value::<ShownAccount>(found)
                .map(|shown| Some(shown.account()))
                .map_err(|e| StoreError::Corrupt(Cause::context("an account from txflow dev", e))),
            Ok(None) => Ok(None),
            Err(e) => Err(StoreError::Unavailable(Cause::new(e))),
        }
    }

    fn accounts(&self) -> BoxStream<'_, Result<(String, Account), StoreError>> {
        futures::stream::once(async move {
            let lines = DevClient::accounts(self)
                .await
                .map_err(|e| StoreError::Unavailable(Cause::new(e)))?;
            let accounts: Vec<Result<(String, Account), StoreError>> = lines
                .lines()
                .map(|line| {
                    serde_json::from_str::<ShownAccount>(line)
                        .map(|shown| (shown.account_id.clone(), shown.account()))
                        .map_err(|e| {
                            StoreError::Corrupt(Cause::context("an account from txflow dev", e))
                        })
                })
                .collect();
            Ok::<_, StoreError>(futures::stream::iter(accounts))
        })
        .try_flatten()
        .boxed()
    }

    async fn outcomes(&self, event_id: &str) -> Result<Vec<TransactionResult>, StoreError> {
        let path = format!("/dev/events/{}", segment(event_id));
        let response = self
            .get(&path)
            .await
            .map_err(|e| StoreError::Unavailable(Cause::new(e)))?;
        json(response)
            .await
            .map_err(|e| StoreError::Unavailable(Cause::new(e)))
    }
}

/// An account as the dev process shows it (`txflow accounts` prints the same form).
#[derive(serde::Deserialize)]
struct ShownAccount {
    account_id: String,
    balance_minor: i64,
    currency: Option<String>,
    version: i64,
}

impl ShownAccount {
    fn account(&self) -> Account {
        Account {
            balance_minor: self.balance_minor,
            currency: self.currency.clone(),
            version: self.version,
        }
    }
}
