//! The ledger store on ScyllaDB (or Apache Cassandra): the ledger table, one partition per
//! account, and the event ids table, one partition per event id.
//!
//! The account's balance, currency and version are static columns of its partition and each
//! recorded result is a clustering row, so that one conditional batch on one partition —
//! `UPDATE … IF version = ?` plus the new result rows — records everything a batch did to the
//! account with a single Paxos round. An event id is claimed with `INSERT … IF NOT EXISTS` on
//! its own partition, which also names the accounts its results are on.

mod config;

pub use config::{ConsistencyLevel, SerialLevel, StoreConfig};

use std::collections::HashMap;
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use openssl::ssl::{SslConnector, SslConnectorBuilder, SslFiletype, SslMethod};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{ExecutionError, NewSessionError, PrepareError, RequestAttemptError};
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use scylla::value::{CqlTimestamp, CqlValue, Row};

use crate::domain::result::{event_of_posting_key, posting_key};
use crate::domain::{
    Account, Cause, Entry, Fingerprint, IdClaim, Origin, Prior, Recorded, Settlement, Status,
    TransactionResult,
};
use crate::ports::{Balances, LedgerStore, LoadedAccount, StoreError};

/// The table every ledger write goes to.
pub const LEDGER_TABLE: &str = "ledger";
/// The table of event ids and the claim that holds each.
pub const EVENT_IDS_TABLE: &str = "event_ids";
/// The secondary index on the ledger table's event ids that found an event's results before
/// event ids had a table of their own; `txflow migrate` claims the ids of the results it
/// indexed, then drops it.
const LEGACY_EVENT_INDEX: &str = "ledger_by_event";
/// Claims written at once, by `txflow migrate` and by the ledger.
const CLAIM_CONCURRENCY: usize = 256;

/// Connects to the store's nodes with the configured timeouts and consistency.
pub async fn connect(config: &StoreConfig) -> Result<Session, StoreError> {
    let profile = ExecutionProfile::builder()
        .consistency(config.consistency.into())
        .serial_consistency(Some(config.serial_consistency.into()))
        .request_timeout(Some(Duration::from_millis(config.request_timeout_ms)))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&config.contact_points)
        .connection_timeout(Duration::from_millis(config.connect_timeout_ms))
        .default_execution_profile_handle(profile.into_handle());
    if let (Some(user), Some(password)) = (&config.username, &config.password) {
        builder = builder.user(user, &password.0);
    }
    if let Some(tls) = tls(config)? {
        builder = builder.tls_context(Some(tls));
    }
    builder.build().await.map_err(|e: NewSessionError| {
        let what = format!("connecting to {:?}", config.contact_points);
        if is_refusal(&e) {
            StoreError::Refused(Cause::context(what, e))
        } else {
            StoreError::Unavailable(Cause::context(what, e))
        }
    })
}

/// The TLS context of `store.tls_*`, if TLS is configured: the CA that signed the nodes'
/// certificates (each verified against the node's address), and a client certificate.
fn tls(config: &StoreConfig) -> Result<Option<SslConnectorBuilder>, StoreError> {
    let Some(ca) = &config.tls_ca_file else {
        return Ok(None);
    };
    let refused = |what: String| move |e| StoreError::Refused(Cause::context(what, e));
    let mut builder = SslConnector::builder(SslMethod::tls_client())
        .map_err(refused("setting up TLS".to_owned()))?;
    builder
        .set_ca_file(ca)
        .map_err(refused(format!("store.tls_ca_file {}", ca.display())))?;
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        builder
            .set_certificate_chain_file(cert)
            .map_err(refused(format!("store.tls_cert_file {}", cert.display())))?;
        builder
            .set_private_key_file(key, SslFiletype::PEM)
            .map_err(refused(format!("store.tls_key_file {}", key.display())))?;
    }
    Ok(Some(builder))
}

/// Whether the nodes refused this client (credentials, certificate): a failure no retry
/// mends. The driver's error names it only in its text.
fn is_refusal(error: &NewSessionError) -> bool {
    let text = error.to_string().to_lowercase();
    [
        "authentication",
        "bad credentials",
        "certificate",
        "handshake",
        "ssl",
        "tls",
    ]
    .iter()
    .any(|sign| text.contains(sign))
}

/// What `txflow migrate` did.
#[derive(Debug, Default)]
pub struct Migration {
    /// Event ids claimed for results recorded before ids were claimed.
    pub claimed: u64,
    /// Event ids recorded for two events before ids were claimed: the first claimed holds it.
    pub conflicts: Vec<String>,
    /// Whether it dropped the legacy index on the ledger table's event ids.
    pub dropped_legacy_index: bool,
}

/// Creates the keyspace and tables if they are missing; safe to run again. A keyspace made
/// before event ids had their table gets the ids of its recorded results claimed, then loses
/// the index that found them (stop the ledgers of the old version first: an event they apply
/// after the claims are read is not claimed).
pub async fn migrate(session: &Session, config: &StoreConfig) -> Result<Migration, StoreError> {
    let keyspace = &config.keyspace;
    let statements = vec![
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {} {}",
            config.replication, config.keyspace_options
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.{LEDGER_TABLE} (
                account_id text,
                event_id text,
                balance_minor bigint STATIC,
                currency text STATIC,
                version bigint STATIC,
                fingerprint blob,
                origin_topic text,
                origin_partition int,
                origin_offset bigint,
                entry text,
                status text,
                reason text,
                amount_minor bigint,
                balance_after_minor bigint,
                account_version bigint,
                processed_at timestamp,
                PRIMARY KEY (account_id, event_id)
            )"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.{EVENT_IDS_TABLE} (
                event_id text PRIMARY KEY,
                fingerprint blob,
                accounts set<text>
            )"
        ),
    ];
    for statement in &statements {
        session
            .query_unpaged(statement.as_str(), ())
            .await
            .map_err(classify)?;
    }
    await_schema(session).await?;
    let mut migration = Migration::default();
    if legacy_index_exists(session, keyspace).await? {
        claim_recorded_event_ids(session, keyspace, &mut migration).await?;
        session
            .query_unpaged(
                format!("DROP INDEX IF EXISTS {keyspace}.{LEGACY_EVENT_INDEX}"),
                (),
            )
            .await
            .map_err(classify)?;
        await_schema(session).await?;
        migration.dropped_legacy_index = true;
    }
    Ok(migration)
}

async fn await_schema(session: &Session) -> Result<(), StoreError> {
    session
        .await_schema_agreement()
        .await
        .map(|_| ())
        .map_err(|e| StoreError::Unavailable(Cause::context("waiting for schema agreement", e)))
}

async fn legacy_index_exists(session: &Session, keyspace: &str) -> Result<bool, StoreError> {
    let row: Option<(String,)> = first_row(
        session
            .query_unpaged(
                "SELECT index_name FROM system_schema.indexes \
                 WHERE keyspace_name = ? AND table_name = ? AND index_name = ?",
                (keyspace, LEDGER_TABLE, LEGACY_EVENT_INDEX),
            )
            .await
            .map_err(classify)?,
    )?;
    Ok(row.is_some())
}

/// What claiming the event id of one recorded result did.
enum Claimed {
    Id,
    Nothing,
    HeldByAnother(String),
}

/// Claims the event id of every result recorded before ids were claimed: the first result
/// read of an id claims it for its event, the others of the same event add their account.
async fn claim_recorded_event_ids(
    session: &Session,
    keyspace: &str,
    migration: &mut Migration,
) -> Result<(), StoreError> {
    let claim = session
        .prepare(format!(
            "INSERT INTO {keyspace}.{EVENT_IDS_TABLE} (event_id, fingerprint, accounts) \
             VALUES (?, ?, ?) IF NOT EXISTS"
        ))
        .await
        .map_err(|e| classify(e.into()))?;
    let add_account = session
        .prepare(format!(
            "UPDATE {keyspace}.{EVENT_IDS_TABLE} SET accounts = accounts + ? \
             WHERE event_id = ? IF fingerprint = ?"
        ))
        .await
        .map_err(|e| classify(e.into()))?;
    type Row = (String, Option<String>, Option<Vec<u8>>);
    let rows = session
        .query_iter(
            format!("SELECT account_id, event_id, fingerprint FROM {keyspace}.{LEDGER_TABLE}"),
            (),
        )
        .await
        .map_err(|e| StoreError::Unavailable(Cause::new(e)))?
        .rows_stream::<Row>()
        .map_err(|e| StoreError::Corrupt(Cause::new(e)))?;
    let claim_one = |row: Result<Row, StoreError>| {
        let (claim, add_account) = (&claim, &add_account);
        async move {
            let (account_id, key, fingerprint) = row?;
            // A partition with no result, or a reversal (never recorded before ids were
            // claimed).
            let (Some(event_id), Some(fingerprint)) = (key, fingerprint) else {
                return Ok::<_, StoreError>(Claimed::Nothing);
            };
            if event_of_posting_key(&event_id).1 {
                return Ok(Claimed::Nothing);
            }
            let accounts = vec![account_id];
            let claimed = session
                .execute_unpaged(claim, (&event_id, &fingerprint, &accounts))
                .await
                .map_err(classify)?;
            if lwt_applied(claimed)? {
                return Ok(Claimed::Id);
            }
            let added = session
                .execute_unpaged(add_account, (&accounts, &event_id, &fingerprint))
                .await
                .map_err(classify)?;
            Ok(if lwt_applied(added)? {
                Claimed::Nothing
            } else {
                Claimed::HeldByAnother(event_id)
            })
        }
    };
    let mut claims = std::pin::pin!(rows
        .map_err(|e| StoreError::Unavailable(Cause::new(e)))
        .map(claim_one)
        .buffer_unordered(CLAIM_CONCURRENCY));
    while let Some(claimed) = claims.next().await {
        match claimed? {
            Claimed::Id => migration.claimed += 1,
            Claimed::HeldByAnother(event_id) => migration.conflicts.push(event_id),
            Claimed::Nothing => {}
        }
    }
    Ok(())
}

/// Whether a lightweight transaction applied, read from its `[applied]` column by name.
///
/// Cassandra answers an applied LWT with `[applied]` alone and a refused one with
/// `[applied]` plus the current values; ScyllaDB always adds the old row. Reading the
/// column by name from an untyped row works with both.
pub fn lwt_applied(result: QueryResult) -> Result<bool, StoreError> {
    let corrupt =
        |what: String| StoreError::Corrupt(Cause::message(format!("an LWT answer: {what}")));
    let unreadable = |e| StoreError::Corrupt(Cause::context("an LWT answer", e));
    let rows = result.into_rows_result().map_err(unreadable)?;
    let column = rows
        .column_specs()
        .iter()
        .position(|spec| spec.name() == "[applied]")
        .ok_or_else(|| corrupt("no [applied] column".to_owned()))?;
    let first: Row = rows
        .first_row()
        .map_err(|e| StoreError::Corrupt(Cause::context("an LWT answer", e)))?;
    match first.columns.get(column) {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        other => Err(corrupt(format!("[applied] is {other:?}"))),
    }
}

/// The first row of a result, if any, as `T`.
fn first_row<T>(result: QueryResult) -> Result<Option<T>, StoreError>
where
    T: for<'frame, 'metadata> scylla::deserialize::row::DeserializeRow<'frame, 'metadata>,
{
    result
        .into_rows_result()
        .map_err(|e| StoreError::Corrupt(Cause::new(e)))?
        .maybe_first_row()
        .map_err(|e| StoreError::Corrupt(Cause::new(e)))
}

/// Sorts a driver error into the store's retry classes.
fn classify(error: ExecutionError) -> StoreError {
    use scylla::errors::DbError;
    let attempt = match &error {
        ExecutionError::LastAttemptError(attempt) => Some(attempt),
        ExecutionError::PrepareError(PrepareError::AllAttemptsFailed { first_attempt }) => {
            Some(first_attempt)
        }
        _ => None,
    };
    let schema = matches!(
        attempt,
        Some(RequestAttemptError::DbError(
            DbError::SyntaxError
                | DbError::Invalid
                | DbError::Unauthorized
                | DbError::ConfigError
                | DbError::AuthenticationError,
            _,
        ))
    ) || matches!(error, ExecutionError::BadQuery(_));
    if schema {
        StoreError::Schema(Cause::new(error))
    } else {
        StoreError::Unavailable(Cause::new(error))
    }
}

/// The ledger store on a CQL session.
pub struct ScyllaLedgerStore {
    session: Session,
    max_rows_per_write: usize,
    load_account: PreparedStatement,
    load_results: PreparedStatement,
    load_currency: PreparedStatement,
    load_posting: PreparedStatement,
    load_posting_serial: PreparedStatement,
    advance: PreparedStatement,
    insert_result: PreparedStatement,
    claim: PreparedStatement,
    claim_event_id: PreparedStatement,
    load_event_id: PreparedStatement,
    all_accounts: PreparedStatement,
}

type ResultRow = (
    String,
    Vec<u8>,
    String,
    i32,
    i64,
    String,
    String,
    Option<String>,
    i64,
    i64,
    i64,
    CqlTimestamp,
);

/// Fingerprint and accounts of a claimed event id.
type IdClaimRow = (Option<Vec<u8>>, Option<Vec<String>>);

/// Fingerprint, entry and status of a recorded result.
type PostingRow = (Option<Vec<u8>>, Option<String>, Option<String>);

const RESULT_COLUMNS: &str =
    "event_id, fingerprint, origin_topic, origin_partition, origin_offset, \
     entry, status, reason, amount_minor, balance_after_minor, account_version, processed_at";

impl ScyllaLedgerStore {
    /// Prepares every statement; fails with [`StoreError::Schema`] when `txflow migrate` has
    /// not run.
    pub async fn new(session: Session, config: &StoreConfig) -> Result<Self, StoreError> {
        let table = format!("{}.{LEDGER_TABLE}", config.keyspace);
        let prepare = |cql: String| {
            let session = &session;
            async move { session.prepare(cql).await.map_err(|e| classify(e.into())) }
        };
        let posting = format!(
            "SELECT fingerprint, entry, status FROM {table} WHERE account_id = ? AND event_id = ?"
        );
        let load_posting = prepare(posting.clone()).await?;
        // A credit leg must see its debit, and a reversal the refusal of its credit, which an
        // LWT committed before the leg became readable. A read at the write's consistency sees
        // it; one it misses is read again serially, which sees every committed Paxos write,
        // before the leg is refused.
        let mut load_posting_serial = prepare(posting).await?;
        load_posting_serial.set_consistency(Consistency::Serial);
        let event_ids = format!("{}.{EVENT_IDS_TABLE}", config.keyspace);
        let mut claim_event_id = prepare(format!(
            "INSERT INTO {event_ids} (event_id, fingerprint, accounts) VALUES (?, ?, ?) IF NOT EXISTS"
        ))
        .await?;
        claim_event_id.set_is_idempotent(false);
        let mut advance = prepare(format!(
            "UPDATE {table} SET balance_minor = ?, currency = ?, version = ? \
             WHERE account_id = ? IF version = ?"
        ))
        .await?;
        advance.set_is_idempotent(false);
        Ok(ScyllaLedgerStore {
            max_rows_per_write: config.max_rows_per_write,
            load_account: prepare(format!(
                "SELECT balance_minor, currency, version FROM {table} WHERE account_id = ? LIMIT 1"
            ))
            .await?,
            load_results: prepare(format!(
                "SELECT {RESULT_COLUMNS} FROM {table} WHERE account_id = ? AND event_id IN ?"
            ))
            .await?,
            load_event_id: prepare(format!(
                "SELECT fingerprint, accounts FROM {event_ids} WHERE event_id = ?"
            ))
            .await?,
            claim_event_id,
            load_currency: prepare(format!(
                "SELECT currency FROM {table} WHERE account_id = ? LIMIT 1"
            ))
            .await?,
            load_posting,
            load_posting_serial,
            advance,
            // IF NOT EXISTS: a result written on a guess that the event is new (the stage's
            // cached path) must refuse the whole batch when the guess was wrong.
            insert_result: prepare(format!(
                "INSERT INTO {table} (account_id, {RESULT_COLUMNS}) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            // A redrive claims a recorded result by moving its origin; the condition lets only
            // one claim of the same dead letter publish it.
            claim: prepare(format!(
                "UPDATE {table} SET origin_topic = ?, origin_partition = ?, origin_offset = ? \
                 WHERE account_id = ? AND event_id = ? \
                 IF origin_topic = ? AND origin_partition = ? AND origin_offset = ?"
            ))
            .await?,
            all_accounts: prepare(format!(
                "SELECT DISTINCT account_id, balance_minor, currency, version FROM {table}"
            ))
            .await?,
            session,
        })
    }

    async fn one_account(&self, account_id: &str) -> Result<Option<Account>, StoreError> {
        let row: Option<(Option<i64>, Option<String>, Option<i64>)> = first_row(
            self.session
                .execute_unpaged(&self.load_account, (account_id,))
                .await
                .map_err(classify)?,
        )?;
        Ok(row.map(|(balance, currency, version)| Account {
            balance_minor: balance.unwrap_or(0),
            currency,
            version: version.unwrap_or(0),
        }))
    }

    /// The claim that holds `event_id`, if any.
    async fn event_id_holder(&self, event_id: &str) -> Result<Option<IdClaim>, StoreError> {
        let row: Option<IdClaimRow> = first_row(
            self.session
                .execute_unpaged(&self.load_event_id, (event_id,))
                .await
                .map_err(classify)?,
        )?;
        row.map(|(fingerprint, accounts)| {
            Ok(IdClaim {
                event_id: event_id.to_owned(),
                fingerprint: fingerprint_of(event_id, fingerprint.unwrap_or_default())?,
                accounts: accounts.unwrap_or_default(),
            })
        })
        .transpose()
    }

    /// Claims `claim.event_id` for its event unless a claim holds it; the claim that does.
    async fn claim_one(&self, claim: &IdClaim) -> Result<IdClaim, StoreError> {
        let answer = self
            .session
            .execute_unpaged(
                &self.claim_event_id,
                (
                    &claim.event_id,
                    claim.fingerprint.0.to_vec(),
                    &claim.accounts,
                ),
            )
            .await
            .map_err(classify)?;
        if lwt_applied(answer)? {
            return Ok(claim.clone());
        }
        // Refused: the holder's row came back with the answer on some versions and not on
        // others (ScyllaDB, Cassandra); it is read at the serial consistency, which sees it.
        self.event_id_holder(&claim.event_id).await?.ok_or_else(|| {
            StoreError::Corrupt(Cause::message(format!(
                "the claim of event id {:?} was refused, yet no claim holds it",
                claim.event_id
            )))
        })
    }
}

/// A stored fingerprint, which must be 32 bytes.
fn fingerprint_of(what: &str, bytes: Vec<u8>) -> Result<Fingerprint, StoreError> {
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| {
        StoreError::Corrupt(Cause::message(format!(
            "the fingerprint of {what:?} is not 32 bytes"
        )))
    })?;
    Ok(Fingerprint(bytes))
}

impl ScyllaLedgerStore {
    fn append_claims(
        &self,
        account_id: &str,
        settlement: &Settlement,
        batch: &mut Batch,
        values: &mut Vec<RowValues>,
    ) {
        for claim in &settlement.claimed {
            batch.append_statement(self.claim.clone());
            values.push(Box::new((
                claim.to.topic.clone(),
                claim.to.partition,
                claim.to.offset,
                account_id.to_owned(),
                claim.key.clone(),
                claim.from.topic.clone(),
                claim.from.partition,
                claim.from.offset,
            )));
        }
    }

    /// What `account_id` recorded under `key`, read with `statement`.
    async fn posting(
        &self,
        statement: &PreparedStatement,
        account_id: &str,
        key: &str,
    ) -> Result<Option<Recorded>, StoreError> {
        let row: Option<PostingRow> = first_row(
            self.session
                .execute_unpaged(statement, (account_id, key))
                .await
                .map_err(classify)?,
        )?;
        let Some((Some(fingerprint), Some(entry), Some(status))) = row else {
            return Ok(None);
        };
        let corrupt =
            |what: &str| StoreError::Corrupt(Cause::message(format!("result of {key:?}: {what}")));
        Ok(Some(Recorded {
            fingerprint: fingerprint_of(key, fingerprint)?,
            entry: Entry::from_symbol(&entry).ok_or_else(|| corrupt("unknown entry"))?,
            status: Status::from_symbol(&status).ok_or_else(|| corrupt("unknown status"))?,
        }))
    }
}

fn prior_of(row: ResultRow) -> Result<Prior, StoreError> {
    let (
        event_id,
        fingerprint,
        topic,
        partition,
        offset,
        entry,
        status,
        reason,
        amount,
        after,
        version,
        at,
    ) = row;
    let corrupt =
        |what: &str| StoreError::Corrupt(Cause::message(format!("result of {event_id:?}: {what}")));
    let fingerprint = fingerprint_of(&event_id, fingerprint)?;
    let entry = Entry::from_symbol(&entry).ok_or_else(|| corrupt("unknown entry"))?;
    let status = Status::from_symbol(&status).ok_or_else(|| corrupt("unknown status"))?;
    // The row's key is the posting key: the event id, or the mark of a reversal beside it.
    let event_id = event_of_posting_key(&event_id).0.to_owned();
    Ok(Prior {
        fingerprint,
        origin: Origin {
            topic,
            partition,
            offset,
        },
        result: TransactionResult {
            event_id,
            account_id: String::new(),
            entry,
            status,
            reason,
            amount_minor: amount,
            balance_after_minor: after,
            account_version: version,
            processed_at: at.0,
        },
    })
}

type RowValues = Box<dyn SerializeRow + Send + Sync>;

impl LedgerStore for ScyllaLedgerStore {
    async fn load(&self, account_id: &str, keys: &[String]) -> Result<LoadedAccount, StoreError> {
        let results = async {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let rows = self
                .session
                .execute_unpaged(&self.load_results, (account_id, keys))
                .await
                .map_err(classify)?
                .into_rows_result()
                .map_err(|e| StoreError::Corrupt(Cause::new(e)))?;
            rows.rows::<ResultRow>()
                .map_err(|e| StoreError::Corrupt(Cause::new(e)))?
                .map(|row| row.map_err(|e| StoreError::Corrupt(Cause::new(e))))
                .collect::<Result<Vec<_>, _>>()
        };
        let (account, results) = tokio::try_join!(self.one_account(account_id), results)?;
        let mut prior = HashMap::with_capacity(results.len());
        for row in results {
            let mut p = prior_of(row)?;
            p.result.account_id = account_id.to_owned();
            prior.insert(p.result.posting_key(), p);
        }
        Ok(LoadedAccount {
            account: account.unwrap_or_default(),
            prior,
        })
    }

    async fn currencies(
        &self,
        account_ids: &[String],
    ) -> Result<HashMap<String, String>, StoreError> {
        let lookups = account_ids.iter().map(|id| async move {
            let row: Option<(Option<String>,)> = first_row(
                self.session
                    .execute_unpaged(&self.load_currency, (id,))
                    .await
                    .map_err(classify)?,
            )?;
            Ok::<_, StoreError>(row.and_then(|(c,)| c).map(|c| (id.clone(), c)))
        });
        let found = futures::future::try_join_all(lookups).await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn claim_event_ids(
        &self,
        claims: &[IdClaim],
    ) -> Result<HashMap<String, IdClaim>, StoreError> {
        // Made first, then run: a lazy stream of borrowing futures is not `Send` for every
        // lifetime, as the trait asks.
        let claiming: Vec<_> = claims.iter().map(|claim| self.claim_one(claim)).collect();
        let holders: Vec<IdClaim> = stream::iter(claiming)
            .buffer_unordered(CLAIM_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(holders
            .into_iter()
            .map(|holder| (holder.event_id.clone(), holder))
            .collect())
    }

    async fn recorded(
        &self,
        postings: &[(String, String)],
    ) -> Result<HashMap<(String, String), Recorded>, StoreError> {
        let lookups = postings.iter().map(|(account_id, event_id)| async move {
            let found = match self
                .posting(&self.load_posting, account_id, event_id)
                .await?
            {
                Some(found) => Some(found),
                None => {
                    self.posting(&self.load_posting_serial, account_id, event_id)
                        .await?
                }
            };
            Ok::<_, StoreError>(found.map(|f| ((account_id.clone(), event_id.clone()), f)))
        });
        let found = futures::future::try_join_all(lookups).await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn record(
        &self,
        account_id: &str,
        before: &Account,
        settlement: &Settlement,
    ) -> Result<bool, StoreError> {
        if settlement.recorded.is_empty() {
            if settlement.claimed.is_empty() {
                return Ok(true);
            }
            let mut batch = Batch::new(BatchType::Logged);
            let mut values: Vec<RowValues> = Vec::with_capacity(settlement.claimed.len());
            self.append_claims(account_id, settlement, &mut batch, &mut values);
            let result = self.session.batch(&batch, values).await.map_err(classify)?;
            return lwt_applied(result);
        }
        // Batches have a size limit on the server: a long settlement is written as a chain of
        // conditional writes, each a consistent prefix that the next one's condition extends.
        let mut version = before.version;
        let mut currency = before.currency.clone();
        for chunk in settlement.recorded.chunks(self.max_rows_per_write) {
            let last = &chunk[chunk.len() - 1].result;
            if currency.is_none() {
                currency = settlement
                    .account
                    .currency
                    .clone()
                    .filter(|_| chunk.iter().any(|p| p.result.status == Status::Applied));
            }
            let mut batch = Batch::new(BatchType::Logged);
            let mut values: Vec<RowValues> = Vec::with_capacity(chunk.len() + 1);
            batch.append_statement(self.advance.clone());
            let expected = (version > 0).then_some(version);
            values.push(Box::new((
                last.balance_after_minor,
                currency.clone(),
                last.account_version,
                account_id.to_owned(),
                expected,
            )));
            for p in chunk {
                let r = &p.result;
                batch.append_statement(self.insert_result.clone());
                values.push(Box::new((
                    account_id.to_owned(),
                    r.posting_key(),
                    p.fingerprint.0.to_vec(),
                    p.origin.topic.clone(),
                    p.origin.partition,
                    p.origin.offset,
                    r.entry.as_str(),
                    r.status.as_str(),
                    r.reason.clone(),
                    r.amount_minor,
                    r.balance_after_minor,
                    r.account_version,
                    CqlTimestamp(r.processed_at),
                )));
            }
            if version == before.version {
                self.append_claims(account_id, settlement, &mut batch, &mut values);
            }
            let result = self.session.batch(&batch, values).await.map_err(classify)?;
            if !lwt_applied(result)? {
                return Ok(false);
            }
            version = last.account_version;
        }
        Ok(true)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A partition no account uses: the read reaches its replicas like any account's.
        self.one_account("txflow.health-probe").await.map(|_| ())
    }
}

impl Balances for ScyllaLedgerStore {
    async fn account(&self, account_id: &str) -> Result<Option<Account>, StoreError> {
        Ok(self.one_account(account_id).await?.filter(exists))
    }

    fn accounts(&self) -> BoxStream<'_, Result<(String, Account), StoreError>> {
        futures::stream::once(async move {
            self.session
                .execute_iter(self.all_accounts.clone(), ())
                .await
                .map_err(|e| StoreError::Unavailable(Cause::new(e)))?
                .rows_stream::<(String, Option<i64>, Option<String>, Option<i64>)>()
                .map_err(|e| StoreError::Corrupt(Cause::new(e)))
        })
        .map_ok(|rows| {
            rows.map_err(|e| StoreError::Unavailable(Cause::new(e)))
                .map_ok(|(id, balance, currency, version)| {
                    let account = Account {
                        balance_minor: balance.unwrap_or(0),
                        currency,
                        version: version.unwrap_or(0),
                    };
                    (id, account)
                })
        })
        .try_flatten()
        .try_filter(|(_, account)| futures::future::ready(exists(account)))
        .boxed()
    }

    async fn outcomes(&self, event_id: &str) -> Result<Vec<TransactionResult>, StoreError> {
        let Some(holder) = self.event_id_holder(event_id).await? else {
            return Ok(Vec::new());
        };
        let keys = [posting_key(event_id, false), posting_key(event_id, true)];
        let mut outcomes = Vec::new();
        for account_id in &holder.accounts {
            let loaded = self.load(account_id, &keys).await?;
            outcomes.extend(
                loaded
                    .prior
                    .into_values()
                    .filter(|prior| prior.fingerprint == holder.fingerprint)
                    .map(|prior| prior.result),
            );
        }
        Ok(outcomes)
    }
}

/// An account exists from its first applied event, which sets its currency: one whose
/// events were all rejected has a row (its version counts them) but does not exist.
fn exists(account: &Account) -> bool {
    account.currency.is_some()
}
