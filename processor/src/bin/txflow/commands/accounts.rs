//! `txflow accounts get|export`: balances, from the store or from a running `txflow dev`.

use anyhow::bail;
use clap::Subcommand;
use futures::TryStreamExt;

use txflow::app::Access;
use txflow::app::Config;
use txflow::ports::Balances;
use txflow::stages::gateway::account_json;

use super::print_line;

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// One account's balance, currency and version, as JSON.
    Get {
        /// The account id.
        account_id: String,
    },
    /// Every account, one JSON object a line.
    Export,
}

pub async fn accounts<A: Access>(
    access: &A,
    config: &Config,
    command: AccountsCommand,
) -> anyhow::Result<()> {
    let balances = access.balances(config).await?;
    match command {
        AccountsCommand::Get { account_id } => match balances.account(&account_id).await? {
            Some(account) => print_line(&account_json(&account_id, &account)),
            None => bail!("account {account_id:?} does not exist: it has no applied event"),
        },
        AccountsCommand::Export => {
            let mut accounts = balances.accounts();
            while let Some((id, account)) = accounts.try_next().await? {
                print_line(&account_json(&id, &account))?;
            }
            Ok(())
        }
    }
}
