//! The ledger store on ScyllaDB (or Apache Cassandra): one table, one partition per account.
//!
//! The account's balance, currency and version are static columns of its partition and each
//! recorded result is a clustering row, so that one conditional batch on one partition —
//! `UPDATE … IF version = ?` plus the new result rows — records everything a batch did to the
//! account with a single Paxos round.

use std::collections::HashMap;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt, TryStreamExt};
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

use crate::config::StoreConfig;
use crate::domain::{
    Account, Entry, Fingerprint, Origin, Prior, Settlement, Status, TransactionResult,
};
use crate::ports::{LedgerStore, LoadedAccount, StoreError};

/// The table every ledger write goes to.
pub const LEDGER_TABLE: &str = "ledger";

/// Connects to the store's nodes with the configured timeouts and consistency.
pub async fn connect(config: &StoreConfig) -> Result<Session, StoreError> {
    let profile = ExecutionProfile::builder()
        .consistency(config.consistency.into())
        .serial_consistency(Some(config.serial_consistency.into()))
        .request_timeout(Some(Duration::from_millis(config.request_timeout_ms)))
        .build();
    SessionBuilder::new()
        .known_nodes(&config.contact_points)
        .connection_timeout(Duration::from_millis(config.connect_timeout_ms))
        .default_execution_profile_handle(profile.into_handle())
        .build()
        .await
        .map_err(|e: NewSessionError| {
            StoreError::Unavailable(format!("connecting to {:?}: {e}", config.contact_points))
        })
}

/// Creates the keyspace and table if they are missing; safe to run again.
pub async fn migrate(session: &Session, config: &StoreConfig) -> Result<Vec<String>, StoreError> {
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
        // The accounts an event touched, for the gateway's GET /v1/events/{event_id}.
        format!(
            "CREATE INDEX IF NOT EXISTS {LEDGER_TABLE}_by_event ON {keyspace}.{LEDGER_TABLE} (event_id)"
        ),
    ];
    for statement in &statements {
        session
            .query_unpaged(statement.as_str(), ())
            .await
            .map_err(classify)?;
    }
    session
        .await_schema_agreement()
        .await
        .map_err(|e| StoreError::Unavailable(format!("waiting for schema agreement: {e}")))?;
    Ok(statements)
}

/// Whether a lightweight transaction applied, read from its `[applied]` column by name.
///
/// Cassandra answers an applied LWT with `[applied]` alone and a refused one with
/// `[applied]` plus the current values; ScyllaDB always adds the old row. Reading the
/// column by name from an untyped row works with both.
pub fn lwt_applied(result: QueryResult) -> Result<bool, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(format!("an LWT answer: {what}"));
    let rows = result
        .into_rows_result()
        .map_err(|e| corrupt(e.to_string()))?;
    let column = rows
        .column_specs()
        .iter()
        .position(|spec| spec.name() == "[applied]")
        .ok_or_else(|| corrupt("no [applied] column".to_owned()))?;
    let first: Row = rows.first_row().map_err(|e| corrupt(e.to_string()))?;
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
        .map_err(|e| StoreError::Corrupt(e.to_string()))?
        .maybe_first_row()
        .map_err(|e| StoreError::Corrupt(e.to_string()))
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
    match attempt {
        Some(RequestAttemptError::DbError(
            DbError::SyntaxError
            | DbError::Invalid
            | DbError::Unauthorized
            | DbError::ConfigError
            | DbError::AuthenticationError,
            message,
        )) => StoreError::Schema(message.clone()),
        _ if matches!(error, ExecutionError::BadQuery(_)) => StoreError::Schema(error.to_string()),
        _ => StoreError::Unavailable(error.to_string()),
    }
}

/// The ledger store on a CQL session.
pub struct ScyllaLedgerStore {
    session: Session,
    max_rows_per_write: usize,
    load_account: PreparedStatement,
    load_results: PreparedStatement,
    load_currency: PreparedStatement,
    load_debit: PreparedStatement,
    load_debit_serial: PreparedStatement,
    advance: PreparedStatement,
    insert_result: PreparedStatement,
    claim: PreparedStatement,
    all_accounts: PreparedStatement,
    accounts_of_event: PreparedStatement,
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

/// Fingerprint, entry and status of a recorded result.
type DebitRow = (Option<Vec<u8>>, Option<String>, Option<String>);

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
        let debit = format!(
            "SELECT fingerprint, entry, status FROM {table} WHERE account_id = ? AND event_id = ?"
        );
        let load_debit = prepare(debit.clone()).await?;
        // A credit leg must see its debit, which an LWT committed before the credit leg became
        // readable. A read at the write's consistency sees it; a debit it misses is read again
        // serially, which sees every committed Paxos write, before the credit is refused.
        let mut load_debit_serial = prepare(debit).await?;
        load_debit_serial.set_consistency(Consistency::Serial);
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
            accounts_of_event: prepare(format!(
                "SELECT account_id FROM {table} WHERE event_id = ?"
            ))
            .await?,
            load_currency: prepare(format!(
                "SELECT currency FROM {table} WHERE account_id = ? LIMIT 1"
            ))
            .await?,
            load_debit,
            load_debit_serial,
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
                claim.event_id.clone(),
                claim.from.topic.clone(),
                claim.from.partition,
                claim.from.offset,
            )));
        }
    }

    /// The event's fingerprint when `account_id` recorded it as an applied debit.
    async fn debit(
        &self,
        statement: &PreparedStatement,
        account_id: &str,
        event_id: &str,
    ) -> Result<Option<(String, Fingerprint)>, StoreError> {
        let row: Option<DebitRow> = first_row(
            self.session
                .execute_unpaged(statement, (account_id, event_id))
                .await
                .map_err(classify)?,
        )?;
        Ok(match row {
            Some((Some(fingerprint), Some(entry), Some(status)))
                if Entry::from_symbol(&entry) == Some(Entry::Debit)
                    && Status::from_symbol(&status) == Some(Status::Applied) =>
            {
                let fingerprint: [u8; 32] = fingerprint.try_into().map_err(|_| {
                    StoreError::Corrupt(format!("fingerprint of {event_id:?} is not 32 bytes"))
                })?;
                Some((event_id.to_owned(), Fingerprint(fingerprint)))
            }
            _ => None,
        })
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
    let corrupt = |what: &str| StoreError::Corrupt(format!("result of {event_id:?}: {what}"));
    let fingerprint: [u8; 32] = fingerprint
        .try_into()
        .map_err(|_| corrupt("fingerprint is not 32 bytes"))?;
    let entry = Entry::from_symbol(&entry).ok_or_else(|| corrupt("unknown entry"))?;
    let status = Status::from_symbol(&status).ok_or_else(|| corrupt("unknown status"))?;
    Ok(Prior {
        fingerprint: Fingerprint(fingerprint),
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
    async fn load(
        &self,
        account_id: &str,
        event_ids: &[String],
    ) -> Result<LoadedAccount, StoreError> {
        let results = async {
            if event_ids.is_empty() {
                return Ok(Vec::new());
            }
            let rows = self
                .session
                .execute_unpaged(&self.load_results, (account_id, event_ids))
                .await
                .map_err(classify)?
                .into_rows_result()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            rows.rows::<ResultRow>()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?
                .map(|row| row.map_err(|e| StoreError::Corrupt(e.to_string())))
                .collect::<Result<Vec<_>, _>>()
        };
        let (account, results) = tokio::try_join!(self.one_account(account_id), results)?;
        let mut prior = HashMap::with_capacity(results.len());
        for row in results {
            let mut p = prior_of(row)?;
            p.result.account_id = account_id.to_owned();
            prior.insert(p.result.event_id.clone(), p);
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

    async fn applied_debits(
        &self,
        debits: &[(String, String)],
    ) -> Result<HashMap<String, Fingerprint>, StoreError> {
        let lookups = debits.iter().map(|(account_id, event_id)| async move {
            match self.debit(&self.load_debit, account_id, event_id).await? {
                Some(found) => Ok(Some(found)),
                None => {
                    self.debit(&self.load_debit_serial, account_id, event_id)
                        .await
                }
            }
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
                    r.event_id.clone(),
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

    async fn account(&self, account_id: &str) -> Result<Option<Account>, StoreError> {
        self.one_account(account_id).await
    }

    async fn outcomes(&self, event_id: &str) -> Result<Vec<TransactionResult>, StoreError> {
        let accounts: Vec<String> = self
            .session
            .execute_unpaged(&self.accounts_of_event, (event_id,))
            .await
            .map_err(classify)?
            .into_rows_result()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?
            .rows::<(String,)>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?
            .map(|row| row.map(|(account_id,)| account_id))
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let event_ids = [event_id.to_owned()];
        let mut outcomes = Vec::with_capacity(accounts.len());
        for account_id in accounts {
            let loaded = self.load(&account_id, &event_ids).await?;
            outcomes.extend(loaded.prior.into_values().map(|prior| prior.result));
        }
        Ok(outcomes)
    }

    fn accounts(&self) -> BoxStream<'_, Result<(String, Account), StoreError>> {
        futures::stream::once(async move {
            self.session
                .execute_iter(self.all_accounts.clone(), ())
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?
                .rows_stream::<(String, Option<i64>, Option<String>, Option<i64>)>()
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .map_ok(|rows| {
            rows.map_err(|e| StoreError::Unavailable(e.to_string()))
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
        .boxed()
    }
}
