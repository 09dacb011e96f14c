//! One process per transactional id on a host. Two processes given one instance id (both
//! defaulting to the host name, say) would fence each other's transactions in turn, each
//! start aborting the other's batch, for ever. A process holds an abstract Unix socket named
//! after its transactional id while it lives, so the second to start is told at once. The
//! kernel releases the name however the process ends (no stale lock file after a SIGKILL),
//! and the name lives in the network namespace: pods, each with their own, never meet.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};

use sha2::{Digest, Sha256};

/// Held for the life of the process; dropping it frees the transactional id on this host.
#[derive(Debug)]
pub struct InstanceClaim {
    _socket: UnixListener,
}

/// Why the transactional id could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "another txflow process on this host already runs with transactional id {transactional_id:?}: \
         the two would fence each other's transactions in turn. Give each process its own \
         instance id ({stage}.instance_id, or TXFLOW_{upper}__INSTANCE_ID), or stop the other one"
    )]
    Taken {
        transactional_id: String,
        stage: &'static str,
        upper: String,
    },
    #[error("claiming transactional id {transactional_id:?} on this host: {source}")]
    Io {
        transactional_id: String,
        source: std::io::Error,
    },
}

/// Claims `transactional_id` for this process on this host.
pub fn claim(stage: &'static str, transactional_id: &str) -> Result<InstanceClaim, ClaimError> {
    // An abstract name holds at most 107 bytes: a digest keeps any id within that.
    let digest: String = Sha256::digest(transactional_id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = format!("txflow/transactional-id/{digest}");
    let io = |source| ClaimError::Io {
        transactional_id: transactional_id.to_owned(),
        source,
    };
    let address = SocketAddr::from_abstract_name(name.as_bytes()).map_err(io)?;
    match UnixListener::bind_addr(&address) {
        Ok(socket) => Ok(InstanceClaim { _socket: socket }),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(ClaimError::Taken {
            transactional_id: transactional_id.to_owned(),
            stage,
            upper: stage.to_uppercase(),
        }),
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_of_one_id_is_refused_until_the_first_is_dropped() {
        let id = format!("txflow-ledger-{}", rand::random::<u64>());
        let first = claim("ledger", &id).unwrap();
        let refused = claim("ledger", &id).unwrap_err();
        assert!(
            refused.to_string().contains("TXFLOW_LEDGER__INSTANCE_ID"),
            "{refused}"
        );
        assert!(claim("ledger", &format!("{id}-other")).is_ok());
        drop(first);
        assert!(claim("ledger", &id).is_ok());
    }
}
