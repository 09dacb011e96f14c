//! An archived topic read whole, and merged with what the log still holds: for an audit
//! that reaches back past the topics' retention.

use std::collections::BTreeMap;

use super::file;
use crate::ports::{ObjectError, Objects};
use crate::wire::InputRecord;

/// Why an archived topic could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("the archive: {0}")]
    Storage(#[from] ObjectError),
    #[error("the archive file {key}: {error}")]
    File { key: String, error: file::FileError },
}

/// Every record of `topic`'s archive files, in partition and offset order.
pub async fn archived(
    objects: &impl Objects,
    topic: &str,
) -> Result<Vec<InputRecord>, HistoryError> {
    let mut records = Vec::new();
    for key in objects.list(&format!("{topic}/")).await? {
        let bytes = objects.get(&key).await?;
        records.extend(file::decode(&bytes).map_err(|error| HistoryError::File { key, error })?);
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}

/// The records of one topic from the archive and from the log, each (partition, offset)
/// once, in partition and offset order; and how many came from the archive alone.
pub fn merged(archived: Vec<InputRecord>, logged: Vec<InputRecord>) -> (Vec<InputRecord>, usize) {
    let mut all: BTreeMap<(i32, i64), InputRecord> = archived
        .into_iter()
        .map(|r| ((r.partition, r.offset), r))
        .collect();
    let archived_only = all.len();
    let mut on_the_log = 0;
    for record in logged {
        if all
            .insert((record.partition, record.offset), record)
            .is_some()
        {
            on_the_log += 1;
        }
    }
    (all.into_values().collect(), archived_only - on_the_log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> InputRecord {
        InputRecord {
            topic: "t".to_owned(),
            partition,
            offset,
            timestamp: None,
            key: None,
            value: Some(offset.to_le_bytes().to_vec()),
            headers: Vec::new(),
        }
    }

    #[test]
    fn the_archive_and_the_log_overlap_into_one_history() {
        // Retention dropped offsets 0..3 of partition 0 from the log; the archive has not
        // caught up with partition 1's last records yet.
        let archived = vec![at(0, 0), at(0, 1), at(0, 2), at(0, 3), at(1, 0)];
        let logged = vec![at(0, 3), at(0, 4), at(1, 0), at(1, 1)];
        let (all, archived_only) = merged(archived, logged);
        let positions: Vec<(i32, i64)> = all.iter().map(|r| (r.partition, r.offset)).collect();
        assert_eq!(
            positions,
            [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1)]
        );
        assert_eq!(archived_only, 3);
    }
}
