//! The embedded log and store on a temporary directory: what the stages rely on.

use std::time::Duration;

use super::*;
use crate::adapters::embedded::EmbeddedLedgerStore;
use crate::domain::{
    Account, Entry, Fingerprint, IdClaim, Origin, Prior, Settlement, Status, TransactionResult,
};
use crate::pipeline::now_ms;
use crate::ports::{Balances, DelayedTopics, LedgerStore, Log, Publisher};
use crate::wire::OutputRecord;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "txflow-embedded-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn record(topic: &str, key: &str, value: &str) -> OutputRecord {
    OutputRecord {
        topic: topic.to_owned(),
        key: Some(key.as_bytes().to_vec()),
        value: Some(value.as_bytes().to_vec()),
        headers: vec![("h".to_owned(), b"v".to_vec())],
    }
}

fn values(records: &[crate::wire::InputRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_and_its_outputs_commit_together_and_positions_survive_a_restart() {
    let dir = TempDir::new("log");
    {
        let embedded = Embedded::open(&dir.0).unwrap();
        let published = embedded
            .publisher()
            .publish(vec![
                record("in", "a", "1"),
                record("in", "b", "2"),
                record("in", "a", "3"),
            ])
            .await;
        let offsets: Vec<i64> = published.into_iter().map(|p| p.unwrap().offset).collect();
        assert_eq!(offsets, [0, 1, 2]);
        let mut log = embedded.log("g", &["in"], &DelayedTopics::default());
        let batch = log.next_batch(2, Duration::from_millis(10)).await.unwrap();
        assert_eq!(values(&batch), ["1", "2"]);
        assert_eq!(batch[0].header("h"), Some(&b"v"[..]));
        // Aborted in effect: read again from the same place.
        log.rewind(&batch).await.unwrap();
        let again = log.next_batch(2, Duration::from_millis(10)).await.unwrap();
        assert_eq!(again, batch);
        log.commit(&again, vec![record("out", "a", "x")])
            .await
            .unwrap();
        assert_eq!(values(&embedded.read_to_end("out").unwrap()), ["x"]);
    }
    // A new process on the same directory continues after what the group committed.
    // Its position is inside the record batch the three were appended as.
    let embedded = Embedded::open(&dir.0).unwrap();
    embedded
        .publisher()
        .publish(vec![record("in", "c", "4"), record("in", "c", "5")])
        .await
        .into_iter()
        .for_each(|p| assert_eq!(p.unwrap().topic, "in"));
    let mut log = embedded.log("g", &["in"], &DelayedTopics::default());
    let rest = log.next_batch(10, Duration::from_millis(10)).await.unwrap();
    assert_eq!(values(&rest), ["3", "4", "5"]);
    assert_eq!(rest.iter().map(|r| r.offset).collect::<Vec<_>>(), [2, 3, 4]);
    let mut other = embedded.log("other-group", &["in"], &DelayedTopics::default());
    let all = other
        .next_batch(4, Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(
        values(&all),
        ["1", "2", "3", "4"],
        "each group has its own positions"
    );
}

fn tier_1(longest_wait: Duration) -> DelayedTopics {
    DelayedTopics::new([("in.retry.1".to_owned(), longest_wait)])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_record_due_beyond_its_tier_comes_at_the_tiers_bound() {
    let dir = TempDir::new("out-of-bounds");
    let embedded = Embedded::open(&dir.0).unwrap();
    let mut lying = record("in.retry.1", "a", "due in a year");
    lying.headers.push((
        crate::wire::RETRY_DUE.to_owned(),
        (now_ms() + 365 * 86_400_000).to_string().into_bytes(),
    ));
    embedded.publisher().publish(vec![lying]).await[0]
        .as_ref()
        .unwrap();
    let counter =
        prometheus::IntCounterVec::new(prometheus::Opts::new("out_of_bounds", "test"), &["topic"])
            .unwrap();
    let delayed = tier_1(Duration::from_millis(100)).counted(counter.clone());
    let mut log = embedded.log("g", &["in"], &delayed);
    let mut handed = Vec::new();
    for _ in 0..20 {
        handed = log
            .next_batch(10, Duration::from_millis(500))
            .await
            .unwrap();
        if !handed.is_empty() {
            break;
        }
    }
    assert_eq!(values(&handed), ["due in a year"]);
    assert_eq!(counter.with_label_values(&["in.retry.1"]).get(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delayed_record_comes_when_due_and_holds_back_those_behind_it() {
    let dir = TempDir::new("delayed");
    let embedded = Embedded::open(&dir.0).unwrap();
    let due = |in_ms: i64| {
        let mut r = record("in.retry.1", "a", &format!("due+{in_ms}"));
        r.headers.push((
            crate::wire::RETRY_DUE.to_owned(),
            (now_ms() + in_ms).to_string().into_bytes(),
        ));
        r
    };
    embedded
        .publisher()
        .publish(vec![due(300), due(0)])
        .await
        .into_iter()
        .for_each(|p| {
            p.unwrap();
        });
    let mut log = embedded.log("g", &["in"], &tier_1(Duration::from_secs(1)));
    assert_eq!(
        log.reassigned().await.unwrap().map(|r| r.len()),
        Some(2),
        "the first call reports what the tiers hold"
    );
    assert_eq!(log.reassigned().await.unwrap(), None);
    let early = log.next_batch(10, Duration::from_millis(50)).await.unwrap();
    assert!(
        early.is_empty(),
        "the head is not due: {:?}",
        values(&early)
    );
    let started = std::time::Instant::now();
    let batch = log.next_batch(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(values(&batch), ["due+300", "due+0"]);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_consumer_wakes_when_records_are_committed() {
    let dir = TempDir::new("wake");
    let embedded = Embedded::open(&dir.0).unwrap();
    let mut log = embedded.log("g", &["in"], &DelayedTopics::default());
    let publisher = embedded.publisher();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        publisher.publish(vec![record("in", "a", "1")]).await
    });
    let batch = log.next_batch(10, Duration::from_secs(10)).await.unwrap();
    assert_eq!(values(&batch), ["1"]);
    writer.await.unwrap();
}

fn prior(event_id: &str, version: i64, balance: i64) -> Prior {
    Prior {
        fingerprint: Fingerprint([version as u8; 32]),
        origin: Origin {
            topic: "txflow.ledger".into(),
            partition: 0,
            offset: version,
        },
        result: TransactionResult {
            event_id: event_id.into(),
            account_id: "acct-1".into(),
            entry: Entry::Credit,
            status: Status::Applied,
            reason: None,
            amount_minor: 100,
            balance_after_minor: balance,
            account_version: version,
            processed_at: 1,
        },
    }
}

/// Claims each event id for the event of `prior`, as the ledger does before it records.
async fn claim(store: &EmbeddedLedgerStore, priors: &[&Prior]) {
    let claims: Vec<IdClaim> = priors
        .iter()
        .map(|p| IdClaim {
            event_id: p.result.event_id.clone(),
            fingerprint: p.fingerprint,
            accounts: vec![p.result.account_id.clone()],
        })
        .collect();
    store.claim_event_ids(&claims).await.unwrap();
}

fn settlement(priors: Vec<Prior>) -> Settlement {
    let last = priors.last().unwrap().result.clone();
    Settlement {
        account: Account {
            balance_minor: last.balance_after_minor,
            currency: Some("EUR".into()),
            version: last.account_version,
        },
        recorded: priors,
        claimed: Vec::new(),
        emissions: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_applies_only_on_the_version_it_was_computed_from_and_only_once() {
    let dir = TempDir::new("store");
    let embedded = Embedded::open(&dir.0).unwrap();
    let store = embedded.store();
    let fresh = Account::default();
    let first = settlement(vec![prior("e-1", 1, 100), prior("e-2", 2, 200)]);
    claim(&store, &first.recorded.iter().collect::<Vec<_>>()).await;
    assert!(store.record("acct-1", &fresh, &first).await.unwrap());
    assert!(
        !store.record("acct-1", &fresh, &first).await.unwrap(),
        "a stale version is refused"
    );
    let moved = store.account("acct-1").await.unwrap().unwrap();
    assert_eq!(
        (
            moved.balance_minor,
            moved.version,
            moved.currency.as_deref()
        ),
        (200, 2, Some("EUR"))
    );
    let replay = settlement(vec![prior("e-2", 3, 300)]);
    assert!(
        !store.record("acct-1", &moved, &replay).await.unwrap(),
        "an event already recorded is refused with the whole write"
    );
    assert_eq!(store.account("acct-1").await.unwrap().unwrap().version, 2);
    let loaded = store
        .load("acct-1", &["e-1".to_owned(), "e-9".to_owned()])
        .await
        .unwrap();
    assert_eq!(loaded.prior.len(), 1);
    assert_eq!(loaded.prior["e-1"], prior("e-1", 1, 100));
    assert_eq!(store.outcomes("e-2").await.unwrap().len(), 1);
    assert!(store.outcomes("e-9").await.unwrap().is_empty());
    assert_eq!(
        store
            .currencies(&["acct-1".into(), "nobody".into()])
            .await
            .unwrap()["acct-1"],
        "EUR"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn results_of_a_data_directory_from_an_earlier_build_are_kept() {
    let dir = TempDir::new("results-v1");
    {
        let embedded = Embedded::open(&dir.0).unwrap();
        let store = embedded.store();
        let written = settlement(vec![prior("e-1", 1, 100), prior("e-10", 2, 200)]);
        assert!(store
            .record("acct-1", &Account::default(), &written)
            .await
            .unwrap());
        // Lay them out as the earlier build did: by account, and a table by event.
        let txn = embedded.db.begin_write().unwrap();
        {
            let mut new = txn.open_table(RESULTS).unwrap();
            let mut old = txn.open_table(ACCOUNT_RESULTS_V1).unwrap();
            let mut by_event = txn.open_table(BY_EVENT_V1).unwrap();
            for event_id in ["e-1", "e-10"] {
                let value = new.remove((event_id, "acct-1")).unwrap().unwrap();
                old.insert(("acct-1", event_id), value.value()).unwrap();
                by_event.insert((event_id, "acct-1"), ()).unwrap();
            }
        }
        txn.delete_table(EVENT_IDS).unwrap();
        txn.commit().unwrap();
    }
    let embedded = Embedded::open(&dir.0).unwrap();
    let store = embedded.store();
    let outcomes = store.outcomes("e-1").await.unwrap();
    assert_eq!(outcomes, [prior("e-1", 1, 100).result]);
    let loaded = store
        .load("acct-1", &["e-1".to_owned(), "e-10".to_owned()])
        .await
        .unwrap();
    assert_eq!(loaded.prior.len(), 2, "both results moved: {loaded:?}");
    let replay = settlement(vec![prior("e-10", 3, 300)]);
    assert!(
        !store
            .record("acct-1", &loaded.account, &replay)
            .await
            .unwrap(),
        "a moved result still refuses its replay"
    );
    let txn = embedded.db.begin_read().unwrap();
    let names: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n == "results" || n == "results_by_event"),
        "the old tables are gone: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_events_outcomes_are_its_results_on_every_account_and_no_others() {
    let dir = TempDir::new("outcomes");
    let embedded = Embedded::open(&dir.0).unwrap();
    let store = embedded.store();
    let on = |account: &str, event_id: &str| {
        let mut p = prior(event_id, 1, 100);
        p.result.account_id = account.to_owned();
        settlement(vec![p])
    };
    for (account, event_id) in [("acct-1", "e-1"), ("acct-2", "e-1"), ("acct-3", "e-10")] {
        claim(&store, &[&on(account, event_id).recorded[0]]).await;
        assert!(store
            .record(account, &Account::default(), &on(account, event_id))
            .await
            .unwrap());
    }
    let mut accounts: Vec<String> = store
        .outcomes("e-1")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.account_id)
        .collect();
    accounts.sort();
    assert_eq!(accounts, ["acct-1", "acct-2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_directory_from_before_event_ids_were_claimed_has_them_claimed_at_open() {
    let dir = TempDir::new("claims");
    let on = |account: &str, event_id: &str, fingerprint: u8| {
        let mut p = prior(event_id, 1, 100);
        p.result.account_id = account.to_owned();
        p.fingerprint = Fingerprint([fingerprint; 32]);
        settlement(vec![p])
    };
    {
        let embedded = Embedded::open(&dir.0).unwrap();
        let store = embedded.store();
        // A transfer's two legs, and an id an earlier build recorded for two events.
        for (account, event_id, fingerprint) in [
            ("acct-1", "t-1", 7),
            ("acct-2", "t-1", 7),
            ("acct-3", "e-9", 8),
            ("acct-4", "e-9", 9),
        ] {
            assert!(store
                .record(
                    account,
                    &Account::default(),
                    &on(account, event_id, fingerprint)
                )
                .await
                .unwrap());
        }
        let txn = embedded.db.begin_write().unwrap();
        txn.delete_table(EVENT_IDS).unwrap();
        txn.commit().unwrap();
    }
    let store = Embedded::open(&dir.0).unwrap().store();
    let claim = |event_id: &str, fingerprint: u8| IdClaim {
        event_id: event_id.to_owned(),
        fingerprint: Fingerprint([fingerprint; 32]),
        accounts: vec!["acct-5".to_owned()],
    };
    let holders = store
        .claim_event_ids(&[claim("t-1", 1), claim("e-9", 1), claim("new", 1)])
        .await
        .unwrap();
    assert_eq!(holders["t-1"].fingerprint, Fingerprint([7; 32]));
    assert_eq!(holders["t-1"].accounts, ["acct-1", "acct-2"]);
    assert_eq!(
        holders["e-9"].fingerprint,
        Fingerprint([8; 32]),
        "the first recorded holds it"
    );
    assert_eq!(holders["new"], claim("new", 1), "a new id is claimed");
    let again = store.claim_event_ids(&[claim("new", 2)]).await.unwrap();
    assert_eq!(again["new"].fingerprint, Fingerprint([1; 32]), "for good");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_exists_from_its_first_applied_event() {
    let dir = TempDir::new("exists");
    let store = Embedded::open(&dir.0).unwrap().store();
    let mut rejected = prior("e-1", 1, 0);
    rejected.result.status = Status::Rejected;
    rejected.result.entry = Entry::None;
    rejected.result.reason = Some("insufficient_funds".into());
    let mut only_rejected = settlement(vec![rejected]);
    only_rejected.account.currency = None;
    assert!(store
        .record("acct-1", &Account::default(), &only_rejected)
        .await
        .unwrap());
    assert_eq!(store.account("acct-1").await.unwrap(), None);
    assert!(store
        .currencies(&["acct-1".into()])
        .await
        .unwrap()
        .is_empty());
    let applied = settlement(vec![prior("e-2", 2, 100)]);
    let before = store.load("acct-1", &[]).await.unwrap().account;
    assert_eq!(before.version, 1, "the rejection still counts");
    assert!(store.record("acct-1", &before, &applied).await.unwrap());
    let now = store.account("acct-1").await.unwrap().unwrap();
    assert_eq!((now.balance_minor, now.version), (100, 2));
    use futures::StreamExt;
    let listed: Vec<_> = store.accounts().collect().await;
    assert_eq!(listed.len(), 1);
}
